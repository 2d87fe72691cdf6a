"""FHIR R4 MedicationRequest intake: one resource, or a Bundle of them, as JSON.

The reader walks plain JSON (no FHIR model library): every access checks the type it
finds, so a malformed or hostile message ends in an `IntakeError` naming the path, never
in a KeyError or TypeError. The rules (ward, period, ATC resolution) are documented in
docs/order-intake.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from typing import Any, Literal

from controller.config import Product
from controller.intake.common import (
    Catalogue,
    Code,
    Collector,
    DuplicateKey,
    IntakeError,
    Strength,
    check_period,
    check_size,
    check_times,
    check_units,
    check_ward,
    in_range,
    is_count_unit,
    make_order,
    no_constant,
    object_pairs,
    resolve_product,
)
from controller.packing.orders import DoseOrder, pseudonym

GTIN_SYSTEM = "http://www.gs1.org/gtin"
ATC_SYSTEM = "http://www.whocc.no/atc"
BUNDLE_TYPES = ("transaction", "collection", "batch")
MAX_DEPTH = 40  # deeper than any real MedicationRequest; also stops cyclic dicts

Json = dict[str, Any]

_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$"
)
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(?:\.(\d{1,9}))?$")
_TIMING_KEYS = {"id", "extension", "repeat", "code"}
_REPEAT_KEYS = {"id", "extension", "timeOfDay", "frequency", "period", "periodUnit"}


@dataclass(frozen=True)
class _Settings:
    catalogue: Catalogue
    salt: str
    default_ward: str | None
    today: date


def parse_fhir(
    payload: str | bytes | bytearray | Json,
    *,
    catalogue: Catalogue,
    salt: str,
    default_ward: str | None = None,
    today: date,
) -> list[DoseOrder]:
    """DoseOrders from a MedicationRequest or a Bundle of them; all or nothing."""
    c = Collector("FHIR message")
    root = payload if isinstance(payload, dict) else _load(payload, c)
    s = _Settings(catalogue, salt, default_ward, today)
    orders: list[DoseOrder] = []
    if root is not None:
        kind = root.get("resourceType")
        if kind == "Bundle":
            c.source = "FHIR Bundle"
            orders = _bundle(root, c, s)
        elif kind == "MedicationRequest":
            c.source = "FHIR MedicationRequest"
            orders = _request(root, c.child(""), _Refs(), s)
        else:
            c.add("resourceType", _scalar(kind), "expected 'MedicationRequest' or 'Bundle'")
    c.raise_if_any()
    return orders


def _load(payload: str | bytes | bytearray, c: Collector) -> Json | None:
    if not check_size(payload, c):
        return None
    if isinstance(payload, str):
        payload = payload.lstrip("\ufeff")
    try:
        data = json.loads(
            payload,
            parse_float=Decimal,
            parse_constant=no_constant,
            object_pairs_hook=object_pairs,
        )
    except DuplicateKey as exc:
        c.add("payload", exc.key, "a JSON object has this key twice")
        return None
    except json.JSONDecodeError as exc:
        c.add("payload", f"line {exc.lineno} column {exc.colno}", f"is not valid JSON: {exc.msg}")
        return None
    except UnicodeDecodeError as exc:
        c.add("payload", f"byte {exc.start}", "is not UTF-8 text")
        return None
    except RecursionError:
        c.add("payload", None, "JSON is nested too deeply")
        return None
    except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
        c.add("payload", None, f"is not valid JSON: {exc}")
        return None
    if not isinstance(data, dict):
        c.add("payload", _kind(data), "must be a JSON object (a FHIR resource)")
        return None
    return data


# --- references within the message ----------------------------------------------------


class _Refs:
    """Resources of the Bundle by fullUrl and by "Type/id", so references can be followed
    without a server."""

    def __init__(self) -> None:
        self._index: dict[str, tuple[Json, str]] = {}

    def add(self, resource: Json, path: str, full_url: object) -> None:
        kind, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(full_url, str) and full_url:
            self._index.setdefault(full_url, (resource, path))
        if isinstance(kind, str) and isinstance(rid, str):
            self._index.setdefault(f"{kind}/{rid}", (resource, path))

    def resolve(self, ref: str, holder: Json, holder_path: str) -> tuple[Json, str] | None:
        """The referenced resource and its path, or None when it is not in the message."""
        if ref.startswith("#"):
            contained = holder.get("contained")
            if isinstance(contained, list):
                for k, res in enumerate(contained):
                    if isinstance(res, dict) and res.get("id") == ref[1:]:
                        return res, _join(holder_path, f"contained[{k}]")
            return None
        return self._index.get(ref)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --- typed access -----------------------------------------------------------------------


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    return type(value).__name__


def _scalar(value: object) -> object:
    """What a problem quotes: the value itself, or its kind for objects and lists."""
    return value if isinstance(value, str | int | float | Decimal | bool) else _kind(value)


def _obj(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> Json | None:
    value = node.get(key)
    if value is None:
        if required:
            c.add(name, None, f"missing: {required}")
        return None
    if not isinstance(value, dict):
        c.add(name, _kind(value), "must be an object")
        return None
    return value


def _arr(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> list[Any] | None:
    value = node.get(key)
    if value is None or value == []:
        if required:
            c.add(name, None, f"missing: {required}")
        return None
    if not isinstance(value, list):
        c.add(name, _kind(value), "must be a list")
        return None
    return value


def _str(
    node: Json, key: str, c: Collector, name: str, *, required: str = "", secret: bool = False
) -> str | None:
    value = node.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            c.add(name, None, f"missing: {required}")
        return None
    if not isinstance(value, str):
        c.add(name, _kind(value) if secret else _scalar(value), "must be a string")
        return None
    return value.strip()


def _num(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> Decimal | None:
    value = node.get(key)
    if value is None:
        if required:
            c.add(name, None, f"missing: {required}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        c.add(name, _scalar(value), "must be a JSON number")
        return None
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not in_range(number):
        c.add(
            name, "a huge number" if number.is_finite() else str(number), "is not a usable number"
        )
        return None
    return number


def _date(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> date | None:
    text = _str(node, key, c, name, required=required)
    if text is None:
        return None
    match = _DATE.match(text)
    if not match:
        c.add(name, text, "is not a FHIR date (YYYY-MM-DD, optionally with a time)")
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        c.add(name, text, "is not a valid date")
        return None


def _modifiers(node: object, c: Collector, name: str, depth: int = 0) -> bool:
    """FHIR: a modifier extension changes the meaning of what holds it, so a reader that
    does not understand it must refuse the resource rather than ignore it. False once a
    problem is found (the walk stops: one report for a cyclic or absurdly deep dict)."""
    if depth > MAX_DEPTH:
        c.add(name, None, "is nested too deeply")
        return False
    if isinstance(node, dict):
        for key, value in node.items():
            path = _join(name, str(key))
            if key == "modifierExtension" and value not in (None, []):
                url = value[0].get("url") if isinstance(value, list) and value else None
                shown = url if isinstance(url, str) else _kind(value)
                c.add(path, shown, "modifier extensions are not understood: request refused")
                return False
            if isinstance(value, dict | list) and not _modifiers(value, c, path, depth + 1):
                return False
    elif isinstance(node, list):
        for k, item in enumerate(node):
            if not _modifiers(item, c, f"{name}[{k}]", depth + 1):
                return False
    return True


# --- Bundle and MedicationRequest -------------------------------------------------------


def _bundle(root: Json, c: Collector, s: _Settings) -> list[DoseOrder]:
    kind = root.get("type")
    if kind not in BUNDLE_TYPES:
        c.add("type", _scalar(kind), f"Bundle type must be one of {', '.join(BUNDLE_TYPES)}")
    entries = _arr(root, "entry", c, "entry", required="the Bundle has no entries")
    if entries is None:
        return []
    refs = _Refs()
    requests: list[tuple[int, Json]] = []
    for i, entry in enumerate(entries):
        name = f"entry[{i}]"
        if not isinstance(entry, dict):
            c.add(name, _kind(entry), "must be an object")
            continue
        request = entry.get("request")
        if request is not None:
            method = request.get("method") if isinstance(request, dict) else request
            if method not in ("POST", "PUT"):
                c.add(
                    f"{name}.request.method",
                    _scalar(method),
                    "only POST and PUT of resources are accepted",
                )
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            c.add(
                f"{name}.resource",
                _kind(resource) if resource is not None else None,
                "every entry must carry a resource object",
            )
            continue
        refs.add(resource, f"{name}.resource", entry.get("fullUrl"))
        if resource.get("resourceType") == "MedicationRequest":
            requests.append((i, resource))
    if not requests and entries:
        c.add("entry", None, "no MedicationRequest in the Bundle")
    orders: list[DoseOrder] = []
    for i, resource in requests:
        orders += _request(resource, c.child(f"entry[{i}].resource"), refs, s)
    return orders


_STATUS_REASONS = {
    "draft": "a draft is not yet an order",
    "on-hold": "the order is on hold",
    "cancelled": "cancellations are not handled by intake: cancel in the pharmacy system",
    "stopped": "stops are not handled by intake: stop the order in the pharmacy system",
    "completed": "the order is completed",
    "entered-in-error": "the order was entered in error",
}


def _request(res: Json, c: Collector, refs: _Refs, s: _Settings) -> list[DoseOrder]:
    """The DoseOrders of one MedicationRequest (one per dosage instruction), or none and
    problems in `c`. The patient is read first so every later problem names its
    pseudonym."""
    before = c.count
    patient = _patient(res, c, refs, s)
    c.patient = patient
    _modifiers(res, c, "")
    status = res.get("status")
    if status != "active":
        reason = _STATUS_REASONS.get(status, "") if isinstance(status, str) else ""
        c.add(
            "status",
            _scalar(status),
            "only 'active' requests are packed" + (f"; {reason}" if reason else ""),
        )
    intent = res.get("intent")
    if intent != "order":
        c.add("intent", _scalar(intent), "only intent 'order' is packed (not a plan or proposal)")
    dnp = res.get("doNotPerform")
    if dnp is not None and dnp is not False:
        c.add("doNotPerform", _scalar(dnp), "the request says NOT to give this drug")
    ward = _ward(res, c, refs, s)
    product = _product(res, c, refs, s)
    period = _period(res, c, s)
    doses = _dosages(res, c, product)
    if c.count > before or patient is None or ward is None or product is None:
        return []
    if period is None or doses is None:
        return []
    orders = []
    for j, (units, times) in enumerate(doses):
        order = make_order(
            c, f"dosageInstruction[{j}]", patient, ward, product.gtin, units, times, *period
        )
        if order is not None:
            orders.append(order)
    return orders


def _patient(res: Json, c: Collector, refs: _Refs, s: _Settings) -> str | None:
    """The pseudonym of subject.identifier.value, else of the first identifier of the
    Patient that subject.reference points to in the message, else of the reference."""
    subject = _obj(res, "subject", c, "subject", required="the patient is required")
    if subject is None:
        return None
    clear: str | None = None
    ident = _obj(subject, "identifier", c, "subject.identifier")
    if ident is not None:
        clear = _str(ident, "value", c, "subject.identifier.value", secret=True)
    ref = _str(subject, "reference", c, "subject.reference", secret=True)
    if clear is None and ref is not None:
        clear = ref
        found = refs.resolve(ref, res, c.prefix)
        if found is not None:
            target = found[0]
            if target.get("resourceType") != "Patient":
                c.add(
                    "subject.reference",
                    _scalar(target.get("resourceType")),
                    "does not point to a Patient",
                )
                return None
            clear = _first_identifier(target) or ref
    if clear is None:
        c.add("subject", None, "missing: no identifier value and no reference")
        return None
    alias = pseudonym(clear, s.salt)
    c.hide(clear, alias)
    if ref is not None:
        c.hide(ref, alias)
    return alias


def _first_identifier(resource: Json) -> str | None:
    idents = resource.get("identifier")
    if isinstance(idents, list):
        for ident in idents:
            if isinstance(ident, dict):
                value = ident.get("value")
                if isinstance(value, str) and value.strip():
                    return value.strip()
    return None


def _ward(res: Json, c: Collector, refs: _Refs, s: _Settings) -> str | None:
    """Encounter.location of the request's encounter when the Encounter is in the message,
    else the configured default ward."""
    found = None
    encounter = _obj(res, "encounter", c, "encounter")
    if encounter is not None:
        ref = _str(encounter, "reference", c, "encounter.reference")
        if ref is not None:
            found = refs.resolve(ref, res, c.prefix)
    if found is not None:
        target, path = found
        e = c.child(path)
        if target.get("resourceType") != "Encounter":
            c.add(
                "encounter.reference",
                _scalar(target.get("resourceType")),
                "does not point to an Encounter",
            )
            return None
        before = c.count
        ward = _encounter_ward(target, e, refs, path)
        if ward is not None or c.count > before:
            return ward
    if s.default_ward is None:
        c.add(
            "encounter",
            None,
            "no ward: no Encounter.location in the message and no default ward configured",
        )
        return None
    return check_ward(s.default_ward, "default_ward", c)


def _encounter_ward(enc: Json, e: Collector, refs: _Refs, path: str) -> str | None:
    locations = _arr(enc, "location", e, "location")
    if locations is None:
        return None
    for k, item in enumerate(locations):
        name = f"location[{k}]"
        if not isinstance(item, dict):
            e.add(name, _kind(item), "must be an object")
            return None
        if item.get("status") not in (None, "active"):
            continue
        loc = _obj(item, "location", e, f"{name}.location", required="a location reference")
        if loc is None:
            return None
        ident = _obj(loc, "identifier", e, f"{name}.location.identifier")
        code = _str(ident, "value", e, f"{name}.location.identifier.value") if ident else None
        if code is not None:
            return check_ward(code, f"{name}.location.identifier.value", e)
        ref = _str(loc, "reference", e, f"{name}.location.reference")
        if ref is None:
            e.add(f"{name}.location", None, "missing: an identifier or a reference")
            return None
        found = refs.resolve(ref, enc, path)
        if found is not None:
            code = _first_identifier(found[0])
            if code is not None:
                return check_ward(code, f"{found[1]}.identifier[0].value", e.child(""))
        tail = ref.rsplit("Location/", 1)
        if len(tail) == 2 and "/" not in tail[1]:
            return check_ward(tail[1], f"{name}.location.reference", e)
        e.add(f"{name}.location.reference", ref, "names no ward: expected 'Location/<ward>'")
        return None
    return None


def _product(res: Json, c: Collector, refs: _Refs, s: _Settings) -> Product | None:
    """medicationCodeableConcept, or medicationReference to a Medication in the message
    (which may also carry the strength of its single ingredient)."""
    concept, reference = res.get("medicationCodeableConcept"), res.get("medicationReference")
    if concept is not None and reference is not None:
        c.add(
            "medicationReference",
            None,
            "give medicationCodeableConcept or medicationReference, not both",
        )
        return None
    if reference is None:
        cc = _obj(
            res,
            "medicationCodeableConcept",
            c,
            "medicationCodeableConcept",
            required="no medication[x]: the drug is required",
        )
        if cc is None:
            return None
        codes = _codes(cc, c, "medicationCodeableConcept")
        return resolve_product(
            s.catalogue,
            codes,
            None,
            c,
            field="medicationCodeableConcept.coding",
            strength_field="medicationCodeableConcept",
        )
    ref_obj = _obj(res, "medicationReference", c, "medicationReference")
    ref = (
        _str(
            ref_obj,
            "reference",
            c,
            "medicationReference.reference",
            required="a reference to a Medication",
        )
        if ref_obj
        else None
    )
    if ref is None:
        return None
    found = refs.resolve(ref, res, c.prefix)
    if found is None:
        c.add(
            "medicationReference.reference",
            ref,
            "is not in the message (contained or in the Bundle)",
        )
        return None
    med, path = found
    m = c.child(path)
    if med.get("resourceType") != "Medication":
        c.add("medicationReference.reference", ref, "does not point to a Medication")
        return None
    code = _obj(med, "code", m, "code", required="the Medication has no code")
    if code is None:
        return None
    before = m.count
    codes = _codes(code, m, "code")
    strength = _strength(med, m)
    if m.count > before:
        return None
    return resolve_product(
        s.catalogue,
        codes,
        strength,
        m,
        field="code.coding",
        strength_field="ingredient[0].strength",
    )


def _codes(concept: Json, c: Collector, name: str) -> list[Code]:
    codings = _arr(concept, "coding", c, f"{name}.coding", required="a GTIN or ATC coding")
    text = concept.get("text") if isinstance(concept.get("text"), str) else ""
    codes: list[Code] = []
    for k, coding in enumerate(codings or []):
        path = f"{name}.coding[{k}]"
        if not isinstance(coding, dict):
            c.add(path, _kind(coding), "must be an object")
            continue
        system = coding.get("system")
        if system not in (GTIN_SYSTEM, ATC_SYSTEM):
            continue  # other code systems (SNOMED CT, national ids) are not used
        value = _str(coding, "code", c, f"{path}.code", required="the code")
        if value is not None:
            kind: Literal["gtin", "atc"] = "gtin" if system == GTIN_SYSTEM else "atc"
            codes.append(
                Code(kind, value if kind == "gtin" else value.upper(), f"{path}.code", str(text))
            )
    return codes


def _strength(med: Json, m: Collector) -> Strength | None:
    """Strength of a single-ingredient Medication: numerator value and unit, with a
    per-volume denominator ("100 units/ml") kept in the unit."""
    ingredients = med.get("ingredient")
    if not isinstance(ingredients, list) or len(ingredients) != 1:
        return None
    ing = ingredients[0]
    if not isinstance(ing, dict):
        m.add("ingredient[0]", _kind(ing), "must be an object")
        return None
    ratio = _obj(ing, "strength", m, "ingredient[0].strength")
    if ratio is None:
        return None
    name = "ingredient[0].strength.numerator"
    num = _obj(ratio, "numerator", m, name, required="the strength needs a numerator")
    if num is None:
        return None
    amount = _num(num, "value", m, f"{name}.value", required="a number")
    unit = _str(num, "unit", m, f"{name}.unit") or _str(num, "code", m, f"{name}.code")
    if unit is None:
        m.add(f"{name}.unit", None, "missing: the strength needs a unit")
    den = _obj(ratio, "denominator", m, "ingredient[0].strength.denominator")
    if den is not None and unit is not None:
        dname = "ingredient[0].strength.denominator"
        dvalue = _num(den, "value", m, f"{dname}.value")
        dunit = _str(den, "unit", m, f"{dname}.unit") or _str(den, "code", m, f"{dname}.code")
        if dvalue is not None and dvalue != 1:
            m.add(f"{dname}.value", str(dvalue), "must be 1")
        elif dunit is not None and not is_count_unit(dunit, None):
            unit = f"{unit}/{dunit}"
    if amount is None or unit is None or not amount.is_finite() or amount <= 0:
        if amount is not None and unit is not None:
            m.add(f"{name}.value", str(amount), "must be a positive number")
        return None
    return Strength.of(amount, unit)


def _period(res: Json, c: Collector, s: _Settings) -> tuple[date, date] | None:
    """dispenseRequest.validityPeriod start..end, or the day of authoredOn without one."""
    dispense = _obj(res, "dispenseRequest", c, "dispenseRequest")
    name = "dispenseRequest.validityPeriod"
    validity = _obj(dispense, "validityPeriod", c, name) if dispense else None
    if validity is not None:
        start = _date(validity, "start", c, f"{name}.start", required="the first day")
        end = _date(
            validity,
            "end",
            c,
            f"{name}.end",
            required="open-ended orders are not packed: give the last day",
        )
        end_field, end_text = f"{name}.end", validity.get("end")
    else:
        start = end = _date(
            res,
            "authoredOn",
            c,
            "authoredOn",
            required=f"no {name} and no authoredOn: the period is unknown",
        )
        end_field, end_text = "authoredOn", res.get("authoredOn")
    if start is None or end is None:
        return None
    if not check_period(start, end, s.today, end_field, c, str(end_text).strip()):
        return None
    return start, end


def _dosages(
    res: Json, c: Collector, product: Product | None
) -> list[tuple[int, tuple[time, ...]]] | None:
    """(units, times) per dosage instruction; no time may appear in two of them."""
    items = _arr(
        res,
        "dosageInstruction",
        c,
        "dosageInstruction",
        required="a dose and administration times are required",
    )
    if items is None:
        return None
    out: list[tuple[int, tuple[time, ...]]] = []
    seen: dict[time, str] = {}
    ok = True
    for j, item in enumerate(items):
        name = f"dosageInstruction[{j}]"
        if not isinstance(item, dict):
            c.add(name, _kind(item), "must be an object")
            ok = False
            continue
        if item.get("asNeededBoolean") is True or item.get("asNeededCodeableConcept") is not None:
            c.add(f"{name}.asNeeded[x]", None, "as-needed (PRN) doses are not packed")
            ok = False
        units = _dose(item, c, name, product)
        times = _times(item, c, name)
        for at in times or ():
            if at in seen:
                c.add(
                    f"{name}.timing.repeat.timeOfDay",
                    at.isoformat(),
                    f"time also given in {seen[at]}",
                )
                ok = False
            seen.setdefault(at, name)
        if units is None or times is None:
            ok = False
        else:
            out.append((units, times))
    return out if ok else None


def _dose(item: Json, c: Collector, name: str, product: Product | None) -> int | None:
    rates = _arr(item, "doseAndRate", c, f"{name}.doseAndRate", required="the dose is required")
    if rates is None:
        return None
    if len(rates) > 1:
        c.add(
            f"{name}.doseAndRate",
            f"{len(rates)} entries",
            "several doses in one instruction are ambiguous",
        )
        return None
    rate = rates[0]
    name = f"{name}.doseAndRate[0]"
    if not isinstance(rate, dict):
        c.add(name, _kind(rate), "must be an object")
        return None
    if rate.get("doseRange") is not None:
        c.add(f"{name}.doseRange", None, "a dose range cannot be packed: send doseQuantity")
        return None
    qty = _obj(rate, "doseQuantity", c, f"{name}.doseQuantity", required="the dose is required")
    if qty is None:
        return None
    name = f"{name}.doseQuantity"
    if qty.get("comparator") is not None:
        c.add(f"{name}.comparator", _scalar(qty.get("comparator")), "a dose must be exact")
        return None
    value = _num(qty, "value", c, f"{name}.value", required="the number of units")
    units = check_units(value, f"{name}.value", c) if value is not None else None
    code = _str(qty, "code", c, f"{name}.code")
    text = _str(qty, "unit", c, f"{name}.unit")
    if code is None and text is None:
        c.add(f"{name}.unit", None, "missing: the dose needs a unit (tablet, capsule, ...)")
        return None
    for key, unit in (("code", code), ("unit", text)):
        if unit is not None and not is_count_unit(unit, product):
            c.add(
                f"{name}.{key}",
                unit,
                "is not a count of dosage units (tablet, capsule, ...): "
                "doses by mass or volume are not packed",
            )
            return None
    return units


def _times(item: Json, c: Collector, name: str) -> tuple[time, ...] | None:
    """Every-day timing with explicit timeOfDay; anything the reader cannot honour
    (weekdays, every other day, event dates, when-codes) is refused, not ignored."""
    tod_name = f"{name}.timing.repeat.timeOfDay"
    missing = "administration times are required"
    timing = _obj(item, "timing", c, f"{name}.timing")
    if timing is None:
        c.add(tod_name, None, f"missing: {missing}")
        return None
    ok = True
    before = c.count
    for key in timing:
        if key not in _TIMING_KEYS:
            c.add(
                f"{name}.timing.{key}",
                _scalar(timing[key]),
                "is not supported: use repeat.timeOfDay",
            )
            ok = False
    repeat = _obj(timing, "repeat", c, f"{name}.timing.repeat")
    if repeat is None:
        c.add(tod_name, None, f"missing: {missing}")
        return None
    for key in repeat:
        if key not in _REPEAT_KEYS:
            c.add(
                f"{name}.timing.repeat.{key}",
                _scalar(repeat[key]),
                "is not supported: only every-day timing with timeOfDay is packed",
            )
            ok = False
    raw = _arr(repeat, "timeOfDay", c, tod_name, required=missing)
    if raw is None:
        return None
    parsed: list[tuple[str, time | None]] = []
    for k, text in enumerate(raw):
        parsed.append((f"{tod_name}[{k}]", _time(text, f"{tod_name}[{k}]", c)))
    rname = f"{name}.timing.repeat"
    frequency = _num(repeat, "frequency", c, f"{rname}.frequency")
    if frequency is not None and frequency != len(raw):
        c.add(f"{rname}.frequency", str(frequency), f"does not match {len(raw)} timeOfDay entries")
        ok = False
    period = _num(repeat, "period", c, f"{rname}.period")
    if period is not None and period != 1:
        c.add(f"{rname}.period", str(period), "only every day (period 1, periodUnit 'd') is packed")
        ok = False
    ok = ok and c.count == before
    unit = repeat.get("periodUnit")
    if unit is not None and unit != "d":
        c.add(f"{rname}.periodUnit", _scalar(unit), "only every day (periodUnit 'd') is packed")
        ok = False
    times = check_times(parsed, c)
    return times if ok else None


def _time(text: object, name: str, c: Collector) -> time | None:
    if not isinstance(text, str):
        c.add(name, _scalar(text), "must be a time string HH:MM:SS")
        return None
    match = _TIME.match(text)
    if not match:
        c.add(name, text, "is not a FHIR time (HH:MM:SS)")
        return None
    micro = 1 if match[4] and int(match[4]) else 0  # any fraction: reported as seconds
    return time(int(match[1]), int(match[2]), int(match[3]), micro)


__all__ = ["ATC_SYSTEM", "GTIN_SYSTEM", "IntakeError", "parse_fhir"]
