"""Stock balance per product, location or lot."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection, select

from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.reports.common import _load_products, _load_stock, _money, _Stock
from controller.ledger.schema import locations
from controller.ledger.source import Source, engine_of

GroupBy = Literal["product", "location", "lot"]


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
    with engine_of(source).connect() as conn:
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
