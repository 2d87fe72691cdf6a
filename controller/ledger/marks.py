"""Device counter marks: the counter value up to which a device's reports are booked.

A cabinet or packer counts monotonically; the ledger keeps the last value it accounted
for, written in the same transaction as the movements it explains, so the next poll's
delta starts exactly where the last one ended and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, func, select

from controller.ledger.booking import per_dialect
from controller.ledger.core import LedgerCore
from controller.ledger.schema import balances, counter_marks, locations, lots, products
from controller.ledger.views import CounterMark

# The two reads of every cabinet poll, built once: building a statement per call cost
# more than running it (docs/performance.md).
_MARKS_OF_DEVICE = select(counter_marks.c.counter, counter_marks.c.value).where(
    counter_marks.c.device == bindparam("device")
)
_ON_HAND_AT = (
    select(locations.c.code, products.c.gtin, func.sum(balances.c.on_hand))
    .join(locations, locations.c.id == balances.c.location_id)
    .join(lots, lots.c.id == balances.c.lot_id)
    .join(products, products.c.id == lots.c.product_id)
    .where(locations.c.code.in_(bindparam("codes", expanding=True)), balances.c.on_hand > 0)
    .group_by(locations.c.code, products.c.gtin)
)
_MARK = select(counter_marks.c.value).where(
    counter_marks.c.device == bindparam("device"), counter_marks.c.counter == bindparam("counter")
)
# Recorded with the movements a counter explains, on every poll that books something.
_SET_MARK = per_dialect(
    lambda dialect_insert: (
        dialect_insert(counter_marks)
        .values(
            device=bindparam("mark_device"),
            counter=bindparam("mark_counter"),
            value=bindparam("mark_value"),
        )
        .on_conflict_do_update(
            index_elements=[counter_marks.c.device, counter_marks.c.counter],
            set_={"value": bindparam("mark_value")},
        )
    )
)


class CounterMarks(LedgerCore):
    """Counter marks, and the on-hand figures a cabinet poll compares its counts with."""

    def set_counter_mark(self, mark: CounterMark) -> None:
        """Records a counter value with no movement (commissioning, or nothing to book)."""
        with self._tx("system", "counter", "device counter") as conn:
            self._set_mark(conn, mark)

    def counter_mark(self, device: str, counter: str) -> int | None:
        with self._reading() as conn:
            value = conn.execute(_MARK, {"device": device, "counter": counter}).scalar()
        return None if value is None else int(value)

    def marks_and_on_hand(
        self, device: str, locations_: Sequence[str]
    ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Every booked counter value of a device (by counter name) and `on_hand_many`
        of some locations, in one call: what a cabinet poll needs from the ledger."""
        with self._reading() as conn:
            return self._counter_marks(conn, device), self._on_hand_many(conn, locations_)

    @staticmethod
    def _counter_marks(conn: Connection, device: str) -> dict[str, int]:
        rows = conn.execute(_MARKS_OF_DEVICE, {"device": device}).all()
        return {str(r.counter): int(r.value) for r in rows}

    def on_hand_many(self, locations_: Sequence[str]) -> dict[tuple[str, str], int]:
        """On hand per (location, GTIN) at some locations, in one query: `on_hand` for
        many locations at once. A pair with nothing on hand is left out."""
        with self._reading() as conn:
            return self._on_hand_many(conn, locations_)

    @staticmethod
    def _on_hand_many(conn: Connection, locations_: Sequence[str]) -> dict[tuple[str, str], int]:
        if not locations_:
            return {}
        rows = conn.execute(_ON_HAND_AT, {"codes": list(locations_)})
        return {(str(code), str(gtin)): int(total) for code, gtin, total in rows}

    def _set_mark(self, conn: Connection, mark: CounterMark) -> None:
        conn.execute(
            _SET_MARK(conn),
            {"mark_device": mark.device, "mark_counter": mark.counter, "mark_value": mark.value},
        )
        self._note("counter", f"{mark.device}/{mark.counter}", None, {"value": mark.value})
