"""Ward supply's way out of the store: dispatch (store -> in transit, one delivery note
per drug room, back orders for what was not picked) and receipt on the ward (in transit
-> drug room, deviations booked with their reason, an uncounted room's stock used on
delivery). Functions on a WardSupply (controller.wardsupply.service), which offers them
as its methods."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from controller.gs1 import PackId
from controller.ledger import LotMove, ReservationClosed, Use
from controller.ledger.ledger import ADJUSTMENT, CONSUMED, WASTE
from controller.ledger.schema import lots, products
from controller.ledger.schema_wardsupply import (
    ward_delivery_notes,
    ward_note_lines,
    ward_pick_lists,
    ward_pick_scans,
    ward_requisition_lines,
)
from controller.ledger.ward_locations import drug_room_location, transit_location
from controller.wardsupply import views
from controller.wardsupply.model import (
    Conflict,
    Deviation,
    LineStatus,
    NoteStatus,
    PickListStatus,
    Refused,
    UnknownEntity,
    WardSupplyError,
)

if TYPE_CHECKING:
    from controller.wardsupply.service import WardSupply

L = ward_requisition_lines
ACTOR = "ward-supply"


@dataclass(frozen=True)
class Dispatched:
    pick_list: str
    notes: tuple[str, ...]
    lines: int
    short_lines: int
    back_orders: tuple[int, ...]
    packs: tuple[tuple[PackId, str], ...]  # serialised packs and where they went


@dataclass(frozen=True)
class ReceiptLine:
    """A deviation found at receipt: `units` of the note line's lot were missing,
    damaged, or came too many."""

    gtin: str
    batch: str
    deviation: Deviation
    units: int
    reason: str


@dataclass(frozen=True)
class Received:
    note: str
    booked: bool  # False: received before; nothing changed
    units: int
    deviations: int
    consumed_on_delivery: int


def dispatch(ws: WardSupply, number: str, *, actor: str) -> Dispatched:
    """Books what was scanned from the store into transit (lot by lot), releases the
    rest (its packs become a back order), and writes one delivery note per drug
    room. Safe to repeat: a list already dispatched answers its notes again."""
    with ws.ledger.engine.connect() as c:
        row = c.execute(select(ward_pick_lists).where(ward_pick_lists.c.number == number)).first()
        if row is None:
            raise UnknownEntity("pick_list", number, "is not a known pick list")
        existing = tuple(
            c.execute(
                select(ward_delivery_notes.c.number).where(
                    ward_delivery_notes.c.pick_list_id == row.id
                )
            ).scalars()
        )
        lines_ = views.lines_of_list(c, row.id)
        scans = c.execute(
            select(
                ward_pick_scans.c.line_id,
                ward_pick_scans.c.batch,
                ward_pick_scans.c.serial,
                ward_pick_scans.c.units,
                lots.c.expiry,
                lots.c.id,
            )
            .join(
                lots,
                (lots.c.product_id == ward_pick_scans.c.product_id)
                & (lots.c.batch == ward_pick_scans.c.batch),
            )
            .where(ward_pick_scans.c.pick_list_id == row.id)
        ).all()
    transit = transit_location(row.hospital)
    per_line: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    lot_ids: dict[str, int] = {}
    packs: list[tuple[PackId, str]] = []
    for s in scans:
        per_line[int(s.line_id)][str(s.batch)] += int(s.units)
        lot_ids[str(s.batch)] = int(s.id)
    gtins = {x.id: (x.approved_gtin or x.gtin) for x in lines_}
    for s in scans:
        if s.serial:
            packs.append((PackId(gtins[int(s.line_id)], s.batch, s.expiry, s.serial), transit))
    if row.status == PickListStatus.DISPATCHED:
        # A repeat (after a crash, say) answers the notes again, and the packs, so
        # that their decommissioning is queued even if the first answer was lost.
        return Dispatched(number, existing, 0, 0, (), tuple(packs))
    unreserved = [x.id for x in lines_ if x.reserved_units == 0 and x.reservation_key]
    if unreserved:
        # A list is reserved line by line just after it is made: dispatching before
        # would leave the late reservations open and the lines short for nothing.
        raise Conflict(
            "pick_list",
            number,
            f"the stock of line {unreserved[0]} is still being reserved: dispatch in a moment",
        )
    check_licences(ws, number, lines_, per_line)
    # 1. the ledger: each line's reservation posted per scanned lot, or voided
    for line in lines_:
        if line.reservation_key is None or line.reserved_units == 0:
            continue
        picked = per_line.get(line.id, {})
        uses = [
            Use(
                gtins[line.id],
                units,
                transit,
                kind="transfer",
                batch=batch,
                reason=f"ward delivery {number}",
            )
            for batch, units in sorted(picked.items())
        ]
        try:
            if uses:
                ws.ledger.post(
                    f"{line.reservation_key}:dispatch",
                    reservation_key=line.reservation_key,
                    uses=uses,
                    actor=actor,
                )
            else:
                ws.ledger.void(
                    f"{line.reservation_key}:void",
                    reservation_key=line.reservation_key,
                    actor=actor,
                    reason=f"nothing picked on {number}",
                )
        except ReservationClosed as exc:
            # Our own post or void after a crash returns its stored result and never
            # lands here: the stock was released (expired) or taken by someone else.
            raise Conflict(
                "pick_list",
                number,
                f"the stock held for line {line.id} is {exc.status}: nothing of this"
                " list was booked; make the list again for its lines",
            ) from exc
    # 2. the notes, the lines' states and the back orders, in one transaction
    now = ws.clock()
    notes: list[str] = []
    back: list[int] = []
    short = 0
    with ws.ledger.audited(actor, "ward dispatch", f"pick list {number}") as c:
        done = c.execute(
            update(ward_pick_lists)
            .where(
                ward_pick_lists.c.id == row.id,
                ward_pick_lists.c.status == str(PickListStatus.OPEN),
            )
            .values(status=str(PickListStatus.DISPATCHED), dispatched_at=now, dispatched_by=actor)
        ).rowcount
        if done != 1:
            raise Conflict("pick_list", number, "was dispatched by someone else meanwhile")
        per_room: dict[str, list[tuple[Any, str, int]]] = defaultdict(list)
        for line in lines_:
            picked_total = sum(per_line.get(line.id, {}).values())
            if picked_total < line.reserved_units:
                # a rationed line's draw counts what leaves for the ward
                ws.ledger.settle_ration_draw_in(c, "ward", str(line.id), picked_total)
            if picked_total == 0:
                short += 1
                c.execute(update(L).where(L.c.id == line.id).values(status=str(LineStatus.SHORT)))
                packs_wanted = line.wanted_units // line.pack_size
                b = ws.back_order(c, line.id, packs_wanted, "not picked")
            else:
                c.execute(
                    update(L).where(L.c.id == line.id).values(status=str(LineStatus.DISPATCHED))
                )
                rest = line.reserved_units - picked_total
                b = None
                if rest > 0:
                    short += 1
                    b = ws.back_order(c, line.id, -(-rest // line.pack_size), "short pick")
                for batch, units in per_line[line.id].items():
                    per_room[line.drug_room].append((line, batch, units))
            if b is not None:
                back.append(b)
        for room_code in sorted(per_room):
            room = ws.room(room_code)
            note_id = c.execute(
                insert(ward_delivery_notes)
                .values(
                    number=f"tmp-{row.id}-{room_code}"[:40],
                    pick_list_id=row.id,
                    drug_room=room_code,
                    hospital=room.hospital,
                    ward=room.ward,
                    status=str(NoteStatus.IN_TRANSIT),
                    dispatched_at=now,
                )
                .returning(ward_delivery_notes.c.id)
            ).scalar_one()
            note_no = f"DN-{now.astimezone(ws.tz):%Y%m%d}-{note_id:06d}"
            c.execute(
                update(ward_delivery_notes)
                .where(ward_delivery_notes.c.id == note_id)
                .values(number=note_no)
            )
            for line, batch, units in per_room[room_code]:
                pid = c.execute(
                    select(products.c.id).where(
                        products.c.gtin == (line.approved_gtin or line.gtin)
                    )
                ).scalar_one()
                c.execute(
                    insert(ward_note_lines).values(
                        note_id=note_id,
                        line_id=line.id,
                        product_id=pid,
                        lot_id=lot_ids[batch],
                        units=units,
                    )
                )
            ws.ledger.note(
                "ward_delivery_note",
                note_no,
                None,
                {
                    "drug_room": room_code,
                    "pick_list": number,
                    "lines": [
                        {"line": x.id, "batch": b, "units": u} for x, b, u in per_room[room_code]
                    ],
                },
            )
            notes.append(note_no)
    return Dispatched(number, tuple(notes), len(lines_), short, tuple(back), tuple(packs))


def check_licences(
    ws: WardSupply, number: str, lines_: Sequence[Any], per_line: dict[int, dict[str, int]]
) -> None:
    """A licence product (catalogue `licence: true`) leaves only for a ward that holds a
    valid ward licence for it on the site's day of dispatch. Every line without one is
    named and the whole dispatch is refused, before anything is booked: record the
    licence (`doseline duty licence record`), or take the line off, and dispatch again."""
    day = ws.clock().astimezone(ws.tz).date()
    missing: list[str] = []
    for line in lines_:
        gtin = line.approved_gtin or line.gtin
        product = ws.products.get(gtin)
        if product is None or not product.licence or not per_line.get(line.id):
            continue
        ward = ws.room(line.drug_room).ward
        if ws.ledger.valid_licence(gtin, ward, day) is None:
            missing.append(
                f"licence: no valid licence for {product.name} ({gtin}) on ward {ward}"
                f" on {day} (line {line.id})"
            )
    if missing:
        raise Refused("pick_list", number, "; ".join(missing))


def receive(
    ws: WardSupply,
    number: str,
    *,
    actor: str,
    deviations: Sequence[ReceiptLine] = (),
    auto: bool = False,
) -> Received:
    """The ward confirms a delivery note: stock moves from transit into the drug
    room, deviations are booked with their reason (missing: an adjustment out of
    transit; damaged: waste; too many: an adjustment into the room), and an
    uncounted room's stock counts as used at once. One transaction; once only."""
    with ws.ledger.engine.connect() as c:
        note = views.note(c, number)
    if note.status == NoteStatus.RECEIVED:
        raise Conflict("note", number, f"was already received at {note.received_at:%Y-%m-%d %H:%M}")
    room = ws.room(note.drug_room)
    per_lot: dict[tuple[str, str], int] = defaultdict(int)
    for x in note.lines:
        per_lot[(x.gtin, x.batch)] += x.units
    dev: dict[tuple[str, str], list[ReceiptLine]] = defaultdict(list)
    for i, d in enumerate(deviations):
        try:
            kind = Deviation(d.deviation)
        except ValueError as exc:
            raise WardSupplyError(
                f"deviations[{i}].deviation",
                d.deviation,
                "must be missing, damaged or too_many",
            ) from exc
        if (d.gtin, d.batch) not in per_lot:
            raise WardSupplyError(
                f"deviations[{i}].batch", f"{d.gtin}/{d.batch}", f"is not on note {number}"
            )
        if isinstance(d.units, bool) or not isinstance(d.units, int) or d.units <= 0:
            raise WardSupplyError(f"deviations[{i}].units", d.units, "must be at least 1")
        _reason(d.reason, f"deviations[{i}].reason")
        dev[(d.gtin, d.batch)].append(ReceiptLine(d.gtin, d.batch, kind, d.units, d.reason))
    for key, items in dev.items():
        lost = sum(x.units for x in items if x.deviation is not Deviation.TOO_MANY)
        if lost > per_lot[key]:
            raise WardSupplyError(
                "deviations.units", lost, f"more than the {per_lot[key]} units of {key[1]} sent"
            )
    transit = transit_location(note.hospital)
    shelf = drug_room_location(room)
    moves: list[LotMove] = []
    arrived: dict[tuple[str, str], int] = {}
    for (gtin, batch), sent in per_lot.items():
        items = dev.get((gtin, batch), [])
        missing = sum(x.units for x in items if x.deviation is Deviation.MISSING)
        damaged = sum(x.units for x in items if x.deviation is Deviation.DAMAGED)
        extra = sum(x.units for x in items if x.deviation is Deviation.TOO_MANY)
        good = sent - missing - damaged
        why = f"delivery note {number}"
        if good:
            moves.append(LotMove(gtin, batch, good, transit, shelf, reason=why))
        if missing:
            moves.append(
                LotMove(
                    gtin,
                    batch,
                    missing,
                    transit,
                    ADJUSTMENT,
                    kind="adjust",
                    reason=_why(items, Deviation.MISSING, number),
                )
            )
        if damaged:
            moves.append(
                LotMove(
                    gtin,
                    batch,
                    damaged,
                    transit,
                    WASTE,
                    kind="waste",
                    reason_code="damaged",
                    reason=_why(items, Deviation.DAMAGED, number),
                )
            )
        if extra:
            moves.append(
                LotMove(
                    gtin,
                    batch,
                    extra,
                    ADJUSTMENT,
                    shelf,
                    kind="adjust",
                    reason=_why(items, Deviation.TOO_MANY, number),
                )
            )
        arrived[(gtin, batch)] = good + extra
    consumed = 0
    if not room.counted:
        for (gtin, batch), units in arrived.items():
            if units:
                moves.append(
                    LotMove(
                        gtin,
                        batch,
                        units,
                        shelf,
                        CONSUMED,
                        kind="consume",
                        reason=f"ward stock used on delivery ({number})",
                    )
                )
                consumed += units
    now = ws.clock()

    def record(c: Connection) -> dict[str, Any]:
        done = c.execute(
            update(ward_delivery_notes)
            .where(
                ward_delivery_notes.c.number == number,
                ward_delivery_notes.c.status == str(NoteStatus.IN_TRANSIT),
            )
            .values(
                status=str(NoteStatus.RECEIVED),
                received_at=now,
                received_by=actor,
                auto_received=auto,
            )
        ).rowcount
        if done != 1:
            raise Conflict("note", number, "was received by someone else meanwhile")
        delivered: dict[int, int] = defaultdict(int)
        left = {k: list(v) for k, v in dev.items()}
        for x in note.lines:
            items = left.get((x.gtin, x.batch), [])
            lost = sum(i.units for i in items if i.deviation is not Deviation.TOO_MANY)
            extra = sum(i.units for i in items if i.deviation is Deviation.TOO_MANY)
            take = min(lost, x.units)
            got = x.units - take + extra
            if items:
                left[(x.gtin, x.batch)] = []  # the lot's deviation is told on its first line
                if take < lost:
                    left[(x.gtin, x.batch)] = [
                        ReceiptLine(x.gtin, x.batch, Deviation.MISSING, lost - take, "rest")
                    ]
            c.execute(
                update(ward_note_lines)
                .where(ward_note_lines.c.id == x.id)
                .values(
                    received_units=got,
                    deviation=str(items[0].deviation) if items else None,
                    deviation_units=(take + extra) if items else 0,
                    deviation_reason="; ".join(i.reason for i in items)[:300] or None,
                )
            )
            delivered[x.line_id] += got
        for line_id, units in delivered.items():
            c.execute(
                update(L)
                .where(L.c.id == line_id)
                .values(
                    status=str(LineStatus.DELIVERED),
                    delivered_units=L.c.delivered_units + units,
                    received_at=now,
                )
            )
        ws.ledger.note(
            "ward_receipt",
            number,
            {"status": "in_transit"},
            {
                "status": "received",
                "auto": auto,
                "deviations": [
                    {
                        "gtin": d.gtin,
                        "batch": d.batch,
                        "deviation": str(d.deviation),
                        "units": d.units,
                        "reason": d.reason,
                    }
                    for d in deviations
                ],
            },
        )
        return {"note": number}

    result = ws.ledger.move_lots(
        f"ward-receipt:{number}",
        moves,
        actor=actor,
        reason=f"delivery note {number} received" + (" (automatically)" if auto else ""),
        within=record,
    )
    return Received(
        note=number,
        booked=result.get("note") == number,
        units=sum(arrived.values()),
        deviations=len(deviations),
        consumed_on_delivery=consumed,
    )


def auto_receive(ws: WardSupply, *, actor: str = ACTOR) -> list[str]:
    """Notes in transit longer than the site allows count as received."""
    limit = ws.clock() - timedelta(hours=ws.config.auto_receive_after_h)
    with ws.ledger.engine.connect() as c:
        due = (
            c.execute(
                select(ward_delivery_notes.c.number).where(
                    ward_delivery_notes.c.status == str(NoteStatus.IN_TRANSIT),
                    ward_delivery_notes.c.dispatched_at <= limit,
                )
            )
            .scalars()
            .all()
        )
    done = []
    for number in due:
        try:
            ws.receive(number, actor=actor, auto=True)
            done.append(number)
        except Conflict:
            continue
    return done


def _why(items: Sequence[ReceiptLine], kind: Deviation, number: str) -> str:
    text = "; ".join(x.reason for x in items if x.deviation is kind)
    return f"{kind} at receipt of {number}: {text}"[:200]


def _reason(reason: str, name: str = "reason") -> None:
    from controller.wardsupply.service import check_reason

    check_reason(reason, name)
