"""The API over the narrow services of controller.ports alone: a `RunningSite` made of
fakes, no `Controller`, drives the machine routes; what the routes send reaches the
fakes, and the audit trail and health read the ledger through `LedgerQueries`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from controller.api import create_app
from controller.app import Controller
from controller.config import parse_site
from controller.ledger import LedgerError
from controller.ports import PackerView, RunningSite
from controller.scanning import ScanOutcome
from drivers.base import PackerStatus, PackMLCommand, PackMLState
from tests.api.conftest import Api, served, tokens
from tests.sites import site_dict


def _status(state: PackMLState) -> PackerStatus:
    return PackerStatus(state, 1, 60.0, 0, 0, 0, "", 0, 0, 0)


class FakeMachines:
    def __init__(self) -> None:
        self.state = PackMLState.STOPPED
        self.commands: list[tuple[str, PackMLCommand]] = []

    def packer_links(self) -> dict[str, bool]:
        return {"PK1": True}

    def packer(self, name: str) -> PackerView | None:
        return PackerView(name, True, self.state, None) if name == "PK1" else None

    async def packer_status(self, name: str) -> PackerStatus:
        return _status(self.state)

    async def packer_command(self, name: str, command: PackMLCommand) -> None:
        self.commands.append((name, command))
        self.state = PackMLState.RESETTING

    def cabinet_link(self, name: str) -> str | None:
        return None


class FakeScans:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def scan(self, station: str, data: str) -> ScanOutcome:
        self.seen.append((station, data))
        if data == "BAD":
            raise LedgerError("the ledger refused it")
        return ScanOutcome(True, "pocket refilled", ref="R1")


@dataclasses.dataclass
class Fakes:
    api: Api
    machines: FakeMachines
    scans: FakeScans


@pytest.fixture
async def fake_site(ledger_url: str) -> AsyncIterator[Fakes]:
    controller = Controller(parse_site(site_dict()), ledger_url=ledger_url)
    machines, scans = FakeMachines(), FakeScans()
    unused = cast(Any, None)  # the routes under test use none of the others
    running = RunningSite(
        machines=machines,
        scans=scans,
        refills=unused,
        ledger_calls=controller.aledger,
        goods_in=unused,
        purchasing=unused,
        wardsupply=unused,
        ward_desk=unused,
        verification=None,
    )
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            running=running,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield Fakes(Api(client, controller), machines, scans)
    finally:
        controller.close()


async def test_machine_routes_use_only_the_running_sites_services(fake_site: Fakes) -> None:
    api = fake_site.api
    health = (await api.get("/health", None)).json()
    assert health["controller"] is True and health["packers"] == {"PK1": True}

    r = await api.post("/packers/PK1/commands", "technician", json={"command": "reset"})
    assert r.status_code == 200, r.text
    assert fake_site.machines.commands == [("PK1", PackMLCommand.RESET)]
    assert r.json()["state"] == "RESETTING" and r.json()["audited"] is True

    audit = (await api.get("/audit", params={"entity": "packer", "key": "PK1"})).json()
    assert [e["action"] for e in audit["entries"]] == ["packer command"]
    assert audit["entries"][0]["old"] == {"state": "STOPPED"}


async def test_scans_go_to_the_scan_service(fake_site: Fakes) -> None:
    api = fake_site.api
    r = await api.post("/refills/scan", "technician", json={"station": "SC1", "data": "A<GS>B"})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": True, "message": "pocket refilled", "ref": "R1"}
    r = await api.post("/refills/scan", "technician", json={"station": "SC1", "data": "BAD"})
    assert r.status_code == 409, r.text
    assert fake_site.scans.seen == [("SC1", "A\x1dB"), ("SC1", "BAD")]
