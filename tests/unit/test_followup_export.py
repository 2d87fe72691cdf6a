"""The monthly follow-up export: stock at the month's end from the movements, the
month's whole use, cover and the duty status per product and category; exemptions with
their levels; crisis periods; the JSON document, the CSV layout and the CLI.

The ledger is test_duty_use's (Paracetamol A: 300 in at T-100, 180 used on 2026-11-17),
with Metoprolol (B) exempt at a level of 14 days, Furosemide (C) out of scope, and a
crisis period over the drugs from 2026-11-10.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from controller.cli import main
from controller.ledger import Ledger
from controller.ledger.engine import make_engine
from controller.ledger.errors import LedgerError
from controller.ledger.reports.followup import (
    FOLLOWUP_CSV_HEADER,
    followup_csv_text,
    followup_report,
)
from controller.ledger.schema import (
    crisis_periods,
    crisis_scope,
    duty_scope,
    exemptions,
    products,
)
from tests.unit.test_duty_use import NOW, PRIVATE, A, B, Clock, build

C = "07359990000037"
GENERATED = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def prepare(led: Ledger, clock: Clock) -> None:
    build(led, clock)
    led.add_product(
        gtin=C, article=100021, name="Furosemide", substance="furosemide", atc="C03CA01",
        strength="40 mg", form="tablet", pack_size=100, unit_price="0.32",
    )  # fmt: skip
    clock.now = datetime(2026, 9, 1, tzinfo=UTC)
    led.set_exemption(
        gtin=B,
        reason="single supplier, held by the regional pharmacy",
        risk_assessment="RA-2026-020: alternatives in stock",
        review_date=date(2027, 3, 1),
        decided_by="chief pharmacist",
        actor="p",
    )
    clock.now = NOW
    led.record_external_use(A, month="2026-10", unit_name=PRIVATE, quantity=3100, actor="p")
    led.record_external_use(A, month="2026-11", unit_name="Kommun X", quantity=60, actor="p")
    with led.engine.begin() as conn:
        ids = {
            g: i
            for i, g in conn.execute(
                products.select().with_only_columns(products.c.id, products.c.gtin)
            )
        }
        conn.execute(
            update(exemptions).where(exemptions.c.product_id == ids[B]).values(level_days=14)
        )
        conn.execute(
            insert(duty_scope).values(
                product_id=ids[C], reason="dental_care", decided_by="p", decided_at=NOW
            )
        )
        crisis = conn.execute(
            insert(crisis_periods)
            .values(
                starts_at=datetime(2026, 11, 10, tzinfo=UTC),
                reason="regional supply crisis",
                decided_by="p",
                decided_at=NOW,
            )
            .returning(crisis_periods.c.id)
        ).scalar_one()
        conn.execute(insert(crisis_scope).values(crisis_id=crisis, category="drug"))
        conn.execute(
            insert(crisis_periods).values(
                starts_at=datetime(2026, 9, 1, tzinfo=UTC),
                ends_at=datetime(2026, 9, 20, tzinfo=UTC),
                reason="an earlier one",
                decided_by="p",
                decided_at=NOW,
            )
        )


@pytest.fixture
def led(tmp_path: Path) -> Iterator[Ledger]:
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, clock=clock)
    prepare(ledger, clock)
    yield ledger
    engine.dispose()


def test_the_month_on_both_databases(ledger_url: str) -> None:
    clock = Clock()
    engine = make_engine(ledger_url)
    led = Ledger(engine, clock=clock)
    try:
        prepare(led, clock)
        nov = followup_report(led.engine, month="2026-11", generated_at=GENERATED)
        rows = {
            p.gtin: (
                p.on_hand, p.usable, p.use_internal, p.use_external, p.cover_days,
                p.obligation_days, p.level_days, p.status,
            )
            for p in nov.products
        }  # fmt: skip
        assert rows == {
            # 120 x 30 days / (180 + 60)
            A: (120, 120, 180, 60, 15.0, 30, None, "short"),
            B: (0, 0, 0, 0, None, 14, 14, "no_use"),
            C: (0, 0, 0, 0, None, None, None, "out_of_scope"),
        }
        drug = next(c for c in nov.categories if c.category == "drug")
        assert (drug.products, drug.in_scope, drug.exempt, drug.assessed, drug.meeting) == (
            3, 2, 1, 1, 0,
        )  # fmt: skip
        assert (drug.on_hand, drug.use_internal, drug.use_external) == (120, 180, 60)
        assert [(e.gtin, e.level_days, e.status) for e in nov.exemptions] == [(B, 14, "active")]
        assert [(k.reason, k.categories, k.ends_at) for k in nov.crisis_periods] == [
            ("regional supply crisis", ("drug",), None)
        ]
        # October: the stock before the transfers, the external volume alone.
        octo = followup_report(led.engine, month="2026-10", generated_at=GENERATED)
        a = next(p for p in octo.products if p.gtin == A)
        assert (a.on_hand, a.usable, a.use_internal, a.use_external, a.cover_days) == (
            300, 300, 0, 3100, 3.0,
        )  # fmt: skip
        assert octo.crisis_periods == ()
        sept = followup_report(led.engine, month="2026-09-15", generated_at=GENERATED)
        assert [k.reason for k in sept.crisis_periods] == ["an earlier one"]
        assert sept.exemptions[0].gtin == B  # decided 2026-09-01
        aug = followup_report(led.engine, month="2026-08", generated_at=GENERATED)
        assert aug.exemptions == ()
        a = next(p for p in aug.products if p.gtin == A)
        assert (a.on_hand, a.status) == (300, "no_use")  # received 2026-08-14
    finally:
        engine.dispose()


def test_the_csv_layout(led: Ledger) -> None:
    report = followup_report(led.engine, month="2026-11", generated_at=GENERATED)
    lines = followup_csv_text(report).split("\n")
    assert lines[0] == ";".join(FOLLOWUP_CSV_HEADER)
    assert lines[-1] == ""
    by_record: dict[str, list[str]] = {}
    for line in lines[1:-1]:
        by_record.setdefault(line.split(";")[0], []).append(line)
    assert list(by_record) == ["product", "category", "exemption", "crisis"]
    assert (
        f"product;2026-11;drug;{A};100007;Paracetamol 500 mg;tablet;120;120;180;60;240;15.0;"
        "short;30;;;;;;;;"
    ) in by_record["product"]
    assert (
        f"product;2026-11;drug;{C};100021;Furosemide;tablet;0;0;0;0;0;;out_of_scope;;;;;;;;dental_care;"
        in by_record["product"]
    )
    assert by_record["category"][0] == "category;2026-11;drug;;;;;120;120;180;60;240;;;;;3;1;0;;;;"
    assert len(by_record["category"]) == 4
    assert by_record["exemption"] == [
        f"exemption;2026-11;drug;{B};;Metoprolol;;;;;;;;active;;14;;;;"
        "2026-09-01T00:00:00+00:00;;single supplier, held by the regional pharmacy;"
    ]
    assert by_record["crisis"] == [
        "crisis;2026-11;;;;;;;;;;;;;;;;;;2026-11-10T00:00:00+00:00;;regional supply crisis;drug"
    ]


def test_bad_months_and_zones_are_named(led: Ledger) -> None:
    with pytest.raises(LedgerError, match="month: '2026-13' is not a month"):
        followup_report(led.engine, month="2026-13", generated_at=GENERATED)
    with pytest.raises(LedgerError, match="tz: 'Mars/Base' is not a known time zone"):
        followup_report(led.engine, month="2026-11", tz="Mars/Base", generated_at=GENERATED)


def test_the_cli_prints_json_and_writes_csv(
    led: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(led.engine.url)
    assert main(["report", "followup", "--db", db, "--month", "2026-11", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {
        "month",
        "generated_at",
        "products",
        "categories",
        "exemptions",
        "crisis_periods",
    } <= set(doc)
    assert doc["month"] == "2026-11" and len(doc["products"]) == 3
    out = tmp_path / "followup.csv"
    assert main(["report", "followup", "--db", db, "--month", "2026-11", "--csv", str(out)]) == 0
    assert f"{out}: 9 lines (2026-11)"  # 3 products, 4 categories, 1 + 1 in capsys.readouterr().out
    assert out.read_text(encoding="utf-8").startswith("record;month;category;gtin;")
    assert main(["report", "followup", "--db", db, "--month", "2026-11"]) == 0
    text = capsys.readouterr().out
    assert "follow-up 2026-11 (UTC)" in text and "level 14 days" in text
    assert main(["report", "followup", "--db", db, "--month", "11/2026"]) == 2
    assert "doseline report followup: month: '11/2026' is not a month" in capsys.readouterr().err


def test_a_durable_product_is_out_of_scope_as_in_the_compliance_report(led: Ledger) -> None:
    """The follow-up judges each product as cover and compliance do (one rule,
    controller.duty_rules.exemptions.obligation_for): a durable device is out of scope."""
    led.add_product(
        gtin="07359990000198", article=100133, name="Infusion pump", substance="",
        atc="", strength="-", form="pump", unit="piece", pack_size=1, unit_price="9000",
        category="medical_device",
    )  # fmt: skip
    led.set_durability("07359990000198", "durable", actor="p")
    report = followup_report(led.engine, month="2026-11", generated_at=GENERATED)
    pump = next(p for p in report.products if p.gtin == "07359990000198")
    assert (pump.status, pump.in_scope, pump.scope_reason) == ("out_of_scope", False, "durable")
    assert pump.obligation_days is None
