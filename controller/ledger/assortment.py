"""Import of an assortment and price list (CSV): every row is checked, then all rows
are written in one audited transaction, or none is."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from controller.config import valid_gtin
from controller.ledger.audit import Change, write_audit
from controller.ledger.errors import LedgerError
from controller.ledger.ledger import Ledger, utcnow
from controller.ledger.schema import PRODUCT_CATEGORIES, STORAGE, products
from controller.ledger.source import Source, engine_of, require_aware

ASSORTMENT_COLUMNS = (
    "gtin",
    "article",
    "name",
    "substance",
    "atc",
    "strength",
    "form",
    "unit",
    "pack_size",
    "unit_price",
    "category",
    "storage",
    "controlled_class",
    "substitution_group",
)
ATC_PATTERN = re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")  # level 5: a chemical substance


@dataclass(frozen=True)
class ImportProblem:
    line: int  # physical line in the file; the header is line 1
    field: str
    value: str
    message: str


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class ImportChange:
    line: int
    gtin: str
    article: int
    action: Literal["insert", "update", "unchanged"]
    changes: tuple[FieldChange, ...]  # for an update: what changed, old and new


@dataclass(frozen=True)
class ImportReport:
    ok: bool  # no problems
    dry_run: bool
    written: bool  # the changes were committed
    actor: str
    rows: int
    inserted: int
    updated: int
    unchanged: int
    problems: tuple[ImportProblem, ...]
    changes: tuple[ImportChange, ...]


_UPDATABLE = (
    "name",
    "substance",
    "atc",
    "strength",
    "form",
    "unit",
    "pack_size",
    "unit_price",
    "category",
    "storage",
    "controlled_class",
    "substitution_group",
)
_MAX_LEN = {
    "name": 200,
    "substance": 200,
    "strength": 50,
    "form": 50,
    "unit": 20,
    "controlled_class": 10,
    "substitution_group": 50,
}
_REQUIRED = ("name", "form", "unit")
_REQUIRED_FOR_DRUGS = ("substance", "strength")
_OPTIONAL = ("controlled_class", "substitution_group")  # empty is stored as NULL


@dataclass
class _Row:
    line: int
    values: dict[str, Any]


def _parse_int(text: str, *, low: int, high: int) -> int | None:
    if not re.fullmatch(r"\d+", text):
        return None
    value = int(text)
    return value if low <= value <= high else None


def _parse_price(text: str) -> Decimal | None:
    """A price with up to 4 decimals; a decimal comma is accepted (0,28 = 0.28)."""
    if not re.fullmatch(r"\d{1,8}([.,]\d{1,4})?", text):
        return None
    try:
        return Decimal(text.replace(",", "."))
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        return None


def _check_row(line: int, raw: dict[str, str], problems: list[ImportProblem]) -> _Row:
    """Parses and checks one row's fields on their own; problems are appended."""

    def bad(field: str, message: str) -> None:
        problems.append(ImportProblem(line, field, raw[field], message))

    values: dict[str, Any] = {}
    try:
        values["gtin"] = valid_gtin(raw["gtin"])
    except ValueError as exc:
        bad("gtin", str(exc))
    article = _parse_int(raw["article"], low=1, high=2**31 - 1)
    if article is None:
        bad("article", "must be a whole number from 1 to 2147483647")
    else:
        values["article"] = article
    pack_size = _parse_int(raw["pack_size"], low=1, high=2**31 - 1)
    if pack_size is None:
        bad("pack_size", "must be a whole number above 0")
    else:
        values["pack_size"] = pack_size
    price = _parse_price(raw["unit_price"])
    if price is None:
        bad("unit_price", "must be a price in SEK >= 0 with at most 4 decimals")
    else:
        values["unit_price"] = price
    category = raw["category"]
    if category not in PRODUCT_CATEGORIES:
        bad("category", f"must be one of {', '.join(PRODUCT_CATEGORIES)}")
    values["category"] = category
    if raw["storage"] not in STORAGE:
        bad("storage", f"must be one of {', '.join(STORAGE)}")
    values["storage"] = raw["storage"]
    atc = raw["atc"]
    if category == "drug" and not atc:
        bad("atc", "a drug needs an ATC code")
    elif atc and not ATC_PATTERN.fullmatch(atc):
        bad("atc", "must be an ATC code of level 5: letter, 2 digits, 2 letters, 2 digits")
    values["atc"] = atc
    required = _REQUIRED + (_REQUIRED_FOR_DRUGS if category == "drug" else ())
    for field, limit in _MAX_LEN.items():
        text = raw[field]
        if len(text) > limit:
            bad(field, f"longer than {limit} characters")
        elif not text and field in required:
            bad(
                field, "must not be empty" + (" for a drug" if field in _REQUIRED_FOR_DRUGS else "")
            )
        values[field] = (text or None) if field in _OPTIONAL else text
    return _Row(line, values)


def _parse_assortment(text: str) -> tuple[list[_Row], list[ImportProblem]]:
    problems: list[ImportProblem] = []
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), delimiter=";")
    header = next(reader, None)
    if header is None:
        return [], [ImportProblem(1, "header", "", "the file is empty")]
    names = [h.strip().lower() for h in header]
    missing = [c for c in ASSORTMENT_COLUMNS if c not in names]
    unknown = [c for c in names if c not in ASSORTMENT_COLUMNS]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if missing or unknown or repeated:
        parts = [
            f"{label}: {', '.join(cols)}"
            for label, cols in (("missing", missing), ("unknown", unknown), ("repeated", repeated))
            if cols
        ]
        problems.append(ImportProblem(1, "header", ";".join(header), "; ".join(parts)))
        return [], problems
    rows: list[_Row] = []
    first_gtin: dict[str, int] = {}
    first_article: dict[int, int] = {}
    try:
        records = [(reader.line_num, record) for record in reader]
    except csv.Error as exc:  # a NUL byte, or a quote left open at the end
        return [], [ImportProblem(reader.line_num, "row", "", f"unreadable CSV: {exc}")]
    for line, record in records:
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(names):
            problems.append(
                ImportProblem(
                    line, "row", ";".join(record), f"{len(record)} fields, expected {len(names)}"
                )
            )
            continue
        raw = {name: cell.strip() for name, cell in zip(names, record, strict=True)}
        row = _check_row(line, raw, problems)
        gtin = row.values.get("gtin")
        if gtin is not None:
            if gtin in first_gtin:
                problems.append(
                    ImportProblem(
                        line, "gtin", raw["gtin"], f"duplicate: also on line {first_gtin[gtin]}"
                    )
                )
            else:
                first_gtin[gtin] = line
        article = row.values.get("article")
        if article is not None:
            if article in first_article:
                problems.append(
                    ImportProblem(
                        line,
                        "article",
                        raw["article"],
                        f"duplicate: also on line {first_article[article]}",
                    )
                )
            else:
                first_article[article] = line
        rows.append(row)
    return rows, problems


def _shown(value: Any) -> str:
    return "" if value is None else str(value)


def _same(field: str, old: Any, new: Any) -> bool:
    if field == "unit_price":
        return Decimal(old) == Decimal(new)
    if field == "pack_size":
        return int(old) == int(new)
    return (old or None) == (new or None)


def import_assortment(
    source: Source,
    csv_text: str,
    *,
    actor: str,
    dry_run: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Imports an assortment and price list: all rows are valid, or nothing is written.

    Every row is checked first (fields, duplicates within the file, article numbers
    held by another GTIN in the ledger, and an article number that differs from the
    one recorded for the GTIN). Then, in one transaction, new GTINs are inserted and
    known ones get their price and descriptive fields updated, each change written to
    the ledger's hash-chained audit trail (as `Ledger.add_product` does) in the same
    transaction. Products missing from the file are left as they are. `dry_run`
    checks and plans without writing. `now` stamps the audit rows (default: the
    Ledger's clock, or the current time).
    """
    rows, problems = _parse_assortment(csv_text)
    if now is None:
        now = source.clock() if isinstance(source, Ledger) else utcnow()
    require_aware("now", now)
    try:
        with engine_of(source).begin() as conn:
            by_gtin = _known_products(conn, rows, problems)
            if problems:
                problems.sort(key=lambda p: (p.line, _field_order(p.field)))
                return _import_report(rows, problems, [], actor, dry_run, written=False)
            changes, audit = _plan_import(rows, by_gtin)
            if not dry_run:
                _apply_import(conn, rows, by_gtin)
                write_audit(
                    conn, ts=now, actor=actor, action="product", reason="assortment import",
                    changes=audit,
                )  # fmt: skip
    except IntegrityError as exc:
        # A concurrent writer took a GTIN or article between our check and our write.
        raise LedgerError(f"assortment import refused by the database: {exc.orig}") from exc
    return _import_report(rows, [], changes, actor, dry_run, written=not dry_run)


def _known_products(
    conn: Connection, rows: Sequence[_Row], problems: list[ImportProblem]
) -> dict[str, Any]:
    """The ledger's products that the file names, by GTIN; conflicts go to `problems`."""
    gtins = [r.values["gtin"] for r in rows if "gtin" in r.values]
    articles = [r.values["article"] for r in rows if "article" in r.values]
    known = conn.execute(
        select(products).where(or_(products.c.gtin.in_(gtins), products.c.article.in_(articles)))
    ).all()
    by_gtin = {k.gtin: k for k in known}
    by_article = {int(k.article): k for k in known}
    for row in rows:
        gtin, article = row.values.get("gtin"), row.values.get("article")
        if article is None:
            continue
        owner = by_article.get(article)
        if owner is not None and gtin is not None and owner.gtin != gtin:
            message = f"article {article} belongs to GTIN {owner.gtin} in the ledger"
            problems.append(ImportProblem(row.line, "article", str(article), message))
        current = by_gtin.get(gtin) if gtin is not None else None
        if current is not None and int(current.article) != article:
            message = (
                f"GTIN {gtin} is recorded with article {current.article}; an import does not "
                "change an article number"
            )
            problems.append(ImportProblem(row.line, "article", str(article), message))
    return by_gtin


def _plan_import(
    rows: Sequence[_Row], by_gtin: dict[str, Any]
) -> tuple[list[ImportChange], list[Change]]:
    """What each row does, and the audit records for the rows that change something."""
    changes: list[ImportChange] = []
    audit: list[Change] = []
    for row in rows:
        v = row.values
        current = by_gtin.get(v["gtin"])
        if current is None:
            changes.append(ImportChange(row.line, v["gtin"], v["article"], "insert", ()))
            audit.append(Change("product", v["gtin"], None, v))
            continue
        diff = tuple(
            FieldChange(f, _shown(current._mapping[f]), _shown(v[f]))
            for f in _UPDATABLE
            if not _same(f, current._mapping[f], v[f])
        )
        action: Literal["update", "unchanged"] = "update" if diff else "unchanged"
        changes.append(ImportChange(row.line, v["gtin"], v["article"], action, diff))
        if diff:
            audit.append(Change("product", v["gtin"], {k: current._mapping[k] for k in v}, v))
    return changes, audit


def _apply_import(conn: Connection, rows: Sequence[_Row], by_gtin: dict[str, Any]) -> None:
    for row in rows:
        v = row.values
        current = by_gtin.get(v["gtin"])
        if current is None:
            conn.execute(insert(products).values(**v))
        elif any(not _same(f, current._mapping[f], v[f]) for f in _UPDATABLE):
            conn.execute(
                update(products)
                .where(products.c.id == current.id)
                .values({f: v[f] for f in _UPDATABLE})
            )


def _field_order(field: str) -> int:
    order = ("header", "row", *ASSORTMENT_COLUMNS)
    return order.index(field) if field in order else len(order)


def _import_report(
    rows: Sequence[_Row],
    problems: Sequence[ImportProblem],
    changes: Sequence[ImportChange],
    actor: str,
    dry_run: bool,
    *,
    written: bool,
) -> ImportReport:
    return ImportReport(
        ok=not problems,
        dry_run=dry_run,
        written=written,
        actor=actor,
        rows=len(rows),
        inserted=sum(1 for c in changes if c.action == "insert"),
        updated=sum(1 for c in changes if c.action == "update"),
        unchanged=sum(1 for c in changes if c.action == "unchanged"),
        problems=tuple(problems),
        changes=tuple(changes),
    )
