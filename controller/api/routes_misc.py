"""Cabinet refills and scans, the audit trail, and health."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from controller.api.audit_reader import read_audit
from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, Technician, Viewer, role_note
from controller.api.errors import ApiError, responses
from controller.api.models import AuditList, Health, RefillList, ScanRequest, ScanResult, Text
from controller.cabinets.refill_store import OPEN_REFILL_STATES
from controller.ledger import LedgerError

log = logging.getLogger("doseline.api")
refills_router = APIRouter(tags=["refills"])
audit_router = APIRouter(tags=["audit"])
health_router = APIRouter(tags=["health"])

GROUP_SEPARATOR = "\x1d"


@refills_router.get(
    "/refills",
    summary="Pocket refills",
    description="Open refills (reserved, picking, booked), or with `all` also confirmed "
    "and cancelled ones. Role: viewer or above.",
    response_model=RefillList,
    responses=responses(401, 403, 404, 422),
    openapi_extra=role_note(Role.VIEWER),
)
async def list_refills(
    ctx: Context,
    _user: Viewer,
    cabinet: Annotated[Text | None, Query(max_length=100, description="only this cabinet")] = None,
    include_closed: Annotated[
        bool, Query(alias="all", description="confirmed and cancelled ones too")
    ] = False,
) -> RefillList:
    if cabinet is not None and cabinet not in {c.name for c in ctx.site.cabinets}:
        raise ApiError(404, f"unknown cabinet: {cabinet!r}", field="cabinet", value=cabinet)
    rows = await ctx.read(
        ctx.refills.refills, states=None if include_closed else OPEN_REFILL_STATES
    )
    if cabinet is not None:
        rows = [r for r in rows if r.cabinet == cabinet]
    return RefillList(count=len(rows), refills=rows)


@refills_router.post(
    "/refills/scan",
    summary="A scan from a handheld",
    description="Hands a scanned code to the running controller's scan router, exactly as "
    "a serial scanner's scan: a pick list, a pocket label, a pack (GS1), or a canister "
    "refill ticket and its pack. A refused scan is a normal answer (`accepted: false`, "
    "with the reason). Role: technician or above.",
    response_model=ScanResult,
    responses=responses(401, 403, 409, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def scan(body: ScanRequest, ctx: Context, user: Technician) -> ScanResult:
    scans = ctx.need_running("a scan").scans
    data = body.data.replace("<GS>", GROUP_SEPARATOR)
    try:
        outcome = await scans.scan(body.station, data)
    except LedgerError as exc:
        log.error("api: scan at %s could not be booked: %s", body.station, exc)
        raise ApiError(409, f"the scan could not be booked: {exc}", field="data") from None
    log.info(
        "api: scan by %s at station %s: %s",
        user.name,
        body.station,
        "accepted" if outcome.accepted else "refused",
    )
    return ScanResult(accepted=outcome.accepted, message=outcome.message, ref=outcome.ref)


@audit_router.get(
    "/audit",
    summary="The audit trail",
    description="Rows of the hash-chained audit trail in chain order: with `since` or "
    "`after`, the first `limit` rows from there; without, the latest `limit` rows. "
    "Role: pharmacist or above.",
    response_model=AuditList,
    responses=responses(401, 403, 422),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def audit(
    ctx: Context,
    _user: Pharmacist,
    entity: Annotated[
        Text | None,
        Query(max_length=30, description="dose_order, packing_job, movement, pocket_refill..."),
    ] = None,
    key: Annotated[Text | None, Query(max_length=200, description="the entity's key")] = None,
    since: Annotated[
        datetime | None, Query(description="from this moment, ISO 8601 (no offset: UTC)")
    ] = None,
    after: Annotated[int | None, Query(ge=0, description="after this sequence number")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    if since is not None:
        since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    entries = await ctx.read(
        read_audit,
        ctx.queries.audit,
        entity=entity,
        key=key,
        since=since,
        after=after,
        limit=limit,
    )
    return AuditList(count=len(entries), entries=entries)


@health_router.get(
    "/health",
    summary="Liveness and readiness",
    description="No token needed. 503 when the ledger does not answer.",
    response_model=Health,
    responses={503: {"model": Health, "description": "The ledger does not answer"}},
)
async def health(ctx: Context) -> Health | JSONResponse:
    try:
        ledger_ok = await ctx.read(ctx.queries.health.ledger_answers)
    except Exception as exc:  # any failure: not ready
        log.warning("api: health: ledger not answering: %s", type(exc).__name__)
        ledger_ok = False
    running = ctx.running
    packers = running.machines.packer_links() if running is not None else {}
    body = Health(
        status="ok" if ledger_ok else "degraded",
        site=ctx.site.site.name,
        version=ctx.version,
        ledger=ledger_ok,
        controller=running is not None,
        packers=packers,
    )
    if not ledger_ok:
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body
