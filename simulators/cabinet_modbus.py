"""Simulated ward dispensing cabinets behind one Modbus server, TCP or RTU.

This module is "the device": it speaks register map version 2
(docs/cabinet-register-map.md) over a real socket and keeps its own copy of the
addresses, so it shares no code with the driver that talks to it. Each cabinet answers
on its own Modbus device (unit) id: with transport "tcp" like serial cabinets behind a
TCP gateway; with transport "rtu" like cabinets on one RS-485 line, reached through a
serial device server in raw TCP mode (RTU frames on a TCP socket, which pyserial opens
as `socket://host:port`). On RTU a unit without a cabinet stays silent. With transport
"tls" it is Modbus/TCP Security: the same frames inside mutual TLS, where a client
without a certificate signed by the configured CA is refused in the handshake.

Physics run in simulated time (`time_factor` x real time, or only through `advance()`
when `time_factor` is 0): nurses withdraw single doses from each pocket as a seeded
Poisson process. Registers are rendered from the model on every request, so a read
always sees one consistent snapshot of a cabinet.

Run alone: python -m simulators.cabinet_modbus --port 5020 --seed 1 --time-factor 600
           (add --transport rtu for an RTU line on socket://host:port, or
           --transport tls --cert-file C --key-file K --ca-file CA for Modbus/TCP Security)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import random
import signal
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import (
    ModbusBaseServer,
    ModbusSerialServer,
    ModbusTcpServer,
    ModbusTlsServer,
)
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

log = logging.getLogger(__name__)

# --- register map version 2 (the device's own copy) -------------------------------------
MAP_VERSION = (2, 0)
HEADER_LENGTH = 32
POCKET_BASE = 32
POCKET_STRIDE = 24
R_MAP_MAJOR, R_MAP_MINOR, R_CABINET_ID, R_POCKET_COUNT = 0, 1, 2, 3
R_POCKET_BASE, R_POCKET_STRIDE, R_FW_MAJOR, R_FW_MINOR = 4, 5, 6, 7
R_HEARTBEAT, R_STATUS, R_TEMPERATURE = 8, 9, 10
R_TEMP_LOW, R_TEMP_HIGH, R_TEMP_EXCURSIONS = 11, 12, 13
R_ACK_SEQUENCE, R_ACK_RESULT = 16, 17
R_CMD_SEQUENCE, MAILBOX_LENGTH = 20, 4
P_NUMBER, P_ARTICLE, P_COUNT, P_MIN, P_MAX, P_CAPACITY, P_FLAGS = 0, 1, 3, 4, 5, 6, 7
P_WITHDRAWALS, P_REFILLS, P_RETURNS, P_EMPTY_HITS = 8, 10, 12, 14
P_WASTE, P_COUNTED_UP, P_COUNTED_DOWN = 16, 18, 20

STATUS_DOOR_OPEN = 1
STATUS_FAULT = 2
STATUS_TEMPERATURE_ALARM = 4
FLAG_LOCKED = 1

CMD_REFILL = 1
CMD_SET_COUNT = 2
CMD_LOCK_POCKET = 3
CMD_UNLOCK_POCKET = 4

ROOM_BAND = (15.0, 25.0)
ROOM_START = 21.0
COLD_BAND = (2.0, 8.0)
COLD_START = 5.0

U32 = 2**32
SECONDS_PER_DAY = 86_400.0


class Result(enum.IntEnum):
    """Acknowledgement result codes of map version 2 (unchanged since 1.0)."""

    OK = 0
    UNKNOWN_COMMAND = 1
    UNKNOWN_POCKET = 2
    BAD_QUANTITY = 3
    OVER_CAPACITY = 4
    DEVICE_FAULT = 5


# --- configuration ----------------------------------------------------------------------
@dataclass(frozen=True)
class PocketSpec:
    """One pocket as configured at power-on."""

    number: int
    article: int
    count: int
    min_level: int
    max_level: int
    capacity: int
    daily_withdrawals: float = 0.0
    waste_share: float = 0.0
    """Share of nurse visits in which the dose is dropped and discarded, not given."""


@dataclass(frozen=True)
class CabinetSpec:
    """One cabinet; `cabinet_id` is also its Modbus device id (1..247).

    The alarm band and the start temperature default to a room cabinet (15.0-25.0,
    21.0 degC), or with `cold` to a refrigerated one (2.0-8.0, 5.0 degC); a value given
    explicitly wins.
    """

    cabinet_id: int
    pockets: Sequence[PocketSpec]
    temperature_c: float | None = None
    temperature_alarm_low_c: float | None = None
    temperature_alarm_high_c: float | None = None
    firmware: tuple[int, int] = (1, 0)
    map_version: tuple[int, int] = MAP_VERSION
    """Only the version registers change: lets tests meet a device of another map version."""
    cold: bool = False

    @property
    def band(self) -> tuple[float, float]:
        """(low, high) of the temperature alarm band, degC, both inside."""
        low, high = COLD_BAND if self.cold else ROOM_BAND
        if self.temperature_alarm_low_c is not None:
            low = self.temperature_alarm_low_c
        if self.temperature_alarm_high_c is not None:
            high = self.temperature_alarm_high_c
        return low, high

    @property
    def start_temperature_c(self) -> float:
        if self.temperature_c is not None:
            return self.temperature_c
        return COLD_START if self.cold else ROOM_START


@dataclass(frozen=True)
class PocketState:
    """What a test may inspect about a pocket (plain Python, no Modbus)."""

    number: int
    count: int
    withdrawals_total: int
    refills_total: int
    returns_total: int
    empty_hits_total: int
    waste_total: int = 0
    counted_up_total: int = 0
    counted_down_total: int = 0
    locked: bool = False


# --- model ------------------------------------------------------------------------------
@dataclass
class _Pocket:
    spec: PocketSpec
    rng: random.Random
    count: int
    withdrawals_total: int = 0
    refills_total: int = 0
    returns_total: int = 0
    empty_hits_total: int = 0
    waste_total: int = 0
    counted_up_total: int = 0
    counted_down_total: int = 0
    locked: bool = False
    next_withdrawal_at: float = float("inf")

    def schedule_from(self, clock: float) -> None:
        """Draw the simulated time of the next nurse visit after `clock`."""
        rate = self.spec.daily_withdrawals / SECONDS_PER_DAY
        self.next_withdrawal_at = clock + self.rng.expovariate(rate) if rate > 0 else float("inf")

    def take(self, n: int) -> int:
        """A nurse takes up to n doses; a dose not there is an empty hit.

        A locked pocket does not open, so nothing is taken and no empty hit counted.
        """
        if self.locked:
            return 0
        taken = min(n, self.count)
        self.count -= taken
        self.withdrawals_total = (self.withdrawals_total + taken) % U32
        self.empty_hits_total = (self.empty_hits_total + n - taken) % U32
        return taken

    def give_back(self, n: int) -> int:
        """A nurse returns up to n unused doses; only what fits is taken back."""
        accepted = max(0, min(n, self.spec.capacity - self.count))
        self.count += accepted
        self.returns_total = (self.returns_total + accepted) % U32
        return accepted

    def discard(self, n: int) -> int:
        """Doses dropped or broken at the cabinet, up to what the pocket holds."""
        wasted = max(0, min(n, self.count))
        self.count -= wasted
        self.waste_total = (self.waste_total + wasted) % U32
        return wasted

    def stocktake(self, counted: int) -> None:
        """COUNT becomes what was counted; the difference goes to the counted counters,
        so that COUNT stays explained by counters alone."""
        difference = counted - self.count
        if difference > 0:
            self.counted_up_total = (self.counted_up_total + difference) % U32
        else:
            self.counted_down_total = (self.counted_down_total - difference) % U32
        self.count = counted


@dataclass
class _Cabinet:
    spec: CabinetSpec
    pockets: list[_Pocket]
    temperature_c: float
    clock: float = 0.0
    door_open: bool = False
    fault: bool = False
    stalled: bool = False
    withdrawals_paused: bool = False
    silent: bool = False
    replies_to_drop: int = 0
    mailbox: list[int] = field(default_factory=lambda: [0] * MAILBOX_LENGTH)
    ack_sequence: int = 0
    ack_result: int = Result.OK
    commands_executed: int = 0
    commands_repeated: int = 0
    temp_excursions_total: int = 0
    by_number: dict[int, _Pocket] = field(init=False)

    def __post_init__(self) -> None:
        self.by_number = {p.spec.number: p for p in self.pockets}

    @property
    def status(self) -> int:
        bits = 0
        if self.door_open:
            bits |= STATUS_DOOR_OPEN
        if self.fault:
            bits |= STATUS_FAULT
        if not self.in_band(self.temperature_c):
            bits |= STATUS_TEMPERATURE_ALARM
        return bits

    def in_band(self, celsius: float) -> bool:
        low, high = self.spec.band
        return low <= celsius <= high

    def set_temperature(self, celsius: float) -> None:
        """Each move from inside the band to outside counts one excursion."""
        if self.in_band(self.temperature_c) and not self.in_band(celsius):
            self.temp_excursions_total = (self.temp_excursions_total + 1) % U32
        self.temperature_c = celsius

    def advance(self, seconds: float) -> None:
        """Run the cabinet's own clock forward; a stalled controller does nothing."""
        if self.stalled or seconds <= 0:
            return
        target = self.clock + seconds
        for pocket in self.pockets:
            while pocket.next_withdrawal_at <= target:
                # A nurse does not try a locked pocket: it shows as locked on the screen.
                if not self.withdrawals_paused and not pocket.locked:
                    share = pocket.spec.waste_share
                    if share > 0 and pocket.rng.random() < share:
                        pocket.discard(1)
                    else:
                        pocket.take(1)
                pocket.schedule_from(pocket.next_withdrawal_at)
        self.clock = target

    def render(self, registers: list[int]) -> None:
        """Write the current state into the register image (address 0 = index 0)."""
        spec = self.spec
        header = [0] * HEADER_LENGTH
        header[R_MAP_MAJOR], header[R_MAP_MINOR] = spec.map_version
        header[R_CABINET_ID] = spec.cabinet_id
        header[R_POCKET_COUNT] = len(self.pockets)
        header[R_POCKET_BASE] = POCKET_BASE
        header[R_POCKET_STRIDE] = POCKET_STRIDE
        header[R_FW_MAJOR], header[R_FW_MINOR] = spec.firmware
        header[R_HEARTBEAT] = int(self.clock) & 0xFFFF
        header[R_STATUS] = self.status
        low, high = spec.band
        header[R_TEMPERATURE] = _tenths(self.temperature_c)
        header[R_TEMP_LOW] = _tenths(low)
        header[R_TEMP_HIGH] = _tenths(high)
        header[R_TEMP_EXCURSIONS : R_TEMP_EXCURSIONS + 2] = _words(self.temp_excursions_total)
        header[R_ACK_SEQUENCE] = self.ack_sequence
        header[R_ACK_RESULT] = self.ack_result
        header[R_CMD_SEQUENCE : R_CMD_SEQUENCE + MAILBOX_LENGTH] = self.mailbox
        registers[0:HEADER_LENGTH] = header
        for slot, pocket in enumerate(self.pockets):
            block = [0] * POCKET_STRIDE
            block[P_NUMBER] = pocket.spec.number
            block[P_ARTICLE : P_ARTICLE + 2] = _words(pocket.spec.article)
            block[P_COUNT] = pocket.count
            block[P_MIN] = pocket.spec.min_level
            block[P_MAX] = pocket.spec.max_level
            block[P_CAPACITY] = pocket.spec.capacity
            block[P_FLAGS] = FLAG_LOCKED if pocket.locked else 0
            block[P_WITHDRAWALS : P_WITHDRAWALS + 2] = _words(pocket.withdrawals_total)
            block[P_REFILLS : P_REFILLS + 2] = _words(pocket.refills_total)
            block[P_RETURNS : P_RETURNS + 2] = _words(pocket.returns_total)
            block[P_EMPTY_HITS : P_EMPTY_HITS + 2] = _words(pocket.empty_hits_total)
            block[P_WASTE : P_WASTE + 2] = _words(pocket.waste_total)
            block[P_COUNTED_UP : P_COUNTED_UP + 2] = _words(pocket.counted_up_total)
            block[P_COUNTED_DOWN : P_COUNTED_DOWN + 2] = _words(pocket.counted_down_total)
            start = POCKET_BASE + slot * POCKET_STRIDE
            registers[start : start + POCKET_STRIDE] = block

    def write_mailbox(self, values: Sequence[int]) -> None:
        """Latch a mailbox write; executed now unless the controller is stalled."""
        self.mailbox = list(values)
        if not self.stalled:
            self.scan_mailbox()

    def scan_mailbox(self) -> None:
        """Act on a new sequence once; the same sequence again is only re-acknowledged."""
        sequence, code, number, quantity = self.mailbox
        if sequence == 0:
            return
        if sequence == self.ack_sequence:
            self.commands_repeated += 1
            return
        self.ack_result = self._execute(code, number, quantity)
        self.ack_sequence = sequence
        self.commands_executed += 1

    def _execute(self, code: int, number: int, quantity: int) -> Result:
        if code not in (CMD_REFILL, CMD_SET_COUNT, CMD_LOCK_POCKET, CMD_UNLOCK_POCKET):
            return Result.UNKNOWN_COMMAND
        pocket = self.by_number.get(number)
        if pocket is None:
            return Result.UNKNOWN_POCKET
        if self.fault:
            return Result.DEVICE_FAULT
        if code == CMD_REFILL:  # also into a locked pocket: stock can go in, not out
            if quantity == 0:
                return Result.BAD_QUANTITY
            if pocket.count + quantity > pocket.spec.capacity:
                return Result.OVER_CAPACITY
            pocket.count += quantity
            pocket.refills_total = (pocket.refills_total + quantity) % U32
            return Result.OK
        if code == CMD_SET_COUNT:
            if quantity > pocket.spec.capacity:
                return Result.OVER_CAPACITY
            pocket.stocktake(quantity)
            return Result.OK
        if quantity != 0:
            return Result.BAD_QUANTITY
        pocket.locked = code == CMD_LOCK_POCKET  # locking a locked pocket is fine
        return Result.OK


def _words(value: int) -> list[int]:
    value %= U32
    return [value >> 16, value & 0xFFFF]


def _tenths(celsius: float) -> int:
    """int16 register in 0.1 degC, clamped to its range."""
    return max(-32768, min(32767, round(celsius * 10))) & 0xFFFF


def _validate(specs: Sequence[CabinetSpec]) -> None:
    seen: set[int] = set()
    for cab in specs:
        if not 1 <= cab.cabinet_id <= 247:
            raise ValueError(f"cabinet_id must be 1..247, got {cab.cabinet_id!r}")
        if cab.cabinet_id in seen:
            raise ValueError(f"cabinet_id {cab.cabinet_id} is configured twice")
        seen.add(cab.cabinet_id)
        low, high = cab.band
        if not -3276.8 <= low < high <= 3276.7:
            raise ValueError(
                f"cabinet {cab.cabinet_id}: alarm band {low}..{high} degC must be low < high"
                " and fit the int16 0.1 degC registers"
            )
        numbers: set[int] = set()
        for p in cab.pockets:
            where = f"cabinet {cab.cabinet_id} pocket {p.number}"
            if not 1 <= p.number <= 0xFFFF or p.number in numbers:
                raise ValueError(f"{where}: number must be unique and 1..65535")
            numbers.add(p.number)
            if not 0 <= p.article < U32:
                raise ValueError(f"{where}: article must fit in uint32, got {p.article!r}")
            if not 0 <= p.capacity <= 0xFFFF:
                raise ValueError(f"{where}: capacity must be 0..65535, got {p.capacity!r}")
            if not 0 <= p.count <= p.capacity:
                raise ValueError(f"{where}: count {p.count!r} must be 0..capacity")
            if not 0 <= p.min_level <= p.max_level <= p.capacity:
                raise ValueError(f"{where}: need 0 <= min_level <= max_level <= capacity")
            if p.daily_withdrawals < 0:
                raise ValueError(f"{where}: daily_withdrawals must be >= 0")
            if not 0 <= p.waste_share <= 1:
                raise ValueError(f"{where}: waste_share must be 0..1, got {p.waste_share!r}")


# --- server -----------------------------------------------------------------------------
Transport = Literal["tcp", "rtu", "tls"]


@dataclass(frozen=True)
class SimTls:
    """The cabinet's side of Modbus/TCP Security: its certificate and key (PEM), and
    the CA (PEM) a client's certificate must be signed by; a client without one is
    refused."""

    cert_file: str
    key_file: str
    ca_file: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.load_verify_locations(cafile=self.ca_file)
        return ctx


class CabinetSimulator:
    """One Modbus server on loopback (or any host) simulating one or more cabinets.

    `transport="tcp"` serves Modbus TCP (MBAP framing); `transport="rtu"` serves RTU
    frames on a TCP socket, as a serial device server in raw mode would, so a client
    opening `socket://host:port` talks Modbus RTU to the cabinets on that "line".
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cabinets: Sequence[CabinetSpec] = (),
        time_factor: float = 1.0,
        seed: int = 0,
        tick: float = 0.02,
        transport: Transport = "tcp",
        tls: SimTls | None = None,
    ) -> None:
        if not cabinets:
            raise ValueError("cabinets must name at least one CabinetSpec")
        if time_factor < 0:
            raise ValueError(f"time_factor must be >= 0, got {time_factor!r}")
        if transport not in ("tcp", "rtu", "tls"):
            raise ValueError(f"transport must be 'tcp', 'rtu' or 'tls', got {transport!r}")
        if (transport == "tls") != (tls is not None):
            raise ValueError("tls: give it exactly when transport is 'tls'")
        _validate(cabinets)
        self.transport: Transport = transport
        self.tls = tls
        self.host = host
        self._port = port
        self.time_factor = time_factor
        self._tick = tick
        self._cabinets: dict[int, _Cabinet] = {}
        for spec in cabinets:
            pockets = []
            for p in spec.pockets:
                # A string seed is hashed deterministically (unlike hash()), per pocket.
                pocket = _Pocket(p, random.Random(f"{seed}/{spec.cabinet_id}/{p.number}"), p.count)
                pocket.schedule_from(0.0)
                pockets.append(pocket)
            self._cabinets[spec.cabinet_id] = _Cabinet(spec, pockets, spec.start_temperature_c)
        self._server: ModbusBaseServer | None = None
        self._physics: asyncio.Task[None] | None = None
        self.frames: deque[tuple[float, bool, int]] = deque(maxlen=10_000)
        """(time.monotonic(), sending, unit id) of the frames on the wire: a request
        when (the first part of) it arrives, a reply when it is sent. Dropped replies
        are not listed. Lets tests check the line discipline of a client."""

    # -- lifecycle --
    @property
    def port(self) -> int:
        """The bound port (after start(); kept across stop()/start())."""
        return self._port

    @property
    def address(self) -> str:
        """The driver address of this server: tcp://host:port (also for TLS), or
        socket://host:port for RTU."""
        scheme = "socket" if self.transport == "rtu" else "tcp"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen; a restart after stop() reuses the port and keeps the cabinets' state."""
        if self._server is not None:
            return
        devices = [
            SimDevice(
                cab_id,
                simdata=self._register_layout(len(cab.pockets)),
                action=self._make_action(cab),
            )
            for cab_id, cab in self._cabinets.items()
        ]
        devices.append(self._missing_unit_device())
        server: ModbusBaseServer
        if self.transport == "rtu":
            # pymodbus 3.16 turns a socket:// serial server into a TCP listener that
            # speaks the RTU framer, which is what a serial device server does.
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=f"socket://{self.host}:{self._port}",
                parity="E",
                trace_packet=self._trace_packet,
            )
        elif self.tls is not None:
            server = ModbusTlsServer(
                devices,
                address=(self.host, self._port),
                sslctx=self.tls.server_context(),
                trace_packet=self._trace_packet,
            )
        else:
            server = ModbusTcpServer(
                devices, address=(self.host, self._port), trace_packet=self._trace_packet
            )
        await server.serve_forever(background=True)
        # pymodbus 3.16 keeps the asyncio.Server as .transport; port 0 is resolved here.
        self._port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self._server = server
        if self._physics is None:
            self._physics = asyncio.create_task(self._run_physics(), name="cabinet-physics")
        log.info("cabinet simulator listening on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Close the listener and all client connections; physics stop too."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        physics, self._physics = self._physics, None
        if physics is not None:
            physics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await physics
        # Let request handlers that were in flight finish their (now unsendable) replies.
        await asyncio.sleep(0)

    async def __aenter__(self) -> CabinetSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- physics --
    async def _run_physics(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            if self.time_factor > 0:
                self.advance((now - last) * self.time_factor)
            last = now

    def advance(self, seconds: float) -> None:
        """Move every cabinet's simulated clock forward by `seconds` (deterministic)."""
        for cab in self._cabinets.values():
            cab.advance(seconds)

    # -- Modbus plumbing --
    @staticmethod
    def _register_layout(pocket_count: int) -> list[SimData]:
        """Read-only everywhere except the mailbox; reads past the last pocket fail."""
        end = POCKET_BASE + pocket_count * POCKET_STRIDE
        layout = [
            SimData(0, count=R_CMD_SEQUENCE, datatype=DataType.REGISTERS, readonly=True),
            SimData(R_CMD_SEQUENCE, count=MAILBOX_LENGTH, datatype=DataType.REGISTERS),
        ]
        rest = R_CMD_SEQUENCE + MAILBOX_LENGTH
        layout.append(SimData(rest, count=end - rest, datatype=DataType.REGISTERS, readonly=True))
        return layout

    def _make_action(self, cab: _Cabinet) -> SimAction:
        """The hook pymodbus calls before it serves a request for this cabinet."""

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if values:
                # Only the mailbox is writable (pymodbus refuses read-only registers
                # before calling us), and only as one FC16 write of the whole mailbox.
                if address != R_CMD_SEQUENCE or count != MAILBOX_LENGTH:
                    return ExcCodes.ILLEGAL_ADDRESS
                if function_code != 16:
                    return ExcCodes.ILLEGAL_FUNCTION
                cab.write_mailbox([int(v) for v in values])
            # The layout starts at address 0, so registers[i] is address i.
            _ = start_address
            cab.render(registers)
            return None

        return action

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook on every frame; an empty reply is never sent (lost reply)."""
        rtu = self.transport == "rtu"
        unit_at = 0 if rtu else 6  # RTU: address byte first; TCP: byte 6 of the MBAP header
        if len(data) <= unit_at:
            return data
        unit = data[unit_at]
        cab = self._cabinets.get(unit)
        if sending:
            if cab is None and rtu:
                return b""  # no device at that address on the line: nobody answers
            if cab is not None and cab.silent:
                return b""
            if cab is not None and cab.replies_to_drop > 0:
                cab.replies_to_drop -= 1
                return b""
        self.frames.append((time.monotonic(), sending, unit))
        return data

    @staticmethod
    def _missing_unit_device() -> SimDevice:
        """Device id 0 answers for every unit id without a cabinet, as a gateway does
        (on RTU that answer is dropped again in `_trace_packet`)."""

        async def no_such_unit(*_args: object) -> ExcCodes:
            return ExcCodes.GATEWAY_NO_RESPONSE

        return SimDevice(
            0,
            simdata=[SimData(0, count=65536, datatype=DataType.REGISTERS)],
            action=no_such_unit,
        )

    # -- knobs and accessors for tests --
    def _cab(self, cabinet_id: int) -> _Cabinet:
        try:
            return self._cabinets[cabinet_id]
        except KeyError:
            raise KeyError(f"no cabinet with id {cabinet_id}") from None

    def _pocket(self, cabinet_id: int, number: int) -> _Pocket:
        try:
            return self._cab(cabinet_id).by_number[number]
        except KeyError:
            raise KeyError(f"cabinet {cabinet_id} has no pocket {number}") from None

    def pocket(self, cabinet_id: int, number: int) -> PocketState:
        """Current state of one pocket."""
        p = self._pocket(cabinet_id, number)
        return PocketState(
            p.spec.number,
            p.count,
            p.withdrawals_total,
            p.refills_total,
            p.returns_total,
            p.empty_hits_total,
            p.waste_total,
            p.counted_up_total,
            p.counted_down_total,
            p.locked,
        )

    def heartbeat(self, cabinet_id: int) -> int:
        return int(self._cab(cabinet_id).clock) & 0xFFFF

    def ack(self, cabinet_id: int) -> tuple[int, int]:
        """(last acknowledged sequence, result code)."""
        cab = self._cab(cabinet_id)
        return cab.ack_sequence, cab.ack_result

    def commands_executed(self, cabinet_id: int) -> int:
        return self._cab(cabinet_id).commands_executed

    def commands_repeated(self, cabinet_id: int) -> int:
        """Mailbox writes that repeated the acknowledged sequence (retries)."""
        return self._cab(cabinet_id).commands_repeated

    def withdraw(self, cabinet_id: int, pocket: int, n: int = 1) -> int:
        """A nurse takes n doses now; returns how many were there to take (0 from a
        locked pocket, which also counts no empty hit)."""
        return self._pocket(cabinet_id, pocket).take(n)

    def return_doses(self, cabinet_id: int, pocket: int, n: int = 1) -> int:
        """A nurse puts n unused doses back; returns how many fitted (and were counted)."""
        return self._pocket(cabinet_id, pocket).give_back(n)

    def waste(self, cabinet_id: int, pocket: int, n: int = 1) -> int:
        """A nurse discards n doses at the cabinet (dropped, broken); returns how many
        the pocket held to discard."""
        return self._pocket(cabinet_id, pocket).discard(n)

    def stocktake(self, cabinet_id: int, pocket: int, counted: int) -> None:
        """A count keyed in at the cabinet's keypad: COUNT becomes `counted` and the
        counted-up or counted-down counter moves by the difference."""
        p = self._pocket(cabinet_id, pocket)
        if not 0 <= counted <= p.spec.capacity:
            raise ValueError(f"counted must be 0..{p.spec.capacity}, got {counted!r}")
        p.stocktake(counted)

    def set_raw_count(self, cabinet_id: int, pocket: int, count: int) -> None:
        """Fault knob: a faulty cabinet reports COUNT = `count` (0..65535, above CAPACITY
        too) with no counter moving, breaking the rule that counters explain COUNT."""
        if not 0 <= count <= 0xFFFF:
            raise ValueError(f"count must fit the uint16 register, got {count!r}")
        self._pocket(cabinet_id, pocket).count = count

    def set_locked(self, cabinet_id: int, pocket: int, locked: bool) -> None:
        """Lock or unlock a pocket at the cabinet itself (not through the mailbox)."""
        self._pocket(cabinet_id, pocket).locked = locked

    def set_counters(
        self,
        cabinet_id: int,
        pocket: int,
        *,
        withdrawals_total: int | None = None,
        refills_total: int | None = None,
        returns_total: int | None = None,
        empty_hits_total: int | None = None,
        waste_total: int | None = None,
        counted_up_total: int | None = None,
        counted_down_total: int | None = None,
    ) -> None:
        """Preset counters, e.g. near 2**32 to exercise wraparound."""
        p = self._pocket(cabinet_id, pocket)
        for name, value in (
            ("withdrawals_total", withdrawals_total),
            ("refills_total", refills_total),
            ("returns_total", returns_total),
            ("empty_hits_total", empty_hits_total),
            ("waste_total", waste_total),
            ("counted_up_total", counted_up_total),
            ("counted_down_total", counted_down_total),
        ):
            if value is not None:
                setattr(p, name, value % U32)

    def set_door(self, cabinet_id: int, open_: bool) -> None:
        self._cab(cabinet_id).door_open = open_

    def set_fault(self, cabinet_id: int, fault: bool) -> None:
        """A fault sets the status bit and makes the cabinet refuse commands."""
        self._cab(cabinet_id).fault = fault

    def set_temperature(self, cabinet_id: int, celsius: float) -> None:
        """Outside the spec's alarm band this also raises the temperature alarm bit, and
        a move from inside the band to outside counts one excursion."""
        self._cab(cabinet_id).set_temperature(celsius)

    def temperature(self, cabinet_id: int) -> float:
        return self._cab(cabinet_id).temperature_c

    def temperature_excursions(self, cabinet_id: int) -> int:
        return self._cab(cabinet_id).temp_excursions_total

    def set_temperature_excursions(self, cabinet_id: int, total: int) -> None:
        """Preset the excursion counter, e.g. near 2**32 to exercise wraparound."""
        self._cab(cabinet_id).temp_excursions_total = total % U32

    def pause_withdrawals(self, cabinet_id: int | None = None, paused: bool = True) -> None:
        """Stop (or resume) the nurses; visits due while paused are skipped, not queued."""
        for cab in self._targets(cabinet_id):
            cab.withdrawals_paused = paused

    def set_stalled(self, cabinet_id: int, stalled: bool) -> None:
        """A hung cabinet controller: Modbus still answers, but the heartbeat stops and
        mailbox writes are only acknowledged once it runs again."""
        cab = self._cab(cabinet_id)
        cab.stalled = stalled
        if not stalled:
            cab.scan_mailbox()

    def drop_replies(self, cabinet_id: int, n: int = 1) -> None:
        """Act on the next n requests but lose their replies, so the client times out
        and pymodbus sends the same request again."""
        self._cab(cabinet_id).replies_to_drop += n

    def set_silent(self, cabinet_id: int, silent: bool) -> None:
        """Lose every reply (requests are still acted on) until switched off."""
        self._cab(cabinet_id).silent = silent

    def _targets(self, cabinet_id: int | None) -> list[_Cabinet]:
        if cabinet_id is None:
            return list(self._cabinets.values())
        return [self._cab(cabinet_id)]


# --- command line -----------------------------------------------------------------------
def default_cabinets() -> list[CabinetSpec]:
    """A small ward cabinet with common inpatient drugs (vendor article numbers)."""
    pockets = [
        PocketSpec(1, 100_101, 40, 10, 50, 60, daily_withdrawals=30),  # paracetamol 500 mg
        PocketSpec(2, 100_205, 25, 8, 30, 40, daily_withdrawals=12),  # ibuprofen 400 mg
        PocketSpec(3, 100_318, 18, 5, 20, 30, daily_withdrawals=6),  # oxycodone 5 mg
        PocketSpec(4, 100_422, 30, 10, 40, 50, daily_withdrawals=10),  # metoprolol 50 mg
        PocketSpec(5, 100_530, 20, 6, 25, 30, daily_withdrawals=5),  # furosemide 40 mg
        PocketSpec(6, 100_644, 12, 4, 15, 20, daily_withdrawals=3),  # enoxaparin 40 mg
    ]
    return [CabinetSpec(cabinet_id=1, pockets=pockets)]


async def _serve(
    host: str,
    port: int,
    seed: int,
    time_factor: float,
    transport: Transport,
    tls: SimTls | None = None,
) -> None:
    sim = CabinetSimulator(
        host,
        port,
        default_cabinets(),
        time_factor=time_factor,
        seed=seed,
        transport=transport,
        tls=tls,
    )
    await sim.start()
    print(f"cabinet simulator on {sim.address} (unit id 1), Ctrl-C to stop", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Modbus ward cabinet simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-factor", type=float, default=1.0)
    parser.add_argument(
        "--transport",
        choices=("tcp", "rtu", "tls"),
        default="tcp",
        help="tcp: Modbus TCP; rtu: Modbus RTU frames on the socket (socket://host:port);"
        " tls: Modbus/TCP Security (needs --cert-file, --key-file, --ca-file)",
    )
    parser.add_argument("--cert-file", help="tls: the cabinet's certificate (PEM)")
    parser.add_argument("--key-file", help="tls: the cabinet's private key (PEM)")
    parser.add_argument("--ca-file", help="tls: CA (PEM) that signs accepted client certificates")
    args = parser.parse_args(argv)
    tls = None
    if args.transport == "tls":
        missing = [o for o in ("cert_file", "key_file", "ca_file") if not getattr(args, o)]
        if missing:
            parser.error(
                "--transport tls needs " + ", ".join(f"--{m.replace('_', '-')}" for m in missing)
            )
        tls = SimTls(args.cert_file, args.key_file, args.ca_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args.host, args.port, args.seed, args.time_factor, args.transport, tls))


if __name__ == "__main__":
    main()
