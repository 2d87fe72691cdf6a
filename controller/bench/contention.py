"""Several controller processes on one PostgreSQL ledger, contending for the same stock.

Why: in production several controllers share one PostgreSQL ledger, and the promise is
that stock is never sold twice however their transactions interleave. Each worker is a
process of its own with its own engine (as a controller is), and all reserve and post
pouch-sized needs of the same few products, from the same small stock, as fast as
they can, until none is left. Then the ledger itself is checked: what was posted is
exactly the stock, no balance is negative, `verify_ledger` finds nothing, no
reservation is left open, and every refused reservation was refused for lack of stock
(`InsufficientStock`). The throughput of all workers together and of each is reported.

Each worker is a controller as it runs in production: `CALLERS` callers at once (its
packers and cabinets) through `AsyncLedger`, whose writer group-commits the commands
that wait together. The same stock is used up once by one such process and once by
`--processes` of them, each on a fresh ledger, and the ratio of their throughputs shows
whether the processes hold each other up (the target: four processes at least twice one).

The workers start together: each connects, says "ready" and waits for "go" on its
standard input. `tests/integration/test_contention.py` runs the same workers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import make_url

from controller.async_ledger import AsyncLedger
from controller.bench.common import median, peak_rss_mib, scratch_database
from controller.ledger import InsufficientStock, Ledger, LedgerError, Need, Use, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.ledger import CONSUMED, DeliveryLine
from controller.ledger.verify import count_negative_balances
from controller.metrics import Metrics

PRODUCTS = ("07359990000013", "07359990000020", "07359990000037")
BINS = ("STORE/A01", "STORE/A02")
LOTS_PER_BIN = 1  # one lot of each product in each bin: two lots a product
MAX_POUCH_UNITS = 4
CALLERS = 8
TARGET_SCALING = 2.0


@dataclass(frozen=True)
class Stock:
    units_per_lot: int

    @property
    def per_product(self) -> int:
        return self.units_per_lot * len(BINS) * LOTS_PER_BIN

    @property
    def total(self) -> int:
        return self.per_product * len(PRODUCTS)


def seed(url: str, stock: Stock) -> None:
    ledger = Ledger(make_engine(url))
    try:
        ledger.create_schema()
        for i, gtin in enumerate(PRODUCTS):
            ledger.add_product(
                gtin=gtin,
                article=910_000 + i,
                name=f"Contended product {i + 1}",
                substance="bench",
                atc="N02BE01",
                strength="1 mg",
                form="tablet",
                actor="bench",
            )
        ledger.add_location("STORE", "store")
        for code in BINS:
            ledger.add_location(code, "bin", parent="STORE")
        today = datetime.now(UTC).date()
        ledger.receive_many(
            "contention:opening",
            [
                DeliveryLine(
                    gtin,
                    f"C{i}{j}",
                    today + timedelta(days=100 * (j + 1)),
                    stock.units_per_lot,
                    code,
                )
                for i, gtin in enumerate(PRODUCTS)
                for j, code in enumerate(BINS)
            ],
            actor="bench",
            reason="contention opening stock",
        )
    finally:
        ledger.engine.dispose()


def worker(
    url: str, worker_id: int, run_id: str, seconds: float, callers: int = CALLERS
) -> dict[str, Any]:
    """One contending controller: reserve and post until every product is gone (or
    the time is up). Runs in its own process (`controller.bench.child contend`)."""
    return asyncio.run(_worker(url, worker_id, run_id, seconds, callers))


async def _worker(
    url: str, worker_id: int, run_id: str, seconds: float, callers: int
) -> dict[str, Any]:
    ledger = Ledger(make_engine(url))
    aledger = AsyncLedger(ledger, Metrics())
    rng = random.Random(f"{run_id}/{worker_id}")
    actor = f"bench-worker-{worker_id}"
    posted: Counter[str] = Counter()
    counts = Counter[str]()
    refused_other: list[str] = []
    exhausted: set[str] = set()
    next_quantity: dict[str, int] = {}
    attempts = itertools.count()

    async def caller(deadline: float) -> None:
        while len(exhausted) < len(PRODUCTS) and time.perf_counter() < deadline:
            attempt = next(attempts)
            gtin = PRODUCTS[attempt % len(PRODUCTS)]
            if gtin in exhausted:
                continue
            quantity = next_quantity.pop(gtin, 0) or rng.randint(1, MAX_POUCH_UNITS)
            key = f"contend:{run_id}:{worker_id}:{attempt}"
            try:
                await aledger.reserve(
                    key,
                    purpose="contended pouch",
                    needs=[Need(gtin, quantity)],
                    from_locations=list(BINS),
                    timeout_s=600,
                    actor=actor,
                )
            except InsufficientStock as exc:
                counts["refused"] += 1
                if exc.available <= 0:
                    exhausted.add(gtin)  # stock only ever goes down here
                else:
                    next_quantity[gtin] = exc.available  # the last few units
                continue
            except LedgerError as exc:
                refused_other.append(f"reserve {key}: {exc}")
                continue
            try:
                await aledger.post(
                    f"{key}:post",
                    reservation_key=key,
                    uses=[Use(gtin, quantity, CONSUMED, "consume", "contended pouch")],
                    actor=actor,
                )
            except LedgerError as exc:
                refused_other.append(f"post {key}: {exc}")
                continue
            posted[gtin] += quantity
            counts["pairs"] += 1

    try:
        await asyncio.to_thread(_connect, ledger)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(caller(deadline) for _ in range(callers)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.to_thread(aledger.close)
        ledger.engine.dispose()
    pairs = counts["pairs"]
    return {
        "worker": worker_id,
        "callers": callers,
        "reserve_and_post": pairs,
        "posted": dict(posted),
        "refused_insufficient_stock": counts["refused"],
        "refused_otherwise": refused_other,
        "ran_out": len(exhausted) == len(PRODUCTS),
        "elapsed_s": round(elapsed, 3),
        "per_s": round(pairs / elapsed, 1) if elapsed > 0 else 0.0,
        "peak_rss_mib": peak_rss_mib(),
    }


def _connect(ledger: Ledger) -> None:
    with ledger.engine.connect():
        pass  # connected before the start


async def _start_workers(url: str, processes: int, seconds: float) -> list[dict[str, Any]]:
    run_id = uuid.uuid4().hex[:8]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "controller.bench.child",
            "contend",
            "--db",
            url,
            "--worker",
            str(i),
            "--run",
            run_id,
            "--seconds",
            str(seconds),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for i in range(processes)
    ]
    try:
        async with asyncio.timeout(120):
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if line.strip() != b"ready":
                    raise RuntimeError(f"a contending worker did not start: {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = await asyncio.gather(*(proc.communicate() for proc in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    results = []
    for proc, (out, _err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"a contending worker failed with exit code {proc.returncode}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def check(url: str, stock: Stock, results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the ledger says after the workers: the facts the target is about."""
    ledger = Ledger(make_engine(url))
    try:
        violations = [str(v) for v in verify_ledger(ledger.engine)]
        consumed = ledger.moved_quantity("consume")
        left = sum(ledger.available(code, gtin) for code in BINS for gtin in PRODUCTS)
        return {
            "stock_units": stock.total,
            "posted_units_in_ledger": consumed,
            "posted_units_by_workers": sum(sum(r["posted"].values()) for r in results),
            "units_left": left,
            "oversold": consumed > stock.total,
            "negative_balances": count_negative_balances(ledger.engine),
            "open_reservations": ledger.open_reservation_count(),
            "verify_violations": violations,
            "refused_otherwise": [m for r in results for m in r["refused_otherwise"]],
        }
    finally:
        ledger.engine.dispose()


async def contend(
    url: str, processes: int, seconds: float, stock: Stock
) -> tuple[list[dict[str, Any]], dict[str, Any], float]:
    """Seeds `url` (an empty ledger), runs the workers; returns their results, the
    ledger's facts and the wall time of the run."""
    await asyncio.to_thread(seed, url, stock)
    started = time.perf_counter()
    results = await _start_workers(url, processes, seconds)
    wall = time.perf_counter() - started
    return results, await asyncio.to_thread(check, url, stock, results), wall


def _rate(results: list[dict[str, Any]]) -> float:
    pairs = sum(r["reserve_and_post"] for r in results)
    longest = max(r["elapsed_s"] for r in results)
    return pairs / longest if longest else 0.0


def run(url: str, processes: int, seconds: float) -> dict[str, Any]:
    # Stock for about `seconds` of work on a small machine; the workers may take three
    # times as long to use it all up.
    stock = Stock(units_per_lot=max(200, int(150 * seconds)))
    base = make_url(url).difference_update_query(["options"]).render_as_string(False)
    with scratch_database(base) as alone_url:
        alone, _facts, _wall = asyncio.run(contend(alone_url, 1, 3 * seconds, stock))
    results, facts, _wall = asyncio.run(contend(url, processes, 3 * seconds, stock))
    pairs = sum(r["reserve_and_post"] for r in results)
    longest = max(r["elapsed_s"] for r in results)
    one_rate, all_rate = _rate(alone), _rate(results)
    scaling = all_rate / one_rate if one_rate else 0.0
    sound = (
        not facts["oversold"]
        and facts["posted_units_in_ledger"] == facts["posted_units_by_workers"]
        and facts["negative_balances"] == 0
        and facts["open_reservations"] == 0
        and not facts["verify_violations"]
        and not facts["refused_otherwise"]
    )
    return {
        "figures": {
            "processes": processes,
            "callers_per_process": CALLERS,
            "reserve_and_post_per_s_total": round(all_rate, 1),
            "reserve_and_post_per_s_one_process": round(one_rate, 1),
            "scaling": round(scaling, 2),
            "reserve_and_post_per_s_per_process": [r["per_s"] for r in results],
            "median_per_process": round(median([r["per_s"] for r in results]) or 0.0, 1),
            "reserve_and_post": pairs,
            "refused_insufficient_stock": sum(r["refused_insufficient_stock"] for r in results),
            "all_ran_out": all(r["ran_out"] for r in results),
            "run_s": round(longest, 2),
            "worker_peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            **facts,
        },
        "target": (
            f"{processes} controller processes on one ledger: never oversold (posted <= "
            "stock), no negative balance, the ledger verifies, no reservation left open, "
            f"every refusal for lack of stock; and {processes} processes at least "
            f"{TARGET_SCALING} x the throughput of one"
        ),
        "ratio": round(scaling, 2),
        "met": sound and scaling >= TARGET_SCALING,
    }
