"""Protocol 1.1 payloads: STATUS with the output tray, CANISTERS_EX, SET_UNIT_MODE."""

from __future__ import annotations

import pytest

from drivers import serial_frames as wire
from drivers.base import CanisterStatus, PackerStatus, PackMLState
from drivers.serial_frames import MessageType, PayloadError

STATUS = PackerStatus(
    state=PackMLState.SUSPENDED,
    unit_mode=1,
    machine_speed=0.0,
    processed_total=41,
    defective_total=1,
    stop_reason=103,
    stop_canister=0,
    job_id="J-7",
    job_pouches_total=60,
    job_pouches_good=40,
    job_pouches_rejected=1,
    output_count=40,
    output_capacity=40,
    output_full=True,
)


def test_version_and_new_message_types() -> None:
    assert (wire.PROTOCOL_MAJOR, wire.PROTOCOL_MINOR) == (1, 1)
    assert MessageType.READ_CANISTERS_EX == 0x04 and MessageType.CANISTERS_EX == 0x84
    assert MessageType.SET_UNIT_MODE == 0x22
    assert {MessageType.READ_CANISTERS_EX, MessageType.SET_UNIT_MODE} <= wire.REQUESTS
    assert wire.MESSAGE_MINOR == {MessageType.READ_CANISTERS_EX: 1, MessageType.SET_UNIT_MODE: 1}


def test_status_1_1_round_trips_with_the_output_tray() -> None:
    raw = wire.encode_status(STATUS)
    assert raw[-9:] == bytes.fromhex("00000028 00000028 01".replace(" ", ""))
    assert wire.decode_status(raw) == STATUS


def test_status_for_a_1_0_reader_has_no_tray_and_decodes_to_defaults() -> None:
    raw = wire.encode_status(STATUS, minor=0)
    assert raw == wire.encode_status(STATUS)[:-9]
    decoded = wire.decode_status(raw)
    assert (decoded.output_count, decoded.output_capacity, decoded.output_full) == (0, 0, False)
    assert decoded.stop_reason == 103 and decoded.job_id == "J-7"


def test_status_from_a_later_minor_version_may_carry_more_fields() -> None:
    assert wire.decode_status(wire.encode_status(STATUS) + b"\x00\x07") == STATUS


def test_status_with_a_cut_off_tray_block_names_the_field() -> None:
    raw = wire.encode_status(STATUS)[:-3]
    with pytest.raises(PayloadError, match=r"Status.output: payload ends at byte"):
        wire.decode_status(raw)


def test_canisters_ex_round_trip_and_page_size() -> None:
    page = [
        CanisterStatus(1, "07350000010015", 400, 12, 500, 250),
        CanisterStatus(300, "07350000010022", 0, 2**33, 60, 2**40),
    ]
    raw = wire.encode_canisters(9, 4, page, extended=True)
    assert len(raw) == 5 + 2 * 40
    assert wire.decode_canisters_ex(raw) == (9, 4, page)
    # The 1.0 layout drops refilled_total.
    _, _, old = wire.decode_canisters(wire.encode_canisters(9, 4, page))
    assert [c.refilled_total for c in old] == [0, 0] and [c.count for c in old] == [400, 0]
    assert wire.canisters_per_page(extended=True) == 25
    full = [CanisterStatus(n, "07350000010015", 1, 1, 1, 1) for n in range(25)]
    assert len(wire.encode_canisters(25, 0, full, extended=True)) <= wire.MAX_PAYLOAD
    with pytest.raises(PayloadError, match=r"CanistersEx\[1\].gtin: '123' is not 14 digits"):
        wire.encode_canisters(1, 0, [CanisterStatus(1, "123", 0, 0, 1)], extended=True)
    with pytest.raises(PayloadError, match=r"CanistersEx: 3 unexpected byte"):
        wire.decode_canisters_ex(raw + b"abc")


def test_unit_mode_payload() -> None:
    for mode in (1, 2, 3, 0, 255):
        assert wire.decode_unit_mode(wire.encode_unit_mode(mode)) == mode
    with pytest.raises(PayloadError, match=r"mode: 256 does not fit"):
        wire.encode_unit_mode(256)
    with pytest.raises(PayloadError, match=r"SetUnitMode: 1 unexpected byte"):
        wire.decode_unit_mode(b"\x01\x02")
    with pytest.raises(PayloadError, match=r"SetUnitMode.mode: payload ends"):
        wire.decode_unit_mode(b"")
