"""Runs the phases of `doseline bench` and assembles the report.

Each phase runs in a process of its own (`controller.bench.child`) on a ledger of its
own: a temporary SQLite file, or a new schema in the PostgreSQL database named by
`--db`, dropped afterwards. The report is one JSON object: the machine, the options,
and per phase its figures, its target, whether it was met, and the ratio where the
target is one. docs/performance.md explains every figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import make_url

from controller.bench import PHASES
from controller.bench.common import (
    SQLITE,
    describe_db,
    is_postgres,
    machine_facts,
    postgres_version,
    scratch_database,
)

SKIP_SQLITE = (
    "SQLite has one writer at a time and is the ledger of one controller; several "
    "controllers share a PostgreSQL ledger (add --db postgresql://...)"
)


@dataclass(frozen=True)
class Options:
    dbs: Sequence[str]
    phases: Sequence[str]
    seconds: float
    packers: int
    cabinets: int
    processes: int
    year_scale: float = 1.0


@contextlib.contextmanager
def phase_database(db: str, phase: str) -> Iterator[str]:
    """A fresh ledger for one phase of one `--db`."""
    if db.startswith("sqlite:///"):
        # A named file: one per phase beside it (ledger.db -> ledger-packers.db), kept.
        root, ext = os.path.splitext(make_url(db).database or "bench.db")
        with scratch_database(f"sqlite:///{root}-{phase}{ext or '.db'}") as url:
            yield url
        return
    with scratch_database(db) as url:
        yield url


def phase_timeout(name: str, options: Options) -> float:
    """How long a phase may run before it is stopped and reported as an error."""
    if name == "region-year":
        return 900 + 7200 * options.year_scale  # a year took up to two hours before batching
    return 20 * options.seconds + 900


def run_phase(name: str, db: str, options: Options, log: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"phase": name, "db": describe_db(db)}
    if name == "contention" and not is_postgres(db):
        return {**entry, "skipped": SKIP_SQLITE, "met": None}
    with (
        phase_database(db, name) as url,
        tempfile.TemporaryDirectory(prefix="doseline-bench-") as folder,
    ):
        result_path = os.path.join(folder, "result.json")
        command = [
            sys.executable,
            "-m",
            "controller.bench.child",
            "phase",
            name,
            "--db",
            url,
            "--seconds",
            str(options.seconds),
            "--packers",
            str(options.packers),
            "--cabinets",
            str(options.cabinets),
            "--processes",
            str(options.processes),
            "--year-scale",
            str(options.year_scale),
            "--result",
            result_path,
        ]
        log_path = os.path.join(folder, "phase.log")
        with open(log_path, "wb") as phase_log:
            try:
                code = subprocess.run(
                    command,
                    stdout=phase_log,
                    stderr=subprocess.STDOUT,
                    timeout=phase_timeout(name, options),
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
        if code != 0 or not os.path.exists(result_path):
            with open(log_path, encoding="utf-8", errors="replace") as file:
                log_lines = file.read().strip().splitlines()
            for line in log_lines[-40:]:
                print(f"  {line}", file=log)
            tail = " | ".join(log_lines[-5:])
            return {**entry, "error": f"the phase failed (exit code {code}): {tail}", "met": False}
        with open(result_path, encoding="utf-8") as file:
            return {**entry, **json.load(file)}


def run_bench(options: Options, log: Any = sys.stderr) -> dict[str, Any]:
    started = time.perf_counter()
    machine = machine_facts()
    for db in options.dbs:
        if is_postgres(db):
            machine.setdefault("postgresql", {})[describe_db(db)] = (
                postgres_version(db) or "unknown"
            )
    report: dict[str, Any] = {
        "report": "doseline bench",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "options": {
            "db": [describe_db(db) for db in options.dbs],
            "phases": list(options.phases),
            "seconds_per_phase": options.seconds,
            "packers": options.packers,
            "cabinets": options.cabinets,
            "contention_processes": options.processes,
        },
        "phases": [],
    }
    for db in options.dbs:
        for name in options.phases:
            print(f"bench: {name} on {describe_db(db)} ...", file=log, flush=True)
            t0 = time.perf_counter()
            entry = run_phase(name, db, options, log)
            report["phases"].append(entry)
            took = time.perf_counter() - t0
            print(f"bench: {name} on {describe_db(db)}: {outcome(entry)} ({took:.0f} s)", file=log)
    summary: dict[str, list[str]] = {"met": [], "missed": [], "error": [], "skipped": []}
    for entry in report["phases"]:
        summary[outcome(entry)].append(f"{entry['phase']} ({entry['db']})")
    report["summary"] = summary
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def outcome(entry: dict[str, Any]) -> str:
    if entry.get("skipped"):
        return "skipped"
    if entry.get("error"):
        return "error"
    return "met" if entry.get("met") else "missed"


def default_dbs(given: Sequence[str] | None) -> list[str]:
    """The temporary SQLite ledger always, then every `--db` given (once each)."""
    dbs = [SQLITE]
    for db in given or ():
        if db not in dbs:
            dbs.append(db)
    return dbs


__all__ = ["PHASES", "Options", "default_dbs", "run_bench"]
