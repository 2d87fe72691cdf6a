"""The central stock ledger: every pack and tablet, where it is, and why it moved."""

from controller.ledger.errors import (
    DiscrepancyClosed,
    HoldClosed,
    InsufficientStock,
    LedgerError,
    ReservationClosed,
    UnknownEntity,
)
from controller.ledger.ledger import (
    Allocation,
    CounterMark,
    DeliveryError,
    DeliveryLine,
    DiscrepancyView,
    HoldView,
    Ledger,
    LotMove,
    LotStock,
    Need,
    ReservationView,
    Use,
)
from controller.ledger.verify import Violation, verify_ledger

__all__ = [
    "Allocation",
    "CounterMark",
    "DeliveryError",
    "DeliveryLine",
    "DiscrepancyClosed",
    "DiscrepancyView",
    "HoldClosed",
    "HoldView",
    "InsufficientStock",
    "Ledger",
    "LedgerError",
    "LotMove",
    "LotStock",
    "Need",
    "ReservationClosed",
    "ReservationView",
    "UnknownEntity",
    "Use",
    "Violation",
    "verify_ledger",
]
