"""On SQLite, read-only work takes no lock: a report holding a read transaction open
never blocks the controller's writer.

The writer below runs with a busy timeout of 0, so any lock held elsewhere refuses it at
once instead of waiting. A read through `read_only(engine)` (DEFERRED) leaves it free;
the same read through the plain engine (IMMEDIATE, as writes begin) holds the write
lock and refuses it, which shows the check can fail.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from controller.ledger import Ledger
from controller.ledger.engine import make_engine, read_only
from controller.ledger.schema import products


def writer_succeeds(path: Path) -> bool:
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE audit_head SET seq = seq")
        conn.execute("COMMIT")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        conn.close()


@pytest.fixture
def ledger_file(tmp_path: Path) -> tuple[Path, Engine]:
    path = tmp_path / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    Ledger(engine).create_schema()
    return path, engine


def test_a_read_only_transaction_leaves_the_writer_free(ledger_file: tuple[Path, Engine]) -> None:
    path, engine = ledger_file
    with read_only(engine).connect() as conn:
        conn.execute(select(products.c.id)).all()  # the read transaction is open now
        assert conn.in_transaction()
        assert writer_succeeds(path)
    engine.dispose()


def test_a_transaction_begun_for_writing_holds_the_writer_off(
    ledger_file: tuple[Path, Engine],
) -> None:
    path, engine = ledger_file
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert not writer_succeeds(path)
    assert writer_succeeds(path)
    engine.dispose()


def test_the_ledgers_queries_read_without_a_lock(ledger_file: tuple[Path, Engine]) -> None:
    path, engine = ledger_file
    ledger = Ledger(engine)
    with ledger._reading() as conn:
        conn.execute(select(products.c.id)).all()
        assert writer_succeeds(path)
    engine.dispose()
