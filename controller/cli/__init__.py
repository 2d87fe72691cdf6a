"""The `doseline` command: one module per command group, the shared skeleton in
`common`."""

from __future__ import annotations

import argparse
import os
import sys

from controller.cli.bench import add_bench_parsers
from controller.cli.cabinets import add_cabinet_parsers
from controller.cli.demo import add_demo_parser
from controller.cli.duty import add_duty_parsers
from controller.cli.ledger import add_ledger_parsers
from controller.cli.packing import add_packing_parsers
from controller.cli.purchasing import add_purchasing_parsers
from controller.cli.reports import add_report_parsers
from controller.cli.run import add_run_parsers
from controller.cli.store import add_store_parsers
from controller.cli.verification import add_verification_parsers
from controller.cli.wards import add_wardsupply_parsers
from controller.config import ConfigError
from controller.logs import FORMATS, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="doseline",
        description="Automation controller for hospital pharmacies: dose packers, ward "
        "cabinets and one stock ledger.",
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("DOSELINE_LOG_FORMAT", "text"),
        choices=list(FORMATS),
        help="text (default) or json: one object per line (or set DOSELINE_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    add_demo_parser(sub)
    lsub = add_ledger_parsers(sub)
    add_store_parsers(lsub)
    add_run_parsers(sub)
    add_report_parsers(sub, lsub)
    add_packing_parsers(sub)
    add_cabinet_parsers(sub)
    add_verification_parsers(sub)
    add_purchasing_parsers(sub)
    add_wardsupply_parsers(sub)
    add_duty_parsers(sub)
    add_bench_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
