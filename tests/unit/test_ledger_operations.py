"""Receiving, stocktake, lot blocking, substitution, service-level lines and the audit
trail, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import delete, select, update

from controller.gs1 import PackId, encode_pack
from controller.ledger import (
    DeliveryError,
    DeliveryLine,
    InsufficientStock,
    Ledger,
    LedgerError,
    ReservationClosed,
    UnknownEntity,
    verify_ledger,
)
from controller.ledger.engine import make_engine
from controller.ledger.ledger import Need, Use
from controller.ledger.migrations import current
from controller.ledger.schema import audit_log, movements, order_lines

PARA = "07359990000013"
PARA2 = "07359990000174"  # same substitution group, another supplier
METO = "07359990000020"
TODAY = date(2026, 11, 22)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    engine = make_engine(ledger_url)
    led = Ledger(
        engine, clock=lambda: datetime(2026, 11, 22, 8, 0, tzinfo=UTC), min_shelf_life_days=30
    )
    led.create_schema()
    group = "N02BE01 500 mg tablet"
    led.add_product(
        gtin=PARA,
        article=1,
        name="Paracetamol 500 mg",
        substance="paracetamol",
        atc="N02BE01",
        strength="500 mg",
        form="tablet",
        unit_price="0.30",
        substitution_group=group,
    )
    led.add_product(
        gtin=PARA2,
        article=2,
        name="Paracetamol 500 mg (B)",
        substance="paracetamol",
        atc="N02BE01",
        strength="500 mg",
        form="tablet",
        unit_price="0.32",
        substitution_group=group,
    )
    led.add_product(
        gtin=METO,
        article=3,
        name="Metoprolol 50 mg",
        substance="metoprolol",
        atc="C07AB02",
        strength="50 mg",
        form="tablet",
        unit_price="0.45",
    )
    for code in ("A1", "A2", "P01"):
        led.add_location(code, "bin" if code != "P01" else "pocket")
    yield led
    engine.dispose()


def receive(led: Ledger, key: str, gtin: str, batch: str, days: int, qty: int, loc: str) -> None:
    led.receive(
        key,
        gtin=gtin,
        batch=batch,
        expiry=TODAY + timedelta(days=days),
        quantity=qty,
        to_location=loc,
        actor="tech",
    )


def test_schema_is_at_the_latest_migration(ledger: Ledger) -> None:
    assert current(ledger.engine) == "0009"


def test_receive_from_a_gs1_scan_and_bad_scans(ledger: Ledger) -> None:
    data = encode_pack(PackId(PARA, "LOT7", TODAY + timedelta(days=200), "SN9"))
    line = ledger.receive_scan("s1", data=data, quantity=100, to_location="A1", actor="tech")
    assert line.batch == "LOT7" and ledger.on_hand("A1", PARA) == 100
    with pytest.raises(LedgerError, match=r"GTIN \(01\) '07359990000014'"):
        ledger.receive_scan(
            "s2", data="0107359990000014172712311099", quantity=1, to_location="A1", actor="tech"
        )
    expired = encode_pack(PackId(PARA, "OLD", TODAY - timedelta(days=3)))
    with pytest.raises(LedgerError, match="expired lot: batch 'OLD'"):
        ledger.receive_scan("s3", data=expired, quantity=1, to_location="A1", actor="tech")
    unknown = encode_pack(PackId("07359990000051", "X", TODAY + timedelta(days=90)))
    with pytest.raises(LedgerError, match="unknown gtin: '07359990000051'"):
        ledger.receive_scan("s4", data=unknown, quantity=1, to_location="A1", actor="tech")
    assert ledger.movement_count() == 1


def test_delivery_file_is_all_or_nothing_with_every_bad_line_named(ledger: Ledger) -> None:
    text = (
        "gtin;batch;expiry;quantity;location\n"
        f"{PARA};B1;2027-06-30;100;A1\n"
        "07359990000014;B2;2027-06-30;5;A1\n"
        f"{METO};B3;30/06/2027;5;A1\n"
        f"{METO};B4;2027-06-30;many;A1\n"
    )
    with pytest.raises(DeliveryError) as info:
        Ledger.parse_delivery_csv(text)
    assert info.value.problems == [
        "line 3: gtin: GTIN '07359990000014' has check digit 4, expected 3",
        "line 4: expiry: '30/06/2027' is not a date (YYYY-MM-DD)",
        "line 5: quantity: 'many' is not a whole number",
    ]
    lines = Ledger.parse_delivery_csv(
        f"gtin;batch;expiry;quantity\n{PARA};B1;2027-06-30;100\n{METO};B3;2027-06-30;5\n",
        default_location="A2",
    )
    bad = [
        *lines,
        DeliveryLine(PARA, "B9", date(2027, 1, 1), 5, "NOWHERE"),
        DeliveryLine(METO, "B8", TODAY - timedelta(days=1), 5, "A1"),
    ]
    with pytest.raises(DeliveryError, match="line 4: expired lot"):
        ledger.receive_many("d1", bad, actor="tech")
    assert ledger.movement_count() == 0
    with pytest.raises(DeliveryError, match="line 3: unknown location: 'NOWHERE'"):
        ledger.receive_many("d1", bad[:3], actor="tech")
    assert ledger.movement_count() == 0
    ledger.receive_many("d1", lines, actor="tech")
    assert ledger.on_hand("A2", PARA) == 100 and ledger.on_hand("A2", METO) == 5


def test_waste_needs_a_known_reason(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "L1", 90, 10, "A1")
    with pytest.raises(LedgerError, match="invalid waste reason_code: 'lost'"):
        ledger.waste(
            "w1", gtin=PARA, quantity=2, location="A1", actor="t", reason="x", reason_code="lost"
        )
    ledger.waste(
        "w1",
        gtin=PARA,
        quantity=2,
        location="A1",
        actor="t",
        reason="dropped",
        reason_code="damaged",
    )
    with ledger.engine.connect() as conn:
        assert (
            conn.execute(
                select(movements.c.reason_code).where(movements.c.kind == "waste")
            ).scalar_one()
            == "damaged"
        )


def test_stocktake_books_differences_and_moves_reservations(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "EARLY", 60, 10, "A1")
    receive(ledger, "r2", PARA, "LATE", 300, 10, "A1")
    receive(ledger, "r3", METO, "M1", 300, 5, "A1")
    ledger.reserve(
        "job", purpose="job", needs=[Need(PARA, 8)], from_locations=["A1"], timeout_s=60, actor="t"
    )
    # EARLY: 3 found (8 of 10 were reserved), LATE: 12 found, METO not found at all.
    diff = ledger.stocktake(
        "st1", location="A1", counted={(PARA, "EARLY"): 3, (PARA, "LATE"): 12}, actor="tech"
    )
    assert diff == {f"{PARA}/EARLY": -7, f"{PARA}/LATE": 2, f"{METO}/M1": -5}
    assert ledger.on_hand("A1", PARA) == 15 and ledger.on_hand("A1", METO) == 0
    res = ledger.reservation("job")
    assert res.status == "open"
    assert sorted((a.batch, a.quantity) for a in res.lines) == [("EARLY", 3), ("LATE", 5)]
    assert verify_ledger(ledger.engine) == []
    # The same count again books nothing (same key); a new count with no change neither.
    assert ledger.stocktake("st1", location="A1", counted={}, actor="tech") == diff
    with pytest.raises(LedgerError, match="invalid count of"):
        ledger.stocktake("st2", location="A1", counted={(PARA, "LATE"): -1}, actor="tech")


def test_quarantine_moves_reservations_and_recall_releases_what_cannot_move(
    ledger: Ledger,
) -> None:
    receive(ledger, "r1", PARA, "BAD", 60, 10, "A1")
    receive(ledger, "r2", PARA, "GOOD", 300, 4, "A2")
    ledger.reserve(
        "job",
        purpose="job",
        needs=[Need(PARA, 6)],
        from_locations=["A1", "A2"],
        timeout_s=60,
        actor="t",
    )
    result = ledger.set_lot_status(
        PARA, "BAD", "quarantined", key="q1", actor="pharmacist", reason="temperature excursion"
    )
    assert result == {"moved": 4, "released": 2}
    res = ledger.reservation("job")
    assert [(a.batch, a.quantity) for a in res.lines] == [("GOOD", 4)]
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "job2",
            purpose="x",
            needs=[Need(PARA, 1)],
            from_locations=["A1"],
            timeout_s=60,
            actor="t",
        )
    ledger.set_lot_status(
        PARA, "GOOD", "recalled", key="q2", actor="pharmacist", reason="supplier recall"
    )
    assert ledger.reservation("job").status == "voided"
    with pytest.raises(ReservationClosed):
        ledger.post("p", reservation_key="job", uses=[Use(PARA, 1, "CONSUMED")], actor="t")
    assert ledger.open_reservation_count() == 0
    assert verify_ledger(ledger.engine) == []


def test_generic_substitution_is_recorded_on_the_movement(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "P1", 90, 3, "A1")
    receive(ledger, "r2", PARA2, "Q1", 90, 10, "A1")
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "o1",
            purpose="ward order",
            needs=[Need(PARA, 5)],
            from_locations=["A1"],
            timeout_s=60,
            actor="t",
        )
    res = ledger.reserve(
        "o1",
        purpose="ward order",
        needs=[Need(PARA, 5)],
        from_locations=["A1"],
        timeout_s=60,
        actor="t",
        substitute=True,
    )
    assert [(a.gtin, a.quantity, a.substituted_for) for a in res.lines] == [
        (PARA, 3, None),
        (PARA2, 2, PARA),
    ]
    ledger.post("p1", reservation_key="o1", uses=[Use(PARA, 5, "P01", "transfer")], actor="t")
    with ledger.engine.connect() as conn:
        subs = (
            conn.execute(select(movements.c.substituted_for).where(movements.c.kind == "transfer"))
            .scalars()
            .all()
        )
    assert sorted(s is not None for s in subs) == [False, True]
    assert ledger.on_hand("P01", PARA2) == 2


def test_order_lines_record_demand_filled_or_not(ledger: Ledger) -> None:
    receive(ledger, "r1", METO, "M1", 300, 10, "A1")
    ledger.reserve(
        "a",
        purpose="p",
        needs=[Need(METO, 4)],
        from_locations=["A1"],
        timeout_s=60,
        actor="t",
        order_source="refill",
    )
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "b",
            purpose="p",
            needs=[Need(METO, 40)],
            from_locations=["A1"],
            timeout_s=60,
            actor="t",
            order_source="refill",
        )
    ledger.reserve(
        "c",
        purpose="p",
        needs=[Need(METO, 9)],
        from_locations=["A1"],
        timeout_s=60,
        actor="t",
        order_source="refill",
        partial=True,
    )
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(order_lines.c.key, order_lines.c.requested, order_lines.c.filled).order_by(
                order_lines.c.key
            )
        ).all()
    assert [tuple(r) for r in rows] == [("a:0", 4, 4), ("b:0", 40, 0), ("c:0", 9, 6)]


def test_exemption_needs_a_written_reason(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="must be written out"):
        ledger.set_exemption(
            gtin=METO,
            reason="no",
            risk_assessment="fine",
            decided_by="x",
            review_date=TODAY,
            actor="t",
        )
    ledger.set_exemption(
        gtin=METO,
        reason="Licence caps stock at two weeks",
        risk_assessment="Supplier delivers within a day",
        decided_by="chief",
        review_date=TODAY + timedelta(days=180),
        actor="chief",
    )


def test_audit_trail_detects_altered_inserted_and_deleted_rows(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "L1", 90, 10, "A1")
    ledger.consume("c1", gtin=PARA, quantity=3, location="A1", actor="nurse", reason="dose")
    assert verify_ledger(ledger.engine) == []
    with ledger.engine.connect() as conn:
        actions = {r.action for r in conn.execute(select(audit_log.c.action))}
        who = (
            conn.execute(select(audit_log.c.actor).where(audit_log.c.action == "consume"))
            .scalars()
            .first()
        )
    assert {"receive", "consume", "product", "location", "schema"} <= actions
    assert who == "nurse"

    # An altered movement: caught by the audit record, and by the balance check.
    with ledger.engine.begin() as conn:
        conn.execute(update(movements).where(movements.c.kind == "consume").values(quantity=1))
    rules = {v.rule for v in verify_ledger(ledger.engine)}
    assert {"movement-altered", "balance-mismatch"} <= rules
    with ledger.engine.begin() as conn:
        conn.execute(update(movements).where(movements.c.kind == "consume").values(quantity=3))
    assert verify_ledger(ledger.engine) == []

    # An altered audit row, then a deleted one.
    with ledger.engine.begin() as conn:
        seq = (
            conn.execute(
                select(audit_log.c.seq)
                .where(audit_log.c.action == "consume")
                .order_by(audit_log.c.seq)
            )
            .scalars()
            .first()
        )
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(actor="someone"))
    assert [v.rule for v in verify_ledger(ledger.engine)] == ["audit-altered"]
    with ledger.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == seq))
    rules = {v.rule for v in verify_ledger(ledger.engine)}
    assert {"audit-gap", "audit-chain"} <= rules


def test_deleted_movement_is_detected(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "L1", 90, 10, "A1")
    with ledger.engine.begin() as conn:
        conn.execute(delete(movements))
    rules = {v.rule for v in verify_ledger(ledger.engine)}
    assert {"movement-deleted", "balance-mismatch"} <= rules


def test_reset_leaves_a_database_that_migrates_again(ledger: Ledger) -> None:
    from controller.ledger.migrations import reset

    receive(ledger, "r1", PARA, "L1", 90, 10, "A1")
    reset(ledger.engine)
    assert current(ledger.engine) is None
    ledger.create_schema()  # a demo run after a demo run
    assert current(ledger.engine) == "0009"
    assert ledger.movement_count() == 0


def test_a_reservation_of_one_lot_takes_that_lot_only(ledger: Ledger) -> None:
    """A canister top-up names its lot: FEFO order does not apply across lots, and
    substitutes are never taken for it."""
    receive(ledger, "r1", PARA, "EARLY", 90, 30, "A1")
    receive(ledger, "r2", PARA, "LATE", 300, 40, "A1")
    receive(ledger, "r3", PARA, "LATE", 300, 25, "A2")
    receive(ledger, "r4", PARA2, "OTHER", 200, 100, "A2")
    receive(ledger, "r5", PARA, "SHORT", 10, 50, "A2")  # inside the minimum shelf life
    assert ledger.free_lots(PARA, ["A1", "A2"]) == [
        ("EARLY", TODAY + timedelta(days=90), 30),
        ("LATE", TODAY + timedelta(days=300), 65),
    ]
    view = ledger.reserve(
        "top-up",
        purpose="canister",
        needs=[Need(PARA, 60, batch="LATE")],
        from_locations=["A1", "A2"],
        timeout_s=60,
        actor="controller",
        substitute=True,
    )
    assert {(line.batch, line.location) for line in view.lines} == {("LATE", "A1"), ("LATE", "A2")}
    assert sum(line.quantity for line in view.lines) == 60
    assert ledger.free_lots(PARA, ["A1", "A2"])[1][2] == 5
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "too-much",
            purpose="canister",
            needs=[Need(PARA, 6, batch="LATE")],
            from_locations=["A1", "A2"],
            timeout_s=60,
            actor="controller",
            substitute=True,
        )
    with pytest.raises(UnknownEntity, match="NOPE"):
        ledger.reserve(
            "unknown-lot",
            purpose="canister",
            needs=[Need(PARA, 1, batch="NOPE")],
            from_locations=["A1"],
            timeout_s=60,
            actor="controller",
        )
    # A lot inside the minimum shelf life is not taken, even when named.
    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "short-lot",
            purpose="canister",
            needs=[Need(PARA, 1, batch="SHORT")],
            from_locations=["A2"],
            timeout_s=60,
            actor="controller",
        )
    assert ledger.open_reservation_count() == 1
