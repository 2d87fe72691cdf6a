"""Stock gauges from the ledger reports, on SQLite and PostgreSQL.

The story (NOW = 2026-11-22 12:00 UTC, "T-n" = n days before NOW; TODAY = 2026-11-22):

| product (category, SEK/unit) | booked                                                    |
|------------------------------|-----------------------------------------------------------|
| A Paracetamol (drug, 0.50)   | T-120 in 1000 (A1); 450 consumed @T-60: 90-day basis,     |
|                              | 5/day, 550 usable: 110.0 days. A0: 20 in @T-30, expired   |
|                              | 2026-11-19. A2: 100 in the preparedness bin, quarantined. |
| B Metoprolol (drug, 1.00)    | new: T-20 in 100 (B1); 60 consumed @T-10: 30-day basis,   |
|                              | 2/day. B2: 10 in @T-5, expires 2026-12-12. 50 usable:     |
|                              | 25.0 days, short of the obligation.                       |
| C Apixaban (drug, 2.00)      | exempt; 1 usable at 0.1/day: 10.0 days, not judged.       |
| D Furosemide (drug, 0.25)    | no consumption; 8 wasted @T-40, 4 @T-2.                   |
| E Syringe (device, 0.90)     | T-100 in 900 (A01) + 300 (preparedness); 300 consumed     |
|                              | @T-50; E3: 50 in @T-10, expires 2027-01-21. 950 usable at |
|                              | 3.333/day: 285.0 days; the preparedness 300 alone: 90.0.  |

Order lines in the last 30 days: 4, one short; one more (short) outside the window.
Reservations: one open since NOW - 2 h, one older but voided.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select

from controller.app import Controller
from controller.async_ledger import AsyncLedger
from controller.ledger import Ledger
from controller.ledger import reports as rp
from controller.ledger.engine import make_engine
from controller.ledger.ledger import Need
from controller.ledger.schema import order_lines, products
from controller.metrics import Metrics
from controller.stock_metrics import StockMetrics, collect
from tests.sites import make_site

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TZ = ZoneInfo("Europe/Stockholm")
A, B, C, D, E = (
    "07359990000013",
    "07359990000020",
    "07359990000044",
    "07359990000037",
    "07359990000198",
)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class Monotonic:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def build(led: Ledger, clock: Clock) -> None:
    led.create_schema()
    for gtin, article, name, price, category in (
        (A, 100001, "Paracetamol 500 mg tablet", "0.50", "drug"),
        (B, 100002, "Metoprolol 50 mg tablet", "1.00", "drug"),
        (C, 100003, "Apixaban 5 mg tablet", "2.00", "drug"),
        (D, 100004, "Furosemide 40 mg tablet", "0.25", "drug"),
        (E, 100005, "Syringe 10 ml", "0.90", "medical_device"),
    ):
        led.add_product(
            gtin=gtin,
            article=article,
            name=name,
            substance=name.split()[0].lower(),
            atc="",
            strength="-",
            form="tablet",
            unit_price=price,
            category=category,
        )
    led.add_location("CENTRAL", "store")
    led.add_location("CENTRAL/A01", "bin", parent="CENTRAL")
    led.add_location("CENTRAL/PREP", "preparedness", parent="CENTRAL")

    def at(days: float) -> None:
        clock.now = NOW - timedelta(days=days)

    def receive(days: int, gtin: str, batch: str, expiry: date, qty: int, to: str) -> None:
        at(days)
        led.receive(
            f"rcv-{batch}",
            gtin=gtin,
            batch=batch,
            expiry=expiry,
            quantity=qty,
            to_location=to,
            actor="t",
        )

    def consume(days: int, gtin: str, qty: int) -> None:
        at(days)
        led.consume(
            f"use-{gtin}-{days}",
            gtin=gtin,
            quantity=qty,
            location="CENTRAL/A01",
            actor="t",
            reason="dose",
        )

    def waste(days: int, gtin: str, qty: int) -> None:
        at(days)
        led.waste(
            f"waste-{gtin}-{days}",
            gtin=gtin,
            quantity=qty,
            location="CENTRAL/A01",
            actor="t",
            reason="broken",
            reason_code="damaged",
        )

    receive(120, A, "A1", date(2027, 6, 30), 1000, "CENTRAL/A01")
    consume(60, A, 450)
    receive(30, A, "A0", date(2026, 11, 19), 20, "CENTRAL/A01")
    receive(30, A, "A2", date(2027, 12, 31), 100, "CENTRAL/PREP")
    led.set_lot_status(A, "A2", "quarantined")
    receive(20, B, "B1", date(2027, 3, 1), 100, "CENTRAL/A01")
    consume(10, B, 60)
    receive(5, B, "B2", date(2026, 12, 12), 10, "CENTRAL/A01")
    receive(100, C, "C1", date(2027, 9, 30), 10, "CENTRAL/A01")
    consume(50, C, 9)
    at(1)
    led.set_exemption(
        gtin=C,
        reason="single supplier, held by the regional pharmacy",
        risk_assessment="RA-2026-001: alternatives in stock",
        review_date=date(2027, 6, 1),
        decided_by="chief pharmacist",
        actor="t",
    )
    receive(50, D, "D1", date(2028, 1, 1), 100, "CENTRAL/A01")
    waste(40, D, 8)
    waste(2, D, 4)
    receive(100, E, "E1", date(2029, 1, 31), 900, "CENTRAL/A01")
    receive(100, E, "E2", date(2029, 1, 31), 300, "CENTRAL/PREP")
    consume(50, E, 300)
    receive(10, E, "E3", date(2027, 1, 21), 50, "CENTRAL/A01")

    clock.now = NOW - timedelta(hours=5)
    led.reserve(
        "voided",
        purpose="refill",
        needs=[Need(A, 5)],
        from_locations=["CENTRAL/A01"],
        timeout_s=10**7,
        actor="t",
    )
    led.void("voided:void", reservation_key="voided", actor="t", reason="test")
    clock.now = NOW - timedelta(hours=2)
    led.reserve(
        "open",
        purpose="refill",
        needs=[Need(A, 10)],
        from_locations=["CENTRAL/A01"],
        timeout_s=10**7,
        actor="t",
    )
    with led.engine.begin() as conn:
        ids = {r.gtin: r.id for r in conn.execute(select(products.c.gtin, products.c.id))}
        for key, days, requested, filled in (
            ("l1", 3, 10, 10),
            ("l2", 4, 5, 5),
            ("l3", 5, 20, 20),
            ("l4", 6, 10, 7),  # short
            ("old", 40, 10, 0),  # outside the 30 days
        ):
            conn.execute(
                insert(order_lines).values(
                    key=key,
                    ts=NOW - timedelta(days=days),
                    product_id=ids[A],
                    requested=requested,
                    filled=filled,
                    source="packing",
                )
            )
    clock.now = NOW


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def led(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    engine = make_engine(ledger_url)
    ledger = Ledger(engine, clock=clock)
    build(ledger, clock)
    yield ledger
    engine.dispose()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def aledger(led: Ledger, metrics: Metrics) -> Iterator[AsyncLedger]:
    pool = AsyncLedger(led, metrics)
    yield pool
    pool.close()


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# ---------------------------------------------------------------------------- collect


def test_collect_reads_every_gauge_from_the_reports(led: Ledger) -> None:
    snap = collect(led, now=NOW, tz=TZ)
    assert snap.cover_days == {
        "drug": 25.0,  # B; C is exempt, D has no consumption
        "medical_device": 285.0,
        "special_food": None,
        "protective_equipment": None,
    }
    assert snap.below_obligation == {
        "drug": 1,
        "medical_device": 0,
        "special_food": 0,
        "protective_equipment": 0,
    }
    # Only usable preparedness stock counts (the quarantined A2 would give 20 days).
    assert snap.preparedness_cover_days == 90.0
    assert snap.preparedness_value == Decimal("320.00")  # E2 270.00 + A2 50.00
    # Within 30 days: the expired A0 (10.00) and B2 (10.00); within 90 also E3 (45.00).
    assert snap.expiring_value == {30: Decimal("20.00"), 90: Decimal("65.00")}
    assert snap.expired_value == Decimal("10.00")
    assert snap.waste_value_30d == Decimal("1.00")  # 4 of D; the 8 at T-40 are older
    assert snap.service_level == 0.75
    assert snap.oldest_open_reservation_s == 2 * 3600


def test_collect_agrees_with_the_compliance_summary(led: Ledger) -> None:
    """The counts per category are the compliance report's short lists."""
    snap = collect(led, now=NOW, tz=TZ)
    summary = rp.compliance_summary(led, now=NOW)
    assert snap.below_obligation == {c.category: len(c.short) for c in summary.categories}
    assert snap.preparedness_value == summary.preparedness.value


def test_collect_with_nothing_to_measure(ledger_url: str, clock: Clock) -> None:
    engine = make_engine(ledger_url)
    try:
        led = Ledger(engine, clock=clock)
        led.create_schema()
        snap = collect(led, now=NOW, tz=TZ)
    finally:
        engine.dispose()
    assert set(snap.cover_days.values()) == {None}
    assert set(snap.below_obligation.values()) == {0}
    assert snap.preparedness_cover_days is None
    assert snap.service_level is None
    assert snap.oldest_open_reservation_s == 0
    assert snap.expiring_value == {30: Decimal(0), 90: Decimal(0)}


# ---------------------------------------------------------------------------- gauges


async def test_refresh_publishes_the_gauges(aledger: AsyncLedger, metrics: Metrics) -> None:
    stock = StockMetrics(metrics, aledger, tz=TZ)
    assert await stock.refresh() is True
    assert value(metrics, "doseline_stock_cover_days", category="drug") == 25.0
    assert value(metrics, "doseline_stock_cover_days", category="medical_device") == 285.0
    assert value(metrics, "doseline_stock_cover_days", category="special_food") is None
    assert value(metrics, "doseline_stock_products_below_obligation", category="drug") == 1
    assert value(metrics, "doseline_stock_products_below_obligation", category="special_food") == 0
    assert value(metrics, "doseline_stock_preparedness_cover_days") == 90.0
    assert value(metrics, "doseline_stock_preparedness_value_sek") == 320.0
    assert value(metrics, "doseline_stock_expiring_value_sek", within_days="30") == 20.0
    assert value(metrics, "doseline_stock_expiring_value_sek", within_days="90") == 65.0
    assert value(metrics, "doseline_stock_expired_value_sek") == 10.0
    assert value(metrics, "doseline_stock_waste_value_30d_sek") == 1.0
    assert value(metrics, "doseline_stock_service_level_ratio") == 0.75
    assert value(metrics, "doseline_ledger_oldest_open_reservation_seconds") == 7200
    assert value(metrics, "doseline_stock_metrics_last_refresh_timestamp_seconds") == (
        NOW.timestamp()
    )
    # The reports ran as one call on the ledger's pool, and were timed there.
    assert value(metrics, "doseline_ledger_operation_seconds_count", operation="collect") == 1


async def test_a_category_without_judged_products_loses_its_cover_series(
    led: Ledger, aledger: AsyncLedger, metrics: Metrics, clock: Clock
) -> None:
    stock = StockMetrics(metrics, aledger, tz=TZ)
    await stock.refresh()
    assert value(metrics, "doseline_stock_cover_days", category="medical_device") == 285.0
    # 200 days on, E's consumption is out of both windows: nothing left to judge.
    clock.now = NOW + timedelta(days=200)
    await stock.refresh()
    assert value(metrics, "doseline_stock_cover_days", category="medical_device") is None
    assert value(metrics, "doseline_stock_products_below_obligation", category="drug") == 0
    service = value(metrics, "doseline_stock_service_level_ratio")
    assert service is not None and math.isnan(service)  # no order lines in the window


async def test_tick_refreshes_once_per_interval(
    led: Ledger, aledger: AsyncLedger, metrics: Metrics, clock: Clock
) -> None:
    mono = Monotonic()
    stock = StockMetrics(metrics, aledger, tz=TZ, interval_s=30, monotonic=mono)
    assert await stock.tick() is True  # the first tick refreshes at once
    assert value(metrics, "doseline_stock_waste_value_30d_sek") == 1.0
    led.waste("more-waste", gtin=D, quantity=8, location="CENTRAL/A01", actor="t", reason="dropped")
    mono.t = 29.9
    assert await stock.tick() is False
    assert value(metrics, "doseline_stock_waste_value_30d_sek") == 1.0
    mono.t = 30.0
    clock.now = NOW + timedelta(seconds=30)  # the waste at NOW is inside [now - 30 d, now)
    assert await stock.tick() is True
    assert value(metrics, "doseline_stock_waste_value_30d_sek") == 3.0
    assert value(metrics, "doseline_ledger_operation_seconds_count", operation="collect") == 2
    with pytest.raises(ValueError, match="interval_s"):
        StockMetrics(metrics, aledger, interval_s=0)


async def test_a_failing_refresh_is_logged_once_and_counted(
    ledger_url: str, clock: Clock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="doseline.metrics")
    engine = make_engine(ledger_url)
    led = Ledger(engine, clock=clock)  # no schema yet: every report fails
    pool = AsyncLedger(led, metrics)
    try:
        stock = StockMetrics(metrics, pool, tz=TZ)
        assert await stock.refresh() is False
        assert await stock.refresh() is False
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "refresh failed" in errors[0].getMessage()
        assert value(metrics, "doseline_stock_metrics_refresh_failures_total") == 2
        assert value(metrics, "doseline_stock_metrics_last_refresh_timestamp_seconds") == 0
        build(led, clock)
        assert await stock.refresh() is True
        assert value(metrics, "doseline_stock_service_level_ratio") == 0.75
        assert any("works again" in r.getMessage() for r in caplog.records)
        assert await pool.run(led.open_reservation_count) == 1  # the pool still works
    finally:
        pool.close()
        engine.dispose()


# ---------------------------------------------------------------------------- controller


async def test_controller_housekeeping_refreshes_the_stock_gauges(ledger_url: str) -> None:
    controller = Controller(make_site(), ledger_url=ledger_url)
    try:
        controller.prepare_ledger()
        today = datetime.now(controller.tz).date()
        controller.receive_opening_stock(today)
        mono = Monotonic()
        controller.stock_metrics.monotonic = mono
        assert controller.stock_metrics.interval_s == 30  # the default
        await controller.sweep()
        m = controller.metrics
        # P-SHORT (100 x 0.50, 5 days) within 30; P-EARLY (50 x 0.50, 90 days) within 90.
        assert value(m, "doseline_stock_expiring_value_sek", within_days="30") == 50.0
        assert value(m, "doseline_stock_expiring_value_sek", within_days="90") == 75.0
        assert value(m, "doseline_ledger_oldest_open_reservation_seconds") == 0
        mono.t = 1.0
        await controller.sweep()  # a second later: the other gauges only
        assert value(m, "doseline_ledger_operation_seconds_count", operation="collect") == 1
        assert value(m, "doseline_ledger_operation_seconds_count", operation="expire_overdue") == 2
    finally:
        controller.close()


async def test_housekeeping_survives_a_failing_stock_refresh(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = Controller(make_site(), ledger_url=ledger_url)
    try:
        controller.prepare_ledger()

        def broken(*args: object, **kwargs: object) -> None:
            raise ZeroDivisionError("a bug in a report")

        monkeypatch.setattr("controller.stock_metrics.collect", broken)
        await controller.sweep()  # does not raise
        m = controller.metrics
        assert value(m, "doseline_stock_metrics_refresh_failures_total") == 1
        assert value(m, "doseline_ledger_open_reservations") == 0
    finally:
        controller.close()
