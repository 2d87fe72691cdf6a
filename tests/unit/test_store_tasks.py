"""The store's everyday tasks (controller.store_tasks): a lot moved between store
locations, and expired store stock booked as waste; the checks with values, then the
bookings on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.config import StoreConfig
from controller.ledger import Ledger, LotStock, Need, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.schema import audit_log, locations, movements
from controller.store_tasks import (
    MAX_KEY,
    ExpiredLot,
    LeftLot,
    MoveRequest,
    StoreTaskRefused,
    check_distinct,
    check_free,
    check_gtin,
    check_key,
    check_quantity,
    check_reason,
    expired_stock,
    free_units,
    local_today,
    move_stock,
    outside_store,
    scope_of,
    store_places,
    waste_expired,
    waste_key,
)

PARA = "07359990000013"
METO = "07359990000020"
OXY = "07359990000044"  # a valid GTIN the ledger does not know
TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
PLACES = store_places(
    StoreConfig(code="CENTRAL", bins=["CENTRAL/A01", "CENTRAL/A02"], preparedness=["CENTRAL/PREP"])
)


# ---------------------------------------------------------------- the checks, with values


def refused(fn: Any, *args: Any, **kwargs: Any) -> StoreTaskRefused:
    with pytest.raises(StoreTaskRefused) as info:
        fn(*args, **kwargs)
    return info.value


def test_store_places_are_the_store_its_bins_preparedness_and_quarantine() -> None:
    assert PLACES == {
        "CENTRAL": "store",
        "CENTRAL/A01": "bin",
        "CENTRAL/A02": "bin",
        "CENTRAL/PREP": "preparedness",
        "CENTRAL/QUARANTINE": "quarantine",
    }
    assert scope_of("CENTRAL", PLACES) == set(PLACES)
    assert scope_of("CENTRAL/PREP", PLACES) == {"CENTRAL/PREP"}
    assert outside_store(PLACES, from_location="CENTRAL/A01", to_location="CAB1/P01") == (
        "to_location",
        "CAB1/P01",
    )
    assert outside_store(PLACES, from_location="X", to_location="CENTRAL/A01") == (
        "from_location",
        "X",
    )
    assert outside_store(PLACES, from_location="CENTRAL/A01", to_location="CENTRAL/A02") is None


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "3", None])
def test_a_quantity_must_be_a_whole_number_above_zero(value: object) -> None:
    exc = refused(check_quantity, value)
    assert (exc.field, exc.value, exc.kind) == ("quantity", value, "invalid")
    assert str(exc).startswith(f"quantity: {value!r} ")
    assert check_quantity(7) == 7


@pytest.mark.parametrize("value", ["", "   ", "k" * (MAX_KEY + 1), None])
def test_a_key_is_one_to_200_characters(value: object) -> None:
    exc = refused(check_key, value)
    assert (exc.field, exc.value) == ("key", value)
    assert check_key("k" * MAX_KEY) == "k" * MAX_KEY


def test_gtin_reason_and_locations_are_named_when_refused() -> None:
    exc = refused(check_gtin, "07359990000014")
    assert (exc.field, exc.value) == ("gtin", "07359990000014") and "check digit" in str(exc)
    assert check_gtin("7359990000013") == PARA
    assert (refused(check_reason, " ").field, refused(check_reason, "r" * 201).field) == (
        "reason",
        "reason",
    )
    assert check_reason(None) == "moved between store locations"
    exc = refused(check_distinct, "CENTRAL/A01", "CENTRAL/A01")
    assert (exc.field, exc.value) == ("to_location", "CENTRAL/A01")


def lot(location: str, batch: str, expiry: date, on_hand: int, reserved: int = 0, **kw: Any) -> Any:
    return LotStock(location, PARA, batch, expiry, "released", on_hand, reserved, **kw)


def test_free_units_leave_out_reserved_and_held_stock() -> None:
    rows = [
        lot("CENTRAL/A01", "L1", TODAY, 50, 30),
        lot("CENTRAL/A01", "L2", TODAY, 40),
        lot("CENTRAL/A02", "L1", TODAY, 9),
        lot("CENTRAL/QUARANTINE", "L1", TODAY, 12, held=True),
    ]
    assert free_units(rows, "CENTRAL/A01", PARA, "L1") == 20
    assert free_units(rows, "CENTRAL/QUARANTINE", PARA, "L1") == 0
    assert free_units(rows, "CENTRAL/A01", METO, "L1") == 0
    check_free(20, 20, gtin=PARA, batch="L1", location="CENTRAL/A01")
    exc = refused(check_free, 21, 20, gtin=PARA, batch="L1", location="CENTRAL/A01")
    assert (exc.field, exc.value, exc.kind) == ("quantity", 21, "short")
    assert "20 free units" in str(exc)


def test_expired_stock_splits_what_is_wasted_from_what_is_left() -> None:
    old, older, fresh = TODAY - timedelta(days=1), TODAY - timedelta(days=9), TODAY
    rows = [
        lot("CENTRAL/A01", "E1", old, 30, 5),
        lot("CENTRAL/A01", "OK", fresh, 100),  # expires today: still usable today
        lot("CENTRAL/A02", "E0", older, 4),
        lot("CENTRAL/QUARANTINE", "E1", old, 10, held=True),
        lot("CAB1/P01", "E1", old, 7),  # outside the scope
        lot("CENTRAL/A02", "R1", old, 6, 6),  # all of it reserved
    ]
    wasted, left = expired_stock(rows, set(PLACES), TODAY)
    assert wasted == [
        ExpiredLot("CENTRAL/A01", PARA, "E1", old, 25),
        ExpiredLot("CENTRAL/A02", PARA, "E0", older, 4),
    ]
    assert left == [
        LeftLot("CENTRAL/A01", PARA, "E1", old, 5, "reserved"),
        LeftLot("CENTRAL/A02", PARA, "R1", old, 6, "reserved"),
        LeftLot("CENTRAL/QUARANTINE", PARA, "E1", old, 10, "held"),
    ]
    assert expired_stock(rows, {"CENTRAL/A02"}, TODAY)[0] == [
        ExpiredLot("CENTRAL/A02", PARA, "E0", older, 4)
    ]


def test_waste_keys_derive_from_the_request_key_and_fit_the_ledger() -> None:
    assert waste_key("w1", "CENTRAL/A01", PARA, "E1") == f"w1:CENTRAL/A01:{PARA}/E1"
    long_key = "k" * MAX_KEY
    one = waste_key(long_key, "CENTRAL/A01", PARA, "E1")
    other = waste_key(long_key, "CENTRAL/A01", PARA, "E2")
    assert len(one) == len(other) == MAX_KEY
    assert one != other and one == waste_key(long_key, "CENTRAL/A01", PARA, "E1")


def test_the_site_date_is_the_local_one() -> None:
    late = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    assert local_today("Europe/Stockholm", late) == date(2026, 11, 23)
    assert local_today("UTC", late) == date(2026, 11, 22)


# ---------------------------------------------------------------- the ledger


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger(make_engine(ledger_url), clock=lambda: NOW)
    led.create_schema()
    for gtin, article, name in ((PARA, 1, "Paracetamol 500 mg"), (METO, 2, "Metoprolol 50 mg")):
        led.add_product(
            gtin=gtin,
            article=article,
            name=name,
            substance=name.split()[0].lower(),
            atc="N02BE01",
            strength="1",
            form="tablet",
        )
    for code, kind in PLACES.items():
        led.add_location(code, kind, parent=None if kind == "store" else "CENTRAL")
    led.add_location("CAB1", "cabinet")
    led.add_location("CAB1/P01", "pocket", parent="CAB1", product_gtin=PARA)
    yield led
    led.engine.dispose()


def receive(led: Ledger, gtin: str, batch: str, days: int, qty: int, loc: str) -> None:
    led.receive(
        f"r:{gtin}:{batch}:{loc}",
        gtin=gtin,
        batch=batch,
        expiry=TODAY + timedelta(days=days),
        quantity=qty,
        to_location=loc,
        actor="goods-in",
    )


def balance(led: Ledger, location: str, batch: str) -> tuple[int, int]:
    rows = [r for r in led.stock(location=location) if r.batch == batch]
    return (rows[0].on_hand, rows[0].reserved) if rows else (0, 0)


def counts(led: Ledger) -> tuple[int, int]:
    with led.engine.connect() as conn:
        return (
            int(conn.execute(select(func.count()).select_from(movements)).scalar_one()),
            int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one()),
        )


def booked(led: Ledger, kind: str) -> list[tuple[str, str, str, int, str | None, str]]:
    """(key, from, to, quantity, reason code, actor) of the movements of a kind."""
    src, dst = locations.alias("src"), locations.alias("dst")
    with led.engine.connect() as conn:
        rows = conn.execute(
            select(
                movements.c.idempotency_key,
                src.c.code,
                dst.c.code,
                movements.c.quantity,
                movements.c.reason_code,
                movements.c.actor,
            )
            .join(src, src.c.id == movements.c.from_location_id)
            .join(dst, dst.c.id == movements.c.to_location_id)
            .where(movements.c.kind == kind)
            .order_by(movements.c.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def audit_actors(led: Ledger, action: str) -> set[str]:
    with led.engine.connect() as conn:
        return set(
            conn.execute(select(audit_log.c.actor).where(audit_log.c.action == action)).scalars()
        )


def move(**changes: Any) -> MoveRequest:
    values: dict[str, Any] = {
        "gtin": PARA,
        "batch": "L1",
        "from_location": "CENTRAL/A01",
        "to_location": "CENTRAL/A02",
        "quantity": 20,
        "key": "m1",
        "actor": "tech:eva",
        "reason": "A01 is being emptied",
    }
    values.update(changes)
    return MoveRequest(**values)


def test_a_move_books_one_lot_exact_transfer_once_and_audits_it(ledger: Ledger) -> None:
    receive(ledger, PARA, "L1", 200, 50, "CENTRAL/A01")
    receive(ledger, PARA, "L0", 100, 30, "CENTRAL/A01")  # earlier: FEFO would take it first

    result = move_stock(ledger, PLACES, move())
    assert result.booked and (result.quantity, result.key) == (20, "m1")
    assert balance(ledger, "CENTRAL/A01", "L1") == (30, 0)
    assert balance(ledger, "CENTRAL/A02", "L1") == (20, 0)
    assert balance(ledger, "CENTRAL/A01", "L0") == (30, 0)
    assert booked(ledger, "transfer") == [
        ("m1", "CENTRAL/A01", "CENTRAL/A02", 20, None, "tech:eva")
    ]
    assert audit_actors(ledger, "move") == {"tech:eva"}

    before = counts(ledger)
    again = move_stock(ledger, PLACES, move())
    assert not again.booked
    assert counts(ledger) == before
    assert balance(ledger, "CENTRAL/A02", "L1") == (20, 0)
    assert verify_ledger(ledger.engine) == []


@pytest.mark.parametrize(
    ("changes", "field", "value", "kind"),
    [
        ({"gtin": OXY}, "gtin", OXY, "unknown"),
        ({"gtin": "07359990000014"}, "gtin", "07359990000014", "invalid"),
        ({"batch": "NOPE"}, "batch", "NOPE", "unknown"),
        ({"from_location": "CENTRAL/Z99"}, "from_location", "CENTRAL/Z99", "unknown"),
        ({"to_location": "CENTRAL/Z99"}, "to_location", "CENTRAL/Z99", "unknown"),
        ({"to_location": "CAB1/P01"}, "to_location", "CAB1/P01", "invalid"),
        ({"from_location": "CAB1/P01"}, "from_location", "CAB1/P01", "invalid"),
        ({"to_location": "WASTE"}, "to_location", "WASTE", "invalid"),
        ({"to_location": "CENTRAL/A01"}, "to_location", "CENTRAL/A01", "invalid"),
        ({"quantity": 0}, "quantity", 0, "invalid"),
        ({"quantity": -5}, "quantity", -5, "invalid"),
        ({"quantity": 2.5}, "quantity", 2.5, "invalid"),
        ({"quantity": 51}, "quantity", 51, "short"),
        ({"key": ""}, "key", "", "invalid"),
        ({"reason": "  "}, "reason", "  ", "invalid"),
    ],
)
def test_a_refused_move_names_the_field_and_value_and_writes_nothing(
    ledger: Ledger, changes: dict[str, Any], field: str, value: object, kind: str
) -> None:
    receive(ledger, PARA, "L1", 200, 50, "CENTRAL/A01")
    receive(ledger, PARA, "L1", 200, 5, "CAB1/P01")
    before = counts(ledger)
    exc = refused(move_stock, ledger, PLACES, move(**changes))
    assert (exc.field, exc.value, exc.kind) == (field, value, kind)
    assert f"{field}: {value!r}" in str(exc)
    assert counts(ledger) == before
    assert not ledger.command_done(changes.get("key", "m1") or "m1")


def test_a_move_takes_neither_reserved_nor_held_units(ledger: Ledger) -> None:
    receive(ledger, PARA, "L1", 200, 50, "CENTRAL/A01")
    receive(ledger, PARA, "L1", 200, 8, "CENTRAL/QUARANTINE")
    ledger.reserve(
        "res1",
        purpose="job 7",
        needs=[Need(PARA, 40)],
        from_locations=["CENTRAL/A01"],
        timeout_s=600,
        actor="packing",
    )
    exc = refused(move_stock, ledger, PLACES, move(quantity=11))
    assert (exc.field, exc.value, exc.kind) == ("quantity", 11, "short")
    assert "10 free units" in str(exc)
    assert move_stock(ledger, PLACES, move(quantity=10, key="m2")).booked
    assert balance(ledger, "CENTRAL/A01", "L1") == (40, 40)

    ledger.hold_location("h1", "CENTRAL/QUARANTINE", reason="water damage", actor="pharm")
    exc = refused(
        move_stock, ledger, PLACES, move(from_location="CENTRAL/QUARANTINE", quantity=1, key="m3")
    )
    assert (exc.field, exc.kind) == ("quantity", "short") and "0 free units" in str(exc)
    assert balance(ledger, "CENTRAL/QUARANTINE", "L1") == (8, 0)


def stock_expired(led: Ledger) -> None:
    """Lots that expire within days of NOW, which the tests then treat as past."""
    receive(led, PARA, "E1", 3, 30, "CENTRAL/A01")
    receive(led, PARA, "L1", 200, 50, "CENTRAL/A01")
    receive(led, METO, "M0", 5, 10, "CENTRAL/PREP")
    receive(led, PARA, "E1", 3, 7, "CAB1/P01")  # a pocket: not the store's to waste
    receive(led, PARA, "E1", 3, 6, "CENTRAL/QUARANTINE")
    led.reserve(
        "res-e1",
        purpose="job 9",
        needs=[Need(PARA, 4, batch="E1")],
        from_locations=["CENTRAL/A01"],
        timeout_s=3600,
        actor="packing",
    )
    led.hold_location("h-q", "CENTRAL/QUARANTINE", reason="under investigation", actor="pharm")


LATER = TODAY + timedelta(days=10)


def test_waste_expired_books_the_free_expired_units_once(ledger: Ledger) -> None:
    stock_expired(ledger)
    e1, m0 = TODAY + timedelta(days=3), TODAY + timedelta(days=5)

    before = counts(ledger)
    plan = waste_expired(
        ledger, PLACES, location="CENTRAL", key="w1", actor="tech:eva", today=LATER, dry_run=True
    )
    assert counts(ledger) == before
    expected = (
        ExpiredLot("CENTRAL/A01", PARA, "E1", e1, 26),
        ExpiredLot("CENTRAL/PREP", METO, "M0", m0, 10),
    )
    left = (
        LeftLot("CENTRAL/A01", PARA, "E1", e1, 4, "reserved"),
        LeftLot("CENTRAL/QUARANTINE", PARA, "E1", e1, 6, "held"),
    )
    assert (plan.dry_run, plan.wasted, plan.left, plan.units) == (True, expected, left, 36)

    done = waste_expired(
        ledger, PLACES, location="CENTRAL", key="w1", actor="tech:eva", today=LATER
    )
    assert (done.dry_run, done.wasted, done.left, done.units) == (False, expected, left, 36)
    assert booked(ledger, "waste") == [
        (f"w1:CENTRAL/A01:{PARA}/E1", "CENTRAL/A01", "WASTE", 26, "expired", "tech:eva"),
        (f"w1:CENTRAL/PREP:{METO}/M0", "CENTRAL/PREP", "WASTE", 10, "expired", "tech:eva"),
    ]
    assert audit_actors(ledger, "move") == {"tech:eva"}
    assert balance(ledger, "CENTRAL/A01", "E1") == (4, 4)
    assert balance(ledger, "CAB1/P01", "E1") == (7, 0)
    assert balance(ledger, "CENTRAL/A01", "L1") == (50, 0)

    after = counts(ledger)
    again = waste_expired(
        ledger, PLACES, location="CENTRAL", key="w1", actor="tech:eva", today=LATER
    )
    assert (again.wasted, again.units) == ((), 0)
    assert counts(ledger) == after
    assert verify_ledger(ledger.engine) == []


def test_a_retry_leaves_stock_freed_since_under_the_used_key(ledger: Ledger) -> None:
    stock_expired(ledger)
    waste_expired(ledger, PLACES, location="CENTRAL/A01", key="w2", actor="tech", today=LATER)
    ledger.void("v1", reservation_key="res-e1", actor="packing", reason="job cancelled")
    after = counts(ledger)
    again = waste_expired(
        ledger, PLACES, location="CENTRAL/A01", key="w2", actor="tech", today=LATER
    )
    e1 = TODAY + timedelta(days=3)
    assert again.wasted == ()
    assert again.left == (LeftLot("CENTRAL/A01", PARA, "E1", e1, 4, "booked before"),)
    assert counts(ledger) == after
    fresh = waste_expired(
        ledger, PLACES, location="CENTRAL/A01", key="w3", actor="tech", today=LATER
    )
    assert fresh.wasted == (ExpiredLot("CENTRAL/A01", PARA, "E1", e1, 4),)
    assert balance(ledger, "CENTRAL/A01", "E1") == (0, 0)


def test_waste_expired_keeps_to_the_location_given(ledger: Ledger) -> None:
    stock_expired(ledger)
    done = waste_expired(
        ledger, PLACES, location="CENTRAL/PREP", key="w4", actor="tech", today=LATER
    )
    assert [(w.location, w.units) for w in done.wasted] == [("CENTRAL/PREP", 10)]
    assert balance(ledger, "CENTRAL/A01", "E1") == (30, 4)
    assert (
        waste_expired(
            ledger, PLACES, location="CENTRAL", key="w5", actor="tech", today=TODAY
        ).wasted
        == ()
    )


@pytest.mark.parametrize(
    ("location", "key", "field", "value", "kind"),
    [
        ("CAB1", "w6", "location", "CAB1", "invalid"),
        ("CENTRAL/Z99", "w6", "location", "CENTRAL/Z99", "unknown"),
        ("CENTRAL", "", "key", "", "invalid"),
    ],
)
def test_a_refused_waste_names_the_field_and_writes_nothing(
    ledger: Ledger, location: str, key: str, field: str, value: str, kind: str
) -> None:
    stock_expired(ledger)
    before = counts(ledger)
    exc = refused(
        waste_expired, ledger, PLACES, location=location, key=key, actor="tech", today=LATER
    )
    assert (exc.field, exc.value, exc.kind) == (field, value, kind)
    assert counts(ledger) == before
