"""Location holds (stock quarantined at one location) and stock discrepancies, on SQLite
and PostgreSQL alike."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, inspect, select, update

from controller.ledger import (
    DiscrepancyClosed,
    HoldClosed,
    InsufficientStock,
    Ledger,
    LedgerError,
    UnknownEntity,
    verify_ledger,
)
from controller.ledger.engine import make_engine
from controller.ledger.ledger import Need
from controller.ledger.migrations import config, current, upgrade
from controller.ledger.schema import (
    audit_log,
    balances,
    lots,
    metadata,
    movements,
    stock_holds,
)

PARA = "07359990000013"
METO = "07359990000020"
TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = site(ledger_url)
    yield led
    led.engine.dispose()


def site(url: str) -> Ledger:
    """A store bin, cabinet 1 with two pockets, cabinet 2 with a drawer of pockets."""
    engine = make_engine(url)
    led = Ledger(engine, clock=lambda: NOW, min_shelf_life_days=30)
    led.create_schema()
    for gtin, article, name in (
        (PARA, 1, "Paracetamol 500 mg"),
        (METO, 2, "Metoprolol 50 mg"),
    ):
        led.add_product(
            gtin=gtin,
            article=article,
            name=name,
            substance=name.split()[0].lower(),
            atc="N02BE01",
            strength="1",
            form="tablet",
        )
    led.add_location("STORE", "store")
    led.add_location("STORE/A1", "bin", parent="STORE")
    led.add_location("CAB1", "cabinet")
    led.add_location("CAB1/P01", "pocket", parent="CAB1", product_gtin=PARA)
    led.add_location("CAB1/P02", "pocket", parent="CAB1", product_gtin=METO)
    led.add_location("CAB2", "cabinet")
    led.add_location("CAB2/D1", "drawer", parent="CAB2")
    led.add_location("CAB2/D1/P01", "pocket", parent="CAB2/D1", product_gtin=PARA)
    return led


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


def stock_cabinets(led: Ledger) -> None:
    """The same lot L1 in the store, in cabinet 1 and in cabinet 2."""
    receive(led, "r1", PARA, "L1", 200, 50, "STORE/A1")
    receive(led, "r2", PARA, "L1", 200, 20, "CAB1/P01")
    receive(led, "r3", METO, "M1", 200, 10, "CAB1/P02")
    receive(led, "r4", PARA, "L1", 200, 5, "CAB2/D1/P01")


def hold_cab1(led: Ledger, key: str = "h1") -> list[int]:
    holds = led.hold_location(key, "CAB1", reason="fridge at 14 °C for 3 h", actor="pharmacist")
    return [h.id for h in holds]


def audit_rows(led: Ledger, entity: str) -> list[tuple[str, str, str, Any, Any]]:
    with led.engine.connect() as conn:
        rows = conn.execute(
            select(
                audit_log.c.action,
                audit_log.c.actor,
                audit_log.c.entity_key,
                audit_log.c.old_value,
                audit_log.c.new_value,
            )
            .where(audit_log.c.entity == entity)
            .order_by(audit_log.c.seq)
        ).all()
    return [
        (a, who, k, old and json.loads(old), new and json.loads(new))
        for a, who, k, old, new in rows
    ]


# ---------------------------------------------------------------- holds


def test_a_hold_quarantines_the_location_only(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    holds = ledger.hold_location("h1", "CAB1", reason="fridge at 14 °C for 3 h", actor="pharmacist")
    assert [(h.location, h.gtin, h.batch, h.quantity_at_hold, h.on_hand_now) for h in holds] == [
        ("CAB1/P01", PARA, "L1", 20, 20),
        ("CAB1/P02", METO, "M1", 10, 10),
    ]
    assert {(h.status, h.raised_by, h.reason, h.raised_at) for h in holds} == {
        ("held", "pharmacist", "fridge at 14 °C for 3 h", NOW)
    }
    assert ledger.lot(PARA, "L1")["status"] == "released"  # not a lot-wide block

    assert ledger.available("CAB1/P01", PARA) == 0
    assert ledger.available("CAB1/P02", METO) == 0
    assert ledger.available("STORE/A1", PARA) == 50
    assert ledger.available("CAB2/D1/P01", PARA) == 5
    assert ledger.free_lots(PARA, ["CAB1/P01", "STORE/A1"]) == [
        ("L1", TODAY + timedelta(days=200), 50)
    ]
    assert [(s.location, s.held, s.available) for s in ledger.stock(gtin=PARA)] == [
        ("CAB1/P01", True, 0),
        ("CAB2/D1/P01", False, 5),
        ("STORE/A1", False, 50),
    ]

    with pytest.raises(InsufficientStock):
        ledger.reserve(
            "res-cab1",
            purpose="refill",
            needs=[Need(PARA, 1)],
            from_locations=["CAB1/P01"],
            timeout_s=60,
            actor="svc",
        )
    view = ledger.reserve(
        "res-both",
        purpose="refill",
        needs=[Need(PARA, 30)],
        from_locations=["CAB1/P01", "STORE/A1"],
        timeout_s=60,
        actor="svc",
    )
    assert [(line.location, line.quantity) for line in view.lines] == [("STORE/A1", 30)]
    with pytest.raises(InsufficientStock):
        ledger.transfer(
            "t1",
            gtin=PARA,
            quantity=1,
            from_location="CAB1/P01",
            to_location="STORE/A1",
            actor="tech",
            reason="move",
        )

    assert [h.location for h in ledger.holds(location="CAB1")] == ["CAB1/P01", "CAB1/P02"]
    assert [h.location for h in ledger.holds(location="CAB1/P02")] == ["CAB1/P02"]
    assert ledger.holds(location="CAB2") == []
    assert ledger.holds(location="STORE") == []
    assert [h.key for h in holds] == ["h1#1", "h1#2"]

    # A cabinet's drawers and their pockets, at any depth, are under the cabinet.
    deep = ledger.hold_location("h2", "CAB2", reason="door open overnight", actor="pharmacist")
    assert [(h.location, h.quantity_at_hold) for h in deep] == [("CAB2/D1/P01", 5)]
    assert ledger.available("CAB2/D1/P01", PARA) == 0
    assert ledger.available("STORE/A1", PARA) == 20  # 50, less the 30 reserved
    assert verify_ledger(ledger.engine) == []


def test_a_hold_moves_open_reservations_off_the_held_stock(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "EARLY", 100, 20, "CAB1/P01")
    receive(ledger, "r2", PARA, "LATE", 300, 50, "STORE/A1")
    view = ledger.reserve(
        "res",
        purpose="refill",
        needs=[Need(PARA, 15)],
        from_locations=["CAB1/P01", "STORE/A1"],
        timeout_s=600,
        actor="svc",
    )
    assert [(line.location, line.batch) for line in view.lines] == [("CAB1/P01", "EARLY")]

    hold_cab1(ledger)
    moved = ledger.reservation("res")
    assert moved.status == "open"
    assert [(line.location, line.batch, line.quantity) for line in moved.lines] == [
        ("STORE/A1", "LATE", 15)
    ]
    assert [s.reserved for s in ledger.stock(location="CAB1/P01")] == [0]
    assert verify_ledger(ledger.engine) == []


def test_consumption_at_a_held_location_is_still_booked(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    hold_cab1(ledger)
    ledger.consume("c1", gtin=PARA, quantity=3, location="CAB1/P01", actor="nurse", reason="dose")
    (hold,) = ledger.holds(location="CAB1/P01")
    assert (hold.quantity_at_hold, hold.on_hand_now) == (20, 17)
    assert ledger.available("CAB1/P01", PARA) == 0


def test_release_makes_the_stock_reservable_again(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    first, _ = hold_cab1(ledger)
    released = ledger.release_hold(
        first, actor="pharmacist", note="logger shows 7 °C max; probe fault"
    )
    assert (released.id, released.status, released.resolved_by, released.resolution_note) == (
        first,
        "released",
        "pharmacist",
        "logger shows 7 °C max; probe fault",
    )
    assert released.resolved_at == NOW
    assert ledger.available("CAB1/P01", PARA) == 20
    assert ledger.available("CAB1/P02", METO) == 0  # its own hold still stands
    view = ledger.reserve(
        "res",
        purpose="refill",
        needs=[Need(PARA, 20)],
        from_locations=["CAB1/P01"],
        timeout_s=60,
        actor="svc",
    )
    assert [(line.location, line.quantity) for line in view.lines] == [("CAB1/P01", 20)]
    assert [h.location for h in ledger.holds()] == ["CAB1/P02"]
    assert [h.id for h in ledger.holds(status="released")] == [first]
    assert len(ledger.holds(status=None)) == 2
    assert verify_ledger(ledger.engine) == []


def test_waste_books_a_waste_movement_and_empties_the_balance(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    first, _ = hold_cab1(ledger)
    ledger.consume("c1", gtin=PARA, quantity=3, location="CAB1/P01", actor="nurse", reason="dose")
    wasted = ledger.waste_hold("w1", first, actor="pharmacist", note="14 °C for 3 h: insulin unfit")
    assert (wasted.status, wasted.on_hand_now, wasted.quantity_at_hold) == ("wasted", 0, 20)
    assert wasted.resolution_note == "14 °C for 3 h: insulin unfit"
    assert ledger.on_hand("CAB1/P01", PARA) == 0
    assert ledger.on_hand("CAB2/D1/P01", PARA) == 5  # the same lot elsewhere is untouched
    assert ledger.moved_quantity("waste") == 17
    with ledger.engine.connect() as conn:
        movement = conn.execute(
            select(
                movements.c.quantity, movements.c.reason_code, movements.c.idempotency_key
            ).where(movements.c.kind == "waste")
        ).one()
    assert tuple(movement) == (17, "temperature", "w1")

    again = ledger.waste_hold("w1", first, actor="pharmacist", note="14 °C for 3 h: insulin unfit")
    assert again == wasted
    assert ledger.movement_count("waste") == 1
    with pytest.raises(HoldClosed, match=f"hold {first} is already wasted"):
        ledger.waste_hold("w2", first, actor="pharmacist", note="again")
    with pytest.raises(HoldClosed, match=f"hold {first} is already wasted"):
        ledger.release_hold(first, actor="pharmacist", note="changed my mind")
    assert verify_ledger(ledger.engine) == []


def test_waste_of_a_hold_with_nothing_left_is_refused(ledger: Ledger) -> None:
    receive(ledger, "r1", PARA, "L1", 200, 2, "CAB1/P01")
    (hold_id,) = hold_cab1(ledger)
    ledger.consume("c1", gtin=PARA, quantity=2, location="CAB1/P01", actor="nurse", reason="dose")
    with pytest.raises(LedgerError, match=f"hold {hold_id}: nothing of {PARA}/L1 is left"):
        ledger.waste_hold("w1", hold_id, actor="pharmacist", note="unfit")
    assert ledger.holds()[0].status == "held"
    assert not ledger.command_done("w1")


def test_a_hold_is_idempotent_by_key(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    ids = hold_cab1(ledger, "h1")
    receive(ledger, "r5", METO, "M2", 250, 4, "CAB1/P02")
    with ledger.engine.connect() as conn:
        audited = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()

    assert hold_cab1(ledger, "h1") == ids
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == audited
    assert len(ledger.holds()) == 2

    # Another key holds what is not held yet: only the lot that came in since.
    new = ledger.hold_location("h2", "CAB1/P02", reason="second excursion", actor="pharmacist")
    assert [(h.location, h.batch, h.quantity_at_hold) for h in new] == [("CAB1/P02", "M2", 4)]
    assert ledger.hold_location("h3", "CAB1", reason="third look", actor="pharmacist") == []
    assert len(ledger.holds()) == 3


def test_hold_errors_name_the_field_and_value(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    with pytest.raises(UnknownEntity, match="unknown location: 'CAB9'"):
        ledger.hold_location("h0", "CAB9", reason="excursion", actor="pharmacist")
    with pytest.raises(LedgerError, match="location 'WASTE' is a waste: it holds no stock"):
        ledger.hold_location("h0", "WASTE", reason="excursion", actor="pharmacist")
    with pytest.raises(LedgerError, match="invalid reason: '  '"):
        ledger.hold_location("h0", "CAB1", reason="  ", actor="pharmacist")
    with pytest.raises(LedgerError, match="actor: 'xxxx"):
        ledger.hold_location("h0", "CAB1", reason="excursion", actor="x" * 101)
    with pytest.raises(LedgerError, match="invalid idempotency key"):
        ledger.hold_location("k" * 195, "CAB1", reason="excursion", actor="pharmacist")
    assert ledger.holds(status=None) == []
    assert not ledger.command_done("h0")

    first, _ = hold_cab1(ledger)
    with pytest.raises(LedgerError, match="invalid note: ' '"):
        ledger.release_hold(first, actor="pharmacist", note=" ")
    with pytest.raises(LedgerError, match="invalid note: ''"):
        ledger.waste_hold("w0", first, actor="pharmacist", note="")
    with pytest.raises(LedgerError, match="actor: 'xxxx"):
        ledger.release_hold(first, actor="x" * 101, note="fine")
    with pytest.raises(LedgerError, match="invalid actor: ''"):
        ledger.release_hold(first, actor="", note="fine")
    with pytest.raises(LedgerError, match="invalid waste reason_code: 'warm'"):
        ledger.waste_hold("w0", first, actor="pharmacist", note="unfit", reason_code="warm")
    with pytest.raises(UnknownEntity, match="unknown hold: 999"):
        ledger.release_hold(999, actor="pharmacist", note="fine")
    with pytest.raises(LedgerError, match="invalid status: 'open'"):
        ledger.holds(status="open")
    assert ledger.holds()[0].status == "held"  # nothing of the refused calls stuck

    ledger.release_hold(first, actor="pharmacist", note="fine")
    with pytest.raises(HoldClosed, match=f"hold {first} is already released") as info:
        ledger.release_hold(first, actor="other", note="fine too")
    assert (info.value.hold_id, info.value.status) == (first, "released")
    with pytest.raises(HoldClosed, match=f"hold {first} is already released"):
        ledger.waste_hold("w1", first, actor="pharmacist", note="unfit")
    assert ledger.movement_count("waste") == 0
    assert ledger.holds(status="released")[0].resolved_by == "pharmacist"


def test_holds_are_written_to_the_audit_trail(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    first, second = hold_cab1(ledger)
    ledger.release_hold(first, actor="pharm-a", note="probe fault")
    ledger.waste_hold("w1", second, actor="pharm-b", note="unfit")
    rows = audit_rows(ledger, "hold")
    assert [(action, who, key) for action, who, key, _, _ in rows] == [
        ("hold", "pharmacist", str(first)),
        ("hold", "pharmacist", str(second)),
        ("hold-release", "pharm-a", str(first)),
        ("hold-waste", "pharm-b", str(second)),
    ]
    assert rows[0][3] is None
    assert rows[0][4] == {
        "location": "CAB1/P01",
        "lot": f"{PARA}/L1",
        "quantity": 20,
        "reason": "fridge at 14 °C for 3 h",
        "status": "held",
    }
    assert rows[2][3:] == ({"status": "held"}, {"status": "released", "note": "probe fault"})
    assert rows[3][4] == {"status": "wasted", "note": "unfit"}
    with ledger.engine.connect() as conn:
        waste_audit = conn.execute(
            select(audit_log.c.action).where(audit_log.c.entity == "movement")
        ).scalars()
        assert "hold-waste" in set(waste_audit)
    assert verify_ledger(ledger.engine) == []


def test_verify_names_broken_hold_invariants(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    first, _ = hold_cab1(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(
            update(stock_holds)
            .where(stock_holds.c.id == first)
            .values(status="wasted", waste_key="nowhere")
        )
    assert [(v.rule, v.detail) for v in verify_ledger(ledger.engine)] == [
        (
            "hold-waste-missing",
            f"hold {first}: CAB1/P01 lot {PARA}/L1 is wasted but no waste movement "
            "'nowhere' took it from there",
        )
    ]
    with ledger.engine.begin() as conn:
        conn.execute(update(balances).where(balances.c.on_hand == 10).values(reserved=4))
    rules = {v.rule for v in verify_ledger(ledger.engine)}
    assert {"held-reserved", "reserved-mismatch", "hold-waste-missing"} <= rules


def test_a_reservation_that_waited_for_a_hold_does_not_take_the_held_stock(
    postgres_url: str,
) -> None:
    """PostgreSQL: a reservation that started while a hold was being written (and
    waited for the lot's lock) sees the hold once it commits."""
    led = site(postgres_url)
    try:
        receive(led, "r1", PARA, "L1", 200, 20, "CAB1/P01")
        with led.engine.connect() as conn:
            ids = conn.execute(
                select(balances.c.location_id, balances.c.lot_id).where(balances.c.on_hand > 0)
            ).one()
        outcome: list[object] = []

        def reserve() -> None:
            try:
                outcome.append(
                    led.reserve(
                        "res",
                        purpose="refill",
                        needs=[Need(PARA, 5)],
                        from_locations=["CAB1/P01"],
                        timeout_s=60,
                        actor="svc",
                    )
                )
            except LedgerError as exc:
                outcome.append(exc)

        # A hold half-way through its transaction, as `hold_location` writes it.
        with led.engine.begin() as conn:
            conn.execute(select(lots.c.id).where(lots.c.id == ids.lot_id).with_for_update())
            conn.execute(
                insert(stock_holds).values(
                    key="h1#1",
                    location_id=ids.location_id,
                    lot_id=ids.lot_id,
                    quantity=20,
                    reason="excursion",
                    raised_at=NOW,
                    raised_by="pharmacist",
                    status="held",
                )
            )
            rival = threading.Thread(target=reserve)
            rival.start()
            time.sleep(0.5)
            assert rival.is_alive(), outcome  # waiting for the lot's lock
        rival.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], InsufficientStock), outcome
        assert led.stock(location="CAB1/P01")[0].reserved == 0
        assert verify_ledger(led.engine) == []
    finally:
        led.engine.dispose()


# ---------------------------------------------------------------- discrepancies


def raise_p01(led: Ledger, key: str = "d1") -> int:
    return led.raise_discrepancy(
        key,
        "CAB1/P01",
        PARA,
        source="counter",
        device_value=18,
        ledger_value=20,
        detail="pocket count 18, ledger 20",
        actor="poller",
    ).id


def test_discrepancies_are_raised_listed_and_resolved(ledger: Ledger) -> None:
    stock_cabinets(ledger)
    first = raise_p01(ledger)
    assert raise_p01(ledger) == first  # idempotent by key
    ledger.raise_discrepancy(
        "d2",
        "STORE/A1",
        METO,
        source="count",
        device_value=7,
        ledger_value=0,
        detail="found in the wrong bin",
        actor="tech",
    )
    assert ledger.open_discrepancy_count() == 2
    (view,) = ledger.discrepancies(location="CAB1")
    assert (view.id, view.key, view.location, view.gtin, view.source) == (
        first,
        "d1",
        "CAB1/P01",
        PARA,
        "counter",
    )
    assert (view.device_value, view.ledger_value, view.difference) == (18, 20, -2)
    assert (view.status, view.raised_at, view.raised_by, view.resolved_by) == (
        "open",
        NOW,
        "poller",
        None,
    )
    assert [d.difference for d in ledger.discrepancies()] == [-2, 7]
    assert ledger.on_hand("CAB1/P01", PARA) == 20  # the ledger is not changed by it

    done = ledger.resolve_discrepancy(first, actor="operator", note="recounted: 18, stocktake")
    assert (done.status, done.resolved_by, done.resolution_note, done.resolved_at) == (
        "resolved",
        "operator",
        "recounted: 18, stocktake",
        NOW,
    )
    assert ledger.open_discrepancy_count() == 1
    assert [d.key for d in ledger.discrepancies()] == ["d2"]
    assert [d.key for d in ledger.discrepancies(status="resolved")] == ["d1"]
    assert [d.key for d in ledger.discrepancies(status=None)] == ["d1", "d2"]
    assert raise_p01(ledger) == first  # a retry does not reopen it
    assert ledger.open_discrepancy_count() == 1

    rows = audit_rows(ledger, "discrepancy")
    assert [(action, who, key) for action, who, key, _, _ in rows] == [
        ("discrepancy", "poller", str(first)),
        ("discrepancy", "tech", str(first + 1)),
        ("discrepancy-resolve", "operator", str(first)),
    ]
    assert rows[0][4]["difference"] == -2
    assert verify_ledger(ledger.engine) == []


def test_discrepancy_errors_name_the_field_and_value(ledger: Ledger) -> None:
    stock_cabinets(ledger)

    def bad(**changes: object) -> None:
        args: dict[str, object] = {
            "source": "counter",
            "device_value": 1,
            "ledger_value": 2,
            "detail": "d",
            "actor": "poller",
        }
        args.update(changes)
        location = str(args.pop("location", "CAB1/P01"))
        gtin = str(args.pop("gtin", PARA))
        ledger.raise_discrepancy("bad", location, gtin, **args)  # type: ignore[arg-type]

    with pytest.raises(UnknownEntity, match="unknown location: 'CAB9'"):
        bad(location="CAB9")
    with pytest.raises(UnknownEntity, match="unknown gtin: '07359990000051'"):
        bad(gtin="07359990000051")
    with pytest.raises(LedgerError, match="invalid device_value: -1"):
        bad(device_value=-1)
    with pytest.raises(LedgerError, match="invalid ledger_value: True"):
        bad(ledger_value=True)
    with pytest.raises(LedgerError, match="invalid device_value: 2147483648"):
        bad(device_value=2**31)
    with pytest.raises(LedgerError, match="invalid source: 'a-source-longer-than-20'"):
        bad(source="a-source-longer-than-20")
    with pytest.raises(LedgerError, match="invalid detail: ''"):
        bad(detail="")
    with pytest.raises(LedgerError, match="actor: 'xxxx"):
        bad(actor="x" * 101)
    assert ledger.discrepancies(status=None) == []

    first = raise_p01(ledger)
    with pytest.raises(LedgerError, match="invalid note: '   '"):
        ledger.resolve_discrepancy(first, actor="operator", note="   ")
    with pytest.raises(UnknownEntity, match="unknown discrepancy: 999"):
        ledger.resolve_discrepancy(999, actor="operator", note="checked")
    with pytest.raises(LedgerError, match="invalid status: 'closed'"):
        ledger.discrepancies(status="closed")
    ledger.resolve_discrepancy(first, actor="operator", note="checked")
    with pytest.raises(DiscrepancyClosed, match=f"discrepancy {first} is already resolved"):
        ledger.resolve_discrepancy(first, actor="operator", note="checked again")
    assert ledger.discrepancies(status="resolved")[0].resolution_note == "checked"


# ---------------------------------------------------------------- schema


def test_the_migrations_build_exactly_the_tables_of_the_code(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    try:
        upgrade(engine)
        assert current(engine) == "0009"
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
        verification = {"packs", "verification_queue", "verification_alerts"}
        assert verification <= set(inspect(engine).get_table_names())
        command.downgrade(config(engine), "0005")  # 0006: pack verification
        assert verification.isdisjoint(inspect(engine).get_table_names())
        command.downgrade(config(engine), "0004")  # 0005: lots.purchase_price
        assert "purchase_price" not in {c["name"] for c in inspect(engine).get_columns("lots")}
        new = {"stock_holds", "stock_discrepancies", "pick_lists", "pocket_refills"}
        command.downgrade(config(engine), "0003")
        assert new.isdisjoint(inspect(engine).get_table_names())
        upgrade(engine)
        assert new <= set(inspect(engine).get_table_names())
        indexes = {i["name"] for i in inspect(engine).get_indexes("pocket_refills")}
        assert "ix_pocket_refills_cabinet_pocket_state" in indexes
    finally:
        engine.dispose()
