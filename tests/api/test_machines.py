"""The routes that need a running controller: PackML commands to a real OPC UA packer
simulator, and refills confirmed by a handheld's scans against a real Modbus cabinet
simulator; and the 503 they answer without a controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.api import create_app
from controller.app import Controller
from controller.cabinets.replenishment import pocket_label
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from drivers.base import PackMLState
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from simulators.packer_opcua import PackerSimulator
from tests.api.conftest import TODAY, USERS, Api, served, tokens
from tests.sites import FURO, METO, PARA, site_dict


@pytest.fixture
async def plant_api(ledger_url: str, address_space_cache: Path) -> AsyncIterator[Api]:
    """A packer (OPC UA) and a cabinet (Modbus TCP) on loopback, a controller running
    its packers against them, and the API in front of that controller."""
    packer = PackerSimulator(
        "PK1",
        canisters=[(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
        speed_factor=100,
        seed=3,
        transient_seconds=0.01,
        address_space_cache=address_space_cache,
        server_clock=False,
    )
    cabinet = CabinetSimulator(
        cabinets=[
            CabinetSpec(
                1, [PocketSpec(1, 100001, 12, 5, 20, 20), PocketSpec(2, 100002, 8, 4, 10, 10)]
            )
        ],
        time_factor=0,
    )
    await packer.start()
    await cabinet.start()
    raw = site_dict(packer_address=packer.endpoint, cabinet_address=cabinet.address)
    raw["scanners"] = []  # the handheld scans over HTTP
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        await asyncio.to_thread(controller.receive_opening_stock, TODAY)
        await controller.adopt_cabinets()
        runner = controller.runners["PK1"]
        runner.settings.idle_check_s = 0.2
        await controller.start_packing()
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller,
            tokens=tokens(),
        )
        async with served(app) as client:
            api = Api(client, controller, cabinet)
            for _ in range(200):  # the runner connects and settles the packer first
                health = (await client.get("/health")).json()
                if health["packers"] == {"PK1": True} and runner.recovered:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"packer never linked: {health}")
            yield api
    finally:
        await controller.stop()
        controller.close()
        await cabinet.stop()
        await packer.stop()


async def packer_state(controller: Controller) -> PackMLState:
    return (await controller.packer_drivers["PK1"].read_status()).state


async def wait_state(controller: Controller, wanted: PackMLState) -> None:
    for _ in range(200):
        if await packer_state(controller) == wanted:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"packer never reached {wanted.name}: {await packer_state(controller)}")


async def test_packml_commands_reach_the_machine(plant_api: Api) -> None:
    api = plant_api
    controller = api.controller
    assert (await api.get("/health", None)).json()["controller"] is True
    assert await packer_state(controller) == PackMLState.STOPPED

    # Hold is refused by a stopped machine: 409 with the machine's own answer.
    r = await api.post("/packers/PK1/commands", "technician", json={"command": "hold"})
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "command" and r.json()["value"] == "hold"
    assert "command Hold" in r.json()["error"] and "BadInvalidState" in r.json()["error"]
    assert await packer_state(controller) == PackMLState.STOPPED

    r = await api.post("/packers/PK1/commands", "technician", json={"command": "reset"})
    assert r.status_code == 200, r.text
    assert r.json()["packer"] == "PK1" and r.json()["command"] == "Reset"
    assert r.json()["state"] in ("RESETTING", "IDLE") and r.json()["audited"] is True
    await wait_state(controller, PackMLState.IDLE)

    r = await api.post("/packers/PK1/commands", "admin", json={"command": "stop"})
    assert r.status_code == 200, r.text
    await wait_state(controller, PackMLState.STOPPED)

    r = await api.post("/packers/PK9/commands", "technician", json={"command": "stop"})
    assert r.status_code == 404, r.text
    assert r.json() == {"error": "unknown packer: 'PK9'", "field": "name", "value": "PK9"}
    r = await api.post("/packers/PK1/commands", "technician", json={"command": "abort"})
    assert r.status_code == 422 and r.json()["field"] == "command", r.text
    assert r.json()["value"] == "abort"
    r = await api.post("/packers/PK1/commands", "viewer", json={"command": "stop"})
    assert r.status_code == 403

    # Who sent what is in the audit trail.
    trail = await api.get("/audit", "pharmacist", params={"entity": "packer", "key": "PK1"})
    entries = trail.json()["entries"]
    assert [(e["actor"], e["new"]["command"]) for e in entries] == [
        (USERS["technician"], "Reset"),
        (USERS["admin"], "Stop"),
    ]
    assert entries[0]["old"] == {"state": "STOPPED"}


async def test_a_handheld_confirms_a_refill_over_http(plant_api: Api) -> None:
    api = plant_api
    controller = api.controller
    assert (await api.get("/refills", "viewer")).json() == {"count": 0, "refills": []}

    # A refused scan is an answer, not an error.
    r = await api.post(
        "/refills/scan", "technician", json={"station": "HH-1", "data": pocket_label("CAB1", 1)}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": False,
        "message": "no pick list open: scan the pick list first",
        "ref": None,
    }

    # A nurse takes the pocket below its min (12 -> 4); the poll asks for a refill.
    api.cabinet.withdraw(1, 1, 8)
    await controller.pollers["CAB1"].poll_once()
    [pick] = await controller.replenishment.make_pick_lists()

    r = await api.get("/refills", "viewer", params={"cabinet": "CAB1"})
    assert r.status_code == 200, r.text
    [refill] = r.json()["refills"]
    assert refill["pocket"] == 1 and refill["gtin"] == PARA and refill["quantity"] == 16
    assert refill["pick_list"] == pick.list_id and refill["state"] in ("reserved", "picking")
    line = controller.replenishment.refills[0].lines[0]

    async def scan(data: str, role: str = "technician") -> dict[str, object]:
        r = await api.post("/refills/scan", role, json={"station": "HH-1", "data": data})
        assert r.status_code == 200, r.text
        return dict(r.json())

    assert (await scan(pick.barcode))["accepted"] is True
    assert (await scan(pocket_label("CAB1", 1)))["accepted"] is True
    wrong = await scan(encode_pack(PackId(PARA, "P-LATE", TODAY.replace(year=TODAY.year + 2))))
    assert wrong["accepted"] is False and "was not picked" in str(wrong["message"])
    # The handheld may write the GS1 group separator as <GS>.
    pack = encode_pack(PackId(PARA, line.batch, line.expiry, "SN1")).replace("\x1d", "<GS>")
    done = await scan(pack, role="admin")
    assert done["accepted"] is True and "confirmed: 16 into CAB1/P01" in str(done["message"])

    for _ in range(100):
        all_refills = (await api.get("/refills", "viewer", params={"all": "true"})).json()
        if all_refills["refills"][0]["state"] == "confirmed":
            break
        await asyncio.sleep(0.05)
    assert all_refills["refills"][0]["state"] == "confirmed"
    assert (await api.get("/refills", "viewer")).json()["count"] == 0
    assert controller.ledger.on_hand("CAB1/P01", PARA) == 20

    r = await api.get("/refills", "viewer", params={"cabinet": "CAB9"})
    assert r.status_code == 404 and r.json()["value"] == "CAB9", r.text
    r = await api.post("/refills/scan", "technician", json={"station": "bad station", "data": "x"})
    assert r.status_code == 422 and r.json()["field"] == "station", r.text
    r = await api.post("/refills/scan", "viewer", json={"station": "HH-1", "data": "x"})
    assert r.status_code == 403


async def test_machine_routes_need_a_running_controller(ledger_api: Api) -> None:
    r = await ledger_api.post("/packers/PK1/commands", "technician", json={"command": "stop"})
    assert r.status_code == 503, r.text
    assert "needs a running controller" in r.json()["error"]
    r = await ledger_api.post("/refills/scan", "technician", json={"station": "H", "data": "x"})
    assert r.status_code == 503 and "needs a running controller" in r.json()["error"]
    # An unknown packer is named even so.
    r = await ledger_api.post("/packers/NOPE/commands", "technician", json={"command": "stop"})
    assert r.status_code == 404 and r.json()["value"] == "NOPE"
    # The ledger routes work without it.
    assert (await ledger_api.get("/refills", "viewer")).json()["count"] == 0
