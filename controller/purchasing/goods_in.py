"""Goods-in: a delivery booked against its order, then its serialised packs verified.

Verification runs after the booking: an alert blocks the pack and quarantines its lot
in the ledger (the verification service's rule), which needs the lot on file. During an
outage the packs stay as booked and are reported `not verified`; each is checked again
by the national system when it is decommissioned at use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime

from controller.async_ledger import AsyncLedger
from controller.gs1 import PackId
from controller.purchasing.files import DeliveryRow
from controller.purchasing.model import Receipt
from controller.purchasing.store import PurchasingStore
from controller.verification import VerificationService, VerificationUnavailable

log = logging.getLogger("doseline.purchasing")


async def receive_delivery(
    aledger: AsyncLedger,
    store: PurchasingStore,
    verification: VerificationService | None,
    number: str,
    note: str,
    rows: Sequence[DeliveryRow],
    *,
    actor: str,
    now: datetime,
    location: str,
    min_shelf_life_days: int = 0,
) -> Receipt:
    receipt = await aledger.run(
        store.receive,
        number,
        note,
        rows,
        actor=actor,
        now=now,
        location=location,
        min_shelf_life_days=min_shelf_life_days,
    )
    if verification is None or not receipt.packs:
        return receipt
    outcomes: dict[str, str] = {}
    for p in receipt.packs:
        pack = PackId(p.gtin, p.batch, p.expiry, p.serial)
        try:
            result = await verification.verify_received(pack, p.location)
        except VerificationUnavailable as exc:
            outcomes[p.serial] = f"not verified: {exc}"
            continue
        except Exception as exc:  # the delivery is booked: report, never raise
            log.error("goods-in: verification of %s/%s failed: %r", p.gtin, p.serial, exc)
            outcomes[p.serial] = f"not verified: {type(exc).__name__}: {exc}"
            continue
        outcomes[p.serial] = "verified" if result.ok else f"alert {result.code}: {result.message}"
    return dataclasses.replace(receipt, verification=outcomes)
