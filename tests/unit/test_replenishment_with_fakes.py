"""Replenishment against the in-memory cabinet and a real SQLite ledger file: a low
pocket read by the poller is planned, picked, scanned and told to the cabinet, with no
socket anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.app import Controller
from controller.cabinets.poller import CabinetPoller, pocket_location
from controller.cabinets.replenishment import RefillState, Replenishment, pack_of, pocket_label
from controller.gs1 import encode_pack
from drivers.base import CabinetCommand
from drivers.fakes import FakeCabinet, FakePocket
from tests.sites import PARA, make_site

P01 = pocket_location("CAB1", 1)


@dataclass
class Ward:
    controller: Controller
    cabinet: FakeCabinet
    poller: CabinetPoller
    replenishment: Replenishment


@pytest.fixture
async def ward(tmp_path: Path) -> AsyncIterator[Ward]:
    site = make_site()
    controller = Controller(site, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    controller.prepare_ledger()
    controller.receive_opening_stock(datetime.now(UTC).date())
    config = site.cabinets[0]
    cabinet = FakeCabinet(
        config.name,
        pockets=[
            FakePocket(1, article=100001, count=12, min_level=5, max_level=20),
            FakePocket(2, article=100002, count=8, min_level=4, max_level=10),
        ],
    )
    pollers: dict[str, CabinetPoller] = {}
    replenishment = Replenishment(
        controller.aledger,
        controller.metrics,
        pollers,
        site.store.all_bins,
        reservation_timeout_s=site.ledger.reservation_timeout_s,
        settings=site.replenishment,
    )
    poller = CabinetPoller(
        config, cabinet, controller.aledger, controller.metrics, on_low=replenishment.request
    )
    poller.refill_in_flight = replenishment.in_flight
    pollers[config.name] = poller
    await poller.adopt(site.store.all_bins)
    try:
        yield Ward(controller, cabinet, poller, replenishment)
    finally:
        await replenishment.drain()
        await poller.close()
        controller.close()


async def test_a_low_pocket_is_refilled_and_the_cabinet_told(ward: Ward) -> None:
    led, cabinet, repl = ward.controller.ledger, ward.cabinet, ward.replenishment
    cabinet.withdraw(1, 10)  # 2 left, below the min of 5
    await ward.poller.poll_once()
    (refill,) = repl.refills
    assert (refill.pocket.number, refill.quantity, refill.urgent) == (1, 18, False)
    assert refill.state == RefillState.RESERVED

    (pick,) = await repl.make_pick_lists(round_at=datetime.now(UTC))
    assert refill.state == RefillState.PICKING
    assert (await repl.on_scan(pick.barcode, "SC1")).accepted
    assert (await repl.on_scan(pocket_label("CAB1", 1), "SC1")).accepted
    for n, (_, line) in enumerate(pick.lines()):
        outcome = await repl.on_scan(encode_pack(pack_of(line, f"S{n}")), "SC1")
        assert outcome.accepted, outcome.message

    assert refill.state == RefillState.CONFIRMED
    (sequence, command, pocket, quantity) = cabinet.calls_to("send_command")[-1]
    assert (command, pocket, quantity) == (CabinetCommand.REFILL, 1, 18)
    assert sequence == refill.command_sequence
    assert cabinet.pockets[1].count == 20
    assert led.on_hand(P01, PARA) == 20
    await ward.poller.poll_once()  # the cabinet and the ledger agree: nothing raised
    assert led.discrepancies() == []
    assert led.open_reservation_count() == 0


async def test_a_pocket_with_a_refill_under_way_asks_for_no_second_one(ward: Ward) -> None:
    ward.cabinet.withdraw(1, 10)
    await ward.poller.poll_once()
    ward.cabinet.withdraw(1, 1)
    await ward.poller.poll_once()
    assert len(ward.replenishment.refills) == 1
    assert ward.cabinet.calls_to("send_command") == []
