"""`doseline duty external-use record|import|list|remove`: use by units the pharmacy does
not supply (external volumes per product and month)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from controller.cli.common import PROG, add_site_options, default_actor, print_records, site_ledger


def _refuse(command: str, message: str) -> int:
    print(f"{PROG} duty external-use {command}: {message}", file=sys.stderr)
    return 1


def _cmd_record(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, led = site_ledger(args)
    try:
        row = led.record_external_use(
            args.gtin,
            month=args.month,
            unit_name=args.unit_name,
            quantity=args.quantity,
            actor=args.actor,
        )
    except LedgerError as exc:
        return _refuse("record", str(exc))
    finally:
        led.engine.dispose()
    if args.json:
        print(json.dumps(asdict(row), ensure_ascii=False, indent=2))
    else:
        print(
            f"recorded {row.quantity} of {row.gtin} {row.name} used by {row.unit_name} "
            f"in {row.month}"
        )
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, led = site_ledger(args)
    try:
        row = led.remove_external_use(
            args.gtin, month=args.month, unit_name=args.unit_name, actor=args.actor
        )
    except LedgerError as exc:
        return _refuse("remove", str(exc))
    finally:
        led.engine.dispose()
    if args.json:
        print(json.dumps(asdict(row), ensure_ascii=False, indent=2))
    else:
        print(f"removed {row.quantity} of {row.gtin} used by {row.unit_name} in {row.month}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError
    from controller.ledger.duty_use import ExternalUseRefused

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _refuse("import", f"{args.file}: {exc}")
    _site, led = site_ledger(args)
    try:
        result = led.import_external_use(text, actor=args.actor, dry_run=args.dry_run)
    except ExternalUseRefused as exc:
        print(
            f"{PROG} duty external-use import: {args.file}: {len(exc.problems)} problem(s), "
            "nothing written",
            file=sys.stderr,
        )
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    except LedgerError as exc:
        return _refuse("import", str(exc))
    finally:
        led.engine.dispose()
    if args.json:
        print(json.dumps(asdict(result), ensure_ascii=False, indent=2))
    else:
        state = "dry run, nothing written" if result.dry_run else "written"
        print(
            f"{args.file}: {result.rows} lines: {result.inserted} new, {result.replaced} "
            f"replaced, {result.unchanged} unchanged ({state})"
        )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError
    from controller.ledger.reports.render import table

    _site, led = site_ledger(args)
    try:
        rows = led.external_uses(gtin=args.gtin, since=args.since, until=args.until)
    except LedgerError as exc:
        return _refuse("list", str(exc))
    finally:
        led.engine.dispose()
    if args.json:
        print_records(rows)
        return 0
    body = [[r.month, r.unit_name, r.gtin, r.name, r.quantity, r.recorded_by] for r in rows]
    print(table(["month", "unit", "gtin", "name", "units>", "recorded by"], body))
    print(f"\n{len(rows)} volumes, {sum(r.quantity for r in rows)} units")
    return 0


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
    ext = duty.add_parser(
        "external-use", help="use by units the pharmacy does not supply, per product and month"
    )
    esub = ext.add_subparsers(dest="external_command", required=True)

    def volume(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gtin", required=True)
        p.add_argument("--month", required=True, help="YYYY-MM, not after this month")
        p.add_argument("--unit", dest="unit_name", required=True, help="the unit's name")

    p = esub.add_parser("record", help="record (or replace) one unit's use of a product in a month")
    add_site_options(p)
    volume(p)
    p.add_argument("--quantity", type=int, required=True, help="units used (>= 0)")
    p.add_argument("--actor", default=default_actor(), help="who records (for the audit)")
    p.set_defaults(func=_cmd_record)

    p = esub.add_parser("remove", help="remove one recorded volume")
    add_site_options(p)
    volume(p)
    p.add_argument("--actor", default=default_actor(), help="who removes (for the audit)")
    p.set_defaults(func=_cmd_remove)

    p = esub.add_parser(
        "import", help="import a file month;gtin;unit_name;quantity (all or nothing)"
    )
    add_site_options(p)
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    p.add_argument("--actor", default=default_actor(), help="who imports (for the audit)")
    p.set_defaults(func=_cmd_import)

    p = esub.add_parser("list", help="recorded volumes")
    add_site_options(p)
    p.add_argument("--gtin")
    p.add_argument("--since", help="first month, YYYY-MM")
    p.add_argument("--until", help="last month, YYYY-MM (included)")
    p.set_defaults(func=_cmd_list)
