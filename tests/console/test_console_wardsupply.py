"""The ward-supply screens in a real browser (Debian's chromium driven by Playwright)
against a running controller whose site has drug rooms (tests/sites.py `ward_site`):
a pharmacist reviews a ward requisition, a technician picks a drug-room list by typed
scans, dispatches it and receives its note, a viewer is refused, the handheld layout,
hostile names and reasons, and axe-core on the new screens. One site serves the
module."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.api.audit_reader import read_audit
from controller.gs1 import PackId, encode_pack
from controller.ledger.ward_locations import transit_location
from controller.wardsupply import views
from controller.wardsupply.model import LineIn, RequisitionIn, RequisitionSource
from tests.console.conftest import (
    HOSTILE_WARD,
    USERS,
    ConsoleSite,
    client,
    http_sign_in,
    sign_in,
)
from tests.sites import FURO, METO, OXY, PARA, PARA2, ward_site

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

HOSTILE_HOSPITAL = 'Central <img src=x onerror="window.pwned=4"> Hospital'


def hostile_ward_site(*, ledger_url: str) -> dict[str, Any]:
    raw = ward_site(ledger_url=ledger_url)
    raw["hospitals"][0]["name"] = HOSTILE_HOSPITAL
    return raw


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    path = tmp_path_factory.mktemp("console-ward") / "ledger.db"
    running = ConsoleSite(f"sqlite:///{path}", make_site=hostile_ward_site)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    try:
        yield opened
    finally:
        context.close()


def requisition(
    site: ConsoleSite, sender_id: str, room: str, *lines: tuple[str, int], urgent: bool = False
) -> list[views.LineView]:
    assert site.controller is not None
    ws = site.controller.wardsupply
    booked = site.write(
        ws.submit,
        RequisitionIn(
            sender="ward-system",
            sender_id=sender_id,
            drug_room=room,
            lines=tuple(LineIn(g, p) for g, p in lines),
            source=RequisitionSource.JSON,
            urgent=urgent,
        ),
        actor="ward:system",
    )
    with ws.ledger.engine.connect() as c:
        return list(views.requisition(c, booked.number).lines)


def line(site: ConsoleSite, line_id: int) -> views.LineView:
    assert site.controller is not None
    with site.controller.ledger.engine.connect() as c:
        [found] = views.lines(c, ids=[line_id])
    return found


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def urgent_list(site: ConsoleSite, sender_id: str, *lines: tuple[str, int]) -> views.PickListView:
    """An urgent requisition of routine lines, approved: the controller's ward desk
    makes its pick list at once."""
    assert site.controller is not None
    ws = site.controller.wardsupply
    made = requisition(site, sender_id, "DR-MED", *lines, urgent=True)
    assert all(x.status == "pending" for x in made), made
    site.write(
        ws.approve_routine, actor="pharmacist:setup", reason="set-up", ids=[x.id for x in made]
    )
    number = wait_for(lambda: line(site, made[0].id).pick_list)
    assert number, "the ward desk made no urgent pick list"
    return ws.pick_list(number)


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


def pack(site: ConsoleSite, gtin: str, batch: str) -> str:
    assert site.controller is not None
    lot = site.controller.ledger.lot(gtin, batch)
    return encode_pack(PackId(gtin, batch, lot["expiry"]))


def in_store(site: ConsoleSite, gtin: str) -> int:
    assert site.controller is not None
    bins = set(site.controller.site.store.all_bins)
    return sum(s.on_hand for s in site.controller.ledger.stock(gtin=gtin) if s.location in bins)


def test_a_pharmacist_approves_routine_lines_and_decides_flagged_ones(
    site: ConsoleSite, page: Any
) -> None:
    para, meto, oxy, furo = requisition(
        site, "P-1", "DR-MED", (PARA, 1), (METO, 1), (OXY, 2), (FURO, 1)
    )
    [many] = requisition(site, "P-2", "DR-ICU", (PARA, 40))
    assert (para.status, meto.status) == ("pending", "pending")
    assert "controlled" in oxy.flags and furo.status == "flagged"
    assert "unusual_quantity" in many.flags, many

    sign_in(page, site, "pharmacist", "/console/ward-review")
    text = page.inner_text("main")
    assert HOSTILE_HOSPITAL in text and HOSTILE_WARD in text  # names stay text
    card = page.inner_text(f"#line-{oxy.id}")
    assert "controlled substance" in card and "Usual-quantity limit" in card
    assert "unusual quantity" in page.inner_text(f"#line-{many.id}")
    # The substitutes offered are the product's substitution group.
    options = page.locator(f"#sub-{many.id} option").all_inner_texts()
    assert options == [f"Paracetamol 500 (second) ({PARA2})"]
    assert page.locator(f"#line-{furo.id} button[value=substitute]").count() == 0

    page.fill("#routine-reason", "routine <b>restock</b>")
    page.click("#approve-routine button[type=submit]")
    page.wait_for_url("**/console/ward-review")
    assert "Approved: 2" in page.inner_text("main")

    # A decision needs a reason: refused, and nothing changes.
    page.click(f"#line-{furo.id} button[value=reject]")
    assert "a reason of at least 3 characters" in page.inner_text("main")
    assert line(site, furo.id).status == "flagged"
    page.goto(f"{site.url}/console/ward-review")

    page.fill(f"#reason-{oxy.id}", "usual <script>window.pwned=5</script> need")
    page.fill(f"#packs-{oxy.id}", "1")
    page.click(f"#line-{oxy.id} button[value=reduce]")
    page.wait_for_url("**/console/ward-review")
    assert "Decided:" in page.inner_text("main")
    page.select_option(f"#sub-{many.id}", PARA2)
    page.fill(f"#reason-{many.id}", "the second source, for now")
    page.fill(f"#packs-{many.id}", "4")
    page.click(f"#line-{many.id} button[value=substitute]")
    page.wait_for_url("**/console/ward-review")
    page.fill(f"#reason-{furo.id}", "not for this ward")
    page.click(f"#line-{furo.id} button[value=reject]")
    page.wait_for_url("**/console/ward-review")

    decided = page.inner_text("#decided")
    assert "usual <script>window.pwned=5</script> need" in decided
    assert "routine <b>restock</b>" in decided
    assert page.evaluate("window.pwned") is None
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0

    pharmacist = USERS["pharmacist"]
    for x in (para, meto):
        assert (line(site, x.id).status, line(site, x.id).decided_by) == ("approved", pharmacist)
    reduced = line(site, oxy.id)
    assert (reduced.decision, reduced.approved_packs, reduced.decided_by) == (
        "reduce",
        1,
        pharmacist,
    )
    swapped = line(site, many.id)
    assert (swapped.decision, swapped.approved_gtin, swapped.approved_packs) == (
        "substitute",
        PARA2,
        4,
    )
    assert (line(site, furo.id).status, line(site, furo.id).reason) == (
        "rejected",
        "not for this ward",
    )
    assert site.controller is not None
    trail = read_audit(site.controller.ledger.engine, entity="ward_line", limit=50)
    actors = {e.key: e.actor for e in trail if isinstance(e.new, dict) and e.new.get("decision")}
    for x in (para, meto, oxy, furo, many):
        assert actors.get(f"{x.requisition}:{x.line_no}") == pharmacist, actors


def test_a_technician_picks_a_drug_room_list_by_typed_scans_and_dispatches(
    site: ConsoleSite, page: Any
) -> None:
    controller = site.controller
    assert controller is not None
    pick = urgent_list(site, "T-1", (PARA, 1), (METO, 1))
    para = next(x for x in pick.lines if x.gtin == PARA)
    reserved = sorted(lot["batch"] for lot in para.lots)
    assert reserved == ["P-EARLY", "P-LATE"], para.lots  # first expiry first; P-SHORT too short
    store = {g: in_store(site, g) for g in (PARA, METO)}
    transit = transit_location("H1")

    sign_in(page, site, "technician", "/console/ward-picking")
    page.click(f"a[href$='/ward-picking/{pick.number}']")
    page.wait_for_url(f"**/console/ward-picking/{pick.number}")
    text = page.inner_text("main")
    assert "DR-MED" in text and "Paracetamol 500" in text and "Metoprolol 50" in text
    assert "P-EARLY" in text and "CENTRAL/" in text

    wrong = scan(page, pack(site, PARA, "P-SHORT"))
    assert wrong.startswith("Wrong lot") and "batch P-SHORT" in wrong
    assert page.locator(".scan-result.refused").is_visible()
    size = page.locator(".scan-result.refused strong").evaluate(
        "el => parseFloat(getComputedStyle(el).fontSize)"
    )
    assert size >= 24
    assert scan(page, pack(site, OXY, "O-1")).startswith("Not on the list")
    past = datetime.now(UTC).date() - timedelta(days=1)
    assert scan(page, encode_pack(PackId(PARA, "P-EARLY", past))).startswith("Expired")
    assert {g: in_store(site, g) for g in (PARA, METO)} == store  # nothing moved

    for batch in reserved:
        assert scan(page, pack(site, PARA, batch)).startswith("Accepted")
    assert scan(page, pack(site, METO, "M-1")).startswith("Accepted")
    assert scan(page, pack(site, METO, "M-1")).startswith("Already picked")
    page.locator(f"#pl-{para.line_id}.done").wait_for()  # shown without a reload

    page.click("#dispatch")
    page.wait_for_url("**/console/ward-picking")
    assert f"Dispatched: {pick.number}" in page.inner_text("main")
    # store -> transit
    assert controller.ledger.on_hand(transit, PARA) == 100
    assert controller.ledger.on_hand(transit, METO) == 100
    assert in_store(site, PARA) == store[PARA] - 100 and in_store(site, METO) == store[METO] - 100
    assert controller.wardsupply.pick_list(pick.number).status == "dispatched"
    scans = read_audit(controller.ledger.engine, entity="ward_pick", limit=20)
    assert {e.actor for e in scans if e.key.startswith(pick.number)} == {USERS["technician"]}

    # The note is in transit: printable, and received with a deviation.
    ws = controller.wardsupply
    with ws.ledger.engine.connect() as c:
        [note] = [n for n in views.note_numbers(c, status="in_transit")]
    card = page.locator(f"#note-{note}")
    printed = page.request.get(f"{site.url}/console/ward-notes/{note}/print")
    assert printed.status == 200 and note in printed.text()
    card.locator("summary").click()
    card.locator("select[name=lot]").select_option(f"{METO}|M-1")
    card.locator("select[name=deviation]").select_option("damaged")
    card.locator("input[name=units]").fill("10")
    card.locator("input[name=reason]").fill("crushed <b>box</b>")
    card.locator("button[type=submit]").click()
    page.wait_for_url("**/console/ward-picking")
    assert f"Received: {note}" in page.inner_text("main")
    received = ws.note(note)
    assert (received.status, received.received_by) == ("received", USERS["technician"])
    [damaged] = [x for x in received.lines if x.deviation]
    assert (damaged.gtin, damaged.deviation, damaged.deviation_units) == (METO, "damaged", 10)
    assert controller.ledger.on_hand(transit, METO) == 0


def test_a_viewer_sees_the_ward_screens_but_cannot_act(site: ConsoleSite) -> None:
    routine, flagged = requisition(site, "V-1", "DR-MED", (METO, 1), (OXY, 3))
    with client(site) as http:
        csrf = http_sign_in(http, "viewer")
        for path in ("/console/ward-review", "/console/ward-picking", "/console/drug-rooms"):
            r = http.get(path)
            assert r.status_code == 200, path
            main = r.text.split('<main id="main">', 1)[1]
            assert 'method="post"' not in main, path
        posts = {
            "/console/ward-review/approve-routine": {"line": str(routine.id), "reason": "x" * 5},
            f"/console/ward-review/lines/{flagged.id}": {"decision": "approve", "reason": "yes"},
            "/console/ward-picking/WPL-1/scan": {"code": "x"},
            "/console/ward-picking/WPL-1/dispatch": {},
            "/console/ward-notes/DN-1/receive": {},
        }
        for path, form in posts.items():
            r = http.post(path, data={"csrf": csrf, **form})
            assert r.status_code == 403, (path, r.status_code)
            assert re.search(r"role (pharmacist|technician) or above is needed", r.text)
    assert line(site, routine.id).status == "pending"
    assert line(site, flagged.id).status == "flagged"


def test_the_drug_room_pick_list_fits_a_360_px_handheld(site: ConsoleSite, browser: Any) -> None:
    pick = urgent_list(site, "H-1", (METO, 1))
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True, locale="sv-SE"
    )
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        sign_in(page, site, "technician", f"/console/ward-picking/{pick.number}")
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1] == 360, widths
        box = page.locator("#code").bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360 and 0 <= box["y"] < 740
        refused = scan(page, pack(site, PARA, "P-LATE"))
        assert refused.startswith("Finns inte på listan")  # not on the list, in Swedish
        box = page.locator(".scan-result.refused").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 360
        page.screenshot(path=str(_shots() / "handheld-ward-picklist.png"), full_page=False)
        assert scan(page, pack(site, METO, "M-1")).startswith("Godkänd")
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
        page.click("#dispatch")  # its note stays in transit for the screens below
        page.wait_for_url("**/console/ward-picking")
    finally:
        context.close()


def _shots() -> Any:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "var" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_no_serious_accessibility_violation_on_the_ward_screens(
    site: ConsoleSite, browser: Any
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    pick = urgent_list(site, "A-1", (PARA, 1))
    screens = {
        "pharmacist": ["/console/ward-review"],
        "technician": [
            "/console/ward-picking",
            f"/console/ward-picking/{pick.number}",
        ],
        "viewer": ["/console/ward-review", "/console/drug-rooms"],
    }
    axe = Axe()
    found: dict[str, list[str]] = {}
    foreign: list[str] = []
    for role, paths in screens.items():
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
            for path in paths:
                page.goto(site.url + path)
                results = axe.run(page)
                bad = [
                    f"{v['id']} ({v['impact']}): {v['help']}"
                    for v in results.response["violations"]
                    if v.get("impact") in ("serious", "critical")
                ]
                if bad:
                    found[f"{role} {path}"] = bad
            if role == "viewer":
                text = page.inner_text("main")  # the drug rooms, with the reliability
                assert "DR-MED" in text and "Leveranssäkerhet" in text
                assert page.locator("main svg.chart rect").count() >= 2
        finally:
            context.close()
    assert not found, found
    assert not foreign, foreign
