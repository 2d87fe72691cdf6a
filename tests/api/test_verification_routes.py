"""Pack verification over HTTP: the alerts, their closing, the queue, a pack's status
and the undo of a decommission, with the controller's VerificationService talking to
the bundled verification system over real sockets; the ledger on SQLite and on
PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from controller.api import create_app
from controller.app import Controller
from controller.config import parse_site
from controller.gs1 import PackId
from controller.verification import VerificationService
from simulators.verification_http import VerificationSimulator
from tests.api.conftest import TODAY, USERS, Api, served, tokens
from tests.sites import METO, site_dict

EXPIRY = TODAY + timedelta(days=200)


def meto(serial: str) -> PackId:
    return PackId(METO, "M-1", EXPIRY, serial)


@dataclass
class VerificationApi(Api):
    sim: VerificationSimulator | None = None

    @property
    def service(self) -> VerificationService:
        assert self.controller.verification is not None
        return self.controller.verification

    @property
    def system(self) -> VerificationSimulator:
        assert self.sim is not None
        return self.sim

    def register(self, *packs: PackId) -> None:
        for p in packs:
            assert p.serial
            self.system.add(p.gtin, p.serial, p.batch, p.expiry)


def verification_site(port: int | None) -> dict[str, object]:
    raw = site_dict()
    raw["stock"][3]["expiry"] = EXPIRY.isoformat()  # METO M-1 with a known expiry
    del raw["stock"][3]["expires_in_days"]
    if port is not None:
        raw["verification"] = {
            "enabled": True,
            "url": f"http://127.0.0.1:{port}",
            "timeout_s": 2,
            "decommission_on": "both",
            "retry_interval_s": 30,
        }
    return raw


@pytest.fixture
async def vapi(ledger_url: str) -> AsyncIterator[VerificationApi]:
    """The verification system on loopback, a controller whose VerificationService
    talks to it over HTTP, and the API in front of that controller."""
    sim = VerificationSimulator()
    port = await sim.start()
    controller = Controller(parse_site(verification_site(port)), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        await asyncio.to_thread(controller.receive_opening_stock, TODAY)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield VerificationApi(client, controller, sim=sim)
    finally:
        await controller.stop()
        controller.close()
        await sim.stop()


async def test_alerts_are_listed_and_closed_by_a_pharmacist(vapi: VerificationApi) -> None:
    api = vapi
    recalled, good = meto("SN-R1"), meto("SN-OK1")
    api.register(recalled, good)
    api.system.set_status(METO, "SN-R1", "recalled")
    # The floor opens the recalled pack for a canister: the system refuses it.
    refusal = await api.service.on_opened(recalled, "PK1/C02")
    assert refusal is not None and not refusal.accepted and "RECALLED" in refusal.message
    unknown = await api.service.verify_received(meto("SN-NOBODY"), "CENTRAL/A01")
    assert (unknown.ok, unknown.code) == (False, "UNKNOWN_SERIAL")

    r = await api.get("/verification/alerts", "technician")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 2
    first, second = body["alerts"]
    assert (first["gtin"], first["serial"], first["code"]) == (METO, "SN-R1", "RECALLED")
    assert first["message"] == f"batch M-1 of {METO} is recalled"
    assert (first["status"], first["closed_by"], first["note"]) == ("open", None, None)
    assert datetime.fromisoformat(first["raised_at"]) <= datetime.now(UTC)
    assert (second["serial"], second["code"]) == ("SN-NOBODY", "UNKNOWN_SERIAL")
    assert set(first) == {
        "id",
        "gtin",
        "serial",
        "code",
        "message",
        "raised_at",
        "status",
        "closed_by",
        "note",
    }
    alert_id = first["id"]

    # The role matrix.
    r = await api.get("/verification/alerts", None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    assert r.json()["field"] == "Authorization"
    r = await api.get("/verification/alerts", "viewer")
    assert r.status_code == 403, r.text
    assert r.json()["field"] == "role" and r.json()["value"] == "viewer"
    assert "technician" in r.json()["error"]
    note = {"note": "pack destroyed; batch M-1 returned to the wholesaler"}
    r = await api.post(f"/verification/alerts/{alert_id}/close", "technician", json=note)
    assert r.status_code == 403 and "pharmacist" in r.json()["error"], r.text
    r = await api.post(f"/verification/alerts/{alert_id}/close", None, json=note)
    assert r.status_code == 401, r.text
    assert [a.status for a in api.service.store.alerts(status=None)] == ["open", "open"]

    # Bad notes are refused before anything is written.
    r = await api.post(f"/verification/alerts/{alert_id}/close", "pharmacist", json={})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "note" and r.json().get("value") is None
    r = await api.post(f"/verification/alerts/{alert_id}/close", "pharmacist", json={"note": "   "})
    assert r.status_code == 422 and r.json()["field"] == "note", r.text
    assert r.json()["value"] == "   "
    r = await api.post(
        f"/verification/alerts/{alert_id}/close", "pharmacist", json={"note": "x" * 201}
    )
    assert r.status_code == 422 and r.json()["field"] == "note", r.text
    r = await api.post(
        f"/verification/alerts/{alert_id}/close",
        "pharmacist",
        json={**note, "actor": "someone:else"},
    )
    assert r.status_code == 422 and r.json()["field"] == "actor", r.text

    # A pharmacist closes it: the token's user is the one who closed it.
    r = await api.post(f"/verification/alerts/{alert_id}/close", "pharmacist", json=note)
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["id"] == alert_id and closed["status"] == "closed"
    assert closed["closed_by"] == USERS["pharmacist"] == "pharmacist:anna"
    assert closed["note"] == note["note"] and closed["code"] == "RECALLED"

    r = await api.get("/verification/alerts", "technician")
    assert [(a["serial"], a["status"]) for a in r.json()["alerts"]] == [("SN-NOBODY", "open")]
    r = await api.get("/verification/alerts", "technician", params={"status": "closed"})
    assert [(a["id"], a["closed_by"]) for a in r.json()["alerts"]] == [
        (alert_id, "pharmacist:anna")
    ]
    r = await api.get("/verification/alerts", "technician", params={"status": "all"})
    assert r.json()["count"] == 2
    assert [a["status"] for a in r.json()["alerts"]] == ["closed", "open"]
    r = await api.get("/verification/alerts", "technician", params={"status": "resolved"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "status" and r.json()["value"] == "resolved"

    # The store wrote the closing to the audit trail, with the pharmacist as the actor.
    r = await api.get(
        "/audit", "pharmacist", params={"entity": "verification_alert", "key": str(alert_id)}
    )
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    assert [(e["actor"], e["new"]) for e in entries] == [
        ("verification", {"code": "RECALLED"}),
        ("pharmacist:anna", "closed"),
    ]
    assert entries[-1]["action"] == "verification alert closed"
    assert entries[-1]["reason"] == note["note"] and entries[-1]["old"] == "open"

    # Closed twice: refused, and the first closing stands.
    r = await api.post(f"/verification/alerts/{alert_id}/close", "admin", json={"note": "again"})
    assert r.status_code == 409, r.text
    assert r.json() == {
        "error": f"verification alert {alert_id} is already closed",
        "field": "id",
        "value": str(alert_id),
    }
    (row,) = api.service.store.alerts(status="closed")
    assert (row.closed_by, row.note) == ("pharmacist:anna", note["note"])

    # An unknown id.
    r = await api.post("/verification/alerts/9999/close", "pharmacist", json=note)
    assert r.status_code == 404, r.text
    assert r.json() == {
        "error": "no such verification alert: 9999",
        "field": "id",
        "value": "9999",
    }
    r = await api.post("/verification/alerts/abc/close", "pharmacist", json=note)
    assert r.status_code == 422 and r.json()["field"] == "id", r.text
    assert r.json()["value"] == "abc"
    r = await api.post("/verification/alerts/99999999999/close", "pharmacist", json=note)
    assert r.status_code == 422 and r.json()["field"] == "id", r.text


async def test_the_queue_after_an_outage_and_a_packs_status(vapi: VerificationApi) -> None:
    api = vapi
    sent, queued = meto("SN-S1"), meto("SN-Q1")
    api.register(sent, queued)
    assert (await api.service.decommission(sent, "dispensed", "PK1/C02")).ok
    api.system.outage("503")  # until cleared
    result = await api.service.decommission(queued, "supplied", "CAB1/P02")
    assert result.ok and result.queued

    r = await api.get("/verification/queue", "technician")
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1
    (pending,) = r.json()["requests"]
    assert pending["key"] == f"decommission:{METO}:SN-Q1"
    assert (pending["gtin"], pending["serial"]) == (METO, "SN-Q1")
    assert (pending["operation"], pending["reason"]) == ("decommission", "supplied")
    assert (pending["status"], pending["attempts"], pending["done_at"]) == ("pending", 1, None)
    assert pending["last_error"].endswith("decommission: HTTP 503")

    r = await api.get("/verification/queue", "technician", params={"status": "done"})
    assert [(q["serial"], q["status"], q["attempts"]) for q in r.json()["requests"]] == [
        ("SN-S1", "done", 1)
    ]
    assert r.json()["requests"][0]["done_at"] is not None
    r = await api.get("/verification/queue", "admin", params={"status": "all"})
    assert [q["serial"] for q in r.json()["requests"]] == ["SN-S1", "SN-Q1"]
    r = await api.get("/verification/queue", "admin", params={"status": "failed"})
    assert r.status_code == 200 and r.json() == {"count": 0, "requests": []}
    r = await api.get("/verification/queue", "admin", params={"status": "open"})
    assert r.status_code == 422 and r.json()["value"] == "open", r.text
    r = await api.get("/verification/queue", "viewer")
    assert r.status_code == 403, r.text
    assert (await api.get("/verification/queue", None)).status_code == 401

    # The packs: one confirmed, one still owed to the system.
    r = await api.get(f"/verification/packs/{METO}/SN-S1", "technician")
    assert r.status_code == 200, r.text
    pack = r.json()
    assert (pack["status"], pack["batch"], pack["expiry"]) == (
        "decommissioned",
        "M-1",
        EXPIRY.isoformat(),
    )
    assert (pack["decommission_reason"], pack["location"]) == ("dispensed", "PK1/C02")
    assert pack["decommissioned_at"] is not None and pack["alert_code"] is None
    r = await api.get(f"/verification/packs/{METO}/SN-Q1", "technician")
    assert r.json()["status"] == "decommissioned" and r.json()["decommissioned_at"] is None
    # A 13-digit GTIN is the same product.
    r = await api.get(f"/verification/packs/{METO[1:]}/SN-Q1", "technician")
    assert r.status_code == 200 and r.json()["gtin"] == METO, r.text

    api.system.clear_outage()
    assert await api.service.retry_pending() == 1
    r = await api.get("/verification/queue", "technician")
    assert r.json() == {"count": 0, "requests": []}
    r = await api.get(f"/verification/packs/{METO}/SN-Q1", "technician")
    assert r.json()["decommissioned_at"] is not None

    # A blocked pack shows its alert.
    blocked = meto("SN-B1")
    api.register(blocked)
    api.system.set_status(METO, "SN-B1", "recalled")
    assert not (await api.service.verify_received(blocked, "CENTRAL/A01")).ok
    r = await api.get(f"/verification/packs/{METO}/SN-B1", "technician")
    assert (r.json()["status"], r.json()["alert_code"]) == ("blocked", "RECALLED")

    r = await api.get(f"/verification/packs/{METO}/SN-NONE", "technician")
    assert r.status_code == 404, r.text
    assert r.json() == {
        "error": f"unknown pack: {METO} serial 'SN-NONE'",
        "field": "serial",
        "value": "SN-NONE",
    }
    r = await api.get("/verification/packs/07359990000021/SN-Q1", "technician")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "gtin" and r.json()["value"] == "07359990000021"
    assert "check digit" in r.json()["error"]
    r = await api.get(f"/verification/packs/{METO}/{'X' * 21}", "technician")
    assert r.status_code == 422 and r.json()["field"] == "serial", r.text
    r = await api.get(f"/verification/packs/{METO}/SN-Q1", "viewer")
    assert r.status_code == 403, r.text


async def test_undo_through_the_api(vapi: VerificationApi) -> None:
    api = vapi
    first, second, kept = meto("SN-U1"), meto("SN-U2"), meto("SN-V1")
    api.register(first, second, kept)
    for p in (first, second):
        assert (await api.service.decommission(p, "supplied", "CAB1/P01")).ok
    assert (await api.service.verify_received(kept, "CENTRAL/A01")).ok
    undo_first = {"gtin": METO, "serial": "SN-U1"}

    r = await api.post("/verification/undo", "technician", json=undo_first)
    assert r.status_code == 403 and "pharmacist" in r.json()["error"], r.text
    assert (await api.post("/verification/undo", None, json=undo_first)).status_code == 401
    assert api.system.packs[(METO, "SN-U1")].status == "decommissioned"

    r = await api.post("/verification/undo", "pharmacist", json=undo_first)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "gtin": METO,
        "serial": "SN-U1",
        "status": "verified",
        "by": "pharmacist:anna",
        "audited": True,
    }
    assert api.system.packs[(METO, "SN-U1")].status == "active"
    assert api.system.requests["undo"] == 1
    r = await api.get(f"/verification/packs/{METO}/SN-U1", "technician")
    assert (r.json()["status"], r.json()["decommissioned_at"]) == ("verified", None)
    r = await api.get("/audit", "pharmacist", params={"entity": "pack", "key": f"{METO}/SN-U1"})
    mine = [e for e in r.json()["entries"] if e["actor"] == "pharmacist:anna"]
    assert [(e["action"], e["old"], e["new"]) for e in mine] == [
        ("decommission undone", "decommissioned", "verified")
    ]

    # Undone already, and a pack never decommissioned: refused, nothing sent.
    for serial, state in (("SN-U1", "verified"), ("SN-V1", "verified")):
        r = await api.post(
            "/verification/undo", "pharmacist", json={"gtin": METO, "serial": serial}
        )
        assert r.status_code == 409, r.text
        assert r.json() == {
            "error": f"undo of {METO} serial {serial!r} refused (NOT_DECOMMISSIONED): "
            f"pack is {state}",
            "field": "serial",
            "value": serial,
        }
    assert api.system.requests["undo"] == 1
    r = await api.post(
        "/verification/undo", "pharmacist", json={"gtin": METO, "serial": "SN-NEVER"}
    )
    assert r.status_code == 404, r.text
    assert r.json()["field"] == "serial" and r.json()["value"] == "SN-NEVER"
    r = await api.post(
        "/verification/undo", "pharmacist", json={"gtin": "07359990000021", "serial": "SN-U2"}
    )
    assert r.status_code == 422 and r.json()["field"] == "gtin", r.text
    r = await api.post("/verification/undo", "pharmacist", json={"gtin": METO})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "serial" and r.json().get("value") is None

    # An outage of the system: 503 naming it, and nothing changes.
    api.system.outage("503")
    r = await api.post("/verification/undo", "pharmacist", json={"gtin": METO, "serial": "SN-U2"})
    assert r.status_code == 503, r.text
    assert (r.json()["field"], r.json()["value"]) == ("serial", "SN-U2")
    assert "verification system is unavailable" in r.json()["error"]
    assert r.json()["error"].endswith("undo: HTTP 503")
    assert api.system.packs[(METO, "SN-U2")].status == "decommissioned"
    row = api.service.store.pack(METO, "SN-U2")
    assert row is not None and row.status == "decommissioned"
    api.system.clear_outage()

    # The system's own refusal: the window has passed.
    api.system.advance(timedelta(days=11).total_seconds())
    r = await api.post("/verification/undo", "pharmacist", json={"gtin": METO, "serial": "SN-U2"})
    assert r.status_code == 409, r.text
    assert "refused (UNDO_WINDOW_CLOSED)" in r.json()["error"]
    assert "undo is allowed for 10 days" in r.json()["error"]
    assert api.system.packs[(METO, "SN-U2")].status == "decommissioned"
    assert api.service.store.alerts() == []  # a refused undo blocks nothing


async def test_a_queued_decommission_is_not_undone_before_it_was_sent(
    vapi: VerificationApi,
) -> None:
    api = vapi
    pack = meto("SN-W1")
    api.register(pack)
    api.system.outage("drop", requests=1)
    assert (await api.service.decommission(pack, "dispensed", "PK1/C02")).queued
    r = await api.post("/verification/undo", "admin", json={"gtin": METO, "serial": "SN-W1"})
    assert r.status_code == 409, r.text
    assert "(NOT_SENT)" in r.json()["error"] and r.json()["value"] == "SN-W1"
    assert api.system.requests["undo"] == 0


@pytest.fixture
async def disabled_api(ledger_url: str) -> AsyncIterator[Api]:
    """A running controller on a site without pack verification."""
    controller = Controller(parse_site(verification_site(None)), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield Api(client, controller)
    finally:
        await controller.stop()
        controller.close()


async def test_undo_needs_verification_enabled(disabled_api: Api) -> None:
    body = {"gtin": METO, "serial": "SN-1"}
    assert disabled_api.controller.verification is None
    r = await disabled_api.post("/verification/undo", "pharmacist", json=body)
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "verification.enabled" and r.json()["value"] == "false"
    assert "not enabled" in r.json()["error"]
    # The ledger routes answer without verification: nothing has been recorded.
    r = await disabled_api.get("/verification/alerts", "technician")
    assert r.status_code == 200 and r.json() == {"count": 0, "alerts": []}, r.text


async def test_undo_needs_a_running_controller(ledger_api: Api) -> None:
    body = {"gtin": METO, "serial": "SN-1"}
    r = await ledger_api.post("/verification/undo", "pharmacist", json=body)
    assert r.status_code == 503, r.text
    assert "needs a running controller" in r.json()["error"]
    r = await ledger_api.get("/verification/queue", "technician", params={"status": "all"})
    assert r.status_code == 200 and r.json() == {"count": 0, "requests": []}, r.text
