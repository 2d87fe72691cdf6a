"""`doseline ledger ...`: the ledger's own tools: verify its invariants, list stock,
book goods in, change a lot's status, book a stocktake, and create the schema and the
site's master data."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from controller.cli.common import DEFAULT_SITE, open_engine, open_ledger
from controller.config import load_site


def _cmd_verify(args: argparse.Namespace) -> int:
    from controller.ledger import verify_ledger

    engine = open_engine(args.db)
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


def _cmd_receive(args: argparse.Namespace) -> int:
    import hashlib
    from datetime import UTC, datetime

    from controller.gs1 import ScanError, parse_pack
    from controller.ledger import Ledger, LedgerError

    led = open_ledger(args.db)
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

    led = open_ledger(args.db)
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
    led = open_ledger(args.db)
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

    engine = open_engine(args.db)
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


def add_ledger_parsers(sub: Any) -> Any:
    """`doseline ledger ...`; gives the ledger's subparsers, for the commands other
    groups add under it."""
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
    return lsub
