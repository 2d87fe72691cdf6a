"""Pack verification (EU falsified-medicines rules) over HTTP: the alerts a pharmacist
follows up, the requests queued for the verification system, a pack's status, and the
undo of a decommission. The same data as `doseline verification ...`
(docs/verification.md)."""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError

from controller.api.auth import Role
from controller.api.context import ApiContext, Context, Pharmacist, Technician, role_note
from controller.api.errors import ApiError, responses
from controller.api.models import Closed, Text, one_of
from controller.config import valid_gtin
from controller.ledger import LedgerError
from controller.ledger.states import AlertStatus as AlertState
from controller.ledger.states import PackStatus as PackState
from controller.ledger.states import VerificationRequestStatus
from controller.verification import VerificationStore, VerificationUnavailable

if TYPE_CHECKING:
    from controller.verification import VerificationService

log = logging.getLogger("doseline.api")
router = APIRouter(prefix="/verification", tags=["verification"])

MAX_NOTE = 200  # the audit trail keeps a reason of up to 200 characters
MAX_SERIAL = 20  # GS1 AI (21): up to 20 characters
MAX_ID = 2**31 - 1  # the alerts' id column

if TYPE_CHECKING:
    AlertStatus = str
    AlertStatusFilter = str
    QueueStatus = str
    QueueStatusFilter = str
    PackStatusName = str
else:
    AlertStatus = one_of(AlertState)
    AlertStatusFilter = one_of(AlertState, ["all"])
    QueueStatus = one_of(VerificationRequestStatus)
    QueueStatusFilter = one_of(VerificationRequestStatus, ["all"])
    PackStatusName = one_of(PackState)


# ----------------------------------------------------------------------------- models


class _Rows(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Alert(_Rows):
    id: int
    gtin: str
    serial: str
    code: str = Field(description="the system's alert code: RECALLED, UNKNOWN_SERIAL, ...")
    message: str = Field(description="the system's own text")
    raised_at: datetime
    status: AlertStatus
    closed_by: str | None = Field(description="the user who closed it")
    note: str | None = Field(description="what the pharmacist found or did")


class AlertList(BaseModel):
    count: int
    alerts: list[Alert]


class QueuedRequest(_Rows):
    id: int
    key: str = Field(description="decommission:<gtin>:<serial>, one per serial")
    gtin: str
    serial: str
    operation: str = Field(description="decommission (the only operation queued today)")
    reason: str | None = Field(description="dispensed or supplied")
    created_at: datetime
    attempts: int = Field(description="sends so far")
    last_error: str | None = Field(description="the last outage, or the alert code")
    status: QueueStatus
    done_at: datetime | None


class QueueList(BaseModel):
    count: int
    requests: list[QueuedRequest]


class PackStatus(_Rows):
    gtin: str
    serial: str
    batch: str
    expiry: date
    status: PackStatusName
    location: str | None = Field(description="where it was verified or used")
    alert_code: str | None = Field(description="why it is blocked")
    alert_text: str | None
    verified_at: datetime | None
    decommissioned_at: datetime | None = Field(
        description="when the system confirmed the decommission; null while it is queued"
    )
    decommission_reason: str | None = Field(description="dispensed or supplied")


class CloseAlertRequest(Closed):
    note: str = Field(
        min_length=1, max_length=MAX_NOTE, description="what was found or done (required)"
    )


class UndoRequest(Closed):
    gtin: str = Field(min_length=1, max_length=14, description="8, 12, 13 or 14 digits")
    serial: str = Field(min_length=1, max_length=MAX_SERIAL, description="the serial (21)")


class UndoResult(BaseModel):
    gtin: str
    serial: str
    status: PackStatusName = Field(description="the pack's status now: verified")
    by: str = Field(description="the user who asked for the undo")
    audited: bool = Field(description="whether the request was written to the audit trail")


# ----------------------------------------------------------------------------- helpers


def _store(ctx: ApiContext) -> VerificationStore:
    service = ctx.running.verification if ctx.running is not None else None
    return service.store if service is not None else VerificationStore(ctx.ledger)


def _gtin(value: str) -> str:
    try:
        return valid_gtin(value)
    except ValueError as exc:
        raise ApiError(422, f"gtin: {exc}", field="gtin", value=value) from None


def _service(ctx: ApiContext, what: str) -> VerificationService:
    running = ctx.need_running(what)
    if running.verification is None:
        raise ApiError(
            409,
            "pack verification is not enabled on this site "
            "(set verification.enabled in the site file)",
            field="verification.enabled",
            value=False,
        )
    return running.verification


# ----------------------------------------------------------------------------- routes


@router.get(
    "/alerts",
    summary="Verification alerts",
    description="Alerts the verification system raised on packs (a recalled batch, an "
    "unknown serial...): `open` ones wait for a pharmacist. Oldest first. "
    "Role: technician or above.",
    response_model=AlertList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def list_alerts(
    ctx: Context,
    _user: Technician,
    status: Annotated[
        AlertStatusFilter, Query(description="open (default), closed or all")
    ] = "open",
) -> AlertList:
    rows = await ctx.read(_store(ctx).alerts, status=None if status == "all" else status)
    return AlertList(count=len(rows), alerts=[Alert.model_validate(r) for r in rows])


@router.post(
    "/alerts/{id}/close",
    summary="Close a verification alert",
    description="Records what was found or done (`note`, required) and closes the alert. "
    "The token's user is recorded as the one who closed it, in the alert and the audit "
    "trail. An alert already closed gives 409. The pack stays blocked, and a quarantined "
    "lot stays quarantined until it is released in the ledger. Role: pharmacist or above.",
    response_model=Alert,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def close_alert(
    ctx: Context,
    user: Pharmacist,
    body: CloseAlertRequest,
    alert_id: Annotated[int, Path(alias="id", ge=1, le=MAX_ID, description="the alert's id")],
) -> Alert:
    note = body.note.strip()
    if not note:
        raise ApiError(422, "note: say what was found or done", field="note", value=body.note)
    store = _store(ctx)
    try:
        row = await ctx.write(store.close_alert, alert_id, actor=user.name, note=note)
    except LedgerError as exc:
        # The store's message says why; the alert's row says which status to give.
        status = await ctx.read(ctx.queries.alerts.alert_status, alert_id)
        if status is None:
            raise ApiError(
                404, f"no such verification alert: {alert_id}", field="id", value=alert_id
            ) from None
        if status != "open":
            raise ApiError(
                409,
                f"verification alert {alert_id} is already {status}",
                field="id",
                value=alert_id,
            ) from None
        raise ApiError(409, str(exc), field="id", value=alert_id) from None
    log.info("api: %s closed verification alert %d", user.name, alert_id)
    return Alert.model_validate(row)


@router.get(
    "/queue",
    summary="Requests queued for the verification system",
    description="Decommissions written before they are sent: `pending` ones wait for the "
    "system (after an outage) and are retried by the running controller; `done` ones were "
    "confirmed; `failed` ones were answered with an alert. Oldest first. "
    "Role: technician or above.",
    response_model=QueueList,
    responses=responses(401, 403, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def list_queue(
    ctx: Context,
    _user: Technician,
    status: Annotated[
        QueueStatusFilter,
        Query(description="pending (default), done, failed or all"),
    ] = "pending",
) -> QueueList:
    rows = await ctx.read(_store(ctx).queue, status=None if status == "all" else status)
    return QueueList(count=len(rows), requests=[QueuedRequest.model_validate(r) for r in rows])


@router.get(
    "/packs/{gtin}/{serial:path}",
    summary="One pack's verification status",
    description="verified, blocked (with the alert) or decommissioned (with the time the "
    "system confirmed it; null while the decommission is queued). A pack this site never "
    "verified nor used gives 404. A serial may hold `/`; percent-encode `%`, `?` and `#`. "
    "Role: technician or above.",
    response_model=PackStatus,
    responses=responses(401, 403, 404, 422, 503),
    openapi_extra=role_note(Role.TECHNICIAN),
)
async def get_pack(
    ctx: Context,
    _user: Technician,
    gtin: Annotated[str, Path(max_length=14, description="8, 12, 13 or 14 digits")],
    serial: Annotated[Text, Path(min_length=1, max_length=MAX_SERIAL)],
) -> PackStatus:
    gtin = _gtin(gtin)
    row = await ctx.read(_store(ctx).pack, gtin, serial)
    if row is None:
        raise ApiError(404, f"unknown pack: {gtin} serial {serial!r}", field="serial", value=serial)
    return PackStatus.model_validate(row)


@router.post(
    "/undo",
    summary="Undo this site's decommission of a pack",
    description="Asks the verification system, through the running controller, to revert "
    "the decommission (allowed for 10 days; the system decides). The pack is `verified` "
    "again. A refusal (NOT_DECOMMISSIONED, UNDO_WINDOW_CLOSED, ...) gives 409 with the "
    "system's code and message; a decommission still queued gives 409 (NOT_SENT); an "
    "outage of the system gives 503, and nothing changes. Verification not enabled on the "
    "site gives 409. The request and its user go to the audit trail. "
    "Role: pharmacist or above.",
    response_model=UndoResult,
    responses=responses(401, 403, 404, 409, 422, 503),
    openapi_extra=role_note(Role.PHARMACIST),
)
async def undo(ctx: Context, user: Pharmacist, body: UndoRequest) -> UndoResult:
    gtin = _gtin(body.gtin)
    serial = body.serial
    service = _service(ctx, "an undo of a decommission")
    row = await ctx.read(service.store.pack, gtin, serial)
    if row is None:
        raise ApiError(404, f"unknown pack: {gtin} serial {serial!r}", field="serial", value=serial)
    try:
        result = await service.undo(row.pack, actor=user.name)
    except VerificationUnavailable as exc:
        log.warning("api: undo of %s/%s by %s: system unavailable", gtin, serial, user.name)
        raise ApiError(
            503,
            f"the verification system is unavailable, nothing was undone; try again: {exc}",
            field="serial",
            value=serial,
        ) from None
    except OperationalError as exc:
        log.error("api: undo of %s/%s: ledger: %s", gtin, serial, type(exc.orig).__name__)
        raise ApiError(503, "the ledger database is unreachable or busy; try again") from None
    except LedgerError as exc:
        raise ApiError(409, str(exc), field="serial", value=serial) from None
    if not result.ok:
        raise ApiError(
            409,
            f"undo of {gtin} serial {serial!r} refused ({result.code}): {result.message}",
            field="serial",
            value=serial,
        )
    # The store wrote the undo to the audit trail in its own transaction, with the
    # token's user as the actor.
    log.info("api: %s undid the decommission of %s/%s", user.name, gtin, serial)
    return UndoResult(gtin=gtin, serial=serial, status="verified", by=user.name, audited=True)
