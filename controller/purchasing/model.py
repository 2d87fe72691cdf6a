"""What purchasing hands out: orders, their lines, receipts and supplier figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from controller.ledger.errors import LedgerError


class PurchasingError(LedgerError):
    """A refused purchasing request; `problems` names each bad row, field and value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def line_status(units: int, received: int, back_order: int, short: int) -> str:
    """A line's state from its quantities (cancelled is set by the pharmacy, not here)."""
    if received + short >= units:
        return "short" if short else "delivered"
    return "back_order" if back_order else "open"


@dataclass(frozen=True)
class OrderLine:
    line_no: int
    gtin: str
    article: int
    name: str
    packs: int
    pack_size: int
    units: int
    unit_price: Decimal
    received_units: int
    back_order_units: int
    short_units: int
    status: str  # open, back_order, delivered, short, cancelled

    @property
    def open_units(self) -> int:
        """Units still expected: neither received nor declared short."""
        if self.status in ("delivered", "short", "cancelled"):
            return 0
        return self.units - self.received_units - self.short_units


@dataclass(frozen=True)
class PurchaseOrder:
    number: str
    supplier: str
    supplier_name: str
    status: str  # open, partial, complete, cancelled
    created_at: datetime
    created_by: str
    expected_on: date
    closed_at: datetime | None
    note: str | None
    lines: tuple[OrderLine, ...]

    @property
    def value(self) -> Decimal:
        return sum((ln.units * ln.unit_price for ln in self.lines), Decimal(0)).quantize(
            Decimal("0.01")
        )


@dataclass(frozen=True)
class Substitute:
    """A product of the short line's substitution group that could be ordered instead."""

    gtin: str
    name: str
    supplier: str | None
    usable_units: int


@dataclass(frozen=True)
class LineOutcome:
    """What one delivery did to one order line."""

    line_no: int
    gtin: str
    name: str
    ordered: int
    delivered_now: int
    substituted_now: int  # of delivered_now, units of another product of the group
    received_total: int
    back_order: int
    short_now: int  # declared short by this delivery
    status: str
    substitutes: tuple[Substitute, ...] = ()  # suggested when the line ends short


@dataclass(frozen=True)
class ReceivedPack:
    """A serialised pack booked in, to be verified."""

    gtin: str
    batch: str
    expiry: date
    serial: str
    location: str


@dataclass(frozen=True)
class Receipt:
    """A delivery matched against its order and booked (or found booked before)."""

    order: str
    note: str
    booked: bool  # False: this delivery note was booked before; nothing changed
    order_status: str
    lines: tuple[LineOutcome, ...]
    units: int
    warnings: tuple[str, ...] = ()  # short-dated lots
    packs: tuple[ReceivedPack, ...] = ()
    verification: dict[str, str] = field(default_factory=dict)  # serial -> outcome


@dataclass(frozen=True)
class SupplierReliability:
    """How a supplier keeps its promises, over its order lines that are due: those
    settled (delivered or short) and those whose expected date has passed."""

    supplier: str
    name: str
    orders: int
    lines_due: int
    lines_in_full: int
    lines_on_time_in_full: int
    units_ordered: int
    units_received: int
    lines_late: int  # due, still open or back-ordered
    mean_lead_days: float | None  # order to delivery, over deliveries

    @property
    def fill_rate(self) -> float | None:
        return round(self.units_received / self.units_ordered, 4) if self.units_ordered else None

    @property
    def otif(self) -> float | None:
        if not self.lines_due:
            return None
        return round(self.lines_on_time_in_full / self.lines_due, 4)

    @property
    def in_full_rate(self) -> float | None:
        return round(self.lines_in_full / self.lines_due, 4) if self.lines_due else None
