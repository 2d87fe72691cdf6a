"""Read-only views of ward supply: requisitions, review queue, pick lists and delivery
notes as the API, the CLI and the console show them. Nothing here writes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, select

from controller.ledger.schema import lots, products
from controller.ledger.schema_wardsupply import (
    ward_delivery_notes,
    ward_note_lines,
    ward_pick_lists,
    ward_pick_scans,
    ward_requisition_lines,
    ward_requisitions,
)
from controller.wardsupply.model import UnknownEntity

L = ward_requisition_lines
R = ward_requisitions


@dataclass(frozen=True)
class LineView:
    id: int
    requisition: str
    line_no: int
    drug_room: str
    hospital: str
    ward: str
    urgent: bool
    gtin: str
    name: str
    packs: int
    pack_size: int
    approved_gtin: str | None
    approved_packs: int | None
    status: str
    flags: tuple[str, ...]
    usual_packs: int | None
    decision: str | None
    decided_by: str | None
    reason: str | None
    run: str | None
    run_date: date | None
    due_at: datetime | None
    pick_list: str | None
    reserved_units: int
    picked_units: int
    delivered_units: int
    purchase_order: str | None
    back_order_of: int | None

    @property
    def wanted_units(self) -> int:
        return (self.approved_packs or 0) * self.pack_size


@dataclass(frozen=True)
class RequisitionView:
    number: str
    sender: str
    sender_id: str
    drug_room: str
    hospital: str
    ward: str
    source: str
    urgent: bool
    requested_by: str
    received_at: datetime
    lines: tuple[LineView, ...]


@dataclass(frozen=True)
class PickLine:
    """One line of a pick list: what to take, from which lots and bins (FEFO), and how
    much of it has been confirmed by scans."""

    line_id: int
    drug_room: str
    gtin: str
    name: str
    pack_size: int
    wanted_units: int
    reserved_units: int
    picked_units: int
    lots: tuple[dict[str, Any], ...]  # batch, expiry, location, units, picked


@dataclass(frozen=True)
class PickListView:
    number: str
    hospital: str
    run: str
    run_date: date
    urgent: bool
    status: str
    created_at: datetime
    dispatched_at: datetime | None
    lines: tuple[PickLine, ...]

    @property
    def complete(self) -> bool:
        return all(x.picked_units >= x.reserved_units for x in self.lines)

    @property
    def ready(self) -> bool:
        """Every line's stock is reserved (a list just made is reserved line by line)."""
        return all(x.reserved_units > 0 for x in self.lines)


@dataclass(frozen=True)
class NoteLine:
    id: int
    line_id: int
    gtin: str
    name: str
    batch: str
    expiry: date
    units: int
    packs: float
    received_units: int | None
    deviation: str | None
    deviation_units: int
    deviation_reason: str | None

    @property
    def gs1(self) -> str:
        """The GS1 element string of the line's lot: (01) GTIN (17) expiry (10) batch."""
        return f"(01){self.gtin}(17){self.expiry:%y%m%d}(10){self.batch}"


@dataclass(frozen=True)
class NoteView:
    number: str
    pick_list: str
    drug_room: str
    hospital: str
    ward: str
    status: str
    dispatched_at: datetime
    received_at: datetime | None
    received_by: str | None
    auto_received: bool
    lines: tuple[NoteLine, ...]


def _line_query() -> Any:
    approved = products.alias("approved")
    return (
        select(
            L.c.id,
            R.c.number,
            L.c.line_no,
            R.c.drug_room,
            R.c.hospital,
            R.c.ward,
            R.c.urgent,
            products.c.gtin,
            products.c.name,
            L.c.packs,
            products.c.pack_size,
            approved.c.gtin.label("approved_gtin"),
            approved.c.pack_size.label("approved_pack_size"),
            L.c.approved_packs,
            L.c.status,
            L.c.flags,
            L.c.usual_packs,
            L.c.decision,
            L.c.decided_by,
            L.c.reason,
            L.c.run_code,
            L.c.run_date,
            L.c.due_at,
            ward_pick_lists.c.number.label("pick_list"),
            L.c.reserved_units,
            L.c.picked_units,
            L.c.delivered_units,
            L.c.purchase_order,
            L.c.back_order_of,
        )
        .join(R, R.c.id == L.c.requisition_id)
        .join(products, products.c.id == L.c.product_id)
        .outerjoin(approved, approved.c.id == L.c.approved_product_id)
        .outerjoin(ward_pick_lists, ward_pick_lists.c.id == L.c.pick_list_id)
    )


def _line(r: Any) -> LineView:
    return LineView(
        id=r.id,
        requisition=r.number,
        line_no=r.line_no,
        drug_room=r.drug_room,
        hospital=r.hospital,
        ward=r.ward,
        urgent=bool(r.urgent),
        gtin=r.gtin,
        name=r.name,
        packs=r.packs,
        pack_size=int(r.approved_pack_size or r.pack_size),
        approved_gtin=r.approved_gtin,
        approved_packs=r.approved_packs,
        status=r.status,
        flags=tuple(f for f in (r.flags or "").split(",") if f),
        usual_packs=r.usual_packs,
        decision=r.decision,
        decided_by=r.decided_by,
        reason=r.reason,
        run=r.run_code,
        run_date=r.run_date,
        due_at=r.due_at,
        pick_list=r.pick_list,
        reserved_units=r.reserved_units,
        picked_units=r.picked_units,
        delivered_units=r.delivered_units,
        purchase_order=r.purchase_order,
        back_order_of=r.back_order_of,
    )


def lines(
    conn: Connection,
    *,
    statuses: tuple[str, ...] | None = None,
    drug_room: str | None = None,
    ids: list[int] | None = None,
    limit: int | None = None,
) -> list[LineView]:
    q = _line_query().order_by(R.c.urgent.desc(), L.c.id)
    if statuses is not None:
        q = q.where(L.c.status.in_(statuses))
    if drug_room is not None:
        q = q.where(R.c.drug_room == drug_room)
    if ids is not None:
        q = q.where(L.c.id.in_(ids))
    if limit is not None:
        q = q.limit(limit)
    return [_line(r) for r in conn.execute(q)]


def requisition(conn: Connection, number: str) -> RequisitionView:
    row = conn.execute(select(R).where(R.c.number == number)).first()
    if row is None:
        raise UnknownEntity("requisition", number, "is not a known requisition")
    q = _line_query().where(L.c.requisition_id == row.id).order_by(L.c.line_no)
    return RequisitionView(
        number=row.number,
        sender=row.sender,
        sender_id=row.sender_id,
        drug_room=row.drug_room,
        hospital=row.hospital,
        ward=row.ward,
        source=row.source,
        urgent=bool(row.urgent),
        requested_by=row.requested_by,
        received_at=row.received_at,
        lines=tuple(_line(r) for r in conn.execute(q)),
    )


def requisition_numbers(conn: Connection, *, limit: int = 200) -> list[str]:
    q = select(R.c.number).order_by(R.c.id.desc()).limit(limit)
    return [str(n) for n in conn.execute(q).scalars()]


def pick_list(conn: Connection, number: str) -> PickListView:
    """The pick list with its lines, and for each line the lots and bins the ledger
    holds for it (first expiry first) with what scans have confirmed of each."""
    row = conn.execute(select(ward_pick_lists).where(ward_pick_lists.c.number == number)).first()
    if row is None:
        raise UnknownEntity("pick_list", number, "is not a known pick list")
    scanned: dict[tuple[int, str], int] = defaultdict(int)
    for line_id, batch, units in conn.execute(
        select(ward_pick_scans.c.line_id, ward_pick_scans.c.batch, ward_pick_scans.c.units).where(
            ward_pick_scans.c.pick_list_id == row.id
        )
    ):
        scanned[(int(line_id), str(batch))] += int(units)
    out = []
    list_lines = lines_of_list(conn, row.id)
    held = held_lots(conn, [x.reservation_key for x in list_lines if x.reservation_key])
    for line in list_lines:
        lot_rows = []
        seen = scanned.copy()
        for a in held.get(line.reservation_key or "", []):
            done = min(a.units, seen.get((line.id, a.batch), 0))
            seen[(line.id, a.batch)] = seen.get((line.id, a.batch), 0) - done
            lot_rows.append(
                {
                    "gtin": a.gtin,
                    "batch": a.batch,
                    "expiry": a.expiry,
                    "location": a.location,
                    "units": a.units,
                    "picked": done,
                }
            )
        out.append(
            PickLine(
                line_id=line.id,
                drug_room=line.drug_room,
                gtin=line.approved_gtin or line.gtin,
                name=line.name,
                pack_size=line.pack_size,
                wanted_units=line.wanted_units,
                reserved_units=line.reserved_units,
                picked_units=line.picked_units,
                lots=tuple(lot_rows),
            )
        )
    return PickListView(
        number=row.number,
        hospital=row.hospital,
        run=row.run_code,
        run_date=row.run_date,
        urgent=bool(row.urgent),
        status=row.status,
        created_at=row.created_at,
        dispatched_at=row.dispatched_at,
        lines=tuple(out),
    )


@dataclass(frozen=True)
class _ListLine:
    id: int
    drug_room: str
    gtin: str
    approved_gtin: str | None
    name: str
    pack_size: int
    wanted_units: int
    reservation_key: str | None
    reserved_units: int
    picked_units: int


def lines_of_list(conn: Connection, list_id: int, *, gtin: str | None = None) -> list[_ListLine]:
    approved = products.alias("approved")
    q = (
        select(
            L.c.id,
            R.c.drug_room,
            products.c.gtin,
            approved.c.gtin,
            approved.c.name,
            approved.c.pack_size,
            L.c.approved_packs,
            L.c.reservation_key,
            L.c.reserved_units,
            L.c.picked_units,
        )
        .join(R, R.c.id == L.c.requisition_id)
        .join(products, products.c.id == L.c.product_id)
        .join(approved, approved.c.id == L.c.approved_product_id)
        .where(L.c.pick_list_id == list_id)
        .order_by(R.c.drug_room, approved.c.name, L.c.id)
    )
    if gtin is not None:
        q = q.where(approved.c.gtin == gtin)
    rows = conn.execute(q).all()
    return [
        _ListLine(
            id=r[0],
            drug_room=r[1],
            gtin=r[2],
            approved_gtin=r[3],
            name=r[4],
            pack_size=int(r[5]),
            wanted_units=int(r[6] or 0) * int(r[5]),
            reservation_key=r[7],
            reserved_units=int(r[8]),
            picked_units=int(r[9]),
        )
        for r in rows
    ]


def lines_of_product(conn: Connection, list_id: int, gtin: str) -> list[_ListLine]:
    """The lines of a pick list that deliver `gtin` (what one scan can confirm)."""
    return [
        x for x in lines_of_list(conn, list_id, gtin=gtin) if (x.approved_gtin or x.gtin) == gtin
    ]


def scanned_units(conn: Connection, line_ids: list[int]) -> dict[tuple[int, str], int]:
    """Units confirmed by scans, per (line, batch)."""
    out: dict[tuple[int, str], int] = defaultdict(int)
    if not line_ids:
        return out
    for line_id, batch, units in conn.execute(
        select(ward_pick_scans.c.line_id, ward_pick_scans.c.batch, ward_pick_scans.c.units).where(
            ward_pick_scans.c.line_id.in_(line_ids)
        )
    ):
        out[(int(line_id), str(batch))] += int(units)
    return out


@dataclass(frozen=True)
class HeldLot:
    """What a line's reservation holds of one lot at one bin (its open part)."""

    gtin: str
    batch: str
    expiry: date
    location: str
    units: int


def held_lots(conn: Connection, keys: list[str]) -> dict[str, list[HeldLot]]:
    """The lots each reservation holds, first expiry first, in one query (a pick list
    of hundreds of lines is read at once, and a scan reads only its product's lines)."""
    from controller.ledger.schema import locations, reservation_lines, reservations

    out: dict[str, list[HeldLot]] = defaultdict(list)
    if not keys:
        return out
    rows = conn.execute(
        select(
            reservations.c.key,
            products.c.gtin,
            lots.c.batch,
            lots.c.expiry,
            locations.c.code,
            reservation_lines.c.quantity,
        )
        .join(reservation_lines, reservation_lines.c.reservation_id == reservations.c.id)
        .join(products, products.c.id == reservation_lines.c.product_id)
        .join(lots, lots.c.id == reservation_lines.c.lot_id)
        .join(locations, locations.c.id == reservation_lines.c.location_id)
        .where(reservations.c.key.in_(keys))
        .order_by(reservations.c.key, lots.c.expiry, reservation_lines.c.id)
    )
    for key, gtin, batch, expiry, code, quantity in rows:
        out[str(key)].append(HeldLot(gtin, batch, expiry, code, int(quantity)))
    return out


def pick_list_numbers(conn: Connection, status: str | None = None) -> list[str]:
    q = select(ward_pick_lists.c.number).order_by(ward_pick_lists.c.id)
    if status is not None:
        q = q.where(ward_pick_lists.c.status == status)
    return [str(n) for n in conn.execute(q).scalars()]


def note(conn: Connection, number: str) -> NoteView:
    row = conn.execute(
        select(ward_delivery_notes, ward_pick_lists.c.number.label("list_number"))
        .join(ward_pick_lists, ward_pick_lists.c.id == ward_delivery_notes.c.pick_list_id)
        .where(ward_delivery_notes.c.number == number)
    ).first()
    if row is None:
        raise UnknownEntity("note", number, "is not a known delivery note")
    n = ward_note_lines
    rows = conn.execute(
        select(
            n.c.id,
            n.c.line_id,
            products.c.gtin,
            products.c.name,
            products.c.pack_size,
            lots.c.batch,
            lots.c.expiry,
            n.c.units,
            n.c.received_units,
            n.c.deviation,
            n.c.deviation_units,
            n.c.deviation_reason,
        )
        .join(products, products.c.id == n.c.product_id)
        .join(lots, lots.c.id == n.c.lot_id)
        .where(n.c.note_id == row.id)
        .order_by(products.c.name, lots.c.expiry, n.c.id)
    ).all()
    return NoteView(
        number=row.number,
        pick_list=row.list_number,
        drug_room=row.drug_room,
        hospital=row.hospital,
        ward=row.ward,
        status=row.status,
        dispatched_at=row.dispatched_at,
        received_at=row.received_at,
        received_by=row.received_by,
        auto_received=bool(row.auto_received),
        lines=tuple(
            NoteLine(
                id=r.id,
                line_id=r.line_id,
                gtin=r.gtin,
                name=r.name,
                batch=r.batch,
                expiry=r.expiry,
                units=r.units,
                packs=round(r.units / r.pack_size, 2),
                received_units=r.received_units,
                deviation=r.deviation,
                deviation_units=r.deviation_units,
                deviation_reason=r.deviation_reason,
            )
            for r in rows
        ),
    )


def note_numbers(
    conn: Connection, *, status: str | None = None, drug_room: str | None = None
) -> list[str]:
    q = select(ward_delivery_notes.c.number).order_by(ward_delivery_notes.c.id)
    if status is not None:
        q = q.where(ward_delivery_notes.c.status == status)
    if drug_room is not None:
        q = q.where(ward_delivery_notes.c.drug_room == drug_room)
    return [str(x) for x in conn.execute(q).scalars()]
