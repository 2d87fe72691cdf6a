"""Ward supply over HTTP (SQLite and PostgreSQL): a FHIR Bundle requisition filed,
reviewed, picked by scan, dispatched and received with a deviation, the stock's way
store -> in transit -> drug room -> used; every bad input answers its status naming the
field and value and books nothing; a viewer may look but not act."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from controller.api import create_app
from controller.app import Controller
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.ledger import verify_ledger
from controller.ledger.schema import audit_log, locations, lots, movements, products
from tests.api.conftest import USERS, Api, served, tokens
from tests.sites import FURO, METO, OXY, PARA, ward_site

# 05:00 in Stockholm, before the AM run's cutoff (06:00)
START = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)
TODAY = START.date()
SITE_NAME = 'Pharmacy <script>alert("x")</script> & Co'
W = "/ward-supply"
SENDER = "https://ward-system.example.org/requisitions"
FHIR = "application/fhir+json"
UNKNOWN = "07359990099994"  # a valid check digit, not in the catalogue


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _site(ledger_url: str, *, verification: bool = False) -> dict[str, Any]:
    raw = ward_site(ledger_url=ledger_url)
    raw["site"]["name"] = SITE_NAME
    if verification:
        raw["verification"] = {"enabled": True, "url": "http://127.0.0.1:1", "timeout_s": 1}
    return raw


@contextlib.asynccontextmanager
async def _api(
    ledger_url: str, *, verification: bool = False, with_controller: bool = False
) -> AsyncIterator[Api]:
    controller = Controller(
        parse_site(_site(ledger_url, verification=verification)), ledger_url=ledger_url
    )
    clock = Clock(START)
    controller.ledger.clock = clock
    controller.wardsupply.clock = clock
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        await asyncio.to_thread(controller.receive_opening_stock, TODAY)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller if with_controller else None,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield Api(client, controller)
    finally:
        if controller.verification is not None:
            await controller.verification.aclose()
        controller.close()


@pytest.fixture
async def ward(ledger_url: str) -> AsyncIterator[Api]:
    """The API over a ward-supply ledger alone (no running controller)."""
    async with _api(ledger_url) as api:
        yield api


# ----------------------------------------------------------------------------- helpers


def entry(gtin: str, packs: int, room: str = "DR-MED", **extra: Any) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "SupplyRequest",
            "status": "active",
            "itemCodeableConcept": {
                "coding": [{"system": "http://www.gs1.org/gtin", "code": gtin}]
            },
            "quantity": {"value": packs, "unit": "pack"},
            "deliverTo": {"reference": f"Location/{room}"},
            **extra,
        },
        "request": {"method": "POST", "url": "SupplyRequest"},
    }


def bundle(ident: str, *entries: dict[str, Any]) -> str:
    return json.dumps(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "identifier": {"system": SENDER, "value": ident},
            "entry": list(entries),
        }
    )


def plain(ident: str, room: str, *lines: tuple[str, Any]) -> dict[str, Any]:
    return {"id": ident, "drug_room": room, "lines": [{"gtin": g, "packs": p} for g, p in lines]}


def scan(gtin: str, batch: str, days: int, serial: str | None = None) -> str:
    return encode_pack(PackId(gtin, batch, TODAY + timedelta(days=days), serial))


def at(api: Api, location: str, gtin: str) -> int:
    return sum(s.on_hand for s in api.controller.ledger.stock(location=location, gtin=gtin))


def in_store(api: Api, gtin: str) -> int:
    return at(api, "CENTRAL/A01", gtin) + at(api, "CENTRAL/A02", gtin)


def booked_rows(api: Api) -> tuple[int, int]:
    """(movements, audit entries): what a refused request must leave as it was."""
    with api.controller.ledger.engine.connect() as c:
        moves = c.execute(select(func.count()).select_from(movements)).scalar_one()
        audit = c.execute(select(func.count()).select_from(audit_log)).scalar_one()
    return int(moves), int(audit)


def path_of(api: Api, gtin: str, batch: str) -> list[tuple[str, str, str]]:
    """The lot's movements in order: (kind, from, to)."""
    src, dst = locations.alias("src"), locations.alias("dst")
    with api.controller.ledger.engine.connect() as c:
        rows = c.execute(
            select(movements.c.kind, src.c.code, dst.c.code)
            .join(lots, lots.c.id == movements.c.lot_id)
            .join(products, products.c.id == lots.c.product_id)
            .join(src, src.c.id == movements.c.from_location_id)
            .join(dst, dst.c.id == movements.c.to_location_id)
            .where(products.c.gtin == gtin, lots.c.batch == batch)
            .order_by(movements.c.id)
        ).all()
    return [(str(k), str(f), str(t)) for k, f, t in rows]


def refused(r: httpx.Response, status: int, field: str, value: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["field"] == field, body
    assert body.get("value") == value, body
    return body


async def approved_list(api: Api, ident: str, *lines: tuple[str, int]) -> str:
    """A plain requisition for DR-MED approved and on an AM pick list; its number."""
    r = await api.post(f"{W}/requisitions", "technician", json=plain(ident, "DR-MED", *lines))
    assert r.status_code == 201, r.text
    r = await api.post(f"{W}/review/approve-routine", "pharmacist", json={"reason": "routine"})
    assert r.json()["approved"] == len(lines), r.text
    r = await api.post(f"{W}/pick-lists", "technician", json={"run": "AM", "date": str(TODAY)})
    assert r.status_code == 201, r.text
    return str(r.json()["pick_lists"][0]["number"])


# ----------------------------------------------------------------------------- the flow


async def test_a_fhir_requisition_from_the_ward_system_to_the_shelf(ward: Api) -> None:
    api = ward
    body = bundle("REQ-1", entry(PARA, 2), entry(METO, 1), entry(OXY, 1))
    r = await api.post(f"{W}/requisitions", "technician", content=body, content_type=FHIR)
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["duplicate"], first["lines"], first["flagged"]) == (False, 3, 1)
    number = first["number"]

    # the ward system sends it again after a timeout: answered, not booked twice
    before = booked_rows(api)
    r = await api.post(f"{W}/requisitions", "technician", content=body, content_type=FHIR)
    assert r.status_code == 200 and r.json() == {**first, "duplicate": True}
    assert booked_rows(api) == before

    r = await api.get(f"{W}/requisitions/{number}", "viewer")
    assert r.status_code == 200 and r.json()["source"] == "fhir"
    assert r.json()["sender"] == SENDER and len(r.json()["lines"]) == 3
    r = await api.get(f"{W}/requisitions", "viewer", params={"limit": 5})
    assert [x["number"] for x in r.json()["requisitions"]] == [number]

    r = await api.get(f"{W}/review", "viewer", params={"drug_room": "DR-MED"})
    queue = {x["gtin"]: x for x in r.json()["lines"]}
    assert queue[OXY]["flags"] == ["controlled"] and queue[OXY]["status"] == "flagged"
    assert queue[PARA]["status"] == "pending" and queue[PARA]["usual_packs"] is not None

    r = await api.post(
        f"{W}/review/approve-routine", "pharmacist", json={"reason": "routine ward stock"}
    )
    assert r.status_code == 200 and r.json() == {"approved": 2, "by": USERS["pharmacist"]}
    r = await api.post(
        f"{W}/lines/{queue[OXY]['id']}/decision",
        "pharmacist",
        json={"decision": "approve", "reason": "usual for the ward"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["decided_by"]) == ("approved", USERS["pharmacist"])
    r = await api.get("/audit", "pharmacist", params={"entity": "ward_line"})
    actors = {e["actor"] for e in r.json()["entries"]}
    assert actors == {USERS["pharmacist"]}

    r = await api.post(f"{W}/pick-lists", "technician", json={"run": "AM", "date": str(TODAY)})
    assert r.status_code == 201, r.text
    [pick] = r.json()["pick_lists"]
    assert pick["hospital"] == "H1" and pick["status"] == "open" and not pick["complete"]
    para = next(x for x in pick["lines"] if x["gtin"] == PARA)
    assert [(lot["batch"], lot["units"]) for lot in para["lots"]] == [
        ("P-EARLY", 50),
        ("P-LATE", 150),
    ]
    r = await api.get(f"{W}/pick-lists", "viewer", params={"status": "open"})
    assert [p["number"] for p in r.json()["pick_lists"]] == [pick["number"]]

    scans = f"{W}/pick-lists/{pick['number']}/scans"
    r = await api.post(scans, "technician", json={"data": scan(PARA, "P-SHORT", 5)})
    assert r.status_code == 200 and not r.json()["accepted"]
    assert r.json()["message"].startswith("wrong lot") and r.json()["line_id"] is None
    results = []
    for data in (
        scan(PARA, "P-EARLY", 90),
        scan(PARA, "P-LATE", 400),
        scan(PARA, "P-LATE", 400).replace("\x1d", "<GS>"),
        scan(METO, "M-1", 200, "S1"),
        scan(OXY, "O-1", 300),
    ):
        r = await api.post(scans, "technician", json={"data": data})
        assert r.status_code == 200 and r.json()["accepted"], r.text
        results.append(r.json())
    assert [x["list_complete"] for x in results] == [False, False, False, False, True]

    store_para = in_store(api, PARA)
    r = await api.post(f"{W}/pick-lists/{pick['number']}/dispatch", "technician")
    assert r.status_code == 200, r.text
    sent = r.json()
    assert (len(sent["notes"]), sent["short_lines"], sent["back_orders"]) == (1, 0, [])
    assert [p["serial"] for p in sent["packs"]] == ["S1"]
    assert at(api, "TRANSIT/H1", PARA) == 200 and in_store(api, PARA) == store_para - 200
    again = await api.post(f"{W}/pick-lists/{pick['number']}/dispatch", "technician")
    assert again.status_code == 200 and again.json()["notes"] == sent["notes"]

    note_no = sent["notes"][0]
    r = await api.get(f"{W}/notes", "viewer", params={"status": "in_transit"})
    assert [n["number"] for n in r.json()["notes"]] == [note_no]
    r = await api.get(f"{W}/notes/{note_no}", "viewer")
    note = r.json()
    assert note["barcode"] == f"DN:{note_no}" and note["status"] == "in_transit"
    assert {(x["gtin"], x["batch"], x["units"]) for x in note["lines"]} == {
        (PARA, "P-EARLY", 50),
        (PARA, "P-LATE", 150),
        (METO, "M-1", 100),
        (OXY, "O-1", 100),
    }
    assert all(x["gs1"].startswith(f"(01){x['gtin']}(17)") for x in note["lines"])

    consumed = api.controller.ledger.moved_quantity("consume")
    r = await api.post(
        f"{W}/notes/{note_no}/receipt",
        "technician",
        json={
            "deviations": [
                {
                    "gtin": PARA,
                    "batch": "P-LATE",
                    "deviation": "damaged",
                    "units": 50,
                    "reason": "crushed box",
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "note": note_no,
        "booked": True,
        "units": 350,
        "deviations": 1,
        "consumed_on_delivery": 350,
    }
    # DR-MED is uncounted: what arrived counts as used on delivery
    assert api.controller.ledger.moved_quantity("consume") - consumed == 350
    assert at(api, "TRANSIT/H1", PARA) == 0 and at(api, "H1/W1/DR-MED", PARA) == 0
    assert path_of(api, PARA, "P-EARLY")[-3:] == [
        ("transfer", "CENTRAL/A02", "TRANSIT/H1"),
        ("transfer", "TRANSIT/H1", "H1/W1/DR-MED"),
        ("consume", "H1/W1/DR-MED", "CONSUMED"),
    ]
    assert ("waste", "TRANSIT/H1", "WASTE") in path_of(api, PARA, "P-LATE")

    r = await api.post(f"{W}/notes/{note_no}/receipt", "technician", json={})
    body = refused(r, 409, "note", note_no)
    assert "already received at" in body["error"]
    r = await api.get(f"{W}/notes/{note_no}", "viewer")
    assert r.json()["status"] == "received" and r.json()["received_by"] == USERS["technician"]
    damaged = next(x for x in r.json()["lines"] if x["deviation"])
    assert (damaged["deviation"], damaged["deviation_reason"]) == ("damaged", "crushed box")

    r = await api.get(f"{W}/reliability", "viewer", params={"until": "2026-12-09T00:00:00Z"})
    assert r.status_code == 200, r.text
    assert r.json()["lines"] == 3 and "by_cause" in r.json()
    assert verify_ledger(api.controller.ledger.engine) == []


async def test_the_note_is_received_by_scanning_its_barcode(ward: Api) -> None:
    api = ward
    number = await approved_list(api, "SC-1", (METO, 1))
    r = await api.post(
        f"{W}/pick-lists/{number}/scans", "technician", json={"data": scan(METO, "M-1", 200)}
    )
    assert r.json()["accepted"] and r.json()["list_complete"]
    note = (await api.post(f"{W}/pick-lists/{number}/dispatch", "technician")).json()["notes"][0]
    refused(
        await api.post(f"{W}/receipts/scan", "technician", json={"data": note}), 422, "data", note
    )
    r = await api.post(f"{W}/receipts/scan", "technician", json={"data": f"DN:{note}"})
    assert r.status_code == 200 and r.json()["units"] == 100, r.text
    again = await api.post(f"{W}/receipts/scan", "technician", json={"data": f"DN:{note}"})
    refused(again, 409, "note", note)
    refused(
        await api.post(f"{W}/receipts/scan", "technician", json={"data": "DN:DN-NOPE"}),
        404,
        "note",
        "DN-NOPE",
    )


async def test_the_printed_note_escapes_markup(ward: Api) -> None:
    api = ward
    number = await approved_list(api, "PR-1", (METO, 1))
    await api.post(
        f"{W}/pick-lists/{number}/scans", "technician", json={"data": scan(METO, "M-1", 200)}
    )
    note = (await api.post(f"{W}/pick-lists/{number}/dispatch", "technician")).json()["notes"][0]
    r = await api.get(f"{W}/notes/{note}/print", "viewer")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script>" not in page
    assert "Pharmacy &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in page
    assert f"DN:{note}" in page and "<svg" in page
    assert "(01)07359990000020(17)" in page
    refused(await api.get(f"{W}/notes/DN-NOPE/print", "viewer"), 404, "note", "DN-NOPE")


# ----------------------------------------------------------------------------- bad input


async def test_bad_requisitions_name_field_and_value_and_book_nothing(ward: Api) -> None:
    api = ward
    before = booked_rows(api)
    unknown = UNKNOWN

    async def fhir(payload: str | bytes) -> httpx.Response:
        return await api.post(f"{W}/requisitions", "technician", content=payload, content_type=FHIR)

    async def post_plain(body: Any) -> httpx.Response:
        return await api.post(f"{W}/requisitions", "technician", json=body)

    r = await fhir(bundle("B-1", entry(unknown, 1)))
    body = refused(r, 422, "entry[0].resource.itemCodeableConcept.coding[0].code", unknown)
    assert "unknown product" in body["error"]
    refused(await post_plain(plain("B-2", "DR-MED", (unknown, 1))), 422, "lines[0].gtin", unknown)
    body = refused(
        await post_plain(plain("B-3", "DR-NOPE", (PARA, 1))), 422, "drug_room", "DR-NOPE"
    )
    assert "not a drug room" in body["error"]
    refused(
        await fhir(bundle("B-4", entry(PARA, 1, "DR-NOPE"))),
        422,
        "entry[0].resource.deliverTo.reference",
        "DR-NOPE",
    )
    for packs in (0, -2, 100_000):
        refused(
            await post_plain(plain(f"B-5{packs}", "DR-MED", (PARA, packs))),
            422,
            "lines[0].packs",
            str(packs),
        )
        refused(
            await fhir(bundle(f"B-6{packs}", entry(PARA, packs))),
            422,
            "entry[0].resource.quantity.value",
            str(packs),
        )
    body = refused(
        await fhir('{"resourceType": "Bundle", "entry": ['), 422, "payload", "line 1 column 38"
    )
    assert "not valid JSON" in body["error"]
    refused(await fhir(json.dumps({"resourceType": "Patient"})), 422, "resourceType", "Patient")
    r = await api.post(
        f"{W}/requisitions",
        "technician",
        content=b'{"id": "B-7", "lines": [',
        content_type="application/json",
    )
    assert r.status_code == 422 and r.json()["field"] == "payload"
    r = await api.post(
        f"{W}/requisitions",
        "technician",
        content='{"id": "B-8", "id": "B-9"}',
        content_type="application/json",
    )
    refused(r, 422, "payload", "id")
    # every problem at once
    r = await post_plain(plain("B-10", "DR-MED", (PARA, 0), (unknown, 1)))
    assert [(p["field"], p["value"]) for p in r.json()["problems"]] == [
        ("lines[0].packs", "0"),
        ("lines[1].gtin", unknown),
    ]
    # a unit outside the hospital organisation, with the reason
    body = refused(
        await post_plain(plain("B-11", "DR-PRIV", (PARA, 1))), 422, "drug_room", "DR-PRIV"
    )
    assert "outside the hospital" in body["error"]
    refused(
        await api.post(f"{W}/requisitions", "technician", content="x", content_type="text/plain"),
        415,
        "Content-Type",
        "text/plain",
    )
    r = await fhir(b" " * 20_000_001)
    assert r.status_code == 413 and r.json()["field"] in ("Content-Length", "body")
    assert booked_rows(api) == before
    assert (await api.get(f"{W}/requisitions", "viewer")).json()["count"] == 0

    # the same sender id again, with other lines: the first booking stands, nothing new
    r = await post_plain(plain("D-1", "DR-MED", (PARA, 1)))
    assert r.status_code == 201
    middle = booked_rows(api)
    r2 = await post_plain(plain("D-1", "DR-MED", (METO, 3)))
    assert r2.status_code == 200 and r2.json() == {**r.json(), "duplicate": True}
    assert booked_rows(api) == middle


async def test_review_pick_and_receipt_refusals(ward: Api) -> None:
    api = ward
    r = await api.post(
        f"{W}/requisitions", "technician", json=plain("R-1", "DR-MED", (PARA, 3), (FURO, 1))
    )
    assert r.json()["flagged"] == 1
    lines = {x["gtin"]: x for x in (await api.get(f"{W}/review", "viewer")).json()["lines"]}
    decide = f"{W}/lines/{lines[PARA]['id']}/decision"
    before = booked_rows(api)
    refused(
        await api.post(decide, "pharmacist", json={"decision": "approve", "reason": " "}),
        422,
        "reason",
        " ",
    )
    refused(
        await api.post(decide, "pharmacist", json={"decision": "maybe", "reason": "hmm"}),
        422,
        "decision",
        "maybe",
    )
    refused(
        await api.post(
            decide, "pharmacist", json={"decision": "reduce", "reason": "too much", "packs": 3}
        ),
        422,
        "packs",
        "3",
    )
    refused(
        await api.post(
            decide,
            "pharmacist",
            json={"decision": "substitute", "reason": "shortage", "substitute": METO},
        ),
        422,
        "substitute",
        METO,
    )
    refused(
        await api.post(
            decide,
            "pharmacist",
            json={"decision": "substitute", "reason": "shortage", "substitute": UNKNOWN},
        ),
        422,
        "substitute",
        UNKNOWN,
    )
    refused(
        await api.post(
            f"{W}/lines/999999/decision",
            "pharmacist",
            json={"decision": "approve", "reason": "fine"},
        ),
        404,
        "line",
        "999999",
    )
    refused(
        await api.post(
            f"{W}/review/approve-routine",
            "pharmacist",
            json={"reason": "routine", "ids": [lines[FURO]["id"]]},
        ),
        409,
        "ids",
        str(lines[FURO]["id"]),
    )
    refused(
        await api.get(f"{W}/review", "viewer", params={"drug_room": "DR-X"}),
        404,
        "drug_room",
        "DR-X",
    )
    assert booked_rows(api) == before
    r = await api.post(
        decide, "pharmacist", json={"decision": "reduce", "reason": "two will do", "packs": 2}
    )
    assert (r.json()["approved_packs"], r.json()["status"]) == (2, "approved")
    refused(
        await api.post(decide, "pharmacist", json={"decision": "approve", "reason": "again"}),
        409,
        "line",
        str(lines[PARA]["id"]),
    )

    refused(
        await api.post(f"{W}/pick-lists", "technician", json={"run": "NIGHT"}), 422, "run", "NIGHT"
    )
    r = await api.post(f"{W}/pick-lists", "technician", json={"run": "PM", "date": str(TODAY)})
    assert r.status_code == 200 and r.json()["count"] == 0
    r = await api.post(f"{W}/pick-lists", "technician", json={"run": "AM", "date": str(TODAY)})
    number = r.json()["pick_lists"][0]["number"]
    for path in (f"{W}/pick-lists/WPL-NOPE", f"{W}/notes/DN-NOPE", f"{W}/requisitions/WR-NOPE"):
        r = await api.get(path, "viewer")
        assert r.status_code == 404 and r.json()["value"] == path.rsplit("/", 1)[1], r.text
    refused(
        await api.post(
            f"{W}/pick-lists/WPL-NOPE/scans", "technician", json={"data": scan(PARA, "P-EARLY", 90)}
        ),
        404,
        "pick_list",
        "WPL-NOPE",
    )
    refused(
        await api.post(f"{W}/pick-lists/WPL-NOPE/dispatch", "technician"),
        404,
        "pick_list",
        "WPL-NOPE",
    )
    r = await api.post(f"{W}/pick-lists/{number}/scans", "technician", json={"data": "garbage"})
    assert r.status_code == 200 and r.json()["message"].startswith("unreadable")
    refused(
        await api.post(f"{W}/pick-lists/{number}/scans", "technician", json={"data": "a\x00"}),
        422,
        "data",
        "a\x00",
    )
    assert (
        await api.post(
            f"{W}/pick-lists/{number}/scans", "technician", json={"data": scan(PARA, "P-EARLY", 90)}
        )
    ).json()["accepted"]
    note = (await api.post(f"{W}/pick-lists/{number}/dispatch", "technician")).json()["notes"][0]

    receipt = f"{W}/notes/{note}/receipt"
    before = booked_rows(api)

    def dev(**kw: Any) -> dict[str, Any]:
        d = {"gtin": PARA, "batch": "P-EARLY", "deviation": "missing", "units": 1, "reason": "gone"}
        return {"deviations": [{**d, **kw}]}

    refused(
        await api.post(receipt, "technician", json=dev(batch="P-9")),
        422,
        "deviations[0].batch",
        f"{PARA}/P-9",
    )
    refused(
        await api.post(receipt, "technician", json=dev(units=0)), 422, "deviations[0].units", "0"
    )
    refused(
        await api.post(receipt, "technician", json=dev(units=51)), 422, "deviations.units", "51"
    )
    refused(
        await api.post(receipt, "technician", json=dev(deviation="lost")),
        422,
        "deviations[0].deviation",
        "lost",
    )
    refused(
        await api.post(receipt, "technician", json=dev(reason="")), 422, "deviations[0].reason", ""
    )
    refused(
        await api.post(f"{W}/notes/DN-NOPE/receipt", "technician", json={}), 404, "note", "DN-NOPE"
    )
    assert booked_rows(api) == before
    assert (await api.post(receipt, "technician")).json()["units"] == 50
    refused(await api.post(receipt, "technician"), 409, "note", note)


async def test_top_up_rounds_par_levels_and_drug_rooms(ward: Api) -> None:
    api = ward
    r = await api.get(f"{W}/drug-rooms", "viewer")
    rooms = {x["code"]: x for x in r.json()["drug_rooms"]}
    assert set(rooms) == {"DR-MED", "DR-ICU", "DR-N2", "DR-PRIV"}
    assert rooms["DR-ICU"]["counted"] and rooms["DR-PRIV"]["external"]
    assert rooms["DR-N2"]["runs"] == ["AM"]
    assert rooms["DR-MED"]["assortment"][0] == {
        "gtin": PARA,
        "name": "Paracetamol 500",
        "min": 1,
        "max": 3,
    }

    top = f"{W}/drug-rooms/DR-ICU/top-up"
    r = await api.post(
        top, "technician", json={"round_id": "R1", "counts": [{"gtin": PARA, "packs": 0}]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["proposal"] == [{"gtin": PARA, "packs": 2}]
    assert r.json()["requisition"]["duplicate"] is False
    r = await api.post(
        top, "technician", json={"round_id": "R1", "counts": [{"gtin": PARA, "packs": 0}]}
    )
    assert r.json()["requisition"]["duplicate"] is True
    # an uncounted room whose shelf is above min: nothing to order
    r = await api.post(
        f"{W}/drug-rooms/DR-MED/top-up",
        "technician",
        json={"round_id": "R2", "counts": [{"gtin": PARA, "packs": 2}]},
    )
    assert r.json() == {
        "drug_room": "DR-MED",
        "round_id": "R2",
        "proposal": [],
        "requisition": None,
    }
    before = booked_rows(api)
    refused(
        await api.post(
            top, "technician", json={"round_id": "R3", "counts": [{"gtin": METO, "packs": 0}]}
        ),
        422,
        "counts[0].gtin",
        METO,
    )
    for gtin in (UNKNOWN, "0735999009999"):
        r = await api.post(
            top, "technician", json={"round_id": "R3", "counts": [{"gtin": gtin, "packs": 0}]}
        )
        refused(r, 422, "counts[0].gtin", gtin)
    refused(
        await api.post(
            top, "technician", json={"round_id": "R3", "counts": [{"gtin": PARA, "packs": -1}]}
        ),
        422,
        "counts[0].packs",
        "-1",
    )
    refused(
        await api.post(
            f"{W}/drug-rooms/DR-NOPE/top-up",
            "technician",
            json={"round_id": "R3", "counts": [{"gtin": PARA, "packs": 0}]},
        ),
        404,
        "code",
        "DR-NOPE",
    )
    refused(
        await api.post(
            f"{W}/drug-rooms/DR-PRIV/top-up",
            "technician",
            json={"round_id": "R3", "counts": [{"gtin": PARA, "packs": 0}]},
        ),
        422,
        "drug_room",
        "DR-PRIV",
    )
    assert booked_rows(api) == before

    r = await api.get(f"{W}/drug-rooms/DR-MED/par", "viewer", params={"days": 14})
    assert r.status_code == 200, r.text
    assert [s["gtin"] for s in r.json()["suggestions"]] == [PARA, METO, OXY]
    refused(await api.get(f"{W}/drug-rooms/DR-NOPE/par", "viewer"), 404, "code", "DR-NOPE")

    r = await api.get(f"{W}/reliability", "viewer")
    assert r.status_code == 200 and r.json()["share"] is None
    refused(
        await api.get(
            f"{W}/reliability",
            "viewer",
            params={"since": "2026-12-09T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
        ),
        422,
        "since",
        "2026-12-09T00:00:00+00:00",
    )


# ----------------------------------------------------------------------------- roles


async def test_a_viewer_may_look_but_not_act(ward: Api) -> None:
    api = ward
    before = booked_rows(api)
    posts: list[tuple[str, dict[str, Any]]] = [
        (f"{W}/requisitions", plain("V-1", "DR-MED", (PARA, 1))),
        (f"{W}/review/approve-routine", {"reason": "routine"}),
        (f"{W}/lines/1/decision", {"decision": "approve", "reason": "fine"}),
        (f"{W}/pick-lists", {"run": "AM"}),
        (f"{W}/pick-lists/WPL-1/scans", {"data": scan(PARA, "P-LATE", 400)}),
        (f"{W}/pick-lists/WPL-1/dispatch", {}),
        (f"{W}/notes/DN-1/receipt", {}),
        (f"{W}/receipts/scan", {"data": "DN:DN-1"}),
        (
            f"{W}/drug-rooms/DR-ICU/top-up",
            {"round_id": "R1", "counts": [{"gtin": PARA, "packs": 0}]},
        ),
    ]
    for path, body in posts:
        r = await api.post(path, "viewer", json=body)
        refused(r, 403, "role", "viewer")
    # a technician may not decide what a pharmacist decides
    for path, body in posts[1:3]:
        refused(await api.post(path, "technician", json=body), 403, "role", "technician")
    r = await api.post(f"{W}/requisitions", None, json=posts[0][1])
    assert r.status_code == 401
    assert booked_rows(api) == before
    for path in ("requisitions", "review", "pick-lists", "notes", "drug-rooms", "reliability"):
        assert (await api.get(f"{W}/{path}", "viewer")).status_code == 200


# ----------------------------------------------------------------------------- controllers


async def test_scans_and_dispatch_go_through_a_running_controller(ledger_url: str) -> None:
    async with _api(ledger_url, with_controller=True) as api:
        number = await approved_list(api, "C-1", (METO, 1))
        r = await api.post(
            f"{W}/pick-lists/{number}/scans", "technician", json={"data": scan(METO, "M-1", 200)}
        )
        assert r.status_code == 200 and r.json()["accepted"], r.text
        r = await api.post(f"{W}/pick-lists/{number}/dispatch", "technician")
        assert r.status_code == 200 and len(r.json()["notes"]) == 1
        assert api.controller.ward_desk.dispatched[-1].pick_list == number


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
async def test_a_site_that_verifies_packs_needs_the_controller_to_scan(ledger_url: str) -> None:
    async with _api(ledger_url, verification=True) as api:
        number = await approved_list(api, "V-1", (METO, 1))
        for path, body in (("scans", {"data": scan(METO, "M-1", 200)}), ("dispatch", None)):
            r = await api.post(f"{W}/pick-lists/{number}/{path}", "technician", json=body)
            assert r.status_code == 503, r.text
            assert "needs a running controller" in r.json()["error"]
        r = await api.get(f"{W}/pick-lists/{number}", "viewer")
        assert r.json()["status"] == "open" and r.json()["lines"][0]["picked_units"] == 0
