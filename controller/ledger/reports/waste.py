"""Units and value wasted in a window, by reason code and product."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from controller.ledger.reports.common import _load_products, _money, _Product, _window
from controller.ledger.schema import locations, lots, movements
from controller.ledger.source import Source, engine_of

UNSPECIFIED_REASON = "unspecified"


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


def _kind_ids(kind: str) -> Any:
    return select(locations.c.id).where(locations.c.kind == kind).scalar_subquery()


def waste_report(source: Source, *, since: datetime, until: datetime) -> WasteReport:
    """Units and value that went to a waste location in [since, until), by reason code.

    A waste movement without a reason code is counted as `unspecified`, so gaps in
    the recording show instead of hiding in `other`.
    """
    _window(since, until)
    reason = func.coalesce(movements.c.reason_code, UNSPECIFIED_REASON)
    with engine_of(source).connect() as conn:
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
