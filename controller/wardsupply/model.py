"""Ward supply's vocabulary: requisitions as they arrive, the review's decisions and
flags, and the errors a requisition is refused with. The states of a line, a pick list
and a delivery note are the ledger's tables' (controller/ledger/ward_states.py), offered
here too.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

# The states of ward supply's tables are the ledger's (controller/ledger/ward_states.py),
# so the tables' CHECKs and the services read one definition; they are offered here too.
from controller.ledger.ward_states import Deviation as Deviation
from controller.ledger.ward_states import LineStatus as LineStatus
from controller.ledger.ward_states import NoteStatus as NoteStatus
from controller.ledger.ward_states import PickListStatus as PickListStatus
from controller.ledger.ward_states import RequisitionSource as RequisitionSource

# Whole packs per line: more than any ward orders of one product in one requisition.
MAX_PACKS_PER_LINE = 500
MAX_LINES_PER_REQUISITION = 400
MAX_ID_CHARS = 64


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
