"""The PackML table: every allowed transition works, everything else is refused."""

from __future__ import annotations

import pytest

from drivers.base import PackMLCommand, PackMLState
from simulators.packml import (
    ACTING_STATES,
    SC,
    STATES,
    TRANSITIONS,
    InvalidCommand,
    PackMLMachine,
)

S = PackMLState
C = PackMLCommand

#: The expected model, written out independently of the implementation's table.
EXPECTED: dict[tuple[PackMLState, str], PackMLState] = {
    (S.COMPLETE, "Reset"): S.RESETTING,
    (S.STOPPED, "Reset"): S.RESETTING,
    (S.IDLE, "Start"): S.STARTING,
    (S.EXECUTE, "Hold"): S.HOLDING,
    (S.HELD, "Unhold"): S.UNHOLDING,
    (S.EXECUTE, "Suspend"): S.SUSPENDING,
    (S.SUSPENDED, "Unsuspend"): S.UNSUSPENDING,
    (S.ABORTED, "Clear"): S.CLEARING,
    (S.STARTING, SC): S.EXECUTE,
    (S.EXECUTE, SC): S.COMPLETING,
    (S.COMPLETING, SC): S.COMPLETE,
    (S.RESETTING, SC): S.IDLE,
    (S.HOLDING, SC): S.HELD,
    (S.UNHOLDING, SC): S.EXECUTE,
    (S.SUSPENDING, SC): S.SUSPENDED,
    (S.UNSUSPENDING, SC): S.EXECUTE,
    (S.STOPPING, SC): S.STOPPED,
    (S.ABORTING, SC): S.ABORTED,
    (S.CLEARING, SC): S.STOPPED,
}
for _state in STATES:
    if _state not in (S.STOPPING, S.STOPPED, S.ABORTING, S.ABORTED, S.CLEARING):
        EXPECTED[(_state, "Stop")] = S.STOPPING
    if _state not in (S.ABORTING, S.ABORTED):
        EXPECTED[(_state, "Abort")] = S.ABORTING

EVENTS = [c.value for c in PackMLCommand] + [SC]
ALL_PAIRS = [(state, event) for state in STATES for event in EVENTS]
INVALID = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def _fire(machine: PackMLMachine, event: str) -> PackMLState:
    if event == SC:
        return machine.state_complete()
    return machine.command(PackMLCommand(event))


def test_seventeen_states_with_standard_numbers() -> None:
    assert len(STATES) == 17
    assert [int(s) for s in STATES] == list(range(1, 18))
    assert S.UNDEFINED not in STATES


def test_table_matches_the_expected_model() -> None:
    table = {
        (source, t["trigger"]): t["dest"]
        for t in TRANSITIONS
        for source in (t["source"] if isinstance(t["source"], list) else [t["source"]])
    }
    assert table == EXPECTED


@pytest.mark.parametrize(("state", "event"), sorted(EXPECTED))
def test_valid_transition(state: PackMLState, event: str) -> None:
    machine = PackMLMachine(initial=state)
    assert _fire(machine, event) is EXPECTED[(state, event)]
    assert machine.state is EXPECTED[(state, event)]


@pytest.mark.parametrize(("state", "event"), INVALID)
def test_invalid_event_is_refused_and_state_kept(state: PackMLState, event: str) -> None:
    machine = PackMLMachine(initial=state)
    with pytest.raises(InvalidCommand) as info:
        _fire(machine, event)
    assert machine.state is state
    assert info.value.command == event
    assert info.value.state is state
    assert event in str(info.value) and state.name in str(info.value)


def test_acting_states_are_exactly_those_ending_by_sc_except_execute() -> None:
    ending_by_sc = {state for (state, event) in EXPECTED if event == SC}
    assert ending_by_sc - {S.EXECUTE} == ACTING_STATES
    for state in STATES:
        assert PackMLMachine(initial=state).is_acting is (state in ACTING_STATES)


@pytest.mark.parametrize("state", STATES)
def test_allowed_commands_match_table(state: PackMLState) -> None:
    expected = [c for c in PackMLCommand if (state, c.value) in EXPECTED]
    assert list(PackMLMachine(initial=state).allowed_commands()) == expected


def test_full_production_cycle() -> None:
    machine = PackMLMachine()
    assert machine.state is S.STOPPED
    steps: list[tuple[str, PackMLState]] = [
        ("Reset", S.RESETTING),
        (SC, S.IDLE),
        ("Start", S.STARTING),
        (SC, S.EXECUTE),
        ("Hold", S.HOLDING),
        (SC, S.HELD),
        ("Unhold", S.UNHOLDING),
        (SC, S.EXECUTE),
        ("Suspend", S.SUSPENDING),
        (SC, S.SUSPENDED),
        ("Unsuspend", S.UNSUSPENDING),
        (SC, S.EXECUTE),
        (SC, S.COMPLETING),
        (SC, S.COMPLETE),
        ("Reset", S.RESETTING),
        (SC, S.IDLE),
        ("Abort", S.ABORTING),
        (SC, S.ABORTED),
        ("Clear", S.CLEARING),
        (SC, S.STOPPED),
    ]
    for event, expected in steps:
        assert _fire(machine, event) is expected


def test_undefined_is_not_a_valid_initial_state() -> None:
    with pytest.raises(ValueError, match="initial state"):
        PackMLMachine(initial=S.UNDEFINED)


def test_command_accepts_plain_string_value() -> None:
    machine = PackMLMachine(initial=S.IDLE)
    assert machine.command("Start") is S.STARTING  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        machine.command("Launch")  # type: ignore[arg-type]
