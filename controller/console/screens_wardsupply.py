"""Ward-supply screens: the pharmacist's review of ward requisitions, the technician's
drug-room pick lists confirmed by scans typed into a focused field, dispatch and the
delivery notes in transit with their receipt on the ward, and for everyone the drug
rooms per hospital and the delivery reliability.

Every action calls the same service as the API's /ward-supply routes (`WardSupply`,
and the running controller's ward desk for scans and dispatch when one runs), with the
signed-in user as the actor."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import OperationalError

from controller.api.audit_reader import read_audit
from controller.api.auth import Role
from controller.api.context import ApiContext
from controller.console.screens_floor import bar_chart
from controller.console.sessions import Session
from controller.console.web import PREFIX, act, context, field, page, refused, render, screen
from controller.ledger import InsufficientStock, LedgerError
from controller.purchasing import PurchasingStore
from controller.wardsupply import model, reads, views
from controller.wardsupply.notes import render_note_html
from controller.wardsupply.reliability import delivery_reliability
from controller.wardsupply.service import ReceiptLine, ScanResult, WardSupply

log = logging.getLogger("doseline.console")
router = APIRouter()
T = TypeVar("T")

screen("/ward-review", "Ward requisitions", Role.VIEWER, "pharmacist")
screen("/ward-picking", "Drug-room pick lists", Role.VIEWER, "technician")
screen("/drug-rooms", "Drug rooms", Role.VIEWER, "everyone")

MAX_REASON = 300
MAX_SCAN = 200
MAX_NUMBER = 40
# Line states that are still on their way to the ward.
OPEN_STATES = ("pending", "flagged", "approved", "ordered", "picking", "dispatched")

# Why a drug-room pick scan was refused, from the service's own message: a short
# headline in the reader's language above the service's full sentence.
REFUSAL_KINDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^expired"), "Expired"),
    (re.compile(r"^wrong lot"), "Wrong lot"),
    (re.compile(r"^not on the list"), "Not on the list"),
    (re.compile(r"^blocked"), "Blocked"),
    (re.compile(r"^already (picked|scanned)"), "Already picked"),
    (re.compile(r"^unreadable"), "Unreadable scan"),
)


def refusal_kind(message: str) -> str:
    for pattern, kind in REFUSAL_KINDS:
        if pattern.search(message):
            return kind
    return "Refused"


def service(ctx: ApiContext) -> WardSupply:
    """The running controller's service, or one over the ledger alone, as the API's."""
    if ctx.running is not None:
        return ctx.running.wardsupply
    purchasing = PurchasingStore(ctx.ledger)

    def order(items: list[tuple[str, int]], actor: str, note: str) -> list[str]:
        return purchasing.order_products(items, now=ctx.ledger.clock(), actor=actor, note=note)

    return WardSupply(ctx.ledger, ctx.site, order_products=order)


def _status(exc: Exception) -> int:
    """The API's status for a ward-supply or ledger refusal."""
    if isinstance(exc, model.UnknownEntity):
        return 404 if exc.field in ("requisition", "line", "pick_list", "note") else 422
    if isinstance(exc, (model.Conflict, InsufficientStock)):
        return 409
    return 422


class Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _call(work: Awaitable[T]) -> T:
    try:
        return await work
    except (model.WardSupplyError, LedgerError) as exc:
        raise Failed(_status(exc), str(exc)) from None
    except OperationalError as exc:
        log.error("console: ward supply: ledger: %s", type(exc.orig).__name__)
        raise Failed(503, "the ledger database is unreachable or busy; try again") from None


def _machine(ctx: ApiContext, what: str) -> bool:
    """The API's rule: the controller's ward desk when one runs; else the service,
    unless the site verifies packs (then a controller is needed)."""
    if ctx.running is not None:
        return True
    if ctx.site.verification.enabled:
        raise Failed(503, f"{what} needs a running controller (the site verifies packs)")
    return False


def _reason(form: dict[str, list[str]]) -> str:
    reason = field(form, "reason").strip()
    if len(reason) < 3:
        raise Failed(422, "reason: a reason of at least 3 characters is needed")
    if len(reason) > MAX_REASON:
        raise Failed(422, f"reason: longer than {MAX_REASON} characters")
    return reason


def _number(text: str, name: str) -> str:
    if not text or len(text) > MAX_NUMBER:
        raise Failed(404, f"{name}: {text[:MAX_NUMBER]!r} is not known")
    return text


def _names(ctx: ApiContext) -> dict[str, Any]:
    site = ctx.site
    tz = ZoneInfo(site.site.timezone)

    def local(moment: datetime) -> str:
        """A ledger time (UTC) as the site's local time."""
        aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        return aware.astimezone(tz).strftime("%Y-%m-%d %H:%M")

    return {
        "products": {p.gtin: p.name for p in site.catalogue},
        "hospitals": {h.code: h.name for h in site.hospitals},
        "wards": {w.code: w.name for w in site.wards},
        "local": local,
    }


def _done(session: Session, path: str, kind: str, text: str) -> Response:
    session.flash.append((kind, text))
    return RedirectResponse(f"{PREFIX}{path}", status_code=303)


# ------------------------------------------------------------------------ review


def _substitutes(ctx: ApiContext, lines: list[views.LineView]) -> dict[str, list[Any]]:
    """For each product on the queue, the other products of its substitution group."""
    out: dict[str, list[Any]] = {}
    for line in lines:
        product = next((p for p in ctx.site.catalogue if p.gtin == line.gtin), None)
        group = product.substitution_group if product is not None else None
        out[line.gtin] = [
            p
            for p in ctx.site.catalogue
            if group is not None and p.substitution_group == group and p.gtin != line.gtin
        ]
    return out


@router.get("/ward-review")
async def ward_review(request: Request) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    try:
        queue = await _call(ctx.read(service(ctx).review_queue))
        # the latest decisions, with who took them and why, from the audit trail
        trail = await _call(ctx.read(read_audit, ctx.queries.audit, entity="ward_line", limit=100))
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    decided = [e for e in reversed(trail) if isinstance(e.new, dict) and e.new.get("decision")][:20]
    routine = [x for x in queue if x.status == "pending"]
    flagged = [x for x in queue if x.status == "flagged"]
    return render(
        request,
        "wardreview.html",
        session,
        routine=routine,
        flagged=flagged,
        substitutes=_substitutes(ctx, flagged),
        decided=decided,
        rooms={r.code: r for r in ctx.site.drug_rooms},
        **_names(ctx),
    )


@router.post("/ward-review/approve-routine")
async def approve_routine(request: Request) -> Response:
    """Approves the routine lines that were on the screen, with one reason."""
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    try:
        reason = _reason(form)
        ids = []
        for value in form.get("line", []):
            if not value.isdigit() or len(value) > 10:
                raise Failed(422, f"line: {value[:20]!r} is not a line id")
            ids.append(int(value))
        if not ids:
            raise Failed(422, "line: no routine line waits for review")
        count = await _call(
            ctx.write(service(ctx).approve_routine, actor=session.user.name, reason=reason, ids=ids)
        )
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    log.info("console: %s approved %d routine ward line(s)", session.user.name, count)
    return _done(session, "/ward-review", "approved", str(count))


@router.post("/ward-review/lines/{line_id}")
async def decide(request: Request, line_id: int) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    decision = field(form, "decision")
    try:
        if decision not in {str(d) for d in model.Decision}:
            raise Failed(
                422, f"decision: {decision[:20]!r} is not approve/reduce/substitute/reject"
            )
        reason = _reason(form)
        packs: int | None = None
        text = field(form, "packs").strip() if decision in ("reduce", "substitute") else ""
        if text:
            if not text.isdigit() or len(text) > 4:
                raise Failed(422, f"packs: {text[:20]!r} is not a whole number of packs")
            packs = int(text)
        if decision == "reduce" and packs is None:
            raise Failed(422, "packs: a reduction needs the packs to give")
        substitute = (
            (field(form, "substitute").strip() or None) if decision == "substitute" else None
        )
        line = await _call(
            ctx.write(
                service(ctx).decide,
                line_id,
                decision,
                actor=session.user.name,
                reason=reason,
                packs=packs,
                substitute=substitute,
            )
        )
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    log.info("console: %s decided ward line %d: %s", session.user.name, line_id, decision)
    return _done(session, "/ward-review", "decided", f"{line.requisition}:{line.line_no}")


# -------------------------------------------------------------------- pick lists


@router.get("/ward-picking")
async def ward_picking(request: Request) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    ws = service(ctx)
    try:
        lists = await _call(ctx.read(reads.pick_lists, ws, "open"))
        notes = await _call(ctx.read(reads.notes, ws, "in_transit"))
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    return render(
        request,
        "wardpicking.html",
        session,
        lists=sorted(lists, key=lambda p: (not p.urgent, p.run_date, p.number)),
        notes=notes,
        deviations=[str(d) for d in model.Deviation],
        **_names(ctx),
    )


@router.get("/ward-picking/{number}")
async def ward_pick_list(request: Request, number: str) -> Response:
    return await _ward_pick_list(request, number, "wardpicklist.html")


@router.get("/fragments/ward-picking/{number}")
async def ward_pick_list_fragment(request: Request, number: str) -> Response:
    return await _ward_pick_list(request, number, "_wardpicklist.html")


async def _ward_pick_list(request: Request, number: str, template: str) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    try:
        pick = await _call(ctx.read(service(ctx).pick_list, _number(number, "pick_list")))
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    rooms = {r.code: r for r in ctx.site.drug_rooms}
    return render(request, template, session, pick=pick, rooms=rooms, **_names(ctx))


@router.post("/ward-picking/{number}/scan")
async def ward_scan(request: Request, number: str) -> Response:
    """One pack scanned for a pick list; a refusal is a normal answer (200), shown large
    with its reason. Without the script the page shows it after a redirect."""
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    data = field(form, "code").strip().replace("<GS>", "\x1d")
    try:
        number = _number(number, "pick_list")
        if not data:
            raise Failed(422, "code: empty scan")
        if len(data) > MAX_SCAN:
            raise Failed(422, f"code: longer than {MAX_SCAN} characters")
        if _machine(ctx, "a scan of a pick list"):
            assert ctx.running is not None
            result: ScanResult = await _call(
                ctx.running.ward_desk.scan(number, data, actor=session.user.name)
            )
        else:
            result = await _call(
                ctx.write(service(ctx).scan, number, data, actor=session.user.name)
            )
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    log.info(
        "console: ward scan by %s on %s: %s",
        session.user.name,
        number,
        "accepted" if result.accepted else "refused",
    )
    if request.headers.get("x-console-fragment"):
        return render(
            request,
            "_scan.html",
            session,
            outcome=result,
            kind=None if result.accepted else refusal_kind(result.message),
        )
    session.flash.append(("scan-ok" if result.accepted else "scan-refused", result.message))
    return RedirectResponse(f"{PREFIX}/ward-picking/{number}", status_code=303)


@router.post("/ward-picking/{number}/dispatch")
async def ward_dispatch(request: Request, number: str) -> Response:
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, _form = got
    ctx = context(request)
    try:
        number = _number(number, "pick_list")
        if _machine(ctx, "a dispatch of a pick list"):
            assert ctx.running is not None
            sent = await _call(ctx.running.ward_desk.dispatch(number, actor=session.user.name))
        else:
            sent = await _call(ctx.write(service(ctx).dispatch, number, actor=session.user.name))
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    log.info("console: %s dispatched %s: %d note(s)", session.user.name, number, len(sent.notes))
    return _done(session, "/ward-picking", "dispatched", f"{number}: {', '.join(sent.notes)}")


# ------------------------------------------------------------------ delivery notes


@router.get("/ward-notes/{number}/print")
async def print_note(request: Request, number: str) -> Response:
    """The printable delivery note, the same page as the API's."""
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    try:
        note = await _call(ctx.read(service(ctx).note, _number(number, "note")))
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    site = ctx.site.site
    html = await asyncio.to_thread(
        render_note_html, note, site_name=site.name, timezone=site.timezone
    )
    return HTMLResponse(
        html,
        headers={
            "Cache-Control": "no-store",
            # the note is self-contained: its own style sheet and inline SVG, no script
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:; frame-ancestors 'none'; form-action 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


@router.post("/ward-notes/{number}/receive")
async def receive_note(request: Request, number: str) -> Response:
    """The ward confirms the note, with at most one deviation row: a lot of the note,
    missing, damaged or too many units, and the reason."""
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    ws = service(ctx)
    try:
        number = _number(number, "note")
        deviations: list[ReceiptLine] = []
        kind = field(form, "deviation").strip()
        if kind:
            if kind not in {str(d) for d in model.Deviation}:
                raise Failed(422, f"deviation: {kind[:20]!r} is not missing/damaged/too_many")
            gtin, _, batch = field(form, "lot").partition("|")
            if not gtin or not batch:
                raise Failed(422, "lot: choose the lot of the deviation")
            units = field(form, "units").strip()
            if not units.isdigit() or len(units) > 6 or int(units) < 1:
                raise Failed(422, f"units: {units[:20]!r} is not a whole number of units")
            deviations.append(
                ReceiptLine(gtin, batch, model.Deviation(kind), int(units), _reason(form))
            )
        got_back = await _call(
            ctx.write(ws.receive, number, actor=session.user.name, deviations=deviations)
        )
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    log.info(
        "console: %s received delivery note %s (%d deviation(s))",
        session.user.name,
        number,
        got_back.deviations,
    )
    return _done(session, "/ward-picking", "received", f"{number} ({got_back.units})")


# ------------------------------------------------------------------ drug rooms


@router.get("/drug-rooms")
async def drug_rooms(request: Request) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    ws = service(ctx)
    now = ws.clock()
    try:
        by_room, in_transit = await _call(ctx.read(reads.drug_room_overview, ws, OPEN_STATES))
        report = await _call(
            ctx.read(
                delivery_reliability,
                ctx.ledger.engine,
                since=now - timedelta(days=30),
                until=now,
                now=now,
                target=ctx.site.ward_supply.reliability_target,
            )
        )
    except Failed as exc:
        return refused(request, session, exc.status, exc.message)
    names = _names(ctx)
    groups: list[dict[str, Any]] = []
    for h in ctx.site.hospitals:
        rooms = [r for r in ctx.site.drug_rooms if r.hospital == h.code]
        if rooms:
            groups.append({"hospital": h, "rooms": rooms})
    target = report.target * 100
    rows = [("*", report.share * 100 if report.share is not None else None)]
    rows += [
        (
            names["hospitals"].get(s.hospital, s.hospital),
            s.share * 100 if s.share is not None else None,
        )
        for s in report.by_hospital
    ]
    chart = bar_chart(rows, mark=target, unit=" %", top=100)
    return render(
        request,
        "drugrooms.html",
        session,
        groups=groups,
        by_room=by_room,
        in_transit=in_transit,
        states=OPEN_STATES,
        report=report,
        target=target,
        chart=chart,
        **names,
    )
