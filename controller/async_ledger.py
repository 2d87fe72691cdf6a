"""Runs ledger calls off the event loop and times them.

The ledger is synchronous SQLAlchemy; each call runs on a small thread pool so that a
slow commit never stalls device polling. SQLite gets one worker (it has one writer).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from controller.ledger import Ledger
from controller.metrics import Metrics

T = TypeVar("T")


class AsyncLedger:
    def __init__(self, ledger: Ledger, metrics: Metrics) -> None:
        self.ledger = ledger
        self.metrics = metrics
        workers = 1 if ledger.engine.dialect.name == "sqlite" else 4
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger")

    async def call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        method: Callable[..., Any] = getattr(self.ledger, operation)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(
                self._pool, functools.partial(method, *args, **kwargs)
            )
        finally:
            self.metrics.ledger_seconds.labels(operation).observe(time.perf_counter() - started)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs another synchronous database call (the packing store's) on the same
        pool, so it queues behind ledger writes instead of racing them on SQLite."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        finally:
            name = getattr(fn, "__name__", "call")
            self.metrics.ledger_seconds.labels(name).observe(time.perf_counter() - started)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
