"""Stock gauges from the ledger reports, refreshed every `interval_s` by housekeeping.

`collect` is one read of the ledger (it runs on the ledger's thread, through
`AsyncLedger.run`, so on SQLite it queues behind writes instead of racing them) and
returns a `StockSnapshot`; `StockMetrics.publish` puts a snapshot into the gauges. The
numbers are those of `controller.ledger.reports` (docs/reports.md), so a gauge and the
`doseline report` command never disagree. The exact definitions are in docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select

from controller.async_ledger import AsyncLedger
from controller.ledger import Ledger
from controller.ledger import reports as rp
from controller.ledger.schema import (
    PRODUCT_CATEGORIES,
    balances,
    locations,
    lots,
    products,
    reservations,
)
from controller.metrics import Metrics
from controller.purchasing.store import PurchasingStore
from controller.wardsupply.model import LineStatus
from controller.wardsupply.reliability import delivery_reliability
from controller.wardsupply.rules import CAUSES

log = logging.getLogger("doseline.metrics")

EXPIRY_WINDOWS_DAYS = (30, 90)
WINDOW_DAYS = 30  # waste value and service level look back this far


@dataclass(frozen=True)
class StockSnapshot:
    """The stock gauges at one moment. None: nothing to measure (see docs/metrics.md)."""

    now: datetime
    cover_days: Mapping[str, float | None]  # category -> lowest cover of its products
    below_obligation: Mapping[str, int]  # category -> products short of the obligation
    preparedness_cover_days: float | None
    preparedness_value: Decimal
    expiring_value: Mapping[int, Decimal]  # window days -> value, expired lots included
    expired_value: Decimal
    waste_value_30d: Decimal
    service_level: float | None
    oldest_open_reservation_s: float
    # supplier -> (on time in full, fill rate) over its due order lines; None: none due
    suppliers: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # (supplier, status) -> purchase order lines still open or back-ordered
    order_lines: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # ward supply: on time in full over the window (None: no line due), unmet lines by
    # cause, and requisition lines by status
    ward_reliability: float | None = None
    ward_unmet: Mapping[str, int] = field(default_factory=dict)
    ward_lines: Mapping[str, int] = field(default_factory=dict)
    # the stock duty: category -> products below the obligation while in crisis (not in
    # below_obligation), category -> listed products below their preparedness floor,
    # and whether a crisis period is in force
    below_obligation_in_crisis: Mapping[str, int] = field(default_factory=dict)
    preparedness_below_floor: Mapping[str, int] = field(default_factory=dict)
    crisis_active: bool = False
    # active exemptions whose review date has passed
    exemptions_review_overdue: int = 0
    # the stock duty: open shortage notices, products rationed now
    shortages_open: int = 0
    rationed_products: int = 0


def _round1(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _preparedness_units(ledger: Ledger, today: date) -> tuple[dict[str, int], Decimal]:
    """Usable units per GTIN in preparedness locations (released lots, not expired by
    `today`) and the value of all stock there (any lot status, as in the compliance
    summary)."""
    query = (
        select(
            products.c.gtin,
            products.c.unit_price,
            lots.c.status,
            lots.c.expiry,
            func.sum(balances.c.on_hand),
        )
        .join(locations, locations.c.id == balances.c.location_id)
        .join(lots, lots.c.id == balances.c.lot_id)
        .join(products, products.c.id == lots.c.product_id)
        .where(locations.c.kind == "preparedness", balances.c.on_hand > 0)
        .group_by(products.c.gtin, products.c.unit_price, lots.c.status, lots.c.expiry)
    )
    usable: dict[str, int] = defaultdict(int)
    value = Decimal(0)
    with ledger.engine.connect() as conn:
        for gtin, price, status, expiry, units in conn.execute(query):
            value += int(units) * Decimal(price)
            if status == "released" and expiry >= today:
                usable[gtin] += int(units)
    return dict(usable), value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _preparedness_cover(cover: rp.CoverReport, usable: Mapping[str, int]) -> float | None:
    """Days the usable preparedness stock alone lasts for its weakest product: the
    minimum over products held there with consumption on their basis window of
    units / (basis units / basis days). None when no such product."""
    lowest: Decimal | None = None
    for row in cover.rows:
        units = usable.get(row.gtin, 0)
        if units <= 0:
            continue
        if row.basis == "90d":
            used, days = row.consumed_90d, rp.LONG_WINDOW_DAYS
        else:
            used, days = row.consumed_30d, rp.SHORT_WINDOW_DAYS
        if used <= 0:
            continue
        days_left = Decimal(units * days) / Decimal(used)
        lowest = days_left if lowest is None else min(lowest, days_left)
    return None if lowest is None else _round1(lowest)


def oldest_open_reservation_age(ledger: Ledger, now: datetime) -> float:
    """Seconds since the oldest open reservation was made; 0 when none is open."""
    with ledger.engine.connect() as conn:
        oldest = conn.execute(
            select(func.min(reservations.c.created_at)).where(reservations.c.status == "open")
        ).scalar_one()
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # stored as UTC
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds())


def collect(
    ledger: Ledger,
    *,
    now: datetime,
    tz: tzinfo = UTC,
    obligation_days: int = 30,
    expiry_windows: Iterable[int] = EXPIRY_WINDOWS_DAYS,
) -> StockSnapshot:
    """Reads every stock gauge from the ledger. `now` is UTC-aware; expiry is judged on
    the calendar date of `now` in `tz` (the site's zone), since lots expire by date."""
    cover = rp.days_of_cover(ledger, now=now, obligation_days=obligation_days)
    categories = list(dict.fromkeys([*PRODUCT_CATEGORIES, *(r.category for r in cover.rows)]))
    lowest: dict[str, float | None] = dict.fromkeys(categories)
    short: dict[str, int] = dict.fromkeys(categories, 0)
    short_in_crisis: dict[str, int] = dict.fromkeys(categories, 0)
    below_floor: dict[str, int] = dict.fromkeys(categories, 0)
    for row in cover.rows:
        if row.below_floor:
            below_floor[row.category] += 1
        # As in compliance_summary: products out of scope or durable, exempt products
        # without a reduced level and products without consumption on their basis
        # window are not judged; a reduced-level product is judged against its level.
        # Cover on the whole use (internal + external), as the obligation is judged.
        days = row.whole_cover_days
        if row.level_days is None or row.meets_obligation is None or days is None:
            continue
        current = lowest[row.category]
        lowest[row.category] = days if current is None else min(current, days)
        if not row.meets_obligation:
            (short_in_crisis if row.in_crisis else short)[row.category] += 1
    # Usable as days_of_cover counts it: on the UTC date of `now`.
    usable, prep_value = _preparedness_units(ledger, now.date())
    today = now.astimezone(tz).date()
    expiring: dict[int, Decimal] = {}
    expired = Decimal(0)
    for days in expiry_windows:
        report = rp.expiring(ledger, within_days=days, today=today)
        expiring[days] = report.value
        expired = report.expired_value
    since = now - timedelta(days=WINDOW_DAYS)
    waste = rp.waste_report(ledger, since=since, until=now)
    service = rp.service_level(ledger, since=since, until=now)
    purchasing = PurchasingStore(ledger)
    suppliers = {r.supplier: (r.otif, r.fill_rate) for r in purchasing.reliability(today=today)}
    lines = purchasing.open_lines()
    ward = delivery_reliability(ledger.engine, since=since, until=now, now=now)
    return StockSnapshot(
        now=now,
        cover_days=lowest,
        below_obligation=short,
        preparedness_cover_days=_preparedness_cover(cover, usable),
        preparedness_value=prep_value,
        expiring_value=expiring,
        expired_value=expired,
        waste_value_30d=waste.value,
        service_level=service.share,
        oldest_open_reservation_s=oldest_open_reservation_age(ledger, now),
        suppliers=suppliers,
        order_lines={
            (code, status): lines.get((code, status), 0)
            for code in suppliers
            for status in ("open", "back_order")
        },
        ward_reliability=ward.share,
        ward_unmet={cause: ward.by_cause.get(cause, 0) for cause in CAUSES},
        ward_lines=ward_line_counts(ledger),
        below_obligation_in_crisis=short_in_crisis,
        preparedness_below_floor=below_floor,
        crisis_active=bool(ledger.crisis_periods(at=now, in_force_only=True)),
        exemptions_review_overdue=sum(
            1 for r in cover.rows if r.exemption is not None and r.exemption.review_overdue
        ),
        shortages_open=ledger.open_shortage_count(),
        rationed_products=ledger.rationed_products(),
    )


def ward_line_counts(ledger: Ledger) -> dict[str, int]:
    """Requisition lines per status, every status present (0 when none)."""
    from controller.ledger.schema_wardsupply import ward_requisition_lines as w

    with ledger.engine.connect() as c:
        rows = {
            str(status): int(n)
            for status, n in c.execute(select(w.c.status, func.count()).group_by(w.c.status))
        }
    return {str(s): int(rows.get(str(s), 0)) for s in LineStatus}


def _value(value: float | Decimal | None) -> float:
    return math.nan if value is None else float(value)


class StockMetrics:
    """Keeps the stock gauges fresh: `tick()` (from housekeeping, every second or so)
    refreshes them when `interval_s` has passed since the last attempt.

    A failed refresh is logged once (until one succeeds again), counted in
    `doseline_stock_metrics_refresh_failures_total`, and leaves the gauges as they
    were; `doseline_stock_metrics_last_refresh_timestamp_seconds` shows how old they are.
    """

    def __init__(
        self,
        metrics: Metrics,
        ledger: AsyncLedger,
        *,
        interval_s: float = 30.0,
        tz: tzinfo = UTC,
        obligation_days: int = 30,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (UTC-aware) is the time the reports are computed at; by default the
        ledger's own clock, the one its movements are stamped with."""
        if not interval_s > 0:
            raise ValueError(f"interval_s: {interval_s!r} must be above 0")
        self.metrics = metrics
        self.ledger = ledger
        self.interval_s = interval_s
        self.tz = tz
        self.obligation_days = obligation_days
        self.clock = clock or ledger.ledger.clock
        self.monotonic = monotonic
        self.last: StockSnapshot | None = None
        self._next: float | None = None  # monotonic time of the next refresh
        self._failing = False
        self._cover_shown: set[str] = set()

    async def tick(self) -> bool:
        """Refreshes if due; True when a refresh ran and succeeded."""
        now = self.monotonic()
        if self._next is not None and now < self._next:
            return False
        self._next = now + self.interval_s
        return await self.refresh()

    async def refresh(self) -> bool:
        """One refresh now; never raises (but for cancellation)."""
        try:
            snapshot = await self.ledger.run(
                collect,
                self.ledger.ledger,
                now=self.clock(),
                tz=self.tz,
                obligation_days=self.obligation_days,
            )
        except Exception as exc:
            self.metrics.stock_refresh_failures.inc()
            if not self._failing:
                self._failing = True
                log.error("stock metrics: refresh failed (logged once until it works): %r", exc)
            return False
        if self._failing:
            self._failing = False
            log.info("stock metrics: refresh works again")
        self.publish(snapshot)
        return True

    def publish(self, snap: StockSnapshot) -> None:
        m = self.metrics
        shown = {c for c, days in snap.cover_days.items() if days is not None}
        for category in self._cover_shown - shown:
            m.stock_cover_days.remove(category)  # nothing judged there any more
        for category in shown:
            m.stock_cover_days.labels(category).set(_value(snap.cover_days[category]))
        self._cover_shown = shown
        for category, count in snap.below_obligation.items():
            m.stock_below_obligation.labels(category).set(count)
        for category, count in snap.below_obligation_in_crisis.items():
            m.stock_below_obligation_in_crisis.labels(category).set(count)
        for category, count in snap.preparedness_below_floor.items():
            m.preparedness_below_floor.labels(category).set(count)
        m.crisis_active.set(1 if snap.crisis_active else 0)
        m.stock_preparedness_cover_days.set(_value(snap.preparedness_cover_days))
        m.stock_preparedness_value.set(_value(snap.preparedness_value))
        for days, value in snap.expiring_value.items():
            m.stock_expiring_value.labels(str(days)).set(_value(value))
        m.stock_expired_value.set(_value(snap.expired_value))
        m.stock_waste_value_30d.set(_value(snap.waste_value_30d))
        m.stock_service_level.set(_value(snap.service_level))
        m.oldest_open_reservation.set(snap.oldest_open_reservation_s)
        for code, (otif, fill) in snap.suppliers.items():
            m.supplier_otif.labels(code).set(_value(otif))
            m.supplier_fill.labels(code).set(_value(fill))
        for (code, status), count in snap.order_lines.items():
            m.purchase_order_lines.labels(code, status).set(count)
        m.ward_delivery_reliability.set(_value(snap.ward_reliability))
        for cause, count in snap.ward_unmet.items():
            m.ward_unmet_lines.labels(cause).set(count)
        for status, count in snap.ward_lines.items():
            m.ward_order_lines.labels(status).set(count)
        m.stock_exemptions_review_overdue.set(snap.exemptions_review_overdue)
        m.shortages_open.set(snap.shortages_open)
        m.rationed_products.set(snap.rationed_products)
        m.stock_refreshed.set(snap.now.timestamp())
        self.last = snap
