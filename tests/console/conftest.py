"""A real site for the console's browser tests: a Modbus cabinet simulator, a controller
with its services running, and the API with the console served by uvicorn on a free
loopback port. It runs in its own thread and event loop, shared by a whole module, and
Playwright drives Debian's chromium against it (Playwright's own browser download is
not used). Without chromium the browser tests skip with the reason, except under
CI=true, where they fail."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest

from controller.api import ApiServer, create_app, hash_token, parse_tokens
from controller.app import Controller
from controller.config import parse_site
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from tests.sites import FURO, purchasing_site, site_dict

T = TypeVar("T")

TOKENS = {
    "viewer": "console-viewer-0c1f",
    "technician": "console-technician-77a2",
    "pharmacist": "console-pharmacist-3e9b",
    "admin": "console-admin-a0d4",
}
USERS = {
    "viewer": "ward:vera",
    "technician": "tech:tom",
    "pharmacist": "pharmacist:anna",
    "admin": "admin:ada",
}
# Markup in every name the site file lets a person write: it must show as text.
HOSTILE_PRODUCT = 'Furosemide 40 <img src=x onerror="window.pwned=1">'
HOSTILE_WARD = "Ward <script>window.pwned=2</script> One"


def chromium_path() -> str:
    """Debian's chromium, or skip (fail under CI=true, where it must run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "no chromium on the PATH (apt-get install chromium, or make test)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the browser tests must run: {reason}")
    pytest.skip(reason)


class ConsoleSite:
    """The controller and its console in a thread of their own; `make_site` builds the
    site file (the purchasing site unless a module needs another, such as drug rooms)."""

    def __init__(
        self, ledger_url: str, make_site: Callable[..., dict[str, Any]] = purchasing_site
    ) -> None:
        self.ledger_url = ledger_url
        self.make_site = make_site
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-site")
        self.cabinet = CabinetSimulator(
            cabinets=[
                CabinetSpec(
                    1, [PocketSpec(1, 100001, 12, 5, 20, 20), PocketSpec(2, 100002, 8, 4, 10, 10)]
                )
            ],
            time_factor=0,
        )
        self.controller: Controller | None = None
        self.server: ApiServer | None = None
        self.url = ""

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self.loop)
        return future.result(timeout)

    def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A ledger write queued behind the controller's own (SQLite has one writer)."""
        assert self.controller is not None
        return self.call(self.controller.aledger.run(fn, *args, **kwargs))

    def start(self) -> None:
        self.thread.start()
        self.call(self._start(), timeout=60)

    async def _start(self) -> None:
        await self.cabinet.start()
        raw = self.make_site(ledger_url=self.ledger_url)
        raw["cabinets"][0]["address"] = self.cabinet.address
        raw["packers"], raw["scanners"] = [], []
        for product in raw["catalogue"]:
            if product["gtin"] == FURO:
                product["name"] = HOSTILE_PRODUCT
        raw["wards"][0]["name"] = HOSTILE_WARD
        controller = Controller(parse_site(raw), ledger_url=self.ledger_url)
        self.controller = controller
        now = datetime.now(UTC)
        clock = controller.ledger.clock
        controller.ledger.clock = lambda: now - timedelta(hours=1)
        await asyncio.to_thread(controller.prepare_ledger)
        await asyncio.to_thread(controller.receive_opening_stock, now.date())
        # Use in the past, so the order proposal orders FURO from WHOLE.
        await asyncio.to_thread(
            controller.ledger.consume,
            "use-furo",
            gtin=FURO,
            quantity=10,
            location="CENTRAL/A01",
            actor="ward:use",
            reason="use",
        )
        controller.ledger.clock = clock
        await controller.adopt_cabinets()
        await controller.start()
        text = "\n".join(f"{hash_token(TOKENS[r])} {USERS[r]} {r}" for r in TOKENS)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller,
            tokens=parse_tokens(text, source="console tokens"),
        )
        self.server = ApiServer(app, "127.0.0.1", 0)
        self.url = await self.server.start()

    def stop(self) -> None:
        try:
            self.call(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.controller is not None:
            await self.controller.stop()
            self.controller.close()
        await self.cabinet.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    path = tmp_path_factory.mktemp("console") / "ledger.db"
    running = ConsoleSite(f"sqlite:///{path}")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(site: ConsoleSite) -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    try:
        launched = manager.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()
    finally:
        manager.stop()


def sign_in(page: Any, site: ConsoleSite, role: str, then: str = "/console/") -> None:
    page.goto(f"{site.url}/console/login?next={then}")
    page.fill("#token", TOKENS[role])
    page.click("button[type=submit].primary")
    page.wait_for_url(re.compile(re.escape(site.url + then) + r"$"))


def client(site: ConsoleSite) -> httpx.Client:
    return httpx.Client(base_url=site.url, timeout=20, follow_redirects=False)


def http_sign_in(http: httpx.Client, role: str) -> str:
    """Signs in over plain HTTP; returns the session's CSRF token."""
    form = http.get("/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce is not None
    r = http.post("/console/login", data={"csrf": nonce.group(1), "token": TOKENS[role]})
    assert r.status_code == 303, r.text
    home = http.get("/console/")
    csrf = re.search(r'name="csrf" value="([^"]+)"', home.text)
    assert csrf is not None
    return csrf.group(1)


@asynccontextmanager
async def console_in_process(url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Controller]]:
    """The console of the test site in this process over ASGI, its ledger at `url` with
    the opening stock booked: a client for the HTTP-level console tests."""
    controller = Controller(parse_site(site_dict(ledger_url=url)), ledger_url=url)
    await asyncio.to_thread(controller.prepare_ledger)
    await asyncio.to_thread(controller.receive_opening_stock, datetime.now(UTC).date())
    text = "\n".join(f"{hash_token(TOKENS[r])} {USERS[r]} {r}" for r in TOKENS)
    app = create_app(
        site=controller.site,
        ledger=controller.ledger,
        store=controller.store,
        tokens=parse_tokens(text, source="tokens"),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as c:
            yield c, controller
    finally:
        controller.close()
