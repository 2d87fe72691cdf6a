"""Cabinet stock through the controller over Modbus TCP: waste and counts at the
cabinet, scheduled and urgent refill rounds, refills across a restart, link states and
a cold cabinet's temperature excursion. Real simulator, real ledger (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.app import Controller
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import RefillState, next_round, pack_of, pocket_label
from controller.cli import main
from controller.config import parse_site
from controller.gs1 import encode_pack
from controller.ledger import LedgerError, verify_ledger
from drivers.base import DriverError
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from tests.sites import METO, PARA, site_dict

TODAY = datetime.now(UTC).date()


class Clock:
    """The site's wall clock, moved by the test."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def site_raw(sim: CabinetSimulator, *, cold: bool = False) -> dict[str, Any]:
    raw = site_dict(cabinet_address=sim.address)
    raw["packers"] = []
    raw["scanners"] = []
    raw["site"]["timezone"] = "UTC"
    raw["cabinets"][0]["cold"] = cold
    raw["replenishment"] = {"rounds": ["07:00", "13:00"], "round_due_minutes": 60}
    return raw


def make_controller(
    sim: CabinetSimulator, ledger_url: str, clock: Clock, *, cold: bool = False
) -> Controller:
    return Controller(parse_site(site_raw(sim, cold=cold)), ledger_url=ledger_url, clock=clock)


@pytest.fixture
async def site(
    ledger_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Callable[..., Controller], CabinetSimulator, Clock]]:
    cold = getattr(request, "param", False)
    sim = CabinetSimulator(
        cabinets=[
            CabinetSpec(
                1,
                [PocketSpec(1, 100001, 12, 5, 20, 30), PocketSpec(2, 100002, 8, 4, 10, 12)],
                cold=cold,
            )
        ],
        time_factor=0,
    )
    await sim.start()
    clock = Clock(datetime.combine(TODAY, time(8, 0), tzinfo=UTC))
    made: list[Controller] = []

    def controller() -> Controller:
        c = make_controller(sim, ledger_url, clock, cold=cold)
        made.append(c)
        return c

    try:
        yield controller, sim, clock
    finally:
        for c in made:
            await c.stop()
            c.close()
        await sim.stop()


async def ready(controller: Controller) -> Controller:
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    await controller.adopt_cabinets()
    return controller


def stock(controller: Controller, number: int, gtin: str) -> int:
    return controller.ledger.on_hand(pocket_location("CAB1", number), gtin)


async def test_waste_returns_and_counts_at_the_cabinet_across_missed_polls(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    poller = controller.pollers["CAB1"]
    # Four things happen between two polls.
    sim.withdraw(1, 1, 3)  # 12 -> 9
    sim.waste(1, 1, 2)  # 9 -> 7: two tablets dropped
    sim.return_doses(1, 1, 1)  # 7 -> 8
    sim.stocktake(1, 1, 6)  # a nurse counts 6: two are missing
    await poller.poll_once()
    assert stock(controller, 1, PARA) == 6 == sim.pocket(1, 1).count
    assert controller.ledger.moved_quantity("consume") == 3
    assert controller.ledger.moved_quantity("waste") == 2
    assert poller.counted_booked == -2
    [found] = controller.ledger.discrepancies()
    assert (found.source, found.device_value, found.ledger_value) == ("count", 6, 8)
    # A count that finds more puts it on the lot that is there.
    sim.stocktake(1, 1, 7)
    await poller.poll_once()
    await poller.poll_once()
    assert stock(controller, 1, PARA) == 7 == sim.pocket(1, 1).count
    assert len(controller.ledger.discrepancies()) == 2
    # A count that agrees with the ledger raises nothing.
    sim.stocktake(1, 1, 7)
    sim.withdraw(1, 1, 1)
    await poller.poll_once()
    assert len(controller.ledger.discrepancies()) == 2
    assert stock(controller, 1, PARA) == 6
    assert verify_ledger(controller.ledger.engine) == []


async def test_a_low_pocket_waits_for_the_round_and_an_empty_one_goes_at_once(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, sim, clock = site
    controller = await ready(make())
    refills = controller.replenishment
    refills.tick_s = 0.02
    serve = asyncio.create_task(refills.serve())
    try:
        sim.withdraw(1, 1, 8)  # 12 -> 4, below min 5: scheduled
        await controller.pollers["CAB1"].poll_once()
        [low] = refills.refills
        assert not low.urgent
        assert low.due_at == datetime.combine(TODAY, time(14, 0), tzinfo=UTC)
        await asyncio.sleep(0.2)
        assert low.state == RefillState.RESERVED  # 08:00: the 13:00 round has not come
        assert refills.metrics.registry.get_sample_value("doseline_refills_overdue") == 0

        sim.withdraw(1, 2, 8)  # 8 -> 0: urgent, with the low pocket riding along
        await controller.pollers["CAB1"].poll_once()
        empty = next(r for r in refills.refills if r.pocket.number == 2)
        assert empty.urgent and empty.due_at == clock.at + timedelta(minutes=30)
        pick = await asyncio.wait_for(refills.pick_lists.get(), 5)
        assert pick.urgent and {r.pocket.number for r in pick.refills} == {1, 2}

        sim.withdraw(1, 1, 3)  # pocket 1 already has its refill: nothing new is asked
        await controller.pollers["CAB1"].poll_once()
        assert len(refills.refills) == 2

        # At 13:00 the scheduled round is made.
        clock.at = datetime.combine(TODAY, time(13, 0, 1), tzinfo=UTC)
        await asyncio.sleep(0.2)
        assert refills.rounds_made >= 1
        # Past its due time and not picked: overdue.
        clock.at = datetime.combine(TODAY, time(15, 0), tzinfo=UTC)
        refills._update_pending()
        assert refills.metrics.registry.get_sample_value("doseline_refills_overdue") == 2
        assert (
            refills.metrics.registry.get_sample_value(
                "doseline_pick_lists_total", {"kind": "urgent"}
            )
            == 1
        )
    finally:
        serve.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serve


async def test_refills_are_taken_up_after_a_restart(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, sim, _clock = site
    first = await ready(make())
    sim.withdraw(1, 1, 8)  # 12 -> 4
    sim.withdraw(1, 2, 5)  # 8 -> 3
    await first.pollers["CAB1"].poll_once()
    [pick] = await first.replenishment.make_pick_lists()
    one, two = sorted(first.replenishment.refills, key=lambda r: r.pocket.number)
    # Pocket 1 is scanned in full; the cabinet acts on the command, but its replies
    # are lost, so the controller cannot know.
    assert (await first.replenishment.on_scan(pick.barcode, "S1")).accepted
    assert (await first.replenishment.on_scan(pocket_label("CAB1", 1), "S1")).accepted
    sim.set_silent(1, True)
    for line in one.lines:
        await first.replenishment.on_scan(encode_pack(pack_of(line, "SN1")), "S1")
    assert one.state == RefillState.BOOKED
    assert stock(first, 1, PARA) == 20 and sim.pocket(1, 1).count == 20
    executed = sim.commands_executed(1)
    await first.stop()
    first.close()
    sim.set_silent(1, False)

    second = make()
    counts = await second.replenishment.recover(second.site.cabinets)
    assert counts == {"kept": 1, "booked": 1, "cancelled": 0}
    # Booked: told again with the same sequence, which the cabinet does not act on twice.
    assert await second.replenishment.tell_cabinets() == 1
    assert sim.pocket(1, 1).count == 20 == stock(second, 1, PARA)
    assert sim.commands_executed(1) == executed
    assert await second.replenishment.tell_cabinets() == 0
    # Kept: pocket 2 is still on its pick list, and its scan still works.
    [again] = [p for p in second.replenishment.lists.values() if p.status == "open"]
    assert again.list_id == pick.list_id
    refill = next(r for r in second.replenishment.refills if r.pocket.number == 2)
    assert refill.state == RefillState.PICKING and refill.quantity == two.quantity
    assert (await second.replenishment.on_scan(again.barcode)).accepted
    assert (await second.replenishment.on_scan(pocket_label("CAB1", 2))).accepted
    for line in refill.lines:
        outcome = await second.replenishment.on_scan(encode_pack(pack_of(line, "SN2")))
        assert outcome.accepted, outcome.message
    assert sim.pocket(1, 2).count == 10 == stock(second, 2, METO)
    assert second.ledger.open_reservation_count() == 0
    assert second.replenishment.lists[again.list_id].status == "done"
    await second.pollers["CAB1"].poll_once()
    assert second.ledger.discrepancies() == []
    assert verify_ledger(second.ledger.engine) == []
    # New refills and lists after the restart number on from those made before it: a
    # list id made again would be refused by the ledger, and its refills never picked.
    sim.withdraw(1, 2, 7)  # 10 -> 3
    await second.pollers["CAB1"].poll_once()
    [fresh] = await second.replenishment.make_pick_lists()
    assert fresh.list_id != pick.list_id
    assert int(fresh.list_id.rsplit("-", 1)[1]) > int(pick.list_id.rsplit("-", 1)[1])


async def test_a_restart_before_the_reservation_cancels_the_refill(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, _sim, clock = site
    first = await ready(make())
    cabinet = first.site.cabinets[0]
    # The row is written, then the controller stops before reserving.
    await first.aledger.run(
        first.replenishment.store.add,
        refill_id="CAB1-P01-lost",
        cabinet="CAB1",
        pocket=1,
        gtin=PARA,
        quantity=5,
        urgent=False,
        reservation_key="refill:CAB1-P01-lost",
        created_at=clock.at,
        due_at=clock.at,
    )
    second = make()
    assert await second.replenishment.recover([cabinet]) == {
        "kept": 0,
        "booked": 0,
        "cancelled": 1,
    }
    [row] = second.replenishment.store.refills()
    assert row.state == "cancelled" and "before its stock was reserved" in (row.cancel_reason or "")


async def test_link_states_follow_the_cabinet(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    poller = controller.pollers["CAB1"]
    await poller.poll_once()
    assert poller.link.state == "online"
    sim.set_door(1, True)
    await poller.poll_once()
    assert poller.link.state == "door_open"
    sim.set_door(1, False)
    sim.set_temperature(1, 30.0)
    await poller.poll_once()
    assert poller.link.state == "temperature_alarm"
    sim.set_temperature(1, 21.0)
    await poller.poll_once()
    assert poller.link.state == "online"
    state = controller.metrics.registry.get_sample_value
    assert state("doseline_cabinet_link_state", {"cabinet": "CAB1", "state": "online"}) == 1
    # A room cabinet's excursion is alarmed but holds nothing.
    assert controller.ledger.holds() == []
    assert state("doseline_cabinet_temperature_excursions_total", {"cabinet": "CAB1"}) == 1


@pytest.mark.parametrize("site", [True], indirect=True)
@pytest.mark.parametrize("decision", ["release", "waste"])
async def test_a_cold_cabinet_excursion_quarantines_until_a_pharmacist_decides(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
    decision: str,
    ledger_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    poller = controller.pollers["CAB1"]
    sim.withdraw(1, 2, 5)  # 8 -> 3: a refill is open when the fridge fails
    await poller.poll_once()
    assert len(controller.replenishment.refills) == 1
    sim.set_temperature(1, 11.5)
    sim.set_temperature(1, 6.0)  # back in the band before the next poll: still seen
    await poller.poll_once()
    held = controller.ledger.holds(location="CAB1")
    assert {(h.location, h.quantity_at_hold) for h in held} == {("CAB1/P01", 12), ("CAB1/P02", 3)}
    assert all("11.5" in h.reason or "excursion" in h.reason for h in held)
    assert sim.pocket(1, 1).locked and sim.pocket(1, 2).locked
    assert sim.withdraw(1, 1, 1) == 0  # nurses cannot take quarantined doses
    [refill] = controller.replenishment.refills
    assert refill.state == RefillState.CANCELLED
    assert controller.ledger.open_reservation_count() == 0
    await poller.poll_once()
    assert controller.replenishment.refills == [refill]  # no refill into quarantine

    # The pharmacist looks and decides, from the command line (another ledger link).
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_raw(sim, cold=True)), encoding="utf-8")
    common = ["--config", str(site_file), "--db", ledger_url]
    capsys.readouterr()
    assert main(["cabinets", "holds", *common]) == 0
    listed = capsys.readouterr().out
    assert "CAB1/P01" in listed and "CAB1/P02" in listed and "excursion" in listed
    argv = ["cabinets", decision, *common, "--cabinet", "CAB1", "--actor", "pharmacist:ann"]
    with pytest.raises(SystemExit):  # a decision needs its reason
        main(argv)
    capsys.readouterr()
    assert main([*argv, "--note", "checked the logger: 40 min at 11.5 °C"]) == 0
    assert f"{decision}d" in capsys.readouterr().out
    assert main(["cabinets", "holds", *common]) == 0
    assert "no stock on hold" in capsys.readouterr().out
    await poller.poll_once()
    assert not sim.pocket(1, 1).locked and not sim.pocket(1, 2).locked
    expected = {"release": (12, 3), "waste": (0, 0)}[decision]
    assert (sim.pocket(1, 1).count, sim.pocket(1, 2).count) == expected
    assert (stock(controller, 1, PARA), stock(controller, 2, METO)) == expected
    await poller.poll_once()
    assert controller.ledger.discrepancies() == []
    # Refills flow again: pocket 2 is below its min either way.
    assert any(r.open for r in controller.replenishment.refills)
    assert verify_ledger(controller.ledger.engine) == []


def test_next_round_is_the_first_one_after_now() -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Europe/Stockholm")
    rounds = [time(7, 0), time(13, 0)]
    at = datetime(2026, 11, 22, 11, 0, tzinfo=UTC)  # 12:00 in Stockholm
    assert next_round(at, rounds, tz) == datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    at = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)  # exactly 13:00: the next is tomorrow
    assert next_round(at, rounds, tz) == datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


async def test_a_booked_refill_is_told_once_when_two_tasks_try_at_once(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    refills = controller.replenishment
    sim.withdraw(1, 1, 8)  # 12 -> 4
    await controller.pollers["CAB1"].poll_once()
    [pick] = await refills.make_pick_lists()
    [refill] = pick.refills
    assert (await refills.on_scan(pick.barcode)).accepted
    assert (await refills.on_scan(pocket_label("CAB1", 1))).accepted
    sim.set_stalled(1, True)  # the cabinet does not act on commands for now
    scans = [
        refills.on_scan(encode_pack(pack_of(line, f"SN{i}"))) for i, line in enumerate(refill.lines)
    ]
    confirming = asyncio.gather(*scans)
    await asyncio.sleep(0.3)
    assert refill.state == RefillState.BOOKED
    retry = asyncio.create_task(refills.tell_cabinets())  # the serve loop's retry
    await asyncio.sleep(0.1)
    sim.set_stalled(1, False)
    await confirming
    assert await retry == 0  # the confirmation was already telling the cabinet
    assert refill.state == RefillState.CONFIRMED
    assert sim.pocket(1, 1).count == 20 == stock(controller, 1, PARA)
    await controller.pollers["CAB1"].poll_once()
    assert controller.ledger.discrepancies() == []


async def test_operators_see_refills_and_discrepancies_from_the_command_line(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
    ledger_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    sim.withdraw(1, 1, 8)  # 12 -> 4: a refill
    sim.stocktake(1, 2, 5)  # a nurse counts 5 where the ledger has 8
    await controller.pollers["CAB1"].poll_once()
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_raw(sim)), encoding="utf-8")
    common = ["--config", str(site_file), "--db", ledger_url]
    capsys.readouterr()

    assert main(["cabinets", "refills", *common]) == 0
    out = capsys.readouterr().out
    assert "CAB1-P01" in out and "x16" in out and "reserved" in out and "due" in out
    assert main(["cabinets", "refills", *common, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["pocket"], row["quantity"], row["state"]) == (1, 16, "reserved")

    assert main(["cabinets", "discrepancies", *common, "--json"]) == 0
    [found] = json.loads(capsys.readouterr().out)
    assert (found["location"], found["device_value"], found["ledger_value"]) == ("CAB1/P02", 5, 8)
    assert (
        main(
            [
                "cabinets",
                "resolve",
                str(found["id"]),
                *common,
                "--actor",
                "tech:eva",
                "--note",
                "three found in the returns bin",
            ]
        )
        == 0
    )
    assert "resolved by tech:eva" in capsys.readouterr().out
    assert (
        main(
            [
                "cabinets",
                "resolve",
                str(found["id"]),
                *common,
                "--actor",
                "tech:eva",
                "--note",
                "again",
            ]
        )
        == 2
    )
    assert "already resolved" in capsys.readouterr().err
    assert main(["cabinets", "discrepancies", *common]) == 0
    assert "no open discrepancies" in capsys.readouterr().out


async def test_a_ledger_error_does_not_stop_polling(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    poller = controller.pollers["CAB1"]
    poller.config = poller.config.model_copy(update={"poll_interval_s": 0.05})
    poller.reconnect_max_s = 0.1
    real_consume = controller.aledger.consume
    failures = 3

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise LedgerError("database went away")
        return await real_consume(*args, **kwargs)

    monkeypatch.setattr(controller.aledger, "consume", flaky)
    sim.withdraw(1, 1, 3)
    serve = asyncio.create_task(poller.serve())
    try:
        for _ in range(100):
            if poller.withdrawals_booked == 3:
                break
            await asyncio.sleep(0.05)
    finally:
        serve.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serve
    assert failures == 0 and poller.withdrawals_booked == 3
    assert stock(controller, 1, PARA) == 9 == sim.pocket(1, 1).count


async def test_cabinet_reads_are_timed_and_a_reconnect_is_counted(
    site: tuple[Callable[..., Controller], CabinetSimulator, Clock],
) -> None:
    make, sim, _clock = site
    controller = await ready(make())
    poller = controller.pollers["CAB1"]
    sample = controller.metrics.registry.get_sample_value
    await poller.poll_once()
    reads = sample(
        "doseline_driver_latency_seconds_count", {"device": "CAB1", "operation": "read_status"}
    )
    assert reads is not None and reads >= 1
    assert sample("doseline_driver_reconnects_total", {"device": "CAB1"}) in (None, 0.0)
    await sim.stop()
    with pytest.raises(DriverError):
        await poller.poll_once()
    assert (sample("doseline_driver_errors_total", {"device": "CAB1"}) or 0) >= 1
    await sim.start()
    await poller.poll_once()
    assert sample("doseline_driver_reconnects_total", {"device": "CAB1"}) == 1.0
