"""The console without a browser: over HTTP in-process against a prepared ledger (no
controller running), for the screens and rules a browser adds nothing to: the holds,
discrepancies and stocktake actions, sessions that time out, the catalogue, the
templates' texts, and pages that reference no other host."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from jinja2.ext import babel_extract

from controller.api.audit_reader import read_audit
from controller.api.auth import Role, User
from controller.app import Controller
from controller.console import i18n
from controller.console.screens_technician import REFUSAL_KINDS
from controller.console.sessions import Sessions
from controller.console.web import SCREENS, TEMPLATES
from tests.console.conftest import TOKENS, USERS, console_in_process
from tests.sites import METO, PARA, job


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Controller]]:
    async with console_in_process(f"sqlite:///{tmp_path / 'ledger.db'}") as pair:
        yield pair


async def sign_in(http: httpx.AsyncClient, role: str) -> str:
    form = await http.get("/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce is not None
    r = await http.post("/console/login", data={"csrf": nonce.group(1), "token": TOKENS[role]})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    home = await http.get("/console/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', home.text)
    assert csrf is not None
    return csrf.group(1)


async def test_a_cold_chain_hold_is_released_or_wasted_by_the_signed_in_pharmacist(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, controller = console
    led = controller.ledger
    held = led.hold_location("hold:a01", "CENTRAL/A01", reason="fridge at 11 C", actor="cc")
    held2 = led.hold_location("hold:a02", "CENTRAL/A02", reason="fridge at 12 C", actor="cc")
    csrf = await sign_in(http, "pharmacist")
    page = await http.get("/console/holds")
    assert "fridge at 11 C" in page.text and "Metoprolol 50" in page.text
    first, second = held[0], held2[0]
    r = await http.post(f"/console/holds/{first.id}/release", data={"csrf": csrf, "note": ""})
    assert r.status_code == 422  # a decision needs a reason
    r = await http.post(
        f"/console/holds/{first.id}/release", data={"csrf": csrf, "note": "logger says 4 C"}
    )
    assert r.status_code == 303
    on_hand = led.on_hand("CENTRAL/A02", second.gtin)
    r = await http.post(
        f"/console/holds/{second.id}/waste", data={"csrf": csrf, "note": "too warm too long"}
    )
    assert r.status_code == 303
    assert led.on_hand("CENTRAL/A02", second.gtin) == on_hand - second.on_hand_now
    statuses = {h.id: (h.status, h.resolved_by) for h in led.holds(status=None)}
    assert statuses[first.id] == ("released", USERS["pharmacist"])
    assert statuses[second.id] == ("wasted", USERS["pharmacist"])
    r = await http.post(f"/console/holds/{first.id}/waste", data={"csrf": csrf, "note": "again"})
    assert r.status_code == 409  # decided once


async def test_a_discrepancy_is_resolved_and_the_audit_trail_names_the_user(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, controller = console
    d = controller.ledger.raise_discrepancy(
        "disc:1", "CENTRAL/A01", PARA, source="count", device_value=3, ledger_value=5,
        detail="two missing", actor="poller",
    )  # fmt: skip
    csrf = await sign_in(http, "pharmacist")
    assert "two missing" in (await http.get("/console/discrepancies")).text
    r = await http.post(
        f"/console/discrepancies/{d.id}/resolve", data={"csrf": csrf, "note": "found in A02"}
    )
    assert r.status_code == 303
    assert controller.ledger.open_discrepancy_count() == 0
    trail = read_audit(controller.ledger.engine, entity="discrepancy", limit=10)
    assert trail[-1].actor == USERS["pharmacist"]
    found = await http.get("/console/audit", params={"user": USERS["pharmacist"]})
    assert "found in A02" in found.text


async def test_a_stocktake_count_books_the_difference_once(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, controller = console
    led = controller.ledger
    csrf = await sign_in(http, "technician")
    page = await http.get("/console/stocktake", params={"location": "CENTRAL/A01"})
    key = re.search(r'name="key" value="([0-9a-f]{16})"', page.text)
    assert key is not None and f"count|{METO}|M-1" in page.text
    form = {
        "csrf": csrf,
        "location": "CENTRAL/A01",
        "key": key.group(1),
        f"count|{METO}|M-1": "297",
    }
    r = await http.post("/console/stocktake", data=form)
    assert r.status_code == 303
    assert led.on_hand("CENTRAL/A01", METO) == 297
    r = await http.post("/console/stocktake", data=form)  # sent twice: counted once
    assert r.status_code == 303 and led.on_hand("CENTRAL/A01", METO) == 297
    bad = {**form, f"count|{METO}|M-1": "-3"}
    assert (await http.post("/console/stocktake", data=bad)).status_code == 422
    rows = read_audit(led.engine, limit=50)
    assert any(e.actor == USERS["technician"] for e in rows)


async def test_pages_without_a_controller_say_so_and_every_screen_renders(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, _controller = console
    await sign_in(http, "admin")
    for screen in SCREENS:
        r = await http.get(f"/console{screen.path}")
        assert r.status_code == 200, (screen.path, r.text[:300])
        assert r.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "Pick lists need a running controller" in (await http.get("/console/picking")).text


EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I)


async def test_no_page_references_another_host(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, _controller = console
    pages = ["/console/login", "/docs"]
    await sign_in(http, "admin")
    pages += [f"/console{s.path}" for s in SCREENS] + ["/console/"]
    for path in pages:
        r = await http.get(path)
        assert r.status_code == 200, path
        assert not EXTERNAL.search(r.text), (path, EXTERNAL.search(r.text))
        assert "cdn" not in r.text.lower(), path
        for asset in re.findall(r"""(?:src|href)=["'](/[^"']+)""", r.text):
            assert (await http.get(asset)).status_code == 200, (path, asset)
    css = await http.get("/console/static/console.css")
    assert "url(" not in css.text and "@import" not in css.text


async def test_a_session_times_out_when_idle() -> None:
    now = [0.0]
    sessions = Sessions(timeout_s=60, clock=lambda: now[0])
    session = sessions.create(User("tech:tom", Role.TECHNICIAN))
    now[0] = 59
    assert sessions.get(session.sid) is session  # each use pushes the deadline on
    now[0] = 118
    assert sessions.get(session.sid) is session
    now[0] = 178.5
    assert sessions.get(session.sid) is None
    assert len(sessions) == 0
    assert sessions.get("x" * 500) is None and sessions.get(None) is None


def test_the_language_follows_accept_language() -> None:
    assert i18n.negotiate("sv-SE,sv;q=0.9,en;q=0.8") == "sv"
    assert i18n.negotiate("en-US,en;q=0.9") == "en"
    assert i18n.negotiate("de-DE,sv;q=0.5") == "sv"
    assert i18n.negotiate("fr") == "en"
    assert i18n.negotiate("") == "en" and i18n.negotiate(None) == "en"
    assert i18n.negotiate("sv;q=abc,;;,*") in ("en", "sv")


def _template_msgids() -> set[str]:
    found: set[str] = set()
    for path in sorted(TEMPLATES.glob("*.html")):
        with path.open("rb") as fh:
            for _line, _func, message, _comments in babel_extract(
                fh, ("_", "gettext", "ngettext"), [], {"extensions": "jinja2.ext.i18n"}
            ):
                if isinstance(message, str):
                    found.add(message)
    return found


def test_every_text_has_a_swedish_and_an_english_entry() -> None:
    sv, en = i18n.catalogue("sv"), i18n.catalogue("en")
    wanted = _template_msgids()
    wanted |= {s.title for s in SCREENS} | {kind for _pattern, kind in REFUSAL_KINDS}
    wanted |= {r.label for r in Role} | {"Refused"}
    assert len(wanted) > 100
    missing = sorted(m for m in wanted if m not in sv)
    assert not missing, missing
    same = sorted(
        m for m in wanted if sv[m] == m and m not in ("Status", "status", "min", "Patient")
    )
    assert not same, same  # an untranslated Swedish entry
    for prefixed in [m for m in sv if re.fullmatch(r"[a-z]+:\S+", m)]:
        assert prefixed in en, prefixed  # keys like packml:Execute need English too


ALLOWED_WORDS = {"doseline"}  # the product's name, the same in both languages


def test_templates_hold_no_text_outside_the_gettext_calls() -> None:
    problems = []
    for path in sorted(TEMPLATES.glob("*.html")):
        source = path.read_text(encoding="utf-8")
        # Attribute values a person reads must be a gettext call or a value, never text.
        for attr, value in re.findall(
            r"""\b(placeholder|title|aria-label|alt|label)\s*=\s*"([^"]*)\"""", source
        ):
            bare = re.sub(r"\{\{.*?\}\}", "", value)
            if re.search(r"[A-Za-zÅÄÖåäö]", bare):
                problems.append(f"{path.name}: {attr}={value!r}")
        text = re.sub(r"\{#.*?#\}", "", source, flags=re.S)
        text = re.sub(r"\{\{.*?\}\}", " ", text, flags=re.S)
        text = re.sub(r"\{%.*?%\}", " ", text, flags=re.S)
        text = re.sub(r"<script\b.*?</script>", " ", text, flags=re.S)
        text = re.sub(r"<[^>]*>", " ", text, flags=re.S)
        for word in re.findall(r"[A-Za-zÅÄÖåäö][A-Za-zÅÄÖåäö'-]*", text):
            if word not in ALLOWED_WORDS:
                problems.append(f"{path.name}: {word!r}")
    assert not problems, problems


def test_the_template_scan_catches_bare_text(tmp_path: Path) -> None:
    """The scan above can fail: a template with bare text is caught."""
    import tests.console.test_console_pages as me

    bad = tmp_path / "bad.html"
    bad.write_text('<p>Hello {{ _("World") }}</p><input placeholder="Type here">')
    original = me.TEMPLATES
    me.TEMPLATES = tmp_path  # type: ignore[misc]
    try:
        with pytest.raises(AssertionError, match="Hello"):
            test_templates_hold_no_text_outside_the_gettext_calls()
    finally:
        me.TEMPLATES = original  # type: ignore[misc]


async def test_the_packing_floor_shows_each_machine_and_its_job(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, controller = console
    store = controller.store
    store.add_job(job("J-FLOOR-1", 12, ((PARA, 1),)))
    assert store.claim("J-FLOOR-1", "PK1")
    await sign_in(http, "viewer")
    page = await http.get("/console/floor")
    assert page.status_code == 200
    assert "PK1" in page.text and "J-FLOOR-1" in page.text and "W1 08:00" in page.text
    assert 'aria-valuemax="12"' in page.text
    fragment = await http.get("/console/fragments/floor", headers={"x-console-fragment": "1"})
    assert "J-FLOOR-1" in fragment.text and "<html" not in fragment.text


async def test_a_verification_alert_is_listed_and_closed_with_a_note(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    from controller.gs1 import PackId
    from controller.verification import VerificationStore

    http, controller = console
    store = VerificationStore(controller.ledger)
    pack = PackId(PARA, "P-LATE", datetime.now(UTC).date(), "SN<b>1</b>")
    alert_id = store.block(pack, "CENTRAL/A01", "RECALLED", "batch recalled", datetime.now(UTC))
    csrf = await sign_in(http, "pharmacist")
    listed = await http.get("/console/fragments/alerts", headers={"x-console-fragment": "1"})
    assert "RECALLED" in listed.text and "batch recalled" in listed.text
    assert "SN&lt;b&gt;1&lt;/b&gt;" in listed.text  # markup in a serial stays text
    r = await http.post(f"/console/alerts/{alert_id}/close", data={"csrf": csrf, "note": ""})
    assert r.status_code == 422
    r = await http.post(
        f"/console/alerts/{alert_id}/close", data={"csrf": csrf, "note": "pack quarantined"}
    )
    assert r.status_code == 303
    [row] = store.alerts(status=None)
    assert (row.status, row.closed_by, row.note) == (
        "closed",
        USERS["pharmacist"],
        "pack quarantined",
    )
    assert "No open verification alert" in (await http.get("/console/alerts")).text


async def test_the_session_cookie_is_secure_over_https(
    console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, _controller = console
    secure = httpx.AsyncClient(transport=http._transport, base_url="https://console.test")
    async with secure:
        form = await secure.get("/console/login")
        assert "Secure" in form.headers["set-cookie"]  # the sign-in form's own token
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert nonce is not None
        r = await secure.post(
            "/console/login", data={"csrf": nonce.group(1), "token": TOKENS["viewer"]}
        )
        assert r.status_code == 303
        cookie = r.headers.get_list("set-cookie")[-1]
        assert cookie.startswith("doseline_console=")
        assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=strict"))
        wrong = await secure.post(
            "/console/login", data={"csrf": nonce.group(1), "token": "not-a-token"}
        )
        assert wrong.status_code in (401, 403)
