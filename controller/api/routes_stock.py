"""Stock reports: the same definitions as `doseline report balance|expiring|cover|
compliance` (controller.ledger.reports), with the same parameters and defaults."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from controller.api.auth import Role
from controller.api.context import Context, Viewer, role_note
from controller.api.errors import ApiError, responses
from controller.api.models import Text
from controller.config import valid_gtin
from controller.ledger import reports
from controller.ledger.errors import LedgerError, UnknownEntity

router = APIRouter(prefix="/stock", tags=["stock"])
_VIEWER = role_note(Role.VIEWER)


def _utc(value: datetime | None) -> datetime:
    """Like the CLI's --now: default now; without an offset, UTC."""
    if value is None:
        return datetime.now(UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Now = Annotated[
    datetime | None,
    Query(description="the moment to report at, ISO 8601 (default: now; no offset: UTC)"),
]
ObligationDays = Annotated[int, Query(ge=1, le=366, description="the obligation in days")]


def _refused(exc: LedgerError) -> ApiError:
    if isinstance(exc, UnknownEntity):
        return ApiError(404, str(exc), field=exc.field, value=exc.value)
    return ApiError(422, str(exc))


@router.get(
    "/balances",
    summary="Stock on hand, reserved, available and value",
    description="Per product, location or lot; `location` includes the locations below it. "
    "Role: viewer or above.",
    response_model=reports.BalanceReport,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_VIEWER,
)
async def balances(
    ctx: Context,
    _user: Viewer,
    location: Annotated[Text | None, Query(max_length=100, description="a location code")] = None,
    gtin: Annotated[Text | None, Query(max_length=14)] = None,
    by: Annotated[Literal["product", "location", "lot"], Query()] = "product",
    today: Annotated[
        date | None, Query(description="expired lots are not available (default: today, UTC)")
    ] = None,
) -> reports.BalanceReport:
    if gtin is not None:
        try:
            gtin = valid_gtin(gtin)
        except ValueError as exc:
            raise ApiError(422, f"gtin: {exc}", field="gtin", value=gtin) from None
    try:
        return await ctx.read(
            reports.balances,
            ctx.ledger,
            by=by,
            gtin=gtin,
            location=location,
            today=today or datetime.now(UTC).date(),
        )
    except LedgerError as exc:
        raise _refused(exc) from None


@router.get(
    "/expiring",
    summary="Lots expiring within N days, and expired lots still on hand",
    description="Role: viewer or above.",
    response_model=reports.ExpiryReport,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def expiring(
    ctx: Context,
    _user: Viewer,
    days: Annotated[int, Query(ge=0, le=3650, description="the horizon in days")] = 90,
    today: Annotated[date | None, Query(description="default: today (UTC)")] = None,
) -> reports.ExpiryReport:
    try:
        return await ctx.read(
            reports.expiring,
            ctx.ledger,
            within_days=days,
            today=today or datetime.now(UTC).date(),
        )
    except LedgerError as exc:
        raise _refused(exc) from None


@router.get(
    "/cover",
    summary="Days of cover per product against the one-month obligation",
    description="Usable stock divided by mean daily consumption over 30 and 90 days. "
    "Role: viewer or above.",
    response_model=reports.CoverReport,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def cover(
    ctx: Context, _user: Viewer, now: Now = None, obligation_days: ObligationDays = 30
) -> reports.CoverReport:
    try:
        return await ctx.read(
            reports.days_of_cover, ctx.ledger, now=_utc(now), obligation_days=obligation_days
        )
    except LedgerError as exc:
        raise _refused(exc) from None


@router.get(
    "/compliance",
    summary="The one-month obligation per category, and the preparedness stock",
    description="Role: viewer or above.",
    response_model=reports.ComplianceSummary,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def compliance(
    ctx: Context, _user: Viewer, now: Now = None, obligation_days: ObligationDays = 30
) -> reports.ComplianceSummary:
    try:
        return await ctx.read(
            reports.compliance_summary, ctx.ledger, now=_utc(now), obligation_days=obligation_days
        )
    except LedgerError as exc:
        raise _refused(exc) from None
