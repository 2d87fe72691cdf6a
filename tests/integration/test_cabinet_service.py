"""Cabinet polling, withdrawals and refills through the controller, over Modbus TCP
and a serial scanner line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from controller.app import Controller
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import RefillState, pocket_label
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.ledger import verify_ledger
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from simulators.scanner_serial import ScannerSimulator
from tests.sites import METO, PARA, site_dict

TODAY = datetime.now(UTC).date()


class Plant:
    def __init__(self) -> None:
        self.cabinet = CabinetSimulator(
            cabinets=[
                CabinetSpec(
                    1, [PocketSpec(1, 100001, 12, 5, 20, 20), PocketSpec(2, 100002, 8, 4, 10, 10)]
                )
            ],
            time_factor=0,
        )
        self.scanner = ScannerSimulator()

    async def start(self) -> None:
        await self.cabinet.start()
        await self.scanner.start()

    async def stop(self) -> None:
        await self.scanner.stop()
        await self.cabinet.stop()


def controller_for(plant: Plant, ledger_url: str) -> Controller:
    raw = site_dict(
        cabinet_address=plant.cabinet.address,
        scanner_address=f"socket://127.0.0.1:{plant.scanner.port}",
    )
    raw["packers"] = []
    return Controller(parse_site(raw), ledger_url=ledger_url)


@pytest.fixture
async def cabinet(ledger_url: str) -> AsyncIterator[tuple[Controller, Plant]]:
    """A cabinet and a scanner on loopback, the controller on SQLite and on PostgreSQL."""
    plant = Plant()
    await plant.start()
    controller = controller_for(plant, ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    await controller.adopt_cabinets()
    try:
        yield controller, plant
    finally:
        await controller.stop()
        controller.close()
        await plant.stop()


def pocket_stock(controller: Controller, number: int, gtin: str) -> int:
    return controller.ledger.on_hand(pocket_location("CAB1", number), gtin)


async def test_adoption_books_pocket_counts_from_the_store(
    cabinet: tuple[Controller, Plant],
) -> None:
    controller, _plant = cabinet
    assert pocket_stock(controller, 1, PARA) == 12
    assert pocket_stock(controller, 2, METO) == 8
    await controller.adopt_cabinets()  # a second adoption books nothing
    assert pocket_stock(controller, 1, PARA) == 12


async def test_withdrawals_are_booked_once_even_across_missed_polls_and_restarts(
    cabinet: tuple[Controller, Plant],
    ledger_url: str,
) -> None:
    controller, plant = cabinet
    poller = controller.pollers["CAB1"]
    plant.cabinet.withdraw(1, 1, 3)
    await poller.poll_once()
    assert pocket_stock(controller, 1, PARA) == 9
    for _ in range(3):  # three withdrawals, no poll in between
        plant.cabinet.withdraw(1, 1, 1)
    plant.cabinet.withdraw(1, 2, 2)
    await poller.poll_once()
    await poller.poll_once()
    assert pocket_stock(controller, 1, PARA) == 6
    assert pocket_stock(controller, 2, METO) == 6
    assert poller.withdrawals_booked == 8

    # A second controller on the same ledger (a restart) books nothing again.
    again = controller_for(plant, ledger_url)
    try:
        await again.pollers["CAB1"].poll_once()
        assert again.pollers["CAB1"].withdrawals_booked == 0
    finally:
        await again.stop()
        again.close()
    assert controller.ledger.moved_quantity("consume") == 8
    assert verify_ledger(controller.ledger.engine) == []


async def test_more_withdrawn_than_booked_is_a_visible_discrepancy(
    cabinet: tuple[Controller, Plant],
) -> None:
    controller, plant = cabinet
    plant.cabinet.set_counters(
        1, 2, withdrawals_total=plant.cabinet.pocket(1, 2).withdrawals_total + 11
    )
    await controller.pollers["CAB1"].poll_once()
    await controller.pollers["CAB1"].poll_once()  # raised once, not once per poll
    assert pocket_stock(controller, 2, METO) == 0
    # The counter says 11 were taken where the ledger held 8; and the cabinet still
    # counts 8 doses the ledger no longer has. An operator sees both.
    found = {(d.source, d.device_value, d.ledger_value) for d in controller.ledger.discrepancies()}
    assert found == {("counter", 8, 8), ("cabinet", 8, 0)}
    sample = controller.metrics.registry.get_sample_value(
        "doseline_stock_discrepancies_total", {"location_kind": "pocket"}
    )
    assert sample == 2.0
    assert verify_ledger(controller.ledger.engine) == []


async def test_low_pocket_is_refilled_after_scans_over_the_serial_line(
    cabinet: tuple[Controller, Plant],
) -> None:
    controller, plant = cabinet
    await controller.start()
    plant.cabinet.withdraw(1, 1, 8)  # 12 -> 4, below min 5
    refill = None
    for _ in range(100):
        if controller.replenishment.refills:
            refill = controller.replenishment.refills[0]
            break
        await asyncio.sleep(0.05)
    assert refill is not None and refill.quantity == 16  # up to max 20
    # First expiry first, skipping the lot inside the minimum shelf life.
    assert [(line.batch, line.quantity) for line in refill.lines] == [("P-EARLY", 16)]
    [pick] = await controller.replenishment.make_pick_lists()
    line = refill.lines[0]

    async def scan(data: str) -> str:
        before = len(controller.scan_log)
        await plant.scanner.scan(data)
        for _ in range(100):
            if len(controller.scan_log) > before:
                outcome = controller.scan_log[-1]
                return ("ok: " if outcome.accepted else "refused: ") + outcome.message
            await asyncio.sleep(0.02)
        raise AssertionError("scan never arrived")

    assert (await scan(encode_pack(PackId(PARA, line.batch, line.expiry)))).startswith(
        "refused: no pick list open"
    )
    assert (await scan(pick.barcode)).startswith("ok: pick list")
    assert "scan the label of the pocket" in await scan(
        encode_pack(PackId(PARA, line.batch, line.expiry))
    )
    assert "pocket 2 of CAB1 has no refill open on pick list" in await scan(pocket_label("CAB1", 2))
    assert "wrong cabinet" in await scan(pocket_label("CAB9", 1))
    assert (await scan(pocket_label("CAB1", 1))).startswith("ok: pocket 1 of CAB1")
    assert "GTIN 07359990000020 is not on pick list" in await scan(
        encode_pack(PackId(METO, "M-1", TODAY + timedelta(days=200)))
    )
    assert "batch P-LATE of 07359990000013 was not picked (pick list says P-EARLY)" in await scan(
        encode_pack(PackId(PARA, "P-LATE", TODAY + timedelta(days=400)))
    )
    assert "expired on" in await scan(
        encode_pack(PackId(PARA, "P-EARLY", TODAY - timedelta(days=1)))
    )
    assert refill.state == RefillState.PICKING
    assert "confirmed: 16 into CAB1/P01" in await scan(
        encode_pack(PackId(PARA, line.batch, line.expiry, "SN1"))
    )

    assert plant.cabinet.pocket(1, 1).count == 20
    assert pocket_stock(controller, 1, PARA) == 20
    assert controller.ledger.open_reservation_count() == 0
    assert verify_ledger(controller.ledger.engine) == []


async def test_unpicked_refills_are_released(cabinet: tuple[Controller, Plant]) -> None:
    controller, plant = cabinet
    plant.cabinet.withdraw(1, 2, 6)  # 8 -> 2, below min 4
    await controller.pollers["CAB1"].poll_once()
    assert controller.ledger.open_reservation_count() == 1
    assert await controller.replenishment.cancel_open("shift ended") == 1
    assert controller.ledger.open_reservation_count() == 0
    assert controller.ledger.available("CENTRAL/A01", METO) == 300 - 8


async def test_cabinet_outage_is_survived(cabinet: tuple[Controller, Plant]) -> None:
    controller, plant = cabinet
    poller = controller.pollers["CAB1"]
    await controller.start()
    await asyncio.sleep(0.2)
    assert poller.online
    await plant.cabinet.stop()
    for _ in range(100):
        if not poller.online:
            break
        await asyncio.sleep(0.05)
    assert not poller.online
    plant.cabinet.withdraw(1, 1, 2)  # happens while the link is down
    await plant.cabinet.start()
    for _ in range(200):
        if poller.online and poller.withdrawals_booked == 2:
            break
        await asyncio.sleep(0.05)
    assert poller.online and poller.withdrawals_booked == 2
    assert pocket_stock(controller, 1, PARA) == 10


async def test_returned_doses_go_back_into_the_pocket(cabinet: tuple[Controller, Plant]) -> None:
    controller, plant = cabinet
    poller = controller.pollers["CAB1"]
    plant.cabinet.withdraw(1, 1, 3)
    await poller.poll_once()
    plant.cabinet.return_doses(1, 1, 2)
    await poller.poll_once()
    assert poller.returns_booked == 2
    assert pocket_stock(controller, 1, PARA) == plant.cabinet.pocket(1, 1).count == 11
    assert controller.ledger.moved_quantity("return") == 2
    assert verify_ledger(controller.ledger.engine) == []


async def test_shutdown_during_a_confirmation_lets_it_finish(
    cabinet: tuple[Controller, Plant],
) -> None:
    controller, plant = cabinet
    replenishment = controller.replenishment
    plant.cabinet.withdraw(1, 1, 8)  # 12 -> 4, below min 5
    await controller.pollers["CAB1"].poll_once()
    [refill] = replenishment.refills
    [pick] = await replenishment.make_pick_lists()
    assert (await replenishment.on_scan(pick.barcode)).accepted
    assert (await replenishment.on_scan(pocket_label("CAB1", 1))).accepted
    line = refill.lines[0]
    plant.cabinet.set_stalled(1, True)  # the cabinet holds the refill command for now
    scan = asyncio.create_task(
        replenishment.on_scan(encode_pack(PackId(PARA, line.batch, line.expiry, "SN7")))
    )
    await asyncio.sleep(0.2)
    scan.cancel()  # the scan station is stopped mid-confirmation
    with pytest.raises(asyncio.CancelledError):
        await scan
    plant.cabinet.set_stalled(1, False)
    await replenishment.drain()
    assert refill.state == RefillState.CONFIRMED
    assert plant.cabinet.pocket(1, 1).count == 20 == pocket_stock(controller, 1, PARA)
    assert await replenishment.cancel_open("shift ended") == 0
    assert controller.ledger.open_reservation_count() == 0


async def test_a_poll_cancelled_while_reserving_leaves_no_reservation_behind(
    cabinet: tuple[Controller, Plant],
) -> None:
    controller, plant = cabinet
    replenishment = controller.replenishment
    plant.cabinet.withdraw(1, 2, 6)  # 8 -> 2, below min 4
    poll = asyncio.create_task(controller.pollers["CAB1"].poll_once())
    # Cancel the poll as soon as the reservation is under way in the ledger's thread.
    for _ in range(2000):
        if replenishment._in_flight:
            break
        await asyncio.sleep(0.001)
    assert replenishment._in_flight, "the poll never asked for a refill"
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    await replenishment.drain()
    await controller.aledger.open_reservation_count()  # the ledger's queue is empty
    assert [r.refill_id for r in replenishment.refills if r.open] != []
    assert await replenishment.cancel_open("shift ended") == 1
    assert controller.ledger.open_reservation_count() == 0
