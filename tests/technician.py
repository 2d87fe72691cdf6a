"""The technician at the packers, for tests: fetches each canister ticket's pack and
scans the ticket, then the pack, at a scan station.

By default the scans go straight to the desk (the serial path is tested on its own);
`scan` sends them another way (through a scanner simulator's trigger socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from controller.gs1 import PackId, encode_pack
from controller.packing.canister_desk import CanisterDesk, CanisterTicket
from controller.scanning import ScanOutcome

_serials = itertools.count(1)


def pack_for(ticket: CanisterTicket) -> str:
    """The element string of a pack of the ticket's lot."""
    return encode_pack(PackId(ticket.gtin, ticket.batch, ticket.expiry, f"T{next(_serials)}"))


@dataclass
class Technician:
    desk: CanisterDesk
    station: str = "test-station"
    delay_s: float = 0.0
    scan: Callable[[str], Awaitable[object]] | None = None
    tickets: list[CanisterTicket] = field(default_factory=list)
    outcomes: list[ScanOutcome] = field(default_factory=list)

    async def _send(self, data: str) -> None:
        if self.scan is not None:
            await self.scan(data)
        else:
            self.outcomes.append(await self.desk.on_scan(data, self.station))

    async def run(self) -> None:
        while True:
            ticket = await self.desk.tickets.get()
            self.tickets.append(ticket)
            await asyncio.sleep(self.delay_s)
            await self._send(ticket.barcode)
            await self._send(pack_for(ticket))


@contextlib.asynccontextmanager
async def technician(desk: CanisterDesk, **options: object) -> AsyncIterator[Technician]:
    """A technician at work while the block runs."""
    tech = Technician(desk, **options)  # type: ignore[arg-type]
    task = asyncio.create_task(tech.run(), name="technician")
    try:
        yield tech
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
