"""An in-memory packer: PackML states that settle at once, canisters and a job
that packs per read or when told (see `drivers.fakes`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.base import (
    CanisterStatus,
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    StopReason,
    UnitMode,
)
from drivers.fake_device import FakeDevice

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


class FakePacker(FakeDevice, PackerDriver):
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
