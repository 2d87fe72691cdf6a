"""Fixtures for the HTTP API: the app served by uvicorn on a free loopback port in the
test's own event loop, called with httpx over a real socket; the ledger on SQLite and
on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from controller.api import ApiServer, Tokens, create_app, hash_token, parse_tokens
from controller.app import Controller
from controller.config import parse_site

# The same task-leak check and OPC UA address-space cache as the integration tests.
from tests.integration.conftest import address_space_cache, no_leaked_tasks  # noqa: F401
from tests.sites import FURO, METO, PARA, site_dict

TODAY = datetime.now(UTC).date()

# One token per role; the tokens "file" below holds only their hashes.
TOKENS = {
    "viewer": "tok-viewer-3b1f9c",
    "technician": "tok-technician-8d02aa",
    "pharmacist": "tok-pharmacist-51c7e0",
    "admin": "tok-admin-c4e9d2",
}
USERS = {
    "viewer": "ward:vera",
    "technician": "tech:tom",
    "pharmacist": "pharmacist:anna",
    "admin": "admin:ada",
}
ROLES = ("viewer", "technician", "pharmacist", "admin")


def tokens_text() -> str:
    lines = ["# doseline API tokens: <sha256-hex> <user> <role>", ""]
    lines += [f"{hash_token(TOKENS[role])} {USERS[role]} {role}" for role in ROLES]
    return "\n".join(lines) + "\n"


def tokens() -> Tokens:
    return parse_tokens(tokens_text(), source="tokens.txt")


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """uvicorn on a free loopback port in this loop; a client on /api/v1."""
    server = ApiServer(app, "127.0.0.1", 0)
    url = await server.start()
    assert server.port != 0
    try:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", timeout=20) as client:
            yield client
    finally:
        await server.stop()


@dataclass
class Api:
    client: httpx.AsyncClient
    controller: Controller
    cabinet: Any = None  # the cabinet simulator, where there is one

    async def get(self, path: str, role: str | None = "admin", **kw: Any) -> httpx.Response:
        headers = auth(role) if role else {}
        return await self.client.get(path, headers=headers, **kw)

    async def post(
        self,
        path: str,
        role: str | None = "admin",
        *,
        json: Any = None,
        content: str | bytes | None = None,
        content_type: str | None = None,
        **kw: Any,
    ) -> httpx.Response:
        headers = auth(role) if role else {}
        if content_type:
            headers["Content-Type"] = content_type
        return await self.client.post(path, headers=headers, json=json, content=content, **kw)


@pytest.fixture
async def ledger_api(ledger_url: str) -> AsyncIterator[Api]:
    """The API over a prepared ledger, without a running controller (`doseline run`
    not started): the ledger routes work, the machine routes answer 503."""
    controller = Controller(parse_site(site_dict()), ledger_url=ledger_url)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        await asyncio.to_thread(controller.receive_opening_stock, TODAY)
        app = create_app(
            site=controller.site,
            ledger=controller.ledger,
            store=controller.store,
            tokens=tokens(),
        )
        async with served(app) as client:
            yield Api(client, controller)
    finally:
        controller.close()


__all__ = ["FURO", "METO", "PARA", "ROLES", "TODAY", "TOKENS", "USERS", "Api", "auth"]
