"""An in-memory barcode scanner: queued scans read one at a time (see
`drivers.fakes`)."""

from __future__ import annotations

import asyncio

from drivers.base import ScannerDriver
from drivers.fake_device import FakeDevice


class FakeScanner(FakeDevice, ScannerDriver):
    """A barcode scanner in memory: `scan(data)` queues a symbol for `read_scan`.

    As the serial scanner driver does, `read_scan` waits for a scan and never raises:
    not before connect, not after close and not while the line is down (scans made
    then are lost, counted in `lost_scans`); the line comes back by itself when
    `link_up` is True again. `noise()` is line noise the driver drops (`discarded`).
    """

    kind = "scanner"

    def __init__(self, name: str = "SC1") -> None:
        super().__init__(name)
        self.discarded = 0
        self.lost_scans = 0
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    async def connect(self) -> None:
        await self._connect()

    async def close(self) -> None:
        await self._close()

    async def read_scan(self) -> str:
        self.calls.append(("read_scan", ()))
        queued = self._failures.get("read_scan")
        if queued:
            raise queued.pop(0)
        return await self._queue.get()

    def scan(self, data: str) -> None:
        """A pack in front of the scanner; lost unless the line is open and up."""
        if not (self.connected and self.link_up):
            self.lost_scans += 1
            return
        self._queue.put_nowait(data)

    def noise(self) -> None:
        """Line noise: the driver drops it and counts it."""
        self.discarded += 1
