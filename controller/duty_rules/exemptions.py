"""The rules of the duty's scope and of exemptions: what a decision must hold, and what
a product is judged against. Values in, a decision out; no database.

A product is judged, in this order:

1. out of scope (the product, or its whole category, is marked out with a reason; or a
   device or protective equipment is durable): not assessed at all;
2. exempt with no level: left out of the share (it is listed with its exemption);
3. exempt with a reduced level of N days: assessed against N days;
4. otherwise: assessed against the full obligation (30 days).

A revoked exemption counts as none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

#: The obligation: one month of normal use, in days.
OBLIGATION_DAYS = 30
#: A reason, risk assessment or measures must be written out: at least this many
#: characters once stripped.
MIN_TEXT = 10
MAX_TEXT = 2000
SCOPE_REASONS = ("individual_patient", "dental_care", "manufacturing_material")
DURABILITY = ("consumable", "durable")
#: Only these categories may be durable (drugs and special food are always consumable).
DURABLE_CATEGORIES = ("medical_device", "protective_equipment")

Kind = Literal["out_of_scope", "exempt", "reduced", "full"]


class DutyRuleError(ValueError):
    """A decision refused by a rule: names the field and the value."""

    def __init__(self, field: str, value: object, message: str) -> None:
        super().__init__(f"{field}: {value} {message}")
        self.field = field
        self.value = value


def check_text(field: str, value: str) -> str:
    """The text stripped; refused when it is not written out (too short) or too long."""
    text = value.strip()
    if len(text) < MIN_TEXT:
        raise DutyRuleError(
            field, repr(value), f"must be written out (at least {MIN_TEXT} characters)"
        )
    if len(text) > MAX_TEXT:
        raise DutyRuleError(field, repr(text[:20] + "..."), f"is longer than {MAX_TEXT} characters")
    return text


def check_review_date(review_date: date, today: date) -> date:
    """A review date must be after today."""
    if review_date < today:
        raise DutyRuleError("review_date", review_date.isoformat(), "is in the past")
    if review_date == today:
        raise DutyRuleError(
            "review_date", review_date.isoformat(), "is today; it must be after today"
        )
    return review_date


def check_level(level_days: int | None, obligation_days: int = OBLIGATION_DAYS) -> int | None:
    """A reduced level: None (the product is out of the figures) or 0 <= N < obligation."""
    if level_days is None:
        return None
    if isinstance(level_days, bool) or not isinstance(level_days, int):
        raise DutyRuleError("level_days", repr(level_days), "is not a whole number of days")
    if not 0 <= level_days < obligation_days:
        raise DutyRuleError(
            "level_days",
            level_days,
            f"is out of range (0 to {obligation_days - 1}; lower than the obligation)",
        )
    return level_days


def check_scope_reason(reason: str) -> str:
    if reason not in SCOPE_REASONS:
        raise DutyRuleError("reason", repr(reason), f"is not one of {', '.join(SCOPE_REASONS)}")
    return reason


def check_durability(gtin: str, category: str, durability: str) -> str:
    """Only devices and protective equipment may be durable."""
    if durability not in DURABILITY:
        raise DutyRuleError("durability", repr(durability), "is not consumable or durable")
    if durability == "durable" and category not in DURABLE_CATEGORIES:
        raise DutyRuleError(
            "durability",
            repr(durability),
            f"refused for {gtin}: a {category} is always consumable "
            "(only medical devices and protective equipment may be durable)",
        )
    return durability


@dataclass(frozen=True)
class Judgement:
    """What a product is judged against."""

    kind: Kind
    level_days: int | None  # the days it is assessed on; None when not assessed
    reason: str | None = None  # out of scope: why ("durable" for a durable product)

    @property
    def assessed(self) -> bool:
        return self.level_days is not None

    @property
    def scope(self) -> str:
        """ "in", or the reason it is out of scope."""
        return self.reason if self.kind == "out_of_scope" and self.reason else "in"


def obligation_for(
    obligation_days: int,
    *,
    scope_reason: str | None = None,
    durability: str = "consumable",
    exemption_status: str | None = None,
    exemption_level: int | None = None,
) -> Judgement:
    """What a product is judged against: out of scope (with the reason), exempt (left
    out of the share), a reduced level of N days, or the full obligation."""
    if scope_reason is not None:
        return Judgement("out_of_scope", None, scope_reason)
    if durability == "durable":
        return Judgement("out_of_scope", None, "durable")
    if exemption_status == "active":
        if exemption_level is None:
            return Judgement("exempt", None)
        return Judgement("reduced", min(exemption_level, obligation_days))
    return Judgement("full", obligation_days)
