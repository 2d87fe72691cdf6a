"""Master data: products, locations, exemptions from the one-month obligation, events
written to the audit trail from outside the ledger, and lots (created on first delivery).
"""

from __future__ import annotations

import logging
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from controller.ledger.core import LedgerCore
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.schema import (
    EXTERNAL_KINDS,
    INTERNAL_KINDS,
    PRODUCT_CATEGORIES,
    STORAGE,
    exemptions,
    locations,
    lots,
    products,
)

log = logging.getLogger("doseline.ledger")

# Every line of every delivery looks its lot up: built once, with bind parameters.
_LOT_OF_DELIVERY = select(lots.c.id, lots.c.expiry, lots.c.purchase_price).where(
    lots.c.product_id == bindparam("product_id"), lots.c.batch == bindparam("batch")
)


class MasterData(LedgerCore):
    """What the ledger books against: products, locations, lots and exemptions."""

    def add_product(
        self,
        *,
        gtin: str,
        article: int,
        name: str,
        substance: str,
        atc: str,
        strength: str,
        form: str,
        unit: str = "tablet",
        pack_size: int = 1,
        unit_price: Decimal | float | str = 0,
        category: str = "drug",
        storage: str = "room",
        controlled_class: str | None = None,
        substitution_group: str | None = None,
        actor: str = "site-setup",
    ) -> None:
        """Adds a product, or updates its descriptive fields and price if known."""
        if category not in PRODUCT_CATEGORIES:
            raise LedgerError(f"invalid category: {category!r} (one of {PRODUCT_CATEGORIES})")
        if storage not in STORAGE:
            raise LedgerError(f"invalid storage: {storage!r} (one of {STORAGE})")
        values = {
            "gtin": gtin,
            "article": article,
            "name": name,
            "substance": substance,
            "atc": atc,
            "strength": strength,
            "form": form,
            "unit": unit,
            "pack_size": pack_size,
            "unit_price": Decimal(str(unit_price)),
            "category": category,
            "storage": storage,
            "controlled_class": controlled_class,
            "substitution_group": substitution_group,
        }
        with self._tx(actor, "product", "catalogue") as conn:
            row = conn.execute(select(products).where(products.c.gtin == gtin)).first()
            if row is None:
                conn.execute(insert(products).values(**values))
                self._note("product", gtin, None, values)
                return
            old = {k: row._mapping[k] for k in values}
            if old != values:
                conn.execute(update(products).where(products.c.id == row.id).values(**values))
                self._note("product", gtin, old, values)

    def add_location(
        self, code: str, kind: str, *, parent: str | None = None, product_gtin: str | None = None
    ) -> None:
        """Adds a location (idempotent by code). Canisters and pockets name their product."""
        if kind not in INTERNAL_KINDS + EXTERNAL_KINDS:
            raise LedgerError(f"invalid location kind: {kind!r}")
        with self._tx("site-setup", "location", "site layout") as conn:
            if self._location_id(conn, code, required=False) is not None:
                return
            values = {
                "code": code,
                "kind": kind,
                "parent_id": self._location_id(conn, parent) if parent else None,
                "product_id": self._product_id(conn, product_gtin) if product_gtin else None,
            }
            conn.execute(insert(locations).values(**values))
            self._note(
                "location", code, None, {"kind": kind, "parent": parent, "product": product_gtin}
            )

    def set_exemption(
        self,
        *,
        gtin: str,
        reason: str,
        risk_assessment: str,
        review_date: date,
        decided_by: str,
        actor: str,
        measures: str = "",
        level_days: int | None = None,
    ) -> None:
        """Exempts a product from the one-month obligation, for a documented reason
        (the site file's seed; decisions by people go through `create_exemption` and
        the rest of the lifecycle, controller/ledger/duty_scope.py)."""
        if len(reason.strip()) < 10 or len(risk_assessment.strip()) < 10:
            raise LedgerError(
                f"exemption of {gtin}: reason and risk_assessment must be written out "
                f"(got {reason!r}, {risk_assessment!r})"
            )
        with self._tx(actor, "exemption", reason) as conn:
            product_id = self._product_id(conn, gtin)
            row = conn.execute(
                select(exemptions).where(exemptions.c.product_id == product_id)
            ).first()
            new = {
                "reason": reason,
                "risk_assessment": risk_assessment,
                "review_date": review_date,
                "decided_by": decided_by,
                "measures": measures,
                "level_days": level_days,
            }
            if row is not None:
                old = {k: row._mapping[k] for k in new}
                if old == new:
                    return
                conn.execute(
                    update(exemptions)
                    .where(exemptions.c.product_id == product_id)
                    .values(**new, decided_at=self.clock())
                )
            else:
                old = None
                conn.execute(
                    insert(exemptions).values(product_id=product_id, **new, decided_at=self.clock())
                )
            self._note("exemption", gtin, old, new)

    def record_event(
        self,
        *,
        actor: str,
        action: str,
        entity: str,
        key: str,
        old: Any,
        new: Any,
        reason: str,
    ) -> None:
        """Writes a change made outside the ledger (a packing job's transition, an
        order's review) to the same hash-chained audit trail."""
        if not actor or not action or not entity or not key:
            raise LedgerError(
                f"audit event needs actor, action, entity and key: "
                f"{actor!r}, {action!r}, {entity!r}, {key!r}"
            )
        with self._tx(actor, action, reason) as _conn:
            self._note(entity, key, old, new)

    def products(self) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return [
                dict(r._mapping) for r in conn.execute(select(products).order_by(products.c.id))
            ]

    def product_by_article(self, article: int) -> dict[str, Any]:
        with self._reading() as conn:
            row = conn.execute(select(products).where(products.c.article == article)).first()
        if row is None:
            raise UnknownEntity("article", article)
        return dict(row._mapping)

    def lot(self, gtin: str, batch: str) -> dict[str, Any]:
        with self._reading() as conn:
            lot_id = self._lot_id_in(conn, gtin, batch)
            row = conn.execute(select(lots).where(lots.c.id == lot_id)).one()
        return dict(row._mapping)

    def _ensure_lot(
        self,
        conn: Connection,
        product_id: int,
        gtin: str,
        batch: str,
        expiry: date,
        unit_price: Decimal | None = None,
    ) -> int:
        """The lot's id, created on its first delivery with the purchase price given.

        A later delivery of a known lot keeps the recorded price (the first one wins:
        the lot is one purchase); a different price is logged as a warning. A lot
        recorded without a price takes the first price a delivery gives it.
        """
        row = conn.execute(_LOT_OF_DELIVERY, {"product_id": product_id, "batch": batch}).first()
        if row is not None:
            if row.expiry != expiry:
                raise LedgerError(
                    f"expiry {expiry} of batch {batch!r} of {gtin} differs from the "
                    f"recorded {row.expiry}"
                )
            if unit_price is not None:
                if row.purchase_price is None:
                    conn.execute(
                        update(lots).where(lots.c.id == row.id).values(purchase_price=unit_price)
                    )
                    self._note(
                        "lot",
                        f"{gtin}/{batch}",
                        {"purchase_price": None},
                        {"purchase_price": unit_price},
                    )
                elif Decimal(row.purchase_price) != unit_price:
                    log.warning(
                        "lot %s/%s: delivered at %s SEK per unit, recorded at %s: the "
                        "recorded purchase price is kept",
                        gtin,
                        batch,
                        unit_price,
                        row.purchase_price,
                    )
            return int(row.id)
        lot_id = int(
            conn.execute(
                insert(lots)
                .values(
                    product_id=product_id,
                    batch=batch,
                    expiry=expiry,
                    status="released",
                    purchase_price=unit_price,
                )
                .returning(lots.c.id)
            ).scalar_one()
        )
        new: dict[str, Any] = {"expiry": expiry, "status": "released"}
        if unit_price is not None:
            new["purchase_price"] = unit_price
        self._note("lot", f"{gtin}/{batch}", None, new)
        return lot_id
