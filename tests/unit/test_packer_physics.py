"""The shared packer physics stepped by hand: unit modes, the output tray, refill totals.

No sockets and no timers: `step()` ends the current dwell, as `run()` would after it.
The same rules are checked over both protocols in tests/integration.
"""

from __future__ import annotations

import pytest

from simulators.packer_physics import PackerPhysics, PouchPlan, Refusal, RefusalKind, StopReason
from simulators.packml import PackMLCommand, PackMLState, UnitMode

S = PackMLState
C = PackMLCommand

CANISTERS = [(1, "07350000010015", 100, 200), (2, "07350000010022", 50, 60)]


def physics(**kwargs: object) -> PackerPhysics:
    params: dict[str, object] = {"canisters": CANISTERS, "output_empty_after_s": None}
    params.update(kwargs)
    return PackerPhysics("P1", **params)  # type: ignore[arg-type]


def pouches(n: int, items: tuple[tuple[int, int], ...] = ((1, 1),)) -> list[PouchPlan]:
    return [PouchPlan(i, f"pt/{i}", items) for i in range(1, n + 1)]


def settle(machine: PackerPhysics, until: PackMLState, limit: int = 100) -> None:
    """Step until the machine rests in `until` (acting states end, pouches are packed)."""
    for _ in range(limit):
        if machine.state is until:
            return
        machine.step()
    raise AssertionError(f"state {machine.state.name}, wanted {until.name}")


def to_execute(machine: PackerPhysics, n: int) -> None:
    machine.command(C.RESET)
    settle(machine, S.IDLE)
    machine.load_job("J-1", pouches(n))
    machine.command(C.START)
    machine.step()  # Starting -> Execute
    assert machine.state is S.EXECUTE


# -- output tray ----------------------------------------------------------------------


def test_full_tray_suspends_before_the_next_pouch_and_waits_for_unsuspend() -> None:
    machine = physics(output_capacity=3)
    to_execute(machine, 5)
    for _ in range(3):
        machine.step()
    assert machine.state is S.EXECUTE  # three good pouches, the tray just became full
    assert (machine.output_count, machine.output_full) == (3, True)
    assert machine.dispensed_totals()[1] == 3

    machine.step()  # the fourth attempt finds the tray full: nothing is dispensed
    assert machine.state is S.SUSPENDING
    assert machine.stop_reason is StopReason.OUTPUT_FULL == 103
    assert machine.dispensed_totals()[1] == 3 and machine.processed == 3
    machine.step()
    assert machine.state is S.SUSPENDED and machine.machine_speed == 0.0

    with pytest.raises(Refusal) as info:
        machine.command(C.UNSUSPEND)
    assert info.value.kind is RefusalKind.INVALID_STATE
    assert info.value.message == (
        "Unsuspend not allowed: output tray full (3 of 3 pouches); empty it first"
    )
    assert machine.state is S.SUSPENDED

    assert machine.empty_output() == 3
    assert (machine.output_count, machine.output_full) == (0, False)
    assert machine.state is S.SUSPENDED  # emptying never restarts the machine
    assert machine.stop_reason is StopReason.OUTPUT_FULL  # until Unsuspend

    machine.command(C.UNSUSPEND)
    assert machine.stop_reason is StopReason.NONE
    settle(machine, S.COMPLETE)
    assert machine.job is not None and machine.job.good == 5
    assert machine.output_count == 2 and machine.dispensed_totals()[1] == 5


def test_rejected_pouches_do_not_go_into_the_tray() -> None:
    machine = physics(output_capacity=100, reject_rate=0.4, seed=3)
    to_execute(machine, 10)
    settle(machine, S.COMPLETE)
    assert machine.job is not None and machine.job.rejected > 0
    assert machine.output_count == 10 == machine.processed - machine.defective


def test_unlimited_tray_never_suspends() -> None:
    machine = physics()
    to_execute(machine, 40)
    settle(machine, S.COMPLETE)
    assert (machine.output_count, machine.output_capacity, machine.output_full) == (40, 0, False)


def test_last_pouch_filling_the_tray_completes_the_job() -> None:
    machine = physics(output_capacity=4)
    to_execute(machine, 4)
    settle(machine, S.COMPLETE)
    assert machine.output_full and machine.stop_reason is StopReason.NONE


def test_operator_suspend_is_unsuspended_while_the_tray_has_room() -> None:
    machine = physics(output_capacity=10)
    to_execute(machine, 4)
    machine.step()
    machine.command(C.SUSPEND)
    settle(machine, S.SUSPENDED)
    assert machine.stop_reason is StopReason.OPERATOR
    machine.command(C.UNSUSPEND)
    settle(machine, S.COMPLETE)


def test_operator_deadline_is_scaled_by_the_speed_factor() -> None:
    machine = physics(output_capacity=1, output_empty_after_s=10.0, speed_factor=100.0)
    to_execute(machine, 2)
    machine.step()
    due = machine._output_empty_at
    assert due is not None
    assert not machine.operator_due(due - 0.01) and machine.operator_due(due)
    machine.empty_output()
    assert machine._output_empty_at is None and not machine.operator_due()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_capacity": -1}, r"output_capacity: -1 must be >= 0"),
        ({"output_capacity": 2.5}, r"output_capacity: 2.5 is not an integer"),
        ({"output_empty_after_s": 0}, r"output_empty_after_s: 0 must be > 0"),
    ],
)
def test_bad_tray_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        physics(**kwargs)


# -- unit modes -----------------------------------------------------------------------


def test_start_is_refused_outside_production_and_mode_locked_while_running() -> None:
    machine = physics()
    machine.set_unit_mode(UnitMode.MAINTENANCE)
    machine.command(C.RESET)
    settle(machine, S.IDLE)
    machine.load_job("J-1", pouches(2))
    with pytest.raises(Refusal) as info:
        machine.command(C.START)
    assert info.value.kind is RefusalKind.INVALID_STATE
    assert info.value.message == (
        "Start not allowed in unit mode MAINTENANCE (2): a job starts only in PRODUCTION (1)"
    )
    machine.refill(2, 5)  # canister work is what Maintenance is for
    machine.set_unit_mode(UnitMode.MANUAL)
    with pytest.raises(Refusal, match=r"unit mode MANUAL \(3\)"):
        machine.command(C.START)
    assert machine.state is S.IDLE and machine.dispensed_totals() == {1: 0, 2: 0}

    machine.set_unit_mode(UnitMode.PRODUCTION)
    machine.command(C.START)
    machine.step()
    with pytest.raises(Refusal) as info:
        machine.set_unit_mode(UnitMode.MAINTENANCE)
    assert info.value.kind is RefusalKind.INVALID_STATE
    assert "MAINTENANCE (2)" in info.value.message and "EXECUTE (6)" in info.value.message
    machine.set_unit_mode(UnitMode.PRODUCTION)  # the current mode: accepted, no change
    assert machine.unit_mode is UnitMode.PRODUCTION


def test_unknown_unit_mode_names_the_argument() -> None:
    machine = physics()
    with pytest.raises(Refusal) as info:
        machine.set_unit_mode(4)
    assert info.value.kind is RefusalKind.INVALID_ARGUMENT and info.value.argument == 0
    assert info.value.message.startswith("RequestedMode: 4 is not a unit mode")
    assert machine.unit_mode is UnitMode.PRODUCTION


# -- refill totals ----------------------------------------------------------------------


def test_refilled_total_counts_accepted_refills_only() -> None:
    machine = physics()
    machine.refill(2, 4)
    machine.refill(2, 6)
    with pytest.raises(Refusal):
        machine.refill(2, 1)  # 60 of 60: would overfill
    with pytest.raises(Refusal):
        machine.refill(2, 0)
    assert machine.refilled_totals() == {1: 0, 2: 10}
    assert machine.canister_counts()[2] == 60
    to_execute(machine, 3)
    settle(machine, S.COMPLETE)
    assert machine.refilled_totals() == {1: 0, 2: 10}  # dispensing never touches it
    assert machine.dispensed_totals() == {1: 3, 2: 0}
