"""Packing decisions with values only: the reject allowance, the canister top-up and
its lot, whether a refill reached the machine, and the consumed and waste split of a
job that ended or that the machine lost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from controller.packing.rules import (
    CountersBefore,
    TopUpKind,
    choose_top_up,
    counters_explain,
    dispensed_by_gtin,
    fill_arrived,
    lost_job_deltas,
    lost_job_waste,
    split_job,
    top_up_wanted,
    with_reject_allowance,
)

A, B = "07046261234561", "07046269876543"
EARLY, LATE = date(2027, 3, 1), date(2027, 9, 1)


@dataclass(frozen=True)
class Canister:
    gtin: str
    count: int = 0
    dispensed_total: int = 0
    refilled_total: int = 0


def test_the_reject_allowance_is_rounded_up_per_product() -> None:
    assert with_reject_allowance({A: 20, B: 1}, 0.05) == {A: 21, B: 2}
    assert with_reject_allowance({A: 20}, 0.0) == {A: 20}


def test_dispensed_totals_add_up_per_product() -> None:
    canisters = [Canister(A, dispensed_total=5), Canister(B, dispensed_total=2)]
    assert dispensed_by_gtin([*canisters, Canister(A, dispensed_total=7)]) == {A: 12, B: 2}


def test_a_canister_holding_enough_is_not_topped_up() -> None:
    assert not top_up_wanted(free=30, units=30)
    assert top_up_wanted(free=29, units=30)


def test_an_empty_canister_takes_the_first_expiring_lot_up_to_its_capacity() -> None:
    top_up = choose_top_up(
        capacity=100,
        count=0,
        current_lot=None,
        store_lots=[("EARLY", EARLY, 500), ("LATE", LATE, 500)],
    )
    assert (top_up.kind, top_up.batch, top_up.expiry, top_up.quantity) == (
        TopUpKind.FILL,
        "EARLY",
        EARLY,
        100,
    )


def test_a_top_up_takes_no_more_than_the_store_has() -> None:
    top_up = choose_top_up(capacity=100, count=0, current_lot=None, store_lots=[("L", LATE, 40)])
    assert (top_up.kind, top_up.quantity) == (TopUpKind.FILL, 40)


def test_a_part_full_canister_takes_its_own_lot_into_the_room_left() -> None:
    top_up = choose_top_up(
        capacity=100,
        count=30,
        current_lot="LATE",
        store_lots=[("EARLY", EARLY, 500), ("LATE", LATE, 500)],
    )
    assert (top_up.kind, top_up.batch, top_up.quantity) == (TopUpKind.FILL, "LATE", 70)


def test_a_part_full_canister_whose_lot_is_gone_runs_dry_first() -> None:
    top_up = choose_top_up(
        capacity=100, count=30, current_lot="OLD", store_lots=[("EARLY", EARLY, 500)]
    )
    assert (top_up.kind, top_up.batch, top_up.quantity) == (TopUpKind.RUN_DRY, "OLD", 0)


def test_a_full_canister_runs_dry_first() -> None:
    top_up = choose_top_up(capacity=100, count=100, current_lot="L", store_lots=[("L", LATE, 9)])
    assert top_up.kind is TopUpKind.RUN_DRY


def test_an_empty_canister_and_an_empty_store_is_no_stock() -> None:
    top_up = choose_top_up(capacity=100, count=0, current_lot=None, store_lots=[])
    assert top_up.kind is TopUpKind.NO_STOCK


@given(
    capacity=st.integers(1, 500),
    count=st.integers(0, 500),
    lots=st.lists(st.tuples(st.sampled_from(["L1", "L2", "L3"]), st.integers(1, 900)), max_size=3),
    current=st.sampled_from(["L1", "L2", "L3"]),
)
def test_a_fill_never_overfills_nor_mixes_lots(
    capacity: int, count: int, lots: list[tuple[str, int]], current: str
) -> None:
    store = [(batch, LATE, quantity) for batch, quantity in lots]
    top_up = choose_top_up(
        capacity=capacity, count=count, current_lot=current if count else None, store_lots=store
    )
    if top_up.kind is TopUpKind.FILL:
        assert count + top_up.quantity <= capacity
        assert top_up.quantity > 0 or capacity <= count
        if count:
            assert top_up.batch == current
        else:
            assert top_up.batch == store[0][0]


def test_a_refill_arrived_by_the_refilled_total_where_it_is_reported() -> None:
    before = CountersBefore(refilled=200, count=None, dispensed=None)
    now = Canister(A, count=0, refilled_total=250)
    assert fill_arrived(quantity=50, before=before, now=now, reports_refilled_total=True)
    assert not fill_arrived(quantity=51, before=before, now=now, reports_refilled_total=True)


def test_a_refill_arrived_by_count_plus_dispensed_without_a_refilled_total() -> None:
    before = CountersBefore(refilled=0, count=10, dispensed=100)
    # 50 poured in, 8 dispensed since: the count is 10 + 50 - 8
    now = Canister(A, count=52, dispensed_total=108)
    assert fill_arrived(quantity=50, before=before, now=now, reports_refilled_total=False)
    missing = Canister(A, count=2, dispensed_total=108)
    assert not fill_arrived(quantity=50, before=before, now=missing, reports_refilled_total=False)


def test_a_refill_without_counters_before_cannot_be_told() -> None:
    before = CountersBefore(refilled=0, count=None, dispensed=None)
    now = Canister(A, count=60)
    assert fill_arrived(quantity=50, before=before, now=now, reports_refilled_total=False) is None


def test_good_pouches_are_consumed_and_the_rest_dispensed_is_waste() -> None:
    split = split_job([A, B], {A: 18, B: 6}, before={A: 100, B: 40}, after={A: 120, B: 46})
    assert (split[A].dispensed, split[A].consumed, split[A].wasted) == (20, 18, 2)
    assert (split[B].dispensed, split[B].consumed, split[B].wasted) == (6, 6, 0)
    assert not split[A].short and not split[B].short


def test_an_aborted_job_with_no_good_pouch_is_all_waste() -> None:
    split = split_job([A], {}, before={A: 100}, after={A: 104})
    assert (split[A].consumed, split[A].wasted) == (0, 4)


def test_a_counter_that_reports_less_than_the_good_pouches_hold_is_raised_to_them() -> None:
    split = split_job([A], {A: 10}, before={A: 100}, after={A: 107})
    assert split[A].short
    assert (split[A].reported, split[A].dispensed, split[A].wasted) == (7, 10, 0)


@given(
    before=st.integers(0, 10_000),
    dispensed=st.integers(0, 500),
    good=st.integers(0, 500),
)
def test_a_split_never_books_negative_waste_nor_more_than_the_machine_did(
    before: int, dispensed: int, good: int
) -> None:
    split = split_job([A], {A: good}, {A: before}, {A: before + dispensed})[A]
    assert split.consumed == good
    assert split.wasted >= 0
    assert split.dispensed == max(dispensed, good)
    assert split.short == (dispensed < good)


def test_a_lost_job_wastes_what_left_the_canisters() -> None:
    deltas = lost_job_deltas([A, B], baseline={A: 100, B: 50}, now={A: 112, B: 50})
    assert deltas == {A: 12, B: 0}
    assert lost_job_waste(deltas, baseline_known=True, unexplained=[]) == {A: 12}


def test_a_lost_job_whose_counters_cannot_say_books_nothing() -> None:
    assert lost_job_waste({A: 12}, baseline_known=False, unexplained=[]) is None
    assert lost_job_waste({A: 12}, baseline_known=True, unexplained=[A]) is None
    restarted = lost_job_deltas([A], baseline={A: 100}, now={A: 3})
    assert lost_job_waste(restarted, baseline_known=True, unexplained=[]) is None


def test_the_counters_explain_a_canister_when_held_is_left_plus_dispensed() -> None:
    assert counters_explain(held=50, count_now=38, dispensed=12)
    assert not counters_explain(held=50, count_now=38, dispensed=0)
