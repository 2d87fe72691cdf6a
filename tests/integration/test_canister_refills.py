"""Canister refills: one lot per canister, confirmed by a GS1 scan, settled after a crash.

A packer simulator (OPC UA, or serial for a 1.0 machine) and a serial scanner simulator
on loopback; the controller on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from controller.app import Controller
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.ledger import Need, verify_ledger
from controller.ledger.schema import canister_fills
from controller.packing.job import JobState
from controller.packing.runner import PackerRunner, PackingSettings, canister_location
from controller.packing.store import CanisterFill
from drivers.serial_packer import SerialPackerDriver
from simulators.packer_opcua import PackerSimulator
from simulators.packer_serial import SerialPackerSimulator
from simulators.scanner_serial import ScannerSimulator
from tests.sites import FURO, METO, PARA, job, make_site, site_dict
from tests.technician import Technician, pack_for

TODAY = datetime.now(UTC).date()


def fills(controller: Controller, canister: int) -> list[tuple[str, str | None, int | None, str]]:
    """(status, batch, count before, confirming station) of a canister's refills, in order."""
    with controller.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(canister_fills)
            .where(canister_fills.c.canister == canister)
            .order_by(canister_fills.c.created_at)
        ).all()
    return [(r.status, r.batch, r.count_before, r.confirmed_by) for r in rows]


@pytest.fixture
async def packer(
    ledger_url: str, address_space_cache: Path
) -> AsyncIterator[tuple[Controller, PackerSimulator]]:
    sim = PackerSimulator(
        "PK1",
        canisters=[(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
        speed_factor=100,
        seed=7,
        reject_rate=0.1,
        transient_seconds=0.01,
        address_space_cache=address_space_cache,
        server_clock=False,
    )
    await sim.start()
    controller = Controller(make_site(packer_address=sim.endpoint), ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    runner = controller.runners["PK1"]
    runner.settings.poll_interval_s = 0.02
    await runner.driver.connect()
    try:
        yield controller, sim
    finally:
        await runner.driver.close()
        controller.close()
        await sim.stop()


async def test_canister_holds_one_lot_and_changes_lot_only_when_run_dry(
    packer: tuple[Controller, PackerSimulator], staff: Callable[..., Technician]
) -> None:
    """FEFO picks the canister's first lot; a canister that still holds tablets is
    topped up from its own lot, even when the store has an earlier-expiring one; a new
    lot goes in only after the machine held for the empty canister."""
    controller, sim = packer
    tech = staff(controller.canister_desk)
    runner = controller.runners["PK1"]
    led = controller.ledger
    location = canister_location("PK1", 1)

    # 63 tablets needed; the first lot in FEFO order (P-EARLY) has 50: the canister runs
    # dry mid-job and takes P-LATE, the next lot, at its empty-canister hold.
    first = await runner.run_job(job("J1", 30, ((PARA, 2),)))
    assert first.job.state == JobState.COMPLETED, first.job.reason
    assert "HELD" in [dest for _, dest in first.job.history]
    assert [f[:3] for f in fills(controller, 1)] == [
        ("posted", "P-EARLY", 0),
        ("posted", "P-LATE", 0),
    ]
    assert {s.batch for s in led.stock(location=location)} == {"P-LATE"}

    # A lot that expires before P-LATE arrives; the canister still holds P-LATE, so the
    # top-up is P-LATE, and P-NEW waits until the canister is empty again.
    led.receive(
        "delivery:P-NEW",
        gtin=PARA,
        batch="P-NEW",
        expiry=TODAY + timedelta(days=60),
        quantity=300,
        to_location="CENTRAL/A02",
        actor="goods-in",
        reason="delivery",
    )
    held = sim.canister_counts()[1]
    assert 0 < held < 200
    second = await runner.run_job(job("J2", 110, ((PARA, 2),)))
    assert second.job.state == JobState.COMPLETED, second.job.reason
    history = fills(controller, 1)[2:]
    assert history[0][:3] == ("posted", "P-LATE", held)
    assert [f[1] for f in history[1:]] == ["P-NEW"] and history[1][2] == 0
    # Whatever the moment, a refill into a non-empty canister was of the lot inside.
    every = fills(controller, 1)
    for before, after in itertools.pairwise(every):
        if after[2]:
            assert after[1] == before[1]
    assert {s.batch for s in led.stock(location=location)} == {"P-NEW"}
    assert led.on_hand(location, PARA) == sim.canister_counts()[1]
    assert led.moved_quantity("consume") == 2 * (30 + 110)
    assert led.open_reservation_count() == 0
    assert verify_ledger(led.engine) == []
    assert len(tech.tickets) == 4 and all(o.accepted for o in tech.outcomes)


async def test_a_refill_nobody_scans_is_given_up_and_nothing_moves(
    packer: tuple[Controller, PackerSimulator],
) -> None:
    controller, sim = packer
    runner = controller.runners["PK1"]
    runner.settings.refill_scan_timeout_s = 0.3
    result = await runner.run_job(job("J1", 5, ((METO, 1),)))
    assert result.job.state == JobState.FAILED
    assert "not confirmed by a scan" in result.job.reason
    assert fills(controller, 2) == [("voided", "M-1", 0, None)]
    assert sim.canister_counts()[2] == 0
    assert controller.ledger.on_hand(canister_location("PK1", 2), METO) == 0
    assert controller.ledger.open_reservation_count() == 0
    assert controller.canister_desk.open == {}
    assert controller.store.job("J1").state == "failed"


async def test_refill_is_confirmed_over_the_serial_scanner_and_wrong_packs_are_refused(
    ledger_url: str, address_space_cache: Path
) -> None:
    """The whole path: dispatcher, runner, ticket, scans on the serial line, scan
    station routing to the canister desk; a pick-list flow is not disturbed by it."""
    sim = PackerSimulator(
        "PK1",
        canisters=[(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
        speed_factor=100,
        seed=2,
        transient_seconds=0.01,
        address_space_cache=address_space_cache,
        server_clock=False,
    )
    scanner = ScannerSimulator()
    await sim.start()
    await scanner.start()
    raw = site_dict(
        packer_address=sim.endpoint, scanner_address=f"socket://127.0.0.1:{scanner.port}"
    )
    raw["cabinets"] = []
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    controller.runners["PK1"].settings.poll_interval_s = 0.02
    controller.dispatcher.poll_interval_s = 0.05

    async def technician() -> None:
        ticket = await controller.canister_desk.tickets.get()
        await scanner.scan(encode_pack(PackId(METO, "M-1", TODAY + timedelta(days=200))))
        await scanner.scan(ticket.barcode)
        await scanner.scan(encode_pack(PackId(METO, "M-1", TODAY + timedelta(days=200))))
        await scanner.scan(encode_pack(PackId(PARA, "P-LATE", TODAY + timedelta(days=400))))
        await scanner.scan(encode_pack(PackId(PARA, "P-EARLY", TODAY - timedelta(days=1))))
        await scanner.scan(pack_for(ticket))

    try:
        await controller.start_packing()
        tech = asyncio.create_task(technician())
        (fitted,) = controller.fit([job("J1", 4, ((PARA, 1),))])
        await controller.aledger.run(controller.store.add_job, fitted)
        assert await controller.wait_for_jobs(30)
        await tech
        assert controller.store.job("J1").state == "completed"
        messages = [(o.accepted, o.message) for o in controller.scan_log]
        assert messages[0] == (False, "no pick list open: scan the pick list first")
        assert messages[1][0] and "canister ticket" in messages[1][1]
        assert messages[2] == (
            False,
            f"GTIN {METO} does not belong in canister 1 of PK1: it holds {PARA}",
        )
        assert messages[3][0] is False and "takes batch P-EARLY only" in messages[3][1]
        assert messages[4][0] is False and "expired on" in messages[4][1]
        assert messages[5][0] and "batch P-EARLY confirmed" in messages[5][1]
        assert fills(controller, 1) == [("posted", "P-EARLY", 0, "SC1")]
        assert (
            controller.ledger.on_hand(canister_location("PK1", 1), PARA)
            == (sim.canister_counts()[1])
        )
    finally:
        await controller.stop()
        controller.close()
        await scanner.stop()
        await sim.stop()


@pytest.mark.parametrize("told", [True, False])
async def test_refill_of_a_machine_without_refilled_total_is_settled_from_its_counts(
    ledger_url: str, told: bool
) -> None:
    """A 1.0 serial machine reports no refilled total. A controller that died after the
    scan (and maybe after telling the machine) leaves an open refill; recovery tells
    from the canister's count and dispensed total whether the tablets arrived."""
    sim = SerialPackerSimulator(
        "PK1",
        canisters=[(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)],
        speed_factor=100,
        transient_seconds=0.01,
        seed=1,
    )
    sim.protocol_version = (1, 0)
    await sim.start()
    site = make_site()
    controller = Controller(site, ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    driver = SerialPackerDriver("PK1", sim.address, timeout=1.0)
    runner = PackerRunner(
        site.packers[0],
        driver,
        controller.aledger,
        controller.store,
        controller.metrics,
        PackingSettings(store_bins=site.store.all_bins, poll_interval_s=0.02),
        controller.canister_desk,
    )
    await driver.connect()
    try:
        assert driver.reports_refilled_total is False
        (before,) = [c for c in await driver.read_canisters() if c.number == 2]
        assert before.refilled_total == 0
        # The steps of a refill, up to the crash: filed, reserved, scanned, (told).
        fill = CanisterFill(
            "canfill:PK1:2:crash",
            "PK1",
            2,
            METO,
            40,
            0,
            "open",
            "M-1",
            before.count,
            before.dispensed_total,
        )
        controller.store.open_fill(fill, actor="controller")
        controller.ledger.reserve(
            fill.key,
            purpose="canister 2 of PK1",
            needs=[Need(METO, 40, batch="M-1")],
            from_locations=site.store.all_bins,
            timeout_s=60,
            actor="controller",
        )
        controller.store.confirm_fill(fill.key, by="SC1", actor="controller")
        if told:
            await driver.refill_canister(2, 40)
        await runner.recover()
        location = canister_location("PK1", 2)
        assert controller.store.open_fills("PK1") == []
        assert controller.ledger.on_hand(location, METO) == sim.canister_counts()[2]
        assert sim.canister_counts()[2] == (40 if told else 0)
        assert fills(controller, 2) == [("posted" if told else "voided", "M-1", 0, "SC1")]
        assert controller.ledger.open_reservation_count() == 0
        assert verify_ledger(controller.ledger.engine) == []
    finally:
        with contextlib.suppress(Exception):
            await driver.close()
        controller.close()
        await sim.stop()
