"""Pharmacist screens: dose-order review, verification alerts, cold-chain holds,
open discrepancies and the audit trail. Each action calls the same store method as
the API route and the CLI command, with the signed-in user as the actor."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from controller.api.auth import Role
from controller.api.context import ApiContext
from controller.console.web import PREFIX, act, context, field, page, refused, render, screen
from controller.ledger import LedgerError
from controller.ledger.audit_search import search_audit
from controller.packing.store import OrderReviewError
from controller.verification import VerificationStore

log = logging.getLogger("doseline.console")
router = APIRouter()

screen("/orders", "Dose orders", Role.PHARMACIST, "pharmacist")
screen("/alerts", "Verification alerts", Role.PHARMACIST, "pharmacist")
screen("/holds", "Cold-chain holds", Role.PHARMACIST, "pharmacist")
screen("/discrepancies", "Discrepancies", Role.PHARMACIST, "pharmacist")
screen("/audit", "Audit trail", Role.PHARMACIST, "pharmacist")

MAX_NOTE = 200


def verification_store(ctx: ApiContext) -> VerificationStore:
    service = ctx.controller.verification if ctx.controller is not None else None
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
        search_audit,
        ctx.ledger.engine,
        text_terms=[t for t in (product_term, filters["lot"], filters["location"]) if t],
        actor=filters["user"] or None,
        since=datetime.combine(start, datetime.min.time(), UTC) if start else None,
        until=(datetime.combine(end, datetime.min.time(), UTC) + timedelta(days=1))
        if end
        else None,
        limit=200,
    )
    return render(request, "audit.html", session, rows=rows, filters=filters)
