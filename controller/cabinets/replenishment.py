"""Pocket refills: from a low pocket to stock confirmed in it.

A pocket below its min level gets a refill up to its max, reserved first expiry first
from the central bins. Refills of one cabinet go out together as a pick list. At the
cabinet the technician scans the pick list, then each picked pack (GS1 DataMatrix);
a pack that is not on the list, of another lot, or expired is refused. When every line
of a refill is scanned, the reservation is posted as a transfer into the pocket and the
cabinet is told its new count.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from transitions.extensions.asyncio import AsyncMachine

from controller.async_ledger import AsyncLedger
from controller.cabinets.poller import CabinetPoller, pocket_location
from controller.config import Cabinet, Pocket
from controller.gs1 import PackId, ScanError, parse_pack
from controller.ledger import Allocation, LedgerError, Need, Use
from controller.metrics import Metrics
from controller.packing.job import Trigger
from controller.scanning import ScanOutcome
from drivers.base import DriverError

log = logging.getLogger("doseline.refills")
T = TypeVar("T")
ACTOR = "replenishment"
PICK_LIST_PREFIX = "PL:"


class RefillState(enum.Enum):
    RESERVED = "reserved"
    PICKING = "picking"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


R = RefillState
REFILL_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "listed", "source": R.RESERVED, "dest": R.PICKING},
    {"trigger": "confirmed", "source": R.PICKING, "dest": R.CONFIRMED},
    {"trigger": "cancelled", "source": [R.RESERVED, R.PICKING], "dest": R.CANCELLED},
]


class Refill:
    state: RefillState
    # Triggers added by the state machine, from REFILL_TRANSITIONS.
    listed: Trigger
    confirmed: Trigger
    cancelled: Trigger

    def __init__(
        self, refill_id: str, cabinet: str, pocket: Pocket, quantity: int, urgent: bool
    ) -> None:
        self.refill_id = refill_id
        self.cabinet = cabinet
        self.pocket = pocket
        self.quantity = quantity
        self.urgent = urgent
        self.created = datetime.now(UTC)
        self.lines: tuple[Allocation, ...] = ()
        self.scanned: set[int] = set()  # indexes of lines confirmed by a scan
        self.settled_at: float | None = None  # monotonic time the cabinet was told
        self.machine = AsyncMachine(
            model=self,
            states=RefillState,
            transitions=REFILL_TRANSITIONS,
            initial=R.RESERVED,
            queued=True,
        )

    @property
    def reservation(self) -> str:
        return f"refill:{self.refill_id}"

    @property
    def open(self) -> bool:
        return self.state in (R.RESERVED, R.PICKING)


@dataclass
class PickList:
    """Refills of one cabinet to be picked together; its barcode is `PL:<list_id>`."""

    list_id: str
    cabinet: str
    urgent: bool
    refills: list[Refill] = field(default_factory=list)

    @property
    def barcode(self) -> str:
        return f"{PICK_LIST_PREFIX}{self.list_id}"

    def lines(self) -> list[tuple[Refill, Allocation]]:
        return [(refill, line) for refill in self.refills for line in refill.lines]


class Replenishment:
    ticket_prefix = PICK_LIST_PREFIX

    def __init__(
        self,
        ledger: AsyncLedger,
        metrics: Metrics,
        pollers: dict[str, CabinetPoller],
        store_bins: Sequence[str],
        *,
        reservation_timeout_s: float,
        round_interval_s: float = 2.0,
        today: Any = None,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.pollers = pollers
        self.store_bins = list(store_bins)
        self.reservation_timeout_s = reservation_timeout_s
        self.round_interval_s = round_interval_s
        self.refills: list[Refill] = []
        self.pick_lists: asyncio.Queue[PickList] = asyncio.Queue()
        self.lists: dict[str, PickList] = {}
        self.active_list: PickList | None = None
        self.failed_requests = 0
        self._ids = itertools.count(1)
        self._today = today or (lambda: datetime.now(UTC).date())
        self._urgent = asyncio.Event()
        # Ledger work that must finish once begun, even when its caller is cancelled.
        self._in_flight: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ requests

    async def request(
        self, cabinet: Cabinet, pocket: Pocket, count: int, read_at: float | None = None
    ) -> Refill | None:
        """Called by a poller for a pocket below its min; one open refill per pocket.

        `read_at` (monotonic) is when the count was read: a count read before a refill
        was confirmed is stale and asks for nothing.
        """
        # A reservation committed in the ledger's thread while the poller is cancelled
        # would otherwise be held by nobody until it times out.
        return await self._shielded(
            self._request(cabinet, pocket, count, read_at), f"request-{cabinet.name}"
        )

    async def _request(
        self, cabinet: Cabinet, pocket: Pocket, count: int, read_at: float | None
    ) -> Refill | None:
        for r in self.refills:
            if r.cabinet != cabinet.name or r.pocket.number != pocket.number:
                continue
            if r.open or (
                read_at is not None and r.settled_at is not None and r.settled_at >= read_at
            ):
                return None
        quantity = pocket.max - count
        run = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
        refill = Refill(
            f"{cabinet.name}-P{pocket.number:02d}-{run}-{next(self._ids)}",
            cabinet.name,
            pocket,
            quantity,
            urgent=count == 0,
        )
        try:
            view = await self._reserve(refill, quantity)
        except LedgerError as exc:
            self.failed_requests += 1
            self.metrics.refills.labels("no_stock").inc()
            log.error("refill of %s pocket %d: %s", cabinet.name, pocket.number, exc)
            return None
        refill.quantity = sum(line.quantity for line in view)
        refill.lines = view
        self.refills.append(refill)
        self._update_pending()
        log.info(
            "refill %s: %d of %s%s",
            refill.refill_id,
            refill.quantity,
            pocket.gtin,
            " (urgent)" if refill.urgent else "",
        )
        if refill.urgent:
            self._urgent.set()
        return refill

    async def _reserve(self, refill: Refill, quantity: int) -> tuple[Allocation, ...]:
        """Reserves what the store has, up to `quantity`; a short refill is still a
        refill, and the order line records that it was not filled in full."""
        view = await self.ledger.call(
            "reserve",
            refill.reservation,
            purpose=f"refill {refill.refill_id}",
            needs=[Need(refill.pocket.gtin, quantity)],
            from_locations=self.store_bins,
            timeout_s=self.reservation_timeout_s,
            actor=ACTOR,
            partial=True,
            order_source="refill",
        )
        reserved = sum(line.quantity for line in view.lines)
        if reserved < quantity:
            log.warning("refill %s: only %d of %d in store", refill.refill_id, reserved, quantity)
        return tuple(view.lines)

    # ------------------------------------------------------------ pick lists

    async def serve(self) -> None:
        """Batches reserved refills per cabinet into pick lists: scheduled rounds, and
        at once when a pocket is empty."""
        while True:
            try:
                await asyncio.wait_for(self._urgent.wait(), self.round_interval_s)
            except TimeoutError:
                pass
            self._urgent.clear()
            await self.make_pick_lists()

    async def make_pick_lists(self) -> list[PickList]:
        made = []
        by_cabinet: dict[str, list[Refill]] = {}
        for refill in self.refills:
            if refill.state == R.RESERVED:
                by_cabinet.setdefault(refill.cabinet, []).append(refill)
        for cabinet, refills in sorted(by_cabinet.items()):
            pick = PickList(
                f"{cabinet}-{next(self._ids)}", cabinet, any(r.urgent for r in refills), refills
            )
            for refill in refills:
                await refill.listed()
            self.lists[pick.list_id] = pick
            made.append(pick)
            await self.pick_lists.put(pick)
            log.info(
                "pick list %s: %d lines%s",
                pick.list_id,
                len(pick.lines()),
                " (urgent)" if pick.urgent else "",
            )
        return made

    # ------------------------------------------------------------ scans

    async def on_scan(self, data: str, station: str = "") -> ScanOutcome:
        outcome = await self._judge(data)
        self.metrics.scans.labels("accepted" if outcome.accepted else "refused").inc()
        (log.info if outcome.accepted else log.warning)("scan: %s", outcome.message)
        return outcome

    async def _judge(self, data: str) -> ScanOutcome:
        if data.startswith(PICK_LIST_PREFIX):
            pick = self.lists.get(data[len(PICK_LIST_PREFIX) :])
            if pick is None:
                return ScanOutcome(False, f"unknown pick list {data!r}")
            self.active_list = pick
            return ScanOutcome(True, f"pick list {pick.list_id} for {pick.cabinet} opened")
        if self.active_list is None:
            return ScanOutcome(False, "no pick list open: scan the pick list first")
        try:
            pack = parse_pack(data)
        except ScanError as exc:
            return ScanOutcome(False, str(exc))
        if pack.expiry < self._today():
            return ScanOutcome(False, f"batch {pack.batch} of {pack.gtin} expired on {pack.expiry}")
        pick = self.active_list
        candidates = [
            (refill, i, line)
            for refill in pick.refills
            if refill.state == R.PICKING
            for i, line in enumerate(refill.lines)
            if line.gtin == pack.gtin and i not in refill.scanned
        ]
        if not candidates:
            return ScanOutcome(
                False,
                f"GTIN {pack.gtin} is not on pick list {pick.list_id} for {pick.cabinet}",
            )
        for refill, i, line in candidates:
            if line.batch == pack.batch:
                refill.scanned.add(i)
                if len(refill.scanned) == len(refill.lines):
                    return await self._confirm_shielded(refill)
                return ScanOutcome(
                    True,
                    f"{pack.gtin} batch {pack.batch} checked for {refill.refill_id}",
                    refill.refill_id,
                )
        wanted = ", ".join(sorted({line.batch for _, _, line in candidates}))
        return ScanOutcome(
            False, f"batch {pack.batch} of {pack.gtin} was not picked (pick list says {wanted})"
        )

    async def _confirm_shielded(self, refill: Refill) -> ScanOutcome:
        """Posting the transfer and telling the cabinet belong together: a shutdown
        that cancels the scan station must not stop a confirmation half-way."""
        return await self._shielded(self._confirm(refill), f"confirm-{refill.refill_id}")

    async def _shielded(self, work: Coroutine[Any, Any, T], name: str) -> T:
        task = asyncio.create_task(work, name=name)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Waits for requests and confirmations under way (after their callers stopped)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _confirm(self, refill: Refill) -> ScanOutcome:
        location = pocket_location(refill.cabinet, refill.pocket.number)
        await self.ledger.call(
            "post",
            f"{refill.reservation}:post",
            reservation_key=refill.reservation,
            uses=[Use(refill.pocket.gtin, refill.quantity, location, "transfer", "pocket refill")],
            actor=ACTOR,
        )
        try:
            await self.pollers[refill.cabinet].command_refill(refill.pocket.number, refill.quantity)
        except DriverError as exc:
            # The stock is in the pocket and in the ledger; only the cabinet's own count
            # lags. A counted pocket (stocktake) sets it right.
            log.error("refill %s booked but cabinet not told: %s", refill.refill_id, exc)
            self.metrics.discrepancies.labels("pocket").inc()
        refill.settled_at = time.monotonic()
        await refill.confirmed()
        self.metrics.refills.labels("confirmed").inc()
        self._update_pending()
        if self.active_list and all(not r.open for r in self.active_list.refills):
            self.active_list = None
        return ScanOutcome(
            True,
            f"refill {refill.refill_id} confirmed: {refill.quantity} into {location}",
            refill.refill_id,
        )

    # ------------------------------------------------------------ shutdown

    async def cancel_open(self, reason: str) -> int:
        """Releases every refill that was not confirmed; returns how many."""
        cancelled = 0
        for refill in self.refills:
            if not refill.open:
                continue
            try:
                await self.ledger.call(
                    "void",
                    f"{refill.reservation}:void",
                    reservation_key=refill.reservation,
                    actor=ACTOR,
                    reason=reason,
                )
            except LedgerError as exc:
                log.warning("refill %s: %s", refill.refill_id, exc)
            await refill.cancelled()
            self.metrics.refills.labels("cancelled").inc()
            cancelled += 1
        self._update_pending()
        return cancelled

    def _update_pending(self) -> None:
        self.metrics.refills_pending.set(sum(1 for r in self.refills if r.open))

    @property
    def confirmed(self) -> int:
        return sum(1 for r in self.refills if r.state == R.CONFIRMED)


def pack_of(line: Allocation, serial: str | None = None) -> PackId:
    """The identifier a picked pack of this line carries."""
    return PackId(gtin=line.gtin, batch=line.batch, expiry=line.expiry, serial=serial)
