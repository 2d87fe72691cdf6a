"""An in-memory cabinet behind a cabinet server: pocket events pushed and
acknowledged, snapshots and item master (see `drivers.fakes`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.base import (
    AckCode,
    CabinetCommand,
    CabinetEvent,
    CabinetSnapshot,
    CabinetStatus,
    CabinetStatusBit,
    DriverError,
    EventAck,
    EventCabinetDriver,
    ItemMasterEntry,
    PocketEvent,
    PocketEventKind,
    PocketStatus,
)
from drivers.fake_device import RESEND_LATER, FakeDevice

_NOTICE_ACTIONS = {
    CabinetCommand.REFILL: "REFILL",
    CabinetCommand.SET_COUNT: "SET_COUNT",
    CabinetCommand.LOCK_POCKET: "LOCK",
    CabinetCommand.UNLOCK_POCKET: "UNLOCK",
}


@dataclass
class FakeEventPocket:
    """One pocket of a FakeEventCabinet: what a cabinet server knows of it."""

    number: int
    gtin: str
    count: int
    capacity: int
    drawer: str = "A"
    locked: bool = False


class FakeEventCabinet(FakeDevice, EventCabinetDriver):
    """A cabinet behind its vendor's cabinet server (HL7 v2), in memory.

    Like the server, it delivers its messages one at a time and in order: `next_event`
    hands out the next one only when the one before was acknowledged. An AR with error
    code 207 puts the event back to be delivered again, with the same message id; so
    does a reconnect for every event not yet acknowledged. A snapshot is queued on each
    connect. Pocket notices (`send_command`) act on a notice number once, remembering
    every number; a REFILL notice queues a REFILL event carrying it. `pocket_gtins`
    plays the site file: a pocket not in it is refused before anything is sent.
    """

    kind = "cabinet"

    def __init__(
        self,
        name: str = "CAB1",
        pockets: Iterable[FakeEventPocket] = (),
        *,
        cabinet: str | None = None,
        pocket_gtins: dict[int, str] | None = None,
        cold: bool = False,
        snapshot_on_connect: bool = True,
    ) -> None:
        super().__init__(name)
        self.cabinet = cabinet or name
        self.pockets: dict[int, FakeEventPocket] = {}
        for pocket in pockets:
            if pocket.number in self.pockets:
                raise ValueError(f"pockets: number {pocket.number} appears twice")
            self.pockets[pocket.number] = pocket
        self.pocket_gtins = (
            dict(pocket_gtins)
            if pocket_gtins is not None
            else {n: p.gtin for n, p in self.pockets.items()}
        )
        self.temp_low_c, self.temp_high_c = (2.0, 8.0) if cold else (15.0, 25.0)
        self.temperature_c = (self.temp_low_c + self.temp_high_c) / 2
        self.temp_excursions_total = 0
        self.door_open = False
        self.fault = False
        self.heartbeat = 0
        self.last_notice = 0
        self.snapshot_on_connect = snapshot_on_connect
        self.outbox: list[CabinetEvent] = []
        """Events not yet acknowledged, in the order they are delivered."""
        self.acks: list[tuple[CabinetEvent, EventAck]] = []
        self.item_master: dict[str, str] = {}
        """GTIN -> name, as the server holds it after send_item_master."""
        self.refuse_item_master: str | None = None
        """Text of an AE the server answers to the next item masters (None = accept)."""
        self.notices: list[tuple[int, CabinetCommand, int, int]] = []
        """Notices acted on: (notice, command, pocket, quantity)."""
        self.notices_repeated = 0
        self._seen_notices: set[int] = set()
        self._in_flight: CabinetEvent | None = None
        self._lost: DriverError | None = None
        self._ids = 0
        self._changed = asyncio.Event()

    # -- the interface ---------------------------------------------------------------

    async def connect(self) -> None:
        await self._connect()
        self._in_flight = None
        self._lost = None
        if self.snapshot_on_connect:
            self.outbox = [e for e in self.outbox if not isinstance(e, CabinetSnapshot)]
            self.queue_snapshot()

    async def close(self) -> None:
        await self._close()
        self._lost = self._error("next_event", "connection closed")
        self._changed.set()

    async def next_event(self) -> CabinetEvent:
        self._enter("next_event", ())
        while True:
            if self._lost is not None:
                raise self._lost
            if not self.link_up:
                self.connected = False
                self._lost = self._error("next_event", "connection lost (link down)")
                raise self._lost
            if self._in_flight is None and self.outbox:
                self._in_flight = self.outbox[0]
                return self._in_flight
            self._changed.clear()
            await self._changed.wait()

    async def acknowledge(self, event: CabinetEvent, ack: EventAck) -> None:
        self._enter("acknowledge", (event, ack))
        self.acks.append((event, ack))
        if self._in_flight is not None and self._in_flight.message_id == event.message_id:
            self._in_flight = None
            resend = ack.code is AckCode.REJECT and ack.error_code == RESEND_LATER
            if not resend:
                self.outbox = [e for e in self.outbox if e.message_id != event.message_id]
            self._changed.set()

    async def read_status(self) -> CabinetStatus:
        self._enter("read_status", ())
        return self.status()

    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        code = CabinetCommand(command)
        what = f"{code.name} notice {sequence}"
        gtin = self.pocket_gtins.get(pocket)
        if gtin is None:
            self.calls.append(("send_command", (sequence, code, pocket, quantity)))
            raise DriverError(f"cabinet {self.name}: pocket {pocket} is not in the site file")
        action = _NOTICE_ACTIONS.get(code)
        if action is None:
            raise ValueError(f"command: {code!r} has no pocket notice")
        self._enter("send_command", (sequence, code, pocket, quantity), what)
        target = self.pockets.get(pocket)
        if target is None:
            raise self._refused(what, f"ZPK-3: no pocket {pocket}")
        if gtin != target.gtin:
            raise self._refused(what, f"RXD-2: {gtin} is not the product of pocket {pocket}")
        if sequence in self._seen_notices:
            self.notices_repeated += 1
            return
        if code is CabinetCommand.REFILL and target.count + quantity > target.capacity:
            raise self._refused(
                what, f"pocket {pocket} holds {target.count}, capacity {target.capacity}"
            )
        self._seen_notices.add(sequence)
        self.last_notice = sequence
        self.notices.append((sequence, code, pocket, quantity))
        if code is CabinetCommand.REFILL:
            target.count += quantity
            self._event(target, PocketEventKind.REFILL, quantity, notice=sequence)
        elif code is CabinetCommand.LOCK_POCKET:
            target.locked = True
        elif code is CabinetCommand.UNLOCK_POCKET:
            target.locked = False
        else:
            target.count = quantity

    async def send_item_master(self, items: Sequence[ItemMasterEntry], *, replace: bool) -> None:
        what = f"item master of {len(items)} item(s)"
        self._enter("send_item_master", (tuple(items), replace), what)
        if self.refuse_item_master is not None:
            raise self._refused(what, self.refuse_item_master)
        entries = {item.gtin: item.name for item in items}
        if replace:
            self.item_master = entries
        else:
            self.item_master.update(entries)

    # -- what a test does on the server's side ------------------------------------------

    def status(self) -> CabinetStatus:
        """The stock snapshot the server would send now."""
        bits = CabinetStatusBit(0)
        if self.door_open:
            bits |= CabinetStatusBit.DOOR_OPEN
        if self.fault:
            bits |= CabinetStatusBit.FAULT
        if not self.temp_low_c <= self.temperature_c <= self.temp_high_c:
            bits |= CabinetStatusBit.TEMPERATURE_ALARM
        return CabinetStatus(
            cabinet_id=0,
            map_version=0,
            heartbeat=self.heartbeat,
            status=bits,
            temperature_c=self.temperature_c,
            last_ack_sequence=self.last_notice,
            pockets=tuple(
                PocketStatus(n, 0, p.count, 0, 0, 0, 0, 0, locked=p.locked)
                for n, p in sorted(self.pockets.items())
            ),
            temp_low_c=self.temp_low_c,
            temp_high_c=self.temp_high_c,
            temp_excursions_total=self.temp_excursions_total,
        )

    def push(self, event: CabinetEvent) -> None:
        """Queue any event to be delivered."""
        self.outbox.append(event)
        self._changed.set()

    def queue_snapshot(self) -> CabinetSnapshot:
        self.heartbeat += 1
        snapshot = CabinetSnapshot(self._next_id(), self.cabinet, self.status())
        self.push(snapshot)
        return snapshot

    def withdraw(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        taken = 0 if p.locked else min(n, p.count)
        if taken:
            p.count -= taken
            self._event(p, PocketEventKind.DISPENSE, taken)
        return taken

    def waste(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        wasted = min(n, p.count)
        if wasted:
            p.count -= wasted
            self._event(p, PocketEventKind.WASTE, wasted)
        return wasted

    def return_doses(self, pocket: int, n: int = 1) -> int:
        p = self.pockets[pocket]
        accepted = max(0, min(n, p.capacity - p.count))
        if accepted:
            p.count += accepted
            self._event(p, PocketEventKind.RETURN, accepted)
        return accepted

    def stocktake(self, pocket: int, counted: int) -> None:
        p = self.pockets[pocket]
        p.count = counted
        self._event(p, PocketEventKind.COUNT, counted)

    def refill_without_notice(self, pocket: int, n: int) -> None:
        p = self.pockets[pocket]
        p.count += n
        self._event(p, PocketEventKind.REFILL, n)

    def set_temperature(self, celsius: float) -> None:
        was_in = self.temp_low_c <= self.temperature_c <= self.temp_high_c
        self.temperature_c = celsius
        if was_in and not self.temp_low_c <= celsius <= self.temp_high_c:
            self.temp_excursions_total += 1

    def drop_connection(self) -> None:
        """The server drops the link: the waiting and every later next_event raise
        DriverError until connect()."""
        self.connected = False
        self._lost = self._error("next_event", "connection lost")
        self._changed.set()

    # -- internals ---------------------------------------------------------------------

    def _link_changed(self) -> None:
        self._changed.set()  # a waiting next_event sees the link go down

    def _refused(self, what: str, text: str) -> DriverError:
        return DriverError(f"cabinet {self.name}: {what} refused (AE): {text}")

    def _next_id(self) -> str:
        self._ids += 1
        return f"FAKE{self._ids:08d}"

    def _event(
        self,
        pocket: FakeEventPocket,
        kind: PocketEventKind,
        quantity: int,
        notice: int | None = None,
    ) -> None:
        self.push(
            PocketEvent(
                message_id=self._next_id(),
                cabinet=self.cabinet,
                kind=kind,
                drawer=pocket.drawer,
                pocket=pocket.number,
                gtin=pocket.gtin,
                quantity=quantity,
                count_after=pocket.count,
                notice=notice,
            )
        )
