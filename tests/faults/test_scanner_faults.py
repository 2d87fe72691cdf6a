"""The serial scanner at the cabinets under faults, through the controller's scan station
(`Controller.start`): a pocket refill is picked and scanned while the scanner's line
drops and comes back, and while noise, broken frames and damaged codes arrive.

A scanner only sends, so "stops answering" is no fault of its own: a silent scanner is
a technician who does not scan, which the refill's due time and reservation timeout
cover (tests/integration/test_cabinet_rounds.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.app import Controller
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import Refill, pack_of, pocket_label
from controller.config import parse_site
from controller.gs1 import encode_pack
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from simulators.scanner_serial import ScannerSimulator
from tests.faults.conftest import (
    TODAY,
    assert_ledger_sound,
    log_lines,
    report,
    sample,
    wait_for,
)
from tests.sites import METO, site_dict

pytestmark = pytest.mark.timeout(60)


@dataclass
class Rig:
    cabinet: CabinetSimulator
    scanner: ScannerSimulator
    controller: Controller

    def scans(self, result: str) -> float:
        return sample(self.controller, "doseline_scans_total", result=result)

    async def scan(self, data: str) -> str:
        """Scans at the scanner; returns the station's answer ("ok: ..." or "refused: ...")."""
        before = len(self.controller.scan_log)
        await self.scanner.scan(data)
        await wait_for(lambda: len(self.controller.scan_log) > before, 10, f"scan of {data!r}")
        outcome = self.controller.scan_log[-1]
        return ("ok: " if outcome.accepted else "refused: ") + outcome.message

    async def refill_on_a_list(self) -> Refill:
        """Pocket 2 runs low; its refill goes on a pick list, which is scanned, with the
        pocket's label."""
        replenishment = self.controller.replenishment
        self.cabinet.withdraw(1, 2, 5)  # 8 -> 3, below min 4
        await wait_for(lambda: bool(replenishment.refills), 10, "a refill is requested")
        [refill] = replenishment.refills
        [pick] = await replenishment.make_pick_lists()
        assert (await self.scan(pick.barcode)).startswith("ok: pick list")
        assert (await self.scan(pocket_label("CAB1", 2))).startswith("ok: pocket 2 of CAB1")
        return refill

    async def assert_refill_arrived(self, refill: Refill) -> None:
        await wait_for(lambda: refill.state.value == "confirmed", 10, "cabinet told")
        led = self.controller.ledger
        assert self.cabinet.pocket(1, 2).count == 10
        assert self.cabinet.commands_executed(1) == 1
        await wait_for(
            lambda: led.on_hand(pocket_location("CAB1", 2), METO) == 10, 5, "pocket booked"
        )
        assert led.moved_quantity("transfer") == refill.quantity + 12 + 8  # + adoption
        assert led.open_reservation_count() == 0
        assert_ledger_sound(self.controller)


async def _rig(url: str, free_port: int) -> AsyncIterator[Rig]:
    cabinet = CabinetSimulator(
        cabinets=[
            CabinetSpec(
                1, [PocketSpec(1, 100001, 12, 5, 20, 20), PocketSpec(2, 100002, 8, 4, 10, 10)]
            )
        ],
        time_factor=1.0,
    )
    scanner = ScannerSimulator(port=free_port)  # a fixed port: it comes back on it
    await cabinet.start()
    await scanner.start()
    raw = site_dict(
        cabinet_address=cabinet.address, scanner_address=f"socket://127.0.0.1:{free_port}"
    )
    raw["packers"] = []
    controller = Controller(parse_site(raw), ledger_url=url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        await wait_for(lambda: scanner.lines_connected == 1, 10, "scanner line open")
        yield Rig(cabinet, scanner, controller)
    finally:
        await controller.stop()
        controller.close()
        await scanner.stop()
        await cabinet.stop()


@pytest.fixture
async def rig(tmp_path: Path, free_port: int) -> AsyncIterator[Rig]:
    """A cabinet and the scanner at it, on loopback; SQLite ledger."""
    async for made in _rig(f"sqlite:///{tmp_path / 'ledger.db'}", free_port):
        yield made


@pytest.fixture
async def rig_both_ledgers(ledger_url: str, free_port: int) -> AsyncIterator[Rig]:
    """The same, on SQLite and on PostgreSQL."""
    async for made in _rig(ledger_url, free_port):
        yield made


async def test_scanner_line_drops_mid_pick_list_and_the_refill_goes_on(
    rig_both_ledgers: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The scanner's line drops (its server restarts) between the pocket label and the
    pack. Nothing scanned meanwhile reaches anyone; once the line is back the station
    still has its pick list and pocket, the pack is accepted and booked once."""
    rig = rig_both_ledgers
    caplog.set_level(logging.INFO, logger="doseline")
    refill = await rig.refill_on_a_list()
    await rig.scanner.stop()
    driver = rig.controller.scanners["SC1"]
    await wait_for(lambda: not getattr(driver, "connected", True), 10, "line loss noticed")
    await rig.scanner.scan(encode_pack(pack_of(refill.lines[0], "LOST")))  # nobody hears it
    await asyncio.sleep(1.5)
    await rig.scanner.start()
    back_s = await wait_for(lambda: rig.scanner.lines_connected == 1, 10, "line back")
    answer = await rig.scan(encode_pack(pack_of(refill.lines[0], "SN1")))
    report("scanner line drop", line=back_s)

    assert answer.startswith("ok: refill"), answer
    assert back_s < 10
    assert len(log_lines(caplog, "line lost", level=logging.WARNING)) == 1
    assert len(log_lines(caplog, "line back", level=logging.INFO)) == 1
    assert rig.scans("accepted") == 3 and rig.scans("refused") == 0
    await rig.assert_refill_arrived(refill)


async def test_noise_broken_frames_and_damaged_codes_are_refused_and_book_nothing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Line noise, a frame cut by noise, a code with a bad GTIN check digit and one
    with month 13 in its expiry: none books anything, the damaged codes are refused
    naming the field, and the good pack after them is accepted once."""
    caplog.set_level(logging.INFO, logger="doseline")
    refill = await rig.refill_on_a_list()
    line = refill.lines[0]
    good = encode_pack(pack_of(line, "SN1"))
    await rig.scanner.garbage(600)  # no terminator, longer than any frame: dropped
    await rig.scanner.garbage(20)  # noise right before a symbol cut short
    assert (answer := await rig.scan("010735")).startswith("refused: "), answer
    bad_check_digit = good.replace(METO, METO[:-1] + str((int(METO[-1]) + 1) % 10), 1)
    assert "check digit" in (answer := await rig.scan(bad_check_digit)), answer
    expiry = f"17{line.expiry:%y%m%d}"
    month_13 = good.replace(expiry, f"17{line.expiry:%y}13{line.expiry:%d}", 1)
    assert (answer := await rig.scan(month_13)).startswith("refused: "), answer
    assert rig.controller.ledger.moved_quantity("transfer") == 12 + 8  # the adoption only
    assert (await rig.scan(good)).startswith("ok: refill")
    assert (await rig.scan(good)).startswith("refused: ")  # the same pack again

    assert rig.scans("refused") == 4 and rig.scans("accepted") == 3
    assert driver_discarded(rig) >= 2
    await rig.assert_refill_arrived(refill)


def driver_discarded(rig: Rig) -> int:
    return int(getattr(rig.controller.scanners["SC1"], "discarded", 0))
