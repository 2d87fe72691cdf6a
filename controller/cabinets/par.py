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

from collections.abc import Iterable, Sequence
from datetime import date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, case, func, or_, select

from controller.cabinets.par_rules import (
    ParError,
    ParSuggestion,
    PocketHistory,
    PocketPlan,
    check_par_arguments,
    check_window,
    suggest_levels,
)
from controller.ledger.schema import locations, lots, movements, products

if TYPE_CHECKING:
    from controller.config import Site

# The values of the calculation are imported from here by the CLI and the ward rounds.
__all__ = [
    "ParError",
    "ParSuggestion",
    "PocketHistory",
    "PocketPlan",
    "daily_consumption",
    "site_pockets",
    "suggest_par",
]


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ParError(f"tz: unknown time zone {tz!r}") from exc


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
    check_window(days, until)
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
    check_par_arguments(
        pockets,
        days=days,
        until=until,
        lead_time_days=lead_time_days,
        days_of_supply=days_of_supply,
        service_z=service_z,
    )
    zone = _zone(tz)
    history = daily_consumption(
        engine, [(p.location, p.gtin) for p in pockets], days=days, until=until, tz=zone
    )
    names = _names(engine, sorted({p.gtin for p in pockets}))
    return [
        suggest_levels(
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
