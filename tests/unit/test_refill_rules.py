"""Refill planning with values only: whether a low pocket asks, how much and by when,
and which refills go out together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.cabinets.refill_rules import (
    RefillState,
    next_round,
    plan_pick_lists,
    plan_refill,
    refill_in_flight,
    refill_wanted,
)

R = RefillState
STOCKHOLM = ZoneInfo("Europe/Stockholm")
ROUNDS = [time(7, 0), time(13, 0), time(19, 0)]
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # 11:00 in Stockholm


@dataclass
class Earlier:
    state: RefillState
    settled_at: float | None = None


@dataclass
class Listed:
    name: str
    cabinet: str
    state: RefillState = R.RESERVED
    urgent: bool = False
    due_at: datetime = NOW


def test_the_next_round_is_the_first_strictly_after_in_local_time() -> None:
    assert next_round(NOW, ROUNDS, STOCKHOLM) == datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    at_round = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert next_round(at_round, ROUNDS, STOCKHOLM) == datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
    late = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
    assert next_round(late, ROUNDS, STOCKHOLM) == datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="no round time"):
        next_round(NOW, [], STOCKHOLM)


def test_a_low_pocket_asks_for_a_refill_up_to_its_max_due_after_the_next_round() -> None:
    plan = plan_refill(
        count=3,
        pocket_max=20,
        now=NOW,
        rounds=ROUNDS,
        tz=STOCKHOLM,
        urgent_due_minutes=30,
        round_due_minutes=60,
    )
    assert (plan.quantity, plan.urgent) == (17, False)
    assert plan.due_at == datetime(2026, 11, 20, 13, 0, tzinfo=UTC)  # 13:00 round + 1 h


def test_an_empty_pocket_is_urgent_and_due_soon() -> None:
    plan = plan_refill(
        count=0,
        pocket_max=20,
        now=NOW,
        rounds=ROUNDS,
        tz=STOCKHOLM,
        urgent_due_minutes=30,
        round_due_minutes=60,
    )
    assert (plan.quantity, plan.urgent, plan.due_at) == (20, True, NOW + timedelta(minutes=30))


def test_a_blocked_cabinet_or_a_refill_under_way_asks_for_nothing() -> None:
    assert refill_wanted(blocked=False, earlier=[], read_at=None)
    assert not refill_wanted(blocked=True, earlier=[], read_at=None)
    for state in (R.RESERVED, R.PICKING, R.BOOKED):
        assert not refill_wanted(blocked=False, earlier=[Earlier(state)], read_at=None)
    done = [Earlier(R.CONFIRMED, settled_at=5.0), Earlier(R.CANCELLED)]
    assert refill_wanted(blocked=False, earlier=done, read_at=None)


def test_a_count_read_before_the_last_refill_was_told_is_stale() -> None:
    told = [Earlier(R.CONFIRMED, settled_at=100.0)]
    assert not refill_wanted(blocked=False, earlier=told, read_at=99.0)
    assert not refill_wanted(blocked=False, earlier=told, read_at=100.0)
    assert refill_wanted(blocked=False, earlier=told, read_at=101.0)


def test_a_round_makes_one_list_per_cabinet_of_its_reserved_refills() -> None:
    refills = [
        Listed("b1", "CAB2"),
        Listed("a1", "CAB1"),
        Listed("a2", "CAB1", state=R.PICKING),
        Listed("a3", "CAB1"),
        Listed("c1", "CAB3"),
    ]
    round_at = NOW + timedelta(hours=2)
    plans = plan_pick_lists(
        refills,
        blocked={"CAB3"},
        urgent_only=False,
        now=NOW,
        round_at=round_at,
        round_due_minutes=60,
    )
    assert [(p.cabinet, [r.name for r in p.refills]) for p in plans] == [
        ("CAB1", ["a1", "a3"]),
        ("CAB2", ["b1"]),
    ]
    assert {p.due_at for p in plans} == {round_at + timedelta(minutes=60)}
    assert not any(p.urgent for p in plans)


def test_an_urgent_list_takes_the_cabinets_other_refills_along() -> None:
    soon = NOW + timedelta(minutes=30)
    refills = [
        Listed("a1", "CAB1"),
        Listed("a2", "CAB1", urgent=True, due_at=soon + timedelta(minutes=5)),
        Listed("a3", "CAB1", urgent=True, due_at=soon),
        Listed("b1", "CAB2"),
    ]
    plans = plan_pick_lists(
        refills, blocked=(), urgent_only=True, now=NOW, round_at=None, round_due_minutes=60
    )
    assert len(plans) == 1
    assert (plans[0].cabinet, plans[0].urgent, plans[0].due_at) == ("CAB1", True, soon)
    assert [r.name for r in plans[0].refills] == ["a1", "a2", "a3"]


def test_a_refill_is_in_flight_while_its_doses_may_be_missing_from_the_count() -> None:
    def flight(
        state: RefillState, lines: int = 2, scanned: int = 0, settled: float | None = None
    ) -> bool:
        return refill_in_flight(
            state=state, lines=lines, scanned=scanned, settled_at=settled, read_at=50.0
        )

    assert flight(R.BOOKED)
    assert flight(R.PICKING, lines=2, scanned=2)  # being posted
    assert not flight(R.PICKING, lines=2, scanned=1)
    assert not flight(R.PICKING, lines=0, scanned=0)
    assert flight(R.CONFIRMED, settled=60.0)
    assert not flight(R.CONFIRMED, settled=40.0)
    assert not flight(R.RESERVED)
