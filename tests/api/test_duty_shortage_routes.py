"""/api/v1/duty shortages, rationing and licences: a viewer reads, a pharmacist decides
(and is the audited actor); bad bodies are named and write nothing."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from controller.ledger.schema import audit_log
from controller.ledger.schema_duty import licences, rationing_rules, shortages
from tests.api.conftest import TODAY, USERS, Api, auth
from tests.sites import FURO, METO, PARA


def count(api: Api, table: object) -> int:
    with api.controller.ledger.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


async def test_a_shortage_with_rationing_and_a_licence_over_http(ledger_api: Api) -> None:
    api = ledger_api
    body = {
        "gtin": PARA,
        "notice_ref": "N-41",
        "supplier": "WHOLE",
        "expected_end": str(TODAY + timedelta(days=14)),
        "substitutes": [METO],
    }
    r = await api.post("/duty/shortages", "viewer", json=body)
    assert r.status_code == 403 and r.json()["field"] == "role", r.text
    r = await api.post("/duty/shortages", "pharmacist", json=body)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert r.json()["recorded_by"] == USERS["pharmacist"]
    r = await api.post("/duty/shortages", "pharmacist", json=body)
    assert r.status_code == 409 and r.json()["field"] == "notice_ref", r.text
    r = await api.get("/duty/shortages", "viewer")
    assert r.status_code == 200 and r.json()["count"] == 1, r.text
    (listed,) = r.json()["shortages"]
    assert listed["substitutes"] == [{"gtin": METO, "name": "Metoprolol 50", "free_units": 300}]
    r = await api.client.patch(
        f"/duty/shortages/{sid}",
        headers=auth("pharmacist"),
        json={"substitutes": [METO, FURO]},
    )
    assert r.status_code == 200 and len(r.json()["substitutes"]) == 2, r.text

    rule = {"gtin": PARA, "cap_per_ward_day": 50, "priority_wards": ["W2"], "reason": "N-41",
            "shortage_id": sid}  # fmt: skip
    r = await api.post("/duty/rationing", "pharmacist", json=rule)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    r = await api.post("/duty/rationing", "pharmacist", json=rule)
    assert r.status_code == 409 and f"rule {rid}" in r.json()["error"], r.text
    r = await api.get("/duty/rationing", "viewer")
    assert [x["id"] for x in r.json()["rules"]] == [rid]
    r = await api.get("/duty/rationing/draws", "viewer")
    assert r.status_code == 200 and r.json() == {"count": 0, "draws": []}
    r = await api.post(f"/duty/rationing/{rid}/end", "pharmacist")
    assert r.status_code == 200 and r.json()["ends_at"] is not None, r.text
    r = await api.post(f"/duty/rationing/{rid}/end", "pharmacist")
    assert r.status_code == 409, r.text
    r = await api.post(f"/duty/shortages/{sid}/close", "pharmacist")
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    r = await api.get("/duty/shortages", "viewer", params={"status": "all"})
    assert [x["status"] for x in r.json()["shortages"]] == ["closed"]

    lic = {"gtin": FURO, "holder_kind": "ward", "holder": "W1", "number": "LIC-1",
           "valid_from": str(TODAY), "valid_to": str(TODAY + timedelta(days=30)),
           "fee_sek": "1200.00"}  # fmt: skip
    r = await api.post("/duty/licences", "pharmacist", json=lic)
    assert r.status_code == 201 and r.json()["fee_sek"] == "1200.00", r.text
    r = await api.get("/duty/licences", "viewer", params={"valid_on": str(TODAY)})
    assert [x["number"] for x in r.json()["licences"]] == ["LIC-1"]
    assert r.json()["total_fee_sek"] == "1200.00"
    r = await api.post("/duty/licences/LIC-1/revoke", "pharmacist", json={"reason": "ended"})
    assert r.status_code == 200 and r.json()["revoked_by"] == USERS["pharmacist"], r.text
    r = await api.get("/duty/licences", "viewer", params={"valid_on": str(TODAY)})
    assert r.json() == {"count": 0, "total_fee_sek": "0.00", "licences": []}


async def test_bad_bodies_are_named_and_write_nothing(ledger_api: Api) -> None:
    api = ledger_api
    tables = (shortages, rationing_rules, licences)
    before = [count(api, t) for t in tables] + [count(api, audit_log)]
    past = str(TODAY - timedelta(days=1))
    lic = {"gtin": FURO, "holder_kind": "ward", "holder": "W1", "number": "L",
           "valid_from": str(TODAY), "valid_to": str(TODAY), "fee_sek": "1"}  # fmt: skip
    cases: list[tuple[str, dict[str, object], int, str, str | None]] = [
        ("/duty/shortages", {"gtin": "07359990099999", "notice_ref": "N"}, 404, "gtin",
         "07359990099999"),
        ("/duty/shortages", {"gtin": PARA, "notice_ref": "N", "substitutes": [PARA]}, 422,
         "substitutes", PARA),
        ("/duty/shortages", {"gtin": PARA, "notice_ref": "N", "substitutes": ["07359990088888"]},
         404, "substitute", "07359990088888"),
        ("/duty/shortages", {"gtin": PARA, "notice_ref": "N", "expected_end": past}, 422,
         "expected_end", past),
        ("/duty/shortages", {"gtin": PARA, "notice_ref": "N", "colour": "red"}, 422, "colour",
         "red"),
        ("/duty/rationing", {"gtin": PARA, "cap_per_ward_day": 5, "priority_wards": ["XX"],
                             "reason": "r"}, 422, "priority_wards", "XX"),
        ("/duty/rationing", {"gtin": PARA, "cap_per_ward_day": -5, "reason": "r"}, 422,
         "cap_per_ward_day", "-5"),
        ("/duty/rationing", {"gtin": PARA, "cap_per_ward_day": 5, "reason": "r",
                             "shortage_id": 9}, 404, "shortage", "9"),
        ("/duty/licences", {**lic, "holder": "XX"}, 422, "holder", "XX"),
        ("/duty/licences", {**lic, "valid_to": past}, 422, "valid_to", past),
        ("/duty/licences", {**lic, "fee_sek": "-1"}, 422, "fee_sek", "-1"),
        ("/duty/licences", {**lic, "holder_kind": "room"}, 422, "holder_kind", "room"),
        ("/duty/shortages/5/close", {}, 404, "shortage", "5"),
        ("/duty/licences/NOPE/revoke", {}, 404, "licence", "NOPE"),
    ]  # fmt: skip
    for path, body, status, field, value in cases:
        r = await api.post(path, "pharmacist", json=body)
        assert r.status_code == status, (path, body, r.text)
        got = r.json()
        if "problems" in got:
            (p,) = got["problems"]
            got = {"field": p["field"], "value": p.get("value")}
        assert (got["field"], got.get("value")) == (field, value), (path, body, r.text)
    assert [count(api, t) for t in tables] + [count(api, audit_log)] == before
