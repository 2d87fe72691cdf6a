"""The serial scanner driver against the simulated scanner over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date

import pytest

from controller.gs1 import PackId, ScanError, encode_pack, parse_pack
from drivers.base import DriverError
from drivers.serial_scanner import SerialScannerDriver, split_frame
from simulators.scanner_serial import ScannerSimulator

PACK = PackId(gtin="07359990000013", batch="N0201A", expiry=date(2027, 3, 31), serial="SN1")


async def wait_for_line(sim: ScannerSimulator) -> None:
    """Until the driver's end of the serial line is connected to the simulator."""
    for _ in range(100):
        if sim.lines_connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the driver never connected its line")


@pytest.fixture
async def scanner() -> AsyncIterator[tuple[ScannerSimulator, SerialScannerDriver]]:
    sim = ScannerSimulator(seed=1)
    await sim.start()
    driver = SerialScannerDriver("S1", f"socket://127.0.0.1:{sim.port}", reconnect_s=0.1)
    await driver.connect()
    await wait_for_line(sim)
    try:
        yield sim, driver
    finally:
        await driver.close()
        await sim.stop()


async def test_scan_arrives_and_parses(
    scanner: tuple[ScannerSimulator, SerialScannerDriver],
) -> None:
    sim, driver = scanner
    await sim.scan(encode_pack(PACK))
    data = await asyncio.wait_for(driver.read_scan(), 3)
    assert parse_pack(data) == PACK


async def test_garbage_then_scan_resynchronises(
    scanner: tuple[ScannerSimulator, SerialScannerDriver],
) -> None:
    sim, driver = scanner
    await sim.garbage(40)
    await sim.scan(encode_pack(PACK))
    data = await asyncio.wait_for(driver.read_scan(), 3)
    assert parse_pack(data) == PACK
    assert driver.discarded == 1


async def test_trigger_socket_drives_the_scanner(
    scanner: tuple[ScannerSimulator, SerialScannerDriver],
) -> None:
    sim, driver = scanner
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.trigger_port)
    writer.write(b'{"scan": "0107359990000013172703311012345"}\n{"nonsense": 1}\n')
    await writer.drain()
    assert b'"ok": true' in await reader.readline()
    assert b"unknown trigger" in await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert parse_pack(await asyncio.wait_for(driver.read_scan(), 3)).batch == "12345"


async def test_line_comes_back_after_simulator_restart() -> None:
    sim = ScannerSimulator()
    await sim.start()
    port = sim.port
    driver = SerialScannerDriver("S1", f"socket://127.0.0.1:{port}", reconnect_s=0.1)
    await driver.connect()
    try:
        await wait_for_line(sim)
        await sim.stop()
        await asyncio.sleep(0.3)
        sim = ScannerSimulator(port=port)
        await sim.start()
        await wait_for_line(sim)
        await sim.scan(encode_pack(PACK))
        assert parse_pack(await asyncio.wait_for(driver.read_scan(), 3)) == PACK
    finally:
        await driver.close()
        await sim.stop()


async def test_nothing_listening_is_a_clear_error(free_port: int) -> None:
    driver = SerialScannerDriver("S1", f"socket://127.0.0.1:{free_port}")
    with pytest.raises(DriverError, match=f"S1: cannot open socket://127.0.0.1:{free_port}"):
        await driver.connect()


def test_split_frame() -> None:
    assert split_frame(b"]d2010735") == ("010735", False)
    assert split_frame(b"xx!]d2010735") == ("010735", True)
    assert split_frame(b"noise") == (None, True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("0107359990000014172703311012345", "GTIN \\(01\\)"),  # wrong check digit
        ("01073599900000131012345", "no valid expiry"),
        ("010735999000001317270331", "no batch"),
        ("hello", "not a GS1 element string"),
        ("17270331" + "1012345", "no GTIN"),
    ],
)
def test_bad_scans_name_the_field(data: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_pack(data)
