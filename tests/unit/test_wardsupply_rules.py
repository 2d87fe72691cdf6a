"""Ward supply's pure decisions, tested with values: the usual quantity, the review
flags, the delivery a line goes with, the top-up proposal and a line's unmet cause."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.wardsupply import rules
from controller.wardsupply.model import Flag

TZ = ZoneInfo("Europe/Stockholm")
RUNS = [rules.RunSlot("AM", time(6), time(7, 30)), rules.RunSlot("PM", time(12), time(13, 30))]
GRACE = timedelta(hours=4)


def facts(**kw: bool) -> rules.ProductFacts:
    base = {"controlled": False, "licence": False, "stocked": True}
    base.update(kw)
    return rules.ProductFacts(gtin="07359990000013", **base)


@pytest.mark.parametrize(
    ("history", "par_max", "expected"),
    [
        ([], None, 2),  # nothing known: the floor
        ([], 3, 6),  # twice a full shelf
        ([2, 2, 4], 1, 6),  # twice the mean of 2.67, rounded up
        ([10], 3, 20),
        ([1, 1], 1, 2),  # never below the floor
    ],
)
def test_the_usual_limit_follows_the_shelf_and_the_history(
    history: list[int], par_max: int | None, expected: int
) -> None:
    assert rules.usual_limit(history, par_max, factor=2.0, floor_packs=2) == expected


def test_flags_name_every_reason_for_a_pharmacist() -> None:
    assert rules.review_flags(facts(), 2, on_list=True, usual=4) == ()
    assert rules.review_flags(facts(), 5, on_list=True, usual=4) == (Flag.UNUSUAL_QUANTITY,)
    assert rules.review_flags(facts(controlled=True, licence=True), 1, on_list=False, usual=4) == (
        Flag.CONTROLLED,
        Flag.LICENCE,
        Flag.NOT_ON_LIST,
    )


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 12, day, hh, mm, tzinfo=TZ)


@pytest.mark.parametrize(
    ("approved", "allowed", "run", "run_day"),
    [
        (at(8, 5), (), "AM", 8),
        (at(8, 6), (), "AM", 8),  # at the cutoff itself: still this run
        (at(8, 6, 1), (), "PM", 8),
        (at(8, 12, 30), (), "AM", 9),
        (at(8, 6, 1), ("AM",), "AM", 9),  # a room served in the morning only
    ],
)
def test_a_line_goes_with_the_next_run_it_can_make(
    approved: datetime, allowed: tuple[str, ...], run: str, run_day: int
) -> None:
    plan = rules.next_run(approved, RUNS, TZ, grace=GRACE, allowed=allowed)
    assert (plan.run, plan.run_date) == (run, date(2026, 12, run_day))
    departs = datetime.combine(plan.run_date, dict(AM=time(7, 30), PM=time(13, 30))[run], TZ)
    assert plan.departs_at == departs.astimezone(UTC)
    assert plan.due_at == plan.departs_at + GRACE


def test_next_run_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="time zone"):
        rules.next_run(datetime(2026, 12, 8, 5), RUNS, TZ, grace=GRACE)
    with pytest.raises(ValueError, match="NIGHT"):
        rules.next_run(at(8, 5), RUNS, TZ, grace=GRACE, allowed=("NIGHT",))


def test_urgent_lines_leave_at_once() -> None:
    plan = rules.urgent_plan(at(8, 15), TZ, 90)
    assert plan.run == rules.URGENT_RUN
    assert plan.due_at - plan.departs_at == timedelta(minutes=90)


def test_a_top_up_brings_what_is_at_or_below_min_up_to_max() -> None:
    counts = [
        rules.ShelfCount("A", counted_packs=1, min_packs=1, max_packs=4),
        rules.ShelfCount("B", counted_packs=2, min_packs=1, max_packs=4),
        rules.ShelfCount("C", counted_packs=0, min_packs=0, max_packs=2),
    ]
    assert rules.top_up(counts) == [("A", 3), ("C", 2)]
    with pytest.raises(ValueError, match="negative"):
        rules.top_up([rules.ShelfCount("A", -1, 1, 4)])


NOW = datetime(2026, 12, 8, 12, tzinfo=UTC)
DUE = NOW - timedelta(hours=1)


@pytest.mark.parametrize(
    ("kw", "cause"),
    [
        ({"delivered_units": 100, "received_at": DUE - timedelta(minutes=5)}, None),
        ({"delivered_units": 100, "received_at": DUE + timedelta(minutes=5)}, rules.CAUSE_LATE),
        ({"delivered_units": 50, "received_at": DUE, "short": True}, rules.CAUSE_SHORT),
        ({"delivered_units": 90, "received_at": DUE, "deviated": True}, rules.CAUSE_DEVIATION),
        ({"delivered_units": 0, "received_at": None}, rules.CAUSE_LATE),
        ({"delivered_units": 0, "received_at": None, "ordered": True}, rules.CAUSE_SUPPLIER),
    ],
)
def test_an_unmet_line_has_one_cause(kw: dict[str, object], cause: str | None) -> None:
    outcome = rules.line_outcome(
        wanted_units=100,
        delivered_units=kw["delivered_units"],  # type: ignore[arg-type]
        due_at=DUE,
        received_at=kw["received_at"],  # type: ignore[arg-type]
        deviated=bool(kw.get("deviated")),
        short=bool(kw.get("short")),
        ordered_from_supplier=bool(kw.get("ordered")),
        now=NOW,
    )
    assert outcome == cause
