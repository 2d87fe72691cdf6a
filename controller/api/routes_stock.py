"""Stock reports: the same definitions as `doseline report balance|expiring|cover|
compliance` (controller.ledger.reports), with the same parameters and defaults; and the
store staff's tasks, the same as `doseline ledger move|waste-expired`
(controller.store_tasks)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from controller.api.auth import Role
from controller.api.context import Context, Technician, Viewer, role_note
from controller.api.errors import ApiError, responses
from controller.api.models import Closed, Text
from controller.config import valid_gtin
from controller.ledger import reports
from controller.ledger.errors import InsufficientStock, LedgerError, UnknownEntity
from controller.store_tasks import (
    ExpiredWaste,
    MoveRequest,
    MoveResult,
    StoreTaskRefused,
    move_stock,
    store_places,
    waste_expired,
)

router = APIRouter(prefix="/stock", tags=["stock"])
_VIEWER = role_note(Role.VIEWER)
_TECHNICIAN = role_note(Role.TECHNICIAN)


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


# ------------------------------------------------------------------ store tasks

Key = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="idempotency key: a retry with the same key books nothing",
    ),
]
Location = Annotated[str, Field(min_length=1, max_length=100)]


class MoveBody(Closed):
    gtin: str = Field(min_length=1, max_length=14)
    batch: str = Field(min_length=1, max_length=20)
    from_location: Location
    to_location: Location
    quantity: int = Field(strict=True, gt=0, description="whole units of the lot")
    reason: str | None = Field(default=None, min_length=1, max_length=200)
    key: Key


class WasteExpiredBody(Closed):
    location: Location | None = Field(
        default=None, description="a store location and those under it (default: the store)"
    )
    dry_run: bool = Field(default=False, description="list what would be wasted, book nothing")
    key: Key


def _store_refusal(exc: LedgerError) -> ApiError:
    """A store task's refusal names the field of the body at fault; less free stock
    than asked for is a conflict with the ledger's state (409)."""
    if isinstance(exc, StoreTaskRefused):
        status = 409 if exc.kind == "short" else 422
        return ApiError(status, str(exc), field=exc.field, value=exc.value)
    if isinstance(exc, InsufficientStock):
        return ApiError(409, str(exc), field="quantity", value=exc.wanted)
    return ApiError(422, str(exc))


@router.post(
    "/moves",
    summary="Move free stock of one lot between two store locations",
    description="Lot-exact: only units of the lot that are neither reserved nor under a "
    "location hold are moved, between locations of the store (store, bin, preparedness, "
    "quarantine). Audited with the caller as the actor. Role: technician or above.",
    response_model=MoveResult,
    responses=responses(401, 403, 409, 422),
    openapi_extra=_TECHNICIAN,
)
async def move(body: MoveBody, ctx: Context, user: Technician) -> MoveResult:
    request = MoveRequest(
        gtin=body.gtin,
        batch=body.batch,
        from_location=body.from_location,
        to_location=body.to_location,
        quantity=body.quantity,
        key=body.key,
        actor=user.name,
        reason=body.reason,
    )
    try:
        return await ctx.write(move_stock, ctx.ledger, store_places(ctx.site.store), request)
    except LedgerError as exc:
        raise _store_refusal(exc) from None


@router.post(
    "/waste-expired",
    summary="Book the free stock of expired lots in the store as waste",
    description="Every lot that expired before today (the site's time zone) at the "
    "location and the store locations under it (default: the whole store) is wasted "
    "with reason code `expired`, lot-exact, one ledger command per location and lot "
    "under keys derived from `key`. Reserved or held units are left and listed. "
    "Role: technician or above.",
    response_model=ExpiredWaste,
    responses=responses(401, 403, 422),
    openapi_extra=_TECHNICIAN,
)
async def waste_expired_stock(
    body: WasteExpiredBody, ctx: Context, user: Technician
) -> ExpiredWaste:
    try:
        return await ctx.write(
            waste_expired,
            ctx.ledger,
            store_places(ctx.site.store),
            location=body.location or ctx.site.store.code,
            key=body.key,
            actor=user.name,
            today=ctx.today(),
            dry_run=body.dry_run,
        )
    except LedgerError as exc:
        raise _store_refusal(exc) from None
