"""The order proposal: what to order so usable stock lasts past the next delivery."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sqlalchemy import Connection, func, select

from controller.ledger.errors import LedgerError
from controller.ledger.reports.common import _ceil_div, _money, _ratio
from controller.ledger.reports.cover import _covers
from controller.ledger.schema import purchase_order_lines, supplier_products, suppliers
from controller.ledger.source import Source, engine_of, require_aware
from controller.ledger.states import EXPECTED_LINE_STATUSES


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
    with engine_of(source).connect() as conn:
        return order_proposal_on(
            conn, now=now, target_days=target_days, lead_time_days=lead_time_days
        )


def order_proposal_on(
    conn: Connection, *, now: datetime, target_days: int = 30, lead_time_days: int = 2
) -> OrderProposal:
    """`order_proposal` on an open connection: purchasing computes it inside the
    transaction that writes the orders, so two buyers cannot both order the gap."""
    require_aware("now", now)
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
        .where(purchase_order_lines.c.status.in_(EXPECTED_LINE_STATUSES))
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
