"""What the reports read of the stock duty's decisions: the preparedness list's target
and floor per product, and the crisis periods with their scope (as the pure rules'
values, controller.duty_rules.crisis)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from controller.duty_rules.crisis import Period, Scope
from controller.ledger.schema import products
from controller.ledger.schema_duty import crisis_periods, crisis_scope, preparedness_targets


def load_targets(conn: Connection) -> dict[int, tuple[int, int]]:
    """product id -> (target units, floor units) of the preparedness list."""
    rows = conn.execute(
        select(
            preparedness_targets.c.product_id,
            preparedness_targets.c.target_units,
            preparedness_targets.c.floor_units,
        )
    )
    return {int(pid): (int(target), int(floor)) for pid, target, floor in rows}


def load_periods(conn: Connection) -> list[Period]:
    """Every crisis period with its scope, in order of start."""
    scopes: dict[int, tuple[set[str], dict[str, str]]] = defaultdict(lambda: (set(), {}))
    rows = conn.execute(
        select(
            crisis_scope.c.crisis_id, crisis_scope.c.category, products.c.gtin, products.c.category
        )
        .select_from(crisis_scope)
        .outerjoin(products, products.c.id == crisis_scope.c.product_id)
    )
    for crisis_id, category, gtin, product_category in rows:
        cats, prods = scopes[int(crisis_id)]
        if category is not None:
            cats.add(str(category))
        if gtin is not None:
            prods[str(gtin)] = str(product_category)
    out = []
    for r in conn.execute(
        select(crisis_periods).order_by(crisis_periods.c.starts_at, crisis_periods.c.id)
    ):
        cats, prods = scopes[int(r.id)]
        out.append(
            Period(
                id=int(r.id),
                starts_at=r.starts_at,
                ends_at=r.ends_at,
                scope=Scope(categories=frozenset(cats), products=dict(prods)),
            )
        )
    return out


@dataclass(frozen=True)
class CrisisInForce:
    """A crisis period in force at the report's moment, with its scope."""

    id: int
    starts_at: datetime
    ends_at: datetime | None
    reason: str
    decided_by: str
    categories: tuple[str, ...]  # both empty: every product
    gtins: tuple[str, ...]


def crisis_in_force(conn: Connection, at: datetime) -> tuple[CrisisInForce, ...]:
    """The periods in force at `at`, in order of start."""
    return _described(conn, [p for p in load_periods(conn) if p.in_force(at)])


def crisis_overlapping(
    conn: Connection, since: datetime, until: datetime
) -> tuple[CrisisInForce, ...]:
    """The periods in force at some moment of [since, until), in order of start."""
    return _described(
        conn,
        [
            p
            for p in load_periods(conn)
            if p.starts_at < until and (p.ends_at is None or p.ends_at > since)
        ],
    )


def _described(conn: Connection, chosen: list[Period]) -> tuple[CrisisInForce, ...]:
    """The periods with their reason and who decided, in order of start."""
    periods = {p.id: p for p in chosen}
    if not periods:
        return ()
    rows = conn.execute(
        select(crisis_periods.c.id, crisis_periods.c.reason, crisis_periods.c.decided_by).where(
            crisis_periods.c.id.in_(sorted(periods))
        )
    )
    decided = {int(i): (str(reason), str(by)) for i, reason, by in rows}
    return tuple(
        CrisisInForce(
            id=p.id,
            starts_at=p.starts_at,
            ends_at=p.ends_at,
            reason=decided[p.id][0],
            decided_by=decided[p.id][1],
            categories=tuple(sorted(p.scope.categories)),
            gtins=tuple(sorted(p.scope.products)),
        )
        for p in sorted(periods.values(), key=lambda p: (p.starts_at, p.id))
    )
