"""Dose orders, their review and the packing jobs made from them, kept in the ledger's
database and written to its audit trail.

Every change here is one audited transaction: an order received, approved or rejected;
a job planned or moved to its next state. A controller that dies and starts again
finds every job where it left it (`unfinished`), with what it needs to settle it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import func, insert, select, update

from controller.ledger import Ledger, LedgerError
from controller.ledger.schema import (
    canister_fills,
    dose_orders,
    packing_jobs,
    planned_doses,
    products,
)
from controller.ledger.states import OPEN_JOB_STATES
from controller.packing.orders import DoseOrder
from controller.packing.planner import PlannedJob, plan_day

OPEN_STATES = OPEN_JOB_STATES  # controller/ledger/states.py
REVIEW_NOT_REQUIRED = "site: review not required"


class OrderReviewError(LedgerError):
    """A review that cannot be done; the message names the order and its status, or
    the field and value refused (also as `field` and `value`, where given)."""

    def __init__(self, message: str, *, field: str | None = None, value: str | None = None):
        super().__init__(message)
        self.field = field
        self.value = value


@dataclass(frozen=True)
class OrderRecord:
    id: int
    order: DoseOrder
    source: str
    status: str
    received_at: datetime
    received_by: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None


@dataclass(frozen=True)
class SubmitResult:
    """What a message added: new order ids, and ids of orders already on file."""

    added: tuple[int, ...]
    duplicates: tuple[int, ...]
    status: str  # the status new orders got: pending or approved


@dataclass(frozen=True)
class JobRecord:
    job: PlannedJob
    state: str
    packer: str | None
    attempt: int
    baseline: dict[str, int] | None
    good: int
    rejected: int
    reason: str
    updated_at: datetime

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def reservation(self) -> str:
        """The key of this attempt's reservation: a job planned again after a restart
        reserves under a new key, so the released one can never be posted."""
        return f"job:{self.job_id}:{self.attempt}"


@dataclass(frozen=True)
class CanisterFill:
    key: str
    packer: str
    canister: int
    gtin: str
    quantity: int
    refilled_before: int
    status: str
    batch: str | None = None
    count_before: int | None = None
    dispensed_before: int | None = None
    confirmed_by: str | None = None


@functools.lru_cache(maxsize=1024)
def _planned_job(spec: str) -> PlannedJob:
    """A stored job spec, parsed once: the dispatcher lists the planned jobs twice a
    second, and parsing every pouch of every waiting job each time held the ledger
    worker (and, through the GIL, the event loop) for tens of milliseconds
    (`doseline bench`, docs/performance.md). PlannedJob is immutable, so one parsed
    copy can serve every reader."""
    return PlannedJob.from_dict(json.loads(spec))


def content_key(order: DoseOrder) -> str:
    times = ",".join(f"{t:%H:%M}" for t in order.times)
    text = "|".join(
        [
            order.patient,
            order.ward,
            order.gtin,
            str(order.units),
            times,
            order.start.isoformat(),
            order.end.isoformat(),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _times(text: str) -> tuple[time, ...]:
    return tuple(time.fromisoformat(t) for t in text.split(","))


class PackingStore:
    """Orders and jobs on one ledger (and so on one database)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # ------------------------------------------------------------------ orders

    def submit(
        self,
        orders: Sequence[DoseOrder],
        *,
        source: str,
        actor: str,
        review_required: bool,
    ) -> SubmitResult:
        """Files the orders of one message, all or nothing. An order already on file
        (same patient, ward, product, dose, times and period) is not added again."""
        if not source or len(source) > 20:
            raise LedgerError(f"source: {source[:40]!r} must be 1 to 20 characters")
        if not orders:
            raise LedgerError(f"message from {source!r}: no orders in it")
        status = "pending" if review_required else "approved"
        added: list[int] = []
        duplicates: list[int] = []
        seen: set[str] = set()
        with self.ledger.audited(actor, "order", f"orders received ({source})") as conn:
            now = self.ledger.clock()
            known = set(
                conn.execute(
                    select(products.c.gtin).where(products.c.gtin.in_({o.gtin for o in orders}))
                ).scalars()
            )
            for index, order in enumerate(orders):
                if order.gtin not in known:
                    raise LedgerError(f"orders[{index}].gtin: {order.gtin!r} is not in the ledger")
                key = content_key(order)
                if key in seen:
                    continue  # the same order twice in one message: filed once
                seen.add(key)
                existing = conn.execute(
                    select(dose_orders.c.id).where(dose_orders.c.content_key == key)
                ).scalar()
                if existing is not None:
                    duplicates.append(int(existing))
                    continue
                values: dict[str, Any] = {
                    "content_key": key,
                    "source": source,
                    "patient": order.patient,
                    "ward": order.ward,
                    "gtin": order.gtin,
                    "units": order.units,
                    "times": ",".join(f"{t:%H:%M}" for t in order.times),
                    "start_day": order.start,
                    "end_day": order.end,
                    "status": status,
                    "received_at": now,
                    "received_by": actor,
                }
                if not review_required:
                    values |= {"reviewed_by": REVIEW_NOT_REQUIRED, "reviewed_at": now}
                order_id = int(
                    conn.execute(
                        insert(dose_orders).values(**values).returning(dose_orders.c.id)
                    ).scalar_one()
                )
                added.append(order_id)
                shown = {k: str(v) for k, v in values.items() if k != "content_key"}
                self.ledger.note("dose_order", str(order_id), None, shown)
        return SubmitResult(tuple(added), tuple(duplicates), status)

    def review(self, order_ids: Iterable[int], *, approve: bool, actor: str, note: str) -> int:
        """Approves or rejects pending orders, all or nothing; returns how many.

        A rejection needs a reason; an order already reviewed cannot be reviewed again
        (a rejected order stays rejected: the prescriber sends a new one)."""
        ids = sorted(set(order_ids))
        if not ids:
            raise OrderReviewError("no order ids given")
        if not actor.strip() or actor.strip() in ("controller", "system"):
            raise OrderReviewError(f"reviewer: {actor!r} is not a person")
        if not approve and not note.strip():
            raise OrderReviewError("note: a rejection needs a reason")
        new_status = "approved" if approve else "rejected"
        with self.ledger.audited(actor, "review", note or new_status) as conn:
            rows = {
                r.id: r.status
                for r in conn.execute(
                    select(dose_orders.c.id, dose_orders.c.status).where(dose_orders.c.id.in_(ids))
                )
            }
            for order_id in ids:
                if order_id not in rows:
                    raise OrderReviewError(f"order {order_id}: no such order")
                if rows[order_id] != "pending":
                    raise OrderReviewError(
                        f"order {order_id}: status is {rows[order_id]!r}, only pending orders "
                        "can be reviewed"
                    )
            now = self.ledger.clock()
            for order_id in ids:
                conn.execute(
                    update(dose_orders)
                    .where(dose_orders.c.id == order_id, dose_orders.c.status == "pending")
                    .values(status=new_status, reviewed_by=actor, reviewed_at=now, review_note=note)
                )
                self.ledger.note(
                    "dose_order",
                    str(order_id),
                    {"status": "pending"},
                    {"status": new_status, "reviewed_by": actor, "note": note},
                )
        return len(ids)

    def amend(
        self,
        order_id: int,
        *,
        units: int | None = None,
        gtin: str | None = None,
        actor: str,
        note: str,
    ) -> OrderRecord:
        """Approves one pending order reduced (`units`: fewer per administration, at
        least 1) and/or substituted (`gtin`: another active product of the ordered
        product's substitution group in the ledger), always with a reason; returns the
        amended order.

        The order's product and dose are changed in place, so planning packs the
        amended order; what was ordered stays in the audit trail (old and new values).
        The order keeps its content key: the prescriber's message sent again is still
        a duplicate of it, not a new order to review."""
        if not actor.strip() or actor.strip() in ("controller", "system"):
            raise OrderReviewError(f"reviewer: {actor!r} is not a person")
        if not note.strip():
            raise OrderReviewError("note: a reduction or substitution needs a reason")
        if units is None and gtin is None:
            raise OrderReviewError("units: none given, and no gtin: nothing to amend")
        if units is not None and units < 1:
            raise OrderReviewError(
                f"units: {units} is less than 1 per administration", field="units", value=str(units)
            )
        with self.ledger.audited(actor, "review", note) as conn:
            row = conn.execute(select(dose_orders).where(dose_orders.c.id == order_id)).first()
            if row is None:
                raise OrderReviewError(f"order {order_id}: no such order")
            if row.status != "pending":
                raise OrderReviewError(
                    f"order {order_id}: status is {row.status!r}, only pending orders "
                    "can be reviewed"
                )
            new_units = row.units if units is None else units
            if units is not None and units >= row.units:
                raise OrderReviewError(
                    f"units: {units} is not fewer than the {row.units} per administration "
                    f"of order {order_id} (a reduction gives 1 to {row.units - 1})",
                    field="units",
                    value=str(units),
                )
            new_gtin = row.gtin if gtin is None else gtin
            if gtin is not None:
                self._check_substitute(conn, order_id, row.gtin, gtin)
            now = self.ledger.clock()
            done = conn.execute(
                update(dose_orders)
                .where(dose_orders.c.id == order_id, dose_orders.c.status == "pending")
                .values(
                    status="approved",
                    gtin=new_gtin,
                    units=new_units,
                    reviewed_by=actor,
                    reviewed_at=now,
                    review_note=note,
                )
            ).rowcount
            if done != 1:
                raise OrderReviewError(f"order {order_id}: reviewed meanwhile; not amended")
            old: dict[str, Any] = {"status": "pending"}
            new: dict[str, Any] = {"status": "approved"}
            if new_units != row.units:
                old["units"], new["units"] = row.units, new_units
            if new_gtin != row.gtin:
                old["gtin"], new["gtin"] = row.gtin, new_gtin
            amended = [
                kind
                for kind, changed in (("reduced", "units" in new), ("substituted", "gtin" in new))
                if changed
            ]
            new |= {"amended": "+".join(amended), "reviewed_by": actor, "note": note}
            self.ledger.note("dose_order", str(order_id), old, new)
            stored = conn.execute(select(dose_orders).where(dose_orders.c.id == order_id)).one()
        return self._order_record(stored)

    @staticmethod
    def _check_substitute(conn: Any, order_id: int, ordered: str, gtin: str) -> None:
        """Refuses a substitute that is not another active product of the ordered
        product's substitution group (as the ledger's products table holds it)."""
        if gtin == ordered:
            raise OrderReviewError(
                f"gtin: {gtin!r} is the product order {order_id} names", field="gtin", value=gtin
            )
        found = {
            r.gtin: r
            for r in conn.execute(
                select(products.c.gtin, products.c.substitution_group, products.c.active).where(
                    products.c.gtin.in_((ordered, gtin))
                )
            )
        }
        group = found[ordered].substitution_group if ordered in found else None
        if not group:
            raise OrderReviewError(
                f"gtin: {gtin!r} cannot replace {ordered}: the ordered product has no "
                "substitution group",
                field="gtin",
                value=gtin,
            )
        other = found.get(gtin)
        if other is None:
            raise OrderReviewError(f"gtin: {gtin!r} is not in the ledger", field="gtin", value=gtin)
        if other.substitution_group != group:
            raise OrderReviewError(
                f"gtin: {gtin!r} is not of substitution group {group!r} of {ordered}",
                field="gtin",
                value=gtin,
            )
        if not other.active:
            raise OrderReviewError(
                f"gtin: {gtin!r} is not an active product", field="gtin", value=gtin
            )

    def substitutes(self, gtin: str) -> list[str]:
        """The other active products of `gtin`'s substitution group in the ledger (what
        `amend` accepts as a substitute), by GTIN."""
        group = (
            select(products.c.substitution_group).where(products.c.gtin == gtin).scalar_subquery()
        )
        with self.ledger.engine.connect() as conn:
            return list(
                conn.execute(
                    select(products.c.gtin)
                    .where(
                        products.c.substitution_group == group,
                        products.c.gtin != gtin,
                        products.c.active == 1,
                    )
                    .order_by(products.c.gtin)
                ).scalars()
            )

    def orders(self, *, status: str | None = None, day: date | None = None) -> list[OrderRecord]:
        query = select(dose_orders).order_by(dose_orders.c.id)
        if status is not None:
            query = query.where(dose_orders.c.status == status)
        if day is not None:
            query = query.where(dose_orders.c.start_day <= day, dose_orders.c.end_day >= day)
        with self.ledger.engine.connect() as conn:
            return [self._order_record(r) for r in conn.execute(query)]

    @staticmethod
    def _order_record(row: Any) -> OrderRecord:
        order = DoseOrder(
            row.patient,
            row.ward,
            row.gtin,
            row.units,
            _times(row.times),
            row.start_day,
            row.end_day,
        )
        return OrderRecord(
            row.id,
            order,
            row.source,
            row.status,
            row.received_at,
            row.received_by,
            row.reviewed_by,
            row.reviewed_at,
            row.review_note,
        )

    # ------------------------------------------------------------------ planning

    def plan(
        self,
        day: date,
        *,
        fit: Callable[[list[PlannedJob]], list[PlannedJob]] = lambda jobs: jobs,
        actor: str = "controller",
    ) -> list[PlannedJob]:
        """Turns the approved doses of `day` that no job holds yet into new jobs.

        Planning twice plans nothing twice: each (order, day, time) is recorded with its
        job. Doses approved after their slot's job was planned get a job of their own
        (`-2`, `-3`, ...). `fit` maps jobs onto the machines (substitutions, manual items).
        """
        with self.ledger.audited(actor, "plan", f"packing jobs for {day}") as conn:
            taken = {
                (r.order_id, r.slot)
                for r in conn.execute(
                    select(planned_doses.c.order_id, planned_doses.c.slot).where(
                        planned_doses.c.day == day
                    )
                )
            }
            approved = [
                self._order_record(r)
                for r in conn.execute(
                    select(dose_orders).where(
                        dose_orders.c.status == "approved",
                        dose_orders.c.start_day <= day,
                        dose_orders.c.end_day >= day,
                    )
                )
            ]
            doses: list[tuple[int, DoseOrder]] = []
            for rec in approved:
                left = tuple(t for t in rec.order.times if (rec.id, f"{t:%H:%M}") not in taken)
                if left:
                    doses.append((rec.id, replace(rec.order, times=left)))
            jobs = fit(plan_day([o for _, o in doses], day))
            existing = set(
                conn.execute(
                    select(packing_jobs.c.job_id).where(packing_jobs.c.day == day)
                ).scalars()
            )
            planned: list[PlannedJob] = []
            for job in jobs:
                job_id, n = job.job_id, 1
                while job_id in existing:
                    n += 1
                    job_id = f"{job.job_id}-{n}"
                job = replace(job, job_id=job_id)
                existing.add(job_id)
                slot = f"{job.time:%H:%M}"
                self._insert_job(conn, job)
                for order_id, order in doses:
                    if order.ward == job.ward and job.time in order.times:
                        conn.execute(
                            insert(planned_doses).values(
                                order_id=order_id, day=day, slot=slot, job_id=job_id
                            )
                        )
                planned.append(job)
        return planned

    # ------------------------------------------------------------------ jobs

    def add_job(self, job: PlannedJob, *, actor: str = "controller") -> JobRecord:
        """Files a job made elsewhere (a hand-made job, a test); a job already on file
        is left as it is."""
        with self.ledger.audited(actor, "plan", "packing job added") as conn:
            exists = conn.execute(
                select(packing_jobs.c.job_id).where(packing_jobs.c.job_id == job.job_id)
            ).scalar()
            if exists is None:
                self._insert_job(conn, job)
        return self.job(job.job_id)

    def _insert_job(self, conn: Any, job: PlannedJob) -> None:
        now = self.ledger.clock()
        conn.execute(
            insert(packing_jobs).values(
                job_id=job.job_id,
                day=job.day,
                ward=job.ward,
                slot=f"{job.time:%H:%M}",
                state="planned",
                packer=None,
                attempt=0,
                spec=json.dumps(job.to_dict()),
                baseline=None,
                good=0,
                rejected=0,
                reason="",
                created_at=now,
                updated_at=now,
            )
        )
        self.ledger.note(
            "packing_job",
            job.job_id,
            None,
            {
                "state": "planned",
                "pouches": len(job.pouches),
                "packers": list(job.packers),
                "substitutions": len(job.substitutions),
                "manual_units": sum(job.manual_units_by_gtin().values()),
            },
        )

    def claim(self, job_id: str, packer: str, *, actor: str = "controller") -> bool:
        """Gives a planned job to a packer; False when another packer (or another
        controller on the same database) took it first."""
        with self.ledger.audited(actor, "job", f"assigned to {packer}") as conn:
            done = conn.execute(
                update(packing_jobs)
                .where(
                    packing_jobs.c.job_id == job_id,
                    packing_jobs.c.state == "planned",
                    packing_jobs.c.packer.is_(None),
                )
                .values(packer=packer, updated_at=self.ledger.clock())
            ).rowcount
            if done:
                self.ledger.note("packing_job", job_id, {"packer": None}, {"packer": packer})
        return bool(done)

    def unclaim(self, job_id: str, packer: str, *, actor: str, reason: str) -> None:
        """Hands a planned job back to the dispatcher (its packer could not start it).
        The attempt goes up, so a reservation the packer may have made is never reused
        for another packer's canisters."""
        with self.ledger.audited(actor, "job", reason) as conn:
            done = conn.execute(
                update(packing_jobs)
                .where(
                    packing_jobs.c.job_id == job_id,
                    packing_jobs.c.state == "planned",
                    packing_jobs.c.packer == packer,
                )
                .values(
                    packer=None,
                    attempt=packing_jobs.c.attempt + 1,
                    updated_at=self.ledger.clock(),
                )
            ).rowcount
            if done:
                self.ledger.note("packing_job", job_id, {"packer": packer}, {"packer": None})

    def move(
        self,
        job_id: str,
        *,
        old: str,
        new: str,
        actor: str,
        reason: str,
        **fields: Any,
    ) -> None:
        """Moves a job from `old` to `new` state (with `packer`, `attempt`, `baseline`,
        `good`, `rejected`, `reason` as given), audited. Refused when the job is not in
        `old` any more: another controller took it, or it moved on meanwhile."""
        allowed = {"packer", "attempt", "baseline", "good", "rejected"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"job fields {sorted(unknown)} cannot be set")
        values = dict(fields)
        if values.get("baseline") is not None:
            values["baseline"] = json.dumps(values["baseline"], sort_keys=True)
        with self.ledger.audited(actor, "job", reason or new) as conn:
            done = conn.execute(
                update(packing_jobs)
                .where(packing_jobs.c.job_id == job_id, packing_jobs.c.state == old)
                .values(state=new, reason=reason[:500], updated_at=self.ledger.clock(), **values)
            ).rowcount
            if done != 1:
                current = conn.execute(
                    select(packing_jobs.c.state).where(packing_jobs.c.job_id == job_id)
                ).scalar()
                raise LedgerError(f"job {job_id}: state is {current!r}, not {old!r}")
            shown = {k: v for k, v in fields.items() if k != "baseline"}
            self.ledger.note("packing_job", job_id, {"state": old}, {"state": new, **shown})

    def cancel(self, job_id: str, *, actor: str, reason: str) -> None:
        """Cancels a job no packer has taken yet (a pharmacist's decision)."""
        if not reason.strip():
            raise LedgerError("reason: a cancellation needs one")
        record = self.job(job_id)
        if record.state != "planned" or record.packer is not None:
            where = f" on {record.packer}" if record.packer else ""
            raise LedgerError(
                f"job {job_id}: state is {record.state!r}{where}; only a job no packer has "
                "taken can be cancelled"
            )
        with self.ledger.audited(actor, "job", reason) as conn:
            done = conn.execute(
                update(packing_jobs)
                .where(
                    packing_jobs.c.job_id == job_id,
                    packing_jobs.c.state == "planned",
                    packing_jobs.c.packer.is_(None),
                )
                .values(state="cancelled", reason=reason[:500], updated_at=self.ledger.clock())
            ).rowcount
            if done != 1:
                raise LedgerError(f"job {job_id}: a packer took it meanwhile; not cancelled")
            self.ledger.note("packing_job", job_id, {"state": "planned"}, {"state": "cancelled"})

    def job(self, job_id: str) -> JobRecord:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(select(packing_jobs).where(packing_jobs.c.job_id == job_id)).first()
        if row is None:
            raise LedgerError(f"job {job_id!r}: no such job")
        return self._job_record(row)

    def jobs(
        self, *, states: Sequence[str] | None = None, day: date | None = None
    ) -> list[JobRecord]:
        query = select(packing_jobs).order_by(
            packing_jobs.c.day, packing_jobs.c.slot, packing_jobs.c.job_id
        )
        if states is not None:
            query = query.where(packing_jobs.c.state.in_(states))
        if day is not None:
            query = query.where(packing_jobs.c.day == day)
        with self.ledger.engine.connect() as conn:
            return [self._job_record(r) for r in conn.execute(query)]

    def unfinished(self) -> list[JobRecord]:
        return self.jobs(states=OPEN_STATES)

    def state_counts(self, day: date | None = None) -> dict[str, int]:
        query = select(packing_jobs.c.state, func.count()).group_by(packing_jobs.c.state)
        if day is not None:
            query = query.where(packing_jobs.c.day == day)
        with self.ledger.engine.connect() as conn:
            return {state: int(n) for state, n in conn.execute(query)}

    @staticmethod
    def _job_record(row: Any) -> JobRecord:
        return JobRecord(
            job=_planned_job(row.spec),
            state=row.state,
            packer=row.packer,
            attempt=row.attempt,
            baseline=None if row.baseline is None else json.loads(row.baseline),
            good=row.good,
            rejected=row.rejected,
            reason=row.reason,
            updated_at=row.updated_at,
        )

    # ------------------------------------------------------------------ canister fills

    def open_fill(self, fill: CanisterFill, *, actor: str) -> None:
        with self.ledger.audited(actor, "canister", "canister refill announced") as conn:
            conn.execute(
                insert(canister_fills).values(
                    key=fill.key,
                    packer=fill.packer,
                    canister=fill.canister,
                    gtin=fill.gtin,
                    quantity=fill.quantity,
                    refilled_before=fill.refilled_before,
                    status="open",
                    created_at=self.ledger.clock(),
                    batch=fill.batch,
                    count_before=fill.count_before,
                    dispensed_before=fill.dispensed_before,
                )
            )
            self.ledger.note(
                "canister_fill",
                fill.key,
                None,
                {
                    "canister": fill.canister,
                    "quantity": fill.quantity,
                    "batch": fill.batch,
                    "status": "open",
                },
            )

    def confirm_fill(self, key: str, *, by: str, actor: str) -> None:
        """Records the scan station whose scan confirmed the pack at the canister."""
        with self.ledger.audited(actor, "canister", f"pack scanned at {by}") as conn:
            done = conn.execute(
                update(canister_fills)
                .where(canister_fills.c.key == key, canister_fills.c.status == "open")
                .values(confirmed_by=by)
            ).rowcount
            if done:
                self.ledger.note("canister_fill", key, {"confirmed_by": None}, {"confirmed_by": by})

    def close_fill(self, key: str, status: str, *, actor: str, reason: str) -> None:
        if status not in ("posted", "voided"):
            raise ValueError(f"fill status {status!r}")
        with self.ledger.audited(actor, "canister", reason) as conn:
            done = conn.execute(
                update(canister_fills)
                .where(canister_fills.c.key == key, canister_fills.c.status == "open")
                .values(status=status)
            ).rowcount
            if done:
                self.ledger.note("canister_fill", key, {"status": "open"}, {"status": status})

    def open_fills(self, packer: str | None = None) -> list[CanisterFill]:
        """Refills not settled yet, of one packer or of all."""
        query = select(canister_fills).where(canister_fills.c.status == "open")
        if packer is not None:
            query = query.where(canister_fills.c.packer == packer)
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(query.order_by(canister_fills.c.created_at)).all()
        return [self._fill(r) for r in rows]

    def current_lot(self, packer: str, canister: int) -> str | None:
        """The lot of the canister's last booked refill (None: never refilled here)."""
        with self.ledger.engine.connect() as conn:
            return conn.execute(
                select(canister_fills.c.batch)
                .where(
                    canister_fills.c.packer == packer,
                    canister_fills.c.canister == canister,
                    canister_fills.c.status == "posted",
                    canister_fills.c.batch.is_not(None),
                )
                .order_by(canister_fills.c.created_at.desc())
                .limit(1)
            ).scalar()

    @staticmethod
    def _fill(r: Any) -> CanisterFill:
        return CanisterFill(
            r.key,
            r.packer,
            r.canister,
            r.gtin,
            r.quantity,
            r.refilled_before,
            r.status,
            r.batch,
            r.count_before,
            r.dispensed_before,
            r.confirmed_by,
        )
