"""The console's stock-duty screen over HTTP (no browser): it shows a crisis in force, a
product below its preparedness floor, a shortage with rationing and today's grants,
and an expiring licence, in Swedish and English; a pharmacist starts and ends a crisis
period and records and closes a shortage notice, each audited under their name; a bad
input is refused by field and value and writes nothing; a viewer or technician may
neither open the screen nor post to it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from controller.api.audit_reader import read_audit
from controller.app import Controller
from controller.console.screens_duty import local_moment, refusal
from controller.ledger import UnknownEntity
from controller.ledger.duty_preparedness import CrisisRefused
from controller.ledger.errors import DutyRefused
from tests.console.conftest import USERS, console_in_process
from tests.console.test_console_pages import console, sign_in  # noqa: F401
from tests.sites import FURO, METO, OXY, PARA

UNKNOWN = "07359990009993"  # a well-formed GTIN not in the catalogue


@pytest.fixture
async def duty_console(ledger_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Controller]]:
    """The console in-process on SQLite and on PostgreSQL (the screen's reads on both)."""
    async with console_in_process(ledger_url) as pair:
        yield pair


def prepare(controller: Controller) -> None:
    """A crisis for drugs, METO below its floor, a shortage of PARA with METO as its
    substitute, PARA rationed with a grant to W1 today, FURO's licence ending soon and
    OXY's exemption with its review date passed."""
    led = controller.ledger
    tz = ZoneInfo(controller.site.site.timezone)
    today = datetime.now(tz).date()
    led.start_crisis(
        starts_at=datetime.now(UTC),
        reason="Regional decision: drug supply disrupted",
        categories=["drug"],
        actor="chief pharmacist Berg",
    )
    led.set_preparedness(METO, target_units=500, floor_units=200, actor="site")
    shortage = led.record_shortage(
        PARA,
        notice_ref="NOTICE-77",
        supplier="Whole AB",
        expected_end=today + timedelta(days=20),
        substitutes=[METO],
        actor="site",
        today=today,
    )
    led.start_rationing(
        PARA,
        cap_per_ward_day=6,
        priority_wards=["W1"],
        reason="Share the remaining paracetamol",
        shortage_id=shortage.id,
        actor="site",
    )
    led.draw_ration(
        PARA, ward="W1", day=today, units=4, source="manual", ref="test-1", actor="site"
    )
    led.record_licence(
        FURO,
        holder_kind="ward",
        holder="W1",
        number="LIC-2026-12",
        valid_from=today - timedelta(days=300),
        valid_to=today + timedelta(days=10),
        fee_sek="1250.00",
        actor="site",
    )
    led.set_exemption(
        gtin=OXY,
        reason="Used once a year for a rare indication",
        risk_assessment="Ward stock and the regional store cover two weeks",
        review_date=today - timedelta(days=3),
        decided_by="chief pharmacist Berg",
        actor="site",
    )


async def test_the_screen_shows_the_duty_in_both_languages(
    duty_console: tuple[httpx.AsyncClient, Controller],
) -> None:
    http, controller = duty_console
    prepare(controller)
    await sign_in(http, "pharmacist")
    for lang, title, below, banner in (
        ("en", "Stock duty", "below the floor", "A crisis period is in force"),
        ("sv", "Lagringsskyldighet", "under golvet", "En krisperiod gäller"),
    ):
        r = await http.get("/console/duty", headers={"accept-language": lang})
        assert r.status_code == 200, r.text[:300]
        text = r.text
        assert f"<h1>{title}</h1>" in text and f'lang="{lang}"' in text
        assert banner in text and "Regional decision: drug supply disrupted" in text
        assert "chief pharmacist Berg" in text
        meto = re.search(rf'<tr id="preparedness-{METO}" class="overdue">(.*?)</tr>', text, re.S)
        assert meto is not None and below in meto.group(1) and "200" in meto.group(1)
        shortage = re.search(r'<tr id="shortage-\d+">(.*?)</tr>', text, re.S)
        assert shortage is not None
        assert "NOTICE-77" in shortage.group(1) and "Whole AB" in shortage.group(1)
        assert re.search(rf"Metoprolol 50 \({METO}\): \d+", shortage.group(1))
        rule = re.search(r'<tr id="rule-\d+">(.*?)</tr>', text, re.S)
        assert rule is not None and "<td>6</td>" in rule.group(1)
        assert "(W1): 4" in rule.group(1)  # today's grant to W1
        licence = re.search(r'<tr id="licence-\d+">(.*?)</tr>', text, re.S)
        assert licence is not None and "LIC-2026-12" in licence.group(1)
        assert "1250.00" in licence.group(1)
        overdue = re.search(r'id="duty-overdue">([^<]*)</a>', text)
        assert overdue is not None and overdue.group(1).strip().endswith(": 1")
    nav = (await http.get("/console/duty")).text
    assert 'href="/console/duty"' in nav


async def test_a_pharmacist_starts_and_ends_a_crisis_and_records_and_closes_a_shortage(
    console: tuple[httpx.AsyncClient, Controller],  # noqa: F811
) -> None:
    http, controller = console
    led = controller.ledger
    csrf = await sign_in(http, "pharmacist")
    r = await http.post(
        "/console/duty/crisis/start",
        data={
            "csrf": csrf,
            "reason": "Masks short in the whole region",
            "starts_at": "",
            "category": "protective_equipment",
        },
    )
    assert r.status_code == 303, r.text
    [period] = led.crisis_periods()
    assert period.in_force and period.decided_by == USERS["pharmacist"]
    assert period.categories == ("protective_equipment",)
    page = await http.get("/console/duty")
    assert f"Crisis period started: {period.id}" in page.text
    assert f'id="crisis-end-{period.id}"' in page.text

    r = await http.post(
        "/console/duty/crisis/end",
        data={"csrf": csrf, "id": str(period.id), "reason": "Deliveries are back to normal"},
    )
    assert r.status_code == 303, r.text
    [ended] = led.crisis_periods()
    assert not ended.in_force and ended.ended_by == USERS["pharmacist"]

    r = await http.post(
        "/console/duty/shortage/record",
        data={
            "csrf": csrf,
            "gtin": PARA,
            "notice_ref": "N-1",
            "supplier": "Whole AB",
            "expected_end": "",
            "substitute": METO,
            "note": "",
        },
    )
    assert r.status_code == 303, r.text
    [shortage] = led.shortages()
    assert shortage.recorded_by == USERS["pharmacist"]
    assert [s.gtin for s in shortage.substitutes] == [METO]
    r = await http.post("/console/duty/shortage/close", data={"csrf": csrf, "id": str(shortage.id)})
    assert r.status_code == 303, r.text
    assert led.shortages() == [] and led.shortage(shortage.id).closed_by == USERS["pharmacist"]

    trail = read_audit(led.engine, limit=50)
    mine = {(e.entity, e.key) for e in trail if e.actor == USERS["pharmacist"]}
    assert ("crisis", str(period.id)) in mine and ("shortage", str(shortage.id)) in mine


async def test_bad_inputs_are_shown_by_field_and_value_and_write_nothing(
    console: tuple[httpx.AsyncClient, Controller],  # noqa: F811
) -> None:
    http, controller = console
    led = controller.ledger
    csrf = await sign_in(http, "pharmacist")
    first = led.start_crisis(
        starts_at=datetime.now(UTC), reason="Every product in crisis now", actor="site"
    )
    tz = ZoneInfo(controller.site.site.timezone)
    soon = datetime.now(tz) + timedelta(hours=2)
    start = soon.strftime("%Y-%m-%dT%H:%M")
    before = (soon - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    for path, data, status, text in (
        (
            "/console/duty/crisis/start",
            {"reason": "Another period on top", "starts_at": start},
            409,
            "starts_at: ",
        ),
        (
            "/console/duty/crisis/start",
            {"reason": "Period for an unknown product", "starts_at": start, "gtin": UNKNOWN},
            404,
            f"unknown gtin: &#39;{UNKNOWN}&#39;",
        ),
        (
            "/console/duty/crisis/start",
            {"reason": "Ends before it starts", "starts_at": start, "ends_at": before},
            422,
            "ends_at: ",
        ),
        (
            "/console/duty/crisis/start",
            {"reason": "A time that is no time", "starts_at": "tomorrow"},
            422,
            "starts_at: &#39;tomorrow&#39; is not a date and time",
        ),
        (
            "/console/duty/shortage/record",
            {"gtin": UNKNOWN, "notice_ref": "N-9"},
            404,
            f"unknown gtin: &#39;{UNKNOWN}&#39;",
        ),
        (
            "/console/duty/shortage/record",
            {"gtin": PARA, "notice_ref": "N-9", "expected_end": "2020-01-01"},
            422,
            "expected_end: 2020-01-01 is in the past",
        ),
        ("/console/duty/shortage/close", {"id": "999"}, 404, "unknown shortage: 999"),
        ("/console/duty/crisis/end", {"id": "x", "reason": "no id at all"}, 422, "id: &#39;x&#39;"),
    ):
        r = await http.post(path, data={"csrf": csrf, **data})
        assert r.status_code == status, (data, r.text)
        assert text in r.text, (text, r.text)
    # the overlap names the period it meets, and the end before the start both times
    r = await http.post(
        "/console/duty/crisis/start",
        data={"csrf": csrf, "reason": "Another period on top", "starts_at": start},
    )
    assert f"overlaps crisis {first.id}" in r.text
    assert [p.id for p in led.crisis_periods()] == [first.id]
    assert led.shortages(status=None) == []


async def test_a_viewer_or_technician_may_neither_open_nor_post(
    console: tuple[httpx.AsyncClient, Controller],  # noqa: F811
) -> None:
    http, controller = console
    for role in ("viewer", "technician"):
        csrf = await sign_in(http, role)
        r = await http.get("/console/duty")
        assert r.status_code == 403
        assert 'href="/console/duty"' not in r.text  # not in the menu either
        r = await http.post(
            "/console/duty/crisis/start",
            data={"csrf": csrf, "reason": "Not theirs to decide at all"},
        )
        assert r.status_code == 403
        r = await http.post(
            "/console/duty/shortage/record", data={"csrf": csrf, "gtin": PARA, "notice_ref": "N"}
        )
        assert r.status_code == 403
    r = await http.post("/console/duty/crisis/start", data={"csrf": "forged", "reason": "x" * 20})
    assert r.status_code == 403
    assert controller.ledger.crisis_periods() == [] and controller.ledger.shortages() == []


def test_a_form_time_is_the_sites_local_time() -> None:
    tz = ZoneInfo("Europe/Stockholm")
    assert local_moment("2026-07-01T10:00", "starts_at", tz) == datetime(2026, 7, 1, 8, tzinfo=UTC)
    assert local_moment("2026-01-01T10:00", "starts_at", tz) == datetime(2026, 1, 1, 9, tzinfo=UTC)
    assert local_moment("  ", "starts_at", tz) is None
    with pytest.raises(ValueError, match="ends_at: '31/12' is not a date and time"):
        local_moment("31/12", "ends_at", tz)


def test_a_refusal_names_its_field_and_value() -> None:
    overlap = CrisisRefused(
        "starts_at", "2026-01-01T00:00", "the period overlaps crisis 3", conflict=True
    )
    assert refusal(overlap) == (409, "starts_at: 2026-01-01T00:00: the period overlaps crisis 3")
    named = CrisisRefused("ends_at", "x", "ends_at: x is not after starts_at")
    assert refusal(named) == (422, "ends_at: x is not after starts_at")
    closed = DutyRefused.naming("shortage", 4, "is already closed (by anna)", conflict=True)
    assert refusal(closed) == (409, "shortage: 4 is already closed (by anna)")
    assert refusal(UnknownEntity("gtin", UNKNOWN))[0] == 404
    assert refusal(DutyRefused("shortage_id", 9, "shortage_id: 9 is missing", "missing"))[0] == 404
