"""A dose-packing machine on a serial line, simulated over TCP.

The line is a TCP socket that pyserial opens as ``socket://host:port``; on it the
machine speaks the framed binary protocol of docs/packer-serial-protocol.md, read and
written by the simulator's own codec (simulators/serial_codec.py, written from that
document; the driver has its own, and the two meet only on the line). The machine
itself (PackML, canisters, pouches, rejects, jams) is
`simulators.packer_physics.PackerPhysics`, the same as behind the OPC UA simulator, so a
job behaves the same on either.

Fault knobs for tests: `inject_garbage(n)` puts noise on the line, `corrupt_next_reply()`
spoils the next reply's CRC and `drop_next_reply()` swallows it, so the host has to
retry with the same sequence number (and the machine must not act twice).

Run one machine: ``python -m simulators.packer_serial --name P1 --port 4851``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from simulators import serial_codec as wire
from simulators.packer_physics import (
    DEFAULT_CANISTERS,
    DEFAULT_OUTPUT_EMPTY_AFTER_S,
    PackerPhysics,
    PouchPlan,
    Refusal,
    RefusalKind,
)
from simulators.packer_view import PhysicsView
from simulators.packml import PackMLCommand, PackMLState, UnitMode
from simulators.serial_codec import (
    CanisterRecord,
    ErrorCode,
    Frame,
    FrameError,
    MessageType,
    Nak,
    PayloadError,
    Pouch,
)
from simulators.standalone import packer_arguments, packer_settings, run, serve_until_stopped

MODEL = "doseline serial packer simulator"
FIRMWARE = "sim-1"

_log = logging.getLogger(__name__)

_REFUSAL_CODES = {
    RefusalKind.INVALID_STATE: ErrorCode.INVALID_STATE,
    RefusalKind.INVALID_ARGUMENT: ErrorCode.INVALID_ARGUMENT,
}
#: Requests after which the physics restarts its dwell (as an OPC UA method call does).
_WAKING = frozenset(
    {
        MessageType.COMMAND,
        MessageType.REFILL,
        MessageType.JOB_COMMIT,
        MessageType.SET_UNIT_MODE,
    }
)


class _NakError(Exception):
    """Internal: answer the request with this NAK."""

    def __init__(self, code: ErrorCode, text: str, argument: int | None = None) -> None:
        super().__init__(text)
        self.nak = Nak(int(code), text, argument)
        self.code = code


@dataclass
class _Staging:
    """A job between JOB_BEGIN and JOB_COMMIT; it never runs unless committed whole."""

    job_id: str
    declared: int
    pouches: list[Pouch] = field(default_factory=list)
    next_chunk: int = 0


class SerialPackerSimulator(PhysicsView):
    """One simulated packer answering on `host:port` (`port=0` binds a free port).

    The duplicate rule lives here: the machine remembers the last request it executed
    (sequence, type, payload) and the reply it sent; the same request again gets the
    same reply without being executed again. HELLO is always executed and clears that
    memory and any half-loaded job. Plain-Python accessors are for tests only.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        canisters: Sequence[tuple[int, str, int, int]] = DEFAULT_CANISTERS,
        pouches_per_minute: float = 60.0,
        speed_factor: float = 1.0,
        reject_rate: float = 0.0,
        jam_rate: float = 0.0,
        seed: int = 0,
        transient_seconds: float = 0.05,
        initial_state: PackMLState = PackMLState.STOPPED,
        max_payload: int = wire.MAX_PAYLOAD,
        output_capacity: int = 0,
        output_empty_after_s: float | None = DEFAULT_OUTPUT_EMPTY_AFTER_S,
        unit_mode: UnitMode = UnitMode.PRODUCTION,
    ) -> None:
        if not name or len(name.encode("utf-8")) > 255:
            raise ValueError(f"name: {name!r} must be 1..255 bytes in UTF-8")
        if not 64 <= max_payload <= wire.MAX_PAYLOAD:
            raise ValueError(f"max_payload: {max_payload} not in 64..{wire.MAX_PAYLOAD}")
        for number, gtin, _count, _capacity in canisters:
            if not 0 <= number <= 0xFFFF or len(gtin) != wire.GTIN_SIZE or not gtin.isdigit():
                raise ValueError(f"canisters: {number} {gtin!r} needs a u16 number and 14 digits")
        self._physics = PackerPhysics(
            name,
            canisters,
            pouches_per_minute=pouches_per_minute,
            speed_factor=speed_factor,
            reject_rate=reject_rate,
            jam_rate=jam_rate,
            seed=seed,
            transient_seconds=transient_seconds,
            initial_state=initial_state,
            output_capacity=output_capacity,
            output_empty_after_s=output_empty_after_s,
            unit_mode=unit_mode,
        )
        self.name = name
        self.host = host
        self._port = port
        self.max_payload = max_payload
        #: Version announced in HELLO_REPLY; tests change it to try a mismatch. The device
        #: also behaves as that version: announcing (1, 0) turns the 1.1 features off.
        self.protocol_version = (wire.PROTOCOL_MAJOR, wire.PROTOCOL_MINOR)
        #: Minor version the host announced in its last HELLO (0 until one arrives).
        self.host_minor = 0
        self._noise = random.Random(seed + 0x5EED)  # own stream: noise never shifts physics
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._last: tuple[int, int, bytes] | None = None
        self._last_reply: tuple[int, bytes] = (MessageType.ACK, b"")
        self._staging: _Staging | None = None
        self._drop_next = False
        self._corrupt_next = False
        #: Requests executed, by message type name (a replay is not an execution).
        self.executed: Counter[str] = Counter()
        #: Replies sent again for a repeated sequence number.
        self.replayed = 0
        #: NAKs sent, by error code name.
        self.naks: Counter[str] = Counter()
        self.replies_dropped = 0
        self.replies_corrupted = 0
        self._discarded_closed = 0  # noise bytes counted by readers of closed lines
        self._readers: set[wire.FrameReader] = set()

    # -- plain-python view for tests -------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port once started (kept after stop, so a restart binds it again)."""
        return self._port

    @property
    def address(self) -> str:
        """The pyserial URL of the line."""
        return f"socket://{self.host}:{self._port}"

    @property
    def discarded_bytes(self) -> int:
        """Line bytes the machine threw away as noise or broken frames."""
        return self._discarded_closed + sum(r.discarded for r in self._readers)

    @property
    def lines_connected(self) -> int:
        return len(self._writers)

    async def empty_output(self) -> int:
        """Operator knob: empty the output tray now (the state does not change; a machine
        suspended for OUTPUT_FULL waits for Unsuspend). Returns the pouches taken.
        Async like the OPC UA simulator's, which publishes the change."""
        return self._physics.empty_output()

    def inject_garbage(self, n: int) -> None:
        """Fault knob: `n` random bytes (any value, STX and ETX included) to the host."""
        noise = bytes(self._noise.randrange(256) for _ in range(n))
        for writer in list(self._writers):
            writer.write(noise)

    def corrupt_next_reply(self) -> None:
        """Fault knob: the next reply goes out with a wrong CRC (the request still acts)."""
        self._corrupt_next = True

    def drop_next_reply(self) -> None:
        """Fault knob: the next reply is not sent at all (the request still acts)."""
        self._drop_next = True

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"packer simulator {self.name} is already started")
        self._server = await asyncio.start_server(self._on_line, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._task = asyncio.create_task(self._physics.run(), name=f"serial-packer-{self.name}")
        _log.info("serial packer simulator %s listening on %s", self.name, self.address)

    async def stop(self) -> None:
        """Close the line and stop the physics; safe to call twice. Machine state stays,
        as on a power-cycled line: a restart continues with the same canisters."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()  # the handler sees end of file and returns
        handlers = list(self._handlers)
        if handlers:
            _done, pending = await asyncio.wait(handlers, timeout=1.0)
            for handler in pending:
                handler.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()
        self._writers.clear()

    async def __aenter__(self) -> SerialPackerSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the line --------------------------------------------------------------------

    async def _on_line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._writers.add(writer)
        frames = wire.FrameReader(self.max_payload)
        self._readers.add(frames)
        try:
            while data := await reader.read(4096):
                for item in frames.feed(data):
                    self._send(writer, item)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._readers.discard(frames)
            self._discarded_closed += frames.discarded
            self._writers.discard(writer)
            writer.close()

    def _send(self, writer: asyncio.StreamWriter, item: Frame | FrameError) -> None:
        if isinstance(item, FrameError):
            # The frame could not be read, so neither could its sequence number.
            self.naks[item.code.name] += 1
            nak = wire.encode_nak(Nak(int(item.code), item.text))
            writer.write(wire.encode_frame(wire.SEQ_UNKNOWN, MessageType.NAK, nak))
            return
        reply = self._answer(item)
        if self._drop_next:
            self._drop_next = False
            self.replies_dropped += 1
            return
        if self._corrupt_next:
            self._corrupt_next = False
            self.replies_corrupted += 1
            body = bytearray(wire.frame_body(item.seq, reply[0], reply[1]))
            body[-1] ^= 0x5A
            writer.write(wire.frame_bytes(bytes(body)))
            return
        writer.write(wire.encode_frame(item.seq, reply[0], reply[1]))

    def _answer(self, frame: Frame) -> tuple[int, bytes]:
        """The reply (type, payload) to one well-formed frame, with the duplicate rule."""
        if frame.type == MessageType.HELLO:
            self._last = None
            self._staging = None
            return self._reply(frame)
        if frame.seq == wire.SEQ_UNKNOWN:
            return self._nak(ErrorCode.SEQUENCE_REUSED, "sequence 0 is reserved for the device")
        key = (frame.seq, frame.type, frame.payload)
        if self._last is not None and self._last[0] == frame.seq:
            if self._last == key:
                self.replayed += 1
                return self._last_reply
            return self._nak(
                ErrorCode.SEQUENCE_REUSED,
                f"sequence {frame.seq} was a {wire.type_name(self._last[1])} request;"
                " start a new sequence or send HELLO",
            )
        reply = self._reply(frame)
        self._last = key
        self._last_reply = reply
        return reply

    def _nak(self, code: ErrorCode, text: str, argument: int | None = None) -> tuple[int, bytes]:
        self.naks[code.name] += 1
        return MessageType.NAK, wire.encode_nak(Nak(int(code), text, argument))

    def _reply(self, frame: Frame) -> tuple[int, bytes]:
        """Execute one request."""
        try:
            msg_type = MessageType(frame.type)
        except ValueError:
            msg_type = None
        if msg_type is None or msg_type not in wire.REQUESTS:
            return self._nak(
                ErrorCode.UNKNOWN_TYPE, f"type {wire.type_name(frame.type)} is not a request"
            )
        needs = wire.REQUEST_MINOR.get(msg_type, 0)
        if needs > self._device_minor:
            major, minor = self.protocol_version
            return self._nak(
                ErrorCode.UNKNOWN_TYPE,
                f"type {msg_type.name} needs protocol 1.{needs}; this device speaks"
                f" {major}.{minor}",
            )
        self.executed[msg_type.name] += 1
        try:
            reply = self._execute(msg_type, frame.payload)
        except PayloadError as exc:
            return self._nak(ErrorCode.BAD_PAYLOAD, str(exc))
        except Refusal as exc:
            _log.info("packer %s refused %s: %s", self.name, msg_type.name, exc.message)
            return self._nak(_REFUSAL_CODES[exc.kind], exc.message, exc.argument)
        except _NakError as exc:
            self.naks[exc.code.name] += 1
            return MessageType.NAK, wire.encode_nak(exc.nak)
        if msg_type in _WAKING:
            self._physics.wake()
        return reply

    def _execute(self, msg_type: MessageType, payload: bytes) -> tuple[int, bytes]:
        machine = self._physics
        ack = (MessageType.ACK, b"")
        if msg_type is MessageType.HELLO:
            host_major, host_minor = wire.decode_hello(payload)  # any version may ask
            self.host_minor = host_minor if host_major == wire.PROTOCOL_MAJOR else 0
            major, minor = self.protocol_version
            identity = wire.Identity(
                major, minor, self.max_payload, len(machine.canisters), self.name, MODEL, FIRMWARE
            )
            return MessageType.HELLO_REPLY, wire.encode_hello_reply(identity)
        if msg_type is MessageType.READ_STATUS:
            wire.decode_read_status(payload)
            minor = min(self._device_minor, self.host_minor)
            return MessageType.STATUS, wire.encode_status(self._status(), minor)
        if msg_type is MessageType.READ_CANISTERS:
            return MessageType.CANISTERS, self._canister_page(wire.decode_read_canisters(payload))
        if msg_type is MessageType.READ_CANISTERS_EX:
            first = wire.decode_read_canisters(payload, extended=True)
            return MessageType.CANISTERS_EX, self._canister_page(first, extended=True)
        if msg_type is MessageType.JOB_BEGIN:
            header = wire.decode_job_header(payload, "JobBegin")
            self._staging = None
            machine.check_load(header.job_id)
            self._staging = _Staging(header.job_id, header.pouch_count)
            return ack
        if msg_type is MessageType.JOB_CHUNK:
            self._chunk(*wire.decode_chunk(payload))
            return ack
        if msg_type is MessageType.JOB_COMMIT:
            self._commit(wire.decode_job_header(payload, "JobCommit"))
            return ack
        if msg_type is MessageType.COMMAND:
            machine.command(PackMLCommand(wire.decode_command(payload)))
            return ack
        if msg_type is MessageType.REFILL:
            machine.refill(*wire.decode_refill(payload))
            return ack
        if msg_type is MessageType.SET_UNIT_MODE:
            machine.set_unit_mode(wire.decode_unit_mode(payload))
            return ack
        raise _NakError(ErrorCode.INTERNAL, f"no handler for {msg_type.name}")

    @property
    def _device_minor(self) -> int:
        """The minor version whose features this device offers (0 if not major 1)."""
        major, minor = self.protocol_version
        return min(minor, wire.PROTOCOL_MINOR) if major == wire.PROTOCOL_MAJOR else 0

    def _status(self) -> wire.Status:
        machine = self._physics
        job = machine.job
        status = wire.Status(
            state=machine.state,
            unit_mode=machine.unit_mode,
            machine_speed=machine.machine_speed,
            processed_total=machine.processed,
            defective_total=machine.defective,
            stop_reason=int(machine.stop_reason),
            stop_canister=machine.stop_canister,
            job_id=job.job_id if job else "",
            job_pouches_total=len(job.pouches) if job else 0,
            job_pouches_good=job.good if job else 0,
            job_pouches_rejected=job.rejected if job else 0,
            output_count=machine.output_count,
            output_capacity=machine.output_capacity,
            output_full=machine.output_full,
        )
        return dataclasses.replace(status, **machine.misreport)  # fault knob, usually {}

    def _canister_page(self, first: int, *, extended: bool = False) -> bytes:
        records = [
            CanisterRecord(
                c.number, c.gtin, c.count, c.capacity, c.dispensed_total, c.refilled_total
            )
            for _, c in sorted(self._physics.canisters.items())
        ]
        if first > len(records):
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"first: {first} is beyond the {len(records)} canisters",
                0,
            )
        per_page = wire.page_size(self.max_payload, extended=extended)
        page = records[first : first + per_page]
        return wire.encode_canisters(len(records), first, page, extended=extended)

    def _chunk(self, index: int, pouches: list[Pouch]) -> None:
        staging = self._staging
        if staging is None:
            raise _NakError(ErrorCode.JOB_SEQUENCE, f"JobChunk {index}: no job begun")
        if index != staging.next_chunk:
            self._staging = None  # a job with a hole in it must never run
            raise _NakError(
                ErrorCode.JOB_SEQUENCE,
                f"JobChunk {index}: expected chunk {staging.next_chunk} of job"
                f" {staging.job_id!r}; the job is discarded",
            )
        if len(staging.pouches) + len(pouches) > staging.declared:
            self._staging = None
            raise _NakError(
                ErrorCode.JOB_SEQUENCE,
                f"JobChunk {index}: job {staging.job_id!r} declared {staging.declared}"
                f" pouches, this chunk brings it to {len(staging.pouches) + len(pouches)};"
                " the job is discarded",
            )
        staging.pouches.extend(pouches)
        staging.next_chunk += 1

    def _commit(self, header: wire.JobHeader) -> None:
        staging, self._staging = self._staging, None
        if staging is None:
            raise _NakError(ErrorCode.JOB_SEQUENCE, f"JobCommit {header.job_id!r}: no job begun")
        if header.job_id != staging.job_id or header.pouch_count != staging.declared:
            raise _NakError(
                ErrorCode.JOB_SEQUENCE,
                f"JobCommit {header.job_id!r} ({header.pouch_count} pouches) does not match"
                f" the job begun, {staging.job_id!r} ({staging.declared} pouches)",
            )
        if len(staging.pouches) != staging.declared:
            raise _NakError(
                ErrorCode.JOB_SEQUENCE,
                f"JobCommit {header.job_id!r}: {len(staging.pouches)} of {staging.declared}"
                " pouches received",
            )
        self._physics.load_job(
            staging.job_id,
            [PouchPlan(p.seq, p.label, p.items) for p in staging.pouches],
        )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = packer_arguments(
        "Simulated serial dose-packing machine",
        default_port=4851,
        name_help="machine name (sent in HELLO_REPLY)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    sim = SerialPackerSimulator(args.name, **packer_settings(args))
    await serve_until_stopped(sim, lambda: f"packer {sim.name} on {sim.address}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run one simulated serial packer until Ctrl-C or SIGTERM."""
    run(_serve(_parse_args(argv)), quiet=())


if __name__ == "__main__":
    main()
