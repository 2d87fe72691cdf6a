"""Canister refills at the packer, confirmed by a GS1 scan.

When a canister needs tablets, the runner reserves one lot (first expiry first) in the
central store and opens a ticket here, then waits. The technician fetches the pack,
scans the ticket (`CR:<id>`) and then the pack at the packer's scan station. A pack of
another product, of another lot or past its expiry is refused with a message that says
what was expected. Only a confirmed refill is poured in, told to the machine and booked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from controller.gs1 import PackId, ScanError, parse_pack
from controller.scanning import ScanOutcome

log = logging.getLogger("doseline.canisters")
TICKET_PREFIX = "CR:"


class RefillNotConfirmed(Exception):
    """No matching pack was scanned for a canister refill in time."""


@dataclass
class CanisterTicket:
    """What the technician fetches: `quantity` of one lot for one canister."""

    ticket_id: str
    packer: str
    canister: int
    gtin: str
    batch: str
    expiry: date
    quantity: int
    bins: tuple[str, ...]  # where the reserved lot lies in the store
    confirmed: asyncio.Future[str] = field(repr=False, default_factory=asyncio.Future)

    @property
    def barcode(self) -> str:
        return f"{TICKET_PREFIX}{self.ticket_id}"

    def describe(self) -> str:
        return (
            f"{self.quantity} of {self.gtin} batch {self.batch} (expires {self.expiry}) "
            f"into canister {self.canister} of {self.packer}, from {', '.join(self.bins)}"
        )


class CanisterDesk:
    """Open canister tickets, and the scans that confirm them."""

    prefixes: tuple[str, ...] = (TICKET_PREFIX,)
    # Called with a pack about to be opened for a canister, and the canister's location;
    # a refusal it returns refuses the scan (pack verification, docs/verification.md).
    on_pack_used: Callable[[PackId, str], Awaitable[ScanOutcome | None]] | None = None

    def __init__(self, today: Callable[[], date] | None = None) -> None:
        self.open: dict[str, CanisterTicket] = {}
        # Tickets as they are opened, for whoever fetches the packs (a printer, a
        # handheld, the demo's technician).
        self.tickets: asyncio.Queue[CanisterTicket] = asyncio.Queue()
        self._active: dict[str, CanisterTicket] = {}  # per scan station
        self._today = today or (lambda: datetime.now(UTC).date())

    async def wait_for_scan(self, ticket: CanisterTicket, timeout_s: float) -> str:
        """Opens the ticket and waits for its pack to be scanned; returns the station.
        Raises RefillNotConfirmed after `timeout_s` (the ticket is withdrawn)."""
        self.open[ticket.ticket_id] = ticket
        self.tickets.put_nowait(ticket)
        log.info("canister ticket %s: %s", ticket.barcode, ticket.describe())
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.confirmed), timeout_s)
        except TimeoutError:
            raise RefillNotConfirmed(
                f"refill of canister {ticket.canister} of {ticket.packer} "
                f"({ticket.gtin} batch {ticket.batch}) not confirmed by a scan "
                f"within {timeout_s:.0f} s"
            ) from None
        finally:
            self.withdraw(ticket.ticket_id)

    def withdraw(self, ticket_id: str) -> None:
        ticket = self.open.pop(ticket_id, None)
        for station, active in list(self._active.items()):
            if active is ticket:
                del self._active[station]

    async def on_scan(self, data: str, station: str) -> ScanOutcome:
        if data.startswith(TICKET_PREFIX):
            ticket = self.open.get(data[len(TICKET_PREFIX) :])
            if ticket is None:
                return ScanOutcome(False, f"no open canister ticket {data!r}")
            self._active[station] = ticket
            return ScanOutcome(
                True, f"canister ticket {ticket.ticket_id} opened: {ticket.describe()}"
            )
        ticket = self._active.get(station)
        if ticket is None:
            return ScanOutcome(False, "no canister ticket open: scan the ticket first")
        try:
            pack = parse_pack(data)
        except ScanError as exc:
            return ScanOutcome(False, str(exc))
        if pack.gtin != ticket.gtin:
            return ScanOutcome(
                False,
                f"GTIN {pack.gtin} does not belong in canister {ticket.canister} of "
                f"{ticket.packer}: it holds {ticket.gtin}",
            )
        if pack.expiry < self._today():
            return ScanOutcome(False, f"batch {pack.batch} of {pack.gtin} expired on {pack.expiry}")
        if pack.batch != ticket.batch:
            return ScanOutcome(
                False,
                f"batch {pack.batch} of {pack.gtin} is not the reserved lot: canister "
                f"{ticket.canister} of {ticket.packer} takes batch {ticket.batch} only",
            )
        if self.on_pack_used is not None:
            refusal = await self.on_pack_used(pack, f"{ticket.packer}/C{ticket.canister:02d}")
            if refusal is not None and not refusal.accepted:
                return refusal
        del self._active[station]
        if not ticket.confirmed.done():
            ticket.confirmed.set_result(station)
        return ScanOutcome(
            True,
            f"canister {ticket.canister} of {ticket.packer}: batch {pack.batch} confirmed",
            ticket.ticket_id,
        )
