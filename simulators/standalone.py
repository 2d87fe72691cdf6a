"""Running one simulator on its own (`python -m simulators.<name>`) until it is told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol


class Runnable(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def serve_until_stopped(sim: Runnable, banner: Callable[[], str]) -> None:
    """Starts `sim`, prints where it listens, and stops it on SIGTERM or Ctrl-C."""
    await sim.start()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"{banner()} (Ctrl-C to stop)", flush=True)
    try:
        await stop.wait()  # SIGTERM (docker stop); Ctrl-C cancels this instead
    finally:
        await sim.stop()


def run(serve: Coroutine[Any, Any, None], *, quiet: tuple[str, ...] = ()) -> None:
    """Runs a simulator's serve coroutine with plain logging; Ctrl-C ends it quietly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("transitions", *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve)
