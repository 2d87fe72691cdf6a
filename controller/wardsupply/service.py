"""Ward supply, from a drug room's requisition to the shelf on the ward.

submit -> review (routine lines together, flagged lines one by one) -> plan (the next
delivery run, or an urgent delivery; a product the store does not keep is ordered from
its supplier first) -> pick list per hospital and run, stock reserved first expiry first
-> packs confirmed by GS1 scan -> dispatch (store -> in transit, serialised packs
decommissioned) -> receipt on the ward (in transit -> drug room, deviations booked with
their reason; an uncounted room's stock counts as used on delivery).

Every step is synchronous on the ledger (run it on the ledger's thread from async code)
and safe to repeat after a crash: ledger commands carry keys derived from the line, the
pick list or the note, so a step run twice books once. The decisions themselves are the
pure functions of controller.wardsupply.rules.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from controller.config import DrugRoom, Site
from controller.duty_rules.rationing import Grant, cut_reason
from controller.gs1 import PackId, ScanError, parse_pack
from controller.ledger import (
    InsufficientStock,
    Ledger,
    Need,
)
from controller.ledger.duty_shortages import RationAsk
from controller.ledger.schema import products
from controller.ledger.schema_wardsupply import (
    ward_pick_lists,
    ward_pick_scans,
    ward_requisition_lines,
    ward_requisitions,
)
from controller.ledger.ward_locations import (
    drug_room_location,
    hospital_location,
    transit_location,
    ward_location,
)
from controller.wardsupply import delivery, rounds, rules, views
from controller.wardsupply.delivery import Dispatched, ReceiptLine, Received
from controller.wardsupply.model import (
    MAX_PACKS_PER_LINE,
    OPEN_REVIEW,
    Booked,
    Conflict,
    Decision,
    LineIn,
    LineStatus,
    PickListStatus,
    Refused,
    RequisitionIn,
    UnknownEntity,
    WardSupplyError,
)

log = logging.getLogger("doseline.wardsupply")
ACTOR = "ward-supply"
L = ward_requisition_lines
R = ward_requisitions
# A pick list's stock stays held this long; a list not dispatched by then is released.
RESERVATION_TIMEOUT_S = 36 * 3600
EXTERNAL_REASON = (
    "an in-house hospital pharmacy may not deliver its own stock outside the hospital organisation"
)


@dataclass(frozen=True)
class ScanResult:
    accepted: bool
    message: str
    line_id: int | None = None
    pack: PackId | None = None
    list_complete: bool = False


class WardSupply:
    """The ward-supply flow on one ledger and one site file."""

    def __init__(
        self,
        ledger: Ledger,
        site: Site,
        *,
        clock: Callable[[], datetime] | None = None,
        order_products: Callable[[list[tuple[str, int]], str, str], list[str]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.site = site
        self.clock = clock or ledger.clock
        self.tz = ZoneInfo(site.site.timezone)
        self.config = site.ward_supply
        self.products = {p.gtin: p for p in site.catalogue}
        self.rooms = {r.code: r for r in site.drug_rooms}
        self.hospitals = {h.code: h for h in site.hospitals}
        self.store_bins = site.store.all_bins
        # (gtin, packs) lines, buyer, note -> purchase order numbers (purchasing)
        self.order_products = order_products
        self.runs = [rules.RunSlot(r.code, r.cutoff, r.departs) for r in self.config.runs]

    # ------------------------------------------------------------ set-up

    def setup_locations(self) -> None:
        """Hospital -> ward -> drug room, and each hospital's in-transit location."""
        for h in self.site.hospitals:
            self.ledger.add_location(hospital_location(h.code), "hospital")
            self.ledger.add_location(transit_location(h.code), "transit")
        for room in self.site.drug_rooms:
            ward = ward_location(room.hospital, room.ward)
            self.ledger.add_location(ward, "ward", parent=hospital_location(room.hospital))
            self.ledger.add_location(drug_room_location(room), "drugroom", parent=ward)

    # ------------------------------------------------------------ requisitions in

    def room(self, code: str) -> DrugRoom:
        room = self.rooms.get(code)
        if room is None:
            raise UnknownEntity("drug_room", code, "is not a drug room of this site")
        return room

    def check_unit(self, room: DrugRoom) -> None:
        """A unit outside the hospital organisation is refused, with the reason."""
        hospital = self.hospitals.get(room.hospital)
        if room.external or (hospital is not None and hospital.external):
            raise Refused("drug_room", room.code, f"is outside the hospital: {EXTERNAL_REASON}")

    def submit(self, req: RequisitionIn, *, actor: str) -> Booked:
        """Books a requisition once per (sender, sender id); each line is judged for
        review. Refused whole, naming the field and value, if anything is wrong."""
        if not req.sender or not req.sender_id:
            raise WardSupplyError("id", req.sender_id, "a requisition needs its sender's id")
        room = self.room(req.drug_room)
        self.check_unit(room)
        if not req.lines:
            raise WardSupplyError("lines", None, "a requisition needs at least one line")
        seen: set[str] = set()
        for i, line in enumerate(req.lines):
            self._check_line(i, line, seen)
        existing = self._existing(req.sender, req.sender_id)
        if existing is not None:
            return existing
        now = self.clock()
        try:
            with self.ledger.audited(actor, "ward requisition", f"from {req.sender}") as c:
                number, flagged = self._insert(c, req, room, now, actor)
        except IntegrityError:
            # A twin with the same sender id committed first: it is the booking.
            existing = self._existing(req.sender, req.sender_id)
            if existing is None:
                raise
            return existing
        return Booked(number=number, duplicate=False, lines=len(req.lines), flagged=flagged)

    def _check_line(self, i: int, line: LineIn, seen: set[str]) -> None:
        if line.gtin not in self.products:
            raise UnknownEntity(f"lines[{i}].gtin", line.gtin, "is not in the catalogue")
        if line.gtin in seen:
            raise WardSupplyError(f"lines[{i}].gtin", line.gtin, "appears twice")
        seen.add(line.gtin)
        if isinstance(line.packs, bool) or not isinstance(line.packs, int):
            raise WardSupplyError(f"lines[{i}].packs", line.packs, "must be whole packs")
        if line.packs <= 0:
            raise WardSupplyError(f"lines[{i}].packs", line.packs, "must be at least 1")
        if line.packs > MAX_PACKS_PER_LINE:
            raise WardSupplyError(
                f"lines[{i}].packs", line.packs, f"is more than {MAX_PACKS_PER_LINE} packs"
            )

    def _existing(self, sender: str, sender_id: str) -> Booked | None:
        with self.ledger.engine.connect() as c:
            row = c.execute(
                select(R.c.id, R.c.number).where(R.c.sender == sender, R.c.sender_id == sender_id)
            ).first()
            if row is None:
                return None
            counts = c.execute(
                select(func.count(), func.sum((L.c.flags != "").cast(type_=L.c.packs.type))).where(
                    L.c.requisition_id == row.id, L.c.back_order_of.is_(None)
                )
            ).one()
        return Booked(
            number=row.number, duplicate=True, lines=int(counts[0]), flagged=int(counts[1] or 0)
        )

    def _insert(
        self, c: Connection, req: RequisitionIn, room: DrugRoom, now: datetime, actor: str
    ) -> tuple[str, int]:
        rid = c.execute(
            insert(R)
            .values(
                number=f"tmp-{req.sender_id}"[:30],
                sender=req.sender,
                sender_id=req.sender_id,
                drug_room=room.code,
                hospital=room.hospital,
                ward=room.ward,
                source=str(req.source),
                urgent=req.urgent,
                requested_by=req.requested_by[:100],
                note=req.note[:300],
                received_at=now,
                authored_at=req.authored_at,
                actor=actor,
            )
            .returning(R.c.id)
        ).scalar_one()
        number = f"WR-{now.astimezone(self.tz):%Y%m%d}-{rid:06d}"
        c.execute(update(R).where(R.c.id == rid).values(number=number))
        pids = dict(c.execute(select(products.c.gtin, products.c.id)).all())
        flagged = 0
        for no, line in enumerate(req.lines, start=1):
            facts = self._facts(line.gtin)
            level = room.level(line.gtin)
            usual = rules.usual_limit(
                self._history(c, room.code, pids[line.gtin], now),
                level.max if level else None,
                factor=self.config.usual.factor,
                floor_packs=self.config.usual.floor_packs,
            )
            flags = rules.review_flags(facts, line.packs, on_list=level is not None, usual=usual)
            flagged += bool(flags)
            c.execute(
                insert(L).values(
                    requisition_id=rid,
                    line_no=no,
                    product_id=pids[line.gtin],
                    packs=line.packs,
                    status=str(LineStatus.FLAGGED if flags else LineStatus.PENDING),
                    flags=",".join(flags),
                    usual_packs=usual,
                )
            )
        self.ledger.note(
            "ward_requisition",
            number,
            None,
            {
                "sender": req.sender,
                "sender_id": req.sender_id,
                "drug_room": room.code,
                "urgent": req.urgent,
                "source": str(req.source),
                "lines": [{"gtin": x.gtin, "packs": x.packs} for x in req.lines],
            },
        )
        return number, flagged

    def _history(self, c: Connection, room: str, product_id: int, now: datetime) -> list[int]:
        since = now - timedelta(days=self.config.usual.window_days)
        return [
            int(x)
            for x in c.execute(
                select(L.c.packs)
                .join(R, R.c.id == L.c.requisition_id)
                .where(
                    R.c.drug_room == room,
                    L.c.product_id == product_id,
                    R.c.received_at >= since,
                    L.c.back_order_of.is_(None),
                    L.c.status != str(LineStatus.REJECTED),
                )
            ).scalars()
        ]

    def _facts(self, gtin: str) -> rules.ProductFacts:
        p = self.products[gtin]
        return rules.ProductFacts(
            gtin=gtin, controlled=bool(p.controlled_class), licence=p.licence, stocked=p.stocked
        )

    # ------------------------------------------------------------ review

    def review_queue(self, *, drug_room: str | None = None) -> list[views.LineView]:
        with self.ledger.engine.connect() as c:
            return views.lines(c, statuses=tuple(map(str, OPEN_REVIEW)), drug_room=drug_room)

    def approve_routine(
        self, *, actor: str, reason: str, drug_room: str | None = None, ids: list[int] | None = None
    ) -> int:
        """Approves routine lines together (never a flagged one): the bulk approval of a
        pharmacist. Returns how many lines were approved."""
        check_reason(reason)
        with self.ledger.engine.connect() as c:
            todo = views.lines(c, statuses=(str(LineStatus.PENDING),), drug_room=drug_room, ids=ids)
        if ids is not None:
            missing = set(ids) - {x.id for x in todo}
            if missing:
                raise Conflict(
                    "ids", sorted(missing)[0], "is not a routine line waiting for review"
                )
        for line in todo:
            self._decide(line, Decision.APPROVE, actor=actor, reason=reason, bulk=True)
        return len(todo)

    def decide(
        self,
        line_id: int,
        decision: Decision | str,
        *,
        actor: str,
        reason: str,
        packs: int | None = None,
        substitute: str | None = None,
    ) -> views.LineView:
        """A pharmacist's decision on one line, always with a reason."""
        try:
            decision = Decision(decision)
        except ValueError as exc:
            raise WardSupplyError(
                "decision", decision, "must be approve, reduce, substitute or reject"
            ) from exc
        check_reason(reason)
        with self.ledger.engine.connect() as c:
            found = views.lines(c, ids=[line_id])
        if not found:
            raise UnknownEntity("line", line_id, "is not a requisition line")
        line = found[0]
        if line.status not in OPEN_REVIEW:
            raise Conflict("line", line_id, f"is {line.status}, not waiting for review")
        self._decide(line, decision, actor=actor, reason=reason, packs=packs, substitute=substitute)
        with self.ledger.engine.connect() as c:
            return views.lines(c, ids=[line_id])[0]

    def _decide(
        self,
        line: views.LineView,
        decision: Decision,
        *,
        actor: str,
        reason: str,
        bulk: bool = False,
        packs: int | None = None,
        substitute: str | None = None,
    ) -> None:
        give_gtin, give_packs = line.gtin, line.packs
        if decision is Decision.REDUCE:
            if packs is None or isinstance(packs, bool) or not isinstance(packs, int):
                raise WardSupplyError("packs", packs, "a reduction needs whole packs")
            if not 0 < packs < line.packs:
                raise WardSupplyError(
                    "packs", packs, f"must be between 1 and {line.packs - 1} to reduce"
                )
            give_packs = packs
        elif decision is Decision.SUBSTITUTE:
            give_gtin = self._substitute(line.gtin, substitute)
            if packs is not None:
                if (
                    isinstance(packs, bool)
                    or not isinstance(packs, int)
                    or not 0 < packs <= (MAX_PACKS_PER_LINE)
                ):
                    raise WardSupplyError("packs", packs, "must be whole packs, at least 1")
                give_packs = packs
        now = self.clock()
        room = self.room(line.drug_room)
        values: dict[str, Any] = {
            "decision": str(decision),
            "decided_by": actor,
            "decided_at": now,
            "reason": reason[:300],
        }
        if decision is Decision.REJECT:
            values["status"] = str(LineStatus.REJECTED)
            values["approved_packs"] = 0
        else:
            values.update(self._plan(room, line.urgent, give_gtin, give_packs, now))
            values["approved_packs"] = give_packs
        ordered: str | None = None
        with self.ledger.audited(actor, "ward review", reason[:200]) as c:
            pid = c.execute(select(products.c.id).where(products.c.gtin == give_gtin)).scalar_one()
            if decision is not Decision.REJECT:
                values["approved_product_id"] = pid
            done = c.execute(
                update(L)
                .where(L.c.id == line.id, L.c.status.in_(tuple(map(str, OPEN_REVIEW))))
                .values(**values)
            ).rowcount
            if done != 1:
                raise Conflict("line", line.id, "was decided by someone else meanwhile")
            self.ledger.note(
                "ward_line",
                f"{line.requisition}:{line.line_no}",
                {"status": line.status, "gtin": line.gtin, "packs": line.packs},
                {
                    "status": values["status"],
                    "decision": str(decision),
                    "gtin": give_gtin,
                    "packs": values["approved_packs"],
                    "reason": reason,
                    "bulk": bulk,
                },
            )
        if values.get("status") == str(LineStatus.ORDERED):
            ordered = self._order(line.id, give_gtin, give_packs, actor)
            log.info("line %s: %s is not kept in stock; ordered on %s", line.id, give_gtin, ordered)

    def _substitute(self, gtin: str, substitute: str | None) -> str:
        if not substitute:
            raise WardSupplyError("substitute", substitute, "name the substitute's GTIN")
        if substitute not in self.products:
            raise UnknownEntity("substitute", substitute, "is not in the catalogue")
        group = self.products[gtin].substitution_group
        if (
            substitute == gtin
            or group is None
            or (self.products[substitute].substitution_group != group)
        ):
            raise WardSupplyError(
                "substitute", substitute, f"is not in the substitution group of {gtin}"
            )
        return substitute

    def _plan(
        self, room: DrugRoom, urgent: bool, gtin: str, packs: int, now: datetime
    ) -> dict[str, Any]:
        """A product the store does not keep is ordered from its supplier, unless what
        is in the store already covers the line."""
        product = self.products[gtin]
        if not product.stocked:
            free = sum(n for _, _, n in self.ledger.free_lots(gtin, self.store_bins))
            if free < packs * product.pack_size:
                return {"status": str(LineStatus.ORDERED)}
        plan = self.plan_for(room, urgent, now)
        return {
            "status": str(LineStatus.APPROVED),
            "run_code": plan.run,
            "run_date": plan.run_date,
            "due_at": plan.due_at,
        }

    def plan_for(self, room: DrugRoom, urgent: bool, now: datetime) -> rules.Planned:
        if urgent:
            return rules.urgent_plan(now, self.tz, self.config.urgent_due_minutes)
        return rules.next_run(
            now,
            self.runs,
            self.tz,
            grace=timedelta(hours=self.config.on_time_grace_h),
            allowed=room.runs,
        )

    def _order(self, line_id: int, gtin: str, packs: int, actor: str) -> str | None:
        if self.order_products is None:
            return None
        numbers = self.order_products([(gtin, packs)], actor, f"ward line {line_id}")
        number = numbers[0] if numbers else None
        with self.ledger.audited(actor, "ward order", "not kept in stock") as c:
            c.execute(update(L).where(L.c.id == line_id).values(purchase_order=number))
            self.ledger.note("ward_line", str(line_id), None, {"purchase_order": number})
        return number

    def release_arrived(self, *, actor: str = ACTOR) -> int:
        """Lines waiting for the supplier whose product is now in the store are planned
        for the next delivery (and a line whose order was never placed, because the
        controller stopped right after the decision, is ordered now). Returns how many
        were planned."""
        with self.ledger.engine.connect() as c:
            waiting = views.lines(c, statuses=(str(LineStatus.ORDERED),))
        for line in waiting:
            if line.purchase_order is None and self.order_products is not None:
                self._order(
                    line.id, line.approved_gtin or line.gtin, line.approved_packs or 0, actor
                )
        now = self.clock()
        moved = 0
        for line in waiting:
            gtin = line.approved_gtin or line.gtin
            free = sum(n for _, _, n in self.ledger.free_lots(gtin, self.store_bins))
            if free < line.wanted_units:
                continue
            plan = self.plan_for(self.room(line.drug_room), line.urgent, now)
            with self.ledger.audited(actor, "ward order arrived", "supplier delivered") as c:
                done = c.execute(
                    update(L)
                    .where(L.c.id == line.id, L.c.status == str(LineStatus.ORDERED))
                    .values(
                        status=str(LineStatus.APPROVED),
                        run_code=plan.run,
                        run_date=plan.run_date,
                        due_at=plan.due_at,
                    )
                ).rowcount
                if done:
                    self.ledger.note(
                        "ward_line", str(line.id), {"status": "ordered"}, {"status": "approved"}
                    )
                    moved += 1
        return moved

    # ------------------------------------------------------------ pick lists

    def make_pick_lists(
        self, *, run: str, run_date: date, actor: str = ACTOR
    ) -> list[views.PickListView]:
        """One pick list per hospital for the run's approved lines (URGENT: every urgent
        line approved so far), each line's stock reserved first expiry first. A line
        the store cannot fill is cut to what there is and its rest becomes a back order
        for the next run; nothing is dropped. Safe to run again after a crash."""
        now = self.clock()
        with self.ledger.engine.connect() as c:
            q = (
                select(L.c.id, R.c.hospital)
                .join(R, R.c.id == L.c.requisition_id)
                .where(L.c.status == str(LineStatus.APPROVED), L.c.run_code == run)
            )
            if run != rules.URGENT_RUN:
                q = q.where(L.c.run_date <= run_date)
            per_hospital: dict[str, list[int]] = defaultdict(list)
            for line_id, hospital in c.execute(q.order_by(L.c.id)):
                per_hospital[str(hospital)].append(int(line_id))
        made = []
        for hospital in sorted(per_hospital):
            number = self._new_list(hospital, run, run_date, per_hospital[hospital], now, actor)
            if number is not None:
                made.append(number)
        self.resume_reservations(actor=actor)
        return [self.pick_list(n) for n in made]

    def _new_list(
        self, hospital: str, run: str, run_date: date, ids: list[int], now: datetime, actor: str
    ) -> str | None:
        """The list with its lines; a line of a rationed product is cut to its grant
        first, in the same transaction (None: rationing left no line to pick)."""
        rationed = self._rationed_stock()
        with self.ledger.audited(actor, "ward pick list", f"run {run} {run_date}") as c:
            if rationed:
                ids = self._ration(c, ids, rationed, now)
                if not ids:
                    return None
            prefix = f"WPL-{run_date:%Y%m%d}-{hospital}-{run}-"
            taken = c.execute(
                select(func.count()).where(ward_pick_lists.c.number.like(prefix + "%"))
            ).scalar_one()
            number = f"{prefix}{int(taken) + 1:02d}"
            list_id = c.execute(
                insert(ward_pick_lists)
                .values(
                    number=number,
                    hospital=hospital,
                    run_code=run,
                    run_date=run_date,
                    urgent=run == rules.URGENT_RUN,
                    status=str(PickListStatus.OPEN),
                    created_at=now,
                    created_by=actor,
                )
                .returning(ward_pick_lists.c.id)
            ).scalar_one()
            for line_id in ids:
                c.execute(
                    update(L)
                    .where(L.c.id == line_id, L.c.status == str(LineStatus.APPROVED))
                    .values(
                        status=str(LineStatus.PICKING),
                        pick_list_id=list_id,
                        reservation_key=f"ward:{line_id}:{list_id}",
                    )
                )
            self.ledger.note("ward_pick_list", number, None, {"lines": ids, "run": run})
        return number

    def _rationed_stock(self) -> dict[str, int]:
        """The products rationed now, with their free stock in the store's bins."""
        return {
            rule.gtin: sum(n for _, _, n in self.ledger.free_lots(rule.gtin, self.store_bins))
            for rule in self.ledger.rationing_rules()
        }

    def _ration(
        self, c: Connection, ids: list[int], rationed: dict[str, int], now: datetime
    ) -> list[int]:
        """Cuts each approved line of a rationed product to its grant for its ward and
        the site's day (controller.duty_rules.rationing), drawn under the line's id.
        The part over the ward's cap is cut off (a line granted nothing is rejected);
        the part the stock could not cover after the priority wards becomes a back
        order. Returns the lines that go on the list."""
        rows = c.execute(
            select(
                L.c.id,
                L.c.approved_packs,
                L.c.reason,
                L.c.status,
                R.c.ward,
                products.c.gtin,
                products.c.pack_size,
            )
            .join(R, R.c.id == L.c.requisition_id)
            .join(products, products.c.id == L.c.approved_product_id)
            .where(L.c.id.in_(ids), L.c.status == str(LineStatus.APPROVED))
            .order_by(L.c.id)
        ).all()
        per_gtin: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            if r.gtin in rationed:
                per_gtin[str(r.gtin)].append(r)
        day = now.astimezone(self.tz).date()
        dropped: set[int] = set()
        for gtin, lines in per_gtin.items():
            asks = [
                RationAsk(
                    str(r.id),
                    str(r.ward),
                    int(r.approved_packs) * int(r.pack_size),
                    int(r.pack_size),
                )
                for r in lines
            ]
            grants = self.ledger.draw_rations_in(
                c, gtin, asks, day=day, source="ward", available=rationed[gtin]
            )
            for r, g in zip(lines, grants, strict=True):
                if g.granted >= g.asked:
                    continue
                why = (
                    cut_reason(
                        Grant(g.ward, g.asked, g.granted, g.capped, g.short, g.priority),
                        g.cap_per_ward_day,
                    )
                    or f"rationed: {g.granted} of {g.asked} units"
                )
                size = int(r.pack_size)
                packs, short_packs = g.granted // size, g.short // size
                values: dict[str, Any] = {
                    "approved_packs": packs,
                    "reason": f"{why}; {r.reason or ''}"[:300],
                }
                if packs == 0:
                    dropped.add(int(r.id))
                    values["status"] = str(LineStatus.SHORT if short_packs else LineStatus.REJECTED)
                    if not short_packs:
                        values["decision"] = "rationed"
                c.execute(update(L).where(L.c.id == r.id).values(**values))
                self.ledger.note(
                    "ward_line",
                    str(r.id),
                    {"status": r.status, "packs": int(r.approved_packs)},
                    {"status": values.get("status", r.status), "packs": packs, "reason": why},
                )
                if short_packs:
                    self.back_order(c, int(r.id), short_packs, why)
        return [i for i in ids if i not in dropped]

    def resume_reservations(self, *, actor: str = ACTOR) -> int:
        """Reserves the stock of every picking line that has none recorded yet (a list
        just made, or one whose maker stopped half-way). Returns lines reserved."""
        with self.ledger.engine.connect() as c:
            todo = c.execute(
                select(
                    L.c.id,
                    L.c.reservation_key,
                    L.c.approved_packs,
                    products.c.gtin,
                    products.c.pack_size,
                    R.c.hospital,
                )
                .join(R, R.c.id == L.c.requisition_id)
                .join(products, products.c.id == L.c.approved_product_id)
                .where(
                    L.c.status == str(LineStatus.PICKING),
                    L.c.reserved_units == 0,
                    L.c.picked_units == 0,
                )
                .order_by(L.c.id)
            ).all()
        for r in todo:
            wanted = int(r.approved_packs) * int(r.pack_size)
            try:
                view = self.ledger.reserve(
                    r.reservation_key,
                    purpose=f"ward line {r.id}",
                    needs=[Need(r.gtin, wanted)],
                    from_locations=self.store_bins,
                    timeout_s=RESERVATION_TIMEOUT_S,
                    actor=actor,
                    partial=True,
                    order_source=f"ward:{r.hospital}",
                )
                got = sum(a.quantity for a in view.lines)
            except InsufficientStock:
                got = 0
            self._after_reserve(r.id, wanted, got, int(r.pack_size), actor)
        return len(todo)

    def _after_reserve(
        self, line_id: int, wanted: int, got: int, pack_size: int, actor: str
    ) -> None:
        """Records what the reservation got, once: a second controller resuming the same
        line at the same moment finds it recorded and books no second back order."""
        unrecorded = (
            L.c.id == line_id,
            L.c.status == str(LineStatus.PICKING),
            L.c.reserved_units == 0,
        )
        with self.ledger.audited(actor, "ward reserve", f"line {line_id}") as c:
            if got == 0:
                done = c.execute(
                    update(L)
                    .where(*unrecorded)
                    .values(status=str(LineStatus.SHORT), pick_list_id=None)
                ).rowcount
                if done != 1:
                    return
                self.ledger.settle_ration_draw_in(c, "ward", str(line_id), 0)
                self.ledger.note(
                    "ward_line", str(line_id), {"status": "picking"}, {"status": "short"}
                )
                self.back_order(c, line_id, wanted // pack_size, "nothing in store")
                return
            done = c.execute(update(L).where(*unrecorded).values(reserved_units=got)).rowcount
            if done == 1 and got < wanted:
                # a rationed line's draw counts what the ward gets, not what it asked
                self.ledger.settle_ration_draw_in(c, "ward", str(line_id), got)
                rest = (wanted - got + pack_size - 1) // pack_size
                self.back_order(c, line_id, rest, f"{got} of {wanted} units in store")

    def back_order(self, c: Connection, line_id: int, packs: int, why: str) -> int | None:
        """The rest of a short line becomes a new approved line for the run after the
        one it missed (never the same run again), so nothing is dropped."""
        if packs <= 0:
            return None
        src = c.execute(
            select(L, R.c.drug_room, R.c.urgent)
            .join(R, R.c.id == L.c.requisition_id)
            .where(L.c.id == line_id)
        ).one()
        room = self.room(src.drug_room)
        after = self.clock()
        missed = next((r for r in self.runs if r.code == src.run_code), None)
        if missed is not None and src.run_date is not None:
            cutoff = datetime.combine(src.run_date, missed.cutoff, tzinfo=self.tz)
            after = max(after, cutoff + timedelta(minutes=1))
        plan = rules.next_run(
            after,
            self.runs,
            self.tz,
            grace=timedelta(hours=self.config.on_time_grace_h),
            allowed=room.runs,
        )
        last = c.execute(
            select(func.max(L.c.line_no)).where(L.c.requisition_id == src.requisition_id)
        ).scalar_one()
        new_id = c.execute(
            insert(L)
            .values(
                requisition_id=src.requisition_id,
                line_no=int(last) + 1,
                product_id=src.product_id,
                packs=packs,
                approved_product_id=src.approved_product_id,
                approved_packs=packs,
                status=str(LineStatus.APPROVED),
                flags="",
                decision="back_order",
                decided_by=ACTOR,
                decided_at=self.clock(),
                reason=f"back order of line {line_id}: {why}"[:300],
                run_code=plan.run,
                run_date=plan.run_date,
                due_at=plan.due_at,
                back_order_of=line_id,
            )
            .returning(L.c.id)
        ).scalar_one()
        self.ledger.note(
            "ward_line", str(new_id), None, {"back_order_of": line_id, "packs": packs, "why": why}
        )
        return int(new_id)

    def pick_list(self, number: str) -> views.PickListView:
        with self.ledger.engine.connect() as c:
            return views.pick_list(c, number)

    # ------------------------------------------------------------ scans

    def scan(
        self,
        number: str,
        data: str,
        *,
        actor: str,
        blocked: Callable[[PackId], str | None] | None = None,
    ) -> ScanResult:
        """Confirms one pack of a pick list by its GS1 scan. A pack of another product,
        another lot, expired, already scanned or blocked is refused with a message that
        names it. `blocked(pack)` answers the verification system's refusal, if any.
        Only the lines of the scanned product are read, so a scan stays quick on a
        list of hundreds of lines."""
        try:
            pack = parse_pack(data.strip())
        except ScanError as exc:
            return ScanResult(False, f"unreadable scan: {exc}")
        with self.ledger.engine.connect() as c:
            head = c.execute(
                select(ward_pick_lists.c.id, ward_pick_lists.c.status).where(
                    ward_pick_lists.c.number == number
                )
            ).first()
            if head is None:
                raise UnknownEntity("pick_list", number, "is not a known pick list")
            if head.status != PickListStatus.OPEN:
                return ScanResult(False, f"pick list {number} is {head.status}")
            candidates = views.lines_of_product(c, head.id, pack.gtin)
            keys = [x.reservation_key for x in candidates if x.reservation_key]
            held = views.held_lots(c, keys)
            scanned = views.scanned_units(c, [x.id for x in candidates])
        today = self.clock().astimezone(self.tz).date()
        if pack.expiry < today:
            return ScanResult(
                False,
                f"expired: batch {pack.batch} of {pack.gtin} expired on {pack.expiry}",
                pack=pack,
            )
        if not candidates:
            return ScanResult(
                False, f"not on the list: GTIN {pack.gtin} is not on {number}", pack=pack
            )
        lots_of: dict[int, list[tuple[str, int]]] = {}
        for line in candidates:
            per_batch: dict[str, int] = defaultdict(int)
            for a in held.get(line.reservation_key or "", []):
                per_batch[a.batch] += a.units
            lots_of[line.id] = sorted(per_batch.items())
        open_lots = [
            (line, batch, units, scanned.get((line.id, batch), 0))
            for line in candidates
            for batch, units in lots_of.get(line.id, [])
            if batch == pack.batch and scanned.get((line.id, batch), 0) < units
        ]
        if not open_lots:
            wanted = sorted(
                {
                    batch
                    for line in candidates
                    for batch, units in lots_of.get(line.id, [])
                    if scanned.get((line.id, batch), 0) < units
                }
            )
            if not wanted:
                return ScanResult(
                    False,
                    f"already picked: every pack of {pack.gtin} on {number} is scanned",
                    pack=pack,
                )
            return ScanResult(
                False,
                f"wrong lot: batch {pack.batch} of {pack.gtin} is not reserved on {number}"
                f" (take batch {', '.join(wanted)})",
                pack=pack,
            )
        if blocked is not None:
            why = blocked(pack)
            if why:
                return ScanResult(False, f"blocked: {why}", pack=pack)
        line, _, lot_units, done_units = open_lots[0]
        units = min(line.pack_size, lot_units - done_units)
        with self.ledger.audited(actor, "ward pick scan", f"pick list {number}") as c:
            pid = c.execute(select(products.c.id).where(products.c.gtin == pack.gtin)).scalar_one()
            if pack.serial:
                dup = c.execute(
                    select(ward_pick_scans.c.id).where(
                        ward_pick_scans.c.product_id == pid,
                        ward_pick_scans.c.batch == pack.batch,
                        ward_pick_scans.c.serial == pack.serial,
                    )
                ).first()
                if dup is not None:
                    return ScanResult(
                        False, f"already scanned: pack {pack.gtin} serial {pack.serial}", pack=pack
                    )
            c.execute(
                insert(ward_pick_scans).values(
                    pick_list_id=head.id,
                    line_id=line.id,
                    product_id=pid,
                    batch=pack.batch,
                    serial=pack.serial or None,
                    units=units,
                    scanned_at=self.clock(),
                    actor=actor,
                )
            )
            done = c.execute(
                update(L)
                .where(L.c.id == line.id, L.c.picked_units + units <= L.c.reserved_units)
                .values(picked_units=L.c.picked_units + units)
            ).rowcount
            if done != 1:
                raise Conflict("scan", data, "the line was picked meanwhile")
            self.ledger.note(
                "ward_pick",
                f"{number}:{line.id}",
                None,
                {"gtin": pack.gtin, "batch": pack.batch, "serial": pack.serial, "units": units},
            )
            left = c.execute(
                select(func.count()).where(
                    L.c.pick_list_id == head.id,
                    L.c.status == str(LineStatus.PICKING),
                    L.c.picked_units < L.c.reserved_units,
                )
            ).scalar_one()
        return ScanResult(
            True,
            f"{line.name}: batch {pack.batch} for {line.drug_room}"
            f" ({done_units + units}/{lot_units} units of this lot)",
            line_id=line.id,
            pack=pack,
            list_complete=int(left) == 0,
        )

    # ------------------------------------------------------------ dispatch

    def dispatch(self, number: str, *, actor: str) -> Dispatched:
        """See controller.wardsupply.delivery.dispatch."""
        return delivery.dispatch(self, number, actor=actor)

    # ------------------------------------------------------------ receipt

    def receive(
        self,
        number: str,
        *,
        actor: str,
        deviations: Sequence[ReceiptLine] = (),
        auto: bool = False,
    ) -> Received:
        """See controller.wardsupply.delivery.receive."""
        return delivery.receive(self, number, actor=actor, deviations=deviations, auto=auto)

    def auto_receive(self, *, actor: str = ACTOR) -> list[str]:
        """See controller.wardsupply.delivery.auto_receive."""
        return delivery.auto_receive(self, actor=actor)

    def note(self, number: str) -> views.NoteView:
        with self.ledger.engine.connect() as c:
            return views.note(c, number)

    # ------------------------------------------------------------ top-up rounds

    def top_up(
        self, drug_room: str, counts: Sequence[tuple[str, int]], *, actor: str, round_id: str
    ) -> tuple[Booked | None, list[tuple[str, int]]]:
        """See controller.wardsupply.rounds.top_up."""
        return rounds.top_up(self, drug_room, counts, actor=actor, round_id=round_id)

    def suggest_par(self, drug_room: str, *, days: int = 28) -> list[Any]:
        """See controller.wardsupply.rounds.suggest_par."""
        return rounds.suggest_par(self, drug_room, days=days)


def check_reason(reason: str, name: str = "reason") -> None:
    if not isinstance(reason, str) or len(reason.strip()) < 3:
        raise WardSupplyError(name, reason, "a decision needs a reason of at least 3 characters")
    if len(reason) > 300:
        raise WardSupplyError(name, reason[:40] + "...", "is longer than 300 characters")


def now_utc() -> datetime:
    return datetime.now(UTC)
