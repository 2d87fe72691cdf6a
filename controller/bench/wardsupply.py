"""Ward supply at the region's daily share: about 250 order lines from 15 drug rooms in
two hospitals, reviewed and approved, then picked, dispatched and received.

Why: the region orders about 90,000 lines a year from its drug rooms, about 250 a
day. The lines approved before a run's cutoff become that run's pick lists (one per
hospital, every line's stock reserved first expiry first), and a technician confirms
each pack by a GS1 scan at the picking bench and waits for the answer. So the two
figures a person feels are the time to make a day's pick lists and the latency of one
scan.

* pick lists: `WardSupply.make_pick_lists` for the day's approved lines, timed on
  fresh ledgers (the ledger is emptied and set up again before each round); the
  figure is the median of the rounds, and every round is listed;
* scan: `WardSupply.scan` of every pack the lists reserve (serialised GS1 strings, as
  a pack carries them), each call timed alone; median, p95 and max;
* dispatch and receipt: `WardSupply.dispatch` of each list, and `WardSupply.receive`
  of each delivery note, each timed alone; the report divides dispatch by the notes
  it wrote.

The run is synchronous on the ledger, as the service is when the controller runs it
on the ledger's thread. The site is built in code; the clock is fixed at 05:00 local
time, before the AM run's cutoff. No figure is asserted anywhere.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

from controller.config import Site, parse_site
from controller.gs1 import gs1_check_digit

LINES = 250
ROOMS = 15  # drug rooms: 8 at the central hospital, 7 at the other
REQUISITIONS_PER_ROOM = 2
PRODUCTS = 24  # each drug room's list
PACK_SIZES = (20, 28, 30, 50, 100)
ROUNDS = 3  # pick lists made on a fresh ledger this many times
RUN = "AM"
SEED = 90_000  # lines a year
START = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)  # 05:00 in Stockholm
ACTOR = "bench"
# Scanning stops after this many seconds (or --seconds x 6, if longer), so that a slow
# ledger still ends the phase; the report says how many packs were scanned.
SCAN_BUDGET_S = 240.0
TARGET_PICK_LISTS_S = 60.0
TARGET_SCAN_P95_MS = 500.0


def gtin(i: int) -> str:
    body = f"0735999{200_000 + i:06d}"
    return body + str(gs1_check_digit(body))


def site(ledger_url: str) -> Site:
    """Two hospitals, 15 drug rooms (every fifth one counted), 24 products with two lots
    each: an early lot in bin A01 that covers about a third of the day, and a later
    one in A02, so first expiry first splits some lines over two lots."""
    rng = random.Random(SEED)
    catalogue = []
    stock = []
    for i in range(PRODUCTS):
        pack = PACK_SIZES[i % len(PACK_SIZES)]
        catalogue.append(
            {
                "gtin": gtin(i),
                "article": 300_000 + i,
                "name": f"Ward product {i + 1:02d}",
                "substance": f"substance {i + 1}",
                "atc": "N02BE01",
                "strength": "10 mg",
                "unit_price": "1.00",
                "pack_size": pack,
            }
        )
        stock += [
            {
                "gtin": gtin(i),
                "batch": f"W{i:02d}-A",
                "expires_in_days": 120 + rng.randint(0, 30),
                "quantity": 8 * pack + pack // 2,
                "bin": "CENTRAL/A01",
            },
            {
                "gtin": gtin(i),
                "batch": f"W{i:02d}-B",
                "expires_in_days": 300,
                "quantity": 200 * pack,
                "bin": "CENTRAL/A02",
            },
        ]
    rooms = []
    wards = []
    for r in range(ROOMS):
        hospital = "H1" if r < 8 else "H2"
        ward = f"W{r + 1:02d}"
        wards.append({"code": ward, "name": f"Ward {r + 1}", "cost_centre": f"{5000 + r}"})
        rooms.append(
            {
                "code": f"DR-{r + 1:02d}",
                "hospital": hospital,
                "ward": ward,
                "counted": r % 5 == 4,
                "assortment": [{"gtin": gtin(i), "min": 1, "max": 10} for i in range(PRODUCTS)],
            }
        )
    raw = {
        "site": {"name": "doseline bench", "timezone": "Europe/Stockholm"},
        "ledger": {"url": ledger_url, "min_shelf_life_days": 30},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "catalogue": catalogue,
        "store": {"code": "CENTRAL", "bins": ["CENTRAL/A01", "CENTRAL/A02"]},
        "stock": stock,
        "wards": wards,
        "hospitals": [
            {"code": "H1", "name": "Central Hospital"},
            {"code": "H2", "name": "County Hospital"},
        ],
        "ward_supply": {
            "runs": [
                {"code": "AM", "cutoff": "06:00", "departs": "07:30"},
                {"code": "PM", "cutoff": "12:00", "departs": "13:30"},
            ]
        },
        "drug_rooms": rooms,
    }
    return parse_site(raw, source="<bench wardsupply>")


def requisitions(lines: int) -> list[tuple[str, str, list[tuple[str, int]]]]:
    """(sender id, drug room, [(gtin, packs)]): `lines` lines spread evenly over the
    rooms' requisitions, 1 to 3 packs each, no product twice in one requisition."""
    rng = random.Random(SEED)
    slots = ROOMS * REQUISITIONS_PER_ROOM
    out = []
    for s in range(slots):
        count = lines // slots + (1 if s < lines % slots else 0)
        room = f"DR-{s % ROOMS + 1:02d}"
        picked = rng.sample(range(PRODUCTS), min(count, PRODUCTS))
        out.append(
            (f"{room}-{s // ROOMS + 1}", room, [(gtin(i), rng.randint(1, 3)) for i in picked])
        )
    return out


class Day:
    """One fresh ledger with the day's lines submitted and approved."""

    def __init__(self, url: str, lines: int) -> None:
        from controller.app import Controller
        from controller.ledger.migrations import reset

        self.site = site(url)
        self.controller = Controller(self.site, ledger_url=url, clock=lambda: START)
        ledger = self.controller.ledger
        ledger.clock = lambda: START
        reset(ledger.engine)
        self.controller.prepare_ledger()
        self.controller.receive_opening_stock(START.date())
        self.svc = self.controller.wardsupply
        self.submit_s: list[float] = []
        self.lines = 0
        self.approve_s = 0.0
        self.submit(lines)

    def submit(self, lines: int) -> None:
        from controller.wardsupply.model import LineIn, RequisitionIn, RequisitionSource

        for sender_id, room, wanted in requisitions(lines):
            t0 = time.perf_counter()
            booked = self.svc.submit(
                RequisitionIn(
                    sender="bench",
                    sender_id=sender_id,
                    drug_room=room,
                    lines=tuple(LineIn(g, p) for g, p in wanted),
                    source=RequisitionSource.JSON,
                ),
                actor=ACTOR,
            )
            self.submit_s.append(time.perf_counter() - t0)
            if booked.flagged:
                raise RuntimeError(f"{sender_id}: {booked.flagged} lines flagged for review")
            self.lines += booked.lines
        t0 = time.perf_counter()
        approved = self.svc.approve_routine(actor=ACTOR, reason="routine ward stock")
        self.approve_s = time.perf_counter() - t0
        if approved != self.lines:
            raise RuntimeError(f"{approved} of {self.lines} lines approved")

    def close(self) -> None:
        self.controller.close()


def _packs(svc: Any, number: str) -> list[tuple[int, str, str]]:
    """(line id, GTIN, GS1 string) of every pack a list still reserves, in list order."""
    from controller.gs1 import PackId, encode_pack

    out = []
    for line in svc.pick_list(number).lines:
        for row, lot in enumerate(line.lots):
            picked = lot["picked"]
            while picked < lot["units"]:
                serial = f"L{line.line_id}{lot['batch']}-{row}-{picked // line.pack_size}"
                pack = PackId(line.gtin, lot["batch"], lot["expiry"], serial)
                out.append((line.line_id, line.gtin, encode_pack(pack)))
                picked += min(line.pack_size, lot["units"] - picked)
    return out


def run(
    url: str,
    seconds: float,
    *,
    lines: int = LINES,
    rounds: int = ROUNDS,
    scan_budget_s: float | None = None,
) -> dict[str, Any]:
    from controller.bench.common import median, ms, quantile

    budget = scan_budget_s if scan_budget_s is not None else max(SCAN_BUDGET_S, 6 * seconds)
    make_s: list[float] = []
    day: Day | None = None
    made: list[Any] = []
    try:
        for _ in range(rounds):
            if day is not None:
                day.close()
            day = Day(url, lines)
            t0 = time.perf_counter()
            made = day.svc.make_pick_lists(run=RUN, run_date=START.date(), actor=ACTOR)
            make_s.append(time.perf_counter() - t0)
        assert day is not None
        svc = day.svc
        list_lines = [len(p.lines) for p in made]
        reserved = sum(x.reserved_units for p in made for x in p.lines)

        scan_s: list[float] = []
        packs_total = 0
        started = time.perf_counter()
        stopped_early = False
        for pick in made:
            packs = _packs(svc, pick.number)
            packs_total += len(packs)
            for line_id, _, data in packs:
                if time.perf_counter() - started > budget:
                    stopped_early = True
                    break
                t0 = time.perf_counter()
                result = svc.scan(pick.number, data, actor=ACTOR)
                scan_s.append(time.perf_counter() - t0)
                if not result.accepted or result.line_id != line_id:
                    raise RuntimeError(f"scan on {pick.number} refused: {result.message}")

        dispatch_s: list[float] = []
        notes: list[str] = []
        for pick in made:
            t0 = time.perf_counter()
            sent = svc.dispatch(pick.number, actor=ACTOR)
            dispatch_s.append(time.perf_counter() - t0)
            notes += sent.notes
        receive_s: list[float] = []
        for number in notes:
            t0 = time.perf_counter()
            svc.receive(number, actor=ACTOR)
            receive_s.append(time.perf_counter() - t0)
        open_reservations = svc.ledger.open_reservation_count()
    finally:
        if day is not None:
            day.close()

    make_median = median(make_s) or 0.0
    scan_p95 = quantile(scan_s, 0.95)
    figures: dict[str, Any] = {
        "lines": day.lines,
        "drug_rooms": ROOMS,
        "requisitions": len(day.submit_s),
        "pick_lists": {
            "median_s": round(make_median, 3),
            "rounds_s": [round(x, 3) for x in make_s],
            "per_line_ms": ms(make_median / day.lines) if day.lines else None,
            "lists": len(made),
            "lines_per_list": list_lines,
            "units_reserved": reserved,
        },
        "scan": {
            "samples": len(scan_s),
            "packs": packs_total,
            "stopped_early": stopped_early,
            "p50_ms": ms(median(scan_s)),
            "p95_ms": ms(scan_p95),
            "max_ms": ms(max(scan_s)) if scan_s else None,
            "total_s": round(sum(scan_s), 1),
        },
        "dispatch": {
            "lists": len(dispatch_s),
            "notes": len(notes),
            "per_list_s": [round(x, 3) for x in dispatch_s],
            "per_note_ms": ms(sum(dispatch_s) / len(notes)) if notes else None,
        },
        "receipt": {
            "notes": len(receive_s),
            "p50_ms": ms(median(receive_s)),
            "max_ms": ms(max(receive_s)) if receive_s else None,
        },
        "set_up": {
            "submit_per_requisition_p50_ms": ms(median(day.submit_s)),
            "approve_routine_s": round(day.approve_s, 3),
        },
        "open_reservations_after": open_reservations,
    }
    met = (
        make_median < TARGET_PICK_LISTS_S
        and scan_p95 is not None
        and scan_p95 * 1000 < TARGET_SCAN_P95_MS
        and not stopped_early
    )
    return {
        "figures": figures,
        "target": (
            f"a day's pick lists ({lines} lines) in < {TARGET_PICK_LISTS_S:.0f} s and a scan"
            f" confirmed in < {TARGET_SCAN_P95_MS:.0f} ms at p95 (proposed)"
        ),
        "met": met,
    }


__all__ = ["START", "requisitions", "run", "site"]
