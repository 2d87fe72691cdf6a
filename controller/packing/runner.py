"""Runs packing jobs on one packer and books every pouch in the ledger.

For each job: make sure the canisters hold enough (a first-expiry-first-out transfer
from the central store, confirmed to the machine), reserve the job's tablets in the
canisters, load and start the machine, follow it, and when it stops book what it really
did. The machine's monotonic canister counters are the physical truth: tablets of good
pouches are consumed, everything else it dispensed (rejected pouches) is waste, and what
was reserved but not used is released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.async_ledger import AsyncLedger
from controller.config import Packer
from controller.ledger import InsufficientStock, LedgerError, Need, UnknownEntity, Use
from controller.ledger.ledger import CONSUMED, WASTE
from controller.metrics import Metrics, PackerOEE
from controller.packing.canister_desk import CanisterDesk, RefillNotConfirmed
from controller.packing.canister_fills import CanisterFills, canister_location
from controller.packing.job import Job, JobState
from controller.packing.planner import PlannedJob
from controller.packing.rules import (
    counters_explain,
    dispensed_by_gtin,
    lost_job_deltas,
    lost_job_waste,
    split_job,
    with_reject_allowance,
)
from controller.packing.store import JobRecord, PackingStore
from drivers.base import (
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    Pouch,
    PouchItem,
    StopReason,
    UnitMode,
)

log = logging.getLogger("doseline.packing")
ACTOR = "controller"


@dataclass
class PackingSettings:
    store_bins: Sequence[str]
    reservation_timeout_s: float = 900
    reject_allowance: float = 0.05
    poll_interval_s: float = 0.1
    stall_timeout_s: float = 30.0
    operator_clear_s: float = 0.5
    idle_check_s: float = 2.0
    # How long a canister refill waits for the technician's scan before it is given up.
    refill_scan_timeout_s: float = 600.0


@dataclass
class JobResult:
    job: Job
    dispensed: dict[str, int] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)
    wasted: dict[str, int] = field(default_factory=dict)


class PackingError(Exception):
    pass


class PackerNotReady(PackingError):
    """The packer cannot take a job now (not in Production mode): the job goes back."""


class PackerRunner:
    """One packer's service: takes jobs from its inbox (filled by the dispatcher) one
    at a time, and after every start or lost link first settles what an earlier run
    left open on this packer (`recover`)."""

    def __init__(
        self,
        config: Packer,
        driver: PackerDriver,
        ledger: AsyncLedger,
        store: PackingStore,
        metrics: Metrics,
        settings: PackingSettings,
        desk: CanisterDesk,
    ) -> None:
        self.config = config
        self.desk = desk
        self.name = config.name
        self.driver = driver
        self.ledger = ledger
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.canister_of = {c.gtin: c for c in config.canisters if c.calibrated}
        self.fills = CanisterFills(
            self.name, self.canister_of, driver, ledger, store, metrics, settings, desk
        )
        self.results: list[JobResult] = []
        self.inbox: asyncio.Queue[JobRecord] = asyncio.Queue()
        self.busy = False
        self.recovered = False  # recover() ran since the last (re)connect
        self.unit_mode = 0  # last reported PackML unit mode (0: not read yet)
        self._seen: tuple[int, int] | None = None  # last processed/defective totals
        self.last_status: PackerStatus | None = None  # the last read, for the console
        self.oee = PackerOEE(config.pouches_per_minute)  # time in states, OEE factors
        self.link_ok = False  # set by ensure_connected, cleared by a failed exchange
        self._ever_connected = False  # a later connect is a reconnect
        self._outage_logged = False
        # Links lost since the machine last answered a status read: a machine that
        # connects but then answers nonsense fails again at once after each reconnect.
        self._failures = 0

    # ---------------------------------------------------------------- service loop

    @property
    def available(self) -> bool:
        """Free for a new job: reachable, recovered, and not busy."""
        return (
            self.link_ok
            and self.recovered
            and not self.busy
            and self.inbox.empty()
            and self.unit_mode in (0, UnitMode.PRODUCTION)
        )

    async def serve(self) -> None:
        """Runs the jobs the dispatcher hands over, one at a time, while reachable."""
        while True:
            await self.ensure_connected()
            if not self.recovered:
                try:
                    await self.recover()
                except DriverError as exc:
                    self._lost(exc)
                    continue
                self.recovered = True
            try:
                record = await asyncio.wait_for(self.inbox.get(), self.settings.idle_check_s)
            except TimeoutError:
                # Idle: keep the link and the unit mode known, so the dispatcher sees
                # a packer put into Maintenance (or one that went away) in time.
                try:
                    await self.read_status()
                except DriverError as exc:
                    self._lost(exc)
                continue
            self.busy = True
            try:
                self.results.append(await self.run_job(record))
            except Exception as exc:  # one bad job must not stop the packer's service
                log.exception("job %s on %s: unexpected error", record.job_id, self.name)
                self.recovered = False  # the job is settled from the database next round
                job = Job(record.job_id)
                job.packer, job.reason = self.name, f"unexpected error: {exc!r}"
                self.results.append(JobResult(job))
            finally:
                self.busy = False
                self.inbox.task_done()

    def _lost(self, exc: Exception) -> None:
        """The link failed: reconnect, then settle what was in flight before going on.
        Logged once until the machine answers a status read again."""
        self.link_ok = False
        self.recovered = False
        self._failures += 1
        self.metrics.driver_errors.labels(self.name).inc()
        self.metrics.packer_observed(self.name, self.oee, self.oee.lost())
        if self._failures == 1:
            log.error("packer %s: link lost: %s", self.name, exc)
        else:
            log.debug(
                "packer %s: link lost again (%d in a row): %s", self.name, self._failures, exc
            )

    async def _move(self, job: Job, trigger: str, **fields: object) -> None:
        """Fires a job transition and stores it, audited, in the same step."""
        before = job.state.value
        await getattr(job, trigger)()
        # `fields` win over the defaults: a requeued job is given back (packer=None).
        stored: dict[str, object] = {
            "packer": self.name,
            "good": job.pouches_good,
            "rejected": job.pouches_rejected,
            **fields,
        }
        await self.ledger.run(
            self.store.move,
            job.job_id,
            old=before,
            new=job.state.value,
            actor=ACTOR,
            reason=job.reason or trigger,
            **stored,
        )

    async def ensure_connected(self) -> None:
        """(Re)connects with backoff: 1 s, doubling to 30 s. Logged once per outage."""
        backoff = 1.0
        if not self.link_ok and self._failures > 1:
            # The link came back and failed again before the machine answered a status
            # read (it answers nonsense): wait as after a failed connect, not in a loop.
            await asyncio.sleep(min(2.0 ** (self._failures - 2), 30.0))
        while not self.link_ok:
            try:
                await self.driver.connect()
            except DriverError as exc:
                if not self._outage_logged:
                    log.warning("packer %s unreachable: %s", self.name, exc)
                    self._outage_logged = True
                self.metrics.driver_errors.labels(self.name).inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if self._ever_connected:
                self.metrics.driver_reconnects.labels(self.name).inc()
            self.link_ok, self._outage_logged, self._ever_connected = True, False, True
            log.info("packer %s connected", self.name)

    # ---------------------------------------------------------------- one job

    async def run_job(self, planned: PlannedJob | JobRecord) -> JobResult:
        """Runs one job to its end. A job given as a PlannedJob is filed first."""
        if isinstance(planned, PlannedJob):
            record = await self.ledger.run(self.store.add_job, planned, actor=ACTOR)
            if record.packer is None and record.state == "planned":
                await self.ledger.run(self.store.claim, record.job_id, self.name, actor=ACTOR)
        else:
            record = planned
        plan = record.job
        job = Job(plan.job_id)
        job.packer = self.name
        result = JobResult(job)
        reservation = record.reservation
        try:
            missing = [g for g in plan.units_by_gtin() if g not in self.canister_of]
            if missing:
                raise PackingError(
                    f"no calibrated canister on {self.name} for GTIN {', '.join(missing)}"
                )
            await self._bring_to_idle()
            needs = self._needs(plan)
            await self._check_reachable(needs)  # before any canister is touched
            now_in = {g: await self._ensure_canister(g, units) for g, units in needs.items()}
            await self._check_reachable(needs, now_in)
            await self.ledger.reserve(
                reservation,
                purpose=f"dose pouches {plan.job_id}",
                # What the canisters hold now; a canister that must run dry before it
                # takes its next lot is refilled at its empty-canister hold, and those
                # tablets are booked from the canister when the job ends.
                needs=[Need(g, min(q, now_in[g])) for g, q in needs.items() if now_in[g] > 0],
                from_locations=[
                    canister_location(self.name, self.canister_of[g].number) for g in needs
                ],
                timeout_s=self.settings.reservation_timeout_s,
                actor=ACTOR,
                order_source="packing",
            )
            await self._reserve_manual(plan, reservation)
            await self._move(job, "reserved")
        except (DriverError, PackerNotReady) as exc:
            # Not the job's fault: it goes back to the dispatcher for any packer.
            if isinstance(exc, DriverError):
                self._lost(exc)
            job.reason = str(exc)
            await self._void(reservation, job)
            await self.ledger.run(
                self.store.unclaim, plan.job_id, self.name, actor=ACTOR, reason=str(exc)[:200]
            )
            return result
        except (PackingError, LedgerError) as exc:
            job.reason = str(exc)
            log.error("job %s on %s not started: %s", plan.job_id, self.name, exc)
            await self._void(reservation, job)
            await self._move(job, "failed")
            self.metrics.jobs.labels("failed").inc()
            return result

        try:
            before = await self._dispensed_by_gtin()
            await self.driver.load_job(self._spec(plan))
            await self._move(job, "loaded", baseline=before)
            await self.driver.command(PackMLCommand.START)
            await self._move(job, "started")
        except DriverError as exc:
            return self._interrupted(job, result, exc)
        return await self._finish(plan, job, result, before, reservation)

    async def _finish(
        self,
        plan: PlannedJob,
        job: Job,
        result: JobResult,
        before: dict[str, int],
        reservation: str,
    ) -> JobResult:
        """Follows the machine to the job's end, then books what it really did."""
        try:
            status = await self._follow(plan, job)
            after = await self._dispensed_by_gtin()
        except DriverError as exc:
            return self._interrupted(job, result, exc)
        job.pouches_good = status.job_pouches_good
        job.pouches_rejected = status.job_pouches_rejected
        await self._book(plan, job, result, before, after, reservation)
        if status.state == PackMLState.COMPLETE and job.pouches_good == len(plan.machine_pouches()):
            await self._move(job, "completed")
            self.metrics.jobs.labels("completed").inc()
        else:
            job.reason = job.reason or f"machine ended in {status.state.name}"
            await self._move(job, "ended_partial")
            self.metrics.jobs.labels("partial").inc()
        try:
            await self._bring_to_idle()
        except DriverError as exc:
            self._lost(exc)
        return result

    def _interrupted(self, job: Job, result: JobResult, exc: DriverError) -> JobResult:
        """The link failed while the machine had the job: the job stays as stored, and
        is settled from the machine's counters once the link is back (`recover`)."""
        self._lost(exc)
        job.reason = f"link lost while {job.state.value}: {exc}"
        if self._failures == 1:
            log.error("job %s on %s: %s", job.job_id, self.name, job.reason)
        return result

    # ---------------------------------------------------------------- recovery

    async def recover(self) -> None:
        """Settles what an earlier run (or a lost link) left open on this packer:
        canister refills in flight, jobs the machine had, jobs reserved but never
        loaded, and jobs assigned but not started."""
        await self.fills.settle_open()
        for record in await self.ledger.run(self.store.unfinished):
            if record.packer != self.name:
                continue
            if record.state in ("loaded", "packing", "held"):
                self.results.append(await self.resume(record))
            elif record.state == "reserved":
                job = Job(record.job_id, JobState.RESERVED)
                job.reason = "controller restarted before the machine had the job"
                await self._void(record.reservation, job)
                await self._move(job, "requeued", attempt=record.attempt + 1, packer=None)
                log.warning("job %s: released and planned again", record.job_id)
            elif record.state == "planned":
                job = Job(record.job_id)
                job.reason = "packer restarted before the job began"
                await self._void(record.reservation, job)
                await self.ledger.run(
                    self.store.unclaim,
                    record.job_id,
                    self.name,
                    actor=ACTOR,
                    reason="packer restarted before the job began",
                )

    async def resume(self, record: JobRecord) -> JobResult:
        """Picks a job up where the machine is now and books it from the counters
        stored when the machine took it: nothing counted twice, nothing lost."""
        plan = record.job
        job = Job(plan.job_id, JobState(record.state))
        job.packer = self.name
        result = JobResult(job)
        status = await self.read_status()
        log.warning(
            "job %s on %s: resuming from %s (machine %s, job %r)",
            plan.job_id,
            self.name,
            record.state,
            status.state.name,
            status.job_id,
        )
        baseline = record.baseline or {}
        if status.job_id != plan.job_id or record.baseline is None:
            await self._settle_lost(plan, job, result, baseline, record.reservation)
            return result
        if job.state == JobState.LOADED:
            if status.state == PackMLState.IDLE:
                await self.driver.command(PackMLCommand.START)
            await self._move(job, "started")
        return await self._finish(plan, job, result, baseline, record.reservation)

    async def _settle_lost(
        self,
        plan: PlannedJob,
        job: Job,
        result: JobResult,
        baseline: dict[str, int],
        reservation: str,
    ) -> None:
        """The machine no longer holds the job (it restarted, or was reset by hand).
        Its pouches cannot be verified: what left the canisters is booked as waste, and
        the pouches are counted and destroyed at the machine."""
        canisters = await self.driver.read_canisters()
        counts = {canister.number: canister.count for canister in canisters}
        delta = lost_job_deltas(plan.units_by_gtin(), baseline, dispensed_by_gtin(canisters))
        self.metrics.discrepancies.labels("canister").inc()
        # The counters explain the canisters only if what the ledger holds in each is
        # what the machine still has plus what it dispensed since the baseline. A
        # machine whose counters restarted at 0 shows a delta of 0, not a negative one.
        unexplained = []
        for gtin, dispensed in delta.items():
            number = self.canister_of[gtin].number
            held = await self.ledger.on_hand(canister_location(self.name, number), gtin)
            if not counters_explain(held, counts.get(number, 0), dispensed):
                unexplained.append(gtin)
        wasted = lost_job_waste(delta, bool(baseline), unexplained)
        if wasted is None:
            job.reason = (
                f"packer {self.name} lost the job and its counters: canisters must be counted"
            )
            await self._void(reservation, job)
        else:
            job.reason = f"packer {self.name} lost the job: unverified pouches destroyed"
            uses = [
                Use(g, d, WASTE, "waste", "unverified pouches of a lost job", reason_code="other")
                for g, d in wasted.items()
            ]
            result.wasted = wasted
            if uses:
                await self._post(reservation, uses, job)
                await self._void(f"{reservation}:manual", job, with_manual=False)
            else:
                await self._void(reservation, job)
        log.error("job %s: %s", plan.job_id, job.reason)
        await self._move(job, "failed")
        self.metrics.jobs.labels("failed").inc()

    # ---------------------------------------------------------------- steps

    def _needs(self, planned: PlannedJob) -> dict[str, int]:
        """Units to reserve: the pouches' contents plus an allowance for rejects."""
        return with_reject_allowance(planned.units_by_gtin(), self.settings.reject_allowance)

    def _spec(self, planned: PlannedJob) -> PackerJobSpec:
        return PackerJobSpec(
            job_id=planned.job_id,
            pouches=tuple(
                Pouch(
                    sequence=p.sequence,
                    label=f"{planned.ward} {planned.day:%Y-%m-%d} {planned.time:%H:%M} {p.label}",
                    items=tuple(
                        PouchItem(self.canister_of[gtin].number, units) for gtin, units in p.items
                    ),
                )
                for p in planned.machine_pouches()
            ),
        )

    async def _bring_to_idle(self) -> None:
        """Resets a machine that finished or stopped, so it can take the next job."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = await self.read_status()
            state = status.state
            if status.unit_mode not in (0, UnitMode.PRODUCTION):
                mode = status.unit_mode
                shown = UnitMode(mode).name if mode in set(UnitMode) else str(mode)
                raise PackerNotReady(f"packer {self.name} is in unit mode {shown}, not PRODUCTION")
            if state == PackMLState.IDLE:
                return
            if state in (PackMLState.COMPLETE, PackMLState.STOPPED):
                await self.driver.command(PackMLCommand.RESET)
            elif state == PackMLState.ABORTED:
                await self.driver.command(PackMLCommand.CLEAR)
            await asyncio.sleep(self.settings.poll_interval_s)
        raise PackingError(f"packer {self.name} did not reach Idle (last state {state.name})")

    async def _ensure_canister(self, gtin: str, units: int) -> int:
        """Tops a canister up for `units` (see `CanisterFills.ensure`); a refill the
        technician never scanned fails the job."""
        try:
            return await self.fills.ensure(gtin, units)
        except RefillNotConfirmed as exc:
            raise PackingError(str(exc)) from None

    async def _check_reachable(
        self, needs: dict[str, int], in_canisters: dict[str, int] | None = None
    ) -> None:
        """Each product's units must be in its canister or in the store (for a top-up
        or, after the canister ran dry, its next lot). `in_canisters`: what the
        canisters hold free, when already known."""
        for gtin, units in needs.items():
            if in_canisters is not None:
                held = in_canisters[gtin]
            else:
                held = await self._free_in_canister(gtin)
            if held >= units:
                continue
            central = await self.central_available(gtin)
            if held + central < units:
                raise InsufficientStock(gtin, "central store", units - held, central)

    async def reachable(self, gtin: str) -> int:
        """Units of a product this packer can pack: free in its canister plus free in
        the store (0 without a calibrated canister)."""
        if gtin not in self.canister_of:
            return 0
        return await self._free_in_canister(gtin) + await self.central_available(gtin)

    async def _free_in_canister(self, gtin: str) -> int:
        return await self.fills.free_in_canister(gtin)

    async def central_available(self, gtin: str) -> int:
        """Free units of a product in the store's bins, all usable lots."""
        return await self.fills.central_available(gtin)

    async def _follow(self, planned: PlannedJob, job: Job) -> PackerStatus:
        """Polls the machine until the job ends; clears holds the controller can clear."""
        last_progress = time.monotonic()
        last_count = -1
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            status = await self.read_status()
            done = status.job_pouches_good + status.job_pouches_rejected
            if done != last_count:
                last_count, last_progress = done, time.monotonic()
            if status.state == PackMLState.COMPLETE:
                return status
            if status.state in (PackMLState.STOPPED, PackMLState.ABORTED):
                job.reason = f"machine {status.state.name.lower()} during the job"
                return status
            if status.state == PackMLState.HELD:
                if job.state.value == "packing":
                    await self._move(job, "held")
                try:
                    await self._clear_hold(status)
                except (PackingError, LedgerError) as exc:
                    # The hold cannot be cleared (no stock left for the empty canister):
                    # the job ends here with what was packed.
                    job.reason = f"hold not cleared: {exc}"
                    log.error("job %s on %s: %s", job.job_id, self.name, job.reason)
                    await self.driver.command(PackMLCommand.STOP)
                    return await self._wait_state(PackMLState.STOPPED)
                last_progress = time.monotonic()
                continue
            if status.state == PackMLState.SUSPENDED:
                # Output tray full (StopReason 103): the operator empties it, then the
                # machine is told to go on. Waiting for the operator is not a stall.
                last_progress = time.monotonic()
                if not status.output_full:
                    log.info("packer %s: output emptied, unsuspending", self.name)
                    await self.driver.command(PackMLCommand.UNSUSPEND)
                continue
            if status.state == PackMLState.EXECUTE and job.state.value == "held":
                await self._move(job, "resumed")
            if time.monotonic() - last_progress > self.settings.stall_timeout_s:
                job.reason = f"no pouch for {self.settings.stall_timeout_s:.0f} s: stopped"
                log.error("job %s on %s stalled; stopping the machine", job.job_id, self.name)
                await self.driver.command(PackMLCommand.STOP)
                return await self._wait_state(PackMLState.STOPPED)

    async def _clear_hold(self, status: PackerStatus) -> None:
        if status.stop_reason == StopReason.CANISTER_EMPTY:
            by_number = {c.number: gtin for gtin, c in self.canister_of.items()}
            gtin = by_number.get(status.stop_canister)
            if gtin is None:
                raise PackingError(
                    f"packer {self.name} held for empty canister {status.stop_canister}, "
                    "which the site file does not know"
                )
            # Asking for more than the ledger holds free makes the (empty) canister
            # take its refill; the ledger still counts tablets now in pouches.
            await self._ensure_canister(gtin, await self._free_in_canister(gtin) + 1)
        else:
            # A jam or an operator hold: the operator clears it at the machine.
            await asyncio.sleep(self.settings.operator_clear_s)
        await self.driver.command(PackMLCommand.UNHOLD)

    async def _wait_state(self, wanted: PackMLState) -> PackerStatus:
        for _ in range(200):
            status = await self.read_status()
            if status.state == wanted:
                return status
            await asyncio.sleep(self.settings.poll_interval_s)
        raise DriverError(f"packer {self.name} did not reach {wanted.name}")

    async def _dispensed_by_gtin(self) -> dict[str, int]:
        return dispensed_by_gtin(await self.driver.read_canisters())

    async def _book(
        self,
        planned: PlannedJob,
        job: Job,
        result: JobResult,
        before: dict[str, int],
        after: dict[str, int],
        reservation: str,
    ) -> None:
        good = planned.units_by_gtin(planned.machine_pouches()[: job.pouches_good])
        uses: list[Use] = []
        for gtin, split in split_job(planned.units_by_gtin(), good, before, after).items():
            if split.short:
                log.error(
                    "job %s: machine dispensed %d of %s but good pouches hold %d",
                    job.job_id,
                    split.reported,
                    gtin,
                    split.consumed,
                )
                self.metrics.discrepancies.labels("canister").inc()
            result.dispensed[gtin] = split.dispensed
            result.consumed[gtin] = split.consumed
            result.wasted[gtin] = split.wasted
            if split.consumed:
                uses.append(
                    Use(gtin, split.consumed, CONSUMED, "consume", f"dose pouches {job.job_id}")
                )
            if split.wasted:
                uses.append(
                    Use(
                        gtin,
                        split.wasted,
                        WASTE,
                        "waste",
                        "packing reject",
                        reason_code="packing_reject",
                    )
                )
        if uses:
            await self._post(reservation, uses, job)
        else:
            await self._void(reservation, job, with_manual=False)
        await self._book_manual(planned, job, result, reservation)

    async def _reserve_manual(self, plan: PlannedJob, reservation: str) -> None:
        """Holds the items the technician adds by hand (no calibrated canister) in the
        store, under a reservation of their own beside the job's."""
        manual = plan.manual_units_by_gtin()
        if not manual:
            return
        await self.ledger.reserve(
            f"{reservation}:manual",
            purpose=f"items added by hand to dose pouches {plan.job_id}",
            needs=[Need(g, q) for g, q in sorted(manual.items())],
            from_locations=list(self.settings.store_bins),
            timeout_s=self.settings.reservation_timeout_s,
            actor=ACTOR,
            order_source="packing",
        )

    async def _book_manual(
        self, planned: PlannedJob, job: Job, result: JobResult, reservation: str
    ) -> None:
        """The hand-added items of the pouches that left the machine good (and of the
        pouches that are all hand-made) are consumed; the rest is released."""
        if not planned.manual_units_by_gtin():
            return
        done = [
            *planned.machine_pouches()[: job.pouches_good],
            *(p for p in planned.pouches if not p.items),
        ]
        used = planned.manual_units_by_gtin(done)
        for gtin, units in used.items():
            result.consumed[gtin] = result.consumed.get(gtin, 0) + units
        key = f"{reservation}:manual"
        uses = [
            Use(g, q, CONSUMED, "consume", f"added by hand to dose pouches {job.job_id}")
            for g, q in sorted(used.items())
            if q
        ]
        try:
            if not uses:
                await self._void(key, job, with_manual=False)
                return
            try:
                await self.ledger.post(f"{key}:post", reservation_key=key, uses=uses, actor=ACTOR)
            except LedgerError:
                view = await self.ledger.reservation(key)
                if view.status == "open":
                    raise
                # It ran out while the controller was down: the items are in the
                # pouches all the same, so they are booked from the store afresh.
                await self.ledger.reserve(
                    f"{key}:late",
                    purpose=f"items added by hand to dose pouches {job.job_id}",
                    needs=[Need(u.gtin, u.quantity) for u in uses],
                    from_locations=list(self.settings.store_bins),
                    timeout_s=self.settings.reservation_timeout_s,
                    actor=ACTOR,
                )
                await self.ledger.post(
                    f"{key}:late:post",
                    reservation_key=f"{key}:late",
                    uses=uses,
                    actor=ACTOR,
                )
        except LedgerError as exc:
            log.error("job %s: hand-added items not booked: %s", job.job_id, exc)
            self.metrics.discrepancies.labels("manual").inc()
            job.reason = job.reason or f"hand-added items not booked: {exc}"

    async def _post(self, reservation: str, uses: list[Use], job: Job) -> None:
        """Books the uses on the job's reservation (idempotent: a post repeated after a
        crash returns the first one's result). If the reservation ran out meanwhile
        (the controller was down longer than its timeout), the same uses are booked
        from the canisters' free stock, each under its own key."""
        try:
            await self.ledger.post(
                f"{reservation}:post",
                reservation_key=reservation,
                uses=uses,
                actor=ACTOR,
                allow_overdraw=True,
            )
            return
        except LedgerError as exc:
            try:
                view = await self.ledger.reservation(reservation)
            except UnknownEntity:
                view = None
            if view is not None and view.status == "open":
                log.error("job %s: pouches could not be booked: %s", job.job_id, exc)
                self.metrics.discrepancies.labels("canister").inc()
                job.reason = f"booking failed: {exc}"
                await self._void(reservation, job, with_manual=False)
                return
        for use in uses:
            location = canister_location(self.name, self.canister_of[use.gtin].number)
            try:
                key = f"{reservation}:{use.kind}:{use.gtin}"
                if use.kind == "waste":
                    await self.ledger.waste(
                        key,
                        gtin=use.gtin,
                        quantity=use.quantity,
                        location=location,
                        actor=ACTOR,
                        reason=use.reason,
                        reason_code=use.reason_code or "other",
                    )
                else:
                    await self.ledger.consume(
                        key,
                        gtin=use.gtin,
                        quantity=use.quantity,
                        location=location,
                        actor=ACTOR,
                        reason=use.reason,
                    )
            except LedgerError as exc:
                log.error("job %s: %s of %s not booked: %s", job.job_id, use.kind, use.gtin, exc)
                self.metrics.discrepancies.labels("canister").inc()
                job.reason = f"booking failed: {exc}"

    async def _void(self, reservation: str, job: Job, *, with_manual: bool = True) -> None:
        """Releases a job's reservation and, unless told not to, its hand-added items."""
        keys = [reservation, f"{reservation}:manual"] if with_manual else [reservation]
        for key in keys:
            try:
                await self.ledger.void(
                    f"{key}:void",
                    reservation_key=key,
                    actor=ACTOR,
                    reason=job.reason[:200] or "job failed",
                )
            except LedgerError:
                pass  # never reserved, or already resolved

    async def read_status(self) -> PackerStatus:
        started = time.perf_counter()
        try:
            status = await self.driver.read_status()
        except DriverError:
            self.metrics.driver_errors.labels(self.name).inc()
            # No link, no state: the time until the next answer belongs to none.
            self.metrics.packer_observed(self.name, self.oee, self.oee.lost())
            raise
        self.metrics.driver_latency.labels(self.name, "read_status").observe(
            time.perf_counter() - started
        )
        self._failures = 0
        self.last_status = status
        self.unit_mode = status.unit_mode
        self.metrics.packer_state.labels(self.name).set(int(status.state))
        self.metrics.packer_stop_reason.labels(self.name).set(status.stop_reason)
        seen = (status.processed_total, status.defective_total)
        processed = defective = 0
        if self._seen is not None:
            processed = max(0, seen[0] - self._seen[0])
            defective = max(0, seen[1] - self._seen[1])
        self.metrics.packer_processed.labels(self.name).inc(processed)
        self.metrics.packer_defective.labels(self.name).inc(defective)
        self._seen = seen
        spent = self.oee.observe(status.state, processed=processed, defective=defective)
        self.metrics.packer_observed(self.name, self.oee, spent)
        return status
