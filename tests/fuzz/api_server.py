"""The API under fuzzing: the test site with a supplier, a seeded ledger (SQLite or a
fresh PostgreSQL schema) and the project's ApiServer (uvicorn) in a thread of its own,
so synchronous clients (schemathesis, httpx.Client) can call it from the test."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.api import ApiServer, create_app
from controller.app import Controller
from controller.config import Site, parse_site
from controller.gs1 import PackId
from controller.intake import Catalogue, parse_orders
from controller.purchasing import PurchasingStore
from controller.verification import VerificationStore
from tests.api.conftest import TODAY, tokens
from tests.api.messages import good_bundle
from tests.conftest import POSTGRES_URL, require_postgres
from tests.sites import METO, PARA, job, site_dict

# Ids that exist in a seeded ledger (the same on SQLite and PostgreSQL).
JOB_ID = "W1-FUZZ-0800"
PACKER = "PK1"
ALERT_ID = 1
GOOD_SERIAL = "SN-FUZZ-OK"
BAD_SERIAL = "SN-FUZZ-ALERT"


def fuzz_site() -> Site:
    """The API tests' site with one supplier for every product, so the order proposal
    and the purchasing routes have something to work on."""
    raw = site_dict()
    raw["suppliers"] = [{"code": "WHOLE", "name": "Wholesale Nord", "lead_time_days": 1}]
    for product in raw["catalogue"]:
        product["supplier"] = "WHOLE"
    return parse_site(raw)


def seed_ledger(controller: Controller) -> str:
    """Opening stock, last month's use (so the order proposal wants something), three
    dose orders pending review, a packing job, one purchase order, a verified pack and a
    blocked pack with its open alert. Returns the purchase order's number."""
    led = controller.ledger
    now = datetime.now(UTC)
    saved = led.clock
    led.clock = lambda: now - timedelta(hours=1)
    try:
        controller.prepare_ledger()
        controller.receive_opening_stock(TODAY)
        led.consume(
            "fuzz-use", gtin=PARA, quantity=400, location="CENTRAL/A01", actor="fuzz", reason="use"
        )
    finally:
        led.clock = saved
    site = controller.site
    orders = parse_orders(
        good_bundle(TODAY),
        catalogue=Catalogue.from_site(site),
        salt=site.pseudonym_salt(),
        default_ward="W1",
        today=TODAY,
    )
    controller.store.submit(orders, source="fhir", actor="fuzz", review_required=True)
    controller.store.add_job(job(JOB_ID, 3, ((PARA, 1), (METO, 1))))
    created, _unassigned = PurchasingStore(led).create_orders(now=now, actor="fuzz")
    assert created, "the order proposal wanted nothing: the purchasing routes lack an order"
    verification = VerificationStore(led)
    expiry = TODAY + timedelta(days=400)
    verification.record_verified(PackId(PARA, "P-LATE", expiry, GOOD_SERIAL), "CENTRAL/A01", now)
    alert = verification.block(
        PackId(METO, "M-1", expiry, BAD_SERIAL), "CENTRAL/A01", "RECALLED", "batch recalled", now
    )
    assert alert == ALERT_ID
    return created[0].number


class ThreadServer:
    """The app served by the project's ApiServer in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-api", daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = ApiServer(self.app, "127.0.0.1", 0)
        self.url = await server.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()

    def start(self) -> str:
        self._thread.start()
        assert self._started.wait(20), "the API server did not start"
        if self._error is not None:
            raise self._error
        return self.url

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "the API server did not stop"


@contextmanager
def ledger_url(kind: str, tmp: Path) -> Iterator[str]:
    """A SQLite file in `tmp`, or a fresh PostgreSQL schema dropped afterwards (the test
    is skipped without a server, except under CI=true)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'ledger.db'}"
        return
    require_postgres()
    import psycopg

    schema = f"fuzz_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def served(url: str) -> Iterator[tuple[str, str]]:
    """The seeded API over the ledger at `url`: (its root URL, the purchase order's
    number). The operations' paths carry /api/v1."""
    controller = Controller(fuzz_site(), ledger_url=url)
    try:
        number = seed_ledger(controller)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            tokens=tokens(),
        )
        server = ThreadServer(app)
        root = server.start()
        try:
            yield root, number
        finally:
            server.stop()
    finally:
        controller.close()
