"""The states and statuses stored in the ledger's tables, each set defined once.

The tables' CHECK constraints (controller/ledger/schema_*.py), the HTTP API's allowed
values and the state machines of packing jobs and pocket refills are all derived from
these enums, so a state added here reaches every one of them and a state added anywhere
else alone fails tests/unit/test_states_defined_once.py. Ward supply's states are in
controller/ledger/ward_states.py, defined the same way.

The members are `StrEnum`s: a member equals, and is stored as, its value.
"""

from __future__ import annotations

import enum


def values(states: type[enum.StrEnum]) -> tuple[str, ...]:
    """The stored values of a set of states, in their order of definition, as plain
    strings (so messages and CHECK constraints show `'open'`, not an enum member)."""
    return tuple(str(state) for state in states)


# ---------------------------------------------------------------- dose packing


class DoseOrderStatus(enum.StrEnum):
    """A dose order waits for a pharmacist's review, or was approved or rejected."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


#: The statuses a review decides between.
REVIEWED_ORDER_STATUSES = (DoseOrderStatus.APPROVED, DoseOrderStatus.REJECTED)


class JobState(enum.StrEnum):
    """A packing job's life (controller/packing/job.py holds its transitions)."""

    PLANNED = "planned"
    RESERVED = "reserved"
    LOADED = "loaded"
    PACKING = "packing"
    HELD = "held"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    MANUAL = "manual"  # nothing in it can be machine-packed: prepared by hand


#: Jobs that are done: nothing more happens to them.
TERMINAL_JOB_STATES = (
    JobState.COMPLETED,
    JobState.PARTIAL,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.MANUAL,
)
#: Jobs still to pack or being packed.
OPEN_JOB_STATES = tuple(s for s in JobState if s not in TERMINAL_JOB_STATES)


# ---------------------------------------------------------------- pocket refills


class RefillState(enum.StrEnum):
    """A pocket refill (controller/cabinets/replenishment.py holds its transitions)."""

    RESERVED = "reserved"  # stock held in the store, waiting for a round
    PICKING = "picking"  # on a pick list
    BOOKED = "booked"  # scanned into the pocket and posted; the cabinet not told yet
    CONFIRMED = "confirmed"  # the cabinet acknowledged the new count
    CANCELLED = "cancelled"


#: Refills the controller still has to carry on with.
OPEN_REFILL_STATES = (RefillState.RESERVED, RefillState.PICKING, RefillState.BOOKED)


# ---------------------------------------------------------------- holds and discrepancies


class HoldStatus(enum.StrEnum):
    HELD = "held"
    RELEASED = "released"
    WASTED = "wasted"


class DiscrepancyStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


# ---------------------------------------------------------------- pack verification


class PackStatus(enum.StrEnum):
    VERIFIED = "verified"
    BLOCKED = "blocked"
    DECOMMISSIONED = "decommissioned"


class VerificationOperation(enum.StrEnum):
    VERIFY = "verify"
    DECOMMISSION = "decommission"
    UNDO = "undo"


class VerificationRequestStatus(enum.StrEnum):
    """A request owed to the national verification system."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class AlertStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


# ---------------------------------------------------------------- purchasing


class PurchaseOrderStatus(enum.StrEnum):
    OPEN = "open"
    PARTIAL = "partial"
    COMPLETE = "complete"
    CANCELLED = "cancelled"


class PurchaseLineStatus(enum.StrEnum):
    """open: nothing delivered or said yet; back_order: partly delivered, the rest
    promised; delivered: in full (substitutes count); short: the supplier cannot deliver
    the rest; cancelled: closed by the pharmacy before it was delivered in full."""

    OPEN = "open"
    BACK_ORDER = "back_order"
    DELIVERED = "delivered"
    SHORT = "short"
    CANCELLED = "cancelled"


#: Lines whose rest is still expected from the supplier.
EXPECTED_LINE_STATUSES = (PurchaseLineStatus.OPEN, PurchaseLineStatus.BACK_ORDER)
