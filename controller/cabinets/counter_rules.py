"""Cabinet counter arithmetic without I/O: what a counter's new value means.

The cabinet's counters are uint32 that only grow and wrap at 2^32
(docs/cabinet-register-map.md). The poller books the growth since the value the ledger
last booked (its mark); these functions say what that growth is, and how a growth is
split when the pocket holds less in the ledger than the cabinet reports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

COUNTER_WRAP = 2**32
# A counter never goes back, and no real rate moves one by half its range between two
# polls: a "growth" that large is a counter that went backwards (a cabinet whose memory
# was reset, or that reports nonsense).
COUNTER_BACKWARDS = COUNTER_WRAP // 2
# Counters booked per pocket: (register field, ledger counter name).
POCKET_COUNTERS = (
    ("withdrawals_total", "withdrawals"),
    ("waste_total", "waste"),
    ("returns_total", "returns"),
    ("counted_up_total", "counted_up"),
    ("counted_down_total", "counted_down"),
)


def wrapped_growth(mark: int, now: int) -> int:
    """How far a counter moved from `mark` to `now`, across a wrap at 2^32."""
    return (now - mark) % COUNTER_WRAP


class CounterStep(enum.Enum):
    FIRST_SEEN = "first_seen"  # nothing booked yet: count on from this value
    UNCHANGED = "unchanged"
    BACKWARDS = "backwards"  # book nothing, count on from this value, raise it
    GREW = "grew"  # book `delta`


@dataclass(frozen=True)
class CounterReading:
    step: CounterStep
    delta: int = 0


def read_counter(mark: int | None, now: int) -> CounterReading:
    """What a counter's value `now` means against its booked `mark` (None: never
    booked)."""
    if mark is None:
        return CounterReading(CounterStep.FIRST_SEEN)
    delta = wrapped_growth(mark, now)
    if delta == 0:
        return CounterReading(CounterStep.UNCHANGED)
    if delta >= COUNTER_BACKWARDS:
        return CounterReading(CounterStep.BACKWARDS)
    return CounterReading(CounterStep.GREW, delta)


@dataclass(frozen=True)
class ShortfallSplit:
    """A reported movement split into what the ledger can book and what it cannot."""

    booked: int
    short: int


def split_shortfall(reported: int, available: int) -> ShortfallSplit:
    """The cabinet reports `reported` doses out of a pocket whose ledger holds only
    `available`: what is there is booked, the rest is a discrepancy."""
    booked = max(0, min(reported, available))
    return ShortfallSplit(booked, reported - booked)


@dataclass(frozen=True)
class CountReading:
    """The counted-up and counted-down counters of a pocket read together: a count
    keyed in at the cabinet moves one or both."""

    step: CounterStep  # FIRST_SEEN (either never booked), UNCHANGED or GREW
    up: int = 0
    down: int = 0


def read_count(
    up_mark: int | None, up_now: int, down_mark: int | None, down_now: int
) -> CountReading:
    """What the counted counters say against their booked marks. Both move in one
    transaction, so they are started together when either was never booked."""
    if up_mark is None or down_mark is None:
        return CountReading(CounterStep.FIRST_SEEN)
    up, down = wrapped_growth(up_mark, up_now), wrapped_growth(down_mark, down_now)
    if not up and not down:
        return CountReading(CounterStep.UNCHANGED)
    return CountReading(CounterStep.GREW, up, down)
