"""/api/v1/duty scope and exemptions: a viewer reads, a pharmacist decides as the
audited actor; a refusal names the field and the value (404, 409, 422) and writes
nothing; the compliance report carries scope and levels."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from controller.ledger.schema import audit_log
from tests.api.conftest import TODAY, USERS, Api, auth
from tests.sites import METO, PARA

REVIEW = (TODAY + timedelta(days=120)).isoformat()
UNKNOWN = "07359990009999"


async def call(
    api: Api, method: str, path: str, role: str | None = "pharmacist", body: Any = None
) -> httpx.Response:
    headers = auth(role) if role else {}
    return await api.client.request(method, path, headers=headers, json=body)


def exemption_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gtin": METO,
        "reason": "Licence caps stock at two weeks on hand",
        "risk_assessment": "Supplier delivers within a day; two strengths in stock",
        "measures": "Daily stock check; second supplier contracted",
        "review_date": REVIEW,
        "level_days": 14,
    }
    body.update(changes)
    return body


def audit_count(api: Api) -> int:
    with api.controller.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


async def test_a_pharmacist_runs_an_exemption_through_its_lifecycle(ledger_api: Api) -> None:
    """On SQLite and PostgreSQL."""
    api = ledger_api
    r = await call(api, "POST", "/duty/exemptions", body=exemption_body())
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["gtin"], made["level_days"], made["status"]) == (METO, 14, "active")
    assert made["decided_by"] == USERS["pharmacist"]

    r = await call(api, "GET", f"/duty/exemptions/{METO}", "viewer")
    assert r.status_code == 200 and r.json()["measures"].startswith("Daily"), r.text

    r = await call(api, "PATCH", f"/duty/exemptions/{METO}", body={"level_days": None})
    assert r.status_code == 200 and r.json()["level_days"] is None, r.text
    r = await call(
        api,
        "POST",
        f"/duty/exemptions/{METO}/review",
        body={"review_date": (TODAY + timedelta(days=300)).isoformat(), "note": "still needed"},
    )
    assert r.status_code == 200 and r.json()["reviewed_by"] == USERS["pharmacist"], r.text

    r = await call(api, "GET", "/stock/compliance", "viewer")
    drug = next(c for c in r.json()["categories"] if c["category"] == "drug")
    assert [(e["gtin"], e["level_days"]) for e in drug["exempted"]] == [(METO, None)]
    assert r.json()["exemptions_review_overdue"] == 0

    r = await call(
        api, "POST", f"/duty/exemptions/{METO}/revoke", body={"reason": "Licence cap was lifted"}
    )
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    r = await call(api, "GET", "/duty/exemptions", "viewer")
    assert r.json() == {"exemptions": []}
    r = await call(api, "GET", "/duty/exemptions?include_revoked=true", "viewer")
    assert [e["gtin"] for e in r.json()["exemptions"]] == [METO]


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
async def test_refusals_name_the_field_and_write_nothing(ledger_api: Api) -> None:
    api = ledger_api
    before = audit_count(api)
    past = (TODAY - timedelta(days=1)).isoformat()
    cases: list[tuple[str, str, Any, int, str, Any]] = [
        ("POST", "/duty/exemptions", exemption_body(gtin=UNKNOWN), 404, "gtin", UNKNOWN),
        ("POST", "/duty/exemptions", exemption_body(review_date=past), 422, "review_date", past),
        ("POST", "/duty/exemptions", exemption_body(level_days=30), 422, "level_days", "30"),
        ("POST", "/duty/exemptions", exemption_body(measures="tbd"), 422, "measures", "'tbd'"),
        ("POST", "/duty/exemptions", exemption_body(level_days="5"), 422, "level_days", "5"),
        ("PATCH", f"/duty/exemptions/{PARA}", {"level_days": 3}, 404, "gtin", PARA),
        ("POST", f"/duty/exemptions/{PARA}/review", {"review_date": REVIEW}, 404, "gtin", PARA),
        ("GET", f"/duty/exemptions/{UNKNOWN}", None, 404, "gtin", UNKNOWN),
        ("PUT", f"/duty/products/{PARA}/durability", {"durability": "durable"}, 422, None, None),
        ("PUT", f"/duty/scope/products/{UNKNOWN}", {"reason": "dental_care"}, 404, "gtin", None),
        ("DELETE", f"/duty/scope/products/{PARA}", None, 404, "gtin", PARA),
        ("PUT", "/duty/scope/categories/drug", {"reason": "cheap"}, 422, None, None),
    ]
    for method, path, body, status, field, value in cases:
        r = await call(api, method, path, body=body)
        assert r.status_code == status, (path, r.text)
        if field is not None:
            assert r.json()["field"].endswith(field), (path, r.text)
        if value is not None:
            assert r.json()["value"] == value, (path, r.text)
    assert audit_count(api) == before

    r = await call(api, "POST", "/duty/exemptions", "viewer", exemption_body())
    assert r.status_code == 403 and r.json()["field"] == "role"
    assert (await call(api, "POST", "/duty/exemptions", None, exemption_body())).status_code == 401
    r = await call(api, "POST", "/duty/exemptions", body=exemption_body())
    assert r.status_code == 201
    r = await call(api, "POST", "/duty/exemptions", body=exemption_body())
    assert r.status_code == 409 and r.json()["field"] == "gtin", r.text


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
async def test_scope_is_set_listed_and_shown_in_compliance(ledger_api: Api) -> None:
    api = ledger_api
    r = await call(
        api, "PUT", f"/duty/scope/products/{PARA}", body={"reason": "individual_patient"}
    )
    assert r.status_code == 200 and r.json()["decided_by"] == USERS["pharmacist"], r.text
    r = await call(
        api, "PUT", "/duty/scope/categories/special_food", body={"reason": "dental_care"}
    )
    assert r.status_code == 200, r.text
    r = await call(api, "GET", "/duty/scope", "viewer")
    assert [(e["gtin"], e["category"], e["reason"]) for e in r.json()["entries"]] == [
        (None, "special_food", "dental_care"),
        (PARA, None, "individual_patient"),
    ]
    r = await call(api, "GET", "/stock/compliance", "viewer")
    drug = next(c for c in r.json()["categories"] if c["category"] == "drug")
    assert [(s["gtin"], s["reason"]) for s in drug["out_of_scope"]] == [
        (PARA, "individual_patient")
    ]
    r = await call(api, "GET", "/stock/cover", "viewer")
    row = next(x for x in r.json()["rows"] if x["gtin"] == PARA)
    assert (row["scope"], row["level_days"]) == ("individual_patient", None)

    r = await call(api, "DELETE", "/duty/scope/categories/special_food")
    assert r.json() == {"subject": "category:special_food", "cleared": True}, r.text
    r = await call(api, "DELETE", f"/duty/scope/products/{PARA}")
    assert r.status_code == 200, r.text
    assert (await call(api, "GET", "/duty/scope", "viewer")).json() == {"entries": []}
