"""Many writers on one ledger at once, on SQLite and PostgreSQL.

Several controllers share one PostgreSQL ledger in production, and even one controller
books from several threads. The ledger promises that this is safe because stock only
leaves a balance row through a conditional UPDATE (never read-modify-write) and every
command is idempotent by key. These tests make writers really contend: each worker
thread has its own `Ledger` and engine on the same database (as separate controllers
would), and dozens of asyncio tasks hand their ledger calls to that pool at once, held
back by a gate until every thread is connected and waiting.

* 48 tasks reserve the last 20 usable units (three lots in three bins, beside a
  quarantined lot and one inside the minimum shelf life): never more is reserved than
  there is, no line comes from an unusable lot or exceeds its lot's stock, a refusal
  only happens when what it wanted was really not there, and the ledger verifies.
  Then every reservation is posted and voided at the same time, under two different
  keys: exactly one of the two wins, and stock is conserved.
* The same command with the same idempotency key from 16 workers at once books once,
  and all 16 get its result.
* A lot quarantined while reservations are being made is left with no open line on it.

Throughput (reservations per second) is printed, never asserted: run with `-s` to see.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from controller.ledger import (
    InsufficientStock,
    Ledger,
    LedgerError,
    ReservationClosed,
    ReservationView,
    verify_ledger,
)
from controller.ledger.engine import make_engine
from controller.ledger.ledger import Need, Use
from controller.ledger.schema import movements, reservations

PARA = "07359990000013"
NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TODAY = NOW.date()
BINS = ["STORE/A1", "STORE/A2", "STORE/B1"]
# (bin, batch, expiry, units, status): 20 usable units, and 15 that must never be reserved.
LOTS = [
    ("STORE/A1", "LOT-A", TODAY + timedelta(days=100), 7, "released"),
    ("STORE/A2", "LOT-B", TODAY + timedelta(days=200), 7, "released"),
    ("STORE/B1", "LOT-C", TODAY + timedelta(days=300), 6, "released"),
    ("STORE/A1", "QUAR", TODAY + timedelta(days=50), 10, "quarantined"),
    ("STORE/B1", "SHORT", TODAY + timedelta(days=10), 5, "released"),  # < 30 days left
]
MIN_SHELF_LIFE_DAYS = 30
USABLE = {
    (loc, batch): units
    for loc, batch, expiry, units, status in LOTS
    if status == "released" and expiry >= TODAY + timedelta(days=MIN_SHELF_LIFE_DAYS)
}
TOTAL = sum(units for *_, units, _ in LOTS)
THREADS = 16
WORKERS = 48


def clock() -> datetime:
    return NOW


def open_ledger(url: str) -> Ledger:
    return Ledger(make_engine(url), clock=clock, min_shelf_life_days=MIN_SHELF_LIFE_DAYS)


@dataclass(frozen=True)
class Outcome:
    value: Any = None
    error: BaseException | None = None


class Workers:
    """A pool of threads, each with a ledger (and engine) of its own on the same database.

    `run` hands a batch of calls to the pool as asyncio futures; each call first connects
    its thread's ledger, then waits at a gate that `run` opens once the whole batch is
    submitted, so that the batch starts together and really contends.
    """

    def __init__(self, url: str, threads: int = THREADS) -> None:
        self.url = url
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ledger-worker")
        self._local = threading.local()
        self._engines: list[Engine] = []
        self._lock = threading.Lock()
        self._gate = threading.Event()

    def _ledger(self) -> Ledger:
        led: Ledger | None = getattr(self._local, "ledger", None)
        if led is None:
            led = open_ledger(self.url)
            with led.engine.connect():
                pass  # connected before the gate opens
            with self._lock:
                self._engines.append(led.engine)
            self._local.ledger = led
        return led

    def _call(self, fn: Callable[[Ledger], Any]) -> Outcome:
        led = self._ledger()
        if not self._gate.wait(timeout=60):
            raise TimeoutError("the gate never opened")
        try:
            return Outcome(value=fn(led))
        except LedgerError as exc:
            return Outcome(error=exc)

    def submit(self, fn: Callable[[Ledger], Any]) -> asyncio.Future[Outcome]:
        return asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    async def run(self, calls: list[Callable[[Ledger], Any]]) -> tuple[list[Outcome], float]:
        """Runs every call at once; returns the outcomes in order and the seconds taken."""
        self._gate.clear()
        futures = [self.submit(fn) for fn in calls]
        started = time.perf_counter()
        self._gate.set()
        outcomes = await asyncio.gather(*futures)
        return list(outcomes), time.perf_counter() - started

    def close(self) -> None:
        self._gate.set()
        self._pool.shutdown(wait=True)
        for engine in self._engines:
            engine.dispose()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """The ledger with PARA in five lots: 20 usable units in three bins."""
    led = open_ledger(ledger_url)
    led.create_schema()
    led.add_product(
        gtin=PARA,
        article=100001,
        name="Paracetamol 500 mg",
        substance="paracetamol",
        atc="N02BE01",
        strength="500 mg",
        form="tablet",
    )
    led.add_location("STORE", "store")
    for code in BINS:
        led.add_location(code, "bin", parent="STORE")
    for loc, batch, expiry, units, status in LOTS:
        led.receive(
            f"rcv-{batch}",
            gtin=PARA,
            batch=batch,
            expiry=expiry,
            quantity=units,
            to_location=loc,
            actor="setup",
        )
        if status != "released":
            led.set_lot_status(PARA, batch, status, key=f"status-{batch}", actor="setup")
    yield led
    led.engine.dispose()


@pytest.fixture
def workers(ledger_url: str, ledger: Ledger) -> Iterator[Workers]:
    pool = Workers(ledger_url)
    yield pool
    pool.close()
    left = [t.name for t in threading.enumerate() if t.name.startswith("ledger-worker")]
    assert left == [], f"worker threads left running: {left}"


def assert_sound(led: Ledger) -> None:
    violations = verify_ledger(led.engine)
    assert violations == [], [str(v) for v in violations]
    for row in led.stock():
        assert 0 <= row.reserved <= row.on_hand, row


def free_usable(led: Ledger) -> int:
    return sum(led.available(loc, PARA) for loc in BINS)


def reserving(key: str, quantity: int) -> Callable[[Ledger], ReservationView]:
    def call(led: Ledger) -> ReservationView:
        return led.reserve(
            key,
            purpose=f"job {key}",
            needs=[Need(PARA, quantity)],
            from_locations=BINS,
            timeout_s=600,
            actor="worker",
        )

    return call


def posting(
    key: str, reservation: str, quantity: int, *, overdraw: bool = False
) -> Callable[[Ledger], ReservationView]:
    def call(led: Ledger) -> ReservationView:
        return led.post(
            key,
            reservation_key=reservation,
            uses=[Use(PARA, quantity, "CONSUMED")],
            actor="worker",
            allow_overdraw=overdraw,
        )

    return call


def voiding(key: str, reservation: str) -> Callable[[Ledger], ReservationView]:
    def call(led: Ledger) -> ReservationView:
        return led.void(key, reservation_key=reservation, actor="worker", reason="race")

    return call


def consuming(key: str, quantity: int, location: str) -> Callable[[Ledger], None]:
    def call(led: Ledger) -> None:
        led.consume(
            key, gtin=PARA, quantity=quantity, location=location, actor="worker", reason="dose"
        )

    return call


async def test_concurrent_reservations_never_oversell(ledger: Ledger, workers: Workers) -> None:
    assert free_usable(ledger) == sum(USABLE.values()) == 20
    rng = random.Random(20261122)
    wants = [rng.randint(1, 3) for _ in range(WORKERS)]

    outcomes, seconds = await workers.run([reserving(f"res-{i}", q) for i, q in enumerate(wants)])
    print(
        f"\n{ledger.engine.dialect.name}: {WORKERS} reservations on {THREADS} threads "
        f"in {seconds:.2f} s, {WORKERS / seconds:.0f}/s"
    )

    granted: dict[str, ReservationView] = {}
    refused: list[int] = []
    for i, (quantity, outcome) in enumerate(zip(wants, outcomes, strict=True)):
        if outcome.error is None:
            view = outcome.value
            assert view.status == "open" and view.reserved_of(PARA) == quantity
            granted[view.key] = view
        else:
            assert isinstance(outcome.error, InsufficientStock), outcome.error
            assert not ledger.command_done(f"res-{i}")
            refused.append(quantity)

    held: Counter[tuple[str, str]] = Counter()
    for view in granted.values():
        for line in view.lines:
            held[(line.location, line.batch)] += line.quantity
    assert sum(held.values()) <= sum(USABLE.values())
    for slot, quantity in held.items():
        assert slot in USABLE, f"allocated from an unusable lot: {slot}"
        assert quantity <= USABLE[slot], f"{slot}: {quantity} reserved of {USABLE[slot]}"
    left = free_usable(ledger)
    assert left == sum(USABLE.values()) - sum(held.values())
    # Free stock only shrank during the run, so a refusal means it really was not there.
    assert all(quantity > left for quantity in refused), (refused, left)
    assert granted and refused, "the stock should have run out part of the way"
    assert ledger.open_reservation_count() == len(granted)
    assert_sound(ledger)

    # Every reservation is posted and voided at once, under two keys; one of them wins.
    plans: dict[str, tuple[int, bool]] = {}
    calls: list[Callable[[Ledger], ReservationView]] = []
    for key, view in granted.items():
        reserved = view.reserved_of(PARA)
        used, overdraw = rng.choice(
            [(reserved, False), (max(reserved - 1, 1), False), (reserved + 1, True)]
        )
        plans[key] = (used, overdraw)
        calls.append(posting(f"post-{key}", key, used, overdraw=overdraw))
        calls.append(voiding(f"void-{key}", key))
    order = list(range(len(calls)))
    rng.shuffle(order)
    shuffled, seconds = await workers.run([calls[i] for i in order])
    outcomes = [Outcome()] * len(calls)
    for position, i in enumerate(order):
        outcomes[i] = shuffled[position]
    print(f"{ledger.engine.dialect.name}: {len(calls)} posts and voids in {seconds:.2f} s")

    consumed = 0
    for n, key in enumerate(granted):
        posted, voided = outcomes[2 * n], outcomes[2 * n + 1]
        assert (posted.error is None) != (voided.error is None), (key, posted, voided)
        loser = voided if posted.error is None else posted
        assert isinstance(loser.error, ReservationClosed | InsufficientStock), loser.error
        if isinstance(loser.error, InsufficientStock):
            assert loser is posted and plans[key][1], "only an overdraw may lack stock"
        view = ledger.reservation(key)
        if posted.error is None:
            used = plans[key][0]
            assert view.status == "posted"
            assert sum(line.posted for line in view.lines) == min(used, view.reserved_of(PARA))
            consumed += used
        else:
            assert view.status == "voided"
            assert all(line.posted == 0 for line in view.lines)
            assert not ledger.command_done(f"post-{key}")
    assert ledger.open_reservation_count() == 0
    assert ledger.moved_quantity("consume") == consumed
    assert sum(row.on_hand for row in ledger.stock()) == TOTAL - consumed
    assert sum(row.reserved for row in ledger.stock()) == 0
    assert_sound(ledger)


async def test_same_key_from_many_workers_books_once(ledger: Ledger, workers: Workers) -> None:
    """A retried command racing its original (or another controller sending the same one)
    is booked once, and every sender gets the same answer, whichever got there first:
    also the senders that waited on the winner's row locks and then found the stock gone
    or the reservation resolved (a packing runner would otherwise report a booking as
    failed that was made)."""

    def booked(key: str) -> int:
        with ledger.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(movements.c.quantity), 0)).where(
                        movements.c.idempotency_key == key
                    )
                ).scalar_one()
            )

    def all_answered(outcomes: list[Outcome]) -> list[Any]:
        errors = [o.error for o in outcomes if o.error is not None]
        assert errors == [], f"{len(errors)} twins refused: {Counter(map(repr, errors))}"
        return [o.value for o in outcomes]

    twins = workers.threads
    views = all_answered((await workers.run([reserving("twin-res", 4)] * twins))[0])
    assert {(v.key, v.reserved_of(PARA)) for v in views} == {("twin-res", 4)}
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(reservations)).scalar_one() == 1
    assert sum(row.reserved for row in ledger.stock()) == 4
    assert_sound(ledger)

    # LOT-B in STORE/A2 holds exactly 7: the first twin leaves nothing for the others.
    all_answered((await workers.run([consuming("twin-consume", 7, "STORE/A2")] * twins))[0])
    assert booked("twin-consume") == 7
    assert_sound(ledger)

    views = all_answered((await workers.run([posting("twin-post", "twin-res", 3)] * twins))[0])
    assert {v.status for v in views} == {"posted"}
    assert booked("twin-post") == 3
    view = ledger.reservation("twin-res")
    assert view.status == "posted" and sum(line.posted for line in view.lines) == 3
    assert ledger.moved_quantity("consume") == 7 + 3
    assert sum(row.on_hand for row in ledger.stock()) == TOTAL - 10
    assert sum(row.reserved for row in ledger.stock()) == 0
    assert_sound(ledger)


async def test_lot_blocked_during_reservations_is_left_unallocated(
    ledger: Ledger, workers: Workers, request: pytest.FixtureRequest
) -> None:
    """A lot quarantined while reservations are being made holds no open line afterwards.

    Blocking a lot moves the open reservations off it, and a blocked lot is never
    allocated again. A reservation that is under way when the quarantine commits must
    either be moved by it or see the new status; one that does neither would send
    quarantined tablets into pouches.
    """
    calls: list[Callable[[Ledger], Any]] = [reserving(f"res-{i}", 1) for i in range(WORKERS)]

    # LOT-A expires first, so it is what the first reservations take.
    def quarantine(led: Ledger) -> dict[str, Any]:
        return led.set_lot_status(PARA, "LOT-A", "quarantined", key="recall", actor="qa")

    calls.insert(THREADS // 4, quarantine)
    outcomes, _ = await workers.run(calls)
    for outcome in outcomes:
        assert outcome.error is None or isinstance(outcome.error, InsufficientStock), outcome
    assert ledger.lot(PARA, "LOT-A")["status"] == "quarantined"
    assert_sound(ledger)
    stuck = [
        key
        for key in (f"res-{i}" for i in range(WORKERS))
        if ledger.command_done(key)
        and (view := ledger.reservation(key)).status == "open"
        and any(line.batch == "LOT-A" for line in view.lines)
    ]
    assert stuck == [], f"{len(stuck)} open reservations still hold quarantined LOT-A"
    held = sum(row.reserved for row in ledger.stock())
    assert held <= sum(units for (_, batch), units in USABLE.items() if batch != "LOT-A")
