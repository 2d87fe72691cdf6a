"""What a report or an import runs on: an Engine, or a Ledger whose engine is used.

Kept apart from the reports and the assortment import so both can share it without
either depending on the other.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from controller.ledger.errors import LedgerError
from controller.ledger.ledger import Ledger

Source = Engine | Ledger


def engine_of(source: Source) -> Engine:
    return source.engine if isinstance(source, Ledger) else source


def require_aware(name: str, value: datetime) -> None:
    """Times given to a report are explicit and UTC-aware: a naive one is refused."""
    if value.tzinfo is None:
        raise LedgerError(f"{name}: naive datetime {value!r}: reports take UTC-aware times")
