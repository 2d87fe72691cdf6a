"""Par-level arithmetic with values only: a pocket's daily use in, its suggested min
and max out (the same formulas `test_par_levels` checks through the ledger)."""

from __future__ import annotations

import math
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cabinets.par_rules import (
    ParError,
    PocketHistory,
    PocketPlan,
    check_par_arguments,
    suggest_levels,
)

UNTIL = date(2026, 11, 20)
PLAN = PocketPlan("CAB1", 1, "07046261234561", current_min=4, current_max=10)


def history(daily: list[int], first_day: date | None = date(2026, 1, 1)) -> PocketHistory:
    return PocketHistory("CAB1/P01", PLAN.gtin, UNTIL, tuple(daily), first_day)


def test_steady_use_gives_the_lead_time_use_as_min_and_lead_plus_supply_as_max() -> None:
    s = suggest_levels(
        PLAN,
        history([6] * 7),
        name="Paracetamol",
        days=7,
        lead_time_days=1.0,
        days_of_supply=3.0,
        service_z=1.65,
    )
    assert (s.mean_daily, s.stdev_daily) == (6.0, 0.0)
    assert (s.suggested_min, s.suggested_max) == (6, 24)
    assert s.cover_days_current == pytest.approx(10 / 6)
    assert s.changed and s.note == ""


def test_varying_use_adds_safety_stock_for_its_spread() -> None:
    daily = [2, 4, 6, 8, 10, 4, 8]  # mean 6, sample sd 2.828...
    s = suggest_levels(
        PLAN,
        history(daily),
        name="x",
        days=7,
        lead_time_days=2.0,
        days_of_supply=3.0,
        service_z=1.65,
    )
    sd = math.sqrt(sum((d - 6) ** 2 for d in daily) / 6)
    assert s.suggested_min == math.ceil(6 * 2 + 1.65 * sd * math.sqrt(2))  # 19
    assert s.suggested_max == 30


def test_the_max_is_capped_at_the_capacity_and_the_min_kept_below_it() -> None:
    plan = PocketPlan("CAB1", 1, PLAN.gtin, current_min=4, current_max=10, capacity=8)
    s = suggest_levels(
        plan,
        history([10] * 7),
        name="x",
        days=7,
        lead_time_days=1.0,
        days_of_supply=3.0,
        service_z=0.0,
    )
    assert (s.suggested_min, s.suggested_max) == (7, 8)
    assert "max capped at capacity 8 (wanted 40)" in s.note
    assert "min lowered to 7 (wanted 10)" in s.note


def test_no_net_use_keeps_the_levels() -> None:
    s = suggest_levels(
        PLAN,
        history([3, -3, 0]),
        name="x",
        days=3,
        lead_time_days=1.0,
        days_of_supply=3.0,
        service_z=1.65,
    )
    assert (s.suggested_min, s.suggested_max) == (4, 10)
    assert not s.changed
    assert s.note == "no consumption in 3 days: levels kept"


def test_days_before_the_pocket_was_first_stocked_are_not_history() -> None:
    h = history([9, 9, 0, 3, 3], first_day=UNTIL - timedelta(days=1))
    assert (h.days_seen, h.seen) == (2, (3, 3))
    s = suggest_levels(
        PLAN, h, name="x", days=5, lead_time_days=1.0, days_of_supply=1.0, service_z=0.0
    )
    assert (s.days_seen, s.total, s.suggested_min, s.suggested_max) == (2, 6, 3, 6)
    assert s.note == "only 2 of 5 days of history"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"days": 0}, "days: must be a whole number of at least 1, got 0"),
        ({"lead_time_days": 0}, "lead_time_days: must be above 0, got 0"),
        ({"days_of_supply": math.inf}, "days_of_supply: must be finite, got inf"),
        ({"service_z": -1}, "service_z: must be 0 or more, got -1"),
    ],
)
def test_bad_arguments_are_refused_by_name_and_value(
    changes: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "days": 28,
        "until": UNTIL,
        "lead_time_days": 1.0,
        "days_of_supply": 3.0,
        "service_z": 1.65,
    } | changes
    with pytest.raises(ParError, match=message):
        check_par_arguments([PLAN], **arguments)  # type: ignore[arg-type]


def test_bad_current_levels_are_refused() -> None:
    bad = PocketPlan("CAB1", 1, PLAN.gtin, current_min=5, current_max=5)
    with pytest.raises(ParError, match="current_max must be above current_min 5"):
        check_par_arguments(
            [bad],
            days=7,
            until=UNTIL,
            lead_time_days=1.0,
            days_of_supply=3.0,
            service_z=1.65,
        )


@given(
    daily=st.lists(st.integers(0, 200), min_size=1, max_size=28),
    lead=st.floats(0.25, 7),
    supply=st.floats(0.25, 14),
    z=st.floats(0, 3),
    capacity=st.one_of(st.none(), st.integers(2, 500)),
)
def test_a_suggestion_always_has_min_below_max_within_capacity(
    daily: list[int], lead: float, supply: float, z: float, capacity: int | None
) -> None:
    plan = PocketPlan("CAB1", 1, PLAN.gtin, current_min=4, current_max=10, capacity=capacity)
    s = suggest_levels(
        plan,
        history(daily),
        name="x",
        days=len(daily),
        lead_time_days=lead,
        days_of_supply=supply,
        service_z=z,
    )
    assert 0 <= s.suggested_min < s.suggested_max
    if capacity is not None and sum(daily) > 0:
        assert s.suggested_max <= capacity
