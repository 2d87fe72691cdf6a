"""Serial-line adapter for dose-packing machines (doseline serial packer protocol 1.x).

With a 1.1 device it also sets the unit mode (SET_UNIT_MODE), reads the output tray in
STATUS and each canister's `refilled_total` (READ_CANISTERS_EX); with a 1.0 device those
read as 0 / False and `set_unit_mode` raises DriverError.

The protocol is described in docs/packer-serial-protocol.md and its wire format lives
in drivers/serial_frames.py. This module maps it to the plain values of `drivers.base`
so the controller treats a legacy serial packer exactly like an OPC UA one.

pyserial blocks, so all port I/O runs in one dedicated worker thread per opening of
the line (a single-thread executor): exchanges can never overlap on the line, even if
the awaiting task was cancelled, and the event loop never blocks. An asyncio lock makes multi-frame
operations (a job load, paged canister reads) atomic on the line. Every failure leaves
as `DriverError` naming machine, address, operation and cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import serial

from drivers import serial_frames as wire
from drivers.base import (
    CanisterStatus,
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    UnitMode,
)
from drivers.serial_frames import Frame, FrameError, MessageType, Nak, PayloadError

log = logging.getLogger("doseline.drivers.serial_packer")

#: Request argument names, for naming the one a NAK points at.
_ARGUMENTS: dict[MessageType, tuple[str, ...]] = {
    MessageType.JOB_BEGIN: ("JobId", "Pouches"),
    MessageType.JOB_CHUNK: ("JobId", "Pouches"),
    MessageType.JOB_COMMIT: ("JobId", "Pouches"),
    MessageType.REFILL: ("Number", "Quantity"),
    MessageType.READ_CANISTERS: ("first",),
    MessageType.READ_CANISTERS_EX: ("first",),
    MessageType.SET_UNIT_MODE: ("RequestedMode",),
}
_READ_CHUNK = 4096

_T = TypeVar("_T")


class _NoAnswer(Exception):
    """Every attempt of one request went unanswered (or answered with a line NAK)."""


class _Counters:
    """Diagnostics kept across reconnects (written by worker threads, read anywhere)."""

    def __init__(self) -> None:
        self.retransmissions = 0
        self.damaged_frames = 0
        self.stale_frames = 0
        self.discarded_bytes = 0


class _Line:
    """One opening of the port and the worker thread that owns it.

    Everything here runs in the worker. Each `connect()` makes a new `_Line`, so a
    worker still finishing an exchange for a cancelled caller can only ever touch its
    own port, never the one opened after it.
    """

    def __init__(
        self,
        name: str,
        address: str,
        baudrate: int,
        timeout: float,
        retries: int,
        counters: _Counters,
    ) -> None:
        self.name = name
        self.address = address
        self.baudrate = baudrate
        self.timeout = timeout
        self.retries = retries
        self.counters = counters
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"packer-{name}")
        self.reader = wire.FrameReader()
        self.port: serial.SerialBase | None = None
        self.lost = ""  # why this line is unusable

    def open(self) -> None:
        port = serial.serial_for_url(
            self.address, baudrate=self.baudrate, timeout=0, do_not_open=True
        )
        try:
            port.open()
        except BaseException:
            # pyserial's socket:// open can fail after it connected (the peer reset the
            # connection at once), with the socket still open.
            _close_port(port)
            raise
        self.port = port

    def close(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            _close_port(port)

    def exchange(self, frame: bytes, seq: int) -> Frame:
        """Send, wait for the reply to `seq`, resend the same bytes; a NAK is a reply."""
        port = self.port
        if port is None or self.lost:
            raise serial.SerialException(self.lost or "port closed")
        before = self.reader.discarded
        try:
            self._drain(port)
            cause = ""
            attempts = self.retries + 1
            for attempt in range(attempts):
                if attempt:
                    self.counters.retransmissions += 1
                    log.info("packer %s: seq %d sent again (%s)", self.name, seq, cause)
                port.write(frame)
                reply, cause = self._await_reply(port, seq)
                if reply is not None:
                    return reply
            raise _NoAnswer(f"{cause} (sent {attempts} time(s), sequence {seq})")
        except (serial.SerialException, OSError) as exc:
            self.lost = f"line lost: {exc}"  # the port is closed by close()/connect()
            raise
        finally:
            self.counters.discarded_bytes += self.reader.discarded - before

    def _drain(self, port: serial.SerialBase) -> None:
        """Throw away whatever arrived since the last exchange (noise, late replays)."""
        port.timeout = 0
        while data := port.read(_READ_CHUNK):
            for item in self.reader.feed(data):
                if isinstance(item, FrameError):
                    self.counters.damaged_frames += 1
                else:
                    self.counters.stale_frames += 1
        self.reader.reset()

    def _await_reply(self, port: serial.SerialBase, seq: int) -> tuple[Frame | None, str]:
        """(reply, "") or (None, why this attempt failed) after at most `timeout`."""
        deadline = time.monotonic() + self.timeout
        damaged = 0
        while (remaining := deadline - time.monotonic()) > 0:
            port.timeout = remaining
            data = port.read(1)  # blocks until the first byte or the deadline
            if not data:
                break
            port.timeout = 0
            data += port.read(_READ_CHUNK)  # then whatever else is there, without waiting
            line_nak: Nak | None = None
            for item in self.reader.feed(data):
                if isinstance(item, FrameError):
                    damaged += 1
                    self.counters.damaged_frames += 1
                    continue
                if item.seq == seq and item.type != MessageType.NAK:
                    return item, ""
                if item.type == MessageType.NAK and item.seq in (seq, wire.SEQ_UNKNOWN):
                    try:
                        nak = Nak.decode(item.payload)
                    except PayloadError:
                        damaged += 1
                        continue
                    if nak.is_line_error:
                        line_nak = nak
                        continue
                    if item.seq == seq:
                        return item, ""
                self.counters.stale_frames += 1
            if line_nak is not None:  # the device could not read our frame: resend now
                return None, f"device could not read the request ({line_nak.code_name})"
        extra = f", {damaged} damaged frame(s)" if damaged else ""
        return None, f"no answer within {self.timeout:g} s{extra}"


def _close_port(port: serial.SerialBase) -> None:
    """Closes a port for good. pyserial's socket:// close skips closing the socket when
    shutting it down fails (the peer reset the connection), leaking it; close it here."""
    sock = getattr(port, "_socket", None)
    with contextlib.suppress(Exception):
        port.close()
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()


class SerialPackerDriver(PackerDriver):
    """A packer on a serial line at `address`, any pyserial URL (``/dev/ttyUSB0``,
    ``socket://host:port``, ``rfc2217://...``).

    Each request waits `timeout` seconds for its reply and is sent again, with the same
    sequence number, up to `retries` times; the device replays its reply to a repeated
    sequence instead of acting twice. After a DriverError that lost the line, call
    `connect()` again.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        baudrate: int = 115200,
        timeout: float = 1.0,
        retries: int = 3,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries: must be >= 0, got {retries}")
        self.name = name
        self.address = address
        self.baudrate = baudrate
        self.timeout = timeout
        self.retries = retries
        #: What the device said about itself in the last HELLO.
        self.device: wire.HelloReply | None = None
        self._counters = _Counters()
        self._lock = asyncio.Lock()
        self._line: _Line | None = None
        self._closing: Future[None] | None = None  # the previous line's port being closed
        self._seq = 0
        self._max_payload = wire.MAX_PAYLOAD
        self._minor = 0  # the protocol minor version both sides speak (after HELLO)

    @property
    def retransmissions(self) -> int:
        """Requests sent again after a timeout or a line NAK."""
        return self._counters.retransmissions

    @property
    def damaged_frames(self) -> int:
        """Damaged frames received (bad CRC, length, escape, cut off)."""
        return self._counters.damaged_frames

    @property
    def stale_frames(self) -> int:
        """Good frames that answered nothing outstanding (late replies, replays)."""
        return self._counters.stale_frames

    @property
    def discarded_bytes(self) -> int:
        """Line bytes thrown away as noise or broken frames."""
        return self._counters.discarded_bytes

    # -- connection ------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the line and identify the device; a different major version is refused."""
        await self.close()
        closing, self._closing = self._closing, None
        if closing is not None:  # an exclusive port (COM3) must be free before it reopens
            await asyncio.wait({asyncio.wrap_future(closing)}, timeout=self.timeout)
        line = _Line(
            self.name, self.address, self.baudrate, self.timeout, self.retries, self._counters
        )
        self._line = line
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await loop.run_in_executor(line.executor, line.open)
            except TimeoutError:
                raise self._error(
                    "connect", f"cannot open the line within {self.timeout:g} s"
                ) from None
            except (serial.SerialException, OSError, ValueError) as exc:
                raise self._error("connect", f"cannot open the line: {exc}") from exc
            async with self._lock:
                reply = await self._exchange("connect", MessageType.HELLO, wire.Hello().encode())
            hello = self._decode("connect", reply, MessageType.HELLO_REPLY, wire.HelloReply.decode)
            if hello.major != wire.PROTOCOL_MAJOR:
                raise self._error(
                    "connect",
                    f"device speaks protocol {hello.major}.{hello.minor}, this driver"
                    f" {wire.PROTOCOL_MAJOR}.{wire.PROTOCOL_MINOR}: major versions differ",
                )
        except BaseException:
            await self.close()
            raise
        self.device = hello
        self._max_payload = max(64, min(wire.MAX_PAYLOAD, hello.max_payload))
        self._minor = min(hello.minor, wire.PROTOCOL_MINOR)
        log.info(
            "packer %s: %s %r firmware %s, protocol %d.%d, %d canisters",
            self.name,
            hello.model,
            hello.name,
            hello.firmware,
            hello.major,
            hello.minor,
            hello.canister_count,
        )

    async def close(self) -> None:
        """Stop using the line; idempotent and immediate.

        The worker closes the port as soon as any exchange in progress has ended (a
        cancelled caller's exchange runs to its end); `connect()` waits for that before
        it opens the line again. Not waiting here matters: pyserial's socket:// close
        sleeps 0.3 s after closing the socket.
        """
        line, self._line = self._line, None
        if line is None:
            return
        self._closing = line.executor.submit(line.close)
        line.executor.shutdown(wait=False)

    # -- reads -----------------------------------------------------------------------

    async def read_status(self) -> PackerStatus:
        async with self._lock:
            reply = await self._exchange("read_status", MessageType.READ_STATUS)
        return self._decode("read_status", reply, MessageType.STATUS, wire.decode_status)

    async def read_canisters(self) -> Sequence[CanisterStatus]:
        """All canisters, read page by page under one hold of the line. From a 1.1
        device with `refilled_total` (READ_CANISTERS_EX), from a 1.0 device without (0)."""
        operation = "read_canisters"
        extended = self._minor >= wire.MESSAGE_MINOR[MessageType.READ_CANISTERS_EX]
        request, expected, decode = (
            (MessageType.READ_CANISTERS_EX, MessageType.CANISTERS_EX, wire.decode_canisters_ex)
            if extended
            else (MessageType.READ_CANISTERS, MessageType.CANISTERS, wire.decode_canisters)
        )
        records: list[CanisterStatus] = []
        async with self._lock:
            first = 0
            while True:
                reply = await self._exchange(operation, request, wire.encode_read_canisters(first))
                total, got, page = self._decode(operation, reply, expected, decode)
                if got != first or (not page and first < total):
                    raise self._error(
                        operation,
                        f"protocol: asked for canisters from {first}, got {len(page)}"
                        f" from {got} of {total}",
                    )
                records += page
                first += len(page)
                if first >= total:
                    break
        return sorted(records, key=lambda c: c.number)

    # -- commands --------------------------------------------------------------------

    async def load_job(self, job: PackerJobSpec) -> None:
        """JOB_BEGIN, the pouches in as many JOB_CHUNKs as the frame size needs, then
        JOB_COMMIT: the machine takes the job only whole, at the commit."""
        operation = f"load_job {job.job_id!r}"
        try:
            header = wire.JobHeader(job.job_id, len(job.pouches)).encode()
            chunks = wire.chunk_pouches(
                (wire.encode_pouch(p) for p in job.pouches), self._max_payload
            )
        except PayloadError as exc:
            raise self._error(operation, f"cannot encode the job: {exc}") from None
        async with self._lock:
            self._expect_ack(
                operation, await self._exchange(operation, MessageType.JOB_BEGIN, header)
            )
            for index, chunk in enumerate(chunks):
                reply = await self._exchange(
                    operation, MessageType.JOB_CHUNK, wire.encode_chunk(index, chunk)
                )
                self._expect_ack(operation, reply)
            reply = await self._exchange(operation, MessageType.JOB_COMMIT, header)
            self._expect_ack(operation, reply)

    async def command(self, command: PackMLCommand) -> None:
        command = PackMLCommand(command)
        operation = f"command {command.value}"
        async with self._lock:
            reply = await self._exchange(
                operation, MessageType.COMMAND, wire.encode_command(command)
            )
        self._expect_ack(operation, reply)

    async def refill_canister(self, number: int, quantity: int) -> None:
        operation = f"refill_canister {number} +{quantity}"
        try:
            payload = wire.encode_refill(number, quantity)
        except PayloadError as exc:
            raise self._error(operation, f"cannot encode: {exc}") from None
        async with self._lock:
            reply = await self._exchange(operation, MessageType.REFILL, payload)
        self._expect_ack(operation, reply)

    @property
    def reports_refilled_total(self) -> bool:
        return self._minor >= wire.MESSAGE_MINOR[MessageType.READ_CANISTERS_EX]

    async def set_unit_mode(self, mode: UnitMode) -> None:
        """SET_UNIT_MODE (protocol 1.1); the device refuses it outside Stopped, Idle and
        Aborted (INVALID_STATE) and for an unknown mode (INVALID_ARGUMENT)."""
        try:
            label = f"{UnitMode(mode).name} ({int(mode)})"
        except ValueError:
            label = str(int(mode))
        operation = f"set_unit_mode {label}"
        needs = wire.MESSAGE_MINOR[MessageType.SET_UNIT_MODE]
        if self._line is not None and self.device is not None and self._minor < needs:
            raise self._error(
                operation,
                f"device speaks protocol {self.device.major}.{self.device.minor};"
                f" SET_UNIT_MODE needs 1.{needs}",
            )
        try:
            payload = wire.encode_unit_mode(mode)
        except PayloadError as exc:
            raise self._error(operation, f"cannot encode: {exc}") from None
        async with self._lock:
            reply = await self._exchange(operation, MessageType.SET_UNIT_MODE, payload)
        self._expect_ack(operation, reply)

    # -- plumbing --------------------------------------------------------------------

    async def _exchange(self, operation: str, msg_type: MessageType, payload: bytes = b"") -> Frame:
        """One request and its reply (the caller holds the lock); a NAK is raised."""
        line = self._line
        if line is None or line.lost:
            cause = f"not connected ({line.lost})" if line is not None else "not connected"
            raise self._error(operation, cause)
        self._seq = self._seq % 0xFFFF + 1  # 1..65535; 0 is the device's "unknown"
        seq = self._seq
        try:
            frame = wire.encode_frame(seq, msg_type, payload, self._max_payload)
        except ValueError as exc:
            raise self._error(operation, f"cannot encode: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(line.executor, line.exchange, frame, seq)
        except _NoAnswer as exc:
            raise self._error(operation, str(exc)) from None
        except (serial.SerialException, OSError) as exc:
            raise self._error(operation, f"line lost: {exc}; connect() again") from exc
        if reply.type == MessageType.NAK:
            raise self._error(operation, self._refusal(msg_type, reply))
        return reply

    def _refusal(self, msg_type: MessageType, reply: Frame) -> str:
        try:
            nak = Nak.decode(reply.payload)
        except PayloadError as exc:
            return f"refused, and the NAK did not decode: {exc}"
        parts = [nak.code_name]
        if nak.argument is not None:
            names = _ARGUMENTS.get(msg_type, ())
            parts.append(
                names[nak.argument] if nak.argument < len(names) else f"argument {nak.argument}"
            )
        text = nak.text
        if not text:
            with contextlib.suppress(ValueError):
                text = wire.ERROR_TEXT[wire.ErrorCode(nak.code)]
        return f"refused: {text} ({', '.join(parts)})"

    def _expect_ack(self, operation: str, reply: Frame) -> None:
        if reply.type != MessageType.ACK:
            raise self._error(operation, f"protocol: expected ACK, got {reply.type_name}")

    def _decode(
        self, operation: str, reply: Frame, expected: MessageType, decode: Callable[[bytes], _T]
    ) -> _T:
        if reply.type != expected:
            raise self._error(
                operation, f"protocol: expected {expected.name}, got {reply.type_name}"
            )
        try:
            return decode(reply.payload)
        except PayloadError as exc:
            raise self._error(operation, f"protocol: bad {expected.name} payload: {exc}") from None

    def _error(self, operation: str, cause: str) -> DriverError:
        return DriverError(f"packer {self.name} ({self.address}): {operation}: {cause}")
