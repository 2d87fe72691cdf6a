"""The ScannerDriver contract: FakeScanner and the serial scanner driver against the
scanner simulator on loopback (a pyserial socket:// line)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import DriverError
from drivers.fakes import FakeScanner
from drivers.serial_scanner import SerialScannerDriver
from tests.contract.conftest import ScannerRig

PACK = "0107359990000013172703311012345\x1d21SN1"
OTHER = "0107359990000020172703311067890\x1d21SN2"
QUIET_S = 0.3


async def test_scans_arrive_in_order(scanner: ScannerRig) -> None:
    await scanner.scan(PACK)
    await scanner.scan(OTHER)
    assert await asyncio.wait_for(scanner.driver.read_scan(), 3) == PACK
    assert await asyncio.wait_for(scanner.driver.read_scan(), 3) == OTHER


async def test_noise_is_dropped(scanner: ScannerRig) -> None:
    await scanner.noise()
    await scanner.scan(PACK)
    assert await asyncio.wait_for(scanner.driver.read_scan(), 3) == PACK


async def test_nothing_scanned_nothing_read(scanner: ScannerRig) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(scanner.driver.read_scan(), QUIET_S)


async def test_the_line_comes_back_by_itself(scanner: ScannerRig) -> None:
    """After a lost line the driver reopens it without connect(); read_scan never
    raises, it waits (scans made while the line was down are gone)."""
    await scanner.link_down()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(scanner.driver.read_scan(), QUIET_S)
    await scanner.link_up()
    await scanner.scan(PACK)
    assert await asyncio.wait_for(scanner.driver.read_scan(), 3) == PACK


async def test_after_close_read_scan_waits_and_does_not_raise(scanner: ScannerRig) -> None:
    """The interface does not say what read_scan does after close; the serial driver
    waits for ever (no DriverError), and the fake does the same."""
    await scanner.driver.close()
    await scanner.driver.close()  # idempotent
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(scanner.driver.read_scan(), QUIET_S)


@pytest.mark.parametrize("kind", ["fake", "serial"])
async def test_connect_to_an_absent_line_raises(kind: str, free_port: int) -> None:
    driver: FakeScanner | SerialScannerDriver
    if kind == "fake":
        driver = FakeScanner("SC1")
        driver.link_up = False
    else:
        driver = SerialScannerDriver("SC1", f"socket://127.0.0.1:{free_port}")
    with pytest.raises(DriverError):
        await driver.connect()
    await driver.close()
