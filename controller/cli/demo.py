"""`doseline demo`: one simulated day end to end (bundled simulators, the console)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from controller.cli.common import DEFAULT_SITE
from controller.config import load_site


def _cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo.run import DemoError, demo_ok, print_summary, run_demo

    site_path = Path(args.site)
    site = load_site(site_path)
    minutes = args.minutes if args.minutes is not None else (site.demo.minutes if site.demo else 1)
    if minutes <= 0:
        print(f"doseline demo: --minutes must be above 0, got {minutes}", file=sys.stderr)
        return 2
    ledger_url = args.db or site.ledger.url
    if ledger_url.startswith("sqlite:///"):
        db_path = Path(ledger_url[len("sqlite:///") :])
        db_path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    try:
        summary = asyncio.run(
            run_demo(
                site,
                site_path,
                minutes=minutes,
                ledger_url=ledger_url,
                free_ports=not args.site_ports,
                keep=args.keep,
            )
        )
    except DemoError as exc:
        print(f"doseline demo: {exc}", file=sys.stderr)
        return 1
    print_summary(summary)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0 if demo_ok(summary) else 1


def add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run one simulated day end to end")
    demo.add_argument("--site", default=DEFAULT_SITE)
    demo.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="real minutes the simulated day lasts (default from the site file)",
    )
    demo.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on the last line"
    )
    demo.add_argument("--db", default=None, help="ledger URL (default from the site file)")
    demo.add_argument(
        "--site-ports",
        action="store_true",
        help="bind the simulators to the site file's ports, not free ones",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the console up after the simulated day, until Ctrl-C",
    )
    demo.set_defaults(func=_cmd_demo)
