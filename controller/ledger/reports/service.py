"""Delivery reliability: the share of order lines filled completely from stock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case, func, select

from controller.ledger.errors import LedgerError
from controller.ledger.reports.common import _ratio, _window
from controller.ledger.schema import order_lines
from controller.ledger.source import Source, engine_of


@dataclass(frozen=True)
class ServiceLine:
    source: str
    lines: int
    full: int  # lines with filled == requested
    short: int
    units_requested: int
    units_filled: int
    share: float | None  # full / lines


@dataclass(frozen=True)
class ServiceLevelReport:
    since: datetime
    until: datetime
    target: float
    lines: int
    full: int
    short: int
    units_requested: int
    units_filled: int
    share: float | None  # None when there were no lines
    meets_target: bool | None
    by_source: tuple[ServiceLine, ...]


def service_level(
    source: Source, *, since: datetime, until: datetime, target: float = 0.95
) -> ServiceLevelReport:
    """Delivery reliability: the share of order lines filled completely from stock.

    A line counts as delivered only when filled == requested (a partly filled line is
    a miss), over order lines with ts in [since, until); meets_target compares the
    exact share with `target`.
    """
    _window(since, until)
    if not 0 <= target <= 1:
        raise LedgerError(f"target: {target!r} must be between 0 and 1")
    full = case((order_lines.c.filled == order_lines.c.requested, 1), else_=0)
    with engine_of(source).connect() as conn:
        rows = conn.execute(
            select(
                order_lines.c.source,
                func.count(),
                func.sum(full),
                func.sum(order_lines.c.requested),
                func.sum(order_lines.c.filled),
            )
            .where(order_lines.c.ts >= since, order_lines.c.ts < until)
            .group_by(order_lines.c.source)
            .order_by(order_lines.c.source)
        ).all()
    by_source = tuple(
        ServiceLine(
            source=src,
            lines=int(n),
            full=int(f),
            short=int(n) - int(f),
            units_requested=int(req),
            units_filled=int(fil),
            share=_ratio(int(f), int(n), 4),
        )
        for src, n, f, req, fil in rows
    )
    lines = sum(s.lines for s in by_source)
    full_lines = sum(s.full for s in by_source)
    return ServiceLevelReport(
        since=since,
        until=until,
        target=target,
        lines=lines,
        full=full_lines,
        short=lines - full_lines,
        units_requested=sum(s.units_requested for s in by_source),
        units_filled=sum(s.units_filled for s in by_source),
        share=_ratio(full_lines, lines, 4) if lines else None,
        meets_target=(Decimal(full_lines) >= Decimal(str(target)) * lines) if lines else None,
        by_source=by_source,
    )
