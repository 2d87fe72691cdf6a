"""Crisis periods: the pure rules (times, scopes, overlap, membership), the audited
decision and its end in the ledger, the reports marking the period, the gauges that
change with it, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from controller.cli import main
from controller.duty_rules.crisis import (
    CrisisRuleError,
    Period,
    Scope,
    check_new_period,
    first_overlap,
    in_crisis,
    overlaps,
    scopes_meet,
    times_overlap,
)
from controller.ledger import Ledger, verify_ledger
from controller.ledger import reports as rp
from controller.ledger.duty_preparedness import CrisisRefused
from controller.ledger.engine import make_engine
from controller.ledger.errors import UnknownEntity
from controller.ledger.schema import audit_log
from controller.stock_metrics import collect
from tests.unit.test_duty_preparedness import NOW, A, B, Clock, M, build

T0 = datetime(2027, 1, 1, tzinfo=UTC)
REASON = "regional crisis decision RD-2027-3"


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


# ---------------------------------------------------------------------------- pure rules

moments = st.integers(0, 20).map(at)
ends = st.none() | moments
scopes = st.builds(
    Scope,
    categories=st.frozensets(
        st.sampled_from(["drug", "medical_device", "special_food"]), max_size=2
    ),
    products=st.dictionaries(
        st.sampled_from([A, B, M]), st.sampled_from(["drug", "special_food"]), max_size=2
    ),
)


@given(moments, ends, moments, ends, scopes, scopes)
def test_overlap_is_symmetric(
    s1: datetime, e1: datetime | None, s2: datetime, e2: datetime | None, c1: Scope, c2: Scope
) -> None:
    assert times_overlap(s1, e1, s2, e2) == times_overlap(s2, e2, s1, e1)
    assert scopes_meet(c1, c2) == scopes_meet(c2, c1)
    p, q = Period(1, s1, e1, c1), Period(2, s2, e2, c2)
    assert overlaps(p, q) == overlaps(q, p)


@given(moments, ends, moments, scopes)
def test_a_product_is_in_crisis_exactly_while_a_covering_period_is_in_force(
    start: datetime, end: datetime | None, t: datetime, scope: Scope
) -> None:
    period = Period(1, start, end, scope)
    expected = start <= t and (end is None or t < end) and scope.covers(B, "drug")
    assert in_crisis([period], B, "drug", t) is expected


def test_times_are_half_open_and_an_open_end_runs_on() -> None:
    assert not times_overlap(at(0), at(5), at(5), at(9))  # one ends as the other starts
    assert times_overlap(at(0), at(6), at(5), at(9))
    assert times_overlap(at(0), None, at(100), None)
    assert not times_overlap(at(10), None, at(0), at(10))


def test_scopes_meet_by_everything_category_product_or_product_of_category() -> None:
    drug = Scope(categories=frozenset({"drug"}))
    food = Scope(categories=frozenset({"special_food"}))
    b = Scope(products={B: "drug"})
    m = Scope(products={M: "protective_equipment"})
    assert scopes_meet(Scope(), food)  # no scope: every product
    assert scopes_meet(drug, drug) and not scopes_meet(drug, food)
    assert scopes_meet(b, drug)  # a drug product and the drug category
    assert not scopes_meet(m, drug) and not scopes_meet(b, m)
    assert scopes_meet(b, Scope(products={B: "drug"}))


def test_first_overlap_names_the_earliest_other_period() -> None:
    new = Period(0, at(5), None, Scope(categories=frozenset({"drug"})))
    others = [
        Period(3, at(4), None, Scope()),
        Period(2, at(1), at(6), Scope(products={B: "drug"})),
        Period(1, at(0), at(5), Scope()),  # ended as the new one starts
    ]
    found = first_overlap(new, others)
    assert found is not None and found.id == 2
    assert (
        "crisis 2 (2027-01-01T01:00:00+00:00 to 2027-01-01T06:00:00+00:00; product"
        in found.describe()
    )


def test_a_new_period_starts_at_most_a_day_back_and_ends_after_it_starts() -> None:
    check_new_period(at(0), None, at(23))
    with pytest.raises(
        CrisisRuleError, match="starts_at: 2027-01-01T00:00:00\\+00:00 is in the past"
    ):
        check_new_period(at(0), None, at(25))
    with pytest.raises(CrisisRuleError, match=r"ends_at: .* is not after starts_at"):
        check_new_period(at(2), at(2), at(0))


# ---------------------------------------------------------------------------- ledger


@pytest.fixture
def led(tmp_path: Path) -> Iterator[Ledger]:
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, clock=clock)
    build(ledger, clock)
    yield ledger
    engine.dispose()


def _crisis_audit(led: Ledger) -> list[str]:
    with led.engine.connect() as conn:
        return list(
            conn.execute(
                select(audit_log.c.action)
                .where(audit_log.c.entity == "crisis")
                .order_by(audit_log.c.seq)
            ).scalars()
        )


def test_a_crisis_is_decided_marked_in_the_reports_and_ended(ledger_url: str) -> None:
    clock = Clock()
    engine = make_engine(ledger_url)
    try:
        led = Ledger(engine, clock=clock)
        build(led, clock)
        before = {r.gtin: r for r in rp.days_of_cover(led, now=NOW).rows}
        assert (before[B].status, before[B].in_crisis) == ("short", False)
        snap = collect(led, now=NOW)
        assert (snap.below_obligation["drug"], snap.crisis_active) == (1, False)

        period = led.start_crisis(
            starts_at=NOW, reason=REASON, categories=["drug"], actor="pharm:eva"
        )
        assert (period.categories, period.gtins, period.in_force) == (("drug",), (), True)
        rows = {r.gtin: r for r in rp.days_of_cover(led, now=NOW).rows}
        assert (rows[B].status, rows[B].in_crisis, rows[B].meets_obligation) == (
            "below month (crisis)",
            True,
            False,
        )
        assert (rows[A].in_crisis, rows[M].in_crisis) == (True, False)
        cover_text = rp.render_text(rp.days_of_cover(led, now=NOW))
        assert (
            f"CRISIS at {NOW.isoformat()}: 2 product(s) may be drawn below the month" in cover_text
        )
        assert "below month (crisis)" in next(x for x in cover_text.splitlines() if x.startswith(B))
        s = rp.compliance_summary(led, now=NOW)
        drug = s.categories[0]
        assert (drug.short, [p.gtin for p in drug.below_month_in_crisis]) == ((), [B])
        assert [(c.id, c.categories, c.decided_by) for c in s.crisis] == [
            (period.id, ("drug",), "pharm:eva")
        ]
        text = rp.render_text(s)
        assert f"CRISIS  {period.id}: since {NOW.isoformat()} (until open), drug: {REASON}" in text
        assert f"below month (crisis)  drug: {B}" in text
        snap = collect(led, now=NOW)
        assert (snap.below_obligation["drug"], snap.below_obligation_in_crisis["drug"]) == (0, 1)
        assert snap.crisis_active is True

        with pytest.raises(CrisisRefused, match=f"overlaps crisis {period.id} ") as caught:
            led.start_crisis(starts_at=NOW + timedelta(days=3), reason=REASON, gtins=[B], actor="p")
        assert caught.value.conflict
        other = led.start_crisis(
            starts_at=NOW, ends_at=NOW + timedelta(days=7), reason=REASON, gtins=[M], actor="p"
        )
        assert other.gtins == (M,)

        clock.now = NOW + timedelta(days=2)
        ended = led.end_crisis(
            period.id, reason="supply restored, decision RD-2027-4", actor="pharm:eva"
        )
        assert (ended.ends_at, ended.ended_by, ended.in_force) == (clock.now, "pharm:eva", False)
        with pytest.raises(CrisisRefused, match=f"crisis {period.id} has already ended"):
            led.end_crisis(period.id, reason="supply restored again", actor="p")
        assert [p.id for p in led.crisis_periods(in_force_only=True)] == [other.id]
        after = {r.gtin: r for r in rp.days_of_cover(led, now=clock.now).rows}
        assert after[B].status == "short"
        assert _crisis_audit(led) == ["crisis_start", "crisis_start", "crisis_end"]
        assert verify_ledger(engine) == []
    finally:
        engine.dispose()


def test_bad_crisis_decisions_are_named_and_write_nothing(led: Ledger) -> None:
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"categories": ["drugs"]}, CrisisRefused, "categories: 'drugs' is not a category"),
        ({"gtins": ["07350000000047"]}, UnknownEntity, "unknown gtin: '07350000000047'"),
        ({"gtins": ["123"]}, CrisisRefused, "gtins: '123' is not a valid GTIN"),
        ({"starts_at": NOW - timedelta(days=2)}, CrisisRefused, "starts_at: .* is in the past"),
        ({"reason": "because"}, CrisisRefused, "reason: 'because' must be written out"),
        ({"starts_at": datetime(2026, 11, 23)}, CrisisRefused, "starts_at: .* has no time zone"),
    ]
    for change, error, message in cases:
        kwargs: dict[str, object] = {"starts_at": NOW, "reason": REASON, "actor": "p", **change}
        with pytest.raises(error, match=message):
            led.start_crisis(**kwargs)  # type: ignore[arg-type]
    assert led.crisis_periods() == [] and _crisis_audit(led) == []
    with pytest.raises(UnknownEntity, match="unknown crisis: 7"):
        led.end_crisis(7, reason="nothing to end here", actor="p")
    planned = led.start_crisis(starts_at=NOW + timedelta(days=1), reason=REASON, actor="p")
    with pytest.raises(CrisisRefused, match=r"ends_at: .* is not after starts_at"):
        led.end_crisis(planned.id, reason="called off before it starts", actor="p")


# ---------------------------------------------------------------------------- CLI


def test_cli_crisis_start_list_end(led: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--db", str(led.engine.url)]
    start = ["duty", "crisis", "start", *db, "--reason", REASON, "--category", "special_food"]
    assert main([*start, "--json"]) == 0
    (period,) = json.loads(capsys.readouterr().out)
    assert period["categories"] == ["special_food"] and period["ends_at"] is None
    assert main(start) == 1
    assert capsys.readouterr().err.startswith(
        f"doseline duty crisis start: the period overlaps crisis {period['id']} "
    )
    assert main(["duty", "crisis", "list", *db]) == 0
    out = capsys.readouterr().out
    assert "special_food" in out and REASON in out
    end = ["duty", "crisis", "end", str(period["id"]), *db, "--reason", "the shortage is over now"]
    assert main(end) == 0
    assert main(end) == 1
    assert "has already ended" in capsys.readouterr().err
    assert main(["duty", "crisis", "list", *db, "--in-force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# ---------------------------------------------------------------------------- gauges


async def test_the_gauges_follow_the_floor_and_the_crisis(led: Ledger) -> None:
    from controller.async_ledger import AsyncLedger
    from controller.metrics import Metrics
    from controller.stock_metrics import StockMetrics

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    led.set_preparedness(A, target_units=300, floor_units=250, actor="p")  # 200 held: below
    metrics = Metrics()
    pool = AsyncLedger(led, metrics)
    try:
        stock = StockMetrics(metrics, pool)
        assert await stock.refresh() is True
        assert value("doseline_crisis_active") == 0
        assert value("doseline_preparedness_products_below_floor", category="drug") == 1
        assert value("doseline_preparedness_products_below_floor", category="special_food") == 0
        assert value("doseline_stock_products_below_obligation", category="drug") == 1  # B
        below_in_crisis = "doseline_stock_products_below_obligation_in_crisis"
        assert value(below_in_crisis, category="drug") == 0
        led.start_crisis(starts_at=NOW, reason=REASON, gtins=[B], actor="p")
        assert await stock.refresh() is True
        assert value("doseline_crisis_active") == 1
        assert value("doseline_stock_products_below_obligation", category="drug") == 0
        assert value(below_in_crisis, category="drug") == 1
    finally:
        pool.close()
