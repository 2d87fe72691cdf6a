"""Books what a cabinet behind a vendor's cabinet server reports over HL7 (docs/cabinet-hl7.md).

The server pushes one message per transaction at a pocket, so this listener books each
event as it comes rather than a counter's growth: the ledger command's idempotency key
is the server's message control id (MSH-10), and the acknowledgement goes back only
after the booking committed. A resend (after a lost ACK, a dropped connection or a
controller restart) finds its key in the ledger and books nothing twice.

Everything else is the Modbus poller's: the listener is a `CabinetPoller` whose
periodic stock snapshot plays the part of a poll. A snapshot runs the poller's own
`poll_once` (link state, temperature excursions, the comparison of every pocket's count
with the ledger that raises discrepancies, the cold chain, low pockets), and a pocket
event is booked with the poller's `_book_movement`. Refill and cold-chain code talks to
it through the same `send_command`, which sends a pocket notice to the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from controller.async_ledger import AsyncLedger
from controller.cabinets.poller import (
    ACTOR,
    CabinetPoller,
    LowPocketHandler,
    pocket_location,
)
from controller.config import Cabinet, Pocket, Product
from controller.ledger import LedgerError
from controller.metrics import Metrics
from drivers.base import (
    AckCode,
    CabinetCommand,
    CabinetDriver,
    CabinetEvent,
    CabinetSnapshot,
    CabinetStatus,
    DriverError,
    EventAck,
    EventCabinetDriver,
    ItemMasterEntry,
    PocketEvent,
    PocketEventKind,
    PocketStatus,
)

log = logging.getLogger("doseline.cabinets.hl7")
# HL7 table 0357
UNKNOWN_KEY = 204
TABLE_VALUE = 103
INTERNAL_ERROR = 207
SILENT_LIMIT = 3  # periods without any message before the connection is made again


def item_master(products: Sequence[Product]) -> list[ItemMasterEntry]:
    """The site's catalogue as item-master entries."""
    return [ItemMasterEntry(p.gtin, p.name, p.atc, p.strength, p.article) for p in products]


class Hl7CabinetListener(CabinetPoller):
    driver: EventCabinetDriver

    def __init__(
        self,
        config: Cabinet,
        driver: EventCabinetDriver,
        ledger: AsyncLedger,
        metrics: Metrics,
        on_low: LowPocketHandler | None = None,
        *,
        reconnect_max_s: float = 10.0,
        catalogue: Sequence[ItemMasterEntry] = (),
    ) -> None:
        super().__init__(config, driver, ledger, metrics, on_low, reconnect_max_s=reconnect_max_s)
        self.catalogue = list(catalogue)
        # A snapshot is expected every poll_interval_s; silence for this long counts as
        # a failed poll for the link state.
        self.silence_s = max(5.0, 5 * config.poll_interval_s)
        self.items_sent: dict[str, ItemMasterEntry] = {}
        self.events_accepted = 0
        self.events_refused = 0
        self.snapshots = 0
        self.duplicates = 0  # events received again and not booked again
        self._serving = False
        self._snapshot: CabinetStatus | None = None
        # Notices this process sent: number -> (command, pocket, doses); kept until a
        # snapshot says the server acted on them.
        self._notices: dict[int, tuple[CabinetCommand, int, int]] = {}

    # --- the session -----------------------------------------------------------------
    async def serve(self) -> None:
        backoff = self.config.poll_interval_s
        self._serving = True
        try:
            while True:
                try:
                    await self._open()
                    backoff = self.config.poll_interval_s
                    await self._session()
                except DriverError as exc:
                    self.link.poll_failed(exc)
                    await self.close()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.reconnect_max_s)
        finally:
            self._serving = False

    async def poll_once(self) -> CabinetStatus:
        """Outside `serve` (the end of a day, a command-line check): takes the messages
        the server holds, booking and acknowledging each, up to and including the next
        snapshot that shows every notice sent so far acted on (an older one would not
        show a refill just told), and returns it; everything before it is then booked.
        While `serve` runs, it only reconciles the latest snapshot again."""
        if self._serving:
            return await self._reconcile()
        async with self._bus:
            if not self.connected:
                await self._connect()
        while True:
            try:
                event = await asyncio.wait_for(self.driver.next_event(), self.silence_s)
            except TimeoutError:
                raise DriverError(
                    f"cabinet {self.name}: no snapshot within {self.silence_s:.0f} s"
                ) from None
            ack = await self.handle(event)
            await self.driver.acknowledge(event, ack)
            if isinstance(event, CabinetSnapshot) and ack.code == AckCode.ACCEPT:
                assert self._snapshot is not None
                if self._pending_notices():
                    continue  # taken before the server acted on a notice: wait for the next
                self._forget_acted_notices()
                return self._snapshot

    async def _reconcile(self) -> CabinetStatus:
        """The poller's poll on the latest snapshot: link state, excursions, the
        comparison with the ledger, the cold chain, low pockets.

        A snapshot the server took before it acted on a notice of ours (its ZCS-7 is
        older) does not show that notice yet: its pocket is not compared, and the cold
        chain, which decides from lock states and counts, waits for a newer one."""
        hook, low_hook = self.after_poll, self.on_low
        waiting = {pocket for _command, pocket, _n in self._pending_notices().values()}
        if waiting:
            self.after_poll = None
            if low_hook is not None:
                # A pocket whose refill notice the snapshot does not show yet is not low:
                # asking for another refill would fill it twice.
                async def on_low(cabinet: Any, pocket: Any, count: int, read_at: float) -> None:
                    if pocket.number not in waiting:
                        await low_hook(cabinet, pocket, count, read_at)

                self.on_low = on_low
        try:
            return await CabinetPoller.poll_once(self)
        finally:
            self.after_poll, self.on_low = hook, low_hook
            self._forget_acted_notices()

    def _pending_notices(self) -> dict[int, tuple[CabinetCommand, int, int]]:
        acted = self._snapshot.last_ack_sequence if self._snapshot is not None else 0
        return {
            number: notice
            for number, notice in self._notices.items()
            if 0 < (number - acted) % 65535 < 32768
        }

    def _forget_acted_notices(self) -> None:
        self._notices = self._pending_notices()

    async def _compare(
        self,
        pockets: list[tuple[Pocket, PocketStatus]],
        read_at: float,
        held: dict[tuple[str, str], int] | None,
    ) -> None:
        waiting = {pocket for _command, pocket, _n in self._pending_notices().values()}
        await super()._compare(
            [(c, p) for c, p in pockets if p.number not in waiting], read_at, held
        )

    async def _open(self) -> None:
        async with self._bus:
            if not self.connected:
                await self._connect()
        await self.send_item_master()

    async def _connect(self) -> None:
        try:
            await self.driver.connect()
        except DriverError:
            self.metrics.driver_errors.labels(self.name).inc()
            raise
        self.connected = True
        if self._ever_connected:
            self.metrics.driver_reconnects.labels(self.name).inc()
        self._ever_connected = True

    async def _session(self) -> None:
        silent = 0
        while True:
            try:
                event = await asyncio.wait_for(self.driver.next_event(), self.silence_s)
            except TimeoutError:
                silent += 1
                self.link.poll_failed(
                    DriverError(f"cabinet {self.name}: no message for {self.silence_s:.0f} s")
                )
                if silent >= SILENT_LIMIT:
                    raise DriverError(
                        f"cabinet {self.name}: silent for {silent * self.silence_s:.0f} s,"
                        " connecting again"
                    ) from None
                continue
            silent = 0
            ack = await self.handle(event)
            await self.driver.acknowledge(event, ack)

    async def handle(self, event: CabinetEvent) -> EventAck:
        """Books one event and returns the acknowledgement it gets."""
        try:
            if isinstance(event, CabinetSnapshot):
                ack = await self._on_snapshot(event)
            else:
                ack = await self._on_pocket_event(event)
        except LedgerError as exc:
            # Nothing of it was booked: the server resends it later (AR, 207).
            log.error("cabinet %s: message %s not booked: %s", self.name, event.message_id, exc)
            ack = EventAck(
                AckCode.REJECT, f"not booked now, send again later: {exc}", INTERNAL_ERROR
            )
        if ack.code == AckCode.ACCEPT:
            self.events_accepted += 1
        else:
            self.events_refused += 1
            log.warning(
                "cabinet %s: message %s answered %s: %s",
                self.name,
                event.message_id,
                ack.code.value,
                ack.text,
            )
        return ack

    def _wrong_cabinet(self, cabinet: str, field: str) -> EventAck | None:
        if cabinet == self.config.name:
            return None
        return EventAck(
            AckCode.ERROR,
            f"{field}: cabinet {cabinet!r} is not {self.config.name!r}, the cabinet of this link",
            UNKNOWN_KEY,
        )

    # --- snapshots ---------------------------------------------------------------------
    async def _on_snapshot(self, event: CabinetSnapshot) -> EventAck:
        wrong = self._wrong_cabinet(event.cabinet, "ZCS-1")
        if wrong is not None:
            return wrong
        self._snapshot = event.status
        self.snapshots += 1
        await self._reconcile()
        return EventAck.accept()

    async def _read(self) -> CabinetStatus:
        """A "poll" of this cabinet is its latest snapshot."""
        if self._snapshot is None:
            raise DriverError(f"cabinet {self.name}: no stock snapshot received yet")
        return self._snapshot

    async def _book_pocket(
        self, config: Pocket, pocket: PocketStatus, marks: dict[str, int]
    ) -> None:
        """A snapshot carries counts only: its events were booked one by one."""

    async def adopt(self, store_bins: list[str], timeout_s: float = 60) -> None:
        """Commissioning: the first snapshot's counts become the pockets' opening stock
        (the poller's `adopt`). Transactions the server reports before that snapshot
        are in its counts: for a pocket not adopted yet they are acknowledged and not
        booked; for one adopted before (a restart) they are booked as ever."""
        adopted = {
            number
            for number in self.pockets
            if await self.ledger.counter_mark(self.name, f"pocket{number}.withdrawals") is not None
        }
        if adopted == set(self.pockets):
            return
        async with self._bus:
            if not self.connected:
                await self._connect()
        while True:
            try:
                event = await asyncio.wait_for(self.driver.next_event(), self.silence_s)
            except TimeoutError:
                raise DriverError(
                    f"cabinet {self.name}: no snapshot within {self.silence_s:.0f} s"
                ) from None
            if isinstance(event, PocketEvent) and event.pocket not in adopted:
                ack = EventAck.accept()  # counted in the opening snapshot
            elif isinstance(event, CabinetSnapshot):
                wrong = self._wrong_cabinet(event.cabinet, "ZCS-1")
                ack = wrong or EventAck.accept()
                if wrong is None:
                    self._snapshot = event.status
            else:
                ack = await self.handle(event)
            await self.driver.acknowledge(event, ack)
            if self._snapshot is not None:
                break
        await super().adopt(store_bins, timeout_s)

    async def poll_status_only(self) -> CabinetStatus:
        """The latest snapshot; before the first one, connects and waits for it
        (commissioning: `adopt`)."""
        if self._snapshot is not None:
            return self._snapshot
        async with self._bus:
            if not self.connected:
                await self._connect()
            try:
                return await self.driver.read_status()
            except DriverError:
                self.metrics.driver_errors.labels(self.name).inc()
                raise

    # --- pocket events -----------------------------------------------------------------
    async def _on_pocket_event(self, event: PocketEvent) -> EventAck:
        wrong = self._wrong_cabinet(event.cabinet, "ZPK-1")
        if wrong is not None:
            return wrong
        config = self.pockets.get(event.pocket)
        if config is None:
            return EventAck(
                AckCode.ERROR,
                f"ZPK-3: pocket {event.pocket} is not a pocket of cabinet {self.name}",
                UNKNOWN_KEY,
            )
        if event.gtin != config.gtin:
            return EventAck(
                AckCode.ERROR,
                f"RXD-2: GTIN {event.gtin} is not the product of pocket {event.pocket}"
                f" ({config.gtin})",
                TABLE_VALUE,
            )
        read_at = time.monotonic()
        key = f"hl7:{self.name}:{event.message_id}"
        pocket = PocketStatus(
            event.pocket, 0, event.count_after or 0, config.min, config.max, 0, 0, 0
        )
        ward = self.config.ward
        async with self._booking:
            if await self.ledger.command_done(key):
                # Booked before (a resend, or one this process never saw acknowledged).
                self.duplicates += 1
                return EventAck.accept()
            if event.kind == PocketEventKind.DISPENSE:
                booked = await self._book_movement(
                    config, pocket, "withdrawals", event.quantity, "consume",
                    f"withdrawal at {ward}", key=key, mark=None,
                )  # fmt: skip
                self.withdrawals_booked += booked
                self.metrics.withdrawals.labels(self.name).inc(booked)
            elif event.kind == PocketEventKind.WASTE:
                self.wasted_booked += await self._book_movement(
                    config, pocket, "waste", event.quantity, "waste",
                    f"discarded at the cabinet on {ward}", key=key, mark=None,
                    reason_code="damaged",
                )  # fmt: skip
            elif event.kind == PocketEventKind.RETURN:
                self.returns_booked += await self._book_movement(
                    config, pocket, "returns", event.quantity, "return_consumed",
                    f"dose returned at {ward}", key=key, mark=None,
                )  # fmt: skip
            elif event.kind == PocketEventKind.COUNT:
                await self._book_event_count(config, pocket, event, key)
            else:
                await self._check_refill(config, pocket, event, key)
        if (
            self.on_low is not None
            and event.count_after is not None
            and event.count_after < config.min
        ):
            await self.on_low(self.config, config, event.count_after, read_at)
        return EventAck.accept()

    async def _book_event_count(
        self, config: Pocket, pocket: PocketStatus, event: PocketEvent, key: str
    ) -> None:
        """A count at the cabinet: the ledger is set to it and a difference raised."""
        location = pocket_location(self.name, event.pocket)
        before = await self.ledger.on_hand(location, config.gtin)
        change = await self.ledger.count_to(
            key,
            location=location,
            gtin=config.gtin,
            counted=event.quantity,
            actor=ACTOR,
            reason=f"counted at the cabinet on {self.config.ward} (message {event.message_id})",
        )
        self.counted_booked += change
        if change:
            counted = PocketStatus(event.pocket, 0, event.quantity, 0, 0, 0, 0, 0)
            await self._raise(
                f"{key}:count",
                config,
                counted,
                source="count",
                ledger_value=event.quantity - change,
                detail=f"counted {event.quantity} at the cabinet, ledger had {before}",
            )

    async def _check_refill(
        self, config: Pocket, pocket: PocketStatus, event: PocketEvent, key: str
    ) -> None:
        """A refill confirmation books nothing: the doses were moved into the pocket
        when the technician's scans confirmed the refill. A refill the pharmacy sent no
        notice for, or one of other doses than its notice, is raised for an operator."""
        if event.notice is None:
            await self._raise(
                f"{key}:refill",
                config,
                pocket,
                source="cabinet",
                ledger_value=0,
                detail=(
                    f"refill of {event.quantity} at the cabinet without a refill notice: not booked"
                ),
            )
            return
        sent = self._notices.get(event.notice)
        if sent is not None and sent != (CabinetCommand.REFILL, event.pocket, event.quantity):
            _command, sent_pocket, sent_doses = sent
            await self._raise(
                f"{key}:refill",
                config,
                pocket,
                source="cabinet",
                ledger_value=sent_doses,
                detail=(
                    f"refill notice {event.notice} was {sent_doses} into pocket {sent_pocket},"
                    f" the cabinet confirms {event.quantity} into pocket {event.pocket}"
                ),
            )

    # --- outbound ---------------------------------------------------------------------
    async def send_item_master(self) -> None:
        """The whole item master, sent at every connect."""
        await self.driver.send_item_master(self.catalogue, replace=True)
        self.items_sent = {item.gtin: item for item in self.catalogue}

    async def update_catalogue(self, items: Sequence[ItemMasterEntry]) -> int:
        """The catalogue changed: sends the new and changed items (the whole file goes
        again at the next connect, which also drops removed ones). Returns how many."""
        self.catalogue = list(items)
        changed = [item for item in items if self.items_sent.get(item.gtin) != item]
        if not changed or not self.connected:
            return 0
        await self.driver.send_item_master(changed, replace=False)
        self.items_sent.update({item.gtin: item for item in changed})
        return len(changed)

    async def send_command(
        self, command: CabinetCommand, pocket: int, quantity: int, *, sequence: int | None = None
    ) -> int:
        """Sends a pocket notice and waits for its acknowledgement; returns its number.
        A notice sent again with its number is acted on once by the server."""
        async with self._bus:
            if sequence is None:
                sequence = self.next_sequence()
            else:
                self.note_sequence(sequence)
            if not self.connected:
                raise DriverError(f"cabinet {self.name}: not connected to the cabinet server")
            try:
                await self.driver.send_command(sequence, command, pocket, quantity)
            except DriverError:
                self.metrics.driver_errors.labels(self.name).inc()
                raise
            self._notices[sequence] = (command, pocket, quantity)
            return sequence


def cabinet_poller(
    config: Cabinet,
    driver: CabinetDriver,
    ledger: AsyncLedger,
    metrics: Metrics,
    *,
    on_low: LowPocketHandler | None = None,
    catalogue: Sequence[Product] = (),
) -> CabinetPoller:
    """The poller of a polled cabinet, or the listener of one behind a cabinet server."""
    if isinstance(driver, EventCabinetDriver):
        return Hl7CabinetListener(
            config, driver, ledger, metrics, on_low, catalogue=item_master(catalogue)
        )
    return CabinetPoller(config, driver, ledger, metrics, on_low)
