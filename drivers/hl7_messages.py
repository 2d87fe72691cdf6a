"""HL7 v2.5 messages of the cabinet-server interface (docs/cabinet-hl7.md).

Parsing uses python-hl7 (`hl7.parse`); the checks around it are ours, because the
interface must answer every problem with an acknowledgement that names the segment,
the field and the value, and a hostile message must never raise anything but
`Hl7MessageError`. Messages are built here as plain text: python-hl7 builds an ACK
without an ERR segment and has no builder for the other messages.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import hl7

from drivers.base import (
    AckCode,
    CabinetCommand,
    CabinetSnapshot,
    CabinetStatus,
    CabinetStatusBit,
    EventAck,
    ItemMasterEntry,
    PocketEvent,
    PocketEventKind,
    PocketStatus,
)

VERSION = "2.5"
ACCEPTED_VERSIONS = ("2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
CHARSETS = ("", "ASCII", "UNICODE UTF-8")
APPLICATION = "DOSELINE"
FACILITY = "PHARMACY"
MAX_MESSAGE_BYTES = 1_000_000
MAX_POCKETS = 99
MAX_QUANTITY = 100_000
NOTICE_ACTIONS = {
    CabinetCommand.REFILL: "REFILL",
    CabinetCommand.LOCK_POCKET: "LOCK",
    CabinetCommand.UNLOCK_POCKET: "UNLOCK",
    CabinetCommand.SET_COUNT: "SET_COUNT",
}
STATUS_FLAGS = {
    "DOOR_OPEN": CabinetStatusBit.DOOR_OPEN,
    "FAULT": CabinetStatusBit.FAULT,
    "TEMPERATURE_ALARM": CabinetStatusBit.TEMPERATURE_ALARM,
}
# HL7 table 0357 codes used by this interface.
SEGMENT_SEQUENCE = 100
REQUIRED_FIELD = 101
DATA_TYPE = 102
TABLE_VALUE = 103
UNSUPPORTED_TYPE = 200
UNSUPPORTED_EVENT = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION = 203
UNKNOWN_KEY = 204
INTERNAL_ERROR = 207

_GTIN = re.compile(r"^\d{14}$")
_INT = re.compile(r"^\d{1,9}$")
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,50}$")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class Hl7MessageError(Exception):
    """A message that cannot be used, with the acknowledgement it gets.

    `control_id` is the message's MSH-10 when it could be read ("" if not)."""

    def __init__(
        self,
        text: str,
        *,
        code: AckCode = AckCode.ERROR,
        error_code: int = DATA_TYPE,
        location: str = "",
        control_id: str = "",
        trigger: str = "",
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.error_code = error_code
        self.location = location
        self.control_id = control_id
        self.trigger = trigger

    @property
    def ack(self) -> EventAck:
        return EventAck(self.code, self.text, self.error_code)


@dataclass(frozen=True)
class Header:
    """What an acknowledgement needs of the message it answers."""

    control_id: str
    sending_application: str
    sending_facility: str
    trigger: str


@dataclass(frozen=True)
class AckMessage:
    """An acknowledgement from the server of a message we sent."""

    acked_id: str
    code: str
    text: str


@dataclass(frozen=True)
class Inbound:
    header: Header
    body: PocketEvent | CabinetSnapshot | AckMessage


# --- building --------------------------------------------------------------------------
def escape(value: object) -> str:
    """HL7 escape of the delimiters |^~\\& in a data value; line breaks become spaces."""
    text = str(value)
    text = text.replace("\\", "\\E\\")
    for char, code in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        text = text.replace(char, code)
    return text.replace("\r", " ").replace("\n", " ")


def new_control_id() -> str:
    """A unique MSH-10 of 20 characters (the length HL7 2.5 allows)."""
    return uuid.uuid4().hex[:20].upper()


def timestamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _segment(name: str, *fields: object) -> str:
    parts = [name, *("" if f is None else str(f) for f in fields)]
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return "|".join(parts)


def _msh(message_type: str, control_id: str, *, receiver: str, receiver_facility: str = "") -> str:
    return (
        f"MSH|^~\\&|{APPLICATION}|{FACILITY}|{escape(receiver)}|{escape(receiver_facility)}|"
        f"{timestamp()}||{message_type}|{escape(control_id)}|P|{VERSION}||||||UNICODE UTF-8"
    )


def build_ack(header: Header | None, ack: EventAck, *, location: str = "") -> bytes:
    """The acknowledgement of a received message (an unreadable one: `header` None)."""
    if header is None:
        header = Header("", "", "", "")
    lines = [
        _msh(
            f"ACK^{escape(header.trigger)}^ACK",
            new_control_id(),
            receiver=header.sending_application,
            receiver_facility=header.sending_facility,
        ),
        _segment("MSA", ack.code.value, escape(header.control_id), escape(ack.text[:80])),
    ]
    if ack.code != AckCode.ACCEPT:
        lines.append(
            _segment("ERR", "", location, f"{ack.error_code}^{escape(ack.text[:200])}^HL70357", "E")
        )
    return ("\r".join(lines) + "\r").encode("utf-8")


def build_item_master(
    items: Sequence[ItemMasterEntry], *, replace: bool, receiver: str, control_id: str
) -> bytes:
    """MFN^M01: the whole item master (MFI-3 REP) or additions and changes (UPD)."""
    now = timestamp()
    lines = [
        _msh("MFN^M01^MFN_M01", control_id, receiver=receiver),
        _segment(
            "MFI", "ZIM^Cabinet item master^L", "", "REP" if replace else "UPD", now, "", "NE"
        ),
    ]
    for number, item in enumerate(items, 1):
        key = f"{escape(item.gtin)}^{escape(item.name)}^GTIN"
        lines.append(_segment("MFE", "MAD" if replace else "MUP", number, now, key, "CWE"))
        lines.append(
            _segment(
                "ZIM",
                escape(item.gtin),
                escape(item.name),
                escape(item.atc),
                escape(item.strength),
                item.article or "",
            )
        )
    return ("\r".join(lines) + "\r").encode("utf-8")


def build_pocket_notice(
    *,
    cabinet: str,
    command: CabinetCommand,
    notice: int,
    pocket: int,
    gtin: str,
    quantity: int,
    control_id: str,
) -> bytes:
    """RDS^O13 from the pharmacy: a refill notice (doses put into a pocket), or a lock,
    unlock or set-count of a pocket. The server acts on a notice number once."""
    action = NOTICE_ACTIONS.get(command)
    if action is None:
        raise ValueError(f"command: {command!r} has no pocket notice")
    lines = [
        _msh("RDS^O13^RDS_O13", control_id, receiver="CABINETSERVER"),
        _segment("ORC", "RE", f"N{notice}"),
        _segment("RXD", 1, f"{gtin}^^GTIN", timestamp(), quantity),
        _segment("ZPK", escape(cabinet), "", pocket, action, "", notice),
    ]
    return ("\r".join(lines) + "\r").encode("utf-8")


# --- parsing ---------------------------------------------------------------------------
def _field(segment: Any, number: int, component: int = 1) -> str:
    """One component of a field, unescaped; "" where the segment is shorter."""
    try:
        if number >= len(segment):
            return ""
        value = segment[number]
        if isinstance(value, str):
            return value if component == 1 else ""
        rep = value[0]
        if isinstance(rep, str):
            return rep if component == 1 else ""
        if component > len(rep):
            return ""
        comp = rep[component - 1]
        while not isinstance(comp, str):
            comp = comp[0] if len(comp) else ""
        return comp
    except (IndexError, TypeError):
        return ""


def _repetitions(segment: Any, number: int) -> list[str]:
    if number >= len(segment):
        return []
    value = segment[number]
    if isinstance(value, str):
        return [value] if value else []
    out = []
    for rep in value:
        text = str(rep).split("^")[0]
        if text:
            out.append(text)
    return out


class _Reader:
    """Field access with errors that name the segment, field and value."""

    def __init__(self, control_id: str, trigger: str) -> None:
        self.control_id = control_id
        self.trigger = trigger

    def fail(
        self,
        text: str,
        location: str,
        *,
        code: AckCode = AckCode.ERROR,
        error_code: int = DATA_TYPE,
    ) -> Hl7MessageError:
        return Hl7MessageError(
            text,
            code=code,
            error_code=error_code,
            location=location,
            control_id=self.control_id,
            trigger=self.trigger,
        )

    def required(self, segment: Any, name: str, number: int, component: int = 1) -> str:
        value = _field(segment, number, component).strip()
        if not value:
            where = f"{name}-{number}" + (f".{component}" if component > 1 else "")
            raise self.fail(f"{where} is required", f"{name}^1^{number}", error_code=REQUIRED_FIELD)
        return value

    def integer(
        self, segment: Any, name: str, number: int, *, low: int, high: int, required: bool = True
    ) -> int | None:
        value = _field(segment, number).strip()
        if not value and not required:
            return None
        where = f"{name}-{number}"
        if not value:
            raise self.fail(f"{where} is required", f"{name}^1^{number}", error_code=REQUIRED_FIELD)
        if not _INT.match(value) or not low <= int(value) <= high:
            raise self.fail(
                f"{where}: {value[:30]!r} is not a whole number from {low} to {high}",
                f"{name}^1^{number}",
            )
        return int(value)

    def decimal(self, segment: Any, name: str, number: int) -> float | None:
        value = _field(segment, number).strip()
        if not value:
            return None
        try:
            number_ = Decimal(value)
        except InvalidOperation:
            number_ = Decimal("NaN")
        if not number_.is_finite() or abs(number_) > 1000:
            raise self.fail(
                f"{name}-{number}: {value[:30]!r} is not a temperature in degC",
                f"{name}^1^{number}",
            )
        return float(number_)

    def gtin(self, segment: Any, name: str, number: int) -> str:
        value = self.required(segment, name, number)
        if not _GTIN.match(value):
            raise self.fail(
                f"{name}-{number}.1: {value[:30]!r} is not a 14-digit GTIN", f"{name}^1^{number}"
            )
        return value

    def identifier(self, segment: Any, name: str, number: int) -> str:
        value = self.required(segment, name, number)
        if not _ID.match(value):
            raise self.fail(
                f"{name}-{number}: {value[:30]!r} is not an identifier (letters, digits, _.-)",
                f"{name}^1^{number}",
            )
        return value


def _decode(data: bytes) -> str:
    if len(data) > MAX_MESSAGE_BYTES:
        raise Hl7MessageError(
            f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}",
            code=AckCode.REJECT,
            error_code=SEGMENT_SEQUENCE,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Hl7MessageError(
            f"message is not UTF-8 (byte {exc.start})",
            code=AckCode.REJECT,
            error_code=DATA_TYPE,
        ) from None
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    if not text.startswith("MSH|^~\\&"):
        raise Hl7MessageError(
            "message does not begin with MSH|^~\\&",
            code=AckCode.REJECT,
            error_code=SEGMENT_SEQUENCE,
            location="MSH^1^1",
        )
    for line in text.split("\r"):
        if not _SEGMENT_ID.match(line[:3]) or (len(line) > 3 and line[3] != "|"):
            raise Hl7MessageError(
                f"segment {line[:10]!r} is not a segment id and fields",
                code=AckCode.REJECT,
                error_code=SEGMENT_SEQUENCE,
            )
    return text


def parse_header(data: bytes) -> Header:
    """The header of a message, enough to acknowledge it; raises Hl7MessageError."""
    return _parse(data)[1]


def _parse(data: bytes) -> tuple[Any, Header]:
    text = _decode(data)
    try:
        message = hl7.parse(text)
        msh = message.segment("MSH")
    except Exception as exc:  # python-hl7 raises several kinds on hostile input
        raise Hl7MessageError(
            f"message cannot be parsed: {type(exc).__name__}",
            code=AckCode.REJECT,
            error_code=SEGMENT_SEQUENCE,
        ) from None
    control_id = _field(msh, 10).strip()
    header = Header(
        control_id[:50],
        _field(msh, 3)[:50],
        _field(msh, 4)[:50],
        _field(msh, 9, 2)[:3],
    )
    reader = _Reader(header.control_id, header.trigger)
    if not control_id:
        raise reader.fail(
            "MSH-10 (message control id) is required",
            "MSH^1^10",
            code=AckCode.REJECT,
            error_code=REQUIRED_FIELD,
        )
    if not _ID.match(control_id):
        raise reader.fail(
            f"MSH-10: {control_id[:30]!r} is not a control id (1-50 of letters, digits, _.-)",
            "MSH^1^10",
            code=AckCode.REJECT,
        )
    processing = _field(msh, 11)
    if processing != "P":
        raise reader.fail(
            f"MSH-11: processing id {processing[:10]!r} is not P",
            "MSH^1^11",
            code=AckCode.REJECT,
            error_code=UNSUPPORTED_PROCESSING_ID,
        )
    version = _field(msh, 12)
    if version not in ACCEPTED_VERSIONS:
        raise reader.fail(
            f"MSH-12: version {version[:10]!r} is not one of {', '.join(ACCEPTED_VERSIONS)}",
            "MSH^1^12",
            code=AckCode.REJECT,
            error_code=UNSUPPORTED_VERSION,
        )
    charset = _field(msh, 18)
    if charset not in CHARSETS:
        raise reader.fail(
            f"MSH-18: character set {charset[:20]!r} is not UNICODE UTF-8 or ASCII",
            "MSH^1^18",
            code=AckCode.REJECT,
        )
    return message, header


def parse_message(data: bytes) -> Inbound:
    """One received message (the bytes inside the MLLP frame).

    Returns a pocket event, a snapshot or an acknowledgement; anything else raises
    Hl7MessageError carrying the AE/AR it is to be answered with."""
    message, header = _parse(data)
    msh = message.segment("MSH")
    kind = (_field(msh, 9, 1), _field(msh, 9, 2))
    reader = _Reader(header.control_id, header.trigger)
    segments = [(str(seg[0]), seg) for seg in message]
    try:
        if kind[0] in ("ACK", "MFK"):
            return Inbound(header, _parse_ack(segments, reader))
        if kind == ("RDS", "O13"):
            return Inbound(header, _parse_event(segments, header.control_id, reader))
        if kind == ("INV", "U06"):
            return Inbound(header, _parse_snapshot(segments, header.control_id, reader))
    except Hl7MessageError:
        raise
    except Exception as exc:  # a shape python-hl7 accepted and we did not foresee
        raise reader.fail(
            f"message cannot be read: {type(exc).__name__}", "", error_code=SEGMENT_SEQUENCE
        ) from None
    raise reader.fail(
        f"MSH-9: message type {'^'.join(kind)[:20]!r} is not supported"
        " (RDS^O13, INV^U06, ACK, MFK)",
        "MSH^1^9",
        code=AckCode.REJECT,
        error_code=UNSUPPORTED_TYPE if kind[0] not in ("RDS", "INV") else UNSUPPORTED_EVENT,
    )


def _only(segments: list[tuple[str, Any]], name: str, reader: _Reader) -> Any:
    found = [seg for sid, seg in segments if sid == name]
    if len(found) != 1:
        raise reader.fail(
            f"{name}: {len(found)} segments, exactly one expected",
            f"{name}^1",
            error_code=SEGMENT_SEQUENCE if found else REQUIRED_FIELD,
        )
    return found[0]


def _parse_ack(segments: list[tuple[str, Any]], reader: _Reader) -> AckMessage:
    msa = _only(segments, "MSA", reader)
    code = reader.required(msa, "MSA", 1)
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise reader.fail(f"MSA-1: {code[:10]!r} is not an acknowledgement code", "MSA^1^1")
    acked = reader.required(msa, "MSA", 2)
    return AckMessage(acked, code, _field(msa, 3)[:200])


def _parse_event(segments: list[tuple[str, Any]], control_id: str, reader: _Reader) -> PocketEvent:
    rxd = _only(segments, "RXD", reader)
    zpk = _only(segments, "ZPK", reader)
    cabinet = reader.identifier(zpk, "ZPK", 1)
    drawer = _field(zpk, 2)[:20]
    pocket = reader.integer(zpk, "ZPK", 3, low=1, high=MAX_POCKETS)
    kind_text = reader.required(zpk, "ZPK", 4)
    try:
        kind = PocketEventKind(kind_text)
    except ValueError:
        raise reader.fail(
            f"ZPK-4: transaction type {kind_text[:20]!r} is not one of"
            f" {', '.join(k.value for k in PocketEventKind)}",
            "ZPK^1^4",
            error_code=TABLE_VALUE,
        ) from None
    count_after = reader.integer(zpk, "ZPK", 5, low=0, high=MAX_QUANTITY, required=False)
    notice = reader.integer(zpk, "ZPK", 6, low=1, high=65535, required=False)
    gtin = reader.gtin(rxd, "RXD", 2)
    low = 0 if kind == PocketEventKind.COUNT else 1
    quantity = reader.integer(rxd, "RXD", 4, low=low, high=MAX_QUANTITY)
    assert pocket is not None and quantity is not None
    return PocketEvent(
        control_id, cabinet, kind, drawer, pocket, gtin, quantity, count_after, notice
    )


def _parse_snapshot(
    segments: list[tuple[str, Any]], control_id: str, reader: _Reader
) -> CabinetSnapshot:
    _only(segments, "EQU", reader)
    zcs = _only(segments, "ZCS", reader)
    cabinet = reader.identifier(zcs, "ZCS", 1)
    heartbeat = reader.integer(zcs, "ZCS", 2, low=0, high=2**32 - 1)
    temperature = reader.decimal(zcs, "ZCS", 3)
    low = reader.decimal(zcs, "ZCS", 4)
    high = reader.decimal(zcs, "ZCS", 5)
    excursions = reader.integer(zcs, "ZCS", 6, low=0, high=2**32 - 1, required=False)
    last_notice = reader.integer(zcs, "ZCS", 7, low=0, high=65535, required=False)
    flags = CabinetStatusBit(0)
    for flag in _repetitions(zcs, 8):
        if flag not in STATUS_FLAGS:
            raise reader.fail(
                f"ZCS-8: status {flag[:20]!r} is not one of {', '.join(STATUS_FLAGS)}",
                "ZCS^1^8",
                error_code=TABLE_VALUE,
            )
        flags |= STATUS_FLAGS[flag]
    pockets: list[PocketStatus] = []
    seen: set[int] = set()
    pending: Any = None  # the INV waiting for its ZPK
    for sid, seg in segments:
        if sid == "INV":
            if pending is not None:
                raise reader.fail(
                    "INV: followed by another INV, not its ZPK", "INV", error_code=SEGMENT_SEQUENCE
                )
            pending = seg
        elif sid == "ZPK":
            if pending is None:
                raise reader.fail("ZPK: not after an INV", "ZPK", error_code=SEGMENT_SEQUENCE)
            inv, pending = pending, None
            if reader.identifier(seg, "ZPK", 1) != cabinet:
                raise reader.fail(
                    f"ZPK-1: cabinet {_field(seg, 1)[:30]!r} differs from ZCS-1 {cabinet!r}",
                    "ZPK^1^1",
                    error_code=UNKNOWN_KEY,
                )
            number = reader.integer(seg, "ZPK", 3, low=1, high=MAX_POCKETS)
            assert number is not None
            if number in seen:
                raise reader.fail(f"ZPK-3: pocket {number} is listed twice", "ZPK^1^3")
            seen.add(number)
            reader.gtin(inv, "INV", 1)
            count = reader.integer(inv, "INV", 8, low=0, high=MAX_QUANTITY)
            assert count is not None
            locked = _field(seg, 7) == "Y"
            pockets.append(PocketStatus(number, 0, count, 0, 0, 0, 0, 0, locked=locked))
    if pending is not None:
        raise reader.fail("INV: the last INV has no ZPK", "INV", error_code=SEGMENT_SEQUENCE)
    assert heartbeat is not None
    status = CabinetStatus(
        cabinet_id=0,
        map_version=0,
        heartbeat=heartbeat,
        status=flags,
        temperature_c=temperature if temperature is not None else float("nan"),
        last_ack_sequence=last_notice or 0,
        pockets=tuple(sorted(pockets, key=lambda p: p.number)),
        temp_low_c=low,
        temp_high_c=high,
        temp_excursions_total=excursions or 0,
    )
    return CabinetSnapshot(control_id, cabinet, status)
