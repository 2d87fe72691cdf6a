"""The serial packer protocol 1.1 as the simulated device reads it from its document.

Everything here follows docs/packer-serial-protocol.md and nothing else: the frame
(STX, stuffed body, ETX), the CRC-16/CCITT-FALSE, the byte stuffing, the rules for
reading a line that carries garbage, and the payload layout of every message in both
directions. The host side (drivers/serial_frames.py) is a separate implementation of
the same document; the two meet only on the wire, so a test that runs one against the
other finds a layout that either side got wrong (tests/unit/test_simulator_independence.py).

Pure functions, small value types and one incremental reader: no I/O, no clocks.

Layout of a frame on the line::

    STX | stuffed( seq u16 | type u8 | length u16 | payload | crc u16 ) | ETX

all integers big-endian; the CRC covers seq..payload before stuffing.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# -- constants of the document ----------------------------------------------------------

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 1

STX = 0x02
ETX = 0x03
DLE = 0x10
#: A stuffed byte is DLE followed by the byte XOR this.
STUFF_XOR = 0x20
#: Largest payload of version 1 (`MAX_PAYLOAD` in the document).
MAX_PAYLOAD = 1024
#: A device NAKs a frame it could not read with seq 0; a host never uses 0.
SEQ_UNKNOWN = 0
#: Bytes of seq, type and length.
HEADER_SIZE = 5
CRC_SIZE = 2
#: Shortest body: the header and the CRC.
MIN_BODY = HEADER_SIZE + CRC_SIZE
#: Field limits, in bytes.
GTIN_SIZE = 14
JOB_ID_LIMIT = 64
LABEL_LIMIT = 128
ITEMS_LIMIT = 64
NAK_TEXT_LIMIT = 512
#: NAK `argument` when no single request argument is at fault.
NO_ARGUMENT = 0xFF
#: STATUS output_flags bit 0: the output tray is full.
OUTPUT_FULL_FLAG = 0x01


class MessageType(enum.IntEnum):
    """The `type` byte ("Message types")."""

    HELLO = 0x01
    READ_STATUS = 0x02
    READ_CANISTERS = 0x03
    READ_CANISTERS_EX = 0x04
    JOB_BEGIN = 0x10
    JOB_CHUNK = 0x11
    JOB_COMMIT = 0x12
    COMMAND = 0x20
    REFILL = 0x21
    SET_UNIT_MODE = 0x22
    ACK = 0x06
    NAK = 0x15
    HELLO_REPLY = 0x81
    STATUS = 0x82
    CANISTERS = 0x83
    CANISTERS_EX = 0x84


#: Host -> device messages: the ones a device executes.
REQUESTS: frozenset[MessageType] = frozenset(
    {
        MessageType.HELLO,
        MessageType.READ_STATUS,
        MessageType.READ_CANISTERS,
        MessageType.READ_CANISTERS_EX,
        MessageType.JOB_BEGIN,
        MessageType.JOB_CHUNK,
        MessageType.JOB_COMMIT,
        MessageType.COMMAND,
        MessageType.REFILL,
        MessageType.SET_UNIT_MODE,
    }
)

#: Requests added by a minor version, with that minor version ("Versions").
REQUEST_MINOR: dict[MessageType, int] = {
    MessageType.READ_CANISTERS_EX: 1,
    MessageType.SET_UNIT_MODE: 1,
}
#: The minor version that appended output_count, output_capacity, output_flags to STATUS.
STATUS_TRAY_MINOR = 1


class ErrorCode(enum.IntEnum):
    """NAK codes ("NAK and error codes"); below 0x10 a line error, else a message error."""

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


#: COMMAND codes, PackTags Command.CntrlCmd numbering, by OPC 30050 method name.
COMMAND_NAMES: dict[int, str] = {
    1: "Reset",
    2: "Start",
    3: "Stop",
    4: "Hold",
    5: "Unhold",
    6: "Suspend",
    7: "Unsuspend",
    8: "Abort",
    9: "Clear",
}
COMMAND_CODES: dict[str, int] = {name: code for code, name in COMMAND_NAMES.items()}


def type_name(value: int) -> str:
    """The document's name of a type byte, or its hex value."""
    try:
        return MessageType(value).name
    except ValueError:
        return f"0x{value:02X}"


# -- CRC-16/CCITT-FALSE ------------------------------------------------------------------

_POLY = 0x1021


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        reg = byte << 8
        for _ in range(8):
            reg = ((reg << 1) ^ _POLY) if reg & 0x8000 else (reg << 1)
        table.append(reg & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Width 16, polynomial 0x1021, initial 0xFFFF, not reflected, no final XOR."""
    reg = 0xFFFF
    for byte in data:
        reg = ((reg << 8) & 0xFFFF) ^ _CRC_TABLE[(reg >> 8) ^ byte]
    return reg


# -- stuffing and frames -----------------------------------------------------------------

_NEEDS_STUFFING = re.compile(rb"[\x02\x03\x10]")
_STUFFED_VALUES = frozenset({STX ^ STUFF_XOR, ETX ^ STUFF_XOR, DLE ^ STUFF_XOR})


def stuff(body: bytes) -> bytes:
    """Every STX, ETX and DLE of the body as DLE, byte XOR 0x20."""
    return _NEEDS_STUFFING.sub(lambda m: bytes((DLE, m[0][0] ^ STUFF_XOR)), body)


def frame_body(seq: int, msg_type: int, payload: bytes = b"") -> bytes:
    """The unstuffed body: header, payload and CRC."""
    if not 0 <= seq <= 0xFFFF or not 0 <= msg_type <= 0xFF:
        raise ValueError(f"seq {seq} / type {msg_type} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes, the maximum is {MAX_PAYLOAD}")
    covered = struct.pack(">HBH", seq, msg_type, len(payload)) + payload
    return covered + struct.pack(">H", crc16(covered))


def frame_bytes(body: bytes) -> bytes:
    """A body as it goes on the line: STX, stuffed body, ETX."""
    return b"\x02" + stuff(body) + b"\x03"


def encode_frame(seq: int, msg_type: int, payload: bytes = b"") -> bytes:
    return frame_bytes(frame_body(seq, msg_type, payload))


@dataclass(frozen=True)
class Frame:
    """A frame that arrived whole: CRC and length checked."""

    seq: int
    type: int
    payload: bytes = b""


@dataclass(frozen=True)
class FrameError:
    """A frame the reader rejected; `code` is the line error a device NAKs it with."""

    code: ErrorCode
    text: str


class FrameReader:
    """Reads frames from line bytes fed in any pieces ("Reading frames and
    resynchronising"). Noise outside frames and every byte of a rejected frame are
    counted in `discarded`; a rejected frame costs only itself.

    `max_payload` is the largest length field accepted (the device's own maximum,
    at most `MAX_PAYLOAD`).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.discarded = 0
        self._body = bytearray()
        self._inside = False
        self._after_dle = False
        self._line_bytes = 0  # of the frame in progress, its STX included

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        for byte in data:
            if byte == STX:  # rule 2: a raw STX always starts a frame
                if self._inside:
                    self._reject(
                        out,
                        ErrorCode.BAD_FRAME,
                        f"frame cut off by a new STX after {self._line_bytes} bytes",
                    )
                self._open()
                continue
            if not self._inside:  # rule 1: noise
                self.discarded += 1
                continue
            self._line_bytes += 1
            if byte == ETX:  # rule 5
                if self._after_dle:
                    self._reject(out, ErrorCode.BAD_FRAME, "bad escape: ETX right after DLE")
                else:
                    self._close(out)
                continue
            if self._after_dle:  # rule 3
                self._after_dle = False
                if byte not in _STUFFED_VALUES:
                    self._reject(out, ErrorCode.BAD_FRAME, f"bad escape: DLE then 0x{byte:02X}")
                    continue
                self._body.append(byte ^ STUFF_XOR)
            elif byte == DLE:
                self._after_dle = True
                continue
            else:
                self._body.append(byte)
            self._check_size(out)
        return out

    def _open(self) -> None:
        self._inside = True
        self._after_dle = False
        self._body.clear()
        self._line_bytes = 1

    def _reject(self, out: list[Frame | FrameError], code: ErrorCode, text: str) -> None:
        self.discarded += self._line_bytes
        out.append(FrameError(code, text))
        self._inside = False
        self._after_dle = False
        self._body.clear()
        self._line_bytes = 0

    def _check_size(self, out: list[Frame | FrameError]) -> None:
        """Rule 4: a length field above the maximum as soon as the header is in, and a
        body longer than any allowed one."""
        size = len(self._body)
        if size == HEADER_SIZE:
            length = (self._body[3] << 8) | self._body[4]
            if length > self.max_payload:
                self._reject(
                    out,
                    ErrorCode.BAD_LENGTH,
                    f"length field {length} is above the maximum payload {self.max_payload}",
                )
        elif size > MIN_BODY + self.max_payload:
            self._reject(
                out,
                ErrorCode.BAD_LENGTH,
                f"body longer than {MIN_BODY + self.max_payload} bytes",
            )

    def _close(self, out: list[Frame | FrameError]) -> None:
        body = bytes(self._body)
        if len(body) < MIN_BODY:
            self._reject(out, ErrorCode.BAD_FRAME, f"body of {len(body)} bytes is too short")
            return
        sent = (body[-2] << 8) | body[-1]
        computed = crc16(body[:-CRC_SIZE])
        if sent != computed:
            self._reject(
                out, ErrorCode.BAD_CRC, f"CRC 0x{sent:04X} received, 0x{computed:04X} computed"
            )
            return
        seq, msg_type, length = struct.unpack_from(">HBH", body)
        payload = body[HEADER_SIZE:-CRC_SIZE]
        if length != len(payload):
            self._reject(
                out,
                ErrorCode.BAD_LENGTH,
                f"length field {length} but {len(payload)} payload bytes",
            )
            return
        out.append(Frame(seq, msg_type, payload))
        self._inside = False
        self._body.clear()
        self._line_bytes = 0


# -- payload fields ----------------------------------------------------------------------


class PayloadError(ValueError):
    """A payload that does not decode (or a value that does not fit its field); the
    text names the message and the field."""


class _Fields:
    """Takes the fields of one payload in order; every failure names the field."""

    def __init__(self, payload: bytes, message: str) -> None:
        self._data = payload
        self._at = 0
        self._message = message

    def _take(self, size: int, name: str) -> bytes:
        end = self._at + size
        if end > len(self._data):
            raise PayloadError(
                f"{self._message}.{name}: needs bytes {self._at}..{end - 1},"
                f" the payload has {len(self._data)}"
            )
        piece = self._data[self._at : end]
        self._at = end
        return piece

    def uint(self, size: int, name: str) -> int:
        return int.from_bytes(self._take(size, name), "big")

    def sint(self, size: int, name: str) -> int:
        return int.from_bytes(self._take(size, name), "big", signed=True)

    def text8(self, name: str, limit: int = 255) -> str:
        raw = self._take(self.uint(1, name), name)
        if len(raw) > limit:
            raise PayloadError(f"{self._message}.{name}: {len(raw)} bytes, at most {limit}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"{self._message}.{name}: not valid UTF-8") from None

    def digits(self, size: int, name: str) -> str:
        raw = self._take(size, name)
        if not all(0x30 <= b <= 0x39 for b in raw):
            raise PayloadError(f"{self._message}.{name}: {raw!r} is not {size} ASCII digits")
        return raw.decode("ascii")

    def rest(self) -> bytes:
        piece = self._data[self._at :]
        self._at = len(self._data)
        return piece

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    def done(self) -> None:
        if self.remaining:
            raise PayloadError(
                f"{self._message}: {self.remaining} byte(s) left over after the last field"
            )


def _u(value: int, size: int, name: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise PayloadError(f"{name}: {value} does not fit {8 * size} unsigned bits")
    return value.to_bytes(size, "big")


def _i(value: int, size: int, name: str) -> bytes:
    bound = 1 << (8 * size - 1)
    if not -bound <= value < bound:
        raise PayloadError(f"{name}: {value} does not fit {8 * size} signed bits")
    return value.to_bytes(size, "big", signed=True)


def _text8(value: str, name: str, limit: int = 255) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise PayloadError(f"{name}: {len(raw)} bytes in UTF-8, at most {limit}")
    return bytes((len(raw),)) + raw


# -- HELLO, HELLO_REPLY ------------------------------------------------------------------


def encode_hello(major: int = PROTOCOL_MAJOR, minor: int = PROTOCOL_MINOR) -> bytes:
    return _u(major, 1, "Hello.major") + _u(minor, 1, "Hello.minor")


def decode_hello(payload: bytes) -> tuple[int, int]:
    """(major, minor) of the host; bytes after them are a later version's and ignored."""
    fields = _Fields(payload, "Hello")
    return fields.uint(1, "major"), fields.uint(1, "minor")


@dataclass(frozen=True)
class Identity:
    """HELLO_REPLY."""

    major: int
    minor: int
    max_payload: int
    canister_count: int
    name: str
    model: str
    firmware: str


def encode_hello_reply(identity: Identity) -> bytes:
    return b"".join(
        (
            _u(identity.major, 1, "HelloReply.major"),
            _u(identity.minor, 1, "HelloReply.minor"),
            _u(identity.max_payload, 2, "HelloReply.max_payload"),
            _u(identity.canister_count, 2, "HelloReply.canister_count"),
            _text8(identity.name, "HelloReply.name"),
            _text8(identity.model, "HelloReply.model"),
            _text8(identity.firmware, "HelloReply.firmware"),
        )
    )


def decode_hello_reply(payload: bytes) -> Identity:
    """Only the version is read from a device of another major version (the rest may be
    laid out differently); bytes a later minor version appends are ignored."""
    fields = _Fields(payload, "HelloReply")
    major, minor = fields.uint(1, "major"), fields.uint(1, "minor")
    if major != PROTOCOL_MAJOR:
        return Identity(major, minor, 0, 0, "", "", "")
    return Identity(
        major,
        minor,
        fields.uint(2, "max_payload"),
        fields.uint(2, "canister_count"),
        fields.text8("name"),
        fields.text8("model"),
        fields.text8("firmware"),
    )


# -- READ_STATUS, STATUS -----------------------------------------------------------------


def decode_read_status(payload: bytes) -> None:
    _Fields(payload, "ReadStatus").done()


@dataclass(frozen=True)
class Status:
    """STATUS, field by field (names as PackerStatus in docs/packer-opcua.md).

    `machine_speed` is in pouches per minute; it travels in hundredths.
    """

    state: int
    unit_mode: int
    machine_speed: float
    processed_total: int
    defective_total: int
    stop_reason: int
    stop_canister: int
    job_pouches_total: int
    job_pouches_good: int
    job_pouches_rejected: int
    job_id: str
    output_count: int = 0
    output_capacity: int = 0
    output_full: bool = False


def encode_status(status: Status, minor: int = PROTOCOL_MINOR) -> bytes:
    """The 1.0 fields, and the 1.1 tray fields when the reader speaks `minor` >= 1."""
    parts = [
        _u(int(status.state), 1, "Status.state"),
        _u(int(status.unit_mode), 1, "Status.unit_mode"),
        _u(round(status.machine_speed * 100), 4, "Status.machine_speed"),
        _u(status.processed_total, 8, "Status.processed_total"),
        _u(status.defective_total, 8, "Status.defective_total"),
        _u(int(status.stop_reason), 2, "Status.stop_reason"),
        _u(status.stop_canister, 2, "Status.stop_canister"),
        _u(status.job_pouches_total, 4, "Status.job_pouches_total"),
        _u(status.job_pouches_good, 4, "Status.job_pouches_good"),
        _u(status.job_pouches_rejected, 4, "Status.job_pouches_rejected"),
        _text8(status.job_id, "Status.job_id", JOB_ID_LIMIT),
    ]
    if minor >= STATUS_TRAY_MINOR:
        parts += [
            _u(status.output_count, 4, "Status.output_count"),
            _u(status.output_capacity, 4, "Status.output_capacity"),
            bytes((OUTPUT_FULL_FLAG if status.output_full else 0,)),
        ]
    return b"".join(parts)


def decode_status(payload: bytes) -> Status:
    """A 1.0 or 1.1 STATUS; tray fields missing read 0 / 0 / False, later additions are
    ignored."""
    fields = _Fields(payload, "Status")
    values = (
        fields.uint(1, "state"),
        fields.uint(1, "unit_mode"),
        fields.uint(4, "machine_speed") / 100,
        fields.uint(8, "processed_total"),
        fields.uint(8, "defective_total"),
        fields.uint(2, "stop_reason"),
        fields.uint(2, "stop_canister"),
        fields.uint(4, "job_pouches_total"),
        fields.uint(4, "job_pouches_good"),
        fields.uint(4, "job_pouches_rejected"),
    )
    job_id = fields.text8("job_id", JOB_ID_LIMIT)
    count = capacity = flags = 0
    if fields.remaining:
        count = fields.uint(4, "output_count")
        capacity = fields.uint(4, "output_capacity")
        flags = fields.uint(1, "output_flags")
    state, mode, speed, processed, defective, reason, canister, total, good, rejected = values
    return Status(
        state=int(state),
        unit_mode=int(mode),
        machine_speed=speed,
        processed_total=int(processed),
        defective_total=int(defective),
        stop_reason=int(reason),
        stop_canister=int(canister),
        job_pouches_total=int(total),
        job_pouches_good=int(good),
        job_pouches_rejected=int(rejected),
        job_id=job_id,
        output_count=count,
        output_capacity=capacity,
        output_full=bool(flags & OUTPUT_FULL_FLAG),
    )


# -- READ_CANISTERS(_EX), CANISTERS(_EX) ---------------------------------------------------

#: Record sizes: number, gtin, count, capacity, dispensed_total (+ refilled_total in EX).
RECORD_SIZE = 2 + GTIN_SIZE + 4 + 4 + 8
RECORD_SIZE_EX = RECORD_SIZE + 8
#: total, first, count before the records.
PAGE_HEAD_SIZE = 5


@dataclass(frozen=True)
class CanisterRecord:
    number: int
    gtin: str
    count: int
    capacity: int
    dispensed_total: int
    refilled_total: int = 0


def page_size(max_payload: int = MAX_PAYLOAD, *, extended: bool = False) -> int:
    """Records that fit one page (31 plain or 25 extended at the maximum payload)."""
    record = RECORD_SIZE_EX if extended else RECORD_SIZE
    return min((max_payload - PAGE_HEAD_SIZE) // record, 0xFF)


def encode_read_canisters(first: int) -> bytes:
    return _u(first, 2, "ReadCanisters.first")


def decode_read_canisters(payload: bytes, *, extended: bool = False) -> int:
    fields = _Fields(payload, "ReadCanistersEx" if extended else "ReadCanisters")
    first = fields.uint(2, "first")
    fields.done()
    return first


def encode_canisters(
    total: int, first: int, records: Sequence[CanisterRecord], *, extended: bool = False
) -> bytes:
    what = "CanistersEx" if extended else "Canisters"
    parts = [
        _u(total, 2, f"{what}.total"),
        _u(first, 2, f"{what}.first"),
        _u(len(records), 1, f"{what}.count"),
    ]
    for record in records:
        where = f"{what}[{record.number}]"
        gtin = record.gtin.encode("ascii", errors="replace")
        if len(gtin) != GTIN_SIZE or not gtin.isdigit():
            raise PayloadError(f"{where}.gtin: {record.gtin!r} is not {GTIN_SIZE} digits")
        parts += [
            _u(record.number, 2, f"{where}.number"),
            gtin,
            _u(record.count, 4, f"{where}.count"),
            _u(record.capacity, 4, f"{where}.capacity"),
            _u(record.dispensed_total, 8, f"{where}.dispensed_total"),
        ]
        if extended:
            parts.append(_u(record.refilled_total, 8, f"{where}.refilled_total"))
    return b"".join(parts)


def decode_canisters(
    payload: bytes, *, extended: bool = False
) -> tuple[int, int, list[CanisterRecord]]:
    """(total, first, records) of one page."""
    fields = _Fields(payload, "CanistersEx" if extended else "Canisters")
    total, first, count = fields.uint(2, "total"), fields.uint(2, "first"), fields.uint(1, "count")
    records = []
    for i in range(count):
        number = fields.uint(2, f"records[{i}].number")
        gtin = fields.digits(GTIN_SIZE, f"records[{i}].gtin")
        values = (
            fields.uint(4, f"records[{i}].count"),
            fields.uint(4, f"records[{i}].capacity"),
            fields.uint(8, f"records[{i}].dispensed_total"),
            fields.uint(8, f"records[{i}].refilled_total") if extended else 0,
        )
        records.append(CanisterRecord(number, gtin, *values))
    fields.done()
    return total, first, records


# -- JOB_BEGIN, JOB_CHUNK, JOB_COMMIT ------------------------------------------------------


@dataclass(frozen=True)
class JobHeader:
    """JOB_BEGIN and JOB_COMMIT."""

    job_id: str
    pouch_count: int


def encode_job_header(header: JobHeader) -> bytes:
    return _text8(header.job_id, "job_id", JOB_ID_LIMIT) + _u(header.pouch_count, 4, "pouch_count")


def decode_job_header(payload: bytes, message: str = "JobBegin") -> JobHeader:
    """The id's emptiness is the machine's to judge (INVALID_ARGUMENT, as LoadJob); an
    id above 64 bytes does not fit the field and is BAD_PAYLOAD."""
    fields = _Fields(payload, message)
    header = JobHeader(fields.text8("job_id", JOB_ID_LIMIT), fields.uint(4, "pouch_count"))
    fields.done()
    return header


@dataclass(frozen=True)
class Pouch:
    """One pouch of a JOB_CHUNK: `items` are (canister, quantity) pairs."""

    seq: int
    label: str
    items: tuple[tuple[int, int], ...]


def encode_pouch(pouch: Pouch) -> bytes:
    """One pouch; the label's text never appears in an error."""
    where = f"pouch {pouch.seq}"
    if len(pouch.items) > ITEMS_LIMIT:
        raise PayloadError(f"{where}: {len(pouch.items)} items, at most {ITEMS_LIMIT}")
    label = pouch.label.encode("utf-8")
    if len(label) > LABEL_LIMIT:
        raise PayloadError(f"{where}.label: {len(label)} bytes in UTF-8, at most {LABEL_LIMIT}")
    parts = [_u(pouch.seq, 4, f"{where}.seq"), bytes((len(label),)), label]
    parts.append(bytes((len(pouch.items),)))
    for canister, quantity in pouch.items:
        parts.append(_u(canister, 2, f"{where}.canister"))
        parts.append(_u(quantity, 2, f"{where}.quantity"))
    return b"".join(parts)


def encode_chunk(index: int, pouches: Sequence[Pouch]) -> bytes:
    return (
        _u(index, 2, "JobChunk.index")
        + _u(len(pouches), 2, "JobChunk.n")
        + b"".join(encode_pouch(p) for p in pouches)
    )


def decode_chunk(payload: bytes) -> tuple[int, list[Pouch]]:
    """(index, pouches). Item counts and quantities are the machine's to judge at the
    commit (INVALID_ARGUMENT with the texts of LoadJob)."""
    fields = _Fields(payload, "JobChunk")
    index, n = fields.uint(2, "index"), fields.uint(2, "n")
    pouches = []
    for i in range(n):
        seq = fields.uint(4, f"pouches[{i}].seq")
        label = fields.text8(f"pouches[{i}].label")
        items = tuple(
            (
                fields.uint(2, f"pouches[{i}].items[{j}].canister"),
                fields.uint(2, f"pouches[{i}].items[{j}].quantity"),
            )
            for j in range(fields.uint(1, f"pouches[{i}].items"))
        )
        pouches.append(Pouch(seq, label, items))
    fields.done()
    return index, pouches


# -- COMMAND, REFILL, SET_UNIT_MODE --------------------------------------------------------


def encode_command(name: str) -> bytes:
    """`name` is the PackML command's method name (Reset, Start, ...)."""
    try:
        return bytes((COMMAND_CODES[str(name)],))
    except KeyError:
        raise PayloadError(f"Command: {name!r} is not a PackML command") from None


def decode_command(payload: bytes) -> str:
    """The PackML command's method name."""
    fields = _Fields(payload, "Command")
    code = fields.uint(1, "code")
    fields.done()
    if code not in COMMAND_NAMES:
        raise PayloadError(f"Command.code: {code} is not a PackML command code (1..9)")
    return COMMAND_NAMES[code]


def encode_refill(canister: int, quantity: int) -> bytes:
    return _u(canister, 2, "Refill.canister") + _i(quantity, 4, "Refill.quantity")


def decode_refill(payload: bytes) -> tuple[int, int]:
    """(canister, quantity); the quantity is signed so a wrong one gets its reason."""
    fields = _Fields(payload, "Refill")
    canister, quantity = fields.uint(2, "canister"), fields.sint(4, "quantity")
    fields.done()
    return canister, quantity


def encode_unit_mode(mode: int) -> bytes:
    return _u(int(mode), 1, "SetUnitMode.mode")


def decode_unit_mode(payload: bytes) -> int:
    """The raw mode byte; whether it is a unit mode is the machine's to judge."""
    fields = _Fields(payload, "SetUnitMode")
    mode = fields.uint(1, "mode")
    fields.done()
    return mode


# -- ACK, NAK ------------------------------------------------------------------------------


def decode_ack(payload: bytes) -> None:
    _Fields(payload, "Ack").done()


@dataclass(frozen=True)
class Nak:
    """NAK: `argument` None travels as 0xFF; `text` is at most 512 bytes of UTF-8."""

    code: int
    text: str = ""
    argument: int | None = None


def encode_nak(nak: Nak) -> bytes:
    text = nak.text.encode("utf-8")
    if len(text) > NAK_TEXT_LIMIT:  # cut on a character boundary
        text = text[:NAK_TEXT_LIMIT].decode("utf-8", errors="ignore").encode("utf-8")
    argument = NO_ARGUMENT if nak.argument is None else nak.argument
    return _u(nak.code, 1, "Nak.code") + _u(argument, 1, "Nak.argument") + text


def decode_nak(payload: bytes) -> Nak:
    fields = _Fields(payload, "Nak")
    code, argument = fields.uint(1, "code"), fields.uint(1, "argument")
    text = fields.rest().decode("utf-8", errors="replace")
    return Nak(code, text, None if argument == NO_ARGUMENT else argument)
