"""The ledger's values: what callers hand in (needs, uses, moves, delivery lines) and
what they get back (reservations, balances, holds, discrepancies), with the small
checks that refuse a bad value by naming its field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from controller.ledger.errors import InvalidQuantity, LedgerError
from controller.ledger.schema import WASTE_REASONS


@dataclass(frozen=True)
class CounterMark:
    """A device counter value that a command accounts for up to."""

    device: str
    counter: str
    value: int


@dataclass(frozen=True)
class Need:
    """So much of a product, wanted from a reservation; with `batch`, of that lot only
    (a canister is topped up from the lot it already holds, never with a second one)."""

    gtin: str
    quantity: int
    batch: str | None = None


@dataclass(frozen=True)
class Use:
    """What became of reserved stock: `quantity` of `gtin` went to `to_location`.

    `gtin` is the product that was ordered; lines that substituted another product
    of its substitution group serve it too, and the movement says so.
    """

    gtin: str
    quantity: int
    to_location: str
    kind: str = "consume"
    reason: str = ""
    reason_code: str | None = None
    # only from the reservation's lines of this lot (a pack scanned at picking)
    batch: str | None = None


@dataclass(frozen=True)
class LotMove:
    """`quantity` of one lot moved from one location to another: a physical fact, so the
    lot need not be usable. From an external location (ADJUSTMENT) nothing is taken."""

    gtin: str
    batch: str
    quantity: int
    from_location: str
    to_location: str
    kind: str = "transfer"
    reason: str = ""
    reason_code: str | None = None


@dataclass(frozen=True)
class Allocation:
    """One reservation line: a lot at a location, held for a reservation."""

    gtin: str
    batch: str
    expiry: date
    location: str
    quantity: int
    posted: int
    substituted_for: str | None = None


@dataclass(frozen=True)
class ReservationView:
    key: str
    purpose: str
    status: str
    expires_at: datetime
    lines: tuple[Allocation, ...]

    def reserved_of(self, gtin: str) -> int:
        return sum(line.quantity for line in self.lines if line.gtin == gtin)


@dataclass(frozen=True)
class LotStock:
    """A balance row. `held`: a location hold quarantines it here, so none of it is
    available, whatever the lot's status."""

    location: str
    gtin: str
    batch: str
    expiry: date
    status: str
    on_hand: int
    reserved: int
    held: bool = False

    @property
    def available(self) -> int:
        return 0 if self.held else self.on_hand - self.reserved


@dataclass(frozen=True)
class HoldView:
    """A location hold: a lot quarantined at one location, and what became of it."""

    id: int
    key: str
    location: str
    gtin: str
    batch: str
    expiry: date
    quantity_at_hold: int
    on_hand_now: int
    reason: str
    status: str
    raised_at: datetime
    raised_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


@dataclass(frozen=True)
class DiscrepancyView:
    """A device (or a count) that disagreed with the ledger, until someone resolves it."""

    id: int
    key: str
    location: str
    gtin: str
    source: str
    device_value: int
    ledger_value: int
    difference: int
    detail: str
    status: str
    raised_at: datetime
    raised_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


@dataclass(frozen=True)
class DeliveryLine:
    """One line of a delivery: a lot of a product into a location."""

    gtin: str
    batch: str
    expiry: date
    quantity: int
    location: str
    # SEK per dispensing unit as bought (None: not given). Stored on the lot when the
    # lot is created; a later delivery of the same lot keeps the first price.
    unit_price: Decimal | None = None


class DeliveryError(LedgerError):
    """A delivery with bad lines; nothing of it was booked."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("delivery refused:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


def positive(field: str, value: object) -> int:
    """A quantity that must be a whole number above zero (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidQuantity(field, value)
    return value


def required_text(field: str, value: object, limit: int) -> str:
    """A required free text (a reason, a note): blank or too long is refused."""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise LedgerError(
            f"invalid {field}: {value!r} (must be non-blank, at most {limit} characters)"
        )
    return value.strip()


INT32 = 2**31 - 1  # the largest value an Integer column holds on PostgreSQL


def whole_count(field: str, value: object) -> int:
    """A count a device reported: 0 up to what an Integer column holds."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT32:
        raise LedgerError(f"invalid {field}: {value!r} (must be a whole number 0..{INT32})")
    return value


def check_actor(actor: str) -> None:
    """A decision (a hold released, a discrepancy resolved) names who made it."""
    if not isinstance(actor, str) or not actor.strip():
        raise LedgerError(f"invalid actor: {actor!r} (who decided must be named)")


def check_waste_reason(code: str) -> None:
    if code not in WASTE_REASONS:
        raise LedgerError(f"invalid waste reason_code: {code!r} (one of {WASTE_REASONS})")


def price_problem(value: Decimal) -> str | None:
    """What is wrong with a price per unit (SEK), or None: it must fit the lot's column."""
    if not value.is_finite() or value < 0 or value >= 10**8:
        return "must be a number from 0 to below 100000000"
    if value != value.quantize(Decimal("0.0001")):
        return "has more than 4 decimals"
    return None


def delivery_line_problem(line: DeliveryLine, today: date) -> LedgerError | None:
    """What is wrong with a delivery line before anything is looked up, or None."""
    if not isinstance(line.quantity, int) or isinstance(line.quantity, bool) or line.quantity <= 0:
        return InvalidQuantity("quantity", line.quantity)
    if line.unit_price is not None:
        price = line.unit_price
        problem = "is not a Decimal" if not isinstance(price, Decimal) else price_problem(price)
        if problem:
            return LedgerError(f"unit_price: {price!r} {problem}")
    if not line.batch or len(line.batch) > 20:
        return LedgerError(f"invalid batch: {line.batch!r}")
    if line.expiry < today:
        return LedgerError(
            f"expired lot: batch {line.batch!r} of {line.gtin} expired on {line.expiry}"
        )
    return None
