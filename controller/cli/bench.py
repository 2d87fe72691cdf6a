"""`doseline bench`: measured performance, printed as one JSON report.

    doseline bench [--db URL]... [--packers N] [--cabinets M] [--seconds S]
                   [--only ledger|packers|cabinets|contention|wardsupply|console|region-year]...
                   [--year-scale F]
                   [--out FILE]

The temporary SQLite ledger is always measured; each `--db` adds one more (a
PostgreSQL URL: the bench works in a schema of its own there and drops it). The report
is printed and, with `--out`, written to FILE. docs/performance.md gives the method.
Exit code 0 when every phase ran (whether or not it met its target), 1 when one failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    return parse


def _cmd_bench(args: argparse.Namespace) -> int:
    from controller.bench import ON_REQUEST
    from controller.bench.run import PHASES, Options, default_dbs, outcome, run_bench

    for db in args.db or ():
        if not (db == "sqlite" or db.startswith(("sqlite:///", "postgresql://"))):
            print(
                f"doseline bench: --db {db!r}: give sqlite, sqlite:///FILE or postgresql://...",
                file=sys.stderr,
            )
            return 2
    options = Options(
        dbs=default_dbs(args.db),
        phases=[p for p in PHASES if p in args.only]
        if args.only
        else [p for p in PHASES if p not in ON_REQUEST],
        seconds=args.seconds,
        packers=args.packers,
        cabinets=args.cabinets,
        processes=args.processes,
        year_scale=args.year_scale,
    )
    report = run_bench(options)
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            file.write(text + "\n")
    print(text, flush=True)
    return 1 if any(outcome(p) == "error" for p in report["phases"]) else 0


def add_bench_parsers(sub: Any) -> None:
    from controller.bench import PHASES

    bench = sub.add_parser(
        "bench",
        help="measure ledger, packing and cabinet throughput; print a JSON report",
        description="Measures the ledger against the raw commit rate, N packers end to "
        "end, M cabinets polled at 1 Hz and several controllers on one PostgreSQL ledger "
        "(docs/performance.md).",
    )
    bench.add_argument(
        "--db",
        action="append",
        metavar="URL",
        help="a further ledger to measure on, e.g. postgresql://127.0.0.1:5432/test "
        "(repeatable; a temporary SQLite file is always measured)",
    )
    bench.add_argument("--packers", type=_positive(int), default=50, help="default 50")
    bench.add_argument("--cabinets", type=_positive(int), default=500, help="default 500")
    bench.add_argument(
        "--processes",
        type=_positive(int),
        default=4,
        help="controller processes of the contention phase (default 4)",
    )
    bench.add_argument(
        "--seconds",
        type=_positive(float),
        default=20.0,
        help="measured seconds per phase (default 20)",
    )
    bench.add_argument(
        "--only",
        action="append",
        choices=PHASES,
        help="run only this phase (repeatable); region-year runs only when named",
    )
    bench.add_argument(
        "--year-scale",
        type=_positive(float),
        default=1.0,
        help="fraction of the year the region-year phase replays (default 1: a whole year)",
    )
    bench.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    bench.set_defaults(func=_cmd_bench)
