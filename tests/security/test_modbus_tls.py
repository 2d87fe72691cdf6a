"""Modbus/TCP Security (Modbus inside mutual TLS) between the cabinet driver and the
cabinet simulator, over loopback sockets.

Certificates come from two test CAs made once per module: the site's CA signs the
cabinet and the controller, another CA signs a rogue cabinet and a rogue controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from controller.config import Cabinet, gs1_check_digit
from controller.devices import BusRegistry, cabinet_driver
from drivers.base import CabinetCommand, DriverError
from drivers.modbus_cabinet import ModbusCabinetDriver, ModbusTlsBus
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec, SimTls
from tests.security.pki import Pair, TestCa

pytestmark = pytest.mark.timeout(30)

GTINS = [body + str(gs1_check_digit(body)) for body in ("0735000002001", "0735000002002")]
POCKETS = [
    PocketSpec(1, 100_101, count=40, min_level=10, max_level=50, capacity=60),
    PocketSpec(2, 100_205, count=25, min_level=8, max_level=30, capacity=40),
]


@dataclass(frozen=True)
class Pki:
    ca: TestCa  # the site's CA
    other_ca: TestCa
    cabinet: Pair
    controller: Pair
    rogue_cabinet: Pair  # signed by the other CA
    rogue_controller: Pair  # signed by the other CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("modbus-tls-pki")
    ca, other = TestCa(d, "site-ca"), TestCa(d, "other-ca")
    return Pki(
        ca=ca,
        other_ca=other,
        cabinet=ca.issue("cabinet-med1", server=True),
        controller=ca.issue("controller", server=False),
        rogue_cabinet=other.issue("rogue-cabinet", server=True),
        rogue_controller=other.issue("rogue-controller", server=False),
    )


StartCabinet = Callable[..., Awaitable[CabinetSimulator]]


@pytest.fixture
async def start_cabinet(pki: Pki) -> AsyncIterator[StartCabinet]:
    started: list[CabinetSimulator] = []

    async def start(certificate: Pair | None = None, transport: str = "tls") -> CabinetSimulator:
        own = certificate or pki.cabinet
        tls = SimTls(str(own.cert), str(own.key), str(pki.ca.file))
        sim = CabinetSimulator(
            cabinets=[CabinetSpec(cabinet_id=3, pockets=POCKETS)],
            time_factor=0,
            transport=transport,  # type: ignore[arg-type]
            tls=tls if transport == "tls" else None,
        )
        started.append(sim)
        await sim.start()
        return sim

    yield start
    for sim in reversed(started):
        await sim.stop()


@pytest.fixture
async def drivers() -> AsyncIterator[list[ModbusCabinetDriver]]:
    made: list[ModbusCabinetDriver] = []
    yield made
    for driver in made:
        await driver.close()


def tls_cabinet(
    drivers: list[ModbusCabinetDriver], pki: Pki, address: str, **tls: Any
) -> ModbusCabinetDriver:
    """The cabinet as a site file names it, built by controller.devices."""
    config = Cabinet.model_validate(
        {
            "name": "CAB-MED1",
            "ward": "MED1",
            "driver": "modbus_tls",
            "address": address,
            "unit_id": 3,
            "tls": {
                "ca_file": str(pki.ca.file),
                "cert_file": str(pki.controller.cert),
                "key_file": str(pki.controller.key),
                **tls,
            },
            "pockets": [
                {"number": 1, "gtin": GTINS[0], "min": 10, "max": 50},
                {"number": 2, "gtin": GTINS[1], "min": 8, "max": 30},
            ],
        }
    )
    driver = cabinet_driver(config, BusRegistry())
    assert isinstance(driver, ModbusCabinetDriver)
    assert isinstance(driver.bus, ModbusTlsBus)
    drivers.append(driver)
    return driver


async def test_a_tls_cabinet_is_polled_and_commanded_end_to_end(
    start_cabinet: StartCabinet, drivers: list[ModbusCabinetDriver], pki: Pki
) -> None:
    sim = await start_cabinet()
    driver = tls_cabinet(drivers, pki, sim.address)
    await driver.connect()

    status = await driver.read_status()
    assert status.cabinet_id == 3
    assert [(p.number, p.count) for p in status.pockets] == [(1, 40), (2, 25)]
    assert sim.withdraw(3, 1, 2) == 2  # a nurse takes two doses
    after = await driver.read_status()
    assert (after.pockets[0].count, after.pockets[0].withdrawals_total) == (38, 2)

    await driver.send_command(1, CabinetCommand.REFILL, 2, 5)
    assert sim.pocket(3, 2).count == 30
    assert sim.ack(3) == (1, 0)
    assert (await driver.read_status()).pockets[1].refills_total == 5


async def test_a_cabinet_certificate_from_another_ca_is_refused(
    start_cabinet: StartCabinet, drivers: list[ModbusCabinetDriver], pki: Pki
) -> None:
    sim = await start_cabinet(certificate=pki.rogue_cabinet)
    driver = tls_cabinet(drivers, pki, sim.address)
    with pytest.raises(DriverError) as refused:
        await driver.connect()
    message = str(refused.value)
    assert message.startswith(f"cabinet CAB-MED1 (unit 3 at {sim.address}) connect:")
    assert "the cabinet's certificate is not trusted" in message
    assert str(pki.ca.file) in message
    assert not sim.frames  # not one Modbus frame went to the rogue


async def test_a_plain_modbus_cabinet_is_not_taken_for_a_tls_one(
    start_cabinet: StartCabinet, drivers: list[ModbusCabinetDriver], pki: Pki
) -> None:
    sim = await start_cabinet(transport="tcp")
    driver = tls_cabinet(drivers, pki, sim.address)
    with pytest.raises(DriverError, match=r"cannot connect to .* no TLS handshake"):
        await driver.connect()
    assert not sim.frames


async def test_a_controller_certificate_from_another_ca_is_refused_by_the_cabinet(
    start_cabinet: StartCabinet, drivers: list[ModbusCabinetDriver], pki: Pki
) -> None:
    sim = await start_cabinet()
    driver = tls_cabinet(
        drivers,
        pki,
        sim.address,
        cert_file=str(pki.rogue_controller.cert),
        key_file=str(pki.rogue_controller.key),
    )
    with pytest.raises(DriverError) as refused:
        async with asyncio.timeout(1.5):  # refused at once, not after the request timeout
            await driver.connect()
    message = str(refused.value)
    assert message.startswith(f"cabinet CAB-MED1 (unit 3 at {sim.address}) connect:")
    assert "the cabinet closed the TLS connection" in message
    assert str(pki.rogue_controller.cert) in message
    assert not sim.frames


async def test_a_client_without_a_certificate_is_refused_by_the_cabinet(
    start_cabinet: StartCabinet, pki: Pki
) -> None:
    sim = await start_cabinet()
    context = ssl.create_default_context(cafile=str(pki.ca.file))  # trusts, presents none
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port, ssl=context)
    try:
        # FC3, unit 3, 8 registers from 0: the identity block
        writer.write(bytes.fromhex("0001 0000 0006 03 03 0000 0008"))
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            await writer.drain()
            async with asyncio.timeout(5):
                assert await reader.read(256) == b""
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    assert not sim.frames  # the request never reached the cabinet


async def test_missing_tls_files_are_named_at_connect(
    drivers: list[ModbusCabinetDriver], pki: Pki, tmp_path: Any
) -> None:
    address = "tcp://127.0.0.1:9"
    for field_name in ("ca_file", "cert_file", "key_file"):
        missing = str(tmp_path / f"{field_name}.pem")
        driver = tls_cabinet(drivers, pki, address, **{field_name: missing})
        with pytest.raises(DriverError) as refused:
            await driver.connect()
        assert str(refused.value).endswith(f"tls.{field_name}: file {missing} not found")
        assert str(refused.value).startswith("cabinet CAB-MED1 (unit 3 at tcp://127.0.0.1:9)")
