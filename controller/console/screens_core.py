"""Sign-in with an API token, sign-out, the language switch, and the start page:
what waits for the signed-in user now."""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from controller.api.auth import Role
from controller.console import i18n
from controller.console.sessions import COOKIE
from controller.console.web import (
    PREFIX,
    Refused,
    act,
    console,
    context,
    field,
    page,
    read_form,
    refused,
    render,
)

log = logging.getLogger("doseline.console")
router = APIRouter()
LOGIN_COOKIE = "doseline_console_login"


def _secure(request: Request) -> bool:
    setting = console(request).secure_cookie
    return request.url.scheme == "https" if setting is None else setting


def _safe_next(target: str) -> str:
    """Only a path inside the console: never another host (an open redirect)."""
    if target.startswith(PREFIX + "/") and "//" not in target and "\\" not in target:
        return target
    return PREFIX + "/"


@router.get("/login")
async def login_form(request: Request, next: str = "") -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, nonce=nonce, next=_safe_next(next), error="")
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path=PREFIX,
    )
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    try:
        form = await read_form(request)
    except Refused as exc:
        return refused(request, None, exc.status, exc.message)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    presented = field(form, "csrf")
    if not nonce or not hmac.compare_digest(nonce.encode(), presented.encode("utf-8")):
        return refused(request, None, 403, "the sign-in form's CSRF token is missing or wrong")
    token = field(form, "token").strip()
    user = context(request).tokens.lookup(token) if token else None
    target = _safe_next(field(form, "next"))
    if user is None:
        log.warning("console: a sign-in with an unknown token was refused")
        fresh = secrets.token_urlsafe(24)
        response = render(
            request, "login.html", None, status=401, nonce=fresh, next=target, error="unknown"
        )
        response.set_cookie(
            LOGIN_COOKIE,
            fresh,
            max_age=600,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            path=PREFIX,
        )
        return response
    session = console(request).sessions.create(user)
    log.info("console: %s signed in", user.name)
    redirect = RedirectResponse(target, status_code=303)
    redirect.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    redirect.set_cookie(
        COOKIE,
        session.sid,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path=PREFIX,
    )
    return redirect


@router.post("/logout")
async def logout(request: Request) -> Response:
    got = await act(request, Role.VIEWER)
    if isinstance(got, Response):
        return got
    session, _form = got
    console(request).sessions.drop(session.sid)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.post("/language")
async def language(request: Request) -> Response:
    got = await act(request, Role.VIEWER)
    if isinstance(got, Response):
        return got
    session, form = got
    lang = field(form, "lang")
    if lang not in i18n.LANGUAGES:
        return refused(request, session, 422, f"lang: {lang[:20]!r} is not one of en, sv")
    session.lang = lang
    return RedirectResponse(_safe_next(field(form, "next")), status_code=303)


async def waiting(request: Request, role: Role) -> dict[str, Any]:
    """Counts of the work that waits, for the roles the user has."""
    ctx = context(request)
    running = ctx.running
    found: dict[str, Any] = {"lists": [], "fills": 0, "purchase_orders": 0}
    if role >= Role.TECHNICIAN and running is not None:
        found["lists"] = running.refills.open_pick_lists()
        found["fills"] = len(running.refills.open_tickets())
    if role >= Role.TECHNICIAN:
        from controller.console.screens_technician import purchasing_store

        orders = await ctx.read(purchasing_store(ctx).orders, status=None)
        found["purchase_orders"] = sum(o.status in ("open", "partial") for o in orders)
    if role >= Role.PHARMACIST:
        found["pending"] = len(await ctx.read(ctx.store.orders, status="pending"))
        found["holds"] = len(await ctx.read(ctx.ledger.holds))
        found["discrepancies"] = await ctx.read(ctx.ledger.open_discrepancy_count)
        from controller.console.screens_pharmacist import verification_store

        found["alerts"] = len(await ctx.read(verification_store(ctx).alerts))
    return found


@router.get("/")
async def home(request: Request) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    return render(request, "home.html", session, waits=await waiting(request, session.user.role))


@router.get("/fragments/home")
async def home_fragment(request: Request) -> Response:
    session, response = await page(Role.VIEWER)(request)
    if response is not None:
        return response
    assert session is not None
    return render(request, "_home.html", session, waits=await waiting(request, session.user.role))
