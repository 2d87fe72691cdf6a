"""Checks the ledger's invariants; used by `doseline ledger verify` and the tests.

The cached balances must equal what the append-only movements add up to, nothing may
be negative, and what is reserved on a row must equal the open reservation lines on it
and never exceed what is on hand. Stock under an open location hold is reserved for
nothing, and a hold closed as wasted has its waste movement. The audit chain must be
whole, and every movement must be exactly what the audit trail recorded when it was
booked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Engine, func, select

from controller.ledger.schema import (
    INTERNAL_KINDS,
    balances,
    locations,
    lots,
    movements,
    products,
    reservation_lines,
    reservations,
    stock_holds,
)


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def verify_ledger(engine: Engine) -> list[Violation]:
    """Returns every broken invariant and every break in the audit chain (an empty list
    means the ledger is sound)."""
    from controller.ledger.audit import verify_chain

    found: list[Violation] = [Violation(p.rule, p.detail) for p in verify_chain(engine)]
    with engine.connect() as conn:
        internal = {
            row.id: row.code
            for row in conn.execute(
                select(locations.c.id, locations.c.code).where(locations.c.kind.in_(INTERNAL_KINDS))
            )
        }
        lot_names = {
            row.id: f"{row.gtin}/{row.batch}"
            for row in conn.execute(
                select(lots.c.id, lots.c.batch, products.c.gtin).join(
                    products, products.c.id == lots.c.product_id
                )
            )
        }
        # Summed by the database: a year's movements never pass through Python.
        from_movements: dict[tuple[int, int], int] = defaultdict(int)
        for loc_col, sign in ((movements.c.to_location_id, 1), (movements.c.from_location_id, -1)):
            for loc_id, lot_id, total in conn.execute(
                select(loc_col, movements.c.lot_id, func.sum(movements.c.quantity)).group_by(
                    loc_col, movements.c.lot_id
                )
            ):
                if loc_id in internal:
                    from_movements[(int(loc_id), int(lot_id))] += sign * int(total)

        held: dict[tuple[int, int], int] = defaultdict(int)
        for line in conn.execute(
            select(
                reservation_lines.c.location_id,
                reservation_lines.c.lot_id,
                reservation_lines.c.quantity,
                reservation_lines.c.posted,
            )
            .join(reservations, reservations.c.id == reservation_lines.c.reservation_id)
            .where(reservations.c.status == "open")
        ):
            held[(line.location_id, line.lot_id)] += line.quantity - line.posted

        cached: dict[tuple[int, int], tuple[int, int]] = {
            (row.location_id, row.lot_id): (row.on_hand, row.reserved)
            for row in conn.execute(select(balances))
        }

        holds = conn.execute(
            select(
                stock_holds.c.id,
                stock_holds.c.location_id,
                stock_holds.c.lot_id,
                stock_holds.c.status,
                stock_holds.c.waste_key,
            ).where(stock_holds.c.status.in_(("held", "wasted")))
        ).all()
        waste_keys = [h.waste_key for h in holds if h.status == "wasted" and h.waste_key]
        wasted: dict[tuple[str, int, int], int] = defaultdict(int)
        if waste_keys:
            for m in conn.execute(
                select(
                    movements.c.idempotency_key,
                    movements.c.from_location_id,
                    movements.c.lot_id,
                    movements.c.quantity,
                ).where(movements.c.kind == "waste", movements.c.idempotency_key.in_(waste_keys))
            ):
                wasted[(m.idempotency_key, m.from_location_id, m.lot_id)] += m.quantity

    def name(key: tuple[int, int]) -> str:
        loc, lot = key
        return f"{internal.get(loc, f'location #{loc}')} lot {lot_names.get(lot, f'#{lot}')}"

    for key in sorted(set(cached) | set(from_movements) | set(held)):
        on_hand, reserved = cached.get(key, (0, 0))
        summed = from_movements.get(key, 0)
        if key[0] not in internal and key in cached:
            found.append(Violation("balance-on-external", f"{name(key)} has a cached balance"))
        if on_hand != summed:
            found.append(
                Violation(
                    "balance-mismatch",
                    f"{name(key)}: cached on hand {on_hand}, movements add up to {summed}",
                )
            )
        if on_hand < 0 or summed < 0:
            found.append(Violation("negative-balance", f"{name(key)}: {min(on_hand, summed)}"))
        if reserved != held.get(key, 0):
            found.append(
                Violation(
                    "reserved-mismatch",
                    f"{name(key)}: cached reserved {reserved}, open lines hold {held.get(key, 0)}",
                )
            )
        if reserved > on_hand:
            found.append(
                Violation("over-reserved", f"{name(key)}: reserved {reserved} > on hand {on_hand}")
            )
    for hold in holds:
        key = (hold.location_id, hold.lot_id)
        if hold.status == "held" and cached.get(key, (0, 0))[1] > 0:
            found.append(
                Violation(
                    "held-reserved",
                    f"hold {hold.id}: {name(key)} is held but {cached[key][1]} of it is reserved",
                )
            )
        if hold.status == "wasted" and wasted.get((hold.waste_key, *key), 0) <= 0:
            found.append(
                Violation(
                    "hold-waste-missing",
                    f"hold {hold.id}: {name(key)} is wasted but no waste movement "
                    f"{hold.waste_key!r} took it from there",
                )
            )
    return found


def count_negative_balances(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(balances.c.lot_id).where(balances.c.on_hand < 0)).all())
