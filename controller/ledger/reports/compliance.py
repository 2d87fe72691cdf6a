"""The one-month obligation per product category, and the preparedness stock."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from controller.ledger.duty_state import CrisisInForce, crisis_in_force
from controller.ledger.reports.common import _load_products, _load_stock, _money, _ratio
from controller.ledger.reports.cover import CoverRow, days_of_cover
from controller.ledger.schema import PRODUCT_CATEGORIES
from controller.ledger.source import Source, engine_of


@dataclass(frozen=True)
class ProductRef:
    gtin: str
    article: int
    name: str


@dataclass(frozen=True)
class ExemptProduct:
    gtin: str
    article: int
    name: str
    reason: str
    review_date: date
    review_overdue: bool
    measures: str = ""
    level_days: int | None = None  # None: out of the share; N: assessed against N days


@dataclass(frozen=True)
class OutOfScopeProduct:
    gtin: str
    name: str
    reason: str  # a scope reason, or "durable"


@dataclass(frozen=True)
class CategoryCompliance:
    category: str
    products: int  # active products in the category
    assessed: int  # with consumption and not exempt: the denominator of share
    meeting: int  # assessed products with cover >= obligation_days
    share: float | None  # meeting / assessed; None when nothing is assessed
    short: tuple[ProductRef, ...]
    exempted: tuple[ExemptProduct, ...]
    no_consumption: tuple[ProductRef, ...]
    # short of the obligation while a crisis period covers them (not in `short`)
    below_month_in_crisis: tuple[ProductRef, ...] = ()
    # not assessed at all: marked out of the duty's scope, or durable
    out_of_scope: tuple[OutOfScopeProduct, ...] = ()


@dataclass(frozen=True)
class PreparednessProduct:
    gtin: str
    article: int
    name: str
    units: int
    value: Decimal


@dataclass(frozen=True)
class PreparednessListed:
    """A product of the preparedness list: its levels and usable preparedness stock."""

    gtin: str
    article: int
    name: str
    category: str
    target: int
    floor: int
    stock: int  # usable units in preparedness locations
    below_floor: bool


@dataclass(frozen=True)
class PreparednessLine:
    units: int
    value: Decimal
    products: tuple[PreparednessProduct, ...]
    listed: tuple[PreparednessListed, ...] = ()  # the preparedness list, by name
    products_listed: int = 0
    below_floor: int = 0


@dataclass(frozen=True)
class ComplianceSummary:
    now: datetime
    obligation_days: int
    categories: tuple[CategoryCompliance, ...]
    products: int
    assessed: int
    meeting: int
    share: float | None
    preparedness: PreparednessLine
    crisis: tuple[CrisisInForce, ...] = ()  # the crisis periods in force at `now`
    # active exemptions whose review date has passed
    exemptions_review_overdue: int = 0


def compliance_summary(
    source: Source, *, now: datetime, obligation_days: int = 30
) -> ComplianceSummary:
    """The one-month obligation per category, from `days_of_cover`.

    share = products meeting the obligation / products assessed, where assessed means
    active, in the duty's scope, consumable, not exempt (or exempt to a reduced level,
    then judged against that level), and with consumption on the basis window. Exempt
    products are listed with their reason, level and review date (whether or not they
    have consumption); products out of scope (or durable) are listed apart with the
    reason, and so are products without consumption. Preparedness stock is the stock in
    locations of kind `preparedness`, any lot status; it also counts in the cover above.
    The preparedness list is given per product with its target, floor and usable
    preparedness stock (below floor: stock < floor). Products short of the obligation
    while a crisis period covers them are listed apart from `short`, under
    `below_month_in_crisis`; `crisis` holds the periods in force at `now`.
    """
    cover = days_of_cover(source, now=now, obligation_days=obligation_days)
    by_category: dict[str, list[CoverRow]] = {c: [] for c in PRODUCT_CATEGORIES}
    for row in cover.rows:
        by_category.setdefault(row.category, []).append(row)
    categories = []
    for category, rows in by_category.items():
        exempted = tuple(
            ExemptProduct(
                r.gtin,
                r.article,
                r.name,
                r.exemption.reason,
                r.exemption.review_date,
                r.exemption.review_overdue,
                r.exemption.measures,
                r.exemption.level_days,
            )
            for r in rows
            if r.exemption is not None
        )
        judged = [r for r in rows if r.level_days is not None]
        assessed = [r for r in judged if r.meets_obligation is not None]
        meeting = sum(1 for r in assessed if r.meets_obligation)
        categories.append(
            CategoryCompliance(
                category=category,
                products=len(rows),
                assessed=len(assessed),
                meeting=meeting,
                share=_ratio(meeting, len(assessed), 4) if assessed else None,
                short=tuple(
                    ProductRef(r.gtin, r.article, r.name)
                    for r in assessed
                    if not r.meets_obligation and not r.in_crisis
                ),
                exempted=exempted,
                no_consumption=tuple(
                    ProductRef(r.gtin, r.article, r.name)
                    for r in judged
                    if r.meets_obligation is None
                ),
                below_month_in_crisis=tuple(
                    ProductRef(r.gtin, r.article, r.name)
                    for r in assessed
                    if not r.meets_obligation and r.in_crisis
                ),
                out_of_scope=tuple(
                    OutOfScopeProduct(r.gtin, r.name, r.scope) for r in rows if r.scope != "in"
                ),
            )
        )
    listed = tuple(
        PreparednessListed(
            r.gtin,
            r.article,
            r.name,
            r.category,
            r.preparedness_target,
            r.preparedness_floor,
            r.usable_preparedness,
            bool(r.below_floor),
        )
        for r in cover.rows
        if r.preparedness_target is not None and r.preparedness_floor is not None
    )
    held = _preparedness(source)
    with engine_of(source).connect() as conn:
        crisis = crisis_in_force(conn, now)
    assessed_total = sum(c.assessed for c in categories)
    meeting_total = sum(c.meeting for c in categories)
    return ComplianceSummary(
        now=now,
        obligation_days=obligation_days,
        categories=tuple(categories),
        products=sum(c.products for c in categories),
        assessed=assessed_total,
        meeting=meeting_total,
        share=_ratio(meeting_total, assessed_total, 4) if assessed_total else None,
        preparedness=dataclasses.replace(
            held,
            listed=listed,
            products_listed=len(listed),
            below_floor=sum(1 for p in listed if p.below_floor),
        ),
        crisis=crisis,
        exemptions_review_overdue=sum(
            1 for r in cover.rows if r.exemption is not None and r.exemption.review_overdue
        ),
    )


def _preparedness(source: Source) -> PreparednessLine:
    with engine_of(source).connect() as conn:
        prods = _load_products(conn)
        stock = _load_stock(conn)
    units: dict[int, int] = defaultdict(int)
    for s in stock:
        if s.location_kind == "preparedness":
            units[s.product_id] += s.on_hand
    held = sorted(
        (
            PreparednessProduct(
                p.gtin, p.article, p.name, units[p.id], _money(units[p.id] * p.unit_price)
            )
            for p in (prods[i] for i in units)
        ),
        key=lambda r: (r.name, r.gtin),
    )
    exact = sum((n * prods[i].unit_price for i, n in units.items()), Decimal(0))
    return PreparednessLine(units=sum(units.values()), value=_money(exact), products=tuple(held))
