"""The controller's PackerRunner driving a serial packer, unchanged.

The site file only knows `driver: opcua` today, so the runner is built by hand with a
SerialPackerDriver; everything else (ledger, metrics, settings) is the controller's.
The assertions are those of test_packing_service.test_job_books_good_pouches_and_rejects:
the ledger books exactly what the machine dispensed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest

from controller.app import Controller
from controller.ledger import verify_ledger
from controller.packing.job import JobState
from controller.packing.runner import PackerRunner, PackingSettings, canister_location
from drivers.serial_packer import SerialPackerDriver
from simulators.packer_serial import SerialPackerSimulator
from tests.sites import FURO, METO, PARA, job, make_site
from tests.technician import Technician


async def serial_runner(
    ledger_url: str,
    canisters: Sequence[tuple[int, str, int, int]],
    *,
    seed: int,
    reject_rate: float,
) -> tuple[Controller, PackerRunner, SerialPackerSimulator]:
    sim = SerialPackerSimulator(
        "PK1",
        canisters=canisters,
        speed_factor=100,
        transient_seconds=0.01,
        seed=seed,
        reject_rate=reject_rate,
    )
    await sim.start()
    site = make_site()
    config = site.packers[0]
    config = config.model_copy(
        update={
            "canisters": [
                c.model_copy(update={"capacity": cap})
                for c, (_, _, _, cap) in zip(config.canisters, canisters, strict=True)
            ]
        }
    )
    controller = Controller(site, ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    settings = PackingSettings(
        store_bins=site.store.all_bins,
        reservation_timeout_s=site.ledger.reservation_timeout_s,
        poll_interval_s=0.02,
    )
    driver = SerialPackerDriver("PK1", sim.address, timeout=1.0)
    runner = PackerRunner(
        config,
        driver,
        controller.aledger,
        controller.store,
        controller.metrics,
        settings,
        controller.canister_desk,
    )
    await driver.connect()
    return controller, runner, sim


@pytest.fixture
async def packing(
    ledger_url: str, staff: Callable[..., Technician]
) -> AsyncIterator[tuple[Controller, PackerRunner, SerialPackerSimulator]]:
    """A serial packer on loopback, the controller on SQLite and on PostgreSQL."""
    controller, runner, sim = await serial_runner(
        ledger_url,
        [(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
        seed=3,
        reject_rate=0.25,
    )
    staff(controller.canister_desk)
    try:
        yield controller, runner, sim
    finally:
        await runner.driver.close()
        controller.close()
        await sim.stop()


async def test_job_books_good_pouches_and_rejects(
    packing: tuple[Controller, PackerRunner, SerialPackerSimulator],
) -> None:
    controller, runner, sim = packing
    result = await runner.run_job(job("J1", 12, ((PARA, 2), (METO, 1))))
    led = controller.ledger

    assert result.job.state == JobState.COMPLETED
    assert result.job.pouches_good == 12
    assert result.job.pouches_rejected == sim.defective_count > 0
    assert result.consumed == {PARA: 24, METO: 12}
    # Every rejected pouch held 2 + 1 tablets, and they are waste.
    assert result.wasted == {PARA: 2 * sim.defective_count, METO: sim.defective_count}
    assert result.dispensed == {PARA: sim.dispensed_totals()[1], METO: sim.dispensed_totals()[2]}
    assert led.moved_quantity("consume") == 36
    assert led.moved_quantity("waste") == 3 * sim.defective_count
    # The ledger's canisters hold exactly what the machine's canisters hold.
    counts = sim.canister_counts()
    assert led.on_hand(canister_location("PK1", 1), PARA) == counts[1]
    assert led.on_hand(canister_location("PK1", 2), METO) == counts[2]
    batches = {s.batch for s in led.stock(location=canister_location("PK1", 1))}
    assert "P-EARLY" in batches and "P-SHORT" not in batches
    assert led.open_reservation_count() == 0
    assert verify_ledger(led.engine) == []
    history = [dest for _, dest in result.job.history]
    assert history == ["RESERVED", "LOADED", "PACKING", "COMPLETED"]
    assert sim.state.name == "IDLE"  # the runner reset the machine for the next job


async def test_canister_running_empty_is_refilled_over_the_line(
    ledger_url: str, staff: Callable[..., Technician]
) -> None:
    controller, runner, sim = await serial_runner(
        ledger_url,
        [(1, PARA, 0, 200), (2, METO, 0, 30), (3, FURO, 0, 200)],
        seed=5,
        reject_rate=0.3,
    )
    staff(controller.canister_desk)
    try:
        result = await runner.run_job(job("J1", 25, ((METO, 1),)))
        states = [dest for _, dest in result.job.history]
        assert "HELD" in states and states[-1] == "COMPLETED"
        assert result.consumed == {METO: 25}
        assert result.wasted == {METO: sim.defective_count}
        assert sim.dispensed_totals()[2] == 25 + sim.defective_count > 30
        led = controller.ledger
        assert led.on_hand(canister_location("PK1", 2), METO) == sim.canister_counts()[2]
        assert led.open_reservation_count() == 0
        assert verify_ledger(led.engine) == []
    finally:
        await runner.driver.close()
        controller.close()
        await sim.stop()
