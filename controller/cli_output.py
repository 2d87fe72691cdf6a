"""Output shared by the `doseline` subcommands that list records."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

DEFAULT_SITE = "config/demo.yaml"


def add_site_options(p: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    """The options every ledger-reading subcommand shares: the site file, the ledger
    URL (by default the site file's) and, for those that list records, `--json`."""
    p.add_argument(
        "--config", "--site", dest="site", default=DEFAULT_SITE, help="the site file (YAML)"
    )
    p.add_argument("--db", default=None, help="ledger URL (default from the site file)")
    if json_output:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def print_records(rows: list[Any]) -> None:
    """Dataclass records as one JSON list (dates and decimals as text)."""
    print(json.dumps([asdict(r) for r in rows], default=str, ensure_ascii=False, indent=2))
