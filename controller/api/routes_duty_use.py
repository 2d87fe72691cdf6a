"""/api/v1/duty: use by units the pharmacy does not supply (external volumes per product
and month), the same as `doseline duty external-use ...`; and the monthly follow-up
export, the same as `doseline report followup`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, Viewer, role_note
from controller.api.errors import ApiError, Problem, responses
from controller.api.models import Closed
from controller.ledger.duty_use import ExternalImport, ExternalUse, ExternalUseRefused
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.reports.followup import FollowupReport, followup_csv_text, followup_report

router = APIRouter(prefix="/duty", tags=["stock duty"])
MAX_IMPORT_BYTES = 2_000_000
Month = Annotated[str, Field(min_length=7, max_length=7, description="YYYY-MM")]


@dataclass(frozen=True)
class ExternalUseList:
    count: int
    volumes: list[ExternalUse]


class ExternalUseBody(Closed):
    gtin: str = Field(min_length=1, max_length=14)
    month: Month
    unit_name: str = Field(min_length=1, max_length=100, description="the unit's name")
    quantity: int = Field(strict=True, ge=0, description="units used in the month")


_FIELDS = ("month", "unit_name", "quantity", "since", "until", "actor")


def _refused(exc: LedgerError) -> ApiError:
    """Unknown product: 404 naming the GTIN; else 422 naming the field the message
    starts with (`month: '2099-01' is in the future ...`)."""
    if isinstance(exc, UnknownEntity):
        return ApiError(404, str(exc), field=exc.field, value=exc.value)
    text = str(exc)
    head = text.split(":", 1)[0]
    return ApiError(422, text, field=head if head in _FIELDS else None)


@router.get(
    "/external-use",
    summary="Recorded use of units the pharmacy does not supply",
    description="Per month, product and unit; `since` and `until` are months (YYYY-MM), "
    "both included. Role: viewer or above.",
    response_model=ExternalUseList,
    responses=responses(401, 403, 404, 422),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_external_use(
    ctx: Context,
    _user: Viewer,
    gtin: Annotated[str | None, Query(max_length=14)] = None,
    since: Annotated[str | None, Query(max_length=7, description="YYYY-MM")] = None,
    until: Annotated[str | None, Query(max_length=7, description="YYYY-MM")] = None,
) -> ExternalUseList:
    try:
        rows = await ctx.read(ctx.ledger.external_uses, gtin=gtin, since=since, until=until)
    except LedgerError as exc:
        raise _refused(exc) from None
    return ExternalUseList(count=len(rows), volumes=rows)


@router.post(
    "/external-use",
    summary="Record (or replace) one unit's use of a product in a month",
    description="The same unit, product and month again replaces the quantity. A month "
    "after this one is refused. Audited with the caller as the actor. "
    "Role: pharmacist or above.",
    response_model=ExternalUse,
    responses=responses(401, 403, 404, 422),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def record_external_use(body: ExternalUseBody, ctx: Context, user: Pharmacist) -> ExternalUse:
    try:
        return await ctx.write(
            ctx.ledger.record_external_use,
            body.gtin,
            month=body.month,
            unit_name=body.unit_name,
            quantity=body.quantity,
            actor=user.name,
        )
    except LedgerError as exc:
        raise _refused(exc) from None


_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The external-use file: UTF-8, `;`, header "
        "`month;gtin;unit_name;quantity` (docs/stock-duty.md).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **role_note(Role.PHARMACIST),
}


@router.post(
    "/external-use/import",
    summary="Import an external-use file, all or nothing",
    description="Every bad line is named (line, field, value) under `problems`, and "
    "nothing is written when there is any. `dry_run` checks and counts only. "
    "Role: pharmacist or above.",
    response_model=ExternalImport,
    responses=responses(401, 403, 413, 422),
    openapi_extra=_IMPORT_BODY,
)
async def import_external_use(
    request: Request,
    ctx: Context,
    user: Pharmacist,
    dry_run: Annotated[bool, Query(description="check and count, write nothing")] = False,
) -> ExternalImport:
    raw = await request.body()
    if len(raw) > MAX_IMPORT_BYTES:
        raise ApiError(413, f"body is larger than {MAX_IMPORT_BYTES} bytes", field="body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, f"body: not UTF-8 ({exc.reason})", field="body") from None
    try:
        return await ctx.write(
            ctx.ledger.import_external_use, text, actor=user.name, dry_run=dry_run
        )
    except ExternalUseRefused as exc:
        problems = [
            Problem(field=f"line {p.line}: {p.field}", value=p.value, message=p.message)
            for p in exc.problems
        ]
        first = exc.problems[0]
        raise ApiError(
            422,
            str(exc),
            field=f"line {first.line}: {first.field}",
            value=first.value,
            problems=problems,
        ) from None
    except LedgerError as exc:
        raise _refused(exc) from None


@router.get(
    "/followup",
    summary="The monthly export for national follow-up of the stock duty",
    description="Per category and product: stock at the month's end, the month's use "
    "(internal and external) and cover; exemptions in force with their levels; crisis "
    "periods overlapping the month. `format=csv` gives the CSV layout of docs/reports.md. "
    "Role: viewer or above.",
    response_model=FollowupReport,
    responses={
        **responses(401, 403, 422),
        200: {"content": {"text/csv": {}}, "description": "the document (JSON) or the CSV"},
    },
    openapi_extra=role_note(Role.VIEWER),
)
async def followup(
    ctx: Context,
    _user: Viewer,
    month: Annotated[
        str | None, Query(max_length=10, description="YYYY-MM (default: the last whole month)")
    ] = None,
    tz: Annotated[str, Query(max_length=60, description="time zone of the month")] = "UTC",
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> FollowupReport | Response:
    now = datetime.now(UTC)
    chosen = month or f"{now.replace(day=1) - timedelta(days=1):%Y-%m}"
    try:
        report = await ctx.read(followup_report, ctx.ledger, month=chosen, tz=tz, generated_at=now)
    except LedgerError as exc:
        text = str(exc)
        field = "tz" if text.startswith("tz") else "month"
        raise ApiError(422, text, field=field, value=tz if field == "tz" else month) from None
    if format == "csv":
        return Response(
            followup_csv_text(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="followup-{report.month}.csv"'},
        )
    return report
