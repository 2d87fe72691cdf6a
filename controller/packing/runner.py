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
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.async_ledger import AsyncLedger
from controller.config import Packer
from controller.ledger import InsufficientStock, LedgerError, Need, Use
from controller.ledger.ledger import CONSUMED, WASTE
from controller.metrics import Metrics
from controller.packing.job import Job
from controller.packing.planner import PlannedJob
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
)

log = logging.getLogger("doseline.packing")
ACTOR = "controller"


def canister_location(packer: str, number: int) -> str:
    return f"{packer}/C{number:02d}"


@dataclass
class PackingSettings:
    store_bins: Sequence[str]
    reservation_timeout_s: float = 900
    reject_allowance: float = 0.05
    poll_interval_s: float = 0.1
    stall_timeout_s: float = 30.0
    operator_clear_s: float = 0.5


@dataclass
class JobResult:
    job: Job
    dispensed: dict[str, int] = field(default_factory=dict)
    consumed: dict[str, int] = field(default_factory=dict)
    wasted: dict[str, int] = field(default_factory=dict)


class PackingError(Exception):
    pass


class PackerRunner:
    def __init__(
        self,
        config: Packer,
        driver: PackerDriver,
        ledger: AsyncLedger,
        metrics: Metrics,
        settings: PackingSettings,
    ) -> None:
        self.config = config
        self.name = config.name
        self.driver = driver
        self.ledger = ledger
        self.metrics = metrics
        self.settings = settings
        self.canister_of = {c.gtin: c for c in config.canisters}
        self.results: list[JobResult] = []
        self._seen: tuple[int, int] | None = None  # last processed/defective totals
        self.link_ok = False  # set by ensure_connected, cleared by a failed exchange
        self._outage_logged = False

    # ---------------------------------------------------------------- service loop

    async def serve(self, queue: asyncio.Queue[PlannedJob]) -> None:
        """Takes jobs from the shared queue while this packer is free and reachable.

        A packer whose link failed takes no job until it is connected again, so the
        other packers carry on with the queue meanwhile.
        """
        while True:
            await self.ensure_connected()
            planned = await queue.get()
            try:
                self.results.append(await self.run_job(planned))
            except Exception as exc:  # one bad job must not stop the packer's service
                log.exception("job %s on %s: unexpected error", planned.job_id, self.name)
                job = Job(planned.job_id)
                job.packer, job.reason = self.name, f"unexpected error: {exc!r}"
                await self._move(job, "failed")
                self.results.append(JobResult(job))
                self.metrics.jobs.labels("failed").inc()
            finally:
                queue.task_done()

    async def _move(self, job: Job, trigger: str) -> None:
        """Fires a job transition, then writes it to the ledger's audit trail."""
        before = job.state.value
        await getattr(job, trigger)()
        try:
            await self.ledger.call(
                "record_event",
                actor=ACTOR,
                action="job",
                entity="job",
                key=job.job_id,
                old={"state": before},
                new={
                    "state": job.state.value,
                    "packer": self.name,
                    "good": job.pouches_good,
                    "rejected": job.pouches_rejected,
                },
                reason=job.reason or trigger,
            )
        except LedgerError as exc:  # the job goes on; the gap is visible in the log
            log.error("job %s: transition %s not audited: %s", job.job_id, trigger, exc)

    async def ensure_connected(self) -> None:
        """(Re)connects with backoff: 1 s, doubling to 30 s. Logged once per outage."""
        backoff = 1.0
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
            self.link_ok, self._outage_logged = True, False
            log.info("packer %s connected", self.name)

    async def run_job(self, planned: PlannedJob) -> JobResult:
        job = Job(planned.job_id)
        job.packer = self.name
        result = JobResult(job)
        reservation = f"job:{planned.job_id}"
        try:
            missing = [g for g in planned.units_by_gtin() if g not in self.canister_of]
            if missing:
                raise PackingError(f"no canister on {self.name} for GTIN {', '.join(missing)}")
            await self._bring_to_idle()
            needs = self._needs(planned)
            for gtin, units in needs.items():
                await self._ensure_canister(gtin, units, f"{planned.job_id}:pre")
            await self.ledger.call(
                "reserve",
                reservation,
                purpose=f"dose pouches {planned.job_id}",
                needs=[Need(g, q) for g, q in needs.items()],
                from_locations=[
                    canister_location(self.name, self.canister_of[g].number) for g in needs
                ],
                timeout_s=self.settings.reservation_timeout_s,
                actor=ACTOR,
                order_source="packing",
            )
            await self._move(job, "reserved")
        except (PackingError, LedgerError, DriverError) as exc:
            if isinstance(exc, DriverError):
                self.link_ok = False
            job.reason = str(exc)
            log.error("job %s on %s not started: %s", planned.job_id, self.name, exc)
            await self._void(reservation, job)
            await self._move(job, "failed")
            self.metrics.jobs.labels("failed").inc()
            return result

        try:
            before = await self._dispensed_by_gtin()
            await self.driver.load_job(self._spec(planned))
            await self._move(job, "loaded")
            await self.driver.command(PackMLCommand.START)
            await self._move(job, "started")
            status = await self._follow(planned, job)
            after = await self._dispensed_by_gtin()
        except DriverError as exc:
            self.link_ok = False
            job.reason = str(exc)
            log.error("job %s on %s: machine failed: %s", planned.job_id, self.name, exc)
            self.metrics.driver_errors.labels(self.name).inc()
            # What the machine did before it was lost is unknown here: the reservation
            # stays open for recovery to settle from the machine's counters, and expires
            # by itself if nobody does.
            await self._move(job, "failed")
            self.metrics.jobs.labels("failed").inc()
            return result

        job.pouches_good = status.job_pouches_good
        job.pouches_rejected = status.job_pouches_rejected
        await self._book(planned, job, result, before, after)
        with_all = status.state == PackMLState.COMPLETE
        if with_all and job.pouches_good == len(planned.pouches):
            await self._move(job, "completed")
            self.metrics.jobs.labels("completed").inc()
        else:
            job.reason = job.reason or f"machine ended in {status.state.name}"
            await self._move(job, "ended_partial")
            self.metrics.jobs.labels("partial").inc()
        try:
            await self._bring_to_idle()
        except DriverError as exc:
            log.warning("packer %s: could not reset after job: %s", self.name, exc)
        return result

    # ---------------------------------------------------------------- steps

    def _needs(self, planned: PlannedJob) -> dict[str, int]:
        """Units to reserve: the pouches' contents plus an allowance for rejects."""
        return {
            gtin: units + math.ceil(units * self.settings.reject_allowance)
            for gtin, units in planned.units_by_gtin().items()
        }

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
                for p in planned.pouches
            ),
        )

    async def _bring_to_idle(self) -> None:
        """Resets a machine that finished or stopped, so it can take the next job."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = await self.read_status()
            state = status.state
            if state == PackMLState.IDLE:
                return
            if state in (PackMLState.COMPLETE, PackMLState.STOPPED):
                await self.driver.command(PackMLCommand.RESET)
            elif state == PackMLState.ABORTED:
                await self.driver.command(PackMLCommand.CLEAR)
            await asyncio.sleep(self.settings.poll_interval_s)
        raise PackingError(f"packer {self.name} did not reach Idle (last state {state.name})")

    async def _ensure_canister(self, gtin: str, units: int, key: str) -> None:
        """Tops a canister up from the central store when it holds less than `units`."""
        canister = self.canister_of[gtin]
        location = canister_location(self.name, canister.number)
        free = await self.ledger.call("available", location, gtin)
        if free >= units:
            return
        # Room is what the machine says: during a job the ledger still counts tablets
        # that are already in pouches (they are booked when the job ends).
        physical = {c.number: c.count for c in await self.driver.read_canisters()}
        room = canister.capacity - physical.get(canister.number, 0)
        if room < units - free:
            raise PackingError(
                f"canister {canister.number} of {self.name} holds at most {canister.capacity}, "
                f"job needs {units} free of GTIN {gtin}"
            )
        central = 0
        for bin_code in self.settings.store_bins:
            central += await self.ledger.call("available", bin_code, gtin)
        quantity = min(room, central)
        if quantity < units - free:
            raise InsufficientStock(gtin, "central store", units - free, central)
        fill_key = f"canfill:{self.name}:{canister.number}:{key}"
        await self.ledger.call(
            "reserve",
            fill_key,
            purpose=f"canister {canister.number} of {self.name}",
            needs=[Need(gtin, quantity)],
            from_locations=list(self.settings.store_bins),
            timeout_s=self.settings.reservation_timeout_s,
            actor=ACTOR,
        )
        try:
            await self.driver.refill_canister(canister.number, quantity)
        except DriverError:
            await self.ledger.call(
                "void",
                f"{fill_key}:void",
                reservation_key=fill_key,
                actor=ACTOR,
                reason="canister refill refused by the machine",
            )
            raise
        await self.ledger.call(
            "post",
            f"{fill_key}:post",
            reservation_key=fill_key,
            uses=[Use(gtin, quantity, location, "transfer", "canister refill")],
            actor=ACTOR,
        )
        log.info(
            "canister %s of %s refilled with %d of %s", canister.number, self.name, quantity, gtin
        )

    async def _follow(self, planned: PlannedJob, job: Job) -> PackerStatus:
        """Polls the machine until the job ends; clears holds the controller can clear."""
        last_progress = time.monotonic()
        last_count = -1
        holds = 0
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
                holds += 1
                if job.state.value == "packing":
                    await self._move(job, "held")
                await self._clear_hold(planned, status, holds)
                last_progress = time.monotonic()
                continue
            if status.state == PackMLState.EXECUTE and job.state.value == "held":
                await self._move(job, "resumed")
            if time.monotonic() - last_progress > self.settings.stall_timeout_s:
                job.reason = f"no pouch for {self.settings.stall_timeout_s:.0f} s: stopped"
                log.error("job %s on %s stalled; stopping the machine", job.job_id, self.name)
                await self.driver.command(PackMLCommand.STOP)
                return await self._wait_state(PackMLState.STOPPED)

    async def _clear_hold(self, planned: PlannedJob, status: PackerStatus, holds: int) -> None:
        if status.stop_reason == StopReason.CANISTER_EMPTY:
            by_number = {c.number: gtin for gtin, c in self.canister_of.items()}
            gtin = by_number.get(status.stop_canister)
            if gtin is None:
                raise PackingError(
                    f"packer {self.name} held for empty canister {status.stop_canister}, "
                    "which the site file does not know"
                )
            location = canister_location(self.name, status.stop_canister)
            free = await self.ledger.call("available", location, gtin)
            await self._ensure_canister(gtin, free + 1, f"{planned.job_id}:hold{holds}")
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
        totals: dict[str, int] = {}
        for canister in await self.driver.read_canisters():
            totals[canister.gtin] = totals.get(canister.gtin, 0) + canister.dispensed_total
        return totals

    async def _book(
        self,
        planned: PlannedJob,
        job: Job,
        result: JobResult,
        before: dict[str, int],
        after: dict[str, int],
    ) -> None:
        good = planned.units_by_gtin(planned.pouches[: job.pouches_good])
        uses: list[Use] = []
        for gtin in planned.units_by_gtin():
            dispensed = after.get(gtin, 0) - before.get(gtin, 0)
            used = good.get(gtin, 0)
            if dispensed < used:
                log.error(
                    "job %s: machine dispensed %d of %s but good pouches hold %d",
                    job.job_id,
                    dispensed,
                    gtin,
                    used,
                )
                self.metrics.discrepancies.labels("canister").inc()
                dispensed = used
            result.dispensed[gtin] = dispensed
            result.consumed[gtin] = used
            result.wasted[gtin] = dispensed - used
            if used:
                uses.append(Use(gtin, used, CONSUMED, "consume", f"dose pouches {job.job_id}"))
            if dispensed > used:
                uses.append(
                    Use(
                        gtin,
                        dispensed - used,
                        WASTE,
                        "waste",
                        "packing reject",
                        reason_code="packing_reject",
                    )
                )
        reservation = f"job:{planned.job_id}"
        try:
            await self.ledger.call(
                "post",
                f"{reservation}:post",
                reservation_key=reservation,
                uses=uses,
                actor=ACTOR,
                allow_overdraw=True,
            )
        except LedgerError as exc:
            log.error("job %s: pouches could not be booked: %s", job.job_id, exc)
            self.metrics.discrepancies.labels("canister").inc()
            job.reason = f"booking failed: {exc}"
            await self._void(reservation, job)

    async def _void(self, reservation: str, job: Job) -> None:
        try:
            await self.ledger.call(
                "void",
                f"{reservation}:void",
                reservation_key=reservation,
                actor=ACTOR,
                reason=job.reason[:200] or "job failed",
            )
        except LedgerError:
            pass  # never reserved, or already resolved

    async def read_status(self) -> PackerStatus:
        try:
            status = await self.driver.read_status()
        except DriverError:
            self.metrics.driver_errors.labels(self.name).inc()
            raise
        self.metrics.packer_state.labels(self.name).set(int(status.state))
        self.metrics.packer_stop_reason.labels(self.name).set(status.stop_reason)
        seen = (status.processed_total, status.defective_total)
        if self._seen is not None:
            self.metrics.packer_processed.labels(self.name).inc(max(0, seen[0] - self._seen[0]))
            self.metrics.packer_defective.labels(self.name).inc(max(0, seen[1] - self._seen[1]))
        else:
            self.metrics.packer_processed.labels(self.name)
            self.metrics.packer_defective.labels(self.name)
        self._seen = seen
        return status
