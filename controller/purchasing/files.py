"""The two files exchanged with a supplier (docs/purchasing.md).

- The order file, written by the pharmacy: one row per order line.
- The delivery file (the supplier's despatch advice), read at goods-in: one row per lot
  delivered against an order line, or a row that only announces a back order.

Both are UTF-8 CSV with `;` as the separator and a header row. Every bad row of a
delivery file is reported with its row number, field and value; none is booked.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from controller.purchasing.model import PurchaseOrder, PurchasingError

ORDER_COLUMNS = (
    "order",
    "order_date",
    "buyer",
    "supplier",
    "line",
    "gtin",
    "article",
    "name",
    "packs",
    "pack_size",
    "units",
    "unit_price",
    "delivery_date",
)
DELIVERY_REQUIRED = ("order", "line", "gtin", "quantity")
DELIVERY_OPTIONAL = ("batch", "expiry", "back_order", "unit_price", "location", "serials")
MAX_SERIAL = 20


def order_csv(order: PurchaseOrder, buyer: str) -> str:
    """The order file of one purchase order."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(ORDER_COLUMNS)
    for line in order.lines:
        writer.writerow(
            (
                order.number,
                order.created_at.date().isoformat(),
                buyer,
                order.supplier,
                line.line_no,
                line.gtin,
                line.article,
                line.name,
                line.packs,
                line.pack_size,
                line.units,
                f"{line.unit_price:.4f}",
                order.expected_on.isoformat(),
            )
        )
    return out.getvalue()


@dataclass(frozen=True)
class DeliveryRow:
    """One row of a delivery file. `quantity` is in dispensing units (whole packs);
    0 with a `back_order` announces that the line comes later."""

    row: int  # the row number in the file, header = 1
    order: str
    line: int
    gtin: str
    quantity: int
    batch: str = ""
    expiry: date | None = None
    back_order: int | None = None
    unit_price: Decimal | None = None
    location: str | None = None
    serials: tuple[str, ...] = ()


def parse_delivery_csv(text: str) -> list[DeliveryRow]:
    """Reads a delivery file; raises PurchasingError listing every bad row."""
    from controller.config import valid_gtin

    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), delimiter=";")
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in DELIVERY_REQUIRED if c not in header]
    if missing:
        raise PurchasingError([f"header: missing column(s) {', '.join(missing)} in {header}"])
    unknown = [c for c in header if c not in DELIVERY_REQUIRED + DELIVERY_OPTIONAL]
    if unknown:
        raise PurchasingError([f"header: unknown column(s) {', '.join(unknown)}"])
    rows: list[DeliveryRow] = []
    problems: list[str] = []
    for number, raw in enumerate(reader, start=2):
        cell = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(cell.values()):
            continue
        bad: list[str] = []

        def whole(
            field: str, value: str, *, optional: bool = False, bad: list[str] = bad
        ) -> int | None:
            n, problem = _whole(field, value, optional)
            if problem:
                bad.append(problem)
            return n

        order = cell.get("order", "")
        if not order:
            bad.append("order: missing")
        line = whole("line", cell.get("line", ""))
        if line == 0:
            bad.append("line: '0' is not a line number")
        gtin = cell.get("gtin", "")
        try:
            gtin = valid_gtin(gtin).zfill(14)
        except ValueError as exc:
            bad.append(f"gtin: {exc}")
        quantity = whole("quantity", cell.get("quantity", ""))
        back_order = whole("back_order", cell.get("back_order", ""), optional=True)
        batch = cell.get("batch", "")
        expiry: date | None = None
        if cell.get("expiry"):
            try:
                expiry = date.fromisoformat(cell["expiry"])
            except ValueError:
                bad.append(f"expiry: {cell['expiry']!r} is not a date (YYYY-MM-DD)")
        if quantity:
            if not batch:
                bad.append("batch: missing for a row that delivers stock")
            elif len(batch) > 20:
                bad.append(f"batch: {batch!r} is longer than 20 characters")
            if expiry is None and not cell.get("expiry"):
                bad.append("expiry: missing for a row that delivers stock")
        price: Decimal | None = None
        if cell.get("unit_price"):
            try:
                price = Decimal(cell["unit_price"].replace(",", "."))
            except InvalidOperation:
                bad.append(f"unit_price: {cell['unit_price']!r} is not a number")
            else:
                exponent = price.as_tuple().exponent
                if not price.is_finite() or price < 0 or int(exponent) < -4:
                    bad.append(f"unit_price: {cell['unit_price']!r} is not a price (4 decimals)")
                    price = None
        serials = tuple(cell.get("serials", "").split())
        for serial in serials:
            if len(serial) > MAX_SERIAL:
                bad.append(f"serials: {serial!r} is longer than {MAX_SERIAL} characters")
        if len(set(serials)) != len(serials):
            bad.append("serials: a serial number repeats")
        if bad:
            problems += [f"row {number}: {b}" for b in bad]
            continue
        assert line is not None and quantity is not None
        rows.append(
            DeliveryRow(
                row=number,
                order=order,
                line=line,
                gtin=gtin,
                quantity=quantity,
                batch=batch,
                expiry=expiry,
                back_order=back_order,
                unit_price=price,
                location=cell.get("location") or None,
                serials=serials,
            )
        )
    if problems:
        raise PurchasingError(problems)
    if not rows:
        raise PurchasingError(["the delivery file has no rows"])
    return rows


def _whole(field: str, value: str, optional: bool) -> tuple[int | None, str | None]:
    if optional and value == "":
        return None, None
    try:
        n = int(value)
    except ValueError:
        return None, f"{field}: {value!r} is not a whole number"
    if n < 0:
        return None, f"{field}: {value!r} is negative"
    return n, None


def delivery_csv(rows: list[DeliveryRow]) -> str:
    """Writes delivery rows back as a delivery file (tests, the demo's supplier)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(DELIVERY_REQUIRED + DELIVERY_OPTIONAL)
    for r in rows:
        writer.writerow(
            (
                r.order,
                r.line,
                r.gtin,
                r.quantity,
                r.batch,
                r.expiry.isoformat() if r.expiry else "",
                "" if r.back_order is None else r.back_order,
                "" if r.unit_price is None else f"{r.unit_price}",
                r.location or "",
                " ".join(r.serials),
            )
        )
    return out.getvalue()
