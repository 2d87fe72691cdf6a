"""The simulators stand on the protocol documents, not on the drivers.

- No simulator module imports drivers/ or controller/ (read from the source with ast,
  and checked again by importing every simulator in a fresh interpreter).
- The simulators' copies of the documented constants (PackML numbers, StopReason, the
  serial protocol's types and codes) have the documented values.
- The simulator's serial codec (simulators/serial_codec.py) reproduces the examples of
  docs/packer-serial-protocol.md byte for byte and resynchronises as the document says.
- Cross-check: every message encoded by the simulator's codec decodes with the driver's
  (drivers/serial_frames.py) to the same values, and the other way round. Two codecs
  written separately from one document: a payload layout either got wrong shows here.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import base
from drivers import serial_frames as drv
from simulators import packer_physics, packml
from simulators import serial_codec as sim

ROOT = Path(__file__).resolve().parents[2]
SIMULATORS = ROOT / "simulators"
FORBIDDEN = ("drivers", "controller")


def _simulator_modules() -> list[Path]:
    return sorted(SIMULATORS.rglob("*.py"))


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement anywhere in the file names (functions included)."""
    names: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
        elif (  # importlib.import_module("drivers...") / __import__("drivers...")
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
        ):
            names.append((node.lineno, node.args[0].value))
    return names


def _forbidden(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in FORBIDDEN)


# -- the import boundary -------------------------------------------------------------------


def test_there_are_simulator_modules_to_check() -> None:
    names = {p.name for p in _simulator_modules()}
    assert {"packer_serial.py", "packer_opcua.py", "packml.py", "serial_codec.py"} <= names


@pytest.mark.parametrize("path", _simulator_modules(), ids=lambda p: p.name)
def test_simulator_module_imports_nothing_from_drivers_or_controller(path: Path) -> None:
    bad = [f"line {line}: {name}" for line, name in _imported_names(path) if _forbidden(name)]
    assert not bad, f"{path.relative_to(ROOT)} imports {', '.join(bad)}"


def test_the_ast_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import drivers.base\n"
        "from controller import config\n"
        "def f():\n"
        "    from drivers.serial_frames import crc16\n"
        "    import importlib\n"
        "    return importlib.import_module('controller.cli')\n"
        "import driversx\n"
        "from . import drivers\n",
        encoding="utf-8",
    )
    found = [name for _, name in _imported_names(sample) if _forbidden(name)]
    assert found == ["drivers.base", "controller", "drivers.serial_frames", "controller.cli"]


def test_importing_every_simulator_loads_no_driver_or_controller_module() -> None:
    modules = sorted(
        {
            ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in _simulator_modules()
            if p.name != "__main__.py"
        }
    )
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('drivers', 'controller'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# -- the simulators' copies of the documented constants ----------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (packml.PackMLState, base.PackMLState),
        (packml.PackMLCommand, base.PackMLCommand),
        (packml.UnitMode, base.UnitMode),
        (packer_physics.StopReason, base.StopReason),
        (sim.MessageType, drv.MessageType),
        (sim.ErrorCode, drv.ErrorCode),
    ],
    ids=lambda e: f"{e.__module__}.{e.__name__}",
)
def test_documented_constants_agree_with_the_drivers(
    ours: type[enum.Enum], theirs: type[enum.Enum]
) -> None:
    assert {m.name: m.value for m in ours} == {m.name: m.value for m in theirs}


def test_packml_numbers_are_those_of_opc_30050() -> None:
    S = packml.PackMLState
    assert [int(s) for s in (S.CLEARING, S.STOPPED, S.IDLE, S.EXECUTE, S.ABORTED)] == [
        1,
        2,
        4,
        6,
        9,
    ]
    assert [int(s) for s in (S.HELD, S.RESETTING, S.COMPLETE)] == [11, 15, 17]
    assert [int(m) for m in packml.UnitMode] == [1, 2, 3]
    assert sim.COMMAND_NAMES == {c: m.value for c, m in enumerate(packml.PackMLCommand, 1)}
    assert [int(r) for r in packer_physics.StopReason] == [0, 1, 101, 102, 103, 104]


def test_protocol_constants_agree_with_the_drivers() -> None:
    assert (sim.PROTOCOL_MAJOR, sim.PROTOCOL_MINOR) == (drv.PROTOCOL_MAJOR, drv.PROTOCOL_MINOR)
    assert (sim.STX, sim.ETX, sim.DLE, sim.STUFF_XOR) == (drv.STX, drv.ETX, drv.DLE, 0x20)
    assert sim.MAX_PAYLOAD == drv.MAX_PAYLOAD == 1024
    assert {int(t) for t in sim.REQUESTS} == {int(t) for t in drv.REQUESTS}
    assert {int(t): m for t, m in sim.REQUEST_MINOR.items()} == {
        int(t): m for t, m in drv.MESSAGE_MINOR.items()
    }
    assert {
        name: int(drv.COMMAND_CODES[base.PackMLCommand(name)]) for name in sim.COMMAND_CODES
    } == (sim.COMMAND_CODES)


def test_simulator_enums_compare_equal_to_the_drivers_members() -> None:
    """Tests and operators compare the two by value; identity is not shared."""
    assert packml.PackMLState.EXECUTE == base.PackMLState.EXECUTE == 6
    assert packml.PackMLCommand.START == base.PackMLCommand.START == "Start"
    # A caller holding the drivers' member still gets the simulator's own state back.
    idle = base.PackMLState.IDLE
    assert packml.PackMLMachine(idle).state is packml.PackMLState.IDLE  # type: ignore[arg-type]


# -- the simulator's codec against the document -------------------------------------------


def test_crc_test_vector() -> None:
    assert sim.crc16(b"123456789") == 0x29B1
    assert sim.crc16(b"") == 0xFFFF


def test_stuffing_table() -> None:
    assert sim.stuff(bytes([0x02, 0x03, 0x10, 0x41])) == bytes.fromhex("1022 1023 1030 41")
    assert sim.stuff(bytes(range(256))) == drv.stuff(bytes(range(256)))


@pytest.mark.parametrize(
    ("seq", "msg_type", "payload", "line"),
    [
        # READ_STATUS, seq 1
        (1, sim.MessageType.READ_STATUS, b"", "02 00 01 10 22 00 00 09 D8 03"),
        # COMMAND Start, seq 0x0203
        (
            0x0203,
            sim.MessageType.COMMAND,
            sim.encode_command("Start"),
            "02 10 22 10 23 20 00 01 10 22 4F BF 03",
        ),
        # SET_UNIT_MODE Maintenance, seq 8, and its ACK
        (
            8,
            sim.MessageType.SET_UNIT_MODE,
            sim.encode_unit_mode(2),
            "02 00 08 22 00 01 10 22 C5 68 03",
        ),
        (8, sim.MessageType.ACK, b"", "02 00 08 06 00 00 26 6F 03"),
        # REFILL canister 3 quantity 0, seq 7, and its NAK
        (
            7,
            sim.MessageType.REFILL,
            sim.encode_refill(3, 0),
            "02 00 07 21 00 06 00 10 23 00 00 00 00 CB DD 03",
        ),
        (
            7,
            sim.MessageType.NAK,
            sim.encode_nak(
                sim.Nak(sim.ErrorCode.INVALID_ARGUMENT, "Quantity: must be > 0, got 0", 1)
            ),
            "02 00 07 15 00 1E 21 01" + b"Quantity: must be > 0, got 0".hex() + "DB BF 03",
        ),
    ],
)
def test_document_examples_byte_for_byte(
    seq: int, msg_type: int, payload: bytes, line: str
) -> None:
    expected = bytes.fromhex(line)
    assert sim.encode_frame(seq, msg_type, payload) == expected
    reader = sim.FrameReader()
    assert reader.feed(expected) == [sim.Frame(seq, msg_type, payload)]
    assert reader.discarded == 0


def test_sizes_of_the_document() -> None:
    status = _sim_status(job_id="J-1")
    assert len(sim.encode_status(status, 0)) == 38 + 1 + 3
    assert len(sim.encode_status(status, 1)) == 38 + 1 + 3 + 9
    assert sim.page_size() == 31 and sim.page_size(extended=True) == 25
    assert (sim.RECORD_SIZE, sim.RECORD_SIZE_EX) == (32, 40)


def _read_all(data: bytes, pieces: int = 1) -> tuple[list[sim.Frame | sim.FrameError], int]:
    reader = sim.FrameReader()
    out: list[sim.Frame | sim.FrameError] = []
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        out += reader.feed(data[at : at + step])
    return out, reader.discarded


def test_reader_resynchronises_after_garbage_and_rejects_each_damaged_frame() -> None:
    good = sim.encode_frame(5, sim.MessageType.READ_STATUS)
    bad_crc = bytearray(sim.frame_body(6, sim.MessageType.READ_STATUS))
    bad_crc[-1] ^= 0xFF
    line = (
        b"\xff\x00noise\x03\x10"  # rule 1: noise, no answer (9 bytes)
        + good[:4]  # rule 2: cut off by the next STX
        + good
        + sim.frame_bytes(bytes(bad_crc))  # rule 5: CRC
        + b"\x02\x00\x01\x10\x41"
        + good  # rule 3: bad escape, then noise up to the STX
        + b"\x02\x00\x09\x11\xea\x60"  # rule 4: length 60000 rejected at the header
        + b"\x02\x00\x01\x03"  # rule 5: too short
    )
    for pieces in (1, 7, len(line)):
        items, discarded = _read_all(line, pieces)
        codes = [i.code if isinstance(i, sim.FrameError) else i for i in items]
        assert codes == [
            sim.ErrorCode.BAD_FRAME,
            sim.Frame(5, sim.MessageType.READ_STATUS),
            sim.ErrorCode.BAD_CRC,
            sim.ErrorCode.BAD_FRAME,
            sim.Frame(5, sim.MessageType.READ_STATUS),
            sim.ErrorCode.BAD_LENGTH,
            sim.ErrorCode.BAD_FRAME,
        ]
        assert discarded == len(line) - 2 * len(good)


def test_reader_rejects_a_length_field_that_is_not_the_payload_size() -> None:
    body = bytearray(sim.frame_body(3, sim.MessageType.COMMAND, b"\x02"))
    body[4] = 2  # says two payload bytes, carries one
    covered = bytes(body[:-2])
    body[-2:] = sim.crc16(covered).to_bytes(2, "big")
    (item,) = sim.FrameReader().feed(sim.frame_bytes(bytes(body)))
    assert isinstance(item, sim.FrameError) and item.code is sim.ErrorCode.BAD_LENGTH


def test_reader_rejects_etx_after_dle_and_an_oversize_body() -> None:
    (item,) = sim.FrameReader().feed(b"\x02\x00\x01\x10\x03")
    assert isinstance(item, sim.FrameError) and item.code is sim.ErrorCode.BAD_FRAME
    reader = sim.FrameReader(max_payload=64)
    items = reader.feed(b"\x02\x00\x01\x11\x00\x40" + b"\x41" * 80)
    assert [i.code for i in items if isinstance(i, sim.FrameError)] == [sim.ErrorCode.BAD_LENGTH]
    assert reader.discarded == 1 + 5 + 80  # the rejected frame, then noise


def test_payload_errors_name_the_message_and_field() -> None:
    with pytest.raises(sim.PayloadError, match=r"Command.code: 10"):
        sim.decode_command(b"\x0a")
    with pytest.raises(sim.PayloadError, match=r"SetUnitMode: 1 byte\(s\) left over"):
        sim.decode_unit_mode(b"\x01\x00")
    with pytest.raises(sim.PayloadError, match=r"Refill.quantity"):
        sim.decode_refill(b"\x00\x01\x00")
    with pytest.raises(sim.PayloadError, match=r"JobBegin.job_id: 65 bytes, at most 64"):
        sim.decode_job_header(b"\x41" + b"J" * 65 + b"\x00\x00\x00\x01")
    with pytest.raises(sim.PayloadError, match=r"JobChunk.pouches\[0\].label: not valid UTF-8"):
        sim.decode_chunk(b"\x00\x00\x00\x01" + b"\x00\x00\x00\x01" + b"\x01\xff" + b"\x00")
    with pytest.raises(sim.PayloadError, match=r"ReadStatus: 2 byte"):
        sim.decode_read_status(b"\x00\x00")
    assert sim.decode_hello(b"\x01\x01\x99\x99") == (1, 1)  # a later version may add bytes


def test_nak_text_is_cut_on_a_character_boundary() -> None:
    payload = sim.encode_nak(sim.Nak(0x7F, "é" * 300))
    assert len(payload) == 2 + 512
    assert sim.decode_nak(payload).text == "é" * 256


# -- cross-check: simulator codec <-> driver codec, every message type ----------------------

SPECIAL = [0x02, 0x03, 0x10, 0x0210, 0x1003, 0x100302, 0xFFFF]


def _sim_status(**kw: object) -> sim.Status:
    values: dict[str, object] = dict(
        state=6,
        unit_mode=2,
        machine_speed=300.0,
        processed_total=0x0102030405060708,
        defective_total=0x1003021003021003,
        stop_reason=103,
        stop_canister=0x0210,
        job_pouches_total=0x00010203,
        job_pouches_good=0x10101010,
        job_pouches_rejected=3,
        job_id="J-\x02-é",
        output_count=0x02030405,
        output_capacity=0xFFFFFFFF,
        output_full=True,
    )
    values.update(kw)
    return sim.Status(**values)  # type: ignore[arg-type]


def _as_driver_status(s: sim.Status) -> base.PackerStatus:
    return base.PackerStatus(
        state=base.PackMLState(s.state),
        unit_mode=s.unit_mode,
        machine_speed=s.machine_speed,
        processed_total=s.processed_total,
        defective_total=s.defective_total,
        stop_reason=s.stop_reason,
        stop_canister=s.stop_canister,
        job_id=s.job_id,
        job_pouches_total=s.job_pouches_total,
        job_pouches_good=s.job_pouches_good,
        job_pouches_rejected=s.job_pouches_rejected,
        output_count=s.output_count,
        output_capacity=s.output_capacity,
        output_full=s.output_full,
    )


def _records(extended: bool) -> list[sim.CanisterRecord]:
    return [
        sim.CanisterRecord(
            number=n,
            gtin=f"0735000001{n % 10000:04d}",
            count=0x0203 * (i + 1),
            capacity=0x10000 + i,
            dispensed_total=0x0310021003100210 + i,
            refilled_total=(0x1002 + i) if extended else 0,
        )
        for i, n in enumerate([*SPECIAL[:5], 1, 65535])
    ]


def _as_driver_canister(r: sim.CanisterRecord) -> base.CanisterStatus:
    return base.CanisterStatus(
        r.number, r.gtin, r.count, r.dispensed_total, r.capacity, r.refilled_total
    )


POUCHES = [
    sim.Pouch(1, "PX-\x02\x03\x10 é", ((1, 2), (0x0210, 0x1003))),
    sim.Pouch(0x02031002, "", ((65535, 65535),)),
    sim.Pouch(3, "L" * 128, tuple((c, 1) for c in range(1, 65))),
]


def _as_driver_pouch(p: sim.Pouch) -> base.Pouch:
    return base.Pouch(p.seq, p.label, tuple(base.PouchItem(c, q) for c, q in p.items))


def _cross_hello() -> None:
    for major, minor in ((1, 1), (1, 0), (2, 0x10)):
        assert drv.Hello.decode(sim.encode_hello(major, minor)) == drv.Hello(major, minor)
        assert sim.decode_hello(drv.Hello(major, minor).encode()) == (major, minor)


def _cross_read_status() -> None:
    assert sim.encode_frame(0x0203, 0x02) == drv.encode_frame(0x0203, drv.MessageType.READ_STATUS)
    sim.decode_read_status(b"")


def _cross_read_canisters() -> None:
    for first in (0, 0x0203, 0xFFFF):
        assert drv.decode_read_canisters(sim.encode_read_canisters(first)) == first
        assert sim.decode_read_canisters(drv.encode_read_canisters(first)) == first
        assert sim.decode_read_canisters(drv.encode_read_canisters(first), extended=True) == first


def _cross_job_header() -> None:
    for job_id, count in (("J-1", 3), ("J-\x02\x10" + "é" * 30, 0x02031003), ("", 0)):
        header = sim.JobHeader(job_id, count)
        assert drv.JobHeader.decode(sim.encode_job_header(header)) == drv.JobHeader(job_id, count)
        assert sim.decode_job_header(drv.JobHeader(job_id, count).encode()) == header


def _cross_job_chunk() -> None:
    for index, pouches in ((0, POUCHES), (0x1002, POUCHES[:1]), (7, [])):
        index_d, decoded = drv.decode_chunk(sim.encode_chunk(index, pouches))
        assert (index_d, decoded) == (index, [_as_driver_pouch(p) for p in pouches])
        raw = drv.encode_chunk(index, [drv.encode_pouch(_as_driver_pouch(p)) for p in pouches])
        assert sim.decode_chunk(raw) == (index, list(pouches))
        assert raw == sim.encode_chunk(index, pouches)


def _cross_command() -> None:
    for command in base.PackMLCommand:
        assert drv.decode_command(sim.encode_command(command.value)) is command
        assert sim.decode_command(drv.encode_command(command)) == command.value


def _cross_refill() -> None:
    for number, quantity in (
        (3, 0),
        (0x0210, -3),
        (65535, 2**31 - 1),
        (1, -(2**31)),
        (2, 0x021003),
    ):
        assert drv.decode_refill(sim.encode_refill(number, quantity)) == (number, quantity)
        assert sim.decode_refill(drv.encode_refill(number, quantity)) == (number, quantity)


def _cross_set_unit_mode() -> None:
    for mode in (1, 2, 3, 0, 0x10, 255):
        assert drv.decode_unit_mode(sim.encode_unit_mode(mode)) == mode
        assert sim.decode_unit_mode(drv.encode_unit_mode(mode)) == mode


def _cross_ack() -> None:
    assert sim.encode_frame(0x1002, 0x06) == drv.encode_frame(0x1002, drv.MessageType.ACK)
    sim.decode_ack(b"")


def _cross_nak() -> None:
    cases = [(0x21, "Quantity: must be > 0, got 0", 1), (0x03, "", None), (0x7F, "é\x02\x03", 0x10)]
    for code, text, argument in cases:
        assert drv.Nak.decode(sim.encode_nak(sim.Nak(code, text, argument))) == drv.Nak(
            code, text, argument
        )
        assert sim.decode_nak(drv.Nak(code, text, argument).encode()) == sim.Nak(
            code, text, argument
        )


def _cross_hello_reply() -> None:
    for identity in (
        sim.Identity(1, 1, 1024, 0x0210, "P1", "doseline serial packer simulator", "sim-1"),
        sim.Identity(1, 0, 64, 0, "P\x02\x03é", "", "x" * 255),
    ):
        fields = (
            identity.major,
            identity.minor,
            identity.max_payload,
            identity.canister_count,
            identity.name,
            identity.model,
            identity.firmware,
        )
        assert drv.HelloReply.decode(sim.encode_hello_reply(identity)) == drv.HelloReply(*fields)
        assert sim.decode_hello_reply(drv.HelloReply(*fields).encode()) == identity
    # another major version: only the version is read, on both sides
    assert drv.HelloReply.decode(sim.encode_hello(2, 0)).major == 2
    assert sim.decode_hello_reply(bytes([2, 0])) == sim.Identity(2, 0, 0, 0, "", "", "")


def _cross_status() -> None:
    for status in (
        _sim_status(),
        _sim_status(state=2, machine_speed=0.0, job_id="", output_full=False, stop_reason=0),
        _sim_status(machine_speed=12.34, output_capacity=0, output_count=0),
    ):
        for minor in (0, 1):
            expected = _as_driver_status(status)
            if minor == 0:
                expected = _as_driver_status(
                    dataclasses.replace(
                        status, output_count=0, output_capacity=0, output_full=False
                    )
                )
            assert drv.decode_status(sim.encode_status(status, minor)) == expected
            back = sim.decode_status(drv.encode_status(_as_driver_status(status), minor))
            assert _as_driver_status(back) == expected
            assert drv.encode_status(_as_driver_status(status), minor) == sim.encode_status(
                status, minor
            )


def _cross_canisters(extended: bool) -> None:
    records = _records(extended)
    for total, first, page in ((len(records), 0, records), (40, 0x0203, records[:1]), (0, 0, [])):
        total_d, first_d, page_d = drv.decode_canisters(
            sim.encode_canisters(total, first, page, extended=extended), extended=extended
        )
        assert (total_d, first_d, page_d) == (
            total,
            first,
            [_as_driver_canister(r) for r in page],
        )
        raw = drv.encode_canisters(
            total, first, [_as_driver_canister(r) for r in page], extended=extended
        )
        assert sim.decode_canisters(raw, extended=extended) == (total, first, page)
    assert sim.page_size(1024, extended=extended) == drv.canisters_per_page(1024, extended=extended)
    assert sim.page_size(64, extended=extended) == drv.canisters_per_page(64, extended=extended)


CROSS_CHECKS = {
    sim.MessageType.HELLO: _cross_hello,
    sim.MessageType.READ_STATUS: _cross_read_status,
    sim.MessageType.READ_CANISTERS: _cross_read_canisters,
    sim.MessageType.READ_CANISTERS_EX: _cross_read_canisters,
    sim.MessageType.JOB_BEGIN: _cross_job_header,
    sim.MessageType.JOB_CHUNK: _cross_job_chunk,
    sim.MessageType.JOB_COMMIT: _cross_job_header,
    sim.MessageType.COMMAND: _cross_command,
    sim.MessageType.REFILL: _cross_refill,
    sim.MessageType.SET_UNIT_MODE: _cross_set_unit_mode,
    sim.MessageType.ACK: _cross_ack,
    sim.MessageType.NAK: _cross_nak,
    sim.MessageType.HELLO_REPLY: _cross_hello_reply,
    sim.MessageType.STATUS: _cross_status,
    sim.MessageType.CANISTERS: lambda: _cross_canisters(False),
    sim.MessageType.CANISTERS_EX: lambda: _cross_canisters(True),
}


def test_every_message_type_has_a_cross_check() -> None:
    assert set(CROSS_CHECKS) == set(sim.MessageType)
    assert {int(t) for t in sim.MessageType} == {int(t) for t in drv.MessageType}


@pytest.mark.parametrize("msg_type", list(CROSS_CHECKS), ids=lambda t: t.name)
def test_payloads_cross_decode(msg_type: sim.MessageType) -> None:
    CROSS_CHECKS[msg_type]()


@pytest.mark.parametrize("msg_type", list(sim.MessageType), ids=lambda t: t.name)
def test_frames_cross_decode(msg_type: sim.MessageType) -> None:
    """Whole frames, stuffing-heavy payloads: each side's reader reads the other's line."""
    payloads = [b"", bytes([0x02, 0x03, 0x10]) * 5, bytes(range(256)), b"\x10" * 1024]
    for seq in (1, 0x0203, 0x1002, 0xFFFF):
        for payload in payloads:
            ours = sim.encode_frame(seq, msg_type, payload)
            theirs = drv.encode_frame(seq, int(msg_type), payload)
            assert ours == theirs
            assert drv.FrameReader().feed(b"\x00" + ours) == [drv.Frame(seq, msg_type, payload)]
            assert sim.FrameReader().feed(b"\x00" + theirs) == [sim.Frame(seq, msg_type, payload)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.binary(max_size=60))
def test_both_readers_agree_on_damaged_lines(chunks: list[bytes], noise: bytes) -> None:
    """Frames mixed with arbitrary garbage: both readers keep the same frames and reject
    the same number of frames with the same line error codes."""
    line = (
        b"".join(
            sim.encode_frame(i + 1, 0x82, chunk)[: len(chunk) + 4 + (i % 3) * 3]
            + noise[i:]
            + sim.encode_frame(i + 1, 0x82, chunk)
            for i, chunk in enumerate(chunks)
        )
        + noise
    )
    our_reader, their_reader = sim.FrameReader(), drv.FrameReader()
    ours, theirs = our_reader.feed(line), their_reader.feed(line)
    assert our_reader.discarded == their_reader.discarded
    assert [
        (i.seq, i.type, i.payload) if isinstance(i, sim.Frame) else int(i.code) for i in ours
    ] == [
        (i.seq, i.type, i.payload) if isinstance(i, drv.Frame) else int(i.fault.nak_code)
        for i in theirs
    ]
