"""`doseline orders ...`, `doseline jobs ...` and `doseline pack`: dose orders in,
reviewed, planned into jobs and packed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from controller.cli.common import site_ledger
from controller.config import Site, load_site

DEFAULT_SITE = "config/demo.yaml"


def _store(args: argparse.Namespace) -> tuple[Site, Any]:
    from controller.packing.store import PackingStore

    site, ledger = site_ledger(args)
    return site, PackingStore(ledger)


def _day(text: str | None) -> date:
    if text is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"--day: {text!r} is not a date (YYYY-MM-DD)") from None


def _cmd_submit(args: argparse.Namespace) -> int:
    from controller.intake import Catalogue, IntakeError, message_format, parse_orders
    from controller.ledger import LedgerError

    site, store = _store(args)
    try:
        payload = Path(args.file).read_bytes()
        orders = parse_orders(
            payload,
            catalogue=Catalogue.from_site(site),
            salt=site.pseudonym_salt(),
            default_ward=args.ward or site.orders.default_ward,
            today=_day(args.today),
        )
        result = store.submit(
            orders,
            source=message_format(payload),
            actor=args.actor,
            review_required=site.orders.review_required,
        )
    except OSError as exc:
        print(f"doseline orders submit: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except IntakeError as exc:
        print(f"doseline orders submit: {args.file}: {exc.source} refused", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except LedgerError as exc:
        print(f"doseline orders submit: {exc}", file=sys.stderr)
        return 1
    finally:
        store.ledger.engine.dispose()
    print(
        f"{len(result.added)} orders added ({result.status}), "
        f"{len(result.duplicates)} already on file"
    )
    if result.added:
        print("  ids: " + " ".join(str(i) for i in result.added))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    _site, store = _store(args)
    try:
        records = store.orders(status=args.status, day=_day(args.day) if args.day else None)
    finally:
        store.ledger.engine.dispose()
    print(
        f"{'id':>6}  {'status':<9} {'ward':<8} {'patient':<14} {'gtin':<14} units  "
        f"{'times':<12} period"
    )
    for r in records:
        o = r.order
        times = ",".join(f"{t:%H:%M}" for t in o.times)
        print(
            f"{r.id:>6}  {r.status:<9} {o.ward:<8} {o.patient:<14} {o.gtin:<14} {o.units:>5}  "
            f"{times:<12} {o.start}..{o.end}"
        )
    print(f"{len(records)} orders")
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, store = _store(args)
    approve = args.orders_command == "approve"
    try:
        count = store.review(args.ids, approve=approve, actor=args.by, note=args.note or "")
    except LedgerError as exc:
        print(f"doseline orders {args.orders_command}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.ledger.engine.dispose()
    print(f"{count} orders {'approved' if approve else 'rejected'} by {args.by}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from controller.packing.planner import (
        capabilities,
        describe,
        fit_to_machines,
        substitution_groups,
    )

    site, store = _store(args)
    day = _day(args.day)
    try:
        store.ledger.create_schema()
        jobs = store.plan(
            day,
            fit=lambda jobs: fit_to_machines(jobs, capabilities(site), substitution_groups(site)),
            actor=args.actor,
        )
    finally:
        store.ledger.engine.dispose()
    print(f"{len(jobs)} new jobs for {day}")
    for job in jobs:
        packers = ", ".join(job.packers) or "none: by hand"
        print(f"  {job.job_id}: {len(job.pouches)} pouches, packers {packers}")
        for line in describe(job):
            print(f"      {line}")
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    _site, store = _store(args)
    try:
        records = store.jobs(
            states=[args.state] if args.state else None, day=_day(args.day) if args.day else None
        )
    finally:
        store.ledger.engine.dispose()
    for r in records:
        print(
            f"{r.job_id:<28} {r.state:<10} {r.packer or '-':<10} pouches "
            f"{r.good}/{len(r.job.machine_pouches())} good, {r.rejected} rejected  {r.reason}"
        )
    print(f"{len(records)} jobs")
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, store = _store(args)
    try:
        store.cancel(args.job_id, actor=args.by, reason=args.reason)
    except LedgerError as exc:
        print(f"doseline jobs cancel: {exc}", file=sys.stderr)
        return 1
    finally:
        store.ledger.engine.dispose()
    print(f"job {args.job_id} cancelled by {args.by}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from controller.app import run_packing

    site = load_site(args.site)
    return asyncio.run(
        run_packing(
            site,
            ledger_url=args.db,
            day=_day(args.day) if args.day else None,
            plan=not args.no_plan,
            timeout_s=args.timeout,
        )
    )


def add_packing_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--site", default=DEFAULT_SITE)
        p.add_argument("--db", default=None, help="ledger URL (default from the site file)")

    orders = sub.add_parser("orders", help="dose orders: submit, list, approve, reject")
    osub = orders.add_subparsers(dest="orders_command", required=True)
    submit = osub.add_parser("submit", help="file a FHIR (JSON) or HL7 v2 (RDE^O11) message")
    common(submit)
    submit.add_argument("file")
    submit.add_argument("--actor", required=True, help="who or what sends the message")
    submit.add_argument("--ward", help="ward for orders whose message names none")
    submit.add_argument("--today", help="the local date (default: today)")
    submit.set_defaults(func=_cmd_submit)
    listing = osub.add_parser("list", help="orders on file")
    common(listing)
    listing.add_argument("--status", choices=["pending", "approved", "rejected"])
    listing.add_argument("--day", help="only orders active on this day")
    listing.set_defaults(func=_cmd_list)
    for name, help_text in (
        ("approve", "approve pending orders (pharmacist review)"),
        ("reject", "reject pending orders, with the reason"),
    ):
        p = osub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("ids", type=int, nargs="+")
        p.add_argument("--by", required=True, help="the reviewing pharmacist")
        p.add_argument("--note", required=name == "reject", help="why")
        p.set_defaults(func=_cmd_review)

    jobs = sub.add_parser("jobs", help="packing jobs: plan, list, cancel")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    plan = jsub.add_parser("plan", help="turn a day's approved orders into packing jobs")
    common(plan)
    plan.add_argument("--day", help="the day to pack (default: today)")
    plan.add_argument("--actor", default="planner")
    plan.set_defaults(func=_cmd_plan)
    jlist = jsub.add_parser("list", help="jobs and their state")
    common(jlist)
    jlist.add_argument("--day")
    jlist.add_argument("--state")
    jlist.set_defaults(func=_cmd_jobs)
    cancel = jsub.add_parser("cancel", help="cancel a job that has not started")
    common(cancel)
    cancel.add_argument("job_id")
    cancel.add_argument("--by", required=True)
    cancel.add_argument("--reason", required=True)
    cancel.set_defaults(func=_cmd_cancel)

    pack = sub.add_parser(
        "pack", help="pack: recover unfinished jobs, plan the day, run the packers until done"
    )
    common(pack)
    pack.add_argument("--day", help="plan this day first (default: today)")
    pack.add_argument("--no-plan", action="store_true", help="only run jobs already planned")
    pack.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    pack.set_defaults(func=_cmd_pack)
