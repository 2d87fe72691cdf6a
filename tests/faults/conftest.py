"""Fixtures and checks shared by the fault suite.

Every test runs a real `Controller` against the bundled simulators over loopback
sockets, with a `FaultProxy` (tests/faults/proxy.py) in the link where the fault is a
network one. What every test checks after the fault clears is here, once:
`assert_ledger_sound` (invariants, no negative stock, no stale reservation),
`sample` (a metric), `log_lines` (what was logged, to check "once per failure") and
`wait_for` (bounded waiting that returns the time it took).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime

import pytest

from controller.app import Controller
from controller.ledger import verify_ledger

# The same leak check and address-space cache as the integration tests.
from tests.integration.conftest import address_space_cache, no_leaked_tasks

__all__ = ["address_space_cache", "no_leaked_tasks"]

TODAY = datetime.now(UTC).date()


@pytest.fixture(autouse=True)
def no_service_died(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No controller service (a packer runner, a poller, replenishment...) may die of a
    fault: `Controller` logs such a death as "service ... died"."""
    yield
    died = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.name == "doseline.controller" and " died: " in r.getMessage()
    ]
    assert died == []


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout_s: float,
    what: str,
    *,
    every_s: float = 0.02,
) -> float:
    """Waits until `condition` holds; returns the seconds it took (fails after timeout)."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(every_s)


def sample(controller: Controller, name: str, **labels: str) -> float:
    """A metric's value now (0 for a series that does not exist yet)."""
    value = controller.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def log_lines(
    caplog: pytest.LogCaptureFixture, fragment: str, *, level: int = logging.DEBUG
) -> list[str]:
    """Messages logged at `level` or above that contain `fragment`."""
    return [
        r.getMessage() for r in caplog.records if r.levelno >= level and fragment in r.getMessage()
    ]


def assert_ledger_sound(
    controller: Controller, *, open_ok: Iterable[str] = (), now: datetime | None = None
) -> None:
    """The ledger's invariants hold (balances, audit chain, nothing negative), and every
    reservation still open is live work: its key starts with one of `open_ok` and its
    timeout has not passed."""
    led = controller.ledger
    assert verify_ledger(led.engine) == []
    negative = [s for s in led.stock() if s.on_hand < 0 or s.reserved < 0 or s.available < 0]
    assert negative == []
    allowed = tuple(open_ok)
    moment = now or datetime.now(UTC)
    for key, purpose in led.open_reservations():
        assert allowed and key.startswith(allowed), f"reservation left open: {key} ({purpose})"
        expires = led.reservation(key).expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        assert expires > moment, f"reservation {key} open past its timeout ({expires})"


def report(name: str, **seconds: float) -> None:
    """Prints observed recovery times (`pytest -s tests/faults | grep RECOVERY`)."""
    shown = ", ".join(f"{k}={v:.2f}s" for k, v in seconds.items())
    print(f"\nRECOVERY {name}: {shown}")
