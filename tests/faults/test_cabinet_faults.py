"""Ward cabinets under faults: the controller's cabinet services (pollers, replenishment,
housekeeping, as `doseline run` starts them) against the Modbus cabinet simulator, on
Modbus TCP and on a Modbus RTU line shared by two cabinets, behind a fault relay.

For each link and each fault: the link state machine goes where docs/replenishment.md
says (degraded at the first failed poll, offline after three, online again with the
time away), each change is logged once and shown in `doseline_cabinet_link_state`; the
link is back within a bound after the fault clears; every dose taken meanwhile is booked
once, the ledger's pockets equal the cabinet's counts, and the ledger's invariants hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.app import Controller
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import pack_of, pocket_label
from controller.config import parse_site
from controller.gs1 import encode_pack
from drivers.modbus_cabinet import ModbusCabinetDriver
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from tests.faults.conftest import (
    TODAY,
    assert_ledger_sound,
    log_lines,
    report,
    sample,
    wait_for,
)
from tests.faults.proxy import FaultProxy, flip_last_byte
from tests.sites import METO, PARA, site_dict

pytestmark = pytest.mark.timeout(60)

RECOVERY_BOUND_S = 10.0
POCKETS = {1: PARA, 2: METO}


def specs(cabinet_id: int, second_pocket: int = 2) -> CabinetSpec:
    return CabinetSpec(
        cabinet_id,
        [
            PocketSpec(1, 100001, 12, 5, 20, 20),
            PocketSpec(second_pocket, 100002, 8, 4, 10, 10),
        ],
    )


@dataclass
class Rig:
    kind: str
    sim: CabinetSimulator
    proxy: FaultProxy
    controller: Controller

    @property
    def cabinets(self) -> list[str]:
        return ["CAB1", "CAB2"] if self.kind == "rtu" else ["CAB1"]

    def link(self, cabinet: str = "CAB1") -> str:
        return self.controller.pollers[cabinet].link.state.value

    def gauge(self, state: str, cabinet: str = "CAB1") -> float:
        return sample(self.controller, "doseline_cabinet_link_state", cabinet=cabinet, state=state)

    def entries(self, state: str, cabinet: str = "CAB1") -> float:
        return sample(
            self.controller, "doseline_cabinet_link_transitions_total", cabinet=cabinet, state=state
        )

    def metric(self, name: str, cabinet: str = "CAB1") -> float:
        return sample(self.controller, name, device=cabinet)

    async def device_off(self) -> None:
        """The cabinets' server goes off: nothing listens at its address."""
        await self.sim.stop()
        self.proxy.cut(refuse=True)

    async def device_on(self) -> None:
        await self.sim.start()
        await self.proxy.restore()

    async def until_link(self, state: str, timeout_s: float, cabinet: str = "CAB1") -> float:
        return await wait_for(lambda: self.link(cabinet) == state, timeout_s, f"{cabinet} {state}")

    async def until_booked(self, timeout_s: float = 10) -> float:
        """Until every pocket's ledger stock is what the cabinet counts."""
        return await wait_for(self.counts_match, timeout_s, "ledger equals the cabinets")

    def counts_match(self) -> bool:
        led = self.controller.ledger
        return all(
            led.on_hand(pocket_location(cab, number), gtin) == self.sim.pocket(unit, number).count
            for unit, cab in enumerate(self.cabinets, start=1)
            for number, gtin in POCKETS.items()
        )

    def withdrawn(self) -> int:
        """Doses the cabinets' counters say were taken, all pockets."""
        return sum(
            self.sim.pocket(unit, number).withdrawals_total
            for unit, _cab in enumerate(self.cabinets, start=1)
            for number in POCKETS
        )


def build_controller(kind: str, proxy: FaultProxy, ledger_url: str) -> Controller:
    raw = site_dict(ledger_url=ledger_url)
    raw["packers"], raw["scanners"] = [], []
    cab = raw["cabinets"][0]
    if kind == "tcp":
        cab["address"] = f"tcp://127.0.0.1:{proxy.port}"
    else:
        cab["driver"], cab["address"] = "modbus_rtu", f"socket://127.0.0.1:{proxy.port}"
        raw["cabinets"].append({**cab, "name": "CAB2", "ward": "W2", "unit_id": 2})
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    for driver in controller.cabinet_drivers.values():
        # Short timeouts, so that a silent cabinet is noticed in half a second.
        assert isinstance(driver, ModbusCabinetDriver)
        driver.bus.timeout = 0.5
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    return controller


@pytest.fixture(params=["tcp", "rtu"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _rig(kind: str, ledger_url: str, **sim_options: object) -> AsyncGenerator[Rig, None]:
    cabinets = [specs(1), specs(2)] if kind == "rtu" else [specs(1)]
    cabinets = sim_options.pop("cabinets", cabinets)  # type: ignore[assignment]
    # time_factor 1: the heartbeat moves once a second; nurses only when told to.
    sim = CabinetSimulator(
        cabinets=cabinets, time_factor=1.0, transport="rtu" if kind == "rtu" else "tcp"
    )
    await sim.start()
    proxy = FaultProxy(sim.port)
    await proxy.start()
    controller = build_controller(kind, proxy, ledger_url)
    try:
        await controller.adopt_cabinets()
        await controller.start()
        rig = Rig(kind, sim, proxy, controller)
        for cab in rig.cabinets:
            await rig.until_link("online", 10, cab)
        yield rig
    finally:
        await controller.stop()
        controller.close()
        await proxy.stop()
        await sim.stop()


@pytest.fixture
async def rig(kind: str, tmp_path: Path) -> AsyncIterator[Rig]:
    """A cabinet (TCP) or two on one line (RTU) behind a fault relay; SQLite ledger."""
    async for made in _rig(kind, f"sqlite:///{tmp_path / 'ledger.db'}"):
        yield made


@pytest.fixture
async def rig_both_ledgers(kind: str, ledger_url: str) -> AsyncIterator[Rig]:
    """The same, on SQLite and on PostgreSQL."""
    async for made in _rig(kind, ledger_url):
        yield made


def transitions(caplog: pytest.LogCaptureFixture, cabinet: str = "CAB1") -> list[str]:
    """The link changes logged for a cabinet, in order."""
    return [
        line.split(": ", 2)[1] if " -> online after" not in line else "-> online"
        for line in log_lines(caplog, f"cabinet {cabinet}: ", level=logging.INFO)
        if " -> " in line
    ]


# --- 1. the link drops while the cabinet is polled -----------------------------------


async def test_link_cut_goes_offline_and_back_and_books_each_dose_once(
    rig_both_ledgers: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_both_ledgers
    caplog.set_level(logging.INFO, logger="doseline")
    rig.sim.withdraw(1, 1, 2)
    await rig.until_booked()
    rig.proxy.cut(refuse=True)
    await rig.until_link("offline", 10)
    assert rig.gauge("offline") == 1 and rig.gauge("online") == 0
    assert sample(rig.controller, "doseline_cabinet_up", cabinet="CAB1") == 0
    for unit in range(1, len(rig.cabinets) + 1):  # nurses go on meanwhile
        rig.sim.withdraw(unit, 1, 3)
        rig.sim.withdraw(unit, 2, 1)
    await asyncio.sleep(0.5)  # more polls fail: nothing more is logged
    await rig.proxy.restore()
    back_s = await rig.until_link("online", RECOVERY_BOUND_S)
    booked_s = await rig.until_booked()
    report(f"cabinet[{rig.kind}] link cut", online=back_s, booked=back_s + booked_s)

    assert rig.gauge("online") == 1 and rig.gauge("offline") == 0
    assert rig.entries("degraded") == 1 and rig.entries("offline") == 1
    assert rig.metric("doseline_driver_reconnects_total") == 1
    assert rig.metric("doseline_driver_errors_total") >= 3
    assert transitions(caplog) == ["online -> degraded", "degraded -> offline", "-> online"]
    assert rig.controller.ledger.moved_quantity("consume") == rig.withdrawn()
    await wait_for(
        lambda: sample(rig.controller, "doseline_cabinet_withdrawals_total", cabinet="CAB1") == 6,
        5,
        "withdrawals counted",
    )
    assert_ledger_sound(rig.controller)


# --- 2. the cabinet stops answering ----------------------------------------------------


async def test_silent_cabinet_goes_offline_alone_and_comes_back(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection stays open, the cabinet hears but does not answer. On the RTU line
    the other cabinet is polled on and stays online."""
    caplog.set_level(logging.INFO, logger="doseline")
    rig.sim.set_silent(1, True)
    offline_s = await rig.until_link("offline", 10)
    rig.sim.withdraw(1, 1, 4)
    await asyncio.sleep(0.5)
    rig.sim.set_silent(1, False)
    back_s = await rig.until_link("online", RECOVERY_BOUND_S)
    await rig.until_booked()
    report(f"cabinet[{rig.kind}] silent", offline=offline_s, online=back_s)

    assert transitions(caplog) == ["online -> degraded", "degraded -> offline", "-> online"]
    assert rig.controller.ledger.moved_quantity("consume") == 4
    if rig.kind == "rtu":
        assert rig.link("CAB2") == "online"
        assert rig.entries("degraded", "CAB2") == rig.entries("offline", "CAB2") == 0
        assert transitions(caplog, "CAB2") == []
    assert_ledger_sound(rig.controller)


# --- 3. the cabinet restarts -----------------------------------------------------------


async def test_restart_with_a_refill_booked_meanwhile_tells_it_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A pocket runs low, its refill is picked and scanned into the pocket while the
    cabinet is restarting. The booking does not wait for the cabinet; the cabinet is
    told once it is back, acts on it once, and the pocket agrees with the ledger."""
    caplog.set_level(logging.INFO, logger="doseline")
    replenishment = rig.controller.replenishment
    rig.sim.withdraw(1, 2, 5)  # 8 -> 3, below min 4
    await wait_for(lambda: bool(replenishment.refills), 10, "a refill is requested")
    [refill] = replenishment.refills
    [pick] = await replenishment.make_pick_lists()
    assert (await replenishment.on_scan(pick.barcode, "S1")).accepted
    assert (await replenishment.on_scan(pocket_label("CAB1", 2), "S1")).accepted

    await rig.device_off()
    outcome = await replenishment.on_scan(encode_pack(pack_of(refill.lines[0], "SN1")), "S1")
    assert outcome.accepted, outcome.message
    await asyncio.sleep(2.0)  # replenishment ticks on, and cannot tell the cabinet
    await rig.until_link("offline", 10)
    await rig.device_on()
    back_s = await rig.until_link("online", RECOVERY_BOUND_S)
    told_s = await wait_for(lambda: refill.state.value == "confirmed", 10, "cabinet told")
    await rig.until_booked()
    report(f"cabinet[{rig.kind}] restart mid-refill", online=back_s, told=told_s)

    assert rig.sim.pocket(1, 2).count == 3 + refill.quantity == 10
    assert rig.sim.pocket(1, 2).refills_total == refill.quantity
    assert rig.sim.commands_executed(1) == 1
    assert len(log_lines(caplog, "cabinet not told yet", level=logging.WARNING)) == 1
    assert rig.controller.ledger.open_reservation_count() == 0
    assert rig.metric("doseline_driver_reconnects_total") == 1
    assert_ledger_sound(rig.controller)


# --- 4. corrupt frames ---------------------------------------------------------------


def malformed_mbap(data: bytes) -> bytes:
    """A Modbus TCP reply whose MBAP header names another protocol and a wrong length."""
    if len(data) < 7:
        return data
    return data[:2] + b"\xff\xff" + (len(data) + 40).to_bytes(2, "big") + data[6:]


async def test_corrupt_replies_are_survived_and_book_nothing_twice(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Modbus TCP: replies with a malformed MBAP header. Modbus RTU: replies with a bad
    CRC and noise on the line. The polls that get them fail; the link comes back on its
    own, and the doses taken meanwhile are booked once."""
    caplog.set_level(logging.INFO, logger="doseline")
    rig.sim.withdraw(1, 1, 2)
    if rig.kind == "tcp":
        rig.proxy.corrupt_next(4, malformed_mbap)
    else:
        rig.proxy.inject(b"\x00\xff\x13garbage on the line\x55")
        rig.proxy.corrupt_next(4, flip_last_byte)
    await wait_for(lambda: rig.proxy.corruptions_pending == 0, 10, "corruption delivered")
    if rig.kind == "rtu":
        rig.proxy.inject(b"\x01\x03\x02")  # half a frame, then nothing
    rig.sim.withdraw(1, 1, 1)
    back_s = await rig.until_link("online", RECOVERY_BOUND_S)
    await rig.until_booked()
    await asyncio.sleep(0.3)  # a few more polls: nothing more is booked
    report(f"cabinet[{rig.kind}] corrupt frames", online=back_s)
    seen = transitions(caplog)
    assert seen[0] == "online -> degraded" and seen[-1] == "-> online", seen
    assert rig.metric("doseline_driver_errors_total") >= 1

    assert rig.controller.ledger.moved_quantity("consume") == rig.withdrawn() == 3
    assert rig.entries("offline") <= 1
    assert rig.counts_match()
    assert_ledger_sound(rig.controller)


# --- 5. values outside the register map's sense -------------------------------------


async def test_out_of_range_values_raise_alarms_and_book_nothing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A counter that goes backwards (a cabinet whose memory was reset), a count above
    the pocket's capacity, and temperatures of -0.1 degC (register 0xFFFF, which read as
    unsigned would be 6553.5 degC) and 3276.7 degC (the int16 sentinel)."""
    caplog.set_level(logging.INFO, logger="doseline")
    controller, sim = rig.controller, rig.sim
    led = controller.ledger
    sim.withdraw(1, 1, 2)
    await rig.until_booked()
    consumed = led.moved_quantity("consume")

    # A withdrawals counter going backwards books nothing and is raised once.
    sim.set_counters(1, 1, withdrawals_total=0)
    await wait_for(lambda: led.open_discrepancy_count() >= 1, 10, "discrepancy raised")
    await asyncio.sleep(0.3)
    assert led.moved_quantity("consume") == consumed
    assert led.on_hand(pocket_location("CAB1", 1), PARA) == sim.pocket(1, 1).count == 10
    assert len(log_lines(caplog, "went backwards", level=logging.ERROR)) == 1
    # Counting goes on from the new value.
    sim.withdraw(1, 1, 1)
    await rig.until_booked()
    assert led.moved_quantity("consume") == consumed + 1

    # A count above the capacity (and no counter moved): a discrepancy, nothing booked.
    sim.set_raw_count(1, 2, 65535)
    await wait_for(lambda: led.open_discrepancy_count() >= 2, 10, "discrepancy raised")
    await asyncio.sleep(0.3)
    assert led.on_hand(pocket_location("CAB1", 2), METO) == 8
    assert len(log_lines(caplog, "cabinet counts 65535", level=logging.WARNING)) == 1
    assert not controller.replenishment.refills
    sim.set_raw_count(1, 2, 8)

    # Temperatures at the ends of the register.
    sim.set_temperature(1, -0.1)
    await rig.until_link("temperature_alarm", 10)
    temperature = sample(controller, "doseline_cabinet_temperature_celsius", cabinet="CAB1")
    assert temperature == pytest.approx(-0.1)
    sim.set_temperature(1, 6553.5)  # the register holds 3276.7 at most
    await wait_for(
        lambda: (
            sample(controller, "doseline_cabinet_temperature_celsius", cabinet="CAB1")
            == pytest.approx(3276.7)
        ),
        10,
        "sentinel temperature shown",
    )
    sim.set_temperature(1, 21.0)
    back_s = await rig.until_link("online", RECOVERY_BOUND_S)
    report(f"cabinet[{rig.kind}] out-of-range values", online=back_s)
    excursions = sample(controller, "doseline_cabinet_temperature_excursions_total", cabinet="CAB1")
    assert excursions == 1  # one trip out of the band, however far
    assert len(log_lines(caplog, "temperature excursion", level=logging.ERROR)) == 1
    # The excursion counter going back (a reset cabinet) is no excursion, 4 billion of
    # them least of all.
    sim.set_temperature_excursions(1, 0)
    await wait_for(
        lambda: bool(log_lines(caplog, "excursion counter went backwards")), 10, "noticed"
    )
    await asyncio.sleep(0.3)
    assert len(log_lines(caplog, "excursion counter went backwards", level=logging.ERROR)) == 1
    assert sample(controller, "doseline_cabinet_temperature_excursions_total", cabinet="CAB1") == 1
    assert transitions(caplog) == ["online -> temperature_alarm", "-> online"]
    assert rig.counts_match()
    assert_ledger_sound(controller)


async def test_a_pocket_number_the_site_does_not_know_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cabinet reports pocket 7 where the site file has pocket 2: pocket 1 is booked
    as ever, nothing is booked for a pocket nobody configured, and the mismatch is
    logged once, not at every poll."""
    caplog.set_level(logging.INFO, logger="doseline")
    made = _rig("tcp", f"sqlite:///{tmp_path / 'l.db'}", cabinets=[specs(1, 7)])
    rig = await anext(made)
    try:
        led = rig.controller.ledger
        rig.sim.withdraw(1, 1, 2)
        rig.sim.withdraw(1, 7, 3)
        await wait_for(lambda: led.moved_quantity("consume") == 2, 10, "pocket 1 booked")
        await asyncio.sleep(0.5)
        assert led.moved_quantity("consume") == 2
        assert led.on_hand(pocket_location("CAB1", 2), METO) == 0  # never adopted
        assert len(log_lines(caplog, "pocket 7", level=logging.ERROR)) == 1
        assert len(log_lines(caplog, "pocket 2", level=logging.ERROR)) == 1
        assert rig.link() == "online"
        assert_ledger_sound(rig.controller)
    finally:
        await made.aclose()
