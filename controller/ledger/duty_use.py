"""The stock duty in the ledger: use by units the pharmacy does not supply (external
volumes per product and month).

A unit (contracted private care, a municipal emergency store) reports what it used of
a product in a calendar month; recording the same unit, product and month again
replaces the quantity. The volumes count in cover's whole use (controller.ledger.reports
.cover) and in the monthly follow-up. Every change is audited (entity `external_use`,
key `<gtin>/<month>/<unit name>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

from sqlalchemy import Connection, delete, insert, select, update

from controller.duty_rules.external_file import (
    FileProblem,
    check_month,
    check_quantity,
    check_unit_name,
    parse_external_use,
)
from controller.ledger.core import LedgerCore
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.schema import external_use, products


@dataclass(frozen=True)
class ExternalUse:
    gtin: str
    name: str
    month: str  # YYYY-MM
    unit_name: str
    quantity: int
    recorded_by: str


@dataclass(frozen=True)
class ExternalImport:
    """What an import wrote (or, in a dry run, would write)."""

    rows: int
    inserted: int
    replaced: int
    unchanged: int
    dry_run: bool


class ExternalUseRefused(LedgerError):
    """An external-use file with problems: every one of them, nothing written."""

    def __init__(self, problems: Sequence[FileProblem]) -> None:
        self.problems = tuple(problems)
        first = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{len(self.problems)} problem(s), nothing written: {first}{more}")


def _key(gtin: str, month: str, unit_name: str) -> str:
    return f"{gtin}/{month}/{unit_name}"


class DutyUse(LedgerCore):
    """The whole use: written in audited transactions, read by the reports."""

    def _this_month(self) -> str:
        return f"{self.clock().astimezone(UTC):%Y-%m}"

    def _check_external(self, month: str, unit_name: str, quantity: object) -> str:
        why = check_month(month, current=self._this_month())
        if why:
            raise LedgerError(f"month: {month!r} {why}")
        name = unit_name.strip()
        why = check_unit_name(name)
        if why:
            raise LedgerError(f"unit_name: {unit_name!r} {why}")
        why = check_quantity(quantity)
        if why:
            raise LedgerError(f"quantity: {quantity!r} {why}")
        return name

    def _put_external(
        self,
        conn: Connection,
        actor: str,
        product_id: int,
        gtin: str,
        month: str,
        unit: str,
        quantity: int,
    ) -> str:
        """Inserts or replaces one volume: 'inserted', 'replaced' or 'unchanged'."""
        where = (
            external_use.c.product_id == product_id,
            external_use.c.month == month,
            external_use.c.unit_name == unit,
        )
        old = conn.execute(select(external_use.c.quantity).where(*where)).scalar_one_or_none()
        if old == quantity:
            return "unchanged"
        values = {"recorded_by": actor, "recorded_at": self.clock()}
        if old is None:
            conn.execute(
                insert(external_use).values(
                    product_id=product_id, month=month, unit_name=unit, quantity=quantity, **values
                )
            )
        else:
            conn.execute(update(external_use).where(*where).values(quantity=quantity, **values))
        self._note(
            "external_use",
            _key(gtin, month, unit),
            None if old is None else {"quantity": int(old)},
            {"quantity": quantity},
        )
        return "inserted" if old is None else "replaced"

    def record_external_use(
        self, gtin: str, *, month: str, unit_name: str, quantity: int, actor: str
    ) -> ExternalUse:
        """Records what a unit the pharmacy does not supply used of a product in a
        month (YYYY-MM, not after this month); the same unit, product and month again
        replaces the quantity. Unknown GTIN: UnknownEntity; nothing is written."""
        unit = self._check_external(month, unit_name, quantity)
        with self._tx(actor, "external_use", f"external use {month}") as conn:
            product_id = self._product_id(conn, gtin)
            self._put_external(conn, actor, product_id, gtin, month, unit, quantity)
            name = conn.execute(
                select(products.c.name).where(products.c.id == product_id)
            ).scalar_one()
        return ExternalUse(gtin, str(name), month, unit, quantity, actor)

    def remove_external_use(
        self, gtin: str, *, month: str, unit_name: str, actor: str, reason: str = "removed"
    ) -> ExternalUse:
        """Removes one recorded volume; a volume that was never recorded is refused."""
        unit = unit_name.strip()
        with self._tx(actor, "external_use", reason) as conn:
            product_id = self._product_id(conn, gtin)
            where = (
                external_use.c.product_id == product_id,
                external_use.c.month == month,
                external_use.c.unit_name == unit,
            )
            row = conn.execute(select(external_use).where(*where)).first()
            if row is None:
                raise UnknownEntity("external use", _key(gtin, month, unit))
            conn.execute(delete(external_use).where(*where))
            self._note(
                "external_use", _key(gtin, month, unit), {"quantity": int(row.quantity)}, None
            )
            name = conn.execute(
                select(products.c.name).where(products.c.id == product_id)
            ).scalar_one()
        return ExternalUse(gtin, str(name), month, unit, int(row.quantity), str(row.recorded_by))

    def import_external_use(
        self, text: str, *, actor: str, dry_run: bool = False
    ) -> ExternalImport:
        """Imports an external-use file (controller.duty_rules.external_file): checked
        whole, unknown GTINs named by line; on any problem ExternalUseRefused lists them
        all and nothing is written. A dry run checks and counts, and writes nothing."""
        lines, problems = parse_external_use(text, current=self._this_month())
        counts = {"inserted": 0, "replaced": 0, "unchanged": 0}
        with self._tx(actor, "external_use", "external use import") as conn:
            ids = {
                str(g): int(i)
                for g, i in conn.execute(
                    select(products.c.gtin, products.c.id).where(
                        products.c.gtin.in_(sorted({x.gtin for x in lines}))
                    )
                )
            }
            for x in lines:
                if x.gtin not in ids:
                    problems.append(FileProblem(x.line, "gtin", x.gtin, "is not a known product"))
            if problems:
                raise ExternalUseRefused(sorted(problems, key=lambda p: p.line))
            for x in lines:
                if dry_run:
                    old = conn.execute(
                        select(external_use.c.quantity).where(
                            external_use.c.product_id == ids[x.gtin],
                            external_use.c.month == x.month,
                            external_use.c.unit_name == x.unit_name,
                        )
                    ).scalar_one_or_none()
                    outcome = (
                        "inserted"
                        if old is None
                        else "unchanged"
                        if old == x.quantity
                        else "replaced"
                    )
                else:
                    outcome = self._put_external(
                        conn, actor, ids[x.gtin], x.gtin, x.month, x.unit_name, x.quantity
                    )
                counts[outcome] += 1
        return ExternalImport(
            rows=len(lines),
            inserted=counts["inserted"],
            replaced=counts["replaced"],
            unchanged=counts["unchanged"],
            dry_run=dry_run,
        )

    def external_uses(
        self, *, gtin: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[ExternalUse]:
        """Recorded volumes, by month, product and unit; `since`/`until` are months
        (YYYY-MM), both included."""
        for field, value in (("since", since), ("until", until)):
            if value is not None and check_month(value, current="9999-12"):
                raise LedgerError(f"{field}: {value!r} is not a month (YYYY-MM)")
        query = select(
            products.c.gtin,
            products.c.name,
            external_use.c.month,
            external_use.c.unit_name,
            external_use.c.quantity,
            external_use.c.recorded_by,
        ).join(products, products.c.id == external_use.c.product_id)
        with self._reading() as conn:
            if gtin is not None:
                query = query.where(external_use.c.product_id == self._product_id(conn, gtin))
            if since is not None:
                query = query.where(external_use.c.month >= since)
            if until is not None:
                query = query.where(external_use.c.month <= until)
            rows = conn.execute(
                query.order_by(external_use.c.month, products.c.gtin, external_use.c.unit_name)
            ).all()
        return [
            ExternalUse(r.gtin, r.name, r.month, r.unit_name, int(r.quantity), r.recorded_by)
            for r in rows
        ]
