"""What FHIR and HL7 v2 intake share: the error format, the catalogue lookups and the
checks that turn a dose, a set of times and a period into `DoseOrder`s.

Every check reports into a `Collector` instead of raising, so one message yields every
problem at once; the parser raises a single `IntakeError` at the end (all or nothing).
Clear patient identifiers are registered with the collector as soon as they are read
and scrubbed from every problem before it leaves this package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, time
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from controller.config import Product, Site, valid_gtin
from controller.packing.orders import DoseOrder, OrderError

MAX_UNITS = 20  # DoseOrder's own limit: more than this in one pouch is a typo, not a dose
MAX_PAYLOAD_CHARS = 20_000_000  # thousands of orders; more is a runaway sender
MAX_VALUE_CHARS = 80  # an offending value is quoted up to this length in messages
WARD_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
ATC_PATTERN = re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")
_MIN_SECRET_CHARS = 4  # shorter identifiers are not scrubbed: it would mangle numbers

# A dose is a count of dosage units (tablets, capsules, ...), never a mass or a volume:
# "5 mg" read as five tablets would be a dangerous overdose. Codes and texts, lower case.
COUNT_UNITS = frozenset(
    [
        *"tab tabs tablet tablets {tbl} {tablet} {tablets} st styck pc pcs piece pieces".split(),
        *"cap caps capsule capsules {capsule} {capsules} ea each 1".split(),
        "732936001",  # SNOMED CT: tablet (unit of presentation)
        "732937005",  # SNOMED CT: capsule (unit of presentation)
    ]
)


@dataclass(frozen=True)
class Problem:
    """One reason a message is refused: where (`field`), what was there (`value`,
    None when missing) and why. `patient` is the pseudonym once it is known."""

    field: str
    value: str | None
    message: str
    patient: str | None = None

    def __str__(self) -> str:
        shown = "" if self.value is None else f"{_clip(self.value)!r}: "
        who = f" [patient {self.patient}]" if self.patient else ""
        return f"{self.field}: {shown}{self.message}{who}"


class IntakeError(ValueError):
    """A message was refused; `problems` lists every reason. Nothing from it was accepted.

    The text is safe to log: it names fields, values and pseudonyms, never a clear
    patient identifier."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        head = f"{source} refused ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + ": " + "; ".join(str(p) for p in self.problems))


def check_size(payload: str | bytes | bytearray, c: Collector) -> bool:
    """Refuses payloads no order message reaches, before any parsing work is spent."""
    if len(payload) > MAX_PAYLOAD_CHARS:
        c.add("payload", f"{len(payload)} characters", f"is larger than {MAX_PAYLOAD_CHARS}")
        return False
    return True


def _clip(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


@dataclass
class Collector:
    """Gathers problems for one message. `child` gives a view with a path prefix and a
    patient pseudonym that shares the same list and the same secrets."""

    source: str
    prefix: str = ""
    patient: str | None = None
    _problems: list[Problem] = field(default_factory=list)
    _secrets: dict[str, str] = field(default_factory=dict)

    def child(self, prefix: str) -> Collector:
        return Collector(self.source, prefix, self.patient, self._problems, self._secrets)

    def path(self, name: str) -> str:
        if not self.prefix:
            return name
        if not name or name.startswith("["):
            return self.prefix + name
        return f"{self.prefix}.{name}" if not self.prefix.endswith("/") else self.prefix + name

    def add(self, name: str, value: object, message: str) -> None:
        self._problems.append(Problem(self.path(name), _text(value), message, self.patient))

    def hide(self, clear: str, alias: str) -> None:
        """Remember a clear identifier so no problem text can carry it."""
        if len(clear) >= _MIN_SECRET_CHARS:
            self._secrets[clear] = alias

    @property
    def count(self) -> int:
        return len(self._problems)

    def problems(self) -> list[Problem]:
        return [self._scrub(p) for p in self._problems]

    def raise_if_any(self) -> None:
        if self._problems:
            raise IntakeError(self.source, self.problems())

    def _scrub(self, problem: Problem) -> Problem:
        def clean(text: str) -> str:
            for clear, alias in self._secrets.items():
                text = text.replace(clear, f"<{alias}>")
            return text

        value = None if problem.value is None else clean(problem.value)
        return replace(
            problem, field=clean(problem.field), value=value, message=clean(problem.message)
        )


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal | float):
        try:
            return str(value)
        except ValueError:  # an int of more digits than Python turns into text (4300)
            return "a huge number"
    return type(value).__name__  # a whole object or list: name its kind, not its content


# --- strengths -------------------------------------------------------------------------

_MASS_MG = {
    "g": Decimal(1000),
    "mg": Decimal(1),
    "microgram": Decimal("0.001"),
    "micrograms": Decimal("0.001"),
    "mcg": Decimal("0.001"),
    "ug": Decimal("0.001"),
    "µg": Decimal("0.001"),
    "μg": Decimal("0.001"),
}
_STRENGTH = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*([^\s\d].*?)\s*$")


@dataclass(frozen=True)
class Strength:
    """A product strength such as "500 mg", with masses compared in milligrams so
    "0.5 g" and "500 mg" match; other units must match as written (case-insensitive)."""

    amount: Decimal
    unit: str

    @classmethod
    def of(cls, amount: Decimal, unit: str) -> Strength:
        unit = re.sub(r"\s+", "", unit.strip().lower())
        factor = _MASS_MG.get(unit)
        if factor is not None:
            return cls((amount * factor).normalize(), "mg")
        return cls(amount.normalize(), unit)

    @classmethod
    def parse(cls, text: str) -> Strength | None:
        match = _STRENGTH.match(text)
        if not match:
            return None
        return cls.of(Decimal(match.group(1).replace(",", ".")), match.group(2))

    def __str__(self) -> str:
        return f"{self.amount:f} {self.unit}"


# --- catalogue -------------------------------------------------------------------------


class Catalogue:
    """The site's products, looked up by GTIN or by ATC code (and strength)."""

    def __init__(self, products: Iterable[Product]) -> None:
        self._products = tuple(products)
        self._by_gtin = {p.gtin: p for p in self._products}

    @classmethod
    def from_site(cls, site: Site) -> Catalogue:
        return cls(site.catalogue)

    def by_gtin(self, gtin: str) -> Product | None:
        return self._by_gtin.get(gtin)

    def by_atc(self, atc: str, strength: Strength | None = None) -> list[Product]:
        """Drugs with this ATC code (and strength, if given), in catalogue order."""
        return [
            p
            for p in self._products
            if p.category == "drug"
            and p.atc == atc
            and (strength is None or Strength.parse(p.strength) == strength)
        ]


@dataclass(frozen=True)
class Code:
    """A product code read from a message, with where it was read."""

    kind: Literal["gtin", "atc"]
    value: str
    field: str
    text: str = ""  # the sender's name for the product, quoted in errors


def resolve_product(
    catalogue: Catalogue,
    codes: Sequence[Code],
    strength: Strength | None,
    c: Collector,
    *,
    field: str,
    strength_field: str,
    value: str | None = None,
) -> Product | None:
    """The one catalogue drug the codes name. A GTIN wins and any ATC code and strength
    sent with it must agree; an ATC code alone must leave one product (or products of one
    substitution group, of which the first listed is taken)."""
    if not codes:
        c.add(field, value, "no GTIN or ATC code")
        return None
    gtins = [code for code in codes if code.kind == "gtin"]
    atcs = [code for code in codes if code.kind == "atc"]
    for code in atcs:
        if not ATC_PATTERN.match(code.value):
            c.add(
                code.field, code.value, "is not an ATC code (letter, 2 digits, 2 letters, 2 digits)"
            )
            return None
    if len({code.value for code in atcs}) > 1:
        c.add(atcs[1].field, atcs[1].value, f"conflicts with ATC code {atcs[0].value}")
        return None
    if gtins:
        product = _by_gtin(catalogue, gtins, c)
        if product is None:
            return None
        if atcs and atcs[0].value != product.atc:
            c.add(
                atcs[0].field,
                atcs[0].value,
                f"does not match GTIN {product.gtin} ({product.name}, ATC {product.atc or 'none'})",
            )
            return None
        if strength is not None and Strength.parse(product.strength) != strength:
            c.add(
                strength_field,
                str(strength),
                f"does not match GTIN {product.gtin} ({product.name}, {product.strength})",
            )
            return None
        return product
    atc = atcs[0]
    found = catalogue.by_atc(atc.value, strength)
    named = f"ATC {atc.value}" + (f" {strength}" if strength else "")
    named += f" ({atc.text})" if atc.text else ""
    if not found:
        c.add(atc.field, atc.value, f"{named}: no drug with this code in the catalogue")
        return None
    groups = {p.substitution_group for p in found}
    if len(found) > 1 and (len(groups) > 1 or None in groups):
        listed = ", ".join(f"{p.gtin} {p.strength}" for p in found)
        c.add(
            atc.field,
            atc.value,
            f"{named} is ambiguous: {len(found)} products ({listed}); send a GTIN or a strength",
        )
        return None
    return found[0]


def _by_gtin(catalogue: Catalogue, gtins: Sequence[Code], c: Collector) -> Product | None:
    normalised: list[str] = []
    for code in gtins:
        try:
            normalised.append(valid_gtin(code.value))
        except ValueError as exc:
            c.add(code.field, code.value, str(exc).replace(repr(code.value), "GTIN"))
            return None
    if len(set(normalised)) > 1:
        c.add(gtins[1].field, gtins[1].value, f"conflicts with GTIN {gtins[0].value}")
        return None
    product = catalogue.by_gtin(normalised[0])
    code = gtins[0]
    if product is None:
        named = f" ({code.text})" if code.text else ""
        c.add(code.field, code.value, f"GTIN{named} is not in the catalogue")
        return None
    if product.category != "drug":
        c.add(
            code.field,
            code.value,
            f"{product.name} is a {product.category.replace('_', ' ')}, not a drug",
        )
        return None
    return product


# --- doses, units, times, periods ------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def in_range(value: Decimal) -> bool:
    """Finite and of a sane magnitude, so no later arithmetic can overflow."""
    return value.is_finite() and (value.is_zero() or -30 <= value.adjusted() <= 30)


def parse_number(text: str) -> Decimal | None:
    """An HL7 NM value (digits, optional sign and decimal point) of a sane magnitude."""
    text = text.strip()
    if len(text) > 40 or not _NUMBER.match(text):
        return None
    value = Decimal(text)
    return value if in_range(value) else None


def check_units(value: Decimal, name: str, c: Collector) -> int | None:
    """A dose as a whole number of units from 1 to MAX_UNITS."""
    if not value.is_finite():
        c.add(name, str(value), "is not a number")
        return None
    try:
        whole = value == value.to_integral_value()
    except InvalidOperation:
        whole = False
    if not whole:
        c.add(name, str(value), "is not a whole number of units (pouches hold whole units)")
        return None
    if value < 1:
        c.add(name, str(value), "dose must be at least 1 unit")
        return None
    if value > MAX_UNITS:
        c.add(name, str(value), f"dose of more than {MAX_UNITS} units is not accepted")
        return None
    return int(value)


def is_count_unit(unit: str, product: Product | None) -> bool:
    unit = unit.strip().lower()
    if unit in COUNT_UNITS:
        return True
    return product is not None and unit in (product.unit.lower(), product.unit.lower() + "s")


def check_times(times: Sequence[tuple[str, time | None]], c: Collector) -> tuple[time, ...] | None:
    """Administration times, whole minutes, each once, sorted. Entries are (field, time or
    None when that entry was already reported as unreadable)."""
    good: dict[time, str] = {}
    ok = True
    for name, at in times:
        if at is None:
            ok = False
            continue
        if at.second or at.microsecond:
            c.add(name, at.isoformat(), "pouches are timed to the minute: seconds must be 00")
            ok = False
        elif at in good:
            c.add(name, at.isoformat(), f"time given twice (also {good[at]})")
            ok = False
        else:
            good[at] = name
    return tuple(sorted(good)) if ok else None


def check_ward(ward: str, name: str, c: Collector) -> str | None:
    if not WARD_PATTERN.match(ward):
        c.add(name, ward, "is not a ward code (letters, digits, '_', '.', '-'; up to 32)")
        return None
    return ward


def check_period(
    start: date,
    end: date,
    today: date,
    end_field: str,
    c: Collector,
    end_text: str | None = None,
) -> bool:
    """The period must not end before it starts, nor before today (nothing to pack)."""
    shown = end_text if end_text is not None else end.isoformat()
    if end < start:
        c.add(end_field, shown, f"period ends before it starts ({start.isoformat()})")
        return False
    if end < today:
        c.add(
            end_field,
            shown,
            f"period ended before today ({today.isoformat()}): nothing left to pack",
        )
        return False
    return True


def make_order(
    c: Collector,
    name: str,
    patient: str,
    ward: str,
    gtin: str,
    units: int,
    times: tuple[time, ...],
    start: date,
    end: date,
) -> DoseOrder | None:
    """DoseOrder, with its own checks reported as problems rather than raised."""
    try:
        return DoseOrder(patient, ward, gtin, units, times, start, end)
    except OrderError as exc:
        c.add(name, None, str(exc))
        return None


# --- strict JSON text (both FHIR readers) ------------------------------------------------


class DuplicateKey(ValueError):
    """A JSON object named a key twice: which value counts is ambiguous, so refused."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(object_pairs_hook=...)`: an object, refusing a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def no_constant(name: str) -> Any:
    """`json.loads(parse_constant=...)`: NaN and Infinity are not JSON numbers."""
    raise ValueError(f"{name} is not a JSON number")
