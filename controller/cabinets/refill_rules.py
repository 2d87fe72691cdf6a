"""Refill planning without I/O: whether a low pocket asks for a refill, how much and
by when, and which refills go out together on a cabinet's pick list.

`controller.cabinets.replenishment` files, reserves and tells what these functions
decide; the scheduled round times come from the site file.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Generic, Protocol, TypeVar

from controller.ledger.states import OPEN_REFILL_STATES, RefillState

# Still on its way into the pocket: a second refill of the pocket would double it.
UNDER_WAY = OPEN_REFILL_STATES


class EarlierRefill(Protocol):
    """A refill of the same pocket, as far as a new request cares."""

    @property
    def state(self) -> RefillState: ...

    @property
    def settled_at(self) -> float | None: ...


class ListableRefill(Protocol):
    """A refill as far as pick lists care."""

    @property
    def cabinet(self) -> str: ...

    @property
    def state(self) -> RefillState: ...

    @property
    def urgent(self) -> bool: ...

    @property
    def due_at(self) -> datetime: ...


L = TypeVar("L", bound=ListableRefill)


def next_round(after: datetime, rounds: Sequence[time], tz: tzinfo) -> datetime:
    """The first scheduled round strictly after `after` (UTC in, UTC out)."""
    local = after.astimezone(tz)
    for day in (local.date(), local.date() + timedelta(days=1)):
        for at in sorted(rounds):
            candidate = datetime.combine(day, at, tzinfo=tz)
            if candidate > local:
                return candidate.astimezone(UTC)
    raise ValueError("rounds: no round time given")


def refill_wanted(
    *, blocked: bool, earlier: Iterable[EarlierRefill], read_at: float | None
) -> bool:
    """A low pocket asks for a refill unless its cabinet is blocked, a refill of it is
    under way, or one was told to the cabinet after its count was read at `read_at`
    (loop time): that count is stale."""
    if blocked:
        return False
    return not any(
        r.state in UNDER_WAY
        or (read_at is not None and r.settled_at is not None and r.settled_at >= read_at)
        for r in earlier
    )


@dataclass(frozen=True)
class RefillPlan:
    quantity: int  # up to the pocket's max
    urgent: bool  # an empty pocket does not wait for the round
    due_at: datetime


def plan_refill(
    *,
    count: int,
    pocket_max: int,
    now: datetime,
    rounds: Sequence[time],
    tz: tzinfo,
    urgent_due_minutes: float,
    round_due_minutes: float,
) -> RefillPlan:
    """A refill up to the pocket's max; an empty pocket's is urgent and due within
    `urgent_due_minutes`, any other is due `round_due_minutes` after the next round."""
    urgent = count == 0
    if urgent:
        due = now + timedelta(minutes=urgent_due_minutes)
    else:
        due = next_round(now, rounds, tz) + timedelta(minutes=round_due_minutes)
    return RefillPlan(pocket_max - count, urgent, due)


@dataclass(frozen=True)
class ListPlan(Generic[L]):
    """One cabinet's pick list to be made."""

    cabinet: str
    urgent: bool
    due_at: datetime
    refills: list[L]


def plan_pick_lists(
    refills: Iterable[L],
    *,
    blocked: Container[str],
    urgent_only: bool,
    now: datetime,
    round_at: datetime | None,
    round_due_minutes: float,
) -> list[ListPlan[L]]:
    """One pick list per cabinet with reserved refills (in cabinet order): every such
    cabinet for a round, only cabinets with an urgent refill for an urgent list (the
    cabinet's other reserved refills go along, the technician is there anyway). An
    urgent list is due with its earliest urgent refill, a round's list
    `round_due_minutes` after the round."""
    by_cabinet: dict[str, list[L]] = {}
    for refill in refills:
        if refill.state == RefillState.RESERVED and refill.cabinet not in blocked:
            by_cabinet.setdefault(refill.cabinet, []).append(refill)
    plans = []
    for cabinet, members in sorted(by_cabinet.items()):
        urgent = any(r.urgent for r in members)
        if urgent_only and not urgent:
            continue
        if urgent:
            due = min(r.due_at for r in members if r.urgent)
        else:
            due = (round_at or now) + timedelta(minutes=round_due_minutes)
        plans.append(ListPlan(cabinet, urgent, due, members))
    return plans


def refill_in_flight(
    *, state: RefillState, lines: int, scanned: int, settled_at: float | None, read_at: float
) -> bool:
    """A refill whose doses the cabinet's count may not show yet: being posted (every
    pack scanned), booked and the cabinet not told, or told after `read_at`."""
    return (
        state == RefillState.BOOKED
        or (state == RefillState.PICKING and lines > 0 and scanned == lines)
        or (settled_at is not None and settled_at >= read_at)
    )
