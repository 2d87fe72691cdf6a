"""Ward supply's vocabulary: requisitions as they arrive, the states of a line, a pick
list and a delivery note, and the errors a requisition is refused with.

The states are defined here once; the tables' CHECK constraints, the API's literals and
the services take them from these enums.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

# Whole packs per line: more than any ward orders of one product in one requisition.
MAX_PACKS_PER_LINE = 500
MAX_LINES_PER_REQUISITION = 400
MAX_ID_CHARS = 64


class RequisitionSource(enum.StrEnum):
    FHIR = "fhir"
    JSON = "json"
    CLI = "cli"
    TOPUP = "topup"  # a top-up round counted by scan in the drug room
    BACK_ORDER = "back_order"  # the rest of a short line, waiting for the next run


class LineStatus(enum.StrEnum):
    """Where one requisition line is. Review: `pending` (routine) or `flagged` (a
    pharmacist decides it alone); then `approved` (possibly reduced or substituted) or
    `rejected`; `ordered` waits for the supplier (a product the store does not keep);
    `picking` is on a pick list with stock reserved; `dispatched` left with a delivery
    note; `delivered` was received on the ward; `short` could not be picked at all and
    lives on as a back order line; `cancelled` was withdrawn before picking."""

    PENDING = "pending"
    FLAGGED = "flagged"
    APPROVED = "approved"
    REJECTED = "rejected"
    ORDERED = "ordered"
    PICKING = "picking"
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"
    SHORT = "short"
    CANCELLED = "cancelled"


OPEN_REVIEW = (LineStatus.PENDING, LineStatus.FLAGGED)


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REDUCE = "reduce"
    SUBSTITUTE = "substitute"
    REJECT = "reject"


class Flag(enum.StrEnum):
    """Why a line needs a pharmacist's own decision (docs/ward-supply.md)."""

    CONTROLLED = "controlled"  # a narcotic or other controlled substance
    LICENCE = "licence"  # an unlicensed (licence) product
    NOT_ON_LIST = "not_on_list"  # not in the drug room's assortment
    UNUSUAL_QUANTITY = "unusual_quantity"  # far above the ward's usual quantity


class PickListStatus(enum.StrEnum):
    OPEN = "open"
    DISPATCHED = "dispatched"


class NoteStatus(enum.StrEnum):
    IN_TRANSIT = "in_transit"
    RECEIVED = "received"


class Deviation(enum.StrEnum):
    """What a ward found at receipt that the note does not say."""

    MISSING = "missing"
    DAMAGED = "damaged"
    TOO_MANY = "too_many"


class WardSupplyError(ValueError):
    """A bad request, naming the field and the value; nothing was booked."""

    def __init__(self, field_name: str, value: object, message: str) -> None:
        self.field = field_name
        self.value = None if value is None else str(value)[:120]
        shown = "" if value is None else f" {self.value!r}"
        super().__init__(f"{field_name}:{shown} {message}")


class UnknownEntity(WardSupplyError):
    """An id that does not exist (a drug room, a note, a pick list)."""


class Refused(WardSupplyError):
    """A well-formed request the rules refuse (an external unit, a closed note)."""


class Conflict(WardSupplyError):
    """The thing is in another state now (a note already received)."""


@dataclass(frozen=True)
class LineIn:
    """One requested line: whole packs of a product, named by GTIN (or article)."""

    gtin: str
    packs: int
    note: str = ""


@dataclass(frozen=True)
class RequisitionIn:
    """A requisition as it arrived, parsed but not yet judged against the site.

    `sender` and `sender_id` together are the requisition's identity: the same pair
    sent twice is booked once. `drug_room` is the drug room's code in the site file.
    """

    sender: str
    sender_id: str
    drug_room: str
    lines: tuple[LineIn, ...]
    source: RequisitionSource
    urgent: bool = False
    requested_by: str = ""
    authored_at: datetime | None = None
    note: str = ""


@dataclass(frozen=True)
class Booked:
    """What `submit` answers: the requisition's number and whether it was new."""

    number: str
    duplicate: bool
    lines: int
    flagged: int
    refused_lines: tuple[str, ...] = field(default_factory=tuple)


def line_ids(lines: Sequence[int]) -> str:
    return ", ".join(str(n) for n in lines)
