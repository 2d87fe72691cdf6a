"""The external-use file: volumes used by units the pharmacy does not supply, per
product and month (docs/stock-duty.md, "The whole use").

UTF-8 (a byte-order mark is allowed), `;` between fields, one header line
`month;gtin;unit_name;quantity`, then one line per unit, product and month. The file is
checked whole: every bad line is named with its line number, field and value, and a
file with any problem is refused as a whole. Whether a GTIN is known is the ledger's
to say; this module checks the text only.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

HEADER = ("month", "gtin", "unit_name", "quantity")
MAX_UNIT_NAME = 100
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_GTIN = re.compile(r"^\d{8,14}$")


@dataclass(frozen=True)
class ExternalUseLine:
    line: int  # the line number in the file (the header is line 1)
    month: str  # YYYY-MM
    gtin: str  # 14 digits
    unit_name: str
    quantity: int


@dataclass(frozen=True)
class FileProblem:
    line: int
    field: str
    value: str | None
    message: str

    def __str__(self) -> str:
        shown = "" if self.value is None else f" {self.value!r}"
        return f"line {self.line}: {self.field}:{shown} {self.message}"


def check_month(text: str, *, current: str) -> str | None:
    """Why `text` is not a month that can carry use (None: it can). `current` is
    this month, YYYY-MM: a later month has no use yet."""
    match = _MONTH.match(text)
    if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1900:
        return "is not a month (YYYY-MM)"
    if text > current:
        return f"is in the future (this month is {current})"
    return None


def check_unit_name(text: str) -> str | None:
    if not text.strip():
        return "is empty"
    if len(text) > MAX_UNIT_NAME:
        return f"is longer than {MAX_UNIT_NAME} characters"
    return None


def check_quantity(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "is not a whole number"
    if value < 0:
        return "must be >= 0"
    return None


def parse_external_use(
    text: str, *, current: str
) -> tuple[list[ExternalUseLine], list[FileProblem]]:
    """The lines of an external-use file and every problem found in it. A line with a
    problem is not among the lines; the caller writes nothing unless problems is empty."""
    if text.startswith("\ufeff"):
        text = text[1:]
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    problems: list[FileProblem] = []
    if not rows:
        return [], [FileProblem(1, "header", None, f"is missing: {';'.join(HEADER)}")]
    header = tuple(c.strip().lower() for c in rows[0])
    if header != HEADER:
        got = ";".join(rows[0])
        return [], [FileProblem(1, "header", got, f"must be {';'.join(HEADER)}")]
    lines: list[ExternalUseLine] = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # a blank line
        if len(row) != len(HEADER):
            problems.append(
                FileProblem(number, "line", ";".join(row), f"has {len(row)} fields, not 4")
            )
            continue
        month_text, gtin_text, unit_text = row[0].strip(), row[1].strip(), row[2].strip()
        quantity_text = row[3].strip()
        found = len(problems)
        why = check_month(month_text, current=current)
        if why:
            problems.append(FileProblem(number, "month", month_text, why))
        if not _GTIN.match(gtin_text):
            problems.append(FileProblem(number, "gtin", gtin_text, "is not 8 to 14 digits"))
        why = check_unit_name(unit_text)
        if why:
            problems.append(FileProblem(number, "unit_name", unit_text, why))
        quantity: int | None = None
        if re.fullmatch(r"-?\d+", quantity_text):
            quantity = int(quantity_text)
            why = check_quantity(quantity)
        else:
            why = "is not a whole number"
        if why:
            problems.append(FileProblem(number, "quantity", quantity_text, why))
        if len(problems) > found or quantity is None:
            continue
        key = (month_text, gtin_text.zfill(14), unit_text)
        if key in seen:
            problems.append(
                FileProblem(
                    number,
                    "line",
                    ";".join(row),
                    f"repeats line {seen[key]} (same month, gtin and unit_name)",
                )
            )
            continue
        seen[key] = number
        lines.append(ExternalUseLine(number, month_text, gtin_text.zfill(14), unit_text, quantity))
    return lines, problems
