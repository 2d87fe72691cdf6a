"""What every `doseline` command group shares: the site and ledger options, the ledger
opened from them, argument types, the default actor, JSON output of records and the
refusal printed on stderr. Written once here so that every group answers alike."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from controller.config import Site, load_site

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from controller.ledger import Ledger

PROG = "doseline"
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


def default_actor() -> str:
    """The audit trail's actor when `--actor` is not given: the logged-in user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def when(text: str) -> datetime:
    """argparse type: an ISO date (midnight UTC) or date-time (without an offset: UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def day(text: str) -> date:
    """argparse type: a date, YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def open_engine(db: str) -> Engine:
    from controller.ledger.engine import make_engine

    return make_engine(db)


def open_ledger(db: str, *, min_shelf_life_days: int = 0) -> Ledger:
    from controller.ledger import Ledger

    return Ledger(open_engine(db), min_shelf_life_days=min_shelf_life_days)


def site_engine(args: argparse.Namespace) -> tuple[Site, Engine]:
    """The site file (`--site`) and an engine on its ledger (or on `--db`)."""
    site = load_site(args.site)
    return site, open_engine(args.db or site.ledger.url)


def site_ledger(args: argparse.Namespace, *, shelf_life: bool = False) -> tuple[Site, Ledger]:
    """The site file and its ledger (or `--db`); with `shelf_life` the ledger keeps the
    site's minimum remaining shelf life when it allocates."""
    site = load_site(args.site)
    days = site.ledger.min_shelf_life_days if shelf_life else 0
    return site, open_ledger(args.db or site.ledger.url, min_shelf_life_days=days)


def refused(command: str, exc: Exception) -> int:
    """A refusal with a list of problems (each named by its field and value when it has
    one), or its message alone, on stderr under `<prog> <command>: refused`; exit 2."""
    problems = getattr(exc, "problems", None)
    print(f"{PROG} {command}: refused", file=sys.stderr)
    if problems:
        for p in problems:
            text = getattr(p, "message", None)
            if text is None:
                print(f"  {p}", file=sys.stderr)
            else:
                shown = "" if p.value is None else f" {p.value!r}"
                print(f"  {p.field}:{shown}: {text}", file=sys.stderr)
    else:
        print(f"  {exc}", file=sys.stderr)
    return 2


def failed(command: str, exc: Exception) -> int:
    """A refusal on one line of stderr, `<prog> <command>: <message>`; exit 2."""
    print(f"{PROG} {command}: {exc}", file=sys.stderr)
    return 2
