"""The guarantees of two-phase reservations (controller/ledger/reservations.py), one
test or a few per guarantee, on a real SQLite file ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from controller.ledger import (
    InsufficientStock,
    Ledger,
    LedgerError,
    ReservationClosed,
    verify_ledger,
)
from controller.ledger.engine import make_engine
from controller.ledger.ledger import Need, Use
from controller.ledger.schema import balances, order_lines

PARA = "07359990000013"  # illustrative GTINs, valid check digits
IBU = "07359990000020"
TODAY = date(2026, 11, 22)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(engine: Engine, clock: Clock) -> Ledger:
    """Paracetamol in two bins: 100 of a late lot and 50 of an early one in A1, 30 of
    the early one in A2; ibuprofen, in the same substitution group, 40 in A1."""
    led = Ledger(engine, clock=clock, min_shelf_life_days=30)
    led.create_schema()
    for gtin, article, name in ((PARA, 100001, "Paracetamol"), (IBU, 100002, "Ibuprofen")):
        led.add_product(
            gtin=gtin,
            article=article,
            name=f"{name} 500 mg",
            substance=name.lower(),
            atc="N02BE01",
            strength="500 mg",
            form="tablet",
            substitution_group="pain",
        )
    led.add_location("STORE", "store")
    led.add_location("STORE/A1", "bin", parent="STORE")
    led.add_location("STORE/A2", "bin", parent="STORE")
    for key, gtin, batch, days, quantity, where in (
        ("rcv-1", PARA, "LATE", 400, 100, "STORE/A1"),
        ("rcv-2", PARA, "EARLY", 100, 50, "STORE/A1"),
        ("rcv-3", PARA, "EARLY", 100, 30, "STORE/A2"),
        ("rcv-4", IBU, "IBU-1", 200, 40, "STORE/A1"),
    ):
        led.receive(
            key,
            gtin=gtin,
            batch=batch,
            expiry=TODAY + timedelta(days=days),
            quantity=quantity,
            to_location=where,
            actor="test",
        )
    return led


def reserve(led: Ledger, key: str, quantity: int, *, partial: bool = False) -> None:
    led.reserve(
        key,
        purpose="job",
        needs=[Need(PARA, quantity)],
        from_locations=["STORE/A1"],
        timeout_s=60,
        actor="t",
        partial=partial,
    )


def balance_rows(engine: Engine) -> list[tuple[int, int]]:
    with engine.connect() as conn:
        return [(int(r.on_hand), int(r.reserved)) for r in conn.execute(select(balances))]


# ---------------------------------------------------------------- G1 no unit reserved twice


def test_g1_reserved_never_exceeds_on_hand(ledger: Ledger, engine: Engine) -> None:
    reserve(ledger, "r1", 120)
    with pytest.raises(InsufficientStock, match="wanted 31, available 30"):
        reserve(ledger, "r2", 31)
    assert ledger.available("STORE/A1", PARA) == 30
    assert all(reserved <= on_hand for on_hand, reserved in balance_rows(engine))
    assert verify_ledger(engine) == []


def test_g1_two_ledgers_racing_for_the_last_units_get_them_once(
    ledger: Ledger, engine: Engine, clock: Clock
) -> None:
    rivals = [Ledger(engine, clock=clock, min_shelf_life_days=30) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcome: list[str] = []

    def take(led: Ledger, key: str) -> None:
        barrier.wait()
        try:
            reserve(led, key, 100)
            outcome.append("reserved")
        except InsufficientStock:
            outcome.append("refused")

    threads = [threading.Thread(target=take, args=(r, f"race-{i}")) for i, r in enumerate(rivals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == ["refused", "reserved"]
    assert ledger.available("STORE/A1", PARA) == 50
    assert verify_ledger(engine) == []


# ---------------------------------------------------------------- G2 no negative balance


def test_g2_posting_more_than_reserved_is_refused_and_books_nothing(
    ledger: Ledger, engine: Engine
) -> None:
    reserve(ledger, "r1", 10)
    before = ledger.movement_count()
    with pytest.raises(InsufficientStock):
        ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 11, "CONSUMED")], actor="t")
    assert ledger.movement_count() == before
    assert ledger.reservation("r1").status == "open"
    assert all(0 <= reserved <= on_hand for on_hand, reserved in balance_rows(engine))


def test_g2_an_overdraw_takes_free_stock_only(ledger: Ledger, engine: Engine) -> None:
    reserve(ledger, "r1", 140)  # all but 10 of A1's paracetamol
    reserve(ledger, "r2", 5)
    with pytest.raises(InsufficientStock):
        ledger.post(
            "p1",
            reservation_key="r1",
            uses=[Use(PARA, 146, "CONSUMED")],
            actor="t",
            allow_overdraw=True,
        )
    ledger.post(
        "p2",
        reservation_key="r1",
        uses=[Use(PARA, 145, "CONSUMED")],
        actor="t",
        allow_overdraw=True,
    )
    assert ledger.on_hand("STORE/A1", PARA) == 5
    assert ledger.reservation("r2").reserved_of(PARA) == 5
    assert all(0 <= reserved <= on_hand for on_hand, reserved in balance_rows(engine))
    assert verify_ledger(engine) == []


# ---------------------------------------------------------------- G3 first expiry first out


def test_g3_the_earliest_usable_lot_is_reserved_first(ledger: Ledger) -> None:
    reserve(ledger, "r1", 60)
    lines = ledger.reservation("r1").lines
    assert [(line.batch, line.quantity) for line in lines] == [("EARLY", 50), ("LATE", 10)]


def test_g3_blocked_or_short_dated_lots_are_never_reserved(ledger: Ledger, clock: Clock) -> None:
    ledger.set_lot_status(PARA, "EARLY", "quarantined")
    reserve(ledger, "r1", 10)
    assert {line.batch for line in ledger.reservation("r1").lines} == {"LATE"}
    # 390 days on, LATE has less than the 30 days of shelf life left that are required
    clock.now += timedelta(days=390)
    with pytest.raises(InsufficientStock):
        reserve(ledger, "r2", 1)


# ---------------------------------------------------------------- G4 a retry books nothing


def test_g4_a_retry_with_the_same_key_books_nothing(ledger: Ledger) -> None:
    reserve(ledger, "r1", 20)
    reserve(ledger, "r1", 20)
    assert ledger.open_reservation_count() == 1
    assert ledger.available("STORE/A1", PARA) == 130
    ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 15, "CONSUMED")], actor="t")
    moved = ledger.movement_count()
    again = ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 15, "CONSUMED")], actor="t")
    assert again.status == "posted"
    assert ledger.movement_count() == moved
    assert ledger.moved_quantity("consume") == 15


def test_g4_a_key_used_for_another_command_is_refused(ledger: Ledger) -> None:
    reserve(ledger, "r1", 20)
    with pytest.raises(LedgerError, match="already used for a reserve, not a void"):
        ledger.void("r1", reservation_key="r1", actor="t", reason="x")
    assert ledger.reservation("r1").status == "open"


# ---------------------------------------------------------------- G5 resolve once


def test_g5_a_reservation_is_resolved_once(ledger: Ledger) -> None:
    reserve(ledger, "r1", 20)
    ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 5, "CONSUMED")], actor="t")
    with pytest.raises(ReservationClosed, match="already posted"):
        ledger.void("v1", reservation_key="r1", actor="t", reason="too late")
    with pytest.raises(ReservationClosed):
        ledger.post("p2", reservation_key="r1", uses=[Use(PARA, 5, "CONSUMED")], actor="t")
    assert ledger.moved_quantity("consume") == 5
    assert ledger.available("STORE/A1", PARA) == 145


# ---------------------------------------------------------------- G6 the rest is released


def test_g6_a_post_releases_what_it_did_not_use(ledger: Ledger) -> None:
    reserve(ledger, "r1", 60)
    ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 25, "CONSUMED")], actor="t")
    assert ledger.on_hand("STORE/A1", PARA) == 125
    assert ledger.available("STORE/A1", PARA) == 125
    # the earliest lot was used first
    assert [(s.batch, s.on_hand) for s in ledger.stock(location="STORE/A1", gtin=PARA)] == [
        ("EARLY", 25),
        ("LATE", 100),
    ]


def test_g6_a_void_releases_everything(ledger: Ledger, engine: Engine) -> None:
    reserve(ledger, "r1", 60)
    ledger.void("v1", reservation_key="r1", actor="t", reason="cancelled")
    assert ledger.reservation("r1").status == "voided"
    assert ledger.available("STORE/A1", PARA) == 150
    assert all(reserved == 0 for _, reserved in balance_rows(engine))


# ---------------------------------------------------------------- G7 expiry releases


def test_g7_expire_overdue_releases_only_overdue_open_reservations(
    ledger: Ledger, clock: Clock
) -> None:
    reserve(ledger, "old", 10)
    reserve(ledger, "done", 10)
    ledger.post("p1", reservation_key="done", uses=[Use(PARA, 10, "CONSUMED")], actor="t")
    clock.now += timedelta(seconds=30)
    reserve(ledger, "young", 10)
    clock.now += timedelta(seconds=31)
    assert ledger.expire_overdue() == ["old"]
    assert ledger.reservation("old").status == "expired"
    assert ledger.reservation("done").status == "posted"
    assert ledger.reservation("young").status == "open"
    assert ledger.available("STORE/A1", PARA) == 150 - 10 - 10  # "done" used, "young" held
    assert ledger.expire_overdue() == []


# ---------------------------------------------------------------- G8 all or nothing


def test_g8_a_reservation_that_cannot_be_filled_holds_nothing(
    ledger: Ledger, engine: Engine
) -> None:
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "r1",
            purpose="job",
            needs=[Need(PARA, 10), Need(IBU, 41)],
            from_locations=["STORE/A1"],
            timeout_s=60,
            actor="t",
            order_source="dose",
        )
    assert ledger.open_reservation_count() == 0
    assert all(reserved == 0 for _, reserved in balance_rows(engine))
    with engine.connect() as conn:
        recorded = {(r.key, r.requested, r.filled) for r in conn.execute(select(order_lines))}
    assert recorded == {("r1:0", 10, 0), ("r1:1", 41, 0)}


def test_g8_partial_takes_what_there_is(ledger: Ledger) -> None:
    reserve(ledger, "r1", 200, partial=True)
    assert ledger.reservation("r1").reserved_of(PARA) == 150


# ---------------------------------------------------------------- G9 blocked lots give way


def test_g9_a_quarantined_lot_moves_its_reservations(ledger: Ledger, engine: Engine) -> None:
    reserve(ledger, "r1", 60)  # 50 EARLY + 10 LATE
    result = ledger.set_lot_status(PARA, "EARLY", "quarantined")
    assert result == {"moved": 50, "released": 0}
    view = ledger.reservation("r1")
    assert {line.batch for line in view.lines} == {"LATE"}
    assert view.reserved_of(PARA) == 60
    assert verify_ledger(engine) == []


def test_g9_a_reservation_left_without_stock_is_voided(ledger: Ledger) -> None:
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 30)],
        from_locations=["STORE/A2"],
        timeout_s=60,
        actor="t",
    )
    assert ledger.set_lot_status(PARA, "EARLY", "recalled") == {"moved": 0, "released": 30}
    assert ledger.reservation("r1").status == "voided"
    assert ledger.reservation("r1").lines == ()


def test_g9_a_location_hold_moves_reservations_off_it(ledger: Ledger) -> None:
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 70)],  # EARLY: 50 in A1, 20 in A2
        from_locations=["STORE/A2", "STORE/A1"],
        timeout_s=60,
        actor="t",
    )
    assert {line.location for line in ledger.reservation("r1").lines} == {"STORE/A1", "STORE/A2"}
    ledger.hold_location("h1", "STORE/A2", reason="cabinet lost its cooling", actor="pharm")
    view = ledger.reservation("r1")
    assert view.reserved_of(PARA) == 70
    assert {line.location for line in view.lines} == {"STORE/A1"}
