"""The console in a real browser (Debian's chromium driven by Playwright) against a
running controller with a cabinet simulator: the pharmacist's review, a technician's
pick list by typed scans, goods-in, roles, languages, the handheld layout, hostile
input and accessibility. One site serves the whole module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any

import pytest

from controller.api.audit_reader import read_audit
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import pocket_label
from controller.gs1 import PackId, encode_pack
from controller.packing.orders import DoseOrder
from tests.console.conftest import (
    HOSTILE_PRODUCT,
    HOSTILE_WARD,
    USERS,
    ConsoleSite,
    client,
    http_sign_in,
    sign_in,
)
from tests.sites import FURO, METO, PARA

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        context.close()


def file_orders(site: ConsoleSite, patients: list[str], gtin: str = METO) -> list[int]:
    assert site.controller is not None
    today = datetime.now(UTC).date()
    orders = [
        DoseOrder(
            p, "W1", gtin, 1, (dt_time(8),), today + timedelta(days=1), today + timedelta(days=2)
        )
        for p in patients
    ]
    result = site.write(
        site.controller.store.submit,
        orders,
        source="fhir",
        actor="intake:test",
        review_required=True,
    )
    return list(result.added)


def status_of(site: ConsoleSite, order_id: int) -> Any:
    assert site.controller is not None
    return next(r for r in site.controller.store.orders() if r.id == order_id)


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_a_pharmacist_approves_and_rejects_and_the_audit_trail_names_them(
    site: ConsoleSite, page: Any
) -> None:
    approve_a, approve_b, reject = file_orders(site, ["PT-A1", "PT-A2", "PT-R1"])
    sign_in(page, site, "pharmacist", "/console/orders")
    page.check(f"#order-{approve_a}")
    page.check(f"#order-{approve_b}")
    page.click("button[value=approve]")
    page.wait_for_url("**/console/orders")
    assert "Approved: 2" in page.inner_text("main")
    # A rejection needs a reason; the reason carries markup that must stay text.
    page.check(f"#order-{reject}")
    page.click("button[value=reject]")
    assert "a reason is needed" in page.inner_text("main")
    assert status_of(site, reject).status == "pending"
    page.goto(f"{site.url}/console/orders")
    page.check(f"#order-{reject}")
    page.fill("#note", "duplicate <script>window.pwned=3</script> therapy")
    page.click("button[value=reject]")
    page.wait_for_url("**/console/orders")
    assert "Rejected: 1" in page.inner_text("main")
    assert "duplicate <script>window.pwned=3</script> therapy" in page.inner_text("main")
    assert page.evaluate("window.pwned") is None

    assert status_of(site, approve_a).status == "approved"
    assert status_of(site, approve_a).reviewed_by == USERS["pharmacist"]
    assert status_of(site, reject).status == "rejected"
    assert site.controller is not None
    trail = read_audit(site.controller.ledger.engine, entity="dose_order", limit=50)
    reviewed = {e.key: e.actor for e in trail if e.action == "review"}
    for order_id in (approve_a, approve_b, reject):
        assert reviewed.get(str(order_id)) == USERS["pharmacist"], reviewed
    # The audit screen finds them by user.
    page.goto(f"{site.url}/console/audit?user={USERS['pharmacist']}")
    assert page.locator("td.actor").count() >= 3
    assert set(page.locator("td.actor").all_inner_texts()) == {USERS["pharmacist"]}


def _pick_list(site: ConsoleSite) -> Any:
    """A pocket below its min at the cabinet, its refill reserved, and a pick list."""
    controller = site.controller
    assert controller is not None
    site.cabinet.withdraw(1, 1, 8)  # 12 -> 4, below min 5

    def refill() -> Any:
        return next(
            (r for r in controller.replenishment.refills if r.pocket.number == 1 and r.open),
            None,
        )

    assert wait_for(refill), "no refill was requested"
    [pick] = site.call(controller.replenishment.make_pick_lists())
    return pick


def scan(page: Any, code: str) -> str:
    """Types a code into the focused scan field and Enter, as a wedge scanner does."""
    field = page.locator("#code")
    assert field.evaluate("el => el === document.activeElement")
    before = page.locator("#scan-result").inner_text()
    page.keyboard.type(code.replace("\x1d", "<GS>"))
    page.keyboard.press("Enter")
    page.wait_for_function(
        "before => document.querySelector('#scan-result').innerText !== before", arg=before
    )
    return str(page.locator("#scan-result").inner_text())


def test_a_technician_picks_a_refill_list_by_typed_scans_and_the_stock_moves(
    site: ConsoleSite, page: Any
) -> None:
    controller = site.controller
    assert controller is not None
    pick = _pick_list(site)
    [refill] = pick.refills
    [line] = refill.lines
    where = pocket_location("CAB1", 1)
    before = wait_for(lambda: controller.ledger.on_hand(where, PARA) == 4 and 4)
    assert before == 4

    sign_in(page, site, "technician", "/console/picking")
    # The list shows up without a reload (it was made before; the fragment polls).
    page.locator(f"text={pick.list_id}").first.wait_for()
    page.click(f"form[action$='/picking/{pick.list_id}/open'] button")
    page.wait_for_url(f"**/console/picking/{pick.list_id}")
    assert "Paracetamol 500" in page.inner_text("main")

    assert "pocket 1 of CAB1" in scan(page, pocket_label("CAB1", 1))
    other_lot = "P-LATE" if line.batch != "P-LATE" else "P-EARLY"
    wrong = scan(page, encode_pack(PackId(PARA, other_lot, line.expiry)))
    assert wrong.startswith("Wrong lot") and f"batch {other_lot}" in wrong
    assert page.locator(".scan-result.refused").is_visible()
    assert (
        page.locator(".scan-result.refused strong").evaluate(
            "el => parseFloat(getComputedStyle(el).fontSize)"
        )
        >= 24
    )
    not_listed = scan(page, encode_pack(PackId(METO, "M-1", line.expiry)))
    assert not_listed.startswith("Not on the list")
    expired = scan(
        page, encode_pack(PackId(PARA, line.batch, datetime.now(UTC).date() - timedelta(days=1)))
    )
    assert expired.startswith("Expired")
    assert controller.ledger.on_hand(where, PARA) == 4  # nothing moved on a refusal

    done = scan(page, encode_pack(PackId(PARA, line.batch, line.expiry)))
    assert done.startswith("Accepted") and f"confirmed: {refill.quantity} into {where}" in done
    assert controller.ledger.on_hand(where, PARA) == 4 + refill.quantity
    assert refill.confirmed_by == f"console:{USERS['technician']}"
    # The line shows as scanned without a reload.
    page.locator("li.line.done").first.wait_for()


def test_goods_in_books_a_delivery_against_a_purchase_order(site: ConsoleSite, page: Any) -> None:
    controller = site.controller
    assert controller is not None
    (order,), _ = site.write(
        controller.purchasing.create_orders, now=datetime.now(UTC), actor="buyer:bo"
    )
    [line] = [ln for ln in order.lines if ln.gtin == FURO]
    before = sum(s.on_hand for s in controller.ledger.stock(gtin=FURO))
    sign_in(page, site, "technician", "/console/goods-in")
    page.click(f"a[href$='/goods-in/{order.number}']")
    page.fill("#note", "DN-4711")
    page.fill(f"#q-{line.line_no}", str(line.units))
    page.fill(f"#b-{line.line_no}", "F-NEW")
    page.fill(f"#e-{line.line_no}", (datetime.now(UTC).date() + timedelta(days=500)).isoformat())
    page.click("button[type=submit].primary >> text=Book the delivery")
    page.wait_for_url("**/console/goods-in")
    assert "Delivery booked: DN-4711" in page.inner_text("main")
    after = sum(s.on_hand for s in controller.ledger.stock(gtin=FURO))
    assert after == before + line.units
    assert controller.purchasing.order(order.number).status == "complete"
    trail = read_audit(controller.ledger.engine, limit=200)
    assert any(
        e.actor == USERS["technician"] and "DN-4711" in str(e.reason or e.key) for e in trail
    )


def test_a_viewer_sees_but_cannot_act(site: ConsoleSite, page: Any) -> None:
    [order_id] = file_orders(site, ["PT-V1"])
    sign_in(page, site, "viewer", "/console/floor")
    nav = page.inner_text("nav")
    assert "Packing floor" in nav and "Dose orders" not in nav and "Pick lists" not in nav
    for path in ("/console/floor", "/console/cabinets", "/console/stock?product=para"):
        page.goto(site.url + path)
        # Only the language switch and sign-out are forms that post.
        actions = page.locator("main form[method=post]").count()
        assert actions == 0, path
    response = page.goto(f"{site.url}/console/orders")
    assert response is not None and response.status == 403
    # The POST itself is refused server-side, with a valid session and CSRF token.
    with client(site) as http:
        csrf = http_sign_in(http, "viewer")
        r = http.post(
            "/console/orders/review",
            data={"csrf": csrf, "order": str(order_id), "decision": "approve", "note": ""},
        )
        assert r.status_code == 403
        assert "role pharmacist or above is needed" in r.text
        r = http.post("/console/scan", data={"csrf": csrf, "code": "PL:CAB1-1"})
        assert r.status_code == 403
    assert status_of(site, order_id).status == "pending"


def test_swedish_and_english_both_render(site: ConsoleSite, browser: Any) -> None:
    for locale, expected, absent in (
        ("sv-SE", ["Logga in", "Din åtkomstnyckel"], "Your access token"),
        ("en-GB", ["Sign in", "Your access token"], "Din åtkomstnyckel"),
    ):
        context = browser.new_context(locale=locale)
        try:
            page = context.new_page()
            page.goto(f"{site.url}/console/login")
            text = page.inner_text("body")
            for word in expected:
                assert word in text
            assert absent not in text
            assert page.get_attribute("html", "lang") == locale[:2]
        finally:
            context.close()
    # A user's switch is kept in the session, whatever the browser asks for.
    context = browser.new_context(locale="en-GB")
    try:
        page = context.new_page()
        sign_in(page, site, "technician", "/console/picking")
        assert "Pick lists" in page.inner_text("h1")
        page.select_option("#lang-switch", "sv")
        page.click("form[action$='/language'] button")
        page.wait_for_url("**/console/picking")
        assert page.inner_text("h1") == "Plocklistor"
        page.goto(f"{site.url}/console/floor")
        assert page.inner_text("h1") == "Dosproduktionen"
        assert page.get_attribute("html", "lang") == "sv"
    finally:
        context.close()


def test_the_pick_list_fits_a_360_px_handheld(site: ConsoleSite, browser: Any) -> None:
    controller = site.controller
    assert controller is not None
    site.cabinet.withdraw(1, 2, 5)  # METO 8 -> 3, below min 4

    def refill() -> Any:
        return next(
            (r for r in controller.replenishment.refills if r.pocket.number == 2 and r.open),
            None,
        )

    assert wait_for(refill)
    [pick] = site.call(controller.replenishment.make_pick_lists())
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True, locale="sv-SE"
    )
    try:
        page = context.new_page()
        sign_in(page, site, "technician", "/console/picking")
        page.click(f"form[action$='/picking/{pick.list_id}/open'] button")
        page.wait_for_url(f"**/console/picking/{pick.list_id}")
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1] == 360, widths
        box = page.locator("#code").bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360 and 0 <= box["y"] < 740
        assert page.locator("#code").evaluate("el => el === document.activeElement")
        assert scan(page, pocket_label("CAB1", 2)).startswith("Godkänd")
        later = datetime.now(UTC).date() + timedelta(days=400)
        refused = scan(page, encode_pack(PackId(PARA, "P-LATE", later)))
        assert refused.startswith("Finns inte på listan")  # not on this list, in Swedish
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
        box = page.locator(".scan-result.refused").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 360
        page.screenshot(path=str(_shots() / "handheld-picklist.png"), full_page=False)
    finally:
        context.close()


def _shots() -> Any:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "var" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_markup_in_names_renders_as_text(site: ConsoleSite, page: Any) -> None:
    [order_id] = file_orders(site, ["PT-H1"], gtin=FURO)
    sign_in(page, site, "pharmacist", "/console/orders")
    text = page.inner_text("main")
    assert HOSTILE_PRODUCT in text and HOSTILE_WARD in text
    page.goto(f"{site.url}/console/stock?product=Furosemide")
    assert HOSTILE_PRODUCT in page.inner_text("main")
    page.goto(f"{site.url}/console/cover")
    page.goto(f"{site.url}/console/audit?product=<script>alert(1)</script>")
    assert page.input_value("#f-product") == "<script>alert(1)</script>"
    assert page.evaluate("window.pwned") is None
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    assert status_of(site, order_id).status == "pending"


def test_forms_without_a_session_or_csrf_token_or_too_big_change_nothing(
    site: ConsoleSite,
) -> None:
    [order_id] = file_orders(site, ["PT-C1"])
    form = {"order": str(order_id), "decision": "approve", "note": ""}
    with client(site) as http:
        # No session at all.
        r = http.post("/console/orders/review", data={**form, "csrf": "x"})
        assert r.status_code == 401
        csrf = http_sign_in(http, "pharmacist")
        # A session, but no token, or another one.
        assert http.post("/console/orders/review", data=form).status_code == 403
        r = http.post("/console/orders/review", data={**form, "csrf": csrf[:-2] + "xx"})
        assert r.status_code == 403
        # Oversized, and malformed.
        r = http.post("/console/orders/review", data={**form, "csrf": csrf, "note": "x" * 70_000})
        assert r.status_code == 413
        r = http.post("/console/orders/review", data={**form, "csrf": csrf, "note": "x" * 5000})
        assert r.status_code == 422
        r = http.post(
            "/console/orders/review",
            content=b'{"order": 1}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 415
        assert status_of(site, order_id).status == "pending"
        # A session from another client's cookie is a cookie this client does not have:
        # signing out ends the session for good.
        r = http.post("/console/logout", data={"csrf": csrf})
        assert r.status_code == 303
        r = http.post("/console/orders/review", data={**form, "csrf": csrf})
        assert r.status_code == 401
    assert status_of(site, order_id).status == "pending"


MAIN_SCREENS = (
    ("pharmacist", "/console/"),
    ("pharmacist", "/console/orders"),
    ("pharmacist", "/console/alerts"),
    ("pharmacist", "/console/holds"),
    ("pharmacist", "/console/discrepancies"),
    ("pharmacist", "/console/exemptions"),
    ("pharmacist", "/console/duty"),
    ("pharmacist", "/console/audit"),
    ("technician", "/console/picking"),
    ("technician", "/console/goods-in"),
    ("technician", "/console/stocktake?location=CENTRAL/A01"),
    ("viewer", "/console/floor"),
    ("viewer", "/console/cabinets"),
    ("viewer", "/console/stock?product=para"),
    ("viewer", "/console/cover"),
)


def test_no_serious_accessibility_violation_and_no_external_host(
    site: ConsoleSite, browser: Any
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    found: dict[str, list[str]] = {}
    foreign: list[str] = []
    for role in ("pharmacist", "technician", "viewer"):
        context = browser.new_context(locale="sv-SE")
        page = context.new_page()
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith(site.url) or request.url.startswith("data:")
                else foreign.append(request.url)
            ),
        )
        try:
            sign_in(page, site, role, "/console/")
            for who, path in MAIN_SCREENS:
                if who != role:
                    continue
                page.goto(site.url + path)
                results = axe.run(page)
                bad = [
                    f"{v['id']} ({v['impact']}): {v['help']}"
                    for v in results.response["violations"]
                    if v.get("impact") in ("serious", "critical")
                ]
                if bad:
                    found[path] = bad
            if role == "viewer":
                page.goto(f"{site.url}/docs")
                page.locator(".swagger-ui").first.wait_for()
        finally:
            context.close()
    assert not found, found
    assert not foreign, foreign
