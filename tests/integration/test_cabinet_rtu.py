"""Cabinets on one Modbus RTU line: the driver against the cabinet simulator serving RTU
frames on a loopback socket (pyserial's socket://), as a serial device server would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import serial

from controller.config import ConfigError, parse_site
from controller.devices import BusRegistry, cabinet_driver, cabinet_drivers
from drivers import cabinet_registers as reg
from drivers.base import CabinetCommand, DriverError
from drivers.modbus_cabinet import ModbusCabinetDriver, ModbusRtuBus, rtu_frame_gap
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from tests.sites import site_dict

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]

POCKETS = [
    PocketSpec(1, 100_101, count=40, min_level=10, max_level=50, capacity=60),
    PocketSpec(2, 100_205, count=25, min_level=8, max_level=30, capacity=40),
]


@pytest.fixture
async def line() -> AsyncIterator[CabinetSimulator]:
    """Three cabinets on one RTU line (units 1, 2 and 5), manual clock."""
    simulator = CabinetSimulator(
        cabinets=[
            CabinetSpec(cabinet_id=1, pockets=POCKETS),
            CabinetSpec(cabinet_id=2, pockets=POCKETS[:1], temperature_c=19.5),
            CabinetSpec(cabinet_id=5, pockets=POCKETS, cold=True),
        ],
        time_factor=0,
        seed=2,
        transport="rtu",
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


class Cabinets:
    """Drivers on shared RTU buses, every one closed at the end of the test."""

    def __init__(self) -> None:
        self.drivers: list[ModbusCabinetDriver] = []
        self.buses: list[ModbusRtuBus] = []

    def bus(self, address: str, **kwargs: float) -> ModbusRtuBus:
        bus = ModbusRtuBus(address, **kwargs)  # type: ignore[arg-type]
        self.buses.append(bus)
        return bus

    async def driver(
        self, bus: ModbusRtuBus, unit_id: int, pocket_count: int, *, connect: bool = True
    ) -> ModbusCabinetDriver:
        driver = ModbusCabinetDriver(
            f"ward-{unit_id}", bus.address, unit_id, pocket_count, timeout=bus.timeout, bus=bus
        )
        self.drivers.append(driver)
        if connect:
            await driver.connect()
        return driver

    async def close(self) -> None:
        for driver in self.drivers:
            await driver.close()
        for bus in self.buses:
            bus.close()


@pytest.fixture
async def cabinets() -> AsyncIterator[Cabinets]:
    made = Cabinets()
    yield made
    await made.close()


def exchanges(frames: Iterable[tuple[float, bool, int]]) -> list[tuple[str, float, int]]:
    """The line as a list of ("request" | "reply", start time, unit): the parts of one
    request that arrive in several reads count once."""
    line: list[tuple[str, float, int]] = []
    for at, sending, unit in frames:
        kind = "reply" if sending else "request"
        if kind == "request" and line and line[-1][0] == "request" and line[-1][2] == unit:
            continue  # more bytes of the same request
        line.append((kind, at, unit))
    return line


# --- several cabinets on one line ---------------------------------------------------------


async def test_three_cabinets_share_one_line(line: CabinetSimulator, cabinets: Cabinets) -> None:
    assert line.address.startswith("socket://127.0.0.1:")
    bus = cabinets.bus(line.address, timeout=1.0)
    one = await cabinets.driver(bus, 1, 2)
    two = await cabinets.driver(bus, 2, 1)
    five = await cabinets.driver(bus, 5, 2)
    line.withdraw(2, 1, 4)
    line.frames.clear()

    results = await asyncio.gather(*(d.read_status() for d in (one, two, five) * 3))

    assert [s.cabinet_id for s in results] == [1, 2, 5] * 3
    assert [p.count for p in results[1].pockets] == [36]
    assert results[1].temperature_c == 19.5
    assert (results[2].temp_low_c, results[2].temp_high_c) == (2.0, 8.0)
    assert bus.users == 3
    # One master, one request on the line at a time: every request is answered (by
    # the unit it addressed) before the next one starts.
    seen = exchanges(line.frames)
    assert [kind for kind, _, _ in seen] == ["request", "reply"] * (len(seen) // 2)
    assert all(seen[i][2] == seen[i + 1][2] for i in range(0, len(seen), 2))
    assert {unit for _, _, unit in seen} == {1, 2, 5}


async def test_commands_on_one_line_reach_only_their_cabinet(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(line.address, timeout=1.0)
    one = await cabinets.driver(bus, 1, 2)
    five = await cabinets.driver(bus, 5, 2)

    await asyncio.gather(
        one.send_command(1, CabinetCommand.REFILL, 2, 5),
        five.send_command(1, CabinetCommand.LOCK_POCKET, 2, 0),
    )

    assert (line.pocket(1, 2).count, line.pocket(5, 2).count) == (30, 25)
    assert (line.pocket(1, 2).locked, line.pocket(5, 2).locked) == (False, True)


async def test_requests_keep_the_inter_frame_gap(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    """At 1200 baud 3.5 characters take 32 ms: long enough to see on loopback."""
    bus = cabinets.bus(line.address, baudrate=1200, timeout=1.0)
    assert bus.frame_gap == pytest.approx(3.5 * 11 / 1200)
    one = await cabinets.driver(bus, 1, 2)
    two = await cabinets.driver(bus, 2, 1)
    line.frames.clear()

    await asyncio.gather(one.read_status(), two.read_status(), one.read_status())

    seen = exchanges(line.frames)
    silences = [
        nxt[1] - prev[1]
        for prev, nxt in itertools.pairwise(seen)
        if prev[0] == "reply" and nxt[0] == "request"
    ]
    assert len(silences) >= 2
    assert min(silences) >= bus.frame_gap - 0.001


def test_frame_gap_follows_the_baudrate() -> None:
    assert rtu_frame_gap(9600) == pytest.approx(0.004010, abs=1e-6)
    assert rtu_frame_gap(19200) == pytest.approx(0.002005, abs=1e-6)
    assert rtu_frame_gap(38400) == 0.00175
    assert rtu_frame_gap(115200) == 0.00175


# --- failures on the line -----------------------------------------------------------------


async def test_unit_without_cabinet_stays_silent(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(line.address, timeout=0.4)
    one = await cabinets.driver(bus, 1, 2)

    started = time.monotonic()
    with pytest.raises(DriverError, match=r"unit 9 at socket://.*no answer from unit 9") as err:
        await cabinets.driver(bus, 9, 2)
    assert time.monotonic() - started < 0.8
    assert "exception" not in str(err.value)  # nothing answered, not even a gateway

    assert bus.connected  # one silent unit does not take the line down for the others
    assert (await one.read_status()).cabinet_id == 1


async def test_silent_cabinet_times_out_and_comes_back(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(line.address, timeout=0.4)
    one = await cabinets.driver(bus, 1, 2)
    two = await cabinets.driver(bus, 2, 1)
    line.set_silent(2, True)

    with pytest.raises(DriverError, match=r"ward-2.*no answer from unit 2"):
        await two.read_status()
    assert (await one.read_status()).cabinet_id == 1
    line.set_silent(2, False)
    assert (await two.read_status()).cabinet_id == 2


async def test_restarted_line_reconnects_after_the_backoff(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(line.address, timeout=0.5)
    one = await cabinets.driver(bus, 1, 2)
    two = await cabinets.driver(bus, 2, 1)
    generation = bus.generation

    await line.stop()
    with pytest.raises(DriverError, match="ward-1"):
        await one.read_status()
    with pytest.raises(DriverError, match=r"ward-1.*cannot connect"):
        await one.read_status()
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"ward-2.*cannot connect.*next attempt in \d"):
        await two.read_status()  # the other cabinet on the dead line fails at once
    assert time.monotonic() - started < 0.1
    assert 0 < bus.retry_in <= 0.5

    await line.start()
    with pytest.raises(DriverError, match="next attempt"):
        await two.read_status()  # still inside the backoff, though the line is back
    await asyncio.sleep(bus.retry_in)
    statuses = await asyncio.gather(one.read_status(), two.read_status())
    assert [s.cabinet_id for s in statuses] == [1, 2]
    assert bus.generation == generation + 1  # one reconnect for both cabinets
    assert bus.retry_in == 0


async def test_backoff_doubles_while_the_line_stays_dead(
    free_port: int, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(f"socket://127.0.0.1:{free_port}", timeout=0.5)
    bus.backoff_initial, bus.backoff_max = 0.05, 0.15
    driver = await cabinets.driver(bus, 1, 2, connect=False)
    waits = []
    for _ in range(4):
        with pytest.raises(DriverError, match=f"cannot connect to socket://127.0.0.1:{free_port}"):
            await driver.connect()
        waits.append(bus.retry_in)
        await asyncio.sleep(bus.retry_in)
    assert waits[0] <= 0.05 < waits[1] <= 0.1 < waits[2] <= 0.15
    assert waits[3] == pytest.approx(0.15, abs=0.03)


class SlowPort:
    """A pyserial port whose opening takes long (a device server that does not answer)."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.timeout: float | None = None
        self.write_timeout: float | None = None

    def close(self) -> None:
        self.closed.set()


async def test_opening_a_network_port_does_not_block_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, cabinets: Cabinets
) -> None:
    late = SlowPort()

    def slow_open(url: str, **_: object) -> SlowPort:
        time.sleep(0.4)
        if "unreachable" in url:
            raise serial.SerialException(f"could not open port {url}: timed out")
        return late

    monkeypatch.setattr(serial, "serial_for_url", slow_open)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        bus = cabinets.bus("socket://unreachable.example:4001", timeout=1.0)
        driver = await cabinets.driver(bus, 1, 2, connect=False)
        with pytest.raises(DriverError, match="cannot connect to socket://unreachable"):
            await driver.connect()
        assert ticks >= 20  # the loop kept running while the port was being opened

        slow = cabinets.bus("socket://slow.example:4001", timeout=0.2)
        driver = await cabinets.driver(slow, 1, 2, connect=False)
        with pytest.raises(DriverError, match="cannot connect"):
            await driver.connect()  # given up before the port opened
        assert await asyncio.to_thread(late.closed.wait, 2.0)  # closed once it did open
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_lost_reply_to_a_command_makes_the_retry_act_once(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(line.address, timeout=0.9, retries=2)  # 0.3 s per attempt
    driver = await cabinets.driver(bus, 5, 2)
    line.drop_replies(5, 1)  # the reply to the mailbox write is lost

    await driver.send_command(9, CabinetCommand.REFILL, 1, 7)

    assert line.commands_repeated(5) == 1  # the write really did cross the line twice
    assert line.commands_executed(5) == 1
    assert line.pocket(5, 1).count == 47
    assert line.pocket(5, 1).refills_total == 7


async def test_map_1_device_on_the_line_is_refused(cabinets: Cabinets) -> None:
    simulator = CabinetSimulator(
        cabinets=[CabinetSpec(cabinet_id=3, pockets=POCKETS, map_version=(1, 0))],
        time_factor=0,
        transport="rtu",
    )
    async with simulator:
        bus = cabinets.bus(simulator.address, timeout=1.0)
        with pytest.raises(DriverError, match=r"map version 1\.0, driver supports 2\.x"):
            await cabinets.driver(bus, 3, 2)
        assert not bus.connected  # nobody else used the line: it was closed again


async def test_the_line_closes_with_its_last_cabinet(
    line: CabinetSimulator, cabinets: Cabinets
) -> None:
    bus = cabinets.bus(line.address, timeout=1.0)
    one = await cabinets.driver(bus, 1, 2)
    two = await cabinets.driver(bus, 2, 1)

    await one.close()
    assert bus.connected and bus.users == 1
    assert (await two.read_status()).cabinet_id == 2
    started = time.monotonic()
    await two.close()
    assert not bus.connected
    assert time.monotonic() - started < 0.1  # pyserial's 0.3 s socket close is not awaited

    await one.connect()  # and the line opens again for whoever comes next
    assert (await one.read_status()).cabinet_id == 1


def test_rtu_bus_wants_a_serial_address() -> None:
    for address in ("tcp://127.0.0.1:502", "opc.tcp://x:4840", "socket://host", ""):
        with pytest.raises(ValueError, match="bad Modbus RTU address"):
            ModbusRtuBus(address)
    for address in ("/dev/ttyUSB0", "COM3", "socket://10.0.0.9:4001", "rfc2217://gw:2217"):
        assert ModbusRtuBus(address).address == address
    bus = ModbusRtuBus("/dev/ttyUSB0")
    assert (bus.baudrate, bus.parity, bus.bytesize, bus.stopbits) == (19200, "E", 8, 1)


# --- site configuration and the bus registry ---------------------------------------------


def site_with(*cabinets: dict[str, object]) -> dict[str, object]:
    raw = site_dict()
    template = raw["cabinets"][0]
    raw["cabinets"] = [
        {**template, "name": f"CAB{i + 1}", **cabinet} for i, cabinet in enumerate(cabinets)
    ]
    return raw


async def test_cabinets_on_one_line_share_one_bus_from_the_site_file(
    line: CabinetSimulator,
) -> None:
    rtu = {"driver": "modbus_rtu", "address": line.address}
    site = parse_site(
        site_with(
            {**rtu, "unit_id": 1},
            {**rtu, "unit_id": 5},
            {"address": "tcp://127.0.0.1:1"},
            {"address": "tcp://127.0.0.1:1", "unit_id": 2},
        )
    )
    assert site.cabinets[0].baudrate == 19200
    drivers = cabinet_drivers(site.cabinets)
    buses = [d.bus for d in drivers.values()]  # type: ignore[attr-defined]
    assert buses[0] is buses[1] and isinstance(buses[0], ModbusRtuBus)
    assert buses[2] is buses[3] and buses[2] is not buses[0]

    one, five = drivers["CAB1"], drivers["CAB2"]
    try:
        await asyncio.gather(one.connect(), five.connect())
        statuses = await asyncio.gather(one.read_status(), five.read_status())
        assert [s.cabinet_id for s in statuses] == [1, 5]
        await one.close()
        assert (await five.read_status()).cabinet_id == 5  # the line stays open for CAB2
    finally:
        await one.close()
        await five.close()
    assert not buses[0].connected


def test_registry_gives_one_bus_per_driver_and_address() -> None:
    site = parse_site(
        site_with(
            {"driver": "modbus_rtu", "address": "/dev/ttyUSB0", "unit_id": 1},
            {"driver": "modbus_rtu", "address": "/dev/ttyUSB0", "unit_id": 2},
            {"driver": "modbus_rtu", "address": "/dev/ttyUSB1", "baudrate": 9600},
        )
    )
    buses = BusRegistry()
    first, second, third = (buses.bus(c) for c in site.cabinets)
    assert first is second and first is not third and len(buses) == 2
    assert isinstance(third, ModbusRtuBus) and third.baudrate == 9600
    assert third.frame_gap == pytest.approx(3.5 * 11 / 9600)
    alone = [cabinet_driver(c) for c in site.cabinets[:2]]  # no registry: a bus each
    assert alone[0].bus is not alone[1].bus  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("cabinet", "message"),
    [
        ({"address": "socket://127.0.0.1:5020"}, "'socket://127.0.0.1:5020' must be a tcp://"),
        ({"driver": "modbus_rtu", "address": "tcp://127.0.0.1:502"}, "'tcp://127.0.0.1:502'"),
        ({"driver": "modbus_rtu", "address": "socket://gw"}, "must be socket://host:port"),
        ({"driver": "modbus_rtu", "address": "COM3", "baudrate": 0}, "baudrate"),
        ({"driver": "modbus_ascii", "address": "COM3"}, "driver"),
    ],
)
def test_bad_cabinet_lines_are_refused_naming_field_and_value(
    cabinet: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match="cabinets") as err:
        parse_site(site_with(cabinet))
    assert message in str(err.value)


def test_cabinets_on_one_line_need_distinct_units_and_one_baudrate() -> None:
    rtu = {"driver": "modbus_rtu", "address": "rfc2217://gw.ward:4001"}
    with pytest.raises(ConfigError, match=r"CAB2\.unit_id: 3 is also the unit id of cabinet CAB1"):
        parse_site(site_with({**rtu, "unit_id": 3}, {**rtu, "unit_id": 3}))
    with pytest.raises(
        ConfigError, match=r"CAB2\.baudrate: 9600 differs from 19200 of cabinet CAB1"
    ):
        parse_site(site_with({**rtu, "unit_id": 1}, {**rtu, "unit_id": 2, "baudrate": 9600}))
    # The same unit id on another line, or at a TCP address, is fine.
    parse_site(
        site_with(
            {**rtu, "unit_id": 3},
            {"driver": "modbus_rtu", "address": "/dev/ttyUSB0", "unit_id": 3},
            {"address": "tcp://127.0.0.1:1", "unit_id": 3},
        )
    )


# --- the simulator as a program -----------------------------------------------------------


async def test_simulator_serves_rtu_from_the_command_line(
    free_port: int, cabinets: Cabinets
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.cabinet_modbus",
        "--port",
        str(free_port),
        "--transport",
        "rtu",
        "--time-factor",
        "0",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
        assert f"socket://127.0.0.1:{free_port}" in line.decode()
        bus = cabinets.bus(f"socket://127.0.0.1:{free_port}", timeout=1.0)
        driver = await cabinets.driver(bus, 1, 6)
        status = await driver.read_status()
        assert status.cabinet_id == 1 and len(status.pockets) == 6
        assert status.map_version == reg.MAP_MAJOR
        await driver.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
