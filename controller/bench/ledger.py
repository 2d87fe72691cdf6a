"""Ledger throughput against the raw commit rate of the same engine.

Why: a ledger command is one transaction, so the database's own commit rate is the
ceiling. Measuring both in the same run, on the same engine (SQLite with WAL,
synchronous=NORMAL and BEGIN IMMEDIATE, or PostgreSQL), makes the ratio independent of
how fast or noisy the machine is that day.

* raw: a tight loop of one single-row INSERT and COMMIT into a scratch table;
* one caller: `Ledger.reserve` of one pouch-sized need (first expiry first, over two
  bins) then `Ledger.post` of it as consumed, one pair after another: audit trail and
  idempotency keys included. One reserve-and-post is two commits, so 0.5 of the raw
  rate is what it would reach if its commits were its only cost.
* group commit: the same pair, by `CALLERS` callers at once through `AsyncLedger`, the
  controller's own path (a controller drives ten packers and more cabinets, each
  waiting on its own pair). The writer commits the commands that wait together in one
  transaction, so the ledger can pass the raw commit rate: that is the target.

The three alternate in rounds after a warm-up, and the report gives each round and the
medians, so a burst of noise from a neighbour shows instead of skewing one figure.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, Table, event, insert

from controller.async_ledger import AsyncLedger
from controller.bench.common import latency_ms, median
from controller.ledger import Ledger, Need, Use
from controller.ledger.engine import make_engine
from controller.ledger.group_commit import BatchSettings
from controller.ledger.ledger import CONSUMED, DeliveryLine
from controller.metrics import Metrics

TARGET_RATIO = 1.0
CALLERS = 32
ROUNDS = 3
WARMUP_S = 0.5
POUCH_UNITS = 3  # tablets of one product in one pouch: one need of a reservation
ACTOR = "bench"
# Products of the demo catalogue (valid GTINs); two lots each, in two bins.
PRODUCTS = ("07359990000013", "07359990000020", "07359990000037", "07359990000044")
BINS = ("BENCH/A01", "BENCH/A02")
LOT_UNITS = 10_000_000

_scratch = MetaData()
raw_commits = Table(
    "bench_raw_commits",
    _scratch,
    Column("id", Integer, primary_key=True),
    Column("value", Integer, nullable=False),
)


def seed(ledger: Ledger) -> None:
    """A few products, two lots each in two bins, far more stock than a run uses."""
    ledger.create_schema()
    for i, gtin in enumerate(PRODUCTS):
        ledger.add_product(
            gtin=gtin,
            article=900_000 + i,
            name=f"Bench product {i + 1}",
            substance="bench",
            atc="N02BE01",
            strength="1 mg",
            form="tablet",
            actor=ACTOR,
        )
    ledger.add_location("BENCH", "store")
    for code in BINS:
        ledger.add_location(code, "bin", parent="BENCH")
    today = datetime.now(UTC).date()
    ledger.receive_many(
        "bench:opening",
        [
            DeliveryLine(gtin, f"B{i}{j}", today + timedelta(days=200 + 100 * j), LOT_UNITS, code)
            for i, gtin in enumerate(PRODUCTS)
            for j, code in enumerate(BINS)
        ],
        actor=ACTOR,
        reason="bench opening stock",
    )


class LedgerLoop:
    """Reserve-and-post of one pouch after another, each under keys of its own."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.run_id = uuid.uuid4().hex[:8]
        self.count = itertools.count()
        self.reserve_s: list[float] = []
        self.post_s: list[float] = []

    def one(self) -> None:
        n = next(self.count)
        gtin = PRODUCTS[n % len(PRODUCTS)]
        key = f"bench:{self.run_id}:{n}"
        t0 = time.perf_counter()
        self.ledger.reserve(
            key,
            purpose="bench pouch",
            needs=[Need(gtin, POUCH_UNITS)],
            from_locations=list(BINS),
            timeout_s=600,
            actor=ACTOR,
        )
        t1 = time.perf_counter()
        self.ledger.post(
            f"{key}:post",
            reservation_key=key,
            uses=[Use(gtin, POUCH_UNITS, CONSUMED, "consume", "bench pouch")],
            actor=ACTOR,
        )
        self.reserve_s.append(t1 - t0)
        self.post_s.append(time.perf_counter() - t1)


class GroupLoop:
    """The same pairs, by many callers at once through the async ledger."""

    def __init__(self, ledger: Ledger, callers: int = CALLERS) -> None:
        self.ledger = ledger
        self.callers = callers
        self.run_id = uuid.uuid4().hex[:8]
        self.count = itertools.count()
        self.pair_s: list[float] = []
        self.batches: list[float] = []

    async def _caller(self, aledger: AsyncLedger, deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            n = next(self.count)
            gtin = PRODUCTS[n % len(PRODUCTS)]
            key = f"group:{self.run_id}:{n}"
            t0 = time.perf_counter()
            await aledger.reserve(
                key,
                purpose="bench pouch",
                needs=[Need(gtin, POUCH_UNITS)],
                from_locations=list(BINS),
                timeout_s=600,
                actor=ACTOR,
            )
            await aledger.post(
                f"{key}:post",
                reservation_key=key,
                uses=[Use(gtin, POUCH_UNITS, CONSUMED, "consume", "bench pouch")],
                actor=ACTOR,
            )
            self.pair_s.append(time.perf_counter() - t0)
            done += 1
        return done

    async def _rate(self, seconds: float) -> float:
        metrics = Metrics()
        aledger = AsyncLedger(self.ledger, metrics, BatchSettings(max_commands=64))
        try:
            started = time.perf_counter()
            deadline = started + seconds
            counts = await asyncio.gather(
                *(self._caller(aledger, deadline) for _ in range(self.callers))
            )
            elapsed = time.perf_counter() - started
        finally:
            await asyncio.to_thread(aledger.close)
        samples = next(iter(metrics.ledger_batch_commands.collect())).samples
        total = next(s.value for s in samples if s.name.endswith("_sum"))
        batches = next(s.value for s in samples if s.name.endswith("_count"))
        self.batches.append(total / batches if batches else 0.0)
        return sum(counts) / elapsed

    def rate(self, seconds: float) -> float:
        return asyncio.run(self._rate(seconds))


def _rate(step: Any, seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        step()
        done += 1
    return done / (time.perf_counter() - started)


def _raw_step(engine: Engine) -> Any:
    value = itertools.count()

    def step() -> None:
        with engine.begin() as conn:
            conn.execute(insert(raw_commits), {"value": next(value)})

    return step


def statements_per_pair(engine: Engine, loop: LedgerLoop, pairs: int = 5) -> dict[str, float]:
    """SQL statements and transactions one reserve-and-post sends (counted after the
    timed rounds, so the counting costs them nothing)."""
    seen = {"statements": 0, "begins": 0}

    def on_execute(*_args: Any) -> None:
        seen["statements"] += 1

    def on_begin(*_args: Any) -> None:
        seen["begins"] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "begin", on_begin)
    try:
        for _ in range(pairs):
            loop.one()
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "begin", on_begin)
    return {
        "statements": seen["statements"] / pairs,
        "transactions": seen["begins"] / pairs,
    }


def run(url: str, seconds: float) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        ledger = Ledger(engine)
        seed(ledger)
        _scratch.create_all(engine)
        raw = _raw_step(engine)
        loop = LedgerLoop(ledger)
        group = GroupLoop(ledger)
        _rate(raw, WARMUP_S)
        _rate(loop.one, WARMUP_S)
        group.rate(WARMUP_S)
        loop.reserve_s.clear()
        loop.post_s.clear()
        group.pair_s.clear()
        group.batches.clear()
        window = max(seconds / (3 * ROUNDS), 0.5)
        raw_rounds: list[float] = []
        ledger_rounds: list[float] = []
        group_rounds: list[float] = []
        for _ in range(ROUNDS):
            raw_rounds.append(_rate(raw, window))
            ledger_rounds.append(_rate(loop.one, window))
            group_rounds.append(group.rate(window))
        per_pair = statements_per_pair(engine, loop)
        _scratch.drop_all(engine)
    finally:
        engine.dispose()
    raw_rate = median(raw_rounds) or 0.0
    pair_rate = median(ledger_rounds) or 0.0
    group_rate = median(group_rounds) or 0.0
    ratio = group_rate / raw_rate if raw_rate else 0.0
    return {
        "figures": {
            "raw_commits_per_s": round(raw_rate, 1),
            "reserve_and_post_per_s": round(group_rate, 1),
            "reserve_and_post_per_s_one_caller": round(pair_rate, 1),
            "one_caller_ratio": round(pair_rate / raw_rate, 4) if raw_rate else 0.0,
            "ledger_commands_per_s": round(2 * group_rate, 1),
            "callers": CALLERS,
            "mean_batch_commands": [round(b, 1) for b in group.batches],
            "rounds": {
                "raw_commits_per_s": [round(r, 1) for r in raw_rounds],
                "reserve_and_post_per_s": [round(r, 1) for r in group_rounds],
                "reserve_and_post_per_s_one_caller": [round(r, 1) for r in ledger_rounds],
                "round_s": round(window, 2),
            },
            "pair_latency_group": latency_ms(group.pair_s),
            "reserve_latency": latency_ms(loop.reserve_s),
            "post_latency": latency_ms(loop.post_s),
            "per_reserve_and_post": per_pair,
            "pouch_units": POUCH_UNITS,
        },
        "target": (
            f"reserve-and-post per second, {CALLERS} callers through the group-commit "
            f"writer, >= {TARGET_RATIO} x raw single-row commits per second"
        ),
        "ratio": round(ratio, 4),
        "met": ratio >= TARGET_RATIO,
    }
