"""Dose order intake: FHIR R4 MedicationRequest and HL7 v2 RDE^O11 to `DoseOrder`s.

`parse_orders` is the entry point: it tells the two formats apart and returns the
orders of one message, or raises `IntakeError` listing every problem (all or nothing).
Patients are pseudonymised the moment their identifier is read. This package does no
I/O and reads no clock; the mapping rules are in docs/order-intake.md.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from controller.intake.common import (
    MAX_UNITS,
    Catalogue,
    IntakeError,
    Problem,
    Strength,
)
from controller.intake.fhir import parse_fhir
from controller.intake.hl7v2 import parse_hl7v2, parse_message
from controller.packing.orders import DoseOrder

_LEADING = "\ufeff\x0b\r\n\t "


def message_format(payload: str | bytes | bytearray | dict[str, Any]) -> str:
    """ "fhir" for a dict or JSON text, "hl7v2" for text starting with "MSH"; anything
    else is refused with the first characters it starts with."""
    if isinstance(payload, dict):
        return "fhir"
    if isinstance(payload, bytes | bytearray):
        head = bytes(payload[:256]).decode("latin-1").replace("\xef\xbb\xbf", "").lstrip(_LEADING)
    elif isinstance(payload, str):
        head = payload[:256].lstrip(_LEADING)
    else:
        problem = Problem("payload", type(payload).__name__, "expected str, bytes or a dict")
        raise IntakeError("message", [problem])
    if head.startswith("MSH"):
        return "hl7v2"
    if head.startswith(("{", "[")):
        return "fhir"
    shown = head[:3] if head else None
    problem = Problem("payload", shown, "is neither FHIR JSON ('{') nor HL7 v2 ('MSH')")
    raise IntakeError("message", [problem])


def parse_orders(
    payload: str | bytes | bytearray | dict[str, Any],
    *,
    catalogue: Catalogue,
    salt: str,
    default_ward: str | None = None,
    today: date,
) -> list[DoseOrder]:
    """The DoseOrders of one message (its format from `message_format`). `today` (the
    site's local date) refuses orders that have ended."""
    if not salt:
        raise ValueError("salt must not be empty: pseudonyms would be guessable")
    kw: dict[str, Any] = {
        "catalogue": catalogue,
        "salt": salt,
        "default_ward": default_ward,
        "today": today,
    }
    if message_format(payload) == "fhir":
        return parse_fhir(payload, **kw)
    assert not isinstance(payload, dict)  # a dict is FHIR
    return parse_hl7v2(payload, **kw)


__all__ = [
    "MAX_UNITS",
    "Catalogue",
    "IntakeError",
    "Problem",
    "Strength",
    "message_format",
    "parse_fhir",
    "parse_hl7v2",
    "parse_message",
    "parse_orders",
]
