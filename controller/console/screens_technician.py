"""Technician screens: cabinet pick lists and canister refill tickets confirmed by
scans typed into a focused field (a keyboard-wedge scanner types the code and Enter),
goods-in against a purchase order, and stocktake counts.

A scan goes to the controller's scan router, the same as a serial scanner's scan and
the API's /refills/scan: the station is the signed-in user's, so the refill's
`confirmed_by` and the audit trail name them."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from controller.api.auth import Role
from controller.api.context import ApiContext
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import PICK_LIST_PREFIX
from controller.console.web import PREFIX, act, context, field, page, refused, render, screen
from controller.ledger import LedgerError
from controller.purchasing import PurchasingStore, parse_delivery_csv
from controller.scanning import ScanOutcome

log = logging.getLogger("doseline.console")
router = APIRouter()

screen("/picking", "Pick lists", Role.TECHNICIAN, "technician")
screen("/goods-in", "Goods-in", Role.TECHNICIAN, "technician")
screen("/stocktake", "Stocktake", Role.TECHNICIAN, "technician")

GROUP_SEPARATOR = "\x1d"
MAX_SCAN = 200

# Why a scan was refused, from the scan services' own messages: a short headline in
# the reader's language above the service's full sentence.
REFUSAL_KINDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"expired on"), "Expired"),
    (re.compile(r"was not picked|not the reserved lot|batch .* not"), "Wrong lot"),
    (re.compile(r"wrong pocket|wrong cabinet"), "Wrong pocket"),
    (
        re.compile(r"is not on pick list|no refill open|unknown pick list|not on the ticket"),
        "Not on the list",
    ),
    (re.compile(r"GTIN .* is not|not the product|is for"), "Wrong product"),
    (
        re.compile(r"scan the (label|pick list|ticket)|no pick list open|no canister ticket open"),
        "Scan the list or the pocket first",
    ),
)


def refusal_kind(message: str) -> str:
    for pattern, kind in REFUSAL_KINDS:
        if pattern.search(message):
            return kind
    return "Refused"


def purchasing_store(ctx: ApiContext) -> PurchasingStore:
    if ctx.running is not None:
        return ctx.running.purchasing
    return PurchasingStore(ctx.ledger)


# ---------------------------------------------------------------------- pick lists


def _open_lists(ctx: ApiContext) -> list[Any]:
    if ctx.running is None:
        return []
    return list(ctx.running.refills.open_pick_lists())


def _tickets(ctx: ApiContext) -> list[Any]:
    if ctx.running is None:
        return []
    return list(ctx.running.refills.open_tickets())


@router.get("/picking")
async def picking(request: Request) -> Response:
    return await _picking(request, "picking.html")


@router.get("/fragments/picking")
async def picking_fragment(request: Request) -> Response:
    return await _picking(request, "_picking.html")


async def _picking(request: Request, template: str) -> Response:
    session, response = await page(Role.TECHNICIAN)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    return render(
        request,
        template,
        session,
        lists=sorted(_open_lists(ctx), key=lambda p: (not p.urgent, p.due_at)),
        tickets=_tickets(ctx),
        names=names,
        controller=ctx.running is not None,
    )


def _current(ctx: ApiContext, station: str) -> Any:
    if ctx.running is None:
        return None
    here = ctx.running.refills.station(station)
    return here.pick if here is not None else None


@router.get("/picking/{list_id}")
async def pick_list(request: Request, list_id: str) -> Response:
    return await _pick_list(request, list_id, "picklist.html")


@router.get("/fragments/picking/{list_id}")
async def pick_list_fragment(request: Request, list_id: str) -> Response:
    return await _pick_list(request, list_id, "_picklist.html")


async def _pick_list(request: Request, list_id: str, template: str) -> Response:
    session, response = await page(Role.TECHNICIAN)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    desk = ctx.running.refills if ctx.running is not None else None
    pick = desk.pick_list(list_id) if desk is not None else None
    if pick is None:
        return refused(request, session, 404, f"pick list: {list_id[:60]!r} is not known")
    here = desk.station(session.station) if desk is not None else None
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    return render(
        request,
        template,
        session,
        pick=pick,
        names=names,
        active=here is not None and here.pick is pick,
        pocket=here.pocket if here is not None and here.pick is pick else None,
    )


async def _route(ctx: ApiContext, station: str, data: str) -> ScanOutcome:
    """The scan router, exactly as the API's scan route calls it."""
    running = ctx.running
    assert running is not None
    try:
        return await running.scans.scan(station, data)
    except LedgerError as exc:
        log.error("console: scan at %s could not be booked: %s", station, exc)
        return ScanOutcome(False, f"the scan could not be booked: {exc}")


@router.post("/picking/{list_id}/open")
async def open_list(request: Request, list_id: str) -> Response:
    """The same as scanning the list's barcode at this user's station."""
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, _form = got
    ctx = context(request)
    if ctx.running is None:
        return refused(request, session, 503, "pick lists need a running controller")
    outcome = await _route(ctx, session.station, f"{PICK_LIST_PREFIX}{list_id}")
    if not outcome.accepted:
        return refused(request, session, 409, outcome.message)
    return RedirectResponse(f"{PREFIX}/picking/{list_id}", status_code=303)


@router.post("/scan")
async def scan(request: Request) -> Response:
    """One scan; answers with the result fragment (a refusal with status 200: a refused
    scan is a normal answer, shown large with its reason)."""
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    data = field(form, "code").strip().replace("<GS>", GROUP_SEPARATOR)
    back = field(form, "back")
    if not data:
        return refused(request, session, 422, "code: empty scan")
    if len(data) > MAX_SCAN:
        return refused(request, session, 422, f"code: longer than {MAX_SCAN} characters")
    if ctx.running is None:
        return refused(request, session, 503, "scans need a running controller")
    outcome = await _route(ctx, session.station, data)
    log.info(
        "console: scan by %s: %s", session.user.name, "accepted" if outcome.accepted else "refused"
    )
    result = render(
        request,
        "_scan.html",
        session,
        outcome=outcome,
        kind=None if outcome.accepted else refusal_kind(outcome.message),
    )
    if request.headers.get("x-console-fragment"):
        return result
    # Without the script: back to the page, with the result shown once.
    session.flash.append(("scan-ok" if outcome.accepted else "scan-refused", outcome.message))
    target = (
        back if back.startswith(PREFIX + "/picking") and "//" not in back else PREFIX + "/picking"
    )
    return RedirectResponse(target, status_code=303)


# ------------------------------------------------------------------------- goods-in


@router.get("/goods-in")
async def goods_in(request: Request) -> Response:
    session, response = await page(Role.TECHNICIAN)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    orders = await ctx.read(purchasing_store(ctx).orders, status=None)
    open_orders = [o for o in orders if o.status in ("open", "partial")]
    return render(request, "goodsin.html", session, orders=open_orders)


@router.get("/goods-in/{number}")
async def goods_in_order(request: Request, number: str) -> Response:
    session, response = await page(Role.TECHNICIAN)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    try:
        order = await ctx.read(purchasing_store(ctx).order, number[:40])
    except LedgerError:
        return refused(request, session, 404, f"purchase order: {number[:40]!r} is not known")
    return render(request, "goodsin_order.html", session, order=order, problems=[])


@router.post("/goods-in/{number}")
async def receive(request: Request, number: str) -> Response:
    """Builds the delivery file from the typed lines and books it as the API does."""
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    store = purchasing_store(ctx)
    try:
        order = await ctx.read(store.order, number[:40])
    except LedgerError:
        return refused(request, session, 404, f"purchase order: {number[:40]!r} is not known")
    note = field(form, "note").strip()
    if not note:
        return refused(request, session, 422, "note: the delivery note number is blank")
    lines = ["order;line;gtin;quantity;batch;expiry"]
    for line in order.lines:
        quantity = field(form, f"quantity_{line.line_no}").strip()
        if not quantity or quantity == "0":
            continue
        batch = field(form, f"batch_{line.line_no}").strip()
        expiry = field(form, f"expiry_{line.line_no}").strip()
        cells = [order.number, str(line.line_no), line.gtin, quantity, batch, expiry]
        if any(";" in c or "\n" in c or '"' in c for c in cells):
            return refused(
                request, session, 422, f"line {line.line_no}: ; and quotes are not allowed"
            )
        lines.append(";".join(cells))
    if len(lines) == 1:
        return refused(request, session, 422, "quantity: no line has a quantity")
    try:
        rows = parse_delivery_csv("\n".join(lines) + "\n")
        now = ctx.ledger.clock()
        location = ctx.site.receiving_location()
        shelf_life = ctx.site.ledger.min_shelf_life_days
        if ctx.running is not None:
            receipt = await ctx.running.goods_in.receive(
                store,
                order.number,
                note,
                rows,
                actor=session.user.name,
                now=now,
                location=location,
                min_shelf_life_days=shelf_life,
            )
        else:
            receipt = await ctx.write(
                store.receive,
                order.number,
                note,
                rows,
                actor=session.user.name,
                now=now,
                location=location,
                min_shelf_life_days=shelf_life,
            )
    except LedgerError as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        return render(
            request, "goodsin_order.html", session, status=422, order=order, problems=problems
        )
    session.flash.append(
        ("booked" if receipt.booked else "booked-before", f"{note} ({receipt.units})")
    )
    return RedirectResponse(f"{PREFIX}/goods-in", status_code=303)


# ------------------------------------------------------------------------ stocktake


def _internal_locations(ctx: ApiContext) -> list[str]:
    codes = [ctx.site.store.code, *ctx.site.store.bins]
    for cabinet in ctx.site.cabinets:
        codes += [pocket_location(cabinet.name, p.number) for p in cabinet.pockets]
    return codes


@router.get("/stocktake")
async def stocktake(request: Request, location: str = "") -> Response:
    session, response = await page(Role.TECHNICIAN)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    locations = _internal_locations(ctx)
    lots: list[Any] = []
    if location:
        if location not in locations:
            return refused(request, session, 404, f"location: {location[:60]!r} is not known")
        lots = [
            s for s in await ctx.read(ctx.ledger.stock, location=location) if s.location == location
        ]
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    return render(
        request,
        "stocktake.html",
        session,
        locations=locations,
        location=location,
        lots=lots,
        names=names,
        key=secrets.token_hex(8),
    )


@router.post("/stocktake")
async def count(request: Request) -> Response:
    got = await act(request, Role.TECHNICIAN)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    location = field(form, "location")
    key = field(form, "key")
    if location not in _internal_locations(ctx):
        return refused(request, session, 404, f"location: {location[:60]!r} is not known")
    if not re.fullmatch(r"[0-9a-f]{16}", key):
        return refused(request, session, 422, f"key: {key[:20]!r} is not a count's key")
    counted: dict[tuple[str, str], int] = {}
    for name, values in form.items():
        if not name.startswith("count|"):
            continue
        _, gtin, batch = ([*name.split("|", 2), "", ""])[:3]
        text = values[0].strip()
        if not text.isdigit() or len(text) > 9:
            return refused(
                request,
                session,
                422,
                f"count of {gtin}/{batch}: {text[:20]!r} is not a whole number",
            )
        counted[(gtin, batch)] = int(text)
    if not counted:
        return refused(request, session, 422, "count: nothing was counted")
    try:
        differences = await ctx.write(
            ctx.ledger.stocktake,
            f"stocktake:console:{key}",
            location=location,
            counted=counted,
            actor=session.user.name,
            complete=False,
        )
    except LedgerError as exc:
        return refused(request, session, 422, str(exc))
    session.flash.append(("counted", f"{location}: {sum(abs(v) for v in differences.values())}"))
    return RedirectResponse(f"{PREFIX}/stocktake?location={location}", status_code=303)
