"""The stock ledger: one class composed of the parts a newcomer reads one at a time.

Every command is one transaction and carries an idempotency key: the first run stores
its result under the key, a retry with the same key returns that result and books
nothing. Stock only leaves a (location, lot) row through a conditional UPDATE whose
WHERE clause checks that enough is there, so concurrent writers (several controllers on
one PostgreSQL) can never drive a balance below zero or reserve the same tablet twice.
Every change is written to the hash-chained audit trail in the same transaction.

Where each part lives:

- core.py: the transaction, idempotency and audit core, shared lookups, constants
- views.py: the values handed in and out, and the small checks of them
- booking.py: movements and balances, the conditional UPDATEs, FEFO order of free stock
- masterdata.py: products, locations, exemptions, audit events, lots
- movements.py: goods in, transfers, consumption, waste, returns, counts, lot status
- delivery_csv.py: the one reader of delivery files
- reservations.py: two-phase reservations and their guarantees
- holds.py: location holds and stock discrepancies
- marks.py: device counter marks
- queries.py: stock, free stock and movement totals
- duty_scope.py, duty_preparedness.py, duty_shortages.py, duty_use.py: the stock
  duty's scope and exemptions, preparedness and crisis periods, shortages, rationing
  and licences, and external use
"""

from __future__ import annotations

from controller.ledger.booking import Booking
from controller.ledger.core import (
    ADJUSTMENT,
    CONSUMED,
    LOT_STATUSES,
    MAX_ACTOR,
    RETRYABLE_SQLSTATES,
    SUPPLIER,
    WASTE,
    LedgerCore,
    utcnow,
)
from controller.ledger.duty_preparedness import DutyPreparedness
from controller.ledger.duty_scope import DutyScope
from controller.ledger.duty_shortages import DutyShortages
from controller.ledger.duty_use import DutyUse
from controller.ledger.holds import MAX_HOLD_KEY, Holds
from controller.ledger.marks import CounterMarks
from controller.ledger.masterdata import MasterData
from controller.ledger.movements import Movements
from controller.ledger.queries import Queries
from controller.ledger.reservations import Reservations
from controller.ledger.schema import metadata
from controller.ledger.views import (
    INT32,
    Allocation,
    CounterMark,
    DeliveryError,
    DeliveryLine,
    DiscrepancyView,
    HoldView,
    LotMove,
    LotStock,
    Need,
    ReservationView,
    Use,
)


class Ledger(
    DutyScope,
    DutyPreparedness,
    DutyShortages,
    DutyUse,
    Movements,
    Holds,
    Queries,
    Reservations,
    Booking,
    MasterData,
    CounterMarks,
    LedgerCore,
):
    """The stock ledger on one SQLAlchemy engine (SQLite or PostgreSQL)."""


__all__ = [
    "ADJUSTMENT",
    "CONSUMED",
    "INT32",
    "LOT_STATUSES",
    "MAX_ACTOR",
    "MAX_HOLD_KEY",
    "RETRYABLE_SQLSTATES",
    "SUPPLIER",
    "WASTE",
    "Allocation",
    "CounterMark",
    "DeliveryError",
    "DeliveryLine",
    "DiscrepancyView",
    "HoldView",
    "Ledger",
    "LotMove",
    "LotStock",
    "Need",
    "ReservationView",
    "Use",
    "metadata",
    "utcnow",
]
