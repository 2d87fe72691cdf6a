"""`doseline ledger move` and `doseline ledger waste-expired`: the store staff's
everyday tasks (controller.store_tasks), each booked under an idempotency key that is
printed, so the same command can be run again without booking twice."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict
from typing import Any

from controller.cli.common import PROG, add_site_options, site_ledger


def _cmd_move(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError
    from controller.store_tasks import MoveRequest, move_stock, store_places

    site, led = site_ledger(args)
    key = args.key or f"move:{uuid.uuid4()}"
    request = MoveRequest(
        gtin=args.gtin,
        batch=args.batch,
        from_location=args.from_location,
        to_location=args.to_location,
        quantity=args.quantity,
        key=key,
        actor=args.actor,
        reason=args.reason,
    )
    try:
        moved = move_stock(led, store_places(site.store), request)
    except LedgerError as exc:
        print(f"{PROG} ledger move: {exc}", file=sys.stderr)
        return 1
    finally:
        led.engine.dispose()
    if args.json:
        print(json.dumps(asdict(moved), ensure_ascii=False, indent=2))
    elif moved.booked:
        print(
            f"moved {moved.quantity} of {moved.gtin} batch {moved.batch} from "
            f"{moved.from_location} to {moved.to_location} (key {moved.key})"
        )
    else:
        print(f"key {moved.key} was booked before: nothing booked")
    return 0


def _cmd_waste_expired(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError
    from controller.store_tasks import local_today, store_places, waste_expired

    site, led = site_ledger(args)
    key = args.key or f"waste-expired:{uuid.uuid4()}"
    try:
        result = waste_expired(
            led,
            store_places(site.store),
            location=args.location or site.store.code,
            key=key,
            actor=args.actor,
            today=local_today(site.site.timezone),
            dry_run=args.dry_run,
        )
    except LedgerError as exc:
        print(f"{PROG} ledger waste-expired: {exc}", file=sys.stderr)
        return 1
    finally:
        led.engine.dispose()
    if args.json:
        print(json.dumps(asdict(result), default=str, ensure_ascii=False, indent=2))
        return 0
    verb = "would waste" if result.dry_run else "wasted"
    print(f"{verb}: expired before {result.today} in {result.location} (key {result.key})")
    print(f"{'location':<22} {'gtin':<15} {'batch':<20} {'expiry':<11} {'units':>7}")
    for lot in result.wasted:
        print(
            f"{lot.location:<22} {lot.gtin:<15} {lot.batch:<20} {lot.expiry!s:<11} {lot.units:>7}"
        )
    print(f"total: {result.units} units")
    for kept in result.left:
        print(
            f"left: {kept.why}: {kept.units} of {kept.gtin} batch {kept.batch} "
            f"(expired {kept.expiry}) at {kept.location}"
        )
    return 0


def add_store_parsers(lsub: Any) -> None:
    """Adds the store tasks under `doseline ledger`."""
    move = lsub.add_parser("move", help="move free stock of one lot between store locations")
    add_site_options(move)
    move.add_argument("--gtin", required=True)
    move.add_argument("--batch", required=True)
    move.add_argument("--from", dest="from_location", required=True, metavar="LOCATION")
    move.add_argument("--to", dest="to_location", required=True, metavar="LOCATION")
    move.add_argument("--quantity", type=int, required=True, help="units to move")
    move.add_argument("--actor", required=True, help="who moves the stock")
    move.add_argument("--reason", help="why (default: moved between store locations)")
    move.add_argument("--key", help="idempotency key (default: a new one, printed)")
    move.set_defaults(func=_cmd_move)

    waste = lsub.add_parser(
        "waste-expired", help="book the free stock of expired lots in the store as waste"
    )
    add_site_options(waste)
    waste.add_argument(
        "--location", help="a store location and those under it (default: the whole store)"
    )
    waste.add_argument("--dry-run", action="store_true", help="list what would be wasted")
    waste.add_argument("--actor", required=True, help="who wastes the stock")
    waste.add_argument("--key", help="idempotency key (default: a new one, printed)")
    waste.set_defaults(func=_cmd_waste_expired)
