"""Output shared by the `doseline` subcommands that list records."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any


def print_records(rows: list[Any]) -> None:
    """Dataclass records as one JSON list (dates and decimals as text)."""
    print(json.dumps([asdict(r) for r in rows], default=str, ensure_ascii=False, indent=2))
