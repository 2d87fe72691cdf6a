"""The packing runner against the in-memory packer and a real SQLite ledger file: no
sockets, no simulator. The technician scans each canister refill at the desk."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.app import Controller
from controller.ledger import verify_ledger
from controller.packing.job import JobState
from controller.packing.runner import PackerRunner, PackingSettings, canister_location
from drivers.base import PackMLCommand
from drivers.fakes import FakePacker
from tests.sites import FURO, METO, PARA, job, make_site
from tests.technician import Technician


@dataclass
class Packing:
    controller: Controller
    packer: FakePacker
    runner: PackerRunner
    technician: Technician


@pytest.fixture
async def packing(tmp_path: Path, staff: Callable[..., Technician]) -> AsyncIterator[Packing]:
    site = make_site()
    controller = Controller(site, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    config = site.packers[0]
    packer = FakePacker(
        config.name, canisters=[(c.number, c.gtin, 0, c.capacity) for c in config.canisters]
    )
    settings = PackingSettings(
        store_bins=site.store.all_bins,
        reservation_timeout_s=site.ledger.reservation_timeout_s,
        poll_interval_s=0.001,
        operator_clear_s=0.001,
    )
    runner = PackerRunner(
        config,
        packer,
        controller.aledger,
        controller.store,
        controller.metrics,
        settings,
        controller.canister_desk,
    )
    await packer.connect()
    try:
        yield Packing(controller, packer, runner, staff(controller.canister_desk))
    finally:
        controller.close()


async def test_a_job_is_packed_and_its_pouches_booked(packing: Packing) -> None:
    packer, runner, led = packing.packer, packing.runner, packing.controller.ledger
    packer.reject_next = 2  # two pouches fail the vision check and are packed again
    result = await runner.run_job(job("J1", 12, ((PARA, 2), (METO, 1))))
    assert result.job.state == JobState.COMPLETED
    assert result.job.pouches_good == 12
    assert result.job.pouches_rejected == 2
    assert result.consumed == {PARA: 24, METO: 12}
    assert result.wasted == {PARA: 4, METO: 2}
    assert led.moved_quantity("consume") == 36
    assert led.moved_quantity("waste") == 6
    # Both canisters were empty: each was topped up once, first expiry first (never
    # the lot inside the minimum shelf life), scanned, and then told to the machine.
    refills = packer.calls_to("refill_canister")
    assert sorted(number for number, _ in refills) == [1, 2]
    assert [t.batch for t in packing.technician.tickets if t.gtin == PARA] == ["P-EARLY"]
    for number, gtin in ((1, PARA), (2, METO)):
        held = led.on_hand(canister_location("PK1", number), gtin)
        assert held == packer.canisters[number].count
    assert ("command", (PackMLCommand.START,)) in packer.calls
    assert led.open_reservation_count() == 0
    assert verify_ledger(led.engine) == []


async def test_a_canister_holding_enough_is_not_refilled_for_the_next_job(
    packing: Packing,
) -> None:
    packer, runner = packing.packer, packing.runner
    first = await runner.run_job(job("J1", 5, ((METO, 1),)))
    assert first.job.state == JobState.COMPLETED
    assert len(packer.calls_to("refill_canister")) == 1
    second = await runner.run_job(job("J2", 5, ((METO, 1),)))
    assert second.job.state == JobState.COMPLETED
    assert len(packer.calls_to("refill_canister")) == 1  # the first top-up still holds
    assert packing.controller.ledger.moved_quantity("consume") == 10


async def test_a_job_the_store_cannot_cover_fails_before_the_machine_is_touched(
    packing: Packing,
) -> None:
    packer, runner, led = packing.packer, packing.runner, packing.controller.ledger
    result = await runner.run_job(job("J1", 6, ((FURO, 2),)))  # 12 + allowance; 10 in store
    assert result.job.state == JobState.FAILED
    assert result.job.reason == (
        f"insufficient stock of {FURO} at central store: wanted 13, available 10"
    )
    assert packer.calls_to("load_job") == []
    assert packer.calls_to("refill_canister") == []
    assert led.open_reservation_count() == 0
