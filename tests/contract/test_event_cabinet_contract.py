"""The EventCabinetDriver contract: FakeEventCabinet and the HL7 v2 / MLLP driver against
the cabinet-server simulator on loopback."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import (
    AckCode,
    CabinetCommand,
    CabinetSnapshot,
    DriverError,
    EventAck,
    ItemMasterEntry,
    PocketEvent,
    PocketEventKind,
)
from tests.contract.conftest import (
    EVENT_POCKETS,
    FAKE,
    GTIN_A,
    GTIN_B,
    EventCabinetRig,
    known_gap,
    until,
)

REFILL = CabinetCommand.REFILL
RESEND_LATER = EventAck(AckCode.REJECT, "ledger busy", 207)


async def test_first_a_snapshot_then_read_status(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    first = await asyncio.wait_for(driver.next_event(), 5)
    assert isinstance(first, CabinetSnapshot)
    assert first.cabinet == "CAB1"
    await driver.acknowledge(first, EventAck.accept())
    status = await driver.read_status()
    assert [(p.number, p.count, p.locked) for p in status.pockets] == [
        (n, c, False) for n, _g, c, _cap in EVENT_POCKETS
    ]
    assert status.temp_low_c is not None and status.temp_high_c is not None
    assert status.temp_low_c <= status.temperature_c <= status.temp_high_c
    assert status.last_ack_sequence == 0


async def test_a_withdrawal_arrives_as_an_event(event_cabinet: EventCabinetRig) -> None:
    assert event_cabinet.withdraw(1, 2) == 2
    event = await event_cabinet.next_pocket_event()
    assert (event.kind, event.cabinet, event.pocket, event.gtin) == (
        PocketEventKind.DISPENSE,
        "CAB1",
        1,
        GTIN_A,
    )
    assert (event.quantity, event.count_after, event.notice) == (2, 10, None)
    await event_cabinet.driver.acknowledge(event, EventAck.accept())


async def test_events_come_in_order(event_cabinet: EventCabinetRig) -> None:
    event_cabinet.withdraw(1, 1)
    event_cabinet.withdraw(2, 1)
    event_cabinet.withdraw(1, 1)
    got = []
    for _ in range(3):
        event = await event_cabinet.next_pocket_event()
        got.append((event.pocket, event.count_after))
        await event_cabinet.driver.acknowledge(event, EventAck.accept())
    assert got == [(1, 11), (2, 7), (1, 10)]


async def test_a_notice_number_is_acted_on_once(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    await driver.send_command(7, REFILL, 2, 2)
    await driver.send_command(7, REFILL, 2, 2)  # a retry: accepted, not done again
    assert event_cabinet.count(2) == 10
    event = await event_cabinet.next_pocket_event()
    assert (event.kind, event.pocket, event.quantity, event.count_after, event.notice) == (
        PocketEventKind.REFILL,
        2,
        2,
        10,
        7,
    )
    await driver.acknowledge(event, EventAck.accept())
    assert not [e for e in await event_cabinet.drain() if isinstance(e, PocketEvent)]

    async def acknowledged_in_snapshot() -> bool:
        await event_cabinet.drain(0.1)
        return (await driver.read_status()).last_ack_sequence == 7

    await until(acknowledged_in_snapshot, "the notice in a snapshot")


async def test_lock_unlock_and_set_count(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    await driver.send_command(1, CabinetCommand.LOCK_POCKET, 1, 0)
    assert event_cabinet.withdraw(1, 1) == 0  # a locked pocket does not open
    await driver.send_command(2, CabinetCommand.UNLOCK_POCKET, 1, 0)
    await driver.send_command(3, CabinetCommand.SET_COUNT, 1, 9)
    assert event_cabinet.count(1) == 9
    assert event_cabinet.withdraw(1, 1) == 1


async def test_refused_notices_raise_and_change_nothing(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    with pytest.raises(DriverError):
        await driver.send_command(1, REFILL, 99, 1)  # not a pocket of this cabinet
    with pytest.raises(DriverError):
        await driver.send_command(2, REFILL, 2, 3)  # 8 + 3 > capacity 10
    with pytest.raises(ValueError):
        await driver.send_command(3, CabinetCommand.NONE, 1, 0)  # no such notice
    await driver.send_command(2, REFILL, 2, 2)  # a refused number was not used up
    assert (event_cabinet.count(1), event_cabinet.count(2)) == (12, 10)


async def test_item_master_is_accepted(event_cabinet: EventCabinetRig) -> None:
    items = [ItemMasterEntry(GTIN_A, "Paracetamol 500 mg"), ItemMasterEntry(GTIN_B, "Metoprolol")]
    await event_cabinet.driver.send_item_master(items, replace=True)
    await event_cabinet.driver.send_item_master(items[:1], replace=False)


async def test_resend_later_delivers_the_event_again(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    event_cabinet.withdraw(1, 1)
    event = await event_cabinet.next_pocket_event()
    await driver.acknowledge(event, RESEND_LATER)
    again = await event_cabinet.next_pocket_event()
    assert again == event  # same message id: booked once under it
    await driver.acknowledge(again, EventAck.accept())


async def test_an_unacknowledged_event_is_delivered_again_after_a_while(
    event_cabinet: EventCabinetRig, request: pytest.FixtureRequest
) -> None:
    known_gap(
        request,
        event_cabinet.kind,
        {FAKE},
        "FakeEventCabinet has no acknowledgement timeout: an event is delivered again"
        " only after AR 207 or a reconnect",
    )
    event_cabinet.withdraw(1, 1)
    event = await event_cabinet.next_pocket_event()
    again = await event_cabinet.next_pocket_event(within=1.5)  # the server's ack timeout
    assert again.message_id == event.message_id


async def test_reconnect_delivers_unacknowledged_events_again(
    event_cabinet: EventCabinetRig,
) -> None:
    driver = event_cabinet.driver
    event_cabinet.withdraw(2, 1)
    event = await event_cabinet.next_pocket_event()
    await driver.close()
    await driver.connect()
    again = await event_cabinet.next_pocket_event()
    assert again.message_id == event.message_id
    await driver.acknowledge(again, EventAck.accept())


async def test_lost_link_raises_and_connect_restores(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    await event_cabinet.drain(0.1)
    waiting = asyncio.create_task(event_cabinet.next_pocket_event())
    await asyncio.sleep(0.05)
    await event_cabinet.drop_connection()
    with pytest.raises(DriverError):
        await waiting
    with pytest.raises(DriverError):
        await asyncio.wait_for(driver.next_event(), 5)  # and every later call
    await driver.connect()
    event_cabinet.withdraw(1, 1)
    assert (await event_cabinet.next_pocket_event()).count_after == 11


async def test_calls_after_close_raise(event_cabinet: EventCabinetRig) -> None:
    driver = event_cabinet.driver
    first = await asyncio.wait_for(driver.next_event(), 5)
    await driver.close()
    await driver.close()  # idempotent
    with pytest.raises(DriverError):
        await driver.next_event()
    with pytest.raises(DriverError):
        await driver.read_status()
    with pytest.raises(DriverError):
        await driver.send_command(1, REFILL, 1, 1)
    with pytest.raises(DriverError):
        await driver.send_item_master([ItemMasterEntry(GTIN_A, "x")], replace=False)
    with pytest.raises(DriverError):
        await driver.acknowledge(first, EventAck.accept())
