"""The audit trail as the API shows it: the rows of `ports.AuditTrail` (the ledger's
hash-chained audit_log, written by controller.ledger.audit) as API entries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from controller.api.models import AuditEntry
from controller.ports import AuditTrail
from controller.site_services import LedgerAuditTrail


def read_audit(
    trail: AuditTrail | Engine,
    *,
    entity: str | None = None,
    key: str | None = None,
    since: datetime | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Audit rows in chain order. With `since` (a time) or `after` (a sequence number)
    the first `limit` rows from there; without either, the latest `limit` rows. An
    engine is read through `LedgerAuditTrail` (tests and tools hold only the engine)."""
    if isinstance(trail, Engine):
        trail = LedgerAuditTrail(trail)
    rows = trail.entries(entity=entity, key=key, since=since, after=after, limit=limit)
    return [
        AuditEntry(
            seq=r.seq,
            ts=r.ts,
            actor=r.actor,
            action=r.action,
            entity=r.entity,
            key=r.key,
            reason=r.reason,
            old=r.old,
            new=r.new,
            hash=r.hash,
        )
        for r in rows
    ]
