"""The one MetaData every table of the ledger's database is defined on, and what the
areas' tables share: the UTC timestamp type and the text of a CHECK on allowed values.

SQLAlchemy Core, portable between SQLite and PostgreSQL. The tables themselves are
in controller/ledger/schema_*.py, one module per area; controller.ledger.schema
imports them all, so `metadata.create_all` and alembic see every table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores UTC only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def check_in(column: str, allowed: Iterable[str] | type[enum.StrEnum]) -> str:
    """The text of a CHECK that `column` holds one of `allowed` (a set of states):
    `status IN ('open', 'closed')`, so the constraint follows the one definition."""
    return f"{column} IN ({', '.join(repr(str(value)) for value in allowed)})"
