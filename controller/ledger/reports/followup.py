"""The monthly export for national follow-up of the one-month stock duty: per category
and product the stock at the month's end, the month's whole use and the cover; the
exemptions in force during the month with their levels; the crisis periods that
overlap it. JSON (one document) or one CSV file; the layout is in docs/reports.md.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, TextIO

from sqlalchemy import Connection, func, or_, select

from controller.duty_rules.exemptions import obligation_for
from controller.ledger.debiting import _zone, month_bounds, parse_month
from controller.ledger.duty_state import crisis_overlapping
from controller.ledger.reports.common import _load_products, _net_consumption_filter, _ratio
from controller.ledger.reports.common import _signed_quantity as _signed
from controller.ledger.reports.cover import _duty_scope
from controller.ledger.reports.render import table
from controller.ledger.schema import (
    EXTERNAL_KINDS,
    PRODUCT_CATEGORIES,
    exemptions,
    external_use,
    locations,
    lots,
    movements,
    products,
)
from controller.ledger.source import Source, engine_of, require_aware

Status = Literal["meets", "short", "no_use", "exempt", "out_of_scope"]
FOLLOWUP_CSV_HEADER = (
    "record",
    "month",
    "category",
    "gtin",
    "article",
    "name",
    "unit",
    "on_hand",
    "usable",
    "use_internal",
    "use_external",
    "use_total",
    "cover_days",
    "status",
    "obligation_days",
    "level_days",
    "products",
    "assessed",
    "meeting",
    "starts",
    "ends",
    "reason",
    "scope",
)


@dataclass(frozen=True)
class FollowupProduct:
    category: str
    gtin: str
    article: int
    name: str
    unit: str
    on_hand: int  # at the month's end, every internal location, any lot status
    usable: int  # at the month's end: released, not expired on the month's last day,
    # not in quarantine
    use_internal: int  # net consumption in the month (consume - return), every channel
    use_external: int  # recorded use of units the pharmacy does not supply
    use_total: int
    cover_days: float | None  # usable / (use_total / days of the month); None: no use
    in_scope: bool
    scope_reason: str | None
    exempt: bool  # an exemption in force during the month
    level_days: int | None  # the exemption's level; None: left out (or not exempt)
    obligation_days: int | None  # what cover is judged against; None: not judged
    meets: bool | None
    status: Status


@dataclass(frozen=True)
class FollowupCategory:
    category: str
    products: int
    in_scope: int
    exempt: int
    assessed: int  # judged: in scope, not left out by an exemption, with use
    meeting: int
    share: float | None  # meeting / assessed, 4 decimals
    on_hand: int
    usable: int
    use_internal: int
    use_external: int


@dataclass(frozen=True)
class FollowupExemption:
    gtin: str
    name: str
    category: str
    reason: str
    measures: str
    level_days: int | None  # None: the product is left out of the figures
    review_date: date
    decided_at: datetime
    status: str  # active | revoked
    revoked_at: datetime | None


@dataclass(frozen=True)
class FollowupCrisis:
    id: int
    starts_at: datetime
    ends_at: datetime | None  # None: still on
    reason: str
    categories: tuple[str, ...]  # with gtins empty too: every product
    gtins: tuple[str, ...]


@dataclass(frozen=True)
class FollowupReport:
    month: str  # YYYY-MM in `timezone`
    timezone: str
    since: datetime
    until: datetime
    generated_at: datetime
    obligation_days: int
    products: tuple[FollowupProduct, ...]
    categories: tuple[FollowupCategory, ...]
    exemptions: tuple[FollowupExemption, ...]
    crisis_periods: tuple[FollowupCrisis, ...]


def _stock_at(conn: Connection, until: datetime, last_day: date) -> dict[int, tuple[int, int]]:
    """(on hand, usable) per product from the movements before `until`: every
    internal location, usable as of `last_day` (the lot's status is today's)."""
    incoming = conn.execute(
        select(movements.c.lot_id, movements.c.to_location_id, func.sum(movements.c.quantity))
        .where(movements.c.ts < until)
        .group_by(movements.c.lot_id, movements.c.to_location_id)
    ).all()
    outgoing = conn.execute(
        select(movements.c.lot_id, movements.c.from_location_id, func.sum(movements.c.quantity))
        .where(movements.c.ts < until)
        .group_by(movements.c.lot_id, movements.c.from_location_id)
    ).all()
    held: dict[tuple[int, int], int] = defaultdict(int)
    for lot_id, loc_id, units in incoming:
        held[(int(lot_id), int(loc_id))] += int(units or 0)
    for lot_id, loc_id, units in outgoing:
        held[(int(lot_id), int(loc_id))] -= int(units or 0)
    kinds = {int(i): str(k) for i, k in conn.execute(select(locations.c.id, locations.c.kind))}
    lot_rows = {
        int(r.id): r
        for r in conn.execute(select(lots.c.id, lots.c.product_id, lots.c.expiry, lots.c.status))
    }
    out: dict[int, tuple[int, int]] = {}
    for (lot_id, loc_id), units in held.items():
        kind = kinds[loc_id]
        if units <= 0 or kind in EXTERNAL_KINDS:
            continue
        lot = lot_rows[lot_id]
        ok = lot.status == "released" and lot.expiry >= last_day and kind != "quarantine"
        on_hand, usable = out.get(int(lot.product_id), (0, 0))
        out[int(lot.product_id)] = (on_hand + units, usable + (units if ok else 0))
    return out


def _use_in(conn: Connection, since: datetime, until: datetime) -> dict[int, int]:
    rows = conn.execute(
        select(lots.c.product_id, func.sum(_signed()))
        .join(lots, lots.c.id == movements.c.lot_id)
        .where(_net_consumption_filter(), movements.c.ts >= since, movements.c.ts < until)
        .group_by(lots.c.product_id)
    )
    return {int(p): int(u or 0) for p, u in rows}


def _external_in(conn: Connection, month: str) -> dict[int, int]:
    rows = conn.execute(
        select(external_use.c.product_id, func.sum(external_use.c.quantity))
        .where(external_use.c.month == month)
        .group_by(external_use.c.product_id)
    )
    return {int(p): int(u or 0) for p, u in rows}


def _exemptions_in(
    conn: Connection, since: datetime, until: datetime
) -> list[tuple[int, FollowupExemption]]:
    """Exemptions in force at some time in [since, until): decided before its end, and
    active or revoked after its start."""
    rows = conn.execute(
        select(exemptions, products.c.gtin, products.c.name, products.c.category)
        .join(products, products.c.id == exemptions.c.product_id)
        .where(
            exemptions.c.decided_at < until,
            or_(exemptions.c.status == "active", exemptions.c.revoked_at >= since),
        )
        .order_by(products.c.category, products.c.name, products.c.gtin)
    )
    return [
        (
            int(r.product_id),
            FollowupExemption(
                gtin=r.gtin,
                name=r.name,
                category=r.category,
                reason=r.reason,
                measures=r.measures or "",
                level_days=None if r.level_days is None else int(r.level_days),
                review_date=r.review_date,
                decided_at=r.decided_at,
                status=r.status,
                revoked_at=r.revoked_at,
            ),
        )
        for r in rows
    ]


def _crises_in(conn: Connection, since: datetime, until: datetime) -> list[FollowupCrisis]:
    return [
        FollowupCrisis(
            id=p.id,
            starts_at=p.starts_at,
            ends_at=p.ends_at,
            reason=p.reason,
            categories=p.categories,
            gtins=p.gtins,
        )
        for p in crisis_overlapping(conn, since, until)
    ]


def _judge(
    use_total: int, usable: int, days: int, obligation: int | None
) -> tuple[float | None, bool | None]:
    if use_total <= 0:
        return None, None
    cover = _ratio(usable * days, use_total, 1)
    return cover, None if obligation is None else usable * days >= obligation * use_total


def followup_report(
    source: Source,
    *,
    month: str | date,
    generated_at: datetime,
    tz: str = "UTC",
    obligation_days: int = 30,
) -> FollowupReport:
    """The monthly follow-up of the calendar month `month` (YYYY-MM, or any day of it)
    in time zone `tz`. See docs/reports.md ("followup") for every figure."""
    require_aware("generated_at", generated_at)
    first = parse_month(month) if isinstance(month, str) else month.replace(day=1)
    since, until = month_bounds(first, tz)
    label = f"{since.astimezone(_zone(tz)):%Y-%m}"
    last_day = (until.astimezone(_zone(tz)) - timedelta(seconds=1)).date()
    days = last_day.day
    with engine_of(source).connect() as conn:
        prods = _load_products(conn)
        stock = _stock_at(conn, until, last_day)
        used = _use_in(conn, since, until)
        external = _external_in(conn, label)
        scope_reasons, durability = _duty_scope(conn)
        exempt = _exemptions_in(conn, since, until)
        crises = _crises_in(conn, since, until)
    level: dict[int, int | None] = {}
    for product_id, e in exempt:
        if e.status == "active" or product_id not in level:
            level[product_id] = e.level_days
    rows: list[FollowupProduct] = []
    for p in sorted(prods.values(), key=lambda p: (p.category, p.name, p.gtin)):
        on_hand, usable = stock.get(p.id, (0, 0))
        internal, ext = used.get(p.id, 0), external.get(p.id, 0)
        if not p.active and not (on_hand or internal or ext):
            continue
        lvl = level.get(p.id)
        judged = obligation_for(
            obligation_days,
            scope_reason=scope_reasons.get(p.id),
            durability=durability.get(p.id, "consumable"),
            exemption_status="active" if p.id in level else None,
            exemption_level=lvl,
        )
        reason = judged.reason if judged.kind == "out_of_scope" else None
        is_exempt = p.id in level
        obligation = judged.level_days
        total = internal + ext
        cover, meets = _judge(total, usable, days, obligation)
        status: Status
        if reason is not None:
            status = "out_of_scope"
        elif obligation is None:
            status = "exempt"
        elif meets is None:
            status = "no_use"
        else:
            status = "meets" if meets else "short"
        rows.append(
            FollowupProduct(
                category=p.category,
                gtin=p.gtin,
                article=p.article,
                name=p.name,
                unit=p.unit,
                on_hand=on_hand,
                usable=usable,
                use_internal=internal,
                use_external=ext,
                use_total=total,
                cover_days=cover,
                in_scope=reason is None,
                scope_reason=reason,
                exempt=is_exempt,
                level_days=lvl,
                obligation_days=obligation,
                meets=meets,
                status=status,
            )
        )
    return FollowupReport(
        month=label,
        timezone=tz,
        since=since,
        until=until,
        generated_at=generated_at,
        obligation_days=obligation_days,
        products=tuple(rows),
        categories=_categories(rows),
        exemptions=tuple(e for _, e in exempt),
        crisis_periods=tuple(crises),
    )


def _categories(rows: list[FollowupProduct]) -> tuple[FollowupCategory, ...]:
    per: dict[str, list[FollowupProduct]] = {c: [] for c in PRODUCT_CATEGORIES}
    for r in rows:
        per.setdefault(r.category, []).append(r)
    out = []
    for category, items in per.items():
        assessed = [r for r in items if r.meets is not None]
        meeting = sum(1 for r in assessed if r.meets)
        out.append(
            FollowupCategory(
                category=category,
                products=len(items),
                in_scope=sum(1 for r in items if r.in_scope),
                exempt=sum(1 for r in items if r.exempt),
                assessed=len(assessed),
                meeting=meeting,
                share=_ratio(meeting, len(assessed), 4) if assessed else None,
                on_hand=sum(r.on_hand for r in items),
                usable=sum(r.usable for r in items),
                use_internal=sum(r.use_internal for r in items),
                use_external=sum(r.use_external for r in items),
            )
        )
    return tuple(out)


def _opt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def write_followup_csv(report: FollowupReport, file: TextIO) -> int:
    """Writes the follow-up as one CSV file; returns the number of data lines.

    UTF-8, `;` between fields, LF line ends, one header line (FOLLOWUP_CSV_HEADER), a
    decimal point, quotes only where needed. The first field, `record`, says what the
    line is: `product`, `category`, `exemption` or `crisis`; a field that does not
    apply to the record is empty. Open the file with newline=""."""
    writer = csv.writer(file, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(FOLLOWUP_CSV_HEADER)
    blank: dict[str, Any] = dict.fromkeys(FOLLOWUP_CSV_HEADER)
    lines: list[dict[str, Any]] = []
    for p in report.products:
        lines.append(
            blank
            | {
                "record": "product",
                "category": p.category,
                "gtin": p.gtin,
                "article": p.article,
                "name": p.name,
                "unit": p.unit,
                "on_hand": p.on_hand,
                "usable": p.usable,
                "use_internal": p.use_internal,
                "use_external": p.use_external,
                "use_total": p.use_total,
                "cover_days": p.cover_days,
                "status": p.status,
                "obligation_days": p.obligation_days,
                "level_days": p.level_days,
                "reason": p.scope_reason,
            }
        )
    for c in report.categories:
        lines.append(
            blank
            | {
                "record": "category",
                "category": c.category,
                "on_hand": c.on_hand,
                "usable": c.usable,
                "use_internal": c.use_internal,
                "use_external": c.use_external,
                "use_total": c.use_internal + c.use_external,
                "products": c.products,
                "assessed": c.assessed,
                "meeting": c.meeting,
            }
        )
    for e in report.exemptions:
        lines.append(
            blank
            | {
                "record": "exemption",
                "category": e.category,
                "gtin": e.gtin,
                "name": e.name,
                "status": e.status,
                "level_days": e.level_days,
                "starts": e.decided_at,
                "ends": e.revoked_at,
                "reason": e.reason,
            }
        )
    for k in report.crisis_periods:
        scope = ",".join((*k.categories, *k.gtins)) or "all"
        lines.append(
            blank
            | {
                "record": "crisis",
                "starts": k.starts_at,
                "ends": k.ends_at,
                "reason": k.reason,
                "scope": scope,
            }
        )
    for line in lines:
        line["month"] = report.month
        writer.writerow([_opt(line[h]) for h in FOLLOWUP_CSV_HEADER])
    return len(lines)


def followup_csv_text(report: FollowupReport) -> str:
    buffer = io.StringIO(newline="")
    write_followup_csv(report, buffer)
    return buffer.getvalue()


_PRODUCT_HEAD: tuple[str, ...] = ("category", "gtin", "name", "on hand>", "usable>", "use>")
_PRODUCT_HEAD += ("ext>", "cover d>", "status", "level")
_CATEGORY_HEAD: tuple[str, ...] = ("category", "products>", "assessed>", "meeting>", "share>")
_CATEGORY_HEAD += ("usable>", "use>", "ext>")


def render_followup(r: FollowupReport) -> str:
    """The follow-up as the CLI prints it."""
    out = [f"follow-up {r.month} ({r.timezone}), generated {r.generated_at:%Y-%m-%d %H:%M} UTC"]
    out.append(
        table(
            _PRODUCT_HEAD,
            [
                [
                    p.category,
                    p.gtin,
                    p.name,
                    p.on_hand,
                    p.usable,
                    p.use_internal,
                    p.use_external,
                    "-" if p.cover_days is None else f"{p.cover_days:.1f}",
                    p.status,
                    "" if p.level_days is None else p.level_days,
                ]
                for p in r.products
            ],
        )
    )
    out.append("")
    out.append(
        table(
            _CATEGORY_HEAD,
            [
                [
                    c.category,
                    c.products,
                    c.assessed,
                    c.meeting,
                    "-" if c.share is None else f"{c.share * 100:.1f} %",
                    c.usable,
                    c.use_internal,
                    c.use_external,
                ]
                for c in r.categories
            ],
        )
    )
    for e in r.exemptions:
        level = "left out" if e.level_days is None else f"level {e.level_days} days"
        out.append(f"exemption  {e.gtin} {e.name}: {level}; {e.reason} ({e.status})")
    for k in r.crisis_periods:
        scope = ", ".join((*k.categories, *k.gtins)) or "every product"
        ends = "still on" if k.ends_at is None else f"{k.ends_at:%Y-%m-%d %H:%M}"
        out.append(f"crisis     {k.starts_at:%Y-%m-%d %H:%M} .. {ends}: {k.reason} ({scope})")
    return "\n".join(out)


__all__ = [
    "FOLLOWUP_CSV_HEADER",
    "FollowupCategory",
    "FollowupCrisis",
    "FollowupExemption",
    "FollowupProduct",
    "FollowupReport",
    "followup_csv_text",
    "followup_report",
    "render_followup",
    "write_followup_csv",
]
