"""A vendor's cabinet server speaking HL7 v2 over MLLP, written from docs/cabinet-hl7.md.

It serves one cabinet. Nurses withdraw doses at a daily rate (some dropped and
discarded), each transaction becomes an RDS^O13 to the pharmacy system, and a stock
snapshot (INV^U06) goes out right after the pharmacy system connects and then every
`snapshot_interval_s`. Messages leave one at a time, in order, each resent with the
same control id until it is acknowledged (AA or AE; an AR with code 207 is resent
later). Messages wait in the outbox while nobody is connected. The server takes the
item master (MFN^M01) and pocket notices (RDS^O13: REFILL, LOCK, UNLOCK, SET_COUNT),
acting on a notice number once.

Fault knobs: a duplicate message, a message out of order, a garbled frame, a malformed
segment, a dropped connection (also right after sending, before the ACK comes back).

    python -m simulators.cabinet_hl7 --port 2575 --site config/demo.yaml --cabinet CAB-4

Only python-hl7 is shared with the controller (parsing and MLLP framing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hl7
from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server

from simulators.site_model import CabinetSite, SiteModel, SiteModelError
from simulators.standalone import run, serve_until_stopped

log = logging.getLogger("simulators.cabinet_hl7")
SECONDS_PER_DAY = 86400.0
APPLICATION = "CABSRV"
FACILITY = "WARD"
COLD_BAND = (2.0, 8.0)
ROOM_BAND = (15.0, 25.0)


@dataclass(frozen=True)
class Hl7PocketSpec:
    number: int
    gtin: str
    count: int
    capacity: int
    daily_withdrawals: float = 0.0
    waste_share: float = 0.0
    drawer: str = "A"


@dataclass(frozen=True)
class Hl7CabinetSpec:
    cabinet: str
    pockets: Sequence[Hl7PocketSpec]
    cold: bool = False


@dataclass(frozen=True)
class SimTls:
    """The server's certificate and key, and the CA its clients must be signed by."""

    cert_file: str
    key_file: str
    client_ca_file: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.load_verify_locations(cafile=self.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass
class _Pocket:
    spec: Hl7PocketSpec
    count: int
    locked: bool = False
    next_visit_at: float = float("inf")

    def schedule_from(self, clock: float, rng: random.Random) -> None:
        rate = self.spec.daily_withdrawals / SECONDS_PER_DAY
        self.next_visit_at = clock + rng.expovariate(rate) if rate > 0 else float("inf")


@dataclass
class Outgoing:
    control_id: str
    text: str
    kind: str  # DISPENSE, WASTE, ..., SNAPSHOT
    attempts: int = 0


@dataclass
class Faults:
    """Set by tests (or --fault); each applies to the next message(s) sent."""

    duplicate: int = 0  # send the next accepted pocket event once more, same control id
    out_of_order: int = 0  # send the second waiting message before the first
    garble_frame: int = 0  # the next frame goes without its MLLP start byte
    malform_segment: int = 0  # the next event's ZPK-3 is not a number
    drop_after_send: int = 0  # close the connection right after sending the next message
    snapshots_paused: bool = False
    hold: bool = False  # send nothing (messages wait in the outbox, in order)


@dataclass
class Log:
    accepted: list[str] = field(default_factory=list)  # control ids acknowledged AA
    kinds: dict[str, str] = field(default_factory=dict)  # control id -> DISPENSE, SNAPSHOT...
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (id, code, text)
    resent: int = 0
    notices: list[tuple[int, str, int, int]] = field(default_factory=list)  # acted on
    notices_repeated: int = 0
    item_masters: list[tuple[str, int]] = field(default_factory=list)  # (REP/UPD, items)


def _escape(value: object) -> str:
    text = str(value).replace("\\", "\\E\\")
    for char, code in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        text = text.replace(char, code)
    return text


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


class Hl7CabinetServer:
    def __init__(
        self,
        spec: Hl7CabinetSpec,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        time_factor: float = 0.0,
        seed: int = 1,
        snapshot_interval_s: float = 1.0,
        ack_timeout_s: float = 1.0,
        tls: SimTls | None = None,
    ) -> None:
        self.spec = spec
        self.host = host
        self._port = port
        self.time_factor = time_factor
        self.rng = random.Random(seed)
        self.snapshot_interval_s = snapshot_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.tls = tls
        self.pockets = {p.number: _Pocket(p, p.count) for p in spec.pockets}
        low, high = COLD_BAND if spec.cold else ROOM_BAND
        self.band = (low, high)
        self.temperature_c = (low + high) / 2
        self.excursions_total = 0
        self.door_open = False
        self.fault = False
        self.withdrawals_paused = False
        self.clock = 0.0
        self.heartbeat = 0
        self.last_notice = 0
        self.faults = Faults()
        self.log = Log()
        self.item_master: dict[str, str] = {}  # GTIN -> name
        self.outbox: list[Outgoing] = []
        self._prefix = uuid.uuid4().hex[:8].upper()
        self._sequence = 0
        self._seen_notices: set[int] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writer: HL7StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._outbox_changed = asyncio.Event()
        self._acks: dict[str, asyncio.Future[tuple[str, str, str]]] = {}
        self.connections = 0
        for pocket in self.pockets.values():
            pocket.schedule_from(self.clock, self.rng)

    # --- life cycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{'mllps' if self.tls else 'mllp'}://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def start(self) -> None:
        ctx = self.tls.server_context() if self.tls else None
        self._server = await start_hl7_server(
            self._client, self.host, self._port, ssl=ctx, limit=1_048_576
        )
        self._spawn(self._physics())
        self._spawn(self._snapshots())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connection()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> Hl7CabinetServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- physics -------------------------------------------------------------------------
    async def _physics(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(0.05)
            now = loop.time()
            if self.time_factor > 0:
                self.advance((now - last) * self.time_factor)
            last = now

    def advance(self, seconds: float) -> None:
        """Moves the simulated clock: nurses visit the pockets that are due."""
        self.clock += seconds
        for pocket in self.pockets.values():
            while pocket.next_visit_at <= self.clock:
                if not self.withdrawals_paused and not pocket.locked and pocket.count > 0:
                    if self.rng.random() < pocket.spec.waste_share:
                        self.waste(pocket.spec.number)
                    else:
                        self.withdraw(pocket.spec.number)
                pocket.schedule_from(pocket.next_visit_at, self.rng)

    def withdraw(self, number: int, n: int = 1) -> int:
        pocket = self.pockets[number]
        taken = 0 if pocket.locked else min(n, pocket.count)
        if taken:
            pocket.count -= taken
            self._event(pocket, "DISPENSE", taken)
        return taken

    def waste(self, number: int, n: int = 1) -> int:
        pocket = self.pockets[number]
        wasted = min(n, pocket.count)
        if wasted:
            pocket.count -= wasted
            self._event(pocket, "WASTE", wasted)
        return wasted

    def return_doses(self, number: int, n: int = 1) -> int:
        pocket = self.pockets[number]
        accepted = max(0, min(n, pocket.spec.capacity - pocket.count))
        if accepted:
            pocket.count += accepted
            self._event(pocket, "RETURN", accepted)
        return accepted

    def stocktake(self, number: int, counted: int) -> None:
        pocket = self.pockets[number]
        pocket.count = counted
        self._event(pocket, "COUNT", counted)

    def refill_without_notice(self, number: int, n: int) -> None:
        pocket = self.pockets[number]
        pocket.count += n
        self._event(pocket, "REFILL", n)

    def pause_withdrawals(self) -> None:
        """The nurses stop (a quiet moment before counts are compared)."""
        self.withdrawals_paused = True

    def lose_doses(self, number: int, n: int) -> None:
        """Doses gone with no message at all (what reconciliation must catch)."""
        self.pockets[number].count -= n

    def count(self, number: int) -> int:
        return self.pockets[number].count

    def set_temperature(self, celsius: float) -> None:
        low, high = self.band
        was_in = low <= self.temperature_c <= high
        self.temperature_c = celsius
        if was_in and not low <= celsius <= high:
            self.excursions_total += 1

    # --- messages --------------------------------------------------------------------------
    def _next_id(self) -> str:
        self._sequence += 1
        return f"{self._prefix}{self._sequence:08d}"

    def _msh(self, message_type: str, control_id: str) -> str:
        return (
            f"MSH|^~\\&|{APPLICATION}|{FACILITY}|DOSELINE|PHARMACY|{_now()}||{message_type}|"
            f"{control_id}|P|2.5||||||UNICODE UTF-8"
        )

    def _event(self, pocket: _Pocket, kind: str, quantity: int, notice: int | None = None) -> None:
        control_id = self._next_id()
        spec = pocket.spec
        number: object = spec.number
        if self.faults.malform_segment > 0:
            self.faults.malform_segment -= 1
            number = f"P{spec.number}x"
        lines = [
            self._msh("RDS^O13^RDS_O13", control_id),
            f"ORC|RE|{control_id}",
            f"RXD|1|{spec.gtin}^^GTIN|{_now()}|{quantity}",
            f"ZPK|{_escape(self.spec.cabinet)}|{_escape(spec.drawer)}|{number}|{kind}|"
            f"{pocket.count}|{notice or ''}",
        ]
        self._queue(Outgoing(control_id, "\r".join(lines) + "\r", kind))

    def snapshot_text(self, control_id: str) -> str:
        flags = [
            name
            for name, on in (
                ("DOOR_OPEN", self.door_open),
                ("FAULT", self.fault),
                (
                    "TEMPERATURE_ALARM",
                    not self.band[0] <= self.temperature_c <= self.band[1],
                ),
            )
            if on
        ]
        lines = [
            self._msh("INV^U06^INV_U06", control_id),
            f"EQU|{_escape(self.spec.cabinet)}|{_now()}",
            f"ZCS|{_escape(self.spec.cabinet)}|{self.heartbeat}|{self.temperature_c:.1f}|"
            f"{self.band[0]:.1f}|{self.band[1]:.1f}|{self.excursions_total}|{self.last_notice}|"
            + "~".join(flags),
        ]
        for number in sorted(self.pockets):
            pocket = self.pockets[number]
            status = "OK" if pocket.count else "NE"
            lines.append(f"INV|{pocket.spec.gtin}^^GTIN|{status}||||||{pocket.count}")
            lines.append(
                f"ZPK|{_escape(self.spec.cabinet)}|{_escape(pocket.spec.drawer)}|{number}|"
                f"SNAPSHOT|{pocket.count}||{'Y' if pocket.locked else 'N'}"
            )
        return "\r".join(lines) + "\r"

    def queue_snapshot(self) -> None:
        self.heartbeat += 1
        control_id = self._next_id()
        self._queue(Outgoing(control_id, self.snapshot_text(control_id), "SNAPSHOT"))

    def _queue(self, message: Outgoing) -> None:
        self.outbox.append(message)
        self._outbox_changed.set()

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            if self.connected and not self.faults.snapshots_paused:
                # One snapshot waiting is enough: a newer one replaces it.
                self.outbox = [m for m in self.outbox if m.kind != "SNAPSHOT" or m.attempts]
                self.queue_snapshot()

    async def wait_idle(self, within_s: float = 10.0) -> None:
        """Until every message waiting has been acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.outbox:
            if loop.time() > deadline:
                raise TimeoutError(f"outbox still holds {len(self.outbox)} message(s)")
            await asyncio.sleep(0.02)

    # --- the connection ------------------------------------------------------------------
    async def drop_connection(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        for future in self._acks.values():
            if not future.done():
                future.cancel()

    async def _client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        if self._writer is not None:
            log.warning("second connection refused: one pharmacy system at a time")
            writer.close()
            return
        self._writer = writer
        self.connections += 1
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)  # type: ignore[arg-type]
            me.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        sender = self._spawn(self._send_loop(writer))
        if not self.faults.snapshots_paused:
            self.queue_snapshot()
        try:
            while True:
                try:
                    block = await reader.readblock()
                except InvalidBlockError:
                    continue
                await self._received(writer, block)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self._writer is writer:
                self._writer = None
            writer.close()

    async def _write(self, writer: HL7StreamWriter, data: bytes, *, framed: bool = True) -> None:
        async with self._write_lock:
            if framed:
                writer.writeblock(data)
            else:
                writer.write(data + b"\x1c\r")
            await writer.drain()

    async def _send_loop(self, writer: HL7StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.outbox or self.faults.hold:
                self._outbox_changed.clear()
                if self.faults.hold:
                    await asyncio.sleep(0.02)
                    continue
                await self._outbox_changed.wait()
            index = 0
            if self.faults.out_of_order > 0 and len(self.outbox) > 1:
                self.faults.out_of_order -= 1
                index = 1
            message = self.outbox[index]
            message.attempts += 1
            if message.attempts > 1:
                self.log.resent += 1
            future: asyncio.Future[tuple[str, str, str]] = loop.create_future()
            self._acks[message.control_id] = future
            garbled = self.faults.garble_frame > 0
            if garbled:
                self.faults.garble_frame -= 1
            await self._write(writer, message.text.encode("utf-8"), framed=not garbled)
            if self.faults.drop_after_send > 0:
                self.faults.drop_after_send -= 1
                await asyncio.sleep(0.05)  # the receiver has it; its ACK is lost with us
                await self.drop_connection()
                return
            try:
                code, text, error = await asyncio.wait_for(future, self.ack_timeout_s)
            except TimeoutError:
                continue  # resent with the same control id
            finally:
                self._acks.pop(message.control_id, None)
            if code == "AR" and error.startswith("207"):
                await asyncio.sleep(self.ack_timeout_s)
                continue
            if message in self.outbox:
                self.outbox.remove(message)
            self.log.kinds[message.control_id] = message.kind
            if code == "AA":
                self.log.accepted.append(message.control_id)
            else:
                self.log.refused.append((message.control_id, code, text))
            if self.faults.duplicate > 0 and code == "AA" and message.kind != "SNAPSHOT":
                self.faults.duplicate -= 1
                self.outbox.insert(0, Outgoing(message.control_id, message.text, message.kind))

    async def _received(self, writer: HL7StreamWriter, block: bytes) -> None:
        try:
            message = hl7.parse(block.decode("utf-8"))
            msh = message.segment("MSH")
            kind = str(msh[9]).split("^")
        except Exception as exc:
            log.warning("unreadable message: %s", exc)
            return
        if kind[0] == "ACK":
            msa = message.segment("MSA")
            err = ""
            with contextlib.suppress(KeyError, IndexError):
                err = str(message.segment("ERR")[3])
            future = self._acks.get(str(msa[2]))
            if future is not None and not future.done():
                future.set_result((str(msa[1]), str(msa[3]) if len(msa) > 3 else "", err))
            return
        control_id = str(msh[10])
        if kind[:2] == ["MFN", "M01"]:
            code, text = self._item_master(message)
            reply = "MFK^M01^MFK_M01"
        elif kind[:2] == ["RDS", "O13"]:
            code, text = self._notice(message)
            reply = "ACK^O13^ACK"
        else:
            code, text, reply = "AR", f"message type {'^'.join(kind)} not supported", "ACK"
        lines = [self._msh(reply, self._next_id()), f"MSA|{code}|{control_id}|{_escape(text)}"]
        await self._write(writer, ("\r".join(lines) + "\r").encode("utf-8"))

    def _item_master(self, message: Any) -> tuple[str, str]:
        mfi = message.segment("MFI")
        replace = str(mfi[3]) == "REP"
        items = {}
        for seg in message.segments("ZIM") if _has(message, "ZIM") else []:
            items[str(seg[1])] = message.unescape(str(seg[2])) if len(seg) > 2 else ""
        if replace:
            self.item_master = items
        else:
            self.item_master.update(items)
        self.log.item_masters.append(("REP" if replace else "UPD", len(items)))
        return "AA", ""

    def _notice(self, message: Any) -> tuple[str, str]:
        try:
            zpk = message.segment("ZPK")
            rxd = message.segment("RXD")
            number = int(str(zpk[3]))
            action = str(zpk[4])
            notice = int(str(zpk[6]))
            quantity = int(str(rxd[4]))
            gtin = str(rxd[2]).split("^")[0]
        except (KeyError, IndexError, ValueError) as exc:
            return "AE", f"notice unreadable: {exc}"
        pocket = self.pockets.get(number)
        if pocket is None:
            return "AE", f"ZPK-3: no pocket {number}"
        if gtin != pocket.spec.gtin:
            return "AE", f"RXD-2: {gtin} is not the product of pocket {number}"
        if notice in self._seen_notices:
            self.log.notices_repeated += 1
            return "AA", "notice already acted on"
        if action == "REFILL" and pocket.count + quantity > pocket.spec.capacity:
            return "AE", f"pocket {number} holds {pocket.count}, capacity {pocket.spec.capacity}"
        self._seen_notices.add(notice)
        self.last_notice = notice
        self.log.notices.append((notice, action, number, quantity))
        if action == "REFILL":
            pocket.count += quantity
            self._event(pocket, "REFILL", quantity, notice=notice)
        elif action == "LOCK":
            pocket.locked = True
        elif action == "UNLOCK":
            pocket.locked = False
        elif action == "SET_COUNT":
            pocket.count = quantity
        else:
            self._seen_notices.discard(notice)
            return "AE", f"ZPK-4: action {action!r} unknown"
        return "AA", ""


def _has(message: Any, segment: str) -> bool:
    return any(str(seg[0]) == segment for seg in message)


def hl7_spec(cabinet: CabinetSite) -> Hl7CabinetSpec:
    """The server's view of a cabinet of the site file."""
    pockets = [
        Hl7PocketSpec(
            p.number,
            p.gtin,
            p.sim.initial,
            p.max,
            p.sim.daily_withdrawals,
            p.sim.waste_share,
        )
        for p in cabinet.pockets
    ]
    return Hl7CabinetSpec(cabinet.name, pockets, cold=cabinet.cold)


def spec_from_site(site: SiteModel, name: str) -> Hl7CabinetSpec:
    """The cabinet `name` of a site file."""
    cabinet = site.cabinet(name)
    if cabinet is None:
        raise SystemExit(f"--cabinet: no cabinet {name!r} in the site file")
    return hl7_spec(cabinet)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--site", required=True, help="site file with the cabinet")
    parser.add_argument("--cabinet", required=True, help="name of the cabinet in the site file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=2575, help="TCP port, 0 = any free")
    parser.add_argument("--day-seconds", type=float, default=600.0, help="real seconds per day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--snapshot-interval", type=float, default=5.0, help="seconds")
    args = parser.parse_args()
    try:
        site = SiteModel.load(args.site)
    except SiteModelError as exc:
        raise SystemExit(f"{args.site}: {exc}") from None
    server = Hl7CabinetServer(
        spec_from_site(site, args.cabinet),
        host=args.host,
        port=args.port,
        time_factor=SECONDS_PER_DAY / args.day_seconds,
        seed=args.seed,
        snapshot_interval_s=args.snapshot_interval,
    )
    run(serve_until_stopped(server, lambda: f"cabinet server {args.cabinet} at {server.address}"))


if __name__ == "__main__":
    main()
