"""Many simulated machines in one process of their own, for `doseline bench`.

Run as ``python -m simulators.fleet SPEC.json``. The bench measures the
controller's CPU and memory, so the simulators must not share its process: the bench
starts this module as a child process and never imports it. It starts the packers and
the Modbus gateways the spec names, prints one JSON line ``{"ready": {...}}`` with
their addresses, and stops when its standard input closes, printing
``{"cpu_s": ...}`` (its own CPU time) last.

The plant (`simulators.plant`) gives every Modbus TCP cabinet a server of its own and
builds each OPC UA address space from code (about 1.5 s of CPU per packer). Here the
cabinets sit behind a few gateways, many unit ids each, as serial cabinets behind a
TCP gateway do, and the packers load the standard address space from a shelf file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


async def _serve(spec: dict[str, Any]) -> None:
    from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
    from simulators.packer_opcua import PackerSimulator

    started = time.perf_counter()
    cache = spec.get("address_space_cache")
    packers = [
        PackerSimulator(
            p["name"],
            canisters=[tuple(c) for c in p["canisters"]],
            pouches_per_minute=float(p.get("ppm", 60)),
            seed=int(p.get("seed", 0)),
            address_space_cache=cache,
            server_clock=False,
        )
        for p in spec.get("packers", [])
    ]
    gateways = [
        CabinetSimulator(
            cabinets=[
                CabinetSpec(
                    cabinet_id=int(c["unit"]),
                    pockets=[PocketSpec(**pocket) for pocket in c["pockets"]],
                )
                for c in g["cabinets"]
            ],
            time_factor=float(g.get("time_factor", 1.0)),
            seed=int(g.get("seed", 0)),
            tick=float(g.get("tick", 0.25)),
        )
        for g in spec.get("gateways", [])
    ]
    sims: list[PackerSimulator | CabinetSimulator] = [*packers, *gateways]
    try:
        for sim in sims:
            await sim.start()
        ready = {
            "packers": {p.name: p.endpoint for p in packers},
            "gateways": [g.address for g in gateways],
            "start_s": round(time.perf_counter() - started, 2),
        }
        print(json.dumps({"ready": ready}), flush=True)
        await _until_stopped()
    finally:
        for sim in reversed(sims):
            with contextlib.suppress(Exception):
                await sim.stop()
    print(json.dumps({"cpu_s": round(time.process_time(), 3)}), flush=True)


async def _until_stopped() -> None:
    """Until standard input closes (the bench ended or died) or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def read_to_end() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    # A daemon thread, not the loop's executor: asyncio.run would wait for it forever.
    threading.Thread(target=read_to_end, name="stdin", daemon=True).start()
    await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m simulators.fleet SPEC.json")
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(spec))


if __name__ == "__main__":
    main()
