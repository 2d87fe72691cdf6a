"""Purchasing over HTTP: suppliers, purchase orders from the order proposal, the order
file, deliveries booked against an order (partial, back orders, shortages with the
substitutes suggested, the same delivery note twice, bad files), closing an order and
the suppliers' reliability; over the ledger alone and through a running controller
whose goods-in verifies serialised packs with the verification system on loopback.
The ledger on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from controller.api import create_app
from controller.app import Controller
from controller.config import parse_site
from controller.ledger.schema import deliveries, movements
from simulators.verification_http import VerificationSimulator
from tests.api.conftest import TODAY, USERS, Api, served, tokens
from tests.sites import FURO, METO, OXY, PARA, PARA2, purchasing_site

LATER = TODAY + timedelta(days=400)
SOON = TODAY + timedelta(days=20)  # inside the site's 30-day minimum shelf life
ACTOR = "buyer:berit"
HEADER = "order;line;gtin;quantity;batch;expiry;back_order;serials\n"


def prepare(controller: Controller) -> None:
    """Opening stock and last month's use, an hour ago: the order proposal then wants
    1 pack of FURO, 2 of METO and 3 of PARA from WHOLE, and 1 of OXY (no supplier)."""
    led = controller.ledger
    saved = led.clock
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    led.clock = lambda: an_hour_ago
    try:
        controller.prepare_ledger()
        controller.receive_opening_stock(TODAY)
        led.receive(
            "oxy-in", gtin=OXY, batch="O-1", expiry=LATER, quantity=100,
            to_location="CENTRAL/A02", actor=ACTOR,
        )  # fmt: skip
        for key, gtin, qty, where in (
            ("use-para", PARA, 450, "CENTRAL/A01"),
            ("use-meto", METO, 240, "CENTRAL/A01"),
            ("use-furo", FURO, 10, "CENTRAL/A01"),
            ("use-oxy", OXY, 50, "CENTRAL/A02"),
        ):
            led.consume(key, gtin=gtin, quantity=qty, location=where, actor=ACTOR, reason="use")
    finally:
        led.clock = saved


@contextmanager
def clock_at(controller: Controller, moment: datetime) -> Iterator[None]:
    """The ledger's clock (the API's `now` for orders and deliveries) held at `moment`."""
    led = controller.ledger
    saved = led.clock
    led.clock = lambda: moment
    try:
        yield
    finally:
        led.clock = saved


def on_hand(api: Api, gtin: str) -> int:
    return sum(s.on_hand for s in api.controller.ledger.stock(gtin=gtin))


def booked(api: Api) -> tuple[int, int]:
    """Deliveries and movements on file."""
    with api.controller.ledger.engine.connect() as c:
        return (
            c.execute(select(func.count()).select_from(deliveries)).scalar_one(),
            c.execute(select(func.count()).select_from(movements)).scalar_one(),
        )


@pytest.fixture
async def papi(ledger_url: str) -> AsyncIterator[Api]:
    """The API over the purchasing site's ledger, without a running controller."""
    raw = purchasing_site(ledger_url=ledger_url)
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(prepare, controller)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield Api(client, controller)
    finally:
        controller.close()


async def create_order(api: Api) -> dict[str, Any]:
    r = await api.post("/purchasing/orders", "pharmacist", json={})
    assert r.status_code == 201, r.text
    (order,) = r.json()["orders"]
    return dict(order)


# ----------------------------------------------------------------------------- tests


async def test_suppliers_for_viewers(papi: Api) -> None:
    r = await papi.get("/purchasing/suppliers", "viewer")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "count": 2,
        "suppliers": [
            {"code": "ALT", "name": "Second Source", "lead_time_days": 3, "products": 1},
            {"code": "WHOLE", "name": "Wholesale Nord", "lead_time_days": 1, "products": 3},
        ],
    }
    r = await papi.get("/purchasing/suppliers", None)
    assert r.status_code == 401 and r.json()["field"] == "Authorization", r.text
    r = await papi.get("/purchasing/suppliers/reliability", None)
    assert r.status_code == 401, r.text


async def test_orders_are_created_by_pharmacists_listed_and_shown(papi: Api) -> None:
    api = papi
    # Technicians and strangers may not order; nothing is ordered.
    r = await api.post("/purchasing/orders", "technician", json={})
    assert r.status_code == 403, r.text
    assert (r.json()["field"], r.json()["value"]) == ("role", "technician")
    assert "pharmacist" in r.json()["error"]
    r = await api.post("/purchasing/orders", None, json={})
    assert r.status_code == 401, r.text
    r = await api.get("/purchasing/orders", "technician", params={"status": "all"})
    assert r.status_code == 200 and r.json() == {"count": 0, "orders": []}, r.text

    # Bad requests name the field and the value.
    r = await api.post("/purchasing/orders", "pharmacist", json={"supplier": "NOPE"})
    assert r.status_code == 422, r.text
    assert r.json() == {
        "error": "purchase orders refused (1 problem): supplier: 'NOPE' is not a listed supplier",
        "field": "supplier",
        "value": "NOPE",
        "problems": [
            {"field": "supplier", "value": "NOPE", "message": "'NOPE' is not a listed supplier"}
        ],
    }
    r = await api.post("/purchasing/orders", "pharmacist", json={"target_days": 0})
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["value"]) == ("target_days", "0")
    r = await api.post("/purchasing/orders", "pharmacist", json={"actor": "someone:else"})
    assert r.status_code == 422 and r.json()["field"] == "actor", r.text
    r = await api.get("/purchasing/orders", "admin", params={"status": "all"})
    assert r.json()["count"] == 0

    # A pharmacist orders: one order for WHOLE; OXY has no supplier.
    r = await api.post(
        "/purchasing/orders", "pharmacist", json={"note": "weekly order", "target_days": 30}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["count"], body["unassigned"]) == (1, [OXY])
    (po,) = body["orders"]
    created = datetime.fromisoformat(po["created_at"])
    number = f"PO-{created:%Y%m%d}-WHOLE-01"
    assert po["number"] == number
    assert (po["supplier"], po["supplier_name"], po["status"]) == (
        "WHOLE",
        "Wholesale Nord",
        "open",
    )
    assert (po["created_by"], po["note"], po["closed_at"]) == (
        "pharmacist:anna",
        "weekly order",
        None,
    )
    assert po["expected_on"] == (created.astimezone(UTC).date() + timedelta(days=1)).isoformat()
    assert po["value"] == "300.00"  # 600 units at 0.50
    assert [
        (ln["line_no"], ln["gtin"], ln["packs"], ln["pack_size"], ln["units"], ln["status"])
        for ln in po["lines"]
    ] == [
        (1, FURO, 1, 100, 100, "open"),
        (2, METO, 2, 100, 200, "open"),
        (3, PARA, 3, 100, 300, "open"),
    ]
    assert po["lines"][0] == {
        "line_no": 1,
        "gtin": FURO,
        "article": 100003,
        "name": "Furosemide 40",
        "packs": 1,
        "pack_size": 100,
        "units": 100,
        "unit_price": "0.5000",
        "received_units": 0,
        "back_order_units": 0,
        "short_units": 0,
        "open_units": 100,
        "status": "open",
    }

    # What is on order is not ordered twice: 200, nothing made.
    r = await api.post("/purchasing/orders", "admin", json={})
    assert r.status_code == 200, r.text
    assert r.json() == {"count": 0, "orders": [], "unassigned": [OXY]}
    r = await api.post("/purchasing/orders", "pharmacist", json={"supplier": "ALT"})
    assert r.status_code == 200 and r.json()["count"] == 0, r.text

    # The audit trail names the pharmacist.
    r = await api.get("/audit", "pharmacist", params={"entity": "purchase_order", "key": number})
    (entry,) = r.json()["entries"]
    assert (entry["actor"], entry["action"], entry["reason"]) == (
        "pharmacist:anna",
        "purchase orders",
        "weekly order",
    )

    # Listed for technicians, not for viewers.
    r = await api.get("/purchasing/orders", "technician")
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1 and r.json()["orders"][0] == po
    for status, count in (("all", 1), ("partial", 0), ("complete", 0), ("cancelled", 0)):
        r = await api.get("/purchasing/orders", "technician", params={"status": status})
        assert r.status_code == 200 and r.json()["count"] == count, (status, r.text)
    r = await api.get("/purchasing/orders", "technician", params={"status": "closed"})
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["value"]) == ("status", "closed")
    r = await api.get("/purchasing/orders", "viewer")
    assert r.status_code == 403 and "technician" in r.json()["error"], r.text

    # One order, as JSON and as the order file.
    r = await api.get(f"/purchasing/orders/{number}", "technician")
    assert r.status_code == 200 and r.json() == po, r.text
    r = await api.get(f"/purchasing/orders/{number}", "technician", params={"format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="{number}.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text), delimiter=";"))
    assert len(rows) == len(po["lines"]) == 3
    assert [
        (row["order"], row["buyer"], row["supplier"], row["line"], row["gtin"], row["units"])
        for row in rows
    ] == [
        (number, "Test pharmacy", "WHOLE", "1", FURO, "100"),
        (number, "Test pharmacy", "WHOLE", "2", METO, "200"),
        (number, "Test pharmacy", "WHOLE", "3", PARA, "300"),
    ]
    assert {row["unit_price"] for row in rows} == {"0.5000"}
    assert {row["delivery_date"] for row in rows} == {po["expected_on"]}
    assert {row["order_date"] for row in rows} == {f"{created:%Y-%m-%d}"}
    r = await api.get(f"/purchasing/orders/{number}", "technician", params={"format": "xml"})
    assert r.status_code == 422 and r.json()["field"] == "format", r.text

    r = await api.get("/purchasing/orders/PO-NONE", "technician")
    assert r.status_code == 404, r.text
    assert r.json() == {
        "error": "no such purchase order: 'PO-NONE'",
        "field": "number",
        "value": "PO-NONE",
    }
    r = await api.get("/purchasing/orders/PO-NONE", "technician", params={"format": "csv"})
    assert r.status_code == 404 and r.json()["value"] == "PO-NONE", r.text
    r = await api.get(f"/purchasing/orders/{number}", "viewer")
    assert r.status_code == 403, r.text


async def test_a_partial_delivery_then_the_same_note_again(papi: Api) -> None:
    api = papi
    po = await create_order(api)
    n = po["number"]
    para, meto, furo = on_hand(api, PARA), on_hand(api, METO), on_hand(api, FURO)
    # METO: half now, the rest back-ordered (a short-dated lot); PARA: a third, the rest
    # will not come; FURO: not in this delivery.
    text = HEADER + (f"{n};2;{METO};100;M-SOON;{SOON};100;\n{n};3;{PARA};100;P-NEW;{LATER};;S1\n")
    delivery = {"note": "DN-1", "csv": text}
    r = await api.post(f"/purchasing/orders/{n}/deliveries", "viewer", json=delivery)
    assert r.status_code == 403 and "technician" in r.json()["error"], r.text
    r = await api.post(f"/purchasing/orders/{n}/deliveries", None, json=delivery)
    assert r.status_code == 401, r.text
    assert booked(api)[0] == 0

    r = await api.post(f"/purchasing/orders/{n}/deliveries", "technician", json=delivery)
    assert r.status_code == 201, r.text
    receipt = r.json()
    assert (receipt["order"], receipt["note"], receipt["booked"]) == (n, "DN-1", True)
    assert (receipt["order_status"], receipt["units"]) == ("partial", 200)
    assert receipt["lines"] == [
        {
            "line_no": 2,
            "gtin": METO,
            "name": "Metoprolol 50",
            "ordered": 200,
            "delivered_now": 100,
            "substituted_now": 0,
            "received_total": 100,
            "back_order": 100,
            "short_now": 0,
            "status": "back_order",
            "substitutes": [],
        },
        {
            "line_no": 3,
            "gtin": PARA,
            "name": "Paracetamol 500",
            "ordered": 300,
            "delivered_now": 100,
            "substituted_now": 0,
            "received_total": 100,
            "back_order": 0,
            "short_now": 200,
            "status": "short",
            # the other product of the group, its supplier and its usable stock (none)
            "substitutes": [
                {
                    "gtin": PARA2,
                    "name": "Paracetamol 500 (second)",
                    "supplier": "ALT",
                    "usable_units": 0,
                }
            ],
        },
    ]
    assert receipt["warnings"] == [
        f"row 2: batch M-SOON of {METO} expires on {SOON}, inside the 30-day minimum shelf life"
    ]
    assert receipt["packs"] == [
        {
            "gtin": PARA,
            "batch": "P-NEW",
            "expiry": LATER.isoformat(),
            "serial": "S1",
            "location": "CENTRAL/A01",
        }
    ]
    assert receipt["verification"] == {}  # no running controller: no pack verification
    assert (on_hand(api, PARA), on_hand(api, METO), on_hand(api, FURO)) == (
        para + 100,
        meto + 100,
        furo,
    )
    lots = {(s.batch, s.location): s.on_hand for s in api.controller.ledger.stock(gtin=METO)}
    assert lots[("M-SOON", "CENTRAL/A01")] == 100

    r = await api.get(f"/purchasing/orders/{n}", "technician")
    order = r.json()
    assert order["status"] == "partial"
    assert [
        (ln["status"], ln["received_units"], ln["back_order_units"], ln["short_units"])
        for ln in order["lines"]
    ] == [("open", 0, 0, 0), ("back_order", 100, 100, 0), ("short", 100, 0, 200)]
    assert [ln["open_units"] for ln in order["lines"]] == [100, 100, 0]
    r = await api.get("/purchasing/orders", "technician", params={"status": "partial"})
    assert [o["number"] for o in r.json()["orders"]] == [n]

    # The same delivery note again (a retry, or the file sent twice): nothing changes.
    before = booked(api)
    assert before == (1, before[1])
    for note in ("DN-1", " DN-1 "):
        r = await api.post(
            f"/purchasing/orders/{n}/deliveries", "technician", json={**delivery, "note": note}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "order": n,
            "note": "DN-1",
            "booked": False,
            "order_status": "partial",
            "lines": [],
            "units": 200,
            "warnings": [],
            "packs": [],
            "verification": {},
        }
    assert booked(api) == before
    assert (on_hand(api, PARA), on_hand(api, METO)) == (para + 100, meto + 100)

    # The next delivery, booked into another bin: FURO in full and the METO back order.
    text = HEADER + f"{n};1;{FURO};100;F-2;{LATER};;\n{n};2;{METO};100;M-2;{LATER};;\n"
    r = await api.post(
        f"/purchasing/orders/{n}/deliveries",
        "technician",
        json={"note": "DN-2", "csv": text, "location": "CENTRAL/A02"},
    )
    assert r.status_code == 201, r.text
    assert (r.json()["order_status"], r.json()["units"], r.json()["warnings"]) == (
        "complete",
        200,
        [],
    )
    assert [(o["line_no"], o["status"]) for o in r.json()["lines"]] == [
        (1, "delivered"),
        (2, "delivered"),
    ]
    stock = {(s.batch, s.location): s.on_hand for s in api.controller.ledger.stock(gtin=FURO)}
    assert stock[("F-2", "CENTRAL/A02")] == 100
    r = await api.get("/purchasing/orders", "technician")
    assert r.json() == {"count": 0, "orders": []}

    # The audit trail has the delivery, by the technician.
    r = await api.get(
        "/audit", "pharmacist", params={"entity": "purchase_order_line", "key": f"{n}/3"}
    )
    (entry,) = r.json()["entries"]
    assert entry["actor"] == USERS["technician"] == "tech:tom"
    assert entry["new"]["status"] == "short" and entry["reason"] == f"delivery DN-1 for {n}"


async def test_a_bad_delivery_lists_every_problem_and_books_nothing(papi: Api) -> None:
    api = papi
    n = (await create_order(api))["number"]
    before, para = booked(api), on_hand(api, PARA)

    async def refused(delivery: dict[str, Any]) -> dict[str, Any]:
        r = await api.post(f"/purchasing/orders/{n}/deliveries", "technician", json=delivery)
        assert r.status_code == 422, r.text
        assert booked(api) == before and on_hand(api, PARA) == para
        return dict(r.json())

    # The file itself: every bad row and field.
    text = HEADER + (
        f"{n};1;07359990000012;100;B;{LATER};;\n"
        f"{n};2;{METO};-3;B;{LATER};;\n"
        f"{n};x;{PARA};100;B;2028-13-01;;\n"
        f"{n};3;{PARA};100;;{LATER};;\n"
    )
    body = await refused({"note": "DN-BAD", "csv": text})
    assert [(p["field"], p.get("value")) for p in body["problems"]] == [
        ("row 2.gtin", "07359990000012"),
        ("row 3.quantity", "-3"),
        ("row 4.line", "x"),
        ("row 4.expiry", "2028-13-01"),
        ("row 5.batch", None),
    ]
    assert body["problems"][0]["message"] == ("GTIN '07359990000012' has check digit 2, expected 3")
    assert body["problems"][4]["message"] == "missing for a row that delivers stock"
    assert (body["field"], body["value"]) == ("row 2.gtin", "07359990000012")
    assert body["error"].startswith(f"delivery 'DN-BAD' for {n} refused (5 problems): row 2: ")

    # Rows that read well but do not fit the order.
    text = HEADER + (
        f"{n};9;{FURO};100;F-9;{LATER};;\n"
        f"{n};2;{OXY};100;O-9;{LATER};;\n"
        f"PO-OTHER;1;{FURO};100;F-9;{LATER};;\n"
        f"{n};3;{PARA};100;P-9;{LATER};;S1 S2\n"
        f"{n};1;{FURO};200;F-9;{LATER};;\n"
    )
    body = await refused({"note": "DN-BAD", "csv": text})
    assert [(p["field"], p.get("value"), p["message"]) for p in body["problems"]] == [
        ("row 2.line", "9", f"9 is not a line of {n} (1-3)"),
        (
            "row 3.gtin",
            OXY,
            f"'{OXY}' is neither {METO} ordered on line 2 nor a product of its "
            "substitution group (none)",
        ),
        ("row 4.order", "PO-OTHER", f"'PO-OTHER' is not this delivery's order {n}"),
        ("row 5.serials", "2", "2 serial numbers for 1 packs"),
        (
            "line 1",
            "200",
            "200 units delivered but only 100 open (ordered 100, received 0 before)",
        ),
    ]

    # A header without a required column; a location that is not in the store.
    body = await refused({"note": "DN-BAD", "csv": f"order;line;gtin\n{n};1;{FURO}\n"})
    assert (body["field"], body.get("value")) == ("header", None)
    assert body["problems"][0]["message"].startswith("missing column(s) quantity")
    good = HEADER + f"{n};1;{FURO};100;F-NEW;{LATER};;\n{n};2;{METO};100;M-NEW;{LATER};;\n"
    body = await refused({"note": "DN-BAD", "csv": good, "location": "NOWHERE"})
    assert body["problems"] == [
        {"field": "location", "value": "NOWHERE", "message": "'NOWHERE' is not a store location"}
    ]
    body = await refused({"note": "DN-BAD", "csv": HEADER})
    assert body["problems"] == [{"field": "csv", "message": "the delivery file has no rows"}]

    # A lot already on file with another expiry: the ledger refuses the booking.
    clash = HEADER + (
        f"{n};3;{PARA};100;P-NEW;{LATER};;\n{n};3;{PARA};100;P-LATE;{LATER + timedelta(days=1)};;\n"
    )
    body = await refused({"note": "DN-BAD", "csv": clash})
    (problem,) = body["problems"]
    assert (body["field"], problem["field"], problem.get("value")) == ("csv", "csv", None)
    assert f"of batch 'P-LATE' of {PARA} differs from the recorded" in problem["message"]

    # The body itself.
    body = await refused({"note": "   ", "csv": good})
    assert (body["field"], body["value"]) == ("note", "   ")
    body = await refused({"note": "N" * 41, "csv": good})
    assert body["field"] == "note"
    body = await refused({"csv": good})
    assert (body["field"], body.get("value")) == ("note", None)
    body = await refused({"note": "DN-1", "csv": good, "received_by": "someone:else"})
    assert body["field"] == "received_by"

    r = await api.post(
        "/purchasing/orders/PO-NONE/deliveries", "technician", json={"note": "DN-1", "csv": good}
    )
    assert r.status_code == 404, r.text
    assert (r.json()["field"], r.json()["value"]) == ("number", "PO-NONE")
    assert booked(api) == before

    # The same file, corrected, is booked.
    r = await api.post(
        f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-BAD", "csv": good}
    )
    assert r.status_code == 201 and r.json()["units"] == 200, r.text
    assert booked(api)[0] == before[0] + 1


async def test_closing_an_order(papi: Api) -> None:
    api = papi
    n = (await create_order(api))["number"]
    text = HEADER + f"{n};1;{FURO};100;F-NEW;{LATER};;\n{n};2;{METO};100;M-3;{LATER};100;\n"
    r = await api.post(
        f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-1", "csv": text}
    )
    assert r.status_code == 201 and r.json()["order_status"] == "partial", r.text

    note = {"note": "the rest ordered elsewhere"}
    r = await api.post(f"/purchasing/orders/{n}/close", "technician", json=note)
    assert r.status_code == 403 and "pharmacist" in r.json()["error"], r.text
    r = await api.post(f"/purchasing/orders/{n}/close", "pharmacist", json={"note": "  "})
    assert r.status_code == 422, r.text
    assert (r.json()["field"], r.json()["value"]) == ("note", "  ")
    r = await api.post(f"/purchasing/orders/{n}/close", "pharmacist", json={})
    assert r.status_code == 422 and r.json()["field"] == "note", r.text
    r = await api.post("/purchasing/orders/PO-NONE/close", "pharmacist", json=note)
    assert r.status_code == 404 and r.json()["value"] == "PO-NONE", r.text

    # Something was received: complete; what was still open is cancelled.
    r = await api.post(f"/purchasing/orders/{n}/close", "pharmacist", json=note)
    assert r.status_code == 200, r.text
    closed = r.json()
    assert (closed["status"], closed["note"]) == ("complete", f"closed: {note['note']}")
    assert closed["closed_at"] is not None
    assert [(ln["status"], ln["back_order_units"]) for ln in closed["lines"]] == [
        ("delivered", 0),
        ("cancelled", 0),
        ("cancelled", 0),
    ]
    r = await api.post(f"/purchasing/orders/{n}/close", "pharmacist", json={"note": "again"})
    assert r.status_code == 409, r.text
    assert r.json() == {
        "error": f"purchase order {n} is complete already",
        "field": "number",
        "value": n,
    }
    # A closed order takes no delivery.
    late = HEADER + f"{n};3;{PARA};100;P-9;{LATER};;\n"
    r = await api.post(
        f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-2", "csv": late}
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"] == [
        {"field": "row 2.line", "value": "3", "message": "3 is cancelled already"}
    ]

    # Nothing received: cancelled. What is missing is ordered again first.
    r = await api.post("/purchasing/orders", "pharmacist", json={"supplier": "WHOLE"})
    assert r.status_code == 201, r.text
    (again,) = r.json()["orders"]
    assert again["number"].endswith("-WHOLE-02")
    r = await api.post(
        f"/purchasing/orders/{again['number']}/close", "admin", json={"note": "wrong supplier"}
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert {ln["status"] for ln in r.json()["lines"]} == {"cancelled"}
    r = await api.post(
        f"/purchasing/orders/{again['number']}/close", "pharmacist", json={"note": "twice"}
    )
    assert r.status_code == 409 and "is cancelled already" in r.json()["error"], r.text
    r = await api.post(
        f"/purchasing/orders/{again['number']}/deliveries",
        "technician",
        json={"note": "DN-9", "csv": HEADER + f"{again['number']};1;{PARA};100;P-9;{LATER};;\n"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0] == {
        "field": "order",
        "value": again["number"],
        "message": f"{again['number']} is cancelled",
    }

    for status, numbers in (
        ("open", []),
        ("complete", [n]),
        ("cancelled", [again["number"]]),
        ("all", [again["number"], n]),
    ):
        r = await api.get("/purchasing/orders", "technician", params={"status": status})
        assert [o["number"] for o in r.json()["orders"]] == numbers, status
    r = await api.get("/audit", "pharmacist", params={"entity": "purchase_order", "key": n})
    last = r.json()["entries"][-1]
    assert (last["actor"], last["action"], last["reason"]) == (
        "pharmacist:anna",
        "purchase order closed",
        note["note"],
    )
    assert (last["old"], last["new"]) == ("partial", {"status": "complete"})


async def test_reliability_after_deliveries(papi: Api) -> None:
    api = papi
    r = await api.get("/purchasing/suppliers/reliability", "viewer")
    assert r.status_code == 200, r.text
    today = datetime.now(ZoneInfo("Europe/Stockholm")).date()
    nothing_due = {
        "orders": 0,
        "lines_due": 0,
        "lines_in_full": 0,
        "lines_on_time_in_full": 0,
        "units_ordered": 0,
        "units_received": 0,
        "lines_late": 0,
        "mean_lead_days": None,
        "fill_rate": None,
        "otif": None,
        "in_full_rate": None,
    }
    assert r.json() == {
        "today": today.isoformat(),
        "suppliers": [
            {"supplier": "ALT", "name": "Second Source", **nothing_due},
            {"supplier": "WHOLE", "name": "Wholesale Nord", **nothing_due},
        ],
    }

    # Ordered now (due tomorrow). FURO arrives now in full; METO half, the rest never;
    # PARA in full but three days later.
    ordered = datetime.now(UTC).replace(microsecond=0)
    with clock_at(api.controller, ordered):
        n = (await create_order(api))["number"]
        first = HEADER + f"{n};1;{FURO};100;F-NEW;{LATER};;\n{n};2;{METO};100;M-3;{LATER};;\n"
        r = await api.post(
            f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-1", "csv": first}
        )
        assert r.status_code == 201, r.text
    with clock_at(api.controller, ordered + timedelta(days=3)):
        second = HEADER + f"{n};3;{PARA};300;P-3;{LATER};;\n"
        r = await api.post(
            f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-2", "csv": second}
        )
        assert r.status_code == 201 and r.json()["order_status"] == "complete", r.text

    r = await api.get("/purchasing/suppliers/reliability", "viewer")
    assert r.status_code == 200, r.text
    alt, whole = r.json()["suppliers"]
    assert alt == {"supplier": "ALT", "name": "Second Source", **nothing_due}
    assert whole == {
        "supplier": "WHOLE",
        "name": "Wholesale Nord",
        "orders": 1,
        "lines_due": 3,
        "lines_in_full": 2,  # FURO and PARA
        "lines_on_time_in_full": 1,  # FURO
        "units_ordered": 600,
        "units_received": 500,
        "lines_late": 0,
        "mean_lead_days": 1.5,  # 0 and 3 days
        "fill_rate": 0.8333,
        "otif": 0.3333,
        "in_full_rate": 0.6667,
    }


@pytest.fixture
async def vpapi(ledger_url: str) -> AsyncIterator[tuple[Api, VerificationSimulator]]:
    """A controller whose site verifies packs with the verification system on loopback,
    and the API in front of it."""
    sim = VerificationSimulator()
    port = await sim.start()
    raw = purchasing_site(ledger_url=ledger_url, verification_port=port)
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(prepare, controller)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield Api(client, controller), sim
    finally:
        await controller.stop()
        controller.close()
        await sim.stop()


async def test_goods_in_through_the_controller_verifies_serialised_packs(
    vpapi: tuple[Api, VerificationSimulator],
) -> None:
    api, sim = vpapi
    service = api.controller.verification
    assert service is not None
    sim.add(PARA, "SN-OK", "P-V", LATER)  # SN-GONE is not in the register
    n = (await create_order(api))["number"]
    text = HEADER + f"{n};3;{PARA};200;P-V;{LATER};100;SN-OK SN-GONE\n"
    r = await api.post(
        f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-V", "csv": text}
    )
    assert r.status_code == 201, r.text
    receipt = r.json()
    assert (receipt["order_status"], receipt["units"]) == ("partial", 200)
    assert [(o["line_no"], o["status"], o["back_order"]) for o in receipt["lines"]] == [
        (3, "back_order", 100)
    ]
    assert [p["serial"] for p in receipt["packs"]] == ["SN-OK", "SN-GONE"]
    assert receipt["verification"] == {
        "SN-OK": "verified",
        "SN-GONE": f"alert UNKNOWN_SERIAL: serial SN-GONE of {PARA} is not in the register",
    }
    assert sim.requests["verify"] == 2
    statuses = {s: row.status for s in ("SN-OK", "SN-GONE") if (row := service.store.pack(PARA, s))}
    assert statuses == {"SN-OK": "verified", "SN-GONE": "blocked"}
    (alert,) = service.store.alerts()
    assert (alert.serial, alert.code) == ("SN-GONE", "UNKNOWN_SERIAL")

    # The same note again: nothing booked, nothing verified again.
    r = await api.post(
        f"/purchasing/orders/{n}/deliveries", "technician", json={"note": "DN-V", "csv": text}
    )
    assert r.status_code == 200 and r.json()["booked"] is False, r.text
    assert r.json()["verification"] == {} and sim.requests["verify"] == 2
