"""Unit modes, the output tray, refill totals and the PackML commands, over both wires.

Every test runs twice: against the OPC UA simulator with OpcUaPackerDriver and against
the serial simulator with SerialPackerDriver, through the `PackerDriver` interface only
(the simulators' plain-Python accessors serve as the second opinion and the operator).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from drivers.base import (
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    Pouch,
    PouchItem,
    StopReason,
    UnitMode,
)
from drivers.opcua_packer import OpcUaPackerDriver
from drivers.serial_packer import SerialPackerDriver
from simulators.packer_opcua import PackerSimulator
from simulators.packer_serial import SerialPackerSimulator

S = PackMLState
C = PackMLCommand
M = UnitMode

CANISTERS = [
    (1, "07350000010015", 200, 300),
    (2, "07350000010022", 200, 300),
    (3, "07350000010039", 100, 300),
    (4, "07350000010046", 50, 60),
]
FAST = {"speed_factor": 100.0, "transient_seconds": 0.005}  # 10 ms per pouch
#: How each wire names a refusal for a wrong state and for a wrong argument.
CODES = {
    "opcua": {"state": "BadInvalidState", "argument": "BadInvalidArgument"},
    "serial": {"state": "INVALID_STATE", "argument": "INVALID_ARGUMENT"},
}


class Sim(Protocol):
    """What the tests use of either simulator."""

    @property
    def state(self) -> PackMLState: ...
    @property
    def unit_mode(self) -> UnitMode: ...
    @property
    def output_count(self) -> int: ...
    @property
    def output_full(self) -> bool: ...
    @property
    def stop_reason(self) -> StopReason: ...
    def dispensed_totals(self) -> dict[int, int]: ...
    def refilled_totals(self) -> dict[int, int]: ...
    async def empty_output(self) -> int: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


Factory = Callable[..., Awaitable[tuple[Sim, PackerDriver]]]


@pytest.fixture(params=["opcua", "serial"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_packer(protocol: str, address_space_cache: Path) -> AsyncIterator[Factory]:
    """Start a simulator of the protocol under test with a connected driver."""
    started: list[tuple[Any, PackerDriver]] = []

    async def make(**kwargs: Any) -> tuple[Sim, PackerDriver]:
        params: dict[str, Any] = {"canisters": CANISTERS, **FAST}
        params.update(kwargs)
        sim: Any
        driver: PackerDriver
        if protocol == "opcua":
            sim = PackerSimulator(
                "P1", address_space_cache=address_space_cache, server_clock=False, **params
            )
            await sim.start()
            driver = OpcUaPackerDriver("P1", sim.endpoint, timeout=2.0)
        else:
            sim = SerialPackerSimulator("P1", **params)
            await sim.start()
            driver = SerialPackerDriver("P1", sim.address, timeout=0.5)
        started.append((sim, driver))
        await driver.connect()
        return sim, driver

    yield make
    for sim, driver in reversed(started):
        await driver.close()
        await sim.stop()


def job(job_id: str, contents: list[list[tuple[int, int]]]) -> PackerJobSpec:
    return PackerJobSpec(
        job_id,
        tuple(
            Pouch(seq, f"pt-{seq % 3:04x}/08:00", tuple(PouchItem(c, q) for c, q in items))
            for seq, items in enumerate(contents, start=1)
        ),
    )


async def wait_state(driver: PackerDriver, state: PackMLState, within: float = 5.0) -> PackerStatus:
    deadline = time.monotonic() + within
    while True:
        status = await driver.read_status()
        if status.state is state:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"state {status.state.name}, wanted {state.name}: {status}")
        await asyncio.sleep(0.005)


async def to_idle(driver: PackerDriver) -> None:
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)


async def canisters(driver: PackerDriver) -> dict[int, tuple[int, int, int]]:
    """number -> (count, dispensed_total, refilled_total)."""
    return {
        c.number: (c.count, c.dispensed_total, c.refilled_total)
        for c in await driver.read_canisters()
    }


# -- unit modes -------------------------------------------------------------------------


async def test_unit_mode_changes_where_allowed_and_start_only_in_production(
    make_packer: Factory, protocol: str
) -> None:
    sim, driver = await make_packer(speed_factor=5.0)  # 200 ms a pouch: Execute lasts
    codes = CODES[protocol]
    assert (await driver.read_status()).unit_mode == M.PRODUCTION == 1

    await driver.set_unit_mode(M.MAINTENANCE)  # in Stopped
    status = await driver.read_status()
    assert status.unit_mode == 2 and status.state is S.STOPPED and sim.unit_mode == M.MAINTENANCE
    await driver.refill_canister(4, 5)  # canister work in Maintenance
    await to_idle(driver)
    assert (await driver.read_status()).unit_mode == 2  # Reset keeps the mode
    await driver.load_job(job("J-mode", [[(1, 1), (4, 1)]] * 10))

    with pytest.raises(DriverError) as info:
        await driver.command(C.START)
    text = str(info.value)
    assert "command Start: refused: Start not allowed in unit mode MAINTENANCE (2):" in text
    assert "a job starts only in PRODUCTION (1)" in text and codes["state"] in text
    assert sim.state == S.IDLE

    await driver.set_unit_mode(M.MANUAL)  # in Idle, with a job loaded
    assert (await driver.read_status()).unit_mode == 3
    with pytest.raises(DriverError, match=r"Start not allowed in unit mode MANUAL \(3\)"):
        await driver.command(C.START)
    await asyncio.sleep(0.05)
    assert sim.state == S.IDLE and sim.dispensed_totals() == {1: 0, 2: 0, 3: 0, 4: 0}

    await driver.set_unit_mode(M.PRODUCTION)
    await driver.command(C.START)
    status = await wait_state(driver, S.EXECUTE)
    assert status.unit_mode == 1

    with pytest.raises(DriverError) as info:
        await driver.set_unit_mode(M.MAINTENANCE)
    text = str(info.value)
    assert "packer P1 (" in text and "set_unit_mode MAINTENANCE (2): refused:" in text
    assert "unit mode change to MAINTENANCE (2) is not allowed in state EXECUTE (6)" in text
    assert "changes only in STOPPED, IDLE, ABORTED" in text and codes["state"] in text
    await driver.set_unit_mode(M.PRODUCTION)  # the current mode: accepted in any state
    assert sim.unit_mode == M.PRODUCTION and sim.state == S.EXECUTE

    await driver.command(C.ABORT)
    await wait_state(driver, S.ABORTED)
    await driver.set_unit_mode(M.MAINTENANCE)  # in Aborted
    assert (await driver.read_status()).unit_mode == 2

    with pytest.raises(DriverError) as info:
        await driver.set_unit_mode(9)  # type: ignore[arg-type]
    text = str(info.value)
    assert "set_unit_mode 9: refused: RequestedMode: 9 is not a unit mode" in text
    assert codes["argument"] in text and "RequestedMode" in text
    assert sim.unit_mode == M.MAINTENANCE


# -- output tray ------------------------------------------------------------------------


async def test_full_tray_suspends_and_the_controller_unsuspends_after_emptying(
    make_packer: Factory, protocol: str
) -> None:
    contents = [[(1, 1), (2, 2)]] * 6
    sim, driver = await make_packer(
        output_capacity=4,
        output_empty_after_s=None,
        speed_factor=20.0,  # 50 ms a pouch
    )
    status = await driver.read_status()
    assert (status.output_count, status.output_capacity, status.output_full) == (0, 4, False)
    await to_idle(driver)
    await driver.load_job(job("J-tray", contents))
    await driver.command(C.START)

    status = await wait_state(driver, S.SUSPENDED)
    assert status.stop_reason == StopReason.OUTPUT_FULL == 103
    assert (status.output_count, status.output_capacity, status.output_full) == (4, 4, True)
    assert (status.job_pouches_good, status.processed_total) == (4, 4)
    assert status.machine_speed == 0.0
    assert await canisters(driver) == {
        1: (196, 4, 0),
        2: (192, 8, 0),
        3: (100, 0, 0),
        4: (50, 0, 0),
    }

    with pytest.raises(DriverError) as info:
        await driver.command(C.UNSUSPEND)
    text = str(info.value)
    assert "command Unsuspend: refused: Unsuspend not allowed: output tray full" in text
    assert "(4 of 4 pouches); empty it first" in text and CODES[protocol]["state"] in text
    assert sim.state == S.SUSPENDED

    assert await sim.empty_output() == 4
    status = await driver.read_status()
    assert (status.output_count, status.output_full) == (0, False)
    assert status.state is S.SUSPENDED and status.stop_reason == StopReason.OUTPUT_FULL
    await asyncio.sleep(0.3)  # six pouch times: it does not restart by itself
    status = await driver.read_status()
    assert status.state is S.SUSPENDED and status.job_pouches_good == 4

    await driver.command(C.UNSUSPEND)
    status = await wait_state(driver, S.EXECUTE)
    assert status.stop_reason == StopReason.NONE and status.machine_speed > 0

    status = await wait_state(driver, S.COMPLETE)
    assert (status.job_pouches_total, status.job_pouches_good, status.job_pouches_rejected) == (
        6,
        6,
        0,
    )
    assert status.processed_total == 6 and status.defective_total == 0
    assert (status.output_count, status.output_full) == (2, False)
    assert status.stop_reason == StopReason.NONE
    assert await canisters(driver) == {
        1: (194, 6, 0),
        2: (188, 12, 0),
        3: (100, 0, 0),
        4: (50, 0, 0),
    }


async def test_operator_empties_the_tray_after_the_delay_and_the_machine_waits(
    make_packer: Factory,
) -> None:
    # 2 s at speed factor 20: the operator comes 0.1 s after the tray became full.
    sim, driver = await make_packer(output_capacity=3, output_empty_after_s=2.0, speed_factor=20.0)
    await to_idle(driver)
    await driver.load_job(job("J-op", [[(3, 1)]] * 4))
    await driver.command(C.START)
    status = await wait_state(driver, S.SUSPENDED)
    assert status.stop_reason == StopReason.OUTPUT_FULL and status.job_pouches_good == 3

    deadline = time.monotonic() + 3.0
    while (status := await driver.read_status()).output_full:
        assert time.monotonic() < deadline, f"nobody emptied the tray: {status}"
        await asyncio.sleep(0.01)
    assert status.output_count == 0 and status.state is S.SUSPENDED
    assert status.stop_reason == StopReason.OUTPUT_FULL  # shown until Unsuspend

    await driver.command(C.UNSUSPEND)
    status = await wait_state(driver, S.COMPLETE)
    assert status.job_pouches_good == 4 and status.output_count == 1
    assert sim.dispensed_totals()[3] == 4


async def test_stop_keeps_output_full_and_a_start_with_a_full_tray_suspends_at_once(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer(output_capacity=2, output_empty_after_s=None)
    await to_idle(driver)
    await driver.load_job(job("J-a", [[(1, 1)]] * 5))
    await driver.command(C.START)
    await wait_state(driver, S.SUSPENDED)
    await driver.command(C.STOP)
    status = await wait_state(driver, S.STOPPED)
    assert status.stop_reason == StopReason.OUTPUT_FULL  # the first reason wins
    assert status.job_pouches_good == 2

    await to_idle(driver)
    status = await driver.read_status()
    assert status.stop_reason == StopReason.NONE and status.output_full  # Reset empties nothing
    await driver.load_job(job("J-b", [[(1, 1)]] * 2))
    await driver.command(C.START)
    status = await wait_state(driver, S.SUSPENDED)
    assert status.stop_reason == StopReason.OUTPUT_FULL and status.job_pouches_good == 0
    assert sim.dispensed_totals()[1] == 2

    await sim.empty_output()
    await driver.command(C.UNSUSPEND)
    status = await wait_state(driver, S.COMPLETE)
    assert (status.job_pouches_good, status.output_count, status.output_full) == (2, 2, True)


# -- refill totals ----------------------------------------------------------------------


async def test_refilled_total_counts_refills_and_survives_reads_and_restarts(
    make_packer: Factory, protocol: str
) -> None:
    sim, driver = await make_packer()
    assert {n: r for n, (_, _, r) in (await canisters(driver)).items()} == {1: 0, 2: 0, 3: 0, 4: 0}

    await driver.refill_canister(4, 3)
    await driver.refill_canister(4, 2)
    await driver.refill_canister(1, 10)
    with pytest.raises(DriverError, match=r"would overfill canister 4"):
        await driver.refill_canister(4, 100)
    with pytest.raises(DriverError, match=r"Quantity: must be > 0"):
        await driver.refill_canister(1, 0)

    first = await canisters(driver)
    assert first == {1: (210, 0, 10), 2: (200, 0, 0), 3: (100, 0, 0), 4: (55, 0, 5)}
    assert await canisters(driver) == first  # reading changes nothing
    assert sim.refilled_totals() == {1: 10, 2: 0, 3: 0, 4: 5}

    await to_idle(driver)
    await driver.load_job(job("J-ref", [[(4, 2)]] * 3))
    await driver.command(C.START)
    await wait_state(driver, S.COMPLETE)
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)
    after = await canisters(driver)
    assert after[4] == (49, 6, 5)  # dispensing and Reset leave refilled_total alone

    # A controller that crashed mid-refill reconnects and compares: the refill is there.
    await driver.close()
    await sim.stop()
    await sim.start()  # same port, same machine
    if isinstance(driver, OpcUaPackerDriver):
        assert isinstance(sim, PackerSimulator)
        driver.address = sim.endpoint
    await driver.connect()
    assert await canisters(driver) == after
    await driver.refill_canister(4, 1)
    assert (await canisters(driver))[4] == (50, 6, 6)


# -- the controller's PackML commands ---------------------------------------------------


async def test_every_controller_command_works(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)
    walk: list[tuple[PackMLCommand, PackMLState]] = [
        (C.RESET, S.IDLE),
        (C.START, S.EXECUTE),
        (C.HOLD, S.HELD),
        (C.UNHOLD, S.EXECUTE),
        (C.SUSPEND, S.SUSPENDED),
        (C.UNSUSPEND, S.EXECUTE),
        (C.STOP, S.STOPPED),
        (C.RESET, S.IDLE),
        (C.START, S.EXECUTE),
        (C.ABORT, S.ABORTED),
        (C.CLEAR, S.STOPPED),
    ]
    for step, (command, expected) in enumerate(walk):
        if command is C.START:
            await driver.load_job(job(f"J-walk-{step}", [[(1, 1)]] * 20))
        await driver.command(command)
        status = await wait_state(driver, expected)
        if command in (C.HOLD, C.SUSPEND, C.STOP, C.ABORT):
            assert status.stop_reason == StopReason.OPERATOR, command
        if command in (C.START, C.UNHOLD, C.UNSUSPEND, C.RESET):
            assert status.stop_reason == StopReason.NONE, command
    with pytest.raises(DriverError, match=r"Suspend not allowed in state STOPPED \(2\)"):
        await driver.command(C.SUSPEND)
