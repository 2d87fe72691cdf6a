"""GS1 pack identifiers from scanned symbols (GS1 DataMatrix on medicine packs).

Parsing is biip's; this module turns its result into the fields the pharmacy needs and
refuses anything incomplete or inconsistent with an error that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import biip

_NAMES = {"01": "GTIN", "10": "batch", "17": "expiry date", "21": "serial"}


class ScanError(ValueError):
    """A scan that cannot identify a pack; the message names what is wrong."""


@dataclass(frozen=True)
class PackId:
    gtin: str
    batch: str
    expiry: date
    serial: str | None = None


def gs1_check_digit(body: str) -> int:
    """GS1 mod-10 check digit of the digits before it (weights 3, 1, ... from the right)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10


def valid_gtin(value: str) -> str:
    """A GTIN-8, -12, -13 or -14 with a right check digit, as 14 digits: the one check
    of a GTIN for the site file, the API, the CLI and the duty's import files."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (8, 12, 13, 14):
        raise ValueError(f"GTIN {value!r} must be 8, 12, 13 or 14 digits")
    if gs1_check_digit(digits[:-1]) != int(digits[-1]):
        raise ValueError(
            f"GTIN {value!r} has check digit {digits[-1]}, expected {gs1_check_digit(digits[:-1])}"
        )
    return digits.zfill(14)


def parse_pack(data: str) -> PackId:
    """Reads GTIN (01), expiry (17), batch (10) and serial (21) from one scan."""
    shown = data.replace("\x1d", "<GS>")
    try:
        result = biip.parse(data)
    except (biip.ParseError, IndexError) as exc:
        # biip raises on a malformed symbology identifier (']0'), and IndexError on a
        # lone ']': a bad scan like any other.
        raise ScanError(f"scan {shown!r} is not a GS1 element string: {exc}") from None
    message = result.gs1_message
    if message is None:
        raise ScanError(f"scan {shown!r} is not a GS1 element string: {result.gs1_message_error}")
    fields: dict[str, str] = {}
    expiry: date | None = None
    for element in message.element_strings:
        ai = element.ai.ai
        if element.gtin_error:
            raise ScanError(f"scan {shown!r}: GTIN (01) {element.value!r}: {element.gtin_error}")
        if ai in fields and fields[ai] != element.value:
            # GS1: an AI may not be repeated with another value; taking either one
            # would book a pack under a batch, expiry or serial it may not have.
            name = f"{_NAMES[ai]} ({ai})" if ai in _NAMES else f"AI ({ai})"
            raise ScanError(
                f"scan {shown!r}: {name} given twice: {fields[ai]!r} and {element.value!r}"
            )
        fields[ai] = element.value
        if element.ai.ai == "17":
            expiry = element.date
    if "01" not in fields:
        raise ScanError(f"scan {shown!r} has no GTIN (01)")
    if "10" not in fields:
        raise ScanError(f"scan {shown!r} has no batch (10)")
    if expiry is None:
        raise ScanError(f"scan {shown!r} has no valid expiry date (17)")
    return PackId(gtin=fields["01"], batch=fields["10"], expiry=expiry, serial=fields.get("21"))


def encode_pack(pack: PackId) -> str:
    """The element string a pack carries, with a group separator after variable fields."""
    data = f"01{pack.gtin}17{pack.expiry:%y%m%d}10{pack.batch}"
    if pack.serial:
        data += f"\x1d21{pack.serial}"
    return data
