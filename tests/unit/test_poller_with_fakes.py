"""The cabinet poller against the in-memory cabinet and a real SQLite ledger file: no
sockets, no simulator. Counters are set on the fake as the cabinet would move them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.app import Controller
from controller.cabinets.counter_rules import COUNTER_WRAP
from controller.cabinets.poller import CabinetPoller, pocket_location
from drivers.fakes import FakeCabinet, FakePocket
from tests.sites import METO, PARA, make_site

P01 = pocket_location("CAB1", 1)


@dataclass
class Ward:
    controller: Controller
    cabinet: FakeCabinet
    poller: CabinetPoller


@pytest.fixture
async def ward(tmp_path: Path) -> AsyncIterator[Ward]:
    """CAB1's pockets as the site file has them (12 and 8 doses), the paracetamol
    pocket's withdrawal counter two short of its wrap; adopted from the store."""
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
    cabinet.pockets[1].withdrawals_total = COUNTER_WRAP - 2
    poller = CabinetPoller(config, cabinet, controller.aledger, controller.metrics)
    await poller.adopt(site.store.all_bins)
    try:
        yield Ward(controller, cabinet, poller)
    finally:
        await poller.close()
        controller.close()


async def test_a_withdrawal_across_the_counter_wrap_is_booked_once(ward: Ward) -> None:
    led = ward.controller.ledger
    assert led.on_hand(P01, PARA) == 12  # adopted
    assert ward.cabinet.withdraw(1, 3) == 3
    assert ward.cabinet.pockets[1].withdrawals_total == 1  # wrapped
    await ward.poller.poll_once()
    await ward.poller.poll_once()  # nothing new: nothing booked again
    assert led.moved_quantity("consume") == 3
    assert ward.poller.withdrawals_booked == 3
    assert led.on_hand(P01, PARA) == 9 == ward.cabinet.pockets[1].count
    assert led.discrepancies() == []


async def test_a_counter_that_went_backwards_books_nothing_and_is_raised(ward: Ward) -> None:
    led = ward.controller.ledger
    ward.cabinet.pockets[2].waste_total = 7  # 7 of its 8 doses discarded
    await ward.poller.poll_once()
    ward.cabinet.pockets[2].waste_total = 3  # a cabinet that lost its memory
    await ward.poller.poll_once()
    assert led.moved_quantity("waste") == 7
    details = [d.detail for d in led.discrepancies()]
    assert "waste counter went backwards from 7 to 3" in details


async def test_more_withdrawn_than_the_ledger_holds_books_what_is_there(ward: Ward) -> None:
    led = ward.controller.ledger
    pocket = ward.cabinet.pockets[2]
    pocket.withdrawals_total += 11  # the cabinet reports 11 doses out of a pocket of 8
    pocket.count = 0
    await ward.poller.poll_once()
    assert led.moved_quantity("consume") == 8
    assert led.on_hand(pocket_location("CAB1", 2), METO) == 0
    details = [d.detail for d in led.discrepancies()]
    assert (
        f"withdrawals of 11 reported, the ledger held only 8 at {pocket_location('CAB1', 2)}"
        in (details)
    )
