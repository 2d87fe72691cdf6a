"""The stock duty's scope and exemptions: the pure rules with values, the ledger's
lifecycle (create, review, change, revoke; every change audited, every refusal named
and writing nothing), the cover and compliance reports and the stock gauges, the CLI,
and the site file's seed that never overwrites a later decision."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from controller.cli import main
from controller.duty_rules.exemptions import (
    DutyRuleError,
    check_durability,
    check_level,
    check_review_date,
    check_text,
    obligation_for,
)
from controller.ledger import Ledger, LedgerError, UnknownEntity, reports
from controller.ledger.engine import make_engine
from controller.ledger.errors import DutyRefused
from controller.ledger.reports.render import render_text, to_jsonable
from controller.ledger.schema import audit_log
from controller.metrics import Metrics
from controller.stock_metrics import StockMetrics, collect

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
TODAY = NOW.date()
LATER = TODAY + timedelta(days=90)
DRUG = "07359990000013"
DRUG2 = "07359990000020"
GLOVE = "07359990000501"
PUMP = "07359990000518"
UNKNOWN = "07359990009999"

REASON = "Licence caps stock at two weeks on hand"
RISK = "Supplier delivers within a day; two strengths in stock"
MEASURES = "Daily stock check; second supplier contracted"


# ------------------------------------------------------------------ pure rules


@pytest.mark.parametrize(
    ("kwargs", "kind", "level", "scope"),
    [
        ({}, "full", 30, "in"),
        ({"exemption_status": "active"}, "exempt", None, "in"),
        ({"exemption_status": "active", "exemption_level": 14}, "reduced", 14, "in"),
        ({"exemption_status": "active", "exemption_level": 0}, "reduced", 0, "in"),
        ({"exemption_status": "revoked", "exemption_level": 14}, "full", 30, "in"),
        ({"durability": "durable"}, "out_of_scope", None, "durable"),
        (
            {"scope_reason": "dental_care", "exemption_status": "active", "exemption_level": 5},
            "out_of_scope",
            None,
            "dental_care",
        ),
    ],
)
def test_what_a_product_is_judged_against(
    kwargs: dict[str, Any], kind: str, level: int | None, scope: str
) -> None:
    judged = obligation_for(30, **kwargs)
    assert (judged.kind, judged.level_days, judged.scope) == (kind, level, scope)
    assert judged.assessed is (level is not None)


def test_review_date_must_be_after_today() -> None:
    with pytest.raises(DutyRuleError, match=r"^review_date: 2026-12-06 is in the past$"):
        check_review_date(TODAY - timedelta(days=1), TODAY)
    with pytest.raises(DutyRuleError, match="is today"):
        check_review_date(TODAY, TODAY)
    assert check_review_date(TODAY + timedelta(days=1), TODAY) == TODAY + timedelta(days=1)


@given(st.integers(min_value=-100, max_value=100))
def test_a_level_is_accepted_only_below_the_obligation(days: int) -> None:
    if 0 <= days < 30:
        assert check_level(days, 30) == days
    else:
        with pytest.raises(DutyRuleError) as caught:
            check_level(days, 30)
        assert caught.value.field == "level_days" and caught.value.value == days
    assert check_level(None, 30) is None


def test_texts_and_durability_rules() -> None:
    with pytest.raises(DutyRuleError, match="measures: 'tbd' must be written out"):
        check_text("measures", "tbd")
    assert check_text("reason", "  ten chars!  ") == "ten chars!"
    with pytest.raises(DutyRuleError, match="a drug is always consumable"):
        check_durability(DRUG, "drug", "durable")
    assert check_durability(PUMP, "medical_device", "durable") == "durable"
    assert check_durability(DRUG, "drug", "consumable") == "consumable"


# ---------------------------------------------------------------------- ledger


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _ledger(url: str, clock: Clock) -> Ledger:
    led = Ledger(make_engine(url), clock=clock)
    led.create_schema()
    for gtin, article, name, category in (
        (DRUG, 1, "Paracetamol 500 mg", "drug"),
        (DRUG2, 2, "Metoprolol 50 mg", "drug"),
        (GLOVE, 3, "Nitrile glove M", "protective_equipment"),
        (PUMP, 4, "Infusion pump", "medical_device"),
    ):
        led.add_product(
            gtin=gtin,
            article=article,
            name=name,
            substance=name.split()[0],
            atc="N02BE01" if category == "drug" else "",
            strength="-",
            form="-",
            category=category,
        )
    led.add_location("STORE", "store")
    led.add_location("STORE/A1", "bin", parent="STORE")
    return led


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def led(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    ledger = _ledger(f"sqlite:///{tmp_path / 'duty.db'}", clock)
    yield ledger
    ledger.engine.dispose()


def audit_rows(led: Ledger) -> int:
    with led.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def create(led: Ledger, gtin: str = DRUG, **changes: Any) -> Any:
    kwargs: dict[str, Any] = {
        "reason": REASON,
        "risk_assessment": RISK,
        "measures": MEASURES,
        "review_date": LATER,
        "actor": "pharm:anna",
    }
    kwargs.update(changes)
    return led.create_exemption(gtin, **kwargs)


def test_an_exemption_lives_through_its_lifecycle(ledger_url: str, clock: Clock) -> None:
    """On SQLite and PostgreSQL: create, review, change, revoke, create again; every
    step audited under the exemption's GTIN."""
    led = _ledger(ledger_url, clock)
    try:
        made = create(led, level_days=14, decided_by="chief pharmacist")
        assert (made.status, made.level_days, made.decided_by) == ("active", 14, "chief pharmacist")
        assert made.measures == MEASURES and not made.review_overdue

        clock.now = NOW + timedelta(days=100)  # past the review date
        assert led.exemption(DRUG).review_overdue
        reviewed = led.review_exemption(
            DRUG, review_date=TODAY + timedelta(days=280), actor="pharm:bo", note="still needed"
        )
        assert (reviewed.reviewed_by, reviewed.reviewed_at) == ("pharm:bo", clock.now)
        assert reviewed.review_date == TODAY + timedelta(days=280)
        assert not reviewed.review_overdue

        changed = led.change_exemption(DRUG, actor="pharm:bo", level_days=None, measures=RISK)
        assert (changed.level_days, changed.measures, changed.decided_by) == (
            None,
            RISK,
            "pharm:bo",
        )

        revoked = led.revoke_exemption(DRUG, reason="Licence now allows a month", actor="pharm:bo")
        assert (revoked.status, revoked.revoked_by) == ("revoked", "pharm:bo")
        assert led.exemptions_list() == []
        assert [e.gtin for e in led.exemptions_list(include_revoked=True)] == [DRUG]

        again = create(led, review_date=TODAY + timedelta(days=200))
        assert (again.status, again.revoked_at, again.reviewed_at) == ("active", None, None)

        with led.engine.connect() as conn:
            trail = conn.execute(
                select(audit_log.c.actor, audit_log.c.reason)
                .where(audit_log.c.entity == "exemption", audit_log.c.entity_key == DRUG)
                .order_by(audit_log.c.seq)
            ).all()
        assert [tuple(r) for r in trail] == [
            ("pharm:anna", "exemption created"),
            ("pharm:bo", "still needed"),
            ("pharm:bo", "exemption changed"),
            ("pharm:bo", "exemption revoked"),
            ("pharm:anna", "exemption created"),
        ]
        out = led.set_out_of_scope(category="special_food", reason="dental_care", actor="p")
        assert (out.category, out.reason) == ("special_food", "dental_care")
        led.clear_out_of_scope(category="special_food", actor="p")
        assert led.scope_list() == []
    finally:
        led.engine.dispose()


REFUSALS: list[tuple[Any, type[LedgerError], str]] = [
    (lambda led: create(led, UNKNOWN), UnknownEntity, f"unknown gtin: '{UNKNOWN}'"),
    (
        lambda led: create(led, review_date=date(2026, 1, 1)),
        DutyRefused,
        "review_date: 2026-01-01 is in the past",
    ),
    (lambda led: create(led, level_days=30), DutyRefused, "level_days: 30 is out of range"),
    (lambda led: create(led, level_days=-1), DutyRefused, "level_days: -1 is out of range"),
    (lambda led: create(led, reason="because"), DutyRefused, "reason: 'because' must be"),
    (lambda led: create(led, measures=""), DutyRefused, "measures: '' must be written out"),
    (
        lambda led: led.review_exemption(DRUG, review_date=LATER, actor="p"),
        DutyRefused,
        f"gtin: {DRUG} has no exemption",
    ),
    (
        lambda led: led.review_exemption(UNKNOWN, review_date=LATER, actor="p"),
        UnknownEntity,
        "unknown gtin",
    ),
    (
        lambda led: led.revoke_exemption(DRUG, reason="no longer needed", actor="p"),
        DutyRefused,
        "has no exemption",
    ),
    (lambda led: led.set_durability(DRUG, "durable", actor="p"), DutyRefused, "a drug is"),
    (lambda led: led.set_durability(UNKNOWN, "durable", actor="p"), UnknownEntity, "gtin"),
    (
        lambda led: led.set_out_of_scope(gtin=DRUG, category="drug", reason="x", actor="p"),
        DutyRefused,
        "name a product or a category",
    ),
    (
        lambda led: led.set_out_of_scope(gtin=DRUG, reason="cheap", actor="p"),
        DutyRefused,
        "reason: 'cheap' is not one of",
    ),
    (
        lambda led: led.set_out_of_scope(category="food", reason="dental_care", actor="p"),
        DutyRefused,
        "category: 'food' is not one of",
    ),
    (
        lambda led: led.clear_out_of_scope(gtin=DRUG, actor="p"),
        DutyRefused,
        f"gtin: {DRUG} is not out of scope",
    ),
]


def test_a_refused_decision_names_the_field_and_writes_nothing(led: Ledger) -> None:
    before = audit_rows(led)
    for call, error, message in REFUSALS:
        with pytest.raises(error, match=message.replace("(", r"\(")):
            call(led)
    assert audit_rows(led) == before
    assert led.exemptions_list(include_revoked=True) == []
    assert led.scope_list() == []


def test_state_conflicts_are_refused_by_name(led: Ledger) -> None:
    create(led)
    with pytest.raises(DutyRefused, match="already has an active exemption") as caught:
        create(led, measures="Another set of measures")
    assert caught.value.kind == "conflict"
    led.revoke_exemption(DRUG, reason="Licence now allows a month", actor="p")
    before = audit_rows(led)
    with pytest.raises(DutyRefused, match="has a revoked exemption"):
        led.change_exemption(DRUG, actor="p", level_days=3)
    with pytest.raises(DutyRefused, match="has a revoked exemption"):
        led.review_exemption(DRUG, review_date=LATER, actor="p")
    create(led, DRUG2)
    with pytest.raises(DutyRefused, match="colour: is not a field"):
        led.change_exemption(DRUG2, actor="p", colour="red")
    with pytest.raises(DutyRefused, match="review_date: 2026-12-01 is in the past"):
        led.change_exemption(DRUG2, actor="p", review_date=date(2026, 12, 1))
    assert audit_rows(led) == before + 1  # the second create only
    assert led.exemption(DRUG2).review_date == LATER


# ------------------------------------------------------------ reports, gauges


def _stock(led: Ledger, gtin: str, usable: int, used_30d: int) -> None:
    """`usable` units left after `used_30d` consumed over the last 30 days."""
    key = f"{gtin}:"
    led.receive(
        key + "r",
        gtin=gtin,
        batch="B1",
        expiry=TODAY + timedelta(days=400),
        quantity=usable + used_30d,
        to_location="STORE/A1",
        actor="goods-in",
    )
    if used_30d:
        led.consume(
            key + "c", gtin=gtin, quantity=used_30d, location="STORE/A1", actor="n", reason="dose"
        )


@pytest.fixture
def any_led(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    """The ledger on SQLite and on PostgreSQL."""
    ledger = _ledger(ledger_url, clock)
    yield ledger
    ledger.engine.dispose()


def test_reports_judge_scope_durability_and_reduced_levels(any_led: Ledger, clock: Clock) -> None:
    led = any_led
    clock.now = NOW - timedelta(days=20)
    # 30 used in 30 days: one a day. 25 left is 25 days of cover.
    for gtin in (DRUG, DRUG2, GLOVE, PUMP):
        _stock(led, gtin, 25, 30)
    clock.now = NOW
    create(led, DRUG, level_days=20)  # reduced: meets 20 days
    create(led, DRUG2, review_date=TODAY + timedelta(days=1))  # exempt, no level
    led.set_out_of_scope(gtin=GLOVE, reason="individual_patient", note="one patient", actor="p")
    led.set_durability(PUMP, "durable", actor="p")
    clock.now = NOW + timedelta(days=2)  # DRUG2's review is now overdue
    later = NOW + timedelta(days=2)

    cover = {r.gtin: r for r in reports.days_of_cover(led.engine, now=later).rows}
    assert (cover[DRUG].level_days, cover[DRUG].meets_obligation) == (20, True)
    assert cover[DRUG].exemption is not None and cover[DRUG].exemption.level_days == 20
    assert (cover[DRUG2].level_days, cover[DRUG2].status) == (None, "short")
    assert (cover[GLOVE].scope, cover[GLOVE].level_days) == ("individual_patient", None)
    assert (cover[PUMP].scope, cover[PUMP].durability) == ("durable", "durable")

    summary = reports.compliance_summary(led.engine, now=later)
    data = to_jsonable(summary)
    cats = {c["category"]: c for c in data["categories"]}
    assert (cats["drug"]["assessed"], cats["drug"]["meeting"]) == (1, 1)
    assert sorted((e["gtin"], e["level_days"]) for e in cats["drug"]["exempted"]) == [
        (DRUG, 20),
        (DRUG2, None),
    ]
    assert cats["protective_equipment"]["out_of_scope"] == [
        {"gtin": GLOVE, "name": "Nitrile glove M", "reason": "individual_patient"}
    ]
    assert cats["medical_device"]["out_of_scope"][0]["reason"] == "durable"
    assert cats["medical_device"]["assessed"] == 0
    assert data["exemptions_review_overdue"] == 1
    text = render_text(summary)
    assert f"out     protective_equipment: {GLOVE} Nitrile glove M: individual_patient" in text
    assert "(reduced to 20 days)" in text and "REVIEW OVERDUE" in text
    assert "exemptions with the review overdue: 1" in text

    snap = collect(led, now=later)
    assert dict(snap.below_obligation) == {
        "drug": 0,
        "medical_device": 0,
        "special_food": 0,
        "protective_equipment": 0,
    }
    assert snap.exemptions_review_overdue == 1
    # the reduced level raised above the cover: the product is short of its level
    led.change_exemption(DRUG, actor="p", level_days=29)
    led.revoke_exemption(DRUG2, reason="The licence cap was lifted", actor="p")
    snap = collect(led, now=later)
    assert snap.below_obligation["drug"] == 2  # DRUG below 29 days, DRUG2 below 30
    assert snap.exemptions_review_overdue == 0
    metrics = Metrics()
    StockMetrics(metrics, SimpleNamespace(ledger=led)).publish(  # type: ignore[arg-type]
        dataclasses.replace(snap, exemptions_review_overdue=3)
    )
    assert metrics.registry.get_sample_value("doseline_stock_exemptions_review_overdue") == 3


# ------------------------------------------------------------------ CLI, seed


@pytest.fixture
def demo_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["ledger", "init", "--db", url]) == 0
    return url


DEMO_EXEMPT = "07359990000136"  # exempted in config/demo.yaml


def test_cli_exemption_commands_and_the_seed_keeps_later_decisions(
    demo_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["duty", "exemption", "list", "--db", demo_db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["gtin"] for e in listed] == [DEMO_EXEMPT]

    review = (date.today() + timedelta(days=60)).isoformat()
    args = ["duty", "exemption", "change", DEMO_EXEMPT, "--db", demo_db, "--actor", "pharm:anna"]
    assert main([*args, "--level-days", "10", "--measures", MEASURES, "--review-date", review]) == 0
    assert "reduced to 10 days" in capsys.readouterr().out

    assert main(["ledger", "init", "--db", demo_db]) == 0  # the site file seeds again
    capsys.readouterr()
    assert main(["duty", "exemption", "show", DEMO_EXEMPT, "--db", demo_db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["level_days"], shown["measures"], shown["decided_by"]) == (
        10,
        MEASURES,
        "pharm:anna",
    )

    bad = ["duty", "exemption", "create", UNKNOWN, "--db", demo_db, "--reason", REASON]
    bad += ["--risk-assessment", RISK, "--measures", MEASURES, "--review-date", "2026-01-01"]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("doseline duty exemption create: ")
    assert "review_date: 2026-01-01 is in the past" in err
    bad[bad.index("--review-date") + 1] = review
    assert main(bad) == 1
    assert f"unknown gtin: '{UNKNOWN}'" in capsys.readouterr().err

    para = "07359990000013"
    scope = ["duty", "scope", "set", "--db", demo_db, "--gtin", para, "--reason", "dental_care"]
    assert main([*scope, "--note", "dental clinic only"]) == 0
    capsys.readouterr()
    assert main(["duty", "scope", "list", "--db", demo_db, "--json"]) == 0
    assert [(s["gtin"], s["reason"]) for s in json.loads(capsys.readouterr().out)] == [
        (para, "dental_care")
    ]
    assert main(["duty", "durability", para, "durable", "--db", demo_db]) == 1
    assert "a drug is always consumable" in capsys.readouterr().err


def test_the_site_file_checks_durability_and_seeds_scope_only_where_missing(
    tmp_path: Path,
) -> None:
    from controller.app import Controller
    from controller.config import ConfigError, parse_site
    from tests.sites import METO, PARA, site_dict

    raw = site_dict(ledger_url=f"sqlite:///{tmp_path / 'site.db'}")
    raw["catalogue"][0]["durability"] = "durable"
    with pytest.raises(ConfigError, match=f"catalogue {PARA}: durability: a drug cannot"):
        parse_site(raw)
    raw["catalogue"][0]["durability"] = "consumable"
    raw["duty_scope"] = [
        {"gtin": PARA, "reason": "individual_patient"},
        {"category": "special_food", "reason": "dental_care", "note": "clinic"},
    ]
    with pytest.raises(ConfigError, match="name either a gtin or a category"):
        parse_site({**raw, "duty_scope": [{"reason": "dental_care"}]})
    with pytest.raises(ConfigError, match=r"exemptions\.0\.level_days"):
        parse_site(
            {
                **raw,
                "exemptions": [
                    {
                        "gtin": METO,
                        "reason": REASON,
                        "risk_assessment": RISK,
                        "review_date": "2027-06-30",
                        "decided_by": "chief",
                        "level_days": 30,
                    }
                ],
            }
        )
    controller = Controller(parse_site(raw), ledger_url=raw["ledger"]["url"])
    try:
        controller.prepare_ledger()
        led = controller.ledger
        assert [(e.gtin, e.category, e.reason) for e in led.scope_list()] == [
            (None, "special_food", "dental_care"),
            (PARA, None, "individual_patient"),
        ]
        led.set_out_of_scope(gtin=PARA, reason="manufacturing_material", actor="pharm:anna")
        led.clear_out_of_scope(category="special_food", actor="pharm:anna")
        controller.prepare_ledger()
        assert [(e.gtin, e.category, e.reason) for e in led.scope_list()] == [
            (None, "special_food", "dental_care"),  # gone from the ledger: seeded again
            (PARA, None, "manufacturing_material"),  # decided later: kept
        ]
    finally:
        controller.close()
