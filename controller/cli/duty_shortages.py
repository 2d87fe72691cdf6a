"""`doseline duty ...`: supplier shortage notices with substitutes, rationing of scarce
stock among wards, and licences for unlicensed products.

`shortage record|update|close|list`, `ration start|end|list|draws` and
`licence record|revoke|list|check`. Lists print a table, or JSON with `--json`; a
refused input exits 1 with `doseline duty <command>: <message>` on stderr and writes
nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from controller.cli.common import PROG, add_site_options, day, default_actor, print_records

Handler = Callable[[argparse.Namespace, Any, Any], int]


def _run(name: str, handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Opens the site and its ledger, runs the handler, and prints a refusal as
    `doseline duty <name>: <message>` (exit 1)."""

    def call(args: argparse.Namespace) -> int:
        from controller.cli.common import site_ledger
        from controller.duty_rules.rationing import RationingError
        from controller.ledger import LedgerError

        site, led = site_ledger(args)
        try:
            return handler(args, site, led)
        except (LedgerError, RationingError) as exc:
            print(f"{PROG} duty {name}: {exc}", file=sys.stderr)
            return 1
        finally:
            led.engine.dispose()

    return call


def _today(site: Any) -> Any:
    from controller.store_tasks import local_today

    return local_today(site.site.timezone)


def _wards(site: Any, field: str, wards: list[str]) -> list[str]:
    from controller.duty_rules.rationing import check_wards

    return check_wards(field, wards, site.ward_codes())


# ------------------------------------------------------------------ shortages


def _print_shortages(rows: list[Any]) -> None:
    print(
        f"{'id':>4} {'gtin':<15} {'name':<32} {'notice':<14} {'expected end':<12} "
        f"{'status':<7} substitutes (free units in store)"
    )
    for s in rows:
        subs = ", ".join(
            f"{x.gtin}" + ("" if x.free_units is None else f" ({x.free_units})")
            for x in s.substitutes
        )
        print(
            f"{s.id:>4} {s.gtin:<15} {s.name[:32]:<32} {s.notice_ref[:14]:<14} "
            f"{s.expected_end!s:<12} {s.status:<7} {subs or '-'}"
        )


def _shortage_record(args: argparse.Namespace, site: Any, led: Any) -> int:
    s = led.record_shortage(
        args.gtin,
        notice_ref=args.notice_ref,
        supplier=args.supplier,
        expected_end=args.expected_end,
        substitutes=args.substitute or [],
        note=args.note or "",
        actor=args.actor,
        today=_today(site),
    )
    print(f"shortage {s.id}: {s.gtin} {s.name}, notice {s.notice_ref}, open")
    return 0


def _shortage_update(args: argparse.Namespace, site: Any, led: Any) -> int:
    subs = [] if args.no_substitutes else args.substitute
    s = led.update_shortage(
        args.id,
        expected_end=args.expected_end,
        substitutes=subs,
        note=args.note,
        actor=args.actor,
        today=_today(site),
    )
    print(f"shortage {s.id}: expected end {s.expected_end}, substitutes "
          f"{', '.join(x.gtin for x in s.substitutes) or 'none'}")  # fmt: skip
    return 0


def _shortage_close(args: argparse.Namespace, site: Any, led: Any) -> int:
    s = led.close_shortage(args.id, actor=args.actor)
    print(f"shortage {s.id}: closed by {s.closed_by}")
    return 0


def _shortage_list(args: argparse.Namespace, site: Any, led: Any) -> int:
    rows = led.shortages(status=None if args.all else "open", free_at=site.store.all_bins)
    if args.json:
        print_records(rows)
    else:
        _print_shortages(rows)
    return 0


# ------------------------------------------------------------------ rationing


def _ration_start(args: argparse.Namespace, site: Any, led: Any) -> int:
    wards = _wards(site, "priority_wards", args.priority_ward or [])
    r = led.start_rationing(
        args.gtin,
        cap_per_ward_day=args.cap,
        priority_wards=wards,
        reason=args.reason,
        shortage_id=args.shortage,
        actor=args.actor,
    )
    print(
        f"rule {r.id}: {r.gtin} {r.name} rationed at {r.cap_per_ward_day} units per ward "
        f"and day; priority wards: {', '.join(r.priority_wards) or 'none'}"
    )
    return 0


def _ration_end(args: argparse.Namespace, site: Any, led: Any) -> int:
    r = led.end_rationing(args.id, actor=args.actor)
    print(f"rule {r.id}: {r.gtin} rationing ended at {r.ends_at:%Y-%m-%d %H:%M} UTC")
    return 0


def _ration_list(args: argparse.Namespace, site: Any, led: Any) -> int:
    rows = led.rationing_rules(in_force=not args.all)
    if args.json:
        print_records(rows)
        return 0
    print(f"{'rule':>4} {'gtin':<15} {'name':<32} {'cap/day':>8} {'ends':<16} priority wards")
    for r in rows:
        ends = "in force" if r.ends_at is None else f"{r.ends_at:%Y-%m-%d %H:%M}"
        print(
            f"{r.id:>4} {r.gtin:<15} {r.name[:32]:<32} {r.cap_per_ward_day:>8} {ends:<16} "
            f"{', '.join(r.priority_wards) or '-'}"
        )
    return 0


def _ration_draws(args: argparse.Namespace, site: Any, led: Any) -> int:
    rows = led.ration_draws(gtin=args.gtin, ward=args.ward, day=args.day)
    if args.json:
        print_records(rows)
        return 0
    print(f"{'day':<11} {'ward':<10} {'gtin':<15} {'units':>7} {'source':<7} ref")
    for d in rows:
        print(f"{d.day!s:<11} {d.ward:<10} {d.gtin:<15} {d.units:>7} {d.source:<7} {d.ref}")
    return 0


# ------------------------------------------------------------------ licences


def _holder(args: argparse.Namespace, site: Any) -> tuple[str, str]:
    if args.patient:
        return "patient", args.patient
    return "ward", _wards(site, "holder", [args.ward])[0]


def _licence_record(args: argparse.Namespace, site: Any, led: Any) -> int:
    kind, holder = _holder(args, site)
    lic = led.record_licence(
        args.gtin,
        holder_kind=kind,
        holder=holder,
        number=args.number,
        valid_from=args.valid_from,
        valid_to=args.valid_to,
        fee_sek=args.fee,
        actor=args.actor,
    )
    product = next((p for p in site.catalogue if p.gtin == lic.gtin), None)
    print(
        f"licence {lic.number}: {lic.gtin} {lic.name} for {kind} {holder}, "
        f"{lic.valid_from} to {lic.valid_to}, fee {lic.fee_sek} SEK"
    )
    if product is not None and not product.licence:
        print(f"note: {lic.gtin} is not a licence product in the catalogue; it is not checked")
    return 0


def _licence_revoke(args: argparse.Namespace, site: Any, led: Any) -> int:
    lic = led.revoke_licence(args.number, actor=args.actor, reason=args.reason or "")
    print(f"licence {lic.number}: revoked by {lic.revoked_by}")
    return 0


def _licence_list(args: argparse.Namespace, site: Any, led: Any) -> int:
    rows = led.licences(gtin=args.gtin, holder=args.holder)
    if args.json:
        print_records(rows)
        return 0
    print(
        f"{'number':<14} {'gtin':<15} {'holder':<16} {'from':<11} {'to':<11} {'fee SEK':>10} status"
    )
    today = _today(site)
    for x in rows:
        status = (
            "revoked" if x.revoked_at else ("valid" if x.valid_on(today) else "not valid today")
        )
        print(
            f"{x.number:<14} {x.gtin:<15} {x.holder_kind + ' ' + x.holder:<16} "
            f"{x.valid_from!s:<11} {x.valid_to!s:<11} {x.fee_sek:>10} {status}"
        )
    print(f"total fees: {sum((x.fee_sek for x in rows), start=0)} SEK")
    return 0


def _licence_check(args: argparse.Namespace, site: Any, led: Any) -> int:
    on = args.on or _today(site)
    ward = _wards(site, "ward", [args.ward])[0]
    lic = led.valid_licence(args.gtin, ward, on, patient=args.patient)
    if lic is None:
        who = f"patient {args.patient}" if args.patient else f"ward {ward}"
        print(
            f"{PROG} duty licence check: licence: no valid licence for {args.gtin} for {who}"
            f" on {on}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print_records([lic])
    else:
        print(f"valid: licence {lic.number} ({lic.holder_kind} {lic.holder}), to {lic.valid_to}")
    return 0


# ------------------------------------------------------------------ parsers


def _common(p: argparse.ArgumentParser, *, json_output: bool = False, actor: bool = True) -> None:
    add_site_options(p, json_output=json_output)
    if actor:
        p.add_argument("--actor", default=default_actor(), help="who decides (audit trail)")


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
    shortage = duty.add_parser("shortage", help="supplier shortage notices and substitutes")
    ssub = shortage.add_subparsers(dest="shortage_command", required=True)
    p = ssub.add_parser("record", help="record a supplier's shortage notice")
    _common(p)
    p.add_argument("gtin")
    p.add_argument("--notice-ref", required=True, help="the supplier's reference of the notice")
    p.add_argument("--supplier")
    p.add_argument("--expected-end", type=day, help="when the supplier expects it to end")
    p.add_argument("--substitute", action="append", metavar="GTIN", help="repeat for several")
    p.add_argument("--note")
    p.set_defaults(func=_run("shortage record", _shortage_record))
    p = ssub.add_parser("update", help="change an open shortage's expected end or substitutes")
    _common(p)
    p.add_argument("id", type=int)
    p.add_argument("--expected-end", type=day)
    p.add_argument("--substitute", action="append", metavar="GTIN", help="the whole new list")
    p.add_argument("--no-substitutes", action="store_true", help="clear the substitutes")
    p.add_argument("--note")
    p.set_defaults(func=_run("shortage update", _shortage_update))
    p = ssub.add_parser("close", help="close a shortage (the product is delivered again)")
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(func=_run("shortage close", _shortage_close))
    p = ssub.add_parser("list", help="open shortages, with the substitutes' free stock")
    _common(p, json_output=True, actor=False)
    p.add_argument("--all", action="store_true", help="closed ones too")
    p.set_defaults(func=_run("shortage list", _shortage_list))

    ration = duty.add_parser("ration", help="rationing of scarce stock among wards")
    rsub = ration.add_subparsers(dest="ration_command", required=True)
    p = rsub.add_parser("start", help="ration a product: a cap per ward and day")
    _common(p)
    p.add_argument("gtin")
    p.add_argument("--cap", type=int, required=True, help="units per ward and local day")
    p.add_argument("--priority-ward", action="append", metavar="WARD", help="served first")
    p.add_argument("--reason", required=True)
    p.add_argument("--shortage", type=int, help="the shortage notice it answers")
    p.set_defaults(func=_run("ration start", _ration_start))
    p = rsub.add_parser("end", help="end a rationing rule")
    _common(p)
    p.add_argument("id", type=int)
    p.set_defaults(func=_run("ration end", _ration_end))
    p = rsub.add_parser("list", help="rationing rules in force")
    _common(p, json_output=True, actor=False)
    p.add_argument("--all", action="store_true", help="ended ones too")
    p.set_defaults(func=_run("ration list", _ration_list))
    p = rsub.add_parser("draws", help="what the wards were granted of rationed products")
    _common(p, json_output=True, actor=False)
    p.add_argument("--gtin")
    p.add_argument("--ward")
    p.add_argument("--day", type=day)
    p.set_defaults(func=_run("ration draws", _ration_draws))

    licence = duty.add_parser("licence", help="licences for unlicensed products")
    lsub = licence.add_subparsers(dest="licence_command", required=True)
    p = lsub.add_parser("record", help="record a licence for a ward or a patient")
    _common(p)
    p.add_argument("gtin")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--ward")
    who.add_argument("--patient", help="the patient's pseudonym")
    p.add_argument("--number", required=True, help="the licence's number")
    p.add_argument("--from", dest="valid_from", type=day, required=True)
    p.add_argument("--to", dest="valid_to", type=day, required=True)
    p.add_argument("--fee", required=True, help="the fee paid, SEK")
    p.set_defaults(func=_run("licence record", _licence_record))
    p = lsub.add_parser("revoke", help="revoke a licence")
    _common(p)
    p.add_argument("number")
    p.add_argument("--reason")
    p.set_defaults(func=_run("licence revoke", _licence_revoke))
    p = lsub.add_parser("list", help="licences with their fees (finance)")
    _common(p, json_output=True, actor=False)
    p.add_argument("--gtin")
    p.add_argument("--holder", help="a ward or a patient's pseudonym")
    p.set_defaults(func=_run("licence list", _licence_list))
    p = lsub.add_parser("check", help="is there a valid licence (exit 1 if not)")
    _common(p, json_output=True, actor=False)
    p.add_argument("gtin")
    p.add_argument("--ward", required=True)
    p.add_argument("--patient", help="the patient's pseudonym: a patient licence is needed")
    p.add_argument("--on", type=day, help="the day (default: today at the site)")
    p.set_defaults(func=_run("licence check", _licence_check))
