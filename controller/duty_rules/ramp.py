"""Building up the stock: a month-by-month plan that takes each product from its stock
today towards its target, within what the wholesalers deliver in a month.

Values in, a plan out (docs/reports.md, "proposal", the ramp plan). Every quantity is
whole units; a product's use is given as units over days (its basis window), so every
figure is exact. The rules:

1. Month m of N starts with the stock S (month 1: usable + on order, which is taken to
   arrive in month 1; later months: the end of the month before). The month uses
   U = ceil(use_units x days_per_month / use_days).
2. The month aims to end at E* = S + ceil((target - S) / months left) when S is below
   the target, else at the target; it needs max(0, E* - S + U) units, rounded up to
   whole packs. In the last month that is the target itself.
3. A ceiling (a budget in SEK, or a number of units, per month) is shared out in order
   of need: the product furthest below its target in days of cover ((target - S) x
   use_days / use_units, largest first; ties by key) gets its whole packs first, then
   the next. A product that does not fit whole takes as many packs as still fit, and
   the products after it may take what is left. No month's order ever passes the
   ceiling.
4. The month ends at max(0, S + ordered - U); cover at the month's end is that stock
   x use_days / use_units (None without use).
5. The target is reached when the stock at the end of month N is at least the target;
   otherwise the gap is target - stock.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

DAYS_PER_MONTH = 30
MAX_MONTHS = 36


class RampError(ValueError):
    """A plan cannot be made from these values; the message names the field."""


@dataclass(frozen=True)
class RampItem:
    key: str  # the product's GTIN
    start_units: int  # usable + on order today
    target_units: int
    use_units: int  # use over use_days (the basis window)
    use_days: int
    pack_size: int
    unit_price: Decimal


@dataclass(frozen=True)
class RampLine:
    key: str
    month: int  # 1..N
    start_units: int
    use_units: int  # the month's use, U
    needed_units: int  # what the plan wanted to buy (whole packs)
    packs: int
    order_units: int  # packs x pack_size, after the ceiling
    value: Decimal  # order_units x unit_price, to öre
    end_units: int
    cover_days: float | None  # at the month's end, 1 decimal
    capped: bool  # the ceiling cut this line


@dataclass(frozen=True)
class RampMonth:
    month: int
    packs: int
    order_units: int
    value: Decimal
    capped: bool
    lines: tuple[RampLine, ...]


@dataclass(frozen=True)
class RampOutcome:
    key: str
    target_units: int
    end_units: int  # at the end of month N
    reached: bool
    gap_units: int  # max(0, target - end)
    ordered_units: int
    value: Decimal


@dataclass(frozen=True)
class RampPlan:
    months: int
    budget_sek_per_month: Decimal | None
    max_units_per_month: int | None
    days_per_month: int
    plan: tuple[RampMonth, ...]
    outcomes: tuple[RampOutcome, ...]
    reached: bool  # every product reaches its target by month N
    value: Decimal
    order_units: int


def _ceil_div(num: int, den: int) -> int:
    return -(-num // den)


def _money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _check(
    items: list[RampItem], months: int, budget: Decimal | None, max_units: int | None
) -> None:
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= MAX_MONTHS:
        raise RampError(f"months: {months!r} must be a whole number from 1 to {MAX_MONTHS}")
    if budget is not None and max_units is not None:
        raise RampError("budget_sek_per_month and max_units_per_month: give one ceiling, not both")
    if budget is not None and (not budget.is_finite() or budget < 0):
        raise RampError(f"budget_sek_per_month: {budget} must be >= 0")
    if max_units is not None and max_units < 0:
        raise RampError(f"max_units_per_month: {max_units} must be >= 0")
    seen: set[str] = set()
    for it in items:
        if it.key in seen:
            raise RampError(f"key: {it.key!r} appears twice")
        seen.add(it.key)
        if it.pack_size <= 0:
            raise RampError(f"pack_size of {it.key}: {it.pack_size} must be > 0")
        if it.use_days <= 0 or it.use_units < 0:
            raise RampError(f"use of {it.key}: {it.use_units} over {it.use_days} days")
        if it.target_units < 0 or it.start_units < 0 or it.unit_price < 0:
            raise RampError(
                f"{it.key}: target {it.target_units}, start {it.start_units} and unit price "
                f"{it.unit_price} must be >= 0"
            )


def _behind(item: RampItem, stock: int) -> Fraction:
    """Days of cover the product is short of its target (use-less products: units)."""
    if item.use_units == 0:
        return Fraction(item.target_units - stock)
    return Fraction((item.target_units - stock) * item.use_days, item.use_units)


def _cover(stock: int, item: RampItem) -> float | None:
    if item.use_units == 0:
        return None
    exact = Decimal(stock * item.use_days) / Decimal(item.use_units)
    return float(exact.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def ramp_plan(
    items: list[RampItem],
    *,
    months: int,
    budget_sek_per_month: Decimal | None = None,
    max_units_per_month: int | None = None,
    days_per_month: int = DAYS_PER_MONTH,
) -> RampPlan:
    """The month-by-month plan of the module docstring."""
    _check(items, months, budget_sek_per_month, max_units_per_month)
    stock = {it.key: it.start_units for it in items}
    ordered = {it.key: 0 for it in items}
    spent = {it.key: Decimal(0) for it in items}
    plan: list[RampMonth] = []
    for m in range(1, months + 1):
        left = months - m + 1
        budget = budget_sek_per_month
        units_left = max_units_per_month
        order = sorted(items, key=lambda it: (-_behind(it, stock[it.key]), it.key))
        lines: dict[str, RampLine] = {}
        for it in order:
            s = stock[it.key]
            use = _ceil_div(it.use_units * days_per_month, it.use_days)
            gap = it.target_units - s
            aim = s + _ceil_div(gap, left) if gap > 0 else it.target_units
            need = max(0, aim - s + use)
            want = _ceil_div(need, it.pack_size)
            packs = want
            if units_left is not None:
                packs = min(packs, units_left // it.pack_size)
            pack_value = it.pack_size * it.unit_price
            if budget is not None and pack_value > 0:
                packs = min(packs, int(budget // pack_value))
            units = packs * it.pack_size
            value = units * it.unit_price
            if units_left is not None:
                units_left -= units
            if budget is not None:
                budget -= value
            end = max(0, s + units - use)
            lines[it.key] = RampLine(
                key=it.key,
                month=m,
                start_units=s,
                use_units=use,
                needed_units=want * it.pack_size,
                packs=packs,
                order_units=units,
                value=_money(value),
                end_units=end,
                cover_days=_cover(end, it),
                capped=packs < want,
            )
            stock[it.key] = end
            ordered[it.key] += units
            spent[it.key] += value
        month_lines = tuple(lines[it.key] for it in items)
        exact = sum(
            (x.order_units * it.unit_price for x, it in zip(month_lines, items, strict=True)),
            Decimal(0),
        )
        plan.append(
            RampMonth(
                month=m,
                packs=sum(x.packs for x in month_lines),
                order_units=sum(x.order_units for x in month_lines),
                value=_money(exact),
                capped=any(x.capped for x in month_lines),
                lines=month_lines,
            )
        )
    outcomes = tuple(
        RampOutcome(
            key=it.key,
            target_units=it.target_units,
            end_units=stock[it.key],
            reached=stock[it.key] >= it.target_units,
            gap_units=max(0, it.target_units - stock[it.key]),
            ordered_units=ordered[it.key],
            value=_money(spent[it.key]),
        )
        for it in items
    )
    return RampPlan(
        months=months,
        budget_sek_per_month=budget_sek_per_month,
        max_units_per_month=max_units_per_month,
        days_per_month=days_per_month,
        plan=tuple(plan),
        outcomes=outcomes,
        reached=all(o.reached for o in outcomes),
        value=_money(sum(spent.values(), Decimal(0))),
        order_units=sum(ordered.values()),
    )
