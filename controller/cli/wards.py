"""`doseline wards ...`: ward supply from the drug rooms' requisitions to the shelf
(docs/ward-supply.md).

    doseline wards requisition --room R --id ID --line GTIN:PACKS... [--urgent]
    doseline wards requisition --json-file F | --fhir-file F     a requisition from a file
    doseline wards requisitions [--limit N]                      the latest, newest first
    doseline wards review [--room R]                             lines waiting for review
    doseline wards approve-routine --reason R [--room R] [--line ID...]
    doseline wards decide LINE DECISION --reason R [--packs N] [--substitute GTIN]
    doseline wards pick-lists make --run RUN [--date D]          a run's pick lists
    doseline wards pick-lists list [--status open|dispatched]
    doseline wards pick-list NUMBER                              one list, its lots and bins
    doseline wards scan NUMBER DATA                              confirm one pack by its scan
    doseline wards dispatch NUMBER                               into transit, delivery notes
    doseline wards notes [--status S] [--room R]                 delivery notes
    doseline wards note NUMBER [--html FILE]                     one note (and its print page)
    doseline wards receive NUMBER [--deviation GTIN:BATCH:KIND:UNITS:REASON ...]
    doseline wards top-up ROOM --round ID --count GTIN:PACKS...  a top-up round's counts
    doseline wards par ROOM [--days N]                           suggested min and max
    doseline wards reliability [--since T] [--until T]           delivery reliability
    doseline wards rooms                                         the site's drug rooms

Each reads the site file (`--config`/`--site`) and the ledger (`--db`, by default the
site file's ledger URL); the listings take `--json`. `--actor` is who acts, recorded in
the audit trail (default `cli:<login name>`). Where the site verifies packs, `scan`
asks the verification system about serialised packs and `dispatch` decommissions them,
as the running controller does.

Exit codes: 0 done; 1 a scan was refused (the message says why); 2 refused input (the
message names the field and the value; nothing was booked).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli.common import (
    add_site_options,
    day,
    default_actor,
    print_records,
    refused,
    site_ledger,
    when,
)
from controller.config import Site, load_site

if TYPE_CHECKING:
    from controller.wardsupply.service import WardSupply

PROG = "doseline wards"
GS = "<GS>"


class _Bad(Exception):
    """A command-line value that is refused before the ledger is touched."""


def _open(args: argparse.Namespace) -> tuple[Site, WardSupply]:
    from controller.purchasing import PurchasingStore
    from controller.wardsupply.service import WardSupply

    site, ledger = site_ledger(args, shelf_life=True)
    purchasing = PurchasingStore(ledger)

    def order(items: list[tuple[str, int]], actor: str, note: str) -> list[str]:
        return purchasing.order_products(items, now=ledger.clock(), actor=actor, note=note)

    return site, WardSupply(ledger, site, order_products=order)


def _fail(command: str, exc: Exception) -> int:
    """Every problem of a refusal on stderr, each naming its field and value; exit 2."""
    return refused(f"wards {command}", exc)


def _refusals() -> tuple[type[Exception], ...]:
    from controller.intake.common import IntakeError
    from controller.ledger import LedgerError
    from controller.wardsupply.model import WardSupplyError

    return (WardSupplyError, IntakeError, LedgerError, _Bad)


def _run(command: str, args: argparse.Namespace, work: Any) -> int:
    """Opens the ledger, runs `work(site, service)`, closes the ledger; a refusal is
    exit 2 with its problems."""
    site, ws = _open(args)
    try:
        result: int = work(site, ws)
        return result
    except _refusals() as exc:
        return _fail(command, exc)
    finally:
        ws.ledger.engine.dispose()


def _pair(text: str, option: str, *, least: int | None = None) -> tuple[str, int]:
    """GTIN:PACKS from the command line (`least`: the fewest packs taken here; None
    leaves the judgement to the requisition reader, which names the line)."""
    gtin, sep, packs = text.partition(":")
    if not sep or not gtin.strip():
        raise _Bad(f"{option}: {text!r}: expected GTIN:PACKS")
    try:
        number = int(packs)
    except ValueError:
        raise _Bad(f"{option}: {text!r}: packs {packs!r} is not a whole number") from None
    if least is not None and number < least:
        raise _Bad(f"{option}: {text!r}: packs {number} must be at least {least}")
    return gtin.strip(), number


def _today(site: Site) -> date:
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(site.site.timezone)).date()


# ----------------------------------------------------------------------------- printing


def _print_line(x: Any) -> None:
    flags = f" [{', '.join(x.flags)}]" if x.flags else ""
    given = ""
    if x.approved_packs is not None and x.status not in ("pending", "flagged"):
        product = f" {x.approved_gtin}" if x.approved_gtin and x.approved_gtin != x.gtin else ""
        given = f" -> {x.approved_packs}{product}"
    usual = "" if x.usual_packs is None else f" (usual up to {x.usual_packs})"
    print(
        f"  #{x.id:<6} {x.requisition}:{x.line_no:<3} {x.drug_room:<10} {x.gtin} "
        f"{x.name[:30]:<30} {x.packs:>4} packs{usual}{given}  {x.status}"
        + (" URGENT" if x.urgent else "")
        + flags
    )


def _print_requisition(r: Any) -> None:
    print(
        f"{r.number}  {r.drug_room} ({r.hospital}/{r.ward})  {r.source}"
        f"{'  URGENT' if r.urgent else ''}  from {r.sender} id {r.sender_id}"
        f"  {r.received_at:%Y-%m-%d %H:%M}"
    )
    for x in r.lines:
        _print_line(x)


def _print_pick_list(p: Any) -> None:
    state = "complete" if p.complete else "open scans"
    print(
        f"{p.number}  {p.hospital}  run {p.run} {p.run_date}  {p.status}"
        + (f" ({state})" if p.status == "open" else "")
    )
    for x in p.lines:
        print(
            f"  #{x.line_id:<6} {x.drug_room:<10} {x.gtin} {x.name[:30]:<30} "
            f"{x.picked_units}/{x.reserved_units} units picked (wanted {x.wanted_units})"
        )
        for lot in x.lots:
            print(
                f"      {lot['location']:<14} batch {lot['batch']:<12} exp {lot['expiry']}"
                f"  {lot['picked']}/{lot['units']}"
            )


def _print_note(n: Any) -> None:
    received = (
        f"received {n.received_at:%Y-%m-%d %H:%M} by {n.received_by}"
        + (" (automatically)" if n.auto_received else "")
        if n.received_at
        else "in transit"
    )
    print(
        f"{n.number}  {n.drug_room} ({n.hospital}/{n.ward})  pick list {n.pick_list}  "
        f"dispatched {n.dispatched_at:%Y-%m-%d %H:%M}  {received}"
    )
    for x in n.lines:
        got = "" if x.received_units is None else f"  received {x.received_units}"
        dev = f"  {x.deviation}: {x.deviation_reason}" if x.deviation else ""
        print(f"  {x.gs1:<40} {x.name[:30]:<30} {x.units:>6} units{got}{dev}")


def _booked_text(b: Any) -> str:
    if b.duplicate:
        return f"{b.number}: already booked (the same id was sent before); nothing new"
    return f"{b.number}: booked, {b.lines} line(s), {b.flagged} flagged for a pharmacist"


# ----------------------------------------------------------------------------- commands


def _assortment(site: Site) -> Any:
    from controller.wardsupply.formats import Assortment

    return Assortment(
        gtins={p.gtin: p.pack_size for p in site.catalogue},
        articles={p.article: p.gtin for p in site.catalogue},
        drug_rooms=frozenset(r.code for r in site.drug_rooms),
    )


def _requisition_in(args: argparse.Namespace, site: Site) -> Any:
    from controller.wardsupply.formats import parse_fhir, parse_json
    from controller.wardsupply.model import RequisitionSource

    files = [f for f in (args.json_file, args.fhir_file) if f]
    if files:
        if len(files) > 1 or args.room or args.id or args.line or args.urgent:
            raise _Bad("--json-file and --fhir-file each stand alone (no --room/--id/--line)")
        try:
            payload = Path(files[0]).read_bytes()
        except OSError as exc:
            option = "--json-file" if args.json_file else "--fhir-file"
            raise _Bad(f"{option}: {files[0]!r}: {exc.strerror}") from None
        if args.fhir_file:
            return parse_fhir(payload, _assortment(site))
        return parse_json(payload, _assortment(site), sender=args.actor)
    missing = [
        o for o, v in (("--room", args.room), ("--id", args.id), ("--line", args.line)) if not v
    ]
    if missing:
        raise _Bad(f"{', '.join(missing)}: missing (or give --json-file / --fhir-file)")
    lines = [_pair(text, "--line") for text in args.line]
    body = {
        "id": args.id,
        "drug_room": args.room,
        "urgent": bool(args.urgent),
        "lines": [{"gtin": g, "packs": p} for g, p in lines],
    }
    req = parse_json(json.dumps(body), _assortment(site), sender=args.actor)
    return dataclasses.replace(req, source=RequisitionSource.CLI)


def _cmd_requisition(args: argparse.Namespace) -> int:
    def work(site: Site, ws: WardSupply) -> int:
        booked = ws.submit(_requisition_in(args, site), actor=args.actor)
        if args.json:
            print_records([booked])
        else:
            print(_booked_text(booked))
        return 0

    return _run("requisition", args, work)


def _cmd_requisitions(args: argparse.Namespace) -> int:
    from controller.wardsupply import views

    def work(_site: Site, ws: WardSupply) -> int:
        with ws.ledger.engine.connect() as c:
            rows = [views.requisition(c, n) for n in views.requisition_numbers(c, limit=args.limit)]
        if args.json:
            print_records(rows)
            return 0
        if not rows:
            print("no requisitions")
        for r in rows:
            _print_requisition(r)
        return 0

    return _run("requisitions", args, work)


def _cmd_review(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        if args.room:
            ws.room(args.room)
        rows = ws.review_queue(drug_room=args.room)
        if args.json:
            print_records(rows)
            return 0
        if not rows:
            print("no lines waiting for review")
        for x in rows:
            _print_line(x)
        return 0

    return _run("review", args, work)


def _cmd_approve_routine(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        if args.room:
            ws.room(args.room)
        count = ws.approve_routine(
            actor=args.actor, reason=args.reason, drug_room=args.room, ids=args.line or None
        )
        print(f"{count} routine line(s) approved by {args.actor}")
        return 0

    return _run("approve-routine", args, work)


def _cmd_decide(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        line = ws.decide(
            args.line,
            args.decision,
            actor=args.actor,
            reason=args.reason,
            packs=args.packs,
            substitute=args.substitute,
        )
        if args.json:
            print_records([line])
        else:
            _print_line(line)
        return 0

    return _run("decide", args, work)


def _cmd_pick_lists_make(args: argparse.Namespace) -> int:
    from controller.wardsupply.rules import URGENT_RUN

    def work(site: Site, ws: WardSupply) -> int:
        runs = [r.code for r in site.ward_supply.runs] + [URGENT_RUN]
        if args.run not in runs:
            raise _Bad(
                f"--run: {args.run!r} is not a delivery run of this site ({', '.join(runs)})"
            )
        made = ws.make_pick_lists(
            run=args.run, run_date=args.date or _today(site), actor=args.actor
        )
        if args.json:
            print_records(made)
            return 0
        if not made:
            print(f"nothing approved for run {args.run}: no pick lists made")
        for p in made:
            _print_pick_list(p)
        return 0

    return _run("pick-lists make", args, work)


def _cmd_pick_lists_list(args: argparse.Namespace) -> int:
    from controller.wardsupply import views

    def work(_site: Site, ws: WardSupply) -> int:
        with ws.ledger.engine.connect() as c:
            numbers = views.pick_list_numbers(c, None if args.status == "all" else args.status)
        rows = [ws.pick_list(n) for n in numbers]
        if args.json:
            print_records(rows)
            return 0
        if not rows:
            print("no pick lists")
        for p in rows:
            _print_pick_list(p)
        return 0

    return _run("pick-lists list", args, work)


def _cmd_pick_list(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        p = ws.pick_list(args.number)
        if args.json:
            print_records([p])
        else:
            _print_pick_list(p)
        return 0

    return _run("pick-list", args, work)


async def _with_desk(site: Site, ws: WardSupply, call: Any) -> Any:
    """`call(desk)` on a ward desk that asks the site's verification system, as the
    running controller's does."""
    from controller.async_ledger import AsyncLedger
    from controller.metrics import Metrics
    from controller.verification import HttpVerificationSystem, VerificationService
    from controller.wardsupply.desk import WardSupplyDesk

    metrics = Metrics()
    aledger = AsyncLedger(ws.ledger, metrics)
    v = site.verification
    verification = VerificationService(
        HttpVerificationSystem(v.url, v.timeout_s),
        aledger,
        metrics,
        decommission_on=v.decommission_on,
        retry_interval_s=v.retry_interval_s,
        quarantine_lot_on_alert=v.quarantine_lot_on_alert,
    )
    try:
        return await call(WardSupplyDesk(ws, aledger.run, verification=verification))
    finally:
        await verification.aclose()
        aledger.close()
        metrics.shutdown()


def _cmd_scan(args: argparse.Namespace) -> int:
    def work(site: Site, ws: WardSupply) -> int:
        data = args.data.replace(GS, "\x1d")
        if site.verification.enabled:
            result = asyncio.run(
                _with_desk(site, ws, lambda desk: desk.scan(args.number, data, actor=args.actor))
            )
        else:
            result = ws.scan(args.number, data, actor=args.actor)
        if args.json:
            out = {
                "accepted": result.accepted,
                "message": result.message,
                "line_id": result.line_id,
                "list_complete": result.list_complete,
            }
            print(json.dumps(out, ensure_ascii=False))
        else:
            print(("accepted: " if result.accepted else "refused: ") + result.message)
            if result.list_complete:
                print(f"pick list {args.number} is complete: dispatch it")
        return 0 if result.accepted else 1

    return _run("scan", args, work)


def _cmd_dispatch(args: argparse.Namespace) -> int:
    def work(site: Site, ws: WardSupply) -> int:
        if site.verification.enabled:
            sent = asyncio.run(
                _with_desk(site, ws, lambda desk: desk.dispatch(args.number, actor=args.actor))
            )
        else:
            sent = ws.dispatch(args.number, actor=args.actor)
        if args.json:
            print_records([sent])
            return 0
        if not sent.lines and sent.notes:
            print(f"{sent.pick_list} was dispatched before: notes {', '.join(sent.notes)}")
            return 0
        print(
            f"{sent.pick_list} dispatched: {sent.lines} line(s), {sent.short_lines} short, "
            f"{len(sent.back_orders)} back order(s), {len(sent.packs)} serialised pack(s)"
        )
        for note in sent.notes:
            print(f"  delivery note {note}")
        return 0

    return _run("dispatch", args, work)


def _cmd_notes(args: argparse.Namespace) -> int:
    from controller.wardsupply import views

    def work(_site: Site, ws: WardSupply) -> int:
        if args.room:
            ws.room(args.room)
        status = None if args.status == "all" else args.status
        with ws.ledger.engine.connect() as c:
            numbers = views.note_numbers(c, status=status, drug_room=args.room)
            rows = [views.note(c, n) for n in numbers]
        if args.json:
            print_records(rows)
            return 0
        if not rows:
            print("no delivery notes")
        for n in rows:
            _print_note(n)
        return 0

    return _run("notes", args, work)


def _cmd_note(args: argparse.Namespace) -> int:
    from controller.wardsupply.notes import render_note_html

    def work(site: Site, ws: WardSupply) -> int:
        n = ws.note(args.number)
        if args.html:
            page = render_note_html(n, site_name=site.site.name, timezone=site.site.timezone)
            try:
                Path(args.html).write_text(page, encoding="utf-8")
            except OSError as exc:
                raise _Bad(f"--html: {args.html!r}: {exc.strerror}") from None
        if args.json:
            print_records([n])
        else:
            _print_note(n)
            if args.html:
                print(f"print page: {args.html}")
        return 0

    return _run("note", args, work)


def _deviation(text: str) -> Any:
    from controller.wardsupply.model import Deviation
    from controller.wardsupply.service import ReceiptLine

    parts = text.split(":", 4)
    if len(parts) != 5:
        raise _Bad(f"--deviation: {text!r}: expected GTIN:BATCH:KIND:UNITS:REASON")
    gtin, batch, kind, units, reason = parts
    try:
        deviation = Deviation(kind)
    except ValueError:
        raise _Bad(
            f"--deviation: {text!r}: kind {kind!r} is not missing, damaged or too_many"
        ) from None
    try:
        count = int(units)
    except ValueError:
        raise _Bad(f"--deviation: {text!r}: units {units!r} is not a whole number") from None
    return ReceiptLine(gtin, batch, deviation, count, reason)


def _cmd_receive(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        deviations = [_deviation(t) for t in args.deviation]
        got = ws.receive(args.number, actor=args.actor, deviations=deviations)
        if args.json:
            print_records([got])
            return 0
        print(
            f"{got.note} received by {args.actor}: {got.units} units into the drug room, "
            f"{got.deviations} deviation(s)"
            + (
                f", {got.consumed_on_delivery} counted as used on delivery"
                if got.consumed_on_delivery
                else ""
            )
        )
        return 0

    return _run("receive", args, work)


def _cmd_top_up(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        counts = [_pair(t, "--count", least=0) for t in args.count]
        if not counts:
            raise _Bad("--count: give at least one GTIN:PACKS")
        booked, proposal = ws.top_up(args.room, counts, actor=args.actor, round_id=args.round)
        if args.json:
            out = {
                "drug_room": args.room,
                "round_id": args.round,
                "proposal": [{"gtin": g, "packs": p} for g, p in proposal],
                "requisition": None if booked is None else dataclasses.asdict(booked),
            }
            print(json.dumps(out, ensure_ascii=False, indent=2))
            return 0
        if booked is None:
            print(f"{args.room} round {args.round}: every shelf is above its min; nothing ordered")
            return 0
        for gtin, packs in proposal:
            print(f"  {gtin}: {packs} pack(s)")
        print(_booked_text(booked))
        return 0

    return _run("top-up", args, work)


def _cmd_par(args: argparse.Namespace) -> int:
    def work(_site: Site, ws: WardSupply) -> int:
        rows = ws.suggest_par(args.room, days=args.days)
        if args.json:
            print_records(rows)
            return 0
        print(f"{args.room}: suggested levels from {args.days} days of use (units)")
        for s in rows:
            print(
                f"  {s.gtin} {s.name[:30]:<30} mean/d {s.mean_daily:>6.1f}  "
                f"now {s.current_min}/{s.current_max} -> {s.suggested_min}/{s.suggested_max}"
            )
        return 0

    return _run("par", args, work)


def _cmd_reliability(args: argparse.Namespace) -> int:
    from controller.wardsupply.reliability import delivery_reliability, render_text

    def work(site: Site, ws: WardSupply) -> int:
        now = datetime.now(UTC)
        until = args.until or now
        since = args.since or until - timedelta(days=30)
        if since >= until:
            raise _Bad(f"--since: {since.isoformat()} must be before --until {until.isoformat()}")
        report = delivery_reliability(
            ws.ledger.engine,
            since=since,
            until=until,
            now=now,
            target=site.ward_supply.reliability_target,
        )
        if args.json:
            print_records([report])
        else:
            print(render_text(report))
        return 0

    return _run("reliability", args, work)


def _cmd_rooms(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    external = {h.code for h in site.hospitals if h.external}
    names = {p.gtin: p.name for p in site.catalogue}
    rows: list[dict[str, Any]] = [
        {
            "code": r.code,
            "hospital": r.hospital,
            "ward": r.ward,
            "counted": r.counted,
            "external": r.external or r.hospital in external,
            "runs": list(r.runs),
            "assortment": [
                {"gtin": s.gtin, "name": names.get(s.gtin, ""), "min": s.min, "max": s.max}
                for s in r.assortment
            ],
        }
        for r in site.drug_rooms
    ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no drug rooms in the site file")
    for r in rows:
        traits = [
            t for t in ("counted" if r["counted"] else "", "EXTERNAL" if r["external"] else "") if t
        ]
        runs = ",".join(r["runs"]) or "every run"
        print(f"{r['code']:<12} {r['hospital']}/{r['ward']}  runs {runs}  {' '.join(traits)}")
        for s in r["assortment"]:
            print(f"  {s['gtin']} {s['name'][:30]:<30} min {s['min']} max {s['max']} packs")
    return 0


# ----------------------------------------------------------------------------- parsers


def add_wardsupply_parsers(sub: Any) -> None:
    wards = sub.add_parser(
        "wards", help="ward supply: requisitions, review, pick lists, delivery notes, top-ups"
    )
    wsub = wards.add_subparsers(dest="wards_command", required=True)

    def add(name: str, help_text: str, *, json_output: bool = True, actor: bool = False) -> Any:
        p = wsub.add_parser(name, help=help_text)
        add_site_options(p, json_output=json_output)
        if actor:
            p.add_argument(
                "--actor",
                default=default_actor(),
                help="who acts, recorded in the audit trail (default: cli:<login name>)",
            )
        return p

    p = add("requisition", "file a drug room's requisition", actor=True)
    p.add_argument("--room", default=None, help="the drug room's code")
    p.add_argument("--id", default=None, help="the requisition's id (booked once per id)")
    p.add_argument("--line", action="append", default=[], metavar="GTIN:PACKS")
    p.add_argument("--urgent", action="store_true")
    p.add_argument(
        "--json-file", default=None, help="a plain JSON requisition (the sender: --actor)"
    )
    p.add_argument("--fhir-file", default=None, help="a FHIR SupplyRequest or Bundle of them")
    p.set_defaults(func=_cmd_requisition)

    p = add("requisitions", "the latest requisitions, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_cmd_requisitions)

    p = add("review", "lines waiting for a pharmacist")
    p.add_argument("--room", default=None, help="only this drug room")
    p.set_defaults(func=_cmd_review)

    p = add("approve-routine", "approve the routine lines together", json_output=False, actor=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--room", default=None, help="only this drug room's lines")
    p.add_argument("--line", type=int, action="append", default=[], help="only these line ids")
    p.set_defaults(func=_cmd_approve_routine)

    p = add("decide", "a pharmacist's decision on one line", actor=True)
    p.add_argument("line", type=int, help="the line's id (see review)")
    p.add_argument("decision", choices=["approve", "reduce", "substitute", "reject"])
    p.add_argument("--reason", required=True)
    p.add_argument("--packs", type=int, default=None, help="reduce: the packs approved")
    p.add_argument("--substitute", default=None, help="substitute: the GTIN given instead")
    p.set_defaults(func=_cmd_decide)

    lists = wsub.add_parser("pick-lists", help="make or list pick lists")
    lsub = lists.add_subparsers(dest="pick_lists_command", required=True)
    p = lsub.add_parser("make", help="a delivery run's pick lists (URGENT: the urgent lines)")
    add_site_options(p)
    p.add_argument("--run", required=True)
    p.add_argument("--date", type=day, default=None, help="the run's date (default: today)")
    p.add_argument("--actor", default=default_actor())
    p.set_defaults(func=_cmd_pick_lists_make)
    p = lsub.add_parser("list", help="pick lists")
    add_site_options(p)
    p.add_argument("--status", choices=["open", "dispatched", "all"], default="open")
    p.set_defaults(func=_cmd_pick_lists_list)

    p = add("pick-list", "one pick list with its lots and bins")
    p.add_argument("number")
    p.set_defaults(func=_cmd_pick_list)

    p = add("scan", "confirm one pack of a pick list by its GS1 scan", actor=True)
    p.add_argument("number", help="the pick list")
    p.add_argument("data", help=f"the decoded scan ({GS} for group separators)")
    p.set_defaults(func=_cmd_scan)

    p = add("dispatch", "dispatch a pick list: into transit, one note per drug room", actor=True)
    p.add_argument("number")
    p.set_defaults(func=_cmd_dispatch)

    p = add("notes", "delivery notes")
    p.add_argument("--status", choices=["in_transit", "received", "all"], default="all")
    p.add_argument("--room", default=None, help="only this drug room")
    p.set_defaults(func=_cmd_notes)

    p = add("note", "one delivery note")
    p.add_argument("number")
    p.add_argument("--html", default=None, help="also write its print page here")
    p.set_defaults(func=_cmd_note)

    p = add("receive", "confirm a delivery note received on the ward", actor=True)
    p.add_argument("number")
    p.add_argument(
        "--deviation",
        action="append",
        default=[],
        metavar="GTIN:BATCH:KIND:UNITS:REASON",
        help="KIND: missing, damaged or too_many",
    )
    p.set_defaults(func=_cmd_receive)

    p = add("top-up", "a top-up round's counts in a drug room", actor=True)
    p.add_argument("room")
    p.add_argument("--round", required=True, help="the round's id (booked once per id)")
    p.add_argument("--count", action="append", default=[], metavar="GTIN:PACKS")
    p.set_defaults(func=_cmd_top_up)

    p = add("par", "suggested min and max for a drug room's list")
    p.add_argument("room")
    p.add_argument("--days", type=int, default=28)
    p.set_defaults(func=_cmd_par)

    p = add("reliability", "delivery reliability to the wards")
    p.add_argument("--since", type=when, default=None, help="default: 30 days before --until")
    p.add_argument("--until", type=when, default=None, help="default: now")
    p.set_defaults(func=_cmd_reliability)

    p = add("rooms", "the site's drug rooms and their lists")
    p.set_defaults(func=_cmd_rooms)
