"""Packing jobs through the controller against the OPC UA packer simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest
from sqlalchemy import select

from controller.app import Controller
from controller.ledger import verify_ledger
from controller.ledger.schema import audit_log
from controller.packing.job import JobState
from controller.packing.planner import PlannedJob, PlannedPouch
from controller.packing.runner import canister_location
from drivers.base import UnitMode
from simulators.packer_opcua import PackerSimulator
from tests.sites import FURO, JOB_DAY, METO, OXY, PARA, job, make_site
from tests.technician import Technician

DAY = JOB_DAY


async def start_plant(cache: Path, **knobs: float) -> PackerSimulator:
    sim = PackerSimulator(
        "PK1",
        canisters=[(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
        speed_factor=100,
        seed=3,
        transient_seconds=0.01,
        address_space_cache=cache,
        server_clock=False,
        **knobs,
    )
    await sim.start()
    return sim


@pytest.fixture
async def packing(
    ledger_url: str, address_space_cache: Path, staff: Callable[..., Technician]
) -> AsyncIterator[tuple[Controller, PackerSimulator]]:
    """A packer on loopback, the controller on SQLite and on PostgreSQL."""
    sim = await start_plant(address_space_cache, reject_rate=0.25)
    site = make_site(packer_address=sim.endpoint)
    controller = Controller(site, ledger_url=ledger_url)
    staff(controller.canister_desk)
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    runner = controller.runners["PK1"]
    runner.settings.poll_interval_s = 0.02
    await runner.driver.connect()
    try:
        yield controller, sim
    finally:
        await runner.driver.close()
        controller.close()
        await sim.stop()


async def test_job_books_good_pouches_and_rejects(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    controller, sim = packing
    runner = controller.runners["PK1"]
    result = await runner.run_job(job("J1", 12, ((PARA, 2), (METO, 1))))
    led = controller.ledger

    assert result.job.state == JobState.COMPLETED
    assert result.job.pouches_good == 12
    assert result.job.pouches_rejected == sim.defective_count > 0
    assert result.consumed == {PARA: 24, METO: 12}
    # Every rejected pouch held 2 + 1 tablets, and they are waste.
    assert result.wasted == {PARA: 2 * sim.defective_count, METO: sim.defective_count}
    assert led.moved_quantity("consume") == 36
    assert led.moved_quantity("waste") == 3 * sim.defective_count
    # The ledger's canisters hold exactly what the machine's canisters hold.
    counts = sim.canister_counts()
    assert led.on_hand(canister_location("PK1", 1), PARA) == counts[1]
    assert led.on_hand(canister_location("PK1", 2), METO) == counts[2]
    # The canister was filled first expiry first, never from the lot inside the
    # 30-day minimum shelf life.
    batches = {s.batch for s in led.stock(location=canister_location("PK1", 1))}
    assert "P-EARLY" in batches and "P-SHORT" not in batches
    assert led.open_reservation_count() == 0
    assert verify_ledger(led.engine) == []
    history = [dest for _, dest in result.job.history]
    assert history == ["RESERVED", "LOADED", "PACKING", "COMPLETED"]
    # Every transition is in the hash-chained audit trail, with who and the counts.
    with led.engine.connect() as conn:
        rows = conn.execute(
            select(audit_log)
            .where(audit_log.c.entity == "packing_job", audit_log.c.entity_key == "J1")
            .order_by(audit_log.c.seq)
        ).all()
    changes = [(json.loads(r.old_value or "null"), json.loads(r.new_value), r) for r in rows]
    assert changes[0][0] is None and changes[0][1]["state"] == "planned"
    audited = [
        (old["state"], new["state"], row.actor)
        for old, new, row in changes
        if old is not None and "state" in old
    ]
    assert audited == [
        ("planned", "reserved", "controller"),
        ("reserved", "loaded", "controller"),
        ("loaded", "packing", "controller"),
        ("packing", "completed", "controller"),
    ]


async def test_two_jobs_in_a_row_reuse_the_machine(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    controller, sim = packing
    runner = controller.runners["PK1"]
    first = await runner.run_job(job("J1", 5, ((PARA, 1),)))
    second = await runner.run_job(job("J2", 5, ((PARA, 1), (METO, 2))))
    assert first.job.state == second.job.state == JobState.COMPLETED
    assert controller.ledger.moved_quantity("consume") == 5 + 5 + 10
    assert controller.ledger.on_hand(canister_location("PK1", 1), PARA) == sim.canister_counts()[1]


async def test_product_without_canister_fails_cleanly(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    controller, _sim = packing
    result = await controller.runners["PK1"].run_job(job("J1", 3, ((PARA, 1), (OXY, 1))))
    assert result.job.state == JobState.FAILED
    assert f"no calibrated canister on PK1 for GTIN {OXY}" in result.job.reason
    assert controller.ledger.open_reservation_count() == 0
    assert controller.ledger.movement_count() == 5  # the opening stock only


async def test_short_central_stock_fails_before_anything_moves(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    controller, sim = packing
    result = await controller.runners["PK1"].run_job(job("J1", 15, ((FURO, 1),)))
    assert result.job.state == JobState.FAILED
    assert "insufficient stock of 07359990000037" in result.job.reason
    assert sim.canister_counts()[3] == 0
    assert controller.ledger.open_reservation_count() == 0
    assert verify_ledger(controller.ledger.engine) == []


async def test_a_jam_holds_the_machine_and_the_job_resumes(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    controller, sim = packing
    runner = controller.runners["PK1"]
    runner.settings.operator_clear_s = 0.05
    sim.inject_jam()
    result = await runner.run_job(job("J1", 6, ((METO, 1),)))
    states = [dest for _, dest in result.job.history]
    assert "HELD" in states and states[-1] == "COMPLETED"
    assert controller.ledger.moved_quantity("consume") == 6


async def test_canister_running_empty_is_refilled_and_the_job_completes(
    ledger_url: str, address_space_cache: Path, staff: Callable[..., Technician]
) -> None:
    sim = PackerSimulator(
        "PK1",
        canisters=[(1, PARA, 0, 200), (2, METO, 0, 30), (3, FURO, 0, 200)],
        speed_factor=100,
        seed=5,
        reject_rate=0.3,
        transient_seconds=0.01,
        address_space_cache=address_space_cache,
        server_clock=False,
    )
    await sim.start()
    raw_site = make_site(packer_address=sim.endpoint)
    site = raw_site.model_copy(
        update={
            "packers": [
                raw_site.packers[0].model_copy(
                    update={
                        "canisters": [
                            c if c.number != 2 else c.model_copy(update={"capacity": 30})
                            for c in raw_site.packers[0].canisters
                        ]
                    }
                )
            ]
        }
    )
    controller = Controller(site, ledger_url=ledger_url)
    staff(controller.canister_desk)
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    runner = controller.runners["PK1"]
    runner.settings.poll_interval_s = 0.02
    await runner.driver.connect()
    try:
        result = await runner.run_job(job("J1", 25, ((METO, 1),)))
        states = [dest for _, dest in result.job.history]
        assert "HELD" in states and states[-1] == "COMPLETED"
        assert result.consumed == {METO: 25}
        assert result.wasted == {METO: sim.defective_count}
        assert sim.dispensed_totals()[2] == 25 + sim.defective_count > 30
        assert (
            controller.ledger.on_hand(canister_location("PK1", 2), METO)
            == (sim.canister_counts()[2])
        )
        assert controller.ledger.open_reservation_count() == 0
        assert verify_ledger(controller.ledger.engine) == []
    finally:
        await runner.driver.close()
        controller.close()
        await sim.stop()


async def test_runner_reconnects_after_the_packer_restarts(
    ledger_url: str, address_space_cache: Path, staff: Callable[..., Technician]
) -> None:
    """Jobs go through the dispatcher; a job that finds the link dead goes back to it
    and runs once the packer is reachable again."""
    sim = await start_plant(address_space_cache)
    controller = Controller(make_site(packer_address=sim.endpoint), ledger_url=ledger_url)
    staff(controller.canister_desk)
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    runner = controller.runners["PK1"]
    runner.settings.poll_interval_s = 0.02
    controller.dispatcher.poll_interval_s = 0.05
    services = [
        asyncio.create_task(runner.serve()),
        asyncio.create_task(controller.dispatcher.serve()),
    ]

    async def add(j: PlannedJob) -> None:
        (fitted,) = controller.fit([j])
        assert fitted.packers == ("PK1",)
        await controller.aledger.run(controller.store.add_job, fitted)

    try:
        await add(job("J1", 3, ((PARA, 1),)))
        assert await controller.wait_for_jobs(30)
        port = sim.port
        await sim.stop()
        sim = PackerSimulator(
            "PK1",
            port=port,
            canisters=[(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
            speed_factor=100,
            seed=4,
            transient_seconds=0.01,
            address_space_cache=address_space_cache,
            server_clock=False,
        )
        await sim.start()  # the same machine, back after a power cycle
        await add(job("J2", 3, ((METO, 1),)))  # finds the old link dead, waits for it
        await add(job("J3", 3, ((METO, 1),)))
        assert await controller.wait_for_jobs(60)
        states = {r.job_id: r.state for r in controller.store.jobs()}
        assert states == {"J1": "completed", "J2": "completed", "J3": "completed"}
        assert controller.ledger.open_reservation_count() == 0
        assert controller.ledger.moved_quantity("consume") == 9
        assert (
            controller.ledger.on_hand(canister_location("PK1", 2), METO)
            == (sim.canister_counts()[2])
        )
    finally:
        for service in services:
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
        await runner.driver.close()
        controller.close()
        await sim.stop()


async def test_full_output_tray_suspends_and_the_runner_unsuspends(
    ledger_url: str, address_space_cache: Path, staff: Callable[..., Technician]
) -> None:
    """A tray of 4 pouches: the machine suspends (StopReason 103) each time it fills;
    the operator empties it and the runner sends Unsuspend; every pouch is booked."""
    sim = await start_plant(address_space_cache, output_capacity=4, output_empty_after_s=20)
    controller = Controller(make_site(packer_address=sim.endpoint), ledger_url=ledger_url)
    staff(controller.canister_desk)
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    runner = controller.runners["PK1"]
    runner.settings.poll_interval_s = 0.02
    await runner.driver.connect()
    try:
        result = await runner.run_job(job("J1", 10, ((PARA, 1),)))
        assert result.job.state == JobState.COMPLETED, result.job.reason
        assert result.consumed == {PARA: 10}
        status = await runner.driver.read_status()
        assert status.output_capacity == 4
        assert controller.ledger.open_reservation_count() == 0
        assert (
            controller.ledger.on_hand(canister_location("PK1", 1), PARA)
            == (sim.canister_counts()[1])
        )
    finally:
        await runner.driver.close()
        controller.close()
        await sim.stop()


async def test_packer_in_maintenance_takes_no_job(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    """A machine an operator switched to Maintenance is not given jobs: the job goes
    back to the dispatcher untouched, and runs once the machine is in Production."""
    controller, _sim = packing
    runner = controller.runners["PK1"]
    await runner.driver.set_unit_mode(UnitMode.MAINTENANCE)
    (fitted,) = controller.fit([job("J1", 3, ((PARA, 1),))])
    result = await runner.run_job(fitted)
    record = controller.store.job("J1")
    assert (record.state, record.packer, record.attempt) == ("planned", None, 1)
    assert "MAINTENANCE" in result.job.reason
    assert controller.ledger.movement_count() == 5  # the opening stock only
    await runner.driver.set_unit_mode(UnitMode.PRODUCTION)
    result = await runner.run_job(controller.store.job("J1"))
    assert result.job.state == JobState.COMPLETED
    assert controller.store.job("J1").state == "completed"


async def test_hand_added_items_are_reserved_with_the_job_and_consumed_per_good_pouch(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    """Items no canister holds go into the pouches by hand: they are held in the store
    with the job and consumed for the pouches that left the machine good and for the
    pouches made wholly by hand; a job whose hand items are short does not start."""
    controller, _sim = packing
    led = controller.ledger
    runner = controller.runners["PK1"]
    pouches = (
        *(PlannedPouch(i, f"PT-{i:04d}", ((PARA, 1),), manual=((OXY, 1),)) for i in range(1, 5)),
        PlannedPouch(5, "PT-0005", (), manual=((OXY, 2),)),
    )
    short = PlannedJob("J0", "W1", DAY, time(8), pouches)
    result = await runner.run_job(short)
    assert result.job.state == JobState.FAILED
    assert f"insufficient stock of {OXY}" in result.job.reason
    assert led.open_reservation_count() == 0 and led.moved_quantity("consume") == 0

    led.receive(
        "oxy",
        gtin=OXY,
        batch="O-1",
        expiry=date(2027, 12, 31),
        quantity=10,
        to_location="CENTRAL/A01",
        actor="goods-in",
    )
    result = await runner.run_job(PlannedJob("J1", "W1", DAY, time(8), pouches))
    assert result.job.state == JobState.COMPLETED, result.job.reason
    assert result.consumed == {PARA: 4, OXY: 6}
    assert led.on_hand("CENTRAL/A01", OXY) == 4
    assert led.open_reservation_count() == 0
    assert verify_ledger(led.engine) == []


async def test_a_job_reserved_before_a_restart_is_released_and_planned_again(
    packing: tuple[Controller, PackerSimulator],
) -> None:
    from controller.ledger import Need

    controller, _sim = packing
    runner = controller.runners["PK1"]
    store = controller.store
    record = store.add_job(job("J-RESTART", 2, ((PARA, 1),)))
    assert store.claim("J-RESTART", "PK1")
    record = store.job("J-RESTART")
    controller.ledger.reserve(
        record.reservation,
        purpose="job J-RESTART",
        needs=[Need(PARA, 2)],
        from_locations=controller.site.store.all_bins,
        timeout_s=600,
        actor="test",
    )
    store.move("J-RESTART", old="planned", new="reserved", actor="test", reason="reserved")
    # The controller stopped here; the next one recovers the packer.
    await runner.recover()
    again = store.job("J-RESTART")
    assert (again.state, again.packer, again.attempt) == ("planned", None, record.attempt + 1)
    assert controller.ledger.reservation(record.reservation).status == "voided"
    assert controller.ledger.open_reservation_count() == 0
