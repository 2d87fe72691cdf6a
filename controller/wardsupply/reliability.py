"""Delivery reliability to the wards: the share of order lines delivered on time and in
full, against the contract's target (95 %), with every unmet line and its cause.

A line counts once it was due (its delivery run's departure plus the site's grace) or
delivered, whichever comes first, within the window. In full means the units received
on the ward reach what the pharmacist approved; a back order that carries the rest of a
short line is the same demand and is not counted again. Rejected lines and lines still
in review are not deliveries and are left out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from controller.ledger.schema import products
from controller.ledger.schema_wardsupply import (
    ward_note_lines,
    ward_requisition_lines,
    ward_requisitions,
)
from controller.wardsupply import rules
from controller.wardsupply.model import LineStatus

L = ward_requisition_lines
R = ward_requisitions
_COUNTED = (
    LineStatus.APPROVED,
    LineStatus.ORDERED,
    LineStatus.PICKING,
    LineStatus.DISPATCHED,
    LineStatus.DELIVERED,
    LineStatus.SHORT,
)


@dataclass(frozen=True)
class UnmetLine:
    requisition: str
    line_no: int
    drug_room: str
    hospital: str
    gtin: str
    name: str
    wanted_units: int
    delivered_units: int
    due_at: datetime | None
    received_at: datetime | None
    cause: str


@dataclass(frozen=True)
class HospitalShare:
    hospital: str
    lines: int
    on_time_in_full: int
    share: float | None


@dataclass(frozen=True)
class ReliabilityReport:
    since: datetime
    until: datetime
    target: float
    lines: int
    on_time_in_full: int
    share: float | None
    meets_target: bool | None
    by_hospital: tuple[HospitalShare, ...]
    by_cause: dict[str, int]
    unmet: tuple[UnmetLine, ...]


def delivery_reliability(
    engine: Engine, *, since: datetime, until: datetime, now: datetime, target: float = 0.95
) -> ReliabilityReport:
    if since.tzinfo is None or until.tzinfo is None or now.tzinfo is None:
        raise ValueError("since, until and now must carry a time zone")
    if since >= until:
        raise ValueError(f"since: {since.isoformat()} must be before until {until.isoformat()}")
    approved = products.alias("approved")
    with engine.connect() as c:
        rows = c.execute(
            select(
                L.c.id,
                L.c.line_no,
                L.c.status,
                L.c.approved_packs,
                L.c.delivered_units,
                L.c.due_at,
                L.c.received_at,
                L.c.purchase_order,
                L.c.back_order_of,
                R.c.number,
                R.c.drug_room,
                R.c.hospital,
                approved.c.gtin,
                approved.c.name,
                approved.c.pack_size,
            )
            .join(R, R.c.id == L.c.requisition_id)
            .join(approved, approved.c.id == L.c.approved_product_id)
            .where(L.c.status.in_(tuple(map(str, _COUNTED))))
        ).all()
        deviated = {
            int(x)
            for x in c.execute(
                select(ward_note_lines.c.line_id).where(ward_note_lines.c.deviation.is_not(None))
            ).scalars()
        }
    # a back order's delivery belongs to the line it carries on
    by_id = {r.id: r for r in rows}
    extra: Counter[int] = Counter()
    last_received: dict[int, datetime] = {}
    carried: set[int] = set()  # lines whose rest went on as a back order: short in store
    for r in rows:
        if r.back_order_of is not None:
            root = _root(r.back_order_of, by_id)
            carried.add(root)
            extra[root] += int(r.delivered_units)
            if r.received_at is not None:
                last_received[root] = max(last_received.get(root, r.received_at), r.received_at)
    unmet: list[UnmetLine] = []
    per_hospital: dict[str, list[bool]] = {}
    for r in rows:
        if r.back_order_of is not None:
            continue
        when = r.received_at or r.due_at
        if when is None or not since <= min(when, r.due_at or when) < until:
            continue
        if r.due_at is not None and r.due_at > now and r.received_at is None:
            continue  # not due yet: no verdict
        wanted = int(r.approved_packs or 0) * int(r.pack_size)
        delivered = int(r.delivered_units) + extra[r.id]
        received = last_received.get(r.id, r.received_at) if extra[r.id] else r.received_at
        cause = rules.line_outcome(
            wanted_units=wanted,
            delivered_units=delivered,
            due_at=r.due_at,
            received_at=received,
            deviated=r.id in deviated,
            short=r.status == LineStatus.SHORT or r.id in carried,
            ordered_from_supplier=r.purchase_order is not None,
            now=now,
        )
        per_hospital.setdefault(r.hospital, []).append(cause is None)
        if cause is not None:
            unmet.append(
                UnmetLine(
                    requisition=r.number,
                    line_no=r.line_no,
                    drug_room=r.drug_room,
                    hospital=r.hospital,
                    gtin=r.gtin,
                    name=r.name,
                    wanted_units=wanted,
                    delivered_units=delivered,
                    due_at=r.due_at,
                    received_at=received,
                    cause=cause,
                )
            )
    lines = sum(len(v) for v in per_hospital.values())
    good = lines - len(unmet)
    share = round(good / lines, 4) if lines else None
    return ReliabilityReport(
        since=since,
        until=until,
        target=target,
        lines=lines,
        on_time_in_full=good,
        share=share,
        meets_target=None if not lines else good >= target * lines,
        by_hospital=tuple(
            HospitalShare(h, len(v), sum(v), round(sum(v) / len(v), 4))
            for h, v in sorted(per_hospital.items())
        ),
        by_cause=dict(Counter(u.cause for u in unmet).most_common()),
        unmet=tuple(sorted(unmet, key=lambda u: (u.cause, u.hospital, u.drug_room, u.name))),
    )


def _root(line_id: int, by_id: dict[int, Any]) -> int:
    seen = set()
    while line_id in by_id and by_id[line_id].back_order_of is not None and line_id not in seen:
        seen.add(line_id)
        line_id = by_id[line_id].back_order_of
    return line_id


def render_text(r: ReliabilityReport) -> str:
    share = "-" if r.share is None else f"{r.share:.1%}"
    verdict = {None: "no lines due", True: "meets", False: "below"}[r.meets_target]
    out = [
        f"ward delivery reliability {r.since:%Y-%m-%d %H:%M} - {r.until:%Y-%m-%d %H:%M} UTC",
        f"lines {r.lines}, on time in full {r.on_time_in_full}, share {share}"
        f" (target {r.target:.0%}: {verdict})",
    ]
    for h in r.by_hospital:
        out.append(f"  {h.hospital}: {h.on_time_in_full}/{h.lines}")
    if r.unmet:
        out.append("unmet lines by cause:")
        for cause, n in r.by_cause.items():
            out.append(f"  {cause}: {n}")
        for u in r.unmet:
            out.append(
                f"  {u.cause:<20} {u.requisition}:{u.line_no} {u.drug_room} {u.name}"
                f" {u.delivered_units}/{u.wanted_units}"
            )
    return "\n".join(out)
