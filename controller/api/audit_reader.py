"""Reads the hash-chained audit trail (controller.ledger.audit writes it)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from controller.api.models import AuditEntry
from controller.ledger.schema import audit_log


def _value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # never written by the ledger; shown as stored


def read_audit(
    engine: Engine,
    *,
    entity: str | None = None,
    key: str | None = None,
    since: datetime | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Audit rows in chain order. With `since` (a time) or `after` (a sequence number)
    the first `limit` rows from there; without either, the latest `limit` rows."""
    query = select(audit_log)
    if entity is not None:
        query = query.where(audit_log.c.entity == entity)
    if key is not None:
        query = query.where(audit_log.c.entity_key == key)
    if since is not None:
        query = query.where(audit_log.c.ts >= since)
    if after is not None:
        query = query.where(audit_log.c.seq > after)
    newest_first = since is None and after is None
    order = audit_log.c.seq.desc() if newest_first else audit_log.c.seq
    with engine.connect() as conn:
        rows = list(conn.execute(query.order_by(order).limit(limit)))
    if newest_first:
        rows.reverse()
    return [
        AuditEntry(
            seq=r.seq,
            ts=r.ts,
            actor=r.actor,
            action=r.action,
            entity=r.entity,
            key=r.entity_key,
            reason=r.reason,
            old=_value(r.old_value),
            new=_value(r.new_value),
            hash=r.hash,
        )
        for r in rows
    ]
