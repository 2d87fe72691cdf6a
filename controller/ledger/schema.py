"""Tables of the ledger (SQLAlchemy Core, portable between SQLite and PostgreSQL).

Movements are the truth and are only ever appended. `balances` caches the sum of
movements per (location, lot) and is updated in the same transaction as the movement
that changes it; `reserved` caches the open reservation lines on that row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores UTC only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("gtin", String(14), nullable=False, unique=True),
    Column("article", Integer, nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("substance", String(200), nullable=False),
    Column("atc", String(10), nullable=False),
    Column("strength", String(50), nullable=False),
    Column("form", String(50), nullable=False),
    Column("unit", String(20), nullable=False),  # the dispensing unit: tablet, capsule, ...
    Column("pack_size", Integer, nullable=False),
    Column("unit_price", Numeric(12, 4), nullable=False),
    Column("category", String(30), nullable=False, server_default="drug"),
    Column("storage", String(10), nullable=False, server_default="room"),
    Column("controlled_class", String(10), nullable=True),
    Column("substitution_group", String(50), nullable=True),
    Column("active", Integer, nullable=False, server_default="1"),
)

lots = Table(
    "lots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("batch", String(20), nullable=False),
    Column("expiry", Date, nullable=False),
    Column("status", String(20), nullable=False, server_default="released"),
    # SEK per dispensing unit as bought; set when the lot is first received, NULL when
    # the delivery gave none (ward debiting then uses products.unit_price).
    Column("purchase_price", Numeric(12, 4), nullable=True),
    UniqueConstraint("product_id", "batch", name="uq_lot_product_batch"),
)

# kind: site, store, bin, preparedness, canister, drawer, pocket, quarantine (internal:
#       they keep balances); supplier, consumed, waste, adjustment (external: they only
#       appear as a movement's source or sink)
locations = Table(
    "locations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(100), nullable=False, unique=True),
    Column("kind", String(20), nullable=False),
    Column("parent_id", Integer, ForeignKey("locations.id"), nullable=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=True),
)

movements = Table(
    "movements",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("lot_id", Integer, ForeignKey("lots.id"), nullable=False),
    Column("from_location_id", Integer, ForeignKey("locations.id"), nullable=False),
    Column("to_location_id", Integer, ForeignKey("locations.id"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("reservation_id", Integer, ForeignKey("reservations.id"), nullable=True),
    Column("idempotency_key", String(200), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("reason", String(200), nullable=False),
    # waste: expired, damaged, packing_reject, returned, recalled, temperature, other
    Column("reason_code", String(30), nullable=True),
    # generic substitution: the product that was ordered when another one was given
    Column("substituted_for", Integer, ForeignKey("products.id"), nullable=True),
    CheckConstraint("quantity > 0", name="ck_movement_quantity_positive"),
)
Index("ix_movements_key", movements.c.idempotency_key)
Index("ix_movements_lot_from", movements.c.lot_id, movements.c.from_location_id)
Index("ix_movements_lot_to", movements.c.lot_id, movements.c.to_location_id)
Index("ix_movements_ts", movements.c.ts)  # reports read windows of time

balances = Table(
    "balances",
    metadata,
    Column("location_id", Integer, ForeignKey("locations.id"), primary_key=True),
    Column("lot_id", Integer, ForeignKey("lots.id"), primary_key=True),
    Column("on_hand", Integer, nullable=False, server_default="0"),
    Column("reserved", Integer, nullable=False, server_default="0"),
    CheckConstraint("on_hand >= 0", name="ck_balance_on_hand"),
    CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="ck_balance_reserved"),
)

# status: open, posted, voided, expired
reservations = Table(
    "reservations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("purpose", String(200), nullable=False),
    Column("status", String(10), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("actor", String(100), nullable=False),
    # JSON list of the location codes it may allocate from (used to re-allocate)
    Column("locations", Text, nullable=False, server_default="[]"),
)
Index("ix_reservations_status_expires", reservations.c.status, reservations.c.expires_at)

reservation_lines = Table(
    "reservation_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("reservation_id", Integer, ForeignKey("reservations.id"), nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("location_id", Integer, ForeignKey("locations.id"), nullable=False),
    Column("lot_id", Integer, ForeignKey("lots.id"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("posted", Integer, nullable=False, server_default="0"),
    # set when this line gives another product of the same substitution group
    Column("substituted_for", Integer, ForeignKey("products.id"), nullable=True),
    CheckConstraint("quantity > 0", name="ck_line_quantity_positive"),
    CheckConstraint("posted >= 0 AND posted <= quantity", name="ck_line_posted"),
)
Index("ix_reservation_lines_res", reservation_lines.c.reservation_id)

# Results of idempotent commands: a retried command with the same key returns the
# stored result instead of acting again.
commands = Table(
    "commands",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("kind", String(30), nullable=False),
    Column("result", Text, nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
)

# A product exempted from the one-month stock obligation: the special reason and the
# risk assessment are recorded, and the exemption is reviewed by a date.
exemptions = Table(
    "exemptions",
    metadata,
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("risk_assessment", Text, nullable=False),
    Column("review_date", Date, nullable=False),
    Column("decided_by", String(100), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
)

# Demand as it was asked of the stock: one line per product of a reservation request
# (a packing job, a pocket refill), with what could be given from stock at once.
order_lines = Table(
    "order_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("requested", Integer, nullable=False),
    Column("filled", Integer, nullable=False),
    Column("source", String(50), nullable=False),
    CheckConstraint(
        "requested > 0 AND filled >= 0 AND filled <= requested", name="ck_order_line_quantities"
    ),
)

# The audit trail: one row per change, hash-chained. `hash` covers the row's content
# and the previous row's hash, so an altered, inserted or deleted row breaks the chain
# from that point on. `audit_head` holds the last sequence number and hash; writers
# lock it, which puts every change of every controller in one order.
audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("ts", UTCDateTime(), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(30), nullable=False),
    Column("entity", String(30), nullable=False),
    Column("entity_key", String(200), nullable=False),
    Column("reason", String(200), nullable=False),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_entity", audit_log.c.entity, audit_log.c.entity_key)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

INTERNAL_KINDS = (
    "site",
    "hospital",
    "ward",
    "drugroom",  # a ward's drug room (shelves): ward stock
    "transit",  # picked and dispatched, not yet received on the ward
    "store",
    "bin",
    "packer",
    "cabinet",
    "preparedness",
    "canister",
    "drawer",
    "pocket",
    "quarantine",
)
EXTERNAL_KINDS = ("supplier", "consumed", "waste", "adjustment")
PRODUCT_CATEGORIES = ("drug", "medical_device", "special_food", "protective_equipment")
STORAGE = ("room", "cold", "frozen")
WASTE_REASONS = (
    "expired",
    "damaged",
    "packing_reject",
    "returned",
    "recalled",
    "temperature",
    "other",
)

# The last value of a device's monotonic counter (a pocket's withdrawals) that has been
# booked. It is written in the same transaction as the movements it accounts for, so a
# crash can neither lose a withdrawal nor book it twice.
counter_marks = Table(
    "counter_marks",
    metadata,
    Column("device", String(100), primary_key=True),
    Column("counter", String(100), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# ---------------------------------------------------------------- dose packing
# Orders, jobs and canister fills live beside the ledger, in the same database, so a
# job's state, its reservation and its movements can never disagree after a crash.

ORDER_STATUSES = ("pending", "approved", "rejected")
JOB_STATES = (
    "planned",
    "reserved",
    "loaded",
    "packing",
    "held",
    "completed",
    "partial",
    "failed",
    "cancelled",
    "manual",
)

# One dose order as received. `content_key` is a hash of what the order asks for (patient
# pseudonym, ward, product, dose, times, period): the same order received twice is one
# order, never a double dose.
dose_orders = Table(
    "dose_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("content_key", String(64), nullable=False, unique=True),
    Column("source", String(20), nullable=False),
    Column("patient", String(20), nullable=False),
    Column("ward", String(32), nullable=False),
    Column("gtin", String(14), nullable=False),
    Column("units", Integer, nullable=False),
    Column("times", String(200), nullable=False),
    Column("start_day", Date, nullable=False),
    Column("end_day", Date, nullable=False),
    Column("status", String(10), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("received_by", String(100), nullable=False),
    Column("reviewed_by", String(100), nullable=True),
    Column("reviewed_at", UTCDateTime(), nullable=True),
    Column("review_note", Text, nullable=True),
    CheckConstraint("status IN ('pending', 'approved', 'rejected')", name="ck_dose_order_status"),
    CheckConstraint("units > 0", name="ck_dose_order_units"),
)

# A packing job and everything recovery needs: the pouch list (`spec`, JSON), the
# packer, the attempt (part of the reservation key) and the canisters' dispensed
# totals when the machine took the job (`baseline`, JSON), from which its pouches are
# booked even if the controller died in between.
packing_jobs = Table(
    "packing_jobs",
    metadata,
    Column("job_id", String(100), primary_key=True),
    Column("day", Date, nullable=False),
    Column("ward", String(32), nullable=False),
    Column("slot", String(5), nullable=False),
    Column("state", String(10), nullable=False),
    Column("packer", String(64), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("baseline", Text, nullable=True),
    Column("good", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
Index("ix_packing_jobs_state", packing_jobs.c.state)

# Which order's dose at which day and time went into which job: planning again never
# plans a dose twice.
planned_doses = Table(
    "planned_doses",
    metadata,
    Column("order_id", Integer, ForeignKey("dose_orders.id"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("slot", String(5), primary_key=True),
    Column("job_id", String(100), ForeignKey("packing_jobs.job_id"), nullable=False),
)

# A canister refill sent to a machine: written before the machine is told, with the
# canister's refilled total at that moment, so after a crash the machine's counter says
# whether the refill happened (post it) or not (void it).
canister_fills = Table(
    "canister_fills",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("packer", String(64), nullable=False),
    Column("canister", Integer, nullable=False),
    Column("gtin", String(14), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("refilled_before", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # The one lot the canister is filled from, and the canister's count and dispensed
    # total before the refill: with them recovery can tell whether a refill arrived on
    # a machine that reports no refilled total (count + dispensed - before = refilled).
    Column("batch", String(20)),
    Column("count_before", BigInteger),
    Column("dispensed_before", BigInteger),
    # The scan station whose GS1 scan confirmed the pack at the canister.
    Column("confirmed_by", String(64)),
)

# ---------------------------------------------------------------- holds and discrepancies

HOLD_STATUSES = ("held", "released", "wasted")
DISCREPANCY_STATUSES = ("open", "resolved")

# Stock quarantined at one location (a cold cabinet after a temperature excursion): the
# same lot elsewhere stays usable, unlike a lot's status, which blocks it everywhere.
# While a (location, lot) has a 'held' row it is never reserved, transferred or counted
# as available; consumption booked there (a fact from the cabinet) still goes through.
# `quantity` is what was on hand when it was held; `waste_key` names the waste movement
# that resolved a wasted hold.
stock_holds = Table(
    "stock_holds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("location_id", Integer, ForeignKey("locations.id"), nullable=False),
    Column("lot_id", Integer, ForeignKey("lots.id"), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("reason", String(300), nullable=False),
    Column("raised_at", UTCDateTime(), nullable=False),
    Column("raised_by", String(100), nullable=False),
    Column("status", String(10), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("resolved_by", String(100), nullable=True),
    Column("resolution_note", String(300), nullable=True),
    Column("waste_key", String(200), nullable=True),
    CheckConstraint("status IN ('held', 'released', 'wasted')", name="ck_stock_hold_status"),
    CheckConstraint("quantity >= 0", name="ck_stock_hold_quantity"),
)
# At most one open hold per (location, lot), whoever raises it.
Index(
    "ux_stock_holds_open",
    stock_holds.c.location_id,
    stock_holds.c.lot_id,
    unique=True,
    sqlite_where=stock_holds.c.status == "held",
    postgresql_where=stock_holds.c.status == "held",
)

# A device (or a count) that disagrees with the ledger, kept until an operator has looked
# at it: the ledger books what it can prove, the difference is shown, never silently
# absorbed.
stock_discrepancies = Table(
    "stock_discrepancies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("location_id", Integer, ForeignKey("locations.id"), nullable=False),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("source", String(20), nullable=False),
    Column("device_value", Integer, nullable=False),
    Column("ledger_value", Integer, nullable=False),
    Column("difference", Integer, nullable=False),  # device - ledger
    Column("detail", String(300), nullable=False),
    Column("raised_at", UTCDateTime(), nullable=False),
    Column("raised_by", String(100), nullable=False),
    Column("status", String(10), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("resolved_by", String(100), nullable=True),
    Column("resolution_note", String(300), nullable=True),
    CheckConstraint("status IN ('open', 'resolved')", name="ck_stock_discrepancy_status"),
)
Index("ix_stock_discrepancies_status", stock_discrepancies.c.status)

# ---------------------------------------------------------------- pocket refills
# Refills of cabinet pockets and the pick lists that gather them, persisted so that a
# restarted controller carries on with the refills it had promised.

pick_lists = Table(
    "pick_lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("list_id", String(60), nullable=False, unique=True),
    Column("cabinet", String(40), nullable=False),
    Column("urgent", Boolean, nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("status", String(12), nullable=False),  # open, done, cancelled
    Column("closed_at", UTCDateTime(), nullable=True),
)

pocket_refills = Table(
    "pocket_refills",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("refill_id", String(80), nullable=False, unique=True),
    Column("cabinet", String(40), nullable=False),
    Column("pocket", Integer, nullable=False),
    Column("gtin", String(14), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("urgent", Boolean, nullable=False),
    Column("state", String(12), nullable=False),
    Column("pick_list", String(60), nullable=True),
    Column("reservation_key", String(200), nullable=False),
    # JSON list of the indexes of the reservation's lines already scanned at the cabinet
    Column("scanned", Text, nullable=False, server_default="[]"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("confirmed_at", UTCDateTime(), nullable=True),
    Column("confirmed_by", String(100), nullable=True),
    # the mailbox sequence the cabinet is told the refill with (sent again after a
    # restart, the cabinet acts on it once)
    Column("command_sequence", Integer, nullable=True),
    Column("cancel_reason", String(300), nullable=True),
)
Index(
    "ix_pocket_refills_cabinet_pocket_state",
    pocket_refills.c.cabinet,
    pocket_refills.c.pocket,
    pocket_refills.c.state,
)

# ---------------------------------------------------------------- pack verification
# EU falsified-medicines verification of serialised packs (docs/verification.md): each
# pack seen by its unique identifier, the requests owed to the national system, and the
# alerts a pharmacist must follow up.

packs = Table(
    "packs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("gtin", String(14), nullable=False),
    Column("serial", String(20), nullable=False),
    Column("batch", String(20), nullable=False),
    Column("expiry", Date, nullable=False),
    Column("status", String(16), nullable=False),
    Column("location_code", String(100), nullable=True),
    Column("alert_code", String(40), nullable=True),
    Column("alert_text", String(300), nullable=True),
    Column("verified_at", UTCDateTime(), nullable=True),
    Column("decommissioned_at", UTCDateTime(), nullable=True),
    Column("decommission_reason", String(20), nullable=True),
    UniqueConstraint("gtin", "serial", name="uq_packs_gtin_serial"),
    CheckConstraint("status IN ('verified', 'blocked', 'decommissioned')", name="ck_packs_status"),
)

verification_queue = Table(
    "verification_queue",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("gtin", String(14), nullable=False),
    Column("serial", String(20), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("reason", String(20), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", String(300), nullable=True),
    Column("status", String(10), nullable=False),
    Column("done_at", UTCDateTime(), nullable=True),
    CheckConstraint(
        "operation IN ('verify', 'decommission', 'undo')", name="ck_verification_queue_operation"
    ),
    CheckConstraint("status IN ('pending', 'done', 'failed')", name="ck_verification_queue_status"),
)
Index("ix_verification_queue_status", verification_queue.c.status)

verification_alerts = Table(
    "verification_alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("gtin", String(14), nullable=False),
    Column("serial", String(20), nullable=False),
    Column("code", String(40), nullable=False),
    Column("message", String(300), nullable=False),
    Column("raised_at", UTCDateTime(), nullable=False),
    Column("status", String(10), nullable=False),
    Column("closed_by", String(100), nullable=True),
    Column("note", String(300), nullable=True),
    CheckConstraint("status IN ('open', 'closed')", name="ck_verification_alerts_status"),
)
Index("ix_verification_alerts_status", verification_alerts.c.status)

# ---------------------------------------------------------------- purchasing
# Suppliers, the purchase orders sent to them and the deliveries matched against those
# orders (controller/purchasing). A delivery's rows are written in the same transaction
# as its receive movements: stock booked in always has its delivery, and the reverse.

PURCHASE_ORDER_STATUSES = ("open", "partial", "complete", "cancelled")
# open: nothing delivered or said yet; back_order: partly delivered, the rest promised;
# delivered: in full (substitutes count); short: the supplier cannot deliver the rest;
# cancelled: closed by the pharmacy before it was delivered in full
ORDER_LINE_STATUSES = ("open", "back_order", "delivered", "short", "cancelled")

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
    CheckConstraint(
        "status IN ('open', 'partial', 'complete', 'cancelled')",
        name="ck_purchase_orders_status",
    ),
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
    CheckConstraint(
        "status IN ('open', 'back_order', 'delivered', 'short', 'cancelled')",
        name="ck_po_lines_status",
    ),
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


# Ward supply's tables live in their own module, on this MetaData.
from controller.ledger import schema_wardsupply  # noqa: E402, F401
