"""Cold-chain decisions with values only: what an excursion holds, when the cabinet is
kept locked, and what a released pocket's count becomes."""

from __future__ import annotations

from controller.cabinets.cold_chain_rules import (
    ColdChainStep,
    PocketLock,
    concerns_cold_chain,
    count_after_release,
    excursion_holds_stock,
    pockets_to_lock,
    reconcile_step,
)


def test_only_a_cold_cabinet_holds_its_stock_on_an_excursion() -> None:
    assert excursion_holds_stock(True)
    assert not excursion_holds_stock(False)


def test_a_room_temperature_cabinet_without_locks_is_none_of_its_business() -> None:
    assert not concerns_cold_chain(cold=False, any_locked=False)
    assert concerns_cold_chain(cold=False, any_locked=True)  # was cold, still locked
    assert concerns_cold_chain(cold=True, any_locked=False)


def test_held_lots_keep_the_quarantine_and_none_release_it() -> None:
    assert reconcile_step(3) is ColdChainStep.QUARANTINE
    assert reconcile_step(0) is ColdChainStep.RELEASE


def test_only_configured_unlocked_pockets_are_locked() -> None:
    pockets = [PocketLock(1, False), PocketLock(2, True), PocketLock(3, False)]
    assert pockets_to_lock(pockets, {1, 2}) == [1]
    assert pockets_to_lock(pockets, set()) == []


def test_a_wasted_pocket_is_set_to_what_the_ledger_holds() -> None:
    assert count_after_release(["released", "wasted"], booked=0, count=12) == 0


def test_a_released_or_already_right_pocket_keeps_its_count() -> None:
    assert count_after_release(["wasted", "released"], booked=0, count=12) is None
    assert count_after_release(["wasted"], booked=12, count=12) is None
    assert count_after_release([], booked=0, count=12) is None
