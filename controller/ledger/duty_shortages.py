"""The stock duty in the ledger: supplier shortage notices with substitutes, rationing of
scarce stock among wards, and licences for unlicensed products.

Every write is one audited transaction and checks its input before it writes, so a
refused call (`DutyRefused`, `UnknownEntity`) leaves nothing behind. Rationing grants
are decided by the pure rule `controller.duty_rules.rationing.ration`; each grant is a
`ration_draws` row keyed by its source and reference, so a retry never draws twice.
The ledger knows no site: which wards exist and what the local day is are the callers'
(the CLI, the API, ward supply, replenishment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from controller.duty_rules.rationing import DRAW_SOURCES, Grant, Request, ration
from controller.ledger.booking import Booking
from controller.ledger.errors import DutyRefused, UnknownEntity
from controller.ledger.schema import products
from controller.ledger.schema_duty import (
    LICENCE_HOLDER_KINDS,
    licences,
    ration_draws,
    rationing_priority_wards,
    rationing_rules,
    shortage_substitutes,
    shortages,
)

MAX_CAP = 1_000_000  # units per ward and day: far above any ward's use
MAX_FEE = Decimal("9999999999.99")  # the column's Numeric(12, 2)


@dataclass(frozen=True)
class Substitute:
    gtin: str
    name: str
    free_units: int | None  # free stock at the locations asked for; None: not asked


@dataclass(frozen=True)
class ShortageView:
    id: int
    gtin: str
    name: str
    notice_ref: str
    supplier: str | None
    noticed_at: datetime
    expected_end: date | None
    status: str
    note: str
    recorded_by: str
    closed_at: datetime | None
    closed_by: str | None
    substitutes: tuple[Substitute, ...]


@dataclass(frozen=True)
class RationRuleView:
    id: int
    gtin: str
    name: str
    shortage_id: int | None
    cap_per_ward_day: int
    priority_wards: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime | None
    reason: str
    decided_by: str
    decided_at: datetime

    @property
    def in_force(self) -> bool:
        return self.ends_at is None


@dataclass(frozen=True)
class RationDraw:
    id: int
    rule_id: int
    gtin: str
    ward: str
    day: date
    units: int
    source: str
    ref: str
    ts: datetime


@dataclass(frozen=True)
class RationGrant:
    """What a request of a rationed product was granted (`ref` is its draw's key)."""

    rule_id: int
    cap_per_ward_day: int
    ref: str
    ward: str
    day: date
    asked: int
    granted: int
    capped: int
    short: int
    priority: bool
    repeat: bool  # drawn before under the same source and ref: nothing new written


@dataclass(frozen=True)
class RationAsk:
    """One request to draw on a rationed product: `ref` keys its draw (with the source)."""

    ref: str
    ward: str
    units: int
    step: int = 1


@dataclass(frozen=True)
class LicenceView:
    id: int
    gtin: str
    name: str
    holder_kind: str
    holder: str
    number: str
    valid_from: date
    valid_to: date
    fee_sek: Decimal
    recorded_by: str
    recorded_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None

    def valid_on(self, day: date) -> bool:
        return self.revoked_at is None and self.valid_from <= day <= self.valid_to


def _text(field: str, value: str | None, limit: int, *, required: bool = True) -> str | None:
    if value is None or not value.strip():
        if required:
            raise DutyRefused.naming(field, value, "is required")
        return None
    value = value.strip()
    if len(value) > limit:
        raise DutyRefused.naming(field, value[:40] + "...", f"is longer than {limit} characters")
    if "\x00" in value:
        raise DutyRefused.naming(field, value[:40], "contains a NUL character")
    return value


def _whole(field: str, value: object, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DutyRefused.naming(field, value, f"must be a whole number from {low} to {high}")
    return value


class DutyShortages(Booking):
    """Shortages, rationing and licences: written in audited transactions, read by the reports."""

    # ------------------------------------------------------------------ shortages

    def _today(self, today: date | None) -> date:
        return today if today is not None else self.clock().date()

    def _gtins(self, conn: Connection, field: str, gtins: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for gtin in gtins:
            row = conn.execute(select(products.c.id).where(products.c.gtin == gtin)).first()
            if row is None:
                raise UnknownEntity(field, gtin)
            if int(row.id) not in ids:
                ids.append(int(row.id))
        return ids

    def record_shortage(
        self,
        gtin: str,
        *,
        notice_ref: str,
        supplier: str | None = None,
        expected_end: date | None = None,
        substitutes: Sequence[str] = (),
        note: str = "",
        actor: str,
        today: date | None = None,
    ) -> ShortageView:
        """Records a supplier's shortage notice for a product, with the products that
        stand in for it. One notice per product and reference. `today` is the site's
        local day (an expected end before it is refused)."""
        ref = _text("notice_ref", notice_ref, 100)
        supplier = _text("supplier", supplier, 100, required=False)
        note = _text("note", note, 2000, required=False) or ""
        day = self._today(today)
        if expected_end is not None and expected_end < day:
            raise DutyRefused.naming(
                "expected_end", expected_end, f"is in the past (today is {day})"
            )
        with self._tx(actor, "shortage", f"notice {ref}") as conn:
            product_id = self._product_id(conn, gtin)
            subs = self._gtins(conn, "substitute", substitutes)
            if product_id in subs:
                raise DutyRefused.naming(
                    "substitutes", gtin, "is the product itself, not a substitute"
                )
            twin = conn.execute(
                select(shortages.c.id).where(
                    shortages.c.product_id == product_id, shortages.c.notice_ref == ref
                )
            ).first()
            if twin is not None:
                raise DutyRefused.naming(
                    "notice_ref",
                    ref,
                    f"is already recorded for {gtin} (shortage {twin.id})",
                    conflict=True,
                )
            values: dict[str, Any] = {
                "product_id": product_id,
                "notice_ref": ref,
                "supplier": supplier,
                "noticed_at": self.clock(),
                "expected_end": expected_end,
                "status": "open",
                "note": note,
                "recorded_by": actor,
            }
            sid = int(
                conn.execute(
                    insert(shortages).values(**values).returning(shortages.c.id)
                ).scalar_one()
            )
            for pid in subs:
                conn.execute(insert(shortage_substitutes).values(shortage_id=sid, product_id=pid))
            self._note(
                "shortage",
                str(sid),
                None,
                {
                    "gtin": gtin,
                    "notice_ref": ref,
                    "supplier": supplier,
                    "expected_end": expected_end,
                    "substitutes": list(substitutes),
                    "note": note,
                },
            )
            return self._shortage(conn, sid, ())

    def update_shortage(
        self,
        shortage_id: int,
        *,
        expected_end: date | None = None,
        substitutes: Sequence[str] | None = None,
        note: str | None = None,
        actor: str,
        today: date | None = None,
    ) -> ShortageView:
        """Changes an open shortage's expected end, substitutes (the whole list) or note;
        what is None stays as it was."""
        day = self._today(today)
        if expected_end is not None and expected_end < day:
            raise DutyRefused.naming(
                "expected_end", expected_end, f"is in the past (today is {day})"
            )
        if note is not None:
            note = _text("note", note, 2000, required=False) or ""
        with self._tx(actor, "shortage", f"update of shortage {shortage_id}") as conn:
            old = self._shortage(conn, shortage_id, ())
            if old.status != "open":
                raise DutyRefused.naming("shortage", shortage_id, "is closed", conflict=True)
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            if substitutes is not None:
                subs = self._gtins(conn, "substitute", substitutes)
                if self._product_id(conn, old.gtin) in subs:
                    raise DutyRefused.naming(
                        "substitutes", old.gtin, "is the product itself, not a substitute"
                    )
                was = [s.gtin for s in old.substitutes]
                if sorted(was) != sorted(set(substitutes)):
                    conn.execute(
                        delete(shortage_substitutes).where(
                            shortage_substitutes.c.shortage_id == shortage_id
                        )
                    )
                    for pid in subs:
                        conn.execute(
                            insert(shortage_substitutes).values(
                                shortage_id=shortage_id, product_id=pid
                            )
                        )
                    before["substitutes"], after["substitutes"] = was, list(substitutes)
            values: dict[str, Any] = {}
            if expected_end is not None and expected_end != old.expected_end:
                values["expected_end"] = expected_end
                before["expected_end"], after["expected_end"] = old.expected_end, expected_end
            if note is not None and note != old.note:
                values["note"] = note
                before["note"], after["note"] = old.note, note
            if values:
                conn.execute(
                    update(shortages).where(shortages.c.id == shortage_id).values(**values)
                )
            if after:
                self._note("shortage", str(shortage_id), before, after)
            return self._shortage(conn, shortage_id, ())

    def close_shortage(self, shortage_id: int, *, actor: str) -> ShortageView:
        """Closes a shortage (the product is delivered again). A rationing rule decided
        for it stays in force until it is ended on its own."""
        with self._tx(actor, "shortage", f"close of shortage {shortage_id}") as conn:
            old = self._shortage(conn, shortage_id, ())
            if old.status != "open":
                raise DutyRefused.naming(
                    "shortage",
                    shortage_id,
                    f"is already closed (by {old.closed_by})",
                    conflict=True,
                )
            now = self.clock()
            conn.execute(
                update(shortages)
                .where(shortages.c.id == shortage_id)
                .values(status="closed", closed_at=now, closed_by=actor)
            )
            self._note("shortage", str(shortage_id), {"status": "open"}, {"status": "closed"})
            return self._shortage(conn, shortage_id, ())

    def shortages(
        self,
        *,
        status: str | None = "open",
        gtin: str | None = None,
        free_at: Sequence[str] = (),
    ) -> list[ShortageView]:
        """Shortage notices, newest first (`status` None: all). With `free_at` (store
        locations), each substitute carries its free stock there."""
        if status is not None and status not in ("open", "closed"):
            raise DutyRefused.naming("status", status, "must be open or closed")
        with self._reading() as conn:
            q = select(shortages.c.id)
            if status is not None:
                q = q.where(shortages.c.status == status)
            if gtin is not None:
                q = q.where(shortages.c.product_id == self._product_id(conn, gtin))
            ids = [int(x) for x in conn.execute(q.order_by(shortages.c.id.desc())).scalars()]
            return [self._shortage(conn, sid, free_at) for sid in ids]

    def shortage(self, shortage_id: int, *, free_at: Sequence[str] = ()) -> ShortageView:
        with self._reading() as conn:
            return self._shortage(conn, shortage_id, free_at)

    def _shortage(self, conn: Connection, shortage_id: int, free_at: Sequence[str]) -> ShortageView:
        row = conn.execute(
            select(shortages, products.c.gtin, products.c.name)
            .join(products, products.c.id == shortages.c.product_id)
            .where(shortages.c.id == shortage_id)
        ).first()
        if row is None:
            raise UnknownEntity("shortage", shortage_id)
        loc_ids = [self._internal_location_id(conn, code) for code in free_at]
        subs = []
        for s in conn.execute(
            select(products.c.id, products.c.gtin, products.c.name)
            .join(shortage_substitutes, shortage_substitutes.c.product_id == products.c.id)
            .where(shortage_substitutes.c.shortage_id == shortage_id)
            .order_by(products.c.gtin)
        ):
            free = None
            if loc_ids:
                free = sum(a for _, _, a in self._fefo_candidates(conn, int(s.id), loc_ids))
            subs.append(Substitute(str(s.gtin), str(s.name), free))
        m = row._mapping
        return ShortageView(
            id=int(m["id"]),
            gtin=str(m["gtin"]),
            name=str(m["name"]),
            notice_ref=str(m["notice_ref"]),
            supplier=m["supplier"],
            noticed_at=m["noticed_at"],
            expected_end=m["expected_end"],
            status=str(m["status"]),
            note=str(m["note"]),
            recorded_by=str(m["recorded_by"]),
            closed_at=m["closed_at"],
            closed_by=m["closed_by"],
            substitutes=tuple(subs),
        )

    # ------------------------------------------------------------------ rationing

    def start_rationing(
        self,
        gtin: str,
        *,
        cap_per_ward_day: int,
        priority_wards: Sequence[str] = (),
        reason: str,
        shortage_id: int | None = None,
        actor: str,
    ) -> RationRuleView:
        """Rations a product among wards from now on: at most `cap_per_ward_day` units
        per ward and local day, the priority wards served first and not capped. One rule
        in force per product. The wards are the caller's to check against the site."""
        cap = _whole("cap_per_ward_day", cap_per_ward_day, low=0, high=MAX_CAP)
        why = _text("reason", reason, 2000)
        wards: list[str] = []
        for ward in priority_wards:
            w = _text("priority_wards", ward, 32)
            if w is not None and w not in wards:
                wards.append(w)
        with self._tx(actor, "rationing", str(why)[:200]) as conn:
            product_id = self._product_id(conn, gtin)
            first = conn.execute(
                select(rationing_rules.c.id).where(
                    rationing_rules.c.product_id == product_id, rationing_rules.c.ends_at.is_(None)
                )
            ).first()
            if first is not None:
                raise DutyRefused.naming(
                    "gtin",
                    gtin,
                    f"is already rationed by rule {first.id}: end it first",
                    conflict=True,
                )
            if shortage_id is not None:
                found = conn.execute(
                    select(shortages.c.product_id).where(shortages.c.id == shortage_id)
                ).first()
                if found is None:
                    raise UnknownEntity("shortage", shortage_id)
                if int(found.product_id) != product_id:
                    raise DutyRefused.naming(
                        "shortage_id", shortage_id, f"is a shortage of another product than {gtin}"
                    )
            now = self.clock()
            rid = int(
                conn.execute(
                    insert(rationing_rules)
                    .values(
                        product_id=product_id,
                        shortage_id=shortage_id,
                        cap_per_ward_day=cap,
                        starts_at=now,
                        ends_at=None,
                        reason=why,
                        decided_by=actor,
                        decided_at=now,
                    )
                    .returning(rationing_rules.c.id)
                ).scalar_one()
            )
            for ward in wards:
                conn.execute(insert(rationing_priority_wards).values(rule_id=rid, ward=ward))
            self._note(
                "rationing",
                str(rid),
                None,
                {
                    "gtin": gtin,
                    "cap_per_ward_day": cap,
                    "priority_wards": wards,
                    "shortage_id": shortage_id,
                    "reason": why,
                },
            )
            return self._rule(conn, rid)

    def end_rationing(self, rule_id: int, *, actor: str) -> RationRuleView:
        """Ends a rationing rule now; the draws made under it stay."""
        with self._tx(actor, "rationing", f"end of rule {rule_id}") as conn:
            old = self._rule(conn, rule_id)
            if old.ends_at is not None:
                raise DutyRefused.naming(
                    "rule",
                    rule_id,
                    f"has already ended ({old.ends_at:%Y-%m-%d %H:%M})",
                    conflict=True,
                )
            now = self.clock()
            conn.execute(
                update(rationing_rules).where(rationing_rules.c.id == rule_id).values(ends_at=now)
            )
            self._note("rationing", str(rule_id), {"ends_at": None}, {"ends_at": now})
            return self._rule(conn, rule_id)

    def rationing_rules(
        self, *, in_force: bool = True, gtin: str | None = None
    ) -> list[RationRuleView]:
        """Rationing rules, newest first: those in force, or all."""
        with self._reading() as conn:
            q = select(rationing_rules.c.id)
            if in_force:
                q = q.where(rationing_rules.c.ends_at.is_(None))
            if gtin is not None:
                q = q.where(rationing_rules.c.product_id == self._product_id(conn, gtin))
            ids = [int(x) for x in conn.execute(q.order_by(rationing_rules.c.id.desc())).scalars()]
            return [self._rule(conn, rid) for rid in ids]

    def rationed_products(self) -> int:
        """How many products are rationed now (the metric's gauge)."""
        with self._reading() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(rationing_rules.c.ends_at.is_(None))
                ).scalar_one()
            )

    def open_shortage_count(self) -> int:
        """How many shortage notices are open (the metric's gauge)."""
        with self._reading() as conn:
            return int(
                conn.execute(select(func.count()).where(shortages.c.status == "open")).scalar_one()
            )

    def _rule(self, conn: Connection, rule_id: int) -> RationRuleView:
        row = conn.execute(
            select(rationing_rules, products.c.gtin, products.c.name)
            .join(products, products.c.id == rationing_rules.c.product_id)
            .where(rationing_rules.c.id == rule_id)
        ).first()
        if row is None:
            raise UnknownEntity("rule", rule_id)
        wards = tuple(
            str(w)
            for w in conn.execute(
                select(rationing_priority_wards.c.ward)
                .where(rationing_priority_wards.c.rule_id == rule_id)
                .order_by(rationing_priority_wards.c.ward)
            ).scalars()
        )
        m = row._mapping
        return RationRuleView(
            id=int(m["id"]),
            gtin=str(m["gtin"]),
            name=str(m["name"]),
            shortage_id=m["shortage_id"],
            cap_per_ward_day=int(m["cap_per_ward_day"]),
            priority_wards=wards,
            starts_at=m["starts_at"],
            ends_at=m["ends_at"],
            reason=str(m["reason"]),
            decided_by=str(m["decided_by"]),
            decided_at=m["decided_at"],
        )

    def ration_draws(
        self,
        *,
        gtin: str | None = None,
        ward: str | None = None,
        day: date | None = None,
        rule_id: int | None = None,
    ) -> list[RationDraw]:
        """What wards were granted of rationed products, in the order drawn."""
        with self._reading() as conn:
            q = (
                select(ration_draws, products.c.gtin)
                .join(rationing_rules, rationing_rules.c.id == ration_draws.c.rule_id)
                .join(products, products.c.id == rationing_rules.c.product_id)
            )
            if gtin is not None:
                q = q.where(rationing_rules.c.product_id == self._product_id(conn, gtin))
            if ward is not None:
                q = q.where(ration_draws.c.ward == ward)
            if day is not None:
                q = q.where(ration_draws.c.day == day)
            if rule_id is not None:
                q = q.where(ration_draws.c.rule_id == rule_id)
            return [
                RationDraw(
                    id=int(r.id),
                    rule_id=int(r.rule_id),
                    gtin=str(r.gtin),
                    ward=str(r.ward),
                    day=r.day,
                    units=int(r.units),
                    source=str(r.source),
                    ref=str(r.ref),
                    ts=r.ts,
                )
                for r in conn.execute(q.order_by(ration_draws.c.id))
            ]

    def draw_ration(
        self,
        gtin: str,
        *,
        ward: str,
        day: date,
        units: int,
        source: str,
        ref: str,
        step: int = 1,
        actor: str,
    ) -> RationGrant | None:
        """Grants one request of a product under the rule in force for it (None: the
        product is not rationed, nothing is written), and records the grant as a draw
        keyed by (`source`, `ref`): the same request again answers its first grant."""
        with self._reading() as conn:
            rationed = self._rule_in_force(conn, self._product_id(conn, gtin)) is not None
        if not rationed:
            return None
        with self._tx(actor, "ration draw", f"{source} {ref}"[:200]) as conn:
            grants = self.draw_rations_in(
                conn, gtin, [RationAsk(ref, ward, units, step)], day=day, source=source
            )
        return grants[0] if grants else None

    def draw_rations_in(
        self,
        conn: Connection,
        gtin: str,
        asks: Sequence[RationAsk],
        *,
        day: date,
        source: str,
        available: int | None = None,
    ) -> list[RationGrant]:
        """Inside an audited transaction (`audited`, or the ledger's own): grants the
        requests of a product under the rule in force (an empty list: not rationed),
        served by `rationing.ration`, and writes a draw for each grant above 0.
        A request already drawn under (`source`, `ref`) keeps its first grant."""
        if source not in DRAW_SOURCES:
            raise DutyRefused.naming("source", source, f"must be one of {', '.join(DRAW_SOURCES)}")
        product_id = self._product_id(conn, gtin)
        # the rule's row is locked (PostgreSQL) until the draws commit: two controllers
        # drawing on one product at once take turns, so neither misses the other's draw
        rule = self._rule_in_force(conn, product_id, lock=True)
        if rule is None:
            return []
        for i, a in enumerate(asks):
            _text(f"asks[{i}].ward", a.ward, 32)
            _text(f"asks[{i}].ref", a.ref, 200)
            _whole(f"asks[{i}].units", a.units, low=0, high=2**31 - 1)
            _whole(f"asks[{i}].step", a.step, low=1, high=2**31 - 1)
        refs = [a.ref for a in asks]
        before = {
            str(r.ref): int(r.units)
            for r in conn.execute(
                select(ration_draws.c.ref, ration_draws.c.units).where(
                    ration_draws.c.source == source, ration_draws.c.ref.in_(refs)
                )
            )
        }
        fresh = [a for a in asks if a.ref not in before]
        wards = sorted({a.ward for a in fresh})
        drawn: dict[str, int] = {}
        if wards:
            for w, u in conn.execute(
                select(ration_draws.c.ward, ration_draws.c.units).where(
                    ration_draws.c.rule_id == rule.id,
                    ration_draws.c.day == day,
                    ration_draws.c.ward.in_(wards),
                )
            ):
                drawn[str(w)] = drawn.get(str(w), 0) + int(u)
        decided: list[Grant] = ration(
            [Request(a.ward, a.units, a.step) for a in fresh],
            drawn,
            rule.cap_per_ward_day,
            rule.priority_wards,
            available,
        )
        by_ref = dict(zip([a.ref for a in fresh], decided, strict=True))
        now = self.clock()
        out: list[RationGrant] = []
        for a in asks:
            if a.ref in before:
                got = before[a.ref]
                out.append(
                    RationGrant(
                        rule.id,
                        rule.cap_per_ward_day,
                        a.ref,
                        a.ward,
                        day,
                        a.units,
                        min(got, a.units),
                        0,
                        max(0, a.units - got),
                        a.ward in rule.priority_wards,
                        True,
                    )
                )
                continue
            g = by_ref[a.ref]
            if g.granted > 0:
                conn.execute(
                    insert(ration_draws).values(
                        rule_id=rule.id,
                        ward=a.ward,
                        day=day,
                        units=g.granted,
                        source=source,
                        ref=a.ref,
                        ts=now,
                    )
                )
            self._note(
                "ration_draw",
                f"{source}:{a.ref}",
                None,
                {
                    "rule": rule.id,
                    "gtin": gtin,
                    "ward": a.ward,
                    "day": day,
                    "asked": a.units,
                    "granted": g.granted,
                },
            )
            out.append(
                RationGrant(
                    rule.id,
                    rule.cap_per_ward_day,
                    a.ref,
                    a.ward,
                    day,
                    a.units,
                    g.granted,
                    g.capped,
                    g.short,
                    g.priority,
                    False,
                )
            )
        return out

    def settle_ration_draw_in(self, conn: Connection, source: str, ref: str, units: int) -> bool:
        """Inside an audited transaction: lowers a draw to what was really given (a
        reservation got less), so the ward's cap counts what it got. Never raises it."""
        row = conn.execute(
            select(ration_draws.c.id, ration_draws.c.units).where(
                ration_draws.c.source == source, ration_draws.c.ref == ref
            )
        ).first()
        if row is None or int(row.units) <= max(0, units):
            return False
        conn.execute(
            update(ration_draws).where(ration_draws.c.id == row.id).values(units=max(0, units))
        )
        self._note("ration_draw", f"{source}:{ref}", {"units": int(row.units)}, {"units": units})
        return True

    def settle_ration_draw(self, source: str, ref: str, units: int, *, actor: str) -> bool:
        """`settle_ration_draw_in` in a transaction of its own."""
        with self._tx(actor, "ration draw", f"settle {source} {ref}"[:200]) as conn:
            return self.settle_ration_draw_in(conn, source, ref, units)

    def _rule_in_force(
        self, conn: Connection, product_id: int, *, lock: bool = False
    ) -> RationRuleView | None:
        q = select(rationing_rules.c.id).where(
            rationing_rules.c.product_id == product_id, rationing_rules.c.ends_at.is_(None)
        )
        rid = conn.execute(q.with_for_update() if lock else q).scalar()
        return None if rid is None else self._rule(conn, int(rid))

    # ------------------------------------------------------------------ licences

    def record_licence(
        self,
        gtin: str,
        *,
        holder_kind: str,
        holder: str,
        number: str,
        valid_from: date,
        valid_to: date,
        fee_sek: Decimal | int | str,
        actor: str,
    ) -> LicenceView:
        """Records a licence for a product, held by a ward or a patient (pseudonym).
        Any product may get one; only the catalogue's licence products are checked at
        dispatch (the ledger does not know which those are)."""
        if holder_kind not in LICENCE_HOLDER_KINDS:
            raise DutyRefused.naming(
                "holder_kind",
                holder_kind,
                f"must be one of {', '.join(LICENCE_HOLDER_KINDS)}",
            )
        who = _text("holder", holder, 64)
        no = _text("number", number, 50)
        for name, value in (("valid_from", valid_from), ("valid_to", valid_to)):
            if not isinstance(value, date) or isinstance(value, datetime):
                raise DutyRefused.naming(name, value, "must be a date")
        if valid_to < valid_from:
            raise DutyRefused.naming("valid_to", valid_to, f"is before valid_from {valid_from}")
        try:
            fee = Decimal(str(fee_sek))
        except InvalidOperation:
            raise DutyRefused.naming("fee_sek", fee_sek, "is not a number") from None
        if not fee.is_finite() or fee < 0 or fee > MAX_FEE or fee != fee.quantize(Decimal("0.01")):
            raise DutyRefused.naming(
                "fee_sek", fee_sek, f"must be 0 or more, at most {MAX_FEE}, in whole öre"
            )
        with self._tx(actor, "licence", f"licence {no}") as conn:
            product_id = self._product_id(conn, gtin)
            twin = conn.execute(select(licences.c.id).where(licences.c.number == no)).first()
            if twin is not None:
                raise DutyRefused.naming("number", no, "is already recorded", conflict=True)
            values: dict[str, Any] = {
                "product_id": product_id,
                "holder_kind": holder_kind,
                "holder": who,
                "number": no,
                "valid_from": valid_from,
                "valid_to": valid_to,
                "fee_sek": fee,
                "recorded_by": actor,
                "recorded_at": self.clock(),
            }
            conn.execute(insert(licences).values(**values))
            self._note(
                "licence",
                str(no),
                None,
                {
                    "gtin": gtin,
                    "holder_kind": holder_kind,
                    "holder": who,
                    "valid_from": valid_from,
                    "valid_to": valid_to,
                    "fee_sek": str(fee),
                },
            )
            return self._licences(conn, number=no)[0]

    def revoke_licence(self, number: str, *, actor: str, reason: str = "") -> LicenceView:
        """Revokes a licence from now on (it is kept, with who revoked it)."""
        with self._tx(actor, "licence", (f"revoke {number}: {reason}")[:200]) as conn:
            found = self._licences(conn, number=number)
            if not found:
                raise UnknownEntity("licence", number)
            if found[0].revoked_at is not None:
                raise DutyRefused.naming(
                    "licence",
                    number,
                    f"is already revoked (by {found[0].revoked_by})",
                    conflict=True,
                )
            now = self.clock()
            conn.execute(
                update(licences)
                .where(licences.c.number == number)
                .values(revoked_at=now, revoked_by=actor)
            )
            self._note(
                "licence", number, {"revoked_at": None}, {"revoked_at": now, "reason": reason}
            )
            return self._licences(conn, number=number)[0]

    def licences(
        self,
        *,
        gtin: str | None = None,
        holder: str | None = None,
        valid_on: date | None = None,
    ) -> list[LicenceView]:
        """Licences with their fees, by number (finance's list). `valid_on`: only those
        valid that day (not revoked)."""
        with self._reading() as conn:
            found = self._licences(conn, gtin=gtin, holder=holder)
        if valid_on is not None:
            found = [x for x in found if x.valid_on(valid_on)]
        return found

    def valid_licence(
        self, gtin: str, ward: str, on_date: date, *, patient: str | None = None
    ) -> LicenceView | None:
        """A licence that allows the product on the ward that day: the patient's if a
        patient is named, else the ward's. None: no valid licence."""
        kind, holder = ("patient", patient) if patient else ("ward", ward)
        with self._reading() as conn:
            product_id = self._product_id(conn, gtin)
            row = conn.execute(
                select(licences.c.number)
                .where(
                    licences.c.product_id == product_id,
                    licences.c.holder_kind == kind,
                    licences.c.holder == holder,
                    licences.c.revoked_at.is_(None),
                    and_(licences.c.valid_from <= on_date, licences.c.valid_to >= on_date),
                )
                .order_by(licences.c.valid_to.desc())
            ).first()
            if row is None:
                return None
            return self._licences(conn, number=str(row.number))[0]

    def _licences(
        self,
        conn: Connection,
        *,
        number: str | None = None,
        gtin: str | None = None,
        holder: str | None = None,
    ) -> list[LicenceView]:
        q = select(licences, products.c.gtin, products.c.name).join(
            products, products.c.id == licences.c.product_id
        )
        if number is not None:
            q = q.where(licences.c.number == number)
        if gtin is not None:
            q = q.where(licences.c.product_id == self._product_id(conn, gtin))
        if holder is not None:
            q = q.where(licences.c.holder == holder)
        out = []
        for r in conn.execute(q.order_by(licences.c.number)):
            m = r._mapping
            out.append(
                LicenceView(
                    id=int(m["id"]),
                    gtin=str(m["gtin"]),
                    name=str(m["name"]),
                    holder_kind=str(m["holder_kind"]),
                    holder=str(m["holder"]),
                    number=str(m["number"]),
                    valid_from=m["valid_from"],
                    valid_to=m["valid_to"],
                    fee_sek=Decimal(str(m["fee_sek"])).quantize(Decimal("0.01")),
                    recorded_by=str(m["recorded_by"]),
                    recorded_at=m["recorded_at"],
                    revoked_at=m["revoked_at"],
                    revoked_by=m["revoked_by"],
                )
            )
        return out
