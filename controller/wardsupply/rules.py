"""Ward supply's decisions as pure functions: what a pharmacist must look at, what is a
usual quantity, which delivery a line goes with, what a top-up round orders, and why a
line missed its delivery. They take values and return values; the service does the I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from controller.wardsupply.model import Flag

URGENT_RUN = "URGENT"


@dataclass(frozen=True)
class ProductFacts:
    """What review needs to know of a product."""

    gtin: str
    controlled: bool
    licence: bool
    stocked: bool


def usual_limit(
    history_packs: Sequence[int], par_max: int | None, *, factor: float, floor_packs: int
) -> int:
    """The most packs of a product a ward usually asks for in one line.

    The basis is the larger of the drug room's max level (what a full shelf holds) and
    the mean packs per line the ward asked for over the window; the limit is `factor`
    times that, and never below `floor_packs`. A line above it is flagged for a
    pharmacist, who sees the limit beside the line.
    """
    mean = sum(history_packs) / len(history_packs) if history_packs else 0.0
    basis = max(float(par_max or 0), mean)
    return max(floor_packs, math.ceil(factor * basis - 1e-9))


def review_flags(
    product: ProductFacts, packs: int, *, on_list: bool, usual: int
) -> tuple[Flag, ...]:
    """Why a line needs a pharmacist's own decision; () for a routine line."""
    flags: list[Flag] = []
    if product.controlled:
        flags.append(Flag.CONTROLLED)
    if product.licence:
        flags.append(Flag.LICENCE)
    if not on_list:
        flags.append(Flag.NOT_ON_LIST)
    if packs > usual:
        flags.append(Flag.UNUSUAL_QUANTITY)
    return tuple(flags)


@dataclass(frozen=True)
class RunSlot:
    code: str
    cutoff: time
    departs: time


@dataclass(frozen=True)
class Planned:
    """The delivery a line goes with: run code, its local date, when it leaves and when
    it must be on the ward at the latest (UTC)."""

    run: str
    run_date: date
    departs_at: datetime
    due_at: datetime


def next_run(
    approved_at: datetime,
    runs: Sequence[RunSlot],
    tz: tzinfo,
    *,
    grace: timedelta,
    allowed: Sequence[str] = (),
) -> Planned:
    """The first run (of `allowed`, or any) whose cutoff is at or after `approved_at`,
    looking up to a week ahead. Due = departure + grace (the drive and the unpacking)."""
    if approved_at.tzinfo is None:
        raise ValueError(f"approved_at: {approved_at!r} must carry a time zone")
    slots = [r for r in runs if not allowed or r.code in allowed]
    if not slots:
        raise ValueError(f"runs: none of {list(allowed)} is a delivery run")
    local = approved_at.astimezone(tz)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        for slot in sorted(slots, key=lambda s: s.cutoff):
            cutoff = datetime.combine(day, slot.cutoff, tzinfo=tz)
            if cutoff >= local:
                departs = datetime.combine(day, slot.departs, tzinfo=tz).astimezone(UTC)
                return Planned(slot.code, day, departs, departs + grace)
    raise AssertionError("a run within a week always exists")


def urgent_plan(approved_at: datetime, tz: tzinfo, due_minutes: int) -> Planned:
    """An urgent line leaves at once on its own delivery."""
    at = approved_at.astimezone(UTC)
    return Planned(
        URGENT_RUN, approved_at.astimezone(tz).date(), at, at + timedelta(minutes=due_minutes)
    )


@dataclass(frozen=True)
class ShelfCount:
    gtin: str
    counted_packs: int
    min_packs: int
    max_packs: int


def top_up(counts: Sequence[ShelfCount]) -> list[tuple[str, int]]:
    """What a top-up round orders: every product at or below its min is brought up to
    its max (in packs); a product above its min is left alone."""
    out = []
    for c in counts:
        if c.counted_packs < 0:
            raise ValueError(f"count of {c.gtin}: {c.counted_packs} is negative")
        if c.counted_packs <= c.min_packs and c.max_packs > c.counted_packs:
            out.append((c.gtin, c.max_packs - c.counted_packs))
    return out


# Why a line was not delivered on time and in full (the reliability report's causes).
CAUSE_SHORT = "short in store"
CAUSE_LATE = "late"
CAUSE_DEVIATION = "receipt deviation"
CAUSE_SUPPLIER = "waiting for supplier"
CAUSE_NOT_DELIVERED = "not yet delivered"
CAUSES = (CAUSE_SHORT, CAUSE_LATE, CAUSE_DEVIATION, CAUSE_SUPPLIER, CAUSE_NOT_DELIVERED)


def line_outcome(
    *,
    wanted_units: int,
    delivered_units: int,
    due_at: datetime | None,
    received_at: datetime | None,
    deviated: bool,
    short: bool,
    ordered_from_supplier: bool,
    now: datetime,
) -> str | None:
    """None when the line came on time and in full, else its cause (the first that
    applies, in the order a technician would look for it)."""
    on_time = received_at is not None and (due_at is None or received_at <= due_at)
    if delivered_units >= wanted_units and on_time:
        return None
    if ordered_from_supplier and delivered_units < wanted_units:
        return CAUSE_SUPPLIER
    if short:
        return CAUSE_SHORT
    if deviated:
        return CAUSE_DEVIATION
    if received_at is None:
        return CAUSE_LATE if due_at is not None and now > due_at else CAUSE_NOT_DELIVERED
    return CAUSE_LATE if not on_time else CAUSE_SHORT
