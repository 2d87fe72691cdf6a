"""The stock duty in the ledger: the preparedness list (target and floor per product,
imported whole) and crisis periods (decided, scoped, ended, audited).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select, update

from controller.duty_rules import crisis as rules
from controller.duty_rules.preparedness_file import (
    FileProblem,
    check_gtin,
    check_levels,
    parse_preparedness,
)
from controller.ledger.core import LedgerCore
from controller.ledger.duty_state import load_periods
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.schema import PRODUCT_CATEGORIES, audit_head, products
from controller.ledger.schema_duty import crisis_periods, crisis_scope, preparedness_targets

MAX_LIST_NAME = 100


class PreparednessRefused(LedgerError):
    """A preparedness list (or one product of it) refused: every problem, nothing written."""

    def __init__(self, problems: Sequence[FileProblem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s), nothing written:\n{lines}")


class CrisisRefused(LedgerError):
    """A crisis period refused, naming the field and the value at fault."""

    def __init__(self, field: str, value: object, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.conflict = conflict  # refused by another period or the period's own state


@dataclass(frozen=True)
class PreparednessTarget:
    gtin: str
    name: str
    category: str
    target_units: int
    floor_units: int
    list_name: str
    imported_by: str
    imported_at: datetime


@dataclass(frozen=True)
class PreparednessImport:
    """What a list import changed (or, with dry_run, would change), by GTIN."""

    list_name: str
    dry_run: bool
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]


@dataclass(frozen=True)
class CrisisPeriod:
    id: int
    starts_at: datetime
    ends_at: datetime | None
    reason: str
    decided_by: str
    decided_at: datetime
    ended_by: str | None
    end_reason: str | None
    categories: tuple[str, ...]  # both empty: every product
    gtins: tuple[str, ...]
    in_force: bool  # at the time of reading


def require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise CrisisRefused(
            name, value.isoformat(), f"{name}: {value.isoformat()} has no time zone"
        )


def _text(field: str, value: str, *, minimum: int = 3) -> str:
    if len(value.strip()) < minimum:
        raise CrisisRefused(field, value, f"{field}: {value!r} must be written out")
    return value.strip()


def _serialise(conn: Connection) -> None:
    """On PostgreSQL, takes the audit chain's head lock now (the commit takes it anyway),
    so two crisis decisions or list imports check and write one after the other."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update())


class DutyPreparedness(LedgerCore):
    """Preparedness and crisis: written in audited transactions, read by the reports."""

    # ------------------------------------------------------------------ preparedness

    def preparedness_list(self) -> list[PreparednessTarget]:
        """The list as it stands, by product name."""
        t = preparedness_targets
        query = (
            select(
                products.c.gtin,
                products.c.name,
                products.c.category,
                t.c.target_units,
                t.c.floor_units,
                t.c.list_name,
                t.c.imported_by,
                t.c.imported_at,
            )
            .join(products, products.c.id == t.c.product_id)
            .order_by(products.c.name, products.c.gtin)
        )
        with self.engine.connect() as conn:
            return [
                PreparednessTarget(
                    gtin=r.gtin,
                    name=r.name,
                    category=r.category,
                    target_units=int(r.target_units),
                    floor_units=int(r.floor_units),
                    list_name=r.list_name,
                    imported_by=r.imported_by,
                    imported_at=r.imported_at,
                )
                for r in conn.execute(query)
            ]

    def import_preparedness(
        self, text: str, *, list_name: str, actor: str, dry_run: bool = False
    ) -> PreparednessImport:
        """Replaces the whole list with the file's (docs/stock-duty.md, Preparedness).

        The file is checked whole first, then every GTIN against the products: any
        problem refuses it all (`PreparednessRefused`, every problem named) and nothing
        is written. Each product added, changed or removed is a change of one audited
        transaction. With `dry_run` everything is checked and nothing written.
        """
        name = list_name.strip()
        if not name or len(name) > MAX_LIST_NAME:
            raise PreparednessRefused(
                [
                    FileProblem(
                        0, "list_name", list_name, f"{list_name!r} must be 1 to 100 characters"
                    )
                ]
            )
        parsed = parse_preparedness(text)
        problems = list(parsed.problems)
        with self._tx(actor, "preparedness_import", f"preparedness list {name}") as conn:
            ids = self._product_ids(conn, [line.gtin for line in parsed.lines])
            problems += [
                FileProblem(line.line, "gtin", line.gtin, f"{line.gtin} is not a known product")
                for line in parsed.lines
                if line.gtin not in ids
            ]
            if problems:
                problems.sort(key=lambda p: p.line)
                raise PreparednessRefused(problems)
            _serialise(conn)
            current = self._current_targets(conn)
            wanted = {ids[line.gtin]: line for line in parsed.lines}
            gtins = {pid: line.gtin for pid, line in wanted.items()}
            gtins.update({pid: row[0] for pid, row in current.items()})
            added, changed, unchanged = [], [], []
            for pid, line in wanted.items():
                levels = (line.target_units, line.floor_units)
                if pid not in current:
                    added.append(line.gtin)
                elif current[pid][1:3] != levels:
                    changed.append(line.gtin)
                else:
                    unchanged.append(line.gtin)
            removed = sorted(gtins[pid] for pid in current if pid not in wanted)
            result = PreparednessImport(
                list_name=name,
                dry_run=dry_run,
                added=tuple(sorted(added)),
                changed=tuple(sorted(changed)),
                removed=tuple(removed),
                unchanged=tuple(sorted(unchanged)),
            )
            if dry_run:
                return result
            now = self.clock()
            for pid in current:
                if pid not in wanted:
                    self._put_target(conn, pid, gtins[pid], current, None, name, actor, now)
            for pid, line in wanted.items():
                levels = (line.target_units, line.floor_units)
                self._put_target(conn, pid, line.gtin, current, levels, name, actor, now)
            return result

    def set_preparedness(
        self,
        gtin: str,
        *,
        target_units: int,
        floor_units: int,
        actor: str,
        list_name: str | None = None,
    ) -> PreparednessTarget:
        """Sets one product's target and floor (audited); `list_name` None keeps the
        product's list name, or `set by hand` for a product new to the list."""
        problems = []
        normal, gtin_problem = check_gtin(gtin)
        if gtin_problem is not None:
            problems.append(gtin_problem)
        for field, value in (("target_units", target_units), ("floor_units", floor_units)):
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(
                    FileProblem(0, field, str(value), f"{value!r} is not a whole number")
                )
        if not problems:
            problems += check_levels(target_units, floor_units)
        if problems:
            raise PreparednessRefused(problems)
        assert normal is not None
        with self._tx(actor, "preparedness_set", f"preparedness of {normal}") as conn:
            pid = self._product_id(conn, normal)
            current = self._current_targets(conn)
            name = list_name.strip() if list_name else None
            if not name:
                name = current[pid][3] if pid in current else "set by hand"
            levels = (target_units, floor_units)
            self._put_target(conn, pid, normal, current, levels, name, actor, self.clock())
        return next(t for t in self.preparedness_list() if t.gtin == normal)

    def remove_preparedness(self, gtin: str, *, actor: str) -> None:
        """Takes one product off the list (audited); refused when it is not on it."""
        normal, problem = check_gtin(gtin)
        if problem is not None:
            raise PreparednessRefused([problem])
        assert normal is not None
        with self._tx(actor, "preparedness_remove", f"preparedness of {normal}") as conn:
            pid = self._product_id(conn, normal)
            current = self._current_targets(conn)
            if pid not in current:
                raise LedgerError(f"gtin: {normal} is not on the preparedness list")
            self._put_target(conn, pid, normal, current, None, "", actor, self.clock())

    def _product_ids(self, conn: Connection, gtins: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        wanted = sorted(set(gtins))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(
                select(products.c.gtin, products.c.id).where(products.c.gtin.in_(chunk))
            )
            found.update({str(g): int(i) for g, i in rows})
        return found

    def _current_targets(self, conn: Connection) -> dict[int, tuple[str, int, int, str]]:
        t = preparedness_targets
        rows = conn.execute(
            select(
                t.c.product_id, products.c.gtin, t.c.target_units, t.c.floor_units, t.c.list_name
            ).join(products, products.c.id == t.c.product_id)
        )
        return {
            int(pid): (str(gtin), int(target), int(floor), str(name))
            for pid, gtin, target, floor, name in rows
        }

    def _put_target(
        self,
        conn: Connection,
        pid: int,
        gtin: str,
        current: dict[int, tuple[str, int, int, str]],
        levels: tuple[int, int] | None,
        list_name: str,
        actor: str,
        now: datetime,
    ) -> None:
        """Adds, changes or removes one product's row and notes the change; a row
        whose levels stay the same keeps its list name and import stamp."""
        t = preparedness_targets
        before = current.get(pid)
        old = None if before is None else {"target_units": before[1], "floor_units": before[2]}
        if levels is None:
            conn.execute(delete(t).where(t.c.product_id == pid))
            self._note("preparedness", gtin, old, None)
            return
        new = {"target_units": levels[0], "floor_units": levels[1]}
        if old == new:
            return
        stamp = {"list_name": list_name, "imported_by": actor, "imported_at": now}
        if before is None:
            conn.execute(insert(t).values(product_id=pid, **new, **stamp))
        else:
            conn.execute(update(t).where(t.c.product_id == pid).values(**new, **stamp))
        self._note("preparedness", gtin, old, {**new, "list_name": list_name})

    # ------------------------------------------------------------------ crisis

    def start_crisis(
        self,
        *,
        starts_at: datetime,
        reason: str,
        actor: str,
        categories: Sequence[str] = (),
        gtins: Sequence[str] = (),
        ends_at: datetime | None = None,
    ) -> CrisisPeriod:
        """Records a decided crisis period (audited): from `starts_at` (now or later, at
        most a day back), for the categories and products given (none: every product).
        Refused when it overlaps another period (same time, scopes that meet)."""
        require_aware("starts_at", starts_at)
        if ends_at is not None:
            require_aware("ends_at", ends_at)
        why = _text("reason", reason, minimum=10)
        for category in categories:
            if category not in PRODUCT_CATEGORIES:
                raise CrisisRefused(
                    "categories",
                    category,
                    f"categories: {category!r} is not a category "
                    f"(one of {', '.join(PRODUCT_CATEGORIES)})",
                )
        normal: list[str] = []
        for gtin in gtins:
            value, problem = check_gtin(gtin)
            if problem is not None:
                raise CrisisRefused("gtins", gtin, f"gtins: {problem.message}")
            assert value is not None
            normal.append(value)
        now = self.clock()
        try:
            rules.check_new_period(starts_at, ends_at, now)
        except rules.CrisisRuleError as exc:
            raise CrisisRefused(exc.field, exc.value, str(exc)) from None
        with self._tx(actor, "crisis_start", why) as conn:
            ids = self._product_ids(conn, normal)
            unknown = sorted(set(normal) - set(ids))
            if unknown:
                raise UnknownEntity("gtin", unknown[0] if len(unknown) == 1 else unknown)
            query = select(products.c.gtin, products.c.category).where(products.c.gtin.in_(normal))
            cats = {str(g): str(c) for g, c in conn.execute(query)}
            scope = rules.Scope(categories=frozenset(categories), products=cats)
            new = rules.Period(id=0, starts_at=starts_at, ends_at=ends_at, scope=scope)
            _serialise(conn)
            other = rules.first_overlap(new, load_periods(conn))
            if other is not None:
                raise CrisisRefused(
                    "starts_at",
                    starts_at.isoformat(),
                    f"the period overlaps {other.describe()}",
                    conflict=True,
                )
            crisis_id = int(
                conn.execute(
                    insert(crisis_periods)
                    .values(
                        starts_at=starts_at,
                        ends_at=ends_at,
                        reason=why,
                        decided_by=actor,
                        decided_at=now,
                    )
                    .returning(crisis_periods.c.id)
                ).scalar_one()
            )
            for category in sorted(set(categories)):
                conn.execute(insert(crisis_scope).values(crisis_id=crisis_id, category=category))
            for gtin in sorted(set(normal)):
                conn.execute(insert(crisis_scope).values(crisis_id=crisis_id, product_id=ids[gtin]))
            self._note(
                "crisis",
                str(crisis_id),
                None,
                {
                    "starts_at": starts_at,
                    "ends_at": ends_at,
                    "reason": why,
                    "categories": sorted(set(categories)),
                    "gtins": sorted(set(normal)),
                },
            )
        return self.crisis_period(crisis_id)

    def end_crisis(
        self, crisis_id: int, *, reason: str, actor: str, ends_at: datetime | None = None
    ) -> CrisisPeriod:
        """Ends a period at `ends_at` (default now), audited; ending an ended one, or
        before it starts, is refused."""
        why = _text("reason", reason, minimum=10)
        now = self.clock()
        end = now if ends_at is None else ends_at
        require_aware("ends_at", end)
        with self._tx(actor, "crisis_end", why) as conn:
            row = conn.execute(
                select(crisis_periods).where(crisis_periods.c.id == crisis_id)
            ).first()
            if row is None:
                raise UnknownEntity("crisis", crisis_id)
            period = rules.Period(id=int(row.id), starts_at=row.starts_at, ends_at=row.ends_at)
            ended = row.ended_by is not None or (row.ends_at is not None and row.ends_at <= now)
            try:
                rules.check_end(period, end, now, ended=ended)
            except rules.CrisisRuleError as exc:
                conflict = exc.field == "id"
                raise CrisisRefused(exc.field, exc.value, str(exc), conflict=conflict) from None
            conn.execute(
                update(crisis_periods)
                .where(crisis_periods.c.id == crisis_id)
                .values(ends_at=end, ended_by=actor, end_reason=why)
            )
            self._note(
                "crisis",
                str(crisis_id),
                {"ends_at": row.ends_at},
                {"ends_at": end, "end_reason": why},
            )
        return self.crisis_period(crisis_id)

    def crisis_period(self, crisis_id: int) -> CrisisPeriod:
        found = [p for p in self.crisis_periods() if p.id == crisis_id]
        if not found:
            raise UnknownEntity("crisis", crisis_id)
        return found[0]

    def crisis_periods(
        self, *, at: datetime | None = None, in_force_only: bool = False
    ) -> list[CrisisPeriod]:
        """Every crisis period in order of start, `in_force` judged at `at` (default now);
        with `in_force_only` those in force then."""
        when = self.clock() if at is None else at
        require_aware("at", when)
        with self.engine.connect() as conn:
            scopes = {p.id: p for p in load_periods(conn)}
            rows = conn.execute(
                select(crisis_periods).order_by(crisis_periods.c.starts_at, crisis_periods.c.id)
            ).all()
        out = []
        for r in rows:
            period = scopes[int(r.id)]
            if in_force_only and not period.in_force(when):
                continue
            out.append(
                CrisisPeriod(
                    id=int(r.id),
                    starts_at=r.starts_at,
                    ends_at=r.ends_at,
                    reason=r.reason,
                    decided_by=r.decided_by,
                    decided_at=r.decided_at,
                    ended_by=r.ended_by,
                    end_reason=r.end_reason,
                    categories=tuple(sorted(period.scope.categories)),
                    gtins=tuple(sorted(period.scope.products)),
                    in_force=period.in_force(when),
                )
            )
        return out
