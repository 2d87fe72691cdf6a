"""/api/v1/duty: supplier shortage notices with substitutes, rationing of scarce stock
among wards, and licences for unlicensed products.

The same ledger calls as `doseline duty shortage|ration|licence`: a viewer reads, a
pharmacist decides (the caller is the audited actor). A refused body names its field:
404 for an unknown product, shortage, rule or licence, 409 for a state that refuses
it (a rule already in force, a shortage already closed), 422 for a bad value.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, Viewer, role_note
from controller.api.errors import duty_refusal, responses
from controller.api.models import Closed, GtinText, Text
from controller.duty_rules.rationing import RationingError, check_wards
from controller.ledger.duty_shortages import (
    LicenceView,
    RationDraw,
    RationRuleView,
    ShortageView,
)
from controller.ledger.errors import LedgerError

router = APIRouter(prefix="/duty", tags=["stock duty"])
_VIEWER = role_note(Role.VIEWER)
_PHARMACIST = role_note(Role.PHARMACIST)
NO_NUL = r"^[^\x00]*$"  # a NUL character is refused before it reaches the database


class ShortageList(BaseModel):
    count: int
    shortages: list[ShortageView]


class RationRuleList(BaseModel):
    count: int
    rules: list[RationRuleView]


class RationDrawList(BaseModel):
    count: int
    draws: list[RationDraw]


class LicenceList(BaseModel):
    count: int
    total_fee_sek: Decimal
    licences: list[LicenceView]


# ------------------------------------------------------------------ shortages


class ShortageBody(Closed):
    gtin: GtinText
    notice_ref: Text = Field(min_length=1, max_length=100, description="the supplier's reference")
    supplier: Text | None = Field(default=None, max_length=100)
    expected_end: date | None = Field(default=None, description="not before today (site)")
    substitutes: list[GtinText] = Field(default=[], max_length=50)
    note: Text = Field(default="", max_length=2000)


class ShortageUpdate(Closed):
    expected_end: date | None = None
    substitutes: list[GtinText] | None = Field(default=None, max_length=50)
    note: Text | None = Field(default=None, max_length=2000)


ShortageId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the shortage's id")]


@router.get(
    "/shortages",
    summary="Supplier shortage notices, with the substitutes' free stock in the store",
    description="Newest first. `status`: open (default), closed or all. Role: viewer or above.",
    response_model=ShortageList,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def list_shortages(
    ctx: Context,
    user: Viewer,
    status: Annotated[Literal["open", "closed", "all"], Query()] = "open",
) -> ShortageList:
    rows = await ctx.read(
        ctx.ledger.shortages,
        status=None if status == "all" else status,
        free_at=ctx.site.store.all_bins,
    )
    return ShortageList(count=len(rows), shortages=rows)


@router.post(
    "/shortages",
    summary="Record a supplier's shortage notice",
    description="One notice per product and reference; the substitutes must be other "
    "known products; the expected end may not be in the past. Role: pharmacist or above.",
    status_code=201,
    response_model=ShortageView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def record_shortage(body: ShortageBody, ctx: Context, user: Pharmacist) -> ShortageView:
    try:
        return await ctx.write(
            ctx.ledger.record_shortage,
            body.gtin,
            notice_ref=body.notice_ref,
            supplier=body.supplier,
            expected_end=body.expected_end,
            substitutes=body.substitutes,
            note=body.note,
            actor=user.name,
            today=ctx.today(),
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.patch(
    "/shortages/{shortage_id}",
    summary="Change an open shortage's expected end, substitutes (the whole list) or note",
    description="What the body leaves out stays as it was. Role: pharmacist or above.",
    response_model=ShortageView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def update_shortage(
    shortage_id: ShortageId, body: ShortageUpdate, ctx: Context, user: Pharmacist
) -> ShortageView:
    try:
        return await ctx.write(
            ctx.ledger.update_shortage,
            shortage_id,
            expected_end=body.expected_end,
            substitutes=body.substitutes,
            note=body.note,
            actor=user.name,
            today=ctx.today(),
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.post(
    "/shortages/{shortage_id}/close",
    summary="Close a shortage (the product is delivered again)",
    description="A rationing rule of the product stays in force until it is ended. "
    "Role: pharmacist or above.",
    response_model=ShortageView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def close_shortage(shortage_id: ShortageId, ctx: Context, user: Pharmacist) -> ShortageView:
    try:
        return await ctx.write(ctx.ledger.close_shortage, shortage_id, actor=user.name)
    except LedgerError as exc:
        raise duty_refusal(exc) from None


# ------------------------------------------------------------------ rationing


class RationingBody(Closed):
    gtin: GtinText
    cap_per_ward_day: int = Field(strict=True, ge=0, le=1_000_000, description="units")
    priority_wards: list[Annotated[str, Field(min_length=1, max_length=32, pattern=NO_NUL)]] = (
        Field(default=[], max_length=100, description="served first and not capped")
    )
    reason: Text = Field(min_length=1, max_length=2000)
    shortage_id: int | None = Field(default=None, ge=1, le=2**31 - 1)


RuleId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the rule's id")]


@router.get(
    "/rationing",
    summary="Rationing rules: in force, or all",
    description="Newest first. Role: viewer or above.",
    response_model=RationRuleList,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def list_rationing(
    ctx: Context,
    user: Viewer,
    ended: Annotated[bool, Query(alias="all", description="ended rules too")] = False,
) -> RationRuleList:
    rows = await ctx.read(ctx.ledger.rationing_rules, in_force=not ended)
    return RationRuleList(count=len(rows), rules=rows)


@router.get(
    "/rationing/draws",
    summary="What the wards were granted of rationed products",
    description="One row per granted requisition line or pocket refill, in the order "
    "drawn. Role: viewer or above.",
    response_model=RationDrawList,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_VIEWER,
)
async def list_draws(
    ctx: Context,
    user: Viewer,
    gtin: Annotated[str | None, Query(pattern=r"^[0-9]{1,14}$")] = None,
    ward: Annotated[str | None, Query(max_length=32, pattern=NO_NUL)] = None,
    day: Annotated[date | None, Query(description="the site's local day")] = None,
) -> RationDrawList:
    try:
        rows = await ctx.read(ctx.ledger.ration_draws, gtin=gtin, ward=ward, day=day)
    except LedgerError as exc:
        raise duty_refusal(exc) from None
    return RationDrawList(count=len(rows), draws=rows)


@router.post(
    "/rationing",
    summary="Ration a product among wards: a cap per ward and day, priority wards first",
    description="One rule in force per product (a second is refused with 409, naming "
    "the first). The priority wards must be wards of the site. Role: pharmacist or above.",
    status_code=201,
    response_model=RationRuleView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def start_rationing(body: RationingBody, ctx: Context, user: Pharmacist) -> RationRuleView:
    try:
        wards = check_wards("priority_wards", body.priority_wards, ctx.site.ward_codes())
        return await ctx.write(
            ctx.ledger.start_rationing,
            body.gtin,
            cap_per_ward_day=body.cap_per_ward_day,
            priority_wards=wards,
            reason=body.reason,
            shortage_id=body.shortage_id,
            actor=user.name,
        )
    except (LedgerError, RationingError) as exc:
        raise duty_refusal(exc) from None


@router.post(
    "/rationing/{rule_id}/end",
    summary="End a rationing rule",
    description="The draws made under it stay. Role: pharmacist or above.",
    response_model=RationRuleView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def end_rationing(rule_id: RuleId, ctx: Context, user: Pharmacist) -> RationRuleView:
    try:
        return await ctx.write(ctx.ledger.end_rationing, rule_id, actor=user.name)
    except LedgerError as exc:
        raise duty_refusal(exc) from None


# ------------------------------------------------------------------ licences


class LicenceBody(Closed):
    gtin: GtinText
    holder_kind: Literal["ward", "patient"]
    holder: Text = Field(min_length=1, max_length=64, description="a ward, or a pseudonym")
    number: Text = Field(min_length=1, max_length=50)
    valid_from: date
    valid_to: date
    fee_sek: Decimal = Field(ge=0, max_digits=12, decimal_places=2)


class RevokeBody(Closed):
    reason: Text = Field(default="", max_length=200)


LicenceNumber = Annotated[str, Path(min_length=1, max_length=50, pattern=NO_NUL)]


@router.get(
    "/licences",
    summary="Licences with their validity and fee (finance's list)",
    description="By number; `valid_on` keeps those valid that day (not revoked). "
    "Role: viewer or above.",
    response_model=LicenceList,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_VIEWER,
)
async def list_licences(
    ctx: Context,
    user: Viewer,
    gtin: Annotated[str | None, Query(pattern=r"^[0-9]{1,14}$")] = None,
    holder: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    valid_on: Annotated[date | None, Query()] = None,
) -> LicenceList:
    try:
        rows = await ctx.read(ctx.ledger.licences, gtin=gtin, holder=holder, valid_on=valid_on)
    except LedgerError as exc:
        raise duty_refusal(exc) from None
    total = sum((x.fee_sek for x in rows), start=Decimal("0.00"))
    return LicenceList(count=len(rows), total_fee_sek=total, licences=rows)


@router.post(
    "/licences",
    summary="Record a licence for a ward or a patient",
    description="Valid from `valid_from` to `valid_to`, both included; the fee in SEK, 0 "
    "or more. A ward holder must be a ward of the site. Any product may be given a "
    "licence; only the catalogue's licence products are checked at dispatch. "
    "Role: pharmacist or above.",
    status_code=201,
    response_model=LicenceView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def record_licence(body: LicenceBody, ctx: Context, user: Pharmacist) -> LicenceView:
    try:
        if body.holder_kind == "ward":
            check_wards("holder", [body.holder], ctx.site.ward_codes())
        return await ctx.write(
            ctx.ledger.record_licence,
            body.gtin,
            holder_kind=body.holder_kind,
            holder=body.holder,
            number=body.number,
            valid_from=body.valid_from,
            valid_to=body.valid_to,
            fee_sek=body.fee_sek,
            actor=user.name,
        )
    except (LedgerError, RationingError) as exc:
        raise duty_refusal(exc) from None


@router.post(
    "/licences/{number}/revoke",
    summary="Revoke a licence",
    description="Kept, with who revoked it and when. Role: pharmacist or above.",
    response_model=LicenceView,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def revoke_licence(
    number: LicenceNumber, ctx: Context, user: Pharmacist, body: RevokeBody | None = None
) -> LicenceView:
    try:
        return await ctx.write(
            ctx.ledger.revoke_licence,
            number,
            actor=user.name,
            reason=body.reason if body is not None else "",
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None
