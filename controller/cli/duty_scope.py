"""`doseline duty ...`: what is out of the duty's scope (a product or a category, with its
reason; durable devices and protective equipment) and exemptions as a lifecycle (create,
review, change, revoke).

Every command writes through the ledger's audited transaction with `--actor` (default:
the logged-in user) as the actor; a refused input exits 1 with the reason on stderr and
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from controller.cli.common import PROG, add_site_options, day, default_actor, site_ledger

if TYPE_CHECKING:
    from controller.ledger import Ledger
    from controller.ledger.duty_scope import ExemptionRecord, ScopeEntry

SCOPE_REASONS = ("individual_patient", "dental_care", "manufacturing_material")
CATEGORIES = ("drug", "medical_device", "special_food", "protective_equipment")


def _run(args: argparse.Namespace, command: str, work: Callable[[Ledger], int]) -> int:
    """Runs `work` on the site's ledger; a refusal is one line on stderr, exit 1."""
    from controller.ledger import LedgerError

    _site, led = site_ledger(args)
    try:
        return work(led)
    except LedgerError as exc:
        print(f"{PROG} duty {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        led.engine.dispose()


def _json(value: Any) -> None:
    print(json.dumps(value, default=str, ensure_ascii=False, indent=2))


def _scope_table(rows: list[ScopeEntry]) -> None:
    from controller.ledger.reports.render import table

    if not rows:
        print("nothing is out of the duty's scope")
        return
    print(
        table(
            ["subject", "name", "reason", "decided by", "decided at", "note"],
            [
                [
                    r.gtin or f"category {r.category}",
                    r.name or "",
                    r.reason,
                    r.decided_by,
                    f"{r.decided_at:%Y-%m-%d %H:%M}",
                    r.note,
                ]
                for r in rows
            ],
        )
    )


def _exemption_table(rows: list[ExemptionRecord]) -> None:
    from controller.ledger.reports.render import table

    if not rows:
        print("no exemptions")
        return
    body = []
    for r in rows:
        review = f"{r.review_date}" + (" REVIEW OVERDUE" if r.review_overdue else "")
        body.append(
            [
                r.gtin,
                r.name,
                r.status,
                "removed" if r.level_days is None else f"{r.level_days} d",
                review,
                r.decided_by,
                r.reason,
            ]
        )
    print(table(["gtin", "name", "status", "level", "review by", "decided by", "reason"], body))


def _exemption_detail(r: ExemptionRecord) -> None:
    level = "out of the figures" if r.level_days is None else f"reduced to {r.level_days} days"
    lines = [
        ("product", f"{r.gtin} {r.name} ({r.category})"),
        ("status", r.status),
        ("level", level),
        ("reason", r.reason),
        ("risk assessment", r.risk_assessment),
        ("measures", r.measures or "-"),
        ("review by", f"{r.review_date}" + (" (REVIEW OVERDUE)" if r.review_overdue else "")),
        ("decided", f"{r.decided_by}, {r.decided_at:%Y-%m-%d %H:%M}"),
    ]
    if r.reviewed_at is not None:
        lines.append(("reviewed", f"{r.reviewed_by}, {r.reviewed_at:%Y-%m-%d %H:%M}"))
    if r.revoked_at is not None:
        lines.append(("revoked", f"{r.revoked_by}, {r.revoked_at:%Y-%m-%d %H:%M}"))
        lines.append(("revoke reason", r.revoke_reason or ""))
    for label, text in lines:
        print(f"{label + ':':<17} {text}")


def _show(args: argparse.Namespace, record: ExemptionRecord) -> int:
    if args.json:
        _json(asdict(record))
    else:
        _exemption_detail(record)
    return 0


# ------------------------------------------------------------------ scope


def _cmd_scope_set(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        entry = led.set_out_of_scope(
            gtin=args.gtin,
            category=args.category,
            reason=args.reason,
            note=args.note,
            actor=args.actor,
        )
        if args.json:
            _json(asdict(entry))
        else:
            _scope_table([entry])
        return 0

    return _run(args, "scope set", work)


def _cmd_scope_clear(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        led.clear_out_of_scope(
            gtin=args.gtin, category=args.category, actor=args.actor, note=args.note
        )
        subject = args.gtin or f"category {args.category}"
        if args.json:
            _json({"cleared": subject})
        else:
            print(f"{subject} is back in the duty's scope")
        return 0

    return _run(args, "scope clear", work)


def _cmd_scope_list(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        rows = led.scope_list()
        if args.json:
            _json([asdict(r) for r in rows])
        else:
            _scope_table(rows)
        return 0

    return _run(args, "scope list", work)


def _cmd_durability(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        led.set_durability(args.gtin, args.durability, actor=args.actor)
        if args.json:
            _json({"gtin": args.gtin, "durability": args.durability})
        else:
            print(f"{args.gtin} is {args.durability}")
        return 0

    return _run(args, "durability", work)


# ------------------------------------------------------------- exemptions


def _cmd_create(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        record = led.create_exemption(
            args.gtin,
            reason=args.reason,
            risk_assessment=args.risk_assessment,
            measures=args.measures,
            review_date=args.review_date,
            level_days=args.level_days,
            decided_by=args.decided_by,
            actor=args.actor,
        )
        return _show(args, record)

    return _run(args, "exemption create", work)


def _cmd_review(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        record = led.review_exemption(
            args.gtin, review_date=args.review_date, actor=args.actor, note=args.note
        )
        return _show(args, record)

    return _run(args, "exemption review", work)


def _cmd_change(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {}
    for name in ("reason", "risk_assessment", "measures", "review_date", "decided_by"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.no_level:
        fields["level_days"] = None
    elif args.level_days is not None:
        fields["level_days"] = args.level_days

    def work(led: Ledger) -> int:
        return _show(args, led.change_exemption(args.gtin, actor=args.actor, **fields))

    return _run(args, "exemption change", work)


def _cmd_revoke(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        return _show(args, led.revoke_exemption(args.gtin, reason=args.reason, actor=args.actor))

    return _run(args, "exemption revoke", work)


def _cmd_list(args: argparse.Namespace) -> int:
    def work(led: Ledger) -> int:
        rows = led.exemptions_list(include_revoked=args.all)
        if args.json:
            _json([asdict(r) for r in rows])
        else:
            _exemption_table(rows)
        return 0

    return _run(args, "exemption list", work)


def _cmd_show(args: argparse.Namespace) -> int:
    return _run(args, "exemption show", lambda led: _show(args, led.exemption(args.gtin)))


# ------------------------------------------------------------------ parsers


def _actor(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor", default=default_actor(), help="who decides (default: the logged-in user)"
    )


def _subject(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--gtin", help="one product")
    which.add_argument("--category", choices=CATEGORIES, help="a whole category")


def _int_days(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
    scope = duty.add_parser("scope", help="products and categories out of the duty's scope")
    ssub = scope.add_subparsers(dest="scope_command", required=True)
    p = ssub.add_parser("set", help="mark a product or a category out of scope")
    add_site_options(p)
    _subject(p)
    p.add_argument("--reason", required=True, choices=SCOPE_REASONS)
    p.add_argument("--note", default="", help="free text shown beside the reason")
    _actor(p)
    p.set_defaults(func=_cmd_scope_set)
    p = ssub.add_parser("clear", help="bring a product or a category back into scope")
    add_site_options(p)
    _subject(p)
    p.add_argument("--note", default="", help="why (written to the audit trail)")
    _actor(p)
    p.set_defaults(func=_cmd_scope_clear)
    p = ssub.add_parser("list", help="what is out of scope")
    add_site_options(p)
    p.set_defaults(func=_cmd_scope_list)

    p = duty.add_parser(
        "durability", help="a device or protective equipment: consumable or durable"
    )
    add_site_options(p)
    p.add_argument("gtin")
    p.add_argument("durability", choices=("consumable", "durable"))
    _actor(p)
    p.set_defaults(func=_cmd_durability)

    ex = duty.add_parser("exemption", help="exemptions: create, review, change, revoke")
    esub = ex.add_subparsers(dest="exemption_command", required=True)
    p = esub.add_parser("create", help="exempt a product, or lower its level")
    add_site_options(p)
    p.add_argument("gtin")
    p.add_argument("--reason", required=True, help="the special reason, written out")
    p.add_argument("--risk-assessment", required=True, help="the risk assessment")
    p.add_argument("--measures", required=True, help="the measures taken against the risk")
    p.add_argument("--review-date", type=day, required=True, help="YYYY-MM-DD, after today")
    p.add_argument(
        "--level-days", type=_int_days, help="a reduced level in days (0-29) instead of none"
    )
    p.add_argument("--decided-by", help="who decided (default: the actor)")
    _actor(p)
    p.set_defaults(func=_cmd_create)
    p = esub.add_parser("review", help="record a review and the next review date")
    add_site_options(p)
    p.add_argument("gtin")
    p.add_argument("--review-date", type=day, required=True, help="the next review, YYYY-MM-DD")
    p.add_argument("--note", default="", help="what the review found")
    _actor(p)
    p.set_defaults(func=_cmd_review)
    p = esub.add_parser("change", help="change an active exemption")
    add_site_options(p)
    p.add_argument("gtin")
    p.add_argument("--reason")
    p.add_argument("--risk-assessment")
    p.add_argument("--measures")
    p.add_argument("--review-date", type=day)
    level = p.add_mutually_exclusive_group()
    level.add_argument("--level-days", type=_int_days, help="a reduced level in days (0-29)")
    level.add_argument(
        "--no-level", action="store_true", help="no level: the product is out of the figures"
    )
    p.add_argument("--decided-by", help="who decided (default: the actor)")
    _actor(p)
    p.set_defaults(func=_cmd_change)
    p = esub.add_parser("revoke", help="revoke an exemption: the product counts in full")
    add_site_options(p)
    p.add_argument("gtin")
    p.add_argument("--reason", required=True, help="why it is revoked, written out")
    _actor(p)
    p.set_defaults(func=_cmd_revoke)
    p = esub.add_parser("list", help="the exemptions")
    add_site_options(p)
    p.add_argument("--all", action="store_true", help="the revoked ones too")
    p.set_defaults(func=_cmd_list)
    p = esub.add_parser("show", help="one product's exemption")
    add_site_options(p)
    p.add_argument("gtin")
    p.set_defaults(func=_cmd_show)
