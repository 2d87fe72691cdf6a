"""Net consumption per article and calendar month, and its CSV export for national
follow-up."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, literal_column, select

from controller.ledger.reports.common import (
    _load_products,
    _money,
    _net_consumption_filter,
    _signed_quantity,
    _window,
)
from controller.ledger.schema import lots, movements
from controller.ledger.source import Source, engine_of

CONSUMPTION_CSV_HEADER = (
    "month",
    "article",
    "gtin",
    "name",
    "atc",
    "unit",
    "quantity",
    "value_sek",
)


@dataclass(frozen=True)
class ConsumptionRow:
    month: str  # YYYY-MM in the report's time zone
    article: int
    gtin: str
    name: str
    atc: str
    unit: str
    quantity: int  # net of returns; can be negative if returns exceed use that month
    value: Decimal


@dataclass(frozen=True)
class ConsumptionReport:
    since: datetime
    until: datetime
    timezone: str
    rows: tuple[ConsumptionRow, ...]
    units: int
    value: Decimal


def _zone(name: str) -> tzinfo:
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


def _month_starts(since: datetime, until: datetime, zone: tzinfo) -> list[datetime]:
    """The starts of the calendar months (in `zone`) after `since` and before `until`."""
    local = since.astimezone(zone)
    year, month = local.year, local.month
    starts: list[datetime] = []
    while True:
        month += 1
        if month == 13:
            year, month = year + 1, 1
        start = datetime(year, month, 1, tzinfo=zone)
        if start >= until:
            return starts
        starts.append(start)


def consumption_by_month(
    source: Source, *, since: datetime, until: datetime, tz: str = "UTC"
) -> ConsumptionReport:
    """Net units consumed per article and calendar month, for national follow-up.

    Consumption = `consume` movements into CONSUMED minus `return` movements out of
    it, over [since, until). Months are calendar months in `tz` (UTC by default; the
    site's Europe/Stockholm puts a dose at 00:30 local on the 1st in the new month).
    Value uses today's unit price: the ledger keeps no price history. Articles with a
    net of zero in a month are left out.
    """
    _window(since, until)
    zone = _zone(tz)
    starts = _month_starts(since, until, zone)
    labels = [since.astimezone(zone).strftime("%Y-%m")] + [s.strftime("%Y-%m") for s in starts]
    if starts:
        bucket: Any = case(
            *((movements.c.ts < s, i) for i, s in enumerate(starts)), else_=len(starts)
        ).label("bucket")
        group: tuple[Any, ...] = (lots.c.product_id, bucket)
    else:  # one month: no CASE (and no GROUP BY on a constant, which PostgreSQL reads as
        bucket = literal_column("0").label("bucket")  # a column position)
        group = (lots.c.product_id,)
    with engine_of(source).connect() as conn:
        prods = _load_products(conn)
        query = (
            select(lots.c.product_id, bucket, func.sum(_signed_quantity()))
            .join(lots, lots.c.id == movements.c.lot_id)
            .where(_net_consumption_filter(), movements.c.ts >= since, movements.c.ts < until)
            .group_by(*group)
        )
        result = conn.execute(query).all()
    rows = []
    exact = Decimal(0)
    for product_id, index, units in result:
        units = int(units or 0)
        if units == 0:
            continue
        p = prods[int(product_id)]
        exact += units * p.unit_price
        rows.append(
            ConsumptionRow(
                month=labels[int(index)],
                article=p.article,
                gtin=p.gtin,
                name=p.name,
                atc=p.atc,
                unit=p.unit,
                quantity=units,
                value=_money(units * p.unit_price),
            )
        )
    rows.sort(key=lambda r: (r.month, r.article))
    return ConsumptionReport(
        since=since,
        until=until,
        timezone=tz,
        rows=tuple(rows),
        units=sum(r.quantity for r in rows),
        value=_money(exact),
    )


def write_consumption_csv(rows: Iterable[ConsumptionRow], file: TextIO) -> int:
    """Writes the consumption export; returns the number of data rows.

    Format: UTF-8, `;` between fields (the Swedish spreadsheet convention, where `,` is
    the decimal comma), LF line ends, a header line, a decimal point in value_sek (two
    decimals) so that no locale is needed to read it back, and quotes only around a
    field that holds `;`, a quote or a line break. Open the file with newline="".
    """
    writer = csv.writer(file, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CONSUMPTION_CSV_HEADER)
    count = 0
    for r in rows:
        writer.writerow(
            [r.month, r.article, r.gtin, r.name, r.atc, r.unit, r.quantity, f"{r.value:.2f}"]
        )
        count += 1
    return count
