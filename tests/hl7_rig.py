"""A controller with one cabinet behind the HL7 cabinet-server simulator, for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from controller.app import Controller
from controller.cabinets.hl7_listener import Hl7CabinetListener
from controller.cabinets.poller import pocket_location
from controller.config import parse_site
from simulators.cabinet_hl7 import Hl7CabinetServer, Hl7CabinetSpec, Hl7PocketSpec, SimTls
from tests.sites import METO, PARA, site_dict

TODAY = datetime.now(UTC).date()
CABINET = "CAB1"


def make_server(
    *, cold: bool = False, tls: SimTls | None = None, **options: Any
) -> Hl7CabinetServer:
    spec = Hl7CabinetSpec(
        CABINET,
        [Hl7PocketSpec(1, PARA, 12, 20), Hl7PocketSpec(2, METO, 8, 10)],
        cold=cold,
    )
    options.setdefault("snapshot_interval_s", 0.2)
    options.setdefault("ack_timeout_s", 0.3)
    return Hl7CabinetServer(spec, tls=tls, **options)


def make_controller(
    server: Hl7CabinetServer,
    ledger_url: str,
    *,
    scanner_address: str | None = None,
    cold: bool = False,
    tls: dict[str, str] | None = None,
) -> Controller:
    raw = site_dict(ledger_url=ledger_url)
    raw["packers"] = []
    raw["scanners"] = (
        [{"name": "SC1", "address": scanner_address}] if scanner_address is not None else []
    )
    cabinet = raw["cabinets"][0]
    cabinet.update(driver="hl7_mllp", address=server.address, poll_interval_s=0.2, cold=cold)
    if tls is not None:
        cabinet["tls"] = tls
    return Controller(parse_site(raw), ledger_url=ledger_url)


def listener(controller: Controller) -> Hl7CabinetListener:
    found = controller.pollers[CABINET]
    assert isinstance(found, Hl7CabinetListener)
    return found


def on_hand(controller: Controller, pocket: int, gtin: str) -> int:
    return controller.ledger.on_hand(pocket_location(CABINET, pocket), gtin)


async def until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 10.0
) -> None:
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def settle(controller: Controller, server: Hl7CabinetServer) -> None:
    """Every message the server holds is acknowledged, and a snapshot taken after the
    last event has been reconciled."""
    await server.wait_idle()
    seen = listener(controller).snapshots
    await until(lambda: listener(controller).snapshots >= seen + 2, "two more snapshots")
    await server.wait_idle()


def discrepancies(controller: Controller) -> set[tuple[str, int, int]]:
    return {(d.source, d.device_value, d.ledger_value) for d in controller.ledger.discrepancies()}
