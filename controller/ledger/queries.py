"""Read-only questions about stock: balances per lot, free stock first expiry first,
and movement totals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from sqlalchemy import func, select

from controller.ledger.booking import Booking, under_hold
from controller.ledger.schema import balances, locations, lots, movements, products
from controller.ledger.views import LotStock


class Queries(Booking):
    """Stock on hand and free, and how much has moved."""

    def stock(self, *, location: str | None = None, gtin: str | None = None) -> list[LotStock]:
        """Balances per (location, lot), optionally for one location or product."""
        query = (
            select(
                locations.c.code,
                products.c.gtin,
                lots.c.batch,
                lots.c.expiry,
                lots.c.status,
                balances.c.on_hand,
                balances.c.reserved,
                under_hold().label("held"),
            )
            .join(locations, locations.c.id == balances.c.location_id)
            .join(lots, lots.c.id == balances.c.lot_id)
            .join(products, products.c.id == lots.c.product_id)
            .where(balances.c.on_hand > 0)
            .order_by(locations.c.code, products.c.gtin, lots.c.expiry)
        )
        if location is not None:
            query = query.where(locations.c.code == location)
        if gtin is not None:
            query = query.where(products.c.gtin == gtin)
        with self._reading() as conn:
            return [
                LotStock(
                    location=r.code,
                    gtin=r.gtin,
                    batch=r.batch,
                    expiry=r.expiry,
                    status=r.status,
                    on_hand=r.on_hand,
                    reserved=r.reserved,
                    held=bool(r.held),
                )
                for r in conn.execute(query)
            ]

    def available(self, location: str, gtin: str) -> int:
        """Free stock of a product at a location (usable lots only)."""
        with self._reading() as conn:
            loc_id = self._internal_location_id(conn, location)
            product_id = self._product_id(conn, gtin)
            return sum(a for _, _, a in self._fefo_candidates(conn, product_id, [loc_id]))

    def free_lots(self, gtin: str, locations_: Sequence[str]) -> list[tuple[str, date, int]]:
        """(batch, expiry, free quantity) of the usable lots of a product over some
        locations, first expiry first: what a single-lot reservation can choose from."""
        with self._reading() as conn:
            loc_ids = [self._internal_location_id(conn, code) for code in locations_]
            product_id = self._product_id(conn, gtin)
            free: dict[int, int] = {}
            for _, lot_id, quantity in self._fefo_candidates(conn, product_id, loc_ids):
                free[lot_id] = free.get(lot_id, 0) + quantity
            if not free:
                return []
            rows = {
                int(r.id): (r.batch, r.expiry)
                for r in conn.execute(
                    select(lots.c.id, lots.c.batch, lots.c.expiry).where(lots.c.id.in_(list(free)))
                )
            }
        # dicts keep insertion order, and the candidates came first expiry first
        return [(rows[lot_id][0], rows[lot_id][1], qty) for lot_id, qty in free.items()]

    def on_hand(self, location: str, gtin: str) -> int:
        return sum(s.on_hand for s in self.stock(location=location, gtin=gtin))

    def movement_count(self, kind: str | None = None) -> int:
        query = select(func.count()).select_from(movements)
        if kind is not None:
            query = query.where(movements.c.kind == kind)
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def moved_quantity(self, kind: str) -> int:
        with self._reading() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(movements.c.quantity), 0)).where(
                        movements.c.kind == kind
                    )
                ).scalar_one()
            )
