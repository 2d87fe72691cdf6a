"""A cabinet behind its vendor's cabinet server, over HL7 v2 and MLLP (docs/cabinet-hl7.md).

The controller is the MLLP client: it connects to the server at `mllp://host:port`
(`mllps://` for mutual TLS) and that one connection carries both directions. The
server pushes pocket events (RDS^O13) and stock snapshots (INV^U06); the controller
sends the item master (MFN^M01) and pocket notices (RDS^O13) and waits for each one's
ACK. Framing is python-hl7's asyncio MLLP stream (`hl7.mllp`).

One task reads frames: acknowledgements wake the sender waiting for them, events go
to a queue the controller empties with `next_event`, and each event is acknowledged
only when the controller calls `acknowledge` (after booking it). A frame without the
MLLP start byte is dropped (nothing to answer); a frame that is not a usable message
is answered AE or AR here and never reaches the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, open_hl7_connection

from drivers.base import (
    CabinetCommand,
    CabinetEvent,
    CabinetSnapshot,
    CabinetStatus,
    DriverError,
    EventAck,
    EventCabinetDriver,
    ItemMasterEntry,
)
from drivers.hl7_messages import (
    AckMessage,
    Header,
    Hl7MessageError,
    build_ack,
    build_item_master,
    build_pocket_notice,
    new_control_id,
    parse_message,
)
from drivers.modbus_cabinet import TlsFiles

log = logging.getLogger("doseline.drivers.hl7")
FRAME_LIMIT = 1_048_576  # bytes of one MLLP frame


def parse_address(address: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `mllp://host:port` or `mllps://host:port`."""
    parts = urlsplit(address)
    if parts.scheme not in ("mllp", "mllps") or not parts.hostname:
        raise ValueError(f"address {address!r} must be mllp://host:port or mllps://host:port")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"address {address!r} must name a port (mllp://host:port)")
    return parts.hostname, port, parts.scheme == "mllps"


class Hl7CabinetDriver(EventCabinetDriver):
    def __init__(
        self,
        name: str,
        address: str,
        *,
        cabinet_id: str,
        pocket_gtins: Mapping[int, str],
        tls: TlsFiles | None = None,
        timeout: float = 5.0,
        snapshot_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.address = address
        self.host, self.port, wants_tls = parse_address(address)
        if wants_tls and tls is None:
            raise ValueError(f"cabinet {name}: address {address!r} is mllps:// but tls is missing")
        self.tls = tls if wants_tls else None
        self.cabinet_id = cabinet_id
        self.pocket_gtins = dict(pocket_gtins)
        self.timeout = timeout
        self.snapshot_timeout = snapshot_timeout
        self.frames_dropped = 0  # frames without MLLP framing
        self.messages_refused = 0  # answered AE/AR by the driver itself
        self._reader: HL7StreamReader | None = None
        self._writer: HL7StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[CabinetEvent | BaseException] = asyncio.Queue()
        self._headers: dict[str, Header] = {}
        self._waiting: dict[str, asyncio.Future[AckMessage]] = {}
        self._snapshot: CabinetStatus | None = None
        self._snapshot_seen = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._sslctx: ssl.SSLContext | None = None

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done()

    async def connect(self) -> None:
        await self.close()
        kwargs: dict[str, object] = {}
        if self.tls is not None:
            if self._sslctx is None:
                self._sslctx = await asyncio.to_thread(self.tls.client_context)
            kwargs = {"ssl": self._sslctx, "server_hostname": self.host}
        try:
            self._reader, self._writer = await asyncio.wait_for(
                open_hl7_connection(self.host, self.port, limit=FRAME_LIMIT, **kwargs),
                self.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise DriverError(
                f"cabinet {self.name}: server certificate refused at {self.address}:"
                f" {exc.verify_message} (verified against tls.ca_file)"
            ) from exc
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise DriverError(
                f"cabinet {self.name}: cannot connect to {self.address}: {exc!r}"
            ) from exc
        self._events = asyncio.Queue()
        self._headers.clear()
        self._snapshot = None
        self._snapshot_seen = asyncio.Event()
        self._task = asyncio.create_task(self._read_loop(), name=f"hl7-read-{self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(DriverError(f"cabinet {self.name}: connection closed"))
        self._waiting.clear()

    # --- reading -------------------------------------------------------------------
    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                try:
                    block = await self._reader.readblock()
                except InvalidBlockError:
                    self.frames_dropped += 1
                    log.warning("cabinet %s: frame without MLLP start byte dropped", self.name)
                    continue
                except ValueError as exc:  # over FRAME_LIMIT
                    self.frames_dropped += 1
                    log.warning("cabinet %s: frame dropped: %s", self.name, exc)
                    continue
                await self._dispatch(block)
        except DriverError as exc:
            self._lost(exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._lost(DriverError(f"cabinet {self.name}: connection lost: {exc!r}"))
        except asyncio.CancelledError:
            self._lost(DriverError(f"cabinet {self.name}: connection closed"))
            raise
        except Exception as exc:  # a fault of ours must end the link, not hang it
            log.exception("cabinet %s: reading stopped", self.name)
            self._lost(DriverError(f"cabinet {self.name}: reading stopped: {exc!r}"))

    def _lost(self, error: DriverError) -> None:
        self._events.put_nowait(error)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    async def _dispatch(self, block: bytes) -> None:
        try:
            inbound = parse_message(block)
        except Hl7MessageError as exc:
            self.messages_refused += 1
            log.warning(
                "cabinet %s: message %r answered %s: %s",
                self.name,
                exc.control_id,
                exc.code.value,
                exc.text,
            )
            header = Header(exc.control_id, "", "", exc.trigger) if exc.control_id else None
            await self._write(build_ack(header, exc.ack, location=exc.location))
            return
        body = inbound.body
        if isinstance(body, AckMessage):
            future = self._waiting.get(body.acked_id)
            if future is not None and not future.done():
                future.set_result(body)
            else:
                log.info(
                    "cabinet %s: acknowledgement of unknown message %r", self.name, body.acked_id
                )
            return
        if isinstance(body, CabinetSnapshot) and body.cabinet == self.cabinet_id:
            self._snapshot = body.status
            self._snapshot_seen.set()
        self._headers[body.message_id] = inbound.header
        await self._events.put(body)

    # --- the controller's side -------------------------------------------------------
    async def next_event(self) -> CabinetEvent:
        if self._task is None:
            raise DriverError(f"cabinet {self.name}: not connected")
        item = await self._events.get()
        if isinstance(item, BaseException):
            self._events.put_nowait(item)  # every later call fails the same way
            raise item
        return item

    async def acknowledge(self, event: CabinetEvent, ack: EventAck) -> None:
        header = self._headers.pop(event.message_id, None) or Header(event.message_id, "", "", "")
        await self._write(build_ack(header, ack))

    async def read_status(self) -> CabinetStatus:
        """The latest snapshot; waits for the first one after a connect."""
        if self._task is None:
            raise DriverError(f"cabinet {self.name}: not connected")
        try:
            await asyncio.wait_for(self._snapshot_seen.wait(), self.snapshot_timeout)
        except TimeoutError:
            raise DriverError(
                f"cabinet {self.name}: no stock snapshot within {self.snapshot_timeout} s"
            ) from None
        assert self._snapshot is not None
        return self._snapshot

    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        gtin = self.pocket_gtins.get(pocket)
        if gtin is None:
            raise DriverError(f"cabinet {self.name}: pocket {pocket} is not in the site file")
        control_id = new_control_id()
        message = build_pocket_notice(
            cabinet=self.cabinet_id,
            command=command,
            notice=sequence,
            pocket=pocket,
            gtin=gtin,
            quantity=quantity,
            control_id=control_id,
        )
        await self._request(control_id, message, f"{command.name} notice {sequence}")

    async def send_item_master(self, items: Sequence[ItemMasterEntry], *, replace: bool) -> None:
        control_id = new_control_id()
        message = build_item_master(
            items, replace=replace, receiver="CABINETSERVER", control_id=control_id
        )
        await self._request(control_id, message, f"item master of {len(items)} item(s)")

    async def _request(self, control_id: str, message: bytes, what: str) -> None:
        if self._task is None or self._task.done():
            raise DriverError(f"cabinet {self.name}: not connected")
        future: asyncio.Future[AckMessage] = asyncio.get_running_loop().create_future()
        self._waiting[control_id] = future
        try:
            await self._write(message)
            try:
                ack = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                raise DriverError(
                    f"cabinet {self.name}: {what}: no acknowledgement within {self.timeout} s"
                ) from None
        finally:
            self._waiting.pop(control_id, None)
        if ack.code not in ("AA", "CA"):
            raise DriverError(f"cabinet {self.name}: {what} refused ({ack.code}): {ack.text}")

    async def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None:
            raise DriverError(f"cabinet {self.name}: not connected")
        async with self._write_lock:
            try:
                writer.writeblock(data)
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                raise DriverError(f"cabinet {self.name}: write failed: {exc!r}") from exc
