"""The preparedness list file: parsed and checked whole, every problem named by its
line, field and value. Nothing here reads the ledger; whether each GTIN is a known
product is the ledger's check, after this one.

The file is UTF-8 text, `;` separated, with the header `gtin;target_units;floor_units`
and an optional fourth column `name` (ignored). Blank lines are skipped. Targets and
floors are whole dispensing units: target above 0, floor from 0 up to the target.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.gs1 import valid_gtin

COLUMNS = ("gtin", "target_units", "floor_units")
OPTIONAL = ("name",)


@dataclass(frozen=True)
class TargetLine:
    """One product of the list: its target and floor in dispensing units."""

    line: int  # the line of the file (1 is the header); 0 when not from a file
    gtin: str  # 14 digits
    target_units: int
    floor_units: int


@dataclass(frozen=True)
class FileProblem:
    line: int
    field: str
    value: str | None
    message: str  # starts with the value where there is one

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field}: {self.message}"


@dataclass(frozen=True)
class ParsedList:
    lines: tuple[TargetLine, ...]
    problems: tuple[FileProblem, ...]


def _units(line: int, field: str, text: str) -> tuple[int | None, FileProblem | None]:
    value = text.strip()
    if value == "":
        return None, FileProblem(line, field, None, "is missing")
    try:
        number = int(value)
    except ValueError:
        return None, FileProblem(line, field, value, f"{value!r} is not a whole number")
    if number < 0:
        return None, FileProblem(line, field, value, f"{number} is negative")
    return number, None


def check_levels(target_units: int, floor_units: int, *, line: int = 0) -> list[FileProblem]:
    """A target above 0 and a floor not above it (both already whole and not negative)."""
    problems = []
    if target_units <= 0:
        problems.append(
            FileProblem(line, "target_units", str(target_units), f"{target_units} must be above 0")
        )
    if floor_units < 0:
        problems.append(
            FileProblem(line, "floor_units", str(floor_units), f"{floor_units} is negative")
        )
    elif floor_units > target_units:
        problems.append(
            FileProblem(
                line,
                "floor_units",
                str(floor_units),
                f"{floor_units} is above target_units {target_units}",
            )
        )
    return problems


def check_gtin(text: str, *, line: int = 0) -> tuple[str | None, FileProblem | None]:
    """The GTIN as 14 digits, or the problem with it."""
    value = text.strip()
    if value == "":
        return None, FileProblem(line, "gtin", None, "is missing")
    try:
        return valid_gtin(value), None
    except ValueError as exc:
        return None, FileProblem(line, "gtin", value, f"{value!r} is not a valid GTIN ({exc})")


def parse_preparedness(text: str) -> ParsedList:
    """Every line of the file checked; the good lines and every problem found.

    A GTIN given twice is a problem on its second line (naming the first). A file with
    a bad header is reported on line 1 alone: its lines cannot be read without it.
    """
    rows = text.removeprefix("\ufeff").splitlines()
    problems: list[FileProblem] = []
    header = [h.strip().lower() for h in rows[0].split(";")] if rows else []
    if header[:3] != list(COLUMNS) or any(h not in OPTIONAL for h in header[3:]):
        shown = rows[0] if rows else ""
        problems.append(
            FileProblem(
                1,
                "header",
                shown,
                f"{shown!r} is not {';'.join(COLUMNS)} (optionally followed by ;name)",
            )
        )
        return ParsedList((), tuple(problems))
    width = len(header)
    good: list[TargetLine] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(rows[1:], start=2):
        if raw.strip() == "":
            continue
        fields = raw.split(";")
        if len(fields) < 3:
            missing = COLUMNS[len(fields)]
            problems.append(
                FileProblem(
                    number,
                    missing,
                    None,
                    f"is missing (the line has {len(fields)} of {width} columns)",
                )
            )
            continue
        if len(fields) > width:
            problems.append(
                FileProblem(
                    number,
                    "line",
                    raw,
                    f"has {len(fields)} columns, the header {width}",
                )
            )
            continue
        gtin, gtin_problem = check_gtin(fields[0], line=number)
        target, target_problem = _units(number, "target_units", fields[1])
        floor, floor_problem = _units(number, "floor_units", fields[2])
        found = [p for p in (gtin_problem, target_problem, floor_problem) if p is not None]
        if target is not None and floor is not None:
            found += check_levels(target, floor, line=number)
        if gtin is not None:
            if gtin in first_line:
                found.append(
                    FileProblem(
                        number,
                        "gtin",
                        gtin,
                        f"{gtin} is listed twice (first on line {first_line[gtin]})",
                    )
                )
            else:
                first_line[gtin] = number
        problems += found
        if not found and gtin is not None and target is not None and floor is not None:
            good.append(TargetLine(number, gtin, target, floor))
    if not good and not problems:
        problems.append(
            FileProblem(
                0, "file", None, "has no lines: a list is imported whole, with at least one product"
            )
        )
    return ParsedList(tuple(good), tuple(problems))
