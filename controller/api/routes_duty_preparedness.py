"""/api/v1/duty: the preparedness list (target and floor per product, imported whole) and
crisis periods (decided, scoped, ended, audited). The same ledger methods as
`doseline duty preparedness ...` and `doseline duty crisis ...`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, Viewer, role_note
from controller.api.errors import ApiError, Problem, responses
from controller.api.models import Closed
from controller.ledger.duty_preparedness import (
    CrisisPeriod,
    CrisisRefused,
    PreparednessImport,
    PreparednessRefused,
    PreparednessTarget,
)
from controller.ledger.errors import LedgerError, UnknownEntity

router = APIRouter(prefix="/duty", tags=["stock duty"])
_VIEWER = role_note(Role.VIEWER)
_PHARMACIST = role_note(Role.PHARMACIST)
MAX_LIST_CHARS = 2_000_000


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _refusal(exc: LedgerError) -> ApiError:
    """Every problem of a refused list; the field and value of any other refusal."""
    if isinstance(exc, PreparednessRefused):
        problems = [Problem(field=p.field, value=p.value, message=str(p)) for p in exc.problems]
        first = exc.problems[0]
        return ApiError(422, str(exc), field=first.field, value=first.value, problems=problems)
    if isinstance(exc, UnknownEntity):
        return ApiError(
            404 if exc.field == "crisis" else 422, str(exc), field=exc.field, value=exc.value
        )
    if isinstance(exc, CrisisRefused):
        status = 409 if exc.conflict else 422
        return ApiError(status, str(exc), field=exc.field, value=exc.value)
    field, _, _ = str(exc).partition(":")
    return ApiError(422, str(exc), field=field if " " not in field else None)


# ------------------------------------------------------------------ preparedness


class PreparednessBody(Closed):
    csv: str = Field(
        min_length=1,
        max_length=MAX_LIST_CHARS,
        description="the whole list as the import file: `gtin;target_units;floor_units` "
        "(optional `;name`), one product a line (docs/stock-duty.md)",
    )
    list_name: str = Field(min_length=1, max_length=100, description="the list's name")
    dry_run: bool = Field(default=False, description="check and show the changes, write nothing")


class PreparednessList(BaseModel):
    count: int
    targets: list[PreparednessTarget]


class CrisisList(BaseModel):
    count: int
    periods: list[CrisisPeriod]


@router.get(
    "/preparedness",
    summary="The preparedness list: target and floor per product",
    description="Role: viewer or above.",
    response_model=PreparednessList,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def preparedness_list(ctx: Context, user: Viewer) -> PreparednessList:
    targets = await ctx.read(ctx.ledger.preparedness_list)
    return PreparednessList(count=len(targets), targets=targets)


@router.put(
    "/preparedness",
    summary="Replace the whole preparedness list",
    description="The list is checked whole (every line, every GTIN against the products); "
    "any problem refuses it all with every problem listed (422) and nothing written. A "
    "good list replaces the current one in one audited transaction, with the caller as "
    "the actor. Role: pharmacist or above.",
    response_model=PreparednessImport,
    responses=responses(401, 403, 422),
    openapi_extra=_PHARMACIST,
)
async def put_preparedness(
    body: PreparednessBody, ctx: Context, user: Pharmacist
) -> PreparednessImport:
    try:
        return await ctx.write(
            ctx.ledger.import_preparedness,
            body.csv,
            list_name=body.list_name,
            actor=user.name,
            dry_run=body.dry_run,
        )
    except LedgerError as exc:
        raise _refusal(exc) from None


# ------------------------------------------------------------------ crisis


class CrisisBody(Closed):
    reason: str = Field(min_length=10, max_length=2000, description="the decision, written out")
    starts_at: datetime | None = Field(
        default=None, description="ISO 8601, no offset: UTC (default: now); at most a day back"
    )
    ends_at: datetime | None = Field(default=None, description="the decided end (default: open)")
    categories: list[str] = Field(default_factory=list, max_length=10)
    gtins: list[str] = Field(default_factory=list, max_length=1000)


class CrisisEndBody(Closed):
    reason: str = Field(min_length=10, max_length=2000)
    ends_at: datetime | None = Field(default=None, description="default: now")


@router.get(
    "/crisis",
    summary="Crisis periods",
    description="Every period in order of start, `in_force` judged at `at` (default now). "
    "Role: viewer or above.",
    response_model=CrisisList,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def crisis_list(
    ctx: Context,
    user: Viewer,
    at: Annotated[datetime | None, Query(description="ISO 8601 (default: now)")] = None,
    in_force: Annotated[bool, Query(description="only the periods in force at `at`")] = False,
) -> CrisisList:
    periods = await ctx.read(ctx.ledger.crisis_periods, at=_utc(at), in_force_only=in_force)
    return CrisisList(count=len(periods), periods=periods)


@router.post(
    "/crisis",
    summary="Record a decided crisis period",
    description="Stock may be drawn below the month for the categories and products given "
    "(none: every product). Refused (409) when it overlaps another period, naming it. "
    "Audited with the caller as the actor. Role: pharmacist or above.",
    response_model=CrisisPeriod,
    responses=responses(401, 403, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def start_crisis(body: CrisisBody, ctx: Context, user: Pharmacist) -> CrisisPeriod:
    try:
        return await ctx.write(
            ctx.ledger.start_crisis,
            starts_at=_utc(body.starts_at) or datetime.now(UTC),
            ends_at=_utc(body.ends_at),
            reason=body.reason,
            categories=body.categories,
            gtins=body.gtins,
            actor=user.name,
        )
    except LedgerError as exc:
        raise _refusal(exc) from None


@router.post(
    "/crisis/{crisis_id}/end",
    summary="End a crisis period",
    description="Audited with the caller as the actor; ending an ended period is refused "
    "(409). Role: pharmacist or above.",
    response_model=CrisisPeriod,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def end_crisis(
    crisis_id: Annotated[int, Path(ge=1, le=2**31 - 1, description="the period's id")],
    body: CrisisEndBody,
    ctx: Context,
    user: Pharmacist,
) -> CrisisPeriod:
    try:
        return await ctx.write(
            ctx.ledger.end_crisis,
            crisis_id,
            ends_at=_utc(body.ends_at),
            reason=body.reason,
            actor=user.name,
        )
    except LedgerError as exc:
        raise _refusal(exc) from None
