"""Faults on the link to a cabinet server over HL7/MLLP (docs/cabinet-hl7.md): the
simulator's fault knobs, with the whole controller on the other end. After each fault
every dose is booked exactly once (or, where the message was lost for good, the
snapshot reconciliation raises it) and the ledger is sound."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controller.app import Controller
from simulators.cabinet_hl7 import Hl7CabinetServer
from tests.faults.conftest import assert_ledger_sound, sample, wait_for
from tests.hl7_rig import (
    CABINET,
    TODAY,
    discrepancies,
    listener,
    make_controller,
    make_server,
    on_hand,
    settle,
)
from tests.sites import METO, PARA

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def rig(tmp_path: object) -> AsyncIterator[tuple[Controller, Hl7CabinetServer]]:
    server = make_server()
    await server.start()
    controller = make_controller(server, f"sqlite:///{tmp_path}/ledger.db")
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        await wait_for(lambda: bool(server.log.item_masters), 10, "item master sent")
        yield controller, server
    finally:
        await controller.stop()
        controller.close()
        await server.stop()


async def test_a_duplicate_message_is_acknowledged_and_booked_once(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    server.faults.duplicate = 1
    server.withdraw(1, 3)
    await settle(controller, server)
    [dispense] = [i for i, k in server.log.kinds.items() if k == "DISPENSE"]
    assert server.log.accepted.count(dispense) == 2  # sent twice, both acknowledged AA
    assert on_hand(controller, 1, PARA) == 9
    assert listener(controller).duplicates == 1
    assert controller.ledger.moved_quantity("consume") == 3
    assert discrepancies(controller) == set()
    assert_ledger_sound(controller)


async def test_messages_out_of_order_are_each_booked(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    await server.wait_idle()
    server.faults.out_of_order = 1
    server.faults.snapshots_paused = True
    # Queued together, so that the second goes out first.
    server.withdraw(1, 2)
    server.waste(2, 1)
    server.withdraw(2, 1)
    first = [i for i, k in server.log.kinds.items()]
    await server.wait_idle()
    order = [i for i in server.log.accepted if i not in first]
    assert order != sorted(order)  # really delivered out of order
    server.faults.snapshots_paused = False
    await settle(controller, server)
    assert on_hand(controller, 1, PARA) == 10
    assert on_hand(controller, 2, METO) == 6
    assert discrepancies(controller) == set()
    assert_ledger_sound(controller)


async def test_a_garbled_frame_is_dropped_and_its_resend_booked_once(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    server.faults.garble_frame = 1
    server.withdraw(2, 2)
    await settle(controller, server)
    driver = controller.cabinet_drivers[CABINET]
    assert driver.frames_dropped == 1  # type: ignore[attr-defined]
    assert server.log.resent >= 1
    assert on_hand(controller, 2, METO) == 6
    assert controller.ledger.moved_quantity("consume") == 2
    assert discrepancies(controller) == set()
    assert_ledger_sound(controller)


async def test_a_malformed_segment_is_refused_and_the_loss_is_raised(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    server.faults.malform_segment = 1
    server.withdraw(1, 2)  # its ZPK-3 is "P1x": answered AE, not sent again
    await settle(controller, server)
    [(_id, code, text)] = server.log.refused
    assert code == "AE" and "ZPK-3: 'P1x'" in text
    assert controller.ledger.moved_quantity("consume") == 0
    assert on_hand(controller, 1, PARA) == 12
    # The two doses are gone from the cabinet and from no message: the snapshot shows it.
    assert discrepancies(controller) == {("cabinet", 10, 12)}
    assert_ledger_sound(controller)


async def test_a_connection_dropped_before_the_ack_books_the_resend_once(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    await server.wait_idle()
    server.faults.drop_after_send = 1
    server.withdraw(1, 4)  # booked, then the ACK is lost with the connection
    await wait_for(lambda: server.connections >= 2, 15, "connected again")
    await settle(controller, server)
    [dispense] = [i for i, k in server.log.kinds.items() if k == "DISPENSE"]
    assert dispense in server.log.accepted
    assert server.log.resent >= 1
    assert on_hand(controller, 1, PARA) == 8
    assert controller.ledger.moved_quantity("consume") == 4
    assert listener(controller).duplicates == 1
    assert sample(controller, "doseline_driver_reconnects_total", device=CABINET) >= 1
    assert discrepancies(controller) == set()
    assert_ledger_sound(controller)


async def test_a_silent_server_takes_the_link_offline_and_back(
    rig: tuple[Controller, Hl7CabinetServer],
) -> None:
    controller, server = rig
    lis = listener(controller)
    lis.silence_s = 0.3
    server.faults.snapshots_paused = True
    await wait_for(lambda: not lis.online, 10, "link offline")
    server.faults.snapshots_paused = False
    await wait_for(lambda: lis.online, 10, "link online again")
    server.withdraw(2, 1)
    await settle(controller, server)
    assert on_hand(controller, 2, METO) == 7
    assert_ledger_sound(controller)
