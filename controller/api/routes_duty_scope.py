"""/api/v1/duty: what is out of the duty's scope (a product or a category, with its reason;
durable devices and protective equipment) and exemptions as a lifecycle (create, review,
change, revoke).

The same ledger methods as `doseline duty scope|durability|exemption`: a viewer reads,
a pharmacist decides, and the caller is the audited actor. A refusal names the field
and the value: 404 for an unknown product or a missing exemption, 409 for a state
conflict (an active exemption exists, or it was revoked), 422 for a bad value.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, Viewer, role_note
from controller.api.errors import duty_refusal, responses
from controller.api.models import GTIN_PATTERN, Closed
from controller.ledger.duty_scope import ExemptionRecord, ScopeEntry
from controller.ledger.errors import LedgerError

router = APIRouter(prefix="/duty", tags=["stock duty"])
_VIEWER = role_note(Role.VIEWER)
_PHARMACIST = role_note(Role.PHARMACIST)

ScopeReason = Literal["individual_patient", "dental_care", "manufacturing_material"]
Category = Literal["drug", "medical_device", "special_food", "protective_equipment"]
GtinPath = Annotated[str, Path(pattern=GTIN_PATTERN, description="the product's GTIN")]
Written = Annotated[str, Field(min_length=1, max_length=2000)]
Level = Annotated[
    int | None,
    Field(strict=True, description="a reduced level in days (0-29); null: out of the figures"),
]


# ------------------------------------------------------------------ scope


class ScopeBody(Closed):
    reason: ScopeReason
    note: str = Field(default="", max_length=500)


class DurabilityBody(Closed):
    durability: Literal["consumable", "durable"]


class ScopeList(BaseModel):
    entries: list[ScopeEntry]


class ScopeCleared(BaseModel):
    subject: str  # the GTIN, or `category:<name>`
    cleared: bool = True


@router.get(
    "/scope",
    summary="Products and categories out of the stock duty's scope",
    description="Each with its reason, note, and who decided when. Role: viewer or above.",
    response_model=ScopeList,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def scope_list(ctx: Context, user: Viewer) -> ScopeList:
    return ScopeList(entries=await ctx.read(ctx.ledger.scope_list))


@router.put(
    "/scope/products/{gtin}",
    summary="Mark a product out of the duty's scope",
    description="Or change the reason of one already out. Role: pharmacist or above.",
    response_model=ScopeEntry,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_PHARMACIST,
)
async def scope_product(
    gtin: GtinPath, body: ScopeBody, ctx: Context, user: Pharmacist
) -> ScopeEntry:
    try:
        return await ctx.write(
            ctx.ledger.set_out_of_scope,
            gtin=gtin,
            reason=body.reason,
            note=body.note,
            actor=user.name,
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.put(
    "/scope/categories/{category}",
    summary="Mark a whole category out of the duty's scope",
    description="Role: pharmacist or above.",
    response_model=ScopeEntry,
    responses=responses(401, 403, 422),
    openapi_extra=_PHARMACIST,
)
async def scope_category(
    category: Category, body: ScopeBody, ctx: Context, user: Pharmacist
) -> ScopeEntry:
    try:
        return await ctx.write(
            ctx.ledger.set_out_of_scope,
            category=category,
            reason=body.reason,
            note=body.note,
            actor=user.name,
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.delete(
    "/scope/products/{gtin}",
    summary="Bring a product back into the duty's scope",
    description="Role: pharmacist or above.",
    response_model=ScopeCleared,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_PHARMACIST,
)
async def unscope_product(gtin: GtinPath, ctx: Context, user: Pharmacist) -> ScopeCleared:
    try:
        await ctx.write(ctx.ledger.clear_out_of_scope, gtin=gtin, actor=user.name)
    except LedgerError as exc:
        raise duty_refusal(exc) from None
    return ScopeCleared(subject=gtin)


@router.delete(
    "/scope/categories/{category}",
    summary="Bring a category back into the duty's scope",
    description="Role: pharmacist or above.",
    response_model=ScopeCleared,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_PHARMACIST,
)
async def unscope_category(category: Category, ctx: Context, user: Pharmacist) -> ScopeCleared:
    try:
        await ctx.write(ctx.ledger.clear_out_of_scope, category=category, actor=user.name)
    except LedgerError as exc:
        raise duty_refusal(exc) from None
    return ScopeCleared(subject=f"category:{category}")


@router.put(
    "/products/{gtin}/durability",
    summary="Mark a device or protective equipment consumable or durable",
    description="A durable product does not count in the duty; a drug or special food is "
    "always consumable (422). Role: pharmacist or above.",
    response_model=DurabilityBody,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_PHARMACIST,
)
async def durability(
    gtin: GtinPath, body: DurabilityBody, ctx: Context, user: Pharmacist
) -> DurabilityBody:
    try:
        await ctx.write(ctx.ledger.set_durability, gtin, body.durability, actor=user.name)
    except LedgerError as exc:
        raise duty_refusal(exc) from None
    return body


# ------------------------------------------------------------- exemptions


class ExemptionBody(Closed):
    gtin: str = Field(pattern=GTIN_PATTERN)
    reason: Written
    risk_assessment: Written
    measures: Written
    review_date: date = Field(description="the next review, after today")
    level_days: Level = None
    decided_by: str | None = Field(
        default=None, min_length=1, max_length=100, description="default: the caller"
    )


class ReviewBody(Closed):
    review_date: date = Field(description="the next review, after today")
    note: str = Field(default="", max_length=200)


class ChangeBody(Closed):
    """Only the fields given change; `level_days: null` puts the product back out of
    the figures."""

    reason: Written | None = None
    risk_assessment: Written | None = None
    measures: Written | None = None
    review_date: date | None = None
    level_days: Level = None
    decided_by: str | None = Field(default=None, min_length=1, max_length=100)


class RevokeBody(Closed):
    reason: Written


class ExemptionList(BaseModel):
    exemptions: list[ExemptionRecord]


@router.get(
    "/exemptions",
    summary="Exemptions from the stock duty",
    description="Active ones by product name; `include_revoked` adds the revoked. "
    "Role: viewer or above.",
    response_model=ExemptionList,
    responses=responses(401, 403, 422),
    openapi_extra=_VIEWER,
)
async def exemptions_list(
    ctx: Context,
    user: Viewer,
    include_revoked: Annotated[bool, Query(description="the revoked ones too")] = False,
) -> ExemptionList:
    return ExemptionList(exemptions=await ctx.read(ctx.ledger.exemptions_list, include_revoked))


@router.get(
    "/exemptions/{gtin}",
    summary="One product's exemption",
    description="Active or revoked. Role: viewer or above.",
    response_model=ExemptionRecord,
    responses=responses(401, 403, 404, 422),
    openapi_extra=_VIEWER,
)
async def exemption(gtin: GtinPath, ctx: Context, user: Viewer) -> ExemptionRecord:
    try:
        return await ctx.read(ctx.ledger.exemption, gtin)
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.post(
    "/exemptions",
    summary="Exempt a product, or lower its level",
    description="The special reason, the risk assessment and the measures written out; "
    "the review date after today; `level_days` 0-29 lowers the level instead of leaving "
    "the product out. A product with an active exemption is refused (409): change it. "
    "Role: pharmacist or above.",
    status_code=201,
    response_model=ExemptionRecord,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def create_exemption(body: ExemptionBody, ctx: Context, user: Pharmacist) -> ExemptionRecord:
    try:
        return await ctx.write(
            ctx.ledger.create_exemption,
            body.gtin,
            reason=body.reason,
            risk_assessment=body.risk_assessment,
            measures=body.measures,
            review_date=body.review_date,
            level_days=body.level_days,
            decided_by=body.decided_by or user.name,
            actor=user.name,
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.post(
    "/exemptions/{gtin}/review",
    summary="Record a review of an exemption and its next review date",
    description="Role: pharmacist or above.",
    response_model=ExemptionRecord,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def review_exemption(
    gtin: GtinPath, body: ReviewBody, ctx: Context, user: Pharmacist
) -> ExemptionRecord:
    try:
        return await ctx.write(
            ctx.ledger.review_exemption,
            gtin,
            review_date=body.review_date,
            actor=user.name,
            note=body.note,
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.patch(
    "/exemptions/{gtin}",
    summary="Change an active exemption",
    description="Only the fields given change; the change is a new decision by the "
    "caller (or `decided_by`). Role: pharmacist or above.",
    response_model=ExemptionRecord,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def change_exemption(
    gtin: GtinPath, body: ChangeBody, ctx: Context, user: Pharmacist
) -> ExemptionRecord:
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    try:
        return await ctx.write(ctx.ledger.change_exemption, gtin, actor=user.name, **fields)
    except LedgerError as exc:
        raise duty_refusal(exc) from None


@router.post(
    "/exemptions/{gtin}/revoke",
    summary="Revoke an exemption: the product counts in full again",
    description="Role: pharmacist or above.",
    response_model=ExemptionRecord,
    responses=responses(401, 403, 404, 409, 422),
    openapi_extra=_PHARMACIST,
)
async def revoke_exemption(
    gtin: GtinPath, body: RevokeBody, ctx: Context, user: Pharmacist
) -> ExemptionRecord:
    try:
        return await ctx.write(
            ctx.ledger.revoke_exemption, gtin, reason=body.reason, actor=user.name
        )
    except LedgerError as exc:
        raise duty_refusal(exc) from None
