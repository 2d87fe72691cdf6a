"""Stock reports and the audit trail over HTTP: the same numbers as the report
functions, the same refusals; and the OpenAPI description."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

from controller.ledger import debiting, reports
from tests.api.conftest import TODAY, Api
from tests.sites import FURO, METO, PARA


async def test_stock_reports_match_the_ledger_reports(ledger_api: Api) -> None:
    api = ledger_api
    led = api.controller.ledger

    r = await api.get("/stock/balances", "viewer")
    assert r.status_code == 200, r.text
    expected = reports.balances(led, today=TODAY)
    assert r.json() == reports.to_jsonable(expected)
    assert {row["gtin"]: row["on_hand"] for row in r.json()["rows"]} == {
        PARA: 650,
        METO: 300,
        FURO: 10,
    }
    assert r.json()["value"] == "480.00"  # 960 units at 0.50 SEK

    r = await api.get("/stock/balances", "viewer", params={"location": "CENTRAL/A02", "by": "lot"})
    assert r.status_code == 200, r.text
    assert {(row["batch"], row["on_hand"]) for row in r.json()["rows"]} == {
        ("P-EARLY", 50),
        ("P-SHORT", 100),
    }
    r = await api.get("/stock/balances", "viewer", params={"gtin": "7359990000020"})
    assert [row["gtin"] for row in r.json()["rows"]] == [METO] and r.json()["on_hand"] == 300

    r = await api.get("/stock/balances", "viewer", params={"location": "CENTRAL/Z99"})
    assert r.status_code == 404, r.text
    assert r.json() == {
        "error": "unknown location: 'CENTRAL/Z99'",
        "field": "location",
        "value": "CENTRAL/Z99",
    }
    r = await api.get("/stock/balances", "viewer", params={"gtin": "07359990000014"})
    assert r.status_code == 422 and r.json()["field"] == "gtin", r.text
    assert r.json()["value"] == "07359990000014" and "check digit" in r.json()["error"]
    r = await api.get("/stock/balances", "viewer", params={"by": "shelf"})
    assert r.status_code == 422 and r.json()["field"] == "by" and r.json()["value"] == "shelf"

    r = await api.get("/stock/expiring", "viewer", params={"days": 10})
    assert r.status_code == 200, r.text
    assert [(row["batch"], row["days_left"]) for row in r.json()["rows"]] == [("P-SHORT", 5)]
    assert r.json()["within_days"] == 10 and r.json()["units"] == 100
    default = await api.get("/stock/expiring", "viewer")
    assert default.json()["within_days"] == 90
    assert {row["batch"] for row in default.json()["rows"]} == {"P-SHORT", "P-EARLY"}
    r = await api.get("/stock/expiring", "viewer", params={"days": -1})
    assert r.status_code == 422 and r.json()["field"] == "days" and r.json()["value"] == "-1"

    now = datetime.now(UTC).replace(microsecond=0)
    r = await api.get("/stock/cover", "viewer", params={"now": now.isoformat()})
    assert r.status_code == 200, r.text
    cover = reports.to_jsonable(reports.days_of_cover(led, now=now))
    assert r.json()["rows"] == cover["rows"] and len(cover["rows"]) == 4
    assert {row["status"] for row in r.json()["rows"]} == {"no consumption"}

    r = await api.get(
        "/stock/compliance", "viewer", params={"obligation_days": 60, "now": now.isoformat()}
    )
    assert r.status_code == 200, r.text
    summary = reports.to_jsonable(reports.compliance_summary(led, now=now, obligation_days=60))
    assert r.json()["categories"] == summary["categories"]
    assert r.json()["obligation_days"] == 60 and r.json()["products"] == 4
    r = await api.get("/stock/cover", "viewer", params={"now": "yesterday"})
    assert r.status_code == 422 and r.json()["field"] == "now", r.text


async def test_audit_trail_is_read_in_chain_order(ledger_api: Api) -> None:
    api = ledger_api
    r = await api.get("/audit", "pharmacist", params={"limit": 5})
    assert r.status_code == 200, r.text
    latest = r.json()["entries"]
    assert len(latest) == 5 and r.json()["count"] == 5
    seqs = [e["seq"] for e in latest]
    assert seqs == sorted(seqs)
    # The latest five: the opening stock was booked last.
    assert {e["actor"] for e in latest} == {"site-setup"}
    assert latest[-1]["entity"] == "command" and latest[-1]["action"] == "receive"
    assert latest[-1]["new"] == {"kind": "receive", "lines": 1, "units": 10}
    assert latest[-3]["entity"] == "movement" and latest[-3]["new"]["quantity"] == 10

    first = await api.get("/audit", "admin", params={"after": 0, "limit": 3})
    assert [e["seq"] for e in first.json()["entries"]] == [1, 2, 3]
    page = await api.get("/audit", "admin", params={"after": 3, "limit": 2})
    assert [e["seq"] for e in page.json()["entries"]] == [4, 5]

    products = await api.get("/audit", "admin", params={"entity": "product", "limit": 1000})
    assert products.json()["count"] == 4
    assert {e["key"] for e in products.json()["entries"]} == {PARA, METO, FURO, "07359990000044"}

    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await api.get("/audit", "admin", params={"since": later})).json()["count"] == 0
    earlier = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    r = await api.get("/audit", "admin", params={"since": earlier, "limit": 1})
    assert r.json()["entries"][0]["seq"] == 1

    r = await api.get("/audit", "admin", params={"limit": 0})
    assert r.status_code == 422 and r.json()["field"] == "limit" and r.json()["value"] == "0"


EXPECTED_ROUTES = {
    ("post", "/api/v1/orders"): "technician",
    ("get", "/api/v1/orders"): "pharmacist",
    ("post", "/api/v1/orders/review"): "pharmacist",
    ("post", "/api/v1/orders/{id}/amend"): "pharmacist",
    ("get", "/api/v1/jobs"): "viewer",
    ("get", "/api/v1/jobs/{job_id}"): "viewer",
    ("post", "/api/v1/packers/{name}/commands"): "technician",
    ("get", "/api/v1/stock/balances"): "viewer",
    ("get", "/api/v1/duty/preparedness"): "viewer",
    ("put", "/api/v1/duty/preparedness"): "pharmacist",
    ("get", "/api/v1/duty/crisis"): "viewer",
    ("post", "/api/v1/duty/crisis"): "pharmacist",
    ("post", "/api/v1/duty/crisis/{crisis_id}/end"): "pharmacist",
    ("get", "/api/v1/stock/expiring"): "viewer",
    ("get", "/api/v1/stock/cover"): "viewer",
    ("get", "/api/v1/stock/compliance"): "viewer",
    ("post", "/api/v1/stock/moves"): "technician",
    ("post", "/api/v1/stock/waste-expired"): "technician",
    ("get", "/api/v1/debiting"): "pharmacist",
    ("get", "/api/v1/duty/shortages"): "viewer",
    ("post", "/api/v1/duty/shortages"): "pharmacist",
    ("patch", "/api/v1/duty/shortages/{shortage_id}"): "pharmacist",
    ("post", "/api/v1/duty/shortages/{shortage_id}/close"): "pharmacist",
    ("get", "/api/v1/duty/rationing"): "viewer",
    ("get", "/api/v1/duty/rationing/draws"): "viewer",
    ("post", "/api/v1/duty/rationing"): "pharmacist",
    ("post", "/api/v1/duty/rationing/{rule_id}/end"): "pharmacist",
    ("get", "/api/v1/duty/licences"): "viewer",
    ("post", "/api/v1/duty/licences"): "pharmacist",
    ("post", "/api/v1/duty/licences/{number}/revoke"): "pharmacist",
    ("get", "/api/v1/refills"): "viewer",
    ("post", "/api/v1/refills/scan"): "technician",
    ("get", "/api/v1/verification/alerts"): "technician",
    ("post", "/api/v1/verification/alerts/{id}/close"): "pharmacist",
    ("get", "/api/v1/verification/queue"): "technician",
    ("get", "/api/v1/verification/packs/{gtin}/{serial}"): "technician",
    ("post", "/api/v1/verification/undo"): "pharmacist",
    ("get", "/api/v1/purchasing/suppliers"): "viewer",
    ("get", "/api/v1/purchasing/suppliers/reliability"): "viewer",
    ("get", "/api/v1/purchasing/orders"): "technician",
    ("post", "/api/v1/purchasing/orders"): "pharmacist",
    ("get", "/api/v1/purchasing/orders/{number}"): "technician",
    ("post", "/api/v1/purchasing/orders/{number}/deliveries"): "technician",
    ("post", "/api/v1/purchasing/orders/{number}/close"): "pharmacist",
    ("get", "/api/v1/audit"): "pharmacist",
    ("get", "/api/v1/health"): None,
    ("post", "/api/v1/ward-supply/requisitions"): "technician",
    ("get", "/api/v1/ward-supply/requisitions"): "viewer",
    ("get", "/api/v1/ward-supply/requisitions/{number}"): "viewer",
    ("get", "/api/v1/ward-supply/review"): "viewer",
    ("post", "/api/v1/ward-supply/review/approve-routine"): "pharmacist",
    ("post", "/api/v1/ward-supply/lines/{id}/decision"): "pharmacist",
    ("post", "/api/v1/ward-supply/pick-lists"): "technician",
    ("get", "/api/v1/ward-supply/pick-lists"): "viewer",
    ("get", "/api/v1/ward-supply/pick-lists/{number}"): "viewer",
    ("post", "/api/v1/ward-supply/pick-lists/{number}/scans"): "technician",
    ("post", "/api/v1/ward-supply/pick-lists/{number}/dispatch"): "technician",
    ("get", "/api/v1/ward-supply/notes"): "viewer",
    ("get", "/api/v1/ward-supply/notes/{number}"): "viewer",
    ("get", "/api/v1/ward-supply/notes/{number}/print"): "viewer",
    ("post", "/api/v1/ward-supply/notes/{number}/receipt"): "technician",
    ("post", "/api/v1/ward-supply/receipts/scan"): "technician",
    ("get", "/api/v1/ward-supply/drug-rooms"): "viewer",
    ("post", "/api/v1/ward-supply/drug-rooms/{code}/top-up"): "technician",
    ("get", "/api/v1/ward-supply/drug-rooms/{code}/par"): "viewer",
    ("get", "/api/v1/ward-supply/reliability"): "viewer",
    ("get", "/api/v1/duty/scope"): "viewer",
    ("put", "/api/v1/duty/scope/products/{gtin}"): "pharmacist",
    ("delete", "/api/v1/duty/scope/products/{gtin}"): "pharmacist",
    ("put", "/api/v1/duty/scope/categories/{category}"): "pharmacist",
    ("delete", "/api/v1/duty/scope/categories/{category}"): "pharmacist",
    ("put", "/api/v1/duty/products/{gtin}/durability"): "pharmacist",
    ("get", "/api/v1/duty/exemptions"): "viewer",
    ("post", "/api/v1/duty/exemptions"): "pharmacist",
    ("get", "/api/v1/duty/exemptions/{gtin}"): "viewer",
    ("post", "/api/v1/duty/exemptions/{gtin}/review"): "pharmacist",
    ("patch", "/api/v1/duty/exemptions/{gtin}"): "pharmacist",
    ("post", "/api/v1/duty/exemptions/{gtin}/revoke"): "pharmacist",
    ("get", "/api/v1/duty/external-use"): "viewer",
    ("post", "/api/v1/duty/external-use"): "pharmacist",
    ("post", "/api/v1/duty/external-use/import"): "pharmacist",
    ("get", "/api/v1/duty/followup"): "viewer",
}
# Answers a printable page (text/html), not JSON.
HTML_ROUTES = {("get", "/api/v1/ward-supply/notes/{number}/print")}


async def test_openapi_lists_every_route_with_its_security(ledger_api: Api) -> None:
    client = ledger_api.client
    r = await client.get(client.base_url.copy_with(path="/openapi.json"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    found = {
        (method, path): op for path, item in doc["paths"].items() for method, op in item.items()
    }
    assert set(found) == set(EXPECTED_ROUTES)
    tags = {t["name"] for t in doc["tags"]}
    schemas = doc["components"]["schemas"]
    for key, role in EXPECTED_ROUTES.items():
        op = found[key]
        assert op["tags"] and set(op["tags"]) <= tags, key
        ok = op["responses"].get("200") or op["responses"]["201"]
        if key in HTML_ROUTES:
            assert "text/html" in ok["content"], key
        else:
            ref = ok["content"]["application/json"]["schema"]["$ref"]
            assert ref.split("/")[-1] in schemas, key
        if role is None:
            assert "security" not in op, key
            continue
        assert op["security"] == [{"bearerAuth": []}], key
        assert op["x-required-role"] == role, key
        assert role in op["description"], key
        for status in ("401", "403", "422"):
            error_ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert error_ref.endswith("/ErrorBody"), key
    body = found[("post", "/api/v1/orders")]["requestBody"]["content"]
    assert set(body) == {
        "application/fhir+json",
        "application/json",
        "x-application/hl7-v2+er7",
        "application/hl7-v2+er7",
        "text/plain",
    }
    # Every 422 documents the API's error shape, not FastAPI's default.
    assert "HTTPValidationError" not in schemas


async def test_ward_debiting_as_json_and_csv_for_pharmacists(ledger_api: Api) -> None:
    api = ledger_api
    led = api.controller.ledger
    site = api.controller.site
    led.clock = lambda: datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
    led.transfer(
        "fill-cab1",
        gtin=PARA,
        quantity=20,
        from_location="CENTRAL/A01",
        to_location="CAB1/P01",
        actor="test",
        reason="fill",
    )
    led.consume("w-1", gtin=PARA, quantity=12, location="CAB1/P01", actor="test", reason="dose")
    led.consume("s-1", gtin=METO, quantity=3, location="CENTRAL/A01", actor="test", reason="x")

    for role in ("viewer", "technician"):
        r = await api.get("/debiting", role, params={"month": "2026-11"})
        assert r.status_code == 403 and "pharmacist" in r.json()["error"], r.text

    r = await api.get("/debiting", "pharmacist", params={"month": "2026-11"})
    assert r.status_code == 200, r.text
    expected = debiting.ward_debiting(
        led,
        month=date(2026, 11, 1),
        tz=site.site.timezone,
        wards=site.ward_map(),
        cabinets=site.cabinet_wards(),
    )
    body = r.json()
    same = reports.to_jsonable(expected)
    for bound in ("since", "until"):  # the API writes UTC as Z
        assert datetime.fromisoformat(body.pop(bound)) == getattr(expected, bound)
        del same[bound]
    assert body == same
    assert [(x["cost_centre"], x["ward"], x["units"], x["value"]) for x in body["lines"]] == [
        ("4711", "W1", 12, "6.00"),  # the opening lots carry the catalogue's 0.50
        ("", "unassigned", 3, "1.50"),
    ]
    assert body["reconciliation"]["balanced"] is True
    assert body["reconciliation"]["ledger_units"] == 15

    r = await api.get("/debiting", "admin", params={"month": "2026-11", "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text), delimiter=";"))
    assert [(x["ward"], x["units"], x["value_sek"]) for x in rows] == [
        ("W1", "12", "6.00"),
        ("unassigned", "3", "1.50"),
        ("", "15", "7.50"),
    ]
    assert rows[-1]["cost_centre"] == "TOTAL"

    r = await api.get("/debiting", "pharmacist", params={"month": "2026-13"})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "month" and r.json()["value"] == "2026-13"
    assert "2026-13" in r.json()["error"]
    r = await api.get("/debiting", "pharmacist", params={"format": "xml"})
    assert r.status_code == 422 and r.json()["field"] == "format", r.text
