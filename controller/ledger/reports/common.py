"""What the reports share: the windows of consumption, the rounding rules, the time
window check, and the loaders of products and stock (what a report reads is a
controller.ledger.source.Source)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection, and_, case, or_, select

from controller.ledger.errors import LedgerError
from controller.ledger.schema import balances as balances_table
from controller.ledger.schema import locations, lots, movements, products
from controller.ledger.source import require_aware

SHORT_WINDOW_DAYS = 30
LONG_WINDOW_DAYS = 90
_CENT = Decimal("0.01")


def _money(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _ratio(num: int | Decimal, den: int | Decimal, places: int) -> float:
    """num / den rounded half up: exact decimal arithmetic, a float only at the end."""
    exact = Decimal(num) / Decimal(den)
    return float(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _ceil_div(num: int, den: int) -> int:
    return -(-num // den)


def _window(since: datetime, until: datetime) -> None:
    require_aware("since", since)
    require_aware("until", until)
    if until <= since:
        raise LedgerError(f"until: {until.isoformat()} must be after since {since.isoformat()}")


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


def _net_consumption_filter() -> Any:
    """`consume` into a consumed location, or `return` out of one."""
    consumed = select(locations.c.id).where(locations.c.kind == "consumed")
    return or_(
        and_(movements.c.kind == "consume", movements.c.to_location_id.in_(consumed)),
        and_(movements.c.kind == "return", movements.c.from_location_id.in_(consumed)),
    )


def _signed_quantity() -> Any:
    return case((movements.c.kind == "return", -movements.c.quantity), else_=movements.c.quantity)
