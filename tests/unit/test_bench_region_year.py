"""The region-year bench phase on a tiny year: what it books is what the ledger holds.

One simulated day, the 1st of a month, so the monthly stocktake and pocket counts run
too. The ledger must verify clean, every command kind the replay counted
must be in the ledger's command record as often, the units it moved by kind must be
the ledger's, and each product's stock must be what was received minus what was used,
plus what the counts found.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from controller.bench.region_year import (
    CABINETS,
    POCKETS,
    RegionYear,
    SimClock,
    ledger_scope,
)
from controller.ledger import Ledger, verify_ledger
from controller.ledger.engine import make_engine

DAYS = 1
START = datetime(2026, 2, 1, tzinfo=UTC)  # the 1st: the monthly counts run
LEDGER_COMMANDS = ("receive", "reserve", "post", "consume", "waste", "stocktake", "count", "void")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegionYear, Counter[str]]]:
    path: Path = tmp_path_factory.mktemp("region-year") / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    clock = SimClock(START)
    year = RegionYear(Ledger(engine, clock=clock), clock, start=START)
    year.set_up()
    scopes: Counter[str] = Counter()

    @contextlib.contextmanager
    def counting_scope() -> Iterator[None]:
        yield
        scopes[clock.now.strftime("%Y-%m-%d %H")] += 1  # the hour that just ran

    year.replay(DAYS, counting_scope)
    try:
        yield year, scopes
    finally:
        engine.dispose()


def test_the_ledger_verifies_clean_and_nothing_was_refused(
    replayed: tuple[RegionYear, Counter[str]],
) -> None:
    year, _ = replayed
    assert verify_ledger(year.ledger.engine) == []
    assert dict(year.tally.refusals) == {}
    # only the jobs never started still hold stock, until their timeout
    assert year.ledger.open_reservation_count() == len(year.abandoned)


def test_every_simulated_hour_runs_in_one_scope(
    replayed: tuple[RegionYear, Counter[str]],
) -> None:
    _, scopes = replayed
    assert len(scopes) == 24 * DAYS
    assert set(scopes.values()) == {1}


def test_the_commands_booked_are_the_ledgers_commands(
    replayed: tuple[RegionYear, Counter[str]],
) -> None:
    year, _ = replayed
    with year.ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, count(*) FROM commands GROUP BY kind"))
        stored = {str(kind): int(n) for kind, n in rows}
    booked = {k: n for k, n in year.tally.commands.items() if k in LEDGER_COMMANDS}
    assert booked == stored
    assert booked["count"] == CABINETS * POCKETS  # the monthly pocket count ran
    assert booked["stocktake"] > 0
    assert year.tally.withdrawals > 0
    assert booked["consume"] == year.tally.withdrawals + year.tally.room_use_lines


def test_the_units_moved_by_kind_are_the_ledgers(
    replayed: tuple[RegionYear, Counter[str]],
) -> None:
    year, _ = replayed
    for kind in ("receive", "transfer", "consume", "waste", "adjust"):
        assert year.ledger.moved_quantity(kind) == year.tally.units[kind], kind
    assert year.tally.units["consume"] > 0
    assert year.tally.units["transfer"] > 0


def test_each_products_stock_is_receipts_minus_uses(
    replayed: tuple[RegionYear, Counter[str]],
) -> None:
    year, _ = replayed
    in_ledger: Counter[str] = Counter()
    at: Counter[tuple[str, str]] = Counter()
    for row in year.ledger.stock():
        in_ledger[row.gtin] += row.on_hand
        at[(row.location, row.gtin)] += row.on_hand
    tally = year.tally
    expected = {g: tally.received[g] - tally.used[g] + tally.adjusted[g] for g in year.products}
    assert {g: in_ledger[g] for g in year.products} == expected
    assert +at == +year.on_hand  # and the replay's model of every balance is the ledger's


def test_the_phase_takes_the_ledgers_group_commit_when_it_has_one() -> None:
    class Batched:
        def batch(self) -> Any:
            return contextlib.nullcontext()

    batched = Batched()
    assert ledger_scope(batched) == batched.batch  # type: ignore[arg-type]
    assert ledger_scope(object()) is contextlib.nullcontext  # type: ignore[arg-type]
