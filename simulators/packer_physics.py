"""Physics of a simulated dose-packing machine, independent of the wire protocol.

The OPC UA packer (simulators/packer_opcua.py) and the serial packer
(simulators/packer_serial.py) are the same machine behind two protocols: canisters,
pouches, vision rejects, jams, holds and the PackML state model
(simulators/packml.py). Keeping that here, once, means a job behaves identically on
both, and a seed gives the same rejects and jams on either.

Nothing here does I/O. Refusals are raised as `Refusal` with a kind and the index of
the argument at fault; each protocol maps them to its own error codes. Time advances in
`run()`, which a simulator runs as a task; a protocol handler calls `wake()` after a
command so that a dwell restarts from the new state.

Good pouches drop into an output tray. With `output_capacity` > 0 a full tray suspends
the machine (StopReason OUTPUT_FULL) before its next pouch; an operator empties the tray
`output_empty_after_s` (scaled by `speed_factor`) after it became full, or a test calls
`empty_output()`. The machine does not resume by itself: a client sends Unsuspend, which
is refused while the tray is still full.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from simulators.packml import (
    InvalidModeChange,
    PackMLCommand,
    PackMLMachine,
    PackMLState,
    UnitMode,
)

#: Seconds after the tray became full until the simulated operator empties it (at speed 1).
DEFAULT_OUTPUT_EMPTY_AFTER_S = 30.0

#: A small layout for running a simulator by hand: (number, gtin, count, capacity).
DEFAULT_CANISTERS: tuple[tuple[int, str, int, int], ...] = (
    (1, "07350000010015", 400, 500),
    (2, "07350000010022", 400, 500),
    (3, "07350000010039", 300, 500),
    (4, "07350000010046", 300, 500),
    (5, "07350000010053", 200, 250),
    (6, "07350000010060", 200, 250),
)

_log = logging.getLogger(__name__)


class StopReason(enum.IntEnum):
    """Values of Admin.StopReason (0 = none), as docs/packer-opcua.md defines them; the
    simulators' own copy of the documented numbers."""

    NONE = 0
    OPERATOR = 1
    CANISTER_EMPTY = 101
    JAM = 102
    OUTPUT_FULL = 103
    VISION_FAULT = 104


#: Commands after which an operator reason is recorded unless another reason is set.
_STOPPING_COMMANDS = frozenset(
    {PackMLCommand.STOP, PackMLCommand.HOLD, PackMLCommand.SUSPEND, PackMLCommand.ABORT}
)
#: Commands that clear StopReason and StopCanister.
_CLEARING_COMMANDS = frozenset(
    {PackMLCommand.START, PackMLCommand.UNHOLD, PackMLCommand.UNSUSPEND, PackMLCommand.RESET}
)


class RefusalKind(enum.Enum):
    """Why the machine refused a request; protocols map this to their own codes."""

    INVALID_STATE = "invalid state"
    INVALID_ARGUMENT = "invalid argument"


class Refusal(Exception):
    """A refused request: nothing changed on the machine.

    `argument` is the index of the request argument at fault (LoadJob: 0 JobId,
    1 Pouches; RefillCanister: 0 Number, 1 Quantity; SetUnitMode: 0 RequestedMode),
    None when no single one is.
    """

    def __init__(self, kind: RefusalKind, message: str, argument: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.argument = argument


@dataclass
class Canister:
    number: int
    gtin: str
    count: int
    capacity: int
    dispensed_total: int = 0
    refilled_total: int = 0  # tablets ever put in by refill(); never decreases


@dataclass(frozen=True)
class PouchPlan:
    """One pouch of a job as the machine keeps it: items are (canister, quantity)."""

    seq: int
    label: str
    items: tuple[tuple[int, int], ...]


@dataclass
class JobProgress:
    job_id: str
    pouches: tuple[PouchPlan, ...]
    index: int = 0  # the pouch being packed; a rejected pouch is packed again
    good: int = 0
    rejected: int = 0
    # Tablets already in the open pouch, per canister (a canister ran dry mid-pouch).
    dropped: dict[int, int] = field(default_factory=dict)


class PackerPhysics:
    """One machine's state, canisters and job; deterministic for a given seed."""

    def __init__(
        self,
        name: str,
        canisters: Sequence[tuple[int, str, int, int]] = DEFAULT_CANISTERS,
        pouches_per_minute: float = 60.0,
        speed_factor: float = 1.0,
        reject_rate: float = 0.0,
        jam_rate: float = 0.0,
        seed: int = 0,
        transient_seconds: float = 0.05,
        initial_state: PackMLState = PackMLState.STOPPED,
        output_capacity: int = 0,
        output_empty_after_s: float | None = DEFAULT_OUTPUT_EMPTY_AFTER_S,
        unit_mode: UnitMode = UnitMode.PRODUCTION,
    ) -> None:
        if pouches_per_minute <= 0 or speed_factor <= 0:
            raise ValueError(
                f"pouches_per_minute ({pouches_per_minute}) and speed_factor ({speed_factor})"
                " must be > 0"
            )
        for label, rate in (("reject_rate", reject_rate), ("jam_rate", jam_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label}: {rate} is not a probability in [0, 1]")
        if transient_seconds < 0:
            raise ValueError(f"transient_seconds: {transient_seconds} must be >= 0")
        if isinstance(output_capacity, bool) or not isinstance(output_capacity, int):
            raise ValueError(f"output_capacity: {output_capacity!r} is not an integer")
        if output_capacity < 0:
            raise ValueError(f"output_capacity: {output_capacity} must be >= 0 (0 = unlimited)")
        if output_empty_after_s is not None and not output_empty_after_s > 0:
            raise ValueError(
                f"output_empty_after_s: {output_empty_after_s} must be > 0"
                " (None = nobody empties the tray)"
            )
        self.name = name
        self.pouches_per_minute = pouches_per_minute
        self.speed_factor = speed_factor
        self.reject_rate = reject_rate
        self.jam_rate = jam_rate
        self.transient_seconds = transient_seconds
        self.canisters: dict[int, Canister] = {}
        for number, gtin, count, capacity in canisters:
            if number in self.canisters:
                raise ValueError(f"canisters: number {number} appears twice")
            if not 0 <= count <= capacity:
                raise ValueError(f"canisters: canister {number} count {count} not in 0..{capacity}")
            self.canisters[number] = Canister(number, gtin, count, capacity)
        self.output_capacity = output_capacity
        self.output_empty_after_s = output_empty_after_s
        self.output_count = 0
        self._output_empty_at: float | None = None  # time.monotonic() the operator comes
        self.processed = 0
        self.defective = 0
        self.stop_reason = StopReason.NONE
        self.stop_canister = 0
        self.job: JobProgress | None = None
        self._rng = random.Random(seed)
        self._packml = PackMLMachine(initial_state, UnitMode(unit_mode))
        self._jam_next = False
        self._changed = asyncio.Event()
        #: Fault knob: PackerStatus fields the machine reports as these values instead of
        #: the real ones (a faulty controller board); empty = report the truth.
        self.misreport: dict[str, Any] = {}

    # -- views -----------------------------------------------------------------------

    @property
    def state(self) -> PackMLState:
        return self._packml.state

    @property
    def unit_mode(self) -> UnitMode:
        return self._packml.unit_mode

    @property
    def output_full(self) -> bool:
        """The output tray holds `output_capacity` pouches (never with capacity 0)."""
        return 0 < self.output_capacity <= self.output_count

    @property
    def machine_speed(self) -> float:
        """Pouches per minute in Execute, 0 otherwise (PackTags CurMachSpeed)."""
        if self._packml.state is PackMLState.EXECUTE:
            return float(self.pouches_per_minute * self.speed_factor)
        return 0.0

    def canister_counts(self) -> dict[int, int]:
        return {n: c.count for n, c in self.canisters.items()}

    def dispensed_totals(self) -> dict[int, int]:
        return {n: c.dispensed_total for n, c in self.canisters.items()}

    def refilled_totals(self) -> dict[int, int]:
        return {n: c.refilled_total for n, c in self.canisters.items()}

    def inject_jam(self) -> None:
        """The next pouch attempt jams (Hold with StopReason JAM)."""
        self._jam_next = True

    def empty_output(self) -> int:
        """An operator takes the pouches out of the tray; returns how many there were.

        Allowed in every state and changes no state: a machine suspended for
        OUTPUT_FULL stays Suspended until a client sends Unsuspend.
        """
        taken, self.output_count = self.output_count, 0
        self._output_empty_at = None
        _log.info("packer %s: output tray emptied (%d pouches)", self.name, taken)
        return taken

    def power_cycle(self, *, keep_counters: bool = True) -> None:
        """Fault knob: the machine loses power and comes back. The tablets stay in the
        canisters; the job, the output tray and any stop reason are gone, and it comes
        back Stopped. Its counters survive, as the contract says (docs/packer-opcua.md);
        `keep_counters=False` is a faulty machine whose counters restart at 0."""
        self.job = None
        self._packml = PackMLMachine(PackMLState.STOPPED, self._packml.unit_mode)
        self.stop_reason = StopReason.NONE
        self.stop_canister = 0
        self.output_count = 0
        self._output_empty_at = None
        self._jam_next = False
        if not keep_counters:
            self.processed = self.defective = 0
            for canister in self.canisters.values():
                canister.dispensed_total = canister.refilled_total = 0
        self.wake()

    # -- requests (each either changes the machine or raises Refusal) ----------------

    def command(self, command: PackMLCommand) -> None:
        command = PackMLCommand(command)
        state = self._packml.state
        mode = self._packml.unit_mode
        if command is PackMLCommand.START and mode is not UnitMode.PRODUCTION:
            raise Refusal(
                RefusalKind.INVALID_STATE,
                f"Start not allowed in unit mode {mode.name} ({int(mode)}):"
                " a job starts only in PRODUCTION (1)",
            )
        if command not in self._packml.allowed_commands():
            raise Refusal(
                RefusalKind.INVALID_STATE,
                f"{command.value} not allowed in state {state.name} ({int(state)})",
            )
        if command is PackMLCommand.START and self.job is None:
            raise Refusal(RefusalKind.INVALID_STATE, "Start needs a job: no job loaded")
        if command is PackMLCommand.UNSUSPEND and self.output_full:
            raise Refusal(
                RefusalKind.INVALID_STATE,
                f"Unsuspend not allowed: output tray full ({self.output_count} of"
                f" {self.output_capacity} pouches); empty it first",
            )
        self._packml.command(command)
        if command in _STOPPING_COMMANDS:
            if self.stop_reason is StopReason.NONE:
                self.stop_reason = StopReason.OPERATOR
        elif command in _CLEARING_COMMANDS:
            self.stop_reason = StopReason.NONE
            self.stop_canister = 0

    def set_unit_mode(self, mode: int) -> None:
        """PackML SetUnitMode: only in Stopped, Idle or Aborted (the current mode is
        accepted in any state and changes nothing)."""
        try:
            requested = UnitMode(mode)
        except ValueError:
            modes = ", ".join(f"{int(m)} {m.name}" for m in UnitMode)
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"RequestedMode: {mode} is not a unit mode ({modes})",
                0,
            ) from None
        before = self._packml.unit_mode
        try:
            self._packml.set_unit_mode(requested)
        except InvalidModeChange as exc:
            raise Refusal(RefusalKind.INVALID_STATE, str(exc)) from None
        if requested is not before:
            _log.info("packer %s: unit mode %s -> %s", self.name, before.name, requested.name)

    def check_load(self, job_id: str) -> None:
        """Whether a job with this id could be loaded now (state, loaded job, id)."""
        state = self._packml.state
        if state is not PackMLState.IDLE:
            raise Refusal(
                RefusalKind.INVALID_STATE,
                f"LoadJob: machine is in state {state.name} ({int(state)}), not IDLE",
            )
        if self.job is not None:
            raise Refusal(
                RefusalKind.INVALID_STATE, f"LoadJob: job {self.job.job_id!r} is already loaded"
            )
        if not job_id or not job_id.strip():
            raise Refusal(RefusalKind.INVALID_ARGUMENT, "JobId: must not be empty", 0)

    def load_job(self, job_id: str, pouches: Sequence[PouchPlan]) -> None:
        """Take a job whose pouches passed the protocol's own structural checks."""
        self.check_load(job_id)
        self.check_pouches(pouches)
        self.job = JobProgress(job_id, tuple(pouches))
        _log.info("packer %s loaded job %s with %d pouches", self.name, job_id, len(pouches))

    def check_pouches(self, pouches: Sequence[PouchPlan]) -> None:
        """What only the machine knows: its canisters, and the job as a whole."""

        def bad(message: str) -> Refusal:
            return Refusal(RefusalKind.INVALID_ARGUMENT, f"Pouches{message}", 1)

        if not pouches:
            raise bad(": a job needs at least one pouch")
        seen: set[int] = set()
        for i, pouch in enumerate(pouches):
            where = f"[{i}]"
            if pouch.seq in seen:
                raise bad(f"{where}.seq: duplicate sequence {pouch.seq}")
            seen.add(pouch.seq)
            if not pouch.items:
                raise bad(f"{where}.items: must be a non-empty list of [canister, quantity]")
            numbers: set[int] = set()
            for j, (number, qty) in enumerate(pouch.items):
                at = f"{where}.items[{j}]"
                canister = self.canisters.get(number)
                if canister is None:
                    raise bad(f"{at}: unknown canister {number}")
                if qty <= 0:
                    raise bad(f"{at}: quantity must be > 0, got {qty}")
                if qty > canister.capacity:
                    raise bad(
                        f"{at}: quantity {qty} exceeds capacity {canister.capacity}"
                        f" of canister {number}"
                    )
                if number in numbers:
                    raise bad(f"{at}: canister {number} appears twice in one pouch")
                numbers.add(number)

    def refill(self, number: int, quantity: int) -> None:
        if self._packml.state is PackMLState.EXECUTE:
            raise Refusal(
                RefusalKind.INVALID_STATE,
                "RefillCanister: machine is in EXECUTE; Hold, Suspend or Stop it first",
            )
        canister = self.canisters.get(number)
        if canister is None:
            raise Refusal(RefusalKind.INVALID_ARGUMENT, f"Number: unknown canister {number}", 0)
        if quantity <= 0:
            raise Refusal(RefusalKind.INVALID_ARGUMENT, f"Quantity: must be > 0, got {quantity}", 1)
        if canister.count + quantity > canister.capacity:
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"Quantity: {quantity} would overfill canister {number}"
                f" (count {canister.count}, capacity {canister.capacity})",
                1,
            )
        canister.count += quantity
        canister.refilled_total += quantity

    # -- time ------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed from outside: restart the current dwell from now."""
        self._changed.set()

    def delay(self) -> float | None:
        """How long the current state lasts before the machine acts, None = until told."""
        if self._packml.is_acting:
            return self.transient_seconds
        if self._packml.state is PackMLState.EXECUTE:
            return 60.0 / (self.pouches_per_minute * self.speed_factor)
        return None

    def operator_due(self, now: float | None = None) -> bool:
        """The operator's time to empty the full tray has come (at `now`, monotonic)."""
        due = self._output_empty_at
        return due is not None and (time.monotonic() if now is None else now) >= due

    async def run(self, on_step: Callable[[], Awaitable[None]] | None = None) -> None:
        """Advance acting states, pack pouches and let the operator empty the tray until
        cancelled; `wake()` restarts a dwell (not the operator's clock). `on_step` runs
        after every step (the OPC UA server publishes there)."""
        while True:
            self._changed.clear()
            delay = self.delay()
            dwell_end = None if delay is None else time.monotonic() + delay
            while True:
                ends = [t for t in (dwell_end, self._output_empty_at) if t is not None]
                try:
                    if not ends:
                        await self._changed.wait()
                    else:
                        async with asyncio.timeout(max(0.0, min(ends) - time.monotonic())):
                            await self._changed.wait()
                    break  # a command changed things before the dwell ended: start over
                except TimeoutError:
                    pass
                now = time.monotonic()
                if self.operator_due(now):
                    self.empty_output()
                    if on_step is not None:
                        await on_step()
                    continue  # the dwell keeps its end
                if dwell_end is not None and now >= dwell_end:
                    self.step()
                    if on_step is not None:
                        await on_step()
                    break

    def step(self) -> None:
        """The dwell of the current state is over: pack one pouch or finish the state."""
        if self._packml.state is PackMLState.EXECUTE:
            self._pack_one()
        else:
            self._complete_acting()

    def _complete_acting(self) -> None:
        new = self._packml.state_complete()
        if new is PackMLState.IDLE:  # end of Resetting: the machine forgets the job
            self.job = None
        elif new is PackMLState.EXECUTE and self._job_done():
            self._packml.state_complete()  # nothing left to pack: go Completing

    def _job_done(self) -> bool:
        return self.job is None or self.job.index >= len(self.job.pouches)

    def _internal_hold(self, reason: StopReason, canister: int = 0) -> None:
        self._packml.command(PackMLCommand.HOLD)
        self.stop_reason = reason
        self.stop_canister = canister
        _log.info("packer %s holds: %s %s", self.name, reason.name, canister or "")

    def _internal_suspend(self, reason: StopReason) -> None:
        self._packml.command(PackMLCommand.SUSPEND)
        self.stop_reason = reason
        self.stop_canister = 0
        _log.info("packer %s suspends: %s", self.name, reason.name)

    def _pack_one(self) -> None:
        """One pouch attempt: check the tray and stock, maybe jam, dispense, vision check."""
        job = self.job
        if job is None or self._job_done():
            self._packml.state_complete()
            return
        if self.output_full:
            self._internal_suspend(StopReason.OUTPUT_FULL)
            return
        pouch = job.pouches[job.index]
        jammed = self._rng.random() < self.jam_rate
        if jammed or self._jam_next:
            self._jam_next = False
            self._internal_hold(StopReason.JAM)
            return
        # Tablets drop until the pouch has its count or a canister runs dry: then the
        # machine holds with the pouch open, and goes on with it after the refill.
        for number, qty in pouch.items:
            canister = self.canisters[number]
            have = job.dropped.get(number, 0)
            take = min(qty - have, canister.count)
            if take:
                canister.count -= take
                canister.dispensed_total += take
                job.dropped[number] = have + take
            if have + take < qty:
                self._internal_hold(StopReason.CANISTER_EMPTY, number)
                return
        job.dropped.clear()
        self.processed += 1
        if self._rng.random() < self.reject_rate:
            self.defective += 1
            job.rejected += 1  # same pouch again next cycle; its tablets are waste
        else:
            job.good += 1
            job.index += 1
            self.output_count += 1
            if self.output_full and self._output_empty_at is None:
                after = self.output_empty_after_s
                if after is not None:
                    self._output_empty_at = time.monotonic() + after / self.speed_factor
            if self._job_done():
                self._packml.state_complete()
