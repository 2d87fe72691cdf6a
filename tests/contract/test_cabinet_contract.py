"""The CabinetDriver contract (polled cabinets): FakeCabinet and the Modbus TCP driver
against the cabinet simulator on loopback."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import CabinetCommand, CabinetStatus, CabinetStatusBit, DriverError
from tests.contract.conftest import POCKETS, CabinetRig, until

REFILL = CabinetCommand.REFILL


async def test_connect_read_close_and_connect_again(cabinet: CabinetRig) -> None:
    driver = cabinet.driver
    status = await driver.read_status()
    assert isinstance(status, CabinetStatus)
    assert (status.cabinet_id, status.map_version, status.map_minor) == (1, 2, 0)
    assert status.status == CabinetStatusBit(0)
    assert status.last_ack_sequence == 0
    assert status.temp_low_c is not None and status.temp_high_c is not None
    assert status.temp_low_c <= status.temperature_c <= status.temp_high_c
    assert status.temp_excursions_total == 0
    pockets = [
        (p.number, p.article, p.count, p.min_level, p.max_level, p.capacity) for p in status.pockets
    ]
    assert pockets == list(POCKETS)
    for p in status.pockets:
        assert not p.locked
        assert p.withdrawals_total == p.refills_total == p.returns_total == 0
        assert p.empty_hits_total == p.waste_total == 0
        assert p.counted_up_total == p.counted_down_total == 0
    await driver.close()
    await driver.close()  # idempotent
    with pytest.raises(DriverError):
        await driver.read_status()
    with pytest.raises(DriverError):
        await driver.send_command(1, REFILL, 1, 1)
    await driver.connect()
    assert (await driver.read_status()).pockets[0].count == 10


async def test_a_sequence_number_is_acted_on_once(cabinet: CabinetRig) -> None:
    driver = cabinet.driver
    await driver.send_command(7, REFILL, 1, 5)
    await driver.send_command(7, REFILL, 1, 5)  # a retry: acknowledged, not done again
    status = await driver.read_status()
    assert (status.pockets[0].count, status.pockets[0].refills_total) == (15, 5)
    assert status.last_ack_sequence == 7
    await driver.send_command(8, REFILL, 1, 5)
    assert (await driver.read_status()).pockets[0].count == 20


async def test_refused_commands_raise_and_change_nothing(cabinet: CabinetRig) -> None:
    driver = cabinet.driver
    for sequence, command, pocket, quantity in (
        (1, REFILL, 99, 1),  # unknown pocket
        (2, REFILL, 2, 7),  # 4 + 7 > capacity 10
        (3, REFILL, 1, 0),  # nothing
        (4, CabinetCommand.SET_COUNT, 2, 11),  # more than fits
        (5, CabinetCommand.LOCK_POCKET, 1, 1),  # a quantity where none belongs
    ):
        with pytest.raises(DriverError):
            await driver.send_command(sequence, command, pocket, quantity)
    with pytest.raises(DriverError):
        await driver.send_command(5, CabinetCommand.LOCK_POCKET, 1, 0)  # 5 was refused
    with pytest.raises(ValueError):
        await driver.send_command(0, REFILL, 1, 1)  # sequence 0 is "none"
    status = await driver.read_status()
    assert [(p.count, p.refills_total, p.locked) for p in status.pockets] == [
        (10, 0, False),
        (4, 0, False),
    ]
    assert status.last_ack_sequence == 5


async def test_lock_unlock_and_set_count(cabinet: CabinetRig) -> None:
    driver = cabinet.driver
    await driver.send_command(1, CabinetCommand.LOCK_POCKET, 1, 0)
    assert (await driver.read_status()).pockets[0].locked
    assert cabinet.withdraw(1, 2) == 0  # a locked pocket does not open
    await driver.send_command(2, REFILL, 1, 3)  # refills still go in
    await driver.send_command(3, CabinetCommand.UNLOCK_POCKET, 1, 0)
    await driver.send_command(4, CabinetCommand.SET_COUNT, 1, 8)  # counted 8 of 13
    await driver.send_command(5, CabinetCommand.SET_COUNT, 2, 6)  # counted 6 of 4
    one, two = (await driver.read_status()).pockets
    assert (one.locked, one.count, one.counted_down_total, one.refills_total) == (False, 8, 5, 3)
    assert (two.count, two.counted_up_total) == (6, 2)


async def test_withdrawals_show_in_counters_that_never_decrease(cabinet: CabinetRig) -> None:
    driver = cabinet.driver
    seen = [await driver.read_status()]
    assert cabinet.withdraw(2, 3) == 3
    seen.append(await driver.read_status())
    assert cabinet.withdraw(2, 3) == 1  # two doses not there: empty hits
    seen.append(await driver.read_status())
    await driver.send_command(1, REFILL, 2, 6)
    seen.append(await driver.read_status())
    await driver.close()
    await driver.connect()
    seen.append(await driver.read_status())
    two = [s.pockets[1] for s in seen]
    assert (two[-1].count, two[-1].withdrawals_total, two[-1].empty_hits_total) == (6, 4, 2)
    for name in ("withdrawals_total", "refills_total", "empty_hits_total", "returns_total"):
        values = [getattr(p, name) for p in two]
        assert values == sorted(values), name


async def test_temperature_excursion_is_counted(cabinet: CabinetRig) -> None:
    cabinet.set_temperature(30.0)
    status = await cabinet.driver.read_status()
    assert CabinetStatusBit.TEMPERATURE_ALARM in status.status
    assert (status.temperature_c, status.temp_excursions_total) == (30.0, 1)
    cabinet.set_temperature(21.0)
    cabinet.set_temperature(31.0)
    cabinet.set_temperature(20.0)
    status = await cabinet.driver.read_status()
    assert CabinetStatusBit.TEMPERATURE_ALARM not in status.status
    assert status.temp_excursions_total == 2


async def test_lost_link_raises_and_the_next_read_reopens_it(cabinet: CabinetRig) -> None:
    """A polled cabinet needs no connect() after a lost link: the next call reopens it
    (the Modbus driver, after its reconnect backoff)."""
    driver = cabinet.driver
    await driver.send_command(1, REFILL, 1, 2)
    await cabinet.link_down()
    with pytest.raises(DriverError):
        async with asyncio.timeout(5):
            await driver.read_status()
    await cabinet.link_up()

    async def readable() -> bool:
        try:
            status = await driver.read_status()
        except DriverError:
            return False
        return status.pockets[0].count == 12

    await until(readable, "a read after the link came back", pause=0.1)
