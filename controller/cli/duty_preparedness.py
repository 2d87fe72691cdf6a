"""`doseline duty ...`: the preparedness list (target and floor per product, imported
whole) and crisis periods (decided, scoped, ended, audited).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller.cli.common import PROG, add_site_options, default_actor, print_records, when


def _refused(command: str, exc: Exception) -> int:
    """`doseline duty <command>: <message>` on stderr, every problem on its own line."""
    problems = getattr(exc, "problems", None)
    if problems:
        print(
            f"{PROG} duty {command}: {len(problems)} problem(s), nothing written", file=sys.stderr
        )
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    else:
        print(f"{PROG} duty {command}: {exc}", file=sys.stderr)
    return 1


def _run(command: str, args: argparse.Namespace, work: Callable[[Any], Any]) -> Any:
    """Opens the site's ledger, runs `work(ledger)`; a refusal is printed and returns None."""
    from controller.cli.common import site_ledger
    from controller.ledger import LedgerError

    _, led = site_ledger(args)
    try:
        return work(led)
    except LedgerError as exc:
        args.exit = _refused(command, exc)
        return None
    finally:
        led.engine.dispose()


def _table(head: list[str], rows: list[list[Any]]) -> None:
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _print_list(targets: list[Any]) -> None:
    _table(
        ["gtin", "name", "target", "floor", "list", "by", "at"],
        [
            [
                t.gtin,
                t.name,
                t.target_units,
                t.floor_units,
                t.list_name,
                t.imported_by,
                t.imported_at.isoformat(timespec="seconds"),
            ]
            for t in targets
        ],
    )
    print(f"{len(targets)} product(s) on the preparedness list")


# ------------------------------------------------------------------ preparedness


def _cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _refused("preparedness import", ValueError(f"file: {path}: {exc}"))
    args.exit = 0
    result = _run(
        "preparedness import",
        args,
        lambda led: led.import_preparedness(
            text, list_name=args.list_name or path.name, actor=args.actor, dry_run=args.dry_run
        ),
    )
    if result is None:
        return int(args.exit)
    if args.json:
        print(json.dumps(asdict(result), ensure_ascii=False, indent=2))
        return 0
    verb = "would replace" if result.dry_run else "replaced"
    print(f"{verb} the preparedness list with {result.list_name!r}:")
    for label in ("added", "changed", "removed", "unchanged"):
        gtins = getattr(result, label)
        print(
            f"  {label}: {len(gtins)}"
            + (f" ({', '.join(gtins)})" if gtins and label != "unchanged" else "")
        )
    return 0


def _cmd_set(args: argparse.Namespace) -> int:
    args.exit = 0
    result = _run(
        "preparedness set",
        args,
        lambda led: led.set_preparedness(
            args.gtin,
            target_units=args.target,
            floor_units=args.floor,
            actor=args.actor,
            list_name=args.list_name,
        ),
    )
    if result is None:
        return int(args.exit)
    if args.json:
        print_records([result])
    else:
        print(
            f"{result.gtin} {result.name}: target {result.target_units}, floor {result.floor_units}"
        )
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    args.exit = 0
    done = _run(
        "preparedness remove",
        args,
        lambda led: led.remove_preparedness(args.gtin, actor=args.actor) or True,
    )
    if done is None:
        return int(args.exit)
    print(f"{args.gtin}: taken off the preparedness list")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    args.exit = 0
    targets = _run("preparedness list", args, lambda led: led.preparedness_list())
    if targets is None:
        return int(args.exit)
    if args.json:
        print_records(targets)
    else:
        _print_list(targets)
    return 0


# ------------------------------------------------------------------ crisis


def _print_periods(periods: list[Any]) -> None:
    _table(
        ["id", "starts", "ends", "scope", "in force", "decided by", "reason", "ended by"],
        [
            [
                p.id,
                p.starts_at.isoformat(timespec="minutes"),
                "open" if p.ends_at is None else p.ends_at.isoformat(timespec="minutes"),
                ", ".join([*p.categories, *p.gtins]) or "every product",
                "yes" if p.in_force else "",
                p.decided_by,
                p.reason,
                p.ended_by or "",
            ]
            for p in periods
        ],
    )


def _cmd_crisis_start(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    args.exit = 0
    period = _run(
        "crisis start",
        args,
        lambda led: led.start_crisis(
            starts_at=args.starts_at or datetime.now(UTC),
            ends_at=args.ends_at,
            reason=args.reason,
            categories=args.category or (),
            gtins=args.gtin or (),
            actor=args.actor,
        ),
    )
    if period is None:
        return int(args.exit)
    if args.json:
        print_records([period])
    else:
        _print_periods([period])
    return 0


def _cmd_crisis_end(args: argparse.Namespace) -> int:
    args.exit = 0
    period = _run(
        "crisis end",
        args,
        lambda led: led.end_crisis(
            args.id, ends_at=args.ends_at, reason=args.reason, actor=args.actor
        ),
    )
    if period is None:
        return int(args.exit)
    if args.json:
        print_records([period])
    else:
        _print_periods([period])
    return 0


def _cmd_crisis_list(args: argparse.Namespace) -> int:
    args.exit = 0
    periods = _run(
        "crisis list", args, lambda led: led.crisis_periods(at=args.at, in_force_only=args.in_force)
    )
    if periods is None:
        return int(args.exit)
    if args.json:
        print_records(periods)
    else:
        _print_periods(periods)
    return 0


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
    prep = duty.add_parser(
        "preparedness", help="the preparedness list: target and floor per product"
    )
    psub = prep.add_subparsers(dest="preparedness_command", required=True)

    imp = psub.add_parser(
        "import", help="replace the whole list with a file (gtin;target_units;floor_units)"
    )
    add_site_options(imp)
    imp.add_argument("file", help="the list: UTF-8, ';' separated (docs/stock-duty.md)")
    imp.add_argument("--list-name", help="the list's name (default: the file name)")
    imp.add_argument(
        "--dry-run", action="store_true", help="check and show the changes, write nothing"
    )
    imp.add_argument("--actor", default=default_actor(), help="who imports the list")
    imp.set_defaults(func=_cmd_import)

    put = psub.add_parser("set", help="set one product's target and floor")
    add_site_options(put)
    put.add_argument("gtin")
    put.add_argument("--target", type=int, required=True, help="target, dispensing units")
    put.add_argument("--floor", type=int, required=True, help="floor, dispensing units")
    put.add_argument(
        "--list-name", help="the list's name (default: the product's, or 'set by hand')"
    )
    put.add_argument("--actor", default=default_actor(), help="who decides")
    put.set_defaults(func=_cmd_set)

    rem = psub.add_parser("remove", help="take one product off the list")
    add_site_options(rem, json_output=False)
    rem.add_argument("gtin")
    rem.add_argument("--actor", default=default_actor(), help="who decides")
    rem.set_defaults(func=_cmd_remove)

    lst = psub.add_parser("list", help="the list as it stands")
    add_site_options(lst)
    lst.set_defaults(func=_cmd_list)

    crisis = duty.add_parser("crisis", help="crisis periods: stock may be drawn below the month")
    csub = crisis.add_subparsers(dest="crisis_command", required=True)

    start = csub.add_parser("start", help="record a decided crisis period")
    add_site_options(start)
    start.add_argument("--reason", required=True, help="why (the decision, written out)")
    start.add_argument("--from", dest="starts_at", type=when, help="start (default: now)")
    start.add_argument("--until", dest="ends_at", type=when, help="decided end (default: open)")
    start.add_argument("--category", action="append", help="a category it covers (repeatable)")
    start.add_argument("--gtin", action="append", help="a product it covers (repeatable)")
    start.add_argument("--actor", default=default_actor(), help="who decided")
    start.set_defaults(func=_cmd_crisis_start)

    end = csub.add_parser("end", help="end a crisis period")
    add_site_options(end)
    end.add_argument("id", type=int)
    end.add_argument("--reason", required=True, help="why it ends")
    end.add_argument("--at", dest="ends_at", type=when, help="when it ends (default: now)")
    end.add_argument("--actor", default=default_actor(), help="who decided")
    end.set_defaults(func=_cmd_crisis_end)

    lst = csub.add_parser("list", help="every crisis period")
    add_site_options(lst)
    lst.add_argument("--at", type=when, help="judge 'in force' at this time (default: now)")
    lst.add_argument("--in-force", action="store_true", help="only those in force then")
    lst.set_defaults(func=_cmd_crisis_list)
