"""The one reader of delivery files.

Two files describe goods arriving, and both are read here: the ledger's own delivery
file (`gtin;batch;expiry;quantity[;location][;unit_price]`, booked with
`Ledger.receive_many`) and a supplier's despatch advice, which purchasing matches
against its order lines (controller/purchasing/files.py). Both are UTF-8 CSV with `;`
as the separator and a header row (row 1). The header must name every required column
and no unknown one. Each field is read and checked the same way in both (a GTIN's
check digit, a date as YYYY-MM-DD, a whole number that is not negative, a batch of at
most 20 characters, a price in SEK with at most 4 decimals). Every bad field of every
row is reported with the row's number, the field and the value, and then nothing of
the file is returned: a delivery is booked whole or not at all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from controller.config import valid_gtin
from controller.ledger.views import DeliveryError, DeliveryLine, price_problem

T = TypeVar("T")

MAX_BATCH = 20  # characters, as the lots table stores a batch
DELIVERS_STOCK = "missing for a row that delivers stock"

LEDGER_REQUIRED = ("gtin", "batch", "expiry", "quantity")
LEDGER_OPTIONAL = ("location", "unit_price")


class DeliveryCells:
    """One row of a delivery file: its trimmed cells by column, and what is wrong with
    them so far. Each reader returns None for a bad field and notes the problem, so a
    row is read to its end and every bad field of it is reported."""

    def __init__(self, number: int, cells: dict[str, str]) -> None:
        self.number = number
        self.cells = cells
        self.problems: list[str] = []

    def text(self, column: str) -> str:
        return self.cells.get(column, "")

    def problem(self, column: str, message: str) -> None:
        self.problems.append(f"{column}: {message}")

    def gtin(self, column: str = "gtin") -> str:
        """A GTIN with a valid check digit, as 14 digits ("" when bad)."""
        try:
            return valid_gtin(self.text(column))
        except ValueError as exc:
            self.problem(column, str(exc))
            return ""

    def whole(self, column: str, *, optional: bool = False) -> int | None:
        """A whole number, 0 or more; an empty optional cell is None."""
        value = self.text(column)
        if optional and value == "":
            return None
        try:
            number = int(value)
        except ValueError:
            self.problem(column, f"{value!r} is not a whole number")
            return None
        if number < 0:
            self.problem(column, f"{value!r} is negative")
            return None
        return number

    def date(self, column: str) -> date | None:
        """A date written YYYY-MM-DD; an empty cell is None (see `require`)."""
        value = self.text(column)
        if not value:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.problem(column, f"{value!r} is not a date (YYYY-MM-DD)")
            return None

    def batch(self, column: str = "batch", *, required: bool) -> str:
        value = self.text(column)
        if required and not value:
            self.problem(column, DELIVERS_STOCK)
        elif len(value) > MAX_BATCH:
            self.problem(column, f"{value!r} is longer than {MAX_BATCH} characters")
        return value

    def require(self, column: str) -> None:
        """A row that delivers stock must fill `column`."""
        if not self.text(column):
            self.problem(column, DELIVERS_STOCK)

    def unit_price(self, column: str = "unit_price") -> Decimal | None:
        """SEK per dispensing unit, with a decimal point or a decimal comma; empty when
        not known. Written with more than 4 decimals is refused even when they are
        zeros: a file that writes them may have rounded something else."""
        value = self.text(column)
        if not value:
            return None
        try:
            price = Decimal(value.replace(",", "."))
        except InvalidOperation:
            self.problem(column, f"{value!r} is not a number")
            return None
        problem = price_problem(price)
        if problem is None and int(price.as_tuple().exponent) < -4:
            problem = "has more than 4 decimals"
        if problem:
            self.problem(column, f"{value!r} {problem}")
            return None
        return price


def read_delivery_file(
    text: str,
    *,
    required: Sequence[str],
    optional: Sequence[str],
    row_label: str,
    read_row: Callable[[DeliveryCells], T | None],
    refuse: Callable[[list[str]], Exception],
) -> list[T]:
    """Reads every row of a delivery file with `read_row`; raises `refuse(problems)`
    naming every bad row (as `<row_label> <number>`), field and value.

    A byte order mark and blank rows are skipped, cells are trimmed. A file without
    rows is refused too: it delivers nothing, and was most likely cut short.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), delimiter=";")
    header = [h.strip() for h in reader.fieldnames or []]
    expected = ";".join([*required, *(f"[{c}]" for c in optional)]).replace(";[", "[;")
    missing = [c for c in required if c not in header]
    if missing:
        raise refuse(
            [f"header: missing column(s) {', '.join(missing)} in {header} (expected {expected})"]
        )
    unknown = [c for c in header if c not in (*required, *optional)]
    if unknown:
        raise refuse([f"header: unknown column(s) {', '.join(unknown)} (expected {expected})"])
    rows: list[T] = []
    problems: list[str] = []
    for number, raw in enumerate(reader, start=2):
        cells = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(cells.values()):
            continue
        row = DeliveryCells(number, cells)
        value = read_row(row)
        if row.problems or value is None:
            problems += [f"{row_label} {number}: {p}" for p in row.problems]
            continue
        rows.append(value)
    if problems:
        raise refuse(problems)
    if not rows:
        raise refuse(["the delivery file has no rows"])
    return rows


def read_ledger_delivery(text: str, default_location: str | None = None) -> list[DeliveryLine]:
    """The ledger's delivery file: `gtin;batch;expiry;quantity[;location][;unit_price]`.
    A row without a location goes to `default_location`. Raises DeliveryError."""

    def line(cells: DeliveryCells) -> DeliveryLine | None:
        gtin = cells.gtin()
        batch = cells.batch(required=True)
        cells.require("expiry")
        expiry = cells.date("expiry")
        quantity = cells.whole("quantity")
        location = cells.text("location") or (default_location or "").strip()
        if not location:
            cells.problem("location", "missing")
        unit_price = cells.unit_price()
        if expiry is None or quantity is None or cells.problems:
            return None
        return DeliveryLine(gtin, batch, expiry, quantity, location, unit_price)

    return read_delivery_file(
        text,
        required=LEDGER_REQUIRED,
        optional=LEDGER_OPTIONAL,
        row_label="line",
        read_row=line,
        refuse=DeliveryError,
    )
