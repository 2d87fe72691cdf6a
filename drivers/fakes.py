"""In-memory drivers: a fake packer, polled cabinet, event cabinet and scanner.

Each fake implements its interface from `drivers.base` completely, with no sockets, no
threads and no clock: what the device shows is plain attributes a test sets, and every
call through the interface is appended to `calls` as `(method, args)`. They refuse what
the real drivers refuse, with the same exception types (`DriverError`, and `ValueError`
where a real driver raises it before any I/O). tests/contract runs one behavioural suite
against each fake and against each real driver talking to its simulator, so a fake that
drifts from the real thing fails there.

How to drive them in a test::

    packer = FakePacker("P1", canisters=[(1, "07350000010015", 200, 300)])
    await packer.connect()
    await packer.command(PackMLCommand.RESET)          # Stopped -> Idle at once
    await packer.load_job(job)
    await packer.command(PackMLCommand.START)          # Execute
    packer.pack(2)                                     # two pouches (or: each read packs one)
    packer.canisters[1].count = 0                      # set any value directly
    packer.link_up = False                             # every call now raises DriverError
    packer.fail_next("read_status")                    # only the next read_status fails
    assert ("command", (PackMLCommand.START,)) in packer.calls

    cabinet = FakeCabinet("CAB1", pockets=[FakePocket(1, article=1001, count=10)])
    cabinet.withdraw(1, 3)                             # a nurse at the cabinet
    cabinet.temperature_c = 30.0                       # or cabinet.set_temperature(30.0)

    event_cabinet = FakeEventCabinet("CAB1", pockets=[FakeEventPocket(1, GTIN, 12, 20)])
    event_cabinet.withdraw(1)                          # queues a DISPENSE event

    scanner = FakeScanner("SC1")
    scanner.scan("0107359990000013...")                # read_scan returns it

Where the fakes are simpler than the machines (docs/architecture.md, "Fakes and the
contract suite"): acting PackML states (Starting, Holding, ...) complete at once, so a
command lands in the resting state; a packer in Execute packs `pouches_per_read` pouches
per `read_status` (0 = only when the test calls `pack`) instead of by the clock; an
event cabinet's `read_status` is its state now, not the last snapshot pushed; nothing
times out, so an unacknowledged event is redelivered only on AR 207 or a reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.base import (
    AckCode,
    CabinetCommand,
    CabinetDriver,
    CabinetEvent,
    CabinetSnapshot,
    CabinetStatus,
    CabinetStatusBit,
    CanisterStatus,
    DriverError,
    EventAck,
    EventCabinetDriver,
    ItemMasterEntry,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    PocketEvent,
    PocketEventKind,
    PocketStatus,
    ScannerDriver,
    StopReason,
    UnitMode,
)

__all__ = [
    "FakeCabinet",
    "FakeCanister",
    "FakeEventCabinet",
    "FakeEventPocket",
    "FakePacker",
    "FakePocket",
    "FakeScanner",
]

Call = tuple[str, tuple[object, ...]]
COUNTER_MODULUS = 2**32
"""Cabinet counters wrap here, as the registers do."""
RESEND_LATER = 207
"""HL7 table 0357 code on an AR that makes a cabinet server resend the event."""


class _Fake:
    """Recorded calls, a link that can go down, and injected failures."""

    name: str
    kind = "device"
    #: Whether a failure of the link ends the session (the caller must connect() again,
    #: as with OPC UA, a serial packer or MLLP), or the next call re-opens it (Modbus).
    link_loss_needs_connect = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[Call] = []
        self.connected = False
        self._link_up = True
        self._failures: dict[str, list[Exception]] = {}

    @property
    def link_up(self) -> bool:
        """False: the device is unreachable; connect() and every call raise DriverError."""
        return self._link_up

    @link_up.setter
    def link_up(self, up: bool) -> None:
        self._link_up = up
        self._link_changed()

    def _link_changed(self) -> None:
        """Hook for fakes with a call waiting on the device."""

    def calls_to(self, method: str) -> list[tuple[object, ...]]:
        """The arguments of every recorded call of `method`, in order."""
        return [args for name, args in self.calls if name == method]

    def fail_next(self, method: str, error: Exception | None = None) -> None:
        """The next call of `method` raises `error` (default: a DriverError) and does
        nothing else; several calls queue up."""
        if error is None:
            error = DriverError(f"{self.kind} {self.name} (fake): {method}: injected failure")
        self._failures.setdefault(method, []).append(error)

    def _error(self, operation: str, cause: str) -> DriverError:
        return DriverError(f"{self.kind} {self.name} (fake): {operation}: {cause}")

    def _enter(self, method: str, args: tuple[object, ...], operation: str | None = None) -> None:
        """Record the call, then raise what the device would: an injected failure, the
        link down, or no session."""
        self.calls.append((method, args))
        operation = operation or method
        queued = self._failures.get(method)
        if queued:
            raise queued.pop(0)
        if not self.connected:
            raise self._error(operation, "not connected")
        if not self.link_up:
            if self.link_loss_needs_connect:
                self.connected = False
            raise self._error(operation, "no answer (link down)")

    async def _connect(self) -> None:
        self.calls.append(("connect", ()))
        queued = self._failures.get("connect")
        if queued:
            raise queued.pop(0)
        if not self.link_up:
            self.connected = False
            raise self._error("connect", "cannot connect (link down)")
        self.connected = True

    async def _close(self) -> None:
        self.calls.append(("close", ()))
        self.connected = False


# --- packer ------------------------------------------------------------------------------
_S = PackMLState
_C = PackMLCommand
_NO_STOP = frozenset({_S.STOPPING, _S.STOPPED, _S.ABORTING, _S.ABORTED, _S.CLEARING})
_NO_ABORT = frozenset({_S.ABORTING, _S.ABORTED})
_ALL = frozenset(s for s in PackMLState if s is not _S.UNDEFINED)
#: Command -> (states it is accepted in, the acting state it starts).
_COMMANDS: dict[PackMLCommand, tuple[frozenset[PackMLState], PackMLState]] = {
    _C.RESET: (frozenset({_S.COMPLETE, _S.STOPPED}), _S.RESETTING),
    _C.START: (frozenset({_S.IDLE}), _S.STARTING),
    _C.STOP: (_ALL - _NO_STOP, _S.STOPPING),
    _C.HOLD: (frozenset({_S.EXECUTE}), _S.HOLDING),
    _C.UNHOLD: (frozenset({_S.HELD}), _S.UNHOLDING),
    _C.SUSPEND: (frozenset({_S.EXECUTE}), _S.SUSPENDING),
    _C.UNSUSPEND: (frozenset({_S.SUSPENDED}), _S.UNSUSPENDING),
    _C.ABORT: (_ALL - _NO_ABORT, _S.ABORTING),
    _C.CLEAR: (frozenset({_S.ABORTED}), _S.CLEARING),
}
#: Where an acting state ends (Starting, Unholding, Unsuspending end in Execute).
_SETTLES: dict[PackMLState, PackMLState] = {
    _S.RESETTING: _S.IDLE,
    _S.STARTING: _S.EXECUTE,
    _S.STOPPING: _S.STOPPED,
    _S.HOLDING: _S.HELD,
    _S.UNHOLDING: _S.EXECUTE,
    _S.SUSPENDING: _S.SUSPENDED,
    _S.UNSUSPENDING: _S.EXECUTE,
    _S.ABORTING: _S.ABORTED,
    _S.CLEARING: _S.STOPPED,
    _S.COMPLETING: _S.COMPLETE,
}
_STOPPING = frozenset({_C.STOP, _C.HOLD, _C.SUSPEND, _C.ABORT})
_CLEARING = frozenset({_C.START, _C.UNHOLD, _C.UNSUSPEND, _C.RESET})
_MODE_CHANGE_STATES = frozenset({_S.STOPPED, _S.IDLE, _S.ABORTED})


@dataclass
class FakeCanister:
    """One canister of a FakePacker; every field may be set by a test."""

    number: int
    gtin: str
    count: int
    capacity: int
    dispensed_total: int = 0
    refilled_total: int = 0


@dataclass
class FakeJob:
    """The job a FakePacker holds, and its progress."""

    spec: PackerJobSpec
    index: int = 0  # the pouch being packed; a rejected pouch is packed again
    good: int = 0
    rejected: int = 0
    dropped: dict[int, int] = field(default_factory=dict)  # tablets in the open pouch

    @property
    def done(self) -> bool:
        return self.index >= len(self.spec.pouches)


class FakePacker(_Fake, PackerDriver):
    """A dose-packing machine in memory, with the PackML model and the machine's own
    refusals (the rules of simulators/packer_physics.py, written again here because
    drivers never import simulators).

    `canisters` are (number, gtin, count, capacity). `reports_refilled_total` and
    `supports_unit_mode` make it a machine without RefilledTotal or SetUnitMode (a
    serial 1.0 device). Fault knobs: `jam_next`, `reject_next`, `output_capacity`,
    `link_up`, `fail_next`.
    """

    kind = "packer"

    def __init__(
        self,
        name: str = "P1",
        canisters: Iterable[tuple[int, str, int, int]] = (),
        *,
        state: PackMLState = PackMLState.STOPPED,
        unit_mode: UnitMode = UnitMode.PRODUCTION,
        pouches_per_minute: float = 60.0,
        pouches_per_read: int = 1,
        output_capacity: int = 0,
        reports_refilled_total: bool = True,
        supports_unit_mode: bool = True,
    ) -> None:
        super().__init__(name)
        self.canisters: dict[int, FakeCanister] = {}
        for number, gtin, count, capacity in canisters:
            if number in self.canisters:
                raise ValueError(f"canisters: number {number} appears twice")
            if not 0 <= count <= capacity:
                raise ValueError(f"canisters: canister {number} count {count} not in 0..{capacity}")
            self.canisters[number] = FakeCanister(number, gtin, count, capacity)
        self.state = PackMLState(state)
        self.unit_mode = UnitMode(unit_mode)
        self.pouches_per_minute = pouches_per_minute
        self.pouches_per_read = pouches_per_read
        """Pouches packed before each read_status in Execute: time passing between polls."""
        self.output_capacity = output_capacity
        self.output_count = 0
        self.processed_total = 0
        self.defective_total = 0
        self.stop_reason: int = StopReason.NONE
        self.stop_canister = 0
        self.job: FakeJob | None = None
        self.machine_speed: float | None = None
        """None: pouches_per_minute in Execute, else 0; a number: reported as it is."""
        self.jam_next = False
        """The next pouch attempt jams (Hold, StopReason JAM)."""
        self.reject_next = 0
        """This many next pouches fail the vision check (packed again, tablets wasted)."""
        self._reports_refilled_total = reports_refilled_total
        self.supports_unit_mode = supports_unit_mode

    # -- the interface ---------------------------------------------------------------

    async def connect(self) -> None:
        await self._connect()

    async def close(self) -> None:
        await self._close()

    async def read_status(self) -> PackerStatus:
        self._enter("read_status", ())
        if self.state is PackMLState.EXECUTE and self.pouches_per_read > 0:
            self.pack(self.pouches_per_read)
        return self.status()

    async def read_canisters(self) -> Sequence[CanisterStatus]:
        self._enter("read_canisters", ())
        return [
            CanisterStatus(
                number=c.number,
                gtin=c.gtin,
                count=c.count,
                dispensed_total=c.dispensed_total,
                capacity=c.capacity,
                refilled_total=c.refilled_total if self._reports_refilled_total else 0,
            )
            for c in sorted(self.canisters.values(), key=lambda c: c.number)
        ]

    async def load_job(self, job: PackerJobSpec) -> None:
        operation = f"load_job {job.job_id!r}"
        self._enter("load_job", (job,), operation)
        if self.state is not PackMLState.IDLE:
            raise self._refused(
                operation,
                f"LoadJob: machine is in state {self.state.name} ({int(self.state)}), not IDLE",
            )
        if self.job is not None:
            raise self._refused(
                operation, f"LoadJob: job {self.job.spec.job_id!r} is already loaded"
            )
        if not job.job_id.strip():
            raise self._refused(operation, "JobId: must not be empty", "INVALID_ARGUMENT")
        problem = self._pouch_problem(job)
        if problem:
            raise self._refused(operation, f"Pouches{problem}", "INVALID_ARGUMENT")
        self.job = FakeJob(job)

    async def command(self, command: PackMLCommand) -> None:
        command = PackMLCommand(command)
        operation = f"command {command.value}"
        self._enter("command", (command,), operation)
        sources, acting = _COMMANDS[command]
        if command is PackMLCommand.START and self.unit_mode is not UnitMode.PRODUCTION:
            raise self._refused(
                operation,
                f"Start not allowed in unit mode {self.unit_mode.name} ({int(self.unit_mode)}):"
                " a job starts only in PRODUCTION (1)",
            )
        if self.state not in sources:
            raise self._refused(
                operation,
                f"{command.value} not allowed in state {self.state.name} ({int(self.state)})",
            )
        if command is PackMLCommand.START and self.job is None:
            raise self._refused(operation, "Start needs a job: no job loaded")
        if command is PackMLCommand.UNSUSPEND and self.output_full:
            raise self._refused(
                operation,
                f"Unsuspend not allowed: output tray full ({self.output_count} of"
                f" {self.output_capacity} pouches); empty it first",
            )
        if command in _STOPPING:
            if self.stop_reason == StopReason.NONE:
                self.stop_reason = StopReason.OPERATOR
        elif command in _CLEARING:
            self.stop_reason = StopReason.NONE
            self.stop_canister = 0
        self._settle(acting)

    async def refill_canister(self, number: int, quantity: int) -> None:
        operation = f"refill_canister {number} +{quantity}"
        self._enter("refill_canister", (number, quantity), operation)
        if self.state is PackMLState.EXECUTE:
            raise self._refused(
                operation, "RefillCanister: machine is in EXECUTE; Hold, Suspend or Stop it first"
            )
        canister = self.canisters.get(number)
        if canister is None:
            raise self._refused(operation, f"Number: unknown canister {number}", "INVALID_ARGUMENT")
        if quantity <= 0:
            raise self._refused(
                operation, f"Quantity: must be > 0, got {quantity}", "INVALID_ARGUMENT"
            )
        if canister.count + quantity > canister.capacity:
            raise self._refused(
                operation,
                f"Quantity: {quantity} would overfill canister {number}"
                f" (count {canister.count}, capacity {canister.capacity})",
                "INVALID_ARGUMENT",
            )
        canister.count += quantity
        canister.refilled_total += quantity

    @property
    def reports_refilled_total(self) -> bool:
        return self._reports_refilled_total

    async def set_unit_mode(self, mode: UnitMode) -> None:
        try:
            label = f"{UnitMode(mode).name} ({int(mode)})"
        except ValueError:
            label = str(int(mode))
        operation = f"set_unit_mode {label}"
        self._enter("set_unit_mode", (mode,), operation)
        if not self.supports_unit_mode:
            raise self._error(operation, "the machine has no SetUnitMode")
        try:
            requested = UnitMode(mode)
        except ValueError:
            raise self._refused(
                operation, f"RequestedMode: {int(mode)} is not a unit mode", "INVALID_ARGUMENT"
            ) from None
        if requested is self.unit_mode:
            return
        if self.state not in _MODE_CHANGE_STATES:
            raise self._refused(
                operation,
                f"unit mode change to {requested.name} ({int(requested)}) is not allowed in"
                f" state {self.state.name} ({int(self.state)})",
            )
        self.unit_mode = requested

    # -- what a test does on the machine's side ---------------------------------------

    @property
    def output_full(self) -> bool:
        return 0 < self.output_capacity <= self.output_count

    def status(self) -> PackerStatus:
        """What read_status would return now, without recording a call or packing."""
        job = self.job
        speed = self.machine_speed
        if speed is None:
            speed = self.pouches_per_minute if self.state is PackMLState.EXECUTE else 0.0
        return PackerStatus(
            state=self.state,
            unit_mode=int(self.unit_mode),
            machine_speed=float(speed),
            processed_total=self.processed_total,
            defective_total=self.defective_total,
            stop_reason=int(self.stop_reason),
            job_id=job.spec.job_id if job else "",
            job_pouches_total=len(job.spec.pouches) if job else 0,
            job_pouches_good=job.good if job else 0,
            job_pouches_rejected=job.rejected if job else 0,
            stop_canister=self.stop_canister,
            output_count=self.output_count,
            output_capacity=self.output_capacity,
            output_full=self.output_full,
        )

    def pack(self, n: int = 1) -> int:
        """Up to `n` pouch attempts in Execute, as the machine makes them (tray check,
        jam, tablets per canister, vision check); stops early when the machine leaves
        Execute. Returns the pouches made (good and rejected)."""
        made = 0
        for _ in range(n):
            if self.state is not PackMLState.EXECUTE:
                break
            made += self._pack_one()
        return made

    def empty_output(self) -> int:
        """An operator empties the output tray; the state does not change."""
        taken, self.output_count = self.output_count, 0
        return taken

    def power_cycle(self, *, keep_counters: bool = True) -> None:
        """The machine loses power: back Stopped, without job, tray or stop reason."""
        self.job = None
        self.state = PackMLState.STOPPED
        self.stop_reason = StopReason.NONE
        self.stop_canister = 0
        self.output_count = 0
        self.jam_next = False
        if not keep_counters:
            self.processed_total = self.defective_total = 0
            for canister in self.canisters.values():
                canister.dispensed_total = canister.refilled_total = 0

    # -- internals ---------------------------------------------------------------------

    def _refused(self, operation: str, text: str, code: str = "INVALID_STATE") -> DriverError:
        return self._error(operation, f"refused: {text} ({code})")

    def _settle(self, acting: PackMLState) -> None:
        """An acting state ends at once; Execute with nothing left goes on to Complete."""
        state = _SETTLES[acting]
        if acting is PackMLState.RESETTING:
            self.job = None
        if state is PackMLState.EXECUTE and (self.job is None or self.job.done):
            state = PackMLState.COMPLETE
        self.state = state

    def _pouch_problem(self, job: PackerJobSpec) -> str:
        if not job.pouches:
            return ": a job needs at least one pouch"
        seen: set[int] = set()
        for i, pouch in enumerate(job.pouches):
            where = f"[{i}]"
            if pouch.sequence in seen:
                return f"{where}.seq: duplicate sequence {pouch.sequence}"
            seen.add(pouch.sequence)
            if not pouch.items:
                return f"{where}.items: must be a non-empty list of [canister, quantity]"
            numbers: set[int] = set()
            for j, item in enumerate(pouch.items):
                at = f"{where}.items[{j}]"
                canister = self.canisters.get(item.canister)
                if canister is None:
                    return f"{at}: unknown canister {item.canister}"
                if item.quantity <= 0:
                    return f"{at}: quantity must be > 0, got {item.quantity}"
                if item.quantity > canister.capacity:
                    return (
                        f"{at}: quantity {item.quantity} exceeds capacity {canister.capacity}"
                        f" of canister {item.canister}"
                    )
                if item.canister in numbers:
                    return f"{at}: canister {item.canister} appears twice in one pouch"
                numbers.add(item.canister)
        return ""

    def _hold(self, reason: StopReason, canister: int = 0) -> None:
        self.state = PackMLState.HELD
        self.stop_reason = reason
        self.stop_canister = canister

    def _pack_one(self) -> int:
        job = self.job
        if job is None or job.done:
            self.state = PackMLState.COMPLETE
            return 0
        if self.output_full:
            self.state = PackMLState.SUSPENDED
            self.stop_reason = StopReason.OUTPUT_FULL
            self.stop_canister = 0
            return 0
        if self.jam_next:
            self.jam_next = False
            self._hold(StopReason.JAM)
            return 0
        pouch = job.spec.pouches[job.index]
        for item in pouch.items:
            canister = self.canisters[item.canister]
            have = job.dropped.get(item.canister, 0)
            take = min(item.quantity - have, canister.count)
            if take:
                canister.count -= take
                canister.dispensed_total += take
                job.dropped[item.canister] = have + take
            if have + take < item.quantity:
                self._hold(StopReason.CANISTER_EMPTY, item.canister)
                return 0
        job.dropped.clear()
        self.processed_total += 1
        if self.reject_next > 0:
            self.reject_next -= 1
            self.defective_total += 1
            job.rejected += 1
        else:
            job.good += 1
            job.index += 1
            self.output_count += 1
            if job.done:
                self.state = PackMLState.COMPLETE
        return 1


# --- polled cabinet ----------------------------------------------------------------------
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


class FakeCabinet(_Fake, CabinetDriver):
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


# --- cabinet behind a cabinet server (pushed events) ------------------------------------
_NOTICE_ACTIONS = {
    CabinetCommand.REFILL: "REFILL",
    CabinetCommand.SET_COUNT: "SET_COUNT",
    CabinetCommand.LOCK_POCKET: "LOCK",
    CabinetCommand.UNLOCK_POCKET: "UNLOCK",
}


@dataclass
class FakeEventPocket:
    """One pocket of a FakeEventCabinet: what a cabinet server knows of it."""

    number: int
    gtin: str
    count: int
    capacity: int
    drawer: str = "A"
    locked: bool = False


class FakeEventCabinet(_Fake, EventCabinetDriver):
    """A cabinet behind its vendor's cabinet server (HL7 v2), in memory.

    Like the server, it delivers its messages one at a time and in order: `next_event`
    hands out the next one only when the one before was acknowledged. An AR with error
    code 207 puts the event back to be delivered again, with the same message id; so
    does a reconnect for every event not yet acknowledged. A snapshot is queued on each
    connect. Pocket notices (`send_command`) act on a notice number once, remembering
    every number; a REFILL notice queues a REFILL event carrying it. `pocket_gtins`
    plays the site file: a pocket not in it is refused before anything is sent.
    """

    kind = "cabinet"

    def __init__(
        self,
        name: str = "CAB1",
        pockets: Iterable[FakeEventPocket] = (),
        *,
        cabinet: str | None = None,
        pocket_gtins: dict[int, str] | None = None,
        cold: bool = False,
        snapshot_on_connect: bool = True,
    ) -> None:
        super().__init__(name)
        self.cabinet = cabinet or name
        self.pockets: dict[int, FakeEventPocket] = {}
        for pocket in pockets:
            if pocket.number in self.pockets:
                raise ValueError(f"pockets: number {pocket.number} appears twice")
            self.pockets[pocket.number] = pocket
        self.pocket_gtins = (
            dict(pocket_gtins)
            if pocket_gtins is not None
            else {n: p.gtin for n, p in self.pockets.items()}
        )
        self.temp_low_c, self.temp_high_c = (2.0, 8.0) if cold else (15.0, 25.0)
        self.temperature_c = (self.temp_low_c + self.temp_high_c) / 2
        self.temp_excursions_total = 0
        self.door_open = False
        self.fault = False
        self.heartbeat = 0
        self.last_notice = 0
        self.snapshot_on_connect = snapshot_on_connect
        self.outbox: list[CabinetEvent] = []
        """Events not yet acknowledged, in the order they are delivered."""
        self.acks: list[tuple[CabinetEvent, EventAck]] = []
        self.item_master: dict[str, str] = {}
        """GTIN -> name, as the server holds it after send_item_master."""
        self.refuse_item_master: str | None = None
        """Text of an AE the server answers to the next item masters (None = accept)."""
        self.notices: list[tuple[int, CabinetCommand, int, int]] = []
        """Notices acted on: (notice, command, pocket, quantity)."""
        self.notices_repeated = 0
        self._seen_notices: set[int] = set()
        self._in_flight: CabinetEvent | None = None
        self._lost: DriverError | None = None
        self._ids = 0
        self._changed = asyncio.Event()

    # -- the interface ---------------------------------------------------------------

    async def connect(self) -> None:
        await self._connect()
        self._in_flight = None
        self._lost = None
        if self.snapshot_on_connect:
            self.outbox = [e for e in self.outbox if not isinstance(e, CabinetSnapshot)]
            self.queue_snapshot()

    async def close(self) -> None:
        await self._close()
        self._lost = self._error("next_event", "connection closed")
        self._changed.set()

    async def next_event(self) -> CabinetEvent:
        self._enter("next_event", ())
        while True:
            if self._lost is not None:
                raise self._lost
            if not self.link_up:
                self.connected = False
                self._lost = self._error("next_event", "connection lost (link down)")
                raise self._lost
            if self._in_flight is None and self.outbox:
                self._in_flight = self.outbox[0]
                return self._in_flight
            self._changed.clear()
            await self._changed.wait()

    async def acknowledge(self, event: CabinetEvent, ack: EventAck) -> None:
        self._enter("acknowledge", (event, ack))
        self.acks.append((event, ack))
        if self._in_flight is not None and self._in_flight.message_id == event.message_id:
            self._in_flight = None
            resend = ack.code is AckCode.REJECT and ack.error_code == RESEND_LATER
            if not resend:
                self.outbox = [e for e in self.outbox if e.message_id != event.message_id]
            self._changed.set()

    async def read_status(self) -> CabinetStatus:
        self._enter("read_status", ())
        return self.status()

    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        code = CabinetCommand(command)
        what = f"{code.name} notice {sequence}"
        gtin = self.pocket_gtins.get(pocket)
        if gtin is None:
            self.calls.append(("send_command", (sequence, code, pocket, quantity)))
            raise DriverError(f"cabinet {self.name}: pocket {pocket} is not in the site file")
        action = _NOTICE_ACTIONS.get(code)
        if action is None:
            raise ValueError(f"command: {code!r} has no pocket notice")
        self._enter("send_command", (sequence, code, pocket, quantity), what)
        target = self.pockets.get(pocket)
        if target is None:
            raise self._refused(what, f"ZPK-3: no pocket {pocket}")
        if gtin != target.gtin:
            raise self._refused(what, f"RXD-2: {gtin} is not the product of pocket {pocket}")
        if sequence in self._seen_notices:
            self.notices_repeated += 1
            return
        if code is CabinetCommand.REFILL and target.count + quantity > target.capacity:
            raise self._refused(
                what, f"pocket {pocket} holds {target.count}, capacity {target.capacity}"
            )
        self._seen_notices.add(sequence)
        self.last_notice = sequence
        self.notices.append((sequence, code, pocket, quantity))
        if code is CabinetCommand.REFILL:
            target.count += quantity
            self._event(target, PocketEventKind.REFILL, quantity, notice=sequence)
        elif code is CabinetCommand.LOCK_POCKET:
            target.locked = True
        elif code is CabinetCommand.UNLOCK_POCKET:
            target.locked = False
        else:
            target.count = quantity

    async def send_item_master(self, items: Sequence[ItemMasterEntry], *, replace: bool) -> None:
        what = f"item master of {len(items)} item(s)"
        self._enter("send_item_master", (tuple(items), replace), what)
        if self.refuse_item_master is not None:
            raise self._refused(what, self.refuse_item_master)
        entries = {item.gtin: item.name for item in items}
        if replace:
            self.item_master = entries
        else:
            self.item_master.update(entries)

    # -- what a test does on the server's side ------------------------------------------

    def status(self) -> CabinetStatus:
        """The stock snapshot the server would send now."""
        bits = CabinetStatusBit(0)
        if self.door_open:
            bits |= CabinetStatusBit.DOOR_OPEN
        if self.fault:
            bits |= CabinetStatusBit.FAULT
        if not self.temp_low_c <= self.temperature_c <= self.temp_high_c:
            bits |= CabinetStatusBit.TEMPERATURE_ALARM
        return CabinetStatus(
            cabinet_id=0,
            map_version=0,
            heartbeat=self.heartbeat,
            status=bits,
            temperature_c=self.temperature_c,
            last_ack_sequence=self.last_notice,
            pockets=tuple(
                PocketStatus(n, 0, p.count, 0, 0, 0, 0, 0, locked=p.locked)
                for n, p in sorted(self.pockets.items())
            ),
            temp_low_c=self.temp_low_c,
            temp_high_c=self.temp_high_c,
            temp_excursions_total=self.temp_excursions_total,
        )

    def push(self, event: CabinetEvent) -> None:
        """Queue any event to be delivered."""
        self.outbox.append(event)
        self._changed.set()

    def queue_snapshot(self) -> CabinetSnapshot:
        self.heartbeat += 1
        snapshot = CabinetSnapshot(self._next_id(), self.cabinet, self.status())
        self.push(snapshot)
        return snapshot

    def withdraw(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        taken = 0 if p.locked else min(n, p.count)
        if taken:
            p.count -= taken
            self._event(p, PocketEventKind.DISPENSE, taken)
        return taken

    def waste(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        wasted = min(n, p.count)
        if wasted:
            p.count -= wasted
            self._event(p, PocketEventKind.WASTE, wasted)
        return wasted

    def return_doses(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        accepted = max(0, min(n, p.capacity - p.count))
        if accepted:
            p.count += accepted
            self._event(p, PocketEventKind.RETURN, accepted)
        return accepted

    def stocktake(self, pocket: int, counted: int) -> None:
        p = self.pockets[pocket]
        p.count = counted
        self._event(p, PocketEventKind.COUNT, counted)

    def refill_without_notice(self, pocket: int, n: int) -> None:
        p = self.pockets[pocket]
        p.count += n
        self._event(p, PocketEventKind.REFILL, n)

    def set_temperature(self, celsius: float) -> None:
        was_in = self.temp_low_c <= self.temperature_c <= self.temp_high_c
        self.temperature_c = celsius
        if was_in and not self.temp_low_c <= celsius <= self.temp_high_c:
            self.temp_excursions_total += 1

    def drop_connection(self) -> None:
        """The server drops the link: the waiting and every later next_event raise
        DriverError until connect()."""
        self.connected = False
        self._lost = self._error("next_event", "connection lost")
        self._changed.set()

    # -- internals ---------------------------------------------------------------------

    def _link_changed(self) -> None:
        self._changed.set()  # a waiting next_event sees the link go down

    def _refused(self, what: str, text: str) -> DriverError:
        return DriverError(f"cabinet {self.name}: {what} refused (AE): {text}")

    def _next_id(self) -> str:
        self._ids += 1
        return f"FAKE{self._ids:08d}"

    def _event(
        self,
        pocket: FakeEventPocket,
        kind: PocketEventKind,
        quantity: int,
        notice: int | None = None,
    ) -> None:
        self.push(
            PocketEvent(
                message_id=self._next_id(),
                cabinet=self.cabinet,
                kind=kind,
                drawer=pocket.drawer,
                pocket=pocket.number,
                gtin=pocket.gtin,
                quantity=quantity,
                count_after=pocket.count,
                notice=notice,
            )
        )


# --- scanner -----------------------------------------------------------------------------
class FakeScanner(_Fake, ScannerDriver):
    """A barcode scanner in memory: `scan(data)` queues a symbol for `read_scan`.

    As the serial scanner driver does, `read_scan` waits for a scan and never raises:
    not before connect, not after close and not while the line is down (scans made
    then are lost, counted in `lost_scans`); the line comes back by itself when
    `link_up` is True again. `noise()` is line noise the driver drops (`discarded`).
    """

    kind = "scanner"

    def __init__(self, name: str = "SC1") -> None:
        super().__init__(name)
        self.discarded = 0
        self.lost_scans = 0
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    async def connect(self) -> None:
        await self._connect()

    async def close(self) -> None:
        await self._close()

    async def read_scan(self) -> str:
        self.calls.append(("read_scan", ()))
        queued = self._failures.get("read_scan")
        if queued:
            raise queued.pop(0)
        return await self._queue.get()

    def scan(self, data: str) -> None:
        """A pack in front of the scanner; lost unless the line is open and up."""
        if not (self.connected and self.link_up):
            self.lost_scans += 1
            return
        self._queue.put_nowait(data)

    def noise(self) -> None:
        """Line noise: the driver drops it and counts it."""
        self.discarded += 1
