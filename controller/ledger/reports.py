"""Reports on the ledger: stock, expiry, cover against the one-month obligation, waste,
delivery reliability, consumption for national follow-up, order proposals, and the
import of an assortment and price list.

Every report is a pure read on an Engine (or a Ledger) that returns a frozen dataclass,
so the CLI, a future HTTP API and metrics all share one definition of each number.
Times are explicit parameters (UTC-aware), never read from the clock in here, so the
same call gives the same answer in a test and in production. The one writer is
`import_assortment`, which writes through the ledger's audit trail. The exact
definitions are in docs/reports.md.

Conventions: quantities are whole dispensing units (int); money is Decimal SEK rounded
to öre (0.01, half up) per row, and totals are summed from unrounded values; rates,
days and shares are floats rounded half up (rates to 3 decimals, days to 1, shares
to 4). `to_jsonable` turns any report into JSON-ready data (Decimal as a string).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from controller.config import valid_gtin
from controller.ledger.audit import Change, write_audit
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.ledger import Ledger, utcnow
from controller.ledger.schema import (
    PRODUCT_CATEGORIES,
    STORAGE,
    exemptions,
    locations,
    lots,
    movements,
    order_lines,
    products,
    purchase_order_lines,
    supplier_products,
    suppliers,
)
from controller.ledger.schema import (
    balances as balances_table,
)

Source = Engine | Ledger
GroupBy = Literal["product", "location", "lot"]

SHORT_WINDOW_DAYS = 30
LONG_WINDOW_DAYS = 90
UNSPECIFIED_REASON = "unspecified"
CONSUMPTION_CSV_HEADER = (
    "month",
    "article",
    "gtin",
    "name",
    "atc",
    "unit",
    "quantity",
    "value_sek",
)
ASSORTMENT_COLUMNS = (
    "gtin",
    "article",
    "name",
    "substance",
    "atc",
    "strength",
    "form",
    "unit",
    "pack_size",
    "unit_price",
    "category",
    "storage",
    "controlled_class",
    "substitution_group",
)
ATC_PATTERN = re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")  # level 5: a chemical substance

_CENT = Decimal("0.01")


# ---------------------------------------------------------------------------- helpers


def _engine(source: Source) -> Engine:
    return source.engine if isinstance(source, Ledger) else source


def _money(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _ratio(num: int | Decimal, den: int | Decimal, places: int) -> float:
    """num / den rounded half up: exact decimal arithmetic, a float only at the end."""
    exact = Decimal(num) / Decimal(den)
    return float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _ceil_div(num: int, den: int) -> int:
    return -(-num // den)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise LedgerError(f"{name}: naive datetime {value!r}: reports take UTC-aware times")


@dataclass(frozen=True)
class _Product:
    id: int
    gtin: str
    article: int
    name: str
    atc: str
    unit: str
    pack_size: int
    unit_price: Decimal
    category: str
    active: bool


@dataclass(frozen=True)
class _Stock:
    location_id: int
    location: str
    location_kind: str
    product_id: int
    batch: str
    expiry: date
    status: str
    on_hand: int
    reserved: int


def _load_products(conn: Connection) -> dict[int, _Product]:
    rows = conn.execute(
        select(
            products.c.id,
            products.c.gtin,
            products.c.article,
            products.c.name,
            products.c.atc,
            products.c.unit,
            products.c.pack_size,
            products.c.unit_price,
            products.c.category,
            products.c.active,
        )
    )
    return {
        int(r.id): _Product(
            id=int(r.id),
            gtin=r.gtin,
            article=int(r.article),
            name=r.name,
            atc=r.atc,
            unit=r.unit,
            pack_size=int(r.pack_size),
            unit_price=Decimal(r.unit_price),
            category=r.category,
            active=bool(r.active),
        )
        for r in rows
    }


def _load_stock(conn: Connection) -> list[_Stock]:
    """Every balance row with stock, with its lot and location (internal kinds only)."""
    rows = conn.execute(
        select(
            balances_table.c.location_id,
            locations.c.code,
            locations.c.kind,
            lots.c.product_id,
            lots.c.batch,
            lots.c.expiry,
            lots.c.status,
            balances_table.c.on_hand,
            balances_table.c.reserved,
        )
        .join(locations, locations.c.id == balances_table.c.location_id)
        .join(lots, lots.c.id == balances_table.c.lot_id)
        .where(balances_table.c.on_hand > 0)
        .order_by(locations.c.code, lots.c.product_id, lots.c.expiry, lots.c.batch)
    )
    return [
        _Stock(
            location_id=int(r.location_id),
            location=r.code,
            location_kind=r.kind,
            product_id=int(r.product_id),
            batch=r.batch,
            expiry=r.expiry,
            status=r.status,
            on_hand=int(r.on_hand),
            reserved=int(r.reserved),
        )
        for r in rows
    ]


def _usable(stock: _Stock, today: date) -> int:
    """Stock that can be used: a released lot, not expired, not in a quarantine location."""
    if stock.status != "released" or stock.expiry < today or stock.location_kind == "quarantine":
        return 0
    return stock.on_hand


def _free(stock: _Stock, today: date | None) -> bool:
    """Whether a balance row's unreserved stock can be given out (see `balances`)."""
    if stock.status != "released" or stock.location_kind == "quarantine":
        return False
    return today is None or stock.expiry >= today


def _location_subtree(conn: Connection, code: str) -> set[int]:
    """The location and everything below it (a store includes its bins)."""
    rows = conn.execute(select(locations.c.id, locations.c.code, locations.c.parent_id)).all()
    root = next((int(r.id) for r in rows if r.code == code), None)
    if root is None:
        raise UnknownEntity("location", code)
    children: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        if r.parent_id is not None:
            children[int(r.parent_id)].append(int(r.id))
    found, todo = set(), [root]
    while todo:
        loc = todo.pop()
        if loc not in found:
            found.add(loc)
            todo.extend(children[loc])
    return found


def _kind_ids(kind: str) -> Any:
    return select(locations.c.id).where(locations.c.kind == kind).scalar_subquery()


def _net_consumption_filter() -> Any:
    """`consume` into a consumed location, or `return` out of one."""
    consumed = select(locations.c.id).where(locations.c.kind == "consumed")
    return or_(
        and_(movements.c.kind == "consume", movements.c.to_location_id.in_(consumed)),
        and_(movements.c.kind == "return", movements.c.from_location_id.in_(consumed)),
    )


def _signed_quantity() -> Any:
    return case((movements.c.kind == "return", -movements.c.quantity), else_=movements.c.quantity)


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


# ---------------------------------------------------------------------------- balances


@dataclass(frozen=True)
class BalanceRow:
    """One line of a stock balance; fields that do not apply to the grouping are None."""

    on_hand: int
    reserved: int
    available: int
    value: Decimal
    gtin: str | None = None
    article: int | None = None
    name: str | None = None
    unit: str | None = None
    location: str | None = None
    location_kind: str | None = None
    batch: str | None = None
    expiry: date | None = None
    status: str | None = None


@dataclass(frozen=True)
class BalanceReport:
    by: GroupBy
    gtin: str | None
    location: str | None
    today: date | None
    rows: tuple[BalanceRow, ...]
    on_hand: int
    reserved: int
    available: int
    value: Decimal


def balances(
    source: Source,
    *,
    by: GroupBy = "product",
    gtin: str | None = None,
    location: str | None = None,
    today: date | None = None,
) -> BalanceReport:
    """Stock on hand, reserved, available and its value, per product, location or lot.

    On hand counts every internal location, wards included: stock in a canister or a
    cabinet pocket is still the region's stock. Available = on hand - reserved, over
    released lots outside quarantine locations, and with `today` also only lots not
    expired by then. `location` includes the locations below it.
    """
    if by not in ("product", "location", "lot"):
        raise LedgerError(f"by: {by!r} is not one of product, location, lot")
    if gtin is not None and gtin.isdigit():
        gtin = gtin.zfill(14)
    with _engine(source).connect() as conn:
        prods = _load_products(conn)
        stock = _load_stock(conn)
        scope = _location_subtree(conn, location) if location else None
    groups: dict[tuple[Any, ...], list[_Stock]] = defaultdict(list)
    for s in stock:
        if scope is not None and s.location_id not in scope:
            continue
        if gtin is not None and prods[s.product_id].gtin != gtin:
            continue
        if by == "product":
            key: tuple[Any, ...] = (s.product_id,)
        elif by == "location":
            key = (s.location, s.location_kind)
        else:
            key = (s.product_id, s.batch, s.expiry, s.status)
        groups[key].append(s)

    rows: list[BalanceRow] = []
    for key, items in groups.items():
        on_hand = sum(s.on_hand for s in items)
        reserved = sum(s.reserved for s in items)
        available = sum(s.on_hand - s.reserved for s in items if _free(s, today))
        value = sum((s.on_hand * prods[s.product_id].unit_price for s in items), Decimal(0))
        row = BalanceRow(on_hand, reserved, available, _money(value))
        if by == "location":
            rows.append(replace(row, location=key[0], location_kind=key[1]))
            continue
        p = prods[key[0]]
        row = replace(row, gtin=p.gtin, article=p.article, name=p.name, unit=p.unit)
        if by == "lot":
            row = replace(row, batch=key[1], expiry=key[2], status=key[3])
        rows.append(row)
    if by == "location":
        rows.sort(key=lambda r: r.location or "")
    else:
        rows.sort(key=lambda r: (r.name or "", r.gtin or "", r.expiry or date.min, r.batch or ""))
    total_value = sum(
        (s.on_hand * prods[s.product_id].unit_price for items in groups.values() for s in items),
        Decimal(0),
    )
    return BalanceReport(
        by=by,
        gtin=gtin,
        location=location,
        today=today,
        rows=tuple(rows),
        on_hand=sum(r.on_hand for r in rows),
        reserved=sum(r.reserved for r in rows),
        available=sum(r.available for r in rows),
        value=_money(total_value),
    )


# ---------------------------------------------------------------------------- expiry


@dataclass(frozen=True)
class ExpiringLot:
    gtin: str
    article: int
    name: str
    batch: str
    expiry: date
    days_left: int  # negative when already expired
    expired: bool
    status: str
    location: str
    quantity: int
    value: Decimal


@dataclass(frozen=True)
class ExpiryReport:
    today: date
    within_days: int
    rows: tuple[ExpiringLot, ...]
    units: int
    value: Decimal
    expired_units: int
    expired_value: Decimal


def expiring(source: Source, *, within_days: int, today: date) -> ExpiryReport:
    """Stock whose lot expires on or before today + within_days, per lot and location.

    Lots already expired but still on hand are included and flagged: they are the
    first thing to act on. A lot is usable through its expiry date.
    """
    if within_days < 0:
        raise LedgerError(f"within_days: {within_days!r} must be 0 or more")
    horizon = today + timedelta(days=within_days)
    with _engine(source).connect() as conn:
        prods = _load_products(conn)
        stock = _load_stock(conn)
    rows: list[ExpiringLot] = []
    exact_value = Decimal(0)
    exact_expired = Decimal(0)
    for s in stock:
        if s.expiry > horizon:
            continue
        p = prods[s.product_id]
        value = s.on_hand * p.unit_price
        expired = s.expiry < today
        exact_value += value
        if expired:
            exact_expired += value
        rows.append(
            ExpiringLot(
                gtin=p.gtin,
                article=p.article,
                name=p.name,
                batch=s.batch,
                expiry=s.expiry,
                days_left=(s.expiry - today).days,
                expired=expired,
                status=s.status,
                location=s.location,
                quantity=s.on_hand,
                value=_money(value),
            )
        )
    rows.sort(key=lambda r: (r.expiry, r.name, r.batch, r.location))
    return ExpiryReport(
        today=today,
        within_days=within_days,
        rows=tuple(rows),
        units=sum(r.quantity for r in rows),
        value=_money(exact_value),
        expired_units=sum(r.quantity for r in rows if r.expired),
        expired_value=_money(exact_expired),
    )


# ---------------------------------------------------------------------------- cover


@dataclass(frozen=True)
class Exemption:
    """A documented exemption from the one-month obligation."""

    reason: str
    risk_assessment: str
    review_date: date
    decided_by: str
    review_overdue: bool  # the review date has passed: the exemption needs a new decision


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
    status: Literal["ok", "short", "no consumption"]
    exempt: bool
    exemption: Exemption | None
    # net use of the last 30 days by where it left the stock: dose pouches (canisters),
    # cabinets (pockets), drug rooms (ward stock), other (the store itself)
    use_30d_by_channel: dict[str, int] = dataclasses.field(default_factory=dict)


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
    for s in stock:
        on_hand[s.product_id] += s.on_hand
        usable[s.product_id] += _usable(s, today)
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
            )
        )
    return out


def _exemptions(conn: Connection, today: date) -> dict[int, Exemption]:
    return {
        int(r.product_id): Exemption(
            reason=r.reason,
            risk_assessment=r.risk_assessment,
            review_date=r.review_date,
            decided_by=r.decided_by,
            review_overdue=r.review_date < today,
        )
        for r in conn.execute(select(exemptions))
    }


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
    """
    _require_aware("now", now)
    today = now.date()
    with _engine(source).connect() as conn:
        covers = _covers(conn, now)
        exempt = _exemptions(conn, today)
        channels = _use_by_channel(conn, now)
    rows = []
    for c in covers:
        units = c.basis_units
        meets = None if units == 0 else c.usable * c.basis_days >= obligation_days * units
        status: Literal["ok", "short", "no consumption"] = (
            "no consumption" if meets is None else "ok" if meets else "short"
        )
        p = c.product
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
            )
        )
    return CoverReport(now=now, obligation_days=obligation_days, rows=tuple(rows))


# ---------------------------------------------------------------------------- compliance


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


@dataclass(frozen=True)
class PreparednessProduct:
    gtin: str
    article: int
    name: str
    units: int
    value: Decimal


@dataclass(frozen=True)
class PreparednessLine:
    units: int
    value: Decimal
    products: tuple[PreparednessProduct, ...]


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


def compliance_summary(
    source: Source, *, now: datetime, obligation_days: int = 30
) -> ComplianceSummary:
    """The one-month obligation per category, from `days_of_cover`.

    share = products meeting the obligation / products assessed, where assessed means
    active, not exempt, and with consumption on the basis window. Exempt products are
    listed with their reason and review date (whether or not they have consumption);
    products without consumption are listed apart. Preparedness stock is the stock in
    locations of kind `preparedness`, any lot status; it also counts in the cover above.
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
            )
            for r in rows
            if r.exemption is not None
        )
        judged = [r for r in rows if not r.exempt]
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
                    if not r.meets_obligation
                ),
                exempted=exempted,
                no_consumption=tuple(
                    ProductRef(r.gtin, r.article, r.name)
                    for r in judged
                    if r.meets_obligation is None
                ),
            )
        )
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
        preparedness=_preparedness(source),
    )


def _preparedness(source: Source) -> PreparednessLine:
    with _engine(source).connect() as conn:
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


# ---------------------------------------------------------------------------- waste


@dataclass(frozen=True)
class WasteByReason:
    reason_code: str
    units: int
    value: Decimal


@dataclass(frozen=True)
class WasteByProduct:
    gtin: str
    article: int
    name: str
    units: int
    value: Decimal
    reasons: tuple[WasteByReason, ...]


@dataclass(frozen=True)
class WasteReport:
    since: datetime
    until: datetime
    by_reason: tuple[WasteByReason, ...]
    by_product: tuple[WasteByProduct, ...]
    units: int
    value: Decimal


def _window(since: datetime, until: datetime) -> None:
    _require_aware("since", since)
    _require_aware("until", until)
    if until <= since:
        raise LedgerError(f"until: {until.isoformat()} must be after since {since.isoformat()}")


def waste_report(source: Source, *, since: datetime, until: datetime) -> WasteReport:
    """Units and value that went to a waste location in [since, until), by reason code.

    A waste movement without a reason code is counted as `unspecified`, so gaps in
    the recording show instead of hiding in `other`.
    """
    _window(since, until)
    reason = func.coalesce(movements.c.reason_code, UNSPECIFIED_REASON)
    with _engine(source).connect() as conn:
        prods = _load_products(conn)
        rows = conn.execute(
            select(lots.c.product_id, reason, func.sum(movements.c.quantity))
            .join(lots, lots.c.id == movements.c.lot_id)
            .where(
                movements.c.to_location_id.in_(_kind_ids("waste")),
                movements.c.ts >= since,
                movements.c.ts < until,
            )
            .group_by(lots.c.product_id, reason)
        ).all()
    per_reason: dict[str, list[tuple[_Product, int]]] = defaultdict(list)
    per_product: dict[int, dict[str, int]] = defaultdict(dict)
    for product_id, code, units in rows:
        p = prods[int(product_id)]
        per_reason[code].append((p, int(units)))
        per_product[p.id][code] = int(units)

    def line(code: str, items: Iterable[tuple[_Product, int]]) -> WasteByReason:
        items = list(items)
        value = sum((n * p.unit_price for p, n in items), Decimal(0))
        return WasteByReason(code, sum(n for _, n in items), _money(value))

    by_reason = tuple(line(code, per_reason[code]) for code in sorted(per_reason))
    by_product = []
    for product_id, codes in per_product.items():
        p = prods[product_id]
        reasons = tuple(line(code, [(p, n)]) for code, n in sorted(codes.items()))
        units = sum(codes.values())
        by_product.append(
            WasteByProduct(p.gtin, p.article, p.name, units, _money(units * p.unit_price), reasons)
        )
    by_product.sort(key=lambda r: (-r.value, r.name, r.gtin))
    exact = sum((n * prods[int(pid)].unit_price for pid, _, n in rows), Decimal(0))
    return WasteReport(
        since=since,
        until=until,
        by_reason=by_reason,
        by_product=tuple(by_product),
        units=sum(r.units for r in by_reason),
        value=_money(exact),
    )


# ---------------------------------------------------------------------------- service level


@dataclass(frozen=True)
class ServiceLine:
    source: str
    lines: int
    full: int  # lines with filled == requested
    short: int
    units_requested: int
    units_filled: int
    share: float | None  # full / lines


@dataclass(frozen=True)
class ServiceLevelReport:
    since: datetime
    until: datetime
    target: float
    lines: int
    full: int
    short: int
    units_requested: int
    units_filled: int
    share: float | None  # None when there were no lines
    meets_target: bool | None
    by_source: tuple[ServiceLine, ...]


def service_level(
    source: Source, *, since: datetime, until: datetime, target: float = 0.95
) -> ServiceLevelReport:
    """Delivery reliability: the share of order lines filled completely from stock.

    A line counts as delivered only when filled == requested (a partly filled line is
    a miss), over order lines with ts in [since, until); meets_target compares the
    exact share with `target`.
    """
    _window(since, until)
    if not 0 <= target <= 1:
        raise LedgerError(f"target: {target!r} must be between 0 and 1")
    full = case((order_lines.c.filled == order_lines.c.requested, 1), else_=0)
    with _engine(source).connect() as conn:
        rows = conn.execute(
            select(
                order_lines.c.source,
                func.count(),
                func.sum(full),
                func.sum(order_lines.c.requested),
                func.sum(order_lines.c.filled),
            )
            .where(order_lines.c.ts >= since, order_lines.c.ts < until)
            .group_by(order_lines.c.source)
            .order_by(order_lines.c.source)
        ).all()
    by_source = tuple(
        ServiceLine(
            source=src,
            lines=int(n),
            full=int(f),
            short=int(n) - int(f),
            units_requested=int(req),
            units_filled=int(fil),
            share=_ratio(int(f), int(n), 4),
        )
        for src, n, f, req, fil in rows
    )
    lines = sum(s.lines for s in by_source)
    full_lines = sum(s.full for s in by_source)
    return ServiceLevelReport(
        since=since,
        until=until,
        target=target,
        lines=lines,
        full=full_lines,
        short=lines - full_lines,
        units_requested=sum(s.units_requested for s in by_source),
        units_filled=sum(s.units_filled for s in by_source),
        share=_ratio(full_lines, lines, 4) if lines else None,
        meets_target=(Decimal(full_lines) >= Decimal(str(target)) * lines) if lines else None,
        by_source=by_source,
    )


# ---------------------------------------------------------------------------- consumption


@dataclass(frozen=True)
class ConsumptionRow:
    month: str  # YYYY-MM in the report's time zone
    article: int
    gtin: str
    name: str
    atc: str
    unit: str
    quantity: int  # net of returns; can be negative if returns exceed use that month
    value: Decimal


@dataclass(frozen=True)
class ConsumptionReport:
    since: datetime
    until: datetime
    timezone: str
    rows: tuple[ConsumptionRow, ...]
    units: int
    value: Decimal


def _zone(name: str) -> tzinfo:
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


def _month_starts(since: datetime, until: datetime, zone: tzinfo) -> list[datetime]:
    """The starts of the calendar months (in `zone`) after `since` and before `until`."""
    local = since.astimezone(zone)
    year, month = local.year, local.month
    starts: list[datetime] = []
    while True:
        month += 1
        if month == 13:
            year, month = year + 1, 1
        start = datetime(year, month, 1, tzinfo=zone)
        if start >= until:
            return starts
        starts.append(start)


def consumption_by_month(
    source: Source, *, since: datetime, until: datetime, tz: str = "UTC"
) -> ConsumptionReport:
    """Net units consumed per article and calendar month, for national follow-up.

    Consumption = `consume` movements into CONSUMED minus `return` movements out of
    it, over [since, until). Months are calendar months in `tz` (UTC by default; the
    site's Europe/Stockholm puts a dose at 00:30 local on the 1st in the new month).
    Value uses today's unit price: the ledger keeps no price history. Articles with a
    net of zero in a month are left out.
    """
    _window(since, until)
    zone = _zone(tz)
    starts = _month_starts(since, until, zone)
    labels = [since.astimezone(zone).strftime("%Y-%m")] + [s.strftime("%Y-%m") for s in starts]
    if starts:
        bucket: Any = case(
            *((movements.c.ts < s, i) for i, s in enumerate(starts)), else_=len(starts)
        ).label("bucket")
        group: tuple[Any, ...] = (lots.c.product_id, bucket)
    else:  # one month: no CASE (and no GROUP BY on a constant, which PostgreSQL reads as
        bucket = literal_column("0").label("bucket")  # a column position)
        group = (lots.c.product_id,)
    with _engine(source).connect() as conn:
        prods = _load_products(conn)
        query = (
            select(lots.c.product_id, bucket, func.sum(_signed_quantity()))
            .join(lots, lots.c.id == movements.c.lot_id)
            .where(_net_consumption_filter(), movements.c.ts >= since, movements.c.ts < until)
            .group_by(*group)
        )
        result = conn.execute(query).all()
    rows = []
    exact = Decimal(0)
    for product_id, index, units in result:
        units = int(units or 0)
        if units == 0:
            continue
        p = prods[int(product_id)]
        exact += units * p.unit_price
        rows.append(
            ConsumptionRow(
                month=labels[int(index)],
                article=p.article,
                gtin=p.gtin,
                name=p.name,
                atc=p.atc,
                unit=p.unit,
                quantity=units,
                value=_money(units * p.unit_price),
            )
        )
    rows.sort(key=lambda r: (r.month, r.article))
    return ConsumptionReport(
        since=since,
        until=until,
        timezone=tz,
        rows=tuple(rows),
        units=sum(r.quantity for r in rows),
        value=_money(exact),
    )


def write_consumption_csv(rows: Iterable[ConsumptionRow], file: TextIO) -> int:
    """Writes the consumption export; returns the number of data rows.

    Format: UTF-8, `;` between fields (the Swedish spreadsheet convention, where `,` is
    the decimal comma), LF line ends, a header line, a decimal point in value_sek (two
    decimals) so that no locale is needed to read it back, and quotes only around a
    field that holds `;`, a quote or a line break. Open the file with newline="".
    """
    writer = csv.writer(file, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CONSUMPTION_CSV_HEADER)
    count = 0
    for r in rows:
        writer.writerow(
            [r.month, r.article, r.gtin, r.name, r.atc, r.unit, r.quantity, f"{r.value:.2f}"]
        )
        count += 1
    return count


# ---------------------------------------------------------------------------- order proposal


@dataclass(frozen=True)
class ProposalRow:
    gtin: str
    article: int
    name: str
    unit: str
    pack_size: int
    basis: Literal["90d", "30d"]
    mean_daily: float
    usable: int
    horizon_days: int  # target_days + lead_time_days
    target_units: int  # ceil(mean_daily x horizon_days), from the exact mean
    shortfall: int  # max(0, target_units - usable)
    packs: int  # ceil(shortfall / pack_size)
    order_units: int  # packs x pack_size
    value: Decimal
    on_order: int = 0  # units on open purchase orders, not yet delivered
    supplier: str | None = None  # the supplier's code; None: no supplier on file


@dataclass(frozen=True)
class OrderProposal:
    now: datetime
    target_days: int
    lead_time_days: int
    rows: tuple[ProposalRow, ...]
    packs: int
    value: Decimal


def order_proposal(
    source: Source, *, now: datetime, target_days: int = 30, lead_time_days: int = 2
) -> OrderProposal:
    """What to order so usable stock covers target_days after the delivery arrives.

    For each active product with consumption on its basis window (the same rule as
    `days_of_cover`), target = ceil(basis units x (target_days + lead time) / basis
    days); the shortfall against usable stock plus what is already on open purchase
    orders is rounded up to whole packs. The lead time is the product's supplier's,
    else `lead_time_days`.
    """
    with _engine(source).connect() as conn:
        return order_proposal_on(
            conn, now=now, target_days=target_days, lead_time_days=lead_time_days
        )


def order_proposal_on(
    conn: Connection, *, now: datetime, target_days: int = 30, lead_time_days: int = 2
) -> OrderProposal:
    """`order_proposal` on an open connection: purchasing computes it inside the
    transaction that writes the orders, so two buyers cannot both order the gap."""
    _require_aware("now", now)
    if target_days < 0 or lead_time_days < 0:
        raise LedgerError(
            f"target_days {target_days!r} and lead_time_days {lead_time_days!r} must be >= 0"
        )
    covers = _covers(conn, now)
    on_order = _on_order(conn)
    sources = _product_suppliers(conn)
    rows = []
    exact = Decimal(0)
    for c in covers:
        units = c.basis_units
        if units == 0:
            continue
        p = c.product
        supplier, lead = sources.get(p.id, (None, lead_time_days))
        horizon = target_days + lead
        target = _ceil_div(units * horizon, c.basis_days)
        ordered = on_order.get(p.id, 0)
        shortfall = max(0, target - c.usable - ordered)
        packs = _ceil_div(shortfall, p.pack_size)
        order_units = packs * p.pack_size
        exact += order_units * p.unit_price
        rows.append(
            ProposalRow(
                gtin=p.gtin,
                article=p.article,
                name=p.name,
                unit=p.unit,
                pack_size=p.pack_size,
                basis=c.basis,
                mean_daily=_ratio(units, c.basis_days, 3),
                usable=c.usable,
                horizon_days=horizon,
                target_units=target,
                shortfall=shortfall,
                packs=packs,
                order_units=order_units,
                value=_money(order_units * p.unit_price),
                on_order=ordered,
                supplier=supplier,
            )
        )
    return OrderProposal(
        now=now,
        target_days=target_days,
        lead_time_days=lead_time_days,
        rows=tuple(rows),
        packs=sum(r.packs for r in rows),
        value=_money(exact),
    )


def _on_order(conn: Connection) -> dict[int, int]:
    """Units still to come per product: open and back-ordered purchase order lines."""
    open_units = (
        purchase_order_lines.c.units
        - purchase_order_lines.c.received_units
        - purchase_order_lines.c.short_units
    )
    rows = conn.execute(
        select(purchase_order_lines.c.product_id, func.sum(open_units))
        .where(purchase_order_lines.c.status.in_(("open", "back_order")))
        .group_by(purchase_order_lines.c.product_id)
    )
    return {int(pid): int(units or 0) for pid, units in rows}


def _product_suppliers(conn: Connection) -> dict[int, tuple[str, int]]:
    """Each product's supplier code and lead time in days."""
    rows = conn.execute(
        select(supplier_products.c.product_id, suppliers.c.code, suppliers.c.lead_time_days).join(
            suppliers, suppliers.c.id == supplier_products.c.supplier_id
        )
    )
    return {int(pid): (code, int(lead)) for pid, code, lead in rows}


# ---------------------------------------------------------------------------- assortment import


@dataclass(frozen=True)
class ImportProblem:
    line: int  # physical line in the file; the header is line 1
    field: str
    value: str
    message: str


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class ImportChange:
    line: int
    gtin: str
    article: int
    action: Literal["insert", "update", "unchanged"]
    changes: tuple[FieldChange, ...]  # for an update: what changed, old and new


@dataclass(frozen=True)
class ImportReport:
    ok: bool  # no problems
    dry_run: bool
    written: bool  # the changes were committed
    actor: str
    rows: int
    inserted: int
    updated: int
    unchanged: int
    problems: tuple[ImportProblem, ...]
    changes: tuple[ImportChange, ...]


_UPDATABLE = (
    "name",
    "substance",
    "atc",
    "strength",
    "form",
    "unit",
    "pack_size",
    "unit_price",
    "category",
    "storage",
    "controlled_class",
    "substitution_group",
)
_MAX_LEN = {
    "name": 200,
    "substance": 200,
    "strength": 50,
    "form": 50,
    "unit": 20,
    "controlled_class": 10,
    "substitution_group": 50,
}
_REQUIRED = ("name", "form", "unit")
_REQUIRED_FOR_DRUGS = ("substance", "strength")
_OPTIONAL = ("controlled_class", "substitution_group")  # empty is stored as NULL


@dataclass
class _Row:
    line: int
    values: dict[str, Any]


def _parse_int(text: str, *, low: int, high: int) -> int | None:
    if not re.fullmatch(r"\d+", text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _parse_price(text: str) -> Decimal | None:
    """A price with up to 4 decimals; a decimal comma is accepted (0,28 = 0.28)."""
    if not re.fullmatch(r"\d{1,8}([.,]\d{1,4})?", text):
        return None
    try:
        return Decimal(text.replace(",", "."))
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        return None


def _check_row(line: int, raw: dict[str, str], problems: list[ImportProblem]) -> _Row:
    """Parses and checks one row's fields on their own; problems are appended."""

    def bad(field: str, message: str) -> None:
        problems.append(ImportProblem(line, field, raw[field], message))

    values: dict[str, Any] = {}
    try:
        values["gtin"] = valid_gtin(raw["gtin"])
    except ValueError as exc:
        bad("gtin", str(exc))
    article = _parse_int(raw["article"], low=1, high=2**31 - 1)
    if article is None:
        bad("article", "must be a whole number from 1 to 2147483647")
    else:
        values["article"] = article
    pack_size = _parse_int(raw["pack_size"], low=1, high=2**31 - 1)
    if pack_size is None:
        bad("pack_size", "must be a whole number above 0")
    else:
        values["pack_size"] = pack_size
    price = _parse_price(raw["unit_price"])
    if price is None:
        bad("unit_price", "must be a price in SEK >= 0 with at most 4 decimals")
    else:
        values["unit_price"] = price
    category = raw["category"]
    if category not in PRODUCT_CATEGORIES:
        bad("category", f"must be one of {', '.join(PRODUCT_CATEGORIES)}")
    values["category"] = category
    if raw["storage"] not in STORAGE:
        bad("storage", f"must be one of {', '.join(STORAGE)}")
    values["storage"] = raw["storage"]
    atc = raw["atc"]
    if category == "drug" and not atc:
        bad("atc", "a drug needs an ATC code")
    elif atc and not ATC_PATTERN.fullmatch(atc):
        bad("atc", "must be an ATC code of level 5: letter, 2 digits, 2 letters, 2 digits")
    values["atc"] = atc
    required = _REQUIRED + (_REQUIRED_FOR_DRUGS if category == "drug" else ())
    for field, limit in _MAX_LEN.items():
        text = raw[field]
        if len(text) > limit:
            bad(field, f"longer than {limit} characters")
        elif not text and field in required:
            bad(
                field, "must not be empty" + (" for a drug" if field in _REQUIRED_FOR_DRUGS else "")
            )
        values[field] = (text or None) if field in _OPTIONAL else text
    return _Row(line, values)


def _parse_assortment(text: str) -> tuple[list[_Row], list[ImportProblem]]:
    problems: list[ImportProblem] = []
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), delimiter=";")
    header = next(reader, None)
    if header is None:
        return [], [ImportProblem(1, "header", "", "the file is empty")]
    names = [h.strip().lower() for h in header]
    missing = [c for c in ASSORTMENT_COLUMNS if c not in names]
    unknown = [c for c in names if c not in ASSORTMENT_COLUMNS]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if missing or unknown or repeated:
        parts = [
            f"{label}: {', '.join(cols)}"
            for label, cols in (("missing", missing), ("unknown", unknown), ("repeated", repeated))
            if cols
        ]
        problems.append(ImportProblem(1, "header", ";".join(header), "; ".join(parts)))
        return [], problems
    rows: list[_Row] = []
    first_gtin: dict[str, int] = {}
    first_article: dict[int, int] = {}
    try:
        records = [(reader.line_num, record) for record in reader]
    except csv.Error as exc:  # a NUL byte, or a quote left open at the end
        return [], [ImportProblem(reader.line_num, "row", "", f"unreadable CSV: {exc}")]
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(names):
            problems.append(
                ImportProblem(
                    line, "row", ";".join(record), f"{len(record)} fields, expected {len(names)}"
                )
            )
            continue
        raw = {name: cell.strip() for name, cell in zip(names, record, strict=True)}
        row = _check_row(line, raw, problems)
        gtin = row.values.get("gtin")
        if gtin is not None:
            if gtin in first_gtin:
                problems.append(
                    ImportProblem(
                        line, "gtin", raw["gtin"], f"duplicate: also on line {first_gtin[gtin]}"
                    )
                )
            else:
                first_gtin[gtin] = line
        article = row.values.get("article")
        if article is not None:
            if article in first_article:
                problems.append(
                    ImportProblem(
                        line,
                        "article",
                        raw["article"],
                        f"duplicate: also on line {first_article[article]}",
                    )
                )
            else:
                first_article[article] = line
        rows.append(row)
    return rows, problems


def _shown(value: Any) -> str:
    return "" if value is None else str(value)


def _same(field: str, old: Any, new: Any) -> bool:
    if field == "unit_price":
        return Decimal(old) == Decimal(new)
    if field == "pack_size":
        return int(old) == int(new)
    return (old or None) == (new or None)


def import_assortment(
    source: Source,
    csv_text: str,
    *,
    actor: str,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Imports an assortment and price list: all rows are valid, or nothing is written.

    Every row is checked first (fields, duplicates within the file, article numbers
    held by another GTIN in the ledger, and an article number that differs from the
    one recorded for the GTIN). Then, in one transaction, new GTINs are inserted and
    known ones get their price and descriptive fields updated, each change written to
    the ledger's hash-chained audit trail (as `Ledger.add_product` does) in the same
    transaction. Products missing from the file are left as they are. `dry_run`
    checks and plans without writing. `now` stamps the audit rows (default: the
    Ledger's clock, or the current time).
    """
    rows, problems = _parse_assortment(csv_text)
    if now is None:
        now = source.clock() if isinstance(source, Ledger) else utcnow()
    _require_aware("now", now)
    try:
        with _engine(source).begin() as conn:
            by_gtin = _known_products(conn, rows, problems)
            if problems:
                problems.sort(key=lambda p: (p.line, _field_order(p.field)))
                return _import_report(rows, problems, [], actor, dry_run, written=False)
            changes, audit = _plan_import(rows, by_gtin)
            if not dry_run:
                _apply_import(conn, rows, by_gtin)
                write_audit(
                    conn, ts=now, actor=actor, action="product", reason="assortment import",
                    changes=audit,
                )  # fmt: skip
    except IntegrityError as exc:
        # A concurrent writer took a GTIN or article between our check and our write.
        raise LedgerError(f"assortment import refused by the database: {exc.orig}") from exc
    return _import_report(rows, [], changes, actor, dry_run, written=not dry_run)


def _known_products(
    conn: Connection, rows: Sequence[_Row], problems: list[ImportProblem]
) -> dict[str, Any]:
    """The ledger's products that the file names, by GTIN; conflicts go to `problems`."""
    gtins = [r.values["gtin"] for r in rows if "gtin" in r.values]
    articles = [r.values["article"] for r in rows if "article" in r.values]
    known = conn.execute(
        select(products).where(or_(products.c.gtin.in_(gtins), products.c.article.in_(articles)))
    ).all()
    by_gtin = {k.gtin: k for k in known}
    by_article = {int(k.article): k for k in known}
    for row in rows:
        gtin, article = row.values.get("gtin"), row.values.get("article")
        if article is None:
            continue
        owner = by_article.get(article)
        if owner is not None and gtin is not None and owner.gtin != gtin:
            message = f"article {article} belongs to GTIN {owner.gtin} in the ledger"
            problems.append(ImportProblem(row.line, "article", str(article), message))
        current = by_gtin.get(gtin) if gtin is not None else None
        if current is not None and int(current.article) != article:
            message = (
                f"GTIN {gtin} is recorded with article {current.article}; an import does not "
                "change an article number"
            )
            problems.append(ImportProblem(row.line, "article", str(article), message))
    return by_gtin


def _plan_import(
    rows: Sequence[_Row], by_gtin: dict[str, Any]
) -> tuple[list[ImportChange], list[Change]]:
    """What each row does, and the audit records for the rows that change something."""
    changes: list[ImportChange] = []
    audit: list[Change] = []
    for row in rows:
        v = row.values
        current = by_gtin.get(v["gtin"])
        if current is None:
            changes.append(ImportChange(row.line, v["gtin"], v["article"], "insert", ()))
            audit.append(Change("product", v["gtin"], None, v))
            continue
        diff = tuple(
            FieldChange(f, _shown(current._mapping[f]), _shown(v[f]))
            for f in _UPDATABLE
            if not _same(f, current._mapping[f], v[f])
        )
        action: Literal["update", "unchanged"] = "update" if diff else "unchanged"
        changes.append(ImportChange(row.line, v["gtin"], v["article"], action, diff))
        if diff:
            audit.append(Change("product", v["gtin"], {k: current._mapping[k] for k in v}, v))
    return changes, audit


def _apply_import(conn: Connection, rows: Sequence[_Row], by_gtin: dict[str, Any]) -> None:
    for row in rows:
        v = row.values
        current = by_gtin.get(v["gtin"])
        if current is None:
            conn.execute(insert(products).values(**v))
        elif any(not _same(f, current._mapping[f], v[f]) for f in _UPDATABLE):
            conn.execute(
                update(products)
                .where(products.c.id == current.id)
                .values({f: v[f] for f in _UPDATABLE})
            )


def _field_order(field: str) -> int:
    order = ("header", "row", *ASSORTMENT_COLUMNS)
    return order.index(field) if field in order else len(order)


def _import_report(
    rows: Sequence[_Row],
    problems: Sequence[ImportProblem],
    changes: Sequence[ImportChange],
    actor: str,
    dry_run: bool,
    *,
    written: bool,
) -> ImportReport:
    return ImportReport(
        ok=not problems,
        dry_run=dry_run,
        written=written,
        actor=actor,
        rows=len(rows),
        inserted=sum(1 for c in changes if c.action == "insert"),
        updated=sum(1 for c in changes if c.action == "update"),
        unchanged=sum(1 for c in changes if c.action == "unchanged"),
        problems=tuple(problems),
        changes=tuple(changes),
    )


# ---------------------------------------------------------------------------- output


def to_jsonable(value: Any) -> Any:
    """A report as plain JSON data: Decimal as a string (exact), dates in ISO 8601."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _sek(value: Decimal) -> str:
    return f"{value:,.2f}".replace(",", " ")


def _days(value: float | None) -> str:
    return "no consumption" if value is None else f"{value:.1f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f} %"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns; a column whose header ends in `>` is right-aligned (numbers)."""
    right = [h.endswith(">") for h in headers]
    titles = [h.rstrip(">") for h in headers]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(t)] + [len(r[i]) for r in cells]) for i, t in enumerate(titles)]

    def fmt(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(titles), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(r) for r in cells)
    return "\n".join(lines)


def _render_balances(r: BalanceReport) -> str:
    amounts = ["on hand>", "reserved>", "available>", "value SEK>"]
    body: list[list[Any]]
    if r.by == "location":
        head = ["location", "kind"]
        body = [[x.location, x.location_kind] for x in r.rows]
    elif r.by == "product":
        head = ["gtin", "article>", "name", "unit"]
        body = [[x.gtin, x.article, x.name, x.unit] for x in r.rows]
    else:
        head = ["gtin", "name", "batch", "expiry", "status"]
        body = [[x.gtin, x.name, x.batch, x.expiry, x.status] for x in r.rows]
    for cells, x in zip(body, r.rows, strict=True):
        cells.extend([x.on_hand, x.reserved, x.available, _sek(x.value)])
    total: list[Any] = [
        "total",
        *[""] * (len(head) - 1),
        r.on_hand,
        r.reserved,
        r.available,
        _sek(r.value),
    ]
    return table(head + amounts, [*body, total])


def _render_expiry(r: ExpiryReport) -> str:
    body = [
        [
            x.expiry,
            x.days_left,
            "EXPIRED" if x.expired else "",
            x.gtin,
            x.name,
            x.batch,
            x.status,
            x.location,
            x.quantity,
            _sek(x.value),
        ]
        for x in r.rows
    ]
    head = ["expiry", "days>", "flag", "gtin", "name", "batch", "status", "location", "units>"]
    out = table([*head, "value SEK>"], body)
    return (
        f"{out}\n\nexpiring by {r.today + timedelta(days=r.within_days)}: {r.units} units, "
        f"{_sek(r.value)} SEK; already expired: {r.expired_units} units, "
        f"{_sek(r.expired_value)} SEK"
    )


_CHANNEL_ORDER = ("pouches", "cabinets", "drug rooms", "other")


def _render_cover(r: CoverReport) -> str:
    body = []
    for x in r.rows:
        exempt = ""
        if x.exemption is not None:
            overdue = ", REVIEW OVERDUE" if x.exemption.review_overdue else ""
            exempt = f"exempt until review {x.exemption.review_date}{overdue}"
        body.append(
            [
                x.gtin,
                x.name,
                x.category,
                x.on_hand,
                x.usable,
                f"{x.mean_daily_30d:.3f}",
                f"{x.mean_daily_90d:.3f}",
                _days(x.cover_days_30d),
                _days(x.cover_days_90d),
                x.basis,
                x.status,
                "/".join(str(x.use_30d_by_channel.get(c, 0)) for c in _CHANNEL_ORDER),
                exempt,
            ]
        )
    head = ["gtin", "name", "category", "on hand>", "usable>", "per day 30d>", "per day 90d>"]
    head += ["cover 30d>", "cover 90d>", "basis", f"≥ {r.obligation_days} days"]
    head += ["30d pouches/cabinets/drug rooms/other>", "exemption"]
    return table(head, body)


def _render_compliance(r: ComplianceSummary) -> str:
    body = [
        [
            c.category,
            c.products,
            c.assessed,
            c.meeting,
            _pct(c.share),
            len(c.exempted),
            len(c.no_consumption),
        ]
        for c in r.categories
    ]
    body.append(["total", r.products, r.assessed, r.meeting, _pct(r.share), "", ""])
    head = ["category", "products>", "assessed>", f"≥ {r.obligation_days} d>", "share>"]
    out = [table([*head, "exempt>", "no consumption>"], body)]
    for c in r.categories:
        for e in c.exempted:
            overdue = " (REVIEW OVERDUE)" if e.review_overdue else ""
            out.append(
                f"exempt  {c.category}: {e.gtin} {e.name}: {e.reason}; review {e.review_date}"
                f"{overdue}"
            )
        for p in c.short:
            out.append(f"short   {c.category}: {p.gtin} {p.name}")
        for p in c.no_consumption:
            out.append(f"no use  {c.category}: {p.gtin} {p.name}")
    prep = r.preparedness
    out.append(
        f"\npreparedness stock: {prep.units} units, {_sek(prep.value)} SEK, "
        f"{len(prep.products)} products"
    )
    if prep.products:
        out.append(
            table(
                ["gtin", "name", "units>", "value SEK>"],
                [[p.gtin, p.name, p.units, _sek(p.value)] for p in prep.products],
            )
        )
    return "\n".join(out)


def _render_waste(r: WasteReport) -> str:
    by_reason = table(
        ["reason", "units>", "value SEK>"],
        [[x.reason_code, x.units, _sek(x.value)] for x in r.by_reason]
        + [["total", r.units, _sek(r.value)]],
    )
    by_product = table(
        ["gtin", "name", "units>", "value SEK>", "reasons"],
        [
            [
                x.gtin,
                x.name,
                x.units,
                _sek(x.value),
                ", ".join(f"{w.reason_code} {w.units}" for w in x.reasons),
            ]
            for x in r.by_product
        ],
    )
    return f"waste {r.since.isoformat()} .. {r.until.isoformat()}\n{by_reason}\n\n{by_product}"


def _render_service(r: ServiceLevelReport) -> str:
    body = [
        [s.source, s.lines, s.full, s.short, s.units_requested, s.units_filled, _pct(s.share)]
        for s in r.by_source
    ]
    body.append(
        ["total", r.lines, r.full, r.short, r.units_requested, r.units_filled, _pct(r.share)]
    )
    out = table(["source", "lines>", "full>", "short>", "requested>", "filled>", "share>"], body)
    verdict = (
        "no order lines" if r.meets_target is None else ("meets" if r.meets_target else "BELOW")
    )
    return f"{out}\n\ntarget {_pct(r.target)}: {verdict}"


def _render_consumption(r: ConsumptionReport) -> str:
    out = table(
        ["month", "article>", "gtin", "name", "atc", "units>", "unit", "value SEK>"],
        [
            [x.month, x.article, x.gtin, x.name, x.atc, x.quantity, x.unit, _sek(x.value)]
            for x in r.rows
        ],
    )
    return f"{out}\n\ntotal {r.units} units, {_sek(r.value)} SEK ({r.timezone} months)"


def _render_proposal(r: OrderProposal) -> str:
    body = [
        [
            x.gtin,
            x.name,
            x.basis,
            f"{x.mean_daily:.3f}",
            x.usable,
            x.target_units,
            x.shortfall,
            x.pack_size,
            x.packs,
            x.order_units,
            _sek(x.value),
        ]
        for x in r.rows
    ]
    head = ["gtin", "name", "basis", "per day>", "usable>", "target>", "shortfall>"]
    out = table([*head, "pack>", "packs>", "units>", "value SEK>"], body)
    return (
        f"{out}\n\n{r.target_days} + {r.lead_time_days} days: {r.packs} packs, {_sek(r.value)} SEK"
    )


def _render_import(r: ImportReport) -> str:
    out = []
    if r.problems:
        out.append(
            table(
                ["line>", "field", "value", "problem"],
                [[p.line, p.field, p.value, p.message] for p in r.problems],
            )
        )
        out.append(f"\n{len(r.problems)} problem(s) in {r.rows} rows: nothing was written")
        return "\n".join(out)
    for c in r.changes:
        if c.action == "update":
            what = ", ".join(f"{f.field} {f.old} -> {f.new}" for f in c.changes)
            out.append(f"update  line {c.line}: {c.gtin} article {c.article}: {what}")
        elif c.action == "insert":
            out.append(f"insert  line {c.line}: {c.gtin} article {c.article}")
    state = "dry run, nothing written" if r.dry_run else "written"
    out.append(
        f"{r.rows} rows: {r.inserted} inserted, {r.updated} updated, {r.unchanged} unchanged "
        f"({state})"
    )
    return "\n".join(out)


_RENDERERS: dict[type, Callable[[Any], str]] = {
    BalanceReport: _render_balances,
    ExpiryReport: _render_expiry,
    CoverReport: _render_cover,
    ComplianceSummary: _render_compliance,
    WasteReport: _render_waste,
    ServiceLevelReport: _render_service,
    ConsumptionReport: _render_consumption,
    OrderProposal: _render_proposal,
    ImportReport: _render_import,
}


def render_text(report: Any) -> str:
    """A report as readable text with aligned columns (what the CLI prints)."""
    return _RENDERERS[type(report)](report)
