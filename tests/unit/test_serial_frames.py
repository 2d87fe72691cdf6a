"""The serial packer wire format: CRC, stuffing, the frame reader and payload codecs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import serial_frames as wire
from drivers.base import (
    CanisterStatus,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    Pouch,
    PouchItem,
)
from drivers.serial_frames import (
    DLE,
    ETX,
    STX,
    ErrorCode,
    Frame,
    FrameError,
    FrameFault,
    FrameReader,
    MessageType,
    Nak,
    PayloadError,
)

# -- CRC and stuffing -----------------------------------------------------------------


def test_crc16_ccitt_false_test_vector() -> None:
    assert wire.crc16(b"123456789") == 0x29B1
    assert wire.crc16(b"") == 0xFFFF


def test_stuffing_round_trips_every_byte_and_hides_the_special_ones() -> None:
    body = bytes(range(256)) * 2
    stuffed = wire.stuff(body)
    assert STX not in stuffed and ETX not in stuffed
    assert len(stuffed) == len(body) + 2 * 3  # three special bytes, twice each
    assert wire.unstuff(stuffed) == body
    assert wire.stuff(bytes([STX, ETX, DLE])) == bytes([DLE, 0x22, DLE, 0x23, DLE, 0x30])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes([DLE, 0x41]), "not an escape"),
        (bytes([0x41, STX]), "raw 0x02"),
        (bytes([0x41, DLE]), "middle of an escape"),
    ],
)
def test_unstuff_rejects_bad_escapes(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wire.unstuff(data)


def test_encoding_matches_the_documented_examples() -> None:
    """docs/packer-serial-protocol.md shows these bytes; keep them true."""
    assert wire.encode_frame(1, MessageType.READ_STATUS) == bytes.fromhex(
        "02 00 01 10 22 00 00 09 D8 03"
    )
    start = wire.encode_command(PackMLCommand.START)
    assert wire.encode_frame(0x0203, MessageType.COMMAND, start) == bytes.fromhex(
        "02 10 22 10 23 20 00 01 10 22 4F BF 03"
    )
    refill = wire.encode_frame(7, MessageType.REFILL, wire.encode_refill(3, 0))
    assert refill == bytes.fromhex("02 00 07 21 00 06 00 10 23 00 00 00 00 CB DD 03")


def test_build_body_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"seq: 65536"):
        wire.build_body(65536, 1)
    with pytest.raises(ValueError, match=r"payload: 1025 bytes, the maximum is 1024"):
        wire.build_body(1, 1, bytes(1025))


# -- the reader -----------------------------------------------------------------------


def frames_of(items: list[Frame | FrameError]) -> list[Frame]:
    return [i for i in items if isinstance(i, Frame)]


def faults_of(items: list[Frame | FrameError]) -> list[FrameFault]:
    return [i.fault for i in items if isinstance(i, FrameError)]


def test_reader_returns_frames_fed_byte_by_byte() -> None:
    payload = bytes([STX, ETX, DLE, 0x22, 0x30, 0x00])
    line = wire.encode_frame(0x0202, 0x03, payload) + wire.encode_frame(3, 0x06)
    reader = FrameReader()
    out: list[Frame | FrameError] = []
    for byte in line:
        out += reader.feed(bytes([byte]))
    assert out == [Frame(0x0202, 0x03, payload), Frame(3, 0x06, b"")]
    assert reader.discarded == 0 and reader.frames == 2


def test_reader_resyncs_after_garbage() -> None:
    garbage = bytes([0xFF, ETX, 0x41, DLE, 0x00, ETX, 0x99])  # no STX: pure noise
    good = wire.encode_frame(5, MessageType.ACK)
    reader = FrameReader()
    assert reader.feed(garbage + good + garbage) == [Frame(5, MessageType.ACK)]
    assert reader.discarded == 2 * len(garbage)


def test_reader_resyncs_after_a_truncated_frame() -> None:
    good = wire.encode_frame(9, MessageType.STATUS, b"abc")
    reader = FrameReader()
    out = reader.feed(good[:6] + good)
    assert faults_of(out) == [FrameFault.TRUNCATED]
    assert frames_of(out) == [Frame(9, MessageType.STATUS, b"abc")]
    assert reader.discarded == 6
    assert FrameFault.TRUNCATED.nak_code is ErrorCode.BAD_FRAME


def test_reader_rejects_a_bad_crc_and_reads_the_next_frame() -> None:
    body = bytearray(wire.build_body(4, MessageType.READ_STATUS))
    body[-1] ^= 0x01
    bad = wire.wrap(bytes(body))
    reader = FrameReader()
    out = reader.feed(bad + wire.encode_frame(5, MessageType.READ_STATUS))
    assert isinstance(out[0], FrameError) and out[0].fault is FrameFault.BAD_CRC
    assert out[0].size == len(bad) and "CRC" in out[0].detail
    assert out[1] == Frame(5, MessageType.READ_STATUS)
    assert reader.errors == 1 and reader.discarded == len(bad)
    assert FrameFault.BAD_CRC.nak_code is ErrorCode.BAD_CRC


def test_reader_rejects_an_oversize_length_at_the_header() -> None:
    header = wire.HEADER.pack(1, MessageType.JOB_CHUNK, 5000)
    reader = FrameReader()
    out = reader.feed(bytes([STX]) + wire.stuff(header))
    assert faults_of(out) == [FrameFault.BAD_LENGTH]  # no need to wait for 5000 bytes
    assert "5000" in out[0].detail  # type: ignore[union-attr]
    # The rest of that frame is noise; the next frame is read.
    out = reader.feed(b"x" * 100 + bytes([ETX]) + wire.encode_frame(2, MessageType.ACK))
    assert out == [Frame(2, MessageType.ACK)]


def test_reader_rejects_a_body_longer_than_the_maximum() -> None:
    reader = FrameReader(max_payload=64)
    header = wire.HEADER.pack(1, MessageType.JOB_CHUNK, 64)
    out = reader.feed(bytes([STX]) + header + b"z" * 80)
    assert faults_of(out) == [FrameFault.OVERSIZE]
    assert FrameFault.OVERSIZE.nak_code is ErrorCode.BAD_LENGTH


def test_reader_rejects_a_length_field_that_disagrees_with_the_payload() -> None:
    head = wire.HEADER.pack(1, MessageType.COMMAND, 3) + b"\x02"  # says 3, carries 1
    body = head + wire.crc16(head).to_bytes(2, "big")
    out = FrameReader().feed(wire.wrap(body))
    assert faults_of(out) == [FrameFault.BAD_LENGTH]


def test_reader_rejects_short_frames_and_bad_escapes() -> None:
    reader = FrameReader()
    out = reader.feed(bytes([STX, 0x01, 0x05, ETX]))
    out += reader.feed(bytes([STX, 0x00, DLE, 0x41, 0x00, ETX]))
    out += reader.feed(bytes([STX, 0x00, DLE, ETX]))
    assert faults_of(out) == [FrameFault.TOO_SHORT, FrameFault.BAD_ESCAPE, FrameFault.BAD_ESCAPE]
    assert all(f.nak_code is ErrorCode.BAD_FRAME for f in faults_of(out))


def test_reader_reset_drops_a_partial_frame() -> None:
    reader = FrameReader()
    frame = wire.encode_frame(1, MessageType.ACK)
    assert reader.feed(frame[:4]) == []
    reader.reset()
    assert reader.discarded == 4
    assert reader.feed(frame[4:]) == []  # the tail alone is noise
    assert reader.feed(frame) == [Frame(1, MessageType.ACK)]


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(0, 0xFFFF),
    msg_type=st.integers(0, 0xFF),
    payload=st.binary(max_size=wire.MAX_PAYLOAD),
    garbage=st.binary(max_size=64),
    cuts=st.lists(st.integers(0, 2 * wire.MAX_PAYLOAD + 80), max_size=4),
)
def test_any_payload_survives_a_garbage_prefix(
    seq: int, msg_type: int, payload: bytes, garbage: bytes, cuts: list[int]
) -> None:
    """encode -> random garbage in front -> fed in random pieces -> the same payload."""
    line = garbage + wire.encode_frame(seq, msg_type, payload)
    reader = FrameReader()
    out: list[Frame | FrameError] = []
    start = 0
    for cut in sorted(c for c in cuts if c < len(line)):
        out += reader.feed(line[start:cut])
        start = cut
    out += reader.feed(line[start:])
    assert frames_of(out)[-1:] == [Frame(seq, msg_type, payload)]
    if STX not in garbage:  # pure noise: all of it discarded, nothing else reported
        assert out == [Frame(seq, msg_type, payload)]
        assert reader.discarded == len(garbage)


@given(st.binary(max_size=2048))
def test_stuffing_round_trip_property(body: bytes) -> None:
    stuffed = wire.stuff(body)
    assert STX not in stuffed and ETX not in stuffed
    assert wire.unstuff(stuffed) == body


# -- payloads -------------------------------------------------------------------------


def test_status_round_trip() -> None:
    status = PackerStatus(
        state=PackMLState.HELD,
        unit_mode=1,
        machine_speed=300.0,
        processed_total=2**40,
        defective_total=17,
        stop_reason=101,
        stop_canister=12,
        job_id="J-118 åäö",
        job_pouches_total=400,
        job_pouches_good=380,
        job_pouches_rejected=3,
    )
    assert wire.decode_status(wire.encode_status(status)) == status


def test_status_with_a_non_packml_state_is_refused() -> None:
    raw = bytearray(
        wire.encode_status(PackerStatus(PackMLState.IDLE, 1, 0.0, 0, 0, 0, "", 0, 0, 0))
    )
    raw[0] = 42
    with pytest.raises(PayloadError, match=r"Status.state: 42 is not a PackML state"):
        wire.decode_status(bytes(raw))


def test_canister_page_round_trip() -> None:
    page = [
        CanisterStatus(1, "07350000010015", 400, 12, 500),
        CanisterStatus(300, "07350000010022", 0, 2**33, 60),
    ]
    assert wire.decode_canisters(wire.encode_canisters(9, 4, page)) == (9, 4, page)
    full = [CanisterStatus(n, "07350000010015", 1, 1, 1) for n in range(wire.canisters_per_page())]
    assert wire.canisters_per_page() == 31
    assert len(wire.encode_canisters(31, 0, full)) <= wire.MAX_PAYLOAD
    with pytest.raises(PayloadError, match=r"gtin: '123' is not 14 digits"):
        wire.encode_canisters(1, 0, [CanisterStatus(1, "123", 0, 0, 1)])


def test_job_chunks_round_trip_and_fit_the_payload() -> None:
    pouches = [
        Pouch(i, f"W1 2026-11-23 08:00 PT-{i:04d}", (PouchItem(1, 1), PouchItem(300, 2)))
        for i in range(1, 201)
    ]
    chunks = wire.chunk_pouches((wire.encode_pouch(p) for p in pouches), 256)
    assert len(chunks) > 1
    decoded: list[Pouch] = []
    for index, chunk in enumerate(chunks):
        payload = wire.encode_chunk(index, chunk)
        assert len(payload) <= 256
        got_index, got = wire.decode_chunk(payload)
        assert got_index == index
        decoded += got
    assert decoded == pouches
    header = wire.JobHeader("J-1", 200)
    assert wire.JobHeader.decode(header.encode()) == header


def test_encoding_limits_name_the_field_but_never_show_a_label() -> None:
    secret = "patient-ref-" + "x" * 200
    with pytest.raises(PayloadError, match=r"pouch 3.label: 212 bytes in UTF-8") as info:
        wire.encode_pouch(Pouch(3, secret, (PouchItem(1, 1),)))
    assert secret not in str(info.value)
    with pytest.raises(PayloadError, match=r"pouch 4: 65 items, the limit is 64"):
        wire.encode_pouch(Pouch(4, "", tuple(PouchItem(i, 1) for i in range(65))))
    with pytest.raises(PayloadError, match=r"pouch -1.sequence: -1 does not fit"):
        wire.encode_pouch(Pouch(-1, "", (PouchItem(1, 1),)))
    with pytest.raises(PayloadError, match=r"job_id: 'JJJ.*' is 65 bytes"):
        wire.JobHeader("J" * 65, 1).encode()
    with pytest.raises(PayloadError, match=r"number: 70000 does not fit"):
        wire.encode_refill(70000, 1)


def test_small_messages_round_trip() -> None:
    for command in PackMLCommand:
        assert wire.decode_command(wire.encode_command(command)) is command
    assert wire.decode_refill(wire.encode_refill(3, -5)) == (3, -5)
    assert wire.decode_read_canisters(wire.encode_read_canisters(31)) == 31
    reply = wire.HelloReply(1, 0, 1024, 6, "P1", "model", "fw")
    assert wire.HelloReply.decode(reply.encode()) == reply
    assert wire.Hello.decode(wire.Hello().encode()) == wire.Hello(1, 1)
    nak = Nak(ErrorCode.INVALID_ARGUMENT, "Quantity: must be > 0, got 0", 1)
    assert Nak.decode(nak.encode()) == nak
    assert Nak.decode(Nak(ErrorCode.BAD_CRC).encode()).argument is None
    assert Nak(ErrorCode.BAD_CRC).is_line_error and not nak.is_line_error
    assert Nak(0x99).code_name == "error 0x99"


def test_hello_reply_of_another_major_version_yields_only_the_version() -> None:
    reply = wire.HelloReply.decode(bytes([2, 5]) + b"anything at all")
    assert (reply.major, reply.minor) == (2, 5)
    newer_minor = wire.HelloReply(1, 3, 512, 2, "P1", "m", "f").encode() + b"\x00new"
    assert wire.HelloReply.decode(newer_minor).max_payload == 512


@pytest.mark.parametrize(
    ("decode", "data", "message"),
    [
        (wire.decode_command, b"\x0a", r"Command.code: 10 is not a PackML command"),
        (wire.decode_command, b"", r"Command.code: payload ends at byte 0, needs 1"),
        (wire.decode_refill, b"\x00\x01\x00", r"Refill.quantity"),
        (wire.decode_read_canisters, b"\x00\x01\x02", r"ReadCanisters: 1 unexpected byte"),
        (wire.decode_chunk, b"\x00\x00\x00\x01\x00\x00\x00\x01\x02\xff\xfe\x01", r"not UTF-8"),
    ],
)
def test_bad_payloads_name_the_field(decode: object, data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode(data)  # type: ignore[operator]
