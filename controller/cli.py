"""The `doseline` command."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli_bench import add_bench_parsers
from controller.cli_cabinets import add_cabinet_parsers
from controller.cli_packing import add_packing_parsers
from controller.cli_purchasing import add_purchasing_parsers
from controller.cli_verification import add_verification_parsers
from controller.cli_wardsupply import add_wardsupply_parsers
from controller.config import ConfigError, load_site
from controller.logs import FORMATS, setup_logging

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from controller.ledger import Ledger

DEFAULT_SITE = "config/demo.yaml"


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
        f"ledger {args.db}: balances equal movements, nothing negative, reservations within "
        "stock, audit chain intact"
    )
    return 0


def _open_ledger(db: str) -> Ledger:
    from controller.ledger import Ledger
    from controller.ledger.engine import make_engine

    return Ledger(make_engine(db))


def _cmd_receive(args: argparse.Namespace) -> int:
    import hashlib
    from datetime import UTC, datetime

    from controller.gs1 import ScanError, parse_pack
    from controller.ledger import Ledger, LedgerError

    led = _open_ledger(args.db)
    try:
        if args.file:
            text = Path(args.file).read_text(encoding="utf-8")
            lines = Ledger.parse_delivery_csv(text, default_location=args.location)
            key = args.key or "delivery:" + hashlib.sha256(text.encode()).hexdigest()[:32]
            led.receive_many(key, lines, actor=args.actor, reason=f"delivery {args.file}")
            units = sum(line.quantity for line in lines)
            print(f"received {len(lines)} lines, {units} units (key {key})")
            return 0
        if not args.scan or not args.location or not args.quantity:
            print(
                "doseline ledger receive: give --file, or --scan with --quantity and --location",
                file=sys.stderr,
            )
            return 2
        data = args.scan.replace("<GS>", "\x1d")
        try:
            pack = parse_pack(data)
        except ScanError as exc:
            raise LedgerError(str(exc)) from exc
        # A pack with a serial number is one pack: scanning it again books nothing.
        stamp = "" if pack.serial else datetime.now(UTC).isoformat()
        key = (
            args.key
            or "scan:" + hashlib.sha256(f"{data}|{args.location}|{stamp}".encode()).hexdigest()[:32]
        )
        if led.command_done(key):
            print(f"pack already received (key {key}): nothing booked")
            return 0
        line = led.receive_scan(
            key, data=data, quantity=args.quantity, to_location=args.location, actor=args.actor
        )
        print(
            f"received {line.quantity} of {line.gtin} batch {line.batch} "
            f"(expires {line.expiry}) into {line.location}"
        )
        if args.verify_site and pack.serial:
            return _verify_received(args.verify_site, led, pack, line.location)
        return 0
    except (LedgerError, OSError) as exc:
        print(f"doseline ledger receive: {exc}", file=sys.stderr)
        return 1
    finally:
        led.engine.dispose()


def _verify_received(site_path: str, led: Any, pack: Any, location: str) -> int:
    """Goods-in verification of one serialised pack with the site's verification
    system; an alert blocks the pack (exit 3), an outage leaves it unverified (exit 4)."""
    from controller.async_ledger import AsyncLedger
    from controller.metrics import Metrics
    from controller.verification import (
        HttpVerificationSystem,
        VerificationService,
        VerificationUnavailable,
    )

    v = load_site(site_path).verification
    if not v.enabled:
        print(f"verification is not enabled in {site_path}: pack not verified")
        return 0

    async def run() -> int:
        metrics = Metrics()
        aledger = AsyncLedger(led, metrics)
        service = VerificationService(
            HttpVerificationSystem(v.url, v.timeout_s),
            aledger,
            metrics,
            quarantine_lot_on_alert=v.quarantine_lot_on_alert,
        )
        try:
            result = await service.verify_received(pack, location)
        except VerificationUnavailable as exc:
            print(f"pack {pack.serial} not verified: {exc}", file=sys.stderr)
            return 4
        finally:
            await service.aclose()
            aledger.close()
        if not result.ok:
            print(
                f"pack {pack.serial} BLOCKED by the verification system ({result.code}): "
                f"{result.message}",
                file=sys.stderr,
            )
            return 3
        print(f"pack {pack.serial} verified with the national system")
        return 0

    return asyncio.run(run())


def _cmd_lot_status(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    led = _open_ledger(args.db)
    try:
        result = led.set_lot_status(
            args.gtin, args.batch, args.status, actor=args.actor, reason=args.reason
        )
    except LedgerError as exc:
        print(f"doseline ledger lot-status: {exc}", file=sys.stderr)
        return 1
    finally:
        led.engine.dispose()
    print(
        f"lot {args.gtin}/{args.batch} is {args.status}: open reservations moved "
        f"{result['moved']} units to other lots, released {result['released']}"
    )
    return 0


def _cmd_stocktake(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    counted: dict[tuple[str, str], int] = {}
    for item in args.count:
        try:
            lot, units = item.split("=")
            gtin, batch = lot.split("/", 1)
            counted[(gtin, batch)] = int(units)
        except ValueError:
            print(
                f"doseline ledger stocktake: --count {item!r}: expected GTIN/BATCH=UNITS",
                file=sys.stderr,
            )
            return 2
    led = _open_ledger(args.db)
    try:
        key = args.key or f"stocktake:{args.location}:{sorted(counted.items())}"[:200]
        diff = led.stocktake(
            key,
            location=args.location,
            counted=counted,
            actor=args.actor,
            complete=not args.partial,
        )
    except LedgerError as exc:
        print(f"doseline ledger stocktake: {exc}", file=sys.stderr)
        return 1
    finally:
        led.engine.dispose()
    if not diff:
        print(f"{args.location}: the count agrees with the ledger")
    for lot, units in diff.items():
        print(f"{args.location} {lot}: {units:+d}")
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


def _when(text: str) -> datetime:
    """argparse type: an ISO date (midnight UTC) or date-time (without an offset: UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
    return reports.order_proposal(
        engine, now=now, target_days=args.target_days, lead_time_days=args.lead_time_days
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import reports
    from controller.ledger.engine import make_engine
    from controller.ledger.errors import LedgerError

    engine = make_engine(args.db)
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
    else:
        print(reports.render_text(result))
    return 0


def _cmd_debiting(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from sqlalchemy.exc import SQLAlchemyError

    from controller.ledger import debiting, reports
    from controller.ledger.engine import make_engine
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
    engine = make_engine(args.db or site.ledger.url)
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
    from controller.ledger.engine import make_engine
    from controller.ledger.errors import LedgerError

    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"doseline ledger import-assortment: {args.file}: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(args.db)
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


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _add_report_parsers(sub: Any, ledger_sub: Any) -> None:
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
        p.add_argument("--now", type=_when, help="the moment to report at (default: now, UTC)")

    def add_window(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--since", type=_when, help=f"start, inclusive (default: {default})")
        p.add_argument("--until", type=_when, help="end, exclusive (see --since)")

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

    imp = ledger_sub.add_parser(
        "import-assortment", help="import an assortment and price list (CSV, see docs/reports.md)"
    )
    imp.add_argument("--db", required=True)
    imp.add_argument("file")
    imp.add_argument("--dry-run", action="store_true", help="check and plan, write nothing")
    imp.add_argument("--actor", default=_default_actor(), help="who imports (for the audit)")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=_cmd_import_assortment)


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

    receive = lsub.add_parser("receive", help="book goods in: a GS1 scan or a delivery file")
    receive.add_argument("--db", required=True)
    receive.add_argument("--file", help="delivery CSV: gtin;batch;expiry;quantity[;location]")
    receive.add_argument("--scan", help="GS1 element string of a pack (<GS> for separators)")
    receive.add_argument("--quantity", type=int, help="units received (with --scan)")
    receive.add_argument("--location", help="bin (or the default bin of a delivery file)")
    receive.add_argument("--actor", required=True, help="who receives")
    receive.add_argument("--key", help="idempotency key (default: derived from the input)")
    receive.add_argument(
        "--verify-site",
        help="site file whose verification system verifies a serialised pack (--scan)",
    )
    receive.set_defaults(func=_cmd_receive)

    status = lsub.add_parser("lot-status", help="quarantine, recall or release a lot")
    status.add_argument("--db", required=True)
    status.add_argument("gtin")
    status.add_argument("batch")
    status.add_argument("status", choices=["released", "quarantined", "recalled"])
    status.add_argument("--reason", required=True)
    status.add_argument("--actor", required=True)
    status.set_defaults(func=_cmd_lot_status)

    take = lsub.add_parser("stocktake", help="book a counted location")
    take.add_argument("--db", required=True)
    take.add_argument("--location", required=True)
    take.add_argument("--count", action="append", default=[], metavar="GTIN/BATCH=UNITS")
    take.add_argument(
        "--partial",
        action="store_true",
        help="only the lots counted; others at the location are left as they are",
    )
    take.add_argument("--actor", required=True)
    take.add_argument("--key")
    take.set_defaults(func=_cmd_stocktake)

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

    _add_report_parsers(sub, lsub)
    add_packing_parsers(sub)
    add_cabinet_parsers(sub)
    add_verification_parsers(sub)
    add_purchasing_parsers(sub)
    add_wardsupply_parsers(sub)
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


if __name__ == "__main__":
    sys.exit(main())
