"""Consumption per customer and workplace: net units and value per ward (with its
workplace id), product and calendar month, for national follow-up of sales and use.

Use is attributed to wards by ward debiting's own rule (controller.ledger.debiting),
so this export and the finance export always agree. Volumes recorded for units the
pharmacy does not supply (external_use) appear as customers of their own: the unit's
name, no ward and no workplace id. The CSV layout is in docs/reports.md ("workplace").
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TextIO

from sqlalchemy import select

from controller.ledger.debiting import UNASSIGNED, parse_month, ward_debiting
from controller.ledger.errors import LedgerError
from controller.ledger.reports.common import _load_products, _money
from controller.ledger.reports.render import table
from controller.ledger.schema import external_use, products
from controller.ledger.source import Source, engine_of

MAX_MONTHS = 36
WORKPLACE_CSV_HEADER = (
    "month",
    "workplace_id",
    "ward",
    "cost_centre",
    "customer",
    "article",
    "gtin",
    "name",
    "atc",
    "unit",
    "quantity",
    "value_sek",
)


@dataclass(frozen=True)
class Workplace:
    """A ward as the export names it (built from the site file by the caller)."""

    ward: str
    name: str
    cost_centre: str
    workplace_id: str  # "" when the site file gives none
    customer: str  # the hospital it belongs to ("" when not known)


@dataclass(frozen=True)
class WorkplaceRow:
    month: str
    workplace_id: str
    ward: str  # "" for an external unit; "unassigned" for use no ward can be named for
    cost_centre: str
    customer: str  # the hospital, or the external unit's name
    article: int
    gtin: str
    name: str
    atc: str
    unit: str
    quantity: int  # net units (negative when more came back than was used)
    value: Decimal  # SEK: wards at the lots' purchase prices, external units at the
    # catalogue price


@dataclass(frozen=True)
class WorkplaceReport:
    since: str  # first month, YYYY-MM
    until: str  # last month, included
    timezone: str
    rows: tuple[WorkplaceRow, ...]
    units: int
    value: Decimal
    unassigned_units: int


def _months(since: date, until: date) -> list[date]:
    if until < since:
        raise LedgerError(f"until: {until:%Y-%m} is before since {since:%Y-%m}")
    out = [since]
    while out[-1] < until:
        d = out[-1]
        out.append(date(d.year + d.month // 12, d.month % 12 + 1, 1))
        if len(out) > MAX_MONTHS:
            raise LedgerError(f"until: {until:%Y-%m} is more than {MAX_MONTHS} months after since")
    return out


def workplace_consumption(
    source: Source,
    *,
    since: str | date,
    until: str | date,
    tz: str,
    workplaces: Mapping[str, Workplace],
    cabinets: Mapping[str, str] | None = None,
) -> WorkplaceReport:
    """Net consumption per workplace, product and month for the calendar months from
    `since` to `until` (both included; YYYY-MM or any day of the month) in `tz`.
    `workplaces` maps a ward code to its workplace; `cabinets` maps a cabinet or drug
    room location to its ward, as for ward debiting."""
    first = parse_month(since) if isinstance(since, str) else since.replace(day=1)
    last = parse_month(until) if isinstance(until, str) else until.replace(day=1)
    months = _months(first, last)
    rows: list[WorkplaceRow] = []
    with engine_of(source).connect() as conn:
        prods = {p.gtin: p for p in _load_products(conn).values()}
        labels = [f"{m:%Y-%m}" for m in months]
        external = conn.execute(
            select(
                external_use.c.month,
                external_use.c.unit_name,
                products.c.gtin,
                external_use.c.quantity,
            )
            .join(products, products.c.id == external_use.c.product_id)
            .where(external_use.c.month.in_(labels))
        ).all()
    for month in months:
        report = ward_debiting(source, month=month, tz=tz, wards=workplaces, cabinets=cabinets)
        per: dict[tuple[str, str], tuple[int, Decimal]] = defaultdict(lambda: (0, Decimal(0)))
        for line in report.lines:
            units, value = per[(line.ward, line.gtin)]
            per[(line.ward, line.gtin)] = (units + line.units, value + line.value)
        for (ward, gtin), (units, value) in per.items():
            if units == 0 and value == 0:
                continue
            place = workplaces.get(ward)
            p = prods[gtin]
            rows.append(
                WorkplaceRow(
                    month=report.month,
                    workplace_id=place.workplace_id if place else "",
                    ward=ward,
                    cost_centre=place.cost_centre if place else "",
                    customer=place.customer if place else "",
                    article=p.article,
                    gtin=p.gtin,
                    name=p.name,
                    atc=p.atc,
                    unit=p.unit,
                    quantity=units,
                    value=value,
                )
            )
    for month_label, unit_name, gtin, quantity in external:
        if int(quantity) == 0:
            continue
        p = prods[gtin]
        rows.append(
            WorkplaceRow(
                month=month_label,
                workplace_id="",
                ward="",
                cost_centre="",
                customer=unit_name,
                article=p.article,
                gtin=p.gtin,
                name=p.name,
                atc=p.atc,
                unit=p.unit,
                quantity=int(quantity),
                value=_money(int(quantity) * p.unit_price),
            )
        )
    rows.sort(
        key=lambda r: (
            r.month,
            r.ward == "",
            r.ward == UNASSIGNED,
            r.ward,
            r.customer,
            r.name,
            r.gtin,
        )
    )
    return WorkplaceReport(
        since=labels[0],
        until=labels[-1],
        timezone=tz,
        rows=tuple(rows),
        units=sum(r.quantity for r in rows),
        value=sum((r.value for r in rows), Decimal("0.00")),
        unassigned_units=sum(r.quantity for r in rows if r.ward == UNASSIGNED),
    )


def write_workplace_csv(report: WorkplaceReport, file: TextIO) -> int:
    """Writes the export (WORKPLACE_CSV_HEADER); returns the number of data lines.
    UTF-8, `;` between fields, LF line ends, one header line, a decimal point in
    value_sek (two decimals), quotes only where needed. Open the file with newline=""."""
    writer = csv.writer(file, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(WORKPLACE_CSV_HEADER)
    for r in report.rows:
        writer.writerow(
            [
                r.month,
                r.workplace_id,
                r.ward,
                r.cost_centre,
                r.customer,
                r.article,
                r.gtin,
                r.name,
                r.atc,
                r.unit,
                r.quantity,
                f"{r.value:.2f}",
            ]
        )
    return len(report.rows)


def workplace_csv_text(report: WorkplaceReport) -> str:
    buffer = io.StringIO(newline="")
    write_workplace_csv(report, buffer)
    return buffer.getvalue()


def render_workplace(r: WorkplaceReport) -> str:
    body = [
        [x.month, x.workplace_id, x.ward, x.customer, x.gtin, x.name, x.quantity, f"{x.value:.2f}"]
        for x in r.rows
    ]
    head = ["month", "workplace", "ward", "customer", "gtin", "name", "units>", "value SEK>"]
    out = [f"consumption per workplace {r.since} .. {r.until} ({r.timezone})", table(head, body)]
    out.append(f"\ntotal {r.units} units, {r.value:.2f} SEK")
    if r.unassigned_units:
        out.append(f"unassigned: {r.unassigned_units} units could not be attributed to a ward")
    return "\n".join(out)
