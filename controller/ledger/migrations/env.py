"""Alembic environment: runs on the engine the ledger hands over (or a URL in -x url=)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from controller.ledger.engine import make_engine
from controller.ledger.schema import metadata

engine: Engine | None = context.config.attributes.get("engine")
if engine is None:
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///var/ledger.db")
    engine = make_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
