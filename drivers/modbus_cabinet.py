"""Ward dispensing cabinet over Modbus (register map version 2), on TCP, TLS or an RTU line.

Two layers: `ModbusBus` owns one pymodbus client and the lock every request on that
connection takes (an RTU line carries several cabinets, and a TCP gateway may too),
keeps the line's timing (RTU inter-frame silence, reconnect backoff) and turns every
pymodbus failure into DriverError; `ModbusCabinetDriver` knows the register map
(through drivers.cabinet_registers) and nothing about transports. Several drivers may
share one bus; the bus drops its connection when the last of them closes.

`ModbusTlsBus` is Modbus/TCP Security (MBAPS): the same MBAP frames inside mutual TLS
1.2 or later, the cabinet's certificate verified against a CA and its host name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, AsyncModbusTlsClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.transport.serialtransport import SerialTransport

from drivers import cabinet_registers as reg
from drivers.base import CabinetCommand, CabinetDriver, CabinetStatus, DriverError
from drivers.serial_address import serial_address_problem

log = logging.getLogger(__name__)

DEFAULT_MODBUS_TCP_PORT = 502
DEFAULT_MODBUS_TLS_PORT = 802
"""Modbus/TCP Security's registered port."""
DEFAULT_RTU_BAUDRATE = 19200
RTU_BITS_PER_CHARACTER = 11
"""Start bit, 8 data bits, parity (or a second stop bit) and a stop bit."""
RTU_FIXED_GAP_S = 0.00175
"""The Modbus serial line spec fixes the 3.5-character silence at 1.75 ms above 19200 baud."""
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0


def parse_tcp_address(address: str, default_port: int = DEFAULT_MODBUS_TCP_PORT) -> tuple[str, int]:
    """Split `tcp://host:port` (port defaults to 502); anything else is a ValueError."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad Modbus TCP address {address!r}: {exc}") from None
    if parts.scheme != "tcp" or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"bad Modbus TCP address {address!r}: expected tcp://host:port")
    return parts.hostname, port if port is not None else default_port


def check_serial_address(address: str) -> str:
    """Accept a serial device path or a pyserial URL; anything else is a ValueError.

    pyserial itself would only fail when the line is opened, long after start-up.
    """
    problem = serial_address_problem(address)
    if problem:
        raise ValueError(f"bad Modbus RTU address {address!r}: {problem}")
    return address


def rtu_frame_gap(baudrate: int) -> float:
    """Seconds of silence an RTU line needs between frames: 3.5 character times.

    A device finds the end of a frame only by that silence, so a request sent sooner
    runs into the previous frame and is lost. Above 19200 baud the spec fixes 1.75 ms
    instead, because timers that fine are not practical in slaves.
    """
    if baudrate <= 0:
        raise ValueError(f"baudrate must be > 0, got {baudrate!r}")
    if baudrate > DEFAULT_RTU_BAUDRATE:
        return RTU_FIXED_GAP_S
    return 3.5 * RTU_BITS_PER_CHARACTER / baudrate


class ModbusBus(ABC):
    """One Modbus connection and the lock that serialises requests on it.

    `timeout` bounds one request including pymodbus' own retries: each attempt gets
    timeout / (retries + 1). A retried write reaches the device twice, which the
    cabinet's sequence-numbered mailbox makes harmless.

    After a failed connect the bus refuses further attempts for a backoff (0.5 s,
    doubling to 10 s, reset by a success), so that the cabinets sharing a dead line
    fail fast instead of each waiting out its own connect. `frame_gap` is the silence
    kept between the end of one exchange and the next request (RTU only).

    `clock` and `sleep` are attributes so that tests can replace them.
    """

    def __init__(
        self, address: str, timeout: float, retries: int, *, frame_gap: float = 0.0
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.frame_gap = frame_gap
        self.lock = asyncio.Lock()
        self.generation = 0
        """Increases with every successful connect, so users can re-check the device."""
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
        self.backoff_initial = BACKOFF_INITIAL_S
        self.backoff_max = BACKOFF_MAX_S
        self.last_exchange_end = float("-inf")
        """`clock()` when the last exchange ended (reply, error or timeout)."""
        self._failed_connects = 0
        self._retry_at = float("-inf")
        self._client: ModbusBaseClient | None = None
        self._users: set[int] = set()

    @abstractmethod
    def _create_client(self, attempt_timeout: float) -> ModbusBaseClient:
        """A fresh, unconnected pymodbus async client without automatic reconnect."""

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def retry_in(self) -> float:
        """Seconds until the bus will try to connect again (0 when it may now)."""
        return max(0.0, self._retry_at - self.clock())

    # -- sharing --
    def attach(self, user: object) -> None:
        """Count `user` (a driver) as using the bus; idempotent."""
        self._users.add(id(user))

    def detach(self, user: object) -> None:
        """`user` is done with the bus; the connection closes when nobody uses it."""
        self._users.discard(id(user))
        if not self._users:
            self.close()

    @property
    def users(self) -> int:
        return len(self._users)

    # -- connection --
    async def connect(self, context: str) -> None:
        """Open the connection (a fresh client each time); call with `lock` held."""
        left = self.retry_in
        if left > 0:
            raise DriverError(
                f"{context}: cannot connect to {self.address}: the last attempt failed,"
                f" next attempt in {left:.2f} s"
            )
        self.close()
        client = self._create_client(self.timeout / (self.retries + 1))
        try:
            async with asyncio.timeout(self.timeout):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            self._close_client(client)
            self._connect_failed()
            raise DriverError(f"{context}: cannot connect to {self.address}: {exc!r}") from exc
        except BaseException:
            self._close_client(client)
            raise
        if not ok:
            self._close_client(client)
            self._connect_failed()
            raise DriverError(f"{context}: cannot connect to {self.address}{self._why_not()}")
        self._client = client
        self._failed_connects = 0
        self._retry_at = float("-inf")
        self.last_exchange_end = float("-inf")
        self.generation += 1

    def _why_not(self) -> str:
        """Why the last connect failed, as far as it is known (pymodbus only says no)."""
        return f" within {self.timeout} s (refused or no answer)"

    def _connect_failed(self) -> None:
        self._failed_connects += 1
        wait = self.backoff_initial * 2 ** min(self._failed_connects - 1, 30)
        self._retry_at = self.clock() + min(wait, self.backoff_max)

    def close(self) -> None:
        """Drop the connection; safe to call any number of times."""
        client, self._client = self._client, None
        if client is not None:
            self._close_client(client)

    def _close_client(self, client: ModbusBaseClient) -> None:
        client.close()

    # -- requests --
    async def read_holding(self, unit: int, address: int, count: int, context: str) -> list[int]:
        """FC3; call with `lock` held."""
        response = await self._execute(
            unit,
            context,
            f"reading {count} registers at {address}",
            lambda c: c.read_holding_registers(address, count=count, device_id=unit),
        )
        registers = list(response.registers)
        if len(registers) != count:
            raise DriverError(
                f"{context}: asked for {count} registers at {address}, got {len(registers)}"
            )
        return registers

    async def write_registers(
        self, unit: int, address: int, values: Sequence[int], context: str
    ) -> None:
        """FC16 in one request; call with `lock` held."""
        await self._execute(
            unit,
            context,
            f"writing {len(values)} registers at {address}",
            lambda c: c.write_registers(address, list(values), device_id=unit),
        )

    async def keep_frame_gap(self) -> None:
        """Wait until the line has been silent for `frame_gap`; call with `lock` held."""
        if self.frame_gap <= 0:
            return
        wait = self.last_exchange_end + self.frame_gap - self.clock()
        if wait > 0:
            await self.sleep(wait)

    async def _execute(
        self,
        unit: int,
        context: str,
        what: str,
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
    ) -> ModbusPDU:
        client = self._client
        if client is None or not client.connected:
            self.close()
            raise DriverError(f"{context}: {what}: not connected to {self.address}")
        await self.keep_frame_gap()
        try:
            # pymodbus bounds each attempt itself; this is only a backstop.
            async with asyncio.timeout(self.timeout * 2):
                response = await call(client)
        except TimeoutError as exc:
            self.close()
            raise DriverError(f"{context}: {what}: no answer within {self.timeout} s") from exc
        except ModbusIOException as exc:
            if not client.connected:
                self.close()
            if "No response" in str(exc):
                # On a serial line a unit that is absent or dead just stays silent.
                raise DriverError(
                    f"{context}: {what}: no answer from unit {unit} within"
                    f" {self.timeout} s ({self.retries + 1} attempts)"
                ) from exc
            raise DriverError(f"{context}: {what}: {exc}") from exc
        except (ModbusException, OSError) as exc:
            if not client.connected:
                self.close()
            raise DriverError(f"{context}: {what}: {exc}") from exc
        finally:
            self.last_exchange_end = self.clock()
        if response.isError():
            code = getattr(response, "exception_code", 0)
            try:
                name = ExcCodes(code).name
            except ValueError:
                name = "unknown"
            raise DriverError(f"{context}: {what}: Modbus exception {code} ({name})")
        return response


class ModbusTcpBus(ModbusBus):
    """Modbus TCP to a cabinet or a gateway: `tcp://host:port`."""

    def __init__(self, address: str, timeout: float = 2.0, retries: int = 1) -> None:
        self.host, self.port = parse_tcp_address(address)
        super().__init__(address, timeout, retries)

    def _create_client(self, attempt_timeout: float) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=attempt_timeout,
            retries=self.retries,
            reconnect_delay=0,  # no background reconnect task: the driver reconnects
            name=self.address,
        )


@dataclass(frozen=True)
class TlsFiles:
    """Mutual TLS of a Modbus/TCP Security link: the CA that signed the cabinet's
    certificate (PEM), and the controller's own certificate and key (PEM)."""

    ca_file: str
    cert_file: str
    key_file: str

    def client_context(self) -> ssl.SSLContext:
        """A client context that verifies the cabinet's certificate and host name and
        presents the controller's certificate; TLS 1.2 at least (blocking: reads files).
        Raises DriverError naming a missing or unusable file."""
        for field_name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, field_name)
            if not Path(path).is_file():
                raise DriverError(f"tls.{field_name}: file {path} not found")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=self.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise DriverError(f"tls.ca_file: {self.ca_file} holds no usable CA: {exc}") from exc
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise DriverError(
                f"tls.cert_file/key_file: {self.cert_file} and {self.key_file} are not a"
                f" matching PEM certificate and key: {exc}"
            ) from exc
        return ctx


class ModbusTlsBus(ModbusTcpBus):
    """Modbus/TCP Security to a cabinet or gateway: `tcp://host:port` (port 802 when
    left out) with mutual TLS. The cabinet must present a certificate signed by
    `tls.ca_file` that names the address' host (DNS or IP subject alternative name)."""

    def __init__(self, address: str, tls: TlsFiles, timeout: float = 2.0, retries: int = 1) -> None:
        super().__init__(address, timeout, retries)
        self.host, self.port = parse_tcp_address(address, DEFAULT_MODBUS_TLS_PORT)
        self.tls = tls
        self._sslctx: ssl.SSLContext | None = None
        self._handshake_error: BaseException | None = None

    async def connect(self, context: str) -> None:
        if self.retry_in <= 0:
            try:
                self._sslctx = await asyncio.to_thread(self.tls.client_context)
            except DriverError as exc:
                self._connect_failed()
                raise DriverError(f"{context}: cannot connect to {self.address}: {exc}") from exc
        self._handshake_error = None
        await super().connect(context)

    def _create_client(self, attempt_timeout: float) -> ModbusBaseClient:
        assert self._sslctx is not None  # made by connect()
        client = AsyncModbusTlsClient(
            self.host,
            sslctx=self._sslctx,
            port=self.port,
            timeout=attempt_timeout,
            retries=self.retries,
            reconnect_delay=0,  # no background reconnect task: the driver reconnects
            name=self.address,
        )
        # pymodbus turns every connect error into False; keep the TLS reason.
        ctx: Any = client.ctx
        create = ctx.call_create

        async def create_noting_why() -> Any:
            try:
                return await create()
            except OSError as exc:
                self._handshake_error = exc
                raise

        ctx.call_create = create_noting_why
        lost = ctx.connection_lost
        cert_file = self.tls.cert_file

        def connection_lost_failing_fast(exc: Exception | None) -> None:
            # pymodbus leaves a request waiting for its timeout when the connection
            # drops. A cabinet that refuses the controller's certificate does so after
            # a TLS 1.3 handshake has completed on this side, so the first request
            # would only time out; end it at once with the reason instead.
            waiting = getattr(ctx, "response_future", None)
            if isinstance(waiting, asyncio.Future) and not waiting.done():
                why = f": {exc}" if exc else ""
                waiting.set_exception(
                    ConnectionResetError(
                        f"the cabinet closed the TLS connection{why} (right after"
                        f" connecting: does it trust the controller's certificate {cert_file}?)"
                    )
                )
            lost(exc)

        ctx.connection_lost = connection_lost_failing_fast
        return client

    def _why_not(self) -> str:
        exc = self._handshake_error
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f": the cabinet's certificate is not trusted: {exc.verify_message}"
                f" (verified against tls.ca_file {self.tls.ca_file} and host {self.host})"
            )
        if isinstance(exc, ssl.SSLError):
            return f": TLS handshake failed: {exc.reason or exc}"
        if exc is not None:
            return f": {exc!r}"
        return (
            f" within {self.timeout} s (refused, no answer, or no TLS handshake: is it a"
            " Modbus/TCP Security port?)"
        )


class ModbusRtuBus(ModbusBus):
    """Modbus RTU on a serial line: a device path (`/dev/ttyUSB0`) or a pyserial URL
    (`socket://host:port` for a serial device server in raw TCP mode, `rfc2217://...`).

    The line settings default to the Modbus RTU standard 8E1. Every cabinet on the
    line must share one instance (the port is opened exclusively, and the frame gap
    only holds if one object times the line).
    """

    def __init__(
        self,
        address: str,
        baudrate: int = DEFAULT_RTU_BAUDRATE,
        timeout: float = 2.0,
        retries: int = 1,
        *,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: int = 1,
    ) -> None:
        check_serial_address(address)
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be 'N', 'E' or 'O', got {parity!r}")
        self.baudrate = baudrate
        self.parity = parity
        self.bytesize = bytesize
        self.stopbits = stopbits
        super().__init__(address, timeout, retries, frame_gap=rtu_frame_gap(baudrate))

    def _create_client(self, attempt_timeout: float) -> ModbusBaseClient:
        client = AsyncModbusSerialClient(
            self.address,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=attempt_timeout,
            retries=self.retries,
            reconnect_delay=0,  # no background reconnect task: the driver reconnects
            name=self.address,
        )
        if self.address.startswith(("socket://", "rfc2217://")):
            _open_off_the_loop(client)
        return client

    def _close_client(self, client: ModbusBaseClient) -> None:
        """Close without stalling the event loop.

        pyserial's socket:// close sleeps 0.3 s (to let a server see the disconnect
        before a quick reconnect), which would freeze every other machine the
        controller serves. So for socket:// the port is taken out of pymodbus'
        transport and closed in a thread; other ports close at once (a device path
        must be closed before it can be opened again, being opened exclusively).
        """
        port = _take_socket_port(client) if self.address.startswith("socket://") else None
        client.close()
        if port is not None:
            threading.Thread(
                target=_close_quietly, args=(port,), name=f"close {self.address}", daemon=True
            ).start()


def _open_off_the_loop(client: ModbusBaseClient) -> None:
    """Make the client open its port in a worker thread.

    pymodbus opens a serial port synchronously, inside the event loop. For a network
    port that is a TCP connect (pyserial waits up to 5 s for a host that does not
    answer) or an RFC 2217 negotiation, which would freeze every other machine the
    controller serves. Same steps as pymodbus' create_serial_connection, with the
    blocking constructor moved to a thread; a port that opens after the attempt was
    given up is closed again.
    """
    ctx: Any = client.ctx
    params = ctx.comm_params
    loop = asyncio.get_running_loop()

    async def create() -> tuple[SerialTransport, Any]:
        protocol = ctx.handle_new_connection()
        opening = loop.run_in_executor(
            None,
            partial(
                SerialTransport,
                loop,
                protocol,
                params.host,
                params.baudrate,
                params.bytesize,
                params.parity,
                params.stopbits,
                params.timeout_connect,
            ),
        )
        try:
            transport = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_late_port)
            raise
        _close_socket_at_once(transport.sync_serial)
        loop.call_soon(transport.setup)
        return transport, protocol

    ctx.call_create = create


def _close_socket_at_once(port: Any) -> None:
    """pymodbus closes the port itself when a read fails (the peer closed or reset the
    line), on the event loop. pyserial's socket:// close() then sleeps 0.3 s there, and
    when shutting down a reset socket fails it never closes it (a leaked socket each
    time). The port's close is made to close its socket at once and for good."""
    if type(port).__module__ != "serial.urlhandler.protocol_socket":
        return

    def close() -> None:
        sock, port._socket = port._socket, None
        port.is_open = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    port.close = close


def _close_late_port(opening: asyncio.Future[SerialTransport]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return
    port = opening.result().sync_serial
    threading.Thread(target=_close_quietly, args=(port,), daemon=True).start()


def _take_socket_port(client: ModbusBaseClient) -> Any:
    """Detach the pyserial object from pymodbus' serial transport (None if that fails).

    Relies on pymodbus 3.16's SerialTransport (`sync_serial`, `async_loop`); anything
    unexpected leaves the port where it is, for pymodbus to close as usual.
    """
    transport: Any = getattr(client.ctx, "transport", None)
    port = getattr(transport, "sync_serial", None)
    loop = getattr(transport, "async_loop", None)
    if port is None or loop is None or getattr(transport, "poll_task", None) is not None:
        return None
    try:
        fd = port.fileno()
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        transport.intern_write_buffer.clear()
        transport.sync_serial = None
    except Exception:  # any surprise: let pymodbus close it
        return None
    return port


def _close_quietly(port: Any) -> None:
    with contextlib.suppress(Exception):
        port.close()


class ModbusCabinetDriver(CabinetDriver):
    """A cabinet speaking register map 2.x on one Modbus unit id.

    After connect() a lost connection is re-opened by the next call (and the identity
    checked again); the failing call itself raises DriverError. close() ends that.

    Without `bus` the driver opens its own Modbus TCP connection to `address`. Cabinets
    on one RTU line (or one gateway connection) pass the same `bus`; each driver counts
    as a user of it from connect() to close(), and the connection closes with the last.
    """

    def __init__(
        self,
        name: str,
        address: str,
        unit_id: int,
        pocket_count: int,
        timeout: float = 2.0,
        *,
        retries: int = 1,
        bus: ModbusBus | None = None,
        ack_poll_interval: float = 0.05,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"cabinet {name}: unit_id must be 0..255, got {unit_id!r}")
        if pocket_count < 0 or reg.pocket_address(pocket_count) > 0x10000:
            raise ValueError(f"cabinet {name}: pocket_count out of range: {pocket_count!r}")
        self.name = name
        self.address = address
        self.unit_id = unit_id
        self.pocket_count = pocket_count
        self.timeout = timeout
        self.ack_poll_interval = ack_poll_interval
        self._bus = bus if bus is not None else ModbusTcpBus(address, timeout, retries)
        self._plan = reg.read_plan(pocket_count)
        self._open = False
        self._checked_generation = -1
        self.identity: reg.Identity | None = None

    def _context(self, operation: str) -> str:
        return f"cabinet {self.name} (unit {self.unit_id} at {self.address}) {operation}"

    @property
    def bus(self) -> ModbusBus:
        return self._bus

    async def connect(self) -> None:
        """Open the connection and check the register map; bounded by the timeout.

        On failure the driver stops counting as a user of the bus (so a shared bus that
        nobody else uses is closed), but stays open: the next call tries again.
        """
        self._open = True
        try:
            async with self._bus.lock:
                await self._ready("connect", force_check=True)
        except BaseException:
            self._bus.detach(self)
            raise

    async def close(self) -> None:
        """Stop using the bus; the connection closes if no other cabinet uses it."""
        self._open = False
        self._checked_generation = -1
        self._bus.detach(self)

    async def read_status(self) -> CabinetStatus:
        context = self._context("read_status")
        registers: list[int] = []
        for address, count in self._plan:
            # One lock per request, so other cabinets on the bus are not starved.
            async with self._bus.lock:
                await self._ready("read_status")
                registers += await self._bus.read_holding(self.unit_id, address, count, context)
        try:
            identity = reg.decode_identity(registers)
            self._check_identity(identity, context)
            live = reg.decode_live(registers)
            pockets = tuple(
                reg.decode_pocket(block)
                for block in reg.split_pockets(registers, self.pocket_count)
            )
        except ValueError as exc:
            raise DriverError(f"{context}: cannot decode registers: {exc}") from exc
        return CabinetStatus(
            cabinet_id=identity.cabinet_id,
            map_version=identity.map_major,
            heartbeat=live.heartbeat,
            status=live.status,
            temperature_c=live.temperature_c,
            last_ack_sequence=live.ack_sequence,
            pockets=pockets,
            map_minor=identity.map_minor,
            temp_low_c=live.temp_low_c,
            temp_high_c=live.temp_high_c,
            temp_excursions_total=live.temp_excursions_total,
        )

    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        """Write the whole mailbox in one FC16, then poll the acknowledgement."""
        values = reg.encode_mailbox(sequence, CabinetCommand(command), pocket, quantity)
        what = f"{CabinetCommand(command).name} sequence {sequence} pocket {pocket} x{quantity}"
        context = self._context(f"send_command {what}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        async with self._bus.lock:
            await self._ready("send_command")
            await self._bus.write_registers(self.unit_id, reg.REG_CMD_SEQUENCE, values, context)
        while True:
            async with self._bus.lock:
                await self._ready("send_command")
                ack = await self._bus.read_holding(self.unit_id, reg.REG_ACK_SEQUENCE, 2, context)
            ack_sequence, result = reg.decode_ack(ack)
            if ack_sequence == sequence:
                break
            if loop.time() >= deadline:
                raise DriverError(
                    f"{context}: not acknowledged within {self.timeout} s"
                    f" (last acknowledged sequence {ack_sequence})"
                )
            await asyncio.sleep(self.ack_poll_interval)
        if result != reg.ResultCode.OK:
            raise DriverError(
                f"{context}: refused: {reg.result_meaning(result)} (result code {result})"
            )

    async def _ready(self, operation: str, force_check: bool = False) -> None:
        """Connect if needed and check the identity once per connection; lock held."""
        context = self._context(operation)
        if not self._open:
            raise DriverError(f"{context}: not connected (call connect() first)")
        self._bus.attach(self)
        if not self._bus.connected:
            await self._bus.connect(context)
        if force_check or self._checked_generation != self._bus.generation:
            header = await self._bus.read_holding(
                self.unit_id, 0, reg.REG_FIRMWARE_MINOR + 1, context
            )
            identity = reg.decode_identity(header)
            self._check_identity(identity, context)
            self.identity = identity
            self._checked_generation = self._bus.generation
            log.info(
                "cabinet %s: map %d.%d, firmware %d.%d, %d pockets",
                self.name,
                identity.map_major,
                identity.map_minor,
                identity.firmware_major,
                identity.firmware_minor,
                identity.pocket_count,
            )

    def _check_identity(self, identity: reg.Identity, context: str) -> None:
        if identity.map_major != reg.MAP_MAJOR:
            raise DriverError(
                f"{context}: device has register map version"
                f" {identity.map_major}.{identity.map_minor}, driver supports"
                f" {reg.MAP_MAJOR}.x (written for {reg.MAP_MAJOR}.{reg.MAP_MINOR})"
            )
        if (identity.pocket_base, identity.pocket_stride) != (reg.POCKET_BASE, reg.POCKET_STRIDE):
            raise DriverError(
                f"{context}: device puts pockets at {identity.pocket_base} stride"
                f" {identity.pocket_stride}, map {reg.MAP_MAJOR} says {reg.POCKET_BASE}"
                f" stride {reg.POCKET_STRIDE}"
            )
        if identity.pocket_count != self.pocket_count:
            raise DriverError(
                f"{context}: device reports {identity.pocket_count} pockets,"
                f" configuration says {self.pocket_count}"
            )
