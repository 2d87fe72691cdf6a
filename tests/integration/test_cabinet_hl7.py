"""A cabinet behind the HL7 cabinet-server simulator, through the whole controller, over
real MLLP sockets (docs/cabinet-hl7.md); on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from controller.app import Controller
from controller.cabinets.hl7_listener import item_master
from controller.cabinets.par import daily_consumption
from controller.gs1 import PackId, encode_pack
from controller.ledger import verify_ledger
from drivers.base import AckCode, CabinetCommand, PocketEvent, PocketEventKind
from simulators.cabinet_hl7 import Hl7CabinetServer
from simulators.scanner_serial import ScannerSimulator
from tests.hl7_rig import (
    CABINET,
    TODAY,
    discrepancies,
    listener,
    make_controller,
    make_server,
    on_hand,
    settle,
    until,
)
from tests.sites import METO, PARA

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def rig(ledger_url: str) -> AsyncIterator[tuple[Controller, Hl7CabinetServer]]:
    server = make_server()
    await server.start()
    controller = make_controller(server, ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        yield controller, server
    finally:
        await controller.stop()
        controller.close()
        await server.stop()


async def test_adoption_and_item_master_at_connect(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    assert on_hand(controller, 1, PARA) == 12
    assert on_hand(controller, 2, METO) == 8
    await until(lambda: bool(listener(controller).items_sent), "item master acknowledged")
    assert server.log.item_masters[0] == ("REP", 4)
    assert server.item_master[PARA] == "Paracetamol 500"
    # A changed product goes out as an update, the unchanged ones do not.
    items = item_master(controller.site.catalogue)
    items[1] = items[1].__class__(items[1].gtin, "Metoprolol 50 mg depot", items[1].atc)
    assert await listener(controller).update_catalogue(items) == 1
    assert server.log.item_masters[-1] == ("UPD", 1)
    assert server.item_master[METO] == "Metoprolol 50 mg depot"


async def test_withdrawals_waste_returns_and_counts_are_booked_once(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    server.withdraw(1, 3)
    server.withdraw(1, 1)
    server.waste(2, 1)
    server.return_doses(1, 1)
    await settle(controller, server)
    assert on_hand(controller, 1, PARA) == 12 - 4 + 1
    assert on_hand(controller, 2, METO) == 7
    lis = listener(controller)
    assert (lis.withdrawals_booked, lis.wasted_booked, lis.returns_booked) == (4, 1, 1)
    assert controller.ledger.moved_quantity("consume") == 4
    # Par levels read the same movements: 4 taken, 1 put back, the waste is no demand.
    [history] = daily_consumption(
        controller.ledger.engine, [("CAB1/P01", PARA)], days=1, until=datetime.now(UTC).date()
    ).values()
    assert sum(history.daily) == 3
    assert (
        controller.metrics.registry.get_sample_value(
            "doseline_cabinet_withdrawals_total", {"cabinet": CABINET}
        )
        == 4
    )
    # A count at the cabinet that differs from the ledger sets it and is raised.
    server.stocktake(2, 5)
    await settle(controller, server)
    assert on_hand(controller, 2, METO) == 5
    assert discrepancies(controller) == {("count", 5, 7)}
    assert verify_ledger(controller.ledger.engine) == []


async def test_a_message_handled_again_by_a_restarted_controller_books_nothing(
    rig: tuple[Controller, Hl7CabinetServer], ledger_url: str
) -> None:
    controller, server = rig
    server.withdraw(1, 2)
    await settle(controller, server)
    [control_id] = [i for i in server.log.accepted if server.log.kinds[i] == "DISPENSE"]
    assert on_hand(controller, 1, PARA) == 10
    # The same message (its control id) reaches a second controller on the same ledger,
    # as after a crash between booking and acknowledging.
    again = make_controller(server, ledger_url)
    try:
        event = PocketEvent(control_id, CABINET, PocketEventKind.DISPENSE, "A", 1, PARA, 2, 10)
        ack = await listener(again).handle(event)
        assert ack.code == AckCode.ACCEPT
        assert listener(again).duplicates == 1
        assert listener(again).withdrawals_booked == 0
    finally:
        await again.stop()
        again.close()
    assert on_hand(controller, 1, PARA) == 10
    assert controller.ledger.moved_quantity("consume") == 2


async def test_events_the_site_file_does_not_match_are_refused(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, _server = rig
    lis = listener(controller)
    cases = [
        (PocketEvent("X1", "CAB9", PocketEventKind.DISPENSE, "A", 1, PARA, 1), "ZPK-1"),
        (PocketEvent("X2", CABINET, PocketEventKind.DISPENSE, "A", 7, PARA, 1), "ZPK-3"),
        (PocketEvent("X3", CABINET, PocketEventKind.DISPENSE, "A", 1, METO, 1), "RXD-2"),
    ]
    for event, field in cases:
        ack = await lis.handle(event)
        assert ack.code == AckCode.ERROR and ack.text.startswith(field), ack
    assert on_hand(controller, 1, PARA) == 12
    assert controller.ledger.moved_quantity("consume") == 0


async def test_snapshot_reconciliation_raises_a_lost_transaction(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    server.lose_doses(1, 2)  # taken, and no message about it ever sent
    await settle(controller, server)
    assert discrepancies(controller) == {("cabinet", 10, 12)}
    assert on_hand(controller, 1, PARA) == 12  # raised, not booked
    await settle(controller, server)
    assert len(controller.ledger.discrepancies()) == 1  # once, not once per snapshot


async def test_refill_without_a_notice_is_raised_not_booked(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    server.refill_without_notice(2, 2)
    await settle(controller, server)
    assert on_hand(controller, 2, METO) == 8
    found = {d.detail for d in controller.ledger.discrepancies()}
    assert any("without a refill notice" in d for d in found), found


async def test_dropped_connection_is_made_again_and_nothing_is_lost(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    await until(lambda: bool(server.log.item_masters), "item master sent")
    await server.drop_connection()
    server.withdraw(2, 2)  # waits in the server's outbox until the link is back
    await until(lambda: server.connections >= 2, "reconnected")
    await settle(controller, server)
    assert on_hand(controller, 2, METO) == 6
    assert (
        controller.metrics.registry.get_sample_value(
            "doseline_driver_reconnects_total", {"device": CABINET}
        )
        or 0
    ) >= 1
    assert server.log.item_masters.count(("REP", 4)) >= 2  # sent again at the reconnect
    assert discrepancies(controller) == set()


async def test_low_pocket_refill_goes_out_as_a_refill_notice(ledger_url: str) -> None:
    server = make_server()
    scanner = ScannerSimulator()
    await server.start()
    await scanner.start()
    controller = make_controller(
        server, ledger_url, scanner_address=f"socket://127.0.0.1:{scanner.port}"
    )
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        server.withdraw(1, 8)  # 12 -> 4, below min 5
        await until(lambda: bool(controller.replenishment.refills), "refill requested")
        refill = controller.replenishment.refills[0]
        assert refill.quantity == 16
        [pick] = await controller.replenishment.make_pick_lists()
        line = refill.lines[0]
        for data in (
            pick.barcode,
            f"PK:{CABINET}:1",
            encode_pack(PackId(PARA, line.batch, line.expiry, "SN1")),
        ):
            before = len(controller.scan_log)
            await scanner.scan(data)
            await until(lambda b=before: len(controller.scan_log) > b, f"scan {data}")
        assert controller.scan_log[-1].accepted, controller.scan_log[-1].message
        await until(lambda: bool(server.log.notices), "refill notice acted on")
        [(notice, action, pocket, quantity)] = server.log.notices
        assert (action, pocket, quantity) == ("REFILL", 1, 16)
        assert server.count(1) == 20
        await settle(controller, server)
        assert on_hand(controller, 1, PARA) == 20
        assert discrepancies(controller) == set()
        assert controller.ledger.open_reservation_count() == 0
        assert line.expiry > TODAY + timedelta(days=30)
        assert notice >= 1
    finally:
        await controller.stop()
        controller.close()
        await scanner.stop()
        await server.stop()


async def test_cold_cabinet_excursion_locks_pockets_through_notices(ledger_url: str) -> None:
    server = make_server(cold=True)
    await server.start()
    controller = make_controller(server, ledger_url, cold=True)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        await settle(controller, server)
        server.set_temperature(12.0)
        await until(lambda: all(p.locked for p in server.pockets.values()), "pockets locked", 10)
        held = controller.ledger.holds(location=CABINET, status="held")
        assert held
        # Withdrawals stop at a locked pocket; the ledger keeps what it holds.
        assert server.withdraw(1, 1) == 0
        await asyncio.sleep(0.3)
        assert on_hand(controller, 1, PARA) == 12
    finally:
        await controller.stop()
        controller.close()
        await server.stop()


async def test_a_snapshot_taken_before_a_notice_is_not_compared_on_that_pocket(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    lis = listener(controller)
    await settle(controller, server)
    # A refill confirmed by scans is in the ledger before the cabinet is told.
    controller.ledger.transfer(
        "test-refill",
        gtin=PARA,
        quantity=3,
        from_location="CENTRAL/A01",
        to_location="CAB1/P01",
        actor="test",
        reason="refill confirmed by scan",
    )
    server.faults.hold = True
    server.queue_snapshot()  # taken now: pocket 1 still at 12
    await lis.send_command(CabinetCommand.REFILL, 1, 3)
    assert server.count(1) == 15
    server.faults.hold = False
    await settle(controller, server)
    assert on_hand(controller, 1, PARA) == 15
    assert discrepancies(controller) == set()


async def test_a_snapshot_taken_before_a_refill_notice_asks_for_no_second_refill(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    lis = listener(controller)
    await settle(controller, server)
    asked: list[tuple[int, int]] = []

    async def on_low(_cabinet: object, pocket: object, count: int, _read_at: float) -> None:
        asked.append((pocket.number, count))  # type: ignore[attr-defined]

    lis.on_low = on_low
    server.withdraw(1, 9)  # 12 -> 3, below the pocket's min of 5
    await settle(controller, server)
    assert (1, 3) in asked
    asked.clear()
    # The refill is in the ledger and told; the server's next snapshot was taken before
    # it acted on the notice, so it still shows 3: that pocket is not low, it is filling.
    controller.ledger.transfer(
        "test-refill-low",
        gtin=PARA,
        quantity=15,
        from_location="CENTRAL/A01",
        to_location="CAB1/P01",
        actor="test",
        reason="refill confirmed by scan",
    )
    server.faults.hold = True
    server.queue_snapshot()  # taken now: pocket 1 at 3
    await lis.send_command(CabinetCommand.REFILL, 1, 15)
    server.faults.hold = False
    await settle(controller, server)
    assert [a for a in asked if a[0] == 1] == []
    assert server.count(1) == 18 and on_hand(controller, 1, PARA) == 18
