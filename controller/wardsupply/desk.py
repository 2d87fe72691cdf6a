"""Ward supply in a running controller: the async side of the flow.

Runs the synchronous service on the ledger's thread pool, asks the verification
system about serialised packs (a blocked pack is refused at the pick scan; packs are
decommissioned when the list is dispatched), and keeps the day going: pick lists at
each run's cutoff, urgent lists at once, arrived supplier orders planned, and delivery
notes nobody confirmed received after the site's time. It is also a scan desk, so a
serial scanner at the picking bench works the same as a handheld over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from controller.gs1 import PackId
from controller.scanning import ScanOutcome
from controller.wardsupply import rules
from controller.wardsupply.service import ACTOR, Dispatched, ScanResult, WardSupply

log = logging.getLogger("doseline.wardsupply")
PICK_LIST_PREFIX = "WPL:"
DECOMMISSION_CONCURRENCY = 8
T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]


class WardSupplyDesk:
    prefixes: tuple[str, ...] = (PICK_LIST_PREFIX,)

    def __init__(
        self,
        service: WardSupply,
        run: Runner,
        *,
        verification: Any | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self.service = service
        self._run = run
        self.verification = verification
        self.tick_s = tick_s
        self.stations: dict[str, str] = {}  # station -> the pick list it scans for
        self.last_tick: datetime | None = None
        self.dispatched: list[Dispatched] = []
        self._sending: set[asyncio.Task[None]] = set()
        # True: the day's work is over (the demo's end of day): no new lists are made
        self.paused = False

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        result: T = await self._run(fn, *args, **kwargs)
        return result

    # ------------------------------------------------------------ scans

    def _blocked(self, pack: PackId) -> str | None:
        """The verification system's refusal of a serialised pack, from the ledger."""
        if self.verification is None or not pack.serial:
            return None
        known = self.verification.store.pack(pack.gtin, pack.serial)
        if known is not None and known.status == "blocked":
            return (
                f"pack {pack.gtin} serial {pack.serial} is blocked"
                f" ({known.alert_code or 'alert'}: {known.alert_text or 'see the alert'})"
            )
        return None

    async def scan(self, number: str, data: str, *, actor: str) -> ScanResult:
        return await self.run(self.service.scan, number, data, actor=actor, blocked=self._blocked)

    async def on_scan(self, data: str, station: str) -> ScanOutcome:
        """A serial scanner: the pick list's barcode (`WPL:<number>`), then its packs."""
        if data.startswith(PICK_LIST_PREFIX):
            number = data[len(PICK_LIST_PREFIX) :]
            try:
                view = await self.run(self.service.pick_list, number)
            except ValueError as exc:
                return ScanOutcome(False, str(exc))
            self.stations[station] = number
            return ScanOutcome(True, f"pick list {number} for {view.hospital} opened", number)
        open_list = self.stations.get(station)
        if open_list is None:
            return ScanOutcome(False, "no ward pick list open: scan the pick list first")
        result = await self.scan(open_list, data, actor=f"scanner:{station}")
        return ScanOutcome(result.accepted, result.message, open_list)

    # ------------------------------------------------------------ dispatch

    async def dispatch(self, number: str, *, actor: str) -> Dispatched:
        """Dispatches a list and queues the decommission of each serialised pack on it
        (written before anything is sent, so none is lost), then sends them in the
        background: a list carries hundreds of packs, and the technician need not wait
        for the national system. The verification service's retry loop sends whatever
        an outage or a stop left queued."""
        sent: Dispatched = await self.run(self.service.dispatch, number, actor=actor)
        v = self.verification
        if v is not None and sent.packs and v.decommission_on in ("dispatched", "both"):
            from controller.verification.service import DISPATCHED

            now = v.clock()

            def enqueue() -> None:
                for pack, where in sent.packs:
                    v.store.enqueue_decommission(pack, DISPATCHED, where, now)

            await self.run(enqueue)
            task = asyncio.create_task(
                self._send(number, sent.packs), name=f"decommission-{number}"
            )
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self.dispatched.append(sent)
        return sent

    async def _send(self, number: str, packs: tuple[tuple[PackId, str], ...]) -> None:
        from controller.verification.service import DISPATCHED

        verification = self.verification
        if verification is None:
            return
        gate = asyncio.Semaphore(DECOMMISSION_CONCURRENCY)

        async def one(pack: PackId, where: str) -> None:
            async with gate:
                result = await verification.decommission(pack, DISPATCHED, where)
            if not result.ok:
                log.warning(
                    "pack %s serial %s dispatched on %s: %s",
                    pack.gtin,
                    pack.serial,
                    number,
                    result.message or result.code,
                )

        await asyncio.gather(*(one(pack, where) for pack, where in packs))

    async def drain(self) -> None:
        """Waits until the decommissions under way have been sent."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    # ------------------------------------------------------------ the day

    async def tick(self, now: datetime) -> dict[str, int]:
        """One pass of the day's work; returns what it did (for logs and tests)."""
        svc = self.service
        done = {"lists": 0, "urgent": 0, "arrived": 0, "received": 0}
        if self.paused:
            self.last_tick = now
            return done
        done["arrived"] = await self.run(svc.release_arrived)
        urgent = await self.run(
            svc.make_pick_lists, run=rules.URGENT_RUN, run_date=now.astimezone(svc.tz).date()
        )
        done["urgent"] = len(urgent)
        local = now.astimezone(svc.tz)
        before = (self.last_tick or now - timedelta(seconds=1)).astimezone(svc.tz)
        for slot in svc.runs:
            for day in {before.date(), local.date()}:
                cutoff = datetime.combine(day, slot.cutoff, tzinfo=svc.tz)
                if before < cutoff <= local:
                    made = await self.run(svc.make_pick_lists, run=slot.code, run_date=day)
                    done["lists"] += len(made)
                    for pick in made:
                        log.info("pick list %s: %d lines", pick.number, len(pick.lines))
        done["received"] = len(await self.run(svc.auto_receive))
        self.last_tick = now
        return done

    async def serve(self) -> None:
        while True:
            try:
                await self.tick(self.service.clock())
            except asyncio.CancelledError:
                raise
            except Exception:  # a ledger error is logged and retried at the next tick
                log.exception("ward supply tick failed; retrying")
            await asyncio.sleep(self.tick_s)


__all__ = ["ACTOR", "PICK_LIST_PREFIX", "WardSupplyDesk"]
