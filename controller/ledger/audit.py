"""The hash-chained audit trail.

Every change the ledger makes is written as an audit row in the same transaction: who,
what, when, why, the old and the new value. Each row's hash covers its content and the
previous row's hash, so altering, inserting or deleting any row breaks the chain from
that row on. A writer takes the single `audit_head` row for update once per
transaction, at its very end: a group-committed batch of many commands appends all their
rows under one lock, held only for the insert and the commit, which puts every change of
every controller sharing the database in one order without a lock per command.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from controller.ledger.schema import audit_head, audit_log, locations, lots, movements, products

GENESIS = "0" * 64


@dataclass(frozen=True)
class Change:
    """One changed entity: `old` is None for a creation, `new` None for a removal."""

    entity: str
    key: str
    old: Any = None
    new: Any = None


def _canonical(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def row_hash(
    *,
    seq: int,
    ts: datetime,
    actor: str,
    action: str,
    entity: str,
    entity_key: str,
    reason: str,
    old_value: str | None,
    new_value: str | None,
    prev_hash: str,
) -> str:
    stamp = ts.astimezone(UTC).isoformat(timespec="microseconds")
    material = json.dumps(
        [seq, stamp, actor, action, entity, entity_key, reason, old_value, new_value, prev_hash],
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode()).hexdigest()


# Built once: every transaction of the ledger runs these.
_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_APPEND = insert(audit_log)
_MOVE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


@dataclass(frozen=True)
class AuditEntry:
    """The changes of one command, with who made them, why and when."""

    ts: datetime
    actor: str
    action: str
    reason: str
    changes: tuple[Change, ...]


def write_audit(
    conn: Connection,
    *,
    ts: datetime,
    actor: str,
    action: str,
    reason: str,
    changes: list[Change],
) -> None:
    """Appends one command's changes to the chain (inside the caller's transaction)."""
    write_audit_entries(conn, [AuditEntry(ts, actor, action, reason, tuple(changes))])


def write_audit_entries(conn: Connection, entries: list[AuditEntry]) -> None:
    """Appends the changes of several commands to the chain in one go: one head lock,
    one multi-row INSERT and one head update for the whole batch."""
    if not any(entry.changes for entry in entries):
        return
    query = _HEAD_FOR_UPDATE if conn.dialect.name == "postgresql" else _HEAD
    head = conn.execute(query).first()
    if head is None:
        conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
        seq, prev = 0, GENESIS
    else:
        seq, prev = int(head.seq), str(head.hash)
    rows = []
    for entry in entries:
        for change in entry.changes:
            seq += 1
            values: dict[str, Any] = {
                "seq": seq,
                "ts": entry.ts,
                "actor": entry.actor[:100],
                "action": entry.action[:30],
                "entity": change.entity[:30],
                "entity_key": change.key[:200],
                "reason": entry.reason[:200],
                "old_value": _canonical(change.old),
                "new_value": _canonical(change.new),
                "prev_hash": prev,
            }
            prev = row_hash(**values)
            rows.append({**values, "hash": prev})
    conn.execute(_APPEND, rows)
    conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})


def movement_record(
    movement_id: int,
    *,
    kind: str,
    lot_id: int,
    from_id: int,
    to_id: int,
    quantity: int,
    key: str,
    reason_code: str | None,
    substituted_for: int | None,
) -> dict[str, Any]:
    """What the audit keeps of a movement, to compare against the movements table."""
    return {
        "id": movement_id,
        "kind": kind,
        "lot": lot_id,
        "from": from_id,
        "to": to_id,
        "quantity": quantity,
        "key": key,
        "reason_code": reason_code,
        "substituted_for": substituted_for,
    }


@dataclass(frozen=True)
class ChainProblem:
    rule: str
    detail: str


STREAM_ROWS = 20_000  # rows fetched at a time: a year's audit trail never sits in memory


def verify_chain(engine: Engine) -> list[ChainProblem]:
    """Recomputes the chain and compares every movement with what the audit recorded.

    Two streamed passes, each in constant memory: the chain in sequence order, then the
    movements merged by id with the audit rows that recorded them."""
    with engine.connect() as conn:
        problems = _walk_chain(conn)
        problems += _compare_movements(conn)
    return problems


def _walk_chain(conn: Connection) -> list[ChainProblem]:
    problems: list[ChainProblem] = []
    expected_seq, prev = 1, GENESIS
    stream = conn.execution_options(yield_per=STREAM_ROWS)
    for row in stream.execute(select(audit_log).order_by(audit_log.c.seq)):
        if row.seq != expected_seq:
            problems.append(
                ChainProblem("audit-gap", f"row {expected_seq} is missing (next row is {row.seq})")
            )
        if row.prev_hash != prev:
            problems.append(
                ChainProblem(
                    "audit-chain",
                    f"row {row.seq}: previous hash does not match row {row.seq - 1}",
                )
            )
        recomputed = row_hash(
            seq=row.seq,
            ts=row.ts,
            actor=row.actor,
            action=row.action,
            entity=row.entity,
            entity_key=row.entity_key,
            reason=row.reason,
            old_value=row.old_value,
            new_value=row.new_value,
            prev_hash=row.prev_hash,
        )
        if recomputed != row.hash:
            problems.append(
                ChainProblem(
                    "audit-altered",
                    f"row {row.seq} ({row.action} {row.entity} "
                    f"{row.entity_key}): content does not match its hash",
                )
            )
        expected_seq, prev = row.seq + 1, row.hash
    head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
    last = expected_seq - 1
    if head is not None and (head.seq != last or head.hash != prev):
        problems.append(
            ChainProblem("audit-head", f"head says row {head.seq}, the chain ends at row {last}")
        )
    if head is None and last > 0:
        problems.append(ChainProblem("audit-head", "the chain has rows but no head"))
    return problems


def _audited_movements(
    conn: Connection, problems: list[ChainProblem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """What the audit trail recorded of each movement, in movement id order (the latest
    row where a forged one repeats an id). Ids are ordered as text by length, then value,
    which is their numeric order, so no cast can fail on a forged key."""
    query = (
        select(audit_log.c.seq, audit_log.c.entity_key, audit_log.c.new_value)
        .where(audit_log.c.entity == "movement", audit_log.c.new_value.is_not(None))
        .order_by(func.length(audit_log.c.entity_key), audit_log.c.entity_key, audit_log.c.seq)
    )
    pending: tuple[int, dict[str, Any]] | None = None
    for row in conn.execution_options(yield_per=STREAM_ROWS).execute(query):
        if not row.entity_key.isdigit():
            problems.append(
                ChainProblem(
                    "audit-altered",
                    f"row {row.seq}: movement key {row.entity_key!r} is not a movement id",
                )
            )
            continue
        current = (int(row.entity_key), dict(json.loads(row.new_value)))
        if pending is not None and pending[0] != current[0]:
            yield pending
        pending = current
    if pending is not None:
        yield pending


def _stored_movements(conn: Connection) -> Iterator[tuple[int, dict[str, Any]]]:
    query = select(movements).order_by(movements.c.id)
    for m in conn.execution_options(yield_per=STREAM_ROWS).execute(query):
        yield (
            int(m.id),
            movement_record(
                m.id,
                kind=m.kind,
                lot_id=m.lot_id,
                from_id=m.from_location_id,
                to_id=m.to_location_id,
                quantity=m.quantity,
                key=m.idempotency_key,
                reason_code=m.reason_code,
                substituted_for=m.substituted_for,
            ),
        )


def _compare_movements(conn: Connection) -> list[ChainProblem]:
    """Merges the movements table with the audit's records of it, both in id order."""
    problems: list[ChainProblem] = []
    end: tuple[int, dict[str, Any]] = (2**63, {})
    stored, audited = _stored_movements(conn), _audited_movements(conn, problems)
    s, a = next(stored, end), next(audited, end)
    while s is not end or a is not end:
        if s[0] == a[0]:
            if a[1] != s[1]:
                changed = sorted(k for k in s[1] if s[1][k] != a[1].get(k))
                problems.append(
                    ChainProblem(
                        "movement-altered",
                        f"movement {s[0]}: {', '.join(changed)} differ from the audit record",
                    )
                )
            s, a = next(stored, end), next(audited, end)
        elif s[0] < a[0]:
            problems.append(
                ChainProblem("movement-unaudited", f"movement {s[0]} has no audit record")
            )
            s = next(stored, end)
        else:
            problems.append(
                ChainProblem(
                    "movement-deleted",
                    f"movement {a[0]} is in the audit trail but not in the movements table",
                )
            )
            a = next(audited, end)
    return problems


def names(conn: Connection, location_id: int, lot_id: int) -> str:
    """A readable key for a balance row: 'CAB-MED1/P01 07359990000013/N0201A'."""
    code = conn.execute(select(locations.c.code).where(locations.c.id == location_id)).scalar()
    lot = conn.execute(
        select(products.c.gtin, lots.c.batch)
        .join(products, products.c.id == lots.c.product_id)
        .where(lots.c.id == lot_id)
    ).first()
    lot_name = f"{lot.gtin}/{lot.batch}" if lot else f"lot {lot_id}"
    return f"{code} {lot_name}"
