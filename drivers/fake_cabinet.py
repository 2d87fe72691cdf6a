"""An in-memory polled cabinet: pockets with wrapping uint32 counters, a sequenced
command mailbox and a temperature (see `drivers.fakes`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.base import (
    CabinetCommand,
    CabinetDriver,
    CabinetStatus,
    CabinetStatusBit,
    PocketStatus,
)
from drivers.fake_device import COUNTER_MODULUS, FakeDevice


class _Result:
    """Mailbox acknowledgement results (register map 2, drivers.cabinet_registers)."""

    OK = 0
    UNKNOWN_COMMAND = 1
    UNKNOWN_POCKET = 2
    BAD_QUANTITY = 3
    OVER_CAPACITY = 4
    DEVICE_FAULT = 5


_RESULT_TEXT = {
    _Result.OK: "ok",
    _Result.UNKNOWN_COMMAND: "unknown command code",
    _Result.UNKNOWN_POCKET: "unknown pocket",
    _Result.BAD_QUANTITY: "bad quantity",
    _Result.OVER_CAPACITY: "quantity would exceed the pocket capacity",
    _Result.DEVICE_FAULT: "cabinet is in fault and refuses commands",
}


@dataclass
class FakePocket:
    """One pocket of a FakeCabinet; every field may be set by a test. Counters wrap at
    2**32 when changed through the nurse methods, as the registers do."""

    number: int
    article: int = 0
    count: int = 0
    min_level: int = 0
    max_level: int = 0
    capacity: int = 100
    withdrawals_total: int = 0
    refills_total: int = 0
    returns_total: int = 0
    empty_hits_total: int = 0
    waste_total: int = 0
    counted_up_total: int = 0
    counted_down_total: int = 0
    locked: bool = False

    def snapshot(self) -> PocketStatus:
        return PocketStatus(
            number=self.number,
            article=self.article,
            count=self.count,
            min_level=self.min_level,
            max_level=self.max_level,
            withdrawals_total=self.withdrawals_total,
            refills_total=self.refills_total,
            returns_total=self.returns_total,
            capacity=self.capacity,
            locked=self.locked,
            empty_hits_total=self.empty_hits_total,
            waste_total=self.waste_total,
            counted_up_total=self.counted_up_total,
            counted_down_total=self.counted_down_total,
        )


def _wrap(value: int) -> int:
    return value % COUNTER_MODULUS


class FakeCabinet(FakeDevice, CabinetDriver):
    """A polled ward cabinet (register map 2 on Modbus) in memory.

    The mailbox acts on a sequence number once: the same sequence as the last
    acknowledged one is only acknowledged again, with the earlier result (the device
    remembers only the last). Nurse actions (`withdraw`, `return_doses`, `waste`,
    `stocktake`) move the counters as the device does. A link failure does not end the
    session: the next call after `link_up` is True again works, as the Modbus driver
    re-opens its connection by itself. `stalled` makes commands go unacknowledged.
    """

    kind = "cabinet"
    link_loss_needs_connect = False

    def __init__(
        self,
        name: str = "CAB1",
        pockets: Iterable[FakePocket] = (),
        *,
        cabinet_id: int = 1,
        map_version: tuple[int, int] = (2, 0),
        temperature_c: float = 21.0,
        temp_low_c: float = 15.0,
        temp_high_c: float = 25.0,
    ) -> None:
        super().__init__(name)
        self.pockets: dict[int, FakePocket] = {}
        for pocket in pockets:
            if pocket.number in self.pockets:
                raise ValueError(f"pockets: number {pocket.number} appears twice")
            self.pockets[pocket.number] = pocket
        self.cabinet_id = cabinet_id
        self.map_version = map_version
        self.heartbeat = 0
        self.door_open = False
        self.fault = False
        self.temperature_c = temperature_c
        self.temp_low_c = temp_low_c
        self.temp_high_c = temp_high_c
        self.temp_excursions_total = 0
        self.last_ack_sequence = 0
        self.last_ack_result = _Result.OK
        self.commands_executed = 0
        self.commands_repeated = 0
        self.stalled = False
        """The cabinet's controller hangs: commands are written but never acknowledged."""

    # -- the interface ---------------------------------------------------------------

    async def connect(self) -> None:
        # As the Modbus driver: a failed connect leaves it open, the next call retries.
        self.calls.append(("connect", ()))
        self.connected = True
        queued = self._failures.get("connect")
        if queued:
            raise queued.pop(0)
        if not self.link_up:
            raise self._error("connect", "cannot connect (link down)")
        if self.map_version[0] != 2:
            self.connected = False
            raise self._error(
                "connect",
                f"device has register map version {self.map_version[0]}.{self.map_version[1]},"
                " driver supports 2.x",
            )

    async def close(self) -> None:
        await self._close()

    async def read_status(self) -> CabinetStatus:
        self._enter("read_status", ())
        return self.status()

    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        # As the real driver: the mailbox values are checked before any I/O.
        code = CabinetCommand(command)
        if not 1 <= sequence <= 0xFFFF:
            raise ValueError(f"sequence must be 1..65535, got {sequence!r}")
        for name, value in (("pocket", pocket), ("quantity", quantity)):
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"{name} must be 0..65535, got {value!r}")
        operation = f"send_command {code.name} sequence {sequence} pocket {pocket} x{quantity}"
        self._enter("send_command", (sequence, code, pocket, quantity), operation)
        if self.stalled:
            raise self._error(
                operation,
                f"not acknowledged (last acknowledged sequence {self.last_ack_sequence})",
            )
        if sequence == self.last_ack_sequence:
            self.commands_repeated += 1
        else:
            self.last_ack_result = self._execute(code, pocket, quantity)
            self.last_ack_sequence = sequence
            self.commands_executed += 1
        result = self.last_ack_result
        if result != _Result.OK:
            raise self._error(
                operation, f"refused: {_RESULT_TEXT.get(result, result)} (result code {result})"
            )

    # -- what a test does on the cabinet's side -----------------------------------------

    def status(self) -> CabinetStatus:
        """What read_status would return now, without recording a call."""
        bits = CabinetStatusBit(0)
        if self.door_open:
            bits |= CabinetStatusBit.DOOR_OPEN
        if self.fault:
            bits |= CabinetStatusBit.FAULT
        if not self._in_band(self.temperature_c):
            bits |= CabinetStatusBit.TEMPERATURE_ALARM
        return CabinetStatus(
            cabinet_id=self.cabinet_id,
            map_version=self.map_version[0],
            heartbeat=self.heartbeat,
            status=bits,
            temperature_c=self.temperature_c,
            last_ack_sequence=self.last_ack_sequence,
            pockets=tuple(p.snapshot() for _, p in sorted(self.pockets.items())),
            map_minor=self.map_version[1],
            temp_low_c=self.temp_low_c,
            temp_high_c=self.temp_high_c,
            temp_excursions_total=self.temp_excursions_total,
        )

    def set_temperature(self, celsius: float) -> None:
        """Each move from inside the alarm band to outside counts one excursion."""
        if self._in_band(self.temperature_c) and not self._in_band(celsius):
            self.temp_excursions_total = _wrap(self.temp_excursions_total + 1)
        self.temperature_c = celsius

    def withdraw(self, pocket: int, n: int = 1) -> int:
        """A nurse takes up to n doses (none from a locked pocket); a dose not there is
        an empty hit. Returns the doses taken."""
        p = self.pockets[pocket]
        if p.locked:
            return 0
        taken = min(n, p.count)
        p.count -= taken
        p.withdrawals_total = _wrap(p.withdrawals_total + taken)
        p.empty_hits_total = _wrap(p.empty_hits_total + n - taken)
        return taken

    def return_doses(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        accepted = max(0, min(n, p.capacity - p.count))
        p.count += accepted
        p.returns_total = _wrap(p.returns_total + accepted)
        return accepted

    def waste(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        wasted = max(0, min(n, p.count))
        p.count -= wasted
        p.waste_total = _wrap(p.waste_total + wasted)
        return wasted

    def stocktake(self, pocket: int, counted: int) -> None:
        self._set_count(self.pockets[pocket], counted)

    # -- internals ---------------------------------------------------------------------

    def _in_band(self, celsius: float) -> bool:
        return self.temp_low_c <= celsius <= self.temp_high_c

    @staticmethod
    def _set_count(p: FakePocket, counted: int) -> None:
        difference = counted - p.count
        if difference > 0:
            p.counted_up_total = _wrap(p.counted_up_total + difference)
        else:
            p.counted_down_total = _wrap(p.counted_down_total - difference)
        p.count = counted

    def _execute(self, code: CabinetCommand, number: int, quantity: int) -> int:
        if code is CabinetCommand.NONE:
            return _Result.UNKNOWN_COMMAND
        pocket = self.pockets.get(number)
        if pocket is None:
            return _Result.UNKNOWN_POCKET
        if self.fault:
            return _Result.DEVICE_FAULT
        if code is CabinetCommand.REFILL:  # also into a locked pocket
            if quantity == 0:
                return _Result.BAD_QUANTITY
            if pocket.count + quantity > pocket.capacity:
                return _Result.OVER_CAPACITY
            pocket.count += quantity
            pocket.refills_total = _wrap(pocket.refills_total + quantity)
            return _Result.OK
        if code is CabinetCommand.SET_COUNT:
            if quantity > pocket.capacity:
                return _Result.OVER_CAPACITY
            self._set_count(pocket, quantity)
            return _Result.OK
        if quantity != 0:
            return _Result.BAD_QUANTITY
        pocket.locked = code is CabinetCommand.LOCK_POCKET
        return _Result.OK
