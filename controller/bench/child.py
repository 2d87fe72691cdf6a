"""The processes `doseline bench` starts: one per phase, and the contending workers.

Why a process per phase: the peak resident set size (`ru_maxrss`) only ever grows,
so a phase measured in a fresh process reports its own peak, and its CPU time is its
own. `python -m controller.bench.child phase NAME --db URL ... --result FILE` writes
the phase's result (JSON) to FILE; `... contend --db URL --worker I ...` is one
contending controller of the contention phase and prints its result as the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from typing import Any

from controller.bench import PHASES
from controller.bench.common import peak_rss_mib


def run_phase(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="doseline-bench-") as workdir:
        if name == "ledger":
            from controller.bench import ledger

            return ledger.run(url, args.seconds)
        if name == "packers":
            from controller.bench import packers

            return packers.run(url, args.packers, args.seconds, workdir)
        if name == "cabinets":
            from controller.bench import cabinets

            return cabinets.run(url, args.cabinets, args.seconds, workdir)
        if name == "contention":
            from controller.bench import contention

            return contention.run(url, args.processes, args.seconds)
        if name == "wardsupply":
            from controller.bench import wardsupply

            return wardsupply.run(url, args.seconds)
        if name == "console":
            from controller.bench import console

            return console.run(url, args.seconds, workdir)
        if name == "region-year":
            from controller.bench import region_year

            return region_year.run(url, args.year_scale)
    raise ValueError(f"unknown phase {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.bench.child")
    sub = parser.add_subparsers(dest="what", required=True)
    phase = sub.add_parser("phase")
    phase.add_argument("name", choices=PHASES)
    phase.add_argument("--db", required=True)
    phase.add_argument("--seconds", type=float, required=True)
    phase.add_argument("--packers", type=int, default=50)
    phase.add_argument("--cabinets", type=int, default=500)
    phase.add_argument("--processes", type=int, default=4)
    phase.add_argument("--year-scale", type=float, default=1.0)
    phase.add_argument("--result", required=True)
    contend = sub.add_parser("contend")
    contend.add_argument("--db", required=True)
    contend.add_argument("--worker", type=int, required=True)
    contend.add_argument("--run", required=True)
    contend.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    # The controller's own warnings go to the phase's log; the bench reports figures.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for noisy in ("asyncua", "pymodbus", "transitions"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.what == "contend":
        from controller.bench import contention

        result = contention.worker(args.db, args.worker, args.run, args.seconds)
        print(json.dumps(result), flush=True)
        return 0
    started = time.perf_counter()
    result = run_phase(args.name, args.db, args)
    result["phase_s"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mib"] = peak_rss_mib()
    with open(args.result, "w", encoding="utf-8") as file:
        json.dump(result, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
