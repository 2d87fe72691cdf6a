"""What the API fuzzing found, kept as plain tests, on SQLite and PostgreSQL.

* A JSON body that is not UTF-8 got FastAPI's bare 400 `There was an error parsing the
  body`, naming no field; a body that is not JSON named its byte offset as the field
  (`"field": "[5]"`). Both are now 422 naming the body and the value.
* An order id beyond the database's integer in `POST /orders/review` was a 500
  (SQLite: `OverflowError`; PostgreSQL: out of range).
* A NUL character in text that is looked up or stored (a job id, the audit trail's
  entity and key, a purchase order number, a pack's serial, a note, a delivery file,
  a supplier code) was a 500 on PostgreSQL, whose text cannot hold one.

Every refusal is a 422 whose JSON names the field and the value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import TOKENS
from tests.fuzz.api_server import GOOD_SERIAL, JOB_ID
from tests.fuzz.conftest import Served
from tests.sites import PARA

NUL = "\x00"


@pytest.fixture
def client(api: Served) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKENS['admin']}"}
    with httpx.Client(base_url=f"{api.root}/api/v1", headers=headers, timeout=20) as c:
        yield c


def refused(response: httpx.Response, field: str, value: str | None) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and body.get("value") == value, body
    assert field in body["error"]
    return body


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/orders/review", "review"),
        ("/purchasing/orders", "create"),
        ("/verification/alerts/1/close", "close alert"),
        ("/refills/scan", "scan"),
    ],
)
def test_a_body_that_is_not_utf8_is_refused_naming_the_body(
    client: httpx.Client, path: str, route: str
) -> None:
    r = client.post(
        path, content=b'{"note": "caf\xe9"}', headers={"Content-Type": "application/json"}
    )
    body = refused(r, "body", "0xe9")
    assert "not UTF-8" in body["error"]


def test_a_body_that_is_not_json_names_the_body_and_the_text(client: httpx.Client) -> None:
    r = client.post(
        "/orders/review", content=b'{"order_ids": [1', headers={"Content-Type": "application/json"}
    )
    body = refused(r, "body", '{"order_ids": [1')
    assert "not valid JSON at position 16" in body["error"]


@pytest.mark.parametrize("order_id", [2**31, 2**63, 4_689_448_899_181_027_000_320, 0, -5])
def test_an_order_id_out_of_range_is_refused(client: httpx.Client, order_id: int) -> None:
    r = client.post("/orders/review", json={"order_ids": [1, order_id], "approve": True})
    refused(r, "order_ids[1]", str(order_id))


@pytest.mark.parametrize(
    ("path", "params", "field", "value"),
    [
        (f"/jobs/{JOB_ID}%00", None, "job_id", JOB_ID + NUL),
        ("/audit", {"entity": "dose" + NUL}, "entity", "dose" + NUL),
        ("/audit", {"key": NUL}, "key", NUL),
        ("/stock/balances", {"location": "CENTRAL" + NUL}, "location", "CENTRAL" + NUL),
        ("/refills", {"cabinet": "CAB1" + NUL}, "cabinet", "CAB1" + NUL),
        (f"/verification/packs/{PARA}/{GOOD_SERIAL}%00", None, "serial", GOOD_SERIAL + NUL),
        ("/purchasing/orders/PO-1%00", None, "number", "PO-1" + NUL),
    ],
)
def test_nul_in_a_path_or_query_parameter_is_refused(
    client: httpx.Client, path: str, params: dict[str, str] | None, field: str, value: str
) -> None:
    refused(client.get(path, params=params), field, value)


def test_the_same_lookups_without_nul_still_work(client: httpx.Client, api: Served) -> None:
    assert client.get(f"/jobs/{JOB_ID}").status_code == 200
    assert client.get(f"/verification/packs/{PARA}/{GOOD_SERIAL}").status_code == 200
    assert client.get(f"/purchasing/orders/{api.number}").status_code == 200
    assert client.get("/audit", params={"entity": "dose_order", "key": "1"}).status_code == 200


def test_nul_in_a_body_field_is_refused(client: httpx.Client, api: Served) -> None:
    number = api.number
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/orders/review", {"order_ids": [1], "approve": False, "note": "no" + NUL}, "note"),
        ("/purchasing/orders", {"note": "weekly" + NUL}, "note"),
        ("/purchasing/orders", {"supplier": "WHOLE" + NUL}, "supplier"),
        (f"/purchasing/orders/{number}/close", {"note": "done" + NUL}, "note"),
        (f"/purchasing/orders/{number}/deliveries", {"note": "DN" + NUL, "csv": "x"}, "note"),
        (f"/purchasing/orders/{number}/deliveries", {"note": "DN", "csv": "x" + NUL}, "csv"),
        (
            f"/purchasing/orders/{number}/deliveries",
            {"note": "DN", "csv": "x", "location": "CENTRAL/A01" + NUL},
            "location",
        ),
        ("/verification/alerts/1/close", {"note": "checked" + NUL}, "note"),
        ("/verification/undo", {"gtin": PARA, "serial": GOOD_SERIAL + NUL}, "serial"),
        ("/refills/scan", {"station": "H1", "data": "PL:1" + NUL}, "data"),
    ]
    for path, body, field in cases:
        r = client.post(path, json=body)
        refused(r, field, body[field])
    # Nothing was booked or closed on the way: the alert and the order are still open.
    alerts = client.get("/verification/alerts").json()
    assert [a["id"] for a in alerts["alerts"]] == [1]
    assert client.get(f"/purchasing/orders/{number}").json()["status"] == "open"
