"""Tables of EU falsified-medicines verification of serialised packs
(docs/verification.md): each pack seen by its unique identifier, the requests owed to
the national system, and the alerts a pharmacist must follow up."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Date,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from controller.ledger.schema_base import UTCDateTime, check_in, metadata
from controller.ledger.states import (
    AlertStatus,
    PackStatus,
    VerificationOperation,
    VerificationRequestStatus,
)

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
    CheckConstraint(check_in("status", PackStatus), name="ck_packs_status"),
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
        check_in("operation", VerificationOperation), name="ck_verification_queue_operation"
    ),
    CheckConstraint(
        check_in("status", VerificationRequestStatus), name="ck_verification_queue_status"
    ),
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
    CheckConstraint(check_in("status", AlertStatus), name="ck_verification_alerts_status"),
)
Index("ix_verification_alerts_status", verification_alerts.c.status)
