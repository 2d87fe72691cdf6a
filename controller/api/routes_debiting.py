"""Ward debiting over HTTP: the same report as `doseline report debiting`
(controller.ledger.debiting), as JSON or as the finance CSV."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Response

from controller.api.auth import Role
from controller.api.context import Context, Pharmacist, role_note
from controller.api.errors import ApiError, responses
from controller.ledger import debiting
from controller.ledger.errors import LedgerError

router = APIRouter(prefix="/debiting", tags=["debiting"])


@router.get(
    "",
    summary="Ward debiting: consumption per ward and cost centre in a calendar month",
    description="Net consumption (pouches and cabinet withdrawals) per cost centre, ward, "
    "product and lot, valued at the lots' purchase prices, with the reconciliation against "
    "the ledger. `format=csv` gives the finance export (docs/ward-debiting.md). "
    "Role: pharmacist or above.",
    response_model=debiting.DebitingReport,
    responses={
        **responses(401, 403, 422),
        200: {"content": {"text/csv": {}}, "description": "the report (JSON) or the export"},
    },
    openapi_extra=role_note(Role.PHARMACIST),
)
async def ward_debiting(
    ctx: Context,
    _user: Pharmacist,
    month: Annotated[
        str | None,
        Query(max_length=10, description="YYYY-MM (default: the last whole month, site time)"),
    ] = None,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> debiting.DebitingReport | Response:
    site = ctx.site
    tz = site.site.timezone
    try:
        if month is None:
            first = datetime.now(ZoneInfo(tz)).date().replace(day=1)
            day = first - timedelta(days=1)
        else:
            day = debiting.parse_month(month)
    except LedgerError as exc:
        raise ApiError(422, str(exc), field="month", value=month) from None
    try:
        report = await ctx.read(
            debiting.ward_debiting,
            ctx.ledger,
            month=day,
            tz=tz,
            wards=site.ward_map(),
            cabinets=site.cabinet_wards(),
        )
    except LedgerError as exc:
        raise ApiError(422, str(exc)) from None
    if format == "csv":
        return Response(
            debiting.debiting_csv_text(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="debiting-{report.month}.csv"'},
        )
    return report
