"""Group commit: commands batched by the writer give exactly what they give one by one.

The oracle is the ledger itself without batching. Hypothesis invents a list of commands
(reservations over two bins, posts, voids, consumption and transfers of free stock,
retries of earlier keys, keys reused for another kind of command, commands that must be
refused for want of stock or for a closed reservation), and the list is run twice on
fresh ledgers: once through the `GroupWriter`, all submitted at once so that they share
transactions, once by calling the ledger one command at a time. Every command's result
or refusal, every balance and every movement must be the same; the batched ledger must
verify clean (balances, reservations, the audit chain).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError

from controller.ledger import InsufficientStock, Ledger, LedgerError, Need, Use, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.group_commit import BatchSettings, GroupWriter, Job
from controller.ledger.ledger import CONSUMED, DeliveryLine
from controller.ledger.schema import audit_log, balances, locations, lots, movements

GTINS = ("07359990000013", "07359990000020")
BINS = ("STORE/A", "STORE/B")
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
ACTOR = "tester"


def _clock() -> datetime:
    return NOW


def fresh_ledger(url: str) -> Ledger:
    ledger = Ledger(make_engine(url), clock=_clock)
    ledger.create_schema()
    for i, gtin in enumerate(GTINS):
        ledger.add_product(
            gtin=gtin,
            article=800_000 + i,
            name=f"Batch product {i}",
            substance="test",
            atc="N02BE01",
            strength="1 mg",
            form="tablet",
            actor=ACTOR,
        )
    ledger.add_location("STORE", "store")
    ledger.add_location("WARD", "store")
    for code in BINS:
        ledger.add_location(code, "bin", parent="STORE")
    expiry = date(2027, 6, 1)
    ledger.receive_many(
        "opening",
        [
            DeliveryLine(gtin, f"L{i}{j}", expiry + timedelta(days=30 * j), 20, code)
            for i, gtin in enumerate(GTINS)
            for j, code in enumerate(BINS)
        ],
        actor=ACTOR,
    )
    return ledger


# ---------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    """One ledger call, described by values so that it can run on two ledgers."""

    kind: str
    key: str
    gtin: str = GTINS[0]
    quantity: int = 1
    target: str = ""

    def call(self, ledger: Ledger) -> Callable[[], Any]:
        if self.kind == "reserve":
            return lambda: ledger.reserve(
                self.key,
                purpose="pouch",
                needs=[Need(self.gtin, self.quantity)],
                from_locations=list(BINS),
                timeout_s=600,
                actor=ACTOR,
            )
        if self.kind == "post":
            return lambda: ledger.post(
                self.key,
                reservation_key=self.target,
                uses=[Use(self.gtin, self.quantity, CONSUMED, "consume", "packed")],
                actor=ACTOR,
            )
        if self.kind == "void":
            return lambda: ledger.void(
                self.key, reservation_key=self.target, actor=ACTOR, reason="cancelled"
            )
        if self.kind == "consume":
            return lambda: ledger.consume(
                self.key,
                gtin=self.gtin,
                quantity=self.quantity,
                location=self.target,
                actor=ACTOR,
                reason="used",
            )
        assert self.kind == "transfer"
        return lambda: ledger.transfer(
            self.key,
            gtin=self.gtin,
            quantity=self.quantity,
            from_location=self.target,
            to_location="WARD",
            actor=ACTOR,
            reason="moved",
        )


@st.composite
def command_lists(draw: st.DrawFn) -> list[Command]:
    out: list[Command] = []
    reserved: list[tuple[str, str, int]] = []
    for n in range(draw(st.integers(2, 24))):
        choice = draw(st.sampled_from(["reserve", "post", "void", "consume", "transfer", "retry"]))
        gtin = draw(st.sampled_from(GTINS))
        quantity = draw(st.integers(1, 30))  # above 20 a bin, above 40 the store: refused
        key = f"k{n}"
        if choice == "retry" and out:
            earlier = draw(st.sampled_from(out))
            reuse_kind = draw(st.booleans())
            kind = "consume" if reuse_kind and earlier.kind != "consume" else earlier.kind
            out.append(Command(kind, earlier.key, earlier.gtin, earlier.quantity, earlier.target))
        elif choice in ("post", "void") and reserved:
            res_key, res_gtin, res_qty = draw(st.sampled_from(reserved))
            used = draw(st.integers(1, res_qty + 2))  # more than reserved: refused
            out.append(Command(choice, key, res_gtin, used, res_key))
        elif choice in ("consume", "transfer"):
            out.append(Command(choice, key, gtin, quantity, draw(st.sampled_from(BINS))))
        else:
            out.append(Command("reserve", key, gtin, quantity))
            reserved.append((key, gtin, quantity))
    return out


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    try:
        return ("ok", repr(fn()))
    except LedgerError as exc:
        return (type(exc).__name__, str(exc))


def run_batched(ledger: Ledger, cmds: list[Command], size: int) -> list[tuple[str, str]]:
    """Every command submitted before the writer may start, so batches fill up."""
    results: list[tuple[str, str] | None] = [None] * len(cmds)
    finished = threading.Event()
    remaining = [len(cmds)]
    lock = threading.Lock()

    def done_for(i: int) -> Callable[[Any, BaseException | None], None]:
        def done(result: Any, error: BaseException | None) -> None:
            if error is None:
                results[i] = ("ok", repr(result))
            elif isinstance(error, LedgerError):
                results[i] = (type(error).__name__, str(error))
            else:
                results[i] = ("crash", repr(error))
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    finished.set()

        return done

    gate = threading.Event()
    writer = GroupWriter(ledger, BatchSettings(max_commands=size))
    writer.submit(Job(gate.wait, lambda _r, _e: None, batchable=False))  # holds the thread
    for i, cmd in enumerate(cmds):
        writer.submit(Job(cmd.call(ledger), done_for(i)))
    gate.set()
    assert finished.wait(60), "the writer did not finish the commands"
    writer.close()
    return [r for r in results if r is not None]


def state(engine: Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as conn:
        stock = conn.execute(
            select(locations.c.code, lots.c.batch, balances.c.on_hand, balances.c.reserved)
            .join(locations, locations.c.id == balances.c.location_id)
            .join(lots, lots.c.id == balances.c.lot_id)
            .order_by(locations.c.code, lots.c.batch)
        ).all()
        moved = conn.execute(
            select(movements.c.kind, movements.c.idempotency_key, movements.c.quantity).order_by(
                movements.c.idempotency_key, movements.c.kind, movements.c.quantity
            )
        ).all()
    return [tuple(r) for r in stock], [tuple(r) for r in moved]


@pytest.fixture
def db_files(tmp_path: Path) -> Iterator[Callable[[], str]]:
    counter = iter(range(10_000))
    yield lambda: f"sqlite:///{tmp_path}/ledger-{next(counter)}.db"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cmds=command_lists(), size=st.integers(2, 16))
def test_batched_commands_give_what_they_give_one_by_one(
    db_files: Callable[[], str], cmds: list[Command], size: int
) -> None:
    batched, alone = fresh_ledger(db_files()), fresh_ledger(db_files())
    try:
        got = run_batched(batched, cmds, size)
        expected = [outcome(cmd.call(alone)) for cmd in cmds]
        assert got == expected
        assert state(batched.engine) == state(alone.engine)
        assert verify_ledger(batched.engine) == []
    finally:
        batched.engine.dispose()
        alone.engine.dispose()


def test_a_refused_command_does_not_sink_its_neighbours(ledger_url: str) -> None:
    ledger = fresh_ledger(ledger_url)
    cmds = [
        Command("consume", "a", GTINS[0], 5, BINS[0]),
        Command("consume", "b", GTINS[0], 500, BINS[0]),  # refused: not enough stock
        Command("consume", "c", GTINS[1], 7, BINS[1]),
    ]
    try:
        got = run_batched(ledger, cmds, size=8)
        _, moved = state(ledger.engine)
        problems = verify_ledger(ledger.engine)
    finally:
        ledger.engine.dispose()
    assert got[0] == ("ok", "None") and got[2] == ("ok", "None")
    assert got[1][0] == InsufficientStock.__name__
    assert sorted((key, qty) for kind, key, qty in moved if kind == "consume") == [
        ("a", 5),
        ("c", 7),
    ]
    assert problems == []


def test_a_batch_shares_one_transaction_and_one_audit_head_update(tmp_path: Path) -> None:
    ledger = fresh_ledger(f"sqlite:///{tmp_path}/one.db")
    seen = {"begins": 0, "head_updates": 0}

    def on_begin(*_args: Any) -> None:
        seen["begins"] += 1

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.startswith("UPDATE audit_head"):
            seen["head_updates"] += 1

    event.listen(ledger.engine, "begin", on_begin)
    event.listen(ledger.engine, "before_cursor_execute", on_execute)
    cmds = [Command("consume", f"c{i}", GTINS[i % 2], 1, BINS[i % 2]) for i in range(10)]
    got = run_batched(ledger, cmds, size=64)
    assert all(status == "ok" for status, _ in got)
    assert seen == {"begins": 1, "head_updates": 1}
    with ledger.engine.connect() as conn:
        seqs = conn.execute(select(audit_log.c.seq).order_by(audit_log.c.seq)).scalars().all()
        last = conn.execute(select(func.max(audit_log.c.seq))).scalar()
    assert seqs == list(range(1, int(last or 0) + 1))
    assert verify_ledger(ledger.engine) == []


def test_a_batch_that_cannot_commit_runs_every_command_again_alone(tmp_path: Path) -> None:
    """A lost connection in the middle of a batch: the whole transaction is gone, so every
    command of it runs again on its own and each is booked exactly once."""
    ledger = fresh_ledger(f"sqlite:///{tmp_path}/spoiled.db")
    poisoned = {"left": 1}

    def lose_connection() -> None:
        if poisoned["left"]:
            poisoned["left"] -= 1
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    results: list[Any] = []
    done = threading.Event()
    gate = threading.Event()
    writer = GroupWriter(ledger, BatchSettings(max_commands=16))
    writer.submit(Job(gate.wait, lambda _r, _e: None, batchable=False))
    cmds = [Command("consume", f"s{i}", GTINS[0], 2, BINS[0]) for i in range(3)]
    for cmd in cmds[:2]:
        writer.submit(Job(cmd.call(ledger), lambda r, e: results.append((r, e))))
    writer.submit(Job(lose_connection, lambda r, e: results.append((r, e))))
    writer.submit(Job(cmds[2].call(ledger), lambda r, e: (results.append((r, e)), done.set())))
    gate.set()
    assert done.wait(30)
    writer.close()
    assert [e is None for _, e in results] == [True, True, True, True]
    _, moved = state(ledger.engine)
    assert sorted(key for kind, key, _ in moved if kind == "consume") == ["s0", "s1", "s2"]
    assert verify_ledger(ledger.engine) == []


def test_batch_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_commands: 0"):
        BatchSettings(max_commands=0)
    with pytest.raises(ValueError, match="wait: 5"):
        BatchSettings(wait_s=5)
