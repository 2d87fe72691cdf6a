"""Property tests of the ward requisition formats (controller/wardsupply/formats.py).

tests/unit/test_wardsupply_formats.py checks each rule by hand. This file generates:

* valid requisitions (a Bundle of SupplyRequests, a single SupplyRequest, the plain JSON
  body; products by GTIN-14, GTIN-13 or article; any priority, unit spelling and drug
  room form) and checks that they give exactly the lines they were generated from;
* random JSON values, random bytes and text, and valid payloads with one or more parts
  dropped, replaced by hostile values (NUL, huge or fractional numbers, unicode, deep
  nesting, wrong types), extra keys or truncated text. The parsers may only raise
  IntakeError (every problem naming a field and a reason) or return a RequisitionIn
  whose every line satisfies the limits and names a product of the assortment.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import gs1_check_digit
from controller.intake.common import IntakeError
from controller.wardsupply.formats import (
    ARTICLE_SYSTEM,
    DRUG_ROOM_SYSTEM,
    FHIR_SOURCE,
    GTIN_SYSTEM,
    JSON_SOURCE,
    MAX_NOTE_CHARS,
    MAX_REQUESTED_BY_CHARS,
    MAX_SENDER_CHARS,
    Assortment,
    parse_fhir,
    parse_json,
)
from controller.wardsupply.model import (
    MAX_ID_CHARS,
    MAX_LINES_PER_REQUISITION,
    MAX_PACKS_PER_LINE,
    RequisitionIn,
    RequisitionSource,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SENDER = "https://ward-system.example.org/requisitions"


def _gtin(n: int) -> str:
    body = f"0735997{n:06d}"
    return body + str(gs1_check_digit(body))


GTINS = [_gtin(n) for n in range(12)]
ASSORTMENT = Assortment(
    gtins={g: 10 * (k + 1) for k, g in enumerate(GTINS)},
    articles={200000 + k: g for k, g in enumerate(GTINS)},
    drug_rooms=frozenset({"MED1", "ICU", "SURG2"}),
)
ARTICLE_OF = {g: a for a, g in ASSORTMENT.articles.items()}
SENDER_ID = {"system": SENDER, "value": "REQ-1"}
# Free text as wards write it (anything but NUL, which is refused everywhere).
TEXT = st.characters(codec="utf-8", exclude_characters="\x00")
# Identifiers: printable, no spaces.
ID_CHARS = st.characters(codec="utf-8", categories=["L", "N", "P", "S"])


def check(req: RequisitionIn, source: RequisitionSource) -> None:
    """What every accepted requisition must satisfy, whatever it came from."""
    assert isinstance(req, RequisitionIn)
    assert req.source is source
    assert 1 <= len(req.lines) <= MAX_LINES_PER_REQUISITION
    assert len({line.gtin for line in req.lines}) == len(req.lines)
    for line in req.lines:
        assert line.gtin in ASSORTMENT.gtins
        assert type(line.packs) is int and 1 <= line.packs <= MAX_PACKS_PER_LINE
        assert len(line.note) <= MAX_NOTE_CHARS and "\x00" not in line.note
    assert req.drug_room in ASSORTMENT.drug_rooms
    assert 1 <= len(req.sender_id) <= MAX_ID_CHARS and req.sender_id.isprintable()
    assert 1 <= len(req.sender) <= MAX_SENDER_CHARS and req.sender.isprintable()
    assert len(req.requested_by) <= MAX_REQUESTED_BY_CHARS and req.requested_by.isprintable()
    assert len(req.note) <= MAX_NOTE_CHARS and "\x00" not in req.note
    assert isinstance(req.urgent, bool)
    assert req.authored_at is None or req.authored_at.utcoffset() is not None


def attempt(payload: Any, fhir: bool) -> IntakeError | None:
    """Parses; returns the IntakeError or None, and fails on any other exception."""
    try:
        if fhir:
            check(parse_fhir(payload, ASSORTMENT), RequisitionSource.FHIR)
        else:
            check(parse_json(payload, ASSORTMENT, sender="anna"), RequisitionSource.JSON)
    except IntakeError as exc:
        assert exc.source == (FHIR_SOURCE if fhir else JSON_SOURCE)
        assert exc.problems, "an IntakeError must name at least one problem"
        for problem in exc.problems:
            assert problem.field and problem.message
        str(exc)  # the text can always be built
        return exc
    return None


# ----------------------------------------------------------------------------- generation


@st.composite
def lines(draw: st.DrawFn) -> list[tuple[str, int]]:
    products = draw(st.lists(st.sampled_from(GTINS), min_size=1, max_size=8, unique=True))
    return [(g, draw(st.integers(1, MAX_PACKS_PER_LINE))) for g in products]


@st.composite
def coding(draw: st.DrawFn, gtin: str) -> list[dict[str, str]]:
    how = draw(st.sampled_from(["gtin14", "gtin13", "article", "both", "with-other"]))
    by_gtin = {"system": GTIN_SYSTEM, "code": gtin[1:] if how == "gtin13" else gtin}
    by_article = {"system": ARTICLE_SYSTEM, "code": str(ARTICLE_OF[gtin])}
    other = {"system": "http://snomed.info/sct", "code": "387517004"}
    return {
        "gtin14": [by_gtin],
        "gtin13": [by_gtin],
        "article": [by_article],
        "both": [by_gtin, by_article],
        "with-other": [other, by_gtin],
    }[how]


@st.composite
def supply_request(draw: st.DrawFn, gtin: str, packs: int, room: str) -> dict[str, Any]:
    unit = draw(st.sampled_from([{}, {"unit": "pack"}, {"code": "{pack}"}, {"unit": "Packs"}]))
    where = draw(
        st.sampled_from(
            [
                {"reference": f"Location/{room}"},
                {"identifier": {"system": DRUG_ROOM_SYSTEM, "value": room}},
            ]
        )
    )
    res: dict[str, Any] = {
        "resourceType": "SupplyRequest",
        "status": "active",
        "itemCodeableConcept": {"coding": draw(coding(gtin)), "text": "a product"},
        "quantity": {"value": packs, **unit},
        "deliverTo": where,
    }
    priority = draw(st.sampled_from([None, "routine", "urgent", "asap", "stat"]))
    if priority is not None:
        res["priority"] = priority
    if draw(st.booleans()):
        res["authoredOn"] = draw(
            st.sampled_from(["2026-12-07", "2026-12-07T09:15:00+01:00", "2026-12-07T08:00:00Z"])
        )
    if draw(st.booleans()):
        res["requester"] = {"display": draw(st.text(TEXT, max_size=30))}
    if draw(st.booleans()):
        res["note"] = [{"text": draw(st.text(TEXT, max_size=30))}]
    return res


@st.composite
def fhir_bundles(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, int]], str]:
    wanted = draw(lines())
    room = draw(st.sampled_from(sorted(ASSORTMENT.drug_rooms)))
    sender_id = draw(st.text(ID_CHARS, min_size=1, max_size=MAX_ID_CHARS))
    kind = draw(st.sampled_from(["transaction", "batch", "collection"]))
    entries = [{"resource": draw(supply_request(g, n, room))} for g, n in wanted]
    if kind != "collection":
        for entry in entries:
            entry["request"] = {"method": "POST", "url": "SupplyRequest"}
    doc = {
        "resourceType": "Bundle",
        "type": kind,
        "identifier": {"system": SENDER, "value": sender_id},
        "entry": entries,
    }
    return doc, wanted, room


@st.composite
def plain_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, int]], str]:
    wanted = draw(lines())
    room = draw(st.sampled_from(sorted(ASSORTMENT.drug_rooms)))
    body_lines = []
    for g, n in wanted:
        line: dict[str, Any] = {"article": ARTICLE_OF[g]} if draw(st.booleans()) else {"gtin": g}
        line["packs"] = n
        if draw(st.booleans()):
            line["note"] = draw(st.text(TEXT, max_size=20))
        body_lines.append(line)
    body: dict[str, Any] = {"id": "REQ-1", "drug_room": room, "lines": body_lines}
    if draw(st.booleans()):
        body["urgent"] = draw(st.booleans())
    if draw(st.booleans()):
        body["note"] = draw(st.text(TEXT, max_size=40))
    return body, wanted, room


DEEP: Any = "deep"
for _ in range(40):
    DEEP = [DEEP]

# Hostile values: what a careless or malicious sender might put anywhere.
HOSTILE = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            -1,
            1.5,
            1e300,
            10**40,
            MAX_PACKS_PER_LINE + 1,
            "",
            " ",
            "\x00",
            "a\x00b",
            "\u202e",
            "\ud800",
            "\U0001d7d9\U0001d7da",  # double-struck digits
            "Location/",
            "Location/MED1/x",
            "urn:",
            GTINS[0][:-1] + "0",
            "active",
            "pack",
            "tablet",
            [],
            {},
            DEEP,
            [{"url": "http://x.org/m"}],
        ]
    ),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceType",
                    "type",
                    "entry",
                    "resource",
                    "identifier",
                    "system",
                    "value",
                    "id",
                    "lines",
                    "gtin",
                    "packs",
                    "status",
                    "quantity",
                    "deliverTo",
                    "modifierExtension",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=15,
)


def _containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every object and list in a document, the root included."""
    out = []
    if isinstance(node, dict):
        out.append(path)
        for key, value in node.items():
            out += _containers(value, (*path, key))
    elif isinstance(node, list):
        out.append(path)
        for k, value in enumerate(node):
            out += _containers(value, (*path, k))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    """The document with one to three parts dropped, replaced or added."""
    out = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_containers(out)))
        node: Any = out
        for key in path:
            node = node[key]
        action = draw(st.sampled_from(["drop", "replace", "add", "duplicate"]))
        if isinstance(node, dict):
            keys = sorted(node)
            if action == "add" or not keys:
                name = draw(st.sampled_from(["modifierExtension", "extra", "id"]) | st.text())
                node[name] = draw(HOSTILE | JSON_VALUES)
                continue
            key = draw(st.sampled_from(keys))
        else:
            if action == "add" or not node:
                node.append(draw(HOSTILE | JSON_VALUES))
                continue
            key = draw(st.integers(0, len(node) - 1))
        if action == "drop":
            del node[key]
        elif action == "duplicate" and isinstance(node, list):
            node.append(copy.deepcopy(node[key]))
        else:
            node[key] = draw(HOSTILE | JSON_VALUES)
    return out


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False)


# ----------------------------------------------------------------------------- properties


@FUZZ
@given(fhir_bundles())
def test_valid_bundles_give_their_lines(case: tuple[dict[str, Any], list[Any], str]) -> None:
    doc, wanted, room = case
    req = parse_fhir(_dumps(doc).encode(), ASSORTMENT)
    check(req, RequisitionSource.FHIR)
    assert [(line.gtin, line.packs) for line in req.lines] == wanted
    assert req.drug_room == room
    assert req.sender_id == doc["identifier"]["value"].strip()
    urgent = any(e["resource"].get("priority") in ("urgent", "asap", "stat") for e in doc["entry"])
    assert req.urgent is urgent


@FUZZ
@given(fhir_bundles())
def test_valid_single_requests_give_one_line(
    case: tuple[dict[str, Any], list[Any], str],
) -> None:
    doc, wanted, room = case
    res = dict(doc["entry"][0]["resource"], identifier=[doc["identifier"]])
    req = parse_fhir(_dumps(res), ASSORTMENT)
    check(req, RequisitionSource.FHIR)
    assert [(line.gtin, line.packs) for line in req.lines] == wanted[:1]
    assert req.drug_room == room


@FUZZ
@given(plain_bodies())
def test_valid_plain_bodies_give_their_lines(case: tuple[dict[str, Any], list[Any], str]) -> None:
    body, wanted, room = case
    req = parse_json(_dumps(body), ASSORTMENT, sender="anna")
    check(req, RequisitionSource.JSON)
    assert [(line.gtin, line.packs) for line in req.lines] == wanted
    assert (req.drug_room, req.urgent) == (room, body.get("urgent", False))


@FUZZ
@given(fhir_bundles().flatmap(lambda case: mutated(case[0])))
def test_mutated_bundles_only_raise_intake_error(doc: dict[str, Any]) -> None:
    attempt(_dumps(doc), fhir=True)


@FUZZ
@given(
    fhir_bundles().flatmap(
        lambda case: mutated(dict(case[0]["entry"][0]["resource"], identifier=[SENDER_ID]))
    )
)
def test_mutated_single_requests_only_raise_intake_error(doc: dict[str, Any]) -> None:
    attempt(_dumps(doc), fhir=True)


@FUZZ
@given(plain_bodies().flatmap(lambda case: mutated(case[0])))
def test_mutated_plain_bodies_only_raise_intake_error(doc: dict[str, Any]) -> None:
    attempt(_dumps(doc), fhir=False)


@FUZZ
@given(JSON_VALUES, st.booleans())
def test_random_json_values_only_raise_intake_error(value: Any, fhir: bool) -> None:
    if fhir and isinstance(value, dict):
        # steer random objects into the Bundle and SupplyRequest readers now and then
        if "entry" in value:
            value["resourceType"] = "Bundle"
        elif "quantity" in value or "status" in value:
            value["resourceType"] = "SupplyRequest"
    assert attempt(_dumps(value), fhir) is not None or isinstance(value, dict)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        fhir_bundles().map(lambda case: _dumps(case[0])),
        plain_bodies().map(lambda case: _dumps(case[0])),
    ),
    st.data(),
    st.booleans(),
)
def test_damaged_text_only_raises_intake_error(
    payload: Any, data: st.DataObject, fhir: bool
) -> None:
    """Random bytes and text, and valid payloads cut short or with a character
    inserted (a stray quote, brace, NUL or invalid UTF-8 byte)."""
    if payload and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(payload) - 1))
        if isinstance(payload, str):
            extra = data.draw(st.sampled_from(['"', "{", "]", "\x00", "\\", "\ud800", ","]))
            payload = payload[:at] + (extra if data.draw(st.booleans()) else "")
            payload += data.draw(st.sampled_from(["", payload[at:]]))
        else:
            payload = payload[:at] + b"\xc3" + payload[at:]
    if isinstance(payload, str) and data.draw(st.booleans()):
        try:
            payload = payload.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: keep it as text
            pass
    attempt(payload, fhir)
