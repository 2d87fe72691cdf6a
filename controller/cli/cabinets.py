"""`doseline cabinets ...`: ward cabinets seen from the ledger.

Each subcommand reads the site file (`--config`, or `--site` as elsewhere) and the
ledger (`--db`, by default the site file's ledger URL). New subcommands register in
`add_cabinet_parsers` with `_common` so they take the same options.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from controller.cli.common import (
    add_site_options,
    day,
    failed,
    print_records,
    site_engine,
    site_ledger,
)
from controller.config import Site

if TYPE_CHECKING:
    from controller.cabinets.par import ParSuggestion


def _fail(command: str, exc: Exception) -> int:
    return failed(f"cabinets {command}", exc)


def _fmt(value: float | None, places: int = 1) -> str:
    return "-" if value is None else f"{value:.{places}f}"


def _render(rows: list[ParSuggestion], site: Site, header: str) -> str:
    ward = {c.name: c.ward for c in site.cabinets}
    lines = [header]
    cabinet = None
    for r in rows:
        if r.cabinet != cabinet:
            cabinet = r.cabinet
            lines.append("")
            lines.append(f"{cabinet} (ward {ward.get(cabinet, '?')})")
            lines.append(
                f"  {'pocket':<6} {'product':<28} {'mean/d':>6} {'peak':>5} {'cover':>6}  "
                f"{'min/max now':>11} -> {'suggested':<9}  note"
            )
        now = f"{r.current_min}/{r.current_max}"
        new = f"{r.suggested_min}/{r.suggested_max}"
        arrow = "->" if r.changed else "=="
        lines.append(
            f"  P{r.pocket:02d}    {r.name[:28]:<28} {r.mean_daily:>6.1f} {r.peak_daily:>5} "
            f"{_fmt(r.cover_days_current):>6}  {now:>11} {arrow} {new:<9}  {r.note}".rstrip()
        )
    if not rows:
        lines.append("no cabinet pockets in the site file")
    return "\n".join(lines)


def _cmd_par(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.cabinets.par import ParError, site_pockets, suggest_par

    site, engine = site_engine(args)
    if args.cabinet and args.cabinet not in {c.name for c in site.cabinets}:
        print(
            f"doseline cabinets par: --cabinet: unknown cabinet {args.cabinet!r}", file=sys.stderr
        )
        engine.dispose()
        return 2
    # By default the last whole day: today is not over, and would lower the mean.
    until = args.until or datetime.now(ZoneInfo(site.site.timezone)).date() - timedelta(days=1)
    try:
        rows = suggest_par(
            engine,
            site_pockets(site, args.cabinet),
            days=args.days,
            until=until,
            lead_time_days=args.lead_days,
            days_of_supply=args.supply_days,
            service_z=args.service_z,
            tz=site.site.timezone,
        )
    except ParError as exc:
        print(f"doseline cabinets par: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"doseline cabinets par: ledger: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.json:
        out: dict[str, Any] = {
            "until": until.isoformat(),
            "days": args.days,
            "lead_time_days": args.lead_days,
            "days_of_supply": args.supply_days,
            "service_z": args.service_z,
            "timezone": site.site.timezone,
            "pockets": [asdict(r) | {"changed": r.changed} for r in rows],
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    first = until - timedelta(days=args.days - 1)
    print(
        _render(
            rows,
            site,
            f"par levels from net use {first}..{until} ({args.days} days, {site.site.timezone}); "
            f"lead time {args.lead_days:g} d, supply {args.supply_days:g} d, "
            f"z {args.service_z:g}",
        )
    )
    return 0


def _cmd_discrepancies(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, led = site_ledger(args, shelf_life=True)
    try:
        rows = led.discrepancies(status=None if args.all else "open", location=args.cabinet)
    except LedgerError as exc:
        return _fail("discrepancies", exc)
    finally:
        led.engine.dispose()
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("no discrepancies" if args.all else "no open discrepancies")
    for d in rows:
        print(
            f"#{d.id:<4} {d.raised_at:%Y-%m-%d %H:%M} {d.location:<14} {d.gtin} "
            f"{d.source:<8} device {d.device_value}, ledger {d.ledger_value} "
            f"({d.difference:+d}) {d.status}: {d.detail}"
            + (f" [resolved by {d.resolved_by}: {d.resolution_note}]" if d.resolved_by else "")
        )
    return 0


def _cmd_resolve(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, led = site_ledger(args, shelf_life=True)
    try:
        d = led.resolve_discrepancy(args.id, actor=args.actor, note=args.note)
    except LedgerError as exc:
        return _fail("resolve", exc)
    finally:
        led.engine.dispose()
    print(f"discrepancy #{d.id} at {d.location} resolved by {d.resolved_by}")
    return 0


def _cmd_holds(args: argparse.Namespace) -> int:
    from controller.ledger import LedgerError

    _site, led = site_ledger(args, shelf_life=True)
    try:
        rows = led.holds(location=args.cabinet, status=None if args.all else "held")
    except LedgerError as exc:
        return _fail("holds", exc)
    finally:
        led.engine.dispose()
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("no stock on hold")
    for h in rows:
        print(
            f"#{h.id:<4} {h.location:<14} {h.gtin} batch {h.batch} exp {h.expiry} "
            f"{h.on_hand_now} on hand ({h.quantity_at_hold} when held) {h.status}: {h.reason}"
        )
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    """A pharmacist releases or wastes every lot held at a cabinet; the running
    controller unlocks the pockets (and sets wasted pockets' counts) at its next poll."""
    from controller.ledger import LedgerError

    site, led = site_ledger(args, shelf_life=True)
    try:
        if args.cabinet not in {c.name for c in site.cabinets}:
            return _fail(
                args.command_name, ValueError(f"--cabinet: unknown cabinet {args.cabinet!r}")
            )
        held = led.holds(location=args.cabinet, status="held")
        if not held:
            print(f"nothing is held at {args.cabinet}")
            return 0
        for h in held:
            if args.command_name == "release":
                led.release_hold(h.id, actor=args.actor, note=args.note)
            elif h.on_hand_now:
                led.waste_hold(f"waste-hold:{h.id}", h.id, actor=args.actor, note=args.note)
            else:
                led.release_hold(
                    h.id, actor=args.actor, note=f"{args.note} (nothing left to waste)"
                )
            print(f"#{h.id} {h.location} batch {h.batch}: {h.on_hand_now} {args.command_name}d")
    except LedgerError as exc:
        return _fail(args.command_name, exc)
    finally:
        led.engine.dispose()
    return 0


def _cmd_refills(args: argparse.Namespace) -> int:
    from controller.cabinets.refill_store import OPEN_REFILL_STATES, RefillStore

    _site, led = site_ledger(args, shelf_life=True)
    try:
        store = RefillStore(led)
        rows = store.refills(states=None if args.all else OPEN_REFILL_STATES)
    finally:
        led.engine.dispose()
    if args.cabinet:
        rows = [r for r in rows if r.cabinet == args.cabinet]
    if args.json:
        print_records(rows)
        return 0
    if not rows:
        print("no open refills" if not args.all else "no refills")
    for r in rows:
        print(
            f"{r.refill_id:<36} pocket {r.pocket:<3} {r.gtin} x{r.quantity:<4} "
            f"{'urgent ' if r.urgent else ''}{r.state:<9} due {r.due_at:%Y-%m-%d %H:%M}"
            + (f" list {r.pick_list}" if r.pick_list else "")
            + (f" ({r.cancel_reason})" if r.cancel_reason else "")
        )
    return 0


def add_cabinet_parsers(sub: Any) -> None:
    cabinets = sub.add_parser(
        "cabinets", help="ward cabinets: refills, discrepancies, quarantine, par levels"
    )
    csub = cabinets.add_subparsers(dest="cabinets_command", required=True)

    par = csub.add_parser(
        "par", help="suggest pocket min/max from the days of supply the ward really uses"
    )
    add_site_options(par, json_output=False)
    par.add_argument("--days", type=int, default=28, help="days of history to use (default 28)")
    par.add_argument(
        "--lead-days",
        dest="lead_days",
        type=float,
        default=1.0,
        help="days from asking for a refill to its arrival (default 1)",
    )
    par.add_argument(
        "--supply-days",
        dest="supply_days",
        type=float,
        default=3.0,
        help="days of use a refill brings beyond the lead time (default 3)",
    )
    par.add_argument(
        "--service-z",
        dest="service_z",
        type=float,
        default=1.65,
        help="safety stock in standard deviations of daily use (default 1.65, about 95%%)",
    )
    par.add_argument(
        "--until", type=day, default=None, help="last day of history (default: yesterday)"
    )
    par.add_argument("--cabinet", help="only this cabinet")
    par.add_argument("--json", action="store_true", help="print JSON instead of a table")
    par.set_defaults(func=_cmd_par)

    disc = csub.add_parser("discrepancies", help="differences between cabinets and the ledger")
    add_site_options(disc, json_output=False)
    disc.add_argument("--cabinet", help="only this cabinet")
    disc.add_argument("--all", action="store_true", help="resolved ones too")
    disc.add_argument("--json", action="store_true", help="print JSON")
    disc.set_defaults(func=_cmd_discrepancies)

    resolve = csub.add_parser("resolve", help="close a discrepancy once it is explained")
    add_site_options(resolve, json_output=False)
    resolve.add_argument("id", type=int, help="discrepancy number (from `discrepancies`)")
    resolve.add_argument("--actor", required=True, help="who resolves it")
    resolve.add_argument("--note", required=True, help="what was found")
    resolve.set_defaults(func=_cmd_resolve)

    holds = csub.add_parser("holds", help="stock quarantined at cabinets (temperature)")
    add_site_options(holds, json_output=False)
    holds.add_argument("--cabinet", help="only this cabinet")
    holds.add_argument("--all", action="store_true", help="released and wasted ones too")
    holds.add_argument("--json", action="store_true", help="print JSON")
    holds.set_defaults(func=_cmd_holds)

    for name, text in (
        ("release", "a pharmacist releases the stock held at a cabinet"),
        ("waste", "a pharmacist wastes the stock held at a cabinet"),
    ):
        decide = csub.add_parser(name, help=text)
        add_site_options(decide, json_output=False)
        decide.add_argument("--cabinet", required=True, help="the cabinet")
        decide.add_argument("--actor", required=True, help="the pharmacist")
        decide.add_argument("--note", required=True, help="the reason for the decision")
        decide.set_defaults(func=_cmd_decide, command_name=name)

    refills = csub.add_parser("refills", help="pocket refills and their pick lists")
    add_site_options(refills, json_output=False)
    refills.add_argument("--cabinet", help="only this cabinet")
    refills.add_argument("--all", action="store_true", help="confirmed and cancelled ones too")
    refills.add_argument("--json", action="store_true", help="print JSON")
    refills.set_defaults(func=_cmd_refills)
