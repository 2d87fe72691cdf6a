"""The group-commit writer killed with SIGKILL in the middle of a batch.

A worker process (`tests/crash/batch_worker.py`) reserves and then posts one unit for
each of 200 pouches through one writer, in batches of up to 32 commands. It is killed
while a post stalls inside its batch's transaction, with part of the batch already run
against the database. Then it is started again, as a restarted controller would be, and
resubmits every command under the same keys. Afterwards nothing may be half-booked or
booked twice: every reservation was posted once, one consume movement per pouch, no
reservation is left open, no command of the killed batch had committed, and the ledger
verifies (balances, reservations, audit chain).
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from sqlalchemy import func, select

from controller.ledger import Ledger, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.ledger import DeliveryLine
from controller.ledger.schema import commands, movements, reservations
from tests.crash.batch_worker import BINS, GTIN

POUCHES = 200
STALL_AT = 150  # a post in the second half: earlier batches committed, this one not


def seed(url: str) -> None:
    ledger = Ledger(make_engine(url))
    ledger.create_schema()
    ledger.add_product(
        gtin=GTIN,
        article=700_001,
        name="Crash product",
        substance="test",
        atc="N02BE01",
        strength="1 mg",
        form="tablet",
        actor="seed",
    )
    ledger.add_location("STORE", "store")
    for code in BINS:
        ledger.add_location(code, "bin", parent="STORE")
    ledger.receive_many(
        "opening",
        [
            DeliveryLine(GTIN, f"B{i}", date(2030, 1, 1 + i), 150, code)
            for i, code in enumerate(BINS)
        ],
        actor="seed",
    )
    ledger.engine.dispose()


def worker(url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.batch_worker", url, "run1", str(POUCHES), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            posts = conn.execute(
                select(func.count()).select_from(commands).where(commands.c.kind == "post")
            ).scalar_one()
            reserves = conn.execute(
                select(func.count()).select_from(commands).where(commands.c.kind == "reserve")
            ).scalar_one()
            consumed = conn.execute(
                select(func.count(), func.count(func.distinct(movements.c.idempotency_key))).where(
                    movements.c.kind == "consume"
                )
            ).one()
            still_open = conn.execute(
                select(func.count())
                .select_from(reservations)
                .where(reservations.c.status == "open")
            ).scalar_one()
        return {
            "reserves": int(reserves),
            "posts": int(posts),
            "consume_movements": int(consumed[0]),
            "consume_keys": int(consumed[1]),
            "open": int(still_open),
        }
    finally:
        engine.dispose()


def test_a_writer_killed_mid_batch_leaves_nothing_half_booked(
    ledger_url: str, tmp_path: Path
) -> None:
    seed(ledger_url)
    mark = tmp_path / "stalled"
    first = worker(ledger_url, "--stall-at", str(STALL_AT), "--mark", str(mark))
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert first.poll() is None, f"the worker ended early: {first.communicate()[0]}"
        assert time.monotonic() < deadline, "the worker never reached the stalled post"
        time.sleep(0.02)
    first.kill()
    first.communicate(timeout=30)

    at_kill = counts(ledger_url)
    assert at_kill["reserves"] == POUCHES
    # Whole batches only: every batch of 32 before the stalled post's committed, and
    # the stalled post's batch committed none of the posts it had already run.
    assert at_kill["posts"] == (STALL_AT // 32) * 32
    assert at_kill["consume_movements"] == at_kill["posts"]
    assert at_kill["open"] == POUCHES - at_kill["posts"]

    again = worker(ledger_url)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert counts(ledger_url) == {
        "reserves": POUCHES,
        "posts": POUCHES,
        "consume_movements": POUCHES,
        "consume_keys": POUCHES,
        "open": 0,
    }
    engine = make_engine(ledger_url)
    try:
        assert verify_ledger(engine) == []
    finally:
        engine.dispose()
