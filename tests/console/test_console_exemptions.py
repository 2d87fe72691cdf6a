"""The console's exemptions screen over HTTP (no browser): a pharmacist creates,
reviews, changes and revokes an exemption, each as the signed-in user; a bad input is
refused by name and writes nothing; a viewer may not decide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from controller.app import Controller
from tests.console.conftest import USERS
from tests.console.test_console_pages import console, sign_in  # noqa: F401
from tests.sites import METO

TODAY = datetime.now(UTC).date()


def form(csrf: str, **values: str) -> dict[str, str]:
    base = {
        "csrf": csrf,
        "gtin": METO,
        "reason": "Licence caps stock at two weeks on hand",
        "risk_assessment": "Supplier delivers within a day; two strengths in stock",
        "measures": "Daily stock check; second supplier contracted",
        "review_date": (TODAY + timedelta(days=90)).isoformat(),
        "level_days": "14",
    }
    base.update(values)
    return base


async def test_a_pharmacist_decides_on_an_exemption_in_the_console(
    console: tuple[httpx.AsyncClient, Controller],  # noqa: F811
) -> None:
    http, controller = console
    led = controller.ledger
    csrf = await sign_in(http, "pharmacist")
    page = await http.get("/console/exemptions")
    assert page.status_code == 200 and 'id="exemption-create"' in page.text

    r = await http.post("/console/exemptions/create", data=form(csrf))
    assert r.status_code == 303, r.text
    made = led.exemption(METO)
    assert (made.level_days, made.decided_by) == (14, USERS["pharmacist"])
    page = await http.get("/console/exemptions")
    assert f'id="exemption-{METO}"' in page.text and "Exemption created: " + METO in page.text

    next_review = (TODAY + timedelta(days=200)).isoformat()
    r = await http.post(
        "/console/exemptions/review",
        data={"csrf": csrf, "gtin": METO, "review_date": next_review, "note": "still needed"},
    )
    assert r.status_code == 303, r.text
    assert led.exemption(METO).reviewed_by == USERS["pharmacist"]

    r = await http.post("/console/exemptions/change", data=form(csrf, level_days=""))
    assert r.status_code == 303, r.text
    assert led.exemption(METO).level_days is None

    r = await http.post(
        "/console/exemptions/revoke",
        data={"csrf": csrf, "gtin": METO, "reason": "The licence cap was lifted"},
    )
    assert r.status_code == 303, r.text
    assert led.exemption(METO).status == "revoked"


async def test_bad_decisions_are_refused_by_name_and_write_nothing(
    console: tuple[httpx.AsyncClient, Controller],  # noqa: F811
) -> None:
    http, controller = console
    led = controller.ledger
    csrf = await sign_in(http, "pharmacist")
    past = (TODAY - timedelta(days=3)).isoformat()
    for data, status, text in (
        (form(csrf, review_date=past), 422, f"review_date: {past} is in the past"),
        (form(csrf, level_days="30"), 422, "level_days: 30 is out of range"),
        (form(csrf, level_days="x"), 422, "level_days: &#39;x&#39; is not a whole number"),
        (form(csrf, gtin="07359990009999"), 404, "unknown gtin"),
    ):
        r = await http.post("/console/exemptions/create", data=data)
        assert r.status_code == status, r.text
        assert text in r.text, r.text
    r = await http.post(
        "/console/exemptions/revoke", data={"csrf": csrf, "gtin": METO, "reason": "not needed!"}
    )
    assert r.status_code == 404 and "has no exemption" in r.text
    assert led.exemptions_list(include_revoked=True) == []

    viewer = await sign_in(http, "viewer")
    r = await http.post("/console/exemptions/create", data=form(viewer))
    assert r.status_code == 403
    assert led.exemptions_list(include_revoked=True) == []
