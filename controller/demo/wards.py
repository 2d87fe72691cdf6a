"""The demo's ward supply: a day of requisitions from the drug rooms of two hospitals,
reviewed, picked by scan, dispatched with the morning and afternoon runs, and received
on the wards.

- 00:30 the wards' ordering system sends each drug room's requisition as a FHIR Bundle
  of SupplyRequests (one is sent twice: booked once); the municipal emergency store's
  request is refused (outside the hospital organisation). At 01:00 a technician walks
  the counted ICU drug room (a top-up round) and the counts become a requisition.
- 05:00 a pharmacist approves the routine lines together and decides each flagged line:
  controlled substances and the licence product approved, an unusual quantity reduced,
  a product off the ward's list rejected, a product the store does not keep approved
  (it becomes a supplier order, delivered at 11:00, and goes with the afternoon run).
- At each run's cutoff (06:00, 12:00) the controller makes one pick list per hospital.
  A technician at a handheld scans each pack; once a pack of the wrong lot is refused,
  and once the last pack of a line is not found (a short pick: a back order).
- 09:00 the morning's notes are received on the wards, one with a damaged pack; the
  afternoon's arrive by themselves after the site's six hours.
- 10:00 the ICU sends an urgent order: its own pick list and delivery at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from controller.app import Controller
from controller.config import Site
from controller.demo.supply import PackShelf
from controller.gs1 import PackId, encode_pack
from controller.purchasing import DeliveryRow
from controller.wardsupply import views
from controller.wardsupply.formats import Assortment, parse_fhir, parse_json
from controller.wardsupply.model import (
    Booked,
    Conflict,
    Deviation,
    Flag,
    LineStatus,
    WardSupplyError,
)
from controller.wardsupply.notes import NOTE_PREFIX
from controller.wardsupply.reliability import delivery_reliability
from controller.wardsupply.service import ReceiptLine

log = logging.getLogger("doseline.demo")
SENDER = "urn:demo-region:ward-ordering"
DEMO_WARD_PHARMACIST = "pharmacist:ward-demo"
DEMO_WARD_TECH = "technician:ward-demo"
DEMO_NURSE = "nurse:ward-demo"


def assortment_of(site: Site) -> Assortment:
    return Assortment(
        gtins={p.gtin: p.pack_size for p in site.catalogue},
        articles={p.article: p.gtin for p in site.catalogue},
        drug_rooms=[r.code for r in site.drug_rooms],
    )


def _bundle(room: str, sender_id: str, lines: list[tuple[str, int]], *, urgent: bool) -> str:
    """A FHIR R4 Bundle of SupplyRequests, as a ward ordering system would send it."""
    entries = [
        {
            "resource": {
                "resourceType": "SupplyRequest",
                "status": "active",
                "priority": "urgent" if urgent else "routine",
                "itemCodeableConcept": {
                    "coding": [{"system": "http://www.gs1.org/gtin", "code": gtin}]
                },
                "quantity": {"value": packs, "unit": "pack"},
                "deliverTo": {"identifier": {"system": "urn:doseline:drug-room", "value": room}},
                "requester": {"display": f"ward nurse, {room}"},
            },
            "request": {"method": "POST", "url": "SupplyRequest"},
        }
        for gtin, packs in lines
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": SENDER, "value": sender_id},
        "entry": entries,
    }
    return json.dumps(bundle)


@dataclass
class WardDemo:
    controller: Controller
    shelf: PackShelf
    say: Callable[[str], None]
    day_seconds: float
    day: date
    seed: int = 7
    stats: dict[str, Any] = field(default_factory=dict)
    wrong_lot_done: bool = False
    short_done: bool = False
    deviation_done: bool = False
    received: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.site = self.controller.site
        self.ws = self.controller.wardsupply
        self.desk = self.controller.ward_desk
        self.rng = random.Random(self.seed)
        self.assortment = assortment_of(self.site)
        self.stats.update(
            requisitions=0,
            lines_in=0,
            duplicates=0,
            refused=[],
            routine_approved=0,
            decisions=[],
            pick_lists=[],
            scans=0,
            scans_refused=[],
            short_picks=0,
            notes=0,
            deviations=0,
            urgent=None,
            supplier_order=None,
        )

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.controller.aledger.run(fn, *args, **kwargs)

    def _read(self, view: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A view of ward supply on a connection of its own (run on the ledger's
        thread: SQLite's readers here take the write lock too)."""
        with self.controller.ledger.engine.connect() as c:
            return view(c, *args, **kwargs)

    async def _at(self, hour: float) -> None:
        """Waits until the simulated time of day `hour` (0-24)."""
        target = self.day_seconds * hour / 24
        now = self.ws.clock()
        midnight = now.astimezone(self.ws.tz).replace(hour=0, minute=0, second=0, microsecond=0)
        elapsed = (now - midnight).total_seconds() * self.day_seconds / 86400
        await asyncio.sleep(max(0.0, target - elapsed))

    # ------------------------------------------------------------ the day

    async def work(self) -> None:
        await self._at(0.5)
        await self.requisitions()
        await self._at(1.0)
        await self.top_up_round()
        await self._at(4.5)
        await self.review()
        helpers = [
            asyncio.create_task(self.picker(), name="ward-picker"),
            asyncio.create_task(self.receiver(), name="ward-receiver"),
        ]
        try:
            await self._at(10.0)
            await self.urgent_order()
            await self._at(10.25)
            await self.afternoon_requisitions()
            await self._at(10.5)
            await self.supplier_delivers()
            await self._at(23.5)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        await self.close_the_day()
        self.say(
            f"ward receipts: {len(self.received)} delivery notes confirmed on the wards "
            f"({self.stats['deviations']} with a deviation: a damaged box, booked as waste); "
            "the afternoon's were received by themselves after six hours in transit"
        )

    async def _submit_fhir(
        self, room: str, sender_id: str, lines: list[tuple[str, int]], *, urgent: bool = False
    ) -> Booked:
        req = parse_fhir(_bundle(room, sender_id, lines, urgent=urgent), self.assortment)
        booked: Booked = await self._run(self.ws.submit, req, actor="ward-ordering:demo")
        if booked.duplicate:
            self.stats["duplicates"] += 1
        else:
            self.stats["requisitions"] += 1
            self.stats["lines_in"] += booked.lines
        return booked

    async def requisitions(self) -> None:
        rooms = [r for r in self.site.drug_rooms if not r.external and not r.counted]
        flagged = 0
        first_body: tuple[str, str, list[tuple[str, int]]] | None = None
        # A day shorter than a minute (the test runs) gets a part of each room's list,
        # smaller the shorter the day: the cabinets and packers share the ledger with it.
        share = max(2, round(16 * min(1.0, self.day_seconds / 60) ** 2))
        for i, room in enumerate(rooms):
            # A part of the list starts at another product in each room, so that a short
            # day does not send every room's paracetamol at once; a room tops up about
            # half its shelf range.
            size = len(room.assortment)
            picked = [room.assortment[(i * 3 + k) % size] for k in range(min(share, size))]
            lines = [
                (s.gtin, self.rng.randint(1, max(1, (s.max - s.min + 1) // 2))) for s in picked
            ]
            if i == 1:  # far above the ward's usual: flagged, reduced by the pharmacist
                lines[0] = (lines[0][0], 25)
            if i == 2:  # a product the store does not keep, off the ward's list
                lines.append(("07359990000228", 1))
            if i == 3:  # a product off the ward's list: the pharmacist says no
                lines.append(("07359990000181", 2))
            sender_id = f"{room.code}-{self.day:%Y%m%d}-1"
            booked = await self._submit_fhir(room.code, sender_id, lines)
            flagged += booked.flagged
            if first_body is None:
                first_body = (room.code, sender_id, lines)
        assert first_body is not None
        again = await self._submit_fhir(*first_body)  # the ordering system resends
        ext = next((r for r in self.site.drug_rooms if r.external), None)
        if ext is not None:
            body = json.dumps(
                {
                    "id": "EMS-1",
                    "drug_room": ext.code,
                    "lines": [{"gtin": "07359990000211", "packs": 20}],
                }
            )
            try:
                req = parse_json(body, self.assortment, sender="user:municipality")
                await self._run(self.ws.submit, req, actor="user:municipality")
            except WardSupplyError as exc:
                self.stats["refused"].append(str(exc))
        self.say(
            f"ward supply: {self.stats['requisitions']} requisitions (FHIR Bundles) from "
            f"{len(rooms)} drug rooms, {self.stats['lines_in']} lines, {flagged} flagged for a "
            f"pharmacist; a resend answered as duplicate of {again.number}"
        )
        for why in self.stats["refused"]:
            self.say(f"  refused: {why}")

    async def top_up_round(self) -> None:
        room = next((r for r in self.site.drug_rooms if r.counted), None)
        if room is None:
            return
        # The room is counted for the first time today: what the ledger has sent there
        # is all there can be, so every shelf is counted at what the ledger holds.
        location = f"{room.hospital}/{room.ward}/{room.code}"
        counts = [
            (
                s.gtin,
                await self._run(self.controller.ledger.on_hand, location, s.gtin)
                // self._pack_size(s.gtin),
            )
            for s in room.assortment
        ]
        booked, proposal = await self._run(
            self.ws.top_up, room.code, counts, actor=DEMO_WARD_TECH, round_id=f"{self.day}-1"
        )
        if booked is not None:
            self.stats["requisitions"] += 1
            self.stats["lines_in"] += booked.lines
        self.say(
            f"ward supply: top-up round in {room.code}: {len(counts)} shelves counted, "
            f"{len(proposal)} lines proposed up to max ({booked.number if booked else '-'})"
        )

    def _pack_size(self, gtin: str) -> int:
        return self.site.product(gtin).pack_size

    async def review(self) -> None:
        n = await self._run(
            self.ws.approve_routine, actor=DEMO_WARD_PHARMACIST, reason="routine ward stock"
        )
        self.stats["routine_approved"] += n
        queue = await self._run(self.ws.review_queue)
        for line in queue:
            decision, extra, reason = self._decide(line)
            if Flag.LICENCE in line.flags and decision == "approve":
                await self._run(self._ward_licence, line)
            await self._run(
                self.ws.decide,
                line.id,
                decision,
                actor=DEMO_WARD_PHARMACIST,
                reason=reason,
                **extra,
            )
            self.stats["decisions"].append(
                {
                    "line": line.id,
                    "room": line.drug_room,
                    "product": line.name,
                    "flags": list(line.flags),
                    "decision": decision,
                    "reason": reason,
                }
            )
        kinds: dict[str, int] = {}
        for d in self.stats["decisions"]:
            kinds[d["decision"]] = kinds.get(d["decision"], 0) + 1
        self.say(
            f"ward review: {DEMO_WARD_PHARMACIST} approved {n} routine lines together and "
            f"decided {len(queue)} flagged lines one by one ("
            + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
            + ")"
        )
        ordered = [d for d in self.stats["decisions"] if d["product"].startswith("Levetiracetam")]
        if ordered:
            line = (await self._run(self._read, views.lines, ids=[ordered[0]["line"]]))[0]
            self.stats["supplier_order"] = line.purchase_order
            self.say(
                f"  {line.name} is not kept in stock: ordered from the supplier on "
                f"{line.purchase_order}"
            )

    def _ward_licence(self, line: views.LineView) -> None:
        """A licence product leaves only under a valid licence: the ward's is recorded
        when the pharmacist approves its first line (docs/stock-duty.md)."""
        ward = self.ws.room(line.drug_room).ward
        day = self.ws.clock().astimezone(self.ws.tz).date()
        ledger = self.controller.ledger
        if ledger.valid_licence(line.gtin, ward, day) is None:
            ledger.record_licence(
                line.gtin,
                holder_kind="ward",
                holder=ward,
                number=f"LIC-{ward}-{line.gtin[-6:]}-{day:%Y%m%d}",
                valid_from=day,
                valid_to=day + timedelta(days=365),
                fee_sek="1500.00",
                actor=DEMO_WARD_PHARMACIST,
            )

    @staticmethod
    def _decide(line: views.LineView) -> tuple[str, dict[str, Any], str]:
        if Flag.UNUSUAL_QUANTITY in line.flags and line.usual_packs:
            return "reduce", {"packs": line.usual_packs}, "reduced to the ward's usual quantity"
        if Flag.NOT_ON_LIST in line.flags and line.name.startswith("Insulin"):
            return "reject", {}, "insulin is supplied through the ward's cabinet fridge"
        if Flag.NOT_ON_LIST in line.flags:
            return "approve", {}, "for one patient until the ward's list is reviewed"
        if Flag.CONTROLLED in line.flags:
            return "approve", {}, "usual need; the ward's controlled-drug register checked"
        return "approve", {}, "licence valid for the ward"

    # ------------------------------------------------------------ picking

    async def picker(self) -> None:
        """The technicians at their handhelds: one takes each open list as it appears,
        so the hospitals' lists are picked side by side."""
        started: set[str] = set()
        working: set[asyncio.Task[None]] = set()
        try:
            while True:
                numbers = await self._run(self._read, views.pick_list_numbers, status="open")
                for number in numbers:
                    if number not in started:
                        view = await self._run(self.ws.pick_list, number)
                        if not view.ready:
                            continue  # its stock is still being reserved
                        started.add(number)
                        task = asyncio.create_task(self.pick(number), name=f"pick-{number}")
                        working.add(task)
                        task.add_done_callback(working.discard)
                await asyncio.sleep(self.day_seconds / 24 / 6)
        finally:
            for task in working:
                task.cancel()
            await asyncio.gather(*working, return_exceptions=True)

    async def _scan(self, number: str, data: str) -> bool:
        result = await self.desk.scan(number, data, actor=DEMO_WARD_TECH)
        self.stats["scans"] += 1
        if not result.accepted:
            self.stats["scans_refused"].append(result.message)
        return result.accepted

    async def pick(self, number: str) -> None:
        view = await self._run(self.ws.pick_list, number)
        self.stats["pick_lists"].append(number)
        for line in view.lines:
            # A lot may lie in two bins: a scan confirms the lot, whichever bin it is from.
            per_batch: dict[str, dict[str, Any]] = {}
            for row in line.lots:
                lot = per_batch.setdefault(row["batch"], {**row, "units": 0})
                lot["units"] += int(row["units"])
            lots = list(per_batch.values())
            for i, lot in enumerate(lots):
                packs = -(-int(lot["units"]) // line.pack_size)
                if not self.short_done and len(lots) == 1 and packs >= 2 and not view.urgent:
                    packs -= 1  # the last pack is not on the shelf: a short pick
                    self.short_done = True
                    self.stats["short_picks"] += 1
                for _ in range(packs):
                    if not self.wrong_lot_done and i == 0:
                        self.wrong_lot_done = True
                        wrong = await self._other_lot(line.gtin, {x["batch"] for x in lots})
                        if wrong is not None:
                            await self._scan(number, self._pack(line.gtin, wrong))
                        else:
                            self.wrong_lot_done = False
                    if not await self._scan(number, self._pack(line.gtin, lot)):
                        # a serial already used elsewhere: the pack is scanned unserialised
                        await self._scan(number, self._pack(line.gtin, lot, serial=False))
        sent = await self.desk.dispatch(number, actor=DEMO_WARD_TECH)
        self.stats["notes"] += len(sent.notes)
        self.say(
            f"{self.ws.clock().astimezone(self.ws.tz):%H:%M} ward pick list {number}: "
            f"{len(view.lines)} lines, {sent.short_lines} short "
            f"(back orders for the next run), {len(sent.notes)} delivery notes in transit"
        )

    async def _other_lot(self, gtin: str, reserved: set[str]) -> dict[str, Any] | None:
        """A lot of the product in the store that the list did not reserve."""
        for s in await self._run(self.controller.ledger.stock, gtin=gtin):
            if s.batch not in reserved and s.location.startswith(self.site.store.code):
                return {"batch": s.batch, "expiry": s.expiry}
        return None

    def _pack(self, gtin: str, lot: dict[str, Any], *, serial: bool = True) -> str:
        # Medicines carry their serial (EU falsified-medicines rules); devices, food and
        # protective equipment do not, nor lots the verification system never heard of.
        known = (gtin, lot["batch"]) in self.shelf.packs and self.site.product(
            gtin
        ).category == "drug"
        number = self.shelf.next(gtin, lot["batch"]) if serial and known else None
        return encode_pack(PackId(gtin, lot["batch"], lot["expiry"], number))

    # ------------------------------------------------------------ receipts

    async def close_the_day(self) -> None:
        """A list still open at the end of the day leaves with what was picked: the
        rest is released into back orders for tomorrow, so no stock stays held."""
        self.desk.paused = True  # and no list for tomorrow is made while the day winds down
        await self._run(self.ws.resume_reservations)
        for number in await self._run(self._read, views.pick_list_numbers, status="open"):
            try:
                sent = await self.desk.dispatch(number, actor=DEMO_WARD_TECH)
            except Conflict:
                continue  # its technician's dispatch, still under way, got there first
            self.stats["notes"] += len(sent.notes)
            self.stats["closed_at_day_end"] = self.stats.get("closed_at_day_end", 0) + 1
            self.say(
                f"ward pick list {number}: closed at the end of the day ({sent.short_lines} short)"
            )

    async def receiver(self) -> None:
        """The wards confirm what arrives: half an hour after a morning or urgent
        delivery left, the ward scans its note's barcode. The afternoon's are left alone: they
        count as received after the site's time in transit."""
        while True:
            now = self.ws.clock()
            numbers = await self._run(self._read, views.note_numbers, status="in_transit")
            for number in numbers:
                note = await self._run(self.ws.note, number)
                if "-PM-" in note.pick_list or now - note.dispatched_at < timedelta(minutes=30):
                    continue
                deviations: list[ReceiptLine] = []
                if not self.deviation_done:
                    first = note.lines[0]
                    deviations = [
                        ReceiptLine(
                            first.gtin,
                            first.batch,
                            Deviation.DAMAGED,
                            min(first.units, self._pack_size(first.gtin)),
                            "a crushed box",
                        )
                    ]
                    self.deviation_done = True
                    self.stats["deviations"] += 1
                await self._run(
                    self.ws.receive,
                    _note_of(NOTE_PREFIX + number),
                    actor=DEMO_NURSE,
                    deviations=deviations,
                )
                self.received.append(number)
            await asyncio.sleep(self.day_seconds / 24 / 4)

    async def urgent_order(self) -> None:
        room = next(r for r in self.site.drug_rooms if r.counted)
        lines = [(s.gtin, 1) for s in room.assortment[:2]]
        booked = await self._submit_fhir(
            room.code, f"{room.code}-{self.day}-urgent", lines, urgent=True
        )
        await self._run(
            self.ws.approve_routine,
            actor=DEMO_WARD_PHARMACIST,
            reason="urgent: routine products",
            drug_room=room.code,
        )
        self.stats["urgent"] = booked.number
        self.say(f"ward supply: urgent order {booked.number} from {room.code}: its own delivery")

    async def afternoon_requisitions(self) -> None:
        rooms = [r for r in self.site.drug_rooms if not r.external and not r.counted][:5]
        for room in rooms:
            lines = [(s.gtin, 1) for s in room.assortment[3:5]]
            await self._submit_fhir(room.code, f"{room.code}-{self.day:%Y%m%d}-2", lines)
        n = await self._run(
            self.ws.approve_routine, actor=DEMO_WARD_PHARMACIST, reason="routine ward stock"
        )
        self.stats["routine_approved"] += n

    async def supplier_delivers(self) -> None:
        number = self.stats.get("supplier_order")
        if not number:
            return
        order = await self._run(self.controller.purchasing.order, number)
        rows = [
            DeliveryRow(
                i,
                number,
                line.line_no,
                line.gtin,
                line.units,
                batch="LV22A",
                expiry=self.day + timedelta(days=500),
            )
            for i, line in enumerate(order.lines, start=1)
        ]
        await self._run(
            self.controller.purchasing.receive,
            number,
            f"DN-{number}",
            rows,
            actor="goods-in:demo",
            now=datetime.now(UTC),
            location=self.site.receiving_location(),
        )
        self.say(f"goods-in: {number} delivered; the ward's line goes with the afternoon run")

    # ------------------------------------------------------------ the summary

    async def summary(self) -> dict[str, Any]:
        now = self.ws.clock()
        report = await self._run(
            delivery_reliability,
            self.controller.ledger.engine,
            since=now - timedelta(days=2),
            until=now + timedelta(days=1),
            now=now,
            target=self.site.ward_supply.reliability_target,
        )
        all_lines = await self._run(self._read, views.lines)
        in_transit = await self._run(self._read, views.note_numbers, status="in_transit")
        originals = [x for x in all_lines if x.back_order_of is None]
        delivered = [x for x in originals if x.status == LineStatus.DELIVERED]
        short = [x for x in all_lines if x.status == LineStatus.SHORT or x.back_order_of]
        return {
            "ward_order_lines": len(originals),
            "ward_lines_delivered": len(delivered),
            "ward_lines_short": len(short),
            "drug_rooms": len([r for r in self.site.drug_rooms if not r.external]),
            "delivery_reliability": report.share,
            "ward_supply": {
                **{k: v for k, v in self.stats.items() if k != "decisions"},
                "decisions": len(self.stats["decisions"]),
                "flagged": self.stats["decisions"],
                "rejected": len([x for x in originals if x.status == LineStatus.REJECTED]),
                "back_orders": len([x for x in all_lines if x.back_order_of]),
                "notes_in_transit": len(in_transit),
                "reliability": {
                    "lines": report.lines,
                    "on_time_in_full": report.on_time_in_full,
                    "target": report.target,
                    "by_cause": report.by_cause,
                },
            },
        }


def _note_of(scan: str) -> str:
    if not scan.startswith(NOTE_PREFIX):
        raise ValueError(f"scan {scan!r} is not a delivery note's barcode")
    return scan[len(NOTE_PREFIX) :]
