"""Polls one cabinet and books what happened at it.

The cabinet's per-pocket counters only ever grow, so the poller books the difference
between the counter now and the last value the ledger accounted for (stored with the
movement itself). A missed poll, a slow poll or a controller restart loses nothing and
books nothing twice: withdrawals become consumption, doses discarded at the cabinet
waste, returned doses go back in, and a pocket counted at the cabinet becomes an
adjustment. Whatever the ledger cannot account for is raised as a discrepancy an
operator sees (`doseline cabinets discrepancies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from controller.async_ledger import AsyncLedger
from controller.cabinets.counter_rules import (
    COUNTER_BACKWARDS,
    COUNTER_WRAP,
    POCKET_COUNTERS,
    CounterStep,
    read_count,
    read_counter,
    split_shortfall,
)
from controller.cabinets.link import CabinetLink
from controller.cabinets.pockets import pocket_location
from controller.config import Cabinet, Pocket
from controller.ledger import CounterMark, InsufficientStock, LedgerError, Need, Use
from controller.metrics import Metrics
from drivers.base import CabinetCommand, CabinetDriver, CabinetStatus, DriverError, PocketStatus

# What a counter or an event books at a pocket (a ledger command each).
Take = Literal["consume", "waste", "return_consumed"]
log = logging.getLogger("doseline.cabinets")
ACTOR = "cabinet-poller"
EXCURSIONS = "temperature_excursions"  # the cabinet's counter of temperature excursions

LowPocketHandler = Callable[[Cabinet, Pocket, int, float], Awaitable[object]]
ExcursionHandler = Callable[["CabinetPoller", CabinetStatus, int], Awaitable[object]]
# Imported from here by the other cabinet services and the tools.
__all__ = [
    "ACTOR",
    "COUNTER_BACKWARDS",
    "COUNTER_WRAP",
    "POCKET_COUNTERS",
    "CabinetPoller",
    "ExcursionHandler",
    "LowPocketHandler",
    "pocket_location",
]


class CabinetPoller:
    def __init__(
        self,
        config: Cabinet,
        driver: CabinetDriver,
        ledger: AsyncLedger,
        metrics: Metrics,
        on_low: LowPocketHandler | None = None,
        *,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.config = config
        self.name = config.name
        self.driver = driver
        self.ledger = ledger
        self.metrics = metrics
        self.on_low = on_low
        self.reconnect_max_s = reconnect_max_s
        self.pockets = {p.number: p for p in config.pockets}
        self.link = CabinetLink(
            self.name, metrics, heartbeat_stale_s=max(5.0, 5 * config.poll_interval_s)
        )
        # The series exist from the start at 0, so that increase() sees the first one.
        metrics.temperature_excursions.labels(self.name)
        metrics.driver_reconnects.labels(self.name)
        self.connected = False
        self._ever_connected = False  # a later connect is a reconnect
        self.last_status: CabinetStatus | None = None
        self.withdrawals_booked = 0
        self.returns_booked = 0
        self.wasted_booked = 0
        self.counted_booked = 0  # net doses an in-cabinet count added (or removed, < 0)
        # Set by the controller: a temperature excursion seen on the cabinet's counter;
        # and whether a pocket has a refill booked that the cabinet was not told yet
        # (its count lags the ledger until then, which is no discrepancy).
        self.on_excursion: ExcursionHandler | None = None
        self.after_poll: Callable[[CabinetPoller, CabinetStatus], Awaitable[object]] | None = None
        self.refill_in_flight: Callable[[str, int, float], bool] = lambda cab, pocket, at: False
        self._bus = asyncio.Lock()  # one owner of the device link
        self._booking = asyncio.Lock()  # one poll's bookings at a time
        self._sequence: int | None = None
        self._raised: set[str] = set()  # discrepancies raised by this process
        self._mismatches: set[str] = set()  # pocket numbers not as configured, logged once

    @property
    def online(self) -> bool:
        """The cabinet answers (whatever its state: door open, alarm...)."""
        return self.link.reachable

    async def serve(self) -> None:
        backoff = self.config.poll_interval_s
        while True:
            try:
                await self.poll_once()
                backoff = self.config.poll_interval_s
            except DriverError as exc:
                self.link.poll_failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            except LedgerError as exc:
                # The ledger could not book: the marks did not move, so the next poll
                # books the same events again.
                log.error("cabinet %s: booking failed: %s", self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            await asyncio.sleep(self.config.poll_interval_s)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No poll books anything while this is held (a pharmacist's decision being
        carried out at the cabinet and in the ledger)."""
        async with self._booking:
            yield

    async def poll_once(self) -> CabinetStatus:
        async with self._booking:
            read_at = time.monotonic()
            status = await self._read()
            self.link.poll_ok(status)
            self.last_status = status
            if self._sequence is None:
                self._sequence = status.last_ack_sequence
            # One ledger read for the whole poll, not one per counter and pocket: the
            # cabinet's marks (only this poll moves them, each in the transaction that
            # books its counter, and it holds `_booking`) and what its pockets hold.
            known = [
                (self.pockets[p.number], p) for p in status.pockets if p.number in self.pockets
            ]
            self._check_pocket_numbers(status)
            marks, held = await self.ledger.marks_and_on_hand(
                self.name,
                [pocket_location(self.name, p.number) for _, p in known],
            )
            await self._check_excursions(status, marks.get(EXCURSIONS))
            moved = False
            for config, pocket in known:
                self._show(config, pocket)
                moved = moved or any(
                    marks.get(f"pocket{pocket.number}.{name}") != getattr(pocket, field)
                    for field, name in POCKET_COUNTERS
                )
                await self._book_pocket(config, pocket, marks)
            # What the pockets hold changed only if something was booked.
            await self._compare(known, read_at, None if moved else held)
            if self.after_poll is not None:
                await self.after_poll(self, status)
            low = [
                (self.pockets[p.number], p.count)
                for p in status.pockets
                if p.number in self.pockets and p.count < self.pockets[p.number].min
            ]
        if self.on_low is not None:
            for config, count in low:
                await self.on_low(self.config, config, count, read_at)
        return status

    async def _read(self) -> CabinetStatus:
        async with self._bus:
            if not self.connected:
                try:
                    await self.driver.connect()
                except DriverError:
                    self.metrics.driver_errors.labels(self.name).inc()
                    raise
                self.connected = True
                if self._ever_connected:
                    self.metrics.driver_reconnects.labels(self.name).inc()
                self._ever_connected = True
            started = time.perf_counter()
            try:
                status = await self.driver.read_status()
            except DriverError:
                self.metrics.driver_errors.labels(self.name).inc()
                await self.driver.close()
                self.connected = False
                raise
            self.metrics.driver_latency.labels(self.name, "read_status").observe(
                time.perf_counter() - started
            )
            return status

    async def _check_excursions(self, status: CabinetStatus, mark: int | None) -> None:
        """A rise of the cabinet's excursion counter is an excursion, even one that
        began and ended between two polls. `mark`: its booked value."""
        counter = EXCURSIONS
        now = status.temp_excursions_total
        reading = read_counter(mark, now)
        if reading.step is CounterStep.UNCHANGED:
            return
        if reading.step is CounterStep.FIRST_SEEN:
            await self.ledger.set_counter_mark(CounterMark(self.name, counter, now))
            return
        new = reading.delta
        if reading.step is CounterStep.BACKWARDS:
            log.error(
                "cabinet %s: temperature excursion counter went backwards from %d to %d:"
                " counting on from %d",
                self.name,
                mark,
                now,
                now,
            )
            await self.ledger.set_counter_mark(CounterMark(self.name, counter, now))
            return
        self.metrics.temperature_excursions.labels(self.name).inc(new)
        log.error(
            "cabinet %s: %d temperature excursion(s), now %.1f °C (band %s-%s °C)",
            self.name,
            new,
            status.temperature_c,
            status.temp_low_c,
            status.temp_high_c,
        )
        if self.on_excursion is not None:
            await self.on_excursion(self, status, now)
        await self.ledger.set_counter_mark(CounterMark(self.name, counter, now))

    async def close(self) -> None:
        async with self._bus:
            if self.connected:
                self.connected = False
                try:
                    await self.driver.close()
                except DriverError as exc:
                    log.debug("cabinet %s: close: %s", self.name, exc)

    def next_sequence(self) -> int:
        """A mailbox sequence for a new command: one past the last acknowledged one
        seen at the first poll, counting 1..65535. Raises DriverError before that."""
        if self._sequence is None:
            raise DriverError(f"cabinet {self.name}: not polled yet, sequence unknown")
        self._sequence = self._sequence % 65535 + 1
        return self._sequence

    def note_sequence(self, sequence: int) -> None:
        """Makes sure later new commands do not reuse `sequence` (one handed out before
        a restart and sent again now): moves the counter forward to it, never back."""
        if self._sequence is None or 0 < (sequence - self._sequence) % 65535 < 32768:
            self._sequence = sequence

    def next_sequence_or_none(self) -> int | None:
        try:
            return self.next_sequence()
        except DriverError:
            return None

    async def send_command(
        self, command: CabinetCommand, pocket: int, quantity: int, *, sequence: int | None = None
    ) -> int:
        """Writes one command and waits for its acknowledgement; returns the sequence.

        A command sent again with the sequence it had (a retry, a restart) is acted on
        once by the cabinet. Retried here a few times on a link error.
        """
        async with self._bus:
            if sequence is None:
                sequence = self.next_sequence()
            else:
                self.note_sequence(sequence)
            last: DriverError | None = None
            for _attempt in range(3):
                try:
                    if not self.connected:
                        await self.driver.connect()
                        self.connected = True
                        if self._ever_connected:
                            self.metrics.driver_reconnects.labels(self.name).inc()
                        self._ever_connected = True
                    await self.driver.send_command(sequence, command, pocket, quantity)
                    return sequence
                except DriverError as exc:
                    last = exc
                    self.metrics.driver_errors.labels(self.name).inc()
                    if "refused" in str(exc):
                        break
                    await asyncio.sleep(0.2)
            assert last is not None
            raise last

    async def adopt(self, store_bins: list[str], timeout_s: float = 60) -> None:
        """Commissioning: books the pockets' counts from the central store and takes
        the cabinet's counters as the starting point. Does nothing for a pocket the
        ledger already knows."""
        status = await self.poll_status_only()
        for pocket in status.pockets:
            config = self.pockets.get(pocket.number)
            if config is None:
                continue
            device, counter = self.name, f"pocket{pocket.number}.withdrawals"
            if await self.ledger.counter_mark(device, counter) is not None:
                continue
            if pocket.count:
                key = f"adopt:{self.name}:{pocket.number}"
                location = pocket_location(self.name, pocket.number)
                await self.ledger.reserve(
                    key,
                    purpose=f"opening stock of {location}",
                    needs=[Need(config.gtin, pocket.count)],
                    from_locations=store_bins,
                    timeout_s=timeout_s,
                    actor=ACTOR,
                )
                await self.ledger.post(
                    f"{key}:post",
                    reservation_key=key,
                    uses=[Use(config.gtin, pocket.count, location, "transfer", "opening stock")],
                    actor=ACTOR,
                )
            for field_name, name in POCKET_COUNTERS:
                await self.ledger.set_counter_mark(
                    CounterMark(
                        device, f"pocket{pocket.number}.{name}", getattr(pocket, field_name)
                    ),
                )

    async def poll_status_only(self) -> CabinetStatus:
        return await self._read()

    def _show(self, config: Pocket, pocket: PocketStatus) -> None:
        labels = (self.name, str(pocket.number))
        self.metrics.pocket_count.labels(*labels).set(pocket.count)
        self.metrics.pocket_fill.labels(*labels).set(pocket.count / config.max)

    async def _book_pocket(
        self, config: Pocket, pocket: PocketStatus, marks: dict[str, int]
    ) -> None:
        """Books every counter's growth (`marks`: the cabinet's booked counter values)."""
        ward = self.config.ward
        booked = await self._book_counter(
            config,
            pocket,
            "withdrawals",
            pocket.withdrawals_total,
            "consume",
            f"withdrawal at {ward}",
            marks,
        )
        self.withdrawals_booked += booked
        self.metrics.withdrawals.labels(self.name).inc(booked)
        self.wasted_booked += await self._book_counter(
            config,
            pocket,
            "waste",
            pocket.waste_total,
            "waste",
            f"discarded at the cabinet on {ward}",
            marks,
            reason_code="damaged",
        )
        self.returns_booked += await self._book_counter(
            config,
            pocket,
            "returns",
            pocket.returns_total,
            "return_consumed",
            f"dose returned at {ward}",
            marks,
        )
        await self._book_count(config, pocket, marks)

    async def _book_count(
        self, config: Pocket, pocket: PocketStatus, booked: dict[str, int]
    ) -> None:
        """A count keyed in at the cabinet (or a SET_COUNT) moved the counted counters:
        the ledger is adjusted to the count, first expiry first, and any difference is
        raised as a discrepancy. Both marks move in the same transaction."""
        marks = {}
        for field_name, counter in (
            ("counted_up_total", "counted_up"),
            ("counted_down_total", "counted_down"),
        ):
            now = getattr(pocket, field_name)
            marks[counter] = (booked.get(f"pocket{pocket.number}.{counter}"), now)
        (up_mark, up_now), (down_mark, down_now) = marks["counted_up"], marks["counted_down"]
        reading = read_count(up_mark, up_now, down_mark, down_now)
        if reading.step is CounterStep.FIRST_SEEN:
            for counter, (_mark, now) in marks.items():
                await self.ledger.set_counter_mark(
                    CounterMark(self.name, f"pocket{pocket.number}.{counter}", now),
                )
            return
        if reading.step is CounterStep.UNCHANGED:
            return
        location = pocket_location(self.name, pocket.number)
        up, down = reading.up, reading.down
        key = (
            f"count:{self.name}:{pocket.number}:"
            f"{marks['counted_up'][0]}-{marks['counted_up'][1]}:"
            f"{marks['counted_down'][0]}-{marks['counted_down'][1]}"
        )
        before = await self.ledger.on_hand(location, config.gtin)
        change = await self.ledger.count_to(
            key,
            location=location,
            gtin=config.gtin,
            counted=pocket.count,
            actor=ACTOR,
            reason=f"counted at the cabinet on {self.config.ward} (+{up} -{down})",
            marks=[
                CounterMark(self.name, f"pocket{pocket.number}.{c}", now)
                for c, (_mark, now) in marks.items()
            ],
        )
        self.counted_booked += change
        if change:
            await self._raise(
                f"{key}:{before}",
                config,
                pocket,
                source="count",
                ledger_value=before,
                detail=f"counted {pocket.count} at the cabinet, ledger had {before}",
            )

    async def _compare(
        self,
        pockets: list[tuple[Pocket, PocketStatus]],
        read_at: float,
        held: dict[tuple[str, str], int] | None,
    ) -> None:
        """After the bookings the ledger and the cabinet agree; if not (and no refill
        is on its way to the cabinet), an operator must look. `held`: on hand per
        (pocket, GTIN) after the bookings, or None to read it (one read for all)."""
        # A locked pocket is in quarantine: the cold chain sets its count.
        checked = [
            (config, pocket)
            for config, pocket in pockets
            if not pocket.locked and not self.refill_in_flight(self.name, pocket.number, read_at)
        ]
        if not checked:
            return
        if held is None:
            held = await self.ledger.on_hand_many(
                [pocket_location(self.name, p.number) for _, p in checked]
            )
        for config, pocket in checked:
            booked = held.get((pocket_location(self.name, pocket.number), config.gtin), 0)
            if booked == pocket.count:
                continue
            await self._raise(
                f"cabinet:{self.name}:{pocket.number}:{pocket.count}:{booked}",
                config,
                pocket,
                source="cabinet",
                ledger_value=booked,
                detail=f"cabinet counts {pocket.count}, ledger holds {booked}",
            )

    async def _raise(
        self,
        key: str,
        config: Pocket,
        pocket: PocketStatus,
        *,
        source: str,
        ledger_value: int,
        detail: str,
    ) -> None:
        if key in self._raised:
            return
        self._raised.add(key)
        location = pocket_location(self.name, pocket.number)
        try:
            await self.ledger.raise_discrepancy(
                key,
                location,
                config.gtin,
                source=source,
                device_value=pocket.count,
                ledger_value=ledger_value,
                detail=detail,
                actor=ACTOR,
            )
        except LedgerError as exc:
            self._raised.discard(key)
            log.error(
                "cabinet %s pocket %d: discrepancy not recorded: %s", self.name, pocket.number, exc
            )
            return
        self.metrics.discrepancies.labels("pocket").inc()
        log.warning("discrepancy at %s: %s", location, detail)

    def _check_pocket_numbers(self, status: CabinetStatus) -> None:
        """A pocket the cabinet reports that the site file does not have, or the other
        way round, is booked by nobody: logged once, at error."""
        reported = {p.number for p in status.pockets}
        problems = [
            f"reports pocket {n}, which the site file does not have"
            for n in sorted(reported - set(self.pockets))
        ] + [
            f"does not report pocket {n} of the site file"
            for n in sorted(set(self.pockets) - reported)
        ]
        for problem in problems:
            if problem not in self._mismatches:
                self._mismatches.add(problem)
                log.error("cabinet %s %s: its counters are not booked", self.name, problem)

    async def _counter_went_back(
        self, config: Pocket, pocket: PocketStatus, counter_name: str, mark: int, now: int
    ) -> None:
        """Books nothing for a counter that went backwards, counts on from its new value
        and raises it for an operator (the pocket's count is compared as ever)."""
        log.error(
            "cabinet %s pocket %d: %s counter went backwards from %d to %d: nothing booked,"
            " counting on from %d",
            self.name,
            pocket.number,
            counter_name,
            mark,
            now,
            now,
        )
        await self.ledger.set_counter_mark(
            CounterMark(self.name, f"pocket{pocket.number}.{counter_name}", now),
        )
        await self._raise(
            f"{counter_name}:{self.name}:{pocket.number}:{mark}-{now}:backwards",
            config,
            pocket,
            source="counter",
            ledger_value=mark,
            detail=f"{counter_name} counter went backwards from {mark} to {now}",
        )

    async def _book_counter(
        self,
        config: Pocket,
        pocket: PocketStatus,
        counter_name: str,
        now: int,
        operation: Take,
        reason: str,
        marks: dict[str, int],
        *,
        reason_code: str | None = None,
    ) -> int:
        """Books the growth of one pocket counter since the last booked value."""
        device, counter = self.name, f"pocket{pocket.number}.{counter_name}"
        mark = marks.get(counter)
        reading = read_counter(mark, now)
        if reading.step is CounterStep.FIRST_SEEN:
            log.warning(
                "cabinet %s pocket %d: no booked %s counter yet; counting from %d on",
                self.name,
                pocket.number,
                counter_name,
                now,
            )
            await self.ledger.set_counter_mark(CounterMark(device, counter, now))
            return 0
        if reading.step is CounterStep.UNCHANGED:
            return 0
        assert mark is not None
        if reading.step is CounterStep.BACKWARDS:
            await self._counter_went_back(config, pocket, counter_name, mark, now)
            return 0
        return await self._book_movement(
            config,
            pocket,
            counter_name,
            reading.delta,
            operation,
            reason,
            key=f"{counter_name}:{self.name}:{pocket.number}:{mark}-{now}",
            mark=CounterMark(device, counter, now),
            reason_code=reason_code,
        )

    async def _take(
        self,
        operation: Take,
        key: str,
        gtin: str,
        quantity: int,
        location: str,
        reason: str,
        mark: CounterMark | None,
        reason_code: str | None,
    ) -> None:
        """Doses out of a pocket, used (`consume`) or thrown away (`waste`), or put back
        into it (`return_consumed`)."""
        if operation == "waste":
            await self.ledger.waste(
                key,
                gtin=gtin,
                quantity=quantity,
                location=location,
                actor=ACTOR,
                reason=reason,
                reason_code=reason_code or "other",
                mark=mark,
            )
            return
        book = self.ledger.consume if operation == "consume" else self.ledger.return_consumed
        await book(
            key,
            gtin=gtin,
            quantity=quantity,
            location=location,
            actor=ACTOR,
            reason=reason,
            mark=mark,
        )

    async def _book_movement(
        self,
        config: Pocket,
        pocket: PocketStatus,
        counter_name: str,
        delta: int,
        operation: Take,
        reason: str,
        *,
        key: str,
        mark: CounterMark | None,
        reason_code: str | None = None,
    ) -> int:
        """Books `delta` doses of one movement at a pocket under `key` (with the counter
        `mark` that reported it, if any); what the ledger cannot account for there is
        booked as far as it can and raised as a discrepancy. Returns the doses booked.
        Shared by the counter-based poller and the event-based HL7 listener."""
        location = pocket_location(self.name, pocket.number)
        new_mark = mark
        try:
            await self._take(
                operation, key, config.gtin, delta, location, reason, new_mark, reason_code
            )
            return delta
        except InsufficientStock as exc:
            # The cabinet reports more than the ledger can account for at this pocket:
            # book what it can, make the rest visible as a discrepancy.
            log.error("cabinet %s pocket %d: %s", self.name, pocket.number, exc)
            split = split_shortfall(delta, exc.available)
            if split.booked:
                await self._take(
                    operation,
                    key,
                    config.gtin,
                    split.booked,
                    location,
                    f"{reason} (short by {split.short})",
                    new_mark,
                    reason_code,
                )
            elif new_mark is not None:
                await self.ledger.set_counter_mark(new_mark)
            await self._raise(
                f"{key}:short",
                config,
                pocket,
                source="counter",
                ledger_value=exc.available,
                detail=(
                    f"{counter_name} of {delta} reported, the ledger held only "
                    f"{exc.available} at {location}"
                ),
            )
            return split.booked
