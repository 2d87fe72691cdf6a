"""Ward supply over HTTP: a drug room's requisition (FHIR R4 SupplyRequest or the plain
JSON body), the pharmacist's review, pick lists per hospital and delivery run with GS1
scans, dispatch, the delivery note and its receipt on the ward, top-up rounds, the
drug rooms' par levels and the delivery reliability. The same service as `doseline
wards ...` (docs/ward-supply.md)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import OperationalError

from controller.api.auth import Role
from controller.api.context import ApiContext, Context, Pharmacist, Technician, Viewer, role_note
from controller.api.errors import ApiError, ErrorBody, Problem, responses
from controller.api.models import Text
from controller.api.models_wardsupply import (
    FHIR_TYPE,
    JSON_TYPE,
    MAX_ID,
    MAX_NUMBER,
    MAX_RELIABILITY_DAYS,
    MAX_ROOM,
    ApproveRoutineRequest,
    ApproveRoutineResult,
    Booked,
    DecisionRequest,
    DispatchedPack,
    DispatchResult,
    DrugRoom,
    DrugRoomList,
    Line,
    MakePickListsRequest,
    Note,
    NoteList,
    NoteScanRequest,
    NoteStatusName,
    ParList,
    ParRow,
    PickList,
    PickListList,
    PickListStatusName,
    PickScanRequest,
    PickScanResult,
    Proposed,
    ReceiptRequest,
    ReceiptResult,
    Reliability,
    Requisition,
    RequisitionList,
    ReviewQueue,
    Shelf,
    TopUpRequest,
    TopUpResult,
)
from controller.api.routes_orders import ledger_problem, read_body
from controller.intake.common import IntakeError
from controller.ledger import InsufficientStock, LedgerError
from controller.purchasing import PurchasingStore
from controller.wardsupply import model, reads, views
from controller.wardsupply.formats import Assortment, parse_fhir, parse_json
from controller.wardsupply.notes import NOTE_PREFIX, render_note_html
from controller.wardsupply.reliability import delivery_reliability
from controller.wardsupply.rules import URGENT_RUN
from controller.wardsupply.service import ReceiptLine, WardSupply

log = logging.getLogger("doseline.api")
router = APIRouter(prefix="/ward-supply", tags=["ward-supply"])
T = TypeVar("T")


# ----------------------------------------------------------------------------- helpers


def _service(ctx: ApiContext) -> WardSupply:
    """The running controller's service, or one over the ledger alone (a line for a
    product the store does not keep is then ordered through the purchasing store)."""
    if ctx.running is not None:
        return ctx.running.wardsupply
    purchasing = PurchasingStore(ctx.ledger)

    def order(items: list[tuple[str, int]], actor: str, note: str) -> list[str]:
        return purchasing.order_products(items, now=ctx.ledger.clock(), actor=actor, note=note)

    return WardSupply(ctx.ledger, ctx.site, order_products=order)


# What a route names in its path; an unknown one is 404. An unknown product named in a
# body (a line, a count, a substitute) is bad input: 422.
_PATH_ENTITIES = frozenset({"requisition", "line", "pick_list", "note", "drug_room"})


def refusal(exc: Exception, *, unknown: int = 404) -> ApiError:
    """A ward-supply or ledger refusal as an ApiError naming the field and value."""
    if isinstance(exc, model.WardSupplyError):
        if isinstance(exc, model.UnknownEntity):
            status = unknown if exc.field in _PATH_ENTITIES else 422
        elif isinstance(exc, model.Conflict):
            status = 409
        else:  # Refused, and any other bad request
            status = 422
        return ApiError(status, str(exc), field=exc.field, value=exc.value)
    if isinstance(exc, InsufficientStock):
        return ledger_problem(409, exc)
    assert isinstance(exc, LedgerError)
    return ledger_problem(422, exc)


async def _call(work: Awaitable[T], *, unknown: int = 404) -> T:
    try:
        return await work
    except (model.WardSupplyError, LedgerError) as exc:
        raise refusal(exc, unknown=unknown) from None
    except OperationalError as exc:
        log.error("api: ward supply: ledger: %s", type(exc.orig).__name__)
        raise ApiError(503, "the ledger database is unreachable or busy; try again") from None


def _read(ctx: ApiContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    return _call(ctx.read(fn, *args, **kwargs))


def _write(
    ctx: ApiContext, fn: Callable[..., T], *args: Any, unknown: int = 404, **kwargs: Any
) -> Awaitable[T]:
    return _call(ctx.write(fn, *args, **kwargs), unknown=unknown)


def _booked(b: model.Booked) -> Booked:
    return Booked(number=b.number, duplicate=b.duplicate, lines=b.lines, flagged=b.flagged)


def _line(v: views.LineView) -> Line:
    return Line.model_validate(v)


def _requisition(v: views.RequisitionView) -> Requisition:
    data = {k: getattr(v, k) for k in Requisition.model_fields if k != "lines"}
    return Requisition(**data, lines=[_line(x) for x in v.lines])


def _assortment(ctx: ApiContext) -> Assortment:
    site = ctx.site
    return Assortment(
        gtins={p.gtin: p.pack_size for p in site.catalogue},
        articles={p.article: p.gtin for p in site.catalogue},
        drug_rooms=frozenset(r.code for r in site.drug_rooms),
    )


def _room(ctx: ApiContext, code: str, field: str = "code") -> Any:
    room = next((r for r in ctx.site.drug_rooms if r.code == code), None)
    if room is None:
        raise ApiError(
            404, f"{field}: {code!r} is not a drug room of this site", field=field, value=code
        )
    return room


def _intake_error(exc: IntakeError) -> ApiError:
    problems = [Problem(field=p.field, value=p.value, message=p.message) for p in exc.problems]
    first = problems[0] if problems else None
    return ApiError(
        422,
        str(exc),
        field=first.field if first else "body",
        value=first.value if first else None,
        problems=problems,
    )


def _par(ws: WardSupply, code: str, days: int) -> list[ParRow]:
    rows = ws.suggest_par(code, days=days)
    out = []
    for s in rows:
        size = ws.products[s.gtin].pack_size
        out.append(
            ParRow(
                gtin=s.gtin,
                name=s.name,
                days=s.days,
                days_seen=s.days_seen,
                total=s.total,
                mean_daily=s.mean_daily,
                stdev_daily=s.stdev_daily,
                peak_daily=s.peak_daily,
                current_min=s.current_min,
                current_max=s.current_max,
                suggested_min=s.suggested_min,
                suggested_max=s.suggested_max,
                pack_size=size,
                suggested_min_packs=math.ceil(s.suggested_min / size),
                suggested_max_packs=math.ceil(s.suggested_max / size),
            )
        )
    return out


def _dispatched(d: Any) -> DispatchResult:
    return DispatchResult(
        pick_list=d.pick_list,
        notes=list(d.notes),
        lines=d.lines,
        short_lines=d.short_lines,
        back_orders=list(d.back_orders),
        packs=[
            DispatchedPack(
                gtin=p.gtin, batch=p.batch, expiry=p.expiry, serial=p.serial or "", location=where
            )
            for p, where in d.packs
        ],
    )


def _received(r: Any) -> ReceiptResult:
    return ReceiptResult(
        note=r.note,
        booked=r.booked,
        units=r.units,
        deviations=r.deviations,
        consumed_on_delivery=r.consumed_on_delivery,
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Number = Annotated[Text, Path(min_length=1, max_length=MAX_NUMBER)]
RoomCode = Annotated[Text, Path(min_length=1, max_length=MAX_ROOM, description="the drug room")]
RoomFilter = Annotated[
    Text | None, Query(min_length=1, max_length=MAX_ROOM, description="only this drug room")
]
LineId = Annotated[int, Path(ge=1, le=MAX_ID, description="the requisition line's id")]


# ----------------------------------------------------------------------------- requisitions

_PLAIN_LINE = {
    "type": "object",
    "properties": {
        "gtin": {"type": "string", "description": "GTIN-8/12/13/14 (or give article)"},
        "article": {"type": "integer", "description": "the article number (or give gtin)"},
        "packs": {"type": "integer", "minimum": 1, "maximum": model.MAX_PACKS_PER_LINE},
        "note": {"type": "string"},
    },
    "required": ["packs"],
    "additionalProperties": False,
}
_PLAIN_BODY = {
    "type": "object",
    "description": "The plain JSON requisition (docs/ward-supply.md); the sender "
    "is the token's user",
    "properties": {
        "id": {"type": "string", "description": "the sender's id of the requisition"},
        "drug_room": {"type": "string"},
        "urgent": {"type": "boolean"},
        "requested_by": {"type": "string"},
        "note": {"type": "string"},
        "lines": {"type": "array", "items": _PLAIN_LINE, "minItems": 1},
    },
    "required": ["id", "drug_room", "lines"],
    "additionalProperties": False,
}
_REQUISITION_BODY = {
    "requestBody": {
        "required": True,
        "description": "A FHIR R4 SupplyRequest or a Bundle of them (application/fhir+json), "
        "or the plain JSON body (application/json). See docs/ward-supply.md.",
        "content": {
            FHIR_TYPE: {"schema": {"type": "object", "description": "FHIR R4 JSON"}},
            JSON_TYPE: {"schema": _PLAIN_BODY},
        },
    },
    **role_note(Role.TECHNICIAN),
}


@router.post(
    "/requisitions",
    summary="File a drug room's requisition (FHIR SupplyRequest or plain JSON)",
    description="Reads the requisition, all or nothing: every problem is listed under "
    "`problems` (422), and nothing is booked. A FHIR requisition's identity is its "
    "identifier (system and value); a plain body's is the token's user and its `id`. The "
    "same identity again answers 200 with `duplicate: true` and books nothing; a new one "
    "201. A unit outside the hospital organisation is refused (422) with the reason. "
    "Role: technician or above.",
    response_model=Booked,
    status_code=201,
    responses={
        200: {"model": Booked, "description": "This requisition was booked before"},
        **responses(401, 403, 413, 415, 422, 503),
    },
    openapi_extra=_REQUISITION_BODY,
)
async def submit_requisition(
    request: Request, response: Response, ctx: Context, user: Technician
) -> Booked:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (FHIR_TYPE, JSON_TYPE):
        raise ApiError(
            415,
            f"Content-Type {content_type or '(none)'!r} is not accepted: send a FHIR "
            f"SupplyRequest or Bundle as {FHIR_TYPE}, the plain body as {JSON_TYPE}",
            field="Content-Type",
            value=content_type or None,
        )
    payload = await read_body(request)
    assortment = _assortment(ctx)
    try:
        if content_type == FHIR_TYPE:
            req = await asyncio.to_thread(parse_fhir, payload, assortment)
        else:
            req = await asyncio.to_thread(parse_json, payload, assortment, sender=user.name)
    except IntakeError as exc:
        log.warning(
            "api: a ward requisition from %s was refused (%d problem(s))",
            user.name,
            len(exc.problems),
        )
        raise _intake_error(exc) from None
    # Whatever the body names that the site does not know is bad input, not a missing page.
    booked = await _write(ctx, _service(ctx).submit, req, actor=user.name, unknown=422)
    if booked.duplicate:
        response.status_code = 200
    else:
        log.info(
            "api: %s filed ward requisition %s: %d lines, %d flagged",
            user.name,
            booked.number,
            booked.lines,
            booked.flagged,
        )
    return _booked(booked)


@router.get(
    "/requisitions",
    summary="Requisitions, newest first",
    description="The latest `limit` requisitions with their lines. Role: viewer or above.",
    response_model=RequisitionList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_requisitions(
    ctx: Context,
    _user: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 50,
) -> RequisitionList:
    rows = await _read(ctx, reads.requisitions, _service(ctx), limit)
    return RequisitionList(count=len(rows), requisitions=[_requisition(r) for r in rows])


@router.get(
    "/requisitions/{number}",
    summary="One requisition",
    description="The requisition with its lines and their states. An unknown number "
    "gives 404. Role: viewer or above.",
    response_model=Requisition,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def get_requisition(ctx: Context, _user: Viewer, number: Number) -> Requisition:
    return _requisition(await _read(ctx, reads.requisition, _service(ctx), number))


# ----------------------------------------------------------------------------- review


@router.get(
    "/review",
    summary="Lines waiting for a pharmacist",
    description="Requisition lines waiting for review, urgent first: `pending` (routine) "
    "and `flagged` (with their `flags`, decided one by one), with the ward's usual "
    "quantity. An unknown drug room gives 404. Role: viewer or above.",
    response_model=ReviewQueue,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def review_queue(ctx: Context, _user: Viewer, drug_room: RoomFilter = None) -> ReviewQueue:
    if drug_room is not None:
        _room(ctx, drug_room, "drug_room")
    rows = await _read(ctx, _service(ctx).review_queue, drug_room=drug_room)
    return ReviewQueue(count=len(rows), lines=[_line(x) for x in rows])


@router.post(
    "/review/approve-routine",
    summary="Approve the routine lines together",
    description="Approves the routine (`pending`) lines waiting for review, never a "
    "flagged one: all of them, a drug room's, or the lines `ids` (each must be a routine "
    "line waiting for review, else 409 and nothing is approved). The reason (at least 3 "
    "characters) and the token's user go to the audit trail. Role: pharmacist or above.",
    response_model=ApproveRoutineResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def approve_routine(
    ctx: Context, user: Pharmacist, body: ApproveRoutineRequest
) -> ApproveRoutineResult:
    if body.drug_room is not None:
        _room(ctx, body.drug_room, "drug_room")
    count = await _write(
        ctx,
        _service(ctx).approve_routine,
        actor=user.name,
        reason=body.reason,
        drug_room=body.drug_room,
        ids=body.ids,
    )
    log.info("api: %s approved %d routine ward line(s)", user.name, count)
    return ApproveRoutineResult(approved=count, by=user.name)


@router.post(
    "/lines/{id}/decision",
    summary="A pharmacist's decision on one line",
    description="`approve`, `reduce` (to `packs`, fewer than asked), `substitute` (with "
    "`substitute`, a GTIN of the same substitution group) or `reject`, always with a "
    "reason (at least 3 characters). The token's user is the decider in the line and the "
    "audit trail. An unknown line gives 404; a line no longer waiting for review 409. "
    "Role: pharmacist or above.",
    response_model=Line,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def decide(ctx: Context, user: Pharmacist, id: LineId, body: DecisionRequest) -> Line:
    line = await _write(
        ctx,
        _service(ctx).decide,
        id,
        body.decision,
        actor=user.name,
        reason=body.reason,
        packs=body.packs,
        substitute=body.substitute,
    )
    log.info("api: %s decided ward line %d: %s", user.name, id, body.decision)
    return _line(line)


# ----------------------------------------------------------------------------- pick lists


@router.post(
    "/pick-lists",
    summary="Make a delivery run's pick lists",
    description="One pick list per hospital for the approved lines of the run (`URGENT`: "
    "every urgent line approved so far), each line's stock reserved first expiry first; "
    "what the store cannot fill becomes a back order for the next run. `date` defaults "
    "to the site's local date. 201 when lists were made, 200 when nothing was due. An "
    "unknown run gives 422. Role: technician or above.",
    response_model=PickListList,
    status_code=201,
    responses={
        200: {"model": PickListList, "description": "Nothing was due for the run"},
        **responses(401, 403, 409, 422, 503),
    },
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def make_pick_lists(
    ctx: Context, user: Technician, body: MakePickListsRequest, response: Response
) -> PickListList:
    runs = [r.code for r in ctx.site.ward_supply.runs] + [URGENT_RUN]
    if body.run not in runs:
        raise ApiError(
            422,
            f"run: {body.run!r} is not a delivery run of this site ({', '.join(runs)})",
            field="run",
            value=body.run,
        )
    ws = _service(ctx)
    made = await _write(
        ctx, ws.make_pick_lists, run=body.run, run_date=body.date or ctx.today(), actor=user.name
    )
    if not made:
        response.status_code = 200
    log.info("api: %s made %d pick list(s) for run %s", user.name, len(made), body.run)
    return PickListList(count=len(made), pick_lists=[PickList.of(p) for p in made])


@router.get(
    "/pick-lists",
    summary="Pick lists",
    description="Pick lists, oldest first: `open`, `dispatched` or all (no status). "
    "Role: viewer or above.",
    response_model=PickListList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_pick_lists(
    ctx: Context,
    _user: Viewer,
    status: Annotated[PickListStatusName | None, Query(description="only this status")] = None,
) -> PickListList:
    rows = await _read(ctx, reads.pick_lists, _service(ctx), status)
    return PickListList(count=len(rows), pick_lists=[PickList.of(p) for p in rows])


@router.get(
    "/pick-lists/{number}",
    summary="One pick list",
    description="The list's lines with the lots and bins reserved for each (first "
    "expiry first) and what scans confirmed. An unknown number gives 404. "
    "Role: viewer or above.",
    response_model=PickList,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def get_pick_list(ctx: Context, _user: Viewer, number: Number) -> PickList:
    return PickList.of(await _read(ctx, _service(ctx).pick_list, number))


def _machine_rule(ctx: ApiContext, what: str) -> bool:
    """True: hand the call to the running controller's ward desk. Without one, the
    service is called directly when the site does not verify packs; a site that does
    needs the controller (503)."""
    if ctx.running is not None:
        return True
    if ctx.site.verification.enabled:
        ctx.need_running(what)
    return False


@router.post(
    "/pick-lists/{number}/scans",
    summary="Confirm one pack of a pick list by its GS1 scan",
    description="A refused scan is a normal answer (200, `accepted: false`, the message "
    "says why: another product, another lot, expired, already scanned, blocked by the "
    "verification system). An unknown list gives 404. Where the site verifies packs, "
    "this needs a running controller (503 without one). Role: technician or above.",
    response_model=PickScanResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def scan_pack(
    ctx: Context, user: Technician, number: Number, body: PickScanRequest
) -> PickScanResult:
    data = body.data.replace("<GS>", "\x1d")
    if _machine_rule(ctx, "a scan of a pick list"):
        assert ctx.running is not None
        result = await _call(ctx.running.ward_desk.scan(number, data, actor=user.name))
    else:
        result = await _write(ctx, _service(ctx).scan, number, data, actor=user.name)
    if result.accepted:
        log.info("api: %s scanned a pack on %s", user.name, number)
    return PickScanResult(
        accepted=result.accepted,
        message=result.message,
        line_id=result.line_id,
        list_complete=result.list_complete,
    )


@router.post(
    "/pick-lists/{number}/dispatch",
    summary="Dispatch a pick list",
    description="Books what was scanned from the store into transit, releases the rest "
    "(a back order for the next run) and writes one delivery note per drug room; "
    "serialised packs are decommissioned where the site verifies packs (which then "
    "needs a running controller: 503 without one). A list dispatched before answers its "
    "notes again with `lines: 0`. Role: technician or above.",
    response_model=DispatchResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def dispatch(ctx: Context, user: Technician, number: Number) -> DispatchResult:
    if _machine_rule(ctx, "a dispatch of a pick list"):
        assert ctx.running is not None
        sent = await _call(ctx.running.ward_desk.dispatch(number, actor=user.name))
    else:
        sent = await _write(ctx, _service(ctx).dispatch, number, actor=user.name)
    log.info("api: %s dispatched %s: %d note(s)", user.name, number, len(sent.notes))
    return _dispatched(sent)


# ----------------------------------------------------------------------------- notes


@router.get(
    "/notes",
    summary="Delivery notes",
    description="Delivery notes, oldest first: `in_transit`, `received` or all (no "
    "status), of all drug rooms or one (404 for an unknown one). Role: viewer or above.",
    response_model=NoteList,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_notes(
    ctx: Context,
    _user: Viewer,
    status: Annotated[NoteStatusName | None, Query(description="only this status")] = None,
    drug_room: RoomFilter = None,
) -> NoteList:
    if drug_room is not None:
        _room(ctx, drug_room, "drug_room")
    rows = await _read(ctx, reads.notes, _service(ctx), status, drug_room)
    return NoteList(count=len(rows), notes=[Note.of(n) for n in rows])


@router.get(
    "/notes/{number}",
    summary="One delivery note",
    description="The note with its lines: product, lot (batch, expiry), units, packs and "
    "the lot's GS1 element string, and what the ward received. An unknown number gives "
    "404. Role: viewer or above.",
    response_model=Note,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def get_note(ctx: Context, _user: Viewer, number: Number) -> Note:
    return Note.of(await _read(ctx, _service(ctx).note, number))


def _json_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses(...)` for a route whose own answer is not JSON: its errors still are
    (FastAPI would document them in the route's media type)."""
    ref = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
    return {
        status: {"description": spec["description"], "content": {JSON_TYPE: {"schema": ref}}}
        for status, spec in responses(*statuses).items()
    }


@router.get(
    "/notes/{number}/print",
    summary="The printable delivery note",
    description="A self-contained A4 HTML page with the note's Code 128 barcode "
    "(`DN:<number>`) and each line's GS1 data. Role: viewer or above.",
    response_class=HTMLResponse,
    responses={
        200: {"description": "the delivery note as HTML"},
        **_json_errors(401, 403, 404, 422, 503),
    },
    openapi_extra=role_note(Role.VIEWER),
)
async def print_note(ctx: Context, _user: Viewer, number: Number) -> HTMLResponse:
    note = await _read(ctx, _service(ctx).note, number)
    site = ctx.site.site
    page = await asyncio.to_thread(
        render_note_html, note, site_name=site.name, timezone=site.timezone
    )
    return HTMLResponse(page)


async def _receive(
    ctx: ApiContext, number: str, actor: str, deviations: Sequence[ReceiptLine]
) -> ReceiptResult:
    got = await _write(ctx, _service(ctx).receive, number, actor=actor, deviations=deviations)
    log.info("api: %s received delivery note %s (%d deviation(s))", actor, number, got.deviations)
    return _received(got)


@router.post(
    "/notes/{number}/receipt",
    summary="Confirm a delivery note received on the ward",
    description="Moves the note's stock from transit into the drug room (an uncounted "
    "room's stock counts as used on delivery) and books each deviation with its reason: "
    "`missing` and `damaged` units of a lot on the note, or `too_many`. All or nothing. "
    "An unknown note gives 404, a note received before 409 (saying when), a bad "
    "deviation 422 naming it. Role: technician or above.",
    response_model=ReceiptResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def receive_note(
    ctx: Context, user: Technician, number: Number, body: ReceiptRequest | None = None
) -> ReceiptResult:
    deviations = [
        ReceiptLine(d.gtin, d.batch, model.Deviation(d.deviation), d.units, d.reason)
        for d in (body.deviations if body is not None else [])
    ]
    return await _receive(ctx, number, user.name, deviations)


@router.post(
    "/receipts/scan",
    summary="Confirm a delivery note by its barcode",
    description="The ward scans the note's barcode (`DN:<number>`): the note is received "
    "as it was sent, without deviations. Anything else than a note's barcode gives 422, "
    "an unknown note 404, a note received before 409. Role: technician or above.",
    response_model=ReceiptResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def receive_by_scan(ctx: Context, user: Technician, body: NoteScanRequest) -> ReceiptResult:
    data = body.data.strip()
    number = data[len(NOTE_PREFIX) :] if data.startswith(NOTE_PREFIX) else ""
    if not number:
        raise ApiError(
            422,
            f"data: {body.data!r} is not a delivery note's barcode ({NOTE_PREFIX}<number>)",
            field="data",
            value=body.data,
        )
    return await _receive(ctx, number, user.name, [])


# ----------------------------------------------------------------------------- drug rooms


@router.get(
    "/drug-rooms",
    summary="The site's drug rooms",
    description="Each drug room with its hospital, ward, whether it is counted or "
    "outside the hospital organisation, its delivery runs and its assortment (min and "
    "max in packs). Role: viewer or above.",
    response_model=DrugRoomList,
    responses=responses(401, 403, 422),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_drug_rooms(ctx: Context, _user: Viewer) -> DrugRoomList:
    site = ctx.site
    names = {p.gtin: p.name for p in site.catalogue}
    external = {h.code for h in site.hospitals if h.external}
    rooms = [
        DrugRoom(
            code=r.code,
            hospital=r.hospital,
            ward=r.ward,
            counted=r.counted,
            external=r.external or r.hospital in external,
            runs=list(r.runs),
            assortment=[
                Shelf(gtin=s.gtin, name=names.get(s.gtin, ""), min=s.min, max=s.max)
                for s in r.assortment
            ],
        )
        for r in site.drug_rooms
    ]
    return DrugRoomList(count=len(rooms), drug_rooms=rooms)


@router.post(
    "/drug-rooms/{code}/top-up",
    summary="Book a top-up round's counts",
    description="A technician's round in the drug room: the packs counted on each shelf "
    "of its list. A counted room books its use from the count; every room gets a "
    "requisition up to max for what is at or below min. A round id booked before books "
    "nothing again (`requisition.duplicate`). An unknown room gives 404, a product not "
    "on the room's list 422. Role: technician or above.",
    response_model=TopUpResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def top_up(ctx: Context, user: Technician, code: RoomCode, body: TopUpRequest) -> TopUpResult:
    _room(ctx, code)
    counts = [(c.gtin, c.packs) for c in body.counts]
    booked, proposal = await _write(
        ctx, _service(ctx).top_up, code, counts, actor=user.name, round_id=body.round_id
    )
    log.info("api: %s booked top-up round %s of %s", user.name, body.round_id, code)
    return TopUpResult(
        drug_room=code,
        round_id=body.round_id,
        proposal=[Proposed(gtin=g, packs=p) for g, p in proposal],
        requisition=_booked(booked) if booked is not None else None,
    )


@router.get(
    "/drug-rooms/{code}/par",
    summary="Suggested min and max for a drug room's list",
    description="From the room's use over `days` (7 to 365, default 28), by the same "
    "rule as the cabinets' par levels: units and whole packs. An unknown room gives 404. "
    "Role: viewer or above.",
    response_model=ParList,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def par_levels(
    ctx: Context,
    _user: Viewer,
    code: RoomCode,
    days: Annotated[int, Query(ge=7, le=365, description="days of use to learn from")] = 28,
) -> ParList:
    _room(ctx, code)
    rows = await _read(ctx, _par, _service(ctx), code, days)
    return ParList(drug_room=code, days=days, suggestions=rows)


# ----------------------------------------------------------------------------- reliability


@router.get(
    "/reliability",
    summary="Delivery reliability to the wards",
    description="The share of requisition lines delivered on time and in full between "
    "`since` and `until` (ISO date-times; without an offset, UTC; default: the last 30 "
    "days), against the site's target, per hospital, with every unmet line and its "
    "cause. Role: viewer or above.",
    response_model=Reliability,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.VIEWER),
)
async def reliability(
    ctx: Context,
    _user: Viewer,
    since: Annotated[datetime | None, Query(description="from (default: until - 30 days)")] = None,
    until: Annotated[datetime | None, Query(description="until (default: now)")] = None,
) -> Reliability:
    ws = _service(ctx)
    now = ws.clock()
    try:
        end = _utc(until) if until is not None else now
        start = _utc(since) if since is not None else end - timedelta(days=30)
    except OverflowError:
        raise ApiError(
            422,
            "since: the window reaches beyond the calendar",
            field="since" if since is not None else "until",
            value=(since or until or now).isoformat(),
        ) from None
    if start >= end:
        raise ApiError(
            422,
            f"since: {start.isoformat()} must be before until {end.isoformat()}",
            field="since",
            value=start.isoformat(),
        )
    if end - start > timedelta(days=MAX_RELIABILITY_DAYS):
        raise ApiError(
            422,
            f"since: the window is longer than {MAX_RELIABILITY_DAYS} days",
            field="since",
            value=start.isoformat(),
        )
    report = await _read(
        ctx,
        delivery_reliability,
        ctx.ledger.engine,
        since=start,
        until=end,
        now=now,
        target=ctx.site.ward_supply.reliability_target,
    )
    return Reliability.of(report)
