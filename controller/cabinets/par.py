"""Par levels (min/max) for cabinet pockets from what the ward really used.

A pocket's min is its reorder point: the refill is asked for when the count falls
below it, and the stock left must last until the refill arrives (the lead time), with
safety stock for the busier days. Its max is what a refill brings it up to: the lead
time plus some days of supply. Both follow from the daily net consumption the ledger
booked at the pocket: `consume` movements out of it, less `return` movements back in.
Waste at the pocket is not demand and is left out.

Days are calendar days in the site's time zone: a dose taken at 00:30 local time
belongs to the new day. Everything here only reads the ledger.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, case, func, or_, select

from controller.cabinets.poller import pocket_location
from controller.ledger.schema import locations, lots, movements, products

if TYPE_CHECKING:
    from controller.config import Site

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


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ParError(f"tz: unknown time zone {tz!r}") from exc


def _check_window(days: int, until: date) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ParError(f"days: must be a whole number of at least 1, got {days!r}")
    if isinstance(until, datetime) or not isinstance(until, date):
        raise ParError(f"until: must be a date (YYYY-MM-DD), got {until!r}")


def daily_consumption(
    engine: Engine,
    pockets: Iterable[tuple[str, str]] | None = None,
    *,
    days: int,
    until: date,
    tz: str | tzinfo = "UTC",
) -> dict[tuple[str, str], PocketHistory]:
    """Net units used per day at pocket locations over the `days` days ending with `until`.

    `pockets` are (location code, GTIN) pairs; None means every `pocket` location and
    every product that moved there. A pair asked for that has no movements still gets
    a history of zeros without a first day. A day is net: a return books against the
    day it was put back, so a day can be negative.
    """
    _check_window(days, until)
    zone = _zone(tz)
    first = until - timedelta(days=days - 1)
    start = datetime.combine(first, time(0), tzinfo=zone)
    end = datetime.combine(until + timedelta(days=1), time(0), tzinfo=zone)
    wanted = None if pockets is None else set(pockets)
    codes = None if wanted is None else sorted({code for code, _ in wanted})

    with engine.connect() as conn:
        query = select(locations.c.id, locations.c.code)
        if codes is None:
            query = query.where(locations.c.kind == "pocket")
        else:
            query = query.where(locations.c.code.in_(codes))
        code_of: dict[int, str] = {int(i): c for i, c in conn.execute(query)}
        ids = list(code_of)
        consumed = select(locations.c.id).where(locations.c.kind == "consumed")
        pocket_id = case(
            (movements.c.kind == "consume", movements.c.from_location_id),
            else_=movements.c.to_location_id,
        )
        signed = case(
            (movements.c.kind == "return", -movements.c.quantity), else_=movements.c.quantity
        )
        used = conn.execute(
            select(pocket_id, products.c.gtin, movements.c.ts, signed)
            .join(lots, lots.c.id == movements.c.lot_id)
            .join(products, products.c.id == lots.c.product_id)
            .where(
                or_(
                    and_(
                        movements.c.kind == "consume",
                        movements.c.from_location_id.in_(ids),
                        movements.c.to_location_id.in_(consumed),
                    ),
                    and_(
                        movements.c.kind == "return",
                        movements.c.to_location_id.in_(ids),
                        movements.c.from_location_id.in_(consumed),
                    ),
                ),
                movements.c.ts >= start,
                movements.c.ts < end,
            )
        ).all()
        firsts: dict[tuple[str, str], datetime] = {}
        for side in (movements.c.from_location_id, movements.c.to_location_id):
            for loc_id, gtin, ts in conn.execute(
                select(side, products.c.gtin, func.min(movements.c.ts))
                .join(lots, lots.c.id == movements.c.lot_id)
                .join(products, products.c.id == lots.c.product_id)
                .where(side.in_(ids))
                .group_by(side, products.c.gtin)
            ):
                key = (code_of[int(loc_id)], str(gtin))
                if key not in firsts or ts < firsts[key]:
                    firsts[key] = ts

    daily: dict[tuple[str, str], list[int]] = {}
    for key in wanted if wanted is not None else firsts:
        daily[key] = [0] * days
    for loc_id, gtin, ts, quantity in used:
        key = (code_of[int(loc_id)], str(gtin))
        if wanted is not None and key not in wanted:
            continue
        index = (ts.astimezone(zone).date() - first).days
        daily.setdefault(key, [0] * days)[index] += int(quantity)
    return {
        key: PocketHistory(
            location=key[0],
            gtin=key[1],
            until=until,
            daily=tuple(values),
            first_day=firsts[key].astimezone(zone).date() if key in firsts else None,
        )
        for key, values in daily.items()
    }


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


def _names(engine: Engine, gtins: Sequence[str]) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(products.c.gtin, products.c.name).where(products.c.gtin.in_(gtins))
        )
        return {str(g): str(n) for g, n in rows}


def suggest_par(
    engine: Engine,
    pockets: list[PocketPlan],
    *,
    days: int = 28,
    until: date,
    lead_time_days: float = 1.0,
    days_of_supply: float = 3.0,
    service_z: float = 1.65,
    tz: str | tzinfo = "UTC",
) -> list[ParSuggestion]:
    """Suggested min and max per pocket from its daily net use over the window.

    min = ceil(mean * L + z * sd * sqrt(L)): what the lead time L uses on average, plus
    safety stock for z standard deviations of daily use (1.65: about 95 % of lead
    times without running out, for roughly normal demand).
    max = max(min + 1, ceil(mean * (L + S))): a refill covers the lead time and S days
    of supply; it is capped at the pocket's capacity when that is known.

    mean and sd (sample standard deviation) are over the days the pocket held the
    product within the window, zeros included. A pocket with no net use keeps its
    levels: nothing says what they should be.
    """
    _check_window(days, until)
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
    zone = _zone(tz)
    history = daily_consumption(
        engine, [(p.location, p.gtin) for p in pockets], days=days, until=until, tz=zone
    )
    names = _names(engine, sorted({p.gtin for p in pockets}))
    return [
        _suggest(
            plan,
            history[(plan.location, plan.gtin)],
            name=names.get(plan.gtin, plan.gtin),
            days=days,
            lead_time_days=lead_time_days,
            days_of_supply=days_of_supply,
            service_z=service_z,
        )
        for plan in pockets
    ]


def _suggest(
    plan: PocketPlan,
    history: PocketHistory,
    *,
    name: str,
    days: int,
    lead_time_days: float,
    days_of_supply: float,
    service_z: float,
) -> ParSuggestion:
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


def site_pockets(site: Site, cabinet: str | None = None) -> list[PocketPlan]:
    """The pockets of a site file (optionally of one cabinet), with their levels now."""
    return [
        PocketPlan(
            cabinet=cab.name,
            pocket=p.number,
            gtin=p.gtin,
            current_min=p.min,
            current_max=p.max,
            capacity=getattr(p, "capacity", None),
        )
        for cab in site.cabinets
        if cabinet is None or cab.name == cabinet
        for p in cab.pockets
    ]
