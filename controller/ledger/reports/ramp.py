"""The order proposal as a ramp: from today's stock towards each product's target over
a number of months, within a monthly budget or volume ceiling, month by month
(controller.duty_rules.ramp holds the rule; docs/reports.md, "proposal")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from controller.duty_rules.ramp import RampError, RampItem, RampPlan, ramp_plan
from controller.ledger.errors import LedgerError
from controller.ledger.reports.common import _load_products
from controller.ledger.reports.cover import _covers
from controller.ledger.reports.proposal import order_proposal_on
from controller.ledger.reports.render import table
from controller.ledger.source import Source, engine_of


@dataclass(frozen=True)
class RampProduct:
    gtin: str
    name: str
    unit: str
    pack_size: int
    start_units: int  # usable + on order today
    target_units: int  # the proposal's target


@dataclass(frozen=True)
class RampReport:
    now: datetime
    target_days: int
    lead_time_days: int
    products: tuple[RampProduct, ...]
    plan: RampPlan


def ramp_proposal(
    source: Source,
    *,
    now: datetime,
    months: int,
    budget_sek_per_month: Decimal | None = None,
    max_units_per_month: int | None = None,
    target_days: int = 30,
    lead_time_days: int = 2,
) -> RampReport:
    """The proposal's products and targets, planned over `months` months within the
    ceiling (one of budget_sek_per_month, max_units_per_month, or none)."""
    with engine_of(source).connect() as conn:
        proposal = order_proposal_on(
            conn, now=now, target_days=target_days, lead_time_days=lead_time_days
        )
        basis = {c.product.gtin: (c.basis_units, c.basis_days) for c in _covers(conn, now)}
        prods = {p.gtin: p for p in _load_products(conn).values()}
    items = []
    described = []
    for r in proposal.rows:
        units, days = basis[r.gtin]
        items.append(
            RampItem(
                key=r.gtin,
                start_units=r.usable + r.on_order,
                target_units=r.target_units,
                use_units=units,
                use_days=days,
                pack_size=r.pack_size,
                unit_price=prods[r.gtin].unit_price,
            )
        )
        described.append(
            RampProduct(r.gtin, r.name, r.unit, r.pack_size, r.usable + r.on_order, r.target_units)
        )
    try:
        plan = ramp_plan(
            items,
            months=months,
            budget_sek_per_month=budget_sek_per_month,
            max_units_per_month=max_units_per_month,
        )
    except RampError as exc:
        raise LedgerError(str(exc)) from None
    return RampReport(
        now=now,
        target_days=target_days,
        lead_time_days=lead_time_days,
        products=tuple(described),
        plan=plan,
    )


def render_ramp(r: RampReport) -> str:
    """Month by month per product, each month's total, and the outcome."""
    names = {p.gtin: p.name for p in r.products}
    plan = r.plan
    ceiling = (
        f"budget {plan.budget_sek_per_month} SEK per month"
        if plan.budget_sek_per_month is not None
        else f"at most {plan.max_units_per_month} units per month"
        if plan.max_units_per_month is not None
        else "no ceiling"
    )
    out = [f"ramp over {plan.months} months ({ceiling}), target {r.target_days} days"]
    body: list[list[object]] = []
    for m in plan.plan:
        for x in m.lines:
            body.append(
                [
                    m.month,
                    x.key,
                    names[x.key],
                    x.start_units,
                    x.use_units,
                    x.packs,
                    x.order_units,
                    f"{x.value:.2f}",
                    x.end_units,
                    "-" if x.cover_days is None else f"{x.cover_days:.1f}",
                    "capped" if x.capped else "",
                ]
            )
        total: list[object] = ["", "", f"month {m.month} total", "", "", m.packs, m.order_units]
        total += [f"{m.value:.2f}", "", "", "capped" if m.capped else ""]
        body.append(total)
    head = ["month>", "gtin", "name", "start>", "use>", "packs>", "units>", "value SEK>"]
    out.append(table([*head, "end>", "cover d>", "ceiling"], body))
    out.append("")
    for o in plan.outcomes:
        verdict = "reached" if o.reached else f"NOT reached, gap {o.gap_units} units"
        out.append(f"{o.key} {names[o.key]}: target {o.target_units}, end {o.end_units}: {verdict}")
    verdict = "every target reached" if plan.reached else "some targets not reached"
    out.append(f"total {plan.order_units} units, {plan.value:.2f} SEK: {verdict}")
    return "\n".join(out)
