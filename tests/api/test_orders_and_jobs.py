"""Dose orders in over HTTP (FHIR and HL7 v2), reviewed by a pharmacist, planned into
jobs and listed; bad messages refused naming the field and the value."""

from __future__ import annotations

import json

from controller.packing.orders import pseudonym
from tests.api.conftest import TODAY, USERS, Api
from tests.api.messages import bundle, good_bundle, hl7_message, medication_request
from tests.sites import METO, PARA


async def test_fhir_orders_are_filed_reviewed_planned_and_listed(ledger_api: Api) -> None:
    api = ledger_api
    body = json.dumps(good_bundle(TODAY))
    r = await api.post(
        "/orders?ward=W1", "technician", content=body, content_type="application/fhir+json"
    )
    assert r.status_code == 201, r.text
    filed = r.json()
    assert filed["format"] == "fhir" and filed["status"] == "pending"
    assert len(filed["added"]) == 3 and filed["duplicates"] == []

    # The same message again adds nothing (and says so with 200).
    again = await api.post(
        "/orders?ward=W1", "technician", content=body, content_type="application/json"
    )
    assert again.status_code == 200, again.text
    assert again.json()["added"] == [] and sorted(again.json()["duplicates"]) == sorted(
        filed["added"]
    )

    # Patients are listed by pseudonym; the clear identifier never comes back.
    listed = await api.get("/orders", "pharmacist", params={"status": "pending"})
    assert listed.status_code == 200, listed.text
    orders = listed.json()["orders"]
    assert listed.json()["count"] == 3 == len(orders)
    assert "CLEAR-PATIENT" not in listed.text
    salt = api.controller.site.pseudonym_salt()
    assert {o["patient"] for o in orders} == {
        pseudonym("CLEAR-PATIENT-0001", salt),
        pseudonym("CLEAR-PATIENT-0002", salt),
    }
    first = next(o for o in orders if o["gtin"] == PARA and o["units"] == 2)
    assert first["times"] == ["08:00", "20:00"] and first["ward"] == "W1"
    assert first["received_by"] == USERS["technician"]

    meto = next(o["id"] for o in orders if o["gtin"] == METO)
    approve = [o["id"] for o in orders if o["id"] != meto]
    r = await api.post("/orders/review", "pharmacist", json={"order_ids": approve, "approve": True})
    assert r.status_code == 200, r.text
    assert r.json() == {"reviewed": 2, "status": "approved", "by": USERS["pharmacist"]}
    r = await api.post(
        "/orders/review",
        "pharmacist",
        json={"order_ids": [meto], "approve": False, "note": "duplicate therapy"},
    )
    assert r.status_code == 200 and r.json()["status"] == "rejected"

    # The reviewer recorded in the audit trail is the token's user.
    trail = await api.get("/audit", "pharmacist", params={"entity": "dose_order", "key": str(meto)})
    assert trail.status_code == 200, trail.text
    entries = trail.json()["entries"]
    assert [e["actor"] for e in entries] == [USERS["technician"], USERS["pharmacist"]]
    assert entries[-1]["new"]["status"] == "rejected"
    assert entries[-1]["new"]["note"] == "duplicate therapy"
    assert entries[-1]["action"] == "review"

    by_status = await api.get("/orders", "admin", params={"status": "approved", "day": TODAY})
    assert sorted(o["id"] for o in by_status.json()["orders"]) == sorted(approve)

    # Planned (by the controller's planner), the jobs are visible to a viewer.
    controller = api.controller
    planned = controller.store.plan(TODAY, fit=controller.fit)
    assert {j.time.strftime("%H:%M") for j in planned} == {"08:00", "20:00"}
    r = await api.get("/jobs", "viewer", params={"day": TODAY.isoformat()})
    assert r.status_code == 200, r.text
    jobs = {j["time"]: j for j in r.json()["jobs"]}
    assert set(jobs) == {"08:00", "20:00"}
    morning = jobs["08:00"]
    assert morning["state"] == "planned" and morning["pouches"] == 2
    assert morning["units_by_gtin"] == {PARA: 3}  # metoprolol was rejected
    assert morning["packers"] == ["PK1"]
    assert "PT-" not in r.text  # pouch labels (pseudonyms) are not listed to viewers

    one = await api.get(f"/jobs/{morning['job_id']}", "viewer")
    assert one.status_code == 200 and one.json() == morning
    assert (await api.get("/jobs", "viewer", params={"state": "completed"})).json()["count"] == 0


async def test_hl7_orders_are_filed_through_the_same_intake(ledger_api: Api) -> None:
    r = await ledger_api.post(
        "/orders", "technician", content=hl7_message(TODAY), content_type="text/plain"
    )
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "hl7v2" and len(r.json()["added"]) == 1
    r = await ledger_api.post(
        "/orders",
        "admin",
        content=hl7_message(TODAY, ward="W2").encode(),
        content_type="x-application/hl7-v2+er7; charset=utf-8",
    )
    assert r.status_code == 201, r.text
    listed = (await ledger_api.get("/orders", "pharmacist")).json()["orders"]
    assert sorted(o["ward"] for o in listed) == ["W1", "W2"]
    assert "19121212-1212" not in json.dumps(listed)


async def test_bad_messages_are_refused_naming_field_and_value(ledger_api: Api) -> None:
    api = ledger_api
    bad_dose = bundle(medication_request("CLEAR-PATIENT-0009", PARA, -1, ("08:00",), TODAY))
    r = await api.post(
        "/orders?ward=W1", "technician", json=bad_dose, content_type="application/fhir+json"
    )
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["field"].endswith("doseAndRate[0].doseQuantity.value"), error
    assert error["value"] == "-1"
    assert error["problems"][0]["patient"].startswith("PT-")
    assert "CLEAR-PATIENT-0009" not in r.text

    r = await api.post(
        "/orders", "technician", content=hl7_message(TODAY, dose="abc"), content_type="text/plain"
    )
    assert r.status_code == 422, r.text
    assert r.json()["field"].startswith("RXE") and r.json()["value"] == "abc"
    assert "19121212-1212" not in r.text

    r = await api.post(
        "/orders", "technician", content="{not json", content_type="application/json"
    )
    assert r.status_code == 422 and r.json()["field"], r.text

    r = await api.post("/orders", "technician", content="hello", content_type="text/plain")
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "payload" and r.json()["value"] == "hel"

    # The Content-Type must be one of the four, and must match the body.
    r = await api.post("/orders", "technician", content="{}", content_type="application/xml")
    assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text
    assert r.json()["value"] == "application/xml"
    r = await api.post(
        "/orders", "technician", content=hl7_message(TODAY), content_type="application/json"
    )
    assert r.status_code == 415 and "HL7 v2" in r.json()["error"], r.text

    r = await api.post(
        "/orders?ward=no%20ward",
        "technician",
        json=good_bundle(TODAY),
        content_type="application/json",
    )
    assert r.status_code == 422 and r.json() == {
        "error": "ward: 'no ward' is not a ward code",
        "field": "ward",
        "value": "no ward",
    }
    # Nothing of any refused message was filed.
    assert (await api.get("/orders", "pharmacist")).json()["count"] == 0


async def test_reviews_and_queries_refuse_bad_input(ledger_api: Api) -> None:
    api = ledger_api
    r = await api.post(
        "/orders?ward=W1", "technician", json=good_bundle(TODAY), content_type="application/json"
    )
    ids = r.json()["added"]

    r = await api.post("/orders/review", "pharmacist", json={"order_ids": ids, "approve": False})
    assert r.status_code == 422 and r.json()["field"] == "note", r.text

    r = await api.post("/orders/review", "pharmacist", json={"order_ids": [9999], "approve": True})
    assert r.status_code == 404, r.text
    assert r.json()["field"] == "order_ids" and r.json()["value"] == "9999"

    assert (
        await api.post("/orders/review", "pharmacist", json={"order_ids": ids, "approve": True})
    ).status_code == 200
    r = await api.post("/orders/review", "pharmacist", json={"order_ids": ids, "approve": True})
    assert r.status_code == 409 and "only pending orders" in r.json()["error"], r.text

    # FastAPI's own validation errors come in the same shape.
    r = await api.post("/orders/review", "pharmacist", json={"order_ids": ids, "approve": "maybe"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "approve" and r.json()["value"] == "maybe"
    r = await api.post("/orders/review", "pharmacist", json={"order_ids": [], "approve": True})
    assert r.status_code == 422 and r.json()["field"] == "order_ids", r.text
    r = await api.get("/orders", "pharmacist", params={"day": "23rd"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "day" and r.json()["value"] == "23rd"
    r = await api.get("/orders", "pharmacist", params={"status": "lost"})
    assert r.status_code == 422 and r.json()["value"] == "lost", r.text

    r = await api.get("/jobs/W9-2026-01-01-0800", "viewer")
    assert r.status_code == 404, r.text
    assert r.json() == {
        "error": "no such job: 'W9-2026-01-01-0800'",
        "field": "job_id",
        "value": "W9-2026-01-01-0800",
    }
    r = await api.get("/no/such/route", "viewer")
    assert r.status_code == 404 and r.json()["field"] == "path", r.text
