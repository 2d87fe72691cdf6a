"""Dose orders: filed through the same intake as `doseline orders submit`, listed, and
reviewed by a pharmacist."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, Technician, role_note
from controller.api.errors import ApiError, Problem, responses
from controller.api.models import (
    MAX_ORDER_ID,
    AmendRequest,
    Order,
    OrderList,
    OrderStatus,
    ReviewRequest,
    ReviewResult,
    SubmitResult,
)
from controller.intake import Catalogue, IntakeError, message_format, parse_orders
from controller.intake.common import MAX_PAYLOAD_CHARS, WARD_PATTERN
from controller.ledger import LedgerError
from controller.ledger.states import DoseOrderStatus
from controller.packing.orders import DoseOrder
from controller.packing.store import OrderReviewError

log = logging.getLogger("doseline.api")
router = APIRouter(tags=["orders"])

FHIR_TYPES = ("application/fhir+json", "application/json")
HL7_TYPES = ("x-application/hl7-v2+er7", "application/hl7-v2+er7", "text/plain")
_FIELD = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]]*): (?:(?P<value>'[^']*'|\d+)\b)?")


def ledger_problem(status: int, exc: LedgerError) -> ApiError:
    """A LedgerError as an ApiError, with the field and value its message starts with
    ("orders[0].gtin: '0735...' is not in the ledger")."""
    field = getattr(exc, "field", None)
    value = getattr(exc, "value", None)
    match = _FIELD.match(str(exc))
    if field is None and match:
        field = match.group("field")
        raw = match.group("value")
        value = raw.strip("'") if raw else None
    return ApiError(status, str(exc), field=field, value=value)


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past the intake limit before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_PAYLOAD_CHARS:
        raise ApiError(
            413,
            f"body of {declared} bytes is larger than {MAX_PAYLOAD_CHARS}",
            field="Content-Length",
            value=declared,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_PAYLOAD_CHARS:
            raise ApiError(413, f"body is larger than {MAX_PAYLOAD_CHARS} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _intake_error(exc: IntakeError) -> ApiError:
    problems = [
        Problem(field=p.field, value=p.value, message=p.message, patient=p.patient)
        for p in exc.problems
    ]
    first = problems[0] if problems else None
    return ApiError(
        422,
        str(exc),
        field=first.field if first else None,
        value=first.value if first else None,
        problems=problems,
    )


_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "description": "One message: FHIR R4 (a MedicationRequest, or a Bundle of them) "
        "as JSON, or HL7 v2 RDE^O11 text. See docs/order-intake.md.",
        "content": {
            **{
                t: {"schema": {"type": "object", "description": "FHIR R4 JSON"}} for t in FHIR_TYPES
            },
            **{
                t: {"schema": {"type": "string", "description": "HL7 v2 (ER7) text"}}
                for t in HL7_TYPES
            },
        },
    },
    **role_note(Role.TECHNICIAN),
}


@router.post(
    "/orders",
    summary="File dose orders (FHIR or HL7 v2)",
    description="Reads one message with the site's intake, all or nothing, and files its "
    "orders (pending review when the site requires it). An order already on file is not "
    "added again. 201 when something was added, 200 when all were on file. "
    "Role: technician or above.",
    response_model=SubmitResult,
    status_code=201,
    responses={
        200: {"model": SubmitResult, "description": "Every order was already on file"},
        **responses(401, 403, 413, 415, 422),
    },
    openapi_extra=_SUBMIT_BODY,
)
async def submit_orders(
    request: Request,
    response: Response,
    ctx: Context,
    user: Technician,
    ward: Annotated[
        str | None,
        Query(max_length=32, description="ward for orders whose message names none"),
    ] = None,
) -> SubmitResult:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in FHIR_TYPES:
        expected = "fhir"
    elif content_type in HL7_TYPES:
        expected = "hl7v2"
    else:
        raise ApiError(
            415,
            f"Content-Type {content_type or '(none)'!r} is not accepted: send FHIR as "
            f"{' or '.join(FHIR_TYPES)}, HL7 v2 as {' or '.join(HL7_TYPES)}",
            field="Content-Type",
            value=content_type or None,
        )
    if ward is not None and not WARD_PATTERN.match(ward):
        raise ApiError(422, f"ward: {ward!r} is not a ward code", field="ward", value=ward)
    payload = await read_body(request)
    site = ctx.site
    try:
        found = message_format(payload)
        if found != expected:
            named = {"fhir": "FHIR JSON", "hl7v2": "HL7 v2 text"}
            raise ApiError(
                415,
                f"Content-Type {content_type!r} announces {named[expected]}, "
                f"but the body is {named[found]}",
                field="Content-Type",
                value=content_type,
            )
        orders: list[DoseOrder] = await asyncio.to_thread(
            parse_orders,
            payload,
            catalogue=Catalogue.from_site(site),
            salt=site.pseudonym_salt(),
            default_ward=ward or site.orders.default_ward,
            today=ctx.today(),
        )
        result = await ctx.write(
            ctx.store.submit,
            orders,
            source=found,
            actor=user.name,
            review_required=site.orders.review_required,
        )
    except IntakeError as exc:
        log.warning(
            "api: %s: a message from %s was refused (%d problem(s))",
            exc.source,
            user.name,
            len(exc.problems),
        )
        raise _intake_error(exc) from None
    except LedgerError as exc:
        raise ledger_problem(422, exc) from None
    log.info(
        "api: %s filed a %s message: %d orders added, %d already on file",
        user.name,
        found,
        len(result.added),
        len(result.duplicates),
    )
    if not result.added:
        response.status_code = 200
    return SubmitResult(
        format=found,  # type: ignore[arg-type]
        added=list(result.added),
        duplicates=list(result.duplicates),
        status=result.status,
    )


@router.get(
    "/orders",
    summary="Dose orders on file",
    description="Orders by status, and those active on a day. Patients appear by their "
    "pseudonym only. Role: pharmacist or above.",
    response_model=OrderList,
    responses=responses(401, 403, 422),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def list_orders(
    ctx: Context,
    _user: Pharmacist,
    status: Annotated[OrderStatus | None, Query(description="only orders of this status")] = None,
    day: Annotated[date | None, Query(description="only orders active on this day")] = None,
) -> OrderList:
    records = await ctx.read(ctx.store.orders, status=status, day=day)
    return OrderList(count=len(records), orders=[Order.of(r) for r in records])


_ORDER = re.compile(r"^order (\d+): (no such order)?")


@router.post(
    "/orders/review",
    summary="Approve or reject pending orders",
    description="All or nothing: every order must be pending. A rejection needs a note. "
    "The reviewer recorded in the audit trail is the token's user. "
    "Role: pharmacist or above.",
    response_model=ReviewResult,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def review_orders(body: ReviewRequest, ctx: Context, user: Pharmacist) -> ReviewResult:
    if not body.approve and not body.note.strip():
        raise ApiError(422, "note: a rejection needs a reason", field="note", value=body.note)
    try:
        count = await ctx.write(
            ctx.store.review, body.order_ids, approve=body.approve, actor=user.name, note=body.note
        )
    except OrderReviewError as exc:
        about = _ORDER.match(str(exc))
        if about is None:
            raise ledger_problem(409, exc) from None
        code = 404 if about.group(2) else 409
        raise ApiError(code, str(exc), field="order_ids", value=about.group(1)) from None
    status = DoseOrderStatus.APPROVED if body.approve else DoseOrderStatus.REJECTED
    log.info("api: %s %s %d orders", user.name, status, count)
    return ReviewResult(reviewed=count, status=status, by=user.name)


OrderPathId = Annotated[int, Path(ge=1, le=MAX_ORDER_ID, description="the dose order's id")]


@router.post(
    "/orders/{id}/amend",
    summary="Approve a pending order reduced or substituted",
    description="Approves one pending order with fewer `units` per administration (1 to "
    "one less than ordered) and/or another product (`gtin`, an active product of the "
    "ordered product's substitution group), always with a `note` giving the reason. "
    "Planning packs the amended order; the audit trail keeps the old and new values and "
    "names the token's user as the reviewer. An unknown order gives 404, an order no "
    "longer pending 409, a dose or product that is not allowed 422. "
    "Role: pharmacist or above.",
    response_model=Order,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def amend_order(id: OrderPathId, body: AmendRequest, ctx: Context, user: Pharmacist) -> Order:
    if not body.note.strip():
        raise ApiError(
            422, "note: a reduction or substitution needs a reason", field="note", value=body.note
        )
    if body.units is None and body.gtin is None:
        raise ApiError(
            422, "units: none given, and no gtin: nothing to amend", field="units", value=None
        )
    try:
        record = await ctx.write(
            ctx.store.amend, id, units=body.units, gtin=body.gtin, actor=user.name, note=body.note
        )
    except OrderReviewError as exc:
        about = _ORDER.match(str(exc))
        if about is None:
            raise ledger_problem(422, exc) from None
        code = 404 if about.group(2) else 409
        raise ApiError(code, str(exc), field="id", value=about.group(1)) from None
    log.info("api: %s amended order %d", user.name, id)
    return Order.of(record)
