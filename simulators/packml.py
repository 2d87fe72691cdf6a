"""The PackML state model (ISA-TR88.00.02 / OPC 30050) as a pure state machine.

No I/O and no timers: the owner (a simulator) decides when an acting state is done and
fires `state_complete()`. Keeping the table declarative makes it easy to check against
the standard and to test every transition.

The unit mode (Production, Maintenance, Manual) lives here too, with its two rules: the
mode changes only in Stopped, Idle or Aborted (`MODE_CHANGE_STATES`), and Start is
accepted only in Production (`PRODUCTION_ONLY_COMMANDS`), so outside Production the
machine never reaches Execute and dispenses nothing.

The state, command and unit mode numbers are defined here from the standard, not
imported from the drivers: a simulator shares only the documented constants with them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from transitions import Machine, MachineError

# The constants below are the simulators' own copy of what OPC 30050 / PackTags define
# (docs/packer-opcua.md quotes them). The drivers keep theirs in drivers/base.py; the two
# are compared only through the wire, never by sharing a class. They are IntEnum and
# StrEnum, so they compare equal to the drivers' members and to the plain numbers.


class PackMLState(enum.IntEnum):
    """PackML states, numbered as in ISA-TR88.00.02 / OPC 30050 (PackTags StateCurrent)."""

    UNDEFINED = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17


class PackMLCommand(enum.StrEnum):
    """PackML commands; the value is the OPC 30050 method name."""

    RESET = "Reset"
    START = "Start"
    STOP = "Stop"
    HOLD = "Hold"
    UNHOLD = "Unhold"
    SUSPEND = "Suspend"
    UNSUSPEND = "Unsuspend"
    ABORT = "Abort"
    CLEAR = "Clear"


class UnitMode(enum.IntEnum):
    """PackML unit modes (PackTags UnitMode / OPC 30050 UnitModeCurrent)."""

    PRODUCTION = 1
    MAINTENANCE = 2
    MANUAL = 3


S = PackMLState

#: Name of the "state complete" event; not a PackML command, the machine fires it itself.
SC = "SC"

#: The 17 states of the model (UNDEFINED is a wire value only, never a machine state).
STATES: tuple[PackMLState, ...] = tuple(s for s in PackMLState if s is not S.UNDEFINED)

#: Acting states that end on their own with SC after the machine has done its work.
ACTING_STATES: frozenset[PackMLState] = frozenset(
    {
        S.STARTING,
        S.COMPLETING,
        S.RESETTING,
        S.HOLDING,
        S.UNHOLDING,
        S.SUSPENDING,
        S.UNSUSPENDING,
        S.STOPPING,
        S.ABORTING,
        S.CLEARING,
    }
)

#: States a Stop command is refused in (stopping, stopped or on the abort branch).
_NO_STOP = frozenset({S.STOPPING, S.STOPPED, S.ABORTING, S.ABORTED, S.CLEARING})
#: States an Abort command is refused in.
_NO_ABORT = frozenset({S.ABORTING, S.ABORTED})


#: States in which the unit mode may change (PackML: a mode change needs a resting state).
MODE_CHANGE_STATES: frozenset[PackMLState] = frozenset({S.STOPPED, S.IDLE, S.ABORTED})
#: Commands accepted only in UnitMode.PRODUCTION: a job runs only in Production.
PRODUCTION_ONLY_COMMANDS: frozenset[PackMLCommand] = frozenset({PackMLCommand.START})


def _sources(excluded: frozenset[PackMLState]) -> list[PackMLState]:
    return [s for s in STATES if s not in excluded]


#: The declarative transition table: trigger, sources, destination.
TRANSITIONS: tuple[dict[str, Any], ...] = (
    # Commands
    {"trigger": PackMLCommand.RESET.value, "source": [S.COMPLETE, S.STOPPED], "dest": S.RESETTING},
    {"trigger": PackMLCommand.START.value, "source": S.IDLE, "dest": S.STARTING},
    {"trigger": PackMLCommand.STOP.value, "source": _sources(_NO_STOP), "dest": S.STOPPING},
    {"trigger": PackMLCommand.HOLD.value, "source": S.EXECUTE, "dest": S.HOLDING},
    {"trigger": PackMLCommand.UNHOLD.value, "source": S.HELD, "dest": S.UNHOLDING},
    {"trigger": PackMLCommand.SUSPEND.value, "source": S.EXECUTE, "dest": S.SUSPENDING},
    {"trigger": PackMLCommand.UNSUSPEND.value, "source": S.SUSPENDED, "dest": S.UNSUSPENDING},
    {"trigger": PackMLCommand.ABORT.value, "source": _sources(_NO_ABORT), "dest": S.ABORTING},
    {"trigger": PackMLCommand.CLEAR.value, "source": S.ABORTED, "dest": S.CLEARING},
    # State complete: acting states end; Execute ends when the work is done.
    {"trigger": SC, "source": S.STARTING, "dest": S.EXECUTE},
    {"trigger": SC, "source": S.EXECUTE, "dest": S.COMPLETING},
    {"trigger": SC, "source": S.COMPLETING, "dest": S.COMPLETE},
    {"trigger": SC, "source": S.RESETTING, "dest": S.IDLE},
    {"trigger": SC, "source": S.HOLDING, "dest": S.HELD},
    {"trigger": SC, "source": S.UNHOLDING, "dest": S.EXECUTE},
    {"trigger": SC, "source": S.SUSPENDING, "dest": S.SUSPENDED},
    {"trigger": SC, "source": S.UNSUSPENDING, "dest": S.EXECUTE},
    {"trigger": SC, "source": S.STOPPING, "dest": S.STOPPED},
    {"trigger": SC, "source": S.ABORTING, "dest": S.ABORTED},
    {"trigger": SC, "source": S.CLEARING, "dest": S.STOPPED},
)


class InvalidCommand(Exception):
    """A command (or SC) that the PackML model does not allow in the current state, or
    (with `unit_mode` set) not in the current unit mode."""

    def __init__(self, command: str, state: PackMLState, unit_mode: UnitMode | None = None) -> None:
        if unit_mode is None:
            text = f"command {command} is not allowed in state {state.name} ({int(state)})"
        else:
            text = (
                f"command {command} is not allowed in unit mode {unit_mode.name}"
                f" ({int(unit_mode)}), only in PRODUCTION (1)"
            )
        super().__init__(text)
        self.command = command
        self.state = state
        self.unit_mode = unit_mode


class InvalidModeChange(Exception):
    """A unit mode change requested outside Stopped, Idle and Aborted."""

    def __init__(self, requested: UnitMode, current: UnitMode, state: PackMLState) -> None:
        allowed = ", ".join(s.name for s in sorted(MODE_CHANGE_STATES))
        super().__init__(
            f"unit mode change to {requested.name} ({int(requested)}) is not allowed in"
            f" state {state.name} ({int(state)}); the mode is {current.name}"
            f" ({int(current)}) and changes only in {allowed}"
        )
        self.requested = requested
        self.current = current
        self.state = state


class PackMLMachine:
    """One unit's PackML state and unit mode; `state` is always a `PackMLState`."""

    state: PackMLState
    unit_mode: UnitMode

    def __init__(
        self, initial: PackMLState = S.STOPPED, unit_mode: UnitMode = UnitMode.PRODUCTION
    ) -> None:
        if initial not in STATES:
            raise ValueError(f"initial state {initial!r} is not a PackML state")
        initial = PackMLState(initial)  # the member of this module's enum, whoever passed it
        self.unit_mode = UnitMode(unit_mode)
        self._machine = Machine(
            model=self,
            states=list(STATES),
            transitions=[dict(t) for t in TRANSITIONS],
            initial=initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    def _fire(self, trigger: str) -> PackMLState:
        try:
            self.trigger(trigger)  # type: ignore[attr-defined]  # added by transitions
        except MachineError as exc:
            raise InvalidCommand(trigger, self.state) from exc
        return self.state

    def command(self, command: PackMLCommand) -> PackMLState:
        """Apply a PackML command; returns the new state or raises InvalidCommand."""
        command = PackMLCommand(command)
        if command in PRODUCTION_ONLY_COMMANDS and self.unit_mode is not UnitMode.PRODUCTION:
            raise InvalidCommand(command.value, self.state, self.unit_mode)
        return self._fire(command.value)

    def set_unit_mode(self, mode: UnitMode) -> UnitMode:
        """Change the unit mode; raises InvalidModeChange outside `MODE_CHANGE_STATES`.

        Requesting the current mode changes nothing and is accepted in every state, so
        a client may repeat a request safely. A value that is not a UnitMode raises
        ValueError.
        """
        requested = UnitMode(mode)
        if requested is self.unit_mode:
            return requested
        if self.state not in MODE_CHANGE_STATES:
            raise InvalidModeChange(requested, self.unit_mode, self.state)
        self.unit_mode = requested
        return requested

    def state_complete(self) -> PackMLState:
        """The current acting state (or Execute) has finished its work."""
        return self._fire(SC)

    def allowed_commands(self) -> Sequence[PackMLCommand]:
        """Commands the current state and unit mode accept, in PackMLCommand order."""
        production = self.unit_mode is UnitMode.PRODUCTION
        return [
            c
            for c in PackMLCommand
            if (production or c not in PRODUCTION_ONLY_COMMANDS)
            and self._machine.get_transitions(c.value, self.state)
        ]

    @property
    def mode_change_allowed(self) -> bool:
        """True in the states in which the unit mode may change."""
        return self.state in MODE_CHANGE_STATES

    @property
    def is_acting(self) -> bool:
        """True in states that finish by SC after a dwell."""
        return self.state in ACTING_STATES
