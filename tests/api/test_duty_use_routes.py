"""/duty/external-use and /duty/followup over HTTP: roles, the caller as the audited
actor, refusals naming the field (an unknown product, a bad import line) with nothing
written, and the follow-up as JSON and CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from controller.ledger.schema import audit_log
from tests.api.conftest import USERS, Api
from tests.sites import METO, PARA

LAST_MONTH = f"{datetime.now(UTC).replace(day=1) - timedelta(days=1):%Y-%m}"
NEXT_MONTH = f"{datetime.now(UTC).replace(day=1) + timedelta(days=32):%Y-%m}"


def body(**changes: object) -> dict[str, object]:
    out: dict[str, object] = {
        "gtin": PARA,
        "month": LAST_MONTH,
        "unit_name": "Kommun X",
        "quantity": 120,
    }
    out.update(changes)
    return out


async def test_external_use_and_the_followup(ledger_api: Api) -> None:
    api = ledger_api
    r = await api.post("/duty/external-use", "viewer", json=body())
    assert r.status_code == 403, r.text
    r = await api.post("/duty/external-use", "pharmacist", json=body())
    assert r.status_code == 200, r.text
    assert r.json()["quantity"] == 120 and r.json()["recorded_by"] == USERS["pharmacist"]
    with api.controller.ledger.engine.connect() as conn:
        actors = set(
            conn.execute(
                select(audit_log.c.actor).where(audit_log.c.entity == "external_use")
            ).scalars()
        )
    assert actors == {USERS["pharmacist"]}

    csv_text = f"month;gtin;unit_name;quantity\n{LAST_MONTH};{METO};Privat AB;40\n"
    r = await api.post(
        "/duty/external-use/import?dry_run=true", "pharmacist", content=csv_text,
        content_type="text/csv",
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["inserted"] == 1, r.text
    r = await api.post(
        "/duty/external-use/import", "pharmacist", content=csv_text, content_type="text/csv"
    )
    assert r.status_code == 200 and r.json()["inserted"] == 1, r.text

    r = await api.get("/duty/external-use", "viewer", params={"since": LAST_MONTH})
    assert r.status_code == 200, r.text
    assert [(v["gtin"], v["unit_name"], v["quantity"]) for v in r.json()["volumes"]] == [
        (PARA, "Kommun X", 120),
        (METO, "Privat AB", 40),
    ]

    r = await api.get("/duty/followup", "viewer", params={"month": LAST_MONTH})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["month"] == LAST_MONTH
    para = next(p for p in doc["products"] if p["gtin"] == PARA)
    assert para["use_external"] == 120
    r = await api.get("/duty/followup", "viewer", params={"month": LAST_MONTH, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert r.text.startswith("record;month;category;gtin;")
    assert f"product;{LAST_MONTH};drug;{PARA};" in r.text


async def test_refusals_name_the_field_and_write_nothing(ledger_api: Api) -> None:
    api = ledger_api
    cases: list[tuple[dict[str, object], int, str, str | None]] = [
        (body(gtin="07350000000000"), 404, "gtin", "07350000000000"),
        (body(month=NEXT_MONTH), 422, "month", None),
        (body(month="2026-13"), 422, "month", None),
        (body(quantity=-1), 422, "quantity", "-1"),
        (body(quantity="5"), 422, "quantity", "5"),
    ]
    for sent, status, field, value in cases:
        r = await api.post("/duty/external-use", "pharmacist", json=sent)
        assert r.status_code == status, (sent, r.text)
        assert r.json()["field"] == field, (sent, r.json())
        if value is not None:
            assert r.json()["value"] == value, (sent, r.json())
    bad = (
        "month;gtin;unit_name;quantity\n"
        f"{LAST_MONTH};{PARA};Kommun X;5\n"
        f"{LAST_MONTH};07350000000000;Kommun X;5\n"
        f"{LAST_MONTH};{PARA};Kommun Y;-2\n"
    )
    r = await api.post(
        "/duty/external-use/import", "pharmacist", content=bad, content_type="text/csv"
    )
    assert r.status_code == 422, r.text
    problems = [(p["field"], p["value"]) for p in r.json()["problems"]]
    assert problems == [("line 3: gtin", "07350000000000"), ("line 4: quantity", "-2")]
    r = await api.get("/duty/external-use", "viewer")
    assert r.status_code == 200 and r.json() == {"count": 0, "volumes": []}, r.text
    r = await api.get("/duty/followup", "viewer", params={"month": "13/2026"})
    assert r.status_code == 422 and r.json()["field"] == "month", r.text
    r = await api.get("/duty/followup", "viewer", params={"tz": "Mars/Base"})
    assert r.status_code == 422 and r.json()["field"] == "tz", r.text
