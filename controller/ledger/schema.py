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
    Column("unit", String(20), nullable=False),
    Column("pack_size", Integer, nullable=False),
    Column("unit_price", Numeric(12, 4), nullable=False),
)

lots = Table(
    "lots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("batch", String(20), nullable=False),
    Column("expiry", Date, nullable=False),
    Column("status", String(20), nullable=False, server_default="released"),
    UniqueConstraint("product_id", "batch", name="uq_lot_product_batch"),
)

# kind: store, bin, canister, pocket, quarantine (internal: they keep balances)
#       supplier, consumed, waste (external: they only appear as a movement's source or sink)
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
    CheckConstraint("quantity > 0", name="ck_movement_quantity_positive"),
)
Index("ix_movements_key", movements.c.idempotency_key)
Index("ix_movements_lot_from", movements.c.lot_id, movements.c.from_location_id)
Index("ix_movements_lot_to", movements.c.lot_id, movements.c.to_location_id)

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

INTERNAL_KINDS = ("store", "bin", "canister", "pocket", "quarantine")
EXTERNAL_KINDS = ("supplier", "consumed", "waste")

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
