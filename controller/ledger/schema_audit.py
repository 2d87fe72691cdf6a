"""Tables of the hash-chained audit trail."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from controller.ledger.schema_base import UTCDateTime, metadata

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
