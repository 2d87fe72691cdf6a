"""Matching a delivery against its purchase order, before anything is booked.

Rules (docs/purchasing.md):
- every row names this order and one of its lines that is still open or back-ordered;
- the product is the one ordered or another of its substitution group (a substitute);
- quantities are whole packs, and a line never receives more than is still open;
- what is still open after the delivery is back-ordered as far as a row of the line
  says `back_order`, and short (the supplier will not deliver it) for the rest;
- lines the delivery does not mention are left as they were.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date

from controller.purchasing.files import DeliveryRow
from controller.purchasing.model import OrderLine, PurchaseOrder, PurchasingError, line_status


@dataclass(frozen=True)
class ProductInfo:
    gtin: str
    name: str
    pack_size: int
    group: str | None


@dataclass(frozen=True)
class LinePlan:
    """One order line's change: the rows delivered against it and its new quantities."""

    line: OrderLine
    rows: tuple[DeliveryRow, ...]
    delivered: int
    substituted: int
    received: int
    back_order: int
    short: int
    short_now: int
    status: str


def match_delivery(
    order: PurchaseOrder,
    rows: list[DeliveryRow],
    catalogue: dict[str, ProductInfo],
    *,
    today: date,
) -> list[LinePlan]:
    """The change each mentioned line undergoes; raises PurchasingError naming every
    bad row and field."""
    problems: list[str] = []
    by_no = {ln.line_no: ln for ln in order.lines}
    grouped: dict[int, list[DeliveryRow]] = defaultdict(list)
    for r in rows:
        bad = _row_problems(order, r, by_no, catalogue, today)
        if bad:
            problems += [f"row {r.row}: {b}" for b in bad]
        else:
            grouped[r.line].append(r)
    if order.status == "cancelled":
        problems.insert(0, f"order: {order.number} is cancelled")
    plans: list[LinePlan] = []
    for line_no in sorted(grouped):
        line = by_no[line_no]
        line_rows = grouped[line_no]
        delivered = sum(r.quantity for r in line_rows)
        substituted = sum(r.quantity for r in line_rows if r.gtin != line.gtin)
        still_open = line.units - line.received_units - line.short_units
        if delivered > still_open:
            problems.append(
                f"line {line_no}: {delivered} units delivered but only {still_open} open "
                f"(ordered {line.units}, received {line.received_units} before)"
            )
            continue
        promised = {r.back_order for r in line_rows if r.back_order is not None}
        if len(promised) > 1:
            problems.append(
                f"line {line_no}: back_order: rows give different values {sorted(promised)}"
            )
            continue
        after = still_open - delivered
        back = promised.pop() if promised else 0
        if back > after:
            problems.append(
                f"line {line_no}: back_order: {back} is more than the {after} units "
                "still open after this delivery"
            )
            continue
        short_now = after - back
        received = line.received_units + delivered
        short = line.short_units + short_now
        plans.append(
            LinePlan(
                line=line,
                rows=tuple(line_rows),
                delivered=delivered,
                substituted=substituted,
                received=received,
                back_order=back,
                short=short,
                short_now=short_now,
                status=line_status(line.units, received, back, short),
            )
        )
    if problems:
        raise PurchasingError(problems)
    return plans


def _row_problems(
    order: PurchaseOrder,
    r: DeliveryRow,
    by_no: dict[int, OrderLine],
    catalogue: dict[str, ProductInfo],
    today: date,
) -> list[str]:
    if r.order != order.number:
        return [f"order: {r.order!r} is not this delivery's order {order.number}"]
    line = by_no.get(r.line)
    if line is None:
        return [f"line: {r.line} is not a line of {order.number} (1-{len(by_no)})"]
    if line.status not in ("open", "back_order"):
        return [f"line: {r.line} is {line.status} already"]
    given = catalogue.get(r.gtin)
    if given is None:
        return [f"gtin: {r.gtin!r} is not in the catalogue"]
    if r.gtin != line.gtin:
        ordered = catalogue.get(line.gtin)
        group = ordered.group if ordered else None
        if group is None or given.group != group:
            return [
                f"gtin: {r.gtin!r} is neither {line.gtin} ordered on line {r.line} "
                f"nor a product of its substitution group ({group or 'none'})"
            ]
    bad: list[str] = []
    if r.quantity % given.pack_size:
        bad.append(f"quantity: {r.quantity} is not a whole number of packs of {given.pack_size}")
    elif r.serials and len(r.serials) != r.quantity // given.pack_size:
        bad.append(
            f"serials: {len(r.serials)} serial numbers for {r.quantity // given.pack_size} packs"
        )
    if r.quantity and r.expiry is not None and r.expiry < today:
        bad.append(f"expiry: {r.expiry} has passed: the lot cannot be received")
    return bad
