"""Reports as text and as JSON data: kept apart from the computing, so the CLI, the API
and the metrics format the same numbers each their own way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, is_dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from controller.ledger.assortment import ImportReport
from controller.ledger.reports.balances import BalanceReport
from controller.ledger.reports.compliance import ComplianceSummary
from controller.ledger.reports.consumption import ConsumptionReport
from controller.ledger.reports.cover import CoverReport, CoverRow
from controller.ledger.reports.expiry import ExpiryReport
from controller.ledger.reports.proposal import OrderProposal
from controller.ledger.reports.service import ServiceLevelReport
from controller.ledger.reports.waste import WasteReport


def to_jsonable(value: Any) -> Any:
    """A report as plain JSON data: Decimal as a string (exact), dates in ISO 8601."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _sek(value: Decimal) -> str:
    return f"{value:,.2f}".replace(",", " ")


def _days(value: float | None) -> str:
    return "no consumption" if value is None else f"{value:.1f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f} %"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Aligned columns; a column whose header ends in `>` is right-aligned (numbers)."""
    right = [h.endswith(">") for h in headers]
    titles = [h.rstrip(">") for h in headers]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(t)] + [len(r[i]) for r in cells]) for i, t in enumerate(titles)]

    def fmt(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(titles), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(r) for r in cells)
    return "\n".join(lines)


def _render_balances(r: BalanceReport) -> str:
    amounts = ["on hand>", "reserved>", "available>", "value SEK>"]
    body: list[list[Any]]
    if r.by == "location":
        head = ["location", "kind"]
        body = [[x.location, x.location_kind] for x in r.rows]
    elif r.by == "product":
        head = ["gtin", "article>", "name", "unit"]
        body = [[x.gtin, x.article, x.name, x.unit] for x in r.rows]
    else:
        head = ["gtin", "name", "batch", "expiry", "status"]
        body = [[x.gtin, x.name, x.batch, x.expiry, x.status] for x in r.rows]
    for cells, x in zip(body, r.rows, strict=True):
        cells.extend([x.on_hand, x.reserved, x.available, _sek(x.value)])
    total: list[Any] = [
        "total",
        *[""] * (len(head) - 1),
        r.on_hand,
        r.reserved,
        r.available,
        _sek(r.value),
    ]
    return table(head + amounts, [*body, total])


def _render_expiry(r: ExpiryReport) -> str:
    body = [
        [
            x.expiry,
            x.days_left,
            "EXPIRED" if x.expired else "",
            x.gtin,
            x.name,
            x.batch,
            x.status,
            x.location,
            x.quantity,
            _sek(x.value),
        ]
        for x in r.rows
    ]
    head = ["expiry", "days>", "flag", "gtin", "name", "batch", "status", "location", "units>"]
    out = table([*head, "value SEK>"], body)
    return (
        f"{out}\n\nexpiring by {r.today + timedelta(days=r.within_days)}: {r.units} units, "
        f"{_sek(r.value)} SEK; already expired: {r.expired_units} units, "
        f"{_sek(r.expired_value)} SEK"
    )


_CHANNEL_ORDER = ("pouches", "cabinets", "drug rooms", "other")


def _ext_per_day(x: CoverRow) -> str:
    """External use per day on the basis window ("" when there is none)."""
    units, days = (x.external_90d, 90) if x.basis == "90d" else (x.external_30d, 30)
    return f"{units / days:.3f}" if units else ""


def _render_cover(r: CoverReport) -> str:
    body = []
    for x in r.rows:
        exempt = ""
        if x.exemption is not None:
            overdue = ", REVIEW OVERDUE" if x.exemption.review_overdue else ""
            level = "" if x.exemption.level_days is None else f" to {x.exemption.level_days} d"
            exempt = f"exempt{level} until review {x.exemption.review_date}{overdue}"
        if x.scope != "in":
            exempt = f"out of scope: {x.scope}" + (f"; {exempt}" if exempt else "")
        body.append(
            [
                x.gtin,
                x.name,
                x.category,
                x.on_hand,
                x.usable,
                f"{x.usable_rotating}/{x.usable_preparedness}",
                f"{x.mean_daily_30d:.3f}",
                f"{x.mean_daily_90d:.3f}",
                _days(x.cover_days_30d),
                _days(x.cover_days_90d),
                x.basis,
                "-" if x.level_days is None else x.level_days,
                x.status,
                _ext_per_day(x),
                _days(x.whole_cover_days) if x.whole_cover_days != x.cover_days else "",
                "/".join(str(x.use_30d_by_channel.get(c, 0)) for c in _CHANNEL_ORDER),
                exempt,
                _prep_levels(x),
            ]
        )
    head = ["gtin", "name", "category", "on hand>", "usable>", "rotating/prep>"]
    head += ["per day 30d>", "per day 90d>"]
    head += ["cover 30d>", "cover 90d>", "basis", "judged on d>", "meets"]
    head += ["ext/day>", "whole cover>"]
    head += ["30d pouches/cabinets/drug rooms/other>", "exemption", "preparedness"]
    out = table(head, body)
    crisis = [x.gtin for x in r.rows if x.in_crisis]
    if crisis:
        out += (
            f"\nCRISIS at {r.now.isoformat()}: {len(crisis)} product(s) "
            "may be drawn below the month"
        )
    return out


def _prep_levels(x: CoverRow) -> str:
    """A listed product's floor and target, flagged when its preparedness stock is below
    the floor; empty when the product is not on the list."""
    if x.preparedness_target is None:
        return ""
    flag = "BELOW FLOOR " if x.below_floor else ""
    return f"{flag}floor {x.preparedness_floor} / target {x.preparedness_target}"


def _render_compliance(r: ComplianceSummary) -> str:
    body = [
        [
            c.category,
            c.products,
            c.assessed,
            c.meeting,
            _pct(c.share),
            len(c.exempted),
            len(c.no_consumption),
            len(c.out_of_scope),
        ]
        for c in r.categories
    ]
    body.append(["total", r.products, r.assessed, r.meeting, _pct(r.share), "", "", ""])
    head = ["category", "products>", "assessed>", f"≥ {r.obligation_days} d>", "share>"]
    out = [table([*head, "exempt>", "no consumption>", "out of scope>"], body)]
    for period in r.crisis:
        scope = ", ".join([*period.categories, *period.gtins]) or "every product"
        end = "open" if period.ends_at is None else period.ends_at.isoformat()
        out.append(
            f"CRISIS  {period.id}: since {period.starts_at.isoformat()} (until {end}), "
            f"{scope}: {period.reason} (decided by {period.decided_by})"
        )
    for c in r.categories:
        for e in c.exempted:
            overdue = " (REVIEW OVERDUE)" if e.review_overdue else ""
            level = "" if e.level_days is None else f" (reduced to {e.level_days} days)"
            out.append(
                f"exempt  {c.category}: {e.gtin} {e.name}{level}: {e.reason}; "
                f"review {e.review_date}{overdue}"
            )
        for s in c.out_of_scope:
            out.append(f"out     {c.category}: {s.gtin} {s.name}: {s.reason}")
        for p in c.short:
            out.append(f"short   {c.category}: {p.gtin} {p.name}")
        for p in c.below_month_in_crisis:
            out.append(f"below month (crisis)  {c.category}: {p.gtin} {p.name}")
        for p in c.no_consumption:
            out.append(f"no use  {c.category}: {p.gtin} {p.name}")
    if r.exemptions_review_overdue:
        out.append(f"exemptions with the review overdue: {r.exemptions_review_overdue}")
    prep = r.preparedness
    out.append(
        f"\npreparedness stock: {prep.units} units, {_sek(prep.value)} SEK, "
        f"{len(prep.products)} products"
    )
    if prep.products:
        out.append(
            table(
                ["gtin", "name", "units>", "value SEK>"],
                [[p.gtin, p.name, p.units, _sek(p.value)] for p in prep.products],
            )
        )
    if prep.listed:
        out.append(
            f"\npreparedness list: {prep.products_listed} products, {prep.below_floor} below floor"
        )
        out.append(
            table(
                ["gtin", "name", "target>", "floor>", "stock>", "below floor"],
                [
                    [
                        p.gtin,
                        p.name,
                        p.target,
                        p.floor,
                        p.stock,
                        "BELOW FLOOR" if p.below_floor else "",
                    ]
                    for p in prep.listed
                ],
            )
        )
    return "\n".join(out)


def _render_waste(r: WasteReport) -> str:
    by_reason = table(
        ["reason", "units>", "value SEK>"],
        [[x.reason_code, x.units, _sek(x.value)] for x in r.by_reason]
        + [["total", r.units, _sek(r.value)]],
    )
    by_product = table(
        ["gtin", "name", "units>", "value SEK>", "reasons"],
        [
            [
                x.gtin,
                x.name,
                x.units,
                _sek(x.value),
                ", ".join(f"{w.reason_code} {w.units}" for w in x.reasons),
            ]
            for x in r.by_product
        ],
    )
    return f"waste {r.since.isoformat()} .. {r.until.isoformat()}\n{by_reason}\n\n{by_product}"


def _render_service(r: ServiceLevelReport) -> str:
    body = [
        [s.source, s.lines, s.full, s.short, s.units_requested, s.units_filled, _pct(s.share)]
        for s in r.by_source
    ]
    body.append(
        ["total", r.lines, r.full, r.short, r.units_requested, r.units_filled, _pct(r.share)]
    )
    out = table(["source", "lines>", "full>", "short>", "requested>", "filled>", "share>"], body)
    verdict = (
        "no order lines" if r.meets_target is None else ("meets" if r.meets_target else "BELOW")
    )
    return f"{out}\n\ntarget {_pct(r.target)}: {verdict}"


def _render_consumption(r: ConsumptionReport) -> str:
    out = table(
        ["month", "article>", "gtin", "name", "atc", "units>", "unit", "value SEK>"],
        [
            [x.month, x.article, x.gtin, x.name, x.atc, x.quantity, x.unit, _sek(x.value)]
            for x in r.rows
        ],
    )
    return f"{out}\n\ntotal {r.units} units, {_sek(r.value)} SEK ({r.timezone} months)"


def _render_proposal(r: OrderProposal) -> str:
    body = [
        [
            x.gtin,
            x.name,
            x.basis,
            f"{x.mean_daily:.3f}",
            x.usable,
            x.target_units,
            x.shortfall,
            x.pack_size,
            x.packs,
            x.order_units,
            _sek(x.value),
        ]
        for x in r.rows
    ]
    head = ["gtin", "name", "basis", "per day>", "usable>", "target>", "shortfall>"]
    out = table([*head, "pack>", "packs>", "units>", "value SEK>"], body)
    return (
        f"{out}\n\n{r.target_days} + {r.lead_time_days} days: {r.packs} packs, {_sek(r.value)} SEK"
    )


def _render_import(r: ImportReport) -> str:
    out = []
    if r.problems:
        out.append(
            table(
                ["line>", "field", "value", "problem"],
                [[p.line, p.field, p.value, p.message] for p in r.problems],
            )
        )
        out.append(f"\n{len(r.problems)} problem(s) in {r.rows} rows: nothing was written")
        return "\n".join(out)
    for c in r.changes:
        if c.action == "update":
            what = ", ".join(f"{f.field} {f.old} -> {f.new}" for f in c.changes)
            out.append(f"update  line {c.line}: {c.gtin} article {c.article}: {what}")
        elif c.action == "insert":
            out.append(f"insert  line {c.line}: {c.gtin} article {c.article}")
    state = "dry run, nothing written" if r.dry_run else "written"
    out.append(
        f"{r.rows} rows: {r.inserted} inserted, {r.updated} updated, {r.unchanged} unchanged "
        f"({state})"
    )
    return "\n".join(out)


_RENDERERS: dict[type, Callable[[Any], str]] = {
    BalanceReport: _render_balances,
    ExpiryReport: _render_expiry,
    CoverReport: _render_cover,
    ComplianceSummary: _render_compliance,
    WasteReport: _render_waste,
    ServiceLevelReport: _render_service,
    ConsumptionReport: _render_consumption,
    OrderProposal: _render_proposal,
    ImportReport: _render_import,
}


def render_text(report: Any) -> str:
    """A report as readable text with aligned columns (what the CLI prints)."""
    return _RENDERERS[type(report)](report)
