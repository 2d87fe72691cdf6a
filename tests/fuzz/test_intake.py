"""Property tests of dose order intake (controller/intake, docs/order-intake.md).

tests/unit/test_intake.py fuzzes the parsers with random bytes, random JSON and edits
of its two fixture messages. This file generates the messages instead:

* valid FHIR messages (a MedicationRequest, or a Bundle of them for several patients,
  with the ward from an Encounter in the Bundle or the default ward, the product by
  GTIN or by ATC code, periods as dates or dateTimes, or one day from authoredOn) and
  valid HL7 v2 RDE^O11 messages (any delimiters, escaped patient identifiers, several
  orders and TQ1 segments, any segment terminator, text or UTF-8 bytes) give exactly
  the dose orders they were generated from;
* the same messages with a field dropped, given a value of the wrong type, a huge
  number, unicode or NUL, or (HL7) separators and terminators injected, raise nothing
  but IntakeError; every problem names a field, and where one field was broken the
  problem names that field (its FHIR path, or its HL7 segment-field);
* no clear patient identifier is in any error.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import date, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import load_site
from controller.intake import Catalogue, IntakeError, parse_orders
from controller.packing.orders import DoseOrder, pseudonym

REPO = Path(__file__).resolve().parents[2]
SITE = load_site(REPO / "config" / "demo.yaml")
CATALOGUE = Catalogue.from_site(SITE)
SALT = "fuzz-salt"
TODAY = date(2026, 11, 20)
DEFAULT_WARD = "MED1"
GTIN_SYSTEM = "http://www.gs1.org/gtin"
ATC_SYSTEM = "http://www.whocc.no/atc"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DRUGS = [p for p in SITE.catalogue if p.category == "drug"]


def _atc_choice(atc: str) -> str | None:
    """The GTIN an ATC code alone resolves to, or None when it is ambiguous."""
    found = CATALOGUE.by_atc(atc)
    groups = {p.substitution_group for p in found}
    if len(found) == 1 or (found and len(groups) == 1 and None not in groups):
        return found[0].gtin
    return None


ATC_GTIN = {p.atc: gtin for p in DRUGS if (gtin := _atc_choice(p.atc)) is not None}


def parse(payload: Any, default_ward: str | None = DEFAULT_WARD) -> list[DoseOrder]:
    return parse_orders(
        payload, catalogue=CATALOGUE, salt=SALT, default_ward=default_ward, today=TODAY
    )


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Order:
    """One prescription: a product (by GTIN or ATC code), doses with their times, and a
    period; `gtin` is what intake must resolve it to."""

    kind: str  # "gtin" or "atc"
    code: str
    gtin: str
    doses: tuple[tuple[int, tuple[time, ...]], ...]  # (units, times) per instruction
    start: date
    end: date


@dataclass(frozen=True)
class Patient:
    ident: str  # the clear identifier, as sent
    ward: str | None  # None: the default ward applies
    orders: tuple[Order, ...]

    @property
    def alias(self) -> str:
        return pseudonym(self.ident.strip(), SALT)


products = st.one_of(
    st.sampled_from(DRUGS).map(lambda p: ("gtin", p.gtin, p.gtin)),
    st.sampled_from(sorted(ATC_GTIN)).map(lambda atc: ("atc", atc, ATC_GTIN[atc])),
)
wards = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
# Long enough to be scrubbed from errors (intake hides identifiers of 4+ characters) and
# distinctive enough never to occur in an error by chance.
idents = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]),
    min_size=4,
    max_size=16,
).map(lambda s: "PNR" + s.strip() + "X")


@st.composite
def periods(draw: st.DrawFn) -> tuple[date, date]:
    start = TODAY + timedelta(days=draw(st.integers(-10, 30)))
    end = max(start, TODAY) + timedelta(days=draw(st.integers(0, 20)))
    return start, end


@st.composite
def disjoint_times(draw: st.DrawFn, groups: int) -> list[tuple[time, ...]]:
    """`groups` sets of 1 to 3 times, no time in two of them."""
    sizes = [draw(st.integers(1, 3)) for _ in range(groups)]
    minutes = draw(
        st.lists(st.integers(0, 1439), min_size=sum(sizes), max_size=sum(sizes), unique=True)
    )
    out, at = [], 0
    for size in sizes:
        out.append(tuple(time(m // 60, m % 60) for m in minutes[at : at + size]))
        at += size
    return out


@st.composite
def orders(draw: st.DrawFn, instructions: int = 3) -> Order:
    kind, code, gtin = draw(products)
    n = draw(st.integers(1, instructions))
    times = draw(disjoint_times(n))
    doses = tuple((draw(st.integers(1, 20)), t) for t in times)
    start, end = draw(periods())
    return Order(kind, code, gtin, doses, start, end)


def expected(patients: list[Patient], default_ward: str = DEFAULT_WARD) -> list[DoseOrder]:
    return [
        DoseOrder(p.alias, p.ward or default_ward, o.gtin, units, tuple(sorted(t)), o.start, o.end)
        for p in patients
        for o in p.orders
        for units, t in o.doses
    ]


# ----------------------------------------------------------------------------- FHIR


def fhir_request(
    patient: Patient, order: Order, *, encounter: str | None, authored: bool, as_datetime: bool
) -> dict[str, Any]:
    system = GTIN_SYSTEM if order.kind == "gtin" else ATC_SYSTEM
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": system, "code": order.code}]},
        "subject": {
            "identifier": {"system": "urn:oid:1.2.752.129.2.1.3.1", "value": patient.ident}
        },
        "dosageInstruction": [
            {
                "timing": {
                    "repeat": {
                        "timeOfDay": [f"{t:%H:%M}:00" for t in times],
                        "frequency": len(times),
                        "period": 1,
                        "periodUnit": "d",
                    }
                },
                "doseAndRate": [
                    {"doseQuantity": {"value": units, "unit": "tablet", "code": "732936001"}}
                ],
            }
            for units, times in order.doses
        ],
    }
    if authored and order.start == order.end:
        request["authoredOn"] = order.start.isoformat()
    else:
        suffix = "T08:00:00+01:00" if as_datetime else ""
        request["dispenseRequest"] = {
            "validityPeriod": {
                "start": order.start.isoformat() + suffix,
                "end": order.end.isoformat() + suffix,
            }
        }
    if encounter is not None:
        request["encounter"] = {"reference": encounter}
    return request


@st.composite
def fhir_messages(draw: st.DrawFn) -> tuple[dict[str, Any], list[Patient]]:
    """A Bundle of several patients' requests, or one MedicationRequest."""
    single = draw(st.booleans())
    n_patients = 1 if single else draw(st.integers(1, 3))
    patients = [
        Patient(
            draw(idents),
            None if single else draw(st.none() | wards),
            (draw(orders()),)
            if single
            else tuple(draw(st.lists(orders(), min_size=1, max_size=3))),
        )
        for _ in range(n_patients)
    ]
    authored, as_datetime = draw(st.booleans()), draw(st.booleans())
    if single:
        p = patients[0]
        return fhir_request(
            p, p.orders[0], encounter=None, authored=authored, as_datetime=as_datetime
        ), patients
    entries: list[dict[str, Any]] = []
    for k, p in enumerate(patients):
        encounter = None
        if p.ward is not None:
            encounter = f"Encounter/enc-{k}"
            location: dict[str, Any] = (
                {"identifier": {"value": p.ward}}
                if draw(st.booleans())
                else {"reference": f"Location/{p.ward}"}
            )
            entries.append(
                {
                    "fullUrl": f"urn:uuid:enc-{k}",
                    "resource": {
                        "resourceType": "Encounter",
                        "id": f"enc-{k}",
                        "location": [{"location": location, "status": "active"}],
                    },
                }
            )
        for o in p.orders:
            entries.append(
                {
                    "resource": fhir_request(
                        p, o, encounter=encounter, authored=authored, as_datetime=as_datetime
                    ),
                    "request": {"method": "POST", "url": "MedicationRequest"},
                }
            )
    bundle_type = draw(st.sampled_from(["transaction", "collection", "batch"]))
    return {"resourceType": "Bundle", "type": bundle_type, "entry": entries}, patients


def assert_well_formed(exc: IntakeError, clear_ids: list[str]) -> None:
    """Every problem names its field; no clear identifier is in the error."""
    assert exc.problems, "an IntakeError lists its problems"
    text = str(exc)
    for problem in exc.problems:
        assert isinstance(problem.field, str) and problem.field
        assert problem.value is None or isinstance(problem.value, str)
        assert problem.message
        assert problem.field in text
    for clear in clear_ids:
        assert clear.strip() not in text, "a clear patient identifier is in the error"


def refused(payload: Any, clear_ids: list[str]) -> IntakeError | None:
    """None when the payload was accepted; the error otherwise (nothing else raised)."""
    try:
        got = parse(payload)
    except IntakeError as exc:
        assert_well_formed(exc, clear_ids)
        return exc
    assert all(isinstance(o, DoseOrder) for o in got)
    return None


@FUZZ
@given(fhir_messages(), st.sampled_from(["dict", "text", "bytes"]))
def test_valid_fhir_messages_give_their_orders(message: Any, form: str) -> None:
    payload, patients = message
    sent: Any = payload
    if form != "dict":
        sent = json.dumps(payload, ensure_ascii=form == "bytes")
        sent = sent.encode() if form == "bytes" else sent
    assert parse(sent) == expected(patients)


def fhir_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += fhir_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            out += fhir_paths(value, (*prefix, k))
    return out


def fhirpath(path: tuple[Any, ...]) -> str:
    """('entry', 0, 'resource', 'status') -> 'entry[0].resource.status'."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


class Huge(int):
    """An integer with more digits than Python turns into text (4300 by default): str()
    and format() raise as for any such int; only the repr (for reports) is short."""

    __str__ = int.__repr__

    def __repr__(self) -> str:
        return "-10**5000" if self < 0 else "10**5000"


HUGE = Huge(10**5000)
wrong_for_text = st.sampled_from(
    [0, 7, -1, 2.5, HUGE, Huge(-(10**5000)), True, False, [], ["x"], {}, {"a": 1}]
)
wrong_for_number = st.sampled_from(["2", "two", "", "\x00", True, [], [2], {}, {"value": 2}])
# Leaves intake checks the type of: a wrong type there is refused naming that leaf.
TEXT_LEAVES = (
    ("status",),
    ("intent",),
    ("subject", "identifier", "value"),
    ("dispenseRequest", "validityPeriod", "start"),
    ("dispenseRequest", "validityPeriod", "end"),
    ("authoredOn",),
    ("medicationCodeableConcept", "coding", 0, "code"),
    ("dosageInstruction", 0, "timing", "repeat", "timeOfDay", 0),
    ("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "unit"),
    ("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "code"),
)
NUMBER_LEAVES = (("dosageInstruction", 0, "doseAndRate", 0, "doseQuantity", "value"),)


def request_prefixes(payload: dict[str, Any]) -> list[tuple[Any, ...]]:
    if payload["resourceType"] == "MedicationRequest":
        return [()]
    return [
        ("entry", k, "resource")
        for k, e in enumerate(payload["entry"])
        if e["resource"]["resourceType"] == "MedicationRequest"
    ]


@FUZZ
@given(fhir_messages(), st.data())
def test_a_fhir_leaf_of_the_wrong_type_is_refused_naming_it(message: Any, data: Any) -> None:
    payload, patients = message
    prefix = data.draw(st.sampled_from(request_prefixes(payload)), label="request")
    number = data.draw(st.booleans(), label="number leaf")
    leaves = NUMBER_LEAVES if number else TEXT_LEAVES
    request = at(payload, prefix)
    present = [leaf for leaf in leaves if _has(request, leaf)]
    if not present:
        return
    leaf = data.draw(st.sampled_from(present), label="leaf")
    value = data.draw(wrong_for_number if number else wrong_for_text, label="value")
    at(request, leaf[:-1])[leaf[-1]] = value
    exc = refused(payload, [p.ident for p in patients])
    assert exc is not None, f"{fhirpath(prefix + leaf)} = {value!r} was accepted"
    name = fhirpath(prefix + leaf)
    assert any(p.field == name for p in exc.problems), (name, [p.field for p in exc.problems])


def _has(node: Any, path: tuple[Any, ...]) -> bool:
    try:
        at(node, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


@FUZZ
@given(fhir_messages(), st.data())
def test_a_dropped_fhir_field_is_named_when_refused(message: Any, data: Any) -> None:
    """Any field removed: the message is refused naming that field, an element that
    holds it, or (in the text) where the reader looked instead; or it is accepted
    (the field was optional, or another one carries the same fact)."""
    payload, patients = message
    keys = [p for p in fhir_paths(payload) if isinstance(p[-1], str)]
    path = data.draw(st.sampled_from(keys), label="path")
    del at(payload, path[:-1])[path[-1]]
    exc = refused(payload, [p.ident for p in patients])
    if exc is None:
        return
    names = [fhirpath(path[:n]) for n in range(1, len(path) + 1)]
    relative = [fhirpath(path[n:]) for n in range(len(path)) if isinstance(path[n], str)]
    assert any(
        p.field in names
        or any(p.field.endswith(r) or r in p.message for r in relative)
        or any(p.field.startswith(n) for n in names[-2:])
        for p in exc.problems
    ), (fhirpath(path), [str(p) for p in exc.problems])


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**40), 10**40)
    | st.sampled_from([HUGE, Huge(-(10**5000)), 10**19, -(2**63), Decimal("1e999"), Decimal("-0")])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", " ", "\x00", "\u202e", "😀" * 3, "active", "order", "d", "tablet"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@FUZZ
@given(
    fhir_messages(),
    st.lists(st.tuples(st.integers(0, 10**6), json_values, st.booleans()), min_size=1, max_size=4),
)
def test_mutated_fhir_messages_raise_only_intake_error(message: Any, edits: list[Any]) -> None:
    payload, patients = message
    for pick, value, delete in edits:
        paths = fhir_paths(payload)
        if not paths:
            break
        path = paths[pick % len(paths)]
        holder = at(payload, path[:-1])
        if delete and isinstance(holder, dict):
            del holder[path[-1]]
        else:
            holder[path[-1]] = value
    ids = [p.ident for p in patients]
    refused(payload, ids)
    try:
        text = json.dumps(payload, default=str)
    except ValueError:  # NaN and the like are not JSON; the dict itself was tried
        return
    refused(text, ids)


# ----------------------------------------------------------------------------- HL7 v2

SYMBOLS = "|^~\\&#!$%*+/=@:;?<>`'\""


@dataclass(frozen=True)
class Delims:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str | None

    @property
    def msh2(self) -> str:
        return (
            self.component
            + self.repetition
            + self.escape
            + self.subcomponent
            + (self.truncation or "")
        )

    def escaped(self, text: str) -> str:
        e = self.escape
        out = text.replace(e, f"{e}E{e}")
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            out = out.replace(char, f"{e}{code}{e}")
        if self.truncation:
            out = out.replace(self.truncation, f"{e}P{e}")
        return out


@st.composite
def delimiters(draw: st.DrawFn) -> Delims:
    if draw(st.booleans()):
        return Delims("|", "^", "~", "\\", "&", None)
    n = draw(st.sampled_from([5, 6]))
    chars = draw(st.lists(st.sampled_from(SYMBOLS), min_size=n, max_size=n, unique=True))
    field, component, repetition, escape, subcomponent = chars[:5]
    truncation = chars[5] if n == 6 else None
    return Delims(field, component, repetition, escape, subcomponent, truncation)


@dataclass(frozen=True)
class Hl7:
    text: str
    delims: Delims
    terminator: str
    patient: Patient
    groups: int  # ORC groups (orders); with several, segments are named ORDER(k)/...

    @property
    def several(self) -> bool:
        return self.groups > 1


@st.composite
def hl7_messages(draw: st.DrawFn) -> Hl7:
    d = draw(delimiters())
    f, c = d.field, d.component
    n_orders = draw(st.integers(1, 3))
    tq1_counts = [draw(st.integers(1, 2)) for _ in range(n_orders)]
    times = draw(disjoint_times(sum(tq1_counts)))
    order_list, at_time = [], 0
    for count in tq1_counts:
        kind, code, gtin = draw(products)
        units = draw(st.integers(1, 20))
        spans = [draw(periods()) for _ in range(count)]
        # One Order per TQ1: each TQ1 is its own dose order with its own period.
        order_list.append(
            [
                Order(kind, code, gtin, ((units, times[at_time + j]),), *spans[j])
                for j in range(count)
            ]
        )
        at_time += count
    ward = draw(st.none() | wards)
    ident = draw(idents)
    lines = [
        f"MSH{f}{d.msh2}{f}EHR{f}HOSP{f}DOSELINE{f}PHARMACY{f}20261119140500{f}{f}"
        f"RDE{c}O11{c}RDE_O11{f}MSG-1{f}P{f}2.5.1",
        f"PID{f}1{f}{f}{d.escaped(ident)}{c}{c}{c}SE-PNR{f}{f}TEST{c}PATIENT",
    ]
    if ward is not None or draw(st.booleans()):
        lines.append(f"PV1{f}1{f}I{f}{ward or ''}{c}12{c}1")
    for k, tq1_orders in enumerate(order_list):
        first = tq1_orders[0]
        system = "GTIN" if first.kind == "gtin" else draw(st.sampled_from(["ATC", "WC", "atc"]))
        units = first.doses[0][0]
        signs = ["", "+"] if "+" not in d.field + d.msh2 else [""]
        amount = draw(st.sampled_from([f"{sign}{units}" for sign in signs] + [f"{units}.0"]))
        rxe = f"RXE{f}{f}{first.code}{c}Product {k}{c}{system}{f}{amount}{f}{f}TAB{c}tablet"
        segments = [f"ORC{f}NW{f}ORD-{k}"]
        tq1_lines = []
        for o in tq1_orders:
            hhmm = d.repetition.join(f"{t:%H%M}" for t in o.doses[0][1])
            tq1_lines.append(f"TQ1{f}1{f}{f}QD{f}{hhmm}{f}{f}{f}{o.start:%Y%m%d}{f}{o.end:%Y%m%d}")
        if draw(st.booleans()):
            segments += [rxe, *tq1_lines]
        else:
            segments += [*tq1_lines, rxe]
        segments.append(f"RXR{f}PO{c}Oral")
        lines += segments
    terminator = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    text = terminator.join(lines) + terminator
    patient = Patient(ident, ward, tuple(o for group in order_list for o in group))
    return Hl7(text, d, terminator, patient, n_orders)


@FUZZ
@given(hl7_messages(), st.booleans())
def test_valid_hl7_messages_give_their_orders(message: Hl7, as_bytes: bool) -> None:
    payload: Any = message.text.encode() if as_bytes else message.text
    assert parse(payload) == expected([message.patient])


def _segments(message: Hl7) -> list[list[str]]:
    return [
        line.split(message.delims.field) for line in message.text.split(message.terminator) if line
    ]


def _join(message: Hl7, segments: list[list[str]]) -> str:
    t = message.terminator
    return t.join(message.delims.field.join(fields) for fields in segments) + t


def _segment_refs(message: Hl7, name: str) -> list[tuple[int, str]]:
    """(line index, how problems name it) of each segment called `name`."""
    out: list[tuple[int, str]] = []
    order, per_order = -1, 0
    for i, fields in enumerate(_segments(message)):
        if fields[0] == "ORC":
            order, per_order = order + 1, 0
        if fields[0] != name:
            continue
        if name in ("ORC", "RXE", "TQ1") and message.several:
            ref = f"ORDER({order})/{name}"
        else:
            ref = name
        if name == "TQ1":
            ref += f"({per_order})" if per_order else ""
            per_order += 1
        out.append((i, ref))
    return out


# (segment, field, a value that field refuses, what the problem's field is after the
# segment's name); the values hold no delimiter of any generated set.
BROKEN_FIELDS = [
    ("RXE", 3, "abc", "-3"),
    ("RXE", 3, "0", "-3"),
    ("RXE", 3, "21", "-3"),
    ("RXE", 3, "1.5", "-3"),
    ("RXE", 3, "9" * 60, "-3"),
    ("RXE", 5, "MG", "-5.1"),
    ("TQ1", 4, "2500", "-4"),
    ("TQ1", 4, "noon", "-4"),
    ("TQ1", 7, "2026-11-20", "-7"),
    ("TQ1", 8, "20261131", "-8"),
    ("TQ1", 8, "20200101", "-8"),
    ("TQ1", 3, "Q1W", "-3.1"),
    ("ORC", 1, "CA", "-1"),
    ("ORC", 1, "XX", "-1"),
]


@FUZZ
@given(hl7_messages(), st.sampled_from(BROKEN_FIELDS), st.data())
def test_a_broken_hl7_field_is_refused_naming_it(message: Hl7, broken: Any, data: Any) -> None:
    name, number, value, suffix = broken
    refs = _segment_refs(message, name)
    line, ref = data.draw(st.sampled_from(refs), label="segment")
    segments = _segments(message)
    fields = segments[line]
    while len(fields) <= number:
        fields.append("")
    fields[number] = value
    exc = refused(_join(message, segments), [message.patient.ident])
    assert exc is not None, f"{ref}{suffix} = {value!r} was accepted"
    assert any(p.field == ref + suffix for p in exc.problems), (
        ref + suffix,
        [str(p) for p in exc.problems],
    )


@FUZZ
@given(hl7_messages(), st.sampled_from(["PID-3", "PV1-3.1", "MSH-9"]))
def test_hl7_patient_ward_and_type_refusals_name_the_field(message: Hl7, where: str) -> None:
    segments = _segments(message)
    names = [fields[0] for fields in segments]
    if where == "PID-3":
        segments[names.index("PID")][3] = ""
    elif where == "PV1-3.1":
        if "PV1" not in names:
            return
        fields = segments[names.index("PV1")]
        fields[3] = "W" * 40  # a ward code has at most 32 characters
    else:
        segments[0][8] = f"ADT{message.delims.component}A01"
    exc = refused(_join(message, segments), [message.patient.ident])
    assert exc is not None and any(p.field == where for p in exc.problems), where


hl7_noise = st.lists(
    st.sampled_from(
        [
            *SYMBOLS,
            *("\r", "\n", "\r\n", "\x00", "\x0b", "\x1c", " ", "É", "😀", "MSH", "ORC", "TQ1"),
            *("\\X0D\\", "\\F\\", "\\Z\\", "\\", "9" * 45),
        ]
    ),
    max_size=6,
).map("".join)


@FUZZ
@given(
    hl7_messages(),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 6), hl7_noise), min_size=1, max_size=5
    ),
)
def test_hl7_with_separators_injected_raises_only_intake_error(
    message: Hl7, edits: list[tuple[int, int, str]]
) -> None:
    text = message.text
    for pick, cut, insert in edits:
        at_ = pick % (len(text) + 1)
        text = text[:at_] + insert + text[at_ + cut :]
    ids = [message.patient.ident]
    refused(text, ids)
    refused(text.encode("utf-8", "surrogatepass"), ids)


@FUZZ
@given(hl7_messages(), st.data())
def test_an_hl7_field_replaced_by_anything_raises_only_intake_error(
    message: Hl7, data: Any
) -> None:
    segments = _segments(message)
    line = data.draw(st.integers(0, len(segments) - 1), label="segment")
    number = data.draw(st.integers(1, 30), label="field")
    fields = segments[line]
    while len(fields) <= number:
        fields.append("")
    fields[number] = data.draw(hl7_noise | st.text(max_size=30), label="value")
    refused(_join(message, segments), [message.patient.ident])


# ----------------------------------------------------------------------------- regressions


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("status",), HUGE),
        (("intent",), Huge(-(10**5000))),
        (("authoredOn",), HUGE),
        (("dosageInstruction", 0, "timing", "repeat", "timeOfDay", 0), HUGE),
        (("dosageInstruction", 0, "timing", "repeat", "periodUnit"), HUGE),
        (("dosageInstruction", 0, "timing", "when"), HUGE),
    ],
    ids=lambda v: fhirpath(v) if isinstance(v, tuple) else repr(v),
)
def test_a_huge_integer_in_a_decoded_message_is_refused_not_raised(
    path: tuple[Any, ...], value: int
) -> None:
    """A dict payload (an already decoded message) with an integer of more than 4300
    digits: quoting it in the error raised ValueError ('Exceeds the limit (4300
    digits) for integer string conversion') instead of IntakeError."""
    request = copy.deepcopy(_GOOD_REQUEST)
    at(request, path[:-1])[path[-1]] = value
    with pytest.raises(IntakeError) as info:
        parse(request)
    assert any(p.field == fhirpath(path) for p in info.value.problems)
    assert any(p.value == "a huge number" for p in info.value.problems)


_GOOD_REQUEST = fhir_request(
    Patient("PNR-19121212-1212", None, ()),
    Order("gtin", DRUGS[0].gtin, DRUGS[0].gtin, ((2, (time(8), time(20))),), TODAY, TODAY),
    encounter=None,
    authored=True,
    as_datetime=False,
)


def test_the_regression_request_is_valid() -> None:
    assert len(parse(_GOOD_REQUEST)) == 1
