"""A barcode scanner on a serial line (pyserial URL: /dev/ttyUSB0, socket://host:port).

Frames are an AIM symbology identifier (`]` + code + modifier, e.g. `]d2` for GS1
DataMatrix), the data and a carriage return. pyserial blocks, so one thread owns the
port and hands finished frames to the event loop. Bytes before a frame's identifier
(line noise, a half frame after a reconnect) are dropped: the next identifier is where
the reader finds its footing again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

import serial

from drivers.base import DriverError, ScannerDriver

log = logging.getLogger("doseline.drivers.scanner")

TERMINATORS = (b"\r", b"\n")
MAX_FRAME = 512
_AIM = re.compile(rb"\][A-Za-z][0-9A-Za-z]")


def split_frame(raw: bytes) -> tuple[str | None, bool]:
    """(data, resynchronised) of one terminated frame; data is None for pure noise."""
    matches = list(_AIM.finditer(raw))
    if not matches:
        return None, bool(raw)
    start = matches[-1].start()
    body = raw[matches[-1].end() :]
    try:
        return body.decode("ascii"), start > 0
    except UnicodeDecodeError:
        return None, True


class SerialScannerDriver(ScannerDriver):
    def __init__(
        self, name: str, address: str, *, baudrate: int = 9600, reconnect_s: float = 1.0
    ) -> None:
        self.name = name
        self.address = address
        self.baudrate = baudrate
        self.reconnect_s = reconnect_s
        self.discarded = 0  # noise and broken frames dropped so far
        self.connected = False
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: serial.SerialBase | None = None

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._port = await self._loop.run_in_executor(None, self._open)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DriverError(f"scanner {self.name}: cannot open {self.address}: {exc}") from exc
        self.connected = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"scanner-{self.name}", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)
            self._thread = None
        if self._port is not None:
            self._port.close()
            self._port = None
        self.connected = False

    async def read_scan(self) -> str:
        return await self._queue.get()

    def _open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.address, baudrate=self.baudrate, timeout=0.2)

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            port = self._port
            if port is None:
                if not self._reopen():
                    continue
                port = self._port
                assert port is not None
            try:
                chunk = port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                if self._stop.is_set():
                    return
                log.warning("scanner %s: line lost: %s", self.name, exc)
                self.connected = False
                port.close()
                self._port = None
                buffer = b""
                continue
            if not chunk:
                continue
            buffer += chunk
            while True:
                cut = min((i for i in (buffer.find(t) for t in TERMINATORS) if i >= 0), default=-1)
                if cut < 0:
                    break
                frame, buffer = buffer[:cut], buffer[cut + 1 :]
                self._deliver(frame)
            if len(buffer) > MAX_FRAME:
                self.discarded += 1
                log.warning(
                    "scanner %s: %d bytes with no terminator dropped", self.name, len(buffer)
                )
                buffer = b""

    def _deliver(self, frame: bytes) -> None:
        if not frame:
            return
        data, resynced = split_frame(frame)
        if resynced:
            self.discarded += 1
        if data is None:
            log.warning("scanner %s: noise dropped (%d bytes)", self.name, len(frame))
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, data)

    def _reopen(self) -> bool:
        time.sleep(self.reconnect_s)
        if self._stop.is_set():
            return False
        try:
            self._port = self._open()
        except (serial.SerialException, OSError) as exc:
            log.debug("scanner %s: reopen failed: %s", self.name, exc)
            return False
        log.info("scanner %s: line back", self.name)
        self.connected = True
        return True
