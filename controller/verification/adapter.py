"""The national medicines verification system, as the controller sees it.

Under the EU falsified-medicines rules (Delegated Regulation (EU) 2016/161) every
prescription pack carries a unique identifier: GTIN, serial number, batch and expiry
in a GS1 DataMatrix. A pharmacy verifies a pack against the national system and
decommissions it when the pack is supplied: for a hospital, when it is opened for a
dose-packing machine or dispatched to a ward. A decommission can be undone within a
window (10 days under the Regulation); the system decides.

`VerificationSystem` is the interface; `HttpVerificationSystem` speaks the JSON API
of the bundled simulator (`simulators/verification_http.py`, docs/verification.md).
An adapter for a real national system implements the same three calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from controller.gs1 import PackId

Reason = Literal["dispensed", "supplied"]

# Alert codes (docs/verification.md): what the system says about a pack it refuses.
UNKNOWN_SERIAL = "UNKNOWN_SERIAL"  # no such GTIN + serial was ever uploaded
ALREADY_DECOMMISSIONED = "ALREADY_DECOMMISSIONED"  # someone decommissioned it already
RECALLED = "RECALLED"  # the batch (or this pack) is recalled, withdrawn or stolen
EXPIRED = "EXPIRED"  # past its expiry date
BATCH_MISMATCH = "BATCH_MISMATCH"  # the serial belongs to another batch
EXPIRY_MISMATCH = "EXPIRY_MISMATCH"  # the serial belongs to another expiry date
UNDO_WINDOW_CLOSED = "UNDO_WINDOW_CLOSED"  # undo: the window has passed
NOT_DECOMMISSIONED = "NOT_DECOMMISSIONED"  # undo: the pack is active, nothing to undo
UNDO_NOT_ALLOWED = "UNDO_NOT_ALLOWED"  # undo: decommissioned by another party
ALERT_CODES = (
    UNKNOWN_SERIAL,
    ALREADY_DECOMMISSIONED,
    RECALLED,
    EXPIRED,
    BATCH_MISMATCH,
    EXPIRY_MISMATCH,
    UNDO_WINDOW_CLOSED,
    NOT_DECOMMISSIONED,
    UNDO_NOT_ALLOWED,
)


class VerificationUnavailable(Exception):
    """The system did not answer (outage, timeout, dropped connection): the request
    may or may not have been carried out."""


class VerificationError(Exception):
    """A pack that cannot be sent at all (no serial number)."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    code: str | None = None
    message: str = ""

    @classmethod
    def accepted(cls) -> Verdict:
        return cls(True)

    @classmethod
    def alert(cls, code: str, message: str) -> Verdict:
        return cls(False, code, message)


class VerificationSystem(Protocol):
    async def verify(self, pack: PackId) -> Verdict: ...

    async def decommission(self, pack: PackId, reason: Reason) -> Verdict: ...

    async def undo(self, pack: PackId) -> Verdict: ...

    async def aclose(self) -> None: ...


def pack_body(pack: PackId) -> dict[str, str]:
    if not pack.serial:
        raise VerificationError(f"pack {pack.gtin} batch {pack.batch} has no serial number (21)")
    return {
        "gtin": pack.gtin,
        "serial": pack.serial,
        "batch": pack.batch,
        "expiry": pack.expiry.isoformat(),
    }


class HttpVerificationSystem:
    """JSON over HTTP: `POST {base_url}/v1/packs/{verify|decommission|undo}` with the
    pack's identifier; 200 with `{"ok": true}` or `{"ok": false, "code", "message"}`.
    Any other status, a timeout or a dropped connection is `VerificationUnavailable`."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def verify(self, pack: PackId) -> Verdict:
        return await self._post("verify", pack_body(pack))

    async def decommission(self, pack: PackId, reason: Reason) -> Verdict:
        return await self._post("decommission", {**pack_body(pack), "reason": reason})

    async def undo(self, pack: PackId) -> Verdict:
        return await self._post("undo", pack_body(pack))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, operation: str, body: dict[str, str]) -> Verdict:
        try:
            response = await self._client.post(f"/v1/packs/{operation}", json=body)
        except httpx.HTTPError as exc:
            raise VerificationUnavailable(
                f"verification system {self.base_url}: {operation}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code != 200:
            raise VerificationUnavailable(
                f"verification system {self.base_url}: {operation}: HTTP {response.status_code}"
            )
        try:
            answer = response.json()
            if answer.get("ok") is True:
                return Verdict.accepted()
            return Verdict.alert(str(answer["code"]), str(answer.get("message", "")))
        except (ValueError, KeyError, AttributeError) as exc:
            raise VerificationUnavailable(
                f"verification system {self.base_url}: {operation}: unreadable answer "
                f"{response.text[:100]!r}"
            ) from exc
