"""The Modbus cabinet driver against the cabinet simulator over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers import cabinet_registers as reg
from drivers.base import (
    CabinetCommand,
    CabinetStatus,
    CabinetStatusBit,
    DriverError,
    PocketStatus,
)
from drivers.modbus_cabinet import ModbusCabinetDriver, ModbusTcpBus, parse_tcp_address
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]

POCKETS = [
    PocketSpec(1, 100_101, count=40, min_level=10, max_level=50, capacity=60),
    PocketSpec(2, 70_000_123, count=25, min_level=8, max_level=30, capacity=40),
    PocketSpec(7, 4_000_000_000, count=0, min_level=2, max_level=10, capacity=12),
]

DriverFactory = Callable[..., Awaitable[ModbusCabinetDriver]]


def busy_pockets(daily: float) -> list[PocketSpec]:
    return [
        PocketSpec(
            1,
            555_001,
            count=2000,
            min_level=100,
            max_level=2000,
            capacity=3000,
            daily_withdrawals=daily,
        ),
        PocketSpec(
            2,
            555_002,
            count=2000,
            min_level=100,
            max_level=2000,
            capacity=3000,
            daily_withdrawals=daily,
        ),
    ]


@pytest.fixture
async def sim() -> AsyncIterator[CabinetSimulator]:
    """Two cabinets on one server, manual clock (time_factor 0) for exact assertions."""
    simulator = CabinetSimulator(
        cabinets=[
            CabinetSpec(cabinet_id=1, pockets=POCKETS, temperature_c=21.5, firmware=(2, 7)),
            CabinetSpec(cabinet_id=2, pockets=POCKETS[:2], temperature_c=19.0),
        ],
        time_factor=0,
        seed=1,
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def make_driver() -> AsyncIterator[DriverFactory]:
    """Builds connected drivers and closes every one of them afterwards."""
    drivers: list[ModbusCabinetDriver] = []

    async def factory(
        address: str,
        unit_id: int = 1,
        pocket_count: int = 3,
        *,
        connect: bool = True,
        **kwargs: object,
    ) -> ModbusCabinetDriver:
        driver = ModbusCabinetDriver(f"ward-{unit_id}", address, unit_id, pocket_count, **kwargs)  # type: ignore[arg-type]
        drivers.append(driver)
        if connect:
            await driver.connect()
        return driver

    yield factory
    for driver in drivers:
        await driver.close()


def pocket(status: CabinetStatus, number: int) -> PocketStatus:
    return next(p for p in status.pockets if p.number == number)


# --- decoding -----------------------------------------------------------------------------


async def test_read_status_decodes_every_field(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    sim.set_counters(
        1,
        2,
        withdrawals_total=70_000,
        refills_total=0x0001_2345,
        returns_total=3,
        empty_hits_total=0x0002_0001,
        waste_total=5,
        counted_up_total=0xFFFF_FFFE,
        counted_down_total=65_536,
    )
    sim.set_locked(1, 7, True)
    sim.set_temperature_excursions(1, 0x0003_0004)
    sim.advance(123.9)
    driver = await make_driver(sim.address)

    status = await driver.read_status()

    assert status == CabinetStatus(
        cabinet_id=1,
        map_version=2,
        heartbeat=123,
        status=CabinetStatusBit(0),
        temperature_c=21.5,
        last_ack_sequence=0,
        pockets=(
            PocketStatus(1, 100_101, 40, 10, 50, 0, 0, 0, capacity=60),
            PocketStatus(
                2,
                70_000_123,
                25,
                8,
                30,
                70_000,
                0x0001_2345,
                3,
                capacity=40,
                locked=False,
                empty_hits_total=131_073,
                waste_total=5,
                counted_up_total=4_294_967_294,
                counted_down_total=65_536,
            ),
            PocketStatus(7, 4_000_000_000, 0, 2, 10, 0, 0, 0, capacity=12, locked=True),
        ),
        map_minor=0,
        temp_low_c=15.0,
        temp_high_c=25.0,
        temp_excursions_total=0x0003_0004,
    )
    assert driver.identity is not None
    assert (driver.identity.firmware_major, driver.identity.firmware_minor) == (2, 7)
    assert driver.identity.map_minor == reg.MAP_MINOR


async def test_counters_wrap_at_2_to_the_32(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    sim.set_counters(1, 1, withdrawals_total=2**32 - 3)
    driver = await make_driver(sim.address)
    before = pocket(await driver.read_status(), 1)
    assert before.withdrawals_total == 4_294_967_293

    assert sim.withdraw(1, 1, 5) == 5
    after = pocket(await driver.read_status(), 1)

    assert after.withdrawals_total == 2
    assert reg.counter_delta(before.withdrawals_total, after.withdrawals_total) == 5
    assert before.count - after.count == 5


async def test_door_fault_and_temperature_bits(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    sim.set_door(1, True)
    status = await driver.read_status()
    assert status.status == CabinetStatusBit.DOOR_OPEN

    sim.set_temperature(1, 27.3)
    sim.set_fault(1, True)
    status = await driver.read_status()
    assert status.status == (
        CabinetStatusBit.DOOR_OPEN | CabinetStatusBit.FAULT | CabinetStatusBit.TEMPERATURE_ALARM
    )
    assert status.temperature_c == pytest.approx(27.3)

    sim.set_door(1, False)
    sim.set_fault(1, False)
    sim.set_temperature(1, -4.2)  # signed register
    status = await driver.read_status()
    assert status.status == CabinetStatusBit.TEMPERATURE_ALARM
    assert status.temperature_c == pytest.approx(-4.2)


async def test_two_cabinets_on_one_server_by_unit_id(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    one = await make_driver(sim.address, unit_id=1, pocket_count=3)
    two = await make_driver(sim.address, unit_id=2, pocket_count=2)
    sim.withdraw(2, 1, 4)
    sim.set_door(2, True)

    s1, s2 = await asyncio.gather(one.read_status(), two.read_status())

    assert (s1.cabinet_id, s2.cabinet_id) == (1, 2)
    assert [p.number for p in s1.pockets] == [1, 2, 7]
    assert [p.number for p in s2.pockets] == [1, 2]
    assert pocket(s1, 1).count == 40 and pocket(s2, 1).count == 36
    assert s1.status == CabinetStatusBit(0) and s2.status == CabinetStatusBit.DOOR_OPEN
    assert s2.temperature_c == pytest.approx(19.0)

    await two.send_command(1, CabinetCommand.REFILL, 1, 4)
    assert sim.pocket(2, 1).count == 40 and sim.pocket(1, 1).refills_total == 0


async def test_two_cabinets_share_one_bus(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    """How a serial line (or a gateway with one connection) carries several cabinets."""
    bus = ModbusTcpBus(sim.address, timeout=1.0)
    try:
        one = await make_driver(sim.address, unit_id=1, pocket_count=3, bus=bus)
        two = await make_driver(sim.address, unit_id=2, pocket_count=2, bus=bus)
        results = await asyncio.gather(*(d.read_status() for d in (one, two, one, two)))
        assert [s.cabinet_id for s in results] == [1, 2, 1, 2]
        await one.close()  # a borrowed bus stays open for the other cabinet
        assert (await two.read_status()).cabinet_id == 2
    finally:
        bus.close()


# --- counters over time -------------------------------------------------------------------


async def test_withdrawals_show_up_as_counters_over_time(make_driver: DriverFactory) -> None:
    simulator = CabinetSimulator(
        cabinets=[CabinetSpec(cabinet_id=3, pockets=busy_pockets(daily=480))],
        time_factor=3600,  # one real second is an hour: 20 withdrawals per pocket
        seed=7,
    )
    async with simulator:
        driver = await make_driver(simulator.address, unit_id=3, pocket_count=2)
        first = await driver.read_status()
        await asyncio.sleep(0.6)
        second = await driver.read_status()

    assert reg.counter_delta(first.heartbeat, second.heartbeat) >= 1800
    for before, after in zip(first.pockets, second.pockets, strict=True):
        taken = reg.counter_delta(before.withdrawals_total, after.withdrawals_total)
        assert taken > 0
        assert before.count - after.count == taken
        assert after.refills_total == before.refills_total


async def test_missed_polls_lose_nothing(make_driver: DriverFactory) -> None:
    simulator = CabinetSimulator(
        cabinets=[CabinetSpec(cabinet_id=1, pockets=busy_pockets(daily=200))],
        time_factor=0,
        seed=3,
    )
    async with simulator:
        driver = await make_driver(simulator.address, pocket_count=2)
        first = await driver.read_status()
        for _ in range(6):  # six hours of polls missed
            simulator.advance(3600)
        simulator.withdraw(1, 2, 3)
        second = await driver.read_status()
        expected = [simulator.pocket(1, n).withdrawals_total for n in (1, 2)]

    deltas = [
        reg.counter_delta(a.withdrawals_total, b.withdrawals_total)
        for a, b in zip(first.pockets, second.pockets, strict=True)
    ]
    assert deltas == expected
    assert deltas[0] > 20  # about 50 expected in six hours at 200 a day
    assert [a.count - b.count for a, b in zip(first.pockets, second.pockets, strict=True)] == deltas


async def test_same_seed_same_withdrawals() -> None:
    def run(seed: int) -> list[int]:
        simulator = CabinetSimulator(
            cabinets=[CabinetSpec(cabinet_id=1, pockets=busy_pockets(daily=100))],
            time_factor=0,
            seed=seed,
        )
        simulator.advance(86_400)
        return [simulator.pocket(1, n).withdrawals_total for n in (1, 2)]

    assert run(5) == run(5)
    assert run(5) != run(6)


# --- map 2.0: every change of COUNT has a counter -----------------------------------------


def conserved(before: PocketStatus, after: PocketStatus) -> int:
    """COUNT as the conservation rule of map 2.0 predicts it from the counter deltas."""

    def d(name: str) -> int:
        return reg.counter_delta(getattr(before, name), getattr(after, name))

    return (
        before.count
        - d("withdrawals_total")
        - d("waste_total")
        + d("refills_total")
        + d("returns_total")
        + d("counted_up_total")
        - d("counted_down_total")
    )


async def test_waste_and_keypad_stocktakes_are_counted(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    before = pocket(await driver.read_status(), 1)  # 40

    assert sim.waste(1, 1, 2) == 2  # 38
    sim.stocktake(1, 1, 41)  # the nurse finds 3 more: counted up 3
    sim.stocktake(1, 1, 37)  # and then 4 fewer: counted down 4
    after = pocket(await driver.read_status(), 1)

    assert (after.count, after.waste_total) == (37, 2)
    assert (after.counted_up_total, after.counted_down_total) == (3, 4)
    assert after.withdrawals_total == 0
    assert conserved(before, after) == after.count
    with pytest.raises(ValueError, match="counted"):
        sim.stocktake(1, 1, 61)
    assert sim.waste(1, 7, 3) == 0  # pocket 7 is empty: nothing to discard


async def test_empty_hits_count_demand_the_pocket_did_not_meet(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    assert sim.withdraw(1, 7, 2) == 0
    sim.return_doses(1, 7, 1)
    assert sim.withdraw(1, 7, 3) == 1

    p = pocket(await driver.read_status(), 7)
    assert (p.count, p.withdrawals_total, p.returns_total, p.empty_hits_total) == (0, 1, 1, 4)


async def test_returns_beyond_capacity_are_not_counted(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    before = pocket(await driver.read_status(), 2)  # 25 of 40
    assert sim.return_doses(1, 2, 20) == 15
    after = pocket(await driver.read_status(), 2)
    assert (after.count, after.returns_total) == (40, 15)
    assert conserved(before, after) == after.count


async def test_lock_and_unlock_through_the_mailbox(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)

    await driver.send_command(1, CabinetCommand.LOCK_POCKET, 2, 0)
    await driver.send_command(2, CabinetCommand.LOCK_POCKET, 2, 0)  # locked again: fine
    p = pocket(await driver.read_status(), 2)
    assert p.locked and sim.pocket(1, 2).locked

    assert sim.withdraw(1, 2, 3) == 0  # refused: no withdrawal, no empty hit
    await driver.send_command(3, CabinetCommand.REFILL, 2, 5)  # stock may still go in
    p = pocket(await driver.read_status(), 2)
    assert (p.count, p.withdrawals_total, p.empty_hits_total, p.refills_total) == (30, 0, 0, 5)

    with pytest.raises(DriverError, match="bad quantity"):
        await driver.send_command(4, CabinetCommand.UNLOCK_POCKET, 2, 1)
    assert sim.pocket(1, 2).locked
    with pytest.raises(DriverError, match="unknown pocket"):
        await driver.send_command(5, CabinetCommand.LOCK_POCKET, 3, 0)

    await driver.send_command(6, CabinetCommand.UNLOCK_POCKET, 2, 0)
    assert not pocket(await driver.read_status(), 2).locked
    assert sim.withdraw(1, 2, 3) == 3


async def test_nurses_skip_a_locked_pocket(make_driver: DriverFactory) -> None:
    simulator = CabinetSimulator(
        cabinets=[CabinetSpec(cabinet_id=1, pockets=busy_pockets(daily=200))],
        time_factor=0,
        seed=3,
    )
    async with simulator:
        driver = await make_driver(simulator.address, pocket_count=2)
        await driver.send_command(1, CabinetCommand.LOCK_POCKET, 1, 0)
        simulator.advance(86_400)
        status = await driver.read_status()

    locked, open_ = pocket(status, 1), pocket(status, 2)
    assert locked.locked and (locked.count, locked.withdrawals_total) == (2000, 0)
    assert locked.empty_hits_total == 0
    assert open_.withdrawals_total > 100 and not open_.locked


async def test_temperature_band_and_excursions(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    status = await driver.read_status()
    assert (status.temp_low_c, status.temp_high_c, status.temp_excursions_total) == (15.0, 25.0, 0)

    sim.set_temperature(1, 26.0)  # out: one excursion
    sim.set_temperature(1, 27.0)  # still out: the same excursion
    sim.set_temperature(1, 22.0)  # back in: no poll saw any of it
    sim.set_temperature(1, 14.9)  # out on the cold side: the second
    status = await driver.read_status()
    assert status.temp_excursions_total == 2
    assert status.status == CabinetStatusBit.TEMPERATURE_ALARM
    sim.set_temperature(1, 25.0)  # the band's edges are inside
    status = await driver.read_status()
    assert status.temp_excursions_total == 2 and status.status == CabinetStatusBit(0)


async def test_cold_cabinet_band_and_counter_wrap(make_driver: DriverFactory) -> None:
    simulator = CabinetSimulator(
        cabinets=[
            CabinetSpec(cabinet_id=4, pockets=POCKETS[:1], cold=True),
            CabinetSpec(
                cabinet_id=5,
                pockets=POCKETS[:1],
                cold=True,
                temperature_alarm_high_c=6.5,
                temperature_c=-1.5,
            ),
        ],
        time_factor=0,
    )
    async with simulator:
        fridge = await make_driver(simulator.address, unit_id=4, pocket_count=1)
        other = await make_driver(simulator.address, unit_id=5, pocket_count=1)
        status = await fridge.read_status()
        assert (status.temperature_c, status.temp_low_c, status.temp_high_c) == (5.0, 2.0, 8.0)
        assert status.status == CabinetStatusBit(0)

        simulator.set_temperature_excursions(4, 2**32 - 1)
        before = await fridge.read_status()
        simulator.set_temperature(4, 9.1)
        after = await fridge.read_status()
        assert after.temp_excursions_total == 0
        assert reg.counter_delta(before.temp_excursions_total, after.temp_excursions_total) == 1
        assert after.status == CabinetStatusBit.TEMPERATURE_ALARM

        status = await other.read_status()
        assert (status.temperature_c, status.temp_low_c, status.temp_high_c) == (-1.5, 2.0, 6.5)
        assert status.status == CabinetStatusBit.TEMPERATURE_ALARM  # started outside
        assert status.temp_excursions_total == 0  # but never left the band


async def test_counts_are_explained_by_counters_alone(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    """The conservation rule of map 2.0 over a mix of everything that moves COUNT."""
    driver = await make_driver(sim.address)
    before = {p.number: p for p in (await driver.read_status()).pockets}

    sim.withdraw(1, 1, 7)
    sim.waste(1, 1, 1)
    sim.return_doses(1, 1, 2)
    await driver.send_command(1, CabinetCommand.REFILL, 1, 10)
    await driver.send_command(2, CabinetCommand.SET_COUNT, 2, 31)
    sim.stocktake(1, 2, 29)
    sim.withdraw(1, 7, 4)  # empty: empty hits move, COUNT does not
    await driver.send_command(3, CabinetCommand.REFILL, 7, 12)
    sim.waste(1, 7, 12)

    after = await driver.read_status()
    for p in after.pockets:
        assert conserved(before[p.number], p) == p.count, p.number


# --- commands -----------------------------------------------------------------------------


async def test_refill_is_acknowledged_and_applied_once(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)

    await driver.send_command(1, CabinetCommand.REFILL, 2, 10)

    status = await driver.read_status()
    assert status.last_ack_sequence == 1
    assert pocket(status, 2).count == 35
    assert pocket(status, 2).refills_total == 10
    assert sim.commands_executed(1) == 1


async def test_repeated_sequence_acts_once(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)

    await driver.send_command(41, CabinetCommand.REFILL, 1, 5)
    await driver.send_command(41, CabinetCommand.REFILL, 1, 5)  # a retry after a crash

    assert sim.pocket(1, 1).count == 45
    assert sim.pocket(1, 1).refills_total == 5
    assert (sim.commands_executed(1), sim.commands_repeated(1)) == (1, 1)

    await driver.send_command(42, CabinetCommand.REFILL, 1, 5)  # the next one does act
    assert sim.pocket(1, 1).count == 50


async def test_lost_reply_makes_pymodbus_resend_but_device_acts_once(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address, timeout=0.9, retries=2)  # 0.3 s per attempt
    sim.drop_replies(1, 1)  # the reply to the mailbox write is lost

    await driver.send_command(9, CabinetCommand.REFILL, 2, 7)

    assert sim.commands_repeated(1) == 1  # the write really did arrive twice
    assert sim.commands_executed(1) == 1
    assert sim.pocket(1, 2).count == 32
    assert sim.pocket(1, 2).refills_total == 7


async def test_refill_over_capacity_is_refused_and_changes_nothing(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)

    with pytest.raises(DriverError, match=r"capacity.*result code 4") as err:
        await driver.send_command(3, CabinetCommand.REFILL, 1, 21)  # 40 + 21 > 60

    assert "ward-1" in str(err.value) and "REFILL" in str(err.value)
    assert sim.pocket(1, 1).count == 40
    assert sim.pocket(1, 1).refills_total == 0
    assert sim.ack(1) == (3, reg.ResultCode.OVER_CAPACITY)
    await driver.send_command(4, CabinetCommand.REFILL, 1, 20)  # exactly full is fine
    assert sim.pocket(1, 1).count == 60


async def test_unknown_pocket_and_unknown_command_are_refused(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)

    with pytest.raises(DriverError, match="unknown pocket"):
        await driver.send_command(5, CabinetCommand.REFILL, 3, 1)
    with pytest.raises(DriverError, match="unknown command"):
        await driver.send_command(6, CabinetCommand.NONE, 1, 1)
    with pytest.raises(DriverError, match="bad quantity"):
        await driver.send_command(7, CabinetCommand.REFILL, 1, 0)
    with pytest.raises(ValueError, match="sequence"):
        await driver.send_command(0, CabinetCommand.REFILL, 1, 1)
    assert sim.pocket(1, 1).count == 40


async def test_set_count_is_a_stocktake_that_moves_the_counted_counters(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    sim.withdraw(1, 1, 2)  # 40 -> 38

    await driver.send_command(8, CabinetCommand.SET_COUNT, 1, 33)  # 5 fewer than thought
    state = sim.pocket(1, 1)
    assert (state.count, state.withdrawals_total, state.refills_total) == (33, 2, 0)
    assert (state.counted_up_total, state.counted_down_total) == (0, 5)

    await driver.send_command(9, CabinetCommand.SET_COUNT, 1, 36)  # 3 more
    await driver.send_command(10, CabinetCommand.SET_COUNT, 1, 36)  # no difference
    p = pocket(await driver.read_status(), 1)
    assert (p.count, p.counted_up_total, p.counted_down_total) == (36, 3, 5)

    with pytest.raises(DriverError, match="capacity"):
        await driver.send_command(11, CabinetCommand.SET_COUNT, 1, 61)
    assert sim.pocket(1, 1).counted_up_total == 3


async def test_faulted_cabinet_refuses_commands(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address)
    sim.set_fault(1, True)
    with pytest.raises(DriverError, match="fault"):
        await driver.send_command(10, CabinetCommand.REFILL, 1, 1)
    assert sim.pocket(1, 1).count == 40


async def test_missing_acknowledgement_times_out(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address, timeout=0.4)
    sim.set_stalled(1, True)

    started = time.monotonic()
    with pytest.raises(DriverError, match=r"not acknowledged.*last acknowledged sequence 0"):
        await driver.send_command(11, CabinetCommand.REFILL, 1, 1)
    assert time.monotonic() - started < 1.0
    assert sim.pocket(1, 1).count == 40

    sim.set_stalled(1, False)  # the latched mailbox runs once the controller recovers
    await driver.send_command(11, CabinetCommand.REFILL, 1, 1)
    assert sim.pocket(1, 1).count == 41 and sim.commands_executed(1) == 1


# --- connection and configuration failures ------------------------------------------------


async def test_dead_port_fails_within_the_timeout(
    free_port: int, make_driver: DriverFactory
) -> None:
    started = time.monotonic()
    with pytest.raises(DriverError, match=f"ward-1.*connect.*127.0.0.1:{free_port}"):
        await make_driver(f"tcp://127.0.0.1:{free_port}", timeout=1.0)
    assert time.monotonic() - started < 1.0


async def test_silent_device_fails_within_the_timeout(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address, timeout=0.6)
    sim.set_silent(1, True)

    started = time.monotonic()
    with pytest.raises(DriverError, match="read_status"):
        await driver.read_status()
    assert time.monotonic() - started < 1.2

    sim.set_silent(1, False)
    assert (await driver.read_status()).cabinet_id == 1


async def test_server_stop_raises_and_the_driver_recovers(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    driver = await make_driver(sim.address, timeout=0.8)
    assert (await driver.read_status()).cabinet_id == 1
    port = sim.port

    await sim.stop()
    started = time.monotonic()
    with pytest.raises(DriverError, match="ward-1"):
        await driver.read_status()
    assert time.monotonic() - started < 1.6
    with pytest.raises(DriverError, match="connect"):  # still down
        await driver.read_status()
    started = time.monotonic()
    with pytest.raises(DriverError, match=rf"127\.0\.0\.1:{port}.*next attempt in \d"):
        await driver.read_status()  # within the backoff: refused without trying
    assert time.monotonic() - started < 0.1

    await sim.start()
    assert sim.port == port
    await asyncio.sleep(driver.bus.retry_in)
    assert (await driver.read_status()).cabinet_id == 1  # reconnects by itself

    await driver.close()
    with pytest.raises(DriverError, match="not connected"):
        await driver.read_status()
    await driver.connect()  # and an explicit close/connect cycle works too
    await driver.close()
    await driver.close()  # idempotent
    await driver.connect()
    assert (await driver.read_status()).pockets[0].count == 40


@pytest.mark.parametrize("version", [(1, 0), (1, 3), (3, 0)])
async def test_other_map_major_is_refused(
    make_driver: DriverFactory, version: tuple[int, int]
) -> None:
    simulator = CabinetSimulator(
        cabinets=[CabinetSpec(cabinet_id=1, pockets=POCKETS, map_version=version)],
        time_factor=0,
    )
    async with simulator:
        with pytest.raises(
            DriverError, match=rf"map version {version[0]}\.{version[1]}.*supports 2\.x"
        ):
            await make_driver(simulator.address)


async def test_a_later_minor_version_is_accepted(make_driver: DriverFactory) -> None:
    simulator = CabinetSimulator(
        cabinets=[CabinetSpec(cabinet_id=1, pockets=POCKETS, map_version=(2, 4))],
        time_factor=0,
    )
    async with simulator:
        driver = await make_driver(simulator.address)
        status = await driver.read_status()
    assert (status.map_version, status.map_minor) == (2, 4)


async def test_pocket_count_mismatch_is_refused(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    with pytest.raises(DriverError, match="reports 3 pockets, configuration says 5"):
        await make_driver(sim.address, pocket_count=5)


async def test_unit_without_cabinet_is_an_error(
    sim: CabinetSimulator, make_driver: DriverFactory
) -> None:
    with pytest.raises(DriverError, match=r"unit 9.*Modbus exception 11"):
        await make_driver(sim.address, unit_id=9)


async def test_calls_before_connect_raise(make_driver: DriverFactory) -> None:
    driver = await make_driver("tcp://127.0.0.1:1", connect=False)
    with pytest.raises(DriverError, match="not connected"):
        await driver.read_status()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:502",
        "opc.tcp://host:4840",
        "tcp://:502",
        "tcp://host:notaport",
        "tcp://host:502/x",
    ],
)
def test_bad_address_is_a_value_error_naming_it(address: str) -> None:
    with pytest.raises(ValueError, match="bad Modbus TCP address") as err:
        ModbusCabinetDriver("ward", address, 1, 3)
    assert repr(address) in str(err.value)


def test_address_parsing() -> None:
    assert parse_tcp_address("tcp://10.0.0.5:5020") == ("10.0.0.5", 5020)
    assert parse_tcp_address("tcp://cabinet-4a") == ("cabinet-4a", 502)
    assert parse_tcp_address("tcp://[::1]:1502") == ("::1", 1502)


# --- the register map itself --------------------------------------------------------------


def test_read_plan_keeps_pockets_whole_and_reads_few() -> None:
    plan = reg.read_plan(24)
    assert plan == [(0, 104), (104, 120), (224, 120), (344, 120), (464, 120), (584, 24)]
    assert all(count <= reg.MAX_READ_REGISTERS for _, count in plan)
    covered = [a for start, count in plan for a in range(start, start + count)]
    assert covered == list(range(reg.pocket_address(24)))
    for start, count in plan[1:]:
        assert (start - reg.POCKET_BASE) % reg.POCKET_STRIDE == 0
        assert count % reg.POCKET_STRIDE == 0


def test_word_order_and_signed_registers() -> None:
    assert reg.u32_to_words(0x0001_2345) == (0x0001, 0x2345)
    assert reg.u32_from_words(0x0001, 0x2345) == 74_565
    assert reg.u32_to_words(2**32 + 1) == (0, 1)
    assert reg.s16_from_register(0xFFD6) == -42
    assert reg.counter_delta(2**32 - 1, 0) == 1
    assert reg.encode_mailbox(65535, CabinetCommand.SET_COUNT, 7, 0) == [65535, 2, 7, 0]
    with pytest.raises(ValueError, match="quantity"):
        reg.encode_mailbox(1, CabinetCommand.REFILL, 7, 70_000)


async def test_device_accepts_only_whole_mailbox_writes(sim: CabinetSimulator) -> None:
    """The device side of the contract, seen with a bare pymodbus client."""
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=1, reconnect_delay=0)
    try:
        assert await client.connect()
        single = await client.write_register(reg.REG_CMD_SEQUENCE, 5, device_id=1)
        partial = await client.write_registers(reg.REG_CMD_SEQUENCE, [5, 1, 1], device_id=1)
        read_only = await client.write_registers(reg.REG_STATUS, [0], device_id=1)
        past_end = await client.read_holding_registers(
            reg.pocket_address(2), count=reg.POCKET_STRIDE + 1, device_id=1
        )
        for response in (single, partial, read_only, past_end):
            assert response.isError() and response.exception_code == 2
        assert sim.ack(1) == (0, 0) and sim.commands_executed(1) == 0
    finally:
        client.close()


# --- the simulator as a program -----------------------------------------------------------


async def test_simulator_runs_from_the_command_line(
    free_port: int, make_driver: DriverFactory
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cabinet_modbus",
        "--port",
        str(free_port),
        "--seed",
        "1",
        "--time-factor",
        "600",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
        assert f"127.0.0.1:{free_port}" in line.decode()
        driver = await make_driver(f"tcp://127.0.0.1:{free_port}", pocket_count=6)
        status = await driver.read_status()
        assert status.cabinet_id == 1 and len(status.pockets) == 6
        await driver.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
