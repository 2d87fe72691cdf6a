"""Ledger commands and invariants, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from controller.ledger import InsufficientStock, Ledger, ReservationClosed, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.errors import InvalidQuantity, LedgerError, UnknownEntity
from controller.ledger.ledger import Need, Use

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
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    engine = make_engine(ledger_url)
    led = Ledger(engine, clock=clock, min_shelf_life_days=30)
    led.create_schema()
    led.add_product(
        gtin=PARA,
        article=100001,
        name="Paracetamol 500 mg",
        substance="paracetamol",
        atc="N02BE01",
        strength="500 mg",
        form="tablet",
        unit_price="0.35",
    )
    led.add_product(
        gtin=IBU,
        article=100002,
        name="Ibuprofen 400 mg",
        substance="ibuprofen",
        atc="M01AE01",
        strength="400 mg",
        form="tablet",
        unit_price="0.50",
    )
    led.add_location("STORE", "store")
    led.add_location("STORE/A1", "bin", parent="STORE")
    led.add_location("STORE/A2", "bin", parent="STORE")
    led.add_location("P1/C01", "canister", product_gtin=PARA)
    led.add_location("W1/CAB/P01", "pocket", product_gtin=PARA)
    yield led
    engine.dispose()


def stock_in(led: Ledger) -> None:
    led.receive(
        "rcv-1",
        gtin=PARA,
        batch="LATE",
        expiry=TODAY + timedelta(days=400),
        quantity=100,
        to_location="STORE/A1",
        actor="test",
    )
    led.receive(
        "rcv-2",
        gtin=PARA,
        batch="EARLY",
        expiry=TODAY + timedelta(days=60),
        quantity=30,
        to_location="STORE/A2",
        actor="test",
    )
    led.receive(
        "rcv-3",
        gtin=PARA,
        batch="SHORT",
        expiry=TODAY + timedelta(days=10),
        quantity=50,
        to_location="STORE/A1",
        actor="test",
    )


def test_reserve_is_fefo_and_skips_short_shelf_life(ledger: Ledger) -> None:
    stock_in(ledger)
    res = ledger.reserve(
        "r1",
        purpose="refill",
        needs=[Need(PARA, 40)],
        from_locations=["STORE/A1", "STORE/A2"],
        timeout_s=60,
        actor="t",
    )
    # SHORT expires within the 30-day minimum shelf life, so EARLY goes first, then LATE.
    assert [(a.batch, a.quantity) for a in res.lines] == [("EARLY", 30), ("LATE", 10)]
    assert ledger.available("STORE/A1", PARA) == 90
    assert verify_ledger(ledger.engine) == []


def test_post_deducts_actual_and_releases_rest(ledger: Ledger) -> None:
    stock_in(ledger)
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 40)],
        from_locations=["STORE/A1", "STORE/A2"],
        timeout_s=60,
        actor="t",
    )
    res = ledger.post(
        "p1", reservation_key="r1", uses=[Use(PARA, 35, "P1/C01", "transfer")], actor="t"
    )
    assert res.status == "posted"
    assert ledger.on_hand("P1/C01", PARA) == 35
    assert ledger.on_hand("STORE/A2", PARA) == 0
    assert ledger.on_hand("STORE/A1", PARA) == 145  # 150 - 5 of LATE
    assert sum(s.reserved for s in ledger.stock()) == 0
    assert ledger.open_reservation_count() == 0
    assert verify_ledger(ledger.engine) == []


def test_post_more_than_reserved_is_refused_unless_overdraw(ledger: Ledger) -> None:
    stock_in(ledger)
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 10)],
        from_locations=["STORE/A2"],
        timeout_s=60,
        actor="t",
    )
    with pytest.raises(InsufficientStock):
        ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 11, "CONSUMED")], actor="t")
    assert ledger.reservation("r1").status == "open"  # nothing half-done
    ledger.post(
        "p1", reservation_key="r1", uses=[Use(PARA, 11, "CONSUMED")], actor="t", allow_overdraw=True
    )
    assert ledger.on_hand("STORE/A2", PARA) == 19
    assert verify_ledger(ledger.engine) == []


def test_reservation_resolves_once(ledger: Ledger) -> None:
    stock_in(ledger)
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 5)],
        from_locations=["STORE/A1"],
        timeout_s=60,
        actor="t",
    )
    ledger.void("v1", reservation_key="r1", actor="t", reason="cancelled")
    with pytest.raises(ReservationClosed):
        ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 5, "CONSUMED")], actor="t")
    with pytest.raises(ReservationClosed):
        ledger.void("v2", reservation_key="r1", actor="t", reason="again")
    assert ledger.available("STORE/A1", PARA) == 100


def test_retry_with_same_key_books_once(ledger: Ledger) -> None:
    stock_in(ledger)
    for _ in range(3):
        ledger.consume(
            "pocket-w1", gtin=PARA, quantity=7, location="STORE/A2", actor="t", reason="withdrawal"
        )
    assert ledger.on_hand("STORE/A2", PARA) == 23
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 5)],
        from_locations=["STORE/A1"],
        timeout_s=60,
        actor="t",
    )
    ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 5, "CONSUMED")], actor="t")
    ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 5, "CONSUMED")], actor="t")
    assert ledger.moved_quantity("consume") == 12
    with pytest.raises(LedgerError, match="already used for a consume"):
        ledger.void("pocket-w1", reservation_key="r1", actor="t", reason="x")


def test_no_negative_stock_and_all_or_nothing(ledger: Ledger) -> None:
    stock_in(ledger)
    with pytest.raises(InsufficientStock, match="wanted 31, available 30"):
        ledger.consume("c1", gtin=PARA, quantity=31, location="STORE/A2", actor="t", reason="x")
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "r1",
            purpose="job",
            needs=[Need(PARA, 10), Need(IBU, 1)],
            from_locations=["STORE/A1"],
            timeout_s=60,
            actor="t",
        )
    assert ledger.open_reservation_count() == 0
    assert ledger.available("STORE/A1", PARA) == 100
    assert ledger.movement_count() == 3
    assert verify_ledger(ledger.engine) == []


def test_expired_reservation_releases_itself(ledger: Ledger, clock: Clock) -> None:
    stock_in(ledger)
    ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 20)],
        from_locations=["STORE/A1"],
        timeout_s=60,
        actor="t",
    )
    assert ledger.expire_overdue() == []
    clock.now += timedelta(seconds=61)
    assert ledger.expire_overdue() == ["r1"]
    assert ledger.reservation("r1").status == "expired"
    assert ledger.available("STORE/A1", PARA) == 100
    with pytest.raises(ReservationClosed):
        ledger.post("p1", reservation_key="r1", uses=[Use(PARA, 1, "CONSUMED")], actor="t")


def test_quarantined_lot_is_not_allocated(ledger: Ledger) -> None:
    stock_in(ledger)
    ledger.set_lot_status(PARA, "EARLY", "quarantined")
    res = ledger.reserve(
        "r1",
        purpose="job",
        needs=[Need(PARA, 5)],
        from_locations=["STORE/A1", "STORE/A2"],
        timeout_s=60,
        actor="t",
    )
    assert {a.batch for a in res.lines} == {"LATE"}


def test_bad_input_names_field_and_value(ledger: Ledger) -> None:
    with pytest.raises(UnknownEntity, match="unknown gtin: '00000000000000'"):
        ledger.receive(
            "x1",
            gtin="00000000000000",
            batch="B",
            expiry=TODAY + timedelta(days=90),
            quantity=1,
            to_location="STORE/A1",
            actor="t",
        )
    with pytest.raises(LedgerError, match="expired lot"):
        ledger.receive(
            "x2",
            gtin=PARA,
            batch="OLD",
            expiry=TODAY - timedelta(days=1),
            quantity=1,
            to_location="STORE/A1",
            actor="t",
        )
    with pytest.raises(InvalidQuantity, match="invalid quantity: -3"):
        ledger.receive(
            "x3",
            gtin=PARA,
            batch="B",
            expiry=TODAY + timedelta(days=90),
            quantity=-3,
            to_location="STORE/A1",
            actor="t",
        )
    with pytest.raises(UnknownEntity, match="unknown location: 'NOWHERE'"):
        ledger.receive(
            "x4",
            gtin=PARA,
            batch="B",
            expiry=TODAY + timedelta(days=90),
            quantity=3,
            to_location="NOWHERE",
            actor="t",
        )
    with pytest.raises(LedgerError, match="holds no stock"):
        ledger.receive(
            "x5",
            gtin=PARA,
            batch="B",
            expiry=TODAY + timedelta(days=90),
            quantity=3,
            to_location="CONSUMED",
            actor="t",
        )
    assert ledger.movement_count() == 0


def test_verify_detects_a_drifted_balance(ledger: Ledger) -> None:
    from sqlalchemy import update

    from controller.ledger.schema import balances

    stock_in(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(update(balances).values(on_hand=balances.c.on_hand + 1))
    rules = {v.rule for v in verify_ledger(ledger.engine)}
    assert "balance-mismatch" in rules


def test_counter_mark_is_written_with_the_movement(ledger: Ledger) -> None:
    from controller.ledger import CounterMark

    stock_in(ledger)
    assert ledger.counter_mark("CAB", "p1.withdrawals") is None
    ledger.consume(
        "w1",
        gtin=PARA,
        quantity=3,
        location="STORE/A2",
        actor="t",
        reason="x",
        mark=CounterMark("CAB", "p1.withdrawals", 103),
    )
    assert ledger.counter_mark("CAB", "p1.withdrawals") == 103
    with pytest.raises(InsufficientStock):
        ledger.consume(
            "w2",
            gtin=PARA,
            quantity=999,
            location="STORE/A2",
            actor="t",
            reason="x",
            mark=CounterMark("CAB", "p1.withdrawals", 1102),
        )
    assert ledger.counter_mark("CAB", "p1.withdrawals") == 103  # rolled back together


def test_return_goes_back_to_the_latest_consumed_lot(ledger: Ledger) -> None:
    stock_in(ledger)
    ledger.transfer(
        "t1",
        gtin=PARA,
        quantity=30,
        from_location="STORE/A2",
        to_location="W1/CAB/P01",
        actor="t",
        reason="refill",
    )
    ledger.consume("c1", gtin=PARA, quantity=5, location="W1/CAB/P01", actor="t", reason="x")
    ledger.return_consumed(
        "r1", gtin=PARA, quantity=2, location="W1/CAB/P01", actor="t", reason="dose returned"
    )
    assert ledger.on_hand("W1/CAB/P01", PARA) == 27
    with pytest.raises(InsufficientStock, match="wanted 4, available 3"):
        ledger.return_consumed(
            "r2",
            gtin=PARA,
            quantity=4,
            location="W1/CAB/P01",
            actor="t",
            reason="more than was taken",
        )
    assert verify_ledger(ledger.engine) == []
