"""Tables of pocket refills and the pick lists that gather them, persisted so that a
restarted controller carries on with the refills it had promised."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from controller.ledger.schema_base import UTCDateTime, metadata

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
