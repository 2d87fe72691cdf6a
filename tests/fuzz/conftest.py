"""The seeded API on loopback for the API fuzzing and its regression tests: once per
module on SQLite (`sqlite_api`), and on SQLite and PostgreSQL (`api`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fuzz.api_server import ledger_url, served


@dataclass(frozen=True)
class Served:
    root: str  # http://127.0.0.1:<port>; the operations' paths carry /api/v1
    number: str  # the seeded purchase order
    kind: str  # sqlite or postgresql


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with (
        ledger_url(request.param, tmp_path_factory.mktemp("fuzz")) as url,
        served(url) as (root, number),
    ):
        yield Served(root, number, request.param)


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with (
        ledger_url("sqlite", tmp_path_factory.mktemp("fuzz")) as url,
        served(url) as (root, number),
    ):
        yield Served(root, number, "sqlite")
