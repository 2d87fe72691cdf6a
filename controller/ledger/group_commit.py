"""Group commit: one writer thread per process runs the commands that arrive together
in one transaction.

Why: every commit costs a flush of the database's log and, for the audit chain, a turn
on the chain's head row. Commands that wait at the same moment share one commit and one
turn, so the ledger's throughput grows with its load instead of stopping at the commit
rate, and controllers sharing a PostgreSQL database meet on the head row once per batch,
not once per command.

Each command of a batch runs in a savepoint of its own (`Ledger.batch`): a refused one
(not enough stock, a blocked lot, a closed reservation) is rolled back alone and its
caller gets its own error, while its neighbours commit. If the batch as a whole cannot
commit (a lost connection, a deadlock, a serialization failure), every command of it
runs again on its own under its idempotency key, so none is lost and none is booked
twice. Only commands with an idempotency key are batched; other writes run alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError, IntegrityError

log = logging.getLogger("doseline.ledger.writer")

Done = Callable[[Any, BaseException | None], None]


class Batching(Protocol):
    """What the writer needs of the ledger: a scope whose commands share one transaction."""

    def batch(self, *, lock_wait_s: float | None = None) -> Any: ...


@dataclass(frozen=True)
class Job:
    """One call for the writer: `run` does the work, `done` receives its result or error.
    A job that is not `batchable` runs in a transaction of its own."""

    run: Callable[[], Any]
    done: Done
    batchable: bool = True


@dataclass(frozen=True)
class BatchSettings:
    """How many commands one transaction may take, and how long the writer waits for more
    after the first (0: take what is queued at that moment and start at once)."""

    max_commands: int = 64
    wait_s: float = 0.0
    # how long a batch may wait for a row another controller holds before it gives up
    # and its commands run one by one (PostgreSQL)
    lock_wait_s: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.max_commands <= 10_000:
            raise ValueError(f"batch max_commands: {self.max_commands} is not within 1..10000")
        if not 0 <= self.wait_s <= 1:
            raise ValueError(f"batch wait: {self.wait_s} s is not within 0..1 s")
        if not 0.001 <= self.lock_wait_s <= 60:
            raise ValueError(f"batch lock wait: {self.lock_wait_s} s is not within 0.001..60 s")


_STOP = object()


def spoils_batch(exc: BaseException) -> bool:
    """An error after which the batch's transaction cannot be trusted to commit: the
    connection, a deadlock or a serialization failure. A refusal (LedgerError), a bad
    argument or a duplicate key is the command's own and stays inside its savepoint."""
    return isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)


class GroupWriter:
    """The process's one writer thread."""

    def __init__(
        self,
        ledger: Batching,
        settings: BatchSettings | None = None,
        *,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "ledger-writer",
    ) -> None:
        self.ledger = ledger
        self.settings = settings or BatchSettings()
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._carry: Any = None
        # Additive increase, halving on a failed batch: under contention between
        # controllers, batches shrink (fewer rows held at once), and grow back after.
        self.limit = self.settings.max_commands
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("the ledger writer is closed")
        self._queue.put(job)

    def close(self) -> None:
        """Runs what is queued, then stops the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    # ------------------------------------------------------------------ the thread

    def _next(self, timeout: float | None) -> Any:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is _STOP:
                return
            jobs = [first]
            if first.batchable:
                self._gather(jobs)
            self._run(jobs)

    def _gather(self, jobs: list[Job]) -> None:
        deadline = time.monotonic() + self.settings.wait_s
        while len(jobs) < self.limit:
            try:
                item = self._next(deadline - time.monotonic())
            except queue.Empty:
                return
            if item is _STOP or not item.batchable:
                self._carry = item
                return
            jobs.append(item)

    def _run(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        if len(jobs) == 1:
            _run_alone(jobs[0])
        else:
            self._run_batch(jobs)
        if self.on_batch is not None:
            self.on_batch(len(jobs), time.perf_counter() - started)

    def _run_batch(self, jobs: list[Job]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            with self.ledger.batch(lock_wait_s=self.settings.lock_wait_s):
                for job in jobs:
                    try:
                        outcomes.append((job.run(), None))
                    except Exception as exc:
                        if spoils_batch(exc):
                            raise
                        outcomes.append((None, exc))
        except Exception as exc:
            # Nothing of the batch committed (or it is unknown whether the commit
            # arrived): each command runs again alone, under its own idempotency key.
            log.info("a batch of %d ledger commands is run again one by one: %s", len(jobs), exc)
            self.limit = max(1, self.limit // 2)
            for job in jobs:
                _run_alone(job)
            return
        self.limit = min(self.settings.max_commands, self.limit + 1)
        for job, (result, error) in zip(jobs, outcomes, strict=True):
            _deliver(job, result, error)


def _run_alone(job: Job) -> None:
    try:
        result = job.run()
    except Exception as exc:
        _deliver(job, None, exc)
    else:
        _deliver(job, result, None)


def _deliver(job: Job, result: Any, error: BaseException | None) -> None:
    try:
        job.done(result, error)
    except Exception:  # a caller's callback must never stop the writer
        log.exception("a ledger caller's completion callback failed")
