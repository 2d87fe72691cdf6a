"""Ward supply under crashes: a day's requisitions, review, pick lists, scans, dispatch
and receipt, run by a worker process (tests/crash/ward_worker.py) that is killed with
SIGKILL at seeded random moments and started again until it reports the day done.

Each start carries on from what the ledger says. Afterwards nothing may be half done or
booked twice: the ledger verifies, no reservation is open, nothing is in transit, each
delivered line holds what was scanned for it, every movement key is booked once per
lot and route, each product's opening stock is all accounted for (store, transit, drug
rooms, consumed, waste, adjustments), and each requisition is booked once.

On SQLite the day has 42 lines; on PostgreSQL 22 (one requisition per room): every
step there is a few round trips to the server, the 42-line day takes about three
times as long, and both would not fit the suite's time together.
"""

from __future__ import annotations

import queue
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.app import Controller
from controller.config import parse_site
from controller.ledger import Ledger, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.schema import audit_log, balances, locations, lots, movements, products
from controller.ledger.schema import reservations as reservations_table
from controller.ledger.schema_wardsupply import (
    ward_delivery_notes,
    ward_note_lines,
    ward_pick_lists,
    ward_pick_scans,
    ward_requisition_lines,
    ward_requisitions,
)
from tests.crash.ward_worker import (
    DAMAGED_UNITS,
    DEVIATION_ROOM,
    ROOMS,
    START,
    TODAY,
    opening_units,
    plan,
    site_dict,
)
from tests.sites import FURO

REPO = Path(__file__).resolve().parents[2]
SEED = 20261207
pytestmark = pytest.mark.e2e
PACE = 0.04  # the worker's pause after each committed step: a person's pace
L = ward_requisition_lines
# Where each kill's clock starts (the worker's `ready`, or the line announcing a part
# of the day) and the range of the random wait after it, in seconds. Most kills land
# anywhere; some are aimed at the short parts of the day, which a kill at a random
# second would rarely catch.
KILLS: tuple[tuple[str, float, float], ...] = (
    ("phase submit", 0.0, 0.3),
    ("phase review", 0.0, 0.3),
    ("phase pick lists", 0.0, 0.3),
    ("phase pick lists", 0.0, 0.3),
    ("ready", 0.2, 2.0),
    ("ready", 0.2, 2.0),
    ("ready", 0.2, 2.0),
    ("ready", 0.2, 2.0),
    ("ready", 0.2, 2.0),
    ("ready", 0.2, 2.0),
    ("phase dispatch", 0.0, 0.3),
    ("phase dispatch", 0.0, 0.3),
    ("phase receive", 0.0, 0.2),
)


class Worker:
    """One run of the worker; its standard output is read line by line as it comes."""

    def __init__(self, url: str, per_room: int, log: Path) -> None:
        self.log = log
        with open(log, "a", encoding="utf-8") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.crash.ward_worker",
                    "--db",
                    url,
                    "--per-room",
                    str(per_room),
                    "--pace",
                    str(PACE),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.seen: list[str] = []
        self.ready_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as out:
            for line in out:
                self.lines.put((time.monotonic(), line.rstrip("\n")))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 120) -> float | None:
        """When the worker printed a line starting with `prefix`; None if it ended
        first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"the worker said nothing like {prefix!r} in {timeout} s"
                ) from None
            if item is None:
                self.lines.put(None)
                return None
            at, line = item
            self.seen.append(line)
            if line == "ready":
                self.ready_at = at
            if line.startswith(prefix):
                return at

    def drain(self) -> None:
        """Reads what the ended process printed, up to the end of its output."""
        while True:
            item = self.lines.get(timeout=10)
            if item is None:
                self.lines.put(None)
                return
            self.seen.append(item[1])

    def ended_by(self, deadline: float) -> bool:
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False

    def finish(self, timeout: float = 180) -> None:
        """Waits for the end of the day; the worker must end well and say done."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the worker did not finish the day") from None
        self.drain()
        assert code == 0, f"the worker failed (exit {code}): {self.log.read_text()[-3000:]}"
        assert any(x.startswith("done") for x in self.seen), self.seen

    def kill(self) -> str:
        self.process.kill()
        self.process.wait(timeout=30)
        self.drain()
        return next((x for x in reversed(self.seen) if x.startswith("phase")), "starting")


def half_done(ledger: Ledger) -> dict[str, int]:
    """What a kill left half done, read from the ledger."""
    with ledger.engine.connect() as c:
        unreserved = c.execute(
            select(L.c.reservation_key).where(
                L.c.status == "picking", L.c.reserved_units == 0, L.c.picked_units == 0
            )
        ).scalars()
        keys = list(unreserved)
        held_not_noted = 0
        if keys:
            held_not_noted = int(
                c.execute(
                    select(func.count()).where(reservations_table.c.key.in_(keys))
                ).scalar_one()
            )
        partly_scanned = c.execute(
            select(func.count(func.distinct(L.c.pick_list_id)))
            .join(ward_pick_lists, ward_pick_lists.c.id == L.c.pick_list_id)
            .where(
                ward_pick_lists.c.status == "open",
                L.c.picked_units < L.c.reserved_units,
                L.c.pick_list_id.in_(select(ward_pick_scans.c.pick_list_id)),
            )
        ).scalar_one()
        posted_on_open_list = c.execute(
            select(func.count())
            .select_from(L)
            .join(ward_pick_lists, ward_pick_lists.c.id == L.c.pick_list_id)
            .join(reservations_table, reservations_table.c.key == L.c.reservation_key)
            .where(ward_pick_lists.c.status == "open", reservations_table.c.status != "open")
        ).scalar_one()
        statuses: Counter[str] = Counter(
            dict(c.execute(select(L.c.status, func.count()).group_by(L.c.status)).all())
        )
        notes: Counter[str] = Counter(
            dict(
                c.execute(
                    select(ward_delivery_notes.c.status, func.count()).group_by(
                        ward_delivery_notes.c.status
                    )
                ).all()
            )
        )
    reviewed = sum(n for s, n in statuses.items() if s not in ("pending", "flagged"))
    return {
        "review half done": int(bool(statuses["pending"] + statuses["flagged"]) and reviewed > 0),
        "lines listed, not yet reserved": len(keys) - held_not_noted,
        "stock held, line not yet told": held_not_noted,
        "list partly scanned": int(partly_scanned),
        "list posted, not yet dispatched": int(posted_on_open_list),
        "notes half received": int(bool(notes["in_transit"]) and notes["received"] > 0),
    }


def prepare(url: str) -> dict[str, Any]:
    raw = site_dict(url)
    controller = Controller(parse_site(raw), ledger_url=url)
    controller.ledger.clock = lambda: START
    controller.wardsupply.clock = lambda: START
    try:
        controller.prepare_ledger()
        controller.receive_opening_stock(TODAY)
        # FURO is a licence product: it leaves only for a ward that holds a licence
        for ward in sorted({room.ward for room in controller.site.drug_rooms}):
            controller.ledger.record_licence(
                FURO,
                holder_kind="ward",
                holder=ward,
                number=f"LIC-{ward}",
                valid_from=TODAY,
                valid_to=TODAY + timedelta(days=30),
                fee_sek=0,
                actor="test",
            )
    finally:
        controller.close()
    return raw


@pytest.mark.timeout(300)
def test_ward_supply_survives_kills(ledger_url: str, tmp_path: Path) -> None:
    per_room = 1 if ledger_url.startswith("postgresql") else 2
    raw = prepare(ledger_url)
    rng = random.Random(SEED)
    log = tmp_path / "worker.log"
    kills: list[tuple[str, float]] = []  # (the part of the day it hit, seconds of life)
    hits: dict[str, int] = defaultdict(int)
    ledger = Ledger(make_engine(ledger_url))
    worker = None
    try:
        for start, low, high in KILLS:
            worker = Worker(ledger_url, per_room, log)
            at = worker.wait_for(start)
            if at is None or worker.ended_by(at + rng.uniform(low, high)):
                worker.finish()
                worker = None
                break  # the day was done before this kill
            hit = worker.kill()
            assert worker.ready_at is not None
            kills.append((hit, time.monotonic() - worker.ready_at))
            worker = None
            for what, n in half_done(ledger).items():
                hits[what] += bool(n)
        else:
            worker = Worker(ledger_url, per_room, log)
            worker.finish()
            worker = None
        assert len(kills) >= 10, kills
        assert sum(hits.values()) >= 1, hits
        check_the_day(ledger, raw, per_room)
        print(
            f"ward supply crash: {len(kills)} kills after "
            f"{min(t for _, t in kills):.2f}-{max(t for _, t in kills):.2f} s of work; "
            f"parts of the day hit: {dict(Counter(p for p, _ in kills))}; "
            f"caught half done: {dict(hits)}"
        )
    finally:
        if worker is not None and worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(timeout=30)
        ledger.engine.dispose()


def check_the_day(ledger: Ledger, raw: dict[str, Any], per_room: int) -> None:
    engine = ledger.engine
    assert verify_ledger(engine) == []
    assert ledger.open_reservation_count() == 0, ledger.open_reservations()
    with engine.connect() as c:
        kinds = dict(c.execute(select(locations.c.id, locations.c.kind)).all())
        codes = dict(c.execute(select(locations.c.id, locations.c.code)).all())
        gtin_of_lot = dict(
            c.execute(
                select(lots.c.id, products.c.gtin).join(
                    products, products.c.id == lots.c.product_id
                )
            ).all()
        )
        on_hand = c.execute(select(balances.c.location_id, balances.c.lot_id, balances.c.on_hand))
        held: dict[tuple[str, str], int] = defaultdict(int)  # (location kind, gtin) -> units
        room_stock: dict[tuple[str, str], int] = defaultdict(int)  # (location, gtin)
        for loc, lot, units in on_hand:
            held[(kinds[loc], gtin_of_lot[lot])] += int(units)
            room_stock[(codes[loc], gtin_of_lot[lot])] += int(units)
        moves = c.execute(
            select(
                movements.c.idempotency_key,
                movements.c.kind,
                movements.c.lot_id,
                movements.c.from_location_id,
                movements.c.to_location_id,
                movements.c.quantity,
            )
        ).all()
        requisitions = c.execute(
            select(ward_requisitions.c.id, ward_requisitions.c.sender_id)
        ).all()
        lines = c.execute(
            select(
                L.c.id,
                L.c.requisition_id,
                L.c.status,
                L.c.approved_packs,
                L.c.reserved_units,
                L.c.picked_units,
                L.c.delivered_units,
                L.c.back_order_of,
                L.c.packs,
                products.c.gtin,
                products.c.pack_size,
            ).join(products, products.c.id == L.c.product_id)
        ).all()
        scans = c.execute(
            select(
                ward_pick_scans.c.line_id,
                ward_pick_scans.c.units,
                ward_pick_scans.c.serial,
            )
        ).all()
        note_lines = c.execute(
            select(
                ward_note_lines.c.line_id,
                ward_note_lines.c.units,
                ward_note_lines.c.received_units,
                ward_note_lines.c.deviation,
                ward_note_lines.c.deviation_units,
                ward_delivery_notes.c.drug_room,
                ward_delivery_notes.c.status,
            ).join(ward_delivery_notes, ward_delivery_notes.c.id == ward_note_lines.c.note_id)
        ).all()
        booked_in_trail = c.execute(
            select(audit_log.c.entity_key, func.count())
            .where(audit_log.c.entity == "ward_requisition")
            .group_by(audit_log.c.entity_key)
        ).all()
        lists = c.execute(select(ward_pick_lists.c.hospital, ward_pick_lists.c.status)).all()

    # Nothing in transit; every list dispatched, one per hospital; every note received.
    assert sum(n for (kind, _), n in held.items() if kind == "transit") == 0
    assert sorted(lists) == [("H1", "dispatched"), ("H2", "dispatched")]
    assert {x.status for x in note_lines} == {"received"}

    # Each requisition booked once, with its lines as sent.
    day = plan(per_room)
    assert sorted(r.sender_id for r in requisitions) == sorted(sid for sid, _, _ in day)
    assert len(booked_in_trail) == len(day) and {n for _, n in booked_in_trail} == {1}
    by_req = {r.id: r.sender_id for r in requisitions}
    sent = {sid: sorted(lines_) for sid, _, lines_ in day}
    got: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for x in lines:
        if x.back_order_of is None:
            got[by_req[x.requisition_id]].append((x.gtin, x.packs))
    assert {k: sorted(v) for k, v in got.items()} == sent

    # Every line delivered what was scanned for it; only the short FURO line left a back
    # order, once.
    scanned: dict[int, int] = defaultdict(int)
    for s in scans:
        scanned[s.line_id] += s.units
    assert len({s.serial for s in scans}) == len(scans)  # no pack scanned twice
    on_note: dict[int, int] = defaultdict(int)
    received: dict[int, int] = defaultdict(int)
    damaged: dict[int, int] = defaultdict(int)
    for n in note_lines:
        on_note[n.line_id] += n.units
        received[n.line_id] += n.received_units
        if n.deviation:
            assert (n.deviation, n.drug_room) == ("damaged", DEVIATION_ROOM)
            damaged[n.line_id] += n.deviation_units
    assert sum(damaged.values()) == DAMAGED_UNITS
    originals = [x for x in lines if x.back_order_of is None]
    backs = [x for x in lines if x.back_order_of is not None]
    assert {x.status for x in originals} == {"delivered"}
    furo = [x for x in originals if x.gtin == FURO]
    assert [(b.back_order_of, b.approved_packs, b.status) for b in backs] == [
        (furo[0].id, 1, "approved")
    ]
    for x in originals:
        assert scanned[x.id] == x.reserved_units == x.picked_units, x
        assert on_note[x.id] == scanned[x.id], x
        assert x.delivered_units == received[x.id] == scanned[x.id] - damaged[x.id], x
        if x.gtin != FURO:
            assert scanned[x.id] == x.approved_packs * x.pack_size, x

    # Every movement key booked once per lot and route.
    routes = Counter(
        (m.idempotency_key, m.lot_id, m.from_location_id, m.to_location_id) for m in moves
    )
    assert [r for r, n in routes.items() if n > 1] == []

    # Each product's opening stock is all there: store + transit + drug rooms + consumed
    # + waste + adjustments (what went into each external location, less what came out).
    into: dict[tuple[str, str], int] = defaultdict(int)
    for m in moves:
        gtin = gtin_of_lot[m.lot_id]
        into[(kinds[m.to_location_id], gtin)] += m.quantity
        into[(kinds[m.from_location_id], gtin)] -= m.quantity
    for gtin, opening in opening_units(raw).items():
        inside = sum(held[(k, gtin)] for k in ("bin", "transit", "drugroom"))
        outside = sum(into[(k, gtin)] for k in ("consumed", "waste", "adjustment"))
        assert inside + outside == opening, (gtin, inside, outside, opening)
        assert -into[("supplier", gtin)] == opening, gtin
    # ... and it is where the day put it: an uncounted room's stock was used on delivery,
    # the counted room keeps what arrived, the damaged pack is waste.
    delivered_to: dict[tuple[str, str], int] = defaultdict(int)
    room_of = {n.line_id: n.drug_room for n in note_lines}
    for x in originals:
        delivered_to[(room_of[x.id], x.gtin)] += x.delivered_units
    counted = {code for code, _, _, is_counted in ROOMS if is_counted}
    for (room, gtin), units in delivered_to.items():
        hospital, ward = next((h, w) for code, h, w, _ in ROOMS if code == room)
        shelf = room_stock[(f"{hospital}/{ward}/{room}", gtin)]
        assert shelf == (units if room in counted else 0), (room, gtin)
    consumed = sum(into[("consumed", g)] for g in opening_units(raw))
    assert consumed == sum(u for (r, _), u in delivered_to.items() if r not in counted)
    assert sum(into[("waste", g)] for g in opening_units(raw)) == DAMAGED_UNITS
