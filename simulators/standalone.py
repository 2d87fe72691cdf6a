"""Running one simulator on its own (`python -m simulators.<name>`) until it is told to stop."""

from __future__ import annotations

import argparse
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


def packer_arguments(
    description: str, *, default_port: int, name_help: str
) -> argparse.ArgumentParser:
    """The command-line options every simulated packer takes, whatever its protocol."""
    from simulators.packer_physics import DEFAULT_OUTPUT_EMPTY_AFTER_S
    from simulators.packml import PackMLState, UnitMode

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", default="P1", help=name_help)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=default_port, help="TCP port, 0 = any free")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", type=float, default=1.0, help="speed factor (time scale)")
    parser.add_argument("--ppm", type=float, default=60.0, help="pouches per minute")
    parser.add_argument("--reject-rate", type=float, default=0.0)
    parser.add_argument("--jam-rate", type=float, default=0.0)
    parser.add_argument("--transient", type=float, default=0.5, help="seconds in acting states")
    parser.add_argument(
        "--initial-state",
        choices=[s.name for s in PackMLState if s is not PackMLState.UNDEFINED],
        default="STOPPED",
    )
    parser.add_argument(
        "--unit-mode",
        choices=[m.name for m in UnitMode],
        default="PRODUCTION",
        help="unit mode at power-on",
    )
    parser.add_argument(
        "--output-capacity",
        type=int,
        default=0,
        help="pouches the output tray holds; a full tray suspends the machine (0 = unlimited)",
    )
    parser.add_argument(
        "--output-empty-after",
        type=float,
        default=DEFAULT_OUTPUT_EMPTY_AFTER_S,
        help="seconds (scaled by --speed) after the tray is full until the operator"
        " empties it; 0 = nobody does",
    )
    return parser


def packer_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of a packer simulator from `packer_arguments` options."""
    from simulators.packml import PackMLState, UnitMode

    if args.output_capacity < 0:
        raise SystemExit(f"--output-capacity: {args.output_capacity} must be >= 0")
    if args.output_empty_after < 0:
        raise SystemExit(f"--output-empty-after: {args.output_empty_after} must be >= 0")
    return {
        "host": args.host,
        "port": args.port,
        "pouches_per_minute": args.ppm,
        "speed_factor": args.speed,
        "reject_rate": args.reject_rate,
        "jam_rate": args.jam_rate,
        "seed": args.seed,
        "transient_seconds": args.transient,
        "initial_state": PackMLState[args.initial_state],
        "unit_mode": UnitMode[args.unit_mode],
        "output_capacity": args.output_capacity,
        "output_empty_after_s": args.output_empty_after or None,
    }
