"""Property tests of the serial line parsers: the packer protocol's frames and payloads
(drivers/serial_frames.py, docs/packer-serial-protocol.md) and the barcode scanner's
lines (drivers/serial_scanner.py).

The frame reader is fed valid frames, arbitrary bytes and valid frames damaged the ways
a line damages them (bit flips, cut-off frames, inserted bytes, a wrong CRC, a wrong
length field), in arbitrary pieces. Whatever comes in:

* nothing is raised: damage is reported as `FrameError`s, never as an exception;
* every `Frame` it yields is one that was really on the line: its canonical encoding
  (with a correct CRC) is a substring of the bytes fed, so no damaged frame passes;
* the result does not depend on how the bytes were split into pieces;
* every byte is accounted for: framed, or counted in `discarded`;
* a valid frame after any garbage is still found (resynchronisation at STX).

The payload decoders raise nothing but `PayloadError` (naming the field) on any bytes,
and every message round-trips through its encoder and decoder.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import serial_frames as wire
from drivers.base import CanisterStatus, PackerStatus, PackMLState, Pouch, PouchItem
from drivers.serial_frames import (
    ETX,
    STX,
    Frame,
    FrameError,
    FrameFault,
    FrameReader,
    Nak,
    PayloadError,
)
from drivers.serial_scanner import MAX_FRAME, SerialScannerDriver, split_frame

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=150)

seqs = st.integers(0, 0xFFFF)
types = st.integers(0, 0xFF)
# Payloads lean towards the special bytes, which stuffing has to escape.
special_bytes = st.sampled_from([wire.STX, wire.ETX, wire.DLE, 0x22, 0x23, 0x30, 0x00, 0xFF])
payloads = st.one_of(
    st.binary(max_size=64),
    st.lists(special_bytes | st.integers(0, 255), max_size=64).map(bytes),
    st.binary(min_size=wire.MAX_PAYLOAD - 8, max_size=wire.MAX_PAYLOAD),
)
frames = st.builds(Frame, seqs, types, payloads)


def encoded(frame: Frame) -> bytes:
    return wire.encode_frame(frame.seq, frame.type, frame.payload)


def feed(data: bytes, cuts: Sequence[int] = ()) -> tuple[list[Frame | FrameError], FrameReader]:
    """`data` fed in the pieces `cuts` makes; the reader is reset at the end, so a
    frame still open counts as discarded."""
    reader = FrameReader()
    out: list[Frame | FrameError] = []
    start = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}):
        out += reader.feed(data[start:cut])
        start = cut
    out += reader.feed(data[start:])
    reader.reset()
    return out, reader


def check_reader(data: bytes, cuts: Sequence[int]) -> list[Frame | FrameError]:
    """The reader's invariants on any input; returns what it yields."""
    out, reader = feed(data, cuts)
    whole, _ = feed(data)
    assert out == whole, "the result depends on how the bytes were split"
    found = [item for item in out if isinstance(item, Frame)]
    errors = [item for item in out if isinstance(item, FrameError)]
    for frame in found:
        assert 0 <= frame.seq <= 0xFFFF and 0 <= frame.type <= 0xFF
        assert len(frame.payload) <= wire.MAX_PAYLOAD
        assert encoded(frame) in data, f"{frame} was never on the line"
    assert reader.frames == len(found) and reader.errors == len(errors)
    framed = sum(len(encoded(frame)) for frame in found)
    assert framed + reader.discarded == len(data), "bytes neither framed nor discarded"
    assert sum(error.size for error in errors) <= reader.discarded
    for error in errors:
        assert isinstance(error.fault, FrameFault) and error.detail and error.size >= 1
    return out


def frames_of(out: Sequence[Frame | FrameError]) -> list[Frame]:
    return [item for item in out if isinstance(item, Frame)]


def faults_of(out: Sequence[Frame | FrameError]) -> list[FrameFault]:
    return [item.fault for item in out if isinstance(item, FrameError)]


cut_lists = st.lists(st.integers(0, 2 * wire.MAX_PAYLOAD + 40), max_size=6)


# -- frames: valid ---------------------------------------------------------------------


@FUZZ
@given(st.lists(frames, min_size=1, max_size=4), cut_lists)
def test_valid_frames_round_trip_in_any_pieces(sent: list[Frame], cuts: list[int]) -> None:
    line = b"".join(encoded(frame) for frame in sent)
    out = check_reader(line, cuts)
    assert out == sent
    for frame in sent:
        body = wire.build_body(frame.seq, frame.type, frame.payload)
        assert wire.unstuff(encoded(frame)[1:-1]) == body
        assert wire.decode_body(body) == frame
        assert STX not in encoded(frame)[1:-1] and ETX not in encoded(frame)[1:-1]


@FUZZ
@given(st.binary(max_size=600), frames, cut_lists)
def test_a_frame_after_any_garbage_is_found(garbage: bytes, frame: Frame, cuts: list[int]) -> None:
    out = check_reader(garbage + encoded(frame), cuts)
    assert frames_of(out)[-1:] == [frame]
    assert out[-1] == frame


# -- frames: arbitrary and damaged -------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048), cut_lists)
def test_arbitrary_bytes_never_raise_and_yield_only_real_frames(
    data: bytes, cuts: list[int]
) -> None:
    check_reader(data, cuts)


@FUZZ
@given(
    st.lists(
        st.one_of(
            frames.map(encoded),
            st.binary(max_size=16),
            st.sampled_from([bytes([STX]), bytes([ETX]), bytes([wire.DLE]), b"\x10\x41"]),
        ),
        max_size=8,
    ),
    cut_lists,
)
def test_frames_mixed_with_control_bytes(pieces: list[bytes], cuts: list[int]) -> None:
    check_reader(b"".join(pieces), cuts)


@FUZZ
@given(frames, frames, st.data())
def test_a_bit_flip_in_a_frame_is_never_accepted(first: Frame, good: Frame, data: Any) -> None:
    """One bit flipped anywhere between STX and ETX: the frame is refused (CRC-16
    catches every single-bit error; a flipped escape changes the body's size) and the
    next frame is read."""
    line = bytearray(encoded(first))
    at = data.draw(st.integers(1, len(line) - 2), label="byte")
    line[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    out = check_reader(bytes(line) + encoded(good), data.draw(cut_lists, label="cuts"))
    assert frames_of(out) == [good]
    assert out[-1] == good


@FUZZ
@given(frames, frames, st.data())
def test_a_cut_off_frame_is_reported_and_the_next_one_read(
    cut: Frame, good: Frame, data: Any
) -> None:
    line = encoded(cut)
    end = data.draw(st.integers(1, len(line) - 1), label="end")
    out = check_reader(line[:end] + encoded(good), data.draw(cut_lists, label="cuts"))
    assert frames_of(out) == [good]
    faults = faults_of(out)
    assert faults and faults[-1] in (FrameFault.TRUNCATED, FrameFault.BAD_LENGTH)


@FUZZ
@given(frames, frames, st.binary(min_size=1, max_size=32), st.data())
def test_bytes_inserted_in_a_frame_never_pass_as_that_frame(
    victim: Frame, good: Frame, inserted: bytes, data: Any
) -> None:
    line = encoded(victim)
    at = data.draw(st.integers(1, len(line) - 1), label="at")
    mutated = line[:at] + inserted + line[at:]
    out = check_reader(mutated + encoded(good), data.draw(cut_lists, label="cuts"))
    assert out[-1] == good
    if victim != good and line not in mutated:  # (else the line did carry it whole)
        assert victim not in frames_of(out)


@FUZZ
@given(frames, frames, st.integers(1, 0xFFFF), st.data())
def test_a_wrong_crc_is_reported_as_such(bad: Frame, good: Frame, spoil: int, data: Any) -> None:
    body = bytearray(wire.build_body(bad.seq, bad.type, bad.payload))
    body[-2:] = (int.from_bytes(body[-2:], "big") ^ spoil).to_bytes(2, "big")
    out = check_reader(wire.wrap(bytes(body)) + encoded(good), data.draw(cut_lists))
    assert out == [out[0], good] and isinstance(out[0], FrameError)
    assert out[0].fault is FrameFault.BAD_CRC
    assert out[0].fault.nak_code is wire.ErrorCode.BAD_CRC


@FUZZ
@given(frames, frames, st.integers(0, 0xFFFF), st.data())
def test_a_wrong_length_field_is_reported_as_such(
    bad: Frame, good: Frame, length: int, data: Any
) -> None:
    """The length field disagrees with the payload, under a CRC that matches: refused as
    BAD_LENGTH, early when it is above the maximum, at ETX when not."""
    if length == len(bad.payload):
        length = (length + 1) % 0x10000
    head = wire.HEADER.pack(bad.seq, bad.type, length) + bad.payload
    body = head + wire.crc16(head).to_bytes(2, "big")
    out = check_reader(wire.wrap(body) + encoded(good), data.draw(cut_lists))
    assert frames_of(out) == [good] and out[-1] == good
    assert faults_of(out)[0] is FrameFault.BAD_LENGTH


@FUZZ
@given(st.binary(max_size=wire.MAX_PAYLOAD + 16))
def test_decode_body_only_returns(body: bytes) -> None:
    result = wire.decode_body(body)
    if isinstance(result, Frame):
        assert wire.build_body(result.seq, result.type, result.payload) == body
    else:
        assert result.fault in (FrameFault.TOO_SHORT, FrameFault.BAD_CRC, FrameFault.BAD_LENGTH)


@FUZZ
@given(st.binary(max_size=256))
def test_unstuff_raises_only_value_error(data: bytes) -> None:
    try:
        body = wire.unstuff(data)
    except ValueError:
        return
    assert wire.stuff(body) == data  # stuffing is canonical: one spelling per body


# -- payloads: any bytes -----------------------------------------------------------------

DECODERS: dict[str, Any] = {
    "Hello": wire.Hello.decode,
    "HelloReply": wire.HelloReply.decode,
    "Status": wire.decode_status,
    "ReadCanisters": wire.decode_read_canisters,
    "Canisters": wire.decode_canisters,
    "CanistersEx": wire.decode_canisters_ex,
    "JobHeader": wire.JobHeader.decode,
    "JobChunk": wire.decode_chunk,
    "Command": wire.decode_command,
    "Refill": wire.decode_refill,
    "SetUnitMode": wire.decode_unit_mode,
    "Nak": Nak.decode,
}


@FUZZ
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=300))
def test_payload_decoders_raise_only_payload_error(name: str, data: bytes) -> None:
    try:
        DECODERS[name](data)
    except PayloadError as exc:
        assert str(exc), "a PayloadError names the field"


@FEW
@given(st.binary(max_size=200), st.integers(0, 255))
def test_status_like_payloads_raise_only_payload_error(data: bytes, state: int) -> None:
    """A STATUS whose fixed part decodes, followed by anything."""
    fixed = bytes([state]) + data
    try:
        wire.decode_status(fixed)
    except PayloadError:
        pass


# -- payloads: round trips ---------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
text8 = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)
gtins = st.text(alphabet="0123456789", min_size=14, max_size=14)
statuses = st.builds(
    PackerStatus,
    state=st.sampled_from(list(PackMLState)),
    unit_mode=st.integers(0, 255),
    machine_speed=st.integers(0, 0xFFFFFFFF).map(lambda n: n / 100),
    processed_total=u64,
    defective_total=u64,
    stop_reason=u16,
    job_id=st.text(max_size=20).filter(lambda s: len(s.encode()) <= wire.MAX_JOB_ID),
    job_pouches_total=u32,
    job_pouches_good=u32,
    job_pouches_rejected=u32,
    stop_canister=u16,
    output_count=u32,
    output_capacity=u32,
    output_full=st.booleans(),
)


@FUZZ
@given(statuses, st.sampled_from([0, 1]))
def test_status_round_trips_for_each_minor_version(status: PackerStatus, minor: int) -> None:
    back = wire.decode_status(wire.encode_status(status, minor))
    if minor == 0:  # a 1.0 reader gets no tray: the fields read as their defaults
        status = PackerStatus(
            **{**status.__dict__, "output_count": 0, "output_capacity": 0, "output_full": False}
        )
    assert back == status


canisters = st.builds(
    CanisterStatus,
    number=u16,
    gtin=gtins,
    count=u32,
    dispensed_total=u64,
    capacity=u32,
    refilled_total=u64,
)


@FUZZ
@given(u16, u16, st.lists(canisters, max_size=25), st.booleans())
def test_canister_pages_round_trip(
    total: int, first: int, page: list[CanisterStatus], extended: bool
) -> None:
    data = wire.encode_canisters(total, first, page, extended=extended)
    back_total, back_first, back = wire.decode_canisters(data, extended=extended)
    if not extended:
        page = [CanisterStatus(**{**c.__dict__, "refilled_total": 0}) for c in page]
    assert (back_total, back_first, back) == (total, first, page)


pouches = st.builds(
    Pouch,
    st.integers(0, 0xFFFFFFFF),
    st.text(max_size=40).filter(lambda s: len(s.encode()) <= wire.MAX_LABEL),
    st.lists(st.builds(PouchItem, u16, u16), max_size=wire.MAX_ITEMS).map(tuple),
)


@FUZZ
@given(st.lists(pouches, max_size=30), st.integers(64, wire.MAX_PAYLOAD))
def test_job_chunks_round_trip_and_fit(job: list[Pouch], max_payload: int) -> None:
    encoded_pouches = [wire.encode_pouch(p) for p in job]
    try:
        chunks = wire.chunk_pouches(encoded_pouches, max_payload)
    except PayloadError:
        assert any(len(raw) > max_payload - 4 for raw in encoded_pouches)
        return
    back: list[Pouch] = []
    for index, chunk in enumerate(chunks):
        payload = wire.encode_chunk(index, chunk)
        assert len(payload) <= max_payload
        got_index, got = wire.decode_chunk(payload)
        assert got_index == index
        back += got
    assert back == job


@FUZZ
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    u16,
    u16,
    text8,
    text8,
    text8,
    text8,
    st.integers(0, 0xFFFFFFFF),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 255),
)
def test_small_messages_round_trip(
    major: int,
    minor: int,
    max_payload: int,
    count: int,
    name: str,
    model: str,
    firmware: str,
    job_id: str,
    pouch_count: int,
    quantity: int,
    mode: int,
) -> None:
    hello = wire.Hello(major, minor)
    assert wire.Hello.decode(hello.encode()) == hello
    reply = wire.HelloReply(
        wire.PROTOCOL_MAJOR, wire.PROTOCOL_MINOR, max_payload, count, name, model, firmware
    )
    assert wire.HelloReply.decode(reply.encode()) == reply
    if len(job_id.encode()) <= wire.MAX_JOB_ID:
        header = wire.JobHeader(job_id, pouch_count)
        assert wire.JobHeader.decode(header.encode()) == header
    assert wire.decode_refill(wire.encode_refill(count, quantity)) == (count, quantity)
    assert wire.decode_unit_mode(wire.encode_unit_mode(mode)) == mode
    assert wire.decode_read_canisters(wire.encode_read_canisters(count)) == count
    nak = Nak(mode, name, None if minor == wire.NO_ARGUMENT else minor)
    assert Nak.decode(nak.encode()) == nak


@FUZZ
@given(st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70))
def test_encoders_refuse_what_does_not_fit_with_payload_error(number: int, quantity: int) -> None:
    try:
        data = wire.encode_refill(number, quantity)
    except PayloadError as exc:
        assert "number" in str(exc) or "quantity" in str(exc)
        return
    assert wire.decode_refill(data) == (number, quantity)


# -- the barcode scanner's lines ---------------------------------------------------------

GS1_TEXT = st.text(
    alphabet="!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz\x1d",
    max_size=80,
)
AIM_IDS = st.sampled_from([b"]d2", b"]C1", b"]Q3", b"]e0", b"]E0", b"]d1"])
# Line noise without terminators and without ']' (so it holds no symbology identifier).
NOISE = st.binary(max_size=20).map(lambda b: bytes(x for x in b if x not in b"\r\n]"))


@FUZZ
@given(st.binary(max_size=300))
def test_split_frame_never_raises(raw: bytes) -> None:
    data, resynced = split_frame(raw)
    if data is not None:
        assert data.isascii()
        assert raw.endswith(data.encode("ascii"))
    else:
        assert resynced or not raw


@FUZZ
@given(NOISE, AIM_IDS, GS1_TEXT)
def test_split_frame_finds_the_data_after_noise(noise: bytes, aim: bytes, text: str) -> None:
    assert split_frame(noise + aim + text.encode()) == (text, bool(noise))


class _Port:
    """A serial port that gives the scanner's reader thread fixed pieces, then stops it."""

    def __init__(self, driver: SerialScannerDriver, pieces: list[bytes]) -> None:
        self.driver = driver
        self.pieces = list(pieces)

    @property
    def in_waiting(self) -> int:
        return len(self.pieces[0]) if self.pieces else 0

    def read(self, size: int) -> bytes:
        if not self.pieces:
            self.driver._stop.set()
            return b""
        return self.pieces.pop(0)


class _Loop:
    """Runs what the reader thread hands to the event loop at once."""

    def is_closed(self) -> bool:
        return False

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        fn(*args)


def scans_read(pieces: list[bytes]) -> tuple[list[str], SerialScannerDriver]:
    driver = SerialScannerDriver("SC", "socket://127.0.0.1:1")
    driver._loop = _Loop()  # type: ignore[assignment]
    driver._port = _Port(driver, pieces)  # type: ignore[assignment]
    driver._run()
    scans = []
    while not driver._queue.empty():
        scans.append(driver._queue.get_nowait())
    return scans, driver


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@FUZZ
@given(
    st.lists(st.tuples(NOISE, AIM_IDS, GS1_TEXT, st.sampled_from([b"\r", b"\n", b"\r\n"]))),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_scanner_lines_in_any_pieces_give_each_scan_once(
    scans: list[tuple[bytes, bytes, str, bytes]], cuts: list[int]
) -> None:
    line = b"".join(noise + aim + text.encode() + end for noise, aim, text, end in scans)
    got, driver = scans_read(_pieces(line, cuts))
    assert got == [text for _noise, _aim, text, _end in scans]
    assert driver.discarded == sum(1 for noise, *_ in scans if noise)


@FUZZ
@given(st.binary(max_size=1500), st.lists(st.integers(0, 1500), max_size=8))
def test_scanner_reader_survives_any_bytes(data: bytes, cuts: list[int]) -> None:
    got, _driver = scans_read(_pieces(data, cuts))
    for scan in got:
        assert scan.isascii() and "\r" not in scan and "\n" not in scan
        assert len(scan) < len(data)


def test_scanner_drops_a_runaway_line_and_reads_on() -> None:
    runaway = b"]d2" + b"9" * (MAX_FRAME + 10)
    got, driver = scans_read([runaway, b"\r]d2OK\r"])
    assert got == ["OK"] and driver.discarded >= 1


@pytest.mark.parametrize("minor", [0, 1])
def test_status_of_every_state_round_trips(minor: int) -> None:
    for state in PackMLState:
        status = PackerStatus(state, 1, 60.0, 1, 0, 0, "J", 1, 1, 0)
        assert wire.decode_status(wire.encode_status(status, minor)).state is state
