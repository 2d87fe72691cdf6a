"""Register map 2.0 codec, and the timing rules of a Modbus bus (RTU inter-frame
silence, reconnect backoff) checked on a fake clock without any socket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers import cabinet_registers as reg
from drivers.base import CabinetCommand, CabinetStatusBit, DriverError, PocketStatus
from drivers.modbus_cabinet import ModbusBus, ModbusRtuBus, rtu_frame_gap

# --- codec --------------------------------------------------------------------------------


def test_layout_constants_of_map_2() -> None:
    assert (reg.MAP_MAJOR, reg.MAP_MINOR) == (2, 0)
    assert (reg.POCKET_BASE, reg.POCKET_STRIDE) == (32, 24)
    assert reg.pocket_address(3) == 104
    assert reg.POCKET_COUNTED_DOWN_TOTAL + 2 <= reg.POCKET_STRIDE


def test_read_plan_header_plus_three_then_five_pockets() -> None:
    assert reg.read_plan(0) == [(0, 32)]
    assert reg.read_plan(3) == [(0, 104)]
    assert reg.read_plan(4) == [(0, 104), (104, 24)]
    assert reg.read_plan(8) == [(0, 104), (104, 120)]
    assert reg.read_plan(9) == [(0, 104), (104, 120), (224, 24)]
    for count in range(0, 60):
        plan = reg.read_plan(count)
        covered = [a for start, n in plan for a in range(start, start + n)]
        assert covered == list(range(reg.pocket_address(count)))
        assert all(n <= reg.MAX_READ_REGISTERS for _, n in plan)


def pocket_block(**values: int) -> list[int]:
    block = [0] * reg.POCKET_STRIDE
    for name, value in values.items():
        offset = getattr(reg, f"POCKET_{name.upper()}")
        if name.endswith("_total") or name == "article":
            block[offset : offset + 2] = reg.u32_to_words(value)
        else:
            block[offset] = value
    return block


def test_decode_pocket_reads_every_field() -> None:
    block = pocket_block(
        number=12,
        article=4_000_000_001,
        count=7,
        min_level=3,
        max_level=20,
        capacity=25,
        flags=reg.FLAG_LOCKED | 0x8000,  # a bit a later minor version may name
        withdrawals_total=1,
        refills_total=2,
        returns_total=3,
        empty_hits_total=4,
        waste_total=70_000,
        counted_up_total=2**32 - 1,
        counted_down_total=6,
    )
    assert reg.decode_pocket(block) == PocketStatus(
        number=12,
        article=4_000_000_001,
        count=7,
        min_level=3,
        max_level=20,
        withdrawals_total=1,
        refills_total=2,
        returns_total=3,
        capacity=25,
        locked=True,
        empty_hits_total=4,
        waste_total=70_000,
        counted_up_total=2**32 - 1,
        counted_down_total=6,
    )
    assert not reg.decode_pocket(pocket_block(flags=0x0002)).locked
    with pytest.raises(ValueError, match="pocket block needs 24 registers, got 16"):
        reg.decode_pocket(block[:16])


def test_decode_live_reads_the_alarm_band_and_excursions() -> None:
    header = [0] * reg.HEADER_LENGTH
    header[reg.REG_STATUS] = 4
    header[reg.REG_TEMPERATURE] = 0xFFEC  # -2.0
    header[reg.REG_TEMP_LOW_LIMIT] = 20
    header[reg.REG_TEMP_HIGH_LIMIT] = 80
    header[reg.REG_TEMP_EXCURSIONS_TOTAL : reg.REG_TEMP_EXCURSIONS_TOTAL + 2] = [1, 2]
    header[reg.REG_ACK_SEQUENCE] = 9
    live = reg.decode_live(header)
    assert live.status == CabinetStatusBit.TEMPERATURE_ALARM
    assert (live.temperature_c, live.temp_low_c, live.temp_high_c) == (-2.0, 2.0, 8.0)
    assert live.temp_excursions_total == 65_538
    assert live.ack_sequence == 9


def test_mailbox_carries_the_lock_commands() -> None:
    assert reg.encode_mailbox(5, CabinetCommand.LOCK_POCKET, 7, 0) == [5, 3, 7, 0]
    assert reg.encode_mailbox(6, CabinetCommand.UNLOCK_POCKET, 7, 0) == [6, 4, 7, 0]


# --- bus timing on a fake clock -----------------------------------------------------------


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@dataclass
class Reply:
    registers: list[int]

    def isError(self) -> bool:
        return False


class FakeClient:
    """Stands in for a pymodbus client: each request takes `duration` on the clock."""

    def __init__(self, clock: FakeClock, accept: bool, duration: float) -> None:
        self.clock = clock
        self.accept = accept
        self.duration = duration
        self.connected = False
        self.requests: list[float] = []

    async def connect(self) -> bool:
        self.connected = self.accept
        return self.accept

    def close(self) -> None:
        self.connected = False

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Reply:
        self.requests.append(self.clock.now)
        self.clock.now += self.duration
        return Reply([device_id] * count)


class FakeBus(ModbusBus):
    def __init__(self, frame_gap: float = 0.0, accept: bool = True) -> None:
        super().__init__("fake://line", timeout=1.0, retries=0, frame_gap=frame_gap)
        self.fake_clock = FakeClock()
        self.clock = self.fake_clock
        self.sleep = self.fake_clock.sleep
        self.accept = accept
        self.clients: list[FakeClient] = []

    def _create_client(self, attempt_timeout: float) -> Any:
        client = FakeClient(self.fake_clock, self.accept, duration=0.010)
        self.clients.append(client)
        return client


async def test_bus_keeps_the_gap_after_every_exchange() -> None:
    bus = FakeBus(frame_gap=0.002)
    clock = bus.fake_clock
    await bus.connect("test")

    assert await bus.read_holding(1, 0, 2, "test") == [1, 1]  # first request: no wait
    await bus.read_holding(2, 0, 2, "test")  # right after: waits the whole gap
    clock.now += 0.0015  # the line was quiet for a while already
    await bus.read_holding(3, 0, 2, "test")
    clock.now += 0.005  # quiet for longer than the gap: no wait
    await bus.read_holding(4, 0, 2, "test")

    assert clock.sleeps == [0.002, 0.0005]
    starts = bus.clients[0].requests
    ends = [start + 0.010 for start in starts]
    assert all(nxt - end >= 0.002 - 1e-9 for end, nxt in zip(ends, starts[1:], strict=False))


async def test_tcp_bus_keeps_no_gap() -> None:
    bus = FakeBus(frame_gap=0.0)
    await bus.connect("test")
    for unit in (1, 2, 3):
        await bus.read_holding(unit, 0, 1, "test")
    assert bus.fake_clock.sleeps == []


async def test_gap_also_follows_a_failed_exchange() -> None:
    bus = FakeBus(frame_gap=0.004)
    await bus.connect("test")
    client = bus.clients[0]

    async def silent(address: int, *, count: int, device_id: int) -> Reply:
        bus.fake_clock.now += 0.3
        raise TimeoutError

    client.read_holding_registers = silent  # type: ignore[method-assign]
    with pytest.raises(DriverError):
        await bus.read_holding(9, 0, 1, "test")
    assert bus.last_exchange_end == bus.fake_clock.now


def test_rtu_bus_gap_comes_from_its_baudrate() -> None:
    assert ModbusRtuBus("/dev/ttyUSB0", baudrate=9600).frame_gap == rtu_frame_gap(9600)
    assert ModbusRtuBus("/dev/ttyUSB0", baudrate=57600).frame_gap == 0.00175
    with pytest.raises(ValueError, match="baudrate"):
        rtu_frame_gap(0)


async def test_failed_connects_back_off_doubling_to_the_cap() -> None:
    bus = FakeBus(accept=False)
    clock = bus.fake_clock
    waits = []
    for _ in range(7):
        with pytest.raises(DriverError, match="cannot connect to fake://line"):
            await bus.connect("cab")
        waits.append(bus.retry_in)
        attempts = len(bus.clients)
        clock.now += bus.retry_in / 2
        with pytest.raises(DriverError, match=r"fake://line.*next attempt in \d+\.\d\d s"):
            await bus.connect("cab")  # inside the backoff: refused without a try
        assert len(bus.clients) == attempts
        clock.now += bus.retry_in
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    bus.accept = True
    await bus.connect("cab")
    assert bus.connected and bus.retry_in == 0
    bus.close()
    bus.accept = False
    with pytest.raises(DriverError):
        await bus.connect("cab")
    assert bus.retry_in == 0.5  # a success started the backoff over


async def test_backoff_message_names_the_seconds_left() -> None:
    bus = FakeBus(accept=False)
    with pytest.raises(DriverError):
        await bus.connect("cab")
    bus.fake_clock.now += 0.2
    with pytest.raises(DriverError, match=r"cab: cannot connect to fake://line: .* 0\.30 s"):
        await bus.connect("cab")


async def test_bus_closes_with_its_last_user() -> None:
    bus = FakeBus()
    await bus.connect("test")
    a, b = object(), object()
    bus.attach(a)
    bus.attach(b)
    bus.attach(a)
    assert bus.users == 2
    bus.detach(a)
    assert bus.connected
    bus.detach(b)
    assert not bus.connected
