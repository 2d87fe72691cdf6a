"""The states of ward supply's tables, defined once: the tables' CHECK constraints
(controller/ledger/schema_wardsupply.py), the service (controller/wardsupply) and the
API's literals all take them from here (a test ties the API's literals to them)."""

from __future__ import annotations

import enum


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
