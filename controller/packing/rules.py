"""Packing decisions without I/O: what a job reserves, how a canister is topped up,
and how the tablets a job dispensed split into consumed and waste.

The runner reads the machine and the ledger, hands the values to these functions and
carries out what they decide, so each decision is tested with plain numbers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

# (batch, expiry, free quantity) of one lot in the store, first expiry first.
StoreLot = tuple[str, date, int]


class DispensedCounter(Protocol):
    """A canister as far as its product and monotonic dispensed counter go."""

    @property
    def gtin(self) -> str: ...

    @property
    def dispensed_total(self) -> int: ...


class CanisterCounters(Protocol):
    """A canister's count and monotonic counters as the machine reports them now."""

    @property
    def count(self) -> int: ...

    @property
    def dispensed_total(self) -> int: ...

    @property
    def refilled_total(self) -> int: ...


def with_reject_allowance(units_by_gtin: Mapping[str, int], allowance: float) -> dict[str, int]:
    """Units to reserve per product: the pouches' contents plus `allowance` (a
    fraction) of them, rounded up, for the pouches the vision check rejects."""
    return {gtin: units + math.ceil(units * allowance) for gtin, units in units_by_gtin.items()}


def dispensed_by_gtin(canisters: Iterable[DispensedCounter]) -> dict[str, int]:
    """The machine's dispensed totals per product (a product may sit in two canisters)."""
    totals: dict[str, int] = {}
    for canister in canisters:
        totals[canister.gtin] = totals.get(canister.gtin, 0) + canister.dispensed_total
    return totals


# ---------------------------------------------------------------- canister top-up


def top_up_wanted(free: int, units: int) -> bool:
    """A canister is topped up only when what it holds free is short of the job."""
    return free < units


class TopUpKind(enum.Enum):
    FILL = "fill"  # pour `quantity` of `batch` into the canister
    RUN_DRY = "run_dry"  # its lot is gone from the store (or it is full): use it up first
    NO_STOCK = "no_stock"  # an empty canister and nothing in the store


@dataclass(frozen=True)
class TopUp:
    kind: TopUpKind
    batch: str | None = None
    expiry: date | None = None
    quantity: int = 0


def choose_top_up(
    *, capacity: int, count: int, current_lot: str | None, store_lots: Sequence[StoreLot]
) -> TopUp:
    """What to pour into a canister that holds `count` tablets (as the machine says)
    of `current_lot`, from the store's lots (first expiry first).

    A canister holds one lot: one that still holds tablets takes more of its own lot
    only, up to its capacity; when the store has none of it left, or there is no room,
    it runs dry first and then takes the next lot. An empty canister takes the first
    expiring lot, as much as it holds and the store has."""
    room = capacity - count
    lots = store_lots
    if count > 0:
        lots = [entry for entry in store_lots if entry[0] == current_lot]
        if not lots or room <= 0:
            return TopUp(TopUpKind.RUN_DRY, batch=current_lot)
    elif not lots:
        return TopUp(TopUpKind.NO_STOCK)
    batch, expiry, central = lots[0]
    return TopUp(TopUpKind.FILL, batch=batch, expiry=expiry, quantity=min(room, central))


@dataclass(frozen=True)
class CountersBefore:
    """A canister's counters as read before a refill was told to the machine (count
    and dispensed total unknown for a refill filed before they were recorded)."""

    refilled: int
    count: int | None
    dispensed: int | None


def fill_arrived(
    *,
    quantity: int,
    before: CountersBefore,
    now: CanisterCounters,
    reports_refilled_total: bool,
) -> bool | None:
    """Whether a refill of `quantity` reached the machine: from its refilled total
    where it reports one, else from count plus dispensed total (which grows by exactly
    what was poured in). None: the counters cannot tell (nothing read before)."""
    if reports_refilled_total:
        return now.refilled_total >= before.refilled + quantity
    if before.count is None or before.dispensed is None:
        return None
    poured = now.count - before.count + now.dispensed_total - before.dispensed
    return poured >= quantity


# ---------------------------------------------------------------- a job's tablets


@dataclass(frozen=True)
class ProductSplit:
    """What became of one product's tablets in a job.

    `reported`: the machine's counter delta; `dispensed`: that delta, raised to what
    the good pouches hold when the counter reports less (`short`)."""

    reported: int
    dispensed: int
    consumed: int

    @property
    def wasted(self) -> int:
        return self.dispensed - self.consumed

    @property
    def short(self) -> bool:
        return self.reported < self.consumed


def split_job(
    products: Iterable[str],
    good_units: Mapping[str, int],
    before: Mapping[str, int],
    after: Mapping[str, int],
) -> dict[str, ProductSplit]:
    """The consumed and waste split of a job that ended (completed, stopped, aborted),
    per product, from the dispensed totals before and after it: the tablets of the good
    pouches are consumed, everything else the canister dispensed went into rejected
    pouches and is waste. Pouches are packed in order, so `good_units` are the contents
    of the first good ones."""
    split = {}
    for gtin in products:
        reported = after.get(gtin, 0) - before.get(gtin, 0)
        used = good_units.get(gtin, 0)
        split[gtin] = ProductSplit(reported, max(reported, used), used)
    return split


def lost_job_deltas(
    products: Iterable[str], baseline: Mapping[str, int], now: Mapping[str, int]
) -> dict[str, int]:
    """Tablets each product's canisters dispensed since the job's baseline (negative:
    the machine's counters restarted)."""
    return {gtin: now.get(gtin, 0) - baseline.get(gtin, 0) for gtin in products}


def counters_explain(held: int, count_now: int, dispensed: int) -> bool:
    """The ledger's holding of a canister is explained by the machine only if it is
    what the canister still has plus what it dispensed since."""
    return held == count_now + dispensed


def lost_job_waste(
    deltas: Mapping[str, int], baseline_known: bool, unexplained: Sequence[str]
) -> dict[str, int] | None:
    """The waste of a job the machine lost (restarted, reset by hand): what left the
    canisters, since its pouches cannot be verified. None when the counters cannot
    say (no baseline, a canister not explained, a counter that went back): the
    canisters must be counted and nothing is booked."""
    if not baseline_known or unexplained or any(d < 0 for d in deltas.values()):
        return None
    return {gtin: d for gtin, d in deltas.items() if d > 0}
