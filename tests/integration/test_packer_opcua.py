"""The OPC UA packer driver against the packer simulator over real loopback sockets.

The driver and simulator speak OPC 30050 (PackML) unless a test asks for the legacy
model (`model="legacy"`: `LegacyOpcUaPackerDriver` against the simulator's first
address space); the tests of the legacy address space itself run on that pair."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua

from drivers.base import (
    DriverError,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    Pouch,
    PouchItem,
    StopReason,
    UnitMode,
)
from drivers.opcua_packer import EXTENSION_URI, PACKML_URI, OpcUaPackerDriver
from drivers.opcua_packer_legacy import NAMESPACE_URI, LegacyOpcUaPackerDriver
from simulators.packer_opcua import PackerSimulator

S = PackMLState
C = PackMLCommand

CANISTERS = [
    (1, "07350000010015", 200, 300),
    (2, "07350000010022", 200, 300),
    (3, "07350000010039", 100, 300),
    (4, "07350000010046", 50, 60),
]
FAST = {"speed_factor": 100.0, "transient_seconds": 0.005}  # 10 ms per pouch

Factory = Callable[..., Awaitable[tuple[PackerSimulator, OpcUaPackerDriver]]]


@pytest.fixture
async def make_packer(address_space_cache: Path) -> AsyncIterator[Factory]:
    """Start simulators with connected drivers; everything is closed after the test."""
    started: list[tuple[PackerSimulator, OpcUaPackerDriver]] = []

    async def make(**kwargs: Any) -> tuple[PackerSimulator, OpcUaPackerDriver]:
        params: dict[str, Any] = {
            "canisters": CANISTERS,
            "address_space_cache": address_space_cache,
            "server_clock": False,
            **FAST,
        }
        params.update(kwargs)
        sim = PackerSimulator("P1", **params)
        driver_class = (
            LegacyOpcUaPackerDriver if params.get("model") == "legacy" else OpcUaPackerDriver
        )
        driver = driver_class("P1", "opc.tcp://127.0.0.1:1/", timeout=2.0)
        started.append((sim, driver))
        await sim.start()
        driver.address = sim.endpoint
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


#: Ten pouches of varying contents: (canister, quantity) per item.
TEN_POUCHES: list[list[tuple[int, int]]] = [
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


def totals(contents: list[list[tuple[int, int]]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for items in contents:
        for canister, qty in items:
            out[canister] += qty
    return out


async def wait_state(
    driver: OpcUaPackerDriver, state: PackMLState, within: float = 5.0
) -> PackerStatus:
    deadline = time.monotonic() + within
    while True:
        status = await driver.read_status()
        if status.state is state:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"state {status.state.name}, wanted {state.name}: {status}")
        await asyncio.sleep(0.005)


async def to_idle(driver: OpcUaPackerDriver) -> None:
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)


async def canister_map(driver: OpcUaPackerDriver) -> dict[int, tuple[int, int]]:
    return {c.number: (c.count, c.dispensed_total) for c in await driver.read_canisters()}


# -- production ---------------------------------------------------------------------


async def test_job_completes_with_exact_counters(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    status = await driver.read_status()
    assert status.state is S.STOPPED and status.unit_mode == 1 and status.job_id == ""
    before = await canister_map(driver)
    assert {n: gtin for n, gtin, _, _ in CANISTERS} == {
        c.number: c.gtin for c in await driver.read_canisters()
    }

    await to_idle(driver)
    await driver.load_job(job("J-1", TEN_POUCHES))
    status = await driver.read_status()
    assert (status.job_id, status.job_pouches_total, status.job_pouches_good) == ("J-1", 10, 0)
    await driver.command(C.START)
    status = await wait_state(driver, S.COMPLETE)

    assert status.processed_total == 10 and status.defective_total == 0
    assert (status.job_pouches_total, status.job_pouches_good, status.job_pouches_rejected) == (
        10,
        10,
        0,
    )
    assert status.stop_reason == StopReason.NONE and status.machine_speed == 0.0
    used = totals(TEN_POUCHES)
    after = await canister_map(driver)
    for number, (count, dispensed) in before.items():
        assert after[number] == (count - used[number], dispensed + used[number])
    assert sim.canister_counts() == {n: c for n, (c, _) in after.items()}

    await driver.command(C.RESET)
    status = await wait_state(driver, S.IDLE)
    assert (status.job_id, status.job_pouches_total, status.job_pouches_good) == ("", 0, 0)
    assert status.processed_total == 10  # PackTags counters survive the job


async def test_rejected_pouch_is_packed_again_and_its_tablets_are_gone(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer(reject_rate=0.3, seed=7)
    contents = [[(1, 2), (3, 1)]] * 10  # identical pouches: dispensed = attempts * contents
    await to_idle(driver)
    await driver.load_job(job("J-rej", contents))
    await driver.command(C.START)
    status = await wait_state(driver, S.COMPLETE)

    rejected = status.job_pouches_rejected
    assert rejected > 0
    assert status.job_pouches_good == 10
    assert status.processed_total == 10 + rejected
    assert status.defective_total == rejected
    after = await canister_map(driver)
    assert after[1] == (200 - 2 * (10 + rejected), 2 * (10 + rejected))
    assert after[3] == (100 - (10 + rejected), 10 + rejected)
    assert after[2] == (200, 0)

    # Same seed, same commands: the same pouches are rejected.
    sim2, driver2 = await make_packer(reject_rate=0.3, seed=7)
    await to_idle(driver2)
    await driver2.load_job(job("J-rej", contents))
    await driver2.command(C.START)
    status2 = await wait_state(driver2, S.COMPLETE)
    assert status2.job_pouches_rejected == rejected
    assert sim2.dispensed_totals() == sim.dispensed_totals()


async def test_empty_canister_holds_then_refill_and_unhold_completes(
    make_packer: Factory,
) -> None:
    canisters = [(1, "07350000010015", 100, 100), (3, "07350000010039", 5, 50)]
    sim, driver = await make_packer(canisters=canisters)
    contents = [[(1, 1), (3, 2)]] * 10
    await to_idle(driver)
    await driver.load_job(job("J-empty", contents))
    await driver.command(C.START)

    status = await wait_state(driver, S.HELD)
    assert status.stop_reason == StopReason.CANISTER_EMPTY == 101
    assert sim.stop_canister == 3
    assert status.job_pouches_good == 2  # 5 tablets: two pouches, the third would need 2
    # Pouch 3 is open: its paracetamol and the last tablet of canister 3 are in it.
    assert await canister_map(driver) == {1: (97, 3), 3: (0, 5)}

    with pytest.raises(DriverError, match=r"capacity 50"):
        await driver.refill_canister(3, 51)
    await driver.refill_canister(3, 30)
    assert (await canister_map(driver))[3] == (30, 5)
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.COMPLETE)
    assert status.stop_reason == StopReason.NONE and sim.stop_canister == 0
    assert status.job_pouches_good == 10 and status.processed_total == 10
    assert await canister_map(driver) == {1: (90, 10), 3: (15, 20)}


async def test_stop_canister_is_published_over_opc_ua(make_packer: Factory) -> None:
    sim, driver = await make_packer(canisters=[(4, "07350000010046", 0, 60)], model="legacy")
    await to_idle(driver)
    await driver.load_job(job("J-sc", [[(4, 1)]]))
    await driver.command(C.START)
    await wait_state(driver, S.HELD)
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        node = await client.nodes.objects.get_child(
            [f"{ns}:P1", f"{ns}:Admin", f"{ns}:StopCanister"]
        )
        assert await node.read_value() == 4
        assert await node.read_data_type_as_variant_type() == ua.VariantType.Int32


async def test_jam_holds_without_dispensing(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    sim.inject_jam()
    await to_idle(driver)
    await driver.load_job(job("J-jam", [[(2, 1)]] * 3))
    await driver.command(C.START)
    status = await wait_state(driver, S.HELD)
    assert status.stop_reason == StopReason.JAM
    assert status.processed_total == 0 and sim.dispensed_totals()[2] == 0
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.COMPLETE)
    assert status.processed_total == 3 and sim.dispensed_totals()[2] == 3


# -- commands -----------------------------------------------------------------------


async def test_stop_keeps_counters_and_reset_clears_the_job(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)  # 200 ms per pouch
    await to_idle(driver)
    await driver.load_job(job("J-stop", TEN_POUCHES))
    await driver.command(C.START)
    status = await wait_state(driver, S.EXECUTE)
    assert status.machine_speed == 300.0

    with pytest.raises(DriverError, match=r"EXECUTE"):
        await driver.refill_canister(1, 1)
    with pytest.raises(DriverError, match=r"LoadJob: machine is in state EXECUTE"):
        await driver.load_job(job("J-other", TEN_POUCHES))

    await driver.command(C.STOP)
    status = await wait_state(driver, S.STOPPED)
    assert status.stop_reason == StopReason.OPERATOR
    assert status.job_id == "J-stop" and status.job_pouches_total == 10
    good = status.job_pouches_good
    assert good < 10
    assert status.processed_total == good and status.machine_speed == 0.0

    await driver.command(C.RESET)
    status = await wait_state(driver, S.IDLE)
    assert status.job_id == "" and status.stop_reason == StopReason.NONE
    assert status.processed_total == good


async def test_hold_unhold_suspend_unsuspend(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)
    await to_idle(driver)
    await driver.load_job(job("J-hold", TEN_POUCHES))
    await driver.command(C.START)
    await wait_state(driver, S.EXECUTE)

    await driver.command(C.HOLD)
    status = await wait_state(driver, S.HELD)
    assert status.stop_reason == StopReason.OPERATOR
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.EXECUTE)
    assert status.stop_reason == StopReason.NONE

    await driver.command(C.SUSPEND)
    await wait_state(driver, S.SUSPENDED)
    await driver.command(C.UNSUSPEND)
    await wait_state(driver, S.EXECUTE)
    await driver.command(C.ABORT)


async def test_abort_then_clear_then_reset(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)
    await to_idle(driver)
    await driver.load_job(job("J-abort", TEN_POUCHES))
    await driver.command(C.START)
    await wait_state(driver, S.EXECUTE)
    await driver.command(C.ABORT)
    status = await wait_state(driver, S.ABORTED)
    assert status.stop_reason == StopReason.OPERATOR

    with pytest.raises(
        DriverError, match=r"Reset not allowed in state ABORTED \(9\) \(BadInvalidState\)"
    ):
        await driver.command(C.RESET)
    await driver.command(C.CLEAR)
    status = await wait_state(driver, S.STOPPED)
    assert status.job_id == "J-abort"
    await to_idle(driver)
    assert (await driver.read_status()).job_id == ""


async def test_invalid_commands_are_refused_with_the_state(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    with pytest.raises(DriverError) as info:
        await driver.command(C.UNHOLD)
    text = str(info.value)
    assert "P1" in text and "command Unhold" in text and "STOPPED" in text
    assert "BadInvalidState" in text
    await to_idle(driver)
    with pytest.raises(
        DriverError, match=r"command Start: refused: Start needs a job: no job loaded"
    ):
        await driver.command(C.START)
    assert sim.state == S.IDLE


# -- bad input ----------------------------------------------------------------------


async def test_bad_load_job_is_refused_with_clear_text(
    make_packer: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, driver = await make_packer()
    with pytest.raises(DriverError, match=r"load_job 'J-x'.*state STOPPED \(2\), not IDLE"):
        await driver.load_job(job("J-x", TEN_POUCHES))
    await to_idle(driver)

    cases: list[tuple[PackerJobSpec, str]] = [
        (job("J-x", [[(1, 1)], [(99, 1)]]), r"Pouches\[1\]\.items\[0\]: unknown canister 99"),
        (job("J-x", [[(1, 0)]]), r"Pouches\[0\]\.items\[0\]: quantity must be > 0, got 0"),
        (job("J-x", [[(4, 61)]]), r"quantity 61 exceeds capacity 60 of canister 4"),
        (job("J-x", []), r"Pouches: must be a non-empty JSON list"),
        (job("", [[(1, 1)]]), r"JobId: must not be empty"),
        (
            PackerJobSpec("J-x", (Pouch(1, "a", (PouchItem(1, 1),)),) * 2),
            r"Pouches\[1\]\.seq: duplicate sequence 1",
        ),
    ]
    for spec, pattern in cases:
        with pytest.raises(DriverError, match=pattern) as info:
            await driver.load_job(spec)
        assert "BadInvalidArgument" in str(info.value)

    class BrokenJson:
        @staticmethod
        def dumps(*_: Any, **__: Any) -> str:
            return '[{"seq": 1,'

    monkeypatch.setattr("drivers.opcua_packer.json", BrokenJson)
    with pytest.raises(DriverError, match=r"Pouches: not valid JSON") as info:
        await driver.load_job(job("J-x", [[(1, 1)]]))
    assert "Pouches: BadInvalidArgument" in str(info.value)
    monkeypatch.undo()

    assert sim.state == S.IDLE and (await driver.read_status()).job_id == ""
    await driver.load_job(job("J-ok", [[(1, 1)]]))
    with pytest.raises(DriverError, match=r"job 'J-ok' is already loaded"):
        await driver.load_job(job("J-2", [[(1, 1)]]))


async def test_refill_validation(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    with pytest.raises(DriverError, match=r"Number: unknown canister 99"):
        await driver.refill_canister(99, 1)
    with pytest.raises(DriverError, match=r"Quantity: must be > 0, got 0"):
        await driver.refill_canister(1, 0)
    with pytest.raises(DriverError, match=r"would overfill canister 4 \(count 50, capacity 60\)"):
        await driver.refill_canister(4, 11)
    await driver.refill_canister(4, 10)
    assert sim.canister_counts()[4] == 60


async def test_method_argument_types_are_checked(make_packer: Factory) -> None:
    sim, _driver = await make_packer(model="legacy")
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        command = await client.nodes.objects.get_child([f"{ns}:P1", f"{ns}:Command"])
        refill = await command.get_child(f"{ns}:RefillCanister")
        request = ua.CallMethodRequest(
            ObjectId=command.nodeid,
            MethodId=refill.nodeid,
            InputArguments=[
                ua.Variant("1", ua.VariantType.String),
                ua.Variant(1, ua.VariantType.Int32),
            ],
        )
        (result,) = await client.uaclient.call([request])
        assert result.StatusCode.name == "BadInvalidArgument"
        assert result.InputArgumentResults[0].name == "BadTypeMismatch"
        assert "Number: expected Int32, got String" in str(result.InputArgumentDiagnosticInfos)
        request.InputArguments = request.InputArguments[1:]
        (result,) = await client.uaclient.call([request])
        assert result.StatusCode.name == "BadArgumentsMissing"


# -- transport failures -------------------------------------------------------------


async def test_nothing_listening_is_a_driver_error(free_port: int) -> None:
    driver = OpcUaPackerDriver("PX", f"opc.tcp://127.0.0.1:{free_port}/", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"packer PX .*connect"):
        await driver.connect()
    assert time.monotonic() - started < 1.5
    with pytest.raises(DriverError, match=r"not connected"):
        await driver.read_status()
    await driver.close()
    await driver.close()


async def test_silent_peer_times_out_within_the_timeout(free_port: int) -> None:
    """A socket that accepts and never answers: connect must give up on time."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", free_port)
    try:
        driver = OpcUaPackerDriver("PS", f"opc.tcp://127.0.0.1:{free_port}/", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(DriverError, match=r"packer PS .*connect.*no answer within 0.5 s"):
            await driver.connect()
        assert time.monotonic() - started < 1.0
        await driver.close()
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_wrong_machine_name_is_reported(make_packer: Factory) -> None:
    sim, _driver = await make_packer(model="legacy")
    other = LegacyOpcUaPackerDriver("line-2", sim.endpoint, timeout=2.0, object_name="P9")
    with pytest.raises(
        DriverError, match=r"packer line-2 .*connect: node Objects/P9/\S+ not found"
    ):
        await other.connect()
    await other.close()


async def test_server_gone_gives_driver_error_and_reconnect_works(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    await sim.stop()
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"packer P1 .*read_status"):
        await driver.read_status()
    assert time.monotonic() - started < driver.timeout + 0.5
    with pytest.raises(DriverError, match=r"connect"):
        await driver.connect()

    await sim.start()  # same port as before
    driver.address = sim.endpoint
    await driver.connect()
    assert (await driver.read_status()).state is S.STOPPED


def test_driver_rejects_a_non_opc_tcp_address() -> None:
    with pytest.raises(ValueError, match=r"address"):
        OpcUaPackerDriver("P1", "tcp://127.0.0.1:502")


# -- unit mode, output tray and refill totals in the address space --------------------


async def test_new_nodes_and_set_unit_mode_method_in_the_address_space(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer(output_capacity=3, output_empty_after_s=None, model="legacy")
    await driver.refill_canister(2, 7)
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        machine = await client.nodes.objects.get_child(f"{ns}:P1")
        expected = {
            ("Output", "Count"): (ua.VariantType.Int32, 0),
            ("Output", "Capacity"): (ua.VariantType.Int32, 3),
            ("Output", "Full"): (ua.VariantType.Boolean, False),
            ("Canisters", "Canister_02", "RefilledTotal"): (ua.VariantType.Int64, 7),
            ("Status", "UnitModeCurrent"): (ua.VariantType.Int32, 1),
        }
        for path, (vtype, value) in expected.items():
            node = await machine.get_child([f"{ns}:{name}" for name in path])
            assert await node.read_data_type_as_variant_type() == vtype, path
            assert await node.read_value() == value, path

        command = await machine.get_child(f"{ns}:Command")
        method = await command.get_child(f"{ns}:SetUnitMode")
        (arguments,) = [
            await p.read_value()
            for p in await method.get_properties()
            if (await p.read_browse_name()).Name == "InputArguments"
        ]
        assert [(a.Name, a.DataType) for a in arguments] == [
            ("RequestedMode", ua.NodeId(ua.Int32(ua.ObjectIds.Int32)))
        ]
        await command.call_method(f"{ns}:SetUnitMode", ua.Variant(3, ua.VariantType.Int32))
        assert sim.unit_mode == UnitMode.MANUAL
        node = await machine.get_child([f"{ns}:Status", f"{ns}:UnitModeCurrent"])
        assert await node.read_value() == 3
    assert (await driver.read_status()).unit_mode == UnitMode.MANUAL


class FirstModelSimulator(PackerSimulator):
    """A machine with only the first address space: no Output folder, no RefilledTotal,
    no SetUnitMode (what an older real machine would expose)."""

    trimmed = False  # the nodes are built in full first, then deleted

    async def start(self) -> None:
        await super().start()
        self.trimmed = True
        server = self._server
        assert server is not None
        ns = await server.get_namespace_index(NAMESPACE_URI)
        gone = [f"{self.name}.Output", f"{self.name}.Command.SetUnitMode"]
        gone += [f"{self.name}.{path}" for path in self._nodes if path.endswith(".RefilledTotal")]
        self._nodes = {
            path: node
            for path, node in self._nodes.items()
            if not (path.startswith("Output.") or path.endswith(".RefilledTotal"))
        }
        await server.delete_nodes(
            [server.get_node(ua.NodeId(ua.String(ident), ua.Int16(ns))) for ident in gone],
            recursive=True,
        )

    def _values(self) -> dict[str, Any]:
        values = super()._values()
        if not self.trimmed:
            return values
        return {path: value for path, value in values.items() if path in self._nodes}


async def test_a_machine_without_the_new_nodes_still_works(address_space_cache: Path) -> None:
    sim = FirstModelSimulator(
        "P1",
        canisters=CANISTERS,
        address_space_cache=address_space_cache,
        server_clock=False,
        speed_factor=FAST["speed_factor"],
        transient_seconds=FAST["transient_seconds"],
        model="legacy",
    )
    await sim.start()
    driver = LegacyOpcUaPackerDriver("P1", sim.endpoint, timeout=2.0)
    try:
        await driver.connect()
        await driver.refill_canister(4, 2)
        status = await driver.read_status()
        assert (status.output_count, status.output_capacity, status.output_full) == (0, 0, False)
        records = await driver.read_canisters()
        assert [c.refilled_total for c in records] == [0, 0, 0, 0]
        assert {c.number: c.count for c in records}[4] == 52
        with pytest.raises(
            DriverError,
            match=r"packer P1 .*set_unit_mode MANUAL \(3\): the machine has no"
            r" Command/SetUnitMode method",
        ):
            await driver.set_unit_mode(UnitMode.MANUAL)
        await to_idle(driver)
        await driver.load_job(job("J-old", [[(1, 1)]] * 3))
        await driver.command(C.START)
        assert (await wait_state(driver, S.COMPLETE)).job_pouches_good == 3
    finally:
        await driver.close()
        await sim.stop()


async def test_set_unit_mode_when_not_connected_is_a_driver_error() -> None:
    driver = OpcUaPackerDriver("PN", "opc.tcp://127.0.0.1:1/", timeout=0.5)
    with pytest.raises(DriverError, match=r"packer PN .*set_unit_mode MAINTENANCE \(2\): not"):
        await driver.set_unit_mode(UnitMode.MAINTENANCE)


# -- the OPC 30050 model ------------------------------------------------------------------

PACKML_TYPES = {
    1: "PackMLExecuteStateMachineType",
    2: "PackMLMachineStateMachineType",
    3: "PackMLBaseStateMachineType",
    4: "PackMLStatusObjectType",
    5: "PackMLAdminObjectType",
    6: "PackMLBaseObjectType",
    11: "ProductionMaintenanceModeEnum",
    14: "PackMLCountDataType",
    15: "PackMLAlarmDataType",
    25: "HasStopReason",
}


async def test_the_machine_is_an_opc_30050_instance(make_packer: Factory) -> None:
    """Types with the NodeSet's ids and names; the instance's members and methods where
    the NodeSet puts them; doseline's nodes only in the extension namespace."""
    sim, driver = await make_packer(canisters=[(4, "07350000010046", 3, 60)])
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(PACKML_URI)
        ext = await client.get_namespace_index(EXTENSION_URI)
        for ident, name in PACKML_TYPES.items():
            bname = await client.get_node(ua.NodeId(ident, ns)).read_browse_name()
            assert bname == ua.QualifiedName(name, ns)
        machine = await client.nodes.objects.get_child(f"{ext}:P1")
        assert await machine.read_type_definition() == ua.NodeId(6, ns)

        def at(*names: str) -> list[str]:
            return [n if ":" in n else f"{ns}:{n}" for n in names]

        ms = await machine.get_child(at("BaseStateMachine", "MachineState"))
        es = await ms.get_child(f"{ns}:ExecuteState")
        bsm = await machine.get_child(f"{ns}:BaseStateMachine")
        assert await bsm.read_type_definition() == ua.NodeId(3, ns)
        assert await ms.read_type_definition() == ua.NodeId(2, ns)
        assert await es.read_type_definition() == ua.NodeId(1, ns)
        for owner, methods in (
            (bsm, {"Abort", "Clear"}),
            (ms, {"Stop", "Reset"}),
            (es, {"Reset", "Start", "Hold", "Unhold", "Suspend", "Unsuspend"}),
            (machine, {"SetUnitMode", "LoadJob", "RefillCanister"}),
        ):
            refs = await owner.get_children_descriptions(nodeclassmask=ua.NodeClass.Method)
            assert {r.BrowseName.Name for r in refs} == methods
            for ref in refs:
                expected = ext if ref.BrowseName.Name in ("LoadJob", "RefillCanister") else ns
                assert ref.BrowseName.NamespaceIndex == expected

        # Stopped at power-on; the state's Id is the NodeSet's state object.
        current = await ms.get_child("0:CurrentState")
        assert (await current.read_value()).Text == "Stopped"
        assert await (await current.get_child("0:Id")).read_value() == ua.NodeId(53, ns)
        assert await (await current.get_child("0:Number")).read_value() == 2
        es_current = await es.get_child("0:CurrentState")
        assert await (await es_current.get_child("0:Id")).read_value() == ua.NodeId()

        status = await machine.get_child(f"{ns}:Status")
        assert await status.read_type_definition() == ua.NodeId(4, ns)
        expected_status = {
            "UnitModeCurrent": (1, ua.NodeId(11, ns)),
            "CurMachSpeed": (0.0, ua.NodeId(ua.ObjectIds.Float)),
            "MachSpeed": (6000.0, ua.NodeId(ua.ObjectIds.Float)),
            "EquipmentBlocked": (False, ua.NodeId(ua.ObjectIds.Boolean)),
            "EquipmentStarved": (False, ua.NodeId(ua.ObjectIds.Boolean)),
            "StateRequested": (2, ua.NodeId(ua.ObjectIds.Int32)),
            "StateChangeInProcess": (False, ua.NodeId(ua.ObjectIds.Boolean)),
            "UnitModeChangeInProcess": (False, ua.NodeId(ua.ObjectIds.Boolean)),
        }
        for name, (value, data_type) in expected_status.items():
            node = await status.get_child(f"{ns}:{name}")
            assert (await node.read_value(), await node.read_data_type()) == (value, data_type)

        # StopReason hangs on Admin by HasStopReason; the counters are arrays of counts.
        admin = await machine.get_child(f"{ns}:Admin")
        design = await admin.get_child(f"{ns}:MachDesignSpeed")
        assert await design.read_value() == 60.0
        refs = await admin.get_references(refs=ua.NodeId(25, ns))
        assert [r.BrowseName.Name for r in refs] == ["StopReason"]
        processed = await admin.get_child(f"{ns}:ProdProcessedCount")
        assert await processed.read_data_type() == ua.NodeId(14, ns)
        assert await processed.read_value_rank() == 1

        # Count is this job's, AccCount never goes back (not across a reset either).
        await to_idle(driver)
        await driver.load_job(job("J-acc", [[(4, 1)]] * 2))
        await driver.command(C.START)
        await wait_state(driver, S.COMPLETE)
        (count,) = await processed.read_value()
        assert (count.Count, count.AccCount, count.Name) == (2, 2, "pouches")
        await to_idle(driver)
        (count,) = await processed.read_value()
        assert (count.Count, count.AccCount) == (0, 2)

        # Doseline's own nodes are in the extension namespace, not in PackML's.
        for path in (["Job", "JobId"], ["Canisters", "Canister_04", "RefilledTotal"]):
            await machine.get_child([f"{ext}:{n}" for n in path])
        with pytest.raises(ua.UaStatusCodeError):
            await machine.get_child([f"{ns}:Job"])


async def test_an_empty_canister_shows_in_stop_reason_and_equipment_starved(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer(canisters=[(4, "07350000010046", 0, 60)])
    await to_idle(driver)
    await driver.load_job(job("J-sc", [[(4, 1)]]))
    await driver.command(C.START)
    status = await wait_state(driver, S.HELD)
    assert (status.stop_reason, status.stop_canister) == (StopReason.CANISTER_EMPTY, 4)
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(PACKML_URI)
        ext = await client.get_namespace_index(EXTENSION_URI)
        machine = await client.nodes.objects.get_child(f"{ext}:P1")
        stop = await (await machine.get_child([f"{ns}:Admin", f"{ns}:StopReason"])).read_value()
        assert (stop.ID, stop.Value, stop.Message, stop.Trigger) == (
            101,
            4,
            "canister 4 empty",
            True,
        )
        starved = await machine.get_child([f"{ns}:Status", f"{ns}:EquipmentStarved"])
        assert await starved.read_value() is True
    await driver.refill_canister(4, 10)
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.COMPLETE)
    assert (status.stop_reason, status.stop_canister) == (StopReason.NONE, 0)


async def test_start_parameters_and_argument_types_are_checked(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    await to_idle(driver)
    await driver.load_job(job("J-par", [[(1, 1)]]))
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(PACKML_URI)
        ext = await client.get_namespace_index(EXTENSION_URI)
        machine = await client.nodes.objects.get_child(f"{ext}:P1")
        es = await machine.get_child(
            [f"{ns}:BaseStateMachine", f"{ns}:MachineState", f"{ns}:ExecuteState"]
        )
        start = await es.get_child(f"{ns}:Start")
        request = ua.CallMethodRequest(
            ObjectId=es.nodeid,
            MethodId=start.nodeid,
            InputArguments=[ua.Variant([ua.Argument()], ua.VariantType.ExtensionObject)],
        )
        (result,) = await client.uaclient.call([request])
        assert result.StatusCode.name == "BadInvalidArgument"
        assert "Parameter: this machine takes no start parameters, got 1" in str(
            result.InputArgumentDiagnosticInfos
        )
        request.InputArguments = [ua.Variant(1, ua.VariantType.Int32)]
        (result,) = await client.uaclient.call([request])
        assert result.InputArgumentResults[0].name == "BadTypeMismatch"

        refill = await machine.get_child(f"{ext}:RefillCanister")
        request = ua.CallMethodRequest(
            ObjectId=machine.nodeid,
            MethodId=refill.nodeid,
            InputArguments=[
                ua.Variant("1", ua.VariantType.String),
                ua.Variant(1, ua.VariantType.Int32),
            ],
        )
        (result,) = await client.uaclient.call([request])
        assert result.InputArgumentResults[0].name == "BadTypeMismatch"
        assert "Number: expected Int32, got String" in str(result.InputArgumentDiagnosticInfos)
    assert sim.state == S.IDLE
    await driver.command(C.START)  # with no parameters, as the driver sends it: runs
    assert (await wait_state(driver, S.COMPLETE)).job_pouches_good == 1


async def test_the_machine_is_found_by_type_whatever_its_name(
    make_packer: Factory, address_space_cache: Path
) -> None:
    """One machine on the server: found under any name the site gives the packer. Asked
    for by a name the server does not have: the error names what is there."""
    sim, _driver = await make_packer()
    anonymous = OpcUaPackerDriver("PK7", sim.endpoint, timeout=2.0)
    try:
        await anonymous.connect()
        assert (await anonymous.read_status()).state is S.STOPPED
    finally:
        await anonymous.close()
    named = OpcUaPackerDriver("line-2", sim.endpoint, timeout=2.0, object_name="P9")
    with pytest.raises(
        DriverError,
        match=r"packer line-2 .*connect: no PackMLBaseObjectType instance named 'P9' on the"
        r" server \(found: P1\)",
    ):
        await named.connect()
    await named.close()


async def test_a_machine_of_a_subtype_in_a_folder_is_found(make_packer: Factory) -> None:
    """A vendor's subtype of PackMLBaseObjectType one folder below Objects counts as a
    machine; with two machines on the server the name decides."""
    sim, driver = await make_packer()
    server = sim._server
    assert server is not None
    ns = await server.get_namespace_index(PACKML_URI)
    base = server.get_node(ua.NodeId(6, ns))
    vendor = await base.add_object_type(ua.NodeId("VendorPacker", ns + 1), "VendorPacker")
    folder = await server.nodes.objects.add_folder(ua.NodeId("Line", ns + 1), "Line")
    await folder.add_object(ua.NodeId("P2", ns + 1), "P2", objecttype=vendor.nodeid)
    other = OpcUaPackerDriver("P2", sim.endpoint, timeout=2.0)
    with pytest.raises(DriverError, match=r"connect: node Canisters of the machine not found"):
        await other.connect()  # found by its type; it lacks doseline's extension
    await other.close()
    unnamed = OpcUaPackerDriver("PK7", sim.endpoint, timeout=2.0)
    with pytest.raises(DriverError, match=r"named 'PK7' on the server \(found: P1, P2\)"):
        await unnamed.connect()
    await unnamed.close()
    await driver.connect()  # P1 by its name
    assert (await driver.read_status()).state is S.STOPPED


async def test_an_acting_state_shows_the_state_requested(make_packer: Factory) -> None:
    sim, driver = await make_packer(transient_seconds=0.5, speed_factor=1.0)
    async with Client(sim.endpoint, timeout=2.0) as client:
        ns = await client.get_namespace_index(PACKML_URI)
        ext = await client.get_namespace_index(EXTENSION_URI)
        status = await client.nodes.objects.get_child([f"{ext}:P1", f"{ns}:Status"])
        requested = await status.get_child(f"{ns}:StateRequested")
        changing = await status.get_child(f"{ns}:StateChangeInProcess")
        await driver.command(C.RESET)
        assert sim.state == S.RESETTING
        assert (await requested.read_value(), await changing.read_value()) == (4, True)
        await wait_state(driver, S.IDLE)
        assert (await requested.read_value(), await changing.read_value()) == (4, False)
