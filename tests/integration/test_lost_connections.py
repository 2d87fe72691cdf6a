"""The ledger's PostgreSQL connections terminated under load: every command still lands once.

The engine pings no connection when it takes it from the pool. Instead, a connection
found dead while in use is recognised, the pool is emptied and the command runs again
under its idempotency key. Here twelve callers reserve and post pouches through the
async ledger (group commit included) while the server terminates every connection of
the ledger's application name, again and again. No caller may see an error, every pair
is booked exactly once, no reservation is left open and the ledger verifies.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import date

import psycopg
from sqlalchemy import func, make_url, select

from controller.async_ledger import AsyncLedger
from controller.ledger import Ledger, Need, Use, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.ledger import CONSUMED, DeliveryLine
from controller.ledger.schema import movements, reservations
from controller.metrics import Metrics
from tests.conftest import POSTGRES_URL

APP = "doseline-lost-connections"
GTIN = "07359990000013"
BINS = ["STORE/A", "STORE/B"]
CALLERS = 12
SECONDS = 4.0


def seed(ledger: Ledger) -> None:
    ledger.create_schema()
    ledger.add_product(
        gtin=GTIN,
        article=700_101,
        name="Lost connection product",
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
        [DeliveryLine(GTIN, f"B{i}", date(2030, 1, 1 + i), 100_000, c) for i, c in enumerate(BINS)],
        actor="seed",
    )


def terminator(stop: threading.Event, killed: list[int]) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        while not stop.wait(0.25):
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (APP,),
            ).fetchall()
            killed.append(sum(1 for (done,) in rows if done))


async def pairs(aledger: AsyncLedger, caller: int, deadline: float) -> int:
    done = 0
    while time.perf_counter() < deadline:
        key = f"lost:{caller}:{done}"
        await aledger.reserve(
            key,
            purpose="pouch",
            needs=[Need(GTIN, 2)],
            from_locations=BINS,
            timeout_s=600,
            actor="tester",
        )
        await aledger.post(
            f"{key}:post",
            reservation_key=key,
            uses=[Use(GTIN, 2, CONSUMED, "consume", "packed")],
            actor="tester",
        )
        done += 1
    return done


async def test_terminated_connections_are_retried_and_nothing_is_lost(postgres_url: str) -> None:
    url = make_url(postgres_url).update_query_dict({"application_name": APP})
    ledger = Ledger(make_engine(url.render_as_string(hide_password=False)))
    seed(ledger)
    aledger = AsyncLedger(ledger, Metrics())
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=terminator, args=(stop, killed))
    killer.start()
    try:
        deadline = time.perf_counter() + SECONDS
        booked = await asyncio.gather(*(pairs(aledger, c, deadline) for c in range(CALLERS)))
    finally:
        stop.set()
        killer.join()
        await asyncio.to_thread(aledger.close)
    assert sum(killed) >= 3, f"too few connections were terminated to show anything: {killed}"
    total = sum(booked)
    assert total > 0
    with ledger.engine.connect() as conn:
        consumed = conn.execute(
            select(func.count(), func.coalesce(func.sum(movements.c.quantity), 0)).where(
                movements.c.kind == "consume"
            )
        ).one()
        still_open = conn.execute(
            select(func.count()).select_from(reservations).where(reservations.c.status == "open")
        ).scalar_one()
    assert tuple(consumed) == (total, 2 * total)
    assert still_open == 0
    assert verify_ledger(ledger.engine) == []
    ledger.engine.dispose()
