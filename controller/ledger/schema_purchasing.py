"""Tables of purchasing: suppliers, the purchase orders sent to them and the deliveries
matched against those orders (controller/purchasing). A delivery's rows are written in
the same transaction as its receive movements: stock booked in always has its delivery,
and the reverse."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    UniqueConstraint,
)

from controller.ledger.schema_base import UTCDateTime, check_in, metadata
from controller.ledger.states import (
    PurchaseLineStatus,
    PurchaseOrderStatus,
    values,
)

PURCHASE_ORDER_STATUSES = values(PurchaseOrderStatus)

# the meaning of each: controller.ledger.states.PurchaseLineStatus
ORDER_LINE_STATUSES = values(PurchaseLineStatus)

suppliers = Table(
    "suppliers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(20), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("lead_time_days", Integer, nullable=False),
    Column("active", Boolean, nullable=False, server_default="1"),
    CheckConstraint("lead_time_days >= 0", name="ck_suppliers_lead_time"),
)

# Which supplier a product is ordered from (one per product).
supplier_products = Table(
    "supplier_products",
    metadata,
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True),
    Column("supplier_id", Integer, ForeignKey("suppliers.id"), nullable=False),
)

purchase_orders = Table(
    "purchase_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(40), nullable=False, unique=True),
    Column("supplier_id", Integer, ForeignKey("suppliers.id"), nullable=False),
    Column("status", String(12), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(100), nullable=False),
    Column("expected_on", Date, nullable=False),
    Column("closed_at", UTCDateTime(), nullable=True),
    Column("note", String(300), nullable=True),
    CheckConstraint(check_in("status", PurchaseOrderStatus), name="ck_purchase_orders_status"),
)
Index("ix_purchase_orders_status", purchase_orders.c.status)

purchase_order_lines = Table(
    "purchase_order_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("purchase_orders.id"), nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("packs", Integer, nullable=False),
    Column("pack_size", Integer, nullable=False),
    Column("units", Integer, nullable=False),
    Column("unit_price", Numeric(12, 4), nullable=False),
    Column("received_units", Integer, nullable=False, server_default="0"),
    Column("back_order_units", Integer, nullable=False, server_default="0"),
    Column("short_units", Integer, nullable=False, server_default="0"),
    Column("status", String(12), nullable=False),
    UniqueConstraint("order_id", "line_no", name="uq_purchase_order_lines_line"),
    CheckConstraint("packs > 0 AND units = packs * pack_size", name="ck_po_lines_units"),
    CheckConstraint("received_units >= 0 AND received_units <= units", name="ck_po_lines_received"),
    CheckConstraint(check_in("status", PurchaseLineStatus), name="ck_po_lines_status"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("purchase_orders.id"), nullable=False),
    Column("note_number", String(40), nullable=False),  # the supplier's delivery note
    Column("received_at", UTCDateTime(), nullable=False),
    Column("received_by", String(100), nullable=False),
    UniqueConstraint("order_id", "note_number", name="uq_deliveries_note"),
)

delivery_lines = Table(
    "delivery_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("delivery_id", Integer, ForeignKey("deliveries.id"), nullable=False),
    Column("order_line_id", Integer, ForeignKey("purchase_order_lines.id"), nullable=False),
    # the product given: another product of the line's substitution group is a substitute
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("lot_id", Integer, ForeignKey("lots.id"), nullable=True),  # NULL: nothing came
    Column("units", Integer, nullable=False),
    Column("back_order_units", Integer, nullable=False, server_default="0"),
    Column("location_code", String(100), nullable=True),
    CheckConstraint("units >= 0 AND back_order_units >= 0", name="ck_delivery_lines_units"),
)
