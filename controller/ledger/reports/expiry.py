"""Stock expiring within a horizon, per lot and location."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from controller.ledger.errors import LedgerError
from controller.ledger.reports.common import _load_products, _load_stock, _money
from controller.ledger.source import Source, engine_of


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
    with engine_of(source).connect() as conn:
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
