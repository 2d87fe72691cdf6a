"""Wire format of the doseline serial packer protocol, version 1.1 (docs/packer-serial-protocol.md).

Pure functions and one incremental reader: no I/O, no clocks. This is the host side,
used by the driver (drivers/serial_packer.py). The simulator has its own device-side
codec written from the same document (simulators/serial_codec.py), and
tests/unit/test_simulator_independence.py checks the two against each other.

A frame on the line is ``STX stuffed(body) ETX`` with

    body = seq:u16 | type:u8 | length:u16 | payload[length] | crc:u16   (big-endian)

and the CRC-16/CCITT-FALSE over seq..payload. Inside the stuffed part STX, ETX and DLE
never appear raw (DLE, byte XOR 0x20 stands for each), so a raw STX always starts a
frame and a raw ETX always ends one: after any garbage the reader finds its footing at
the next STX.

Version 1.1 adds SET_UNIT_MODE, READ_CANISTERS_EX/CANISTERS_EX (records with
`refilled_total`) and the output tray fields appended to STATUS. Each side uses a 1.1
feature only when the other announced 1.1 or later in the HELLO exchange
(`MESSAGE_MINOR`, `encode_status(..., minor)`), so 1.0 and 1.1 hosts and devices mix.
"""

from __future__ import annotations

import binascii
import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.base import (
    CanisterStatus,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    Pouch,
    PouchItem,
)

# -- constants ------------------------------------------------------------------------

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 1

STX = 0x02
ETX = 0x03
DLE = 0x10
ESCAPE_XOR = 0x20
_SPECIAL = frozenset({STX, ETX, DLE})

#: seq, type, length.
HEADER = struct.Struct(">HBH")
CRC_SIZE = 2
#: Largest payload either side sends or accepts in version 1.
MAX_PAYLOAD = 1024
#: seq 0 is never used by a host; a device uses it to NAK a frame it could not read.
SEQ_UNKNOWN = 0
#: Longest job id, label and device text fields, in UTF-8 bytes.
MAX_JOB_ID = 64
MAX_LABEL = 128
MAX_ITEMS = 64
MAX_TEXT = 512
#: NAK argument byte when no single argument is at fault.
NO_ARGUMENT = 0xFF


class MessageType(enum.IntEnum):
    """The type byte. Requests go host -> device; the rest device -> host."""

    HELLO = 0x01
    READ_STATUS = 0x02
    READ_CANISTERS = 0x03
    READ_CANISTERS_EX = 0x04  # 1.1
    JOB_BEGIN = 0x10
    JOB_CHUNK = 0x11
    JOB_COMMIT = 0x12
    COMMAND = 0x20
    REFILL = 0x21
    SET_UNIT_MODE = 0x22  # 1.1
    ACK = 0x06
    NAK = 0x15
    HELLO_REPLY = 0x81
    STATUS = 0x82
    CANISTERS = 0x83
    CANISTERS_EX = 0x84  # 1.1


REQUESTS = frozenset(
    {
        MessageType.HELLO,
        MessageType.READ_STATUS,
        MessageType.READ_CANISTERS,
        MessageType.JOB_BEGIN,
        MessageType.JOB_CHUNK,
        MessageType.JOB_COMMIT,
        MessageType.COMMAND,
        MessageType.REFILL,
        MessageType.READ_CANISTERS_EX,
        MessageType.SET_UNIT_MODE,
    }
)

#: The minor version (of major 1) that introduced each request; a side sends or accepts
#: a request only when both announced at least that minor version in the HELLO exchange.
MESSAGE_MINOR: dict[MessageType, int] = {
    MessageType.READ_CANISTERS_EX: 1,
    MessageType.SET_UNIT_MODE: 1,
}
#: The minor version from which STATUS carries the output tray fields.
STATUS_OUTPUT_MINOR = 1


class ErrorCode(enum.IntEnum):
    """NAK codes. Line errors (< 0x10) mean "send it again"; the others are answers."""

    BAD_CRC = 0x01
    BAD_LENGTH = 0x02
    BAD_FRAME = 0x03
    UNKNOWN_TYPE = 0x10
    BAD_PAYLOAD = 0x11
    SEQUENCE_REUSED = 0x12
    INVALID_STATE = 0x20
    INVALID_ARGUMENT = 0x21
    JOB_SEQUENCE = 0x22
    INTERNAL = 0x7F

    @property
    def is_line_error(self) -> bool:
        return self < 0x10


#: Human-readable meaning of each code, for messages when the device sends no text.
ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.BAD_CRC: "frame CRC did not match",
    ErrorCode.BAD_LENGTH: "frame length field wrong or above the maximum",
    ErrorCode.BAD_FRAME: "frame damaged (bad escape, too short or cut off)",
    ErrorCode.UNKNOWN_TYPE: "message type not known to the device",
    ErrorCode.BAD_PAYLOAD: "payload does not decode for its message type",
    ErrorCode.SEQUENCE_REUSED: "sequence number repeated with a different request",
    ErrorCode.INVALID_STATE: "not allowed in the machine's current state",
    ErrorCode.INVALID_ARGUMENT: "an argument is invalid",
    ErrorCode.JOB_SEQUENCE: "job load out of order (begin, chunks, commit)",
    ErrorCode.INTERNAL: "device internal error",
}

#: PackML CntrlCmd numbering (PackTags Command.CntrlCmd).
COMMAND_CODES: dict[PackMLCommand, int] = {
    PackMLCommand.RESET: 1,
    PackMLCommand.START: 2,
    PackMLCommand.STOP: 3,
    PackMLCommand.HOLD: 4,
    PackMLCommand.UNHOLD: 5,
    PackMLCommand.SUSPEND: 6,
    PackMLCommand.UNSUSPEND: 7,
    PackMLCommand.ABORT: 8,
    PackMLCommand.CLEAR: 9,
}
_COMMANDS_BY_CODE = {code: cmd for cmd, code in COMMAND_CODES.items()}


# -- CRC and stuffing -----------------------------------------------------------------


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR.

    binascii.crc_hqx is exactly this CRC when started at 0xFFFF; check value: the
    ASCII bytes "123456789" give 0x29B1.
    """
    return binascii.crc_hqx(data, 0xFFFF)


def stuff(body: bytes) -> bytes:
    """Escape STX, ETX and DLE as DLE followed by the byte XOR 0x20."""
    out = bytearray()
    for byte in body:
        if byte in _SPECIAL:
            out += bytes((DLE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def unstuff(data: bytes) -> bytes:
    """Inverse of `stuff`; raises ValueError on a raw special byte or a bad escape."""
    out = bytearray()
    escaped = False
    for byte in data:
        if escaped:
            value = byte ^ ESCAPE_XOR
            if value not in _SPECIAL:
                raise ValueError(f"DLE followed by 0x{byte:02X} is not an escape")
            out.append(value)
            escaped = False
        elif byte == DLE:
            escaped = True
        elif byte in _SPECIAL:
            raise ValueError(f"raw 0x{byte:02X} inside a frame")
        else:
            out.append(byte)
    if escaped:
        raise ValueError("frame ends in the middle of an escape")
    return bytes(out)


# -- frames ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    seq: int
    type: int
    payload: bytes = b""

    @property
    def type_name(self) -> str:
        return type_name(self.type)


def type_name(value: int) -> str:
    try:
        return MessageType(value).name
    except ValueError:
        return f"0x{value:02X}"


def build_body(
    seq: int, msg_type: int, payload: bytes = b"", max_payload: int = MAX_PAYLOAD
) -> bytes:
    """The unstuffed body with its CRC (exposed so a test device can spoil the CRC)."""
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq: {seq} is not in 0..65535")
    if not 0 <= msg_type <= 0xFF:
        raise ValueError(f"type: {msg_type} is not in 0..255")
    if len(payload) > max_payload:
        raise ValueError(f"payload: {len(payload)} bytes, the maximum is {max_payload}")
    head = HEADER.pack(seq, msg_type, len(payload)) + payload
    return head + crc16(head).to_bytes(CRC_SIZE, "big")


def wrap(body: bytes) -> bytes:
    """STX, the stuffed body, ETX."""
    return bytes((STX,)) + stuff(body) + bytes((ETX,))


def encode_frame(
    seq: int, msg_type: int, payload: bytes = b"", max_payload: int = MAX_PAYLOAD
) -> bytes:
    """Everything that goes on the line for one frame."""
    return wrap(build_body(seq, msg_type, payload, max_payload))


class FrameFault(enum.Enum):
    BAD_CRC = "bad CRC"
    BAD_LENGTH = "bad length"
    OVERSIZE = "oversize frame"
    TOO_SHORT = "too short"
    BAD_ESCAPE = "bad escape"
    TRUNCATED = "truncated (a new STX came before ETX)"

    @property
    def nak_code(self) -> ErrorCode:
        if self is FrameFault.BAD_CRC:
            return ErrorCode.BAD_CRC
        if self in (FrameFault.BAD_LENGTH, FrameFault.OVERSIZE):
            return ErrorCode.BAD_LENGTH
        return ErrorCode.BAD_FRAME


@dataclass(frozen=True)
class FrameError:
    """A frame the reader threw away; `size` is how many line bytes it was."""

    fault: FrameFault
    detail: str
    size: int


def decode_body(body: bytes, max_payload: int = MAX_PAYLOAD) -> Frame | FrameError:
    """Check one unstuffed body: size, CRC, then the length field."""
    size = len(body) + 2
    if len(body) < HEADER.size + CRC_SIZE:
        return FrameError(FrameFault.TOO_SHORT, f"{len(body)} bytes of body", size)
    got = int.from_bytes(body[-CRC_SIZE:], "big")
    want = crc16(body[:-CRC_SIZE])
    if got != want:
        return FrameError(FrameFault.BAD_CRC, f"CRC 0x{got:04X}, computed 0x{want:04X}", size)
    seq, msg_type, length = HEADER.unpack_from(body)
    actual = len(body) - HEADER.size - CRC_SIZE
    if length > max_payload or length != actual:
        return FrameError(
            FrameFault.BAD_LENGTH, f"length field {length}, payload {actual} bytes", size
        )
    return Frame(seq, msg_type, bytes(body[HEADER.size : -CRC_SIZE]))


class FrameReader:
    """Feed it line bytes in any pieces; it returns whole frames and frame errors.

    Bytes outside a frame are noise and are counted in `discarded`, as are all bytes
    of a rejected frame. A raw STX always starts a new frame (a frame cut off by it is
    reported as TRUNCATED); a length field above `max_payload` is rejected as soon as
    the header is in, without waiting for the rest.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.discarded = 0
        self.frames = 0
        self.errors = 0
        self._body = bytearray()
        self._raw = 0  # line bytes of the frame in progress, STX included
        self._in_frame = False
        self._escaped = False

    @property
    def max_body(self) -> int:
        return HEADER.size + self.max_payload + CRC_SIZE

    def reset(self) -> None:
        """Forget a partial frame (counted as discarded), e.g. before a new request."""
        if self._in_frame:
            self.discarded += self._raw
        self._start(False)

    def _start(self, in_frame: bool) -> None:
        self._body.clear()
        self._raw = 1 if in_frame else 0
        self._in_frame = in_frame
        self._escaped = False

    def _reject(self, out: list[Frame | FrameError], fault: FrameFault, detail: str) -> None:
        self.discarded += self._raw
        self.errors += 1
        out.append(FrameError(fault, detail, self._raw))
        self._start(False)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        for byte in data:
            if byte == STX:
                if self._in_frame:
                    self._reject(out, FrameFault.TRUNCATED, f"{self._raw} bytes before a new STX")
                self._start(True)
                continue
            if not self._in_frame:
                self.discarded += 1
                continue
            self._raw += 1
            if byte == ETX:
                if self._escaped:
                    self._reject(out, FrameFault.BAD_ESCAPE, "ETX right after DLE")
                    continue
                result = decode_body(bytes(self._body), self.max_payload)
                if isinstance(result, FrameError):
                    self._reject(out, result.fault, result.detail)
                    continue
                self.frames += 1
                out.append(result)
                self._start(False)
                continue
            if self._escaped:
                value = byte ^ ESCAPE_XOR
                if value not in _SPECIAL:
                    self._reject(out, FrameFault.BAD_ESCAPE, f"DLE then 0x{byte:02X}")
                    continue
                self._escaped = False
                self._body.append(value)
            elif byte == DLE:
                self._escaped = True
                continue
            else:
                self._body.append(byte)
            if len(self._body) == HEADER.size:
                length = HEADER.unpack_from(self._body)[2]
                if length > self.max_payload:
                    self._reject(
                        out,
                        FrameFault.BAD_LENGTH,
                        f"length field {length} above the maximum {self.max_payload}",
                    )
            elif len(self._body) > self.max_body:
                self._reject(out, FrameFault.OVERSIZE, f"more than {self.max_body} bytes")
        return out


# -- payloads -------------------------------------------------------------------------


class PayloadError(ValueError):
    """A payload that does not decode; the message names the field."""


class _Reader:
    """Reads big-endian fields from a payload; every failure names the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what
        self.pos = 0

    def take(self, size: int, field: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise PayloadError(
                f"{self.what}.{field}: payload ends at byte {len(self.data)}, needs {end}"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, field: str) -> tuple[int, ...]:
        spec = struct.Struct(">" + fmt)
        return spec.unpack(self.take(spec.size, field))

    def u8(self, field: str) -> int:
        return self.unpack("B", field)[0]

    def u16(self, field: str) -> int:
        return self.unpack("H", field)[0]

    def u32(self, field: str) -> int:
        return self.unpack("I", field)[0]

    def i32(self, field: str) -> int:
        return self.unpack("i", field)[0]

    def u64(self, field: str) -> int:
        return self.unpack("Q", field)[0]

    def text8(self, field: str) -> str:
        raw = self.take(self.u8(field), field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError(f"{self.what}.{field}: not UTF-8 ({exc.reason})") from None

    def rest_text(self, field: str) -> str:
        raw = self.take(len(self.data) - self.pos, field)
        return raw.decode("utf-8", errors="replace")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise PayloadError(
                f"{self.what}: {len(self.data) - self.pos} unexpected byte(s) after the last field"
            )


def _text8(value: str, field: str, limit: int = 255, *, show: bool = True) -> bytes:
    """u8 length + UTF-8. `show=False` keeps the value (a pouch label) out of messages."""
    raw = value.encode("utf-8")
    if len(raw) > limit:
        shown = f"{value!r} is " if show else ""
        raise PayloadError(f"{field}: {shown}{len(raw)} bytes in UTF-8, the limit is {limit}")
    return bytes((len(raw),)) + raw


def _pack(fmt: str, field: str, *values: int | bytes) -> bytes:
    try:
        return struct.pack(">" + fmt, *values)
    except struct.error:
        raise PayloadError(
            f"{field}: {values if len(values) > 1 else values[0]!r} does not fit"
        ) from None


# HELLO ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Request: the host's protocol version. Its layout never changes between versions."""

    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR

    def encode(self) -> bytes:
        return _pack("BB", "Hello.version", self.major, self.minor)

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        """Bytes after the version are ignored: a later version may add to its HELLO."""
        r = _Reader(data, "Hello")
        return cls(r.u8("major"), r.u8("minor"))


@dataclass(frozen=True)
class HelloReply:
    """The device's identity; version first so any host can read it."""

    major: int
    minor: int
    max_payload: int
    canister_count: int
    name: str
    model: str
    firmware: str

    def encode(self) -> bytes:
        return (
            _pack(
                "BBHH", "HelloReply", self.major, self.minor, self.max_payload, self.canister_count
            )
            + _text8(self.name, "HelloReply.name")
            + _text8(self.model, "HelloReply.model")
            + _text8(self.firmware, "HelloReply.firmware")
        )

    @classmethod
    def decode(cls, data: bytes) -> HelloReply:
        r = _Reader(data, "HelloReply")
        major, minor = r.u8("major"), r.u8("minor")
        if major != PROTOCOL_MAJOR:  # the rest may be laid out differently: stop here
            return cls(major, minor, 0, 0, "", "", "")
        msg = cls(
            major,
            minor,
            r.u16("max_payload"),
            r.u16("canister_count"),
            r.text8("name"),
            r.text8("model"),
            r.text8("firmware"),
        )
        if minor == PROTOCOL_MINOR:
            r.end()  # a newer minor version may append fields
        return msg


# STATUS ------------------------------------------------------------------------------

_STATUS_FIXED = struct.Struct(">BBIQQHHIII")
#: Appended in 1.1: output_count u32, output_capacity u32, output_flags u8.
_STATUS_OUTPUT = struct.Struct(">IIB")
OUTPUT_FLAG_FULL = 0x01


def encode_status(status: PackerStatus, minor: int = PROTOCOL_MINOR) -> bytes:
    """machine_speed travels as hundredths of a pouch per minute (u32).

    `minor` is the version the reader understands: from 1.1 on the output tray fields
    are appended after job_id; a 1.0 reader gets the 1.0 payload.
    """
    try:
        fixed = _STATUS_FIXED.pack(
            int(status.state),
            status.unit_mode,
            round(status.machine_speed * 100),
            status.processed_total,
            status.defective_total,
            status.stop_reason,
            status.stop_canister,
            status.job_pouches_total,
            status.job_pouches_good,
            status.job_pouches_rejected,
        )
    except struct.error as exc:
        raise PayloadError(f"Status: a field does not fit ({exc})") from None
    out = fixed + _text8(status.job_id, "Status.job_id", MAX_JOB_ID)
    if minor >= STATUS_OUTPUT_MINOR:
        flags = OUTPUT_FLAG_FULL if status.output_full else 0
        out += _pack("IIB", "Status.output", status.output_count, status.output_capacity, flags)
    return out


def decode_status(data: bytes) -> PackerStatus:
    """A 1.0 payload (output fields default to 0 / False) or a 1.1 one; bytes a later
    minor version appends after the 1.1 fields are ignored."""
    r = _Reader(data, "Status")
    (state, mode, speed, processed, defective, reason, stop_can, total, good, rejected) = r.unpack(
        "BBIQQHHIII", "fixed fields"
    )
    job_id = r.text8("job_id")
    output_count = output_capacity = flags = 0
    if r.pos < len(data):
        output_count, output_capacity, flags = r.unpack("IIB", "output")
    try:
        packml = PackMLState(state)
    except ValueError:
        raise PayloadError(f"Status.state: {state} is not a PackML state") from None
    return PackerStatus(
        state=packml,
        unit_mode=mode,
        machine_speed=speed / 100,
        processed_total=processed,
        defective_total=defective,
        stop_reason=reason,
        stop_canister=stop_can,
        job_id=job_id,
        job_pouches_total=total,
        job_pouches_good=good,
        job_pouches_rejected=rejected,
        output_count=output_count,
        output_capacity=output_capacity,
        output_full=bool(flags & OUTPUT_FLAG_FULL),
    )


# CANISTERS ---------------------------------------------------------------------------

GTIN_SIZE = 14
_CANISTER = struct.Struct(">H14sIIQ")
#: CANISTERS_EX record (1.1): the CANISTERS record followed by refilled_total u64.
_CANISTER_EX = struct.Struct(">H14sIIQQ")


def canisters_per_page(max_payload: int = MAX_PAYLOAD, *, extended: bool = False) -> int:
    """Records that fit one CANISTERS (or CANISTERS_EX) reply: total, first and count
    take 5 bytes."""
    size = _CANISTER_EX.size if extended else _CANISTER.size
    return min((max_payload - 5) // size, 255)


def encode_read_canisters(first: int) -> bytes:
    return _pack("H", "ReadCanisters.first", first)


def decode_read_canisters(data: bytes) -> int:
    r = _Reader(data, "ReadCanisters")
    first = r.u16("first")
    r.end()
    return first


def encode_canisters(
    total: int, first: int, page: Sequence[CanisterStatus], *, extended: bool = False
) -> bytes:
    """One page: `total` canisters in the machine, records `first`.. in number order.

    `extended` gives the CANISTERS_EX layout (1.1), whose records end in refilled_total.
    """
    what = "CanistersEx" if extended else "Canisters"
    out = bytearray(_pack("HHB", what, total, first, len(page)))
    for c in page:
        gtin = c.gtin.encode("ascii")
        if len(gtin) != GTIN_SIZE or not gtin.isdigit():
            raise PayloadError(f"{what}[{c.number}].gtin: {c.gtin!r} is not 14 digits")
        fields: tuple[int | bytes, ...] = (c.number, gtin, c.count, c.capacity, c.dispensed_total)
        if extended:
            out += _pack("H14sIIQQ", f"{what}[{c.number}]", *fields, c.refilled_total)
        else:
            out += _pack("H14sIIQ", f"{what}[{c.number}]", *fields)
    return bytes(out)


def decode_canisters(
    data: bytes, *, extended: bool = False
) -> tuple[int, int, list[CanisterStatus]]:
    """(total, first, records) of one CANISTERS page, or a CANISTERS_EX page."""
    what = "CanistersEx" if extended else "Canisters"
    record = _CANISTER_EX if extended else _CANISTER
    r = _Reader(data, what)
    total, first, n = r.u16("total"), r.u16("first"), r.u8("count")
    page: list[CanisterStatus] = []
    for i in range(n):
        values = record.unpack(r.take(record.size, f"[{i}]"))
        number, gtin, count, capacity, dispensed = values[:5]
        refilled = values[5] if extended else 0
        if not isinstance(gtin, bytes) or not gtin.isdigit():
            raise PayloadError(f"{what}[{i}].gtin: {gtin!r} is not 14 digits")
        page.append(
            CanisterStatus(number, gtin.decode("ascii"), count, dispensed, capacity, refilled)
        )
    r.end()
    return total, first, page


def decode_canisters_ex(data: bytes) -> tuple[int, int, list[CanisterStatus]]:
    """(total, first, records) of one CANISTERS_EX page (1.1)."""
    return decode_canisters(data, extended=True)


# JOB ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobHeader:
    """JOB_BEGIN and JOB_COMMIT: the job id and how many pouches the chunks carry."""

    job_id: str
    pouch_count: int

    def encode(self) -> bytes:
        return _text8(self.job_id, "job_id", MAX_JOB_ID) + _pack(
            "I", "pouch_count", self.pouch_count
        )

    @classmethod
    def decode(cls, data: bytes, what: str = "JobHeader") -> JobHeader:
        r = _Reader(data, what)
        msg = cls(r.text8("job_id"), r.u32("pouch_count"))
        r.end()
        return msg


def encode_pouch(pouch: Pouch) -> bytes:
    """seq:u32 label:text8 n:u8 then n x (canister:u16, quantity:u16)."""
    where = f"pouch {pouch.sequence}"
    if len(pouch.items) > MAX_ITEMS:
        raise PayloadError(f"{where}: {len(pouch.items)} items, the limit is {MAX_ITEMS}")
    out = bytearray(_pack("I", f"{where}.sequence", pouch.sequence))
    out += _text8(pouch.label, f"{where}.label", MAX_LABEL, show=False)
    out.append(len(pouch.items))
    for item in pouch.items:
        out += _pack("H", f"{where}.canister", item.canister)
        out += _pack("H", f"{where} canister {item.canister} quantity", item.quantity)
    return bytes(out)


def encode_chunk(index: int, encoded_pouches: Sequence[bytes]) -> bytes:
    """JOB_CHUNK: index:u16 n:u16 then n pouches as `encode_pouch` made them."""
    return _pack("HH", "JobChunk", index, len(encoded_pouches)) + b"".join(encoded_pouches)


def decode_chunk(data: bytes) -> tuple[int, list[Pouch]]:
    r = _Reader(data, "JobChunk")
    index, n = r.u16("index"), r.u16("count")
    pouches: list[Pouch] = []
    for i in range(n):
        seq = r.u32(f"pouches[{i}].seq")
        label = r.text8(f"pouches[{i}].label")
        items = tuple(
            PouchItem(
                r.u16(f"pouches[{i}].items[{j}].canister"),
                r.u16(f"pouches[{i}].items[{j}].quantity"),
            )
            for j in range(r.u8(f"pouches[{i}].items"))
        )
        pouches.append(Pouch(seq, label, items))
    r.end()
    return index, pouches


def chunk_pouches(encoded: Iterable[bytes], max_payload: int = MAX_PAYLOAD) -> list[list[bytes]]:
    """Greedy packing of encoded pouches into chunks that fit `max_payload`."""
    room = max_payload - 4
    chunks: list[list[bytes]] = []
    current: list[bytes] = []
    used = 0
    for raw in encoded:
        if len(raw) > room:
            raise PayloadError(f"one pouch is {len(raw)} bytes, a chunk holds {room}")
        if current and used + len(raw) > room:
            chunks.append(current)
            current, used = [], 0
        current.append(raw)
        used += len(raw)
    if current:
        chunks.append(current)
    return chunks


# COMMAND, REFILL ---------------------------------------------------------------------


def encode_command(command: PackMLCommand) -> bytes:
    return bytes((COMMAND_CODES[PackMLCommand(command)],))


def decode_command(data: bytes) -> PackMLCommand:
    r = _Reader(data, "Command")
    code = r.u8("code")
    r.end()
    try:
        return _COMMANDS_BY_CODE[code]
    except KeyError:
        raise PayloadError(f"Command.code: {code} is not a PackML command (1..9)") from None


def encode_refill(number: int, quantity: int) -> bytes:
    return _pack("H", "number", number) + _pack("i", "quantity", quantity)


def decode_refill(data: bytes) -> tuple[int, int]:
    r = _Reader(data, "Refill")
    number, quantity = r.u16("number"), r.i32("quantity")
    r.end()
    return number, quantity


# SET_UNIT_MODE (1.1) -------------------------------------------------------------------


def encode_unit_mode(mode: int) -> bytes:
    """`mode u8`, a PackML unit mode; the device judges the value."""
    return _pack("B", "mode", int(mode))


def decode_unit_mode(data: bytes) -> int:
    r = _Reader(data, "SetUnitMode")
    mode = r.u8("mode")
    r.end()
    return mode


# NAK ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nak:
    """code:u8 argument:u8 (0xFF none) text: the rest, UTF-8."""

    code: int
    text: str = ""
    argument: int | None = None

    @property
    def code_name(self) -> str:
        try:
            return ErrorCode(self.code).name
        except ValueError:
            return f"error 0x{self.code:02X}"

    @property
    def is_line_error(self) -> bool:
        return self.code < 0x10

    def encode(self) -> bytes:
        arg = NO_ARGUMENT if self.argument is None else self.argument
        text = self.text.encode("utf-8")[:MAX_TEXT]
        return bytes((self.code, arg)) + text

    @classmethod
    def decode(cls, data: bytes) -> Nak:
        r = _Reader(data, "Nak")
        code, arg = r.u8("code"), r.u8("argument")
        return cls(code, r.rest_text("text"), None if arg == NO_ARGUMENT else arg)
