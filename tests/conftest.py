"""Shared test fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.packing.canister_desk import CanisterDesk
from tests.technician import Technician


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    return _free_port()


POSTGRES_URL = os.environ.get("DOSELINE_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")


def postgres_available(url: str = POSTGRES_URL) -> str | None:
    """None if the server answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: no usable server
        return f"no PostgreSQL at {url}: {exc}".splitlines()[0]


def require_postgres() -> None:
    """Skips the test when no server answers, but fails it under CI, where it must run."""
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and PostgreSQL is required: {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL of a fresh, empty schema on the test server, dropped afterwards."""
    require_postgres()
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def staff() -> AsyncIterator[Callable[..., Technician]]:
    """Puts a technician at a controller's packers (`staff(controller)`): canister
    refills wait for the scan of the reserved pack, as they do on a real floor."""
    tasks: list[asyncio.Task[None]] = []

    def hire(desk: CanisterDesk, **options: Any) -> Technician:
        tech = Technician(desk, **options)
        tasks.append(asyncio.create_task(tech.run(), name="technician"))
        return tech

    yield hire
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
