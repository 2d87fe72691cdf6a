"""Rationing of a scarce product among wards: values in, grants out.

A rationing rule gives each ward at most `cap` dispensing units of the product per
local day. The priority wards are not capped and are served first. When the stock at
hand cannot cover what is asked, the priority wards take it first, in the order they
asked; the other wards follow in the order they asked, each within its cap. A grant is
never more than asked, never more than the stock left, and comes in whole steps (a
ward line is granted whole packs: its step is the pack size).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Sources of a draw: a ward requisition line, a cabinet pocket refill, a manual grant.
DRAW_SOURCES = ("ward", "refill", "manual")


class RationingError(ValueError):
    """A bad value given to a rationing rule, naming the field and the value."""

    def __init__(self, field: str, value: object, message: str) -> None:
        super().__init__(f"{field}: {value!r} {message}")
        self.field = field
        self.value = value


@dataclass(frozen=True)
class Request:
    """What one ward asks of a rationed product: `units`, granted in whole `step`s."""

    ward: str
    units: int
    step: int = 1


@dataclass(frozen=True)
class Grant:
    """What a request gets. `capped` and `short` are the units cut by the ward's daily
    cap and by the stock at hand; `granted + capped + short == asked`."""

    ward: str
    asked: int
    granted: int
    capped: int
    short: int
    priority: bool

    @property
    def cut(self) -> int:
        return self.asked - self.granted


def serving_order(requests: Sequence[Request], priority_wards: Collection[str]) -> list[int]:
    """The indexes of the requests in the order they are served: the priority wards'
    requests first, then the others, each group in the order asked."""
    first = [i for i, r in enumerate(requests) if r.ward in priority_wards]
    rest = [i for i, r in enumerate(requests) if r.ward not in priority_wards]
    return first + rest


def ration(
    requests: Sequence[Request],
    already_drawn_today: Mapping[str, int],
    cap: int,
    priority_wards: Collection[str],
    available: int | None = None,
) -> list[Grant]:
    """The grant of each request, in the order of `requests`.

    `already_drawn_today`: units each ward was granted of the product earlier the same
    day (every channel). `available`: the stock the requests share (None: enough)."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise RationingError("cap_per_ward_day", cap, "must be a whole number of units, 0 or more")
    if available is not None and available < 0:
        raise RationingError("available", available, "must be 0 or more")
    for i, r in enumerate(requests):
        if r.units < 0:
            raise RationingError(f"requests[{i}].units", r.units, "must be 0 or more")
        if r.step < 1:
            raise RationingError(f"requests[{i}].step", r.step, "must be at least 1")
    drawn = {ward: max(0, int(units)) for ward, units in already_drawn_today.items()}
    left = available
    grants: dict[int, Grant] = {}
    for i in serving_order(requests, priority_wards):
        r = requests[i]
        priority = r.ward in priority_wards
        room = r.units if priority else min(r.units, max(0, cap - drawn.get(r.ward, 0)))
        allowed = room - room % r.step  # what the cap lets through, in whole steps
        fit = allowed if left is None else min(allowed, left)
        granted = fit - fit % r.step
        capped = r.units - allowed
        short = allowed - granted  # what the cap let through but the stock did not
        if left is not None:
            left -= granted
        drawn[r.ward] = drawn.get(r.ward, 0) + granted
        grants[i] = Grant(r.ward, r.units, granted, capped, short, priority)
    return [grants[i] for i in range(len(requests))]


def cut_reason(grant: Grant, cap: int) -> str:
    """Why a request got less than it asked, in words for the line and the audit."""
    parts = []
    if grant.capped:
        parts.append(f"rationed: cap {cap} a day for ward {grant.ward}")
    if grant.short:
        parts.append("rationed: stock short, priority wards first")
    return "; ".join(parts)


def check_wards(field: str, wards: Iterable[str], known: Collection[str]) -> list[str]:
    """The wards as given (each once, in order), or an error naming the first unknown."""
    seen: list[str] = []
    for ward in wards:
        if ward not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise RationingError(field, ward, f"is not a ward of this site ({listed})")
        if ward not in seen:
            seen.append(ward)
    return seen
