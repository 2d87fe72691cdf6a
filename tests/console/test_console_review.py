"""The pharmacist's dose-order amendments and the stock-duty exemptions screen in a
real browser (Debian's chromium driven by Playwright) against a running controller:
an order approved reduced or substituted with a reason, named in the audit trail; the
exemptions in Swedish and English, the overdue marked, markup in a reason kept as text;
no serious accessibility violation on these screens or the stock-duty screen, which
also fits a 360 px handheld."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any

import pytest

from controller.api.audit_reader import read_audit
from controller.packing.orders import DoseOrder
from tests.console.conftest import USERS, ConsoleSite, client, http_sign_in, sign_in
from tests.sites import METO, OXY, PARA, PARA2

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

HOSTILE_REASON = 'Sole supplier <img src=x onerror="window.pwned=5"> with long lead times'


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        context.close()


def file_orders(site: ConsoleSite, *patients: str, units: int = 3) -> list[int]:
    assert site.controller is not None
    today = datetime.now(UTC).date()
    orders = [
        DoseOrder(p, "W1", PARA, units, (dt_time(8),), today, today + timedelta(days=2))
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


def order_of(site: ConsoleSite, order_id: int) -> Any:
    assert site.controller is not None
    return next(r for r in site.controller.store.orders() if r.id == order_id)


@pytest.fixture(scope="module")
def exempted(site: ConsoleSite) -> ConsoleSite:
    """Two exemptions: METO's review date passed (with markup in its reason), OXY's
    not yet."""
    controller = site.controller
    assert controller is not None
    today = datetime.now(UTC).date()
    for gtin, reason, review in (
        (METO, HOSTILE_REASON, today - timedelta(days=3)),
        (OXY, "Used once a year for a rare indication", today + timedelta(days=200)),
    ):
        site.write(
            controller.ledger.set_exemption,
            gtin=gtin,
            reason=reason,
            risk_assessment="Ward stock and the regional store cover two weeks",
            review_date=review,
            decided_by="chief pharmacist Berg",
            actor="site",
        )
    return site


def test_a_pharmacist_reduces_and_substitutes_with_a_reason(site: ConsoleSite, page: Any) -> None:
    reduce, swap = file_orders(site, "PT-AM1", "PT-AM2")
    sign_in(page, site, "pharmacist", "/console/orders")
    page.click(f"#amend-{reduce}")
    page.wait_for_url(f"**/console/orders/{reduce}/amend")
    assert "Paracetamol 500" in page.inner_text("#ordered")
    # the substitutes offered are the other products of the substitution group
    assert page.locator("#substitute option").all_inner_texts() == [
        f"Paracetamol 500 (second) ({PARA2})"
    ]
    page.fill("#units", "1")
    page.fill("#note", "renal <b>function</b>")
    page.click("button[value=reduce]")
    page.wait_for_url("**/console/orders")
    main = page.inner_text("main")
    assert f"Approved as amended: order {reduce}" in main
    assert "renal <b>function</b>" in main  # the reason is text, not markup

    page.click(f"#amend-{swap}")
    page.wait_for_url(f"**/console/orders/{swap}/amend")
    page.select_option("#substitute", PARA2)
    page.fill("#note", "shortage of the ordered product")
    page.click("button[value=substitute]")
    page.wait_for_url("**/console/orders")
    assert f"Approved as amended: order {swap}" in page.inner_text("main")

    amended = order_of(site, reduce)
    assert (amended.status, amended.order.units, amended.order.gtin) == ("approved", 1, PARA)
    assert amended.reviewed_by == USERS["pharmacist"]
    swapped = order_of(site, swap)
    assert (swapped.status, swapped.order.units, swapped.order.gtin) == ("approved", 3, PARA2)
    assert site.controller is not None
    trail = read_audit(site.controller.ledger.engine, entity="dose_order", limit=100)
    last = {e.key: e for e in trail}
    assert last[str(reduce)].actor == USERS["pharmacist"]
    assert last[str(reduce)].old == {"status": "pending", "units": 3}
    assert last[str(swap)].old == {"status": "pending", "gtin": PARA}
    assert last[str(swap)].new["gtin"] == PARA2
    assert page.evaluate("window.pwned") is None

    # Without a reason, with too many units, or as a viewer: refused, nothing changes.
    [kept] = file_orders(site, "PT-AM3")
    with client(site) as http:
        csrf = http_sign_in(http, "pharmacist")
        form = {"csrf": csrf, "decision": "reduce", "units": "1", "note": ""}
        r = http.post(f"/console/orders/{kept}/amend", data=form)
        assert r.status_code == 422 and "a reason is needed" in r.text
        r = http.post(f"/console/orders/{kept}/amend", data={**form, "units": "3", "note": "x"})
        assert r.status_code == 422 and "not fewer than the 3" in r.text
        r = http.post(f"/console/orders/{reduce}/amend", data={**form, "note": "again"})
        assert r.status_code == 409 and "only pending orders" in r.text
        r = http.post("/console/orders/99999999999999/amend", data={**form, "note": "x"})
        assert r.status_code == 404
        r = http.post(
            f"/console/orders/{kept}/amend",
            data={**form, "decision": "substitute", "substitute": METO, "note": "x"},
        )
        assert r.status_code == 422 and "substitution group" in r.text
        assert http.get("/console/orders/99999999999999/amend").status_code == 404
    with client(site) as http:
        csrf = http_sign_in(http, "viewer")
        r = http.post(
            f"/console/orders/{kept}/amend",
            data={"csrf": csrf, "decision": "reduce", "units": "1", "note": "x"},
        )
        assert r.status_code == 403 and "role pharmacist or above is needed" in r.text
        assert http.get(f"/console/orders/{kept}/amend").status_code == 403
    assert (order_of(site, kept).status, order_of(site, kept).order.units) == ("pending", 3)


def test_exemptions_render_in_both_languages_with_the_overdue_marked(
    exempted: ConsoleSite, browser: Any
) -> None:
    site = exempted
    for locale, title, overdue, note in (
        ("en-GB", "Stock-duty exemptions", "review overdue", "audit trail under your name"),
        ("sv-SE", "Undantag från lagringsskyldigheten", "omprövning försenad", "under ditt namn"),
    ):
        context = browser.new_context(locale=locale)
        try:
            page = context.new_page()
            sign_in(page, site, "pharmacist", "/console/exemptions")
            assert page.inner_text("h1") == title
            assert title in page.inner_text("nav")
            main = page.inner_text("main")
            assert note in main
            assert page.get_attribute("html", "lang") == locale[:2]
            meto = page.locator(f"#exemption-{METO}")
            oxy = page.locator(f"#exemption-{OXY}")
            assert HOSTILE_REASON in meto.inner_text()  # markup shown as text
            assert overdue in meto.inner_text() and meto.get_attribute("class") == "overdue"
            assert overdue not in oxy.inner_text() and oxy.get_attribute("class") is None
            assert "chief pharmacist Berg" in oxy.inner_text()
            # the overdue first
            ids = page.locator("#exemptions tbody tr").evaluate_all("rows => rows.map(r => r.id)")
            assert ids == [f"exemption-{METO}", f"exemption-{OXY}"]
            assert page.locator("main img").count() == 0
            assert page.evaluate("window.pwned") is None
        finally:
            context.close()


@pytest.fixture(scope="module")
def duty_filled(exempted: ConsoleSite) -> ConsoleSite:
    """Every part of the stock-duty screen filled: a crisis in force, a product below
    its preparedness floor, an open shortage notice with a substitute."""
    site = exempted
    controller = site.controller
    assert controller is not None
    led = controller.ledger
    site.write(
        led.start_crisis,
        starts_at=datetime.now(UTC),
        reason="Regional decision: drug supply disrupted",
        categories=["drug"],
        actor="site",
    )
    site.write(led.set_preparedness, METO, target_units=500, floor_units=200, actor="site")
    site.write(led.record_shortage, PARA, notice_ref="N-AX", substitutes=[PARA2], actor="site")
    return site


def test_no_serious_accessibility_violation_on_the_new_screens(
    duty_filled: ConsoleSite, browser: Any
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    site = duty_filled
    [order_id] = file_orders(site, "PT-AX1")
    axe = Axe()
    found: dict[str, list[str]] = {}
    context = browser.new_context(locale="sv-SE")
    try:
        page = context.new_page()
        sign_in(page, site, "pharmacist", "/console/")
        for path in (
            "/console/orders",
            f"/console/orders/{order_id}/amend",
            "/console/exemptions",
            "/console/duty",
        ):
            page.goto(site.url + path)
            results = axe.run(page)
            bad = [
                f"{v['id']} ({v['impact']}): {v['help']}"
                for v in results.response["violations"]
                if v.get("impact") in ("serious", "critical")
            ]
            if bad:
                found[path] = bad
    finally:
        context.close()
    assert not found, found


def test_the_stock_duty_screen_fits_a_360_px_handheld(
    duty_filled: ConsoleSite, browser: Any
) -> None:
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True, locale="sv-SE"
    )
    try:
        page = context.new_page()
        sign_in(page, duty_filled, "pharmacist", "/console/duty")
        assert page.locator("section.card.urgent").count() == 1  # the crisis banner
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == 360, widths  # wide tables scroll in their own box
    finally:
        context.close()
