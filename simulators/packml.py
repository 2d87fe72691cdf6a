"""The PackML state model (ISA-TR88.00.02 / OPC 30050) as a pure state machine.

No I/O and no timers: the owner (a simulator) decides when an acting state is done and
fires `state_complete()`. Keeping the table declarative makes it easy to check against
the standard and to test every transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transitions import Machine, MachineError

from drivers.base import PackMLCommand, PackMLState

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
    """A command (or SC) that the PackML model does not allow in the current state."""

    def __init__(self, command: str, state: PackMLState) -> None:
        super().__init__(f"command {command} is not allowed in state {state.name} ({int(state)})")
        self.command = command
        self.state = state


class PackMLMachine:
    """One unit's PackML state; `state` is always a `PackMLState`."""

    state: PackMLState

    def __init__(self, initial: PackMLState = S.STOPPED) -> None:
        if initial not in STATES:
            raise ValueError(f"initial state {initial!r} is not a PackML state")
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
        return self._fire(PackMLCommand(command).value)

    def state_complete(self) -> PackMLState:
        """The current acting state (or Execute) has finished its work."""
        return self._fire(SC)

    def allowed_commands(self) -> Sequence[PackMLCommand]:
        """Commands the current state accepts, in PackMLCommand order."""
        return [c for c in PackMLCommand if self._machine.get_transitions(c.value, self.state)]

    @property
    def is_acting(self) -> bool:
        """True in states that finish by SC after a dwell."""
        return self.state in ACTING_STATES
