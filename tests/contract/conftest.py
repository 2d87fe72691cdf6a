"""Rigs for the contract suite: each test gets a driver behind an interface of
drivers/base.py, and a rig that acts on the device side (a nurse at the cabinet, a pack
in front of the scanner, the link going down), either on a fake (drivers/fakes.py) or
on a simulator over real loopback sockets. A test talks to the driver only through the
interface, so the same test holds both to one behaviour.

`known_gap` marks a test a target cannot pass (strict xfail: if the target learns the
behaviour, the mark must go), so every difference between fake and real is written down
where it shows, never skipped in silence.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from drivers.base import (
    CabinetDriver,
    CabinetEvent,
    CabinetSnapshot,
    EventAck,
    EventCabinetDriver,
    PackerDriver,
    PocketEvent,
    ScannerDriver,
)
from drivers.fakes import (
    FakeCabinet,
    FakeEventCabinet,
    FakeEventPocket,
    FakePacker,
    FakePocket,
    FakeScanner,
)
from drivers.hl7_cabinet import Hl7CabinetDriver
from drivers.modbus_cabinet import ModbusCabinetDriver
from drivers.opcua_packer import OpcUaPackerDriver
from drivers.opcua_packer_legacy import LegacyOpcUaPackerDriver
from drivers.serial_packer import SerialPackerDriver
from drivers.serial_scanner import SerialScannerDriver
from simulators.cabinet_hl7 import Hl7CabinetServer, Hl7CabinetSpec, Hl7PocketSpec
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from simulators.packer_opcua import PackerSimulator
from simulators.packer_serial import SerialPackerSimulator
from simulators.scanner_serial import ScannerSimulator

FAKE = "fake"
PACKERS = (FAKE, "opcua", "opcua_legacy", "serial")
CABINETS = (FAKE, "modbus")
EVENT_CABINETS = (FAKE, "hl7")
SCANNERS = (FAKE, "serial")

#: (number, gtin, count, capacity): canister 4 is small, to run it dry on purpose.
CANISTERS = (
    (1, "07350000010015", 200, 300),
    (2, "07350000010022", 200, 300),
    (3, "07350000010039", 100, 300),
    (4, "07350000010046", 50, 60),
)
#: 40 ms per pouch: a job of 20 pouches lasts long enough to hold it in Execute.
SIM_SPEED = {"pouches_per_minute": 60.0, "speed_factor": 25.0, "transient_seconds": 0.005}

#: (number, article, count, min, max, capacity) of the polled cabinet's pockets.
POCKETS = ((1, 1001, 10, 5, 20, 30), (2, 1002, 4, 2, 8, 10))
#: (number, gtin, count, capacity) of the event cabinet's pockets.
GTIN_A, GTIN_B = "07350000020014", "07350000020021"
EVENT_POCKETS = ((1, GTIN_A, 12, 20), (2, GTIN_B, 8, 10))
WAIT_S = 5.0


def known_gap(request: pytest.FixtureRequest, kind: str, targets: Iterable[str], why: str) -> None:
    """This test fails on `targets` for the reason `why` (strict: a pass is an error)."""
    if kind in targets:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=f"{kind}: {why}"))


async def until(
    check: Callable[[], Awaitable[bool]], what: str, within: float = WAIT_S, pause: float = 0.01
) -> None:
    """Repeat `check` until it is true; DriverError and other failures propagate."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(pause)


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Torn down last: every task a test (its driver, its simulator) started is gone."""
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    leaked: list[asyncio.Task[Any]] = []
    for _ in range(100):
        leaked = [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]
        if not leaked:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"tasks left running: {leaked}")


@pytest.fixture(scope="session")
def ua_shelf(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shelf of the OPC UA standard address space, so each server starts in ~0.1 s
    (the same file as tests/integration's, built once)."""
    version = importlib.metadata.version("asyncua")
    cache = getattr(pytestconfig, "cache", None)
    base = cache.mkdir("asyncua-address-space") if cache else tmp_path_factory.mktemp("ua")
    return Path(base) / f"standard-{version}"


# --- packers ------------------------------------------------------------------------------
class PackerRig:
    """A packer driver and its machine's side: jams, the operator at the tray, the link."""

    def __init__(self, kind: str, driver: PackerDriver, sim: Any = None) -> None:
        self.kind = kind
        self.driver = driver
        self.sim = sim

    @property
    def fake(self) -> FakePacker:
        assert isinstance(self.driver, FakePacker)
        return self.driver

    def jam(self) -> None:
        if self.sim is None:
            self.fake.jam_next = True
        else:
            self.sim.inject_jam()

    async def empty_output(self) -> int:
        if self.sim is None:
            return self.fake.empty_output()
        return int(await self.sim.empty_output())

    async def link_down(self) -> None:
        if self.sim is None:
            self.fake.link_up = False
        else:
            await self.sim.stop()

    async def link_up(self) -> None:
        if self.sim is None:
            self.fake.link_up = True
        else:
            await self.sim.start()

    async def start(self) -> None:
        if self.sim is not None:
            await self.sim.start()
            if isinstance(self.driver, OpcUaPackerDriver):
                self.driver.address = self.sim.endpoint
            elif isinstance(self.driver, SerialPackerDriver):
                self.driver.address = self.sim.address
        await self.driver.connect()

    async def stop(self) -> None:
        await self.driver.close()
        if self.sim is not None:
            await self.sim.stop()


MakePacker = Callable[..., Awaitable[PackerRig]]


@pytest.fixture(params=PACKERS)
async def make_packer(request: pytest.FixtureRequest, ua_shelf: Path) -> AsyncIterator[MakePacker]:
    """`await make_packer(output_capacity=0)`: a connected driver on this target."""
    kind: str = request.param
    rigs: list[PackerRig] = []

    async def make(output_capacity: int = 0) -> PackerRig:
        rig: PackerRig
        if kind == FAKE:
            rig = PackerRig(kind, FakePacker("P1", CANISTERS, output_capacity=output_capacity))
        else:
            options: dict[str, Any] = {
                "canisters": CANISTERS,
                "output_capacity": output_capacity,
                "output_empty_after_s": None,  # only the test empties the tray
                **SIM_SPEED,
            }
            if kind == "serial":
                sim: Any = SerialPackerSimulator("P1", **options)
                driver = SerialPackerDriver("P1", "socket://127.0.0.1:1", timeout=0.5)
                rig = PackerRig(kind, driver, sim)
            else:
                legacy = kind == "opcua_legacy"
                sim = PackerSimulator(
                    "P1",
                    address_space_cache=ua_shelf,
                    server_clock=False,
                    model="legacy" if legacy else "opc30050",
                    **options,
                )
                cls = LegacyOpcUaPackerDriver if legacy else OpcUaPackerDriver
                rig = PackerRig(kind, cls("P1", "opc.tcp://127.0.0.1:1/", timeout=2.0), sim)
        rigs.append(rig)
        await rig.start()
        return rig

    yield make
    for rig in reversed(rigs):
        await rig.stop()


# --- polled cabinets ---------------------------------------------------------------------
class CabinetRig:
    """A polled cabinet driver and the ward's side: nurses, thermometer, the link."""

    def __init__(self, kind: str, driver: CabinetDriver, sim: CabinetSimulator | None) -> None:
        self.kind = kind
        self.driver = driver
        self.sim = sim

    @property
    def fake(self) -> FakeCabinet:
        assert isinstance(self.driver, FakeCabinet)
        return self.driver

    def withdraw(self, pocket: int, n: int) -> int:
        if self.sim is None:
            return self.fake.withdraw(pocket, n)
        return self.sim.withdraw(1, pocket, n)

    def set_temperature(self, celsius: float) -> None:
        if self.sim is None:
            self.fake.set_temperature(celsius)
        else:
            self.sim.set_temperature(1, celsius)

    async def link_down(self) -> None:
        if self.sim is None:
            self.fake.link_up = False
        else:
            await self.sim.stop()

    async def link_up(self) -> None:
        if self.sim is None:
            self.fake.link_up = True
        else:
            await self.sim.start()


@pytest.fixture(params=CABINETS)
async def cabinet(request: pytest.FixtureRequest) -> AsyncIterator[CabinetRig]:
    kind: str = request.param
    sim: CabinetSimulator | None = None
    driver: CabinetDriver
    if kind == FAKE:
        driver = FakeCabinet(
            "CAB1",
            [FakePocket(n, a, c, lo, hi, cap) for n, a, c, lo, hi, cap in POCKETS],
            cabinet_id=1,
        )
    else:
        specs = [PocketSpec(n, a, c, lo, hi, cap) for n, a, c, lo, hi, cap in POCKETS]
        sim = CabinetSimulator(cabinets=[CabinetSpec(1, specs)], time_factor=0.0)
        await sim.start()
        driver = ModbusCabinetDriver("CAB1", sim.address, 1, len(POCKETS), timeout=1.0)
    await driver.connect()
    try:
        yield CabinetRig(kind, driver, sim)
    finally:
        await driver.close()
        if sim is not None:
            await sim.stop()


# --- cabinets behind a cabinet server ---------------------------------------------------
class EventCabinetRig:
    """An event cabinet driver and the cabinet server's side."""

    def __init__(
        self, kind: str, driver: EventCabinetDriver, server: Hl7CabinetServer | None
    ) -> None:
        self.kind = kind
        self.driver = driver
        self.server = server

    @property
    def fake(self) -> FakeEventCabinet:
        assert isinstance(self.driver, FakeEventCabinet)
        return self.driver

    def withdraw(self, pocket: int, n: int) -> int:
        if self.server is None:
            return self.fake.withdraw(pocket, n)
        return self.server.withdraw(pocket, n)

    def count(self, pocket: int) -> int:
        if self.server is None:
            return self.fake.pockets[pocket].count
        return self.server.count(pocket)

    async def drop_connection(self) -> None:
        if self.server is None:
            self.fake.drop_connection()
        else:
            await self.server.drop_connection()

    async def next_pocket_event(self, within: float = WAIT_S) -> PocketEvent:
        """The next pocket event; snapshots on the way are acknowledged."""
        async with asyncio.timeout(within):
            while True:
                event = await self.driver.next_event()
                if isinstance(event, PocketEvent):
                    return event
                await self.driver.acknowledge(event, EventAck.accept())

    async def drain(self, within: float = 0.3) -> list[CabinetEvent]:
        """Acknowledge whatever comes for `within` seconds (fake: what is queued)."""
        seen: list[CabinetEvent] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (left := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(self.driver.next_event(), left)
            except TimeoutError:
                break
            seen.append(event)
            await self.driver.acknowledge(event, EventAck.accept())
        return seen


@pytest.fixture(params=EVENT_CABINETS)
async def event_cabinet(request: pytest.FixtureRequest) -> AsyncIterator[EventCabinetRig]:
    kind: str = request.param
    server: Hl7CabinetServer | None = None
    driver: EventCabinetDriver
    if kind == FAKE:
        driver = FakeEventCabinet(
            "CAB1", [FakeEventPocket(n, g, c, cap) for n, g, c, cap in EVENT_POCKETS]
        )
    else:
        spec = Hl7CabinetSpec(
            "CAB1", [Hl7PocketSpec(n, g, c, cap) for n, g, c, cap in EVENT_POCKETS]
        )
        server = Hl7CabinetServer(spec, snapshot_interval_s=0.2, ack_timeout_s=0.3)
        await server.start()
        driver = Hl7CabinetDriver(
            "CAB1",
            server.address,
            cabinet_id="CAB1",
            pocket_gtins={n: g for n, g, _c, _cap in EVENT_POCKETS},
            timeout=2.0,
            snapshot_timeout=3.0,
        )
    await driver.connect()
    try:
        yield EventCabinetRig(kind, driver, server)
    finally:
        await driver.close()
        if server is not None:
            await server.stop()


def is_snapshot(event: CabinetEvent) -> bool:
    return isinstance(event, CabinetSnapshot)


# --- scanners ------------------------------------------------------------------------------
class ScannerRig:
    """A scanner driver and the bench: packs in front of the scanner, noise, the line."""

    def __init__(self, kind: str, driver: ScannerDriver, sim: ScannerSimulator | None) -> None:
        self.kind = kind
        self.driver = driver
        self.sim = sim
        self._port = sim.port if sim is not None else 0

    @property
    def fake(self) -> FakeScanner:
        assert isinstance(self.driver, FakeScanner)
        return self.driver

    async def scan(self, data: str) -> None:
        if self.sim is None:
            self.fake.scan(data)
        else:
            await self.sim.scan(data)

    async def noise(self, length: int = 40) -> None:
        if self.sim is None:
            self.fake.noise()
        else:
            await self.sim.garbage(length)

    async def wait_for_line(self) -> None:
        """Until the driver's end of the line is open (at once for the fake)."""
        sim = self.sim
        if sim is not None:

            async def line() -> bool:
                return sim.lines_connected > 0

            await until(line, "the driver opened its line")

    async def link_down(self) -> None:
        if self.sim is None:
            self.fake.link_up = False
        else:
            await self.sim.stop()
            self.sim = None

    async def link_up(self) -> None:
        if isinstance(self.driver, FakeScanner):
            self.fake.link_up = True
            return
        self.sim = ScannerSimulator(port=self._port, seed=2)
        await self.sim.start()
        await self.wait_for_line()

    async def stop(self) -> None:
        await self.driver.close()
        if self.sim is not None:
            await self.sim.stop()


@pytest.fixture(params=SCANNERS)
async def scanner(request: pytest.FixtureRequest) -> AsyncIterator[ScannerRig]:
    kind: str = request.param
    rig: ScannerRig
    if kind == FAKE:
        rig = ScannerRig(kind, FakeScanner("SC1"), None)
    else:
        sim = ScannerSimulator(seed=1)
        await sim.start()
        driver = SerialScannerDriver("SC1", f"socket://127.0.0.1:{sim.port}", reconnect_s=0.1)
        rig = ScannerRig(kind, driver, sim)
    await rig.driver.connect()
    await rig.wait_for_line()
    try:
        yield rig
    finally:
        await rig.stop()
