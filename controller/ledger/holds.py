"""Location holds and stock discrepancies: stock a pharmacist must decide about.

A hold quarantines what is on hand at one location (a cabinet that lost its cooling)
until it is released or wasted; a discrepancy records that a device or a count disagreed
with the ledger until someone resolves it. Each is closed once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from controller.ledger.booking import under_hold
from controller.ledger.core import WASTE
from controller.ledger.errors import DiscrepancyClosed, HoldClosed, LedgerError, UnknownEntity
from controller.ledger.reservations import Reservations
from controller.ledger.schema import (
    DISCREPANCY_STATUSES,
    HOLD_STATUSES,
    INTERNAL_KINDS,
    balances,
    locations,
    lots,
    products,
    stock_discrepancies,
    stock_holds,
)
from controller.ledger.views import (
    DiscrepancyView,
    HoldView,
    check_actor,
    check_waste_reason,
    required_text,
    whole_count,
)

MAX_HOLD_KEY = 190  # a hold's rows are keyed key#n within the 200 characters of a key


class Holds(Reservations):
    """Location holds and discrepancies; a hold moves the reservations off its stock."""

    # ------------------------------------------------------------------ location holds

    def hold_location(self, key: str, location: str, *, reason: str, actor: str) -> list[HoldView]:
        """Quarantines the stock at one location (and the locations under it): every lot
        on hand there that is not held yet. The same lots elsewhere stay usable.

        Held stock is not reserved, transferred or counted as available until a
        pharmacist releases or wastes it; open reservations on it are moved to other
        stock, or shrink, as for a quarantined lot. Consumption booked there still goes
        through: it is what a cabinet's counter says happened. A repeat with the same
        key returns the same holds.
        """
        reason = required_text("reason", reason, 300)
        check_actor(actor)
        if len(key) > MAX_HOLD_KEY:
            raise LedgerError(
                f"invalid idempotency key: {key!r} (at most {MAX_HOLD_KEY} characters for a "
                "hold: each held lot is stored as key#n)"
            )

        def run(conn: Connection) -> dict[str, Any]:
            loc_ids = self._subtree(conn, location)
            rows = self._unheld_stock(conn, loc_ids)
            if conn.dialect.name == "postgresql":
                # Lock the lots: a reservation allocating from them finishes first (and
                # its lines are then moved below), or waits and sees the holds; a
                # concurrent hold of the same stock waits and finds it held.
                locked: set[int] = set()
                while wanted := sorted({r.lot_id for r in rows} - locked):
                    conn.execute(
                        select(lots.c.id)
                        .where(lots.c.id.in_(wanted))
                        .order_by(lots.c.id)
                        .with_for_update()
                    )
                    locked.update(wanted)
                    rows = self._unheld_stock(conn, loc_ids)
            now = self.clock()
            ids: list[int] = []
            moved = released = 0
            for number, row in enumerate(rows, start=1):
                hold_id = conn.execute(
                    insert(stock_holds)
                    .values(
                        key=f"{key}#{number}",
                        location_id=row.location_id,
                        lot_id=row.lot_id,
                        quantity=row.on_hand,
                        reason=reason,
                        raised_at=now,
                        raised_by=actor,
                        status="held",
                    )
                    .returning(stock_holds.c.id)
                ).scalar_one()
                ids.append(int(hold_id))
                self._note(
                    "hold",
                    str(hold_id),
                    None,
                    {
                        "location": self._location_name(conn, row.location_id),
                        "lot": self._lot_name(conn, row.lot_id),
                        "quantity": int(row.on_hand),
                        "reason": reason,
                        "status": "held",
                    },
                )
            for row in rows:
                if row.reserved > 0:
                    m, r = self._reallocate(conn, row.location_id, row.lot_id, None)
                    moved += m
                    released += r
            return {"holds": ids, "moved": moved, "released": released}

        result = self._run(key, "hold", run, actor, reason)
        return self._hold_views([int(i) for i in result["holds"]])

    def release_hold(self, hold_id: int, *, actor: str, note: str) -> HoldView:
        """A pharmacist's decision that held stock is fit for use: it is available again."""
        note = required_text("note", note, 300)
        check_actor(actor)
        with self._tx(actor, "hold-release", note) as conn:
            self._resolve_hold(conn, hold_id, "released", actor, note)
        return self._hold_views([hold_id])[0]

    def waste_hold(
        self,
        key: str,
        hold_id: int,
        *,
        actor: str,
        note: str,
        reason_code: str = "temperature",
    ) -> HoldView:
        """A pharmacist's decision that held stock is unfit: all of the lot still on hand
        at the location is booked to `WASTE`, and the hold is closed as wasted."""
        note = required_text("note", note, 300)
        check_actor(actor)
        check_waste_reason(reason_code)

        def run(conn: Connection) -> dict[str, Any]:
            loc_id, lot_id = self._resolve_hold(conn, hold_id, "wasted", actor, note, key)
            reserved = conn.execute(
                select(balances.c.reserved).where(
                    balances.c.location_id == loc_id, balances.c.lot_id == lot_id
                )
            ).scalar()
            if reserved:
                self._reallocate(conn, loc_id, lot_id, None)
            on_hand = conn.execute(
                select(balances.c.on_hand).where(
                    balances.c.location_id == loc_id, balances.c.lot_id == lot_id
                )
            ).scalar()
            took = self._take(conn, loc_id, lot_id, int(on_hand)) if on_hand else 0
            if took == 0:
                raise LedgerError(
                    f"hold {hold_id}: nothing of {self._lot_name(conn, lot_id)} is left at "
                    f"{self._location_name(conn, loc_id)} to waste; release the hold instead"
                )
            waste_id = self._location_id(conn, WASTE)
            self._book(conn, key, "waste", lot_id, loc_id, waste_id, took, reason_code=reason_code)
            return {"hold": hold_id, "quantity": took}

        result = self._run(key, "hold-waste", run, actor, note)
        return self._hold_views([int(result["hold"])])[0]

    def holds(self, *, location: str | None = None, status: str | None = "held") -> list[HoldView]:
        """Holds, oldest first; `location` includes the locations under it, and a
        `status` of None lists every hold."""
        if status is not None and status not in HOLD_STATUSES:
            raise LedgerError(f"invalid status: {status!r} (one of {HOLD_STATUSES} or None)")
        with self._reading() as conn:
            query = self._hold_query()
            if status is not None:
                query = query.where(stock_holds.c.status == status)
            if location is not None:
                query = query.where(stock_holds.c.location_id.in_(self._subtree(conn, location)))
            return [HoldView(*row) for row in conn.execute(query)]

    def _hold_views(self, ids: Sequence[int]) -> list[HoldView]:
        if not ids:
            return []
        with self._reading() as conn:
            rows = conn.execute(self._hold_query().where(stock_holds.c.id.in_(list(ids))))
            views = {view.id: view for view in (HoldView(*row) for row in rows)}
        missing = [i for i in ids if i not in views]
        if missing:
            raise UnknownEntity("hold", missing[0])
        return [views[i] for i in ids]

    @staticmethod
    def _hold_query() -> Any:
        return (
            select(
                stock_holds.c.id,
                stock_holds.c.key,
                locations.c.code,
                products.c.gtin,
                lots.c.batch,
                lots.c.expiry,
                stock_holds.c.quantity,
                func.coalesce(balances.c.on_hand, 0),
                stock_holds.c.reason,
                stock_holds.c.status,
                stock_holds.c.raised_at,
                stock_holds.c.raised_by,
                stock_holds.c.resolved_at,
                stock_holds.c.resolved_by,
                stock_holds.c.resolution_note,
            )
            .join(locations, locations.c.id == stock_holds.c.location_id)
            .join(lots, lots.c.id == stock_holds.c.lot_id)
            .join(products, products.c.id == lots.c.product_id)
            .outerjoin(
                balances,
                (balances.c.location_id == stock_holds.c.location_id)
                & (balances.c.lot_id == stock_holds.c.lot_id),
            )
            .order_by(stock_holds.c.id)
        )

    @staticmethod
    def _unheld_stock(conn: Connection, loc_ids: Sequence[int]) -> list[Any]:
        return list(
            conn.execute(
                select(
                    balances.c.location_id,
                    balances.c.lot_id,
                    balances.c.on_hand,
                    balances.c.reserved,
                )
                .where(
                    balances.c.location_id.in_(list(loc_ids)), balances.c.on_hand > 0, ~under_hold()
                )
                .order_by(balances.c.location_id, balances.c.lot_id)
            ).all()
        )

    def _resolve_hold(
        self,
        conn: Connection,
        hold_id: int,
        status: str,
        actor: str,
        note: str,
        waste_key: str | None = None,
    ) -> tuple[int, int]:
        """Closes an open hold (only once: the UPDATE checks that it is still held);
        returns its (location, lot)."""
        row = conn.execute(
            update(stock_holds)
            .where(stock_holds.c.id == hold_id, stock_holds.c.status == "held")
            .values(
                status=status,
                resolved_at=self.clock(),
                resolved_by=actor,
                resolution_note=note,
                waste_key=waste_key,
            )
            .returning(stock_holds.c.location_id, stock_holds.c.lot_id)
        ).first()
        if row is None:
            current = conn.execute(
                select(stock_holds.c.status).where(stock_holds.c.id == hold_id)
            ).scalar()
            if current is None:
                raise UnknownEntity("hold", hold_id)
            raise HoldClosed(hold_id, str(current))
        self._note("hold", str(hold_id), {"status": "held"}, {"status": status, "note": note})
        return int(row.location_id), int(row.lot_id)

    def _subtree(self, conn: Connection, code: str) -> list[int]:
        """A stock-keeping location and every one under it (a cabinet and its pockets)."""
        root = self._internal_location_id(conn, code)
        children: dict[int, list[int]] = defaultdict(list)
        for row in conn.execute(
            select(locations.c.id, locations.c.parent_id).where(
                locations.c.parent_id.is_not(None), locations.c.kind.in_(INTERNAL_KINDS)
            )
        ):
            children[int(row.parent_id)].append(int(row.id))
        found, todo = [root], [root]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.append(child)
                    todo.append(child)
        return found

    # ------------------------------------------------------------------ discrepancies

    def raise_discrepancy(
        self,
        key: str,
        location: str,
        gtin: str,
        *,
        source: str,
        device_value: int,
        ledger_value: int,
        detail: str,
        actor: str,
    ) -> DiscrepancyView:
        """Records that a device (or a count) disagrees with the ledger, for an operator
        to look at; the ledger's balances are not changed by it. Idempotent by key."""
        source = required_text("source", source, 20)
        detail = required_text("detail", detail, 300)
        check_actor(actor)
        whole_count("device_value", device_value)
        whole_count("ledger_value", ledger_value)

        def run(conn: Connection) -> dict[str, Any]:
            loc_id = self._internal_location_id(conn, location)
            product_id = self._product_id(conn, gtin)
            values = {
                "source": source,
                "device_value": device_value,
                "ledger_value": ledger_value,
                "difference": device_value - ledger_value,
                "detail": detail,
            }
            found_id = conn.execute(
                insert(stock_discrepancies)
                .values(
                    key=key,
                    location_id=loc_id,
                    product_id=product_id,
                    raised_at=self.clock(),
                    raised_by=actor,
                    status="open",
                    **values,
                )
                .returning(stock_discrepancies.c.id)
            ).scalar_one()
            self._note(
                "discrepancy",
                str(found_id),
                None,
                {"location": location, "gtin": gtin, "status": "open", **values},
            )
            return {"discrepancy": int(found_id)}

        result = self._run(key, "discrepancy", run, actor, detail)
        return self._discrepancy_views([int(result["discrepancy"])])[0]

    def resolve_discrepancy(self, discrepancy_id: int, *, actor: str, note: str) -> DiscrepancyView:
        """Closes a discrepancy with what was found or done about it (once)."""
        note = required_text("note", note, 300)
        check_actor(actor)
        with self._tx(actor, "discrepancy-resolve", note) as conn:
            done = conn.execute(
                update(stock_discrepancies)
                .where(
                    stock_discrepancies.c.id == discrepancy_id,
                    stock_discrepancies.c.status == "open",
                )
                .values(
                    status="resolved",
                    resolved_at=self.clock(),
                    resolved_by=actor,
                    resolution_note=note,
                )
            ).rowcount
            if done != 1:
                current = conn.execute(
                    select(stock_discrepancies.c.status).where(
                        stock_discrepancies.c.id == discrepancy_id
                    )
                ).scalar()
                if current is None:
                    raise UnknownEntity("discrepancy", discrepancy_id)
                raise DiscrepancyClosed(discrepancy_id, str(current))
            self._note(
                "discrepancy",
                str(discrepancy_id),
                {"status": "open"},
                {"status": "resolved", "note": note},
            )
        return self._discrepancy_views([discrepancy_id])[0]

    def discrepancies(
        self, *, status: str | None = "open", location: str | None = None
    ) -> list[DiscrepancyView]:
        """Discrepancies, oldest first; `location` includes the locations under it, and
        a `status` of None lists every one."""
        if status is not None and status not in DISCREPANCY_STATUSES:
            raise LedgerError(f"invalid status: {status!r} (one of {DISCREPANCY_STATUSES} or None)")
        with self._reading() as conn:
            query = self._discrepancy_query()
            if status is not None:
                query = query.where(stock_discrepancies.c.status == status)
            if location is not None:
                query = query.where(
                    stock_discrepancies.c.location_id.in_(self._subtree(conn, location))
                )
            return [DiscrepancyView(*row) for row in conn.execute(query)]

    def open_discrepancy_count(self) -> int:
        with self._reading() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(stock_discrepancies)
                    .where(stock_discrepancies.c.status == "open")
                ).scalar_one()
            )

    def _discrepancy_views(self, ids: Sequence[int]) -> list[DiscrepancyView]:
        with self._reading() as conn:
            rows = conn.execute(
                self._discrepancy_query().where(stock_discrepancies.c.id.in_(list(ids)))
            )
            views = {view.id: view for view in (DiscrepancyView(*row) for row in rows)}
        missing = [i for i in ids if i not in views]
        if missing:
            raise UnknownEntity("discrepancy", missing[0])
        return [views[i] for i in ids]

    @staticmethod
    def _discrepancy_query() -> Any:
        d = stock_discrepancies
        return (
            select(
                d.c.id,
                d.c.key,
                locations.c.code,
                products.c.gtin,
                d.c.source,
                d.c.device_value,
                d.c.ledger_value,
                d.c.difference,
                d.c.detail,
                d.c.status,
                d.c.raised_at,
                d.c.raised_by,
                d.c.resolved_at,
                d.c.resolved_by,
                d.c.resolution_note,
            )
            .join(locations, locations.c.id == d.c.location_id)
            .join(products, products.c.id == d.c.product_id)
            .order_by(d.c.id)
        )
