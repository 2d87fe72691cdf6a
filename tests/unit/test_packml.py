"""The PackML table: every allowed transition works, everything else is refused."""

from __future__ import annotations

import pytest

from simulators.packml import (
    ACTING_STATES,
    MODE_CHANGE_STATES,
    SC,
    STATES,
    TRANSITIONS,
    InvalidCommand,
    InvalidModeChange,
    PackMLCommand,
    PackMLMachine,
    PackMLState,
    UnitMode,
)

S = PackMLState
C = PackMLCommand
M = UnitMode

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


# -- unit modes ---------------------------------------------------------------------


def test_unit_modes_have_the_packml_numbers() -> None:
    assert [(m.name, int(m)) for m in UnitMode] == [
        ("PRODUCTION", 1),
        ("MAINTENANCE", 2),
        ("MANUAL", 3),
    ]
    assert MODE_CHANGE_STATES == {S.STOPPED, S.IDLE, S.ABORTED}
    assert PackMLMachine().unit_mode is M.PRODUCTION


@pytest.mark.parametrize("state", sorted(MODE_CHANGE_STATES))
@pytest.mark.parametrize("mode", list(UnitMode))
def test_mode_changes_in_stopped_idle_and_aborted(state: PackMLState, mode: UnitMode) -> None:
    machine = PackMLMachine(initial=state)
    assert machine.mode_change_allowed
    assert machine.set_unit_mode(mode) is mode
    assert machine.unit_mode is mode and machine.state is state
    assert machine.set_unit_mode(M.PRODUCTION) is M.PRODUCTION
    assert machine.unit_mode is M.PRODUCTION


@pytest.mark.parametrize("state", [s for s in STATES if s not in MODE_CHANGE_STATES])
def test_mode_change_is_refused_in_every_other_state(state: PackMLState) -> None:
    machine = PackMLMachine(initial=state)
    assert not machine.mode_change_allowed
    for mode in (M.MAINTENANCE, M.MANUAL):
        with pytest.raises(InvalidModeChange) as info:
            machine.set_unit_mode(mode)
        assert machine.unit_mode is M.PRODUCTION and machine.state is state
        assert (info.value.requested, info.value.current, info.value.state) == (
            mode,
            M.PRODUCTION,
            state,
        )
        text = str(info.value)
        assert f"{mode.name} ({int(mode)})" in text
        assert f"state {state.name} ({int(state)})" in text
        assert "STOPPED, IDLE, ABORTED" in text
    # Asking for the mode it is already in changes nothing and is never refused.
    assert machine.set_unit_mode(M.PRODUCTION) is M.PRODUCTION


def test_an_unknown_mode_is_a_value_error() -> None:
    machine = PackMLMachine()
    with pytest.raises(ValueError):
        machine.set_unit_mode(7)  # type: ignore[arg-type]
    assert machine.unit_mode is M.PRODUCTION


@pytest.mark.parametrize("mode", [M.MAINTENANCE, M.MANUAL])
def test_start_only_in_production(mode: UnitMode) -> None:
    machine = PackMLMachine(initial=S.IDLE, unit_mode=mode)
    assert C.START not in machine.allowed_commands()
    assert list(machine.allowed_commands()) == [C.STOP, C.ABORT]
    with pytest.raises(InvalidCommand) as info:
        machine.command(C.START)
    assert machine.state is S.IDLE
    assert info.value.unit_mode is mode and info.value.state is S.IDLE
    assert str(info.value) == (
        f"command Start is not allowed in unit mode {mode.name} ({int(mode)}),"
        " only in PRODUCTION (1)"
    )
    # Back in Production the same machine starts.
    machine.set_unit_mode(M.PRODUCTION)
    assert machine.command(C.START) is S.STARTING


@pytest.mark.parametrize("mode", [M.MAINTENANCE, M.MANUAL])
def test_other_commands_work_outside_production(mode: UnitMode) -> None:
    machine = PackMLMachine(unit_mode=mode)
    steps: list[tuple[str, PackMLState]] = [
        ("Reset", S.RESETTING),
        (SC, S.IDLE),
        ("Stop", S.STOPPING),
        (SC, S.STOPPED),
        ("Abort", S.ABORTING),
        (SC, S.ABORTED),
        ("Clear", S.CLEARING),
        (SC, S.STOPPED),
    ]
    for event, expected in steps:
        assert _fire(machine, event) is expected
    assert machine.unit_mode is mode


def test_mode_is_kept_through_a_production_cycle_and_locked_while_running() -> None:
    machine = PackMLMachine()
    machine.set_unit_mode(M.MAINTENANCE)
    _fire(machine, "Reset")
    with pytest.raises(InvalidModeChange, match=r"RESETTING \(15\)"):
        machine.set_unit_mode(M.PRODUCTION)
    _fire(machine, SC)
    machine.set_unit_mode(M.PRODUCTION)
    for event in ("Start", SC):
        _fire(machine, event)
    assert machine.state is S.EXECUTE
    for state_event in ("Suspend", SC):
        _fire(machine, state_event)
    with pytest.raises(InvalidModeChange, match=r"MANUAL \(3\).*SUSPENDED \(5\)"):
        machine.set_unit_mode(M.MANUAL)
    assert machine.unit_mode is M.PRODUCTION
