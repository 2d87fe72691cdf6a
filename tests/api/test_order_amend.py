"""A pending dose order approved reduced or substituted over HTTP: always with a
reason, the token's user named in the audit trail, refusals naming field and value."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import time, timedelta

import pytest

from controller.api import create_app
from controller.app import Controller
from controller.config import parse_site
from controller.packing.orders import DoseOrder
from tests.api.conftest import TODAY, USERS, Api, served, tokens
from tests.sites import FURO, PARA, PARA2, purchasing_site


@pytest.fixture
async def grouped_api(ledger_url: str) -> AsyncIterator[Api]:
    """The API over a ledger whose PARA and PARA2 share a substitution group."""
    controller = Controller(parse_site(purchasing_site()), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        app = create_app(
            site=controller.site, ledger=controller.ledger, store=controller.store, tokens=tokens()
        )
        async with served(app) as client:
            yield Api(client, controller)
    finally:
        controller.close()


def pending(api: Api, *patients: str, units: int = 3) -> list[int]:
    orders = [
        DoseOrder(p, "W1", PARA, units, (time(8, 0),), TODAY, TODAY + timedelta(days=1))
        for p in patients
    ]
    result = api.controller.store.submit(orders, source="hl7", actor="intake", review_required=True)
    return list(result.added)


async def test_a_pharmacist_reduces_and_substitutes_with_a_reason(grouped_api: Api) -> None:
    api = grouped_api
    a, b = await asyncio.to_thread(pending, api, "PT-000000000A", "PT-000000000B")

    r = await api.post(
        f"/orders/{a}/amend", "pharmacist", json={"units": 1, "note": "renal function"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["status"], body["units"], body["gtin"]) == (a, "approved", 1, PARA)
    assert (body["reviewed_by"], body["review_note"]) == (USERS["pharmacist"], "renal function")

    r = await api.post(
        f"/orders/{b}/amend", "admin", json={"gtin": PARA2, "units": 2, "note": "shortage"}
    )
    assert r.status_code == 200, r.text
    assert (r.json()["gtin"], r.json()["units"]) == (PARA2, 2)

    trail = await api.get("/audit", "pharmacist", params={"entity": "dose_order", "key": str(a)})
    last = trail.json()["entries"][-1]
    assert (last["actor"], last["action"]) == (USERS["pharmacist"], "review")
    assert last["old"] == {"status": "pending", "units": 3}
    assert last["new"]["units"] == 1 and last["new"]["note"] == "renal function"

    listed = (await api.get("/orders", "pharmacist", params={"status": "approved"})).json()
    assert {(o["id"], o["gtin"], o["units"]) for o in listed["orders"]} == {
        (a, PARA, 1),
        (b, PARA2, 2),
    }


async def test_amend_refusals_name_field_and_value(grouped_api: Api) -> None:
    api = grouped_api
    (a,) = await asyncio.to_thread(pending, api, "PT-000000000A", units=2)

    async def refused(order_id: int, body: dict[str, object], role: str = "pharmacist") -> dict:
        r = await api.post(f"/orders/{order_id}/amend", role, json=body)
        return {"status": r.status_code, **r.json()}

    got = await refused(a, {"units": 1}, "technician")
    assert got["status"] == 403
    got = await refused(a, {"units": 1}, "viewer")
    assert got["status"] == 403
    got = await refused(a, {"units": 1})
    assert (got["status"], got["field"]) == (422, "note")
    got = await refused(a, {"units": 1, "note": "   "})
    assert (got["status"], got["field"]) == (422, "note")
    got = await refused(a, {"note": "why"})
    assert (got["status"], got["field"]) == (422, "units")
    got = await refused(a, {"units": 2, "note": "why"})
    assert (got["status"], got["field"], got["value"]) == (422, "units", "2")
    assert "not fewer than the 2" in got["error"]
    got = await refused(a, {"units": 0, "note": "why"})
    assert (got["status"], got["field"]) == (422, "units")
    got = await refused(a, {"gtin": FURO, "note": "why"})
    assert (got["status"], got["field"], got["value"]) == (422, "gtin", FURO)
    got = await refused(a, {"gtin": "abc", "note": "why"})
    assert (got["status"], got["field"]) == (422, "gtin")
    got = await refused(a, {"units": 1, "note": "why", "approve": True})
    assert got["status"] == 422
    got = await refused(a + 1000, {"units": 1, "note": "why"})
    assert (got["status"], got["field"], got["value"]) == (404, "id", str(a + 1000))
    got = await refused(2**31, {"units": 1, "note": "why"})
    assert (got["status"], got["field"]) == (422, "id")

    listed = (await api.get("/orders", "pharmacist")).json()["orders"]
    assert [(o["status"], o["units"], o["gtin"]) for o in listed] == [("pending", 2, PARA)]

    r = await api.post(f"/orders/{a}/amend", "pharmacist", json={"units": 1, "note": "why"})
    assert r.status_code == 200, r.text
    got = await refused(a, {"units": 1, "note": "again"})
    assert (got["status"], got["field"], got["value"]) == (409, "id", str(a))
    assert "only pending orders" in got["error"]
