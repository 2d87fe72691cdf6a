"""MLLP inside mutual TLS between the controller and a cabinet server (docs/cabinet-hl7.md,
docs/security.md), over loopback: the whole controller against the simulator, and the
refusals of a server or a controller that the site's CA did not sign."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.config import Cabinet
from controller.devices import cabinet_driver
from drivers.base import DriverError
from drivers.hl7_cabinet import Hl7CabinetDriver
from simulators.cabinet_hl7 import Hl7CabinetServer, SimTls
from tests.hl7_rig import TODAY, make_controller, make_server, on_hand, settle
from tests.security.pki import Pair, TestCa
from tests.sites import PARA

pytestmark = pytest.mark.timeout(30)


@dataclass(frozen=True)
class Pki:
    ca: TestCa
    server: Pair
    controller: Pair
    rogue_server: Pair
    rogue_controller: Pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("hl7-tls-pki")
    ca, other = TestCa(d, "site-ca"), TestCa(d, "other-ca")
    return Pki(
        ca,
        ca.issue("cabinet-server", server=True),
        ca.issue("controller", server=False),
        other.issue("rogue-server", server=True),
        other.issue("rogue-controller", server=False),
    )


def tls_files(pki: Pki, pair: Pair | None = None) -> dict[str, str]:
    own = pair or pki.controller
    return {"ca_file": str(pki.ca.file), "cert_file": str(own.cert), "key_file": str(own.key)}


def server_tls(pki: Pki, pair: Pair | None = None) -> SimTls:
    own = pair or pki.server
    return SimTls(str(own.cert), str(own.key), str(pki.ca.file))


@pytest.fixture
async def servers() -> AsyncIterator[list[Hl7CabinetServer]]:
    made: list[Hl7CabinetServer] = []
    yield made
    for server in made:
        await server.stop()


async def started(servers: list[Hl7CabinetServer], tls: SimTls) -> Hl7CabinetServer:
    server = make_server(tls=tls)
    servers.append(server)
    await server.start()
    return server


def driver_for(address: str, tls: dict[str, str]) -> Hl7CabinetDriver:
    config = Cabinet.model_validate(
        {
            "name": "CAB1",
            "ward": "W1",
            "driver": "hl7_mllp",
            "address": address,
            "tls": tls,
            "pockets": [{"number": 1, "gtin": PARA, "min": 5, "max": 20}],
        }
    )
    driver = cabinet_driver(config)
    assert isinstance(driver, Hl7CabinetDriver)
    return driver


async def test_withdrawals_are_booked_over_mutual_tls(
    pki: Pki, servers: list[Hl7CabinetServer], tmp_path: Path
) -> None:
    server = await started(servers, server_tls(pki))
    assert server.address.startswith("mllps://")
    controller = make_controller(server, f"sqlite:///{tmp_path}/l.db", tls=tls_files(pki))
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        server.withdraw(1, 2)
        await settle(controller, server)
        assert on_hand(controller, 1, PARA) == 10
        assert server.log.item_masters[0] == ("REP", 4)
    finally:
        await controller.stop()
        controller.close()


async def test_a_server_the_site_ca_did_not_sign_is_refused(
    pki: Pki, servers: list[Hl7CabinetServer]
) -> None:
    server = await started(servers, server_tls(pki, pki.rogue_server))
    driver = driver_for(server.address, tls_files(pki))
    with pytest.raises(DriverError, match="server certificate refused"):
        await driver.connect()
    await driver.close()
    assert server.connections == 0


async def test_a_controller_the_site_ca_did_not_sign_gets_nothing(
    pki: Pki, servers: list[Hl7CabinetServer]
) -> None:
    server = await started(servers, server_tls(pki))
    driver = driver_for(server.address, tls_files(pki, pki.rogue_controller))
    try:
        # TLS 1.3 reports the refused client certificate after the handshake: the
        # connect may succeed, but no snapshot ever arrives and the link is lost.
        await driver.connect()
        with pytest.raises(DriverError):
            await asyncio.wait_for(driver.next_event(), 5)
    except DriverError:
        pass
    finally:
        await driver.close()
    assert server.connections == 0


async def test_plain_mllp_to_a_tls_server_is_refused(
    pki: Pki, servers: list[Hl7CabinetServer]
) -> None:
    server = await started(servers, server_tls(pki))
    plain = Hl7CabinetDriver(
        "CAB1", server.address.replace("mllps", "mllp"), cabinet_id="CAB1", pocket_gtins={}
    )
    plain.snapshot_timeout = 1.0
    try:
        await plain.connect()
        with pytest.raises(DriverError):
            await plain.read_status()
    finally:
        await plain.close()
    assert server.connections == 0


def test_the_site_file_ties_mllps_to_tls(pki: Pki) -> None:
    base = {
        "name": "CAB1",
        "ward": "W1",
        "driver": "hl7_mllp",
        "pockets": [{"number": 1, "gtin": PARA, "min": 5, "max": 20}],
    }
    with pytest.raises(ValueError, match="is mllps:// and needs tls"):
        Cabinet.model_validate({**base, "address": "mllps://127.0.0.1:2576"})
    with pytest.raises(ValueError, match="use mllps:// for TLS"):
        Cabinet.model_validate({**base, "address": "mllp://127.0.0.1:2575", "tls": tls_files(pki)})
    with pytest.raises(ValueError, match="must be mllp://host:port or mllps://host:port"):
        Cabinet.model_validate({**base, "address": "tcp://127.0.0.1:2575"})
