"""Cabinet polling: M simulated Modbus cabinets at 1 Hz, one real controller.

Why: every cabinet is polled once a second, and each poll reads the registers of all
its pockets and books whatever their counters say happened, so the work grows with
cabinets x pockets. This runs `Controller.start()` (pollers, replenishment,
housekeeping) against M cabinets of 8 pockets behind Modbus TCP gateways (50 unit ids
each, as serial cabinets behind a gateway) in a process of their own, with nurses
taking doses in real time, and measures over the window:

* polls per second: `CabinetPoller.poll_once` calls that completed (read, bookings,
  comparison with the ledger), against M / poll interval;
* poll duration (read to last booking) and the interval each cabinet really saw;
* the controller process's CPU (all threads) as a share of one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from controller.app import Controller
from controller.bench import site as bench_site
from controller.bench.common import CpuMeter, Fleet, latency_ms, quantile
from controller.cabinets.poller import POCKET_COUNTERS, CabinetPoller, pocket_location
from controller.ledger.ledger import DeliveryLine
from controller.ledger.schema import counter_marks
from drivers.base import CabinetStatus

TARGET_CPU_PERCENT = 100.0  # one core
TARGET_SHARE = 0.95  # of M polls per second
WARMUP_S = 5.0
START_TIMEOUT_S = 120.0


def _seed(controller: Controller, m: int) -> None:
    """Schema and locations, the pockets' stock as the cabinets count it, and the
    counters' starting marks (the commissioning `doseline run --adopt-cabinets` does,
    booked in two transactions instead of one per pocket)."""
    controller.prepare_ledger()
    ledger = controller.ledger
    expiry = datetime.now(UTC).date() + timedelta(days=400)
    ledger.receive_many(
        "bench:pockets",
        [
            DeliveryLine(
                bench_site.PRODUCTS[p][0],
                f"BENCH{p + 1}",
                expiry,
                bench_site.POCKET_START,
                pocket_location(bench_site.cabinet_name(i), p + 1),
            )
            for i in range(m)
            for p in range(bench_site.POCKETS)
        ],
        actor="bench",
        reason="bench: pockets filled",
    )
    rows = []
    for i in range(m):
        device = bench_site.cabinet_name(i)
        rows.append({"device": device, "counter": "temperature_excursions", "value": 0})
        for p in range(bench_site.POCKETS):
            rows += [
                {"device": device, "counter": f"pocket{p + 1}.{name}", "value": 0}
                for _field, name in POCKET_COUNTERS
            ]
    with ledger.audited("bench", "counter", "bench: cabinets commissioned") as conn:
        conn.execute(insert(counter_marks), rows)
        ledger.note("counter", "bench", None, {"marks": len(rows), "value": 0})


class PollLog:
    def __init__(self, cabinets: int) -> None:
        self.cabinets = cabinets
        self.polled_once: set[str] = set()
        self.all_polled = asyncio.Event()
        self.done: list[tuple[float, float]] = []  # (end, duration)
        self.failed: list[tuple[float, str]] = []
        self.starts: dict[str, list[float]] = defaultdict(list)

    def wrap(self, poller: CabinetPoller) -> None:
        inner = poller.poll_once

        async def poll_once() -> CabinetStatus:
            t0 = time.perf_counter()
            self.starts[poller.name].append(t0)
            try:
                status = await inner()
            except Exception as exc:
                self.failed.append((time.perf_counter(), type(exc).__name__))
                raise
            t1 = time.perf_counter()
            self.done.append((t1, t1 - t0))
            self.polled_once.add(poller.name)
            if len(self.polled_once) >= self.cabinets:
                self.all_polled.set()
            return status

        setattr(poller, "poll_once", poll_once)  # noqa: B010 (a method, replaced)


async def measure(url: str, m: int, seconds: float, workdir: str) -> dict[str, Any]:
    polls = PollLog(m)
    fleet = Fleet(bench_site.cabinet_fleet(m), workdir)
    ready = await fleet.start()
    controller = Controller(bench_site.cabinet_site(url, m, ready["gateways"]), ledger_url=url)
    try:
        seed_started = time.perf_counter()
        await asyncio.to_thread(_seed, controller, m)
        seed_s = time.perf_counter() - seed_started
        for poller in controller.pollers.values():
            polls.wrap(poller)
        await controller.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT_S):
                await polls.all_polled.wait()
        await asyncio.sleep(WARMUP_S)
        fleet_cpu0 = fleet.cpu_seconds()
        meter = CpuMeter().start()
        await asyncio.sleep(seconds)
        meter.stop()
        fleet_cpu1 = fleet.cpu_seconds()
        window = (meter.wall0, meter.wall0 + meter.wall)
        booked = sum(p.withdrawals_booked + p.wasted_booked for p in controller.pollers.values())
    finally:
        await controller.stop()
        controller.close()
        await fleet.stop()
    done = [d for t, d in polls.done if window[0] <= t <= window[1]]
    failed = [why for t, why in polls.failed if window[0] <= t <= window[1]]
    intervals = [
        b - a
        for starts in polls.starts.values()
        for a, b in itertools.pairwise(starts)
        if window[0] <= b <= window[1]
    ]
    rate = len(done) / meter.wall
    wanted = m / 1.0
    cpu = meter.percent_of_one_core
    fleet_cpu = None
    if fleet_cpu0 is not None and fleet_cpu1 is not None:
        fleet_cpu = round(100 * (fleet_cpu1 - fleet_cpu0) / meter.wall, 1)
    return {
        "figures": {
            "cabinets": m,
            "pockets_each": bench_site.POCKETS,
            "gateways": len(ready["gateways"]),
            "poll_interval_s": 1.0,
            "window_s": round(meter.wall, 1),
            "polls": len(done),
            "polls_per_s": round(rate, 1),
            "wanted_polls_per_s": wanted,
            "share_of_wanted": round(rate / wanted, 3),
            "failed_polls": len(failed),
            "poll_duration": latency_ms(done),
            "interval_per_cabinet_s": {
                "p50": _round(quantile(intervals, 0.5)),
                "p99": _round(quantile(intervals, 0.99)),
            },
            "doses_booked_since_start": booked,
            "controller_cpu_percent_of_one_core": round(cpu, 1),
            "simulators_cpu_percent_of_one_core": fleet_cpu,
            "seed_s": round(seed_s, 1),
        },
        "target": (
            f"{m} cabinets polled at 1 Hz (>= {TARGET_SHARE:.0%} of {wanted:.0f} polls/s) "
            f"within one core (controller CPU < {TARGET_CPU_PERCENT:.0f} %)"
        ),
        "met": rate >= TARGET_SHARE * wanted and cpu < TARGET_CPU_PERCENT,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run(url: str, m: int, seconds: float, workdir: str) -> dict[str, Any]:
    return asyncio.run(measure(url, m, seconds, workdir))
