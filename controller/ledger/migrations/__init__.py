"""Schema migrations (Alembic). `upgrade(engine)` brings any ledger database up to date.

The scripts live beside this file, so a migration ships with the code that needs it.
A new revision: `alembic -c controller/ledger/migrations/alembic.ini revision
--autogenerate -m "what changes"` against an up-to-date database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

HERE = Path(__file__).resolve().parent


def config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(config(engine), revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def reset(engine: Engine) -> None:
    """Drops every ledger table and the migration record: an empty database again.
    Used by the demo, which always starts from nothing."""
    from sqlalchemy import text

    from controller.ledger.schema import metadata

    metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
