"""Ward requisition formats (controller/wardsupply/formats.py, docs/ward-supply.md
"Requisition formats"): FHIR R4 SupplyRequest, alone or in a Bundle, and the plain JSON
body.

Good payloads must give exactly the expected RequisitionIn; every bad one must be refused
as a whole with an IntakeError whose problems name the field path and the value.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.config import load_site
from controller.gs1 import gs1_check_digit
from controller.intake.common import MAX_PAYLOAD_CHARS, IntakeError
from controller.wardsupply.formats import (
    FHIR_SOURCE,
    JSON_SOURCE,
    MAX_DEPTH,
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
    LineIn,
    RequisitionIn,
    RequisitionSource,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"

GTIN = "http://www.gs1.org/gtin"
ARTICLE = "urn:doseline:article"
ROOM = "urn:doseline:drug-room"
SENDER = "https://ward-system.example.org/requisitions"

PARA, METO, FURO, OMEP = "07359990000013", "07359990000020", "07359990000037", "07359990000068"
# A valid GTIN that is in no assortment, and an article whose GTIN is missing from it.
STRANGER = "0735999000099" + str(gs1_check_digit("0735999000099"))
ORPHAN_ARTICLE = 999001
FULL_WIDTH_PARA = "".join(chr(0xFF10 + int(d)) for d in PARA)  # digits, but not ASCII

ASSORTMENT = Assortment(
    gtins={PARA: 100, METO: 100, FURO: 100, OMEP: 28},
    articles={100007: PARA, 100014: METO, 100021: FURO, 100042: OMEP, ORPHAN_ARTICLE: STRANGER},
    drug_rooms=frozenset({"MED1", "ICU", "SURG2", "DR-MED1", "DR-ICU"}),
)


def gtin_of(n: int) -> str:
    body = f"0735998{n:06d}"
    return body + str(gs1_check_digit(body))


# 401 products: enough to test the line limit of both formats.
BIG = Assortment(
    gtins={gtin_of(n): 10 for n in range(MAX_LINES_PER_REQUISITION + 1)},
    articles={},
    drug_rooms={"MED1"},
)


# --- builders --------------------------------------------------------------------------


def supply_request(
    gtin: str = PARA, packs: object = 2, room: str = "MED1", **extra: Any
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "SupplyRequest",
        "status": "active",
        "itemCodeableConcept": {"coding": [{"system": GTIN, "code": gtin}]},
        "quantity": {"value": packs},
        "deliverTo": {"identifier": {"system": ROOM, "value": room}},
    }
    res.update(extra)
    return res


def single(**extra: Any) -> dict[str, Any]:
    extra.setdefault("identifier", [{"system": SENDER, "value": "REQ-1"}])
    return supply_request(**extra)


def bundle(*resources: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    if not resources:
        resources = (supply_request(PARA, 2), supply_request(METO, 1))
    return {
        "resourceType": "Bundle",
        "type": kind,
        "identifier": {"system": SENDER, "value": "REQ-9"},
        "entry": [
            {"resource": res, "request": {"method": "POST", "url": "SupplyRequest"}}
            for res in resources
        ],
    }


def plain(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "MED1-0001",
        "drug_room": "MED1",
        "lines": [{"gtin": PARA, "packs": 2}, {"article": 100014, "packs": 1}],
    }
    body.update(extra)
    return body


def fhir(doc: object, assortment: Assortment = ASSORTMENT) -> RequisitionIn:
    return parse_fhir(json.dumps(doc), assortment)


def plain_json(doc: object, sender: str = "anna", assortment: Assortment = ASSORTMENT) -> Any:
    return parse_json(json.dumps(doc), assortment, sender=sender)


def refused(call: Callable[[], object], field: str, value: str | None) -> IntakeError:
    """Asserts the call is refused with a problem at `field` quoting `value` (None: the
    problem quotes no value, as for a missing field)."""
    with pytest.raises(IntakeError) as info:
        call()
    err = info.value
    fields = [p.field for p in err.problems]
    assert field in fields, f"no problem at {field!r}: {err}"
    hits = [p for p in err.problems if p.field == field]
    if value is None:
        assert any(p.value is None for p in hits), str(err)
    else:
        assert any(p.value is not None and value in p.value for p in hits), str(err)
    assert err.problems and all(p.field and p.message for p in err.problems)
    return err


def edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of doc with the dotted path (list indexes as numbers) set to value, or
    deleted when value is DELETE."""
    out = copy.deepcopy(doc)
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    node: Any = out
    for key in keys[:-1]:
        node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return out


DELETE = object()


# --- the examples ----------------------------------------------------------------------


def test_example_bundle_parses() -> None:
    req = parse_fhir((EXAMPLES / "ward-requisition.fhir-bundle.json").read_bytes(), ASSORTMENT)
    assert req == RequisitionIn(
        sender=SENDER,
        sender_id="REQ-2026-004711",
        drug_room="DR-MED1",
        lines=(
            LineIn(PARA, 2),
            LineIn(METO, 1, "Shelf empty since the weekend"),
            LineIn(FURO, 3),
        ),
        source=RequisitionSource.FHIR,
        urgent=False,
        requested_by="Anna Lind, nurse MED1",
        authored_at=datetime(2026, 12, 7, 8, 15, tzinfo=UTC),
    )


def test_example_single_parses() -> None:
    req = parse_fhir((EXAMPLES / "ward-requisition.fhir-single.json").read_text(), ASSORTMENT)
    assert req == RequisitionIn(
        sender=SENDER,
        sender_id="REQ-2026-004712",
        drug_room="DR-ICU",
        lines=(LineIn(OMEP, 1),),
        source=RequisitionSource.FHIR,
        urgent=True,
        requested_by="Erik Berg, nurse ICU",
        authored_at=datetime(2026, 12, 7, 10, 40, tzinfo=UTC),
        note="Patient admitted from the emergency department tonight",
    )


def test_example_json_parses() -> None:
    payload = (EXAMPLES / "ward-requisition.json").read_bytes()
    req = parse_json(payload, ASSORTMENT, sender="anna.lind")
    assert req == RequisitionIn(
        sender="anna.lind",
        sender_id="MED1-2026-12-07-01",
        drug_room="DR-MED1",
        lines=(LineIn(PARA, 2), LineIn(METO, 1, "Shelf empty since the weekend"), LineIn(FURO, 3)),
        source=RequisitionSource.JSON,
        urgent=False,
        requested_by="Anna Lind",
        note="Weekly order",
    )


def test_examples_match_the_demo_catalogue() -> None:
    """The examples name products of config/demo.yaml by GTIN and by article."""
    catalogue = load_site(REPO / "config" / "demo.yaml").catalogue
    demo = Assortment(
        gtins={p.gtin: p.pack_size for p in catalogue},
        articles={p.article: p.gtin for p in catalogue},
        drug_rooms={"DR-MED1", "DR-ICU"},
    )
    for name in ("fhir-bundle", "fhir-single"):
        parse_fhir((EXAMPLES / f"ward-requisition.{name}.json").read_bytes(), demo)
    parse_json((EXAMPLES / "ward-requisition.json").read_bytes(), demo, sender="anna")


# --- FHIR: good ------------------------------------------------------------------------


def test_single_supply_request_is_a_one_line_requisition() -> None:
    req = fhir(single())
    assert req == RequisitionIn(
        sender=SENDER,
        sender_id="REQ-1",
        drug_room="MED1",
        lines=(LineIn(PARA, 2),),
        source=RequisitionSource.FHIR,
    )


def test_single_uses_the_first_identifier() -> None:
    ids = [{"system": SENDER, "value": " REQ-1 "}, {"system": "urn:other", "value": "X"}]
    req = fhir(single(identifier=ids))
    assert (req.sender, req.sender_id) == (SENDER, "REQ-1")


def test_bundle_is_one_requisition_with_a_line_per_entry() -> None:
    req = fhir(bundle())
    assert (req.sender, req.sender_id, req.drug_room) == (SENDER, "REQ-9", "MED1")
    assert req.lines == (LineIn(PARA, 2), LineIn(METO, 1))
    assert req.source is RequisitionSource.FHIR


@pytest.mark.parametrize("kind", ["transaction", "batch", "collection"])
def test_bundle_types(kind: str) -> None:
    doc = bundle(kind=kind)
    if kind == "collection":
        for entry in doc["entry"]:
            del entry["request"]
    assert len(fhir(doc).lines) == 2


@pytest.mark.parametrize(
    ("priority", "urgent"),
    [(None, False), ("routine", False), ("urgent", True), ("asap", True), ("stat", True)],
)
def test_priority(priority: str | None, urgent: bool) -> None:
    extra = {} if priority is None else {"priority": priority}
    assert fhir(single(**extra)).urgent is urgent


def test_bundle_is_urgent_when_any_entry_is() -> None:
    doc = bundle(supply_request(PARA), supply_request(METO, priority="stat"))
    assert fhir(doc).urgent is True


@pytest.mark.parametrize(
    "coding",
    [
        [{"system": GTIN, "code": PARA}],
        [{"system": GTIN, "code": PARA[1:]}],  # GTIN-13, zero-filled to 14
        [{"system": ARTICLE, "code": "100007"}],
        [{"system": "http://snomed.info/sct", "code": "1"}, {"system": ARTICLE, "code": "100007"}],
        [{"system": GTIN, "code": PARA}, {"system": ARTICLE, "code": "100007"}],
    ],
)
def test_item_codings(coding: list[dict[str, str]]) -> None:
    req = fhir(single(itemCodeableConcept={"coding": coding, "text": "Paracetamol"}))
    assert req.lines[0].gtin == PARA


@pytest.mark.parametrize(
    "ident", [{"system": GTIN, "value": METO}, {"system": ARTICLE, "value": "100014"}]
)
def test_item_reference_by_identifier(ident: dict[str, str]) -> None:
    doc = single(itemReference={"identifier": ident})
    del doc["itemCodeableConcept"]
    assert fhir(doc).lines[0].gtin == METO


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 3},
        {"value": 3, "unit": "pack"},
        {"value": 3, "unit": "Packs"},
        {"value": 3, "code": "{pack}", "system": "http://unitsofmeasure.org"},
        {"value": 3.0, "unit": "{packs}"},
    ],
)
def test_quantity_in_packs(quantity: dict[str, Any]) -> None:
    assert fhir(single(quantity=quantity)).lines[0].packs == 3


@pytest.mark.parametrize("packs", [1, MAX_PACKS_PER_LINE])
def test_pack_limits_are_inclusive(packs: int) -> None:
    assert fhir(single(packs=packs)).lines[0].packs == packs


@pytest.mark.parametrize(
    "deliver_to",
    [
        {"reference": "Location/ICU"},
        {"identifier": {"system": ROOM, "value": "ICU"}},
        {"reference": "Location/ICU", "identifier": {"system": ROOM, "value": "ICU"}},
        {"reference": "Location/ICU", "type": "Location", "display": "ICU drug room"},
    ],
)
def test_deliver_to(deliver_to: dict[str, Any]) -> None:
    assert fhir(single(deliverTo=deliver_to)).drug_room == "ICU"


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ("2026-12-07", datetime(2026, 12, 7, tzinfo=UTC)),
        ("2026-12-07T09:15:00Z", datetime(2026, 12, 7, 9, 15, tzinfo=UTC)),
        ("2026-12-07T09:15:00+01:00", datetime(2026, 12, 7, 8, 15, tzinfo=UTC)),
        ("2026-12-07T09:15:00.5-05:30", datetime(2026, 12, 7, 14, 45, 0, 500000, tzinfo=UTC)),
        ("2026-12-07T09:15:00.123456789Z", datetime(2026, 12, 7, 9, 15, 0, 123456, tzinfo=UTC)),
    ],
)
def test_authored_on(text: str, at: datetime) -> None:
    assert fhir(single(authoredOn=text)).authored_at == at


def test_bundle_takes_the_earliest_authored_on_and_first_requester() -> None:
    doc = bundle(
        supply_request(PARA, authoredOn="2026-12-07T10:00:00Z"),
        supply_request(METO, authoredOn="2026-12-07T09:00:00Z", requester={"display": "Bo"}),
        supply_request(FURO, requester={"display": "Cy"}),
    )
    req = fhir(doc)
    assert req.authored_at == datetime(2026, 12, 7, 9, tzinfo=UTC)
    assert req.requested_by == "Bo"


def test_requester_and_note_are_cleaned_and_clipped() -> None:
    name = "  Anna \t Lind\n" + "x" * 300
    note = "line one\r\nline\ttwo\x07 " + "y" * 1000
    req = fhir(single(requester={"display": name}, note=[{"text": note}, {"text": "later"}]))
    assert req.requested_by.startswith("Anna Lind xxx")
    assert len(req.requested_by) == MAX_REQUESTED_BY_CHARS
    assert req.requested_by.endswith("...")
    assert req.note.startswith("line one\nline two yyy")
    assert len(req.note) == MAX_NOTE_CHARS
    assert req.lines[0].note == ""


def test_bundle_entry_notes_are_line_notes() -> None:
    doc = bundle(supply_request(PARA, note=[{"text": "shelf empty"}]), supply_request(METO))
    req = fhir(doc)
    assert [line.note for line in req.lines] == ["shelf empty", ""]
    assert req.note == ""


def test_unknown_elements_and_extensions_are_ignored() -> None:
    doc = single(
        extension=[{"url": "http://example.org/x", "valueString": "y"}],
        category={"text": "ward stock"},
        supplier=[{"display": "Pharmacy"}],
        deliverFrom={"display": "Central store"},
        reasonCode=[{"text": "stock"}],
        occurrenceDateTime="2026-12-08",
        parameter=[{"valueBoolean": True}],
        somethingNew={"a": [1, 2]},
        modifierExtension=[],
    )
    assert fhir(doc).lines == (LineIn(PARA, 2),)


def test_payload_forms() -> None:
    text = json.dumps(single())
    assert parse_fhir(text, ASSORTMENT) == parse_fhir(text.encode(), ASSORTMENT)
    assert parse_fhir("\ufeff" + text, ASSORTMENT) == parse_fhir(text, ASSORTMENT)
    assert parse_fhir(b"\xef\xbb\xbf" + text.encode(), ASSORTMENT).sender_id == "REQ-1"


def test_large_requisition_up_to_the_line_limit() -> None:
    resources = [supply_request(g, 1) for g in list(BIG.gtins)[:MAX_LINES_PER_REQUISITION]]
    assert len(fhir(bundle(*resources), BIG).lines) == MAX_LINES_PER_REQUISITION


# --- FHIR: refused ----------------------------------------------------------------------

S = "single"
B = "bundle"

BAD_FHIR: list[tuple[str, str, Any, str, str | None]] = [
    # (doc, path to edit, new value, problem field, problem value)
    (S, "resourceType", "MedicationRequest", "resourceType", "MedicationRequest"),
    (S, "resourceType", DELETE, "resourceType", None),
    (S, "status", "draft", "status", "draft"),
    (S, "status", "cancelled", "status", "cancelled"),
    (S, "status", "Active", "status", "Active"),
    (S, "status", DELETE, "status", None),
    (S, "status", 1, "status", "1"),
    (S, "priority", "high", "priority", "high"),
    (S, "priority", ["stat"], "priority", "a list"),
    (S, "identifier", DELETE, "identifier", None),
    (S, "identifier", [], "identifier", "[]"),
    (S, "identifier", {"system": SENDER, "value": "X"}, "identifier", "an object"),
    (S, "identifier.0", "REQ-1", "identifier[0]", "REQ-1"),
    (S, "identifier.0.system", DELETE, "identifier[0].system", None),
    (S, "identifier.0.system", "ward system", "identifier[0].system", "ward system"),
    (S, "identifier.0.system", "urn:" + "x" * MAX_SENDER_CHARS, "identifier[0].system", "urn:x"),
    (S, "identifier.0.system", 42, "identifier[0].system", "42"),
    (S, "identifier.0.value", DELETE, "identifier[0].value", None),
    (S, "identifier.0.value", "", "identifier[0].value", ""),
    (S, "identifier.0.value", "R" * (MAX_ID_CHARS + 1), "identifier[0].value", "RRRR"),
    (S, "identifier.0.value", "REQ\x071", "identifier[0].value", "REQ\x071"),
    (S, "identifier.0.value", "REQ\u20281", "identifier[0].value", "REQ\u20281"),
    (S, "identifier.0.value", 12345, "identifier[0].value", "12345"),
    (S, "itemCodeableConcept", DELETE, "item[x]", None),
    (S, "itemCodeableConcept", "paracetamol", "itemCodeableConcept", "paracetamol"),
    (S, "itemCodeableConcept.coding", DELETE, "itemCodeableConcept.coding", None),
    (S, "itemCodeableConcept.coding.0", "x", "itemCodeableConcept.coding[0]", "x"),
    (S, "itemCodeableConcept.coding.0.code", DELETE, "itemCodeableConcept.coding[0].code", None),
    (
        S,
        "itemCodeableConcept.coding.0.code",
        "07359990000014",  # wrong check digit
        "itemCodeableConcept.coding[0].code",
        "07359990000014",
    ),
    (S, "itemCodeableConcept.coding.0.code", "12345", "itemCodeableConcept.coding[0].code", "12"),
    (
        S,
        "itemCodeableConcept.coding.0.code",
        FULL_WIDTH_PARA,
        "itemCodeableConcept.coding[0].code",
        FULL_WIDTH_PARA[:2],
    ),
    (
        S,
        "itemCodeableConcept.coding.0.code",
        STRANGER,
        "itemCodeableConcept.coding[0].code",
        STRANGER,
    ),
    (
        S,
        "itemCodeableConcept.coding.0",
        {"system": ARTICLE, "code": "555"},
        "itemCodeableConcept.coding[0].code",
        "555",
    ),
    (
        S,
        "itemCodeableConcept.coding.0",
        {"system": ARTICLE, "code": "A100007"},
        "itemCodeableConcept.coding[0].code",
        "A100007",
    ),
    (
        S,
        "itemCodeableConcept.coding.0",
        {"system": ARTICLE, "code": str(ORPHAN_ARTICLE)},
        "itemCodeableConcept.coding[0].code",
        str(ORPHAN_ARTICLE),
    ),
    (
        S,
        "itemCodeableConcept.coding.0",
        {"system": "http://snomed.info/sct", "code": "387517004"},
        "itemCodeableConcept.coding",
        "http://snomed.info/sct",
    ),
    (
        S,
        "itemCodeableConcept.coding",
        [{"system": GTIN, "code": PARA}, {"system": ARTICLE, "code": "100014"}],
        "itemCodeableConcept.coding[1].code",
        METO,
    ),
    (S, "itemReference", {"reference": "Medication/1"}, "itemReference", None),
    (S, "quantity", DELETE, "quantity", None),
    (S, "quantity", 2, "quantity", "2"),
    (S, "quantity.value", DELETE, "quantity.value", None),
    (S, "quantity.value", 0, "quantity.value", "0"),
    (S, "quantity.value", -2, "quantity.value", "-2"),
    (S, "quantity.value", 1.5, "quantity.value", "1.5"),
    (S, "quantity.value", 0.5, "quantity.value", "0.5"),
    (S, "quantity.value", MAX_PACKS_PER_LINE + 1, "quantity.value", str(MAX_PACKS_PER_LINE + 1)),
    (S, "quantity.value", 10**40, "quantity.value", "1" + "0" * 40),
    (S, "quantity.value", "2", "quantity.value", "2"),
    (S, "quantity.value", True, "quantity.value", "true"),
    (S, "quantity.value", [2], "quantity.value", "a list"),
    (S, "quantity.unit", "tablet", "quantity.unit", "tablet"),
    (S, "quantity.unit", "mg", "quantity.unit", "mg"),
    (S, "quantity.code", "{tbl}", "quantity.code", "{tbl}"),
    (S, "quantity.code", "1", "quantity.code", "1"),
    (S, "quantity.comparator", "<", "quantity.comparator", "<"),
    (S, "deliverTo", DELETE, "deliverTo", None),
    (S, "deliverTo", {}, "deliverTo", None),
    (S, "deliverTo", "Location/MED1", "deliverTo", "Location/MED1"),
    (S, "deliverTo.identifier.value", "WARD9", "deliverTo.identifier.value", "WARD9"),
    (S, "deliverTo.identifier.value", DELETE, "deliverTo.identifier.value", None),
    (S, "deliverTo.identifier.system", "urn:other", "deliverTo.identifier.system", "urn:other"),
    (S, "deliverTo.reference", "Location/ICU", "deliverTo.reference", "ICU"),
    (S, "deliverTo.reference", "Patient/7", "deliverTo.reference", "Patient/7"),
    (S, "deliverTo.reference", "Location/a/b", "deliverTo.reference", "Location/a/b"),
    (S, "deliverTo.type", "Organization", "deliverTo.type", "Organization"),
    (S, "authoredOn", "2026-12-07T09:15:00", "authoredOn", "2026-12-07T09:15:00"),
    (S, "authoredOn", "2026-12-07T09:15Z", "authoredOn", "2026-12-07T09:15Z"),
    (S, "authoredOn", "2026-12", "authoredOn", "2026-12"),
    (S, "authoredOn", "2026-02-30", "authoredOn", "2026-02-30"),
    (S, "authoredOn", "2026-12-07T24:00:00Z", "authoredOn", "2026-12-07T24:00:00Z"),
    (S, "authoredOn", "2026-12-07T09:15:00+15:00", "authoredOn", "+15:00"),
    (S, "authoredOn", "0001-01-01T00:00:00+14:00", "authoredOn", "0001-01-01"),
    (S, "authoredOn", "७७७७-12-07", "authoredOn", "७७७७-12-07"),
    (S, "authoredOn", 20261207, "authoredOn", "20261207"),
    (S, "requester", "Anna", "requester", "Anna"),
    (S, "requester", {"display": 5}, "requester.display", "5"),
    (S, "note", "remember", "note", "remember"),
    (S, "note", ["remember"], "note[0]", "remember"),
    (S, "note", [{"text": {"div": "x"}}], "note[0].text", "an object"),
    (S, "modifierExtension", [{"url": "http://x.org/negate"}], "modifierExtension", "x.org/negate"),
    (
        S,
        "quantity.modifierExtension",
        [{"url": "http://x.org/m"}],
        "quantity.modifierExtension",
        "http://x.org/m",
    ),
    (S, "implicitRules", "http://x.org/rules", "implicitRules", "http://x.org/rules"),
    (S, "itemCodeableConcept.text", "Para\x00cetamol", "itemCodeableConcept.text", "Para\x00"),
    (S, "extension", [{"url": "u", "valueString": "\x00"}], "extension[0].valueString", "\x00"),
    (B, "type", "document", "type", "document"),
    (B, "type", DELETE, "type", None),
    (B, "identifier", DELETE, "identifier", None),
    (B, "identifier", [{"system": SENDER, "value": "X"}], "identifier", "a list"),
    (B, "identifier.value", DELETE, "identifier.value", None),
    (B, "identifier.system", "REQ", "identifier.system", "REQ"),
    (B, "entry", DELETE, "entry", None),
    (B, "entry", [], "entry", "[]"),
    (B, "entry", {"resource": {}}, "entry", "an object"),
    (B, "entry.1", "SupplyRequest", "entry[1]", "SupplyRequest"),
    (B, "entry.1.resource", DELETE, "entry[1].resource", None),
    (B, "entry.1.resource.resourceType", "Location", "entry[1].resource.resourceType", "Location"),
    (B, "entry.1.request.method", "DELETE", "entry[1].request.method", "DELETE"),
    (B, "entry.1.resource.status", "draft", "entry[1].resource.status", "draft"),
    (B, "entry.1.resource.quantity.value", 0, "entry[1].resource.quantity.value", "0"),
    (B, "entry.1.resource.quantity.unit", "ml", "entry[1].resource.quantity.unit", "ml"),
    (
        B,
        "entry.1.resource.deliverTo.identifier.value",
        "ICU",
        "entry[1].resource.deliverTo",
        "ICU",
    ),
    (
        B,
        "entry.1.resource.itemCodeableConcept.coding.0",
        {"system": ARTICLE, "code": "100007"},  # the same product as entry 0, by article
        "entry[1].resource.itemCodeableConcept",
        PARA,
    ),
    (
        B,
        "entry.1.resource.modifierExtension",
        [{"url": "http://x.org/m"}],
        "entry[1].resource.modifierExtension",
        "http://x.org/m",
    ),
    (
        B,
        "entry.1.modifierExtension",
        [{"url": "http://x.org/e"}],
        "entry[1].modifierExtension",
        "http://x.org/e",
    ),
]


@pytest.mark.parametrize(
    ("doc", "path", "value", "field", "shown"),
    BAD_FHIR,
    ids=[f"{d}:{p}={str(v)[:20]!r}" for d, p, v, _, _ in BAD_FHIR],
)
def test_fhir_refused(doc: str, path: str, value: Any, field: str, shown: str | None) -> None:
    base = single() if doc == S else bundle()
    bad = edit(base, path, value)
    err = refused(lambda: fhir(bad), field, shown)
    assert err.source == FHIR_SOURCE


def test_item_reference_needs_gtin_or_article() -> None:
    doc = single(itemReference={"reference": "Medication/1"})
    del doc["itemCodeableConcept"]
    refused(lambda: fhir(doc), "itemReference.reference", "Medication/1")
    doc["itemReference"] = {"identifier": {"system": "urn:x", "value": "1"}}
    refused(lambda: fhir(doc), "itemReference.identifier.system", "urn:x")
    doc["itemReference"] = {"identifier": {"system": GTIN, "value": STRANGER}}
    refused(lambda: fhir(doc), "itemReference.identifier.value", STRANGER)


def test_unknown_product_named_with_its_text() -> None:
    doc = single(itemCodeableConcept={"coding": [{"system": GTIN, "code": STRANGER}], "text": "Ib"})
    err = refused(lambda: fhir(doc), "itemCodeableConcept.coding[0].code", STRANGER)
    assert "(Ib)" in str(err) and "not in the assortment" in str(err)


def test_dispensing_units_are_refused_with_the_pack_size() -> None:
    doc = single(quantity={"value": 200, "unit": "tablet"})
    err = refused(lambda: fhir(doc), "quantity.unit", "tablet")
    assert "order whole packs" in str(err) and "holds 100" in str(err)


def test_status_reason_is_given() -> None:
    err = refused(lambda: fhir(single(status="entered-in-error")), "status", "entered-in-error")
    assert "entered in error" in str(err)


def test_reference_and_identifier_must_agree() -> None:
    deliver = {"reference": "Location/ICU", "identifier": {"system": ROOM, "value": "MED1"}}
    refused(lambda: fhir(single(deliverTo=deliver)), "deliverTo.reference", "ICU")


def test_reference_to_unknown_drug_room() -> None:
    refused(
        lambda: fhir(single(deliverTo={"reference": "Location/WARD9"})),
        "deliverTo.reference",
        "WARD9",
    )


def test_bundle_refuses_too_many_entries() -> None:
    resources = [supply_request(g, 1) for g in BIG.gtins]
    refused(lambda: fhir(bundle(*resources), BIG), "entry", f"{len(resources)} entries")


def test_bundle_names_every_problem_of_every_entry() -> None:
    doc = bundle(
        supply_request(STRANGER, 2),
        supply_request(METO, 0),
        supply_request(FURO, 1, room="ICU"),
        supply_request(PARA, 1, status="draft"),
    )
    doc["identifier"]["value"] = ""
    with pytest.raises(IntakeError) as info:
        fhir(doc)
    found = {(p.field, p.value) for p in info.value.problems}
    assert {
        ("identifier.value", ""),
        ("entry[0].resource.itemCodeableConcept.coding[0].code", STRANGER),
        ("entry[1].resource.quantity.value", "0"),
        ("entry[2].resource.deliverTo", "ICU"),
        ("entry[3].resource.status", "draft"),
    } <= found


def test_single_names_every_problem() -> None:
    doc = single(status="draft", priority="soon", packs=0, room="X")
    with pytest.raises(IntakeError) as info:
        fhir(doc)
    fields = [p.field for p in info.value.problems]
    assert fields == ["status", "priority", "quantity.value", "deliverTo.identifier.value"]


def test_deep_nesting_is_refused_with_its_path() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    err = refused(lambda: fhir(single(extension=deep)), "extension" + "[0]" * MAX_DEPTH, None)
    assert "nested" in str(err)


def test_nul_in_a_key_is_refused() -> None:
    doc = single()
    doc["exten\x00sion"] = 1
    refused(lambda: fhir(doc), '["exten\\u0000sion"]', "exten\x00sion")


# --- payload problems: both formats -----------------------------------------------------

PARSERS: dict[str, Callable[[Any], object]] = {
    "fhir": lambda payload: parse_fhir(payload, ASSORTMENT),
    "json": lambda payload: parse_json(payload, ASSORTMENT, sender="anna"),
}

BAD_PAYLOADS: list[tuple[Any, str | None]] = [
    (b"\xff\xfe{}", "byte 0"),
    ('{"id": "a"}'.encode("utf-16"), "byte 0"),
    (b'{"id": "\xc3("}', "byte 8"),
    ("", "line 1 column 1"),
    ("{", "line 1 column 2"),
    ("{'id': 1}", "line 1 column 2"),
    ('{"id": 1} x', "line 1 column 11"),
    ("[]", "a list"),
    ('"SupplyRequest"', "a string"),
    ("null", "null"),
    ("12", "a number"),
    ('{"id": NaN}', None),
    ('{"id": Infinity}', None),
    ('{"id": 1' + "0" * 5000 + "}", None),
    ('{"id": "a", "id": "b"}', "id"),
    ("[" * 100_000 + "]" * 100_000, None),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", None),
    ({"resourceType": "SupplyRequest"}, "dict"),
    (None, "NoneType"),
]


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize(("payload", "shown"), BAD_PAYLOADS)
def test_bad_payloads(parser: str, payload: Any, shown: str | None) -> None:
    err = refused(lambda: PARSERS[parser](payload), "payload", shown)
    assert err.source == (FHIR_SOURCE if parser == "fhir" else JSON_SOURCE)
    assert len(err.problems) == 1
    # raised outside the decoder's exception: nothing holds on to the payload
    assert err.__context__ is None and err.__cause__ is None


@pytest.mark.parametrize("parser", list(PARSERS))
def test_oversized_payload_is_refused_before_parsing(parser: str) -> None:
    payload = " " * (MAX_PAYLOAD_CHARS + 1)
    refused(lambda: PARSERS[parser](payload), "payload", f"{MAX_PAYLOAD_CHARS + 1} characters")


@pytest.mark.parametrize("parser", list(PARSERS))
def test_nul_anywhere_is_refused(parser: str) -> None:
    doc = single() if parser == "fhir" else plain()
    doc["note"] = [{"text": "a\x00b"}] if parser == "fhir" else "a\x00b"
    field = "note[0].text" if parser == "fhir" else "note"
    refused(lambda: PARSERS[parser](json.dumps(doc)), field, "a\x00b")


# --- plain JSON: good -------------------------------------------------------------------


def test_plain_json() -> None:
    req = plain_json(plain(urgent=True, requested_by=" Anna\nLind ", note="a\r\nb"))
    assert req == RequisitionIn(
        sender="anna",
        sender_id="MED1-0001",
        drug_room="MED1",
        lines=(LineIn(PARA, 2), LineIn(METO, 1)),
        source=RequisitionSource.JSON,
        urgent=True,
        requested_by="Anna Lind",
        note="a\nb",
    )


def test_plain_json_optional_nulls_and_gtin13() -> None:
    lines = [{"gtin": PARA[1:], "packs": 2.0, "note": None}]
    req = plain_json(plain(urgent=None, requested_by=None, note=None, lines=lines))
    assert req.lines == (LineIn(PARA, 2),) and req.urgent is False
    assert (req.requested_by, req.note) == ("", "")


def test_plain_json_line_limit() -> None:
    lines = [{"gtin": g, "packs": 1} for g in BIG.gtins]
    ok = plain_json(plain(lines=lines[:MAX_LINES_PER_REQUISITION]), assortment=BIG)
    assert len(ok.lines) == MAX_LINES_PER_REQUISITION
    refused(lambda: plain_json(plain(lines=lines), assortment=BIG), "lines", "401 lines")


# --- plain JSON: refused ----------------------------------------------------------------

BAD_JSON: list[tuple[str, Any, str, str | None]] = [
    # (path to edit, new value, problem field, problem value)
    ("colour", "red", "colour", "red"),
    ("modifierExtension", [{"url": "u"}], "modifierExtension", "a list"),
    ("lines.0.pcks", 2, "lines[0].pcks", "2"),
    ("", 1, '[""]', "1"),
    ("lines.0", {"gtin": PARA, "packs": 2, "a.b": 1}, 'lines[0]["a.b"]', "1"),
    ("id", DELETE, "id", None),
    ("id", "", "id", ""),
    ("id", "  ", "id", "  "),
    ("id", 17, "id", "17"),
    ("id", "x" * (MAX_ID_CHARS + 1), "id", "xxxx"),
    ("id", "MED1\n0001", "id", "MED1\n0001"),
    ("drug_room", DELETE, "drug_room", None),
    ("drug_room", "WARD9", "drug_room", "WARD9"),
    ("drug_room", ["MED1"], "drug_room", "a list"),
    ("urgent", "yes", "urgent", "yes"),
    ("urgent", 1, "urgent", "1"),
    ("requested_by", 5, "requested_by", "5"),
    ("note", ["a"], "note", "a list"),
    ("lines", DELETE, "lines", None),
    ("lines", [], "lines", "[]"),
    ("lines", {"gtin": PARA}, "lines", "an object"),
    ("lines.0", PARA, "lines[0]", PARA),
    ("lines.0", {"packs": 1}, "lines[0].gtin", None),
    ("lines.0.gtin", "123", "lines[0].gtin", "123"),
    ("lines.0.gtin", "07359990000014", "lines[0].gtin", "07359990000014"),
    ("lines.0.gtin", STRANGER, "lines[0].gtin", STRANGER),
    ("lines.0.gtin", 7359990000013, "lines[0].gtin", "7359990000013"),
    ("lines.0.article", 100007, "lines[0].article", "100007"),  # and a gtin
    ("lines.1.article", "100014", "lines[1].article", "100014"),
    ("lines.1.article", True, "lines[1].article", "true"),
    ("lines.1.article", 0, "lines[1].article", "0"),
    ("lines.1.article", 10**12, "lines[1].article", str(10**12)),
    ("lines.1.article", 555, "lines[1].article", "555"),
    ("lines.1.article", ORPHAN_ARTICLE, "lines[1].article", str(ORPHAN_ARTICLE)),
    ("lines.1.article", 100007, "lines[1].article", PARA),  # the same product as lines[0]
    ("lines.0.packs", DELETE, "lines[0].packs", None),
    ("lines.0.packs", 0, "lines[0].packs", "0"),
    ("lines.0.packs", -1, "lines[0].packs", "-1"),
    ("lines.0.packs", 2.5, "lines[0].packs", "2.5"),
    ("lines.0.packs", MAX_PACKS_PER_LINE + 1, "lines[0].packs", str(MAX_PACKS_PER_LINE + 1)),
    ("lines.0.packs", 1e300, "lines[0].packs", "1E+300"),
    ("lines.0.packs", "2", "lines[0].packs", "2"),
    ("lines.0.packs", False, "lines[0].packs", "false"),
    ("lines.0.note", 3, "lines[0].note", "3"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "shown"),
    BAD_JSON,
    ids=[f"{p}={str(v)[:20]!r}" for p, v, _, _ in BAD_JSON],
)
def test_json_refused(path: str, value: Any, field: str, shown: str | None) -> None:
    bad = edit(plain(), path, value)
    err = refused(lambda: plain_json(bad), field, shown)
    assert err.source == JSON_SOURCE


@pytest.mark.parametrize(
    ("sender", "shown"),
    [("", ""), ("   ", "   "), ("an\x01na", "an\x01na"), ("a" * (MAX_SENDER_CHARS + 1), "aaa")],
)
def test_json_sender_is_checked(sender: str, shown: str) -> None:
    refused(lambda: plain_json(plain(), sender=sender), "sender", shown)


def test_json_names_every_problem() -> None:
    doc = plain(id="", drug_room="X", colour=1)
    doc["lines"] = [{"gtin": STRANGER, "packs": 0}, {"article": 100014, "packs": 1, "x": 2}]
    with pytest.raises(IntakeError) as info:
        plain_json(doc)
    found = {(p.field, p.value) for p in info.value.problems}
    assert {
        ("colour", "1"),
        ("id", ""),
        ("drug_room", "X"),
        ("lines[0].gtin", STRANGER),
        ("lines[0].packs", "0"),
        ("lines[1].x", "2"),
    } <= found


@pytest.mark.parametrize("parser", list(PARSERS))
def test_numbers_are_read_exactly(parser: str) -> None:
    """2.0 is two packs; 2.0000000000000001 (2.0 as a binary float) is not whole."""
    if parser == "fhir":
        text = json.dumps(single()).replace('"value": 2}', '"value": 2.0000000000000001}')
        field = "quantity.value"
    else:
        text = json.dumps(plain()).replace('"packs": 2}', '"packs": 2.0000000000000001}')
        field = "lines[0].packs"
    refused(lambda: PARSERS[parser](text), field, "2.0000000000000001")
