"""The stock duty in the ledger: what is out of the duty's scope (a product or a category,
with its reason; durable devices and protective equipment) and exemptions as a lifecycle
(create, review, change, revoke).

Every decision is written in one audited transaction (entity `duty_scope`, `product`
or `exemption`, keyed by the GTIN or `category:<name>`), so the audit trail keeps each
old and new value. A refused decision writes nothing: the rules are checked before the
transaction, the state inside it (a refusal there rolls it back).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from controller.duty_rules.exemptions import (
    OBLIGATION_DAYS,
    DutyRuleError,
    check_durability,
    check_level,
    check_review_date,
    check_scope_reason,
    check_text,
)
from controller.ledger.core import LedgerCore
from controller.ledger.errors import DutyRefused, UnknownEntity
from controller.ledger.schema import PRODUCT_CATEGORIES, duty_scope, exemptions, products

#: The fields of an exemption `change_exemption` may change.
CHANGEABLE = ("reason", "risk_assessment", "measures", "review_date", "level_days", "decided_by")


@dataclass(frozen=True)
class ScopeEntry:
    """A product or a whole category out of the duty's scope."""

    gtin: str | None
    name: str | None
    category: str | None
    reason: str
    note: str
    decided_by: str
    decided_at: datetime


@dataclass(frozen=True)
class ExemptionRecord:
    """An exemption as the ledger holds it (active or revoked)."""

    gtin: str
    name: str
    category: str
    status: str
    reason: str
    risk_assessment: str
    measures: str
    level_days: int | None  # None: out of the figures; N: judged against N days
    review_date: date
    decided_by: str
    decided_at: datetime
    reviewed_at: datetime | None
    reviewed_by: str | None
    revoked_at: datetime | None
    revoked_by: str | None
    revoke_reason: str | None
    review_overdue: bool  # active and its review date has passed


def _rule(call: Any, *args: Any) -> Any:
    """A pure rule's refusal as the ledger's."""
    try:
        return call(*args)
    except DutyRuleError as exc:
        raise DutyRefused(exc.field, exc.value, str(exc)) from None


def _subject(gtin: str | None, category: str | None) -> None:
    if (gtin is None) == (category is None):
        raise DutyRefused(
            "gtin", gtin, f"gtin: {gtin!r}, category: {category!r}: name a product or a category"
        )
    if category is not None and category not in PRODUCT_CATEGORIES:
        raise DutyRefused(
            "category",
            category,
            f"category: {category!r} is not one of {', '.join(PRODUCT_CATEGORIES)}",
        )


_EXEMPTION_VIEW = (
    select(exemptions, products.c.gtin, products.c.name, products.c.category)
    .join(products, products.c.id == exemptions.c.product_id)
    .order_by(products.c.name, products.c.gtin)
)


class DutyScope(LedgerCore):
    """Scope and exemptions: written in audited transactions, read by the reports."""

    # ---------------------------------------------------------------- scope

    def set_out_of_scope(
        self,
        *,
        gtin: str | None = None,
        category: str | None = None,
        reason: str,
        note: str = "",
        actor: str,
    ) -> ScopeEntry:
        """Marks a product or a whole category out of the duty's scope (or changes the
        reason of one already out)."""
        _subject(gtin, category)
        _rule(check_scope_reason, reason)
        note = note.strip()
        key = gtin if gtin is not None else f"category:{category}"
        with self._tx(actor, "duty_scope", f"out of scope: {reason}") as conn:
            product_id = self._product_id(conn, gtin) if gtin is not None else None
            where = (
                duty_scope.c.product_id == product_id
                if product_id is not None
                else duty_scope.c.category == category
            )
            row = conn.execute(select(duty_scope).where(where)).first()
            new = {"reason": reason, "note": note, "decided_by": actor}
            now = self.clock()
            if row is None:
                conn.execute(
                    insert(duty_scope).values(
                        product_id=product_id, category=category, **new, decided_at=now
                    )
                )
                self._note("duty_scope", key, None, new)
            else:
                old = {k: row._mapping[k] for k in new}
                if old != new:
                    conn.execute(
                        update(duty_scope)
                        .where(duty_scope.c.id == row.id)
                        .values(**new, decided_at=now)
                    )
                    self._note("duty_scope", key, old, new)
        return self._scope_entry(gtin, category)

    def clear_out_of_scope(
        self,
        *,
        gtin: str | None = None,
        category: str | None = None,
        actor: str,
        note: str = "",
    ) -> None:
        """Brings a product or a category back into the duty's scope."""
        _subject(gtin, category)
        key = gtin if gtin is not None else f"category:{category}"
        with self._tx(actor, "duty_scope", (note.strip() or "back in scope")[:200]) as conn:
            product_id = self._product_id(conn, gtin) if gtin is not None else None
            where = (
                duty_scope.c.product_id == product_id
                if product_id is not None
                else duty_scope.c.category == category
            )
            row = conn.execute(select(duty_scope).where(where)).first()
            if row is None:
                field = "gtin" if gtin is not None else "category"
                raise DutyRefused(
                    field, key, f"{field}: {gtin or category} is not out of scope", "missing"
                )
            conn.execute(delete(duty_scope).where(duty_scope.c.id == row.id))
            self._note("duty_scope", key, {"reason": row.reason, "note": row.note}, None)

    def scope_list(self) -> list[ScopeEntry]:
        """Everything out of scope: categories first, then products by name."""
        with self._reading() as conn:
            rows = conn.execute(
                select(duty_scope, products.c.gtin, products.c.name)
                .outerjoin(products, products.c.id == duty_scope.c.product_id)
                .order_by(duty_scope.c.category.is_(None), duty_scope.c.category, products.c.name)
            ).all()
        return [self._scope_of(r._mapping) for r in rows]

    def _scope_entry(self, gtin: str | None, category: str | None) -> ScopeEntry:
        for entry in self.scope_list():
            if (gtin is not None and entry.gtin == gtin) or (
                gtin is None and entry.category == category
            ):
                return entry
        raise UnknownEntity("gtin" if gtin is not None else "category", gtin or category)

    @staticmethod
    def _scope_of(m: Any) -> ScopeEntry:
        return ScopeEntry(
            gtin=m["gtin"],
            name=m["name"],
            category=m["category"],
            reason=m["reason"],
            note=m["note"],
            decided_by=m["decided_by"],
            decided_at=m["decided_at"],
        )

    def set_durability(self, gtin: str, durability: str, *, actor: str) -> None:
        """Marks a device or protective equipment consumable or durable (a durable one
        does not count in the duty). A drug or special food is always consumable."""
        with self._tx(actor, "product", f"durability: {durability}") as conn:
            row = conn.execute(
                select(products.c.id, products.c.category, products.c.durability).where(
                    products.c.gtin == gtin
                )
            ).first()
            if row is None:
                raise UnknownEntity("gtin", gtin)
            _rule(check_durability, gtin, row.category, durability)
            if row.durability != durability:
                conn.execute(
                    update(products).where(products.c.id == row.id).values(durability=durability)
                )
                self._note(
                    "product", gtin, {"durability": row.durability}, {"durability": durability}
                )

    # ----------------------------------------------------------- exemptions

    def create_exemption(
        self,
        gtin: str,
        *,
        reason: str,
        risk_assessment: str,
        measures: str,
        review_date: date,
        level_days: int | None = None,
        decided_by: str | None = None,
        actor: str,
    ) -> ExemptionRecord:
        """Exempts a product: the special reason, the risk assessment, the measures
        taken, the review date (after today) and, optionally, a reduced level in days
        (0 <= N < 30) instead of leaving the product out. A product with an active
        exemption is refused (change it instead); a revoked one is created again."""
        new: dict[str, Any] = {
            "reason": _rule(check_text, "reason", reason),
            "risk_assessment": _rule(check_text, "risk_assessment", risk_assessment),
            "measures": _rule(check_text, "measures", measures),
            "review_date": _rule(check_review_date, review_date, self.clock().date()),
            "level_days": _rule(check_level, level_days, OBLIGATION_DAYS),
            "decided_by": (decided_by or actor).strip() or actor,
            "status": "active",
        }
        with self._tx(actor, "exemption", "exemption created") as conn:
            product_id = self._product_id(conn, gtin)
            row = self._exemption_row(conn, product_id)
            now = self.clock()
            cleared = {
                "reviewed_at": None,
                "reviewed_by": None,
                "revoked_at": None,
                "revoked_by": None,
                "revoke_reason": None,
            }
            if row is None:
                conn.execute(
                    insert(exemptions).values(product_id=product_id, **new, decided_at=now)
                )
                self._note("exemption", gtin, None, new)
            elif row.status == "active":
                raise DutyRefused(
                    "gtin",
                    gtin,
                    f"gtin: {gtin} already has an active exemption (change or revoke it)",
                    "conflict",
                )
            else:
                old = {k: row._mapping[k] for k in new}
                conn.execute(
                    update(exemptions)
                    .where(exemptions.c.product_id == product_id)
                    .values(**new, **cleared, decided_at=now)
                )
                self._note("exemption", gtin, old, new)
        return self.exemption(gtin)

    def review_exemption(
        self, gtin: str, *, review_date: date, actor: str, note: str = ""
    ) -> ExemptionRecord:
        """Records a review of an active exemption (who, when) and its next review date."""
        _rule(check_review_date, review_date, self.clock().date())
        with self._tx(actor, "exemption", (note.strip() or "exemption reviewed")[:200]) as conn:
            row = self._active(conn, gtin)
            now = self.clock()
            conn.execute(
                update(exemptions)
                .where(exemptions.c.product_id == row.product_id)
                .values(review_date=review_date, reviewed_at=now, reviewed_by=actor)
            )
            self._note(
                "exemption",
                gtin,
                {"review_date": row.review_date, "reviewed_by": row.reviewed_by},
                {"review_date": review_date, "reviewed_by": actor, "note": note.strip()},
            )
        return self.exemption(gtin)

    def change_exemption(self, gtin: str, *, actor: str, **fields: Any) -> ExemptionRecord:
        """Changes an active exemption's fields (any of CHANGEABLE; `level_days=None`
        puts the product back out of the figures). The change is a new decision: its
        decider is `decided_by` if given, else the actor."""
        unknown = sorted(set(fields) - set(CHANGEABLE))
        if unknown:
            raise DutyRefused(
                unknown[0], unknown[0], f"{unknown[0]}: is not a field of an exemption"
            )
        if not fields:
            raise DutyRefused("fields", None, "fields: nothing to change")
        new: dict[str, Any] = {}
        for name in ("reason", "risk_assessment", "measures"):
            if name in fields:
                new[name] = _rule(check_text, name, str(fields[name]))
        if "review_date" in fields:
            value = fields["review_date"]
            if not isinstance(value, date):
                raise DutyRefused("review_date", value, f"review_date: {value!r} is not a date")
            new["review_date"] = _rule(check_review_date, value, self.clock().date())
        if "level_days" in fields:
            new["level_days"] = _rule(check_level, fields["level_days"], OBLIGATION_DAYS)
        decided_by = str(fields.get("decided_by") or actor).strip() or actor
        new["decided_by"] = decided_by
        with self._tx(actor, "exemption", "exemption changed") as conn:
            row = self._active(conn, gtin)
            old = {k: row._mapping[k] for k in new}
            if old != new:
                conn.execute(
                    update(exemptions)
                    .where(exemptions.c.product_id == row.product_id)
                    .values(**new, decided_at=self.clock())
                )
                self._note("exemption", gtin, old, new)
        return self.exemption(gtin)

    def revoke_exemption(self, gtin: str, *, reason: str, actor: str) -> ExemptionRecord:
        """Revokes an active exemption: the product counts in full again."""
        why = _rule(check_text, "reason", reason)
        with self._tx(actor, "exemption", "exemption revoked") as conn:
            row = self._active(conn, gtin)
            conn.execute(
                update(exemptions)
                .where(exemptions.c.product_id == row.product_id)
                .values(
                    status="revoked", revoked_at=self.clock(), revoked_by=actor, revoke_reason=why
                )
            )
            self._note(
                "exemption",
                gtin,
                {"status": "active"},
                {"status": "revoked", "revoke_reason": why},
            )
        return self.exemption(gtin)

    def exemption(self, gtin: str) -> ExemptionRecord:
        """One product's exemption (active or revoked)."""
        with self._reading() as conn:
            product_id = self._product_id(conn, gtin)
            row = conn.execute(_EXEMPTION_VIEW.where(exemptions.c.product_id == product_id)).first()
        if row is None:
            raise DutyRefused("gtin", gtin, f"gtin: {gtin} has no exemption", "missing")
        return self._record(row._mapping)

    def exemptions_list(self, include_revoked: bool = False) -> list[ExemptionRecord]:
        """The exemptions by product name; the revoked ones only when asked for."""
        query = _EXEMPTION_VIEW
        if not include_revoked:
            query = query.where(exemptions.c.status == "active")
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [self._record(r._mapping) for r in rows]

    def _record(self, m: Any) -> ExemptionRecord:
        today = self.clock().date()
        return ExemptionRecord(
            gtin=m["gtin"],
            name=m["name"],
            category=m["category"],
            status=m["status"],
            reason=m["reason"],
            risk_assessment=m["risk_assessment"],
            measures=m["measures"],
            level_days=m["level_days"],
            review_date=m["review_date"],
            decided_by=m["decided_by"],
            decided_at=m["decided_at"],
            reviewed_at=m["reviewed_at"],
            reviewed_by=m["reviewed_by"],
            revoked_at=m["revoked_at"],
            revoked_by=m["revoked_by"],
            revoke_reason=m["revoke_reason"],
            review_overdue=m["status"] == "active" and m["review_date"] < today,
        )

    @staticmethod
    def _exemption_row(conn: Connection, product_id: int) -> Any:
        return conn.execute(select(exemptions).where(exemptions.c.product_id == product_id)).first()

    def _active(self, conn: Connection, gtin: str) -> Any:
        """The active exemption of a known product; refused by name otherwise."""
        product_id = self._product_id(conn, gtin)
        row = self._exemption_row(conn, product_id)
        if row is None:
            raise DutyRefused("gtin", gtin, f"gtin: {gtin} has no exemption", "missing")
        if row.status != "active":
            raise DutyRefused(
                "gtin", gtin, f"gtin: {gtin} has a revoked exemption (create a new one)", "conflict"
            )
        return row
