"""The store tasks over HTTP: `POST /stock/moves` and `POST /stock/waste-expired`, with
the caller as the audited actor; roles, bad bodies named, and the good path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from controller.ledger import Ledger
from controller.ledger.schema import audit_log
from tests.api.conftest import TODAY, USERS, Api
from tests.sites import METO, PARA


def on_hand(api: Api, location: str, batch: str) -> int:
    rows = api.controller.ledger.stock(location=location)
    return sum(r.on_hand for r in rows if r.batch == batch)


def move_body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "gtin": PARA,
        "batch": "P-LATE",
        "from_location": "CENTRAL/A01",
        "to_location": "CENTRAL/A02",
        "quantity": 20,
        "reason": "A01 is being emptied",
        "key": "mv-1",
    }
    body.update(changes)
    return body


async def test_a_viewer_may_not_run_store_tasks(ledger_api: Api) -> None:
    for path, body in (
        ("/stock/moves", move_body()),
        ("/stock/waste-expired", {"key": "w-1", "dry_run": True}),
    ):
        r = await ledger_api.post(path, "viewer", json=body)
        assert r.status_code == 403, r.text
        assert r.json()["field"] == "role" and r.json()["value"] == "viewer"
        r = await ledger_api.post(path, None, json=body)
        assert r.status_code == 401, r.text
    assert on_hand(ledger_api, "CENTRAL/A02", "P-LATE") == 0


async def test_a_move_is_booked_once_with_the_caller_as_actor(ledger_api: Api) -> None:
    api = ledger_api
    r = await api.post("/stock/moves", "technician", json=move_body())
    assert r.status_code == 200, r.text
    assert r.json() == {
        "key": "mv-1",
        "gtin": PARA,
        "batch": "P-LATE",
        "from_location": "CENTRAL/A01",
        "to_location": "CENTRAL/A02",
        "quantity": 20,
        "booked": True,
    }
    assert (on_hand(api, "CENTRAL/A01", "P-LATE"), on_hand(api, "CENTRAL/A02", "P-LATE")) == (
        480,
        20,
    )
    with api.controller.ledger.engine.connect() as conn:
        actors = set(
            conn.execute(select(audit_log.c.actor).where(audit_log.c.action == "move")).scalars()
        )
    assert actors == {USERS["technician"]}

    r = await api.post("/stock/moves", "pharmacist", json=move_body())
    assert r.status_code == 200 and r.json()["booked"] is False, r.text
    assert on_hand(api, "CENTRAL/A02", "P-LATE") == 20


async def test_a_bad_move_body_is_named(ledger_api: Api) -> None:
    api = ledger_api
    cases: list[tuple[dict[str, object], int, str, str | None]] = [
        (move_body(quantity="3"), 422, "quantity", "3"),
        (move_body(quantity=2.5), 422, "quantity", "2.5"),
        (move_body(quantity=0), 422, "quantity", "0"),
        (move_body(quantity=501), 409, "quantity", "501"),
        (move_body(key=""), 422, "key", ""),
        (move_body(key="k" * 201), 422, "key", "k" * 197 + "..."),
        (move_body(shelf="A"), 422, "shelf", "A"),
        (move_body(gtin="07359990000014"), 422, "gtin", "07359990000014"),
        (move_body(gtin="07359990000044", batch="X"), 422, "batch", "X"),
        (move_body(batch="NOPE"), 422, "batch", "NOPE"),
        (move_body(to_location="CAB1/P01"), 422, "to_location", "CAB1/P01"),
        (move_body(to_location="CENTRAL/Z9"), 422, "to_location", "CENTRAL/Z9"),
        (move_body(to_location="CENTRAL/A01"), 422, "to_location", "CENTRAL/A01"),
    ]
    body_without_key = move_body()
    del body_without_key["key"]
    cases.append((body_without_key, 422, "key", None))
    for body, status, field, value in cases:
        r = await api.post("/stock/moves", "technician", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["field"] == field, (body, r.text)
        assert r.json().get("value") == value, (body, r.text)
    assert on_hand(api, "CENTRAL/A02", "P-LATE") == 0
    assert not api.controller.ledger.command_done("mv-1")


async def test_expired_store_stock_is_wasted_once(ledger_api: Api) -> None:
    api = ledger_api
    then = datetime.now(UTC) - timedelta(days=30)
    past = Ledger(api.controller.ledger.engine, clock=lambda: then)
    expiry = then.date() + timedelta(days=10)
    past.receive(
        "r-old",
        gtin=METO,
        batch="M-OLD",
        expiry=expiry,
        quantity=25,
        to_location="CENTRAL/A02",
        actor="goods-in",
    )
    expected = [
        {
            "location": "CENTRAL/A02",
            "gtin": METO,
            "batch": "M-OLD",
            "expiry": expiry.isoformat(),
            "units": 25,
        }
    ]

    r = await api.post("/stock/waste-expired", "technician", json={"key": "w-1", "dry_run": True})
    assert r.status_code == 200, r.text
    assert r.json()["dry_run"] is True and r.json()["wasted"] == expected
    assert r.json()["location"] == "CENTRAL" and r.json()["units"] == 25
    assert r.json()["today"] in (TODAY.isoformat(), (TODAY + timedelta(days=1)).isoformat())
    assert on_hand(api, "CENTRAL/A02", "M-OLD") == 25

    r = await api.post("/stock/waste-expired", "technician", json={"key": "w-1"})
    assert r.status_code == 200, r.text
    assert r.json()["wasted"] == expected and r.json()["left"] == []
    assert on_hand(api, "CENTRAL/A02", "M-OLD") == 0
    assert api.controller.ledger.command_done(f"w-1:CENTRAL/A02:{METO}/M-OLD")

    r = await api.post("/stock/waste-expired", "technician", json={"key": "w-1"})
    assert r.status_code == 200 and r.json()["wasted"] == [] and r.json()["units"] == 0

    for body, field, value in (
        ({"key": "w-2", "location": "CAB1"}, "location", "CAB1"),
        ({"key": "w-2", "location": "NOWHERE"}, "location", "NOWHERE"),
        ({"dry_run": True}, "key", None),
        ({"key": "w-2", "dry_run": "maybe"}, "dry_run", "maybe"),
    ):
        r = await api.post("/stock/waste-expired", "technician", json=body)
        assert r.status_code == 422, r.text
        assert (r.json()["field"], r.json().get("value")) == (field, value), r.text
