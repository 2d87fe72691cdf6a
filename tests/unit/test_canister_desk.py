"""The canister desk on its own: tickets, the scans that confirm them, and refusals."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import pytest

from controller.gs1 import PackId, encode_pack
from controller.packing.canister_desk import CanisterDesk, CanisterTicket, RefillNotConfirmed
from controller.scanning import ScanOutcome, ScanRouter

TODAY = date(2026, 11, 22)
PARA = "07359990000013"
METO = "07359990000020"


def ticket(ticket_id: str = "PK1:1:abc", batch: str = "P-1") -> CanisterTicket:
    return CanisterTicket(
        ticket_id, "PK1", 1, PARA, batch, TODAY + timedelta(days=90), 50, ("CENTRAL/A01",)
    )


def pack(gtin: str = PARA, batch: str = "P-1", days: int = 90) -> str:
    return encode_pack(PackId(gtin, batch, TODAY + timedelta(days=days), "SN1"))


async def test_the_right_pack_after_the_ticket_confirms_the_refill() -> None:
    desk = CanisterDesk(today=lambda: TODAY)
    t = ticket()
    waiting = asyncio.create_task(desk.wait_for_scan(t, 5))
    assert await desk.tickets.get() is t
    assert t.barcode == "CR:PK1:1:abc"
    refusals = [
        (pack(), "no canister ticket open: scan the ticket first"),
        ("CR:PK9:9:zzz", "no open canister ticket 'CR:PK9:9:zzz'"),
    ]
    for data, message in refusals:
        outcome = await desk.on_scan(data, "SC1")
        assert (outcome.accepted, outcome.message) == (False, message)
    assert (await desk.on_scan(t.barcode, "SC1")).accepted
    wrong = [
        (pack(METO), f"GTIN {METO} does not belong in canister 1 of PK1: it holds {PARA}"),
        (pack(batch="P-2"), "batch P-2 of " + PARA + " is not the reserved lot"),
        (pack(days=-1), "expired on"),
        ("garbage", "not a GS1 element string"),
    ]
    for data, message in wrong:
        outcome = await desk.on_scan(data, "SC1")
        assert not outcome.accepted and message in outcome.message
    # Another station has no ticket open: its pack scan confirms nothing.
    assert not (await desk.on_scan(pack(), "SC2")).accepted
    assert not waiting.done()
    outcome = await desk.on_scan(pack(), "SC1")
    assert outcome.accepted and outcome.ref == "PK1:1:abc"
    assert await waiting == "SC1"
    assert desk.open == {}
    # The ticket is closed: scanning it again opens nothing.
    assert not (await desk.on_scan(t.barcode, "SC1")).accepted


async def test_no_scan_in_time_withdraws_the_ticket() -> None:
    desk = CanisterDesk(today=lambda: TODAY)
    t = ticket()
    with pytest.raises(RefillNotConfirmed, match=r"canister 1 of PK1 .* not confirmed"):
        await desk.wait_for_scan(t, 0.05)
    assert desk.open == {}
    assert not (await desk.on_scan(t.barcode, "SC1")).accepted


async def test_a_station_works_for_the_desk_whose_ticket_it_scanned_last() -> None:
    class PickDesk:
        prefixes = ("PL:",)

        def __init__(self) -> None:
            self.seen: list[str] = []

        async def on_scan(self, data: str, station: str) -> object:
            self.seen.append(data)
            return ScanOutcome(True, "pick desk")

    picks = PickDesk()
    desk = CanisterDesk(today=lambda: TODAY)
    router = ScanRouter([picks, desk])  # type: ignore[list-item]
    t = ticket()
    waiting = asyncio.create_task(desk.wait_for_scan(t, 5))
    assert await desk.tickets.get() is t
    await router.route("SC1", pack())  # before any ticket: the first desk
    await router.route("SC1", t.barcode)
    await router.route("SC2", "PL:CAB1-1")
    await router.route("SC2", pack())  # SC2 works for the pick desk
    assert (await router.route("SC1", pack())).accepted
    assert await waiting == "SC1"
    assert picks.seen == [pack(), "PL:CAB1-1", pack()]
