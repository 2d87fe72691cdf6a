"""The preparedness list and crisis periods over HTTP: viewers read, pharmacists decide
(as the audited actor), a bad list is refused with every problem and nothing written,
an overlapping or ended period is a conflict naming the other."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from controller.ledger.schema import audit_log
from tests.api.conftest import USERS, Api, auth
from tests.sites import FURO, METO, PARA

HEADER = "gtin;target_units;floor_units;name\n"
REASON = "regional crisis decision RD-2027-3"


def _actors(api: Api, entity: str) -> set[str]:
    with api.controller.ledger.engine.connect() as conn:
        return set(
            conn.execute(select(audit_log.c.actor).where(audit_log.c.entity == entity)).scalars()
        )


async def test_the_preparedness_list_is_replaced_whole_by_a_pharmacist(ledger_api: Api) -> None:
    api = ledger_api
    good = {"csv": f"{HEADER}{PARA};500;200;Paracetamol\n{METO};100;0\n", "list_name": "lista 2027"}
    r = await api.client.put("/duty/preparedness", json=good, headers=auth("technician"))
    assert r.status_code == 403, r.text
    bad = {
        "csv": f"{HEADER}{PARA};500;900\n07350000000047;1;1\n{PARA[:-1]}9;1;1\n",
        "list_name": "x",
    }
    r = await api.client.put("/duty/preparedness", json=bad, headers=auth("pharmacist"))
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert [(p["field"], p["message"]) for p in problems][:2] == [
        ("floor_units", "line 2: floor_units: 900 is above target_units 500"),
        ("gtin", "line 3: gtin: 07350000000047 is not a known product"),
    ]
    assert problems[2]["field"] == "gtin" and problems[2]["message"].startswith("line 4: gtin:")
    r = await api.get("/duty/preparedness", "viewer")
    assert r.status_code == 200 and r.json() == {"count": 0, "targets": []}

    r = await api.client.put("/duty/preparedness", json=good, headers=auth("pharmacist"))
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["removed"]) == (sorted([PARA, METO]), [])
    r = await api.get("/duty/preparedness", "viewer")
    assert [
        (x["gtin"], x["target_units"], x["floor_units"], x["imported_by"])
        for x in r.json()["targets"]
    ] == [
        (METO, 100, 0, USERS["pharmacist"]),
        (PARA, 500, 200, USERS["pharmacist"]),
    ]
    assert _actors(api, "preparedness") == {USERS["pharmacist"]}


async def test_crisis_periods_are_decided_refused_on_overlap_and_ended(ledger_api: Api) -> None:
    api = ledger_api
    body = {"reason": REASON, "categories": ["drug"]}
    r = await api.post("/duty/crisis", "viewer", json=body)
    assert r.status_code == 403, r.text
    r = await api.post("/duty/crisis", "pharmacist", json={**body, "categories": ["drugs"]})
    assert r.status_code == 422 and r.json()["field"] == "categories", r.text
    r = await api.post("/duty/crisis", "pharmacist", json={**body, "gtins": ["07350000000047"]})
    assert r.status_code == 422 and r.json()["value"] == "07350000000047", r.text
    r = await api.post("/duty/crisis", "pharmacist", json=body)
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["categories"], first["in_force"], first["decided_by"]) == (
        ["drug"],
        True,
        USERS["pharmacist"],
    )
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    r = await api.post(
        "/duty/crisis", "pharmacist", json={"reason": REASON, "gtins": [FURO], "starts_at": later}
    )
    assert r.status_code == 409, r.text
    assert f"overlaps crisis {first['id']} " in r.json()["error"]

    end = {"reason": "supply restored, decision RD-2027-4"}
    r = await api.post(f"/duty/crisis/{first['id']}/end", "pharmacist", json=end)
    assert r.status_code == 200 and r.json()["ended_by"] == USERS["pharmacist"], r.text
    r = await api.post(f"/duty/crisis/{first['id']}/end", "pharmacist", json=end)
    assert r.status_code == 409 and "already ended" in r.json()["error"], r.text
    r = await api.post("/duty/crisis/999/end", "pharmacist", json=end)
    assert r.status_code == 404, r.text
    r = await api.get("/duty/crisis", "viewer")
    assert [(p["id"], p["in_force"]) for p in r.json()["periods"]] == [(first["id"], False)]
    r = await api.get("/duty/crisis", "viewer", params={"in_force": "true"})
    assert r.json() == {"count": 0, "periods": []}
    assert _actors(api, "crisis") == {USERS["pharmacist"]}
