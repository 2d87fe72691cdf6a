"""The rationing rule with values and generated cases: priority wards first and not
capped, the others within the cap less what they drew today, never more than asked or
than the stock, in whole steps."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.duty_rules.rationing import (
    Grant,
    RationingError,
    Request,
    check_wards,
    cut_reason,
    ration,
    serving_order,
)


def granted(grants: list[Grant]) -> list[int]:
    return [g.granted for g in grants]


def test_a_non_priority_ward_gets_the_cap_less_what_it_drew_today() -> None:
    grants = ration([Request("MED1", 80)], {"MED1": 30}, cap=50, priority_wards=())
    assert granted(grants) == [20]
    assert (grants[0].capped, grants[0].short) == (60, 0)
    assert cut_reason(grants[0], 50) == "rationed: cap 50 a day for ward MED1"


def test_a_priority_ward_is_not_capped() -> None:
    grants = ration([Request("ICU", 500)], {"ICU": 400}, cap=50, priority_wards={"ICU"})
    assert granted(grants) == [500] and grants[0].priority


def test_two_requests_of_one_ward_share_its_cap() -> None:
    grants = ration([Request("MED1", 30), Request("MED1", 30)], {}, 40, ())
    assert granted(grants) == [30, 10]


def test_short_stock_goes_to_the_priority_wards_first_then_in_the_order_asked() -> None:
    requests = [Request("MED1", 40), Request("ICU", 70), Request("SURG2", 40)]
    assert serving_order(requests, {"ICU"}) == [1, 0, 2]
    grants = ration(requests, {}, cap=50, priority_wards={"ICU"}, available=100)
    assert granted(grants) == [30, 70, 0]
    assert grants[2].short == 40 and grants[2].capped == 0
    assert cut_reason(grants[2], 50) == "rationed: stock short, priority wards first"


def test_grants_come_in_whole_packs() -> None:
    # a cap of 150 units lets one pack of 100 through, not one and a half
    grants = ration([Request("MED1", 300, step=100)], {}, cap=150, priority_wards=())
    assert granted(grants) == [100]
    assert (grants[0].capped, grants[0].short) == (200, 0)
    # stock of 250 covers two packs of the priority ward's three
    grants = ration([Request("ICU", 300, step=100)], {}, 0, {"ICU"}, available=250)
    assert granted(grants) == [200] and grants[0].short == 100


def test_a_cap_of_zero_stops_the_other_wards() -> None:
    assert granted(ration([Request("MED1", 5), Request("ICU", 5)], {}, 0, {"ICU"})) == [0, 5]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cap": -1}, "cap_per_ward_day"),
        ({"cap": True}, "cap_per_ward_day"),
        ({"available": -3}, "available"),
        ({"requests": [Request("W", -1)]}, "requests[0].units"),
        ({"requests": [Request("W", 1, step=0)]}, "requests[0].step"),
    ],
)
def test_bad_values_are_named(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {
        "requests": [Request("W", 1)],
        "already_drawn_today": {},
        "cap": 1,
        "priority_wards": (),
    }
    args.update(kwargs)
    with pytest.raises(RationingError) as caught:
        ration(**args)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_unknown_wards_are_named() -> None:
    assert check_wards("priority_wards", ["ICU", "MED1", "ICU"], {"ICU", "MED1"}) == [
        "ICU",
        "MED1",
    ]
    with pytest.raises(RationingError, match=r"priority_wards: 'XX' is not a ward"):
        check_wards("priority_wards", ["ICU", "XX"], {"ICU", "MED1"})


WARDS = ("A", "B", "C", "D")
requests_st = st.lists(
    st.builds(
        Request,
        ward=st.sampled_from(WARDS),
        units=st.integers(0, 400),
        step=st.sampled_from((1, 1, 10, 100)),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    requests=requests_st,
    drawn=st.dictionaries(st.sampled_from(WARDS), st.integers(0, 300), max_size=4),
    cap=st.integers(0, 300),
    priority=st.sets(st.sampled_from(WARDS), max_size=2),
    available=st.none() | st.integers(0, 1000),
)
def test_the_rule_holds_for_any_requests(
    requests: list[Request],
    drawn: dict[str, int],
    cap: int,
    priority: set[str],
    available: int | None,
) -> None:
    grants = ration(requests, drawn, cap, priority, available)
    assert len(grants) == len(requests)
    per_ward: dict[str, int] = defaultdict(int)
    for r, g in zip(requests, grants, strict=True):
        assert g.ward == r.ward and g.asked == r.units
        assert 0 <= g.granted <= r.units  # never more than asked
        assert g.granted % r.step == 0  # whole steps
        assert g.granted + g.capped + g.short == r.units
        assert g.capped >= 0 and g.short >= 0
        per_ward[r.ward] += g.granted
    for ward, total in per_ward.items():
        if ward not in priority and total:
            # never over the cap for a non-priority ward, counting what it drew today
            assert drawn.get(ward, 0) + total <= cap
    if available is not None:
        assert sum(g.granted for g in grants) <= available  # never over the stock
    else:
        for r, g in zip(requests, grants, strict=True):
            if r.ward in priority:
                assert g.granted == r.units - r.units % r.step  # not capped
    # with single units, a priority ward is cut by the stock only when nothing is left
    # for the wards served after it
    if available is not None and all(r.step == 1 for r in requests):
        cut_priority = any(g.short for g in grants if g.priority)
        if cut_priority:
            assert all(g.granted == 0 for g in grants if not g.priority)
