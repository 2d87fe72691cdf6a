"""Simulated ward dispensing cabinets behind one Modbus TCP server.

This module is "the device": it speaks register map version 1
(docs/cabinet-register-map.md) over a real socket and keeps its own copy of the
addresses, so it shares no code with the driver that talks to it. Each cabinet answers
on its own Modbus device (unit) id, like serial cabinets behind a TCP gateway.

Physics run in simulated time (`time_factor` x real time, or only through `advance()`
when `time_factor` is 0): nurses withdraw single doses from each pocket as a seeded
Poisson process. Registers are rendered from the model on every request, so a read
always sees one consistent snapshot of a cabinet.

Run alone: python -m simulators.cabinet_modbus --port 5020 --seed 1 --time-factor 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import random
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

log = logging.getLogger(__name__)

# --- register map version 1 (the device's own copy) -------------------------------------
MAP_VERSION = (1, 0)
HEADER_LENGTH = 32
POCKET_BASE = 32
POCKET_STRIDE = 16
R_MAP_MAJOR, R_MAP_MINOR, R_CABINET_ID, R_POCKET_COUNT = 0, 1, 2, 3
R_POCKET_BASE, R_POCKET_STRIDE, R_FW_MAJOR, R_FW_MINOR = 4, 5, 6, 7
R_HEARTBEAT, R_STATUS, R_TEMPERATURE = 8, 9, 10
R_ACK_SEQUENCE, R_ACK_RESULT = 16, 17
R_CMD_SEQUENCE, MAILBOX_LENGTH = 20, 4
P_NUMBER, P_ARTICLE, P_COUNT, P_MIN, P_MAX, P_CAPACITY = 0, 1, 3, 4, 5, 6
P_WITHDRAWALS, P_REFILLS, P_RETURNS, P_EMPTY_HITS = 8, 10, 12, 14

STATUS_DOOR_OPEN = 1
STATUS_FAULT = 2
STATUS_TEMPERATURE_ALARM = 4

CMD_REFILL = 1
CMD_SET_COUNT = 2

U32 = 2**32
SECONDS_PER_DAY = 86_400.0


class Result(enum.IntEnum):
    """Acknowledgement result codes of map version 1."""

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


@dataclass(frozen=True)
class CabinetSpec:
    """One cabinet; `cabinet_id` is also its Modbus device id (1..247)."""

    cabinet_id: int
    pockets: Sequence[PocketSpec]
    temperature_c: float = 21.0
    temperature_alarm_low_c: float = 15.0
    temperature_alarm_high_c: float = 25.0
    firmware: tuple[int, int] = (1, 0)
    map_version: tuple[int, int] = MAP_VERSION
    """Only the version registers change: lets tests meet a device of another map version."""


@dataclass(frozen=True)
class PocketState:
    """What a test may inspect about a pocket (plain Python, no Modbus)."""

    number: int
    count: int
    withdrawals_total: int
    refills_total: int
    returns_total: int
    empty_hits_total: int


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
    next_withdrawal_at: float = float("inf")

    def schedule_from(self, clock: float) -> None:
        """Draw the simulated time of the next nurse visit after `clock`."""
        rate = self.spec.daily_withdrawals / SECONDS_PER_DAY
        self.next_withdrawal_at = clock + self.rng.expovariate(rate) if rate > 0 else float("inf")

    def take(self, n: int) -> int:
        """A nurse takes up to n doses; a dose not there is an empty hit."""
        taken = min(n, self.count)
        self.count -= taken
        self.withdrawals_total = (self.withdrawals_total + taken) % U32
        self.empty_hits_total = (self.empty_hits_total + n - taken) % U32
        return taken


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
        if not (
            self.spec.temperature_alarm_low_c
            <= self.temperature_c
            <= self.spec.temperature_alarm_high_c
        ):
            bits |= STATUS_TEMPERATURE_ALARM
        return bits

    def advance(self, seconds: float) -> None:
        """Run the cabinet's own clock forward; a stalled controller does nothing."""
        if self.stalled or seconds <= 0:
            return
        target = self.clock + seconds
        for pocket in self.pockets:
            while pocket.next_withdrawal_at <= target:
                if not self.withdrawals_paused:
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
        tenths = max(-32768, min(32767, round(self.temperature_c * 10)))
        header[R_TEMPERATURE] = tenths & 0xFFFF
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
            block[P_WITHDRAWALS : P_WITHDRAWALS + 2] = _words(pocket.withdrawals_total)
            block[P_REFILLS : P_REFILLS + 2] = _words(pocket.refills_total)
            block[P_RETURNS : P_RETURNS + 2] = _words(pocket.returns_total)
            block[P_EMPTY_HITS : P_EMPTY_HITS + 2] = _words(pocket.empty_hits_total)
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
        if code not in (CMD_REFILL, CMD_SET_COUNT):
            return Result.UNKNOWN_COMMAND
        pocket = self.by_number.get(number)
        if pocket is None:
            return Result.UNKNOWN_POCKET
        if self.fault:
            return Result.DEVICE_FAULT
        if code == CMD_REFILL:
            if quantity == 0:
                return Result.BAD_QUANTITY
            if pocket.count + quantity > pocket.spec.capacity:
                return Result.OVER_CAPACITY
            pocket.count += quantity
            pocket.refills_total = (pocket.refills_total + quantity) % U32
            return Result.OK
        if quantity > pocket.spec.capacity:
            return Result.OVER_CAPACITY
        pocket.count = quantity  # a stocktake: counters stay as they are
        return Result.OK


def _words(value: int) -> list[int]:
    value %= U32
    return [value >> 16, value & 0xFFFF]


def _validate(specs: Sequence[CabinetSpec]) -> None:
    seen: set[int] = set()
    for cab in specs:
        if not 1 <= cab.cabinet_id <= 247:
            raise ValueError(f"cabinet_id must be 1..247, got {cab.cabinet_id!r}")
        if cab.cabinet_id in seen:
            raise ValueError(f"cabinet_id {cab.cabinet_id} is configured twice")
        seen.add(cab.cabinet_id)
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


# --- server -----------------------------------------------------------------------------
class CabinetSimulator:
    """One Modbus TCP server on loopback (or any host) simulating one or more cabinets."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cabinets: Sequence[CabinetSpec] = (),
        time_factor: float = 1.0,
        seed: int = 0,
        tick: float = 0.02,
    ) -> None:
        if not cabinets:
            raise ValueError("cabinets must name at least one CabinetSpec")
        if time_factor < 0:
            raise ValueError(f"time_factor must be >= 0, got {time_factor!r}")
        _validate(cabinets)
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
            self._cabinets[spec.cabinet_id] = _Cabinet(spec, pockets, spec.temperature_c)
        self._server: ModbusTcpServer | None = None
        self._physics: asyncio.Task[None] | None = None

    # -- lifecycle --
    @property
    def port(self) -> int:
        """The bound port (after start(); kept across stop()/start())."""
        return self._port

    @property
    def address(self) -> str:
        """The driver address of this server."""
        return f"tcp://{self.host}:{self._port}"

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
        if not sending or len(data) < 7:
            return data
        cab = self._cabinets.get(data[6])  # MBAP header: byte 6 is the unit id
        if cab is None:
            return data
        if cab.silent:
            return b""
        if cab.replies_to_drop > 0:
            cab.replies_to_drop -= 1
            return b""
        return data

    @staticmethod
    def _missing_unit_device() -> SimDevice:
        """Device id 0 answers for every unit id without a cabinet, as a gateway does."""

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
        """A nurse takes n doses now; returns how many were there to take."""
        return self._pocket(cabinet_id, pocket).take(n)

    def return_doses(self, cabinet_id: int, pocket: int, n: int = 1) -> None:
        """A nurse puts n unused doses back."""
        p = self._pocket(cabinet_id, pocket)
        p.count = min(p.spec.capacity, p.count + n)
        p.returns_total = (p.returns_total + n) % U32

    def set_counters(
        self,
        cabinet_id: int,
        pocket: int,
        *,
        withdrawals_total: int | None = None,
        refills_total: int | None = None,
        returns_total: int | None = None,
    ) -> None:
        """Preset counters, e.g. near 2**32 to exercise wraparound."""
        p = self._pocket(cabinet_id, pocket)
        if withdrawals_total is not None:
            p.withdrawals_total = withdrawals_total % U32
        if refills_total is not None:
            p.refills_total = refills_total % U32
        if returns_total is not None:
            p.returns_total = returns_total % U32

    def set_door(self, cabinet_id: int, open_: bool) -> None:
        self._cab(cabinet_id).door_open = open_

    def set_fault(self, cabinet_id: int, fault: bool) -> None:
        """A fault sets the status bit and makes the cabinet refuse commands."""
        self._cab(cabinet_id).fault = fault

    def set_temperature(self, cabinet_id: int, celsius: float) -> None:
        """Outside the spec's alarm band this also raises the temperature alarm bit."""
        self._cab(cabinet_id).temperature_c = celsius

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


async def _serve(host: str, port: int, seed: int, time_factor: float) -> None:
    sim = CabinetSimulator(host, port, default_cabinets(), time_factor=time_factor, seed=seed)
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
    parser = argparse.ArgumentParser(description="Modbus TCP ward cabinet simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-factor", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args.host, args.port, args.seed, args.time_factor))


if __name__ == "__main__":
    main()
