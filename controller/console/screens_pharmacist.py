"""Pharmacist screens: dose-order review (approve, reject, reduce, substitute),
verification alerts, cold-chain holds, open discrepancies, the stock-duty exemptions
(create, review, change, revoke) and the audit trail. Each action calls the same store
method as the API route and the CLI command, with the signed-in user as the actor."""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from controller.api.audit_reader import read_audit
from controller.api.auth import Role
from controller.api.context import ApiContext
from controller.api.models import MAX_ORDER_ID
from controller.console.web import PREFIX, act, context, field, page, refused, render, screen
from controller.ledger import LedgerError, UnknownEntity, reports
from controller.packing.store import OrderRecord, OrderReviewError
from controller.verification import VerificationStore

log = logging.getLogger("doseline.console")
router = APIRouter()

screen("/orders", "Dose orders", Role.PHARMACIST, "pharmacist")
screen("/alerts", "Verification alerts", Role.PHARMACIST, "pharmacist")
screen("/holds", "Cold-chain holds", Role.PHARMACIST, "pharmacist")
screen("/discrepancies", "Discrepancies", Role.PHARMACIST, "pharmacist")
screen("/exemptions", "Stock-duty exemptions", Role.PHARMACIST, "pharmacist")
screen("/audit", "Audit trail", Role.PHARMACIST, "pharmacist")

MAX_NOTE = 200


def verification_store(ctx: ApiContext) -> VerificationStore:
    service = ctx.running.verification if ctx.running is not None else None
    return service.store if service is not None else VerificationStore(ctx.ledger)


def _ids(values: list[str], name: str) -> list[int]:
    ids = []
    for value in values:
        if not value.isdigit() or len(value) > 10:
            raise ValueError(f"{name}: {value[:20]!r} is not an id")
        ids.append(int(value))
    return ids


def _note(form: dict[str, list[str]], required: bool) -> str:
    note = field(form, "note").strip()
    if required and not note:
        raise ValueError("note: a reason is needed")
    if len(note) > MAX_NOTE:
        raise ValueError(f"note: longer than {MAX_NOTE} characters")
    return note


def _done(path: str, session_flash: list[tuple[str, str]], kind: str, text: str) -> Response:
    session_flash.append((kind, text))
    return RedirectResponse(f"{PREFIX}{path}", status_code=303)


# ----------------------------------------------------------------------- dose orders


@router.get("/orders")
async def orders(request: Request) -> Response:
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    pending = await ctx.read(ctx.store.orders, status="pending")
    recent = [
        r
        for r in await ctx.read(ctx.store.orders, status=None)
        if r.status != "pending" and r.reviewed_at is not None
    ][-20:]
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    wards = {w.code: w.name for w in ctx.site.wards}
    return render(
        request,
        "orders.html",
        session,
        pending=pending,
        recent=recent,
        names=names,
        wards=wards,
    )


@router.post("/orders/review")
async def review(request: Request) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    decision = field(form, "decision")
    if decision not in ("approve", "reject"):
        return refused(request, session, 422, f"decision: {decision[:20]!r} is not approve/reject")
    try:
        ids = _ids(form.get("order", []), "order")
        if not ids:
            raise ValueError("order: tick at least one order")
        note = _note(form, required=decision == "reject")
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    try:
        count = await ctx.write(
            ctx.store.review,
            ids,
            approve=decision == "approve",
            actor=session.user.name,
            note=note,
        )
    except OrderReviewError as exc:
        return refused(request, session, 409, str(exc))
    log.info("console: %s %sd %d orders", session.user.name, decision, count)
    key = "approved" if decision == "approve" else "rejected"
    return _done("/orders", session.flash, key, str(count))


MAX_UNITS = 20  # a dose order's units per administration (DoseOrder)
_ORDER = re.compile(r"^order \d+: (no such order)?")


async def _pending(ctx: ApiContext, order_id: int) -> OrderRecord | None:
    if not 1 <= order_id <= MAX_ORDER_ID:
        return None
    pending = await ctx.read(ctx.store.orders, status="pending")
    return next((r for r in pending if r.id == order_id), None)


@router.get("/orders/{order_id}/amend")
async def amend_form(request: Request, order_id: int) -> Response:
    """One pending order, to approve reduced (fewer units per administration) or
    substituted (another product of its substitution group), with a reason."""
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    record = await _pending(ctx, order_id)
    if record is None:
        return refused(request, session, 404, f"order {order_id}: no pending order")
    substitutes = await ctx.read(ctx.store.substitutes, record.order.gtin)
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    wards = {w.code: w.name for w in ctx.site.wards}
    return render(
        request,
        "orders_amend.html",
        session,
        r=record,
        substitutes=substitutes,
        names=names,
        wards=wards,
    )


@router.post("/orders/{order_id}/amend")
async def amend(request: Request, order_id: int) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    if not 1 <= order_id <= MAX_ORDER_ID:
        return refused(request, session, 404, f"order {order_id}: no such order")
    decision = field(form, "decision")
    units: int | None = None
    gtin: str | None = None
    try:
        if decision not in ("reduce", "substitute"):
            raise ValueError(f"decision: {decision[:20]!r} is not reduce/substitute")
        text = field(form, "units").strip()
        if text:
            if not text.isdigit() or int(text) > MAX_UNITS:
                raise ValueError(f"units: {text[:20]!r} is not a whole number from 1 to 20")
            units = int(text)
        if decision == "reduce" and units is None:
            raise ValueError("units: a reduction needs the units per administration")
        if decision == "substitute":
            gtin = field(form, "substitute").strip()
            if not gtin.isdigit() or len(gtin) != 14:
                raise ValueError(f"substitute: {gtin[:20]!r} is not a GTIN")
        note = _note(form, required=True)
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    try:
        await ctx.write(
            ctx.store.amend, order_id, units=units, gtin=gtin, actor=session.user.name, note=note
        )
    except OrderReviewError as exc:
        about = _ORDER.match(str(exc))
        status = 422 if about is None else 404 if about.group(1) else 409
        return refused(request, session, status, str(exc))
    log.info("console: %s amended order %d (%s)", session.user.name, order_id, decision)
    return _done("/orders", session.flash, "amended", str(order_id))


# ----------------------------------------------------------------- verification alerts


@router.get("/alerts")
async def alerts(request: Request) -> Response:
    return await _alerts(request, "alerts.html")


@router.get("/fragments/alerts")
async def alerts_fragment(request: Request) -> Response:
    return await _alerts(request, "_alerts.html")


async def _alerts(request: Request, template: str) -> Response:
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    rows = await ctx.read(verification_store(ctx).alerts, status="open")
    return render(request, template, session, alerts=rows)


@router.post("/alerts/{alert_id}/close")
async def close_alert(request: Request, alert_id: int) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    try:
        note = _note(form, required=True)
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    try:
        await ctx.write(
            verification_store(ctx).close_alert, alert_id, actor=session.user.name, note=note
        )
    except LedgerError as exc:
        return refused(request, session, 409, str(exc))
    return _done("/alerts", session.flash, "closed", str(alert_id))


# ------------------------------------------------------------------- cold-chain holds


@router.get("/holds")
async def holds(request: Request) -> Response:
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    rows = await ctx.read(ctx.ledger.holds)
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    return render(request, "holds.html", session, holds=rows, names=names)


@router.post("/holds/{hold_id}/{decision}")
async def decide_hold(request: Request, hold_id: int, decision: str) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    if decision not in ("release", "waste"):
        return refused(request, session, 404, f"decision: {decision[:20]!r} is not release/waste")
    try:
        note = _note(form, required=True)
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    try:
        if decision == "release":
            await ctx.write(ctx.ledger.release_hold, hold_id, actor=session.user.name, note=note)
        else:
            await ctx.write(
                ctx.ledger.waste_hold,
                f"waste-hold:{hold_id}",
                hold_id,
                actor=session.user.name,
                note=note,
            )
    except LedgerError as exc:
        return refused(request, session, 409, str(exc))
    return _done(
        "/holds", session.flash, "released" if decision == "release" else "wasted", str(hold_id)
    )


# ---------------------------------------------------------------------- discrepancies


@router.get("/discrepancies")
async def discrepancies(request: Request) -> Response:
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    rows = await ctx.read(ctx.ledger.discrepancies)
    names = {p.gtin: p.name for p in ctx.site.catalogue}
    return render(request, "discrepancies.html", session, rows=rows, names=names)


@router.post("/discrepancies/{discrepancy_id}/resolve")
async def resolve(request: Request, discrepancy_id: int) -> Response:
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    try:
        note = _note(form, required=True)
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    try:
        await ctx.write(
            ctx.ledger.resolve_discrepancy, discrepancy_id, actor=session.user.name, note=note
        )
    except LedgerError as exc:
        return refused(request, session, 409, str(exc))
    return _done("/discrepancies", session.flash, "resolved", str(discrepancy_id))


# ------------------------------------------------------------------ stock-duty exemptions


@router.get("/exemptions")
async def exemptions(request: Request) -> Response:
    """The exemptions the ledger holds, read from the cover report (which marks an
    exemption whose review date has passed), with each product's cover; when each was
    decided comes from the audit trail, written in the same transaction."""
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    now = datetime.now(UTC)
    report = await ctx.read(reports.days_of_cover, ctx.ledger, now=now, obligation_days=30)
    # the overdue first, then by review date: what needs a decision soonest on top
    rows = [(r, r.exemption) for r in report.rows if r.exemption is not None]
    exempt = {r.gtin for r, _e in rows}
    products = [(r.gtin, r.name) for r in report.rows if r.gtin not in exempt]
    rows.sort(key=lambda pair: (not pair[1].review_overdue, pair[1].review_date, pair[0].name))
    trail = await ctx.read(read_audit, ctx.queries.audit, entity="exemption", limit=1000)
    decided = {e.key: e.ts for e in trail}  # chain order: the latest decision wins
    tz = ZoneInfo(ctx.site.site.timezone)

    def local(moment: datetime) -> str:
        """A ledger time (UTC) as the site's local time."""
        aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        return aware.astimezone(tz).strftime("%Y-%m-%d %H:%M")

    return render(
        request,
        "exemptions.html",
        session,
        rows=rows,
        overdue=sum(1 for _row, e in rows if e.review_overdue),
        decided=decided,
        local=local,
        obligation_days=report.obligation_days,
        products=products,
        tomorrow=(datetime.now(tz).date() + timedelta(days=1)).isoformat(),
    )


def _level(form: dict[str, list[str]]) -> int | None:
    text = field(form, "level_days").strip()
    if not text:
        return None
    if not text.isdigit() or len(text) > 3:
        raise ValueError(f"level_days: {text[:20]!r} is not a whole number of days")
    return int(text)


def _review_date(form: dict[str, list[str]]) -> date:
    text = field(form, "review_date").strip()
    day = _day(text, "review_date")
    if day is None:
        raise ValueError("review_date: a review date is needed")
    return day


def _exemption_fields(form: dict[str, list[str]]) -> dict[str, object]:
    return {
        "reason": field(form, "reason"),
        "risk_assessment": field(form, "risk_assessment"),
        "measures": field(form, "measures"),
        "review_date": _review_date(form),
        "level_days": _level(form),
    }


def _duty_status(exc: LedgerError) -> int:
    kind = getattr(exc, "kind", None)
    if isinstance(exc, UnknownEntity) or kind == "missing":
        return 404
    return 409 if kind == "conflict" else 422


@router.post("/exemptions/{action}")
async def decide_exemption(request: Request, action: str) -> Response:
    """Creates an exemption (`action` create), or reviews, changes or revokes one
    (`action` review, change or revoke, with the product's `gtin` in the form)."""
    got = await act(request, Role.PHARMACIST)
    if isinstance(got, Response):
        return got
    session, form = got
    ctx = context(request)
    led = ctx.ledger
    actor = session.user.name
    gtin = field(form, "gtin").strip()
    if action not in ("create", "review", "change", "revoke"):
        return refused(
            request, session, 404, f"action: {action[:20]!r} is not create/review/change/revoke"
        )
    try:
        if action == "create":
            await ctx.write(led.create_exemption, gtin, actor=actor, **_exemption_fields(form))
        elif action == "review":
            note = _note(form, required=False)
            await ctx.write(
                led.review_exemption, gtin, review_date=_review_date(form), actor=actor, note=note
            )
        elif action == "change":
            await ctx.write(led.change_exemption, gtin, actor=actor, **_exemption_fields(form))
        else:
            await ctx.write(led.revoke_exemption, gtin, reason=field(form, "reason"), actor=actor)
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    except LedgerError as exc:
        return refused(request, session, _duty_status(exc), str(exc))
    return _done("/exemptions", session.flash, f"exemption-{action}", gtin)


# ------------------------------------------------------------------------ audit trail


def _day(text: str, name: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {text[:20]!r} is not a date (YYYY-MM-DD)") from None


@router.get("/audit")
async def audit(
    request: Request,
    product: str = "",
    lot: str = "",
    location: str = "",
    user: str = "",
    since: str = "",
    until: str = "",
) -> Response:
    session, response = await page(Role.PHARMACIST)(request)
    if response is not None:
        return response
    assert session is not None
    ctx = context(request)
    filters = {
        "product": product[:100],
        "lot": lot[:100],
        "location": location[:100],
        "user": user[:100],
        "since": since[:10],
        "until": until[:10],
    }
    try:
        start = _day(filters["since"], "since")
        end = _day(filters["until"], "until")
    except ValueError as exc:
        return refused(request, session, 422, str(exc))
    product_term = filters["product"]
    if product_term and not product_term.isdigit():  # a name: its GTIN is what rows hold
        named = [p.gtin for p in ctx.site.catalogue if product_term.lower() in p.name.lower()]
        product_term = named[0] if named else product_term
    rows = await ctx.read(
        ctx.queries.audit.search,
        text_terms=[t for t in (product_term, filters["lot"], filters["location"]) if t],
        actor=filters["user"] or None,
        since=datetime.combine(start, datetime.min.time(), UTC) if start else None,
        until=(datetime.combine(end, datetime.min.time(), UTC) + timedelta(days=1))
        if end
        else None,
        limit=200,
    )
    return render(request, "audit.html", session, rows=rows, filters=filters)
