"""What every console screen needs: templates rendered in the request's language,
the signed-in user from the session cookie, forms read with a size limit and their
CSRF token checked, and the registry of screens the navigation is built from.

A new screen is one template and one small route module: it calls `screen(...)` for
its navigation entry and uses `page`, `act` and `render` from here."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from controller.api.auth import Role, User
from controller.api.context import ApiContext
from controller.console import i18n
from controller.console.sessions import COOKIE, Session, Sessions

PREFIX = "/console"
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 400
MAX_FIELD_CHARS = 4000

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Screen:
    """A navigation entry: its path under /console, its title (a catalogue msgid),
    the least role that sees it, and its group in the menu."""

    path: str
    title: str
    role: Role
    group: str  # "everyone", "technician", "pharmacist"


SCREENS: list[Screen] = []


def screen(path: str, title: str, role: Role, group: str) -> None:
    if all(s.path != path for s in SCREENS):
        SCREENS.append(Screen(path, title, role, group))


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        i18n.gettext, i18n.ngettext, newstyle=True
    )
    env.globals["PREFIX"] = PREFIX
    env.globals["Role"] = Role
    return env


class Refused(Exception):
    """An action the console refuses before any service is called (a bad field)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Console:
    env: jinja2.Environment
    sessions: Sessions
    secure_cookie: bool | None


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def _language(request: Request, session: Session | None) -> str:
    if session is not None and session.lang:
        return session.lang
    return i18n.negotiate(request.headers.get("accept-language"))


def render(
    request: Request,
    template: str,
    session: Session | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    """Renders a page or a fragment in the request's language."""
    lang = _language(request, session)
    i18n.set_language(lang)
    user = session.user if session is not None else None
    flash: list[tuple[str, str]] = []
    if session is not None and not template.startswith("_"):
        flash, session.flash = session.flash, []
    html = (
        console(request)
        .env.get_template(template)
        .render(
            request_path=request.url.path,
            lang=lang,
            user=user,
            csrf=session.csrf if session is not None else "",
            screens=[s for s in SCREENS if user is not None and user.may(s.role)],
            may=(lambda role: user is not None and user.may(role)),
            flash=flash,
            **values,
        )
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def signed_in(request: Request) -> Session | None:
    return console(request).sessions.get(request.cookies.get(COOKIE))


def to_login(request: Request) -> Response:
    """A browser goes to the sign-in page; a fragment poll is told with 401."""
    if request.headers.get("x-console-fragment"):
        return Response(status_code=401)
    target = urllib.parse.quote(request.url.path, safe="/")
    return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)


async def read_form(request: Request) -> dict[str, list[str]]:
    """A urlencoded form body of at most MAX_FORM_BYTES; a larger one is 413, a
    malformed one 422, another content type 415."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(415, f"Content-Type {kind or '(none)'!r}: a form is expected")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise Refused(413, f"form of {declared} bytes is larger than {MAX_FORM_BYTES}")
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise Refused(413, f"form is larger than {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise Refused(422, "form: not UTF-8 or too many fields") from None
    form: dict[str, list[str]] = {}
    for key, value in pairs:
        if "\x00" in value or "\x00" in key:
            raise Refused(422, f"{key[:40]}: NUL characters are not accepted")
        if len(value) > MAX_FIELD_CHARS:
            raise Refused(422, f"{key[:40]}: longer than {MAX_FIELD_CHARS} characters")
        form.setdefault(key, []).append(value)
    return form


def field(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


def page(
    role: Role,
) -> Callable[[Request], Awaitable[tuple[Session | None, Response | None]]]:
    """For a GET: the session when its user has `role`; else a response (sign-in, 403)."""

    async def check(request: Request) -> tuple[Session | None, Response | None]:
        session = signed_in(request)
        if session is None:
            return None, to_login(request)
        if not session.user.may(role):
            return session, render(request, "refused.html", session, status=403, needed=role.label)
        return session, None

    return check


async def act(request: Request, role: Role) -> tuple[Session, dict[str, list[str]]] | Response:
    """For a POST: the session and the form when the cookie, the CSRF token and the
    role all hold; otherwise the refusal, before any service is called."""
    session = signed_in(request)
    try:
        form = await read_form(request)
    except Refused as exc:
        return refused(request, session, exc.status, exc.message)
    if session is None:
        return refused(request, None, 401, "not signed in, or the session timed out")
    if not session.csrf_ok(field(form, "csrf")):
        return refused(request, session, 403, "the form's CSRF token is missing or wrong")
    if not session.user.may(role):
        return refused(
            request,
            session,
            403,
            f"role {role.label} or above is needed; {session.user.name} has role "
            f"{session.user.role.label}",
        )
    return session, form


def refused(request: Request, session: Session | None, status: int, message: str) -> Response:
    return render(request, "error.html", session, status=status, message=message)


def user_of(session: Session) -> User:
    return session.user
