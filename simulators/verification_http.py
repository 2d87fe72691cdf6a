"""A national medicines verification system on loopback (EU falsified-medicines rules).

It holds a register of packs (GTIN + serial -> batch, expiry, status) and answers the
JSON API the controller's `HttpVerificationSystem` speaks:

    POST /v1/packs/verify        {gtin, serial, batch, expiry}
    POST /v1/packs/decommission  {gtin, serial, batch, expiry, reason}
    POST /v1/packs/undo          {gtin, serial, batch, expiry}

with 200 `{"ok": true}` or `{"ok": false, "code": ..., "message": ...}`. Fault knobs,
as Python calls (tests) or as control requests (standalone):

    POST /control/packs    {"packs": [{gtin, serial, batch, expiry}, ...]}   register
    POST /control/status   {gtin, serial, status}   active|recalled|unknown|decommissioned
    POST /control/outage   {"mode": "503"|"drop"|"lose_reply", "requests": N or null}
    DELETE /control/outage
    POST /control/advance  {"seconds": S}           moves the simulator's clock on
    GET  /control/counts                            decommissions carried out per serial

`drop` closes the connection without an answer; `lose_reply` carries the request out
and then drops the answer (the reply lost on the way back). `requests: null` lasts
until cleared. Minimal HTTP/1.1 (one request per connection), no controller imports.

    python -m simulators.verification_http --port 8090 [--site config/demo.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from simulators.site_model import SiteModel, SiteModelError

UNDO_WINDOW = timedelta(days=10)


@dataclass
class RegisteredPack:
    gtin: str
    serial: str
    batch: str
    expiry: date
    status: str = "active"  # active, decommissioned, recalled
    decommissioned_at: datetime | None = None
    decommissioned_by_us: bool = False


class VerificationSimulator:
    def __init__(self, *, undo_window: timedelta = UNDO_WINDOW) -> None:
        self.packs: dict[tuple[str, str], RegisteredPack] = {}
        self.undo_window = undo_window
        self.decommissions: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()  # per operation, answered or not
        # decommission requests that reached the register, per serial, whatever the
        # answer: a client that sends a serial twice shows here
        self.decommission_requests: Counter[tuple[str, str]] = Counter()
        self.outage_mode: str | None = None
        self.outage_left: int | None = None  # None: until cleared
        self.offset = timedelta()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ knobs

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def add(self, gtin: str, serial: str, batch: str, expiry: date) -> None:
        self.packs[(gtin, serial)] = RegisteredPack(gtin, serial, batch, expiry)

    def set_status(self, gtin: str, serial: str, status: str) -> None:
        """`unknown` removes the pack from the register."""
        if status == "unknown":
            self.packs.pop((gtin, serial), None)
        else:
            self.packs[(gtin, serial)].status = status

    def outage(self, mode: str = "503", requests: int | None = None) -> None:
        if mode not in ("503", "drop", "lose_reply"):
            raise ValueError(f"outage mode: {mode!r} (503, drop or lose_reply)")
        self.outage_mode, self.outage_left = mode, requests

    def clear_outage(self) -> None:
        self.outage_mode, self.outage_left = None, None

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)

    # ------------------------------------------------------------ the register

    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (str(body.get("gtin")), str(body.get("serial")))
        if operation == "decommission":
            self.decommission_requests[key] += 1
        pack = self.packs.get(key)
        if pack is None:
            return _alert("UNKNOWN_SERIAL", f"serial {key[1]} of {key[0]} is not in the register")
        if body.get("batch") != pack.batch:
            return _alert(
                "BATCH_MISMATCH",
                f"serial {pack.serial} of {pack.gtin} belongs to batch {pack.batch}, "
                f"not {body.get('batch')}",
            )
        if body.get("expiry") != pack.expiry.isoformat():
            return _alert(
                "EXPIRY_MISMATCH",
                f"serial {pack.serial} of {pack.gtin} expires {pack.expiry}, "
                f"not {body.get('expiry')}",
            )
        if pack.status == "recalled":
            return _alert("RECALLED", f"batch {pack.batch} of {pack.gtin} is recalled")
        if operation == "undo":
            return self._undo(pack)
        if pack.status == "decommissioned":
            return _alert(
                "ALREADY_DECOMMISSIONED",
                f"serial {pack.serial} of {pack.gtin} was decommissioned "
                f"{pack.decommissioned_at:%Y-%m-%d %H:%M}"
                if pack.decommissioned_at
                else f"serial {pack.serial} of {pack.gtin} is decommissioned",
            )
        if pack.expiry < self.now().date():
            return _alert("EXPIRED", f"batch {pack.batch} of {pack.gtin} expired {pack.expiry}")
        if operation == "decommission":
            pack.status = "decommissioned"
            pack.decommissioned_at = self.now()
            pack.decommissioned_by_us = True
            self.decommissions[key] += 1
        return {"ok": True}

    def _undo(self, pack: RegisteredPack) -> dict[str, Any]:
        if pack.status != "decommissioned":
            return _alert("NOT_DECOMMISSIONED", f"serial {pack.serial} of {pack.gtin} is active")
        if not pack.decommissioned_by_us or pack.decommissioned_at is None:
            return _alert(
                "UNDO_NOT_ALLOWED", f"serial {pack.serial} was decommissioned by another party"
            )
        if self.now() - pack.decommissioned_at > self.undo_window:
            return _alert(
                "UNDO_WINDOW_CLOSED",
                f"serial {pack.serial} of {pack.gtin} was decommissioned "
                f"{pack.decommissioned_at:%Y-%m-%d}: undo is allowed for "
                f"{self.undo_window.days} days",
            )
        pack.status, pack.decommissioned_at = "active", None
        return {"ok": True}

    # ------------------------------------------------------------ HTTP

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else {}
        path = path.split("?", 1)[0]
        if path.startswith("/v1/packs/"):
            operation = path.removeprefix("/v1/packs/")
            if method != "POST" or operation not in ("verify", "decommission", "undo"):
                await _respond(writer, 404, {"error": f"no such route {method} {path}"})
                return
            self.requests[operation] += 1
            mode = self._outage_now()
            if mode == "503":
                await _respond(writer, 503, {"error": "service unavailable"})
                return
            if mode == "drop":
                return
            answer = self.handle(operation, body)
            if mode == "lose_reply":
                return
            await _respond(writer, 200, answer)
            return
        await _respond(writer, *self._control(method, path, body))

    def _outage_now(self) -> str | None:
        mode = self.outage_mode
        if mode is not None and self.outage_left is not None:
            self.outage_left -= 1
            if self.outage_left <= 0:
                self.clear_outage()
        return mode

    def _control(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            if (method, path) == ("POST", "/control/packs"):
                for p in body["packs"]:
                    self.add(p["gtin"], p["serial"], p["batch"], date.fromisoformat(p["expiry"]))
                return 200, {"packs": len(self.packs)}
            if (method, path) == ("POST", "/control/status"):
                self.set_status(body["gtin"], body["serial"], body["status"])
                return 200, {"ok": True}
            if (method, path) == ("POST", "/control/outage"):
                self.outage(str(body.get("mode", "503")), body.get("requests"))
                return 200, {"ok": True}
            if (method, path) == ("DELETE", "/control/outage"):
                self.clear_outage()
                return 200, {"ok": True}
            if (method, path) == ("POST", "/control/advance"):
                self.advance(float(body["seconds"]))
                return 200, {"now": self.now().isoformat()}
            if (method, path) == ("GET", "/control/counts"):
                return 200, {f"{g}/{s}": n for (g, s), n in self.decommissions.items()}
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": f"{type(exc).__name__}: {exc}"}
        return 404, {"error": f"no such route {method} {path}"}


def _alert(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


async def _respond(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
    writer.write(
        f"HTTP/1.1 {status} {reason.get(status, 'Status')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()


def register_stock(
    sim: VerificationSimulator, site: SiteModel, packs_per_lot: int | None = None
) -> int:
    """Registers the packs of each stock lot of a site file, as their manufacturers
    would have uploaded them: serials `<batch>-0001`, ... One per pack of the lot
    (quantity / the catalogue's pack size), or `packs_per_lot` each. A lot given by
    `expires_in_days` expires that many days from today."""
    sizes = site.pack_sizes()
    today = datetime.now(UTC).date()
    n = 0
    for lot in site.stock:
        expiry = lot.expiry or today + timedelta(days=lot.expires_in_days)
        packs = packs_per_lot or -(-lot.quantity // sizes.get(lot.gtin, 100))
        for i in range(1, packs + 1):
            sim.add(lot.gtin, f"{lot.batch}-{i:04d}"[:20], lot.batch, expiry)
            n += 1
    return n


def seed_from_site(sim: VerificationSimulator, path: str, packs_per_lot: int | None) -> int:
    try:
        site = SiteModel.load(path)
    except SiteModelError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    return register_stock(sim, site, packs_per_lot)


async def _main(args: argparse.Namespace) -> None:
    sim = VerificationSimulator(undo_window=timedelta(days=args.undo_days))
    if args.site:
        print(f"registered {seed_from_site(sim, args.site, args.packs_per_lot)} packs", flush=True)
    port = await sim.start(args.host, args.port)
    print(f"verification system on http://{args.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--site", help="site file whose stock lots seed the register")
    parser.add_argument(
        "--packs-per-lot", type=int, default=None, help="default: one serial per pack of the lot"
    )
    parser.add_argument("--undo-days", type=float, default=10)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
