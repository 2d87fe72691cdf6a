"""End-to-end packing: N simulated OPC UA packers at full speed, one real controller.

Why: the controller follows every packer by polling it (10 Hz) and books each job in
the ledger; with many packers the event loop, the OPC UA client and the one ledger
worker (SQLite) are shared by all of them. This runs `Controller.start_packing()` (the
packer runners, the dispatcher, housekeeping) against a fleet of simulators in a
process of their own, feeds every packer jobs of 60 pouches through the packing store
and the dispatcher, and measures:

* pouches per second over the window: the machines' ProdProcessedCount as the
  controller read it, job changeovers included;
* controller latency per pouch: for each status read that shows the job's pouch
  counter advanced, from sending that read to the runner having handled it (the event
  loop has run the runner up to its next wait). The runner books per job, not per
  pouch, so this is the per-pouch work; the booking is measured per job below;
* booking latency per job: from sending the read that showed the job Complete to the
  commit of the job's post (consumed and waste) in the ledger;
* the controller process's CPU (all threads) and the simulators' CPU over the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.app import Controller
from controller.bench import site as bench_site
from controller.bench.common import CpuMeter, Fleet, latency_ms, median, quantile
from controller.ledger.ledger import DeliveryLine
from controller.packing.runner import canister_location
from drivers.base import (
    CanisterStatus,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    UnitMode,
)

log = logging.getLogger("doseline.bench")
TARGET_P99_S = 0.050
TARGET_SHARE = 0.95  # of N x ppm / 60, job changeovers included
WARMUP_EXTRA_S = 2.0
START_TIMEOUT_S = 120.0


@dataclass
class _Seen:
    job_id: str = ""
    done: int = 0
    processed: int | None = None
    completed_at: float | None = None  # read that showed the last job Complete


@dataclass
class Recorder:
    """What the metered drivers and the ledger wrapper saw, with perf_counter times."""

    seen: dict[str, _Seen] = field(default_factory=lambda: defaultdict(_Seen))
    pouches: list[tuple[float, str, int]] = field(default_factory=list)  # (t, packer, n)
    handled: list[tuple[float, float]] = field(default_factory=list)  # (t, latency s)
    reads: list[tuple[float, float]] = field(default_factory=list)  # (t, read s)
    complete_read: dict[str, float] = field(default_factory=dict)  # job id -> t0
    bookings: list[tuple[float, float]] = field(default_factory=list)  # (t, latency s)
    changeovers: list[tuple[float, float]] = field(default_factory=list)  # (t, gap s)
    first_pouch: dict[str, float] = field(default_factory=dict)
    packers: int = 0
    all_packing: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self, packer: str, status: PackerStatus, t0: float, t1: float) -> None:
        seen = self.seen[packer]
        self.reads.append((t1, t1 - t0))
        if seen.processed is not None and status.processed_total > seen.processed:
            self.pouches.append((t1, packer, status.processed_total - seen.processed))
        seen.processed = status.processed_total
        done = status.job_pouches_good + status.job_pouches_rejected
        if status.job_id and status.job_id == seen.job_id and done > seen.done:
            new = done - seen.done
            self.first_pouch.setdefault(packer, t1)
            if len(self.first_pouch) >= self.packers:
                self.all_packing.set()
            if seen.done == 0 and seen.completed_at is not None:
                self.changeovers.append((t1, t1 - seen.completed_at))
                seen.completed_at = None
            asyncio.get_running_loop().call_soon(self._handled, t0, new)
        if status.job_id != seen.job_id:
            seen.job_id, seen.done = status.job_id, 0
            if done:
                seen.done = done
        else:
            seen.done = max(seen.done, done)
        if status.state == PackMLState.COMPLETE and status.job_id:
            if status.job_id not in self.complete_read:
                self.complete_read[status.job_id] = t0
                seen.completed_at = t1

    def _handled(self, t0: float, pouches: int) -> None:
        now = time.perf_counter()
        for _ in range(pouches):
            self.handled.append((now, now - t0))

    def booked(self, job_id: str) -> None:
        t0 = self.complete_read.get(job_id)
        if t0 is not None:
            now = time.perf_counter()
            self.bookings.append((now, now - t0))


class MeteredPacker(PackerDriver):
    """The real driver, with every status read reported to the recorder."""

    def __init__(self, inner: PackerDriver, recorder: Recorder) -> None:
        self.inner = inner
        self.name = inner.name
        self.recorder = recorder

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def read_status(self) -> PackerStatus:
        t0 = time.perf_counter()
        status = await self.inner.read_status()
        self.recorder.status(self.name, status, t0, time.perf_counter())
        return status

    async def read_canisters(self) -> Sequence[CanisterStatus]:
        return await self.inner.read_canisters()

    async def load_job(self, job: PackerJobSpec) -> None:
        await self.inner.load_job(job)

    async def command(self, command: PackMLCommand) -> None:
        await self.inner.command(command)

    async def refill_canister(self, number: int, quantity: int) -> None:
        await self.inner.refill_canister(number, quantity)

    @property
    def reports_refilled_total(self) -> bool:
        return self.inner.reports_refilled_total

    async def set_unit_mode(self, mode: UnitMode) -> None:
        await self.inner.set_unit_mode(mode)


def _meter(controller: Controller, recorder: Recorder) -> None:
    for name, runner in controller.runners.items():
        metered = MeteredPacker(controller.packer_drivers[name], recorder)
        controller.packer_drivers[name] = metered
        runner.driver = metered
    post = controller.aledger.post

    async def timed_post(key: str, **kwargs: Any) -> Any:
        result = await post(key, **kwargs)
        reservation = str(kwargs.get("reservation_key", ""))
        if reservation.startswith("job:") and reservation.count(":") == 2:
            recorder.booked(reservation.split(":")[1])
        return result

    setattr(controller.aledger, "post", timed_post)  # noqa: B010 (a method, replaced)


def _seed(controller: Controller, n: int) -> None:
    """Schema, locations, and each canister's tablets (what the simulator holds)."""
    controller.prepare_ledger()
    expiry = datetime.now(UTC).date() + timedelta(days=400)
    controller.ledger.receive_many(
        "bench:canisters",
        [
            DeliveryLine(
                bench_site.PRODUCTS[c][0],
                f"BENCH{c + 1}",
                expiry,
                bench_site.CANISTER_UNITS,
                canister_location(bench_site.packer_name(i), c + 1),
            )
            for i in range(n)
            for c in range(bench_site.CANISTERS)
        ],
        actor="bench",
        reason="bench: canisters filled",
    )


def _in(window: tuple[float, float], events: Sequence[tuple[float, Any]]) -> list[Any]:
    return [value for t, value in events if window[0] <= t <= window[1]]


async def _feed(controller: Controller, n: int) -> None:
    """Keeps one job waiting per packer: a new one whenever a packer finishes one.
    The first jobs are 10 to 59 pouches long, so the job ends spread over time."""
    counts = {name: 0 for name in controller.runners}
    for i, name in enumerate(controller.runners):
        first = 10 + (i * 50) // max(n, 1)
        for size in (first, bench_site.JOB_POUCHES):
            counts[name] += 1
            await controller.aledger.run(
                controller.store.add_job, bench_site.job(name, counts[name], size), actor="bench"
            )
    finished = {name: 0 for name in controller.runners}
    while True:
        await asyncio.sleep(0.5)
        for name, runner in controller.runners.items():
            while finished[name] < len(runner.results):
                finished[name] += 1
                counts[name] += 1
                job = bench_site.job(name, counts[name], bench_site.JOB_POUCHES)
                await controller.aledger.run(controller.store.add_job, job, actor="bench")


async def measure(url: str, n: int, seconds: float, workdir: str) -> dict[str, Any]:
    recorder = Recorder(packers=n)
    fleet = Fleet(bench_site.packer_fleet(n), workdir)
    started = time.perf_counter()
    ready = await fleet.start()
    controller = Controller(bench_site.packer_site(url, ready["packers"]), ledger_url=url)
    feeder: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(_seed, controller, n)
        _meter(controller, recorder)
        await controller.start_packing()
        feeder = asyncio.create_task(_feed(controller, n), name="bench-feeder")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT_S):
                await recorder.all_packing.wait()
        packing = len(recorder.first_pouch)
        warmup_s = time.perf_counter() - started
        await asyncio.sleep(WARMUP_EXTRA_S)
        fleet_cpu0 = fleet.cpu_seconds()
        meter = CpuMeter().start()
        window_start = time.perf_counter()
        await asyncio.sleep(seconds)
        window = (window_start, time.perf_counter())
        meter.stop()
        fleet_cpu1 = fleet.cpu_seconds()
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        await controller.stop()
        controller.close()
        await fleet.stop()
    pouches = sum(_in(window, [(t, k) for t, _p, k in recorder.pouches]))
    per_packer: dict[str, int] = defaultdict(int)
    for t, packer, k in recorder.pouches:
        if window[0] <= t <= window[1]:
            per_packer[packer] += k
    rate = pouches / meter.wall
    ideal = n * bench_site.PPM / 60
    handled = _in(window, recorder.handled)
    p99 = quantile(handled, 0.99)
    fleet_cpu = None
    if fleet_cpu0 is not None and fleet_cpu1 is not None:
        fleet_cpu = round(100 * (fleet_cpu1 - fleet_cpu0) / meter.wall, 1)
    packer_rates = [per_packer.get(name, 0) / meter.wall * 60 for name in controller.runners]
    share = rate / ideal if ideal else 0.0
    return {
        "figures": {
            "packers": n,
            "packers_packing_at_start": packing,
            "pouches_per_minute_each": bench_site.PPM,
            "window_s": round(meter.wall, 1),
            "warmup_s": round(warmup_s + WARMUP_EXTRA_S, 1),
            "pouches": pouches,
            "pouches_per_s": round(rate, 2),
            "ideal_pouches_per_s": round(ideal, 2),
            "share_of_ideal": round(share, 3),
            "per_packer_pouches_per_minute": {
                "min": round(min(packer_rates), 1) if packer_rates else None,
                "median": round(median(packer_rates) or 0, 1),
                "max": round(max(packer_rates), 1) if packer_rates else None,
            },
            "controller_latency_per_pouch": latency_ms(handled),
            "status_read": latency_ms(_in(window, recorder.reads)),
            "job_booking_latency": latency_ms(_in(window, recorder.bookings)),
            "job_changeover_s": {
                "samples": len(_in(window, recorder.changeovers)),
                "p50": _round(quantile(_in(window, recorder.changeovers), 0.5)),
                "max": _round(max(_in(window, recorder.changeovers), default=None)),
            },
            "controller_cpu_percent_of_one_core": round(meter.percent_of_one_core, 1),
            "simulators_cpu_percent_of_one_core": fleet_cpu,
            "simulators_start_s": ready.get("start_s"),
        },
        "target": (
            f"{n} packers at {bench_site.PPM:.0f} pouches/min sustained (>= "
            f"{TARGET_SHARE:.0%} of {ideal:.1f} pouches/s, changeovers included) with p99 "
            f"controller latency per pouch < {TARGET_P99_S * 1000:.0f} ms"
        ),
        "met": share >= TARGET_SHARE and p99 is not None and p99 < TARGET_P99_S,
        **(
            {
                "note": f"a {meter.wall:.0f} s window counts each packer's pouches to within "
                f"one (about {100 * 60 / bench_site.PPM / meter.wall:.0f} %): use --seconds 20 "
                "or more to judge the share"
            }
            if meter.wall < 20
            else {}
        ),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run(url: str, n: int, seconds: float, workdir: str) -> dict[str, Any]:
    return asyncio.run(measure(url, n, seconds, workdir))
