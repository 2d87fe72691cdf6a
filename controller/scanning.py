"""Scan stations: one serial scanner serves several desks.

A desk is a flow that starts with a ticket (a pick list for a cabinet, a canister refill
ticket at a packer) and then takes the packs scanned for it. The ticket's prefix tells
which desk a station is working for; the packs scanned after it go to that desk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ScanOutcome:
    accepted: bool
    message: str
    ref: str | None = None  # what the scan confirmed (a refill id, a ticket id)


class ScanDesk(Protocol):
    # Prefixes of the codes that start or steer this desk's work (its tickets, and
    # location labels such as a pocket's).
    prefixes: tuple[str, ...]

    async def on_scan(self, data: str, station: str) -> ScanOutcome: ...


class ScanRouter:
    """Sends each scan of a station to the desk whose ticket the station scanned last;
    before any ticket, to the first desk (which asks for its ticket)."""

    def __init__(self, desks: Sequence[ScanDesk]) -> None:
        if not desks:
            raise ValueError("a scan router needs at least one desk")
        self.desks = list(desks)
        self._working_for: dict[str, ScanDesk] = {}

    async def route(self, station: str, data: str) -> ScanOutcome:
        for desk in self.desks:
            if data.startswith(desk.prefixes):
                self._working_for[station] = desk
                break
        desk = self._working_for.get(station, self.desks[0])
        return await desk.on_scan(data, station)
