"""Reports on a small hand-built ledger, with exact numbers, on SQLite and PostgreSQL.

The story (NOW = 2026-11-22 12:00 UTC, "T-n" = n days before NOW):

| product (category)            | booked                                                  |
|-------------------------------|---------------------------------------------------------|
| A Paracetamol (drug)          | T-120 in 1100; consumed 100 @T-100 (outside 90 d),      |
|                               | 500 @T-60, 120 in a pocket @T-10, 20 returned @T-5,     |
|                               | 200 packed in pouches @T-3. 200 left (A01 150, pocket 50)|
| B Metoprolol (drug, new)      | T-20 in 2000; 150 consumed @T-15; an expired lot of 40  |
|                               | @T-12 (15 wasted @T-1); 50 moved to quarantine @T-5     |
| C Furosemide (drug)           | T-20 in 500 + 200 (preparedness, quarantined lot); no use|
| D Apixaban (drug, exempt)     | T-100 in 100; 90 consumed @T-50; 2 wasted @T-2          |
| E Syringe (medical device)    | T-100 in 2000; 600 @T-80, 300 @T-20; waste 5 @T-40,     |
|                               | 20 @T-10; 30 held by an open reservation                |
| F Nutritional drink (food)    | T-20 in 48 (expires in 28 days); 30 consumed @T-10      |
| G Munskydd (protective)       | T-100 in 600 + 1000 (preparedness); 450 @T-45; waste 10 |

Order lines in the last 30 days: packing 10 (one short), refill 5 (one short); one more
packing line lies outside the window.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from controller.cli import main
from controller.ledger import Ledger, verify_ledger
from controller.ledger import reports as rp
from controller.ledger.engine import make_engine
from controller.ledger.errors import UnknownEntity
from controller.ledger.ledger import Need, Use
from controller.ledger.schema import audit_log, order_lines, products

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TODAY = NOW.date()

A = "07359990000013"  # Paracetamol
B = "07359990000020"  # Metoprolol
C = "07359990000037"  # Furosemide
D = "07359990000044"  # Apixaban
E = "07359990000198"  # Syringe
F = "07359990000204"  # Nutritional drink
G = "07359990000211"  # Munskydd

CATALOGUE = [
    dict(
        gtin=A,
        article=100007,
        name="Paracetamol 500 mg tablet",
        substance="paracetamol",
        atc="N02BE01",
        strength="500 mg",
        form="tablet",
        pack_size=100,
        unit_price="0.28",
        substitution_group="N02BE01 500 mg tablet",
    ),
    dict(
        gtin=B,
        article=100014,
        name="Metoprolol 50 mg tablet",
        substance="metoprolol",
        atc="C07AB02",
        strength="50 mg",
        form="tablet",
        pack_size=100,
        unit_price="0.45",
    ),
    dict(
        gtin=C,
        article=100021,
        name="Furosemide 40 mg tablet",
        substance="furosemide",
        atc="C03CA01",
        strength="40 mg",
        form="tablet",
        pack_size=100,
        unit_price="0.32",
    ),
    dict(
        gtin=D,
        article=100028,
        name="Apixaban 5 mg tablet",
        substance="apixaban",
        atc="B01AF02",
        strength="5 mg",
        form="film-coated tablet",
        pack_size=100,
        unit_price="9.10",
    ),
    dict(
        gtin=E,
        article=100133,
        name="Syringe 10 ml Luer lock, sterile",
        substance="",
        atc="",
        strength="10 ml",
        form="syringe",
        unit="piece",
        pack_size=100,
        unit_price="0.90",
        category="medical_device",
    ),
    dict(
        gtin=F,
        article=100140,
        name="Nutritional drink 200 ml; vanilla",
        substance="",
        atc="",
        strength="200 ml",
        form="drink",
        unit="bottle",
        pack_size=24,
        unit_price="14.50",
        category="special_food",
    ),
    dict(
        gtin=G,
        article=100147,
        name="Munskydd typ IIR, för vården",
        substance="",
        atc="",
        strength="-",
        form="mask",
        unit="piece",
        pack_size=50,
        unit_price="0.85",
        category="protective_equipment",
    ),
]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def waste(
    led: Ledger, clock: Clock, days: int, key: str, gtin: str, qty: int, code: str | None
) -> None:
    clock.now = NOW - timedelta(days=days)
    extra = {} if code is None else {"reason_code": code}
    led.waste(
        key, gtin=gtin, quantity=qty, location="CENTRAL/A01", actor="t", reason="waste", **extra
    )


def build(led: Ledger, clock: Clock) -> None:
    led.create_schema()
    for p in CATALOGUE:
        led.add_product(**p)  # type: ignore[arg-type]
    led.add_location("CENTRAL", "store")
    led.add_location("CENTRAL/A01", "bin", parent="CENTRAL")
    led.add_location("CENTRAL/PREP", "preparedness", parent="CENTRAL")
    led.add_location("CENTRAL/QUARANTINE", "quarantine", parent="CENTRAL")
    led.add_location("PACKER-1", "store")
    led.add_location("PACKER-1/C01", "canister", parent="PACKER-1", product_gtin=A)
    led.add_location("CAB-1", "store")
    led.add_location("CAB-1/P01", "pocket", parent="CAB-1", product_gtin=A)

    def at(days: int) -> None:
        clock.now = NOW - timedelta(days=days)

    def receive(days: int, gtin: str, batch: str, expiry: date, qty: int, to: str) -> None:
        at(days)
        led.receive(
            f"rcv-{gtin}-{batch}",
            gtin=gtin,
            batch=batch,
            expiry=expiry,
            quantity=qty,
            to_location=to,
            actor="t",
        )

    def consume(days: int, key: str, gtin: str, qty: int, where: str = "CENTRAL/A01") -> None:
        at(days)
        led.consume(key, gtin=gtin, quantity=qty, location=where, actor="t", reason="dose")

    def transfer(days: int, key: str, gtin: str, qty: int, to: str) -> None:
        at(days)
        led.transfer(
            key,
            gtin=gtin,
            quantity=qty,
            from_location="CENTRAL/A01",
            to_location=to,
            actor="t",
            reason="refill",
        )

    # A: history from T-120, short of a month at the 90-day rate.
    receive(120, A, "A1", date(2027, 6, 30), 1100, "CENTRAL/A01")
    consume(100, "a-100", A, 100)
    consume(60, "a-60", A, 500)
    transfer(10, "a-pocket", A, 150, "CAB-1/P01")
    consume(10, "a-withdraw", A, 120, "CAB-1/P01")
    at(5)
    led.return_consumed(
        "a-return", gtin=A, quantity=20, location="CAB-1/P01", actor="t", reason="dose returned"
    )
    transfer(4, "a-canister", A, 200, "PACKER-1/C01")
    at(3)
    led.reserve(
        "job-1",
        purpose="job 1",
        needs=[Need(A, 200)],
        from_locations=["PACKER-1/C01"],
        timeout_s=600,
        actor="t",
    )
    led.post("job-1-post", reservation_key="job-1", uses=[Use(A, 200, "CONSUMED")], actor="t")
    # B: new to the ledger (T-20), an expired lot still on hand, some stock in quarantine.
    receive(20, B, "B1", date(2027, 3, 1), 2000, "CENTRAL/A01")
    consume(15, "b-15", B, 150)
    receive(12, B, "B0", date(2026, 11, 15), 40, "CENTRAL/A01")
    transfer(5, "b-quarantine", B, 50, "CENTRAL/QUARANTINE")
    waste(led, clock, 1, "b-waste", B, 15, "expired")
    # C: no consumption; a lot in the preparedness stock, quarantined.
    receive(20, C, "C1", date(2027, 12, 31), 500, "CENTRAL/A01")
    receive(20, C, "C2", date(2026, 12, 10), 200, "CENTRAL/PREP")
    led.set_lot_status(C, "C2", "quarantined")
    # D: exempted.
    receive(100, D, "D1", date(2027, 9, 30), 100, "CENTRAL/A01")
    consume(50, "d-50", D, 90)
    waste(led, clock, 2, "d-waste", D, 2, None)
    # E: a medical device with a full history, and an open reservation.
    receive(100, E, "E1", date(2029, 1, 31), 2000, "CENTRAL/A01")
    consume(80, "e-80", E, 600)
    waste(led, clock, 40, "e-waste-40", E, 5, "expired")
    consume(20, "e-20", E, 300)
    waste(led, clock, 10, "e-waste-10", E, 20, "damaged")
    at(1)
    led.reserve(
        "refill-1",
        purpose="refill",
        needs=[Need(E, 30)],
        from_locations=["CENTRAL/A01"],
        timeout_s=10**7,
        actor="t",
    )
    # F: special food, new, short.
    receive(20, F, "F1", date(2026, 12, 20), 48, "CENTRAL/A01")
    consume(10, "f-10", F, 30)
    # G: protective equipment, mostly in the preparedness stock.
    receive(100, G, "G1", date(2030, 6, 30), 600, "CENTRAL/A01")
    receive(100, G, "G2", date(2030, 12, 31), 1000, "CENTRAL/PREP")
    consume(45, "g-45", G, 450)
    waste(led, clock, 8, "g-waste", G, 10, "damaged")

    clock.now = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    led.set_exemption(
        gtin=D,
        reason="single supplier, held by the regional hospital pharmacy",
        risk_assessment="RA-2026-014: alternative anticoagulants in stock",
        review_date=date(2026, 11, 1),
        decided_by="chief pharmacist",
        actor="t",
    )
    # Order lines: one through the ledger (a reservation with an order source), the
    # rest written directly, since a short line needs a stock level set up just so.
    at(4)
    led.reserve(
        "rf-api",
        purpose="refill",
        needs=[Need(E, 10)],
        from_locations=["CENTRAL/A01"],
        timeout_s=600,
        actor="t",
        order_source="refill",
    )
    led.void("rf-api-void", reservation_key="rf-api", actor="t", reason="test")
    with led.engine.begin() as conn:
        ids = {r.gtin: r.id for r in conn.execute(select(products.c.gtin, products.c.id))}
        lines = [(f"pk-{i}", 3, A, 10, 10, "packing") for i in range(9)]
        lines += [("pk-short", 2, A, 20, 15, "packing"), ("pk-old", 40, A, 10, 0, "packing")]
        lines += [(f"rf-{i}", 4, E, 10, 10, "refill") for i in range(3)]
        lines += [("rf-short", 1, E, 10, 0, "refill")]
        for key, days, gtin, requested, filled, source in lines:
            conn.execute(
                insert(order_lines).values(
                    key=key,
                    ts=NOW - timedelta(days=days),
                    product_id=ids[gtin],
                    requested=requested,
                    filled=filled,
                    source=source,
                )
            )
    clock.now = NOW


@pytest.fixture
def led(ledger_url: str) -> Iterator[Ledger]:
    clock = Clock()
    engine = make_engine(ledger_url)
    ledger = Ledger(engine, clock=clock)
    build(ledger, clock)
    yield ledger
    engine.dispose()


# ---------------------------------------------------------------------------- balances


def test_balances_by_location_with_reserved_and_unreleased(led: Ledger) -> None:
    report = rp.balances(led.engine, by="location")
    assert [
        (r.location, r.location_kind, r.on_hand, r.reserved, r.available, r.value)
        for r in report.rows
    ] == [
        ("CAB-1/P01", "pocket", 50, 0, 50, Decimal("14.00")),
        ("CENTRAL/A01", "bin", 3716, 30, 3686, Decimal("2443.55")),
        # the quarantined lot C2 is on hand but not available
        ("CENTRAL/PREP", "preparedness", 1200, 0, 1000, Decimal("914.00")),
        # stock in a quarantine location is on hand but not available
        ("CENTRAL/QUARANTINE", "quarantine", 50, 0, 0, Decimal("22.50")),
    ]
    assert (report.on_hand, report.reserved, report.available, report.value) == (
        5016,
        30,
        4736,
        Decimal("3394.05"),
    )
    # Given a day, expired lots (B0, 25 left) are not available either.
    dated = rp.balances(led.engine, by="location", today=TODAY)
    assert [r.available for r in dated.rows] == [50, 3686 - 25, 1000, 0]
    assert dated.available == 4736 - 25


def test_balances_by_product_and_lot_with_filters(led: Ledger) -> None:
    a = rp.balances(led, by="product", gtin=A)
    assert [(r.gtin, r.article, r.on_hand, r.value) for r in a.rows] == [
        (A, 100007, 200, Decimal("56.00"))
    ]
    # A store includes its bins, preparedness and quarantine.
    central = rp.balances(led.engine, by="product", location="CENTRAL")
    assert central.on_hand == 3716 + 1200 + 50
    b_lots = rp.balances(led.engine, by="lot", gtin=B)
    assert [
        (r.batch, r.expiry, r.status, r.on_hand, r.available, r.value) for r in b_lots.rows
    ] == [
        ("B0", date(2026, 11, 15), "released", 25, 25, Decimal("11.25")),
        ("B1", date(2027, 3, 1), "released", 1850, 1800, Decimal("832.50")),  # 50 quarantined
    ]
    with pytest.raises(UnknownEntity):
        rp.balances(led.engine, location="NOWHERE")


# ---------------------------------------------------------------------------- expiry


def test_expiring_includes_expired_lots_sorted_by_expiry(led: Ledger) -> None:
    report = rp.expiring(led.engine, within_days=30, today=TODAY)
    assert [
        (
            r.gtin,
            r.batch,
            r.expiry,
            r.days_left,
            r.expired,
            r.status,
            r.location,
            r.quantity,
            r.value,
        )
        for r in report.rows
    ] == [
        (B, "B0", date(2026, 11, 15), -7, True, "released", "CENTRAL/A01", 25, Decimal("11.25")),
        (
            C,
            "C2",
            date(2026, 12, 10),
            18,
            False,
            "quarantined",
            "CENTRAL/PREP",
            200,
            Decimal("64.00"),
        ),
        (F, "F1", date(2026, 12, 20), 28, False, "released", "CENTRAL/A01", 18, Decimal("261.00")),
    ]
    assert (report.units, report.value, report.expired_units, report.expired_value) == (
        243,
        Decimal("336.25"),
        25,
        Decimal("11.25"),
    )
    assert [r.batch for r in rp.expiring(led.engine, within_days=0, today=TODAY).rows] == ["B0"]


# ---------------------------------------------------------------------------- cover


def test_days_of_cover_windows_basis_and_exemption(led: Ledger) -> None:
    report = rp.days_of_cover(led.engine, now=NOW)
    got = {
        r.gtin: (
            r.on_hand,
            r.usable,
            r.consumed_30d,
            r.consumed_90d,
            r.mean_daily_30d,
            r.mean_daily_90d,
            r.cover_days_30d,
            r.cover_days_90d,
            r.basis,
            r.cover_days,
            r.meets_obligation,
            r.status,
            r.exempt,
        )
        for r in report.rows
    }
    assert got == {
        # 90 days of history: judged on the 90-day mean 800/90 = 8.889/day -> 22.5 days
        A: (200, 200, 300, 800, 10.0, 8.889, 20.0, 22.5, "90d", 22.5, False, "short", False),
        # new (first movement T-20): the 30-day mean; expired and quarantined stock not usable
        B: (1875, 1800, 150, 150, 5.0, 1.667, 360.0, 1080.0, "30d", 360.0, True, "ok", False),
        C: (700, 500, 0, 0, 0.0, 0.0, None, None, "30d", None, None, "no consumption", False),
        D: (8, 8, 0, 90, 0.0, 1.0, None, 8.0, "90d", 8.0, False, "short", True),
        E: (1075, 1075, 300, 900, 10.0, 10.0, 107.5, 107.5, "90d", 107.5, True, "ok", False),
        # new: 18 days at 1/day, although the diluted 90-day mean would say 54
        F: (18, 18, 30, 30, 1.0, 0.333, 18.0, 54.0, "30d", 18.0, False, "short", False),
        G: (1140, 1140, 0, 450, 0.0, 5.0, None, 228.0, "90d", 228.0, True, "ok", False),
    }
    assert [r.gtin for r in report.rows] == [D, C, B, G, F, A, E]  # by name
    d = next(r for r in report.rows if r.gtin == D)
    assert d.exemption == rp.Exemption(
        reason="single supplier, held by the regional hospital pharmacy",
        risk_assessment="RA-2026-014: alternative anticoagulants in stock",
        review_date=date(2026, 11, 1),
        decided_by="chief pharmacist",
        review_overdue=True,
    )
    # Before the review date the exemption is not overdue.
    early = rp.days_of_cover(led.engine, now=datetime(2026, 10, 1, tzinfo=UTC))
    assert next(r for r in early.rows if r.gtin == D).exemption.review_overdue is False  # type: ignore[union-attr]


def test_obligation_threshold_is_inclusive(led: Ledger) -> None:
    a = {r.gtin: r for r in rp.days_of_cover(led.engine, now=NOW, obligation_days=22).rows}[A]
    assert a.meets_obligation is True  # 22.5 >= 22
    e = {r.gtin: r for r in rp.days_of_cover(led.engine, now=NOW, obligation_days=108).rows}[E]
    assert e.meets_obligation is False  # 107.5 < 108


# ---------------------------------------------------------------------------- compliance


def test_compliance_summary_per_category_and_preparedness(led: Ledger) -> None:
    s = rp.compliance_summary(led.engine, now=NOW)
    rows = {c.category: (c.products, c.assessed, c.meeting, c.share) for c in s.categories}
    assert rows == {
        "drug": (4, 2, 1, 0.5),  # A short, B ok; C no consumption; D exempt
        "medical_device": (1, 1, 1, 1.0),
        "special_food": (1, 1, 0, 0.0),
        "protective_equipment": (1, 1, 1, 1.0),
    }
    assert (s.products, s.assessed, s.meeting, s.share) == (7, 5, 3, 0.6)
    drug = s.categories[0]
    assert [p.gtin for p in drug.short] == [A]
    assert [p.gtin for p in drug.no_consumption] == [C]
    assert [(e.gtin, e.review_date, e.review_overdue) for e in drug.exempted] == [
        (D, date(2026, 11, 1), True)
    ]
    assert s.preparedness == rp.PreparednessLine(
        units=1200,
        value=Decimal("914.00"),
        products=(
            rp.PreparednessProduct(C, 100021, "Furosemide 40 mg tablet", 200, Decimal("64.00")),
            rp.PreparednessProduct(
                G, 100147, "Munskydd typ IIR, för vården", 1000, Decimal("850.00")
            ),
        ),
    )


# ---------------------------------------------------------------------------- waste


def test_waste_by_reason_and_product(led: Ledger) -> None:
    report = rp.waste_report(led.engine, since=NOW - timedelta(days=30), until=NOW)
    assert report.by_reason == (
        rp.WasteByReason("damaged", 30, Decimal("26.50")),  # E 20 x 0.90 + G 10 x 0.85
        rp.WasteByReason("expired", 15, Decimal("6.75")),  # B; E's expired 5 is at T-40
        rp.WasteByReason("other", 2, Decimal("18.20")),  # D, booked without a code
    )
    assert [(p.gtin, p.units, p.value) for p in report.by_product] == [
        (D, 2, Decimal("18.20")),
        (E, 20, Decimal("18.00")),
        (G, 10, Decimal("8.50")),
        (B, 15, Decimal("6.75")),
    ]
    assert (report.units, report.value) == (47, Decimal("51.45"))
    whole = rp.waste_report(led.engine, since=NOW - timedelta(days=90), until=NOW)
    assert [
        (p.gtin, [(w.reason_code, w.units) for w in p.reasons])
        for p in whole.by_product
        if p.gtin == E
    ] == [(E, [("damaged", 20), ("expired", 5)])]


# ---------------------------------------------------------------------------- service level


def test_service_level_by_source(led: Ledger) -> None:
    r = rp.service_level(led.engine, since=NOW - timedelta(days=30), until=NOW)
    assert (r.lines, r.full, r.short, r.units_requested, r.units_filled) == (15, 13, 2, 160, 145)
    assert (r.share, r.meets_target) == (0.8667, False)
    assert r.by_source == (
        rp.ServiceLine("packing", 10, 9, 1, 110, 105, 0.9),
        rp.ServiceLine("refill", 5, 4, 1, 50, 40, 0.8),
    )
    assert (
        rp.service_level(
            led.engine, since=NOW - timedelta(days=30), until=NOW, target=0.85
        ).meets_target
        is True
    )
    empty = rp.service_level(led.engine, since=NOW, until=NOW + timedelta(days=1))
    assert (empty.lines, empty.share, empty.meets_target) == (0, None, None)


# ---------------------------------------------------------------------------- consumption


CSV_SEP_NOV = (
    "month;article;gtin;name;atc;unit;quantity;value_sek\n"
    "2026-09;100007;07359990000013;Paracetamol 500 mg tablet;N02BE01;tablet;500;140.00\n"
    "2026-09;100133;07359990000198;Syringe 10 ml Luer lock, sterile;;piece;600;540.00\n"
    "2026-10;100028;07359990000044;Apixaban 5 mg tablet;B01AF02;tablet;90;819.00\n"
    "2026-10;100147;07359990000211;Munskydd typ IIR, för vården;;piece;450;382.50\n"
    "2026-11;100007;07359990000013;Paracetamol 500 mg tablet;N02BE01;tablet;300;84.00\n"
    "2026-11;100014;07359990000020;Metoprolol 50 mg tablet;C07AB02;tablet;150;67.50\n"
    "2026-11;100133;07359990000198;Syringe 10 ml Luer lock, sterile;;piece;300;270.00\n"
    '2026-11;100140;07359990000204;"Nutritional drink 200 ml; vanilla";;bottle;30;435.00\n'
)


def test_consumption_by_month_csv_is_byte_exact(led: Ledger) -> None:
    report = rp.consumption_by_month(led.engine, since=datetime(2026, 9, 1, tzinfo=UTC), until=NOW)
    assert (report.units, report.value) == (2420, Decimal("2738.00"))
    out = io.StringIO(newline="")
    assert rp.write_consumption_csv(report.rows, out) == 8
    assert out.getvalue().encode("utf-8") == CSV_SEP_NOV.encode("utf-8")
    # One month only (no month boundary inside the window).
    nov = rp.consumption_by_month(led.engine, since=datetime(2026, 11, 1, tzinfo=UTC), until=NOW)
    assert [(r.month, r.gtin, r.quantity) for r in nov.rows] == [
        ("2026-11", A, 300),
        ("2026-11", B, 150),
        ("2026-11", E, 300),
        ("2026-11", F, 30),
    ]


def test_consumption_months_follow_the_time_zone(tmp_path: Path) -> None:
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'tz.db'}")
    led = Ledger(engine, clock=clock)
    led.create_schema()
    led.add_product(**CATALOGUE[0])  # type: ignore[arg-type]
    led.add_location("BIN", "bin")
    clock.now = datetime(2026, 10, 1, tzinfo=UTC)
    led.receive(
        "r", gtin=A, batch="L", expiry=date(2027, 1, 1), quantity=10, to_location="BIN", actor="t"
    )
    clock.now = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)  # 00:30 on 1 November in Stockholm
    led.consume("c", gtin=A, quantity=4, location="BIN", actor="t", reason="dose")
    since, until = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    utc = rp.consumption_by_month(engine, since=since, until=until)
    local = rp.consumption_by_month(engine, since=since, until=until, tz="Europe/Stockholm")
    assert [(r.month, r.quantity) for r in utc.rows] == [("2026-10", 4)]
    assert [(r.month, r.quantity) for r in local.rows] == [("2026-11", 4)]
    engine.dispose()


# ---------------------------------------------------------------------------- order proposal


def test_order_proposal_rounds_up_to_whole_packs(led: Ledger) -> None:
    p = rp.order_proposal(led.engine, now=NOW)
    got = [
        (
            r.gtin,
            r.basis,
            r.mean_daily,
            r.usable,
            r.target_units,
            r.shortfall,
            r.pack_size,
            r.packs,
            r.order_units,
            r.value,
        )
        for r in p.rows
    ]
    assert got == [
        (D, "90d", 1.0, 8, 32, 24, 100, 1, 100, Decimal("910.00")),
        (B, "30d", 5.0, 1800, 160, 0, 100, 0, 0, Decimal("0.00")),
        (G, "90d", 5.0, 1140, 160, 0, 50, 0, 0, Decimal("0.00")),
        (F, "30d", 1.0, 18, 32, 14, 24, 1, 24, Decimal("348.00")),  # 14 -> one pack of 24
        (A, "90d", 8.889, 200, 285, 85, 100, 1, 100, Decimal("28.00")),  # ceil(800 x 32 / 90)
        (E, "90d", 10.0, 1075, 320, 0, 100, 0, 0, Decimal("0.00")),
    ]
    assert (p.packs, p.value) == (3, Decimal("1286.00"))
    longer = {r.gtin: r for r in rp.order_proposal(led.engine, now=NOW, target_days=120).rows}
    # E: ceil(900 x 122 / 90) = 1220; 1220 - 1075 = 145 -> 2 packs of 100
    assert (longer[E].target_units, longer[E].packs, longer[E].order_units) == (1220, 2, 200)


# ---------------------------------------------------------------------------- assortment import


HEADER = (
    "gtin;article;name;substance;atc;strength;form;unit;pack_size;unit_price;category;storage;"
    "controlled_class;substitution_group\n"
)
BAD = HEADER + (
    "07359990000013;100007;Paracetamol 500 mg tablet;paracetamol;N02BE01;500 mg;tablet;tablet;"
    "100;0,30;drug;room;;N02BE01 500 mg tablet\n"
    "07359990000014;200001;Bad check digit;x;N02BE01;1 mg;tablet;tablet;100;1.00;drug;room;;\n"
    "07359990000228;200002;Bad ATC;x;N2BE01;1 mg;tablet;tablet;100;1.00;drug;room;;\n"
    "07359990000235;200002;Same article;x;N02BE01;1 mg;tablet;tablet;100;1.00;drug;room;;\n"
    "07359990000242;200003;Gloves;;;M;glove;piece;100;0.50;consumable;room;;\n"
    "07359990000259;100014;Article of B;x;C07AB02;50 mg;tablet;tablet;100;0.45;drug;room;;\n"
)
CLEAN = HEADER + (
    "07359990000013;100007;Paracetamol 500 mg tablet;paracetamol;N02BE01;500 mg;tablet;tablet;"
    "100;0,30;drug;room;;N02BE01 500 mg tablet\n"
    "07359990000020;100014;Metoprolol 50 mg tablet;metoprolol;C07AB02;50 mg;tablet;tablet;100;"
    "0.45;drug;room;;\n"
    "07359990000242;200003;Examination gloves nitrile M;;;M;glove;piece;200;0.35;"
    "protective_equipment;room;;\n"
)


def _count_products(led: Ledger) -> int:
    with led.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(products)).scalar_one())


def test_import_with_errors_names_line_field_value_and_writes_nothing(led: Ledger) -> None:
    before = _count_products(led)
    with led.engine.connect() as conn:
        audit_before = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    report = rp.import_assortment(led.engine, BAD, actor="pharmacist")
    assert not report.ok and not report.written
    assert [(p.line, p.field, p.value) for p in report.problems] == [
        (3, "gtin", "07359990000014"),
        (4, "atc", "N2BE01"),
        (5, "article", "200002"),
        (6, "category", "consumable"),
        (7, "article", "100014"),
    ]
    messages = {p.line: p.message for p in report.problems}
    assert "expected 3" in messages[3]
    assert "line 4" in messages[5]
    assert "drug, medical_device, special_food, protective_equipment" in messages[6]
    assert "belongs to GTIN 07359990000020" in messages[7]
    assert _count_products(led) == before
    assert led.product_by_article(100007)["unit_price"] == Decimal("0.28")
    with led.engine.connect() as conn:
        audited = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    assert audited == audit_before


def test_import_inserts_then_updates_prices(led: Ledger) -> None:
    dry = rp.import_assortment(led.engine, CLEAN, actor="pharmacist", dry_run=True)
    assert (dry.ok, dry.written, dry.inserted, dry.updated, dry.unchanged) == (True, False, 1, 1, 1)
    assert _count_products(led) == 7
    first = rp.import_assortment(led.engine, CLEAN, actor="pharmacist")
    assert (first.ok, first.written, first.inserted, first.updated, first.unchanged) == (
        True,
        True,
        1,
        1,
        1,
    )
    assert first.changes[0].changes == (rp.FieldChange("unit_price", "0.2800", "0.30"),)
    gloves = led.product_by_article(200003)
    assert (gloves["gtin"], gloves["category"], gloves["pack_size"], gloves["unit_price"]) == (
        "07359990000242",
        "protective_equipment",
        200,
        Decimal("0.35"),
    )
    assert gloves["controlled_class"] is None
    assert led.product_by_article(100007)["unit_price"] == Decimal("0.30")
    second = rp.import_assortment(
        led.engine, CLEAN.replace("200;0.35;", "200;0.38;"), actor="pharmacist"
    )
    assert (second.inserted, second.updated, second.unchanged) == (0, 1, 2)
    assert second.changes[2].changes == (rp.FieldChange("unit_price", "0.3500", "0.38"),)
    assert led.product_by_article(200003)["unit_price"] == Decimal("0.38")
    # Each insert and update is in the audit trail, and the chain is whole.
    with led.engine.connect() as conn:
        trail = conn.execute(
            select(audit_log.c.actor, audit_log.c.entity_key, audit_log.c.reason)
            .where(audit_log.c.reason == "assortment import")
            .order_by(audit_log.c.seq)
        ).all()
    assert [tuple(t) for t in trail] == [
        ("pharmacist", A, "assortment import"),
        ("pharmacist", "07359990000242", "assortment import"),
        ("pharmacist", "07359990000242", "assortment import"),
    ]
    assert verify_ledger(led.engine) == []


def test_import_rejects_a_bad_header_and_a_changed_article(led: Ledger) -> None:
    report = rp.import_assortment(led.engine, "gtin;article;name\n", actor="t")
    assert [(p.line, p.field) for p in report.problems] == [(1, "header")]
    assert "missing: substance" in report.problems[0].message
    short_row = rp.import_assortment(led.engine, HEADER + "07359990000013;100007;x\n", actor="t")
    assert [(p.line, p.field, p.message) for p in short_row.problems] == [
        (2, "row", "3 fields, expected 14")
    ]
    moved = CLEAN.replace("07359990000020;100014", "07359990000020;100999")
    report = rp.import_assortment(led.engine, moved, actor="t")
    assert [(p.line, p.field, p.value) for p in report.problems] == [(3, "article", "100999")]
    assert _count_products(led) == 7


def test_reports_are_json_ready(led: Ledger) -> None:
    data = rp.to_jsonable(rp.compliance_summary(led.engine, now=NOW))
    text = json.dumps(data)
    assert json.loads(text)["preparedness"]["value"] == "914.00"
    assert data["now"] == "2026-11-22T12:00:00+00:00"


# ---------------------------------------------------------------------------- CLI


def test_cli_balance_prints_an_aligned_table(
    led: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--db", ledger_url, "--by", "location", "--today", "2026-11-22"]
    assert main(["report", "balance", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "location",
        "kind",
        "on",
        "hand",
        "reserved",
        "available",
        "value",
        "SEK",
    ]
    assert lines[3].split() == ["CENTRAL/A01", "bin", "3716", "30", "3661", "2", "443.55"]
    assert lines[-1].split() == ["total", "5016", "30", "4711", "3", "394.05"]
    assert len({len(line) for line in lines[2:]}) == 1  # right-aligned: same width


def test_cli_cover_json(led: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "cover", "--db", ledger_url, "--now", NOW.isoformat(), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    a = next(r for r in data["rows"] if r["gtin"] == A)
    assert (a["cover_days"], a["basis"], a["meets_obligation"]) == (22.5, "90d", False)
    c = next(r for r in data["rows"] if r["gtin"] == C)
    assert (c["cover_days"], c["status"]) == (None, "no consumption")


def test_cli_consumption_csv_and_compliance(
    led: Ledger, ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "consumption.csv"
    args = ["--db", ledger_url, "--since", "2026-09-01", "--until", NOW.isoformat()]
    assert main(["report", "consumption", *args, "--csv", str(out)]) == 0
    assert out.read_bytes() == CSV_SEP_NOV.encode("utf-8")
    assert main(["report", "compliance", "--db", ledger_url, "--now", NOW.isoformat()]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["drug"] == ["4", "2", "1", "50.0", "%", "1", "1", "0"]
    assert rows["total"] == ["7", "5", "3", "60.0", "%"]
    assert "preparedness stock: 1200 units, 914.00 SEK, 2 products" in text


def test_cli_import_assortment_exit_codes(
    led: Ledger, ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD, encoding="utf-8")
    assert main(["ledger", "import-assortment", "--db", ledger_url, str(bad)]) == 1
    out = capsys.readouterr().out
    assert "5 problem(s) in 6 rows: nothing was written" in out
    assert any(line.split()[:3] == ["4", "atc", "N2BE01"] for line in out.splitlines())
    clean = tmp_path / "clean.csv"
    clean.write_text("\ufeff" + CLEAN, encoding="utf-8")  # as a spreadsheet saves it
    assert main(["ledger", "import-assortment", "--db", ledger_url, str(clean), "--dry-run"]) == 0
    assert "1 inserted, 1 updated, 1 unchanged (dry run" in capsys.readouterr().out
    assert _count_products(led) == 7
