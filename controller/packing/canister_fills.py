"""Canister top-ups of one packer: from the central store into a canister, confirmed
by a technician's scan before the machine is told, and settled after a restart.

Which lot and how much come from `controller.packing.rules`; this module only puts the
store, the ledger, the desk and the machine in order around that decision, filing the
refill first so that a crash at any step leaves something `settle_open` can settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Protocol

from controller.async_ledger import AsyncLedger
from controller.config import Canister
from controller.ledger import InsufficientStock, LedgerError, Need, UnknownEntity, Use
from controller.metrics import Metrics
from controller.packing.canister_desk import CanisterDesk, CanisterTicket, RefillNotConfirmed
from controller.packing.rules import (
    CountersBefore,
    TopUp,
    TopUpKind,
    choose_top_up,
    fill_arrived,
    top_up_wanted,
)
from controller.packing.store import CanisterFill, PackingStore
from drivers.base import CanisterStatus, PackerDriver

log = logging.getLogger("doseline.packing")
ACTOR = "controller"


def canister_location(packer: str, number: int) -> str:
    return f"{packer}/C{number:02d}"


class FillSettings(Protocol):
    """The packing settings a top-up reads (read at each use: they may be tuned live)."""

    store_bins: Sequence[str]
    reservation_timeout_s: float
    refill_scan_timeout_s: float


class CanisterFills:
    """Tops up and settles the canisters of one packer."""

    def __init__(
        self,
        packer: str,
        canister_of: Mapping[str, Canister],
        driver: PackerDriver,
        ledger: AsyncLedger,
        store: PackingStore,
        metrics: Metrics,
        settings: FillSettings,
        desk: CanisterDesk,
    ) -> None:
        self.name = packer
        self.canister_of = canister_of
        self.driver = driver
        self.ledger = ledger
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.desk = desk

    async def ensure(self, gtin: str, units: int) -> int:
        """Tops a canister up from the central store when it holds less than `units`;
        returns what it then holds free in the ledger.

        The lot and the quantity are `choose_top_up`'s decision (one lot per canister,
        first expiry first). The refill is filed (with the canister's counters) before
        the technician is asked for it, and the machine is told only after the pack was
        scanned, so a crash at any step leaves something `settle_open` can settle."""
        canister = self.canister_of[gtin]
        location = canister_location(self.name, canister.number)
        free = await self.free_in_canister(gtin)
        if not top_up_wanted(free, units):
            return free
        # Room is what the machine says: during a job the ledger still counts tablets
        # that are already in pouches (they are booked when the job ends).
        physical = {c.number: c for c in await self.driver.read_canisters()}
        now = physical.get(canister.number)
        count = now.count if now else 0
        lots = await self.ledger.free_lots(gtin, list(self.settings.store_bins))
        lot = await self._lot_in(canister.number, location, gtin) if count > 0 else None
        top_up = choose_top_up(
            capacity=canister.capacity, count=count, current_lot=lot, store_lots=lots
        )
        if top_up.kind is TopUpKind.RUN_DRY:
            log.info(
                "canister %s of %s: no more of batch %s in the store; it runs dry "
                "before it takes the next lot",
                canister.number,
                self.name,
                lot,
            )
            return free
        if top_up.kind is TopUpKind.NO_STOCK:
            raise InsufficientStock(gtin, "central store", units - free, 0)
        assert top_up.batch is not None
        fill = CanisterFill(
            key=f"canfill:{self.name}:{canister.number}:{uuid.uuid4().hex[:12]}",
            packer=self.name,
            canister=canister.number,
            gtin=gtin,
            quantity=top_up.quantity,
            refilled_before=now.refilled_total if now else 0,
            status="open",
            batch=top_up.batch,
            count_before=count,
            dispensed_before=now.dispensed_total if now else 0,
        )
        ticket = await self._file(fill, top_up)
        station = await self._wait_for_scan(fill, ticket)
        await self.ledger.run(self.store.confirm_fill, fill.key, by=station, actor=ACTOR)
        await self.driver.refill_canister(canister.number, fill.quantity)  # lost link: recover
        await self._post_fill(fill, location)
        await self.ledger.run(
            self.store.close_fill, fill.key, "posted", actor=ACTOR, reason="canister refilled"
        )
        log.info(
            "canister %s of %s refilled with %d of %s batch %s (scanned at %s)",
            canister.number,
            self.name,
            fill.quantity,
            gtin,
            fill.batch,
            station,
        )
        return free + fill.quantity

    async def _file(self, fill: CanisterFill, top_up: TopUp) -> CanisterTicket:
        """Records the refill, then reserves its lot in the store (the record is closed
        again when the store cannot give it); returns the technician's ticket."""
        await self.ledger.run(self.store.open_fill, fill, actor=ACTOR)
        try:
            view = await self.ledger.reserve(
                fill.key,
                purpose=f"canister {fill.canister} of {self.name}",
                needs=[Need(fill.gtin, fill.quantity, batch=fill.batch)],
                from_locations=list(self.settings.store_bins),
                timeout_s=self.settings.reservation_timeout_s + self.settings.refill_scan_timeout_s,
                actor=ACTOR,
            )
        except LedgerError:
            await self.ledger.run(
                self.store.close_fill, fill.key, "voided", actor=ACTOR, reason="not reserved"
            )
            raise
        assert fill.batch is not None and top_up.expiry is not None
        return CanisterTicket(
            ticket_id=fill.key.removeprefix("canfill:"),
            packer=self.name,
            canister=fill.canister,
            gtin=fill.gtin,
            batch=fill.batch,
            expiry=top_up.expiry,
            quantity=fill.quantity,
            bins=tuple(sorted({line.location for line in view.lines})),
        )

    async def _wait_for_scan(self, fill: CanisterFill, ticket: CanisterTicket) -> str:
        """The scanning station that confirmed the refill; one never scanned is given
        up (RefillNotConfirmed), and so is one whose wait was cancelled."""
        try:
            return await self.desk.wait_for_scan(ticket, self.settings.refill_scan_timeout_s)
        except RefillNotConfirmed as exc:
            await self._give_up_fill(fill, str(exc))
            raise
        except asyncio.CancelledError:
            # Stopped while waiting for the technician: nothing reached the machine.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._give_up_fill(fill, "stopped before the scan"))
            raise

    async def _give_up_fill(self, fill: CanisterFill, reason: str) -> None:
        """A refill that was never scanned: its reservation is released, the record
        closed as voided."""
        await self.ledger.void(
            f"{fill.key}:void", reservation_key=fill.key, actor=ACTOR, reason=reason[:200]
        )
        await self.ledger.run(
            self.store.close_fill, fill.key, "voided", actor=ACTOR, reason=reason[:200]
        )

    async def _lot_in(self, number: int, location: str, gtin: str) -> str | None:
        """The lot a canister holds: that of its last refill, or (for a canister
        filled before refills were recorded) the first-expiring lot the ledger has
        in it."""
        lot = await self.ledger.run(self.store.current_lot, self.name, number)
        if lot is not None:
            return str(lot)
        held = await self.ledger.stock(location=location, gtin=gtin)
        return held[0].batch if held else None

    async def free_in_canister(self, gtin: str) -> int:
        location = canister_location(self.name, self.canister_of[gtin].number)
        return int(await self.ledger.available(location, gtin))

    async def central_available(self, gtin: str) -> int:
        """Free units of a product in the store's bins, all usable lots."""
        lots = await self.ledger.free_lots(gtin, list(self.settings.store_bins))
        return sum(entry[2] for entry in lots)

    async def settle_open(self) -> None:
        """A refill the machine was told about but the ledger did not book: the
        canister's refilled total says whether it happened."""
        fills = await self.ledger.run(self.store.open_fills, self.name)
        if not fills:
            return
        canisters = {c.number: c for c in await self.driver.read_canisters()}
        for fill in fills:
            arrived = self._fill_arrived(fill, canisters.get(fill.canister))
            location = canister_location(self.name, fill.canister)
            try:
                view = await self.ledger.reservation(fill.key)
            except UnknownEntity:
                status = "voided"  # died before reserving: the machine was never told
            else:
                status = await self._settle_fill(fill, view.status, arrived, location)
            await self.ledger.run(
                self.store.close_fill,
                fill.key,
                status,
                actor=ACTOR,
                reason=f"refill settled after restart: machine {'has' if arrived else 'lacks'} it",
            )
            log.warning("canister refill %s settled as %s", fill.key, status)

    def _fill_arrived(self, fill: CanisterFill, now: CanisterStatus | None) -> bool:
        """Whether the machine got a refill: from its refilled total where it reports
        one, else from its count and dispensed total (count + dispensed grows by
        exactly what was poured in)."""
        if now is None or fill.confirmed_by is None:
            return False  # no scan, so the machine was never told
        arrived = fill_arrived(
            quantity=fill.quantity,
            before=CountersBefore(fill.refilled_before, fill.count_before, fill.dispensed_before),
            now=now,
            reports_refilled_total=self.driver.reports_refilled_total,
        )
        if arrived is None:
            log.error(
                "canister refill %s: %s reports no refilled total and the refill has no "
                "counts to compare: count canister %d",
                fill.key,
                self.name,
                fill.canister,
            )
            self.metrics.discrepancies.labels("canister").inc()
            return False
        return arrived

    async def _settle_fill(
        self, fill: CanisterFill, reservation_status: str, arrived: bool, location: str
    ) -> str:
        if reservation_status == "posted":
            return "posted"
        if reservation_status == "open":
            if arrived:
                await self._post_fill(fill, location)
                return "posted"
            await self.ledger.void(
                f"{fill.key}:void",
                reservation_key=fill.key,
                actor=ACTOR,
                reason="canister refill never reached the machine",
            )
            return "voided"
        if not arrived:
            return "voided"
        # The reservation ran out while the controller was down, but the tablets are in
        # the canister: book the same lot again from the store (reserve and post under
        # keys of their own, so a second restart books nothing twice).
        late = f"{fill.key}:late"
        try:
            view = await self.ledger.reserve(
                late,
                purpose=f"canister {fill.canister} of {self.name}, refill booked after restart",
                needs=[Need(fill.gtin, fill.quantity, batch=fill.batch)],
                from_locations=list(self.settings.store_bins),
                timeout_s=self.settings.reservation_timeout_s,
                actor=ACTOR,
                partial=True,
            )
        except LedgerError as exc:
            view = None
            log.error("canister refill %s: %s", fill.key, exc)
        got = sum(line.quantity for line in view.lines) if view is not None else 0
        if got:
            await self.ledger.post(
                f"{late}:post",
                reservation_key=late,
                uses=[Use(fill.gtin, got, location, "transfer", "canister refill after restart")],
                actor=ACTOR,
            )
        if got < fill.quantity:
            self.metrics.discrepancies.labels("canister").inc()
            log.error(
                "canister refill %s: %d units not found in the store",
                fill.key,
                fill.quantity - got,
            )
        return "posted"

    async def _post_fill(self, fill: CanisterFill, location: str) -> None:
        await self.ledger.post(
            f"{fill.key}:post",
            reservation_key=fill.key,
            uses=[Use(fill.gtin, fill.quantity, location, "transfer", "canister refill")],
            actor=ACTOR,
        )
