"""Ward debiting: what each ward used in a calendar month, valued at what the pharmacy
paid for it, for the finance system to charge the ward's cost centre.

Consumption is the ledger's net consumption (as in `reports`): `consume` movements
into CONSUMED minus `return` movements out of it. Each movement is attributed to a
ward, in this order (docs/ward-debiting.md):

1. its reservation key, then its idempotency key, when it names a packing job
   (`job:<job_id>:<attempt>[:manual][:late]`, `job:<job_id>:<attempt>:consume:<gtin>`):
   the job's ward from `packing_jobs`;
2. its location (the source of a `consume`, the destination of a `return`) when that
   location is a cabinet or below one (`CAB`, `CAB/P01`): the cabinet's ward, from the
   `cabinets` mapping the caller passes (the ledger does not read the site file);
3. otherwise the `unassigned` line. Nothing is dropped, so the report always adds up
   to the ledger, and the report checks that it does (`reconciliation`).

A lot is valued at its purchase price (`lots.purchase_price`), or at the product's
catalogue `unit_price` when the lot has none. Each line's value is units x price
rounded to öre (0.01, half up); ward totals and the grand total are sums of the
rounded lines, so the finance export adds up exactly to its control line.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, and_, case, func, select
from sqlalchemy.orm import aliased

from controller.ledger.errors import LedgerError
from controller.ledger.reports import (
    Source,
    _engine,
    _load_products,
    _net_consumption_filter,
    _signed_quantity,
    table,
)
from controller.ledger.schema import locations, lots, movements, packing_jobs, reservations

UNASSIGNED = "unassigned"
CONTROL = "TOTAL"
DEBITING_CSV_HEADER = (
    "month",
    "cost_centre",
    "ward",
    "gtin",
    "article",
    "product",
    "batch",
    "units",
    "unit_price_sek",
    "value_sek",
)
# A packing job's reservation (`job:<id>:<attempt>`, `...:manual`, `...:manual:late`)
# or the key of a use booked without one after the reservation ran out
# (`job:<id>:<attempt>:consume:<gtin>`).
JOB_KEY = re.compile(r"^job:(?P<job>.+?):\d+(?::manual)?(?::late)?(?::(?:consume|waste):\d{14})?$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_CENT = Decimal("0.01")


class WardLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def cost_centre(self) -> str: ...


@dataclass(frozen=True)
class DebitLine:
    """Net units of one lot a ward used in the month, and their value."""

    cost_centre: str  # empty for the unassigned line and for a ward without one
    ward: str  # the ward code, or "unassigned"
    gtin: str
    article: int
    product: str
    unit: str
    batch: str
    units: int  # negative when more was returned than used in the month
    unit_price: Decimal  # SEK per unit, 4 decimals
    price_source: str  # "lot" (purchase price) or "catalogue" (products.unit_price)
    value: Decimal  # units x unit_price, rounded to öre (half up)


@dataclass(frozen=True)
class WardTotal:
    cost_centre: str
    ward: str
    name: str
    lines: int
    units: int
    value: Decimal


@dataclass(frozen=True)
class Reconciliation:
    """The ledger's own net consumption in the month, summed straight over the
    movements, against the report's lines: they must be equal to the unit."""

    ledger_units: int
    report_units: int
    difference: int  # report - ledger
    balanced: bool


@dataclass(frozen=True)
class DebitingReport:
    month: str  # YYYY-MM in `timezone`
    timezone: str
    since: datetime  # the month's first moment, UTC
    until: datetime  # the next month's first moment, UTC (exclusive)
    lines: tuple[DebitLine, ...]
    wards: tuple[WardTotal, ...]
    units: int
    value: Decimal
    unassigned_units: int
    unknown_wards: tuple[str, ...]  # wards attributed to but not in the ward list
    reconciliation: Reconciliation


def parse_month(text: str) -> date:
    """`YYYY-MM` (or an ISO date, any day of the month) -> the month's first day."""
    value = text.strip()
    match = _MONTH.match(value)
    try:
        if match:
            return date(int(match[1]), int(match[2]), 1)
        return date.fromisoformat(value).replace(day=1)
    except ValueError:
        raise LedgerError(f"month: {text!r} is not a month (YYYY-MM)") from None


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise LedgerError(f"tz: {name!r} is not a known time zone") from None


def month_bounds(month: date, tz: str) -> tuple[datetime, datetime]:
    """The calendar month holding `month`, in `tz`, as [since, until) in UTC."""
    if not isinstance(month, date) or isinstance(month, datetime):
        raise LedgerError(f"month: {month!r} is not a date")
    zone = _zone(tz)
    start = datetime(month.year, month.month, 1, tzinfo=zone)
    year, mon = (month.year + 1, 1) if month.month == 12 else (month.year, month.month + 1)
    end = datetime(year, mon, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def job_of_key(key: str | None) -> str | None:
    """The packing job a reservation or idempotency key belongs to, if any."""
    if not key:
        return None
    match = JOB_KEY.match(key)
    return match["job"] if match else None


def _cabinet_ward(code: str, cabinets: Mapping[str, str]) -> str | None:
    for prefix, ward in cabinets.items():
        if code == prefix or code.startswith(prefix + "/"):
            return ward
    return None


def _money(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _ledger_units(conn: Connection, since: datetime, until: datetime) -> int:
    """The reconciliation's other side: one SUM over the movements, nothing else."""
    total = conn.execute(
        select(func.coalesce(func.sum(_signed_quantity()), 0)).where(
            _net_consumption_filter(), movements.c.ts >= since, movements.c.ts < until
        )
    ).scalar_one()
    return int(total)


def ward_debiting(
    source: Source,
    *,
    month: date,
    tz: str,
    wards: Mapping[str, WardLike],
    cabinets: Mapping[str, str] | None = None,
) -> DebitingReport:
    """Net consumption per (cost centre, ward, product, lot) in the calendar month that
    holds `month` (any day of it) in time zone `tz`, valued at the lots' purchase
    prices. `wards` maps a ward code to its name and cost centre; `cabinets` maps a
    cabinet (a location code prefix) to its ward code. See the module docstring."""
    since, until = month_bounds(month, tz)
    cabinets = cabinets or {}
    src = aliased(locations)
    dst = aliased(locations)
    # The idempotency key matters only for a job's use booked without a reservation;
    # leaving the others out keeps one row per lot, place and job, not per movement.
    job_key = case(
        (
            and_(movements.c.reservation_id.is_(None), movements.c.idempotency_key.like("job:%")),
            movements.c.idempotency_key,
        ),
        else_=None,
    ).label("job_key")
    with _engine(source).connect() as conn:
        prods = _load_products(conn)
        rows = conn.execute(
            select(
                movements.c.kind,
                job_key,
                reservations.c.key.label("reservation"),
                src.c.code.label("source"),
                dst.c.code.label("dest"),
                lots.c.product_id,
                lots.c.batch,
                lots.c.purchase_price,
                func.sum(_signed_quantity()).label("units"),
            )
            .join(lots, lots.c.id == movements.c.lot_id)
            .join(src, src.c.id == movements.c.from_location_id)
            .join(dst, dst.c.id == movements.c.to_location_id)
            .outerjoin(reservations, reservations.c.id == movements.c.reservation_id)
            .where(_net_consumption_filter(), movements.c.ts >= since, movements.c.ts < until)
            .group_by(
                movements.c.kind,
                job_key,
                reservations.c.key,
                src.c.code,
                dst.c.code,
                lots.c.id,
                lots.c.product_id,
                lots.c.batch,
                lots.c.purchase_price,
            )
        ).all()
        jobs = {job_of_key(r.reservation) or job_of_key(r.job_key) for r in rows}
        jobs.discard(None)
        job_wards: dict[str, str] = {}
        if jobs:
            for job_id, ward in conn.execute(
                select(packing_jobs.c.job_id, packing_jobs.c.ward).where(
                    packing_jobs.c.job_id.in_(sorted(j for j in jobs if j is not None))
                )
            ):
                job_wards[job_id] = ward
        ledger_units = _ledger_units(conn, since, until)

    units: dict[tuple[str, int, str], int] = defaultdict(int)
    prices: dict[tuple[int, str], Decimal | None] = {}
    for r in rows:
        job = job_of_key(r.reservation) or job_of_key(r.job_key)
        ward = job_wards.get(job) if job else None
        if ward is None:
            where = r.source if r.kind == "consume" else r.dest
            ward = _cabinet_ward(where, cabinets)
        key = (ward or UNASSIGNED, int(r.product_id), r.batch)
        units[key] += int(r.units or 0)
        price = r.purchase_price
        prices[(int(r.product_id), r.batch)] = None if price is None else Decimal(price)

    lines: list[DebitLine] = []
    unknown: set[str] = set()
    for (ward, product_id, batch), n in units.items():
        if n == 0:
            continue
        p = prods[product_id]
        lot_price = prices[(product_id, batch)]
        price = p.unit_price if lot_price is None else lot_price
        known = wards.get(ward)
        if known is None and ward != UNASSIGNED:
            unknown.add(ward)
        lines.append(
            DebitLine(
                cost_centre=known.cost_centre if known is not None else "",
                ward=ward,
                gtin=p.gtin,
                article=p.article,
                product=p.name,
                unit=p.unit,
                batch=batch,
                units=n,
                unit_price=price.quantize(Decimal("0.0001")),
                price_source="catalogue" if lot_price is None else "lot",
                value=_money(n * price),
            )
        )
    lines.sort(
        key=lambda x: (x.ward == UNASSIGNED, x.cost_centre, x.ward, x.product, x.gtin, x.batch)
    )
    totals = _ward_totals(lines, wards)
    report_units = sum(x.units for x in lines)
    return DebitingReport(
        month=f"{since.astimezone(_zone(tz)):%Y-%m}",
        timezone=tz,
        since=since,
        until=until,
        lines=tuple(lines),
        wards=totals,
        units=report_units,
        value=sum((x.value for x in lines), Decimal("0.00")),
        unassigned_units=sum(x.units for x in lines if x.ward == UNASSIGNED),
        unknown_wards=tuple(sorted(unknown)),
        reconciliation=Reconciliation(
            ledger_units=ledger_units,
            report_units=report_units,
            difference=report_units - ledger_units,
            balanced=report_units == ledger_units,
        ),
    )


def _ward_totals(lines: list[DebitLine], wards: Mapping[str, WardLike]) -> tuple[WardTotal, ...]:
    """Every listed ward (with 0 when it used nothing), then wards not in the list, then
    the unassigned line; values are sums of the rounded lines."""
    per: dict[str, list[DebitLine]] = defaultdict(list)
    for x in lines:
        per[x.ward].append(x)
    codes = sorted(wards, key=lambda c: (wards[c].cost_centre, c))
    codes += sorted(c for c in per if c not in wards and c != UNASSIGNED)
    if UNASSIGNED in per:
        codes.append(UNASSIGNED)
    out = []
    for code in codes:
        known = wards.get(code)
        items = per.get(code, [])
        out.append(
            WardTotal(
                cost_centre=known.cost_centre if known is not None else "",
                ward=code,
                name=known.name if known is not None else "",
                lines=len(items),
                units=sum(x.units for x in items),
                value=sum((x.value for x in items), Decimal("0.00")),
            )
        )
    return tuple(out)


def write_debiting_csv(report: DebitingReport, file: TextIO) -> int:
    """Writes the finance export; returns the number of data lines (without the control
    line). UTF-8, `;` between fields, LF line ends, one header line, a decimal point,
    quotes only where needed; the last line is the control line: `TOTAL` in
    cost_centre, the total units and value. Open the file with newline=""."""
    writer = csv.writer(file, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(DEBITING_CSV_HEADER)
    for x in report.lines:
        writer.writerow(
            [
                report.month,
                x.cost_centre,
                x.ward,
                x.gtin,
                x.article,
                x.product,
                x.batch,
                x.units,
                f"{x.unit_price:.4f}",
                f"{x.value:.2f}",
            ]
        )
    writer.writerow(
        [report.month, CONTROL, "", "", "", "", "", report.units, "", f"{report.value:.2f}"]
    )
    return len(report.lines)


def debiting_csv_text(report: DebitingReport) -> str:
    import io

    buffer = io.StringIO(newline="")
    write_debiting_csv(report, buffer)
    return buffer.getvalue()


def _sek(value: Decimal) -> str:
    return f"{value:,.2f}".replace(",", " ")


def render_text(r: DebitingReport) -> str:
    """The report as the CLI prints it: lines, ward totals, and the reconciliation."""
    body: Iterable[list[Any]] = (
        [
            x.cost_centre,
            x.ward,
            x.gtin,
            x.product,
            x.batch,
            x.units,
            f"{x.unit_price:.4f}" + ("" if x.price_source == "lot" else " c"),
            _sek(x.value),
        ]
        for x in r.lines
    )
    head = ["cost centre", "ward", "gtin", "product", "batch", "units>", "price SEK>"]
    out = [f"ward debiting {r.month} ({r.timezone})", table([*head, "value SEK>"], body), ""]
    totals = [[w.cost_centre, w.ward, w.name, w.lines, w.units, _sek(w.value)] for w in r.wards]
    totals.append(["", "total", "", len(r.lines), r.units, _sek(r.value)])
    out.append(table(["cost centre", "ward", "name", "lines>", "units>", "value SEK>"], totals))
    out.append("")
    if any(x.price_source == "catalogue" for x in r.lines):
        out.append("c: no purchase price on the lot; valued at the catalogue unit price")
    if r.unassigned_units:
        out.append(f"unassigned: {r.unassigned_units} units could not be attributed to a ward")
    if r.unknown_wards:
        out.append(f"wards without a cost centre: {', '.join(r.unknown_wards)}")
    rec = r.reconciliation
    verdict = "reconciled" if rec.balanced else f"NOT RECONCILED (difference {rec.difference})"
    out.append(
        f"{verdict}: ledger net consumption {rec.ledger_units} units, "
        f"report {rec.report_units} units"
    )
    return "\n".join(out)
