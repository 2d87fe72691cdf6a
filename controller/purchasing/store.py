"""Suppliers, purchase orders and deliveries in the ledger's database.

Every change is one audited transaction on the ledger's hash-chained trail. Orders are
made from the order proposal inside the transaction that writes them, with the
suppliers' rows locked, so two buyers at once cannot both order the same gap. A
delivery's rows and its receive movements are one transaction (`Ledger.receive_many`
with `within`), keyed `delivery:<order>:<note>`: a delivery note is booked once.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from controller.ledger import Ledger
from controller.ledger.ledger import DeliveryLine
from controller.ledger.reports import order_proposal_on
from controller.ledger.schema import (
    INTERNAL_KINDS,
    balances,
    deliveries,
    delivery_lines,
    locations,
    lots,
    products,
    purchase_order_lines,
    purchase_orders,
    supplier_products,
    suppliers,
)
from controller.purchasing.files import DeliveryRow
from controller.purchasing.matching import LinePlan, ProductInfo, match_delivery
from controller.purchasing.model import (
    LineOutcome,
    OrderLine,
    PurchaseOrder,
    PurchasingError,
    Receipt,
    ReceivedPack,
    Substitute,
    SupplierReliability,
)

SETUP_ACTOR = "site-setup"
MAX_NOTE = 40


@dataclass(frozen=True)
class SupplierRow:
    code: str
    name: str
    lead_time_days: int
    products: int


class PurchasingStore:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # ------------------------------------------------------------ master data

    def sync_suppliers(
        self, listed: Iterable[tuple[str, str, int]], assignments: dict[str, str | None]
    ) -> None:
        """The site file's suppliers (code, name, lead time) and each product's
        supplier (gtin -> code or None). Idempotent; a change is audited."""
        listed = list(listed)
        with self.ledger.audited(SETUP_ACTOR, "suppliers", "site file") as c:
            known = {r.code: r for r in c.execute(select(suppliers))}
            for code, name, lead in listed:
                row = known.get(code)
                values = {"code": code, "name": name, "lead_time_days": lead, "active": True}
                if row is None:
                    c.execute(insert(suppliers).values(**values))
                    self.ledger.note("supplier", code, None, values)
                elif (row.name, row.lead_time_days, bool(row.active)) != (name, lead, True):
                    c.execute(update(suppliers).where(suppliers.c.id == row.id).values(**values))
                    self.ledger.note(
                        "supplier", code, {"name": row.name, "lead": row.lead_time_days}, values
                    )
            codes = {code for code, _n, _l in listed}
            for code, row in known.items():
                if code not in codes and row.active:
                    c.execute(
                        update(suppliers).where(suppliers.c.id == row.id).values(active=False)
                    )
                    self.ledger.note("supplier", code, {"active": True}, {"active": False})
            ids = {r.code: r.id for r in c.execute(select(suppliers.c.code, suppliers.c.id))}
            pids = {
                r.gtin: r.id
                for r in c.execute(
                    select(products.c.gtin, products.c.id).where(
                        products.c.gtin.in_(list(assignments))
                    )
                )
            }
            current = {r.product_id: r.supplier_id for r in c.execute(select(supplier_products))}
            for gtin, assigned in assignments.items():
                pid = pids.get(gtin)
                if pid is None:
                    continue
                want: int | None = ids[assigned] if assigned is not None else None
                have = current.get(pid)
                if want == have:
                    continue
                if have is None:
                    c.execute(insert(supplier_products).values(product_id=pid, supplier_id=want))
                elif want is None:
                    c.execute(
                        supplier_products.delete().where(supplier_products.c.product_id == pid)
                    )
                else:
                    c.execute(
                        update(supplier_products)
                        .where(supplier_products.c.product_id == pid)
                        .values(supplier_id=want)
                    )
                self.ledger.note("product_supplier", gtin, have, assigned)

    def suppliers(self) -> list[SupplierRow]:
        with self.ledger.engine.connect() as c:
            counts: dict[int, int] = dict(
                c.execute(
                    select(supplier_products.c.supplier_id, func.count()).group_by(
                        supplier_products.c.supplier_id
                    )
                ).all()
            )
            rows = c.execute(
                select(suppliers).where(suppliers.c.active.is_(True)).order_by(suppliers.c.code)
            )
            return [
                SupplierRow(r.code, r.name, r.lead_time_days, int(counts.get(r.id, 0)))
                for r in rows
            ]

    # ------------------------------------------------------------ orders

    def create_orders(
        self,
        *,
        now: datetime,
        actor: str,
        target_days: int = 30,
        supplier: str | None = None,
        note: str | None = None,
    ) -> tuple[list[PurchaseOrder], list[str]]:
        """Purchase orders, one per supplier, for what the order proposal says is
        missing (net of what is already on order). Returns the orders and the GTINs
        the proposal wanted but that have no supplier on file."""
        created: list[str] = []
        unassigned: list[str] = []
        with self.ledger.audited(actor, "purchase orders", note or "order proposal") as c:
            locked = select(suppliers.c.id, suppliers.c.code, suppliers.c.lead_time_days)
            rows = c.execute(locked.where(suppliers.c.active.is_(True)).with_for_update()).all()
            by_code = {r.code: r for r in rows}
            if supplier is not None and supplier not in by_code:
                raise PurchasingError([f"supplier: {supplier!r} is not a listed supplier"])
            proposal = order_proposal_on(c, now=now, target_days=target_days)
            per_supplier: dict[str, list[Any]] = defaultdict(list)
            for row in proposal.rows:
                if row.packs <= 0:
                    continue
                if row.supplier is None:
                    unassigned.append(row.gtin)
                elif supplier is None or row.supplier == supplier:
                    per_supplier[row.supplier].append(row)
            wanted = {
                code: [(row.gtin, row.packs, row.pack_size, row.order_units) for row in rows_]
                for code, rows_ in per_supplier.items()
            }
            created = self._insert_orders(c, wanted, by_code, now=now, actor=actor, note=note)
        return [self.order(n) for n in created], unassigned

    def order_products(
        self, items: Sequence[tuple[str, int]], *, now: datetime, actor: str, note: str
    ) -> list[str]:
        """Purchase orders for named products and packs (a ward's line for a product the
        store does not keep), one per supplier. A product without a supplier is refused."""
        with self.ledger.audited(actor, "purchase orders", note) as c:
            rows = c.execute(
                select(suppliers.c.id, suppliers.c.code, suppliers.c.lead_time_days)
                .where(suppliers.c.active.is_(True))
                .with_for_update()
            ).all()
            by_code = {r.code: r for r in rows}
            catalogue = _catalogue(c)
            wanted: dict[str, list[tuple[str, int, int, int]]] = defaultdict(list)
            for i, (gtin, packs) in enumerate(items):
                info = catalogue.get(gtin)
                if info is None:
                    raise PurchasingError([f"items[{i}].gtin: {gtin!r} is not in the catalogue"])
                code = self._supplier_of(c, gtin)
                if code is None or code not in by_code:
                    raise PurchasingError([f"items[{i}].gtin: {gtin!r} has no supplier on file"])
                wanted[code].append((gtin, packs, info.pack_size, packs * info.pack_size))
            return self._insert_orders(c, wanted, by_code, now=now, actor=actor, note=note)

    @staticmethod
    def _supplier_of(c: Connection, gtin: str) -> str | None:
        row = c.execute(
            select(suppliers.c.code)
            .join(supplier_products, supplier_products.c.supplier_id == suppliers.c.id)
            .join(products, products.c.id == supplier_products.c.product_id)
            .where(products.c.gtin == gtin)
        ).first()
        return None if row is None else str(row.code)

    def _insert_orders(
        self,
        c: Connection,
        wanted: dict[str, list[tuple[str, int, int, int]]],
        by_code: dict[str, Any],
        *,
        now: datetime,
        actor: str,
        note: str | None,
    ) -> list[str]:
        """Writes one order per supplier for (gtin, packs, pack size, units) lines."""
        created: list[str] = []
        pids = dict(c.execute(select(products.c.gtin, products.c.id)).all())
        prices = dict(c.execute(select(products.c.gtin, products.c.unit_price)).all())
        for code in sorted(wanted):
            s = by_code[code]
            number = self._next_number(c, code, now)
            expected = now.date() + timedelta(days=s.lead_time_days)
            oid = c.execute(
                insert(purchase_orders)
                .values(
                    number=number,
                    supplier_id=s.id,
                    status="open",
                    created_at=now,
                    created_by=actor,
                    expected_on=expected,
                    note=note,
                )
                .returning(purchase_orders.c.id)
            ).scalar_one()
            lines = []
            for line_no, (gtin, packs, pack_size, units) in enumerate(wanted[code], start=1):
                values = {
                    "order_id": oid,
                    "line_no": line_no,
                    "product_id": pids[gtin],
                    "packs": packs,
                    "pack_size": pack_size,
                    "units": units,
                    "unit_price": prices[gtin],
                    "status": "open",
                }
                c.execute(insert(purchase_order_lines).values(**values))
                lines.append({"line": line_no, "gtin": gtin, "packs": packs})
            self.ledger.note(
                "purchase_order",
                number,
                None,
                {"supplier": code, "expected_on": expected.isoformat(), "lines": lines},
            )
            created.append(number)
        return created

    @staticmethod
    def _next_number(c: Connection, code: str, now: datetime) -> str:
        prefix = f"PO-{now:%Y%m%d}-{code}-"
        taken = c.execute(
            select(func.count()).where(purchase_orders.c.number.like(prefix + "%"))
        ).scalar_one()
        return f"{prefix}{int(taken) + 1:02d}"

    def order(self, number: str) -> PurchaseOrder:
        with self.ledger.engine.connect() as c:
            return _load_order(c, number)

    def orders(self, *, status: str | None = "open") -> list[PurchaseOrder]:
        """Orders, newest first. `open` means open or partial; None means all."""
        q = select(purchase_orders.c.number).order_by(purchase_orders.c.id.desc())
        if status == "open":
            q = q.where(purchase_orders.c.status.in_(("open", "partial")))
        elif status is not None:
            q = q.where(purchase_orders.c.status == status)
        with self.ledger.engine.connect() as c:
            return [_load_order(c, n) for n in c.execute(q).scalars()]

    def close(self, number: str, *, actor: str, note: str, now: datetime) -> PurchaseOrder:
        """Ends an order: lines still open or back-ordered are cancelled."""
        if not note.strip():
            raise PurchasingError(["note: a reason for closing the order is required"])
        with self.ledger.audited(actor, "purchase order closed", note[:200]) as c:
            order = _load_order(c, number, lock=True)
            if order.status in ("complete", "cancelled"):
                raise PurchasingError([f"order: {number} is {order.status} already"])
            oid = _order_id(c, number)
            for ln in order.lines:
                if ln.status in ("open", "back_order"):
                    c.execute(
                        update(purchase_order_lines)
                        .where(
                            purchase_order_lines.c.order_id == oid,
                            purchase_order_lines.c.line_no == ln.line_no,
                        )
                        .values(status="cancelled", back_order_units=0)
                    )
            anything = any(ln.received_units or ln.short_units for ln in order.lines)
            status = "complete" if anything else "cancelled"
            kept = f"{order.note}; closed: {note}" if order.note else f"closed: {note}"
            c.execute(
                update(purchase_orders)
                .where(purchase_orders.c.id == oid)
                .values(status=status, closed_at=now, note=kept[:300])
            )
            self.ledger.note("purchase_order", number, order.status, {"status": status})
        return self.order(number)

    # ------------------------------------------------------------ deliveries

    def receive(
        self,
        number: str,
        note: str,
        rows: Sequence[DeliveryRow],
        *,
        actor: str,
        now: datetime,
        location: str,
        min_shelf_life_days: int = 0,
    ) -> Receipt:
        """Matches a delivery against its order and books it; all of it or nothing.
        The same delivery note again changes nothing (`booked` False)."""
        note = note.strip()
        if not note or len(note) > MAX_NOTE:
            raise PurchasingError([f"note: {note!r} must be 1-{MAX_NOTE} characters"])
        key = f"delivery:{number}:{note}"
        today = now.date()
        with self.ledger.engine.connect() as c:
            order = _load_order(c, number)
            if _delivery_id(c, order, note) is not None:
                return self._stored_receipt(c, order, note)
            catalogue = _catalogue(c)
            plans = match_delivery(order, list(rows), catalogue, today=today)
            self._check_locations(c, rows, location)
        if not plans:
            raise PurchasingError(["the delivery has no rows for this order"])
        stock_rows = [(p, r) for p in plans for r in p.rows if r.quantity > 0]
        ledger_lines = [
            DeliveryLine(
                r.gtin,
                r.batch,
                r.expiry,  # type: ignore[arg-type]  # set on every row that delivers
                r.quantity,
                r.location or location,
                r.unit_price if r.unit_price is not None else p.line.unit_price,
            )
            for p, r in stock_rows
        ]

        # Marks this call's own booking: a concurrent twin's stored result carries the
        # twin's token, and this call then reports the delivery as booked before.
        token = uuid.uuid4().hex

        def record(c: Connection, lot_ids: list[int]) -> dict[str, Any]:
            done = self._record(c, order, note, plans, stock_rows, lot_ids, actor, now, location)
            return {**done, "token": token}

        if ledger_lines:
            result = self.ledger.receive_many(
                key,
                ledger_lines,
                actor=actor,
                reason=f"delivery {note} for {number}",
                within=record,
            )
            booked = result is not None and result.get("token") == token
        else:  # only back orders announced: no movement, the delivery alone
            try:
                with self.ledger.audited(actor, "delivery", f"delivery {note} for {number}") as c:
                    record(c, [])
                booked = True
            except IntegrityError:
                booked = False
        with self.ledger.engine.connect() as c:
            order = _load_order(c, number)
            if not booked:
                return self._stored_receipt(c, order, note)
            outcomes = tuple(
                _outcome(
                    p, self._substitutes(c, p.line.gtin, catalogue, today) if p.short_now else ()
                )
                for p in plans
            )
        warnings = tuple(
            f"row {r.row}: batch {r.batch} of {r.gtin} expires on {r.expiry}, inside the "
            f"{min_shelf_life_days}-day minimum shelf life"
            for _p, r in stock_rows
            if r.expiry is not None and r.expiry < today + timedelta(days=min_shelf_life_days)
        )
        packs = tuple(
            ReceivedPack(r.gtin, r.batch, r.expiry, serial, r.location or location)  # type: ignore[arg-type]
            for _p, r in stock_rows
            for serial in r.serials
        )
        return Receipt(
            order=number,
            note=note,
            booked=True,
            order_status=order.status,
            lines=outcomes,
            units=sum(r.quantity for _p, r in stock_rows),
            warnings=warnings,
            packs=packs,
        )

    def _record(
        self,
        c: Connection,
        order: PurchaseOrder,
        note: str,
        plans: list[LinePlan],
        stock_rows: list[tuple[LinePlan, DeliveryRow]],
        lot_ids: list[int],
        actor: str,
        now: datetime,
        location: str,
    ) -> dict[str, Any]:
        """Inside the booking transaction: the lines are re-read under lock and must be
        as they were matched (else another delivery came in between)."""
        current = _load_order(c, order.number, lock=True)
        seen = {ln.line_no: ln for ln in current.lines}
        for p in plans:
            if seen[p.line.line_no] != p.line:
                raise PurchasingError(
                    [f"line {p.line.line_no}: changed by another delivery meanwhile; try again"]
                )
        oid = _order_id(c, order.number)
        did = c.execute(
            insert(deliveries)
            .values(order_id=oid, note_number=note, received_at=now, received_by=actor)
            .returning(deliveries.c.id)
        ).scalar_one()
        line_ids = dict(
            c.execute(
                select(purchase_order_lines.c.line_no, purchase_order_lines.c.id).where(
                    purchase_order_lines.c.order_id == oid
                )
            ).all()
        )
        pids = dict(c.execute(select(products.c.gtin, products.c.id)).all())
        lot_of = {id(r): lot for (_p, r), lot in zip(stock_rows, lot_ids, strict=True)}
        for p in plans:
            for r in p.rows:
                c.execute(
                    insert(delivery_lines).values(
                        delivery_id=did,
                        order_line_id=line_ids[p.line.line_no],
                        product_id=pids[r.gtin],
                        lot_id=lot_of.get(id(r)),
                        units=r.quantity,
                        back_order_units=r.back_order or 0,
                        location_code=(r.location or location) if r.quantity else None,
                    )
                )
            values = {
                "received_units": p.received,
                "back_order_units": p.back_order,
                "short_units": p.short,
                "status": p.status,
            }
            c.execute(
                update(purchase_order_lines)
                .where(purchase_order_lines.c.id == line_ids[p.line.line_no])
                .values(**values)
            )
            self.ledger.note(
                "purchase_order_line",
                f"{order.number}/{p.line.line_no}",
                {
                    "received_units": p.line.received_units,
                    "back_order_units": p.line.back_order_units,
                    "short_units": p.line.short_units,
                    "status": p.line.status,
                },
                values,
            )
        changed = {p.line.line_no: p.status for p in plans}
        statuses = [changed.get(ln.line_no, ln.status) for ln in current.lines]
        received = any(p.received for p in plans) or any(ln.received_units for ln in current.lines)
        if all(s in ("delivered", "short", "cancelled") for s in statuses):
            status = "complete"
        else:
            status = "partial" if received else "open"
        if status != current.status:
            c.execute(
                update(purchase_orders).where(purchase_orders.c.id == oid).values(status=status)
            )
            self.ledger.note("purchase_order", order.number, current.status, {"status": status})
        return {"order": order.number, "delivery": note, "order_status": status}

    @staticmethod
    def _check_locations(c: Connection, rows: Sequence[DeliveryRow], default: str) -> None:
        wanted = {r.location or default for r in rows if r.quantity}
        kinds = dict(
            c.execute(
                select(locations.c.code, locations.c.kind).where(locations.c.code.in_(wanted))
            ).all()
        )
        problems = []
        for r in rows:
            where = r.location or default
            if r.quantity and kinds.get(where) not in INTERNAL_KINDS:
                field = "location" if r.location else "receiving location"
                problems.append(f"row {r.row}: {field}: {where!r} is not a store location")
        if problems:
            raise PurchasingError(problems)

    def _stored_receipt(self, c: Connection, order: PurchaseOrder, note: str) -> Receipt:
        did = _delivery_id(c, order, note)
        rows = c.execute(
            select(purchase_order_lines.c.line_no, delivery_lines.c.units)
            .join(purchase_order_lines, purchase_order_lines.c.id == delivery_lines.c.order_line_id)
            .where(delivery_lines.c.delivery_id == did)
        ).all()
        return Receipt(
            order=order.number,
            note=note,
            booked=False,
            order_status=order.status,
            lines=(),
            units=sum(int(r.units) for r in rows),
        )

    @staticmethod
    def _substitutes(
        c: Connection, gtin: str, catalogue: dict[str, ProductInfo], today: date
    ) -> tuple[Substitute, ...]:
        group = catalogue[gtin].group
        if group is None:
            return ()
        found = c.execute(
            select(products.c.id, products.c.gtin, products.c.name, suppliers.c.code)
            .outerjoin(supplier_products, supplier_products.c.product_id == products.c.id)
            .outerjoin(suppliers, suppliers.c.id == supplier_products.c.supplier_id)
            .where(
                products.c.substitution_group == group,
                products.c.gtin != gtin,
                products.c.active == 1,
            )
            .order_by(products.c.gtin)
        ).all()
        out = []
        for pid, other, name, code in found:
            usable = c.execute(
                select(func.coalesce(func.sum(balances.c.on_hand - balances.c.reserved), 0))
                .join(lots, lots.c.id == balances.c.lot_id)
                .join(locations, locations.c.id == balances.c.location_id)
                .where(
                    lots.c.product_id == pid,
                    lots.c.status == "released",
                    lots.c.expiry >= today,
                    locations.c.kind != "quarantine",
                )
            ).scalar_one()
            out.append(Substitute(other, name, code, int(usable)))
        return tuple(out)

    # ------------------------------------------------------------ figures

    def reliability(self, *, today: date) -> list[SupplierReliability]:
        """Per active supplier, over its due lines (settled, or past the expected date)."""
        with self.ledger.engine.connect() as c:
            sups = c.execute(
                select(suppliers).where(suppliers.c.active.is_(True)).order_by(suppliers.c.code)
            ).all()
            lines = c.execute(
                select(
                    purchase_orders.c.supplier_id,
                    purchase_orders.c.id.label("order_id"),
                    purchase_orders.c.expected_on,
                    purchase_order_lines.c.id,
                    purchase_order_lines.c.units,
                    purchase_order_lines.c.received_units,
                    purchase_order_lines.c.status,
                ).join(purchase_orders, purchase_orders.c.id == purchase_order_lines.c.order_id)
            ).all()
            received_on = defaultdict(list)
            for line_id, at in c.execute(
                select(delivery_lines.c.order_line_id, deliveries.c.received_at)
                .join(deliveries, deliveries.c.id == delivery_lines.c.delivery_id)
                .where(delivery_lines.c.units > 0)
            ):
                received_on[line_id].append(at)
            leads = defaultdict(list)
            for sid, created, at in c.execute(
                select(
                    purchase_orders.c.supplier_id,
                    purchase_orders.c.created_at,
                    deliveries.c.received_at,
                ).join(purchase_orders, purchase_orders.c.id == deliveries.c.order_id)
            ):
                leads[sid].append((at - created).total_seconds() / 86400)
            orders: dict[int, int] = dict(
                c.execute(
                    select(purchase_orders.c.supplier_id, func.count()).group_by(
                        purchase_orders.c.supplier_id
                    )
                ).all()
            )
        out = []
        for s in sups:
            mine = [ln for ln in lines if ln.supplier_id == s.id and ln.status != "cancelled"]
            due = [
                ln for ln in mine if ln.status in ("delivered", "short") or ln.expected_on < today
            ]
            in_full = [ln for ln in due if ln.status == "delivered"]
            on_time = [
                ln
                for ln in in_full
                if received_on[ln.id] and max(received_on[ln.id]).date() <= ln.expected_on
            ]
            lead = leads.get(s.id)
            out.append(
                SupplierReliability(
                    supplier=s.code,
                    name=s.name,
                    orders=int(orders.get(s.id, 0)),
                    lines_due=len(due),
                    lines_in_full=len(in_full),
                    lines_on_time_in_full=len(on_time),
                    units_ordered=sum(ln.units for ln in due),
                    units_received=sum(ln.received_units for ln in due),
                    lines_late=sum(1 for ln in due if ln.status in ("open", "back_order")),
                    mean_lead_days=round(sum(lead) / len(lead), 2) if lead else None,
                )
            )
        return out

    def open_lines(self) -> dict[tuple[str, str], int]:
        """Open and back-ordered order lines per (supplier, status), for the gauges."""
        with self.ledger.engine.connect() as c:
            rows = c.execute(
                select(suppliers.c.code, purchase_order_lines.c.status, func.count())
                .join(purchase_orders, purchase_orders.c.id == purchase_order_lines.c.order_id)
                .join(suppliers, suppliers.c.id == purchase_orders.c.supplier_id)
                .where(purchase_order_lines.c.status.in_(("open", "back_order")))
                .group_by(suppliers.c.code, purchase_order_lines.c.status)
            ).all()
        return {(code, status): int(n) for code, status, n in rows}


# ---------------------------------------------------------------- reading


def _order_id(c: Connection, number: str) -> int:
    oid = c.execute(
        select(purchase_orders.c.id).where(purchase_orders.c.number == number)
    ).scalar_one_or_none()
    if oid is None:
        raise PurchasingError([f"order: {number!r} is not on file"])
    return int(oid)


def _load_order(c: Connection, number: str, *, lock: bool = False) -> PurchaseOrder:
    q = (
        select(purchase_orders, suppliers.c.code, suppliers.c.name.label("supplier_name"))
        .join(suppliers, suppliers.c.id == purchase_orders.c.supplier_id)
        .where(purchase_orders.c.number == number)
    )
    if lock:
        q = q.with_for_update(of=purchase_orders)
    head = c.execute(q).first()
    if head is None:
        raise PurchasingError([f"order: {number!r} is not on file"])
    lines = c.execute(
        select(
            purchase_order_lines,
            products.c.gtin,
            products.c.article,
            products.c.name,
        )
        .join(products, products.c.id == purchase_order_lines.c.product_id)
        .where(purchase_order_lines.c.order_id == head.id)
        .order_by(purchase_order_lines.c.line_no)
    ).all()
    return PurchaseOrder(
        number=head.number,
        supplier=head.code,
        supplier_name=head.supplier_name,
        status=head.status,
        created_at=head.created_at,
        created_by=head.created_by,
        expected_on=head.expected_on,
        closed_at=head.closed_at,
        note=head.note,
        lines=tuple(
            OrderLine(
                line_no=ln.line_no,
                gtin=ln.gtin,
                article=ln.article,
                name=ln.name,
                packs=ln.packs,
                pack_size=ln.pack_size,
                units=ln.units,
                unit_price=Decimal(ln.unit_price),
                received_units=ln.received_units,
                back_order_units=ln.back_order_units,
                short_units=ln.short_units,
                status=ln.status,
            )
            for ln in lines
        ),
    )


def _delivery_id(c: Connection, order: PurchaseOrder, note: str) -> int | None:
    return c.execute(
        select(deliveries.c.id)
        .join(purchase_orders, purchase_orders.c.id == deliveries.c.order_id)
        .where(purchase_orders.c.number == order.number, deliveries.c.note_number == note)
    ).scalar_one_or_none()


def _catalogue(c: Connection) -> dict[str, ProductInfo]:
    return {
        r.gtin: ProductInfo(r.gtin, r.name, r.pack_size, r.substitution_group)
        for r in c.execute(
            select(
                products.c.gtin,
                products.c.name,
                products.c.pack_size,
                products.c.substitution_group,
            )
        )
    }


def _outcome(p: LinePlan, substitutes: tuple[Substitute, ...]) -> LineOutcome:
    return LineOutcome(
        line_no=p.line.line_no,
        gtin=p.line.gtin,
        name=p.line.name,
        ordered=p.line.units,
        delivered_now=p.delivered,
        substituted_now=p.substituted,
        received_total=p.received,
        back_order=p.back_order,
        short_now=p.short_now,
        status=p.status,
        substitutes=substitutes,
    )
