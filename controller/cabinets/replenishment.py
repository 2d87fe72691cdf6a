"""Pocket refills: from a low pocket to stock confirmed in it.

A pocket below its min level gets a refill up to its max, reserved first expiry first
from the central store's bins. Refills wait for the next
scheduled round, when each cabinet's refills go out together as a pick list; a pocket
at 0 gets a pick list at once. At the cabinet the technician scans the pick list, the
pocket's label, then each picked pack (GS1 DataMatrix): a pack for another pocket, not
on the list, of another lot, or expired is refused. When every line of a refill is
scanned, the reservation is posted as a transfer into the pocket and the cabinet is
told its new count.

Every refill and pick list is kept in the database (controller.cabinets.refill_store);
`recover` takes up what a stopped controller left.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time as monotonic_clock
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from transitions.extensions.asyncio import AsyncMachine

from controller.async_ledger import AsyncLedger
from controller.cabinets.poller import CabinetPoller, pocket_location
from controller.cabinets.refill_rules import (
    next_round,
    plan_pick_lists,
    plan_refill,
    refill_in_flight,
    refill_wanted,
)
from controller.cabinets.refill_store import RefillRow, RefillStore
from controller.config import Cabinet, Pocket
from controller.config import Replenishment as ReplenishmentConfig
from controller.gs1 import PackId, ScanError, parse_pack
from controller.ledger import Allocation, LedgerError, Need, Use
from controller.ledger.states import RefillState
from controller.metrics import Metrics
from controller.packing.job import Trigger
from controller.scanning import ScanOutcome
from drivers.base import CabinetCommand, DriverError

log = logging.getLogger("doseline.refills")
ACTOR = "replenishment"
PICK_LIST_PREFIX = "PL:"
POCKET_LABEL_PREFIX = "PK:"
T = TypeVar("T")


def pocket_label(cabinet: str, number: int) -> str:
    """The barcode on a pocket's label: `PK:<cabinet>:<pocket number>`."""
    return f"{POCKET_LABEL_PREFIX}{cabinet}:{number:02d}"


# The states are the ledger's (controller/ledger/states.py): pocket_refills.state, the
# open refills the store lists and this machine's states are one set.
R = RefillState
REFILL_TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "listed", "source": R.RESERVED, "dest": R.PICKING},
    {"trigger": "booked", "source": R.PICKING, "dest": R.BOOKED},
    {"trigger": "confirmed", "source": R.BOOKED, "dest": R.CONFIRMED},
    {"trigger": "cancelled", "source": [R.RESERVED, R.PICKING], "dest": R.CANCELLED},
]


class Refill:
    state: RefillState
    # Triggers added by the state machine, from REFILL_TRANSITIONS.
    listed: Trigger
    booked: Trigger
    confirmed: Trigger
    cancelled: Trigger

    def __init__(
        self,
        refill_id: str,
        cabinet: str,
        pocket: Pocket,
        quantity: int,
        urgent: bool,
        *,
        created: datetime,
        due_at: datetime,
        state: RefillState = R.RESERVED,
    ) -> None:
        self.refill_id = refill_id
        self.cabinet = cabinet
        self.pocket = pocket
        self.quantity = quantity
        self.urgent = urgent
        self.created = created
        self.due_at = due_at
        self.lines: tuple[Allocation, ...] = ()
        self.scanned: set[int] = set()  # indexes of lines confirmed by a scan
        self.pick_list: str | None = None
        self.command_sequence: int | None = None
        self.confirmed_by: str | None = None
        self.settled_at: float | None = None  # loop time the cabinet was told
        self.machine = AsyncMachine(
            model=self,
            states=RefillState,
            transitions=REFILL_TRANSITIONS,
            initial=state,
            queued=True,
        )

    @property
    def reservation(self) -> str:
        return f"refill:{self.refill_id}"

    @property
    def open(self) -> bool:
        """Still waiting for the technician."""
        return self.state in (R.RESERVED, R.PICKING)


@dataclass
class PickList:
    """Refills of one cabinet to be picked together; its barcode is `PL:<list_id>`."""

    list_id: str
    cabinet: str
    urgent: bool
    due_at: datetime
    refills: list[Refill] = field(default_factory=list)
    status: str = "open"

    @property
    def barcode(self) -> str:
        return f"{PICK_LIST_PREFIX}{self.list_id}"

    def lines(self) -> list[tuple[Refill, Allocation]]:
        return [(refill, line) for refill in self.refills for line in refill.lines]


@dataclass
class Station:
    """What one scanner is working on: a pick list, and the pocket in front of it."""

    pick: PickList | None = None
    pocket: int | None = None


class Replenishment:
    prefixes: tuple[str, ...] = (PICK_LIST_PREFIX, POCKET_LABEL_PREFIX)
    # Called with a pack about to be dispatched to a pocket, and the pocket's location;
    # a refusal it returns refuses the scan (pack verification, docs/verification.md).
    on_pack_used: Callable[[PackId, str], Awaitable[ScanOutcome | None]] | None = None

    def __init__(
        self,
        ledger: AsyncLedger,
        metrics: Metrics,
        pollers: dict[str, CabinetPoller],
        store_bins: Sequence[str],
        *,
        reservation_timeout_s: float,
        settings: ReplenishmentConfig | None = None,
        tz: ZoneInfo | None = None,
        clock: Callable[[], datetime] | None = None,
        today: Callable[[], date] | None = None,
        tick_s: float = 0.5,
    ) -> None:
        self.ledger = ledger
        self.store = RefillStore(ledger.ledger, ACTOR)
        self.metrics = metrics
        self.pollers = pollers
        self.store_bins = list(store_bins)
        self.reservation_timeout_s = reservation_timeout_s
        self.settings = settings or ReplenishmentConfig()
        self.tz = tz or ZoneInfo("UTC")
        self.clock = clock or (lambda: datetime.now(UTC))
        self._today = today or (lambda: self.clock().astimezone(self.tz).date())
        self.tick_s = tick_s
        self.refills: list[Refill] = []
        self.pick_lists: asyncio.Queue[PickList] = asyncio.Queue()
        self.lists: dict[str, PickList] = {}
        self.stations: dict[str, Station] = {}
        self.blocked: dict[str, str] = {}  # cabinet -> why no refills go there now
        self.failed_requests = 0
        self.rounds_made = 0
        self._ids = itertools.count(1)
        self._urgent = asyncio.Event()
        self._next_round: datetime | None = None
        # Ledger work that must finish once begun, even when its caller is cancelled.
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._telling: set[str] = set()  # refills whose cabinet is being told now
        self._untold: set[str] = set()  # refills whose cabinet could not be told (logged)

    # ------------------------------------------------------------ requests

    async def request(
        self, cabinet: Cabinet, pocket: Pocket, count: int, read_at: float | None = None
    ) -> Refill | None:
        """Called by a poller for a pocket below its min; one open refill per pocket.

        `read_at` (loop time) is when the count was read: a count read before a refill
        was told to the cabinet is stale and asks for nothing.
        """
        # A reservation committed in the ledger's thread while the poller is cancelled
        # would otherwise be held by nobody until it times out.
        return await self._shielded(
            self._request(cabinet, pocket, count, read_at), f"request-{cabinet.name}"
        )

    async def _request(
        self, cabinet: Cabinet, pocket: Pocket, count: int, read_at: float | None
    ) -> Refill | None:
        earlier = [
            r
            for r in self.refills
            if r.cabinet == cabinet.name and r.pocket.number == pocket.number
        ]
        if not refill_wanted(
            blocked=cabinet.name in self.blocked, earlier=earlier, read_at=read_at
        ):
            return None
        now = self.clock()
        plan = plan_refill(
            count=count,
            pocket_max=pocket.max,
            now=now,
            rounds=self.settings.rounds,
            tz=self.tz,
            urgent_due_minutes=self.settings.urgent_due_minutes,
            round_due_minutes=self.settings.round_due_minutes,
        )
        urgent, quantity = plan.urgent, plan.quantity
        refill_id = f"{cabinet.name}-P{pocket.number:02d}-{now:%Y%m%dT%H%M%S}-{next(self._ids)}"
        # A rationed product: the refill is capped by the ward's grant for the day,
        # drawn under the refill's id (docs/stock-duty.md).
        grant = await self.ledger.draw_ration(
            pocket.gtin,
            ward=cabinet.ward,
            day=self._today(),
            units=quantity,
            source="refill",
            ref=refill_id,
            actor=ACTOR,
        )
        if grant is not None and grant.granted < quantity:
            log.warning(
                "refill of %s pocket %d: %s rationed, %d of %d units granted to ward %s",
                cabinet.name,
                pocket.number,
                pocket.gtin,
                grant.granted,
                quantity,
                cabinet.ward,
            )
            if grant.granted == 0:
                return None
            quantity = grant.granted
        refill = Refill(
            refill_id,
            cabinet.name,
            pocket,
            quantity,
            urgent,
            created=now,
            due_at=plan.due_at,
        )
        # The row comes first: a controller that stops before the reservation is made
        # finds the row, no reservation under its key, and cancels it.
        await self.ledger.run(
            self.store.add,
            refill_id=refill.refill_id,
            cabinet=cabinet.name,
            pocket=pocket.number,
            gtin=pocket.gtin,
            quantity=quantity,
            urgent=urgent,
            reservation_key=refill.reservation,
            created_at=now,
            due_at=refill.due_at,
        )
        try:
            view = await self._reserve(refill, quantity)
        except LedgerError as exc:
            self.failed_requests += 1
            self.metrics.refills.labels("no_stock").inc()
            log.error("refill of %s pocket %d: %s", cabinet.name, pocket.number, exc)
            await self._record_cancel(refill.refill_id, f"no stock: {exc}")
            if grant is not None:
                await self.ledger.settle_ration_draw("refill", refill.refill_id, 0, actor=ACTOR)
            return None
        refill.quantity = sum(line.quantity for line in view)
        refill.lines = view
        if grant is not None and refill.quantity < quantity:
            await self.ledger.settle_ration_draw(
                "refill", refill.refill_id, refill.quantity, actor=ACTOR
            )
        if refill.quantity != quantity:
            await self.ledger.run(
                self.store.update, refill.refill_id, "refill short", quantity=refill.quantity
            )
        self.refills.append(refill)
        self._update_pending()
        log.info(
            "refill %s: %d of %s, due %s%s",
            refill.refill_id,
            refill.quantity,
            pocket.gtin,
            self._local(refill.due_at),
            " (urgent)" if urgent else "",
        )
        if urgent:
            self._urgent.set()
        return refill

    async def _reserve(self, refill: Refill, quantity: int) -> tuple[Allocation, ...]:
        """Reserves what the store has, up to `quantity`; a short refill is still a
        refill, and the order line records that it was not filled in full."""
        view = await self.ledger.reserve(
            refill.reservation,
            purpose=f"refill {refill.refill_id}",
            needs=[Need(refill.pocket.gtin, quantity)],
            from_locations=self.store_bins,
            # Held until the refill is due, and the usual grace after that.
            timeout_s=max(0.0, (refill.due_at - self.clock()).total_seconds())
            + self.reservation_timeout_s,
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
        """Scheduled rounds at their times of day, an urgent list as soon as a pocket
        is empty, and cabinets told of refills that could not be told before."""
        self._next_round = next_round(self.clock(), self.settings.rounds, self.tz)
        while True:
            try:
                await asyncio.wait_for(self._urgent.wait(), self.tick_s)
            except TimeoutError:
                pass
            self._urgent.clear()
            try:
                await self._tick()
            except LedgerError as exc:
                # The database is unreachable or refused: the same work is tried again
                # at the next tick, nothing was half-written.
                log.error("refills: %s", exc)

    async def _tick(self) -> None:
        assert self._next_round is not None
        now = self.clock()
        if any(r.urgent and r.state == R.RESERVED for r in self.refills):
            await self.make_pick_lists(urgent_only=True)
        if now >= self._next_round:
            log.info("round of %s", self._local(self._next_round))
            await self.make_pick_lists(round_at=self._next_round)
            self._next_round = next_round(now, self.settings.rounds, self.tz)
        await self.tell_cabinets()
        self._update_pending()

    async def make_pick_lists(
        self, *, urgent_only: bool = False, round_at: datetime | None = None
    ) -> list[PickList]:
        """One pick list per cabinet with reserved refills: every cabinet for a round,
        only cabinets with an empty pocket for an urgent list (the cabinet's other
        reserved refills go along, the technician is there anyway)."""
        made = []
        now = self.clock()
        plans = plan_pick_lists(
            self.refills,
            blocked=self.blocked,
            urgent_only=urgent_only,
            now=now,
            round_at=round_at,
            round_due_minutes=self.settings.round_due_minutes,
        )
        for plan in plans:
            cabinet, urgent, due, refills = plan.cabinet, plan.urgent, plan.due_at, plan.refills
            pick = PickList(f"{cabinet}-{next(self._ids)}", cabinet, urgent, due, refills)
            await self.ledger.run(
                self.store.add_list,
                list_id=pick.list_id,
                cabinet=cabinet,
                urgent=urgent,
                created_at=now,
                due_at=due,
                refill_ids=[r.refill_id for r in refills],
            )
            for refill in refills:
                refill.pick_list = pick.list_id
                await refill.listed()
            self.lists[pick.list_id] = pick
            made.append(pick)
            self.metrics.pick_lists.labels("urgent" if urgent else "scheduled").inc()
            await self.pick_lists.put(pick)
            log.info(
                "pick list %s: %d lines, due %s%s",
                pick.list_id,
                len(pick.lines()),
                self._local(due),
                " (urgent)" if urgent else "",
            )
        if not urgent_only:
            self.rounds_made += 1
        return made

    # ------------------------------------------------------------ scans

    async def on_scan(self, data: str, station: str = "") -> ScanOutcome:
        outcome = await self._judge(data, self.stations.setdefault(station, Station()), station)
        self.metrics.scans.labels("accepted" if outcome.accepted else "refused").inc()
        (log.info if outcome.accepted else log.warning)("scan: %s", outcome.message)
        return outcome

    async def _judge(self, data: str, here: Station, station: str) -> ScanOutcome:
        if data.startswith(PICK_LIST_PREFIX):
            return self._open_list(data[len(PICK_LIST_PREFIX) :], here)
        if here.pick is None:
            return ScanOutcome(False, "no pick list open: scan the pick list first")
        pick = here.pick
        if data.startswith(POCKET_LABEL_PREFIX):
            return self._at_pocket(data, pick, here)
        try:
            pack = parse_pack(data)
        except ScanError as exc:
            return ScanOutcome(False, str(exc))
        if pack.expiry < self._today():
            return ScanOutcome(False, f"batch {pack.batch} of {pack.gtin} expired on {pack.expiry}")
        if here.pocket is None:
            return ScanOutcome(
                False, f"scan the label of the pocket the pack goes into (pick list {pick.list_id})"
            )
        return await self._take_pack(pack, pick, here, station)

    def _open_list(self, list_id: str, here: Station) -> ScanOutcome:
        pick = self.lists.get(list_id)
        if pick is None:
            return ScanOutcome(False, f"unknown pick list {PICK_LIST_PREFIX}{list_id}")
        if pick.status != "open":
            return ScanOutcome(False, f"pick list {list_id} is {pick.status}")
        if pick.cabinet in self.blocked:
            return ScanOutcome(
                False, f"no refills into {pick.cabinet}: {self.blocked[pick.cabinet]}"
            )
        here.pick, here.pocket = pick, None
        return ScanOutcome(
            True, f"pick list {pick.list_id} for {pick.cabinet} opened: scan a pocket label"
        )

    def _at_pocket(self, data: str, pick: PickList, here: Station) -> ScanOutcome:
        cabinet, _, number_text = data[len(POCKET_LABEL_PREFIX) :].rpartition(":")
        if not cabinet or not number_text.isdigit():
            return ScanOutcome(False, f"unreadable pocket label {data!r}")
        number = int(number_text)
        if cabinet != pick.cabinet:
            return ScanOutcome(
                False,
                f"pocket {number} of {cabinet} is in the wrong cabinet: pick list "
                f"{pick.list_id} is for {pick.cabinet}",
            )
        if not any(r.pocket.number == number and r.open for r in pick.refills):
            return ScanOutcome(
                False,
                f"pocket {number} of {cabinet} has no refill open on pick list {pick.list_id}",
            )
        here.pocket = number
        return ScanOutcome(True, f"pocket {number} of {cabinet}: scan its packs")

    async def _take_pack(
        self, pack: PackId, pick: PickList, here: Station, station: str
    ) -> ScanOutcome:
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
        here_lines = [c for c in candidates if c[0].pocket.number == here.pocket]
        if not here_lines:
            elsewhere = sorted({c[0].pocket.number for c in candidates})
            return ScanOutcome(
                False,
                f"wrong pocket: GTIN {pack.gtin} goes into pocket "
                f"{', '.join(map(str, elsewhere))} of {pick.cabinet}, not pocket {here.pocket}",
            )
        for refill, i, line in here_lines:
            if line.batch == pack.batch:
                if self.on_pack_used is not None:
                    where = pocket_location(refill.cabinet, refill.pocket.number)
                    used = await self.on_pack_used(pack, where)
                    if used is not None and not used.accepted:
                        return used
                refill.scanned.add(i)
                await self.ledger.run(
                    self.store.update,
                    refill.refill_id,
                    "refill pack scanned",
                    scanned=set(refill.scanned),
                )
                if len(refill.scanned) == len(refill.lines):
                    return await self._shielded(
                        self._confirm(refill, station), f"confirm-{refill.refill_id}"
                    )
                return ScanOutcome(
                    True,
                    f"{pack.gtin} batch {pack.batch} checked for {refill.refill_id}",
                    refill.refill_id,
                )
        wanted = ", ".join(sorted({line.batch for _, _, line in here_lines}))
        return ScanOutcome(
            False, f"batch {pack.batch} of {pack.gtin} was not picked (pick list says {wanted})"
        )

    async def _shielded(self, work: Coroutine[Any, Any, T], name: str) -> T:
        """Runs ledger work to its end even if the caller is cancelled: posting a
        transfer and recording it belong together."""
        task = asyncio.create_task(work, name=name)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Waits for requests and confirmations under way (after their callers stopped)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _confirm(self, refill: Refill, station: str) -> ScanOutcome:
        location = pocket_location(refill.cabinet, refill.pocket.number)
        await self.ledger.post(
            f"{refill.reservation}:post",
            reservation_key=refill.reservation,
            uses=[Use(refill.pocket.gtin, refill.quantity, location, "transfer", "pocket refill")],
            actor=ACTOR,
        )
        refill.confirmed_by = station or "scanner"
        # None when the cabinet was never polled: one is taken when it is told.
        sequence = self.pollers[refill.cabinet].next_sequence_or_none()
        refill.command_sequence = sequence
        await self.ledger.run(
            self.store.update,
            refill.refill_id,
            "refill booked",
            state="booked",
            confirmed_at=self.clock(),
            confirmed_by=refill.confirmed_by,
            command_sequence=sequence,
        )
        await refill.booked()
        await self._close_finished_lists()
        self.metrics.refills.labels("confirmed").inc()
        self._update_pending()
        await self._tell(refill)
        return ScanOutcome(
            True,
            f"refill {refill.refill_id} confirmed: {refill.quantity} into {location}",
            refill.refill_id,
        )

    async def _tell(self, refill: Refill) -> bool:
        """Sends the refill to the cabinet; a cabinet that cannot be told now is told
        later with the same sequence, which it acts on once."""
        if refill.refill_id in self._telling or refill.state != R.BOOKED:
            return False  # told already, or being told by another task right now
        self._telling.add(refill.refill_id)
        try:
            return await self._tell_now(refill)
        finally:
            self._telling.discard(refill.refill_id)

    async def _tell_now(self, refill: Refill) -> bool:
        poller = self.pollers[refill.cabinet]
        if refill.command_sequence is None:
            # The sequence is stored before it is sent: sent again after a restart,
            # the cabinet recognises it and does not add the doses twice.
            sequence = poller.next_sequence_or_none()
            if sequence is None:
                return False  # not polled yet; the next tick tries again
            await self.ledger.run(
                self.store.update,
                refill.refill_id,
                "refill sequence",
                command_sequence=sequence,
            )
            refill.command_sequence = sequence
        try:
            await poller.send_command(
                CabinetCommand.REFILL,
                refill.pocket.number,
                refill.quantity,
                sequence=refill.command_sequence,
            )
        except DriverError as exc:
            # Tried again at every tick until the cabinet answers: logged once.
            if refill.refill_id not in self._untold:
                self._untold.add(refill.refill_id)
                log.error("refill %s booked, cabinet not told yet: %s", refill.refill_id, exc)
            else:
                log.debug("refill %s: cabinet still not told: %s", refill.refill_id, exc)
            return False
        if refill.refill_id in self._untold:
            self._untold.discard(refill.refill_id)
            log.info("refill %s: cabinet told after all", refill.refill_id)
        refill.settled_at = monotonic_clock.monotonic()
        await self.ledger.run(
            self.store.update,
            refill.refill_id,
            "refill told to cabinet",
            state="confirmed",
            command_sequence=refill.command_sequence,
        )
        await refill.confirmed()
        return True

    async def tell_cabinets(self) -> int:
        """Retries booked refills whose cabinet was not told; returns how many were."""
        told = 0
        for refill in self.refills:
            if refill.state == R.BOOKED and refill.refill_id not in self._telling:
                told += await self._shielded(self._tell(refill), f"tell-{refill.refill_id}")
        return told

    async def _close_finished_lists(self) -> None:
        for pick in self.lists.values():
            if pick.status == "open" and not any(r.open for r in pick.refills):
                done = any(r.state in (R.BOOKED, R.CONFIRMED) for r in pick.refills)
                pick.status = "done" if done else "cancelled"
                await self.ledger.run(
                    self.store.close_list, pick.list_id, pick.status, self.clock()
                )
                for here in self.stations.values():
                    if here.pick is pick:
                        here.pick, here.pocket = None, None

    # ------------------------------------------------------------ cancelling

    async def cancel_open(self, reason: str, cabinet: str | None = None) -> int:
        """Releases every refill still waiting for the technician (of one cabinet, or
        all); returns how many."""
        cancelled = 0
        for refill in self.refills:
            if not refill.open or (cabinet is not None and refill.cabinet != cabinet):
                continue
            try:
                await self.ledger.void(
                    f"{refill.reservation}:void",
                    reservation_key=refill.reservation,
                    actor=ACTOR,
                    reason=_clip(reason),
                )
            except LedgerError as exc:
                log.warning("refill %s: %s", refill.refill_id, exc)
            await self._record_cancel(refill.refill_id, reason)
            await refill.cancelled()
            self.metrics.refills.labels("cancelled").inc()
            cancelled += 1
        await self._close_finished_lists()
        self._update_pending()
        return cancelled

    async def reservation_expired(self, key: str) -> None:
        """A refill whose stock was released for its age is cancelled; the pocket, if
        still low, asks again at its next poll."""
        for refill in self.refills:
            if refill.reservation == key and refill.open:
                await self._record_cancel(
                    refill.refill_id, "reservation expired before the refill was picked"
                )
                await refill.cancelled()
                self.metrics.refills.labels("expired").inc()
                await self._close_finished_lists()
                self._update_pending()

    def in_flight(self, cabinet: str, pocket: int, read_at: float) -> bool:
        """A refill of this pocket is being posted (every pack scanned), is booked and
        the cabinet not told yet, or was told after `read_at` (monotonic): a count read
        then lags the ledger."""
        return any(
            r.cabinet == cabinet
            and r.pocket.number == pocket
            and refill_in_flight(
                state=r.state,
                lines=len(r.lines),
                scanned=len(r.scanned),
                settled_at=r.settled_at,
                read_at=read_at,
            )
            for r in self.refills
        )

    async def _record_cancel(self, refill_id: str, reason: str) -> None:
        await self.ledger.run(
            self.store.update,
            refill_id,
            "refill cancelled",
            state="cancelled",
            cancel_reason=_clip(reason),
        )

    def block(self, cabinet: str, why: str) -> None:
        """No refills are requested, listed or scanned into this cabinet until
        `unblock` (its stock is under quarantine)."""
        self.blocked[cabinet] = why

    def unblock(self, cabinet: str) -> None:
        self.blocked.pop(cabinet, None)

    # ------------------------------------------------------------ recovery

    async def recover(self, cabinets: Sequence[Cabinet]) -> dict[str, int]:
        """Takes up the refills a stopped controller left open, settling each against
        its reservation: open → kept (on its pick list), posted → booked (the cabinet is
        told again with the same sequence), missing, expired or voided → cancelled."""
        pockets = {(c.name, p.number): p for c in cabinets for p in c.pockets}
        last = await self.ledger.run(self.store.last_number)
        self._ids = itertools.count(max(last + 1, next(self._ids)))
        rows = await self.ledger.run(self.store.open_refills)
        lists = {row.list_id: row for row in await self.ledger.run(self.store.open_lists)}
        counts = {"kept": 0, "booked": 0, "cancelled": 0}
        known = {r.refill_id for r in self.refills}
        for row in rows:
            if row.refill_id in known:
                continue
            pocket = pockets.get((row.cabinet, row.pocket))
            verdict = await self._settle(row, pocket)
            counts[verdict] += 1
        for list_id, list_row in lists.items():
            members = [r for r in self.refills if r.pick_list == list_id]
            pick = PickList(list_id, list_row.cabinet, list_row.urgent, list_row.due_at, members)
            self.lists[list_id] = pick
            if any(r.open for r in members):
                await self.pick_lists.put(pick)
        await self._close_finished_lists()
        self._update_pending()
        if any(counts.values()):
            log.info(
                "refills recovered: %d kept, %d booked, %d cancelled",
                counts["kept"],
                counts["booked"],
                counts["cancelled"],
            )
        return counts

    async def _settle(self, row: RefillRow, pocket: Pocket | None) -> str:
        async def cancel(why: str) -> str:
            await self._record_cancel(row.refill_id, why)
            log.warning("refill %s cancelled on recovery: %s", row.refill_id, why)
            return "cancelled"

        if pocket is None:
            if row.state != "booked":
                try:
                    await self.ledger.void(
                        f"{row.reservation_key}:void",
                        reservation_key=row.reservation_key,
                        actor=ACTOR,
                        reason="pocket no longer configured",
                    )
                except LedgerError as exc:
                    log.warning("refill %s: %s", row.refill_id, exc)
            return await cancel(f"{row.cabinet} pocket {row.pocket} is no longer configured")
        try:
            view = await self.ledger.reservation(row.reservation_key)
        except LedgerError:
            return await cancel("stopped before its stock was reserved")
        if view.status in ("expired", "voided"):
            return await cancel(f"reservation {view.status}")
        state = {"reserved": R.RESERVED, "picking": R.PICKING, "booked": R.BOOKED}[row.state]
        if view.status == "posted":
            state = R.BOOKED
        refill = Refill(
            row.refill_id,
            row.cabinet,
            pocket,
            sum(line.quantity for line in view.lines) if view.lines else row.quantity,
            row.urgent,
            created=row.created_at,
            due_at=row.due_at,
            state=state,
        )
        refill.lines = view.lines
        refill.scanned = set(row.scanned)
        refill.pick_list = row.pick_list
        refill.command_sequence = row.command_sequence
        refill.confirmed_by = row.confirmed_by
        if row.command_sequence is not None:
            self.pollers[row.cabinet].note_sequence(row.command_sequence)
        if state == R.BOOKED and row.state != "booked":
            # Posted, but the controller stopped before it recorded so.
            refill.quantity = row.quantity
            refill.command_sequence = self.pollers[row.cabinet].next_sequence_or_none()
            await self.ledger.run(
                self.store.update,
                row.refill_id,
                "refill booked",
                state="booked",
                command_sequence=refill.command_sequence,
            )
        self.refills.append(refill)
        return "booked" if state == R.BOOKED else "kept"

    # ------------------------------------------------------------ figures

    def _update_pending(self) -> None:
        now = self.clock()
        waiting = [r for r in self.refills if r.open]
        self.metrics.refills_pending.set(len(waiting))
        self.metrics.refills_overdue.set(sum(1 for r in waiting if r.due_at < now))

    def _local(self, at: datetime) -> str:
        return f"{at.astimezone(self.tz):%H:%M}"

    @property
    def confirmed(self) -> int:
        """Refills scanned into their pocket and booked."""
        return sum(1 for r in self.refills if r.state in (R.BOOKED, R.CONFIRMED))

    @property
    def next_round_at(self) -> datetime | None:
        return self._next_round


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pack_of(line: Allocation, serial: str | None = None) -> PackId:
    """The identifier a picked pack of this line carries."""
    return PackId(gtin=line.gtin, batch=line.batch, expiry=line.expiry, serial=serial)
