"""One ward-supply day, run by tests/crash/test_wardsupply_crash.py and killed at
random moments.

    python -m tests.crash.ward_worker --db URL [--pace SECONDS]

The day is fixed (a seeded plan and a fixed clock), so every start does the same work.
The worker is resumable: each start looks at the ledger and carries on. Every step is
either idempotent in the service (a requisition is booked once per sender id, a
dispatch books under its keys, a receipt is one transaction) or chosen from what the
ledger says is still to do (lines waiting for review, packs a pick list still
reserves, lists still open, notes still in transit).

It prints `ready` once it has opened the ledger, `phase NAME` as it starts each part of
the day, and `done {json}` at the end. `--pace` waits that long after each committed
step (a person's pace), so kills also land between steps and not only inside them.
The ledger itself (schema, master data, opening stock) is set up by the test, once.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.sites import FURO, METO, OXY, PARA, ward_site

START = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)  # 05:00 in Stockholm, before the AM cutoff
TODAY = START.date()
RUN = "AM"
SENDER = "ward-system"
CLERK = "ward:clerk"
PHARMACIST = "pharmacist:petra"
TECH = "technician:tove"
NURSE = "nurse:nils"
SEED = 4711
DEVIATION_ROOM = "DR-SURG"  # its delivery note is received with a damaged pack
DAMAGED_UNITS = 10

# (gtin, article, name, atc, pack size): valid GTINs of the demo catalogue
EXTRA = (
    ("07359990000051", 100010, "Atorvastatin 20", "C10AA05", 30),
    ("07359990000068", 100011, "Omeprazole 20", "A02BC01", 28),
    ("07359990000075", 100012, "Enalapril 10", "C09AA02", 50),
    ("07359990000082", 100013, "Metformin 500", "A10BA02", 100),
)
# (code, hospital, ward, counted)
ROOMS = (
    ("DR-MED", "H1", "W1", False),
    ("DR-ICU", "H1", "ICU", True),
    ("DR-SURG", "H1", "W3", False),
    ("DR-N2", "H2", "W2", False),
    ("DR-N4", "H2", "W4", False),
)
ROUTINE = (PARA, METO, *(e[0] for e in EXTRA))


def site_dict(ledger_url: str) -> dict[str, Any]:
    """The ward test site with four more products, five drug rooms in two hospitals
    and enough stock for the day. FURO (a licence product, 10 units in store) is short,
    so its line is cut and carried as a back order; OXY is controlled."""
    raw = ward_site(ledger_url=ledger_url)
    for gtin, article, name, atc, pack in EXTRA:
        raw["catalogue"].append(
            {
                "gtin": gtin,
                "article": article,
                "name": name,
                "substance": name.split()[0].lower(),
                "atc": atc,
                "strength": name.split()[1] + " mg",
                "unit_price": "1.00",
                "pack_size": pack,
                "supplier": "WHOLE",
            }
        )
        raw["stock"] += [
            {"gtin": gtin, "batch": f"{gtin[-3:]}-1", "expires_in_days": 150,
             "quantity": 10 * pack + pack // 2, "bin": "CENTRAL/A01"},
            {"gtin": gtin, "batch": f"{gtin[-3:]}-2", "expires_in_days": 300,
             "quantity": 60 * pack, "bin": "CENTRAL/A02"},
        ]  # fmt: skip
    raw["stock"] += [
        {"gtin": PARA, "batch": "P-MID", "expires_in_days": 200, "quantity": 4000,
         "bin": "CENTRAL/A02"},
        {"gtin": METO, "batch": "M-2", "expires_in_days": 250, "quantity": 4000,
         "bin": "CENTRAL/A02"},
    ]  # fmt: skip
    raw["wards"] += [
        {"code": "W3", "name": "Surgery", "cost_centre": "4744"},
        {"code": "W4", "name": "Medicine North", "cost_centre": "4755"},
    ]
    raw["drug_rooms"] = [
        {
            "code": code,
            "hospital": hospital,
            "ward": ward,
            "counted": counted,
            "assortment": [{"gtin": g, "min": 1, "max": 10} for g in ROUTINE]
            + ([{"gtin": OXY, "min": 0, "max": 2}] if code == "DR-MED" else []),
        }
        for code, hospital, ward, counted in ROOMS
    ]
    return raw


def plan(per_room: int = 2) -> list[tuple[str, str, tuple[tuple[str, int], ...]]]:
    """The day's requisitions: (sender id, drug room, (gtin, packs)...). `per_room` per
    room of four routine lines each (two: 40 lines), and two lines a pharmacist decides
    alone: oxycodone (controlled) for DR-MED and furosemide (a licence product) for
    DR-ICU."""
    rng = random.Random(SEED)
    out = []
    for code, *_ in ROOMS:
        for n in range(1, per_room + 1):
            gtins = rng.sample(ROUTINE, 4)
            lines = [(g, rng.randint(1, 4)) for g in gtins]
            if n == per_room and code == "DR-MED":
                lines.append((OXY, 1))
            if n == per_room and code == "DR-ICU":
                lines.append((FURO, 1))
            out.append((f"{code}-{n}", code, tuple(lines)))
    return out


def opening_units(raw: dict[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for lot in raw["stock"]:
        total[lot["gtin"]] = total.get(lot["gtin"], 0) + int(lot["quantity"])
    return total


def say(*parts: str) -> None:
    print(*parts, flush=True)


class Day:
    def __init__(self, svc: Any, pace: float, per_room: int) -> None:
        self.svc = svc
        self.pace = pace
        self.per_room = per_room
        self.refused: list[str] = []

    def pause(self) -> None:
        if self.pace:
            time.sleep(self.pace)

    def run(self) -> dict[str, Any]:
        from controller.wardsupply import views
        from controller.wardsupply.model import LineIn, RequisitionIn, RequisitionSource

        svc = self.svc
        say("phase submit")
        for sender_id, room, lines in plan(self.per_room):
            svc.submit(
                RequisitionIn(
                    sender=SENDER,
                    sender_id=sender_id,
                    drug_room=room,
                    lines=tuple(LineIn(g, p) for g, p in lines),
                    source=RequisitionSource.JSON,
                ),
                actor=CLERK,
            )
            self.pause()

        say("phase review")
        for code, *_ in ROOMS:
            svc.approve_routine(actor=PHARMACIST, reason="routine ward stock", drug_room=code)
            self.pause()
        for line in svc.review_queue():
            svc.decide(line.id, "approve", actor=PHARMACIST, reason="usual for the ward")
            self.pause()

        say("phase pick lists")
        svc.make_pick_lists(run=RUN, run_date=TODAY, actor=TECH)

        with svc.ledger.engine.connect() as c:
            open_lists = views.pick_list_numbers(c, "open")
        say("phase scan")
        for i, number in enumerate(open_lists):
            if i == 0:
                self.refuse_one(number)
            self.scan_all(number)

        say("phase dispatch")
        for number in open_lists:
            svc.dispatch(number, actor=TECH)
            self.pause()

        say("phase receive")
        with svc.ledger.engine.connect() as c:
            waiting = views.note_numbers(c, status="in_transit")
        for number in waiting:
            self.receive(number)
            self.pause()

        with svc.ledger.engine.connect() as c:
            lists = views.pick_list_numbers(c)
            notes = views.note_numbers(c)
        return {"lists": lists, "notes": notes, "refused": self.refused}

    def pack(self, gtin: str, batch: str, expiry: Any, serial: str | None) -> str:
        from controller.gs1 import PackId, encode_pack

        return encode_pack(PackId(gtin, batch, expiry, serial))

    def refuse_one(self, number: str) -> None:
        """An expired pack of the list's first lot is refused and books nothing."""
        view = self.svc.pick_list(number)
        line = next(x for x in view.lines if x.lots)
        lot = line.lots[0]
        data = self.pack(line.gtin, lot["batch"], TODAY - timedelta(days=1), None)
        result = self.svc.scan(number, data, actor=TECH)
        if result.accepted or not result.message.startswith("expired"):
            raise RuntimeError(f"an expired pack was not refused: {result}")
        self.refused.append(result.message)

    def scan_all(self, number: str) -> None:
        """Scans the packs the list still reserves, line by line and lot by lot, from one
        reading of the list. A pack's serial is derived from how much of its lot the
        line has picked, so no pack is scanned twice whatever moment the last process
        stopped at. (The service credits a scan to the first line of the list with that
        lot open; finishing each line before the next keeps that the line meant.)"""
        view = self.svc.pick_list(number)
        for line in view.lines:
            for row, lot in enumerate(line.lots):
                picked = lot["picked"]
                while picked < lot["units"]:
                    serial = f"L{line.line_id}-{lot['batch']}-{row}-{picked // line.pack_size}"
                    data = self.pack(line.gtin, lot["batch"], lot["expiry"], serial)
                    result = self.svc.scan(number, data, actor=TECH)
                    if not result.accepted or result.line_id != line.line_id:
                        raise RuntimeError(
                            f"scan of {serial} on {number}: {result.message} (line"
                            f" {result.line_id})"
                        )
                    picked += min(line.pack_size, lot["units"] - picked)
                    self.pause()

    def receive(self, number: str) -> None:
        from controller.wardsupply.model import Deviation
        from controller.wardsupply.service import ReceiptLine

        note = self.svc.note(number)
        deviations = []
        if note.drug_room == DEVIATION_ROOM:
            first = note.lines[0]
            deviations.append(
                ReceiptLine(
                    first.gtin,
                    first.batch,
                    Deviation.DAMAGED,
                    min(DAMAGED_UNITS, first.units),
                    "crushed box",
                )
            )
        self.svc.receive(number, actor=NURSE, deviations=deviations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.ward_worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--pace", type=float, default=0.0)
    parser.add_argument("--per-room", type=int, default=2, help="requisitions per drug room")
    args = parser.parse_args(argv)

    from controller.config import parse_site
    from controller.ledger import Ledger
    from controller.ledger.engine import make_engine
    from controller.wardsupply.service import WardSupply

    site = parse_site(site_dict(args.db))
    ledger = Ledger(
        make_engine(args.db),
        clock=lambda: START,
        min_shelf_life_days=site.ledger.min_shelf_life_days,
    )
    svc = WardSupply(ledger, site, clock=lambda: START)
    say("ready")
    try:
        summary = Day(svc, args.pace, args.per_room).run()
    finally:
        ledger.engine.dispose()
    say("done", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
