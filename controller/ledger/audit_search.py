"""Searching the audit trail for the console: rows that mention a product, a lot or a
location (in their key, reason, old or new value), by a user, within a time window.
Newest first, at most `limit` rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select

from controller.ledger.schema import audit_log


@dataclass(frozen=True)
class AuditRow:
    seq: int
    ts: datetime
    actor: str
    action: str
    entity: str
    key: str
    reason: str | None
    old: Any
    new: Any


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def search_audit(
    engine: Engine,
    *,
    text_terms: Sequence[str] = (),
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
) -> list[AuditRow]:
    """Every term must appear somewhere in the row (AND); `until` is exclusive."""
    query = select(audit_log)
    for term in text_terms:
        pattern = _like(term)
        query = query.where(
            or_(
                audit_log.c.entity_key.like(pattern, escape="\\"),
                audit_log.c.reason.like(pattern, escape="\\"),
                audit_log.c.new_value.like(pattern, escape="\\"),
                audit_log.c.old_value.like(pattern, escape="\\"),
            )
        )
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if since is not None:
        query = query.where(audit_log.c.ts >= since)
    if until is not None:
        query = query.where(audit_log.c.ts < until)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit))
        return [
            AuditRow(
                r.seq,
                r.ts,
                r.actor,
                r.action,
                r.entity,
                r.entity_key,
                r.reason,
                _value(r.old_value),
                _value(r.new_value),
            )
            for r in rows
        ]
