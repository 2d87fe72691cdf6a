"""`doseline purchasing ...`: supplier orders and deliveries (docs/purchasing.md).

    doseline purchasing suppliers                         the suppliers and their products
    doseline purchasing proposal [--target-days N]        what is missing, per supplier
    doseline purchasing create --actor A [--out DIR]      orders from the proposal + files
    doseline purchasing list [--all]                      open orders
    doseline purchasing show NUMBER [--csv FILE]          one order (and its order file)
    doseline purchasing receive NUMBER --file F --note DN --actor A [--location BIN]
    doseline purchasing close NUMBER --actor A --note N   cancel what is still open
    doseline purchasing reliability                       how each supplier delivers

Each reads the site file (`--config`/`--site`) and the ledger (`--db`, by default the
site file's ledger URL). `receive` verifies serialised packs with the site's
verification system when it is enabled.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from controller.cli.common import add_site_options, print_records, refused, site_ledger
from controller.config import Site


def _open(args: argparse.Namespace) -> tuple[Site, Any]:
    from controller.purchasing import PurchasingStore

    site, ledger = site_ledger(args)
    return site, PurchasingStore(ledger)


def _fail(command: str, exc: Exception) -> int:
    return refused(f"purchasing {command}", exc)


def _print_order(order: Any) -> None:
    print(
        f"{order.number}  {order.supplier} ({order.supplier_name})  {order.status}  "
        f"expected {order.expected_on}  {order.value} SEK  by {order.created_by}"
    )
    for ln in order.lines:
        extra = []
        if ln.received_units:
            extra.append(f"received {ln.received_units}")
        if ln.back_order_units:
            extra.append(f"back order {ln.back_order_units}")
        if ln.short_units:
            extra.append(f"short {ln.short_units}")
        print(
            f"  {ln.line_no:>3} {ln.gtin} {ln.name[:40]:<40} {ln.packs:>4} x {ln.pack_size:<4}"
            f" = {ln.units:>6}  {ln.status:<10} {', '.join(extra)}"
        )


def _cmd_suppliers(args: argparse.Namespace) -> int:
    _site, store = _open(args)
    try:
        rows = store.suppliers()
    finally:
        store.ledger.engine.dispose()
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("no suppliers on file (the site file's suppliers: list, then ledger init)")
    for s in rows:
        print(f"{s.code:<12} {s.name:<40} lead time {s.lead_time_days} d, {s.products} products")
    return 0


def _cmd_proposal(args: argparse.Namespace) -> int:
    from controller.ledger.reports import order_proposal

    site, store = _open(args)
    try:
        proposal = order_proposal(
            store.ledger, now=datetime.now(UTC), target_days=_target(args, site)
        )
    finally:
        store.ledger.engine.dispose()
    rows = [r for r in proposal.rows if r.packs > 0]
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("nothing to order: usable stock and open orders cover the horizon")
    for supplier in sorted({r.supplier or "" for r in rows}):
        print(supplier or "(no supplier on file: cannot be ordered)")
        for r in (r for r in rows if (r.supplier or "") == supplier):
            print(
                f"  {r.gtin} {r.name[:40]:<40} usable {r.usable:>6}  on order {r.on_order:>6}"
                f"  need {r.shortfall:>6}  -> {r.packs} x {r.pack_size}  {r.value} SEK"
            )
    return 0


def _target(args: argparse.Namespace, site: Site) -> int:
    return int(args.target_days or site.purchasing.target_days)


def _cmd_create(args: argparse.Namespace) -> int:
    from controller.purchasing import PurchasingError, order_csv

    site, store = _open(args)
    try:
        orders, unassigned = store.create_orders(
            now=datetime.now(UTC),
            actor=args.actor,
            target_days=_target(args, site),
            supplier=args.supplier,
            note=args.note,
        )
    except PurchasingError as exc:
        return _fail("create", exc)
    finally:
        store.ledger.engine.dispose()
    out = Path(args.out or site.purchasing.orders_dir)
    files = []
    if orders:
        out.mkdir(parents=True, exist_ok=True)
        for order in orders:
            path = out / f"{order.number}.csv"
            path.write_text(order_csv(order, site.site.name), encoding="utf-8")
            files.append(path)
    if args.json:
        print_records(orders)
    else:
        if not orders:
            print("nothing to order: usable stock and open orders cover the horizon")
        for order, path in zip(orders, files, strict=True):
            _print_order(order)
            print(f"  order file: {path}")
    for gtin in unassigned:
        print(f"warning: {gtin} is needed but has no supplier on file", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    _site, store = _open(args)
    try:
        orders = store.orders(status=None if args.all else "open")
    finally:
        store.ledger.engine.dispose()
    if args.json:
        print_records(orders)
        return 0
    if not orders:
        print("no open purchase orders" if not args.all else "no purchase orders")
    for order in orders:
        _print_order(order)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from controller.purchasing import PurchasingError, order_csv

    site, store = _open(args)
    try:
        order = store.order(args.number)
    except PurchasingError as exc:
        return _fail("show", exc)
    finally:
        store.ledger.engine.dispose()
    if args.csv:
        Path(args.csv).write_text(order_csv(order, site.site.name), encoding="utf-8")
    if args.json:
        print_records([order])
    else:
        _print_order(order)
    return 0


def _cmd_receive(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError
    from controller.purchasing import parse_delivery_csv

    site, store = _open(args)
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        store.ledger.engine.dispose()
        return _fail("receive", OSError(f"--file: {args.file!r}: {exc.strerror}"))
    try:
        rows = parse_delivery_csv(text)
        receipt = asyncio.run(_receive(site, store, args, rows))
    except LedgerError as exc:
        return _fail("receive", exc)
    finally:
        store.ledger.engine.dispose()
    if args.json:
        print_records([receipt])
        return 0
    print_receipt(receipt)
    return 0


async def _receive(site: Site, store: Any, args: argparse.Namespace, rows: Any) -> Any:
    from controller.async_ledger import AsyncLedger
    from controller.metrics import Metrics
    from controller.purchasing.goods_in import receive_delivery
    from controller.verification import HttpVerificationSystem, VerificationService

    metrics = Metrics()
    aledger = AsyncLedger(store.ledger, metrics)
    verification = None
    v = site.verification
    if v.enabled:
        verification = VerificationService(
            HttpVerificationSystem(v.url, v.timeout_s),
            aledger,
            metrics,
            quarantine_lot_on_alert=v.quarantine_lot_on_alert,
        )
    try:
        return await receive_delivery(
            aledger,
            store,
            verification,
            args.number,
            args.note,
            rows,
            actor=args.actor,
            now=datetime.now(UTC),
            location=args.location or site.receiving_location(),
            min_shelf_life_days=site.ledger.min_shelf_life_days,
        )
    finally:
        if verification is not None:
            await verification.aclose()
        aledger.close()


def print_receipt(receipt: Any) -> None:
    from controller.purchasing.report import receipt_lines

    for line in receipt_lines(receipt):
        print(line)


def _cmd_close(args: argparse.Namespace) -> int:
    from controller.purchasing import PurchasingError

    _site, store = _open(args)
    try:
        order = store.close(args.number, actor=args.actor, note=args.note, now=datetime.now(UTC))
    except PurchasingError as exc:
        return _fail("close", exc)
    finally:
        store.ledger.engine.dispose()
    _print_order(order)
    return 0


def _cmd_reliability(args: argparse.Namespace) -> int:
    site, store = _open(args)
    today = datetime.now(ZoneInfo(site.site.timezone)).date()
    try:
        rows = store.reliability(today=today)
    finally:
        store.ledger.engine.dispose()
    if args.json:
        print_records(rows)
        return 0

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    for r in rows:
        lead = "-" if r.mean_lead_days is None else f"{r.mean_lead_days:.1f} d"
        print(
            f"{r.supplier:<12} {r.orders} orders, {r.lines_due} lines due: on time in full "
            f"{pct(r.otif)}, in full {pct(r.in_full_rate)}, fill rate {pct(r.fill_rate)}, "
            f"{r.lines_late} late, mean lead time {lead}"
        )
    return 0


def add_purchasing_parsers(sub: Any) -> None:
    purchasing = sub.add_parser(
        "purchasing", help="supplier orders from the proposal, deliveries, supplier reliability"
    )
    psub = purchasing.add_subparsers(dest="purchasing_command", required=True)

    p = psub.add_parser("suppliers", help="the suppliers and how many products each supplies")
    add_site_options(p)
    p.set_defaults(func=_cmd_suppliers)

    p = psub.add_parser("proposal", help="what is missing, per supplier, net of open orders")
    add_site_options(p)
    p.add_argument("--target-days", type=int, default=None)
    p.set_defaults(func=_cmd_proposal)

    p = psub.add_parser("create", help="purchase orders from the proposal, with order files")
    add_site_options(p)
    p.add_argument("--actor", required=True, help="who orders (recorded in the audit trail)")
    p.add_argument("--target-days", type=int, default=None)
    p.add_argument("--supplier", default=None, help="only this supplier's order")
    p.add_argument("--note", default=None)
    p.add_argument("--out", default=None, help="directory for the order files")
    p.set_defaults(func=_cmd_create)

    p = psub.add_parser("list", help="open purchase orders")
    add_site_options(p)
    p.add_argument("--all", action="store_true", help="completed and cancelled orders too")
    p.set_defaults(func=_cmd_list)

    p = psub.add_parser("show", help="one purchase order")
    add_site_options(p)
    p.add_argument("number")
    p.add_argument("--csv", default=None, help="also write its order file here")
    p.set_defaults(func=_cmd_show)

    p = psub.add_parser("receive", help="book a delivery file against its order")
    add_site_options(p)
    p.add_argument("number")
    p.add_argument("--file", required=True, help="the supplier's delivery file (CSV)")
    p.add_argument("--note", required=True, help="the delivery note number")
    p.add_argument("--actor", required=True)
    p.add_argument("--location", default=None, help="bin for rows that name none")
    p.set_defaults(func=_cmd_receive)

    p = psub.add_parser("close", help="cancel what is still open on an order")
    add_site_options(p, json_output=False)
    p.add_argument("number")
    p.add_argument("--actor", required=True)
    p.add_argument("--note", required=True)
    p.set_defaults(func=_cmd_close)

    p = psub.add_parser("reliability", help="on time in full and fill rate per supplier")
    add_site_options(p)
    p.set_defaults(func=_cmd_reliability)
