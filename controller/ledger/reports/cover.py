"""Days of cover of usable stock at recent consumption, judged against the one-month
obligation; the basis the order proposal shares."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Literal

from sqlalchemy import Connection, case, func, select

from controller.duty_rules.crisis import in_crisis
from controller.duty_rules.exemptions import obligation_for
from controller.ledger.duty_state import load_periods, load_targets
from controller.ledger.reports.common import (
    LONG_WINDOW_DAYS,
    SHORT_WINDOW_DAYS,
    _load_products,
    _load_stock,
    _net_consumption_filter,
    _Product,
    _ratio,
    _signed_quantity,
    _usable,
)
from controller.ledger.schema import (
    duty_scope,
    exemptions,
    external_use,
    locations,
    lots,
    movements,
    products,
)
from controller.ledger.source import Source, engine_of, require_aware


@dataclass(frozen=True)
class Exemption:
    """A documented exemption from the one-month obligation."""

    reason: str
    risk_assessment: str
    review_date: date
    decided_by: str
    review_overdue: bool  # the review date has passed: the exemption needs a new decision
    measures: str = ""  # the measures taken against the risk
    level_days: int | None = None  # None: out of the figures; N: judged against N days
    status: str = "active"  # only active exemptions are reported (a revoked one is none)


@dataclass(frozen=True)
class CoverRow:
    gtin: str
    article: int
    name: str
    category: str
    unit: str
    on_hand: int  # every internal location, any lot status
    usable: int  # released, not expired, not in quarantine: what cover is computed on
    consumed_30d: int
    consumed_90d: int
    mean_daily_30d: float
    mean_daily_90d: float
    cover_days_30d: float | None  # None: no consumption in the window
    cover_days_90d: float | None
    basis: Literal["90d", "30d"]  # the window the obligation is judged on
    cover_days: float | None  # on the basis window
    meets_obligation: bool | None  # None: no consumption, nothing to judge
    # "below month (crisis)": short of the obligation while a crisis period covers it
    status: Literal["ok", "short", "no consumption", "below month (crisis)"]
    exempt: bool
    exemption: Exemption | None
    # net use of the last 30 days by where it left the stock: dose pouches (canisters),
    # cabinets (pockets), drug rooms (ward stock), other (the store itself)
    use_30d_by_channel: dict[str, int] = dataclasses.field(default_factory=dict)
    # usable split by where it lies: preparedness locations, and every other location
    usable_rotating: int = 0
    usable_preparedness: int = 0
    # the preparedness list's levels (None: not on the list); below_floor compares
    # usable_preparedness with the floor (None: not on the list)
    preparedness_target: int | None = None
    preparedness_floor: int | None = None
    below_floor: bool | None = None
    in_crisis: bool = False  # a crisis period in force at `now` covers the product
    # "in", or why the product is out of the duty's scope (a scope reason, "durable")
    scope: str = "in"
    durability: str = "consumable"
    # the days the product is judged on: the obligation, an exemption's reduced level,
    # or None (out of scope, or exempt without a level: not assessed)
    level_days: int | None = None
    # units used by care the pharmacy does not supply (external_use), prorated into the
    # windows (a month's quantity spread evenly over its time), rounded to whole units
    external_30d: int = 0
    external_90d: int = 0
    # usable / (internal + external mean on the basis window); None: no use at all
    whole_cover_days: float | None = None


CHANNELS = {"canister": "pouches", "pocket": "cabinets", "drugroom": "drug rooms"}


def _use_by_channel(conn: Connection, now: datetime) -> dict[int, dict[str, int]]:
    """Net 30-day use per product and channel: a consumption counts where it left the
    stock (a return, where it came back)."""
    start = now - timedelta(days=SHORT_WINDOW_DAYS)
    where = case(
        (movements.c.kind == "return", movements.c.to_location_id),
        else_=movements.c.from_location_id,
    )
    rows = conn.execute(
        select(lots.c.product_id, locations.c.kind, func.sum(_signed_quantity()))
        .join(lots, lots.c.id == movements.c.lot_id)
        .join(locations, locations.c.id == where)
        .where(_net_consumption_filter(), movements.c.ts >= start, movements.c.ts < now)
        .group_by(lots.c.product_id, locations.c.kind)
    )
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for product_id, kind, units in rows:
        channel = CHANNELS.get(str(kind), "other")
        per = out[int(product_id)]
        per[channel] = per.get(channel, 0) + int(units or 0)
    return out


@dataclass(frozen=True)
class CoverReport:
    now: datetime
    obligation_days: int
    rows: tuple[CoverRow, ...]


@dataclass(frozen=True)
class _Cover:
    """Exact numbers behind one product's cover, before rounding."""

    product: _Product
    on_hand: int
    usable: int
    consumed_30d: int
    consumed_90d: int
    basis: Literal["90d", "30d"]
    usable_preparedness: int = 0

    @property
    def basis_units(self) -> int:
        return max(self.consumed_90d if self.basis == "90d" else self.consumed_30d, 0)

    @property
    def basis_days(self) -> int:
        return LONG_WINDOW_DAYS if self.basis == "90d" else SHORT_WINDOW_DAYS


def _covers(conn: Connection, now: datetime) -> list[_Cover]:
    """Stock and consumption of every active product, with the basis window chosen."""
    today = now.date()
    prods = _load_products(conn)
    stock = _load_stock(conn)
    short, long = _consumption_windows(conn, now)
    first = _first_movement(conn)
    on_hand: dict[int, int] = defaultdict(int)
    usable: dict[int, int] = defaultdict(int)
    prepared: dict[int, int] = defaultdict(int)
    for s in stock:
        on_hand[s.product_id] += s.on_hand
        usable[s.product_id] += _usable(s, today)
        if s.location_kind == "preparedness":
            prepared[s.product_id] += _usable(s, today)
    history_start = now - timedelta(days=LONG_WINDOW_DAYS)
    out = []
    for p in sorted(prods.values(), key=lambda p: (p.name, p.gtin)):
        if not p.active:
            continue
        seen = first.get(p.id)
        basis: Literal["90d", "30d"] = (
            "90d" if seen is not None and seen <= history_start else "30d"
        )
        out.append(
            _Cover(
                product=p,
                on_hand=on_hand[p.id],
                usable=usable[p.id],
                consumed_30d=short.get(p.id, 0),
                consumed_90d=long.get(p.id, 0),
                basis=basis,
                usable_preparedness=prepared[p.id],
            )
        )
    return out


def _consumption_windows(conn: Connection, now: datetime) -> tuple[dict[int, int], dict[int, int]]:
    """Net units consumed per product in [now - 30 d, now) and [now - 90 d, now)."""
    short_start = now - timedelta(days=SHORT_WINDOW_DAYS)
    long_start = now - timedelta(days=LONG_WINDOW_DAYS)
    signed = _signed_quantity()
    rows = conn.execute(
        select(
            lots.c.product_id,
            func.sum(case((movements.c.ts >= short_start, signed), else_=0)),
            func.sum(signed),
        )
        .join(lots, lots.c.id == movements.c.lot_id)
        .where(_net_consumption_filter(), movements.c.ts >= long_start, movements.c.ts < now)
        .group_by(lots.c.product_id)
    )
    short: dict[int, int] = {}
    long: dict[int, int] = {}
    for product_id, s, lo in rows:
        short[int(product_id)] = int(s or 0)
        long[int(product_id)] = int(lo or 0)
    return short, long


def _first_movement(conn: Connection) -> dict[int, datetime]:
    """When the ledger first saw each product move (its history starts there)."""
    rows = conn.execute(
        select(lots.c.product_id, func.min(movements.c.ts))
        .join(lots, lots.c.id == movements.c.lot_id)
        .group_by(lots.c.product_id)
    )
    return {int(product_id): first for product_id, first in rows}


def _month_span(label: str) -> tuple[datetime, datetime]:
    year, month = int(label[:4]), int(label[5:7])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def prorated(quantity: int, month: str, since: datetime, until: datetime) -> Fraction:
    """The part of a month's quantity (a UTC calendar month, YYYY-MM) that falls in
    [since, until): spread evenly over the month's time."""
    start, end = _month_span(month)
    lo, hi = max(start, since), min(end, until)
    if hi <= lo:
        return Fraction(0)
    part = Fraction(int((hi - lo).total_seconds()), int((end - start).total_seconds()))
    return quantity * part


def _external_windows(conn: Connection, now: datetime) -> dict[int, tuple[Fraction, Fraction]]:
    """External units per product prorated into the 30- and 90-day windows, exact."""
    short_start = now - timedelta(days=SHORT_WINDOW_DAYS)
    long_start = now - timedelta(days=LONG_WINDOW_DAYS)
    first = f"{long_start.astimezone(UTC):%Y-%m}"
    last = f"{now.astimezone(UTC):%Y-%m}"
    rows = conn.execute(
        select(external_use.c.product_id, external_use.c.month, external_use.c.quantity).where(
            external_use.c.month >= first, external_use.c.month <= last
        )
    )
    out: dict[int, tuple[Fraction, Fraction]] = {}
    for product_id, month, quantity in rows:
        short, long = out.get(int(product_id), (Fraction(0), Fraction(0)))
        out[int(product_id)] = (
            short + prorated(int(quantity), month, short_start, now),
            long + prorated(int(quantity), month, long_start, now),
        )
    return out


def _whole_units(value: Fraction) -> int:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _exemptions(conn: Connection, today: date) -> dict[int, Exemption]:
    """The active exemptions (a revoked one counts as none)."""
    return {
        int(r.product_id): Exemption(
            reason=r.reason,
            risk_assessment=r.risk_assessment,
            review_date=r.review_date,
            decided_by=r.decided_by,
            review_overdue=r.review_date < today,
            measures=r.measures,
            level_days=r.level_days,
            status=r.status,
        )
        for r in conn.execute(select(exemptions).where(exemptions.c.status == "active"))
    }


def _duty_scope(conn: Connection) -> tuple[dict[int, str], dict[int, str]]:
    """Per product: why it is out of scope (its own row first, else its category's),
    and its durability."""
    by_product: dict[int, str] = {}
    by_category: dict[str, str] = {}
    for r in conn.execute(
        select(duty_scope.c.product_id, duty_scope.c.category, duty_scope.c.reason)
    ):
        if r.product_id is not None:
            by_product[int(r.product_id)] = r.reason
        else:
            by_category[r.category] = r.reason
    durability: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for r in conn.execute(select(products.c.id, products.c.category, products.c.durability)):
        durability[int(r.id)] = r.durability
        reason = by_product.get(int(r.id), by_category.get(r.category))
        if reason is not None:
            reasons[int(r.id)] = reason
    return reasons, durability


def _cover_days(usable: int, units: int, days: int) -> float | None:
    return None if units <= 0 else _ratio(usable * days, units, 1)


def days_of_cover(source: Source, *, now: datetime, obligation_days: int = 30) -> CoverReport:
    """How many days each product's usable stock lasts at its recent consumption.

    mean = net units consumed in the window / window days (30 and 90);
    cover = usable / mean. The obligation is judged on the 90-day mean when the ledger
    has at least 90 days of history of the product (its first movement is at least 90
    days before `now`), else on the 30-day mean, so a product new to the ledger is not
    judged on a mean diluted by days before it existed. With no consumption in that
    window there is nothing to judge: cover and meets_obligation are None.

    Usable stock is also split into the preparedness stock (locations of kind
    `preparedness`) and the rotating rest; cover counts both, as the preparedness stock
    rotates too. A product on the preparedness list is below its floor when its usable
    preparedness stock is less than the floor. A product short of the obligation while
    a crisis period in force at `now` covers it has status "below month (crisis)".
    The obligation is judged on the whole use: the units of care the pharmacy does not
    supply (external_use, prorated into the window) are added to the internal use, and
    whole_cover_days = usable / that mean. Without external use nothing changes.
    """
    require_aware("now", now)
    today = now.date()
    with engine_of(source).connect() as conn:
        covers = _covers(conn, now)
        exempt = _exemptions(conn, today)
        channels = _use_by_channel(conn, now)
        targets = load_targets(conn)
        periods = load_periods(conn)
        out_of_scope, durability = _duty_scope(conn)
        external = _external_windows(conn, now)
    rows = []
    for c in covers:
        units = c.basis_units
        pid = c.product.id
        exemption = exempt.get(pid)
        judged = obligation_for(
            obligation_days,
            scope_reason=out_of_scope.get(pid),
            durability=durability.get(pid, "consumable"),
            exemption_status=None if exemption is None else exemption.status,
            exemption_level=None if exemption is None else exemption.level_days,
        )
        # against its own level when it has one, else (not assessed) the obligation
        level = obligation_days if judged.level_days is None else judged.level_days
        ext_30d, ext_90d = external.get(pid, (Fraction(0), Fraction(0)))
        # the obligation is judged on the whole use: internal + external
        whole = units + (ext_90d if c.basis == "90d" else ext_30d)
        meets = None if whole == 0 else c.usable * c.basis_days >= level * whole
        p = c.product
        crisis = in_crisis(periods, p.gtin, p.category, now)
        status: Literal["ok", "short", "no consumption", "below month (crisis)"] = (
            "no consumption"
            if meets is None
            else "ok"
            if meets
            else "below month (crisis)"
            if crisis
            else "short"
        )
        levels = targets.get(p.id)
        rows.append(
            CoverRow(
                gtin=p.gtin,
                article=p.article,
                name=p.name,
                category=p.category,
                unit=p.unit,
                on_hand=c.on_hand,
                usable=c.usable,
                consumed_30d=c.consumed_30d,
                consumed_90d=c.consumed_90d,
                mean_daily_30d=_ratio(max(c.consumed_30d, 0), SHORT_WINDOW_DAYS, 3),
                mean_daily_90d=_ratio(max(c.consumed_90d, 0), LONG_WINDOW_DAYS, 3),
                cover_days_30d=_cover_days(c.usable, c.consumed_30d, SHORT_WINDOW_DAYS),
                cover_days_90d=_cover_days(c.usable, c.consumed_90d, LONG_WINDOW_DAYS),
                basis=c.basis,
                cover_days=_cover_days(c.usable, units, c.basis_days),
                meets_obligation=meets,
                status=status,
                exempt=p.id in exempt,
                exemption=exempt.get(p.id),
                use_30d_by_channel=dict(sorted(channels.get(p.id, {}).items())),
                usable_rotating=c.usable - c.usable_preparedness,
                usable_preparedness=c.usable_preparedness,
                preparedness_target=None if levels is None else levels[0],
                preparedness_floor=None if levels is None else levels[1],
                below_floor=None if levels is None else c.usable_preparedness < levels[1],
                in_crisis=crisis,
                scope=judged.scope,
                durability=durability.get(pid, "consumable"),
                level_days=judged.level_days,
                external_30d=_whole_units(ext_30d),
                external_90d=_whole_units(ext_90d),
                whole_cover_days=None
                if whole == 0
                else _ratio(
                    Decimal(c.usable * c.basis_days) * whole.denominator,
                    Decimal(whole.numerator),
                    1,
                ),
            )
        )
    return CoverReport(now=now, obligation_days=obligation_days, rows=tuple(rows))
