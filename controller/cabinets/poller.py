"""Polls one cabinet and books what happened at it.

The cabinet's per-pocket counters only ever grow, so the poller books the difference
between the counter now and the last value the ledger accounted for (stored with the
movement itself). A missed poll, a slow poll or a controller restart loses nothing and
books nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from controller.async_ledger import AsyncLedger
from controller.config import Cabinet, Pocket
from controller.ledger import CounterMark, InsufficientStock, Need, Use
from controller.metrics import Metrics
from drivers.base import CabinetCommand, CabinetDriver, CabinetStatus, DriverError, PocketStatus

log = logging.getLogger("doseline.cabinets")
ACTOR = "cabinet-poller"
COUNTER_WRAP = 2**32

LowPocketHandler = Callable[[Cabinet, Pocket, int, float], Awaitable[object]]


def pocket_location(cabinet: str, number: int) -> str:
    return f"{cabinet}/P{number:02d}"


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
        self.online = False
        self.connected = False
        self.last_status: CabinetStatus | None = None
        self.withdrawals_booked = 0
        self.returns_booked = 0
        self._bus = asyncio.Lock()  # one owner of the device link
        self._sequence: int | None = None
        self._outage_logged = False

    async def serve(self) -> None:
        backoff = self.config.poll_interval_s
        while True:
            try:
                await self.poll_once()
                backoff = self.config.poll_interval_s
            except DriverError as exc:
                self._went_offline(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            await asyncio.sleep(self.config.poll_interval_s)

    async def poll_once(self) -> CabinetStatus:
        read_at = time.monotonic()
        async with self._bus:
            if not self.connected:
                await self.driver.connect()
                self.connected = True
            try:
                status = await self.driver.read_status()
            except DriverError:
                await self.driver.close()
                self.connected = False
                raise
        if not self.online:
            log.info("cabinet %s online", self.name)
            self.online = True
            self._outage_logged = False
        self.metrics.cabinet_up.labels(self.name).set(1)
        self.last_status = status
        if self._sequence is None:
            self._sequence = status.last_ack_sequence
        for pocket in status.pockets:
            config = self.pockets.get(pocket.number)
            if config is None:
                continue
            self._show(config, pocket)
            await self._book_withdrawals(config, pocket)
            if pocket.count < config.min and self.on_low is not None:
                await self.on_low(self.config, config, pocket.count, read_at)
        return status

    async def close(self) -> None:
        async with self._bus:
            if self.connected:
                self.connected = False
                try:
                    await self.driver.close()
                except DriverError as exc:
                    log.debug("cabinet %s: close: %s", self.name, exc)

    async def command_refill(self, pocket: int, quantity: int) -> None:
        """Tells the cabinet a pocket was refilled; retried with the same sequence."""
        async with self._bus:
            if self._sequence is None:
                raise DriverError(f"cabinet {self.name}: not polled yet, sequence unknown")
            self._sequence = self._sequence % 65535 + 1
            sequence = self._sequence
            last: DriverError | None = None
            for _attempt in range(3):
                try:
                    if not self.connected:
                        await self.driver.connect()
                        self.connected = True
                    await self.driver.send_command(
                        sequence, CabinetCommand.REFILL, pocket, quantity
                    )
                    return
                except DriverError as exc:
                    last = exc
                    self.metrics.driver_errors.labels(self.name).inc()
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
            if await self.ledger.call("counter_mark", device, counter) is not None:
                continue
            if pocket.count:
                key = f"adopt:{self.name}:{pocket.number}"
                location = pocket_location(self.name, pocket.number)
                await self.ledger.call(
                    "reserve",
                    key,
                    purpose=f"opening stock of {location}",
                    needs=[Need(config.gtin, pocket.count)],
                    from_locations=store_bins,
                    timeout_s=timeout_s,
                    actor=ACTOR,
                )
                await self.ledger.call(
                    "post",
                    f"{key}:post",
                    reservation_key=key,
                    uses=[Use(config.gtin, pocket.count, location, "transfer", "opening stock")],
                    actor=ACTOR,
                )
            await self.ledger.call(
                "set_counter_mark", CounterMark(device, counter, pocket.withdrawals_total)
            )
            await self.ledger.call(
                "set_counter_mark",
                CounterMark(device, f"pocket{pocket.number}.returns", pocket.returns_total),
            )

    async def poll_status_only(self) -> CabinetStatus:
        async with self._bus:
            if not self.connected:
                await self.driver.connect()
                self.connected = True
            return await self.driver.read_status()

    def _show(self, config: Pocket, pocket: PocketStatus) -> None:
        labels = (self.name, str(pocket.number))
        self.metrics.pocket_count.labels(*labels).set(pocket.count)
        self.metrics.pocket_fill.labels(*labels).set(pocket.count / config.max)

    async def _book_withdrawals(self, config: Pocket, pocket: PocketStatus) -> None:
        booked = await self._book_counter(
            config,
            pocket,
            "withdrawals",
            pocket.withdrawals_total,
            "consume",
            f"withdrawal at {self.config.ward}",
        )
        self.withdrawals_booked += booked
        self.metrics.withdrawals.labels(self.name).inc(booked)
        self.returns_booked += await self._book_counter(
            config,
            pocket,
            "returns",
            pocket.returns_total,
            "return_consumed",
            f"dose returned at {self.config.ward}",
        )

    async def _book_counter(
        self,
        config: Pocket,
        pocket: PocketStatus,
        counter_name: str,
        now: int,
        operation: str,
        reason: str,
    ) -> int:
        """Books the growth of one pocket counter since the last booked value."""
        device, counter = self.name, f"pocket{pocket.number}.{counter_name}"
        mark = await self.ledger.call("counter_mark", device, counter)
        if mark is None:
            log.warning(
                "cabinet %s pocket %d: no booked %s counter yet; counting from %d on",
                self.name,
                pocket.number,
                counter_name,
                now,
            )
            await self.ledger.call("set_counter_mark", CounterMark(device, counter, now))
            return 0
        delta = (now - mark) % COUNTER_WRAP
        if delta == 0:
            return 0
        location = pocket_location(self.name, pocket.number)
        key = f"{counter_name}:{self.name}:{pocket.number}:{mark}-{now}"
        new_mark = CounterMark(device, counter, now)
        try:
            await self.ledger.call(
                operation,
                key,
                gtin=config.gtin,
                quantity=delta,
                location=location,
                actor=ACTOR,
                reason=reason,
                mark=new_mark,
            )
            return delta
        except InsufficientStock as exc:
            # The cabinet reports more than the ledger can account for at this pocket:
            # book what it can, make the rest visible as a discrepancy.
            log.error("cabinet %s pocket %d: %s", self.name, pocket.number, exc)
            self.metrics.discrepancies.labels("pocket").inc(delta - exc.available)
            if exc.available:
                await self.ledger.call(
                    operation,
                    key,
                    gtin=config.gtin,
                    quantity=exc.available,
                    location=location,
                    actor=ACTOR,
                    reason=f"{reason} (short by {delta - exc.available})",
                    mark=new_mark,
                )
            else:
                await self.ledger.call("set_counter_mark", new_mark)
            return exc.available

    def _went_offline(self, exc: DriverError) -> None:
        """Logs the first failure of an outage once; recovery is logged by poll_once."""
        self.metrics.cabinet_up.labels(self.name).set(0)
        if self.online or not self._outage_logged:
            log.warning("cabinet %s offline: %s", self.name, exc)
            self._outage_logged = True
        self.online = False
