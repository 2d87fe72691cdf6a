"""The ledger for asyncio code: typed async methods over the synchronous ledger.

Each method has the signature and result type of the `Ledger` method it wraps, so the
type checker sees every call. Commands with an idempotency key go to the process's one
writer thread, which group-commits those that arrive together (`GroupWriter`); other
writes run alone, on SQLite on the same thread (its one writer is never contended from
inside the process), on PostgreSQL on the pool. Reads run on a small pool of their own
with a deferred transaction, so a report or a stock lookup never waits behind a batch.
An in-memory SQLite database lives in one connection, so there everything runs on the
writer's thread.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from controller.ledger import Ledger
from controller.ledger.engine import is_memory_sqlite
from controller.ledger.group_commit import BatchSettings, GroupWriter, Job
from controller.metrics import Metrics

P = ParamSpec("P")
T = TypeVar("T")
Method = Callable[Concatenate["AsyncLedger", P], Coroutine[Any, Any, T]]


def _command(method: Callable[Concatenate[Ledger, P], T]) -> Method[P, T]:
    """A command with an idempotency key: batched by the writer."""
    name = method.__name__

    async def call(self: AsyncLedger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = functools.partial(method, self.ledger, *args, **kwargs)
        return await self._on_writer(name, work, batchable=True)

    return functools.update_wrapper(call, method)


def _write(method: Callable[Concatenate[Ledger, P], T]) -> Method[P, T]:
    """A write without an idempotency key: runs alone (`_alone`)."""
    name = method.__name__

    async def call(self: AsyncLedger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = functools.partial(method, self.ledger, *args, **kwargs)
        return await self._alone(name, work)

    return functools.update_wrapper(call, method)


def _read(method: Callable[Concatenate[Ledger, P], T]) -> Method[P, T]:
    """A query: runs on the read pool."""
    name = method.__name__

    async def call(self: AsyncLedger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = functools.partial(method, self.ledger, *args, **kwargs)
        return await self._on_readers(name, work)

    return functools.update_wrapper(call, method)


class AsyncLedger:
    def __init__(
        self, ledger: Ledger, metrics: Metrics, batch: BatchSettings | None = None
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self._single_thread = is_memory_sqlite(ledger.engine)
        self._sqlite = ledger.engine.dialect.name == "sqlite"
        self._writer = GroupWriter(ledger, batch, on_batch=self._observe_batch)
        # SQLite reads in one thread (more only contend for the GIL); PostgreSQL serves many
        readers = 1 if self._sqlite else 4
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="ledger-read")

    # ------------------------------------------------------------------ commands

    reserve = _command(Ledger.reserve)
    post = _command(Ledger.post)
    void = _command(Ledger.void)
    move_lots = _command(Ledger.move_lots)
    consume = _command(Ledger.consume)
    transfer = _command(Ledger.transfer)
    waste = _command(Ledger.waste)
    return_consumed = _command(Ledger.return_consumed)
    receive = _command(Ledger.receive)
    receive_many = _command(Ledger.receive_many)
    stocktake = _command(Ledger.stocktake)
    count_to = _command(Ledger.count_to)
    set_lot_status = _command(Ledger.set_lot_status)
    hold_location = _command(Ledger.hold_location)
    waste_hold = _command(Ledger.waste_hold)
    raise_discrepancy = _command(Ledger.raise_discrepancy)

    # ------------------------------------------------------------------ other writes

    expire_overdue = _write(Ledger.expire_overdue)
    set_counter_mark = _write(Ledger.set_counter_mark)
    release_hold = _write(Ledger.release_hold)
    resolve_discrepancy = _write(Ledger.resolve_discrepancy)
    record_event = _write(Ledger.record_event)
    draw_ration = _write(Ledger.draw_ration)
    settle_ration_draw = _write(Ledger.settle_ration_draw)

    # ------------------------------------------------------------------ queries

    reservation = _read(Ledger.reservation)
    open_reservation_count = _read(Ledger.open_reservation_count)
    open_reservations = _read(Ledger.open_reservations)
    stock = _read(Ledger.stock)
    available = _read(Ledger.available)
    free_lots = _read(Ledger.free_lots)
    on_hand = _read(Ledger.on_hand)
    on_hand_many = _read(Ledger.on_hand_many)
    products = _read(Ledger.products)
    lot = _read(Ledger.lot)
    command_done = _read(Ledger.command_done)
    counter_mark = _read(Ledger.counter_mark)
    marks_and_on_hand = _read(Ledger.marks_and_on_hand)
    holds = _read(Ledger.holds)
    discrepancies = _read(Ledger.discrepancies)
    open_discrepancy_count = _read(Ledger.open_discrepancy_count)

    # ------------------------------------------------------------------ other work

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs another synchronous database write (a store's: packing, refills, ward
        supply) alone (`_alone`)."""
        name = getattr(fn, "__name__", "call")
        return await self._alone(name, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._writer.close()
        self._readers.shutdown(wait=True)

    # ------------------------------------------------------------------ plumbing

    async def _alone(self, name: str, work: Callable[[], T]) -> T:
        """A write in a transaction of its own: on SQLite on the writer's thread, so it
        queues behind the batches instead of contending for the one write lock; on
        PostgreSQL on the pool, beside the writer, as the server takes many writers."""
        if self._sqlite:
            return await self._on_writer(name, work, batchable=False)
        return await self._on_readers(name, work)

    async def _on_writer(self, name: str, work: Callable[[], T], *, batchable: bool) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, result, error)

        started = time.perf_counter()
        try:
            self._writer.submit(Job(work, done, batchable))
            return await future
        finally:
            self.metrics.ledger_seconds.labels(name).observe(time.perf_counter() - started)

    async def _on_readers(self, name: str, work: Callable[[], T]) -> T:
        if self._single_thread:
            return await self._on_writer(name, work, batchable=False)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._readers, work)
        finally:
            self.metrics.ledger_seconds.labels(name).observe(time.perf_counter() - started)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.ledger_batch_commands.observe(size)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
