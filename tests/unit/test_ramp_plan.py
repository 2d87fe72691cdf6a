"""The ramp plan (controller.duty_rules.ramp) with values: the month-by-month build-up,
the ceiling shared out by need, and its properties under hypothesis."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.duty_rules.ramp import RampError, RampItem, ramp_plan


def item(
    key: str = "A",
    start: int = 0,
    target: int = 900,
    use: int = 300,
    days: int = 30,
    pack: int = 100,
    price: str = "1.00",
) -> RampItem:
    return RampItem(key, start, target, use, days, pack, Decimal(price))


def test_without_a_ceiling_the_gap_is_spread_over_the_months() -> None:
    # 300 used a month; from 0 to 900 over 3 months: aim 300, 600, 900 at the ends.
    plan = ramp_plan([item()], months=3)
    lines = [m.lines[0] for m in plan.plan]
    assert [(x.start_units, x.use_units, x.order_units, x.end_units) for x in lines] == [
        (0, 300, 600, 300),
        (300, 300, 600, 600),
        (600, 300, 600, 900),
    ]
    assert [x.cover_days for x in lines] == [30.0, 60.0, 90.0]
    assert [m.value for m in plan.plan] == [Decimal("600.00")] * 3
    assert plan.reached and plan.outcomes[0].gap_units == 0
    assert plan.value == Decimal("1800.00") and plan.order_units == 1800


def test_whole_packs_round_up_and_the_last_month_reaches_the_target() -> None:
    # use 7 over 2 days: 105 a month; from 50 to 400 over 2 months.
    plan = ramp_plan([item(start=50, target=400, use=7, days=2, pack=40)], months=2)
    first, second = (m.lines[0] for m in plan.plan)
    # aim 50 + ceil(350 / 2) = 225: need 225 - 50 + 105 = 280 = 7 packs
    assert (first.needed_units, first.packs, first.end_units) == (280, 7, 225)
    # aim 400: need 400 - 225 + 105 = 280 = 7 packs
    assert (second.packs, second.end_units) == (7, 400)
    assert plan.reached


def test_a_unit_ceiling_goes_first_to_the_product_furthest_below_in_days() -> None:
    # A is 20 days behind (600 units at 30/day); B is 60 days behind (600 at 10/day).
    a = item("A", start=300, target=900, use=900, days=30, pack=100)
    b = item("B", start=0, target=600, use=300, days=30, pack=100)
    plan = ramp_plan([a, b], months=1, max_units_per_month=1000)
    la, lb = plan.plan[0].lines  # in the order given
    assert lb.order_units == 900 and not lb.capped  # 600 + 300 use: all of it
    assert la.order_units == 100 and la.capped  # 1500 wanted, 100 left
    assert plan.plan[0].order_units == 1000
    assert not plan.reached
    gaps = {o.key: (o.reached, o.gap_units) for o in plan.outcomes}
    assert gaps == {"A": (False, 900), "B": (True, 0)}  # A: 300 + 100 - 900 used: empty


def test_a_budget_ceiling_lets_a_cheaper_product_use_what_is_left() -> None:
    dear = item("D", start=0, target=100, use=0, days=30, pack=100, price="10.00")  # 1000/pack
    cheap = item("C", start=0, target=50, use=0, days=30, pack=10, price="1.00")  # 10/pack
    plan = ramp_plan([dear, cheap], months=1, budget_sek_per_month=Decimal("500"))
    d, c = plan.plan[0].lines
    assert (d.packs, d.capped) == (0, True)
    assert (c.packs, c.value, c.capped) == (5, Decimal("50.00"), False)
    assert c.cover_days is None  # no use: no cover


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"months": 0}, "months: 0 must be a whole number from 1 to 36"),
        ({"months": 37}, "months: 37"),
        (
            {"months": 2, "budget_sek_per_month": Decimal(1), "max_units_per_month": 5},
            "give one ceiling, not both",
        ),
        ({"months": 2, "budget_sek_per_month": Decimal(-1)}, "budget_sek_per_month: -1"),
        ({"months": 2, "max_units_per_month": -5}, "max_units_per_month: -5"),
    ],
)
def test_bad_values_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RampError, match=message.replace("(", r"\(")):
        ramp_plan([item()], **kwargs)  # type: ignore[arg-type]


def test_a_bad_item_is_named() -> None:
    with pytest.raises(RampError, match="pack_size of A: 0"):
        ramp_plan([item(pack=0)], months=1)
    with pytest.raises(RampError, match="key: 'A' appears twice"):
        ramp_plan([item(), item()], months=1)


items_st = st.lists(
    st.builds(
        RampItem,
        key=st.sampled_from("ABCDEFGH"),
        start_units=st.integers(0, 5000),
        target_units=st.integers(0, 5000),
        use_units=st.integers(0, 3000),
        use_days=st.sampled_from([30, 90]),
        pack_size=st.integers(1, 250),
        unit_price=st.decimals(min_value=0, max_value=50, places=2),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda i: i.key,
)


@settings(max_examples=60, deadline=None)
@given(items_st, st.integers(1, 6), st.integers(0, 20000), st.integers(0, 20000))
def test_never_over_the_ceiling(
    items: list[RampItem], months: int, units: int, budget: int
) -> None:
    by_units = ramp_plan(items, months=months, max_units_per_month=units)
    assert all(m.order_units <= units for m in by_units.plan)
    by_budget = ramp_plan(items, months=months, budget_sek_per_month=Decimal(budget))
    for m in by_budget.plan:
        exact = sum(
            (x.order_units * i.unit_price for x, i in zip(m.lines, items, strict=True)),
            Decimal(0),
        )
        assert exact <= budget


@settings(max_examples=60, deadline=None)
@given(items_st, st.integers(1, 6))
def test_a_large_ceiling_reaches_every_target(items: list[RampItem], months: int) -> None:
    plan = ramp_plan(items, months=months, max_units_per_month=10**9)
    assert plan.reached
    assert all(o.end_units >= o.target_units for o in plan.outcomes)
    assert not any(m.capped for m in plan.plan)


@settings(max_examples=60, deadline=None)
@given(
    items_st.map(lambda xs: xs[:1]),
    st.integers(1, 6),
    st.integers(0, 5000),
    st.integers(0, 5000),
)
def test_more_room_never_leaves_less_stock(
    items: list[RampItem], months: int, low: int, extra: int
) -> None:
    small = ramp_plan(items, months=months, max_units_per_month=low)
    large = ramp_plan(items, months=months, max_units_per_month=low + extra)
    for a, b in zip(small.plan, large.plan, strict=True):
        assert b.lines[0].end_units >= a.lines[0].end_units
    assert large.outcomes[0].gap_units <= small.outcomes[0].gap_units


# ------------------------------------------------------------------ on a ledger, by the CLI


def test_the_proposal_ramps_on_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main
    from controller.ledger import Ledger
    from controller.ledger.engine import make_engine
    from tests.unit.test_duty_use import Clock, build

    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    clock = Clock()
    build(Ledger(engine, clock=clock), clock)
    engine.dispose()
    # Paracetamol: 180 used in 90 days (60 a month), 120 usable, target ceil(180 x 32 / 90)
    # = 64, packs of 100.
    base = ["report", "proposal", "--db", f"sqlite:///{tmp_path / 'ledger.db'}"]
    base += ["--now", "2026-11-22T12:00", "--ramp-months", "3"]
    assert main([*base, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    lines = [m["lines"][0] for m in plan["plan"]]
    assert [(x["start_units"], x["order_units"], x["end_units"]) for x in lines] == [
        (120, 100, 160),
        (160, 0, 100),
        (100, 100, 140),
    ]
    assert plan["reached"] is True
    assert main([*base, "--max-units", "50"]) == 0
    text = capsys.readouterr().out
    assert "ramp over 3 months (at most 50 units per month), target 30 days" in text
    assert "07359990000013 Paracetamol 500 mg: target 64, end 0: NOT reached, gap 64 units" in text
    assert "capped" in text
    assert main([*base, "--budget-sek", "1000"]) == 0
    assert "every target reached" in capsys.readouterr().out
    assert main([*base[:-2], "--budget-sek", "10"]) == 2
    assert "--budget-sek and --max-units need --ramp-months" in capsys.readouterr().err
    assert main([*base[:-1], "0"]) == 2
    assert "months: 0 must be a whole number from 1 to 36" in capsys.readouterr().err
