"""Cabinet counter arithmetic, with values only: wrap-around, a counter that went
backwards, and the split of a movement the pocket cannot cover."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.cabinets.counter_rules import (
    COUNTER_BACKWARDS,
    COUNTER_WRAP,
    CounterStep,
    read_count,
    read_counter,
    split_shortfall,
    wrapped_growth,
)

uint32 = st.integers(min_value=0, max_value=COUNTER_WRAP - 1)


def test_a_counter_never_booked_is_counted_on_from_its_value() -> None:
    assert read_counter(None, 1234).step is CounterStep.FIRST_SEEN


def test_an_unchanged_counter_books_nothing() -> None:
    reading = read_counter(77, 77)
    assert (reading.step, reading.delta) == (CounterStep.UNCHANGED, 0)


def test_growth_is_the_difference() -> None:
    reading = read_counter(100, 103)
    assert (reading.step, reading.delta) == (CounterStep.GREW, 3)


def test_a_wrap_at_2_to_the_32_books_the_doses_across_it() -> None:
    reading = read_counter(COUNTER_WRAP - 2, 3)  # ..., 2^32-1, 0, 1, 2, 3
    assert (reading.step, reading.delta) == (CounterStep.GREW, 5)


def test_a_counter_that_went_back_books_nothing() -> None:
    reading = read_counter(500, 499)
    assert (reading.step, reading.delta) == (CounterStep.BACKWARDS, 0)
    assert read_counter(500, 0).step is CounterStep.BACKWARDS  # a cabinet reset


def test_half_the_range_is_the_line_between_growth_and_going_back() -> None:
    assert read_counter(0, COUNTER_BACKWARDS - 1).step is CounterStep.GREW
    assert read_counter(0, COUNTER_BACKWARDS).step is CounterStep.BACKWARDS


@given(mark=uint32, grown=st.integers(min_value=1, max_value=COUNTER_BACKWARDS - 1))
def test_any_growth_below_half_the_range_is_read_back_exactly(mark: int, grown: int) -> None:
    now = (mark + grown) % COUNTER_WRAP
    reading = read_counter(mark, now)
    assert (reading.step, reading.delta) == (CounterStep.GREW, grown)
    assert wrapped_growth(mark, now) == grown


@given(mark=uint32, now=uint32)
def test_a_reading_is_one_of_four_and_growth_stays_in_range(mark: int, now: int) -> None:
    reading = read_counter(mark, now)
    if now == mark:
        assert reading.step is CounterStep.UNCHANGED
    elif reading.step is CounterStep.GREW:
        assert 0 < reading.delta < COUNTER_BACKWARDS
    else:
        assert reading.step is CounterStep.BACKWARDS


def test_counted_counters_start_together_when_either_was_never_booked() -> None:
    assert read_count(None, 5, 3, 3).step is CounterStep.FIRST_SEEN
    assert read_count(5, 5, None, 3).step is CounterStep.FIRST_SEEN


def test_a_count_moves_either_counter_across_a_wrap() -> None:
    assert read_count(4, 4, 9, 9).step is CounterStep.UNCHANGED
    reading = read_count(COUNTER_WRAP - 1, 2, 9, 10)
    assert (reading.step, reading.up, reading.down) == (CounterStep.GREW, 3, 1)


def test_a_shortfall_books_what_the_pocket_holds_and_the_rest_is_short() -> None:
    split = split_shortfall(reported=7, available=4)
    assert (split.booked, split.short) == (4, 3)


def test_an_empty_pocket_books_nothing_and_all_is_short() -> None:
    split = split_shortfall(reported=5, available=0)
    assert (split.booked, split.short) == (0, 5)


@given(reported=st.integers(min_value=1, max_value=10_000), available=st.integers(0, 10_000))
def test_a_shortfall_split_adds_up_and_never_books_more_than_either(
    reported: int, available: int
) -> None:
    split = split_shortfall(reported, available)
    assert split.booked + split.short == reported
    assert 0 <= split.booked <= min(reported, available)
    assert split.short >= 0
