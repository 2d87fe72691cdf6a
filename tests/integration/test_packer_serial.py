"""The serial packer driver against the serial packer simulator over real loopback sockets.

Mirrors tests/integration/test_packer_opcua.py (same machine, other wire), plus what
a serial line adds: noise, damaged and lost replies, retries that must act once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from drivers import serial_frames as wire
from drivers.base import (
    DriverError,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    Pouch,
    PouchItem,
    StopReason,
    UnitMode,
)
from drivers.serial_frames import ErrorCode, Frame, FrameError, MessageType, Nak
from drivers.serial_packer import SerialPackerDriver
from simulators.packer_serial import SerialPackerSimulator

S = PackMLState
C = PackMLCommand

CANISTERS = [
    (1, "07350000010015", 200, 300),
    (2, "07350000010022", 200, 300),
    (3, "07350000010039", 100, 300),
    (4, "07350000010046", 50, 60),
]
FAST = {"speed_factor": 100.0, "transient_seconds": 0.005}  # 10 ms per pouch
TIMEOUT = 0.25  # per attempt; short so that retry tests stay fast

Factory = Callable[..., Awaitable[tuple[SerialPackerSimulator, SerialPackerDriver]]]


@pytest.fixture
async def make_packer() -> AsyncIterator[Factory]:
    """Start simulators with connected drivers; everything is closed after the test."""
    started: list[tuple[SerialPackerSimulator, SerialPackerDriver]] = []

    async def make(**kwargs: Any) -> tuple[SerialPackerSimulator, SerialPackerDriver]:
        params: dict[str, Any] = {"canisters": CANISTERS, **FAST}
        params.update(kwargs)
        sim = SerialPackerSimulator("P1", **params)
        await sim.start()
        driver = SerialPackerDriver("P1", sim.address, timeout=TIMEOUT)
        started.append((sim, driver))
        await driver.connect()
        return sim, driver

    yield make
    for sim, driver in reversed(started):
        await driver.close()
        await sim.stop()


def job(job_id: str, contents: list[list[tuple[int, int]]]) -> PackerJobSpec:
    return PackerJobSpec(
        job_id,
        tuple(
            Pouch(seq, f"pt-{seq % 3:04x}/08:00", tuple(PouchItem(c, q) for c, q in items))
            for seq, items in enumerate(contents, start=1)
        ),
    )


#: Ten pouches of varying contents: (canister, quantity) per item.
TEN_POUCHES: list[list[tuple[int, int]]] = [
    [(1, 1), (2, 2)],
    [(1, 1)],
    [(3, 1), (4, 1)],
    [(2, 1), (3, 2)],
    [(1, 2), (2, 1), (3, 1)],
    [(4, 2)],
    [(1, 1), (4, 1)],
    [(2, 3)],
    [(3, 1)],
    [(1, 1), (2, 1), (3, 1), (4, 1)],
]


def totals(contents: list[list[tuple[int, int]]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for items in contents:
        for canister, qty in items:
            out[canister] += qty
    return out


async def wait_state(
    driver: SerialPackerDriver, state: PackMLState, within: float = 5.0
) -> PackerStatus:
    deadline = time.monotonic() + within
    while True:
        status = await driver.read_status()
        if status.state is state:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"state {status.state.name}, wanted {state.name}: {status}")
        await asyncio.sleep(0.005)


async def to_idle(driver: SerialPackerDriver) -> None:
    await driver.command(C.RESET)
    await wait_state(driver, S.IDLE)


async def canister_map(driver: SerialPackerDriver) -> dict[int, tuple[int, int]]:
    return {c.number: (c.count, c.dispensed_total) for c in await driver.read_canisters()}


class RawLine:
    """A bare TCP client speaking frames by hand, to test the device's side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = wire.FrameReader()

    @classmethod
    async def open(cls, sim: SerialPackerSimulator) -> RawLine:
        reader, writer = await asyncio.open_connection(sim.host, sim.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self, n: int, within: float = 2.0) -> list[Frame | FrameError]:
        got: list[Frame | FrameError] = []
        async with asyncio.timeout(within):
            while len(got) < n:
                got += self.frames.feed(await self.reader.read(4096))
        return got

    async def request(self, seq: int, msg_type: int, payload: bytes = b"") -> Frame:
        await self.send(wire.encode_frame(seq, msg_type, payload))
        (reply,) = await self.receive(1)
        assert isinstance(reply, Frame) and reply.seq == seq
        return reply

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def nak_of(frame: Frame) -> Nak:
    assert frame.type == MessageType.NAK, frame
    return Nak.decode(frame.payload)


# -- production ---------------------------------------------------------------------


async def test_job_completes_with_exact_counters(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    assert driver.device is not None and driver.device.name == "P1"
    assert (driver.device.major, driver.device.canister_count) == (1, 4)
    status = await driver.read_status()
    assert status.state is S.STOPPED and status.unit_mode == 1 and status.job_id == ""
    before = await canister_map(driver)
    canisters = await driver.read_canisters()
    assert [(c.number, c.gtin, c.capacity) for c in canisters] == [
        (n, gtin, cap) for n, gtin, _, cap in CANISTERS
    ]

    await to_idle(driver)
    await driver.load_job(job("J-1", TEN_POUCHES))
    status = await driver.read_status()
    assert (status.job_id, status.job_pouches_total, status.job_pouches_good) == ("J-1", 10, 0)
    await driver.command(C.START)
    status = await wait_state(driver, S.COMPLETE)

    assert status.processed_total == 10 and status.defective_total == 0
    assert (status.job_pouches_total, status.job_pouches_good, status.job_pouches_rejected) == (
        10,
        10,
        0,
    )
    assert status.stop_reason == StopReason.NONE and status.machine_speed == 0.0
    used = totals(TEN_POUCHES)
    after = await canister_map(driver)
    for number, (count, dispensed) in before.items():
        assert after[number] == (count - used[number], dispensed + used[number])
    assert sim.canister_counts() == {n: c for n, (c, _) in after.items()}
    assert sim.dispensed_totals() == {n: d for n, (_, d) in after.items()}

    await driver.command(C.RESET)
    status = await wait_state(driver, S.IDLE)
    assert (status.job_id, status.job_pouches_total, status.job_pouches_good) == ("", 0, 0)
    assert status.processed_total == 10  # PackTags counters survive the job
    assert driver.retransmissions == 0 and sim.replayed == 0


async def test_rejected_pouch_is_packed_again_and_its_tablets_are_gone(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer(reject_rate=0.3, seed=7)
    contents = [[(1, 2), (3, 1)]] * 10  # identical pouches: dispensed = attempts * contents
    await to_idle(driver)
    await driver.load_job(job("J-rej", contents))
    await driver.command(C.START)
    status = await wait_state(driver, S.COMPLETE)

    rejected = status.job_pouches_rejected
    assert rejected > 0
    assert status.job_pouches_good == 10
    assert status.processed_total == 10 + rejected == sim.processed_count
    assert status.defective_total == rejected == sim.defective_count
    after = await canister_map(driver)
    assert after[1] == (200 - 2 * (10 + rejected), 2 * (10 + rejected))
    assert after[3] == (100 - (10 + rejected), 10 + rejected)
    assert after[2] == (200, 0)

    # Same seed, same commands: the same pouches are rejected.
    sim2, driver2 = await make_packer(reject_rate=0.3, seed=7)
    await to_idle(driver2)
    await driver2.load_job(job("J-rej", contents))
    await driver2.command(C.START)
    status2 = await wait_state(driver2, S.COMPLETE)
    assert status2.job_pouches_rejected == rejected
    assert sim2.dispensed_totals() == sim.dispensed_totals()


async def test_empty_canister_holds_then_refill_and_unhold_completes(
    make_packer: Factory,
) -> None:
    canisters = [(1, "07350000010015", 100, 100), (3, "07350000010039", 5, 50)]
    sim, driver = await make_packer(canisters=canisters)
    contents = [[(1, 1), (3, 2)]] * 10
    await to_idle(driver)
    await driver.load_job(job("J-empty", contents))
    await driver.command(C.START)
    status = await wait_state(driver, S.HELD)
    assert status.stop_reason == StopReason.CANISTER_EMPTY == 101
    assert status.stop_canister == 3 == sim.stop_canister
    assert status.job_pouches_good == 2  # 5 tablets: two pouches, the third would need 2
    # Pouch 3 is open: its paracetamol and the last tablet of canister 3 are in it.
    assert await canister_map(driver) == {1: (97, 3), 3: (0, 5)}

    with pytest.raises(DriverError, match=r"capacity 50"):
        await driver.refill_canister(3, 51)
    await driver.refill_canister(3, 30)
    assert (await canister_map(driver))[3] == (30, 5)
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.COMPLETE)
    assert status.stop_reason == StopReason.NONE and status.stop_canister == 0
    assert status.job_pouches_good == 10 and status.processed_total == 10
    assert await canister_map(driver) == {1: (90, 10), 3: (15, 20)}


async def test_jam_holds_without_dispensing(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    sim.inject_jam()
    await to_idle(driver)
    await driver.load_job(job("J-jam", [[(2, 1)]] * 3))
    await driver.command(C.START)
    status = await wait_state(driver, S.HELD)
    assert status.stop_reason == StopReason.JAM
    assert status.processed_total == 0 and sim.dispensed_totals()[2] == 0
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.COMPLETE)
    assert status.processed_total == 3 and sim.dispensed_totals()[2] == 3


async def test_a_large_job_travels_in_chunks_and_loads_whole(make_packer: Factory) -> None:
    sim, driver = await make_packer(speed_factor=1.0)  # one pouch a second: it stays put
    contents = [[(1, 1), (2, 1), (3, 1)]] * 400
    await to_idle(driver)
    await driver.load_job(job("J-big", contents))
    assert sim.executed["JOB_CHUNK"] > 10  # 400 pouches of 30 bytes, 1 KB frames
    status = await driver.read_status()
    assert (status.job_id, status.job_pouches_total) == ("J-big", 400)
    await driver.command(C.ABORT)
    await wait_state(driver, S.ABORTED)


async def test_many_canisters_are_read_in_pages(make_packer: Factory) -> None:
    layout = [(n, f"0735000001{n:04d}", n, 500) for n in range(1, 71)]
    sim, driver = await make_packer(canisters=layout)
    canisters = await driver.read_canisters()
    assert [(c.number, c.gtin, c.count) for c in canisters] == [(n, g, c) for n, g, c, _ in layout]
    # Protocol 1.1 reads with READ_CANISTERS_EX: 40-byte records, 25 per page.
    assert sim.executed["READ_CANISTERS_EX"] == 3 and sim.executed["READ_CANISTERS"] == 0


# -- commands -----------------------------------------------------------------------


async def test_stop_keeps_counters_and_reset_clears_the_job(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)  # 200 ms per pouch
    await to_idle(driver)
    await driver.load_job(job("J-stop", TEN_POUCHES))
    await driver.command(C.START)
    status = await wait_state(driver, S.EXECUTE)
    assert status.machine_speed == 300.0

    with pytest.raises(DriverError, match=r"EXECUTE"):
        await driver.refill_canister(1, 1)
    with pytest.raises(DriverError, match=r"LoadJob: machine is in state EXECUTE"):
        await driver.load_job(job("J-other", TEN_POUCHES))

    await driver.command(C.STOP)
    status = await wait_state(driver, S.STOPPED)
    assert status.stop_reason == StopReason.OPERATOR
    assert status.job_id == "J-stop" and status.job_pouches_total == 10
    good = status.job_pouches_good
    assert good < 10
    assert status.processed_total == good and status.machine_speed == 0.0

    await driver.command(C.RESET)
    status = await wait_state(driver, S.IDLE)
    assert status.job_id == "" and status.stop_reason == StopReason.NONE
    assert status.processed_total == good


async def test_hold_unhold_suspend_unsuspend(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)
    await to_idle(driver)
    await driver.load_job(job("J-hold", TEN_POUCHES))
    await driver.command(C.START)
    await wait_state(driver, S.EXECUTE)

    await driver.command(C.HOLD)
    status = await wait_state(driver, S.HELD)
    assert status.stop_reason == StopReason.OPERATOR
    await driver.command(C.UNHOLD)
    status = await wait_state(driver, S.EXECUTE)
    assert status.stop_reason == StopReason.NONE

    await driver.command(C.SUSPEND)
    await wait_state(driver, S.SUSPENDED)
    await driver.command(C.UNSUSPEND)
    await wait_state(driver, S.EXECUTE)
    await driver.command(C.ABORT)


async def test_abort_then_clear_then_reset(make_packer: Factory) -> None:
    _sim, driver = await make_packer(speed_factor=5.0)
    await to_idle(driver)
    await driver.load_job(job("J-abort", TEN_POUCHES))
    await driver.command(C.START)
    await wait_state(driver, S.EXECUTE)
    await driver.command(C.ABORT)
    status = await wait_state(driver, S.ABORTED)
    assert status.stop_reason == StopReason.OPERATOR

    with pytest.raises(
        DriverError, match=r"Reset not allowed in state ABORTED \(9\) \(INVALID_STATE\)"
    ):
        await driver.command(C.RESET)
    await driver.command(C.CLEAR)
    status = await wait_state(driver, S.STOPPED)
    assert status.job_id == "J-abort"
    await to_idle(driver)
    assert (await driver.read_status()).job_id == ""


async def test_invalid_commands_are_refused_with_the_state(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    with pytest.raises(DriverError) as info:
        await driver.command(C.UNHOLD)
    text = str(info.value)
    assert text.startswith(f"packer P1 ({sim.address}): command Unhold: refused:")
    assert "STOPPED" in text and "INVALID_STATE" in text
    await to_idle(driver)
    with pytest.raises(
        DriverError, match=r"command Start: refused: Start needs a job: no job loaded"
    ):
        await driver.command(C.START)
    assert sim.state == S.IDLE


# -- bad input ----------------------------------------------------------------------


async def test_bad_load_job_is_refused_with_clear_text(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    with pytest.raises(DriverError, match=r"load_job 'J-x'.*state STOPPED \(2\), not IDLE"):
        await driver.load_job(job("J-x", TEN_POUCHES))
    await to_idle(driver)

    cases: list[tuple[PackerJobSpec, str]] = [
        (job("J-x", [[(1, 1)], [(99, 1)]]), r"Pouches\[1\]\.items\[0\]: unknown canister 99"),
        (job("J-x", [[(1, 0)]]), r"Pouches\[0\]\.items\[0\]: quantity must be > 0, got 0"),
        (job("J-x", [[(4, 61)]]), r"quantity 61 exceeds capacity 60 of canister 4"),
        (job("J-x", [[(1, 1), (1, 2)]]), r"canister 1 appears twice in one pouch"),
        (job("J-x", []), r"Pouches: a job needs at least one pouch"),
        (job("J-x", [[]]), r"Pouches\[0\]\.items: must be a non-empty list"),
        (
            PackerJobSpec("J-x", (Pouch(1, "a", (PouchItem(1, 1),)),) * 2),
            r"Pouches\[1\]\.seq: duplicate sequence 1",
        ),
    ]
    for spec, pattern in cases:
        with pytest.raises(DriverError, match=pattern) as info:
            await driver.load_job(spec)
        assert "(INVALID_ARGUMENT, Pouches)" in str(info.value)
    with pytest.raises(DriverError, match=r"JobId: must not be empty \(INVALID_ARGUMENT, JobId\)"):
        await driver.load_job(job("", [[(1, 1)]]))

    # Limits of the wire format are caught before anything is sent.
    sent = sum(sim.executed.values())
    label = "ward-7/" + "x" * 200
    with pytest.raises(DriverError, match=r"cannot encode the job: pouch 1.label: 207 bytes") as e:
        await driver.load_job(PackerJobSpec("J-x", (Pouch(1, label, (PouchItem(1, 1),)),)))
    assert label not in str(e.value)
    with pytest.raises(DriverError, match=r"job_id: 'J{65}' is 65 bytes in UTF-8"):
        await driver.load_job(job("J" * 65, [[(1, 1)]]))
    assert sum(sim.executed.values()) == sent

    assert sim.state == S.IDLE and (await driver.read_status()).job_id == ""
    await driver.load_job(job("J-ok", [[(1, 1)]]))
    with pytest.raises(DriverError, match=r"job 'J-ok' is already loaded \(INVALID_STATE\)"):
        await driver.load_job(job("J-2", [[(1, 1)]]))


async def test_refill_validation(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    with pytest.raises(
        DriverError, match=r"Number: unknown canister 99 \(INVALID_ARGUMENT, Number\)"
    ):
        await driver.refill_canister(99, 1)
    with pytest.raises(DriverError, match=r"Quantity: must be > 0, got 0"):
        await driver.refill_canister(1, 0)
    with pytest.raises(DriverError, match=r"Quantity: must be > 0, got -3"):
        await driver.refill_canister(1, -3)
    with pytest.raises(
        DriverError,
        match=r"refill_canister 4 \+11: refused: Quantity: 11 would overfill canister 4"
        r" \(count 50, capacity 60\) \(INVALID_ARGUMENT, Quantity\)",
    ):
        await driver.refill_canister(4, 11)
    with pytest.raises(DriverError, match=r"cannot encode: number: 70000 does not fit"):
        await driver.refill_canister(70000, 1)
    await driver.refill_canister(4, 10)
    assert sim.canister_counts()[4] == 60


# -- the device side of the line ----------------------------------------------------


async def test_half_loaded_job_never_runs(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    await to_idle(driver)
    await driver.close()
    line = await RawLine.open(sim)
    try:
        assert (await line.request(1, MessageType.HELLO, wire.Hello().encode())).type == (
            MessageType.HELLO_REPLY
        )
        header = wire.JobHeader("J-half", 3).encode()
        pouch = wire.encode_pouch(Pouch(1, "a", (PouchItem(1, 1),)))
        assert (await line.request(2, MessageType.JOB_BEGIN, header)).type == MessageType.ACK
        chunk = wire.encode_chunk(0, [pouch, pouch])
        assert (await line.request(3, MessageType.JOB_CHUNK, chunk)).type == MessageType.ACK
        start = wire.encode_command(C.START)
        nak = nak_of(await line.request(4, MessageType.COMMAND, start))
        assert (nak.code, nak.text) == (ErrorCode.INVALID_STATE, "Start needs a job: no job loaded")
        nak = nak_of(await line.request(5, MessageType.JOB_COMMIT, header))
        assert nak.code == ErrorCode.JOB_SEQUENCE and "2 of 3 pouches received" in nak.text
        assert sim.state == S.IDLE

        # A chunk out of order discards the job being loaded.
        assert (await line.request(6, MessageType.JOB_BEGIN, header)).type == MessageType.ACK
        nak = nak_of(await line.request(7, MessageType.JOB_CHUNK, wire.encode_chunk(1, [pouch])))
        assert nak.code == ErrorCode.JOB_SEQUENCE and "expected chunk 0" in nak.text
        nak = nak_of(await line.request(8, MessageType.JOB_CHUNK, wire.encode_chunk(0, [pouch])))
        assert nak.code == ErrorCode.JOB_SEQUENCE and "no job begun" in nak.text
        status = wire.decode_status((await line.request(9, MessageType.READ_STATUS)).payload)
        assert status.job_id == "" and status.state is S.IDLE
    finally:
        await line.close()


async def test_device_resyncs_after_garbage_and_naks_damaged_frames(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    await driver.close()
    line = await RawLine.open(sim)
    try:
        await line.request(1, MessageType.HELLO, wire.Hello().encode())
        good = wire.encode_frame(2, MessageType.READ_STATUS)
        # Noise without STX: no answer; a cut-off frame: NAK seq 0 BAD_FRAME.
        await line.send(b"\xff\x00noise\x03\x10" + good[:5] + good)
        nak_frame, reply = await line.receive(2)
        assert isinstance(nak_frame, Frame) and nak_frame.seq == wire.SEQ_UNKNOWN
        assert nak_of(nak_frame).code == ErrorCode.BAD_FRAME
        assert isinstance(reply, Frame) and (reply.seq, reply.type) == (2, MessageType.STATUS)

        body = bytearray(wire.build_body(3, MessageType.READ_STATUS))
        body[-2] ^= 0x40
        await line.send(wire.wrap(bytes(body)))
        (nak_frame,) = await line.receive(1)
        assert isinstance(nak_frame, Frame) and nak_frame.seq == 0
        assert nak_of(nak_frame).code == ErrorCode.BAD_CRC

        await line.send(
            bytes([wire.STX]) + wire.stuff(wire.HEADER.pack(3, MessageType.JOB_CHUNK, 60000))
        )
        (nak_frame,) = await line.receive(1)
        assert isinstance(nak_frame, Frame)
        assert nak_of(nak_frame).code == ErrorCode.BAD_LENGTH
        assert "60000" in nak_of(nak_frame).text

        assert (await line.request(3, MessageType.READ_STATUS)).type == MessageType.STATUS
        assert sim.discarded_bytes > 10
        nak = nak_of(await line.request(4, 0x55))
        assert nak.code == ErrorCode.UNKNOWN_TYPE and "0x55" in nak.text
        nak = nak_of(await line.request(5, MessageType.COMMAND, b"\x0a"))
        assert nak.code == ErrorCode.BAD_PAYLOAD and "Command.code: 10" in nak.text
    finally:
        await line.close()


async def test_repeated_sequence_replays_and_a_reused_one_is_refused(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    await driver.close()
    line = await RawLine.open(sim)
    try:
        await line.request(1, MessageType.HELLO, wire.Hello().encode())
        refill = wire.encode_refill(4, 5)
        first = await line.request(2, MessageType.REFILL, refill)
        again = await line.request(2, MessageType.REFILL, refill)
        assert first == again and first.type == MessageType.ACK
        assert sim.canister_counts()[4] == 55 and sim.replayed == 1
        nak = nak_of(await line.request(2, MessageType.REFILL, wire.encode_refill(4, 1)))
        assert nak.code == ErrorCode.SEQUENCE_REUSED
        assert sim.canister_counts()[4] == 55
        # A refusal is the answer too: replayed, not re-evaluated.
        bad = wire.encode_refill(4, 100)
        assert nak_of(await line.request(3, MessageType.REFILL, bad)).code == (
            ErrorCode.INVALID_ARGUMENT
        )
        assert nak_of(await line.request(3, MessageType.REFILL, bad)).argument == 1
        # HELLO starts afresh: seq 2 is a new request after it.
        await line.request(4, MessageType.HELLO, wire.Hello().encode())
        assert (await line.request(2, MessageType.REFILL, refill)).type == MessageType.ACK
        assert sim.canister_counts()[4] == 60
    finally:
        await line.close()


# -- noise, damaged and lost replies ------------------------------------------------


async def test_garbage_on_the_line_between_requests_is_survived(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    await to_idle(driver)
    await driver.load_job(job("J-noise", TEN_POUCHES))
    await driver.command(C.START)
    for _ in range(20):
        sim.inject_garbage(300)
        await asyncio.sleep(0.002)
        await driver.read_status()
    status = await wait_state(driver, S.COMPLETE)
    assert status.job_pouches_good == 10
    assert driver.discarded_bytes >= 20 * 250  # a bit may be taken for bogus frames
    assert sim.replayed == driver.retransmissions  # every resend was answered by replay


async def test_corrupted_reply_is_retried_and_the_command_acts_once(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    await to_idle(driver)
    await driver.load_job(job("J-crc", TEN_POUCHES))
    sim.corrupt_next_reply()
    # Start executed twice would be refused (Starting does not take Start): no error here.
    await driver.command(C.START)
    assert (sim.replies_corrupted, sim.replayed, driver.retransmissions) == (1, 1, 1)
    assert driver.damaged_frames >= 1
    assert (await wait_state(driver, S.COMPLETE)).job_pouches_good == 10

    sim.corrupt_next_reply()
    await driver.refill_canister(4, 7)
    assert sim.replayed == 2
    assert sim.canister_counts()[4] == 50 - totals(TEN_POUCHES)[4] + 7


async def test_dropped_reply_is_retried_with_the_same_sequence_and_acts_once(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    sim.drop_next_reply()
    started = time.monotonic()
    await driver.refill_canister(4, 10)
    assert TIMEOUT <= time.monotonic() - started < 2 * TIMEOUT + 0.2
    assert sim.canister_counts()[4] == 60  # 50 + 10, once
    assert (sim.replies_dropped, sim.replayed, driver.retransmissions) == (1, 1, 1)
    assert sim.executed["REFILL"] == 1

    # The first frame of a job load lost its reply: the job is still loaded once.
    await to_idle(driver)
    sim.drop_next_reply()
    await driver.load_job(job("J-drop", TEN_POUCHES))
    assert sim.executed["JOB_BEGIN"] == 1 and sim.replayed == 2
    assert (await driver.read_status()).job_pouches_total == 10


async def test_no_answer_after_all_retries_is_a_driver_error(free_port: int) -> None:
    """A peer that accepts and never answers: every attempt times out."""
    received = bytearray()
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(4096):
            received.extend(data)

    server = await asyncio.start_server(accept, "127.0.0.1", free_port)
    try:
        driver = SerialPackerDriver(
            "PS", f"socket://127.0.0.1:{free_port}", timeout=0.15, retries=2
        )
        started = time.monotonic()
        with pytest.raises(
            DriverError,
            match=r"packer PS .*connect: no answer within 0.15 s \(sent 3 time\(s\), sequence 1\)",
        ):
            await driver.connect()
        assert 0.45 <= time.monotonic() - started < 0.9
        hello = wire.encode_frame(1, MessageType.HELLO, wire.Hello().encode())
        assert bytes(received) == hello * 3  # the same bytes, the same sequence
        await driver.close()
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_waiting_for_a_reply_does_not_block_the_event_loop(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        sim.drop_next_reply()
        await driver.read_status()  # waits one full timeout
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ticks >= 10


async def test_concurrent_callers_share_the_line_and_cancellation_is_safe(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    results = await asyncio.gather(
        *(driver.read_status() for _ in range(10)),
        *(driver.read_canisters() for _ in range(10)),
        *(driver.refill_canister(1, 1) for _ in range(10)),
    )
    assert len(results) == 30 and sim.canister_counts()[1] == 210

    sim.drop_next_reply()
    slow = asyncio.create_task(driver.refill_canister(2, 4))
    await asyncio.sleep(0.05)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    # The worker finishes the cancelled exchange first; nothing overlaps on the line.
    assert (await driver.read_status()).state is S.STOPPED
    assert sim.canister_counts()[2] == 204 and sim.executed["REFILL"] == 11


# -- transport failures and versions ------------------------------------------------


async def test_nothing_listening_is_a_driver_error(free_port: int) -> None:
    driver = SerialPackerDriver("PX", f"socket://127.0.0.1:{free_port}", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"packer PX \(socket://127.0.0.1:\d+\): connect: cannot"):
        await driver.connect()
    assert time.monotonic() - started < 1.0
    with pytest.raises(DriverError, match=r"read_status: not connected"):
        await driver.read_status()
    await driver.close()
    await driver.close()


async def test_bad_address_is_a_driver_error() -> None:
    driver = SerialPackerDriver("PB", "nosuchscheme://x", timeout=0.5)
    with pytest.raises(DriverError, match=r"packer PB \(nosuchscheme://x\): connect: cannot"):
        await driver.connect()
    with pytest.raises(ValueError, match=r"timeout"):
        SerialPackerDriver("PB", "socket://127.0.0.1:1", timeout=0)


async def test_simulator_restart_gives_driver_error_and_reconnect_works(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    await driver.refill_canister(4, 5)
    await sim.stop()
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"packer P1 .*read_status: line lost"):
        await driver.read_status()
    assert time.monotonic() - started < driver.timeout
    with pytest.raises(DriverError, match=r"read_status: not connected \(line lost"):
        await driver.read_status()
    with pytest.raises(DriverError, match=r"connect: cannot open the line"):
        await driver.connect()

    await sim.start()  # same port as before, same machine
    await driver.connect()
    assert (await driver.read_status()).state is S.STOPPED
    assert {c.number: c.count for c in await driver.read_canisters()}[4] == 55
    await driver.refill_canister(4, 5)  # sequence numbers go on; HELLO reset the device
    assert sim.canister_counts()[4] == 60


async def test_protocol_major_version_mismatch_is_refused(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    sim.protocol_version = (2, 0)
    with pytest.raises(
        DriverError,
        match=r"connect: device speaks protocol 2.0, this driver 1.1: major versions differ",
    ):
        await driver.connect()
    with pytest.raises(DriverError, match=r"not connected"):
        await driver.read_status()
    sim.protocol_version = (1, 4)  # a newer minor version is fine
    await driver.connect()
    assert driver.device is not None and driver.device.minor == 4


# -- protocol 1.1: unit mode, output tray, refill totals ----------------------------


async def test_set_unit_mode_frame_acts_once_and_names_bad_values(make_packer: Factory) -> None:
    sim, driver = await make_packer()
    await driver.close()
    line = await RawLine.open(sim)
    try:
        await line.request(1, MessageType.HELLO, wire.Hello().encode())
        mode = wire.encode_unit_mode(2)
        assert mode == b"\x02"
        first = await line.request(2, MessageType.SET_UNIT_MODE, mode)
        assert first.type == MessageType.ACK and sim.unit_mode == 2
        assert await line.request(2, MessageType.SET_UNIT_MODE, mode) == first
        assert sim.replayed == 1 and sim.executed["SET_UNIT_MODE"] == 1

        nak = nak_of(await line.request(3, MessageType.SET_UNIT_MODE, b"\x00"))
        assert (nak.code, nak.argument) == (ErrorCode.INVALID_ARGUMENT, 0)
        assert nak.text.startswith("RequestedMode: 0 is not a unit mode (1 PRODUCTION")
        nak = nak_of(await line.request(4, MessageType.SET_UNIT_MODE, b"\x01\x00"))
        assert nak.code == ErrorCode.BAD_PAYLOAD and "SetUnitMode" in nak.text
        assert sim.unit_mode == 2

        status = wire.decode_status((await line.request(5, MessageType.READ_STATUS)).payload)
        assert status.unit_mode == 2
    finally:
        await line.close()


async def test_status_layout_follows_the_hosts_hello(make_packer: Factory) -> None:
    """A 1.0 host (whose decoder refuses trailing bytes) gets the 1.0 STATUS payload;
    a 1.1 host gets the output tray fields appended."""
    sim, driver = await make_packer(output_capacity=7)
    await driver.close()
    line = await RawLine.open(sim)
    try:
        await line.request(1, MessageType.HELLO, wire.Hello(1, 0).encode())
        assert sim.host_minor == 0
        old = (await line.request(2, MessageType.READ_STATUS)).payload
        assert len(old) == 38 + 1  # the 1.0 fixed fields and an empty job id
        assert wire.decode_status(old).output_capacity == 0  # not sent: the default

        await line.request(3, MessageType.HELLO, wire.Hello(1, 1).encode())
        new = (await line.request(4, MessageType.READ_STATUS)).payload
        assert new[:39] == old and len(new) == 39 + 9
        status = wire.decode_status(new)
        assert (status.output_count, status.output_capacity, status.output_full) == (0, 7, False)
    finally:
        await line.close()


async def test_a_1_0_device_works_without_the_1_1_features(make_packer: Factory) -> None:
    sim, driver = await make_packer(output_capacity=5)
    sim.protocol_version = (1, 0)  # the device now behaves as a 1.0 device
    await driver.connect()
    assert driver.device is not None and (driver.device.major, driver.device.minor) == (1, 0)

    await driver.refill_canister(4, 3)
    status = await driver.read_status()
    assert status.state is S.STOPPED and status.output_capacity == 0  # not on a 1.0 wire
    canisters = await driver.read_canisters()
    assert [c.refilled_total for c in canisters] == [0, 0, 0, 0]  # 1.0 does not report it
    assert {c.number: c.count for c in canisters}[4] == 53
    assert sim.executed["READ_CANISTERS"] == 1 and sim.executed["READ_CANISTERS_EX"] == 0

    sent = sum(sim.executed.values())
    with pytest.raises(
        DriverError,
        match=r"set_unit_mode MAINTENANCE \(2\): device speaks protocol 1.0;"
        r" SET_UNIT_MODE needs 1.1",
    ):
        await driver.set_unit_mode(UnitMode.MAINTENANCE)
    assert sum(sim.executed.values()) == sent and sim.unit_mode == UnitMode.PRODUCTION

    # A 1.0 device does not know the 1.1 requests at all.
    await driver.close()
    line = await RawLine.open(sim)
    try:
        await line.request(1, MessageType.HELLO, wire.Hello().encode())
        nak = nak_of(await line.request(2, MessageType.SET_UNIT_MODE, b"\x02"))
        assert nak.code == ErrorCode.UNKNOWN_TYPE
        assert nak.text == "type SET_UNIT_MODE needs protocol 1.1; this device speaks 1.0"
        nak = nak_of(
            await line.request(3, MessageType.READ_CANISTERS_EX, wire.encode_read_canisters(0))
        )
        assert nak.code == ErrorCode.UNKNOWN_TYPE
    finally:
        await line.close()


async def test_refill_retried_after_a_lost_ack_counts_once_in_refilled_total(
    make_packer: Factory,
) -> None:
    sim, driver = await make_packer()
    sim.drop_next_reply()
    await driver.refill_canister(3, 12)
    assert driver.retransmissions == 1 and sim.replayed == 1
    record = {c.number: c for c in await driver.read_canisters()}[3]
    assert (record.count, record.refilled_total) == (112, 12)


async def test_set_unit_mode_when_not_connected_is_a_driver_error() -> None:
    driver = SerialPackerDriver("PN", "socket://127.0.0.1:1", timeout=0.2)
    with pytest.raises(DriverError, match=r"packer PN .*set_unit_mode MANUAL \(3\): not connected"):
        await driver.set_unit_mode(UnitMode.MANUAL)
