"""What every measurement shares: scratch databases, CPU and memory readings, quantiles.

A bench must not touch anything it did not make: on PostgreSQL it works in a schema of
its own (`bench_<random>`), reached through `search_path`, and drops it afterwards, as
the test suite's `postgres_url` fixture does. SQLite gets a file in a temporary
directory. CPU is the process's own CPU time (every thread) over wall time, so 100 %
is one core; memory is the peak resident set size of the process (`ru_maxrss`), which
is why each phase runs in a fresh process (`controller.bench.child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, make_url, text

SQLITE = "sqlite"  # the `--db` value for a temporary SQLite file


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def describe_db(url: str) -> str:
    """A ledger URL as the report shows it: never a password."""
    if url == SQLITE:
        return "sqlite (temporary file)"
    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A URL of an empty ledger database for one bench run, removed afterwards.

    `sqlite`: a file in a new temporary directory. `sqlite:///path`: that file, which
    must not exist yet (the bench writes a ledger into it and leaves it). PostgreSQL: a
    new schema in the named database, dropped with everything in it at the end; nothing
    else in the database is touched.
    """
    if url == SQLITE:
        folder = tempfile.mkdtemp(prefix="doseline-bench-")
        try:
            yield f"sqlite:///{os.path.join(folder, 'ledger.db')}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and os.path.exists(path):
            raise ValueError(f"--db {url}: the bench needs a new file, and {path} exists")
        yield url
        return
    if not is_postgres(url):
        raise ValueError(f"--db {url}: not an SQLite or PostgreSQL URL")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            yield with_search_path(url, schema)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        admin.dispose()


def with_search_path(url: str, schema: str) -> str:
    """The PostgreSQL URL whose sessions see `schema` first (and only)."""
    parsed = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return parsed.render_as_string(hide_password=False)


def _admin_engine(url: str) -> Any:
    driver_url = make_url(url).set(drivername="postgresql+psycopg")
    return create_engine(driver_url, isolation_level="AUTOCOMMIT")


def postgres_version(url: str) -> str | None:
    """The server's version string, or None when it cannot be asked."""
    try:
        engine = _admin_engine(url)
        try:
            with engine.connect() as conn:
                return str(conn.execute(text("SHOW server_version")).scalar_one())
        finally:
            engine.dispose()
    except Exception:  # the report says "unknown"; the phases report the real error
        return None


@dataclass
class CpuMeter:
    """CPU time of this process (all its threads) against wall time."""

    wall0: float = 0.0
    cpu0: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0

    def start(self) -> CpuMeter:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> CpuMeter:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        return self

    @property
    def percent_of_one_core(self) -> float:
        return 100.0 * self.cpu / self.wall if self.wall > 0 else 0.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def latency_ms(samples: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and max of latencies given in seconds, in milliseconds."""
    return {
        "samples": len(samples),
        "p50_ms": ms(quantile(samples, 0.5)),
        "p99_ms": ms(quantile(samples, 0.99)),
        "max_ms": ms(max(samples)) if samples else None,
    }


def median(values: Sequence[float]) -> float | None:
    return quantile(values, 0.5)


def versions() -> dict[str, str]:
    found = {}
    for package in ("sqlalchemy", "asyncua", "pymodbus", "psycopg", "alembic"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine_facts() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


class Fleet:
    """The simulators of one phase in a child process (`simulators.fleet`)."""

    def __init__(self, spec: dict[str, Any], workdir: str) -> None:
        self.spec = spec
        self.workdir = workdir
        self.process: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}

    def _prepare(self) -> str:
        spec_path = os.path.join(self.workdir, "fleet.json")
        with open(spec_path, "w", encoding="utf-8") as file:
            json.dump(self.spec, file)
        self._log = open(os.path.join(self.workdir, "fleet.log"), "wb")
        return spec_path

    async def start(self, timeout_s: float = 300) -> dict[str, Any]:
        spec_path = await asyncio.to_thread(self._prepare)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "simulators.fleet",
            spec_path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"the simulators did not start: {self.log_tail()}")
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict) and "ready" in message:
                        self.ready = message["ready"]
                        return self.ready

    def cpu_seconds(self) -> float | None:
        """CPU time the simulators used so far (Linux /proc), or None."""
        if self.process is None:
            return None
        try:
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # utime and stime are fields 14 and 15; after the ")" they are 12th and 13th.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        self._log.close()

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            with open(self._log.name, encoding="utf-8", errors="replace") as file:
                return " | ".join(file.read().strip().splitlines()[-lines:])
        return ""
