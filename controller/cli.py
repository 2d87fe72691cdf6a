"""The `doseline` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from controller.config import ConfigError, load_site

DEFAULT_SITE = "config/demo.yaml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Library chatter (connection retries, frame dumps) is reported by the drivers as
    # DriverError with context; keep their own loggers to real problems.
    for noisy in ("asyncua", "pymodbus", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


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
            )
        )
    except DemoError as exc:
        print(f"doseline demo: {exc}", file=sys.stderr)
        return 1
    print_summary(summary)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0 if demo_ok(summary) else 1


def _cmd_verify(args: argparse.Namespace) -> int:
    from controller.ledger import verify_ledger
    from controller.ledger.engine import make_engine

    engine = make_engine(args.db)
    try:
        violations = verify_ledger(engine)
    except Exception as exc:  # an unreadable database is a failed verification
        print(f"ledger {args.db}: cannot be read: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if violations:
        for v in violations:
            print(f"VIOLATION {v}")
        print(f"ledger {args.db}: {len(violations)} violation(s)")
        return 1
    print(
        f"ledger {args.db}: balances equal movements, nothing negative, reservations within stock"
    )
    return 0


def _cmd_stock(args: argparse.Namespace) -> int:
    from controller.ledger import Ledger
    from controller.ledger.engine import make_engine

    engine = make_engine(args.db)
    try:
        rows = Ledger(engine).stock(location=args.location, gtin=args.gtin)
    finally:
        engine.dispose()
    print(
        f"{'location':<22} {'gtin':<15} {'batch':<10} {'expiry':<11} {'status':<10} "
        f"{'on hand':>8} {'reserved':>8}"
    )
    for r in rows:
        print(
            f"{r.location:<22} {r.gtin:<15} {r.batch:<10} {r.expiry!s:<11} {r.status:<10} "
            f"{r.on_hand:>8} {r.reserved:>8}"
        )
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from controller.app import Controller

    site = load_site(args.site)
    controller = Controller(site, ledger_url=args.db)
    try:
        controller.prepare_ledger()
        print(
            f"ledger {args.db or site.ledger.url}: schema and master data of {args.site} in place"
        )
        if args.opening_stock:
            units = controller.receive_opening_stock(datetime.now(UTC).date())
            print(f"opening stock: {len(site.stock)} lots, {units} units booked")
    finally:
        controller.close()
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.app import run_site

    site = load_site(args.site)
    return asyncio.run(run_site(site, ledger_url=args.db, adopt=args.adopt_cabinets))


def _cmd_check_config(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    print(
        f"{args.site}: valid: {len(site.catalogue)} products, {len(site.packers)} packers, "
        f"{len(site.cabinets)} cabinets, {len(site.scanners)} scanners"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="doseline",
        description="Automation controller for hospital pharmacies: dose packers, ward "
        "cabinets and one stock ledger.",
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    demo.set_defaults(func=_cmd_demo)

    ledger = sub.add_parser("ledger", help="ledger tools")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = lsub.add_parser("verify", help="check the ledger's invariants")
    verify.add_argument("--db", required=True, help="ledger URL, e.g. sqlite:///var/ledger.db")
    verify.set_defaults(func=_cmd_verify)
    stock = lsub.add_parser("stock", help="balances per location and lot")
    stock.add_argument("--db", required=True)
    stock.add_argument("--location")
    stock.add_argument("--gtin")
    stock.set_defaults(func=_cmd_stock)

    init = lsub.add_parser("init", help="create the schema and the site's master data")
    init.add_argument("--site", default=DEFAULT_SITE)
    init.add_argument("--db", default=None, help="ledger URL (default from the site file)")
    init.add_argument(
        "--opening-stock", action="store_true", help="also book the site file's opening lots (once)"
    )
    init.set_defaults(func=_cmd_init)

    run = sub.add_parser("run", help="run the controller against the machines of a site file")
    run.add_argument("--site", required=True)
    run.add_argument("--db", default=None, help="ledger URL (default from the site file)")
    run.add_argument(
        "--adopt-cabinets",
        action="store_true",
        help="commissioning: book the pockets' current counts from the store",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a site file")
    check.add_argument("--site", default=DEFAULT_SITE)
    check.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
