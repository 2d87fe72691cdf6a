"""Pack verification: goods-in, decommissioning at use, the retry queue, undo.

- `verify_received(pack, location)`: a serialised pack booked in is verified.
- `on_opened` / `on_dispatched` are the scan desks' `on_pack_used` hooks: the canister
  desk calls the first when a pack is opened for a packer's canister, replenishment the
  second when a pack is dispatched to a ward's cabinet. A blocked pack is refused
  there with its alert's message; otherwise the pack is decommissioned when the site's
  `verification.decommission_on` says so.
- An alert blocks the pack, records the alert for a pharmacist and (by default)
  quarantines the pack's lot in the ledger.
- During an outage a decommission stays in `verification_queue` and the scan goes
  through; `serve()` sends what is pending every `retry_interval_s`. Each serial is
  sent under one key; ALREADY_DECOMMISSIONED for a request that was already sent at
  least once is this site's own decommission whose answer was lost, not an alert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.async_ledger import AsyncLedger
from controller.gs1 import PackId
from controller.ledger import LedgerError
from controller.metrics import Metrics
from controller.scanning import ScanOutcome
from controller.verification.adapter import (
    ALREADY_DECOMMISSIONED,
    Reason,
    Verdict,
    VerificationSystem,
    VerificationUnavailable,
)
from controller.verification.store import ACTOR, VerificationStore

log = logging.getLogger("doseline.verification")

# How a use of a pack maps to the national systems' decommission reasons: a pack opened
# for a dose-packing machine is dispensed in the pharmacy, one sent to a ward supplied.
OPENED: Reason = "dispensed"
DISPATCHED: Reason = "supplied"


@dataclass(frozen=True)
class Result:
    """What became of one request: `ok`, `queued` (outage), or an alert."""

    ok: bool
    queued: bool = False
    code: str | None = None
    message: str = ""


class VerificationService:
    def __init__(
        self,
        system: VerificationSystem,
        ledger: AsyncLedger,
        metrics: Metrics,
        *,
        decommission_on: str = "both",
        retry_interval_s: float = 30.0,
        quarantine_lot_on_alert: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.system = system
        self.aledger = ledger
        self.store = VerificationStore(ledger.ledger)
        self.metrics = metrics
        self.decommission_on = decommission_on
        self.retry_interval_s = retry_interval_s
        self.quarantine_lot_on_alert = quarantine_lot_on_alert
        self.clock = clock or (lambda: datetime.now(UTC))
        self._sending: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ goods-in

    async def verify_received(self, pack: PackId, location: str | None = None) -> Result:
        """Verifies a serialised pack at goods-in. An unserialised pack is not subject
        to verification (ok). Raises VerificationUnavailable during an outage: goods-in
        decides whether to keep the pack aside until the system answers."""
        if not pack.serial:
            return Result(True)
        verdict = await self.system.verify(pack)
        if verdict.ok:
            await self.aledger.run(self.store.record_verified, pack, location, self.clock())
            return Result(True)
        await self._alert(pack, location, verdict)
        return Result(False, code=verdict.code, message=verdict.message)

    # ------------------------------------------------------------ use (scan hooks)

    async def on_opened(self, pack: PackId, location: str) -> ScanOutcome | None:
        return await self._used(pack, location, OPENED, self.decommission_on in ("opened", "both"))

    async def on_dispatched(self, pack: PackId, location: str) -> ScanOutcome | None:
        return await self._used(
            pack, location, DISPATCHED, self.decommission_on in ("dispatched", "both")
        )

    async def _used(
        self, pack: PackId, location: str, reason: Reason, decommission: bool
    ) -> ScanOutcome | None:
        if not pack.serial:
            return None
        known = await self.aledger.run(self.store.pack, pack.gtin, pack.serial)
        if known is not None and known.status == "blocked":
            return ScanOutcome(False, _refusal(pack, known.alert_code, known.alert_text))
        if not decommission:
            return None
        result = await self.decommission(pack, reason, location)
        if result.ok:
            return None
        return ScanOutcome(False, _refusal(pack, result.code, result.message))

    async def decommission(
        self, pack: PackId, reason: Reason, location: str | None = None
    ) -> Result:
        """Decommissions a pack once: queued first, then sent. During an outage the
        request stays queued (`queued`) for `serve()` to send."""
        if not pack.serial:
            return Result(True)
        row = await self.aledger.run(
            self.store.enqueue_decommission, pack, reason, location, self.clock()
        )
        if row.status == "done":
            return Result(True)  # this site decommissioned it already
        if row.status == "failed":
            return Result(False, code=row.last_error or "ALERT", message=row.last_error or "")
        return await self._send(row.key, pack, reason, location)

    async def _send(self, key: str, pack: PackId, reason: Reason, location: str | None) -> Result:
        lock = self._sending.setdefault(key, asyncio.Lock())
        async with lock:  # the scan and the retry loop never send the same key at once
            row = await self.aledger.run(self.store.queue_row, key)
            if row is None or row.status == "done":
                return Result(True)
            if row.status == "failed":
                return Result(False, code=row.last_error, message=row.last_error or "")
            sent_before = await self.aledger.run(self.store.attempt, key)
            try:
                verdict = await self.system.decommission(pack, reason)
            except VerificationUnavailable as exc:
                log.warning("decommission of %s queued: %s", key, exc)
                await self.aledger.run(self.store.failed_attempt, key, str(exc))
                await self._update_pending()
                return Result(True, queued=True, message=str(exc))
            if not verdict.ok and verdict.code == ALREADY_DECOMMISSIONED and sent_before > 0:
                # Sent before, answer lost: the system holds this site's decommission.
                log.info("decommission of %s confirmed on retry (%s)", key, verdict.message)
                verdict = Verdict.accepted()
            if verdict.ok:
                await self.aledger.run(self.store.finish, key, "done", self.clock())
                await self._update_pending()
                return Result(True)
            await self.aledger.run(self.store.finish, key, "failed", self.clock(), verdict.code)
            await self._alert(pack, location, verdict)
            await self._update_pending()
            return Result(False, code=verdict.code, message=verdict.message)

    # ------------------------------------------------------------ undo

    async def undo(self, pack: PackId, actor: str | None = None) -> Result:
        """Reverts this site's decommission of a pack (within the system's window).
        A refusal is returned, not raised, and blocks nothing: the pack stays
        decommissioned. Raises VerificationUnavailable during an outage."""
        known = await self.aledger.run(self.store.pack, pack.gtin, pack.serial or "")
        if known is None or known.status != "decommissioned":
            state = "unknown here" if known is None else known.status
            return Result(False, code="NOT_DECOMMISSIONED", message=f"pack is {state}")
        if known.decommissioned_at is None:
            return Result(
                False,
                code="NOT_SENT",
                message="its decommission is still queued: undo after it was sent",
            )
        verdict = await self.system.undo(pack)
        if not verdict.ok:
            return Result(False, code=verdict.code, message=verdict.message)
        await self.aledger.run(self.store.undone, pack, self.clock(), actor)
        return Result(True)

    # ------------------------------------------------------------ retry loop

    async def retry_pending(self) -> int:
        """Sends every pending request once; stops at the first outage. Returns how
        many were answered."""
        answered = 0
        for row in await self.aledger.run(self.store.queue, "pending"):
            known = await self.aledger.run(self.store.pack, row.gtin, row.serial)
            if known is None:
                continue
            reason: Reason = "supplied" if row.reason == "supplied" else "dispensed"
            result = await self._send(row.key, known.pack, reason, known.location)
            if result.queued:
                break
            answered += 1
        await self._update_pending()
        return answered

    async def serve(self) -> None:
        while True:
            try:
                await self.retry_pending()
            except LedgerError as exc:
                log.error("verification retry: %s", exc)
            await asyncio.sleep(self.retry_interval_s)

    async def aclose(self) -> None:
        await self.system.aclose()

    # ------------------------------------------------------------ alerts

    async def _alert(self, pack: PackId, location: str | None, verdict: Verdict) -> None:
        code = verdict.code or "ALERT"
        log.warning(
            "verification alert %s on %s/%s: %s", code, pack.gtin, pack.serial, verdict.message
        )
        await self.aledger.run(
            self.store.block, pack, location, code, verdict.message, self.clock()
        )
        self.metrics.verification_alerts.labels(code).inc()
        if self.quarantine_lot_on_alert:
            try:
                await self.aledger.set_lot_status(
                    pack.gtin,
                    pack.batch,
                    "quarantined",
                    key=f"verification:{pack.gtin}:{pack.serial}:{code}"[:200],
                    actor=ACTOR,
                    reason=f"verification alert {code} on serial {pack.serial}",
                )
            except LedgerError as exc:  # a lot the ledger does not hold
                log.warning("lot %s/%s not quarantined: %s", pack.gtin, pack.batch, exc)

    async def _update_pending(self) -> None:
        self.metrics.verification_queue_pending.set(
            await self.aledger.run(self.store.pending_count)
        )


def _refusal(pack: PackId, code: str | None, text: str | None) -> str:
    return (
        f"pack {pack.gtin} serial {pack.serial} is blocked by the verification system "
        f"({code}): {text or 'see doseline verification alerts'}"
    )
