"""A TCP relay that breaks the link between the controller and a simulator on demand.

Real sockets on both sides: the controller connects to the relay as it would to the
machine (an `opc.tcp://`, `tcp://` or `socket://` address), the relay connects on to the
simulator. Between them it can

- `cut()` every connection, and with `refuse=True` stop listening, so that connecting
  is refused, as a machine that is off (or restarting) does;
- go `silent`: connections stay open and nothing passes either way, as a device whose
  controller hangs (or a network that black-holes the packets) does;
- `corrupt_next(n, mutate)`: spoil the next n chunks on their way to the controller
  (a bad CRC, a malformed header);
- `inject(data)`: put noise of its own on the line towards the controller.

The simulators stay untouched: this is the network, not the device.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Mutate = Callable[[bytes], bytes]


def flip_last_byte(data: bytes) -> bytes:
    """A damaged CRC: the frame's last byte (serial, RTU) has its bits flipped."""
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else data


def flip_first_byte(data: bytes) -> bytes:
    """A damaged header: the chunk's first byte (an OPC UA message type) is spoilt."""
    return bytes([data[0] ^ 0xFF]) + data[1:] if data else data


def flip_middle_byte(data: bytes) -> bytes:
    """One bit error in the middle of the chunk."""
    if not data:
        return data
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1 :]


class _Pair:
    """One controller connection and its connection on to the simulator."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.close()


class FaultProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.silent = False
        self.accepted = 0  # connections the controller opened
        self.corrupted = 0  # chunks spoiled so far
        self._corrupt: list[Mutate] = []
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closed: list[asyncio.Server] = []
        self._port = 0

    @property
    def port(self) -> int:
        assert self._port, "not started"
        return self._port

    @property
    def refusing(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        """Listens (again, on the same port after the first start)."""
        self._server = await asyncio.start_server(self._on_client, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.cut(refuse=True)  # every handler ends with its connections
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)
        for server in self._closed:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    # -- faults ----------------------------------------------------------------------

    def cut(self, *, refuse: bool = False) -> None:
        """Closes every connection; with `refuse`, stops listening until `restore()`."""
        if refuse and self._server is not None:
            self._server.close()
            self._closed.append(self._server)
            self._server = None
        for pair in list(self._pairs):
            pair.close()
            for task in pair.tasks:
                task.cancel()
        self._pairs.clear()

    async def restore(self) -> None:
        """Listening again on the same port, and bytes flow again."""
        self.silent = False
        if self._server is None:
            await self.start()

    def corrupt_next(self, n: int = 1, mutate: Mutate = flip_middle_byte) -> None:
        self._corrupt.extend([mutate] * n)

    @property
    def corruptions_pending(self) -> int:
        return len(self._corrupt)

    def inject(self, data: bytes) -> None:
        """Bytes of the relay's own to every controller connection (line noise)."""
        for pair in list(self._pairs):
            with contextlib.suppress(Exception):
                pair.client.write(data)

    # -- plumbing --------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()  # the simulator is down: the controller sees the line drop
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        pair.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, to_client=False)),
            asyncio.create_task(self._pump(up_reader, writer, to_client=True)),
        ]
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(pair.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pair.close()
            for pump in pair.tasks:
                pump.cancel()
            await asyncio.gather(*pair.tasks, return_exceptions=True)
            self._pairs.discard(pair)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_client: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self.silent:
                    continue  # swallowed: the other side never hears of it
                if to_client and self._corrupt:
                    data = self._corrupt.pop(0)(data)
                    self.corrupted += 1
                writer.write(data)
                await writer.drain()
