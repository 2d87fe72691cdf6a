"""The two files exchanged with a supplier (docs/purchasing.md).

- The order file, written by the pharmacy: one row per order line.
- The delivery file (the supplier's despatch advice), read at goods-in: one row per lot
  delivered against an order line, or a row that only announces a back order.

Both are UTF-8 CSV with `;` as the separator and a header row. The delivery file is
read by the ledger's one delivery-file reader (controller/ledger/delivery_csv.py): every
bad row is reported with its row number, field and value; none is booked.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from controller.ledger.delivery_csv import DeliveryCells, read_delivery_file
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
    """Reads a delivery file; raises PurchasingError listing every bad row. The file
    is read by the ledger's one delivery-file reader; the columns are this file's."""
    return read_delivery_file(
        text,
        required=DELIVERY_REQUIRED,
        optional=DELIVERY_OPTIONAL,
        row_label="row",
        read_row=_delivery_row,
        refuse=PurchasingError,
    )


def _delivery_row(cells: DeliveryCells) -> DeliveryRow | None:
    order = cells.text("order")
    if not order:
        cells.problem("order", "missing")
    line = cells.whole("line")
    if line == 0:
        cells.problem("line", "'0' is not a line number")
    gtin = cells.gtin()
    quantity = cells.whole("quantity")
    back_order = cells.whole("back_order", optional=True)
    expiry = cells.date("expiry")
    batch = cells.batch(required=bool(quantity))
    if quantity:
        cells.require("expiry")
    price = cells.unit_price()
    serials = tuple(cells.text("serials").split())
    for serial in serials:
        if len(serial) > MAX_SERIAL:
            cells.problem("serials", f"{serial!r} is longer than {MAX_SERIAL} characters")
    if len(set(serials)) != len(serials):
        cells.problem("serials", "a serial number repeats")
    if line is None or quantity is None or cells.problems:
        return None
    return DeliveryRow(
        row=cells.number,
        order=order,
        line=line,
        gtin=gtin,
        quantity=quantity,
        batch=batch,
        expiry=expiry,
        back_order=back_order,
        unit_price=price,
        location=cells.text("location") or None,
        serials=serials,
    )


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
