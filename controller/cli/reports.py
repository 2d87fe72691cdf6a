"""`doseline report ...` (stock, expiry, cover, waste, service, consumption, debiting
and the order proposal) and `doseline ledger import-assortment`."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli.common import DEFAULT_SITE, default_actor, open_engine, when
from controller.config import Site, load_site

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from controller.ledger.reports.workplace import Workplace


def _window(args: argparse.Namespace, days: int = 30) -> tuple[datetime, datetime]:
    """--since/--until, by default the `days` before now."""
    until = args.until or datetime.now(UTC)
    return args.since or until - timedelta(days=days), until


def _previous_month(args: argparse.Namespace) -> tuple[datetime, datetime]:
    """--since/--until, by default the last whole calendar month (UTC)."""
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (this_month - timedelta(days=1)).replace(day=1)
    return args.since or start, args.until or this_month


def _build_report(engine: Engine, args: argparse.Namespace) -> Any:
    from controller.ledger import reports
    from controller.ledger.errors import LedgerError

    now = getattr(args, "now", None) or datetime.now(UTC)
    name = args.report_command
    if name == "balance":
        today = args.today or now.date()
        return reports.balances(
            engine, by=args.by, gtin=args.gtin, location=args.location, today=today
        )
    if name == "expiring":
        today = args.today or now.date()
        return reports.expiring(engine, within_days=args.within_days, today=today)
    if name == "cover":
        return reports.days_of_cover(engine, now=now, obligation_days=args.obligation_days)
    if name == "compliance":
        return reports.compliance_summary(engine, now=now, obligation_days=args.obligation_days)
    if name == "waste":
        since, until = _window(args)
        return reports.waste_report(engine, since=since, until=until)
    if name == "service":
        since, until = _window(args)
        return reports.service_level(engine, since=since, until=until, target=args.target)
    if name == "consumption":
        since, until = _previous_month(args)
        return reports.consumption_by_month(engine, since=since, until=until, tz=args.tz)
    if args.ramp_months is not None:
        from controller.ledger.reports.ramp import ramp_proposal

        return ramp_proposal(
            engine,
            now=now,
            months=args.ramp_months,
            budget_sek_per_month=args.budget_sek,
            max_units_per_month=args.max_units,
            target_days=args.target_days,
            lead_time_days=args.lead_time_days,
        )
    if args.budget_sek is not None or args.max_units is not None:
        raise LedgerError("--budget-sek and --max-units need --ramp-months")
    return reports.order_proposal(
        engine, now=now, target_days=args.target_days, lead_time_days=args.lead_time_days
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import reports
    from controller.ledger.errors import LedgerError

    engine = open_engine(args.db)
    try:
        result = _build_report(engine, args)
    except (LedgerError, SQLAlchemyError) as exc:
        print(f"doseline report {args.report_command}: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if getattr(args, "csv", None):
        with open(args.csv, "w", encoding="utf-8", newline="") as file:
            count = reports.write_consumption_csv(result.rows, file)
        print(f"{args.csv}: {count} rows")
    elif args.json:
        print(json.dumps(reports.to_jsonable(result), ensure_ascii=False, indent=2))
    elif args.report_command == "proposal" and args.ramp_months is not None:
        from controller.ledger.reports.ramp import render_ramp

        print(render_ramp(result))
    else:
        print(reports.render_text(result))
    return 0


def _last_month(tz: str) -> date:
    """Any day of the last whole calendar month in `tz` (UTC when not a known zone)."""
    from controller.ledger.debiting import _zone

    return datetime.now(_zone(tz)).date().replace(day=1) - timedelta(days=1)


def _cmd_followup(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import reports
    from controller.ledger.errors import LedgerError
    from controller.ledger.reports.followup import (
        followup_report,
        render_followup,
        write_followup_csv,
    )

    engine = open_engine(args.db)
    try:
        report = followup_report(
            engine,
            month=args.month or _last_month(args.tz),
            tz=args.tz,
            generated_at=datetime.now(UTC),
            obligation_days=args.obligation_days,
        )
    except (LedgerError, SQLAlchemyError) as exc:
        print(f"doseline report followup: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as file:
            count = write_followup_csv(report, file)
        print(f"{args.csv}: {count} lines ({report.month})")
    elif args.json:
        print(json.dumps(reports.to_jsonable(report), ensure_ascii=False, indent=2))
    else:
        print(render_followup(report))
    return 0


def _cmd_workplace(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import reports
    from controller.ledger.errors import LedgerError
    from controller.ledger.reports.workplace import (
        render_workplace,
        workplace_consumption,
        write_workplace_csv,
    )

    site = load_site(args.site)
    tz = args.tz or site.site.timezone
    engine = open_engine(args.db or site.ledger.url)
    try:
        last = _last_month(tz)
        report = workplace_consumption(
            engine,
            since=args.since or last,
            until=args.until or args.since or last,
            tz=tz,
            workplaces=site_workplaces(site),
            cabinets=site.cabinet_wards(),
        )
    except (LedgerError, SQLAlchemyError) as exc:
        print(f"doseline report workplace: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as file:
            count = write_workplace_csv(report, file)
        print(f"{args.csv}: {count} lines, {report.units} units, {report.value:.2f} SEK")
    elif args.json:
        print(json.dumps(reports.to_jsonable(report), ensure_ascii=False, indent=2))
    else:
        print(render_workplace(report))
    return 0


def site_workplaces(site: Site) -> dict[str, Workplace]:
    """Each ward of the site file as the workplace export names it: its workplace id
    (the ward's, else that of one of its drug rooms) and its hospital (that of its
    drug rooms); drug rooms' wards that are not in the ward list are added."""
    from controller.ledger.reports.workplace import Workplace

    rooms: dict[str, list[Any]] = {}
    for room in site.drug_rooms:
        rooms.setdefault(room.ward, []).append(room)
    out: dict[str, Workplace] = {}
    for code in [w.code for w in site.wards] + [c for c in rooms if site.ward_map().get(c) is None]:
        ward = site.ward_map().get(code)
        mine = rooms.get(code, [])
        workplace_id = (ward.workplace_id if ward else None) or next(
            (r.workplace_id for r in mine if r.workplace_id), ""
        )
        out[code] = Workplace(
            ward=code,
            name=ward.name if ward else code,
            cost_centre=(ward.cost_centre if ward else None)
            or next((r.cost_centre for r in mine if r.cost_centre), ""),
            workplace_id=workplace_id,
            customer=mine[0].hospital if mine else "",
        )
    return out


def _cmd_debiting(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import debiting, reports
    from controller.ledger.errors import LedgerError

    site = load_site(args.site)
    tz = args.tz or site.site.timezone
    try:
        if args.month:
            month = debiting.parse_month(args.month)
        else:  # the last whole calendar month in the site's time zone
            month = (datetime.now(ZoneInfo(site.site.timezone)).date().replace(day=1)) - (
                timedelta(days=1)
            )
    except LedgerError as exc:
        print(f"doseline report debiting: {exc}", file=sys.stderr)
        return 2
    engine = open_engine(args.db or site.ledger.url)
    try:
        report = debiting.ward_debiting(
            engine, month=month, tz=tz, wards=site.ward_map(), cabinets=site.cabinet_wards()
        )
    except (LedgerError, SQLAlchemyError) as exc:
        print(f"doseline report debiting: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as file:
            count = debiting.write_debiting_csv(report, file)
        print(
            f"{args.csv}: {count} lines + control line, {report.units} units, "
            f"{report.value:.2f} SEK ({report.month})"
        )
    elif args.json:
        print(json.dumps(reports.to_jsonable(report), ensure_ascii=False, indent=2))
    else:
        print(debiting.render_text(report))
    return 0 if report.reconciliation.balanced else 1


def _cmd_import_assortment(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import reports
    from controller.ledger.errors import LedgerError

    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"doseline ledger import-assortment: {args.file}: {exc}", file=sys.stderr)
        return 2
    engine = open_engine(args.db)
    try:
        report = reports.import_assortment(engine, text, actor=args.actor, dry_run=args.dry_run)
    except (LedgerError, SQLAlchemyError) as exc:
        print(f"doseline ledger import-assortment: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(reports.to_jsonable(report), ensure_ascii=False, indent=2))
    else:
        print(reports.render_text(report))
    return 0 if report.ok else 1


def add_report_parsers(sub: Any, ledger_sub: Any) -> None:
    """`doseline report ...` and `doseline ledger import-assortment`."""
    report = sub.add_parser("report", help="stock, expiry, cover, waste and other reports")
    rsub = report.add_subparsers(dest="report_command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = rsub.add_parser(name, help=help_text)
        p.add_argument("--db", required=True, help="ledger URL, e.g. sqlite:///var/ledger.db")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=_cmd_report)
        return p

    def add_now(p: argparse.ArgumentParser) -> None:
        p.add_argument("--now", type=when, help="the moment to report at (default: now, UTC)")

    def add_window(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--since", type=when, help=f"start, inclusive (default: {default})")
        p.add_argument("--until", type=when, help="end, exclusive (see --since)")

    p = add("balance", "stock on hand, reserved, available and value")
    p.add_argument("--by", choices=["product", "location", "lot"], default="product")
    p.add_argument("--gtin")
    p.add_argument("--location", help="a location code; includes the locations below it")
    p.add_argument(
        "--today", type=date.fromisoformat, help="expired lots are not available (default: today)"
    )
    p = add("expiring", "lots expiring within N days, and expired lots still on hand")
    p.add_argument("--within-days", type=int, default=90)
    p.add_argument("--today", type=date.fromisoformat, help="default: today (UTC)")
    for name, help_text in (
        ("cover", "days of cover per product against the one-month obligation"),
        ("compliance", "the one-month obligation per category, and the preparedness stock"),
    ):
        p = add(name, help_text)
        add_now(p)
        p.add_argument("--obligation-days", type=int, default=30)
    add_window(add("waste", "waste by reason code and product"), "30 days before --until")
    p = add("service", "delivery reliability: order lines filled in full")
    add_window(p, "30 days before --until")
    p.add_argument("--target", type=float, default=0.95)
    p = add("consumption", "net consumption per article and month (national follow-up)")
    add_window(p, "the last whole calendar month")
    p.add_argument("--tz", default="UTC", help="time zone of the calendar months")
    p.add_argument("--csv", help="write the semicolon-separated export to this file")
    p = rsub.add_parser(
        "debiting", help="ward debiting: consumption per ward and cost centre in a month"
    )
    p.add_argument("--site", default=DEFAULT_SITE, help="the site file: wards and cabinets")
    p.add_argument("--db", help="ledger URL (default: the site file's)")
    p.add_argument("--month", help="YYYY-MM (default: the last whole month, site time zone)")
    p.add_argument("--tz", help="time zone of the month (default: the site's)")
    p.add_argument("--csv", help="write the finance export (see docs/ward-debiting.md)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_debiting)
    p = add("proposal", "order proposal in whole packs")
    add_now(p)
    p.add_argument("--target-days", type=int, default=30)
    p.add_argument("--lead-time-days", type=int, default=2)
    p.add_argument(
        "--ramp-months", type=int, help="plan the build-up towards the target over N months"
    )
    ceiling = p.add_mutually_exclusive_group()
    ceiling.add_argument("--budget-sek", type=Decimal, help="the ramp's ceiling: SEK per month")
    ceiling.add_argument("--max-units", type=int, help="the ramp's ceiling: units per month")

    p = rsub.add_parser("followup", help="the monthly export for national follow-up of the duty")
    p.add_argument("--db", required=True, help="ledger URL, e.g. sqlite:///var/ledger.db")
    p.add_argument("--month", help="YYYY-MM (default: the last whole month)")
    p.add_argument("--tz", default="UTC", help="time zone of the month (default: UTC)")
    p.add_argument("--obligation-days", type=int, default=30)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", help="write the export as CSV to this file (docs/reports.md)")
    out.add_argument("--json", action="store_true", help="print the JSON document")
    p.set_defaults(func=_cmd_followup)

    p = rsub.add_parser(
        "workplace", help="consumption per customer and workplace, product and month"
    )
    p.add_argument("--site", default=DEFAULT_SITE, help="the site file: wards and drug rooms")
    p.add_argument("--db", help="ledger URL (default: the site file's)")
    p.add_argument("--since", help="first month, YYYY-MM (default: the last whole month)")
    p.add_argument("--until", help="last month, YYYY-MM, included (default: --since)")
    p.add_argument("--tz", help="time zone of the months (default: the site's)")
    p.add_argument("--csv", help="write the export to this file (docs/reports.md)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_workplace)

    imp = ledger_sub.add_parser(
        "import-assortment", help="import an assortment and price list (CSV, see docs/reports.md)"
    )
    imp.add_argument("--db", required=True)
    imp.add_argument("file")
    imp.add_argument("--dry-run", action="store_true", help="check and plan, write nothing")
    imp.add_argument("--actor", default=default_actor(), help="who imports (for the audit)")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=_cmd_import_assortment)
