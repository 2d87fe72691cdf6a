"""A GS1 barcode scanner on a serial line, simulated over TCP.

The serial side is a TCP socket that pyserial opens as `socket://host:port`; each scan
goes out as the AIM symbology identifier `]d2`, the data and a carriage return, as a
hand scanner in keyboard-less serial mode sends it. A second, "trigger" socket stands
for the hand that holds the scanner: each JSON line sent to it is a pack put in front of
the scanner (`{"scan": "<element string>"}`) or line noise (`{"garbage": 12}`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random

log = logging.getLogger("simulators.scanner")

SYMBOLOGY_PREFIX = b"]d2"
TERMINATOR = b"\r"


class ScannerSimulator:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, trigger_port: int = 0, seed: int = 0
    ) -> None:
        self.host = host
        self._port = port
        self._trigger_port = trigger_port
        self._rng = random.Random(seed)
        self._line: asyncio.Server | None = None
        self._trigger: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.sent = 0

    @property
    def port(self) -> int:
        assert self._line is not None, "not started"
        return int(self._line.sockets[0].getsockname()[1])

    @property
    def trigger_port(self) -> int:
        assert self._trigger is not None, "not started"
        return int(self._trigger.sockets[0].getsockname()[1])

    @property
    def lines_connected(self) -> int:
        """How many hosts hold the serial side open."""
        return len(self._writers)

    async def start(self) -> None:
        self._line = await asyncio.start_server(self._on_line, self.host, self._port)
        self._trigger = await asyncio.start_server(self._on_trigger, self.host, self._trigger_port)

    async def stop(self) -> None:
        for server in (self._line, self._trigger):
            if server is not None:
                server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._handlers):
            task.cancel()
        for server in (self._line, self._trigger):
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.wait_closed()
        self._writers.clear()

    async def scan(self, data: str) -> None:
        """A pack in front of the scanner: sends its symbol down the serial line."""
        await self._send(SYMBOLOGY_PREFIX + data.encode("ascii") + TERMINATOR)

    async def garbage(self, length: int) -> None:
        """Line noise: random bytes with no terminator in them."""
        noise = bytes(self._rng.choice(range(0x20, 0x7F)) for _ in range(length))
        await self._send(noise)

    async def _send(self, frame: bytes) -> None:
        for writer in list(self._writers):
            try:
                writer.write(frame)
                await writer.drain()
            except ConnectionError:
                self._writers.discard(writer)
        self.sent += 1

    async def _on_line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._track()
        try:
            while await reader.read(256):
                pass  # a scanner ignores what the host sends it
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _on_trigger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        try:
            async for raw in reader:
                try:
                    order = json.loads(raw)
                    if "scan" in order:
                        await self.scan(str(order["scan"]))
                    elif "garbage" in order:
                        await self.garbage(int(order["garbage"]))
                    else:
                        raise ValueError(f"unknown trigger {order!r}")
                    writer.write(b'{"ok": true}\n')
                except (ValueError, TypeError) as exc:
                    writer.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)


async def _serve(args: argparse.Namespace) -> None:
    sim = ScannerSimulator(args.host, args.port, args.trigger_port, args.seed)
    await sim.start()
    print(f"scanner on socket://{args.host}:{sim.port}, trigger on {args.host}:{sim.trigger_port}")
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Simulated GS1 serial barcode scanner")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=17001)
    parser.add_argument("--trigger-port", type=int, default=17002)
    parser.add_argument("--seed", type=int, default=0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
