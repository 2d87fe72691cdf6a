"""Packs, verification requests and alerts, kept in the ledger's database.

Every change is one audited transaction on the ledger's hash-chained trail. A
decommission is written to `verification_queue` (key `decommission:<gtin>:<serial>`)
before it is sent, and its attempt is counted before each send: a controller that
stops between sending and hearing the answer knows the request may have arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from controller.gs1 import PackId
from controller.ledger import Ledger, LedgerError
from controller.ledger.schema import packs, verification_alerts, verification_queue

ACTOR = "verification"


def decommission_key(gtin: str, serial: str) -> str:
    return f"decommission:{gtin}:{serial}"


@dataclass(frozen=True)
class PackRow:
    gtin: str
    serial: str
    batch: str
    expiry: date
    status: str  # verified, blocked, decommissioned
    location: str | None
    alert_code: str | None
    alert_text: str | None
    verified_at: datetime | None
    decommissioned_at: datetime | None  # None while the decommission waits in the queue
    decommission_reason: str | None

    @property
    def pack(self) -> PackId:
        return PackId(self.gtin, self.batch, self.expiry, self.serial)


@dataclass(frozen=True)
class QueueRow:
    id: int
    key: str
    gtin: str
    serial: str
    operation: str
    reason: str | None
    created_at: datetime
    attempts: int
    last_error: str | None
    status: str  # pending, done, failed
    done_at: datetime | None


@dataclass(frozen=True)
class AlertRow:
    id: int
    gtin: str
    serial: str
    code: str
    message: str
    raised_at: datetime
    status: str  # open, closed
    closed_by: str | None
    note: str | None


class VerificationStore:
    def __init__(self, ledger: Ledger, actor: str = ACTOR) -> None:
        self.ledger = ledger
        self.actor = actor

    # ------------------------------------------------------------ writes

    def record_verified(self, pack: PackId, location: str | None, now: datetime) -> None:
        """A pack the system verified at goods-in; a known pack keeps its status."""
        serial = _serial(pack)
        with self.ledger.audited(self.actor, "pack verified", f"{pack.gtin}/{serial}") as c:
            if self._row(c, pack.gtin, serial) is None:
                values = {**_ident(pack), "status": "verified", "location_code": location}
                c.execute(insert(packs).values(**values, verified_at=now))
                self.ledger.note("pack", f"{pack.gtin}/{serial}", None, _public(values))
            else:
                c.execute(_where(update(packs), pack.gtin, serial).values(verified_at=now))

    def block(
        self, pack: PackId, location: str | None, code: str, message: str, now: datetime
    ) -> int:
        """The system raised an alert on the pack: it is blocked, and the alert waits
        for a pharmacist. Returns the alert's id."""
        serial = _serial(pack)
        message = message[:300] or code
        with self.ledger.audited(self.actor, "pack blocked", f"{code}: {message}") as c:
            old = self._row(c, pack.gtin, serial)
            values = {"status": "blocked", "alert_code": code, "alert_text": message}
            if location is not None:
                values["location_code"] = location
            if old is None:
                c.execute(insert(packs).values(**_ident(pack), **values))
            else:
                c.execute(_where(update(packs), pack.gtin, serial).values(**values))
            alert_id = c.execute(
                insert(verification_alerts)
                .values(
                    gtin=pack.gtin,
                    serial=serial,
                    code=code,
                    message=message,
                    raised_at=now,
                    status="open",
                )
                .returning(verification_alerts.c.id)
            ).scalar_one()
            self.ledger.note(
                "pack", f"{pack.gtin}/{serial}", old and old["status"], _public(values)
            )
            self.ledger.note("verification_alert", str(alert_id), None, {"code": code})
        return int(alert_id)

    def enqueue_decommission(
        self, pack: PackId, reason: str, location: str | None, now: datetime
    ) -> QueueRow:
        """Writes the decommission (once per serial) before it is sent; the pack is
        marked decommissioned, with no time until the system has confirmed it."""
        serial = _serial(pack)
        key = decommission_key(pack.gtin, serial)
        with self.ledger.audited(self.actor, "decommission queued", key) as c:
            found = c.execute(select(verification_queue).where(verification_queue.c.key == key))
            row = found.first()
            if row is not None:
                return _queue(row._mapping)
            c.execute(
                insert(verification_queue).values(
                    key=key,
                    gtin=pack.gtin,
                    serial=serial,
                    operation="decommission",
                    reason=reason,
                    created_at=now,
                    attempts=0,
                    status="pending",
                )
            )
            old = self._row(c, pack.gtin, serial)
            values: dict[str, Any] = {
                "status": "decommissioned",
                "decommission_reason": reason,
                "decommissioned_at": None,
            }
            if location is not None:
                values["location_code"] = location
            if old is None:
                c.execute(insert(packs).values(**_ident(pack), **values))
            else:
                c.execute(_where(update(packs), pack.gtin, serial).values(**values))
            self.ledger.note("verification_queue", key, None, {"status": "pending"})
            self.ledger.note(
                "pack", f"{pack.gtin}/{serial}", old and old["status"], _public(values)
            )
            row = c.execute(select(verification_queue).where(verification_queue.c.key == key)).one()
            return _queue(row._mapping)

    def attempt(self, key: str) -> int:
        """Counts one more send of a queued request, before it is sent; returns the
        attempts made before this one."""
        with self.ledger.audited(self.actor, "verification attempt", key) as c:
            before = c.execute(
                select(verification_queue.c.attempts).where(verification_queue.c.key == key)
            ).scalar_one()
            c.execute(
                update(verification_queue)
                .where(verification_queue.c.key == key)
                .values(attempts=verification_queue.c.attempts + 1)
            )
            self.ledger.note(
                "verification_queue", key, {"attempts": before}, {"attempts": before + 1}
            )
        return int(before)

    def failed_attempt(self, key: str, error: str) -> None:
        with self.ledger.audited(self.actor, "verification unavailable", error[:300]) as c:
            c.execute(
                update(verification_queue)
                .where(verification_queue.c.key == key)
                .values(last_error=error[:300])
            )
            self.ledger.note("verification_queue", key, None, {"last_error": error[:300]})

    def finish(self, key: str, status: str, now: datetime, error: str | None = None) -> None:
        """A queued request answered: `done` (the pack's decommission is confirmed) or
        `failed` (an alert, recorded by `block`)."""
        with self.ledger.audited(self.actor, f"verification {status}", key) as c:
            row = c.execute(select(verification_queue).where(verification_queue.c.key == key)).one()
            c.execute(
                update(verification_queue)
                .where(verification_queue.c.key == key)
                .values(status=status, done_at=now, last_error=error)
            )
            if status == "done" and row.operation == "decommission":
                c.execute(_where(update(packs), row.gtin, row.serial).values(decommissioned_at=now))
            self.ledger.note("verification_queue", key, {"status": row.status}, {"status": status})

    def undone(self, pack: PackId, now: datetime, actor: str | None = None) -> None:
        """The system reverted the pack's decommission: it is active again, and its
        done request is kept under another key so a later decommission can be queued.
        `actor` is whoever asked for the undo."""
        serial = _serial(pack)
        key = decommission_key(pack.gtin, serial)
        with self.ledger.audited(actor or self.actor, "decommission undone", key) as c:
            row = c.execute(
                select(verification_queue.c.id).where(verification_queue.c.key == key)
            ).first()
            if row is not None:
                c.execute(
                    update(verification_queue)
                    .where(verification_queue.c.id == row.id)
                    .values(key=f"{key}:undone:{row.id}")
                )
            c.execute(
                _where(update(packs), pack.gtin, serial).values(
                    status="verified",
                    decommissioned_at=None,
                    decommission_reason=None,
                    verified_at=now,
                )
            )
            self.ledger.note("pack", f"{pack.gtin}/{serial}", "decommissioned", "verified")

    def close_alert(self, alert_id: int, *, actor: str, note: str) -> AlertRow:
        note = note.strip()
        if not note:
            raise LedgerError(f"invalid note: {note!r} (say what was found)")
        if len(note) > 200:
            raise LedgerError(f"invalid note: {note[:40]!r}... is longer than 200 characters")
        with self.ledger.audited(actor, "verification alert closed", note) as c:
            status = c.execute(
                select(verification_alerts.c.status)
                .where(verification_alerts.c.id == alert_id)
                .with_for_update()  # two closers at once: the second sees it closed
            ).scalar()
            if status is None:
                raise LedgerError(f"unknown verification alert: {alert_id}")
            if status != "open":
                raise LedgerError(f"verification alert {alert_id} is already {status}")
            c.execute(
                update(verification_alerts)
                .where(verification_alerts.c.id == alert_id)
                .values(status="closed", closed_by=actor, note=note[:300])
            )
            self.ledger.note("verification_alert", str(alert_id), "open", "closed")
        with self.ledger.engine.connect() as c:
            row = c.execute(
                select(verification_alerts).where(verification_alerts.c.id == alert_id)
            ).one()
        return AlertRow(**dict(row._mapping))

    # ------------------------------------------------------------ reads

    def pack(self, gtin: str, serial: str) -> PackRow | None:
        with self.ledger.engine.connect() as c:
            row = self._row(c, gtin, serial)
        return None if row is None else _pack(row)

    def queue(self, status: str | None = "pending") -> list[QueueRow]:
        query = select(verification_queue).order_by(verification_queue.c.id)
        if status is not None:
            query = query.where(verification_queue.c.status == status)
        with self.ledger.engine.connect() as c:
            return [_queue(r._mapping) for r in c.execute(query)]

    def queue_row(self, key: str) -> QueueRow | None:
        with self.ledger.engine.connect() as c:
            row = c.execute(
                select(verification_queue).where(verification_queue.c.key == key)
            ).first()
        return None if row is None else _queue(row._mapping)

    def pending_count(self) -> int:
        with self.ledger.engine.connect() as c:
            return int(
                c.execute(
                    select(func.count()).where(verification_queue.c.status == "pending")
                ).scalar_one()
            )

    def counts(self) -> dict[str, int]:
        """Packs per state (`decommissioned` split by reason, `unconfirmed` while queued)
        and requests pending: the demo's summary and a quick look after a day."""
        out: dict[str, int] = {}
        with self.ledger.engine.connect() as c:
            for status, reason, sent, n in c.execute(
                select(
                    packs.c.status,
                    packs.c.decommission_reason,
                    packs.c.decommissioned_at.is_not(None),
                    func.count(),
                ).group_by(
                    packs.c.status,
                    packs.c.decommission_reason,
                    packs.c.decommissioned_at.is_not(None),
                )
            ):
                name = status if status != "decommissioned" else f"decommissioned:{reason}"
                if status == "decommissioned" and not sent:
                    name = "unconfirmed"
                out[name] = out.get(name, 0) + int(n)
            out["pending"] = int(
                c.execute(
                    select(func.count()).where(verification_queue.c.status == "pending")
                ).scalar_one()
            )
        return out

    def alerts(self, status: str | None = "open") -> list[AlertRow]:
        query = select(verification_alerts).order_by(verification_alerts.c.id)
        if status is not None:
            query = query.where(verification_alerts.c.status == status)
        with self.ledger.engine.connect() as c:
            return [AlertRow(**dict(r._mapping)) for r in c.execute(query)]

    @staticmethod
    def _row(c: Connection, gtin: str, serial: str) -> Any:
        row = c.execute(_where(select(packs), gtin, serial)).first()
        return None if row is None else row._mapping


def _where(stmt: Any, gtin: str, serial: str) -> Any:
    return stmt.where(packs.c.gtin == gtin, packs.c.serial == serial)


def _serial(pack: PackId) -> str:
    if not pack.serial:
        raise LedgerError(f"pack {pack.gtin} batch {pack.batch} has no serial number (21)")
    return pack.serial


def _ident(pack: PackId) -> dict[str, Any]:
    return {"gtin": pack.gtin, "serial": pack.serial, "batch": pack.batch, "expiry": pack.expiry}


def _pack(m: Any) -> PackRow:
    return PackRow(
        gtin=m["gtin"],
        serial=m["serial"],
        batch=m["batch"],
        expiry=m["expiry"],
        status=m["status"],
        location=m["location_code"],
        alert_code=m["alert_code"],
        alert_text=m["alert_text"],
        verified_at=m["verified_at"],
        decommissioned_at=m["decommissioned_at"],
        decommission_reason=m["decommission_reason"],
    )


def _queue(m: Any) -> QueueRow:
    return QueueRow(**{k: m[k] for k in QueueRow.__dataclass_fields__})


def _public(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime | date) else v for k, v in values.items()}
