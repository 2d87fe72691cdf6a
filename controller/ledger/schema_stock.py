"""Tables of the stock itself: products, lots, locations, the append-only movements and
the balances cached from them, reservations, idempotent commands, exemptions from the
one-month obligation, demand (order lines), device counter marks, and the holds and
discrepancies an operator resolves.

Movements are the truth and are only ever appended. `balances` caches the sum of
movements per (location, lot) and is updated in the same transaction as the movement
that changes it; `reserved` caches the open reservation lines on that row.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from controller.ledger.schema_base import UTCDateTime, check_in, metadata
from controller.ledger.states import (
    DiscrepancyStatus,
    HoldStatus,
    values,
)

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
    # devices and protective equipment: consumable or durable (only consumables count
    # in the one-month duty); drugs and special food are always consumable
    Column("durability", String(10), nullable=False, server_default="consumable"),
    CheckConstraint("durability IN ('consumable', 'durable')", name="ck_product_durability"),
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
    # the measures taken against the risk
    Column("measures", Text, nullable=False, server_default=""),
    # NULL: the product is out of the figures; N: its level is lowered to N days
    Column("level_days", Integer, nullable=True),
    Column("status", String(10), nullable=False, server_default="active"),
    Column("reviewed_at", UTCDateTime(), nullable=True),
    Column("reviewed_by", String(100), nullable=True),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("revoked_by", String(100), nullable=True),
    Column("revoke_reason", Text, nullable=True),
    CheckConstraint("level_days IS NULL OR level_days >= 0", name="ck_exemption_level"),
    CheckConstraint("status IN ('active', 'revoked')", name="ck_exemption_status"),
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

HOLD_STATUSES = values(HoldStatus)
DISCREPANCY_STATUSES = values(DiscrepancyStatus)

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
    CheckConstraint(check_in("status", HoldStatus), name="ck_stock_hold_status"),
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
    CheckConstraint(check_in("status", DiscrepancyStatus), name="ck_stock_discrepancy_status"),
)
Index("ix_stock_discrepancies_status", stock_discrepancies.c.status)
