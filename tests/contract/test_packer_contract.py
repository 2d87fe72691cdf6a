"""The PackerDriver contract: one behaviour for FakePacker, the OPC 30050 and legacy OPC UA
drivers and the serial driver (each against its simulator on loopback)."""

from __future__ import annotations

import asyncio
from collections import Counter

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
from tests.contract.conftest import CANISTERS, FAKE, WAIT_S, MakePacker, known_gap

S = PackMLState
C = PackMLCommand
Contents = list[list[tuple[int, int]]]

#: Ten pouches of varying contents: (canister, quantity) per item.
TEN: Contents = [
    [(1, 1), (2, 2)],
    [(1, 1)],
    [(3, 1), (4, 1)],
    [(2, 1), (3, 2)],
    [(1, 2), (2, 1), (3, 1)],
    [(4, 2)],
    [(1, 1), (4, 1)],
    [(2, 3)],
    [(3, 1)],
    [(1, 1), (2, 1), (3, 1), (4, 1)],
]
#: Twenty one-tablet pouches: 0.8 s on the simulators, time to act in Execute.
TWENTY: Contents = [[(1, 1)]] * 20


def job(job_id: str, contents: Contents) -> PackerJobSpec:
    return PackerJobSpec(
        job_id,
        tuple(
            Pouch(seq, f"pt-{seq % 3:04x}/08:00", tuple(PouchItem(c, q) for c, q in items))
            for seq, items in enumerate(contents, start=1)
        ),
    )


def tablets(contents: Contents) -> Counter[int]:
    out: Counter[int] = Counter()
    for items in contents:
        for canister, qty in items:
            out[canister] += qty
    return out


async def wait_state(
    driver: PackerDriver, *states: PackMLState, seen: list[PackerStatus] | None = None
) -> PackerStatus:
    """Poll until the machine is in one of `states`; every status read goes to `seen`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        status = await driver.read_status()
        if seen is not None:
            seen.append(status)
        if status.state in states:
            return status
        if loop.time() > deadline:
            names = ", ".join(s.name for s in states)
            raise AssertionError(f"state {status.state.name}, wanted {names}: {status}")
        await asyncio.sleep(0.01)


async def counts(driver: PackerDriver) -> dict[int, int]:
    return {c.number: c.count for c in await driver.read_canisters()}


async def idle_with_job(driver: PackerDriver, spec: PackerJobSpec) -> None:
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)
    await driver.load_job(spec)


async def test_connect_read_close_and_connect_again(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    status = await driver.read_status()
    assert status == PackerStatus(
        state=S.STOPPED,
        unit_mode=UnitMode.PRODUCTION,
        machine_speed=0.0,
        processed_total=0,
        defective_total=0,
        stop_reason=StopReason.NONE,
        job_id="",
        job_pouches_total=0,
        job_pouches_good=0,
        job_pouches_rejected=0,
        stop_canister=0,
        output_count=0,
        output_capacity=0,
        output_full=False,
    )
    assert isinstance(status.state, PackMLState)
    canisters = await driver.read_canisters()
    assert [(c.number, c.gtin, c.count, c.capacity) for c in canisters] == list(CANISTERS)
    assert all(c.dispensed_total == 0 and c.refilled_total == 0 for c in canisters)
    assert driver.reports_refilled_total
    await driver.close()
    await driver.close()  # idempotent
    with pytest.raises(DriverError):
        await driver.read_status()
    with pytest.raises(DriverError):
        await driver.read_canisters()
    with pytest.raises(DriverError):
        await driver.command(C.RESET)
    with pytest.raises(DriverError):
        await driver.refill_canister(1, 1)
    await driver.connect()
    assert (await driver.read_status()).state is S.STOPPED


async def test_job_runs_to_complete_and_counters_follow(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    before = await counts(driver)
    await idle_with_job(driver, job("J1", TEN))
    loaded = await driver.read_status()
    assert (loaded.job_id, loaded.job_pouches_total, loaded.job_pouches_good) == ("J1", 10, 0)
    await driver.command(C.START)
    done = await wait_state(driver, S.COMPLETE)
    assert (done.job_id, done.job_pouches_good, done.job_pouches_rejected) == ("J1", 10, 0)
    assert (done.processed_total, done.defective_total, done.output_count) == (10, 0, 10)
    assert done.machine_speed == 0.0
    used = tablets(TEN)
    canisters = await driver.read_canisters()
    assert {c.number: c.count for c in canisters} == {n: before[n] - used[n] for n in before}
    assert {c.number: c.dispensed_total for c in canisters} == {n: used[n] for n in before}
    await driver.command(C.RESET)
    idle = await wait_state(driver, S.IDLE)
    assert (idle.job_id, idle.job_pouches_total, idle.job_pouches_good) == ("", 0, 0)
    assert idle.processed_total == 10


async def test_hold_and_unhold_in_execute(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    await idle_with_job(driver, job("J1", TWENTY))
    await driver.command(C.START)
    running = await wait_state(driver, S.EXECUTE)
    assert running.machine_speed > 0
    with pytest.raises(DriverError):
        await driver.refill_canister(1, 1)  # no refills in Execute
    await driver.command(C.HOLD)
    held = await wait_state(driver, S.HELD)
    assert held.stop_reason == StopReason.OPERATOR
    assert held.machine_speed == 0.0
    await asyncio.sleep(0.1)
    assert (await driver.read_status()).job_pouches_good == held.job_pouches_good  # no packing
    await driver.command(C.UNHOLD)
    resumed = await wait_state(driver, S.EXECUTE, S.COMPLETE)
    assert resumed.stop_reason == StopReason.NONE
    done = await wait_state(driver, S.COMPLETE)
    assert done.job_pouches_good == 20


async def test_refused_commands_and_jobs_change_nothing(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    for command in (C.HOLD, C.UNHOLD, C.START, C.CLEAR, C.UNSUSPEND, C.STOP):
        with pytest.raises(DriverError):
            await driver.command(command)
    with pytest.raises(DriverError):
        await driver.load_job(job("J1", TEN))  # only in Idle
    status = await driver.read_status()
    assert (status.state, status.job_id) == (S.STOPPED, "")
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)
    with pytest.raises(DriverError):
        await driver.command(C.START)  # no job loaded
    for bad in (
        job("J1", [[(1, 1)], [(99, 1)]]),  # unknown canister
        job("J1", [[(1, 1), (1, 2)]]),  # one canister twice in a pouch
        job("J1", [[(4, 61)]]),  # more than the canister holds
    ):
        with pytest.raises(DriverError):
            await driver.load_job(bad)
        status = await driver.read_status()
        assert (status.state, status.job_id) == (S.IDLE, "")
    await driver.load_job(job("J2", TEN))
    with pytest.raises(DriverError):
        await driver.load_job(job("J3", TEN))  # one job at a time
    assert (await driver.read_status()).job_id == "J2"


async def test_refill_canister(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    await driver.refill_canister(1, 10)
    for number, quantity in ((99, 1), (4, 11), (1, 0)):  # unknown, overfill, nothing
        with pytest.raises(DriverError):
            await driver.refill_canister(number, quantity)
    canisters = {c.number: c for c in await driver.read_canisters()}
    assert (canisters[1].count, canisters[1].refilled_total) == (210, 10)
    assert (canisters[4].count, canisters[4].refilled_total) == (50, 0)


async def test_empty_canister_holds_until_refilled(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    await idle_with_job(driver, job("J1", [[(4, 5)]] * 12))  # 60 tablets, 50 in canister 4
    await driver.command(C.START)
    held = await wait_state(driver, S.HELD)
    assert (held.stop_reason, held.stop_canister) == (StopReason.CANISTER_EMPTY, 4)
    assert held.job_pouches_good == 10
    await driver.refill_canister(4, 10)
    await driver.command(C.UNHOLD)
    done = await wait_state(driver, S.COMPLETE)
    assert (done.job_pouches_good, done.stop_reason, done.stop_canister) == (12, 0, 0)
    four = {c.number: c for c in await driver.read_canisters()}[4]
    assert (four.count, four.dispensed_total, four.refilled_total) == (0, 60, 10)


async def test_full_output_tray_suspends_until_emptied(make_packer: MakePacker) -> None:
    rig = await make_packer(output_capacity=3)
    driver = rig.driver
    await idle_with_job(driver, job("J1", [[(1, 1)]] * 5))
    await driver.command(C.START)
    suspended = await wait_state(driver, S.SUSPENDED)
    assert suspended.stop_reason == StopReason.OUTPUT_FULL
    assert (suspended.output_count, suspended.output_capacity, suspended.output_full) == (
        3,
        3,
        True,
    )
    with pytest.raises(DriverError):
        await driver.command(C.UNSUSPEND)  # the tray is still full
    assert await rig.empty_output() == 3
    await driver.command(C.UNSUSPEND)
    done = await wait_state(driver, S.COMPLETE)
    assert (done.job_pouches_good, done.output_count, done.output_full) == (5, 2, False)


async def test_unit_mode(make_packer: MakePacker) -> None:
    driver = (await make_packer()).driver
    await driver.set_unit_mode(UnitMode.MAINTENANCE)
    assert (await driver.read_status()).unit_mode == UnitMode.MAINTENANCE
    await idle_with_job(driver, job("J1", TWENTY))
    with pytest.raises(DriverError):
        await driver.command(C.START)  # jobs run in Production only
    await driver.set_unit_mode(UnitMode.PRODUCTION)
    await driver.command(C.START)
    await wait_state(driver, S.EXECUTE)
    with pytest.raises(DriverError):
        await driver.set_unit_mode(UnitMode.MAINTENANCE)  # not in Execute
    await driver.set_unit_mode(UnitMode.PRODUCTION)  # the current mode: accepted anywhere
    await driver.command(C.STOP)
    stopped = await wait_state(driver, S.STOPPED)
    assert stopped.unit_mode == UnitMode.PRODUCTION


async def test_jam_holds_and_counters_never_decrease(make_packer: MakePacker) -> None:
    rig = await make_packer()
    driver = rig.driver
    seen: list[PackerStatus] = []
    canisters = [await driver.read_canisters()]
    await idle_with_job(driver, job("J1", TEN))
    await driver.command(C.START)
    await wait_state(driver, S.EXECUTE, S.COMPLETE, seen=seen)
    rig.jam()
    held = await wait_state(driver, S.HELD, S.COMPLETE, seen=seen)
    assert (held.state, held.stop_reason) == (S.HELD, StopReason.JAM)
    canisters.append(await driver.read_canisters())
    await driver.refill_canister(1, 5)
    await driver.command(C.UNHOLD)
    await wait_state(driver, S.COMPLETE, seen=seen)
    await driver.close()
    await driver.connect()
    seen.append(await driver.read_status())
    canisters.append(await driver.read_canisters())
    for name in ("processed_total", "defective_total"):
        values = [getattr(s, name) for s in seen]
        assert values == sorted(values), name
    for name in ("dispensed_total", "refilled_total"):
        for number in range(1, 5):
            values = [getattr(cs[number - 1], name) for cs in canisters]
            assert values == sorted(values), (name, number)
    assert seen[-1].processed_total == 10


async def test_lost_link_raises_and_connect_restores(make_packer: MakePacker) -> None:
    rig = await make_packer()
    driver = rig.driver
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)
    await rig.link_down()
    with pytest.raises(DriverError):
        async with asyncio.timeout(WAIT_S):
            await driver.read_status()
    await rig.link_up()
    await driver.connect()
    status = await driver.read_status()
    assert (status.state, status.processed_total) == (S.IDLE, 0)


async def test_execute_advances_with_time_not_polls(
    make_packer: MakePacker, request: pytest.FixtureRequest
) -> None:
    rig = await make_packer()
    known_gap(
        request,
        rig.kind,
        {FAKE},
        "FakePacker packs `pouches_per_read` pouches per read_status (or on pack()),"
        " not by the clock, so a job does not finish while nobody polls",
    )
    driver = rig.driver
    await idle_with_job(driver, job("J1", TEN))
    await driver.command(C.START)
    await asyncio.sleep(0.7)  # 0.4 s of packing on the simulators
    status = await driver.read_status()
    assert (status.state, status.job_pouches_good) == (S.COMPLETE, 10)
