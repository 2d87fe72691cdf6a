"""Ward requisitions as they arrive: FHIR R4 SupplyRequest (one, or a Bundle of them) and
the plain JSON body, both turned into a `RequisitionIn`.

Like dose order intake (controller/intake), the readers walk plain JSON by hand (no FHIR
model library): every access checks the type it finds, every problem is reported into a
`Collector` with its field path and value, and one `IntakeError` lists them all at the
end. Nothing partial is ever returned. The rules are documented in docs/ward-supply.md
("Requisition formats").

This module does no I/O and reads no clock; what a requisition may name (products, drug
rooms) comes in as an `Assortment` built by the caller from the site.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from controller.gs1 import gs1_check_digit
from controller.intake.common import (
    Collector,
    DuplicateKey,
    IntakeError,
    check_size,
    no_constant,
    object_pairs,
)
from controller.wardsupply.model import (
    MAX_ID_CHARS,
    MAX_LINES_PER_REQUISITION,
    MAX_PACKS_PER_LINE,
    LineIn,
    RequisitionIn,
    RequisitionSource,
)

FHIR_SOURCE = "SupplyRequest"  # IntakeError.source of parse_fhir
JSON_SOURCE = "requisition"  # IntakeError.source of parse_json

GTIN_SYSTEM = "http://www.gs1.org/gtin"
ARTICLE_SYSTEM = "urn:doseline:article"
DRUG_ROOM_SYSTEM = "urn:doseline:drug-room"
BUNDLE_TYPES = ("transaction", "batch", "collection")

MAX_SENDER_CHARS = 100  # an identifier system URI ("urn:oid:...", "https://...")
MAX_REQUESTED_BY_CHARS = 100  # longer names are clipped
MAX_NOTE_CHARS = 300  # longer notes are clipped
MAX_DEPTH = 32  # JSON nesting: far deeper than any requisition; refused beyond
MAX_ARTICLE_DIGITS = 10  # article numbers are below 2**32
MAX_STRUCTURE_PROBLEMS = 20  # NUL / modifier problems listed before the walk stops

PACK_UNITS = frozenset({"pack", "packs", "{pack}", "{packs}"})
PRIORITIES = {"routine": False, "urgent": True, "asap": True, "stat": True}
JSON_KEYS = ("id", "drug_room", "urgent", "requested_by", "note", "lines")
JSON_LINE_KEYS = ("gtin", "article", "packs", "note")

_STATUS_REASONS = {
    "draft": "a draft is not yet a requisition",
    "suspended": "the request is suspended",
    "cancelled": "a cancellation is not a requisition: withdraw it in the pharmacy",
    "completed": "the request is already completed",
    "entered-in-error": "the request was entered in error",
    "unknown": "the request's state is unknown",
}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_LOCATION = re.compile(r"Location/([^/\s]+)")
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2}))?"
)

Json = dict[str, Any]


@dataclass(frozen=True)
class Assortment:
    """What a requisition may name, built by the caller from the site."""

    gtins: Mapping[str, int]  # 14-digit GTIN -> pack size (units per pack)
    articles: Mapping[int, str]  # article number -> 14-digit GTIN
    drug_rooms: Collection[str]  # drug room codes known to the site


def parse_fhir(payload: str | bytes, assortment: Assortment) -> RequisitionIn:
    """A requisition from a FHIR R4 SupplyRequest (one line) or a Bundle of them (one
    line per entry), as JSON text or UTF-8 bytes; all or nothing."""
    c = Collector(FHIR_SOURCE)
    root = _load(payload, c, fhir=True)
    result: RequisitionIn | None = None
    if root is not None:
        kind = root.get("resourceType")
        if kind == "Bundle":
            result = _bundle(root, c, assortment)
        elif kind == "SupplyRequest":
            result = _single(root, c, assortment)
        else:
            c.add("resourceType", _shown(kind), "expected 'SupplyRequest' or 'Bundle'")
    c.raise_if_any()
    if result is None:  # every path that gives no result reports why; a guard only
        raise IntakeError(FHIR_SOURCE, [])
    return result


def parse_json(payload: str | bytes, assortment: Assortment, *, sender: str) -> RequisitionIn:
    """A requisition from the plain JSON body; `sender` is who sends it (the signed-in
    user or a CLI option), and with the body's `id` it is the requisition's identity."""
    c = Collector(JSON_SOURCE)
    root = _load(payload, c, fhir=False)
    result = _plain(root, c, assortment, sender) if root is not None else None
    c.raise_if_any()
    if result is None:
        raise IntakeError(JSON_SOURCE, [])
    return result


# --- JSON text --------------------------------------------------------------------------


def _load(payload: object, c: Collector, *, fhir: bool) -> Json | None:
    """The payload as a JSON object whose structure passed `_structure`, or None and the
    problems in `c`. Problems are recorded here and raised later by the caller, outside
    any exception handler, so the IntakeError carries no decoder exception (which would
    hold the whole payload)."""
    if not isinstance(payload, str | bytes | bytearray):
        c.add("payload", type(payload).__name__, "must be JSON text (str or UTF-8 bytes)")
        return None
    if not check_size(payload, c):
        return None
    text: str | None = None
    if isinstance(payload, str):
        text = payload
    else:
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            c.add("payload", f"byte {exc.start}", "is not UTF-8 text")
            return None
    text = text.removeprefix("\ufeff")
    try:
        data = json.loads(
            text,
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
    except RecursionError:
        c.add("payload", None, f"JSON is nested too deeply (more than {MAX_DEPTH} levels)")
        return None
    except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
        c.add("payload", None, f"is not valid JSON: {str(exc)[:120]}")
        return None
    if not isinstance(data, dict):
        c.add("payload", _kind(data), "must be a JSON object")
        return None
    if not _structure(data, c, "", 0, fhir=fhir):
        return None
    return data


def _key_path(prefix: str, key: str) -> str:
    """The path of `key` under `prefix`; a key that is not a plain name is quoted
    (`extension["a.b"]`, `[""]`), so every path names its field unambiguously."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{json.dumps(key)}]"


def _structure(node: object, c: Collector, path: str, depth: int, *, fhir: bool) -> bool:
    """Checks over the whole document, ignored parts included: nesting depth, NUL in any
    key or string, and (FHIR) modifiers this reader does not understand. False when a
    problem was found; the walk stops after MAX_STRUCTURE_PROBLEMS of them."""
    if depth > MAX_DEPTH:
        c.add(path or "payload", None, f"is nested more than {MAX_DEPTH} levels deep")
        return False
    ok = True
    if isinstance(node, dict):
        for key, value in node.items():
            if c.count >= MAX_STRUCTURE_PROBLEMS:
                return False
            here = _key_path(path, key)
            if "\x00" in key:
                c.add(here, key, "a key contains a NUL character")
                ok = False
                continue
            if fhir and key == "modifierExtension" and value not in (None, []):
                first = value[0] if isinstance(value, list) and value else None
                url = first.get("url") if isinstance(first, dict) else None
                shown = url if isinstance(url, str) else _kind(value)
                c.add(here, shown, "a modifier extension this reader does not understand")
                ok = False
                continue
            if fhir and key == "implicitRules" and value is not None:
                c.add(here, _shown(value), "implicit rules this reader does not understand")
                ok = False
                continue
            ok = _structure(value, c, here, depth + 1, fhir=fhir) and ok
    elif isinstance(node, list):
        for k, item in enumerate(node):
            if c.count >= MAX_STRUCTURE_PROBLEMS:
                return False
            ok = _structure(item, c, f"{path}[{k}]", depth + 1, fhir=fhir) and ok
    elif isinstance(node, str) and "\x00" in node:
        c.add(path or "payload", node, "contains a NUL character")
        ok = False
    return ok


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
    if isinstance(value, int | Decimal):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


def _shown(value: object) -> object:
    """What a problem quotes: a scalar itself, the kind of an object or a list, and
    nothing for null (reported like a missing value)."""
    if value is None:
        return None
    return value if isinstance(value, str | int | Decimal | bool) else _kind(value)


def _obj(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> Json | None:
    value = node.get(key)
    if value is None:
        if required:
            c.add(name, None, f"missing: {required}")
        return None
    if not isinstance(value, dict):
        c.add(name, _shown(value), "must be an object")
        return None
    return value


def _list(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> list[Any] | None:
    value = node.get(key)
    if value is None or value == []:
        if required:
            c.add(name, None if value is None else "[]", f"missing: {required}")
        return None
    if not isinstance(value, list):
        c.add(name, _shown(value), "must be a list")
        return None
    return value


def _str(node: Json, key: str, c: Collector, name: str, *, required: str = "") -> str | None:
    """A string without surrounding whitespace; empty counts as missing."""
    value = node.get(key)
    if value is None:
        if required:
            c.add(name, None, f"missing: {required}")
        return None
    if not isinstance(value, str):
        c.add(name, _shown(value), "must be a string")
        return None
    if not value.strip():
        if required:
            c.add(name, value, f"is empty: {required}")
        return None
    return value.strip()


def _identity(text: str, c: Collector, name: str, limit: int) -> str | None:
    """An identifier: printable (no control characters), 1..limit characters."""
    if len(text) > limit:
        c.add(name, text, f"is longer than {limit} characters")
        return None
    if not text.isprintable():
        c.add(name, text, "contains control or other non-printable characters")
        return None
    return text


def _sender_uri(text: str, c: Collector, name: str) -> str | None:
    if _identity(text, c, name, MAX_SENDER_CHARS) is None:
        return None
    if not _SCHEME.fullmatch(text):
        c.add(name, text, "is not a URI (scheme:rest, e.g. 'urn:oid:1.2.3' or 'https://...')")
        return None
    return text


def _free_text(text: str, limit: int, *, lines: bool) -> str:
    """Free text as stored: other control characters become spaces (newlines are kept
    in notes), runs of spaces shrink to one, and the text is clipped to `limit`."""
    if lines:
        rows = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    else:
        rows = [text]
    cleaned = [
        " ".join("".join(ch if ch.isprintable() else " " for ch in row).split()) for row in rows
    ]
    out = "\n".join(cleaned).strip()
    return out if len(out) <= limit else out[: limit - 3].rstrip() + "..."


def _optional_text(
    node: Json, key: str, c: Collector, name: str, limit: int, *, lines: bool
) -> str:
    text = _str(node, key, c, name)
    return "" if text is None else _free_text(text, limit, lines=lines)


# --- products, packs, drug rooms --------------------------------------------------------


def _by_gtin(value: str, a: Assortment, c: Collector, name: str, label: str = "") -> str | None:
    """The 14-digit GTIN of a product in the assortment (GTIN-8/12/13 are zero-filled)."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (8, 12, 13, 14):
        c.add(name, value, "is not a GTIN (8, 12, 13 or 14 digits)")
        return None
    expected = gs1_check_digit(digits[:-1])
    if expected != int(digits[-1]):
        c.add(name, value, f"is not a valid GTIN: check digit {digits[-1]}, expected {expected}")
        return None
    gtin = digits.zfill(14)
    if gtin not in a.gtins:
        c.add(name, value, f"GTIN{label} is not in the assortment: unknown product")
        return None
    return gtin


def _by_article(number: int, a: Assortment, c: Collector, name: str, label: str = "") -> str | None:
    gtin = a.articles.get(number)
    if gtin is None:
        c.add(name, number, f"article{label} is not in the assortment: unknown product")
        return None
    if gtin not in a.gtins:
        c.add(name, number, f"article{label} names GTIN {gtin}, which is not in the assortment")
        return None
    return gtin


def _article_text(value: str, a: Assortment, c: Collector, name: str, label: str) -> str | None:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ARTICLE_DIGITS:
        c.add(name, value, f"is not an article number (up to {MAX_ARTICLE_DIGITS} digits)")
        return None
    return _by_article(int(text), a, c, name, label)


def _packs(value: object, c: Collector, name: str) -> int | None:
    """A number of whole packs, 1..MAX_PACKS_PER_LINE."""
    if value is None:
        c.add(name, None, "missing: the number of packs")
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        c.add(name, _shown(value), "must be a JSON number (whole packs)")
        return None
    number = Decimal(value)
    if not number.is_finite():  # not from JSON text; a guard only
        c.add(name, str(number), "must be a number of whole packs")
        return None
    if number < 1:
        c.add(name, value, "must be at least 1 pack")
        return None
    if number > MAX_PACKS_PER_LINE:
        c.add(name, value, f"more than {MAX_PACKS_PER_LINE} packs of one product are not accepted")
        return None
    if number != number.to_integral_value():
        c.add(name, value, "is not a whole number of packs: order whole packs")
        return None
    return int(number)


def _known_room(code: str, a: Assortment, c: Collector, name: str) -> str | None:
    if code not in a.drug_rooms:
        c.add(name, code, "is not a drug room of this site")
        return None
    return code


# --- FHIR: Bundle and SupplyRequest ------------------------------------------------------


@dataclass
class _Entry:
    """What one SupplyRequest gave; None where it had a problem."""

    gtin: str | None = None
    item_field: str = "itemCodeableConcept"
    packs: int | None = None
    drug_room: str | None = None
    urgent: bool = False
    requested_by: str = ""
    authored_at: datetime | None = None
    note: str = ""


def _single(res: Json, c: Collector, a: Assortment) -> RequisitionIn | None:
    """A SupplyRequest on its own: a one-line requisition, identified by identifier[0];
    its note is the requisition's note."""
    before = c.count
    idents = _list(res, "identifier", c, "identifier", required="the requisition's identifier")
    identity: tuple[str | None, str | None] = (None, None)
    if idents is not None:
        if not isinstance(idents[0], dict):
            c.add("identifier[0]", _shown(idents[0]), "must be an object")
        else:
            identity = _identifier(idents[0], c, "identifier[0]")
    entry = _request(res, c.child(""), a)
    sender, sender_id = identity
    if c.count > before or sender is None or sender_id is None:
        return None
    if entry.gtin is None or entry.packs is None or entry.drug_room is None:
        return None
    return RequisitionIn(
        sender=sender,
        sender_id=sender_id,
        drug_room=entry.drug_room,
        lines=(LineIn(entry.gtin, entry.packs),),
        source=RequisitionSource.FHIR,
        urgent=entry.urgent,
        requested_by=entry.requested_by,
        authored_at=entry.authored_at,
        note=entry.note,  # one line: its note is the requisition's
    )


def _bundle(root: Json, c: Collector, a: Assortment) -> RequisitionIn | None:
    """A Bundle of SupplyRequests: one requisition, one line per entry (an entry's note
    is its line's note), one drug room, identified by the Bundle's identifier."""
    before = c.count
    kind = root.get("type")
    if kind not in BUNDLE_TYPES:
        c.add("type", _shown(kind), f"Bundle type must be one of {', '.join(BUNDLE_TYPES)}")
    sender = sender_id = None
    if isinstance(root.get("identifier"), list):
        c.add("identifier", "a list", "must be an object: Bundle.identifier is one Identifier")
    else:
        ident = _obj(
            root, "identifier", c, "identifier", required="a Bundle's identifier is its id"
        )
        if ident is not None:
            sender, sender_id = _identifier(ident, c, "identifier")
    entries = _list(root, "entry", c, "entry", required="the Bundle has no entries")
    if entries is None:
        return None
    if len(entries) > MAX_LINES_PER_REQUISITION:
        c.add(
            "entry",
            f"{len(entries)} entries",
            f"more than {MAX_LINES_PER_REQUISITION} lines in one requisition",
        )
        return None
    parsed: list[tuple[int, _Entry]] = []
    for i, item in enumerate(entries):
        name = f"entry[{i}]"
        if not isinstance(item, dict):
            c.add(name, _shown(item), "must be an object")
            continue
        request = item.get("request")
        if request is not None:
            method = request.get("method") if isinstance(request, dict) else request
            if method not in ("POST", "PUT"):
                c.add(f"{name}.request.method", _shown(method), "only POST or PUT is accepted")
        resource = _obj(item, "resource", c, f"{name}.resource", required="a SupplyRequest")
        if resource is None:
            continue
        if resource.get("resourceType") != "SupplyRequest":
            c.add(
                f"{name}.resource.resourceType",
                _shown(resource.get("resourceType")),
                "every entry must be a SupplyRequest",
            )
            continue
        parsed.append((i, _request(resource, c.child(f"{name}.resource"), a)))
    _one_room(parsed, c)
    _no_repeats(parsed, c)
    if c.count > before or sender is None or sender_id is None:
        return None
    lines: list[LineIn] = []
    for _, e in parsed:
        if e.gtin is None or e.packs is None:
            return None
        lines.append(LineIn(e.gtin, e.packs, e.note))
    room = parsed[0][1].drug_room if parsed else None
    if room is None:
        return None
    authored = [e.authored_at for _, e in parsed if e.authored_at is not None]
    return RequisitionIn(
        sender=sender,
        sender_id=sender_id,
        drug_room=room,
        lines=tuple(lines),
        source=RequisitionSource.FHIR,
        urgent=any(e.urgent for _, e in parsed),
        requested_by=next((e.requested_by for _, e in parsed if e.requested_by), ""),
        authored_at=min(authored) if authored else None,
    )


def _one_room(parsed: list[tuple[int, _Entry]], c: Collector) -> None:
    first: tuple[int, str] | None = None
    for i, e in parsed:
        if e.drug_room is None:
            continue
        if first is None:
            first = (i, e.drug_room)
        elif e.drug_room != first[1]:
            c.add(
                f"entry[{i}].resource.deliverTo",
                e.drug_room,
                f"a requisition goes to one drug room: entry[{first[0]}] names {first[1]}",
            )


def _no_repeats(parsed: list[tuple[int, _Entry]], c: Collector) -> None:
    seen: dict[str, int] = {}
    for i, e in parsed:
        if e.gtin is None:
            continue
        if e.gtin in seen:
            c.add(
                f"entry[{i}].resource.{e.item_field}",
                e.gtin,
                f"the same product as entry[{seen[e.gtin]}]: one line per product",
            )
        else:
            seen[e.gtin] = i


def _identifier(ident: Json, c: Collector, name: str) -> tuple[str | None, str | None]:
    """(sender, sender_id) from an Identifier's system and value."""
    system = _str(ident, "system", c, f"{name}.system", required="the sender (a URI)")
    value = _str(ident, "value", c, f"{name}.value", required="the requisition's id")
    sender = _sender_uri(system, c, f"{name}.system") if system is not None else None
    sender_id = _identity(value, c, f"{name}.value", MAX_ID_CHARS) if value is not None else None
    return sender, sender_id


def _request(res: Json, c: Collector, a: Assortment) -> _Entry:
    """One SupplyRequest's line, drug room and the rest; problems into `c`."""
    entry = _Entry()
    status = res.get("status")
    if status != "active":
        reason = _STATUS_REASONS.get(status, "") if isinstance(status, str) else ""
        c.add(
            "status",
            _shown(status),
            "only 'active' requests are taken" + (f": {reason}" if reason else ""),
        )
    priority = res.get("priority")
    if priority is not None:
        if isinstance(priority, str) and priority in PRIORITIES:
            entry.urgent = PRIORITIES[priority]
        else:
            c.add("priority", _shown(priority), "must be routine, urgent, asap or stat")
    entry.gtin, entry.item_field = _item(res, c, a)
    entry.packs = _quantity(res, c, a, entry.gtin)
    entry.drug_room = _deliver_to(res, c, a)
    requester = _obj(res, "requester", c, "requester")
    if requester is not None:
        entry.requested_by = _optional_text(
            requester, "display", c, "requester.display", MAX_REQUESTED_BY_CHARS, lines=False
        )
    if res.get("authoredOn") is not None:
        entry.authored_at = _date_time(res.get("authoredOn"), c, "authoredOn")
    notes = _list(res, "note", c, "note")
    if notes is not None:
        if isinstance(notes[0], dict):
            entry.note = _optional_text(
                notes[0], "text", c, "note[0].text", MAX_NOTE_CHARS, lines=True
            )
        else:
            c.add("note[0]", _shown(notes[0]), "must be an object (an Annotation)")
    return entry


def _item(res: Json, c: Collector, a: Assortment) -> tuple[str | None, str]:
    """The GTIN that item[x] names: itemCodeableConcept.coding[] or
    itemReference.identifier, by GTIN or article; all codes given must agree."""
    concept, reference = res.get("itemCodeableConcept"), res.get("itemReference")
    if concept is None and reference is None:
        c.add("item[x]", None, "missing: the product (a GTIN or article coding)")
        return None, "item[x]"
    if concept is not None and reference is not None:
        c.add("itemReference", None, "give itemCodeableConcept or itemReference, not both")
        return None, "itemReference"
    found: list[tuple[str, str | None]] = []  # (field, GTIN or None when refused)
    if concept is not None:
        field = "itemCodeableConcept"
        cc = _obj(res, field, c, field)
        if cc is None:
            return None, field
        text = cc.get("text")
        label = f" ({_free_text(text, 60, lines=False)})" if isinstance(text, str) else ""
        codings = _list(cc, "coding", c, f"{field}.coding", required="a GTIN or article coding")
        for k, coding in enumerate(codings or []):
            path = f"{field}.coding[{k}]"
            if not isinstance(coding, dict):
                c.add(path, _shown(coding), "must be an object")
                found.append((path, None))
                continue
            code = _code(coding, "code", c, path, a, label)
            if code is not None:
                found.append(code)
        if codings and not found:
            system = codings[0].get("system") if isinstance(codings[0], dict) else None
            c.add(
                f"{field}.coding",
                _shown(system),
                f"no coding of system {GTIN_SYSTEM} (GTIN) or {ARTICLE_SYSTEM} (article)",
            )
    else:
        field = "itemReference"
        ref = _obj(res, field, c, field)
        if ref is None:
            return None, field
        ident = _obj(ref, "identifier", c, f"{field}.identifier")
        if ident is None:
            shown = ref.get("reference")
            c.add(
                f"{field}.identifier" if shown is None else f"{field}.reference",
                None if shown is None else _shown(shown),
                "name the product by GTIN or article: itemCodeableConcept, or "
                "itemReference.identifier",
            )
            return None, field
        code = _code(ident, "value", c, f"{field}.identifier", a, "")
        if code is None:
            c.add(
                f"{field}.identifier.system",
                _shown(ident.get("system")),
                f"must be {GTIN_SYSTEM} (GTIN) or {ARTICLE_SYSTEM} (article)",
            )
        else:
            found.append(code)
    good = [(path, gtin) for path, gtin in found if gtin is not None]
    if len(good) < len(found) or not good:
        return None, field
    first_path, first = good[0]
    for path, gtin in good[1:]:
        if gtin != first:
            c.add(path, gtin, f"names another product than {first_path} ({first})")
            return None, field
    return first, field


def _code(
    node: Json, key: str, c: Collector, path: str, a: Assortment, label: str
) -> tuple[str, str | None] | None:
    """(field, GTIN or None) for a Coding or Identifier of a known system; None for other
    systems (SNOMED CT, national ids, ...), which are ignored."""
    system = node.get("system")
    if system not in (GTIN_SYSTEM, ARTICLE_SYSTEM):
        return None
    name = f"{path}.{key}"
    value = _str(node, key, c, name, required="the code")
    if value is None:
        return name, None
    if system == GTIN_SYSTEM:
        return name, _by_gtin(value, a, c, name, label)
    return name, _article_text(value, a, c, name, label)


def _quantity(res: Json, c: Collector, a: Assortment, gtin: str | None) -> int | None:
    """quantity.value in whole packs; a unit or code other than packs is refused."""
    qty = _obj(res, "quantity", c, "quantity", required="the number of packs")
    if qty is None:
        return None
    ok = True
    if qty.get("comparator") is not None:
        c.add("quantity.comparator", _shown(qty.get("comparator")), "a quantity must be exact")
        ok = False
    for key in ("code", "unit"):
        unit = _str(qty, key, c, f"quantity.{key}")
        if unit is not None and unit.lower() not in PACK_UNITS:
            size = a.gtins.get(gtin) if gtin is not None else None
            hint = f" (a pack of this product holds {size})" if size else ""
            c.add(f"quantity.{key}", unit, f"is not packs: order whole packs{hint}")
            ok = False
    packs = _packs(qty.get("value"), c, "quantity.value")
    return packs if ok else None


def _deliver_to(res: Json, c: Collector, a: Assortment) -> str | None:
    """The drug room: deliverTo.identifier (system urn:doseline:drug-room) or
    deliverTo.reference "Location/<code>"; both may be given if they agree."""
    ref = _obj(res, "deliverTo", c, "deliverTo", required="the drug room to deliver to")
    if ref is None:
        return None
    kind = ref.get("type")
    if kind is not None and kind != "Location":
        c.add("deliverTo.type", _shown(kind), "must be 'Location' (the drug room)")
        return None
    codes: list[tuple[str, str]] = []
    before = c.count
    ident = _obj(ref, "identifier", c, "deliverTo.identifier")
    if ident is not None:
        system = ident.get("system")
        if system != DRUG_ROOM_SYSTEM:
            c.add("deliverTo.identifier.system", _shown(system), f"must be {DRUG_ROOM_SYSTEM}")
        value = _str(
            ident, "value", c, "deliverTo.identifier.value", required="the drug room's code"
        )
        if value is not None:
            codes.append(("deliverTo.identifier.value", value))
    text = _str(ref, "reference", c, "deliverTo.reference")
    if text is not None:
        match = _LOCATION.fullmatch(text)
        if match is None:
            c.add("deliverTo.reference", text, "must be 'Location/<drug room code>'")
        else:
            codes.append(("deliverTo.reference", match[1]))
    if c.count > before:
        return None
    if not codes:
        c.add(
            "deliverTo",
            None,
            f"missing: an identifier ({DRUG_ROOM_SYSTEM}) or a reference 'Location/<code>'",
        )
        return None
    (first_field, first), *rest = codes
    for field, code in rest:
        if code != first:
            c.add(field, code, f"names another drug room than {first_field} ({first})")
            return None
    return _known_room(first, a, c, first_field)


def _date_time(value: object, c: Collector, name: str) -> datetime | None:
    """A FHIR dateTime with a time zone, or a date alone (midnight UTC), in UTC."""
    if not isinstance(value, str):
        c.add(name, _shown(value), "must be a FHIR dateTime string")
        return None
    match = _DATETIME.fullmatch(value)
    if match is None:
        c.add(
            name,
            value,
            "is not a FHIR dateTime (YYYY-MM-DD, or YYYY-MM-DDThh:mm:ss with Z or +hh:mm)",
        )
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        if hour is None:
            return datetime(int(year), int(month), int(day), tzinfo=UTC)
        if zone == "Z":
            tz = UTC
        else:
            sign = -1 if zone[0] == "-" else 1
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            if offset > timedelta(hours=14) or int(zone[4:6]) > 59:
                raise ValueError(zone)
            tz = timezone(sign * offset)
        micro = int((fraction or "0").ljust(6, "0")[:6])
        at = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
        return at.astimezone(UTC)
    except (ValueError, OverflowError):
        c.add(name, value, "is not a valid date and time")
        return None


# --- plain JSON -------------------------------------------------------------------------


def _plain(root: Json, c: Collector, a: Assortment, sender: str) -> RequisitionIn | None:
    before = c.count
    _strict_keys(root, JSON_KEYS, c, "")
    who = _sender(sender, c)
    text = _str(root, "id", c, "id", required="the requisition's id")
    req_id = _identity(text, c, "id", MAX_ID_CHARS) if text is not None else None
    room_code = _str(root, "drug_room", c, "drug_room", required="the drug room's code")
    room = _known_room(room_code, a, c, "drug_room") if room_code is not None else None
    urgent = root.get("urgent")
    if urgent is not None and not isinstance(urgent, bool):
        c.add("urgent", _shown(urgent), "must be true or false")
    requested_by = _optional_text(
        root, "requested_by", c, "requested_by", MAX_REQUESTED_BY_CHARS, lines=False
    )
    note = _optional_text(root, "note", c, "note", MAX_NOTE_CHARS, lines=True)
    lines = _plain_lines(root, c, a)
    if c.count > before or who is None or req_id is None or room is None or lines is None:
        return None
    return RequisitionIn(
        sender=who,
        sender_id=req_id,
        drug_room=room,
        lines=lines,
        source=RequisitionSource.JSON,
        urgent=urgent is True,
        requested_by=requested_by,
        note=note,
    )


def _sender(sender: object, c: Collector) -> str | None:
    if not isinstance(sender, str) or not sender.strip():
        c.add("sender", _shown(sender), "missing: who sends the requisition")
        return None
    return _identity(sender.strip(), c, "sender", MAX_SENDER_CHARS)


def _strict_keys(node: Json, allowed: tuple[str, ...], c: Collector, prefix: str) -> None:
    for key, value in node.items():
        if key not in allowed:
            c.add(
                _key_path(prefix, key),
                _shown(value),
                f"unknown field (expected {', '.join(allowed)})",
            )


def _plain_lines(root: Json, c: Collector, a: Assortment) -> tuple[LineIn, ...] | None:
    items = _list(root, "lines", c, "lines", required="at least one line")
    if items is None:
        return None
    if len(items) > MAX_LINES_PER_REQUISITION:
        c.add(
            "lines",
            f"{len(items)} lines",
            f"more than {MAX_LINES_PER_REQUISITION} lines in one requisition",
        )
        return None
    out: list[LineIn] = []
    seen: dict[str, int] = {}
    before = c.count
    for i, item in enumerate(items):
        name = f"lines[{i}]"
        if not isinstance(item, dict):
            c.add(name, _shown(item), "must be an object")
            continue
        _strict_keys(item, JSON_LINE_KEYS, c, name)
        gtin, field = _plain_product(item, c, a, name)
        packs = _packs(item.get("packs"), c, f"{name}.packs")
        note = _optional_text(item, "note", c, f"{name}.note", MAX_NOTE_CHARS, lines=True)
        if gtin is None:
            continue
        if gtin in seen:
            c.add(field, gtin, f"the same product as lines[{seen[gtin]}]: one line per product")
            continue
        seen[gtin] = i
        if packs is not None:
            out.append(LineIn(gtin, packs, note))
    return tuple(out) if c.count == before else None


def _plain_product(item: Json, c: Collector, a: Assortment, name: str) -> tuple[str | None, str]:
    has_gtin, has_article = item.get("gtin") is not None, item.get("article") is not None
    if has_gtin and has_article:
        c.add(f"{name}.article", _shown(item["article"]), "give gtin or article, not both")
        return None, f"{name}.article"
    if has_article:
        field = f"{name}.article"
        number = item["article"]
        if isinstance(number, bool) or not isinstance(number, int):
            c.add(field, _shown(number), "must be a whole number (the article number)")
            return None, field
        if number < 1 or len(str(number)) > MAX_ARTICLE_DIGITS:
            c.add(field, number, "is not an article number")
            return None, field
        return _by_article(number, a, c, field), field
    field = f"{name}.gtin"
    text = _str(item, "gtin", c, field, required="the product: gtin or article")
    if text is None:
        return None, field
    return _by_gtin(text, a, c, field), field


__all__ = [
    "ARTICLE_SYSTEM",
    "DRUG_ROOM_SYSTEM",
    "FHIR_SOURCE",
    "GTIN_SYSTEM",
    "JSON_SOURCE",
    "Assortment",
    "IntakeError",
    "parse_fhir",
    "parse_json",
]
