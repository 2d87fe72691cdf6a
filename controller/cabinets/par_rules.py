"""Par-level arithmetic without I/O: from a pocket's daily net use to its min and max.

`controller.cabinets.par` reads the daily use from the ledger and hands it here; every
formula and the checks of its arguments live in this module.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from controller.cabinets.pockets import pocket_location

# Rounding noise such as 2.0000000000000004 must not push a level up by a whole unit.
_EPSILON_PLACES = 9


class ParError(ValueError):
    """A bad argument to the par-level calculation, named with its value."""


@dataclass(frozen=True)
class PocketPlan:
    """A pocket as it is configured now."""

    cabinet: str
    pocket: int
    gtin: str
    current_min: int
    current_max: int
    capacity: int | None = None
    # the ledger location when it is not a cabinet pocket (a ward's drug room shelf)
    at: str | None = None

    @property
    def location(self) -> str:
        return self.at or pocket_location(self.cabinet, self.pocket)


@dataclass(frozen=True)
class PocketHistory:
    """Net units used per day at one pocket, oldest day first.

    `first_day` is the first day the ledger saw the product move at the pocket at all
    (a refill counts), or None if it never did: days before it are not history.
    """

    location: str
    gtin: str
    until: date
    daily: tuple[int, ...]
    first_day: date | None

    @property
    def days_seen(self) -> int:
        """Days of the window on which the pocket held this product (the history)."""
        if self.first_day is None or self.first_day > self.until:
            return 0
        return min(len(self.daily), (self.until - self.first_day).days + 1)

    @property
    def seen(self) -> tuple[int, ...]:
        """The daily values of the days the pocket existed; days without use are 0."""
        days = self.days_seen
        return self.daily[len(self.daily) - days :] if days else ()


@dataclass(frozen=True)
class ParSuggestion:
    cabinet: str
    pocket: int
    location: str
    gtin: str
    name: str
    days: int  # the window asked for
    days_seen: int  # days of it with history at this pocket
    total: int  # net units used over the days seen
    mean_daily: float
    stdev_daily: float
    peak_daily: int
    current_min: int
    current_max: int
    suggested_min: int
    suggested_max: int
    capacity: int | None
    cover_days_current: float | None  # days the current max lasts at the mean
    cover_days_suggested: float | None
    note: str

    @property
    def changed(self) -> bool:
        return (self.suggested_min, self.suggested_max) != (self.current_min, self.current_max)


def check_window(days: int, until: date) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ParError(f"days: must be a whole number of at least 1, got {days!r}")
    if isinstance(until, datetime) or not isinstance(until, date):
        raise ParError(f"until: must be a date (YYYY-MM-DD), got {until!r}")


def _ceil(value: float) -> int:
    return math.ceil(round(value, _EPSILON_PLACES))


def _check_plan(plan: PocketPlan) -> None:
    where = f"pocket {plan.location}"
    if plan.current_min < 0:
        raise ParError(f"{where}: current_min must be at least 0, got {plan.current_min}")
    if plan.current_max <= plan.current_min:
        raise ParError(
            f"{where}: current_max must be above current_min {plan.current_min}, "
            f"got {plan.current_max}"
        )
    if plan.capacity is not None and plan.capacity < 1:
        raise ParError(f"{where}: capacity must be at least 1, got {plan.capacity}")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ParError(f"{name}: must be above 0, got {value!r}")
    if math.isinf(value):
        raise ParError(f"{name}: must be finite, got {value!r}")


def check_par_arguments(
    pockets: list[PocketPlan],
    *,
    days: int,
    until: date,
    lead_time_days: float,
    days_of_supply: float,
    service_z: float,
) -> None:
    """Refuses a bad argument of a par-level calculation by name and value."""
    check_window(days, until)
    _positive("lead_time_days", lead_time_days)
    _positive("days_of_supply", days_of_supply)
    if (
        isinstance(service_z, bool)
        or not isinstance(service_z, int | float)
        or not 0 <= service_z < math.inf
    ):
        raise ParError(f"service_z: must be 0 or more, got {service_z!r}")
    for plan in pockets:
        _check_plan(plan)


def suggest_levels(
    plan: PocketPlan,
    history: PocketHistory,
    *,
    name: str,
    days: int,
    lead_time_days: float,
    days_of_supply: float,
    service_z: float,
) -> ParSuggestion:
    """The suggestion for one pocket (the formulas are `suggest_par`'s)."""
    seen = history.seen
    total = sum(seen)
    common: dict[str, Any] = {
        "cabinet": plan.cabinet,
        "pocket": plan.pocket,
        "location": plan.location,
        "gtin": plan.gtin,
        "name": name,
        "days": days,
        "days_seen": len(seen),
        "total": total,
        "current_min": plan.current_min,
        "current_max": plan.current_max,
        "capacity": plan.capacity,
    }
    if total <= 0:
        return ParSuggestion(
            **common,
            mean_daily=0.0,
            stdev_daily=0.0,
            peak_daily=max(seen, default=0),
            suggested_min=plan.current_min,
            suggested_max=plan.current_max,
            cover_days_current=None,
            cover_days_suggested=None,
            note=f"no consumption in {days} days: levels kept",
        )
    mean = total / len(seen)
    stdev = statistics.stdev(seen) if len(seen) > 1 else 0.0
    low = _ceil(mean * lead_time_days + service_z * stdev * math.sqrt(lead_time_days))
    high = max(low + 1, _ceil(mean * (lead_time_days + days_of_supply)))
    notes: list[str] = []
    if plan.capacity is not None and high > plan.capacity:
        notes.append(f"max capped at capacity {plan.capacity} (wanted {high})")
        high = plan.capacity
        if low >= high:
            notes.append(f"min lowered to {high - 1} (wanted {low})")
            low = high - 1
    if len(seen) < days:
        notes.append(f"only {len(seen)} of {days} days of history")
    return ParSuggestion(
        **common,
        mean_daily=mean,
        stdev_daily=stdev,
        peak_daily=max(seen),
        suggested_min=low,
        suggested_max=high,
        cover_days_current=plan.current_max / mean,
        cover_days_suggested=high / mean,
        note="; ".join(notes),
    )
