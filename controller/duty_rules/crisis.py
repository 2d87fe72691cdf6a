"""Crisis periods as values: the checks of a new period's times, when two periods
overlap, and whether a product is in crisis at a moment. Nothing here reads the ledger.

A period runs from `starts_at` (included) to `ends_at` (excluded); no `ends_at`: it
has not ended. Its scope is a set of categories and a set of products; an empty scope
covers every product.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: How far back a new period may start: a decision is recorded within a day.
MAX_BACKDATE = timedelta(days=1)


class CrisisRuleError(ValueError):
    """A period refused by a rule: the field and the value at fault are named."""

    def __init__(self, field: str, value: object, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.value = value


@dataclass(frozen=True)
class Scope:
    categories: frozenset[str] = frozenset()
    # product GTIN -> its category (a product scope meets its category's scope)
    products: Mapping[str, str] = field(default_factory=dict)

    @property
    def everything(self) -> bool:
        return not self.categories and not self.products

    def covers(self, gtin: str, category: str) -> bool:
        return self.everything or category in self.categories or gtin in self.products

    def describe(self) -> str:
        if self.everything:
            return "every product"
        parts = [f"category {c}" for c in sorted(self.categories)]
        parts += [f"product {g}" for g in sorted(self.products)]
        return ", ".join(parts)


@dataclass(frozen=True)
class Period:
    id: int
    starts_at: datetime
    ends_at: datetime | None
    scope: Scope = field(default_factory=Scope)

    def in_force(self, at: datetime) -> bool:
        return self.starts_at <= at and (self.ends_at is None or at < self.ends_at)

    def describe(self) -> str:
        end = "open" if self.ends_at is None else self.ends_at.isoformat()
        return f"crisis {self.id} ({self.starts_at.isoformat()} to {end}; {self.scope.describe()})"


def times_overlap(
    a_start: datetime, a_end: datetime | None, b_start: datetime, b_end: datetime | None
) -> bool:
    """Two half-open intervals [start, end) share a moment; None is no end."""
    a_before_b_ends = b_end is None or a_start < b_end
    b_before_a_ends = a_end is None or b_start < a_end
    return a_before_b_ends and b_before_a_ends


def scopes_meet(a: Scope, b: Scope) -> bool:
    """Either covers everything, they share a category or a product, or one names a
    product of a category the other names."""
    if a.everything or b.everything:
        return True
    if a.categories & b.categories:
        return True
    if set(a.products) & set(b.products):
        return True
    return any(c in b.categories for c in a.products.values()) or any(
        c in a.categories for c in b.products.values()
    )


def overlaps(a: Period, b: Period) -> bool:
    return times_overlap(a.starts_at, a.ends_at, b.starts_at, b.ends_at) and scopes_meet(
        a.scope, b.scope
    )


def first_overlap(new: Period, existing: Iterable[Period]) -> Period | None:
    """The earliest-starting period of `existing` that `new` overlaps (itself excluded)."""
    met = [p for p in existing if p.id != new.id and overlaps(new, p)]
    return min(met, key=lambda p: (p.starts_at, p.id)) if met else None


def check_new_period(starts_at: datetime, ends_at: datetime | None, now: datetime) -> None:
    """A new period starts no more than a day before `now` and ends after it starts."""
    if starts_at < now - MAX_BACKDATE:
        raise CrisisRuleError(
            "starts_at",
            starts_at.isoformat(),
            f"{starts_at.isoformat()} is in the past (more than a day before {now.isoformat()})",
        )
    if ends_at is not None and ends_at <= starts_at:
        raise CrisisRuleError(
            "ends_at",
            ends_at.isoformat(),
            f"{ends_at.isoformat()} is not after starts_at {starts_at.isoformat()}",
        )


def check_end(period: Period, ends_at: datetime, now: datetime, *, ended: bool) -> None:
    """A period is ended once, after it starts, no more than a day back, and never
    later than the end it was decided with."""
    if ended:
        raise CrisisRuleError("id", period.id, f"crisis {period.id} has already ended")
    if ends_at <= period.starts_at:
        raise CrisisRuleError(
            "ends_at",
            ends_at.isoformat(),
            f"{ends_at.isoformat()} is not after starts_at {period.starts_at.isoformat()}",
        )
    if ends_at < now - MAX_BACKDATE:
        raise CrisisRuleError(
            "ends_at",
            ends_at.isoformat(),
            f"{ends_at.isoformat()} is in the past (more than a day before {now.isoformat()})",
        )
    if period.ends_at is not None and ends_at > period.ends_at:
        raise CrisisRuleError(
            "ends_at",
            ends_at.isoformat(),
            f"{ends_at.isoformat()} is after the period's decided end {period.ends_at.isoformat()}",
        )


def in_crisis(periods: Iterable[Period], gtin: str, category: str, at: datetime) -> bool:
    """Whether a period in force at `at` covers the product."""
    return any(p.in_force(at) and p.scope.covers(gtin, category) for p in periods)


def in_force(periods: Iterable[Period], at: datetime) -> list[Period]:
    return sorted((p for p in periods if p.in_force(at)), key=lambda p: (p.starts_at, p.id))
