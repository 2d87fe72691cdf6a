"""The demo's supply side: last month's use, the purchase order it leads to, the
supplier's delivery, and the serialised packs the technicians take from the shelf.

- `book_history` books the use of the site file's `demo.history` products over the 30
  days before the demo day (a lot received and used up in the `history_bin`), so the
  order proposal has a basis and stock on the shelves is unchanged.
- `DemoSupplier` orders what the proposal asks for, writes the order files, and in the
  morning delivers the first order: a line in full, a line half with the rest
  back-ordered, a line short (the substitute is suggested), the rest in full. The
  manufacturers register every delivered pack with the verification system except
  one, so goods-in raises one alert.
- `PackShelf` hands out the serial numbers registered for each lot (`<batch>-0001`...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from controller.app import Controller
from controller.config import Site
from controller.ledger import Ledger
from controller.purchasing import DeliveryRow, PurchaseOrder, Receipt, order_csv
from controller.purchasing.goods_in import receive_delivery
from controller.purchasing.report import receipt_lines

log = logging.getLogger("doseline.demo")
DEMO_BUYER = "buyer:demo"
DEMO_GOODS_IN = "goods-in:demo"
HISTORY_ACTOR = "demo:history"
HISTORY_DAYS = (29, 24, 19, 14, 9, 4)  # days before the demo day when use is booked


# ---------------------------------------------------------------- packs on the shelf


@dataclass
class PackShelf:
    """The serialised packs of each lot, as registered with the verification system. A
    technician takes the next one; when a lot's packs run out the last stays in use."""

    packs: dict[tuple[str, str], int] = field(default_factory=dict)
    taken: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def from_site(cls, site: Site) -> PackShelf:
        sizes = {p.gtin: p.pack_size for p in site.catalogue}
        shelf = cls()
        for lot in site.stock:
            shelf.add(lot.gtin, lot.batch, -(-lot.quantity // sizes[lot.gtin]))
        return shelf

    def add(self, gtin: str, batch: str, packs: int) -> None:
        self.packs[(gtin, batch)] = self.packs.get((gtin, batch), 0) + packs

    def next(self, gtin: str, batch: str) -> str:
        key = (gtin, batch)
        n = min(self.taken.get(key, 0) + 1, max(self.packs.get(key, 1), 1))
        self.taken[key] = n
        return serial_of(batch, n)


def serial_of(batch: str, n: int) -> str:
    return f"{batch}-{n:04d}"[:20]


# ---------------------------------------------------------------- last month


def book_history(ledger: Ledger, site: Site, *, now: datetime) -> int:
    """Books `demo.history`: each product's 30-day use, received and used up in the
    history bin at past times. Returns the units booked."""
    demo = site.demo
    if demo is None or not demo.history:
        return 0
    where = demo.history_bin or site.store.bins[-1]
    saved = ledger.clock
    units = 0
    try:
        for h in demo.history:
            start = now - timedelta(days=HISTORY_DAYS[0], hours=12)
            ledger.clock = _fixed(start)
            batch = f"HIST{h.gtin[-5:]}"
            ledger.receive(
                f"demo-history-in:{h.gtin}",
                gtin=h.gtin,
                batch=batch,
                expiry=now.date() + timedelta(days=365),
                quantity=h.units_30d,
                to_location=where,
                actor=HISTORY_ACTOR,
                reason="last month's deliveries (demo history)",
            )
            share, rest = divmod(h.units_30d, len(HISTORY_DAYS))
            for i, days in enumerate(HISTORY_DAYS):
                ledger.clock = _fixed(now - timedelta(days=days))
                ledger.consume(
                    f"demo-history-use:{h.gtin}:{days}",
                    gtin=h.gtin,
                    quantity=share + (rest if i == 0 else 0),
                    location=where,
                    actor=HISTORY_ACTOR,
                    reason="ward use (demo history)",
                )
            units += h.units_30d
    finally:
        ledger.clock = saved
    return units


def _fixed(at: datetime) -> Callable[[], datetime]:
    return lambda: at


# ---------------------------------------------------------------- the supplier


@dataclass
class DemoSupplier:
    controller: Controller
    shelf: PackShelf
    say: Callable[[str], None]
    orders_dir: Path
    verification_url: str | None = None
    orders: list[PurchaseOrder] = field(default_factory=list)
    unassigned: list[str] = field(default_factory=list)
    receipt: Receipt | None = None
    falsified: str | None = None  # the serial no manufacturer registered

    async def order(self, now: datetime) -> None:
        ctl = self.controller
        self.orders, self.unassigned = await ctl.aledger.run(
            ctl.purchasing.create_orders,
            now=now,
            actor=DEMO_BUYER,
            target_days=ctl.site.purchasing.target_days,
            note="daily order run",
        )
        self.orders_dir.mkdir(parents=True, exist_ok=True)
        for po in self.orders:
            path = self.orders_dir / f"{po.number}.csv"
            path.write_text(order_csv(po, ctl.site.site.name), encoding="utf-8")
            names = ", ".join(f"{ln.name.split(' ')[0]} {ln.packs} packs" for ln in po.lines)
            self.say(
                f"purchasing: {po.number} to {po.supplier_name}, {len(po.lines)} lines "
                f"({names}), {po.value} SEK, expected {po.expected_on}; order file {path}"
            )

    async def deliver(self, today: date) -> None:
        """The first order's delivery arrives; goods-in books and verifies it."""
        if not self.orders:
            return
        ctl = self.controller
        po = self.orders[0]
        rows, packs = self._rows(po, today)
        if self.verification_url is not None:
            register = [p for p in packs if p["serial"] != self.falsified]
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(
                    f"{self.verification_url}/control/packs", json={"packs": register}
                )
                answer.raise_for_status()
        self.receipt = await receive_delivery(
            ctl.aledger,
            ctl.purchasing,
            ctl.verification,
            po.number,
            f"DN-{po.number[3:]}",
            rows,
            actor=DEMO_GOODS_IN,
            now=datetime.now(UTC),
            location=ctl.site.receiving_location(),
            min_shelf_life_days=ctl.site.ledger.min_shelf_life_days,
        )
        for r in rows:
            if r.quantity:
                self.shelf.add(r.gtin, r.batch, len(r.serials))
        for line in receipt_lines(self.receipt):
            self.say(f"goods-in: {line.removeprefix('  ')}")

    def _rows(
        self, po: PurchaseOrder, today: date
    ) -> tuple[list[DeliveryRow], list[dict[str, Any]]]:
        groups = {p.gtin: p.substitution_group for p in self.controller.site.catalogue}
        short = next((ln for ln in po.lines if groups.get(ln.gtin)), po.lines[-1])
        half = next((ln for ln in po.lines if ln is not short), None)
        rows: list[DeliveryRow] = []
        packs: list[dict[str, Any]] = []
        expiry = today + timedelta(days=500)
        for ln in po.lines:
            if ln is short and len(po.lines) > 1:
                rows.append(DeliveryRow(len(rows) + 2, po.number, ln.line_no, ln.gtin, 0))
                continue
            count = ln.packs // 2 if ln is half and ln.packs > 1 else ln.packs
            batch = f"D{ln.line_no}{today:%y%m%d}"
            serials = tuple(serial_of(batch, i) for i in range(1, count + 1))
            packs += [
                {"gtin": ln.gtin, "serial": s, "batch": batch, "expiry": expiry.isoformat()}
                for s in serials
            ]
            back = (ln.packs - count) * ln.pack_size
            rows.append(
                DeliveryRow(
                    len(rows) + 2,
                    po.number,
                    ln.line_no,
                    ln.gtin,
                    count * ln.pack_size,
                    batch=batch,
                    expiry=expiry,
                    back_order=back or None,
                    serials=serials,
                )
            )
        full = [r for r in rows if r.serials and r.back_order is None]
        if full:
            self.falsified = full[-1].serials[-1]
        return rows, packs
