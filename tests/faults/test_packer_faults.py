"""Packers under faults: the controller's packing service (runner, dispatcher,
housekeeping, as `doseline pack` runs them) against the OPC UA and the serial packer
simulators, each behind a fault relay.

For each link and each fault: the job ends as docs/packing.md says (resumed and
completed, or failed and settled), within a bound after the fault clears; the link loss
is logged once and counted; the ledger's invariants hold, no reservation stays open,
and every tablet the machine dispensed is booked exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.app import Controller
from controller.config import parse_site
from controller.packing.planner import PlannedJob
from controller.packing.runner import PackerRunner, canister_location
from drivers.base import PackMLState, StopReason
from drivers.opcua_packer import OpcUaPackerDriver
from drivers.serial_packer import SerialPackerDriver
from simulators.packer_opcua import PackerSimulator
from simulators.packer_serial import SerialPackerSimulator
from tests.faults.conftest import (
    TODAY,
    assert_ledger_sound,
    log_lines,
    report,
    sample,
    wait_for,
)
from tests.faults.proxy import FaultProxy, flip_first_byte, flip_last_byte
from tests.sites import FURO, METO, PARA, job, site_dict
from tests.technician import Technician

pytestmark = pytest.mark.timeout(60)

CANISTERS = [(1, PARA, 0, 200), (2, METO, 0, 200), (3, FURO, 0, 200)]
UNITS = {1: PARA, 2: METO, 3: FURO}
RECOVERY_BOUND_S = 15.0
AnySim = PackerSimulator | SerialPackerSimulator


@dataclass
class Rig:
    kind: str
    sim: AnySim
    proxy: FaultProxy
    controller: Controller
    cache: Path

    @property
    def runner(self) -> PackerRunner:
        return self.controller.runners["PK1"]

    async def submit(self, planned: PlannedJob) -> None:
        (fitted,) = self.controller.fit([planned])
        await self.controller.aledger.run(self.controller.store.add_job, fitted)

    def state(self, job_id: str) -> str:
        return self.controller.store.job(job_id).state

    async def until_state(self, job_id: str, *states: str, timeout_s: float = 20) -> float:
        """Waits for the job's state; for an end state also until the runner is done
        with it (the metrics and the machine's reset follow the stored state)."""
        took = await wait_for(lambda: self.state(job_id) in states, timeout_s, f"{job_id} {states}")
        if set(states) & {"completed", "partial", "failed"}:
            runner = self.runner
            await wait_for(
                lambda: runner.link_ok and runner.recovered and not runner.busy,
                timeout_s,
                "the runner done with the job",
            )
        return took

    def metric(self, name: str) -> float:
        return sample(self.controller, name, device="PK1")

    def metric_packer_state(self) -> float:
        return sample(self.controller, "doseline_packer_state", packer="PK1")

    async def restart_sim(self, *, power_cycle: bool = False, keep_counters: bool = True) -> None:
        """The machine goes away and comes back on the same port."""
        await self.sim.stop()
        self.proxy.cut(refuse=True)  # nothing listens while it is off
        if power_cycle:
            self.sim.power_cycle(keep_counters=keep_counters)
        await self.sim.start()
        await self.proxy.restore()

    def assert_counts_match(self) -> None:
        """Ledger and machine agree tablet for tablet: each canister's balance is what
        the machine holds, and consumption plus waste is what it dispensed."""
        led = self.controller.ledger
        counts = self.sim.canister_counts()
        for number, gtin in UNITS.items():
            assert led.on_hand(canister_location("PK1", number), gtin) == counts[number]
        dispensed = sum(self.sim.dispensed_totals().values())
        assert led.moved_quantity("consume") + led.moved_quantity("waste") == dispensed


def make_sim(kind: str, cache: Path, **knobs: float) -> AnySim:
    settings: dict[str, float] = {"speed_factor": 30, "transient_seconds": 0.01, "seed": 3}
    settings.update(knobs)
    if kind == "opcua":
        return PackerSimulator(
            "PK1",
            canisters=CANISTERS,
            address_space_cache=cache,
            server_clock=False,
            **settings,  # type: ignore[arg-type]
        )
    return SerialPackerSimulator("PK1", canisters=CANISTERS, **settings)  # type: ignore[arg-type]


def build_controller(kind: str, proxy: FaultProxy, ledger_url: str) -> Controller:
    raw = site_dict(ledger_url=ledger_url)
    raw["cabinets"], raw["scanners"] = [], []
    packer = raw["packers"][0]
    if kind == "opcua":
        packer["address"] = f"opc.tcp://127.0.0.1:{proxy.port}/"
    else:
        packer["driver"], packer["address"] = "serial", f"socket://127.0.0.1:{proxy.port}"
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    runner = controller.runners["PK1"]
    runner.settings.poll_interval_s = 0.02
    runner.settings.idle_check_s = 0.3
    runner.settings.operator_clear_s = 0.05
    controller.dispatcher.poll_interval_s = 0.05
    # Short device timeouts, so that a silent machine is noticed in about a second.
    driver = controller.packer_drivers["PK1"]
    if isinstance(driver, OpcUaPackerDriver):
        driver.timeout = 1.0
    else:
        assert isinstance(driver, SerialPackerDriver)
        driver.timeout, driver.retries = 0.25, 3
    return controller


@pytest.fixture(params=["opcua", "serial"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _rig(
    kind: str, ledger_url: str, cache: Path, staff: Callable[..., Technician], **knobs: float
) -> AsyncIterator[Rig]:
    sim = make_sim(kind, cache, **knobs)
    await sim.start()
    proxy = FaultProxy(sim.port)
    await proxy.start()
    controller = build_controller(kind, proxy, ledger_url)
    staff(controller.canister_desk)
    await controller.start_packing()
    try:
        yield Rig(kind, sim, proxy, controller, cache)
    finally:
        await controller.stop()
        controller.close()
        await proxy.stop()
        await sim.stop()


@pytest.fixture
async def rig(
    kind: str, tmp_path: Path, address_space_cache: Path, staff: Callable[..., Technician]
) -> AsyncIterator[Rig]:
    """One packer behind a fault relay; the controller on SQLite."""
    async for made in _rig(kind, f"sqlite:///{tmp_path / 'ledger.db'}", address_space_cache, staff):
        yield made


@pytest.fixture
async def rig_both_ledgers(
    kind: str, ledger_url: str, address_space_cache: Path, staff: Callable[..., Technician]
) -> AsyncIterator[Rig]:
    """The same, on SQLite and on PostgreSQL."""
    async for made in _rig(kind, ledger_url, address_space_cache, staff):
        yield made


async def mid_job(rig: Rig, job_id: str, pouches: int = 5) -> None:
    """Waits until the machine is packing `job_id` and has made some pouches."""
    await rig.until_state(job_id, "packing")
    await wait_for(lambda: rig.sim.processed_count >= pouches, 20, "pouches being made")


# --- 1. the link drops in the middle of a job ------------------------------------------


async def test_link_cut_mid_job_resumes_and_books_once(
    rig_both_ledgers: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The cable is pulled while the machine packs (it goes on packing), and plugged in
    again: the runner reconnects, finds the job where the machine is, and books it from
    the counters stored at the start, once."""
    rig = rig_both_ledgers
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    errors_before = rig.metric("doseline_driver_errors_total")
    rig.proxy.cut(refuse=True)
    await wait_for(lambda: not rig.runner.link_ok, 10, "the runner notices the cut")
    await wait_for(lambda: rig.sim.state == PackMLState.COMPLETE, 20, "machine finishes alone")
    await rig.proxy.restore()
    link_s = await wait_for(lambda: rig.runner.link_ok, RECOVERY_BOUND_S, "reconnected")
    job_s = await rig.until_state("J1", "completed", "partial", "failed", timeout_s=15)
    report(f"packer[{rig.kind}] link cut mid-job", link=link_s, job=link_s + job_s)

    assert rig.state("J1") == "completed"
    assert rig.controller.store.job("J1").good == 30
    assert rig.metric("doseline_driver_reconnects_total") == 1
    assert rig.metric("doseline_driver_errors_total") > errors_before
    assert len(log_lines(caplog, "packer PK1: link lost", level=logging.ERROR)) == 1
    assert len(log_lines(caplog, "unreachable", level=logging.WARNING)) <= 1
    assert sample(rig.controller, "doseline_jobs_total", outcome="completed") == 1
    assert rig.metric_packer_state() == PackMLState.IDLE
    rig.assert_counts_match()
    assert rig.controller.ledger.moved_quantity("consume") == 60
    assert_ledger_sound(rig.controller)


# --- 2. the machine stops answering ----------------------------------------------------


async def test_silent_machine_mid_job_is_noticed_and_the_job_resumes(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection stays open but nothing comes back (the machine packs on) until
    the machine has finished the job; then the link answers again."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    rig.proxy.silent = True
    noticed_s = await wait_for(lambda: not rig.runner.link_ok, 10, "the runner notices")
    await wait_for(lambda: rig.sim.state == PackMLState.COMPLETE, 20, "machine finishes alone")
    await rig.proxy.restore()
    link_s = await wait_for(lambda: rig.runner.link_ok, RECOVERY_BOUND_S, "reconnected")
    job_s = await rig.until_state("J1", "completed", "partial", "failed", timeout_s=15)
    report(f"packer[{rig.kind}] silent mid-job", noticed=noticed_s, link=link_s, job=job_s)

    assert noticed_s < 5
    assert rig.state("J1") == "completed"
    assert rig.metric("doseline_driver_reconnects_total") >= 1
    assert len(log_lines(caplog, "packer PK1: link lost", level=logging.ERROR)) == 1
    rig.assert_counts_match()
    assert_ledger_sound(rig.controller)


# --- 3. the machine restarts -----------------------------------------------------------


async def test_restart_keeping_the_job_resumes_it(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The machine's server restarts on the same port and still holds the job (its
    controller kept running): the job is picked up where the machine is."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    await rig.sim.stop()
    rig.proxy.cut(refuse=True)
    await wait_for(lambda: not rig.runner.link_ok, 10, "the runner notices")
    await rig.sim.start()
    await rig.proxy.restore()
    link_s = await wait_for(lambda: rig.runner.link_ok, RECOVERY_BOUND_S, "reconnected")
    job_s = await rig.until_state("J1", "completed", "partial", "failed", timeout_s=15)
    report(f"packer[{rig.kind}] restart keeping the job", link=link_s, job=job_s)

    assert rig.state("J1") == "completed"
    assert len(log_lines(caplog, "resuming from", level=logging.WARNING)) == 1
    assert len(log_lines(caplog, "packer PK1: link lost", level=logging.ERROR)) == 1
    rig.assert_counts_match()
    assert_ledger_sound(rig.controller)


async def test_power_cycle_loses_the_job_which_fails_and_is_settled(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A power cycle mid-job: the machine comes back Stopped, without the job, with its
    counters (as the contract says). The job fails; what left the canisters since the
    start is booked as waste, the reservation is closed, and the next job runs."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    await rig.restart_sim(power_cycle=True)
    job_s = await rig.until_state("J1", "completed", "partial", "failed", timeout_s=20)
    report(f"packer[{rig.kind}] power cycle", job=job_s)

    record = rig.controller.store.job("J1")
    assert record.state == "failed"
    assert "lost the job" in record.reason
    led = rig.controller.ledger
    assert led.open_reservation_count() == 0
    assert led.moved_quantity("consume") == 0  # unverified pouches are not given
    rig.assert_counts_match()  # all of it is waste, exactly once
    assert sample(rig.controller, "doseline_jobs_total", outcome="failed") == 1
    assert len(log_lines(caplog, "lost the job", level=logging.ERROR)) == 1
    assert_ledger_sound(rig.controller)

    await rig.submit(job("J2", 5, ((METO, 1),)))
    await rig.until_state("J2", "completed", "partial", "failed", timeout_s=20)
    assert rig.state("J2") == "completed"
    rig.assert_counts_match()
    assert_ledger_sound(rig.controller)


async def test_power_cycle_that_resets_the_counters_voids_the_job(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A faulty machine whose counters restart at 0 after a power cycle: the tablets
    it dispensed cannot be told from the counters, so nothing is booked from them, the
    reservation is released, the canisters must be counted (a discrepancy)."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    dispensed = sum(rig.sim.dispensed_totals().values())
    await rig.restart_sim(power_cycle=True, keep_counters=False)
    await rig.until_state("J1", "completed", "partial", "failed", timeout_s=20)

    record = rig.controller.store.job("J1")
    assert record.state == "failed"
    assert "canisters must be counted" in record.reason
    led = rig.controller.ledger
    assert led.open_reservation_count() == 0
    assert led.moved_quantity("consume") + led.moved_quantity("waste") == 0
    assert (
        sample(rig.controller, "doseline_stock_discrepancies_total", location_kind="canister") >= 1
    )
    # The ledger still holds what left the canisters during the lost job: counted later.
    counts = rig.sim.canister_counts()
    held = sum(led.on_hand(canister_location("PK1", n), g) for n, g in UNITS.items())
    assert held - sum(counts.values()) == dispensed
    assert_ledger_sound(rig.controller)


# --- 4. corrupt frames ---------------------------------------------------------------


async def test_corrupt_replies_mid_job_are_survived_and_act_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Damaged replies reach the controller mid-job: single ones (a serial reply with a
    bad CRC is asked for again with the same sequence number) and a burst longer than
    the retries (the link is taken as lost and opened again). Nothing acts twice."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    sim = rig.sim
    if isinstance(sim, SerialPackerSimulator):
        sim.inject_garbage(40)
        sim.corrupt_next_reply()
        await wait_for(lambda: sim.replies_corrupted == 1, 5, "corrupted reply sent")
        rig.proxy.inject(b"\x02\x10\x99garbage\x03")
        rig.proxy.corrupt_next(6, flip_last_byte)  # more than the 3 retries
    else:
        # A spoilt message header. (A bit flipped inside a value goes unnoticed on an
        # unsecured OPC UA link: only Sign or SignAndEncrypt, docs/security.md, would
        # catch it; TCP's checksum covers only the wire.)
        rig.proxy.corrupt_next(1, flip_first_byte)
    await wait_for(lambda: rig.proxy.corruptions_pending == 0, 10, "corruption delivered")
    job_s = await rig.until_state("J1", "completed", "partial", "failed", timeout_s=20)
    report(f"packer[{rig.kind}] corrupt frames", job=job_s)

    assert rig.state("J1") == "completed"
    assert rig.controller.store.job("J1").good == 30
    assert len(log_lines(caplog, "packer PK1: link lost", level=logging.ERROR)) <= 1
    assert rig.metric("doseline_driver_errors_total") >= 1
    driver = rig.controller.packer_drivers["PK1"]
    if isinstance(driver, SerialPackerDriver):
        assert driver.damaged_frames >= 2 and driver.retransmissions >= 1
    rig.assert_counts_match()
    assert_ledger_sound(rig.controller)


# --- 5. values outside the model ------------------------------------------------------


async def test_packml_state_outside_the_model_is_a_fault_not_a_storm(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The machine reports PackML state 99 for two seconds mid-job. The controller
    takes no decision on it, logs it once, does not reconnect in a loop, and goes on
    with the job when the machine makes sense again."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    await rig.sim.misreport(state=99)
    await wait_for(lambda: not rig.runner.link_ok, 10, "the runner notices")
    assert rig.metric_packer_state() != 99  # the gauge keeps the last state that made sense
    await wait_for(lambda: rig.sim.state == PackMLState.COMPLETE, 20, "machine finishes alone")
    connects_during = rig.metric("doseline_driver_reconnects_total")
    await asyncio.sleep(1.5)
    reconnects = rig.metric("doseline_driver_reconnects_total") - connects_during
    await rig.sim.misreport()
    job_s = await rig.until_state("J1", "completed", "partial", "failed", timeout_s=20)
    report(f"packer[{rig.kind}] PackML state 99", job=job_s)

    assert rig.state("J1") == "completed"
    assert rig.metric_packer_state() == PackMLState.IDLE  # made ready for the next job
    assert reconnects <= 2, f"{reconnects} reconnects in 1.5 s"
    assert len(log_lines(caplog, "packer PK1: link lost", level=logging.ERROR)) == 1
    assert len(log_lines(caplog, "not a PackML state", level=logging.WARNING)) == 2  # + job
    rig.assert_counts_match()
    assert_ledger_sound(rig.controller)


async def test_hold_for_a_canister_that_does_not_exist_ends_the_job_partial(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The machine holds for an empty canister 42, which it does not have: the runner
    cannot clear that, stops the machine and books what was packed."""
    caplog.set_level(logging.INFO, logger="doseline")
    await rig.submit(job("J1", 30, ((PARA, 1), (METO, 1))))
    await mid_job(rig, "J1")
    await rig.sim.misreport(stop_reason=int(StopReason.CANISTER_EMPTY), stop_canister=42)
    rig.sim.inject_jam()  # the real machine holds; it says why wrongly
    await rig.until_state("J1", "completed", "partial", "failed", timeout_s=20)
    await rig.sim.misreport()

    record = rig.controller.store.job("J1")
    assert record.state == "partial"
    assert "canister 42" in record.reason
    assert 0 < record.good < 30
    led = rig.controller.ledger
    assert led.open_reservation_count() == 0
    assert led.moved_quantity("consume") == 2 * record.good
    rig.assert_counts_match()
    assert len(log_lines(caplog, "canister 42", level=logging.ERROR)) == 1
    assert_ledger_sound(rig.controller)
