"""`doseline verification ...`: pack verification seen from the ledger.

    doseline verification alerts [--all] [--json]         alerts to follow up
    doseline verification close ID --actor A --note N     close an alert
    doseline verification queue [--all] [--json]          requests waiting for the system
    doseline verification undo --gtin G --serial S --actor A   revert this site's decommission

Each reads the site file (`--config`/`--site`) and the ledger (`--db`, by default the
site file's ledger URL); `undo` also asks the site's verification system.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from controller.cli.common import add_site_options, failed, print_records, site_ledger
from controller.config import Site


def _store(args: argparse.Namespace) -> tuple[Site, Any]:
    from controller.verification import VerificationStore

    site, ledger = site_ledger(args)
    return site, VerificationStore(ledger)


def _fail(command: str, exc: Exception) -> int:
    return failed(f"verification {command}", exc)


def _cmd_alerts(args: argparse.Namespace) -> int:
    _site, store = _store(args)
    try:
        rows = store.alerts(status=None if args.all else "open")
    finally:
        store.ledger.engine.dispose()
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("no verification alerts" if args.all else "no open verification alerts")
    for a in rows:
        print(
            f"#{a.id:<4} {a.raised_at:%Y-%m-%d %H:%M} {a.gtin} serial {a.serial:<20} "
            f"{a.code:<22} {a.status}: {a.message}"
            + (f" [closed by {a.closed_by}: {a.note}]" if a.closed_by else "")
        )
    return 0


def _cmd_close(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, store = _store(args)
    try:
        alert = store.close_alert(args.id, actor=args.actor, note=args.note)
    except LedgerError as exc:
        return _fail("close", exc)
    finally:
        store.ledger.engine.dispose()
    print(f"alert #{alert.id} ({alert.code}, serial {alert.serial}) closed by {alert.closed_by}")
    return 0


def _cmd_queue(args: argparse.Namespace) -> int:
    _site, store = _store(args)
    try:
        rows = store.queue(status=None if args.all else "pending")
    finally:
        store.ledger.engine.dispose()
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("nothing queued" if args.all else "no pending verification requests")
    for q in rows:
        print(
            f"#{q.id:<4} {q.created_at:%Y-%m-%d %H:%M} {q.operation:<12} {q.gtin} serial "
            f"{q.serial:<20} {q.status:<8} attempts {q.attempts}"
            + (f": {q.last_error}" if q.last_error else "")
        )
    return 0


def _cmd_undo(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    site, store = _store(args)
    try:
        row = store.pack(args.gtin, args.serial)
        if row is None:
            return _fail("undo", LookupError(f"unknown pack: {args.gtin} serial {args.serial}"))
        return asyncio.run(_undo(site, store, row.pack, args.actor))
    except LedgerError as exc:
        return _fail("undo", exc)
    finally:
        store.ledger.engine.dispose()


async def _undo(site: Site, store: Any, pack: Any, actor: str) -> int:
    from controller.async_ledger import AsyncLedger
    from controller.metrics import Metrics
    from controller.verification import (
        HttpVerificationSystem,
        VerificationService,
        VerificationUnavailable,
    )

    v = site.verification
    metrics = Metrics()
    aledger = AsyncLedger(store.ledger, metrics)
    service = VerificationService(HttpVerificationSystem(v.url, v.timeout_s), aledger, metrics)
    try:
        result = await service.undo(pack, actor=actor)
    except VerificationUnavailable as exc:
        return _fail("undo", exc)
    finally:
        await service.aclose()
        aledger.close()
    if not result.ok:
        return _fail("undo", RuntimeError(f"refused ({result.code}): {result.message}"))
    print(f"decommission of {pack.gtin} serial {pack.serial} undone: the pack is active again")
    return 0


def add_verification_parsers(sub: Any) -> None:
    verification = sub.add_parser(
        "verification", help="EU falsified-medicines pack verification: alerts, queue, undo"
    )
    vsub = verification.add_subparsers(dest="verification_command", required=True)

    alerts = vsub.add_parser("alerts", help="alerts of the verification system to follow up")
    add_site_options(alerts)
    alerts.add_argument("--all", action="store_true", help="closed alerts too")
    alerts.set_defaults(func=_cmd_alerts)

    close = vsub.add_parser("close", help="close an alert with what was found or done")
    add_site_options(close)
    close.add_argument("id", type=int)
    close.add_argument("--actor", required=True)
    close.add_argument("--note", required=True)
    close.set_defaults(func=_cmd_close)

    queue = vsub.add_parser("queue", help="requests waiting to be sent after an outage")
    add_site_options(queue)
    queue.add_argument("--all", action="store_true", help="sent and failed requests too")
    queue.set_defaults(func=_cmd_queue)

    undo = vsub.add_parser("undo", help="revert this site's decommission of a pack (10 days)")
    add_site_options(undo)
    undo.add_argument("--gtin", required=True)
    undo.add_argument("--serial", required=True)
    undo.add_argument("--actor", required=True, help="who asks (recorded in the audit trail)")
    undo.set_defaults(func=_cmd_undo)
