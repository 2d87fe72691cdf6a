"""Dose order intake from FHIR R4 MedicationRequest and HL7 v2 RDE^O11.

Good messages must give exactly the expected DoseOrders; every bad message must be
refused as a whole with an IntakeError naming the field path and the value; no clear
patient identifier may survive into an order or an error; and no input at all may make
the parsers raise anything but IntakeError.
"""

from __future__ import annotations

import copy
import json
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import Product, load_site
from controller.intake import (
    Catalogue,
    IntakeError,
    Strength,
    message_format,
    parse_fhir,
    parse_hl7v2,
    parse_message,
    parse_orders,
)
from controller.packing.orders import DoseOrder, pseudonym
from controller.packing.planner import plan_day

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "intake"
SALT = "unit-test-salt"
TODAY = date(2026, 11, 20)
WARD = "MED1"

PARA, PARA2, METO, FURO = "07359990000013", "07359990000174", "07359990000020", "07359990000037"
PRED, SYRINGE = "07359990000129", "07359990000198"
# Every clear identifier in the fixtures, escaped forms included.
CLEAR_IDS = ("19121212-1212", "TEST-0001", "TEST-0002", "TEST-0003", "TEST-0003\\F\\A")

A = pseudonym("19121212-1212", SALT)
B = pseudonym("TEST-0002", SALT)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.from_site(load_site(REPO / "config" / "demo.yaml"))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load_json(name: str) -> dict[str, Any]:
    data = json.loads(fixture(name))
    assert isinstance(data, dict)
    return data


def parse(payload: Any, catalogue: Catalogue, **kw: Any) -> list[DoseOrder]:
    args: dict[str, Any] = {"salt": SALT, "default_ward": WARD, "today": TODAY, **kw}
    return parse_orders(payload, catalogue=catalogue, **args)


def refused(payload: Any, catalogue: Catalogue, **kw: Any) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        parse(payload, catalogue, **kw)
    assert_no_clear_id(str(info.value))
    return info.value


def assert_no_clear_id(text: str) -> None:
    for clear in CLEAR_IDS:
        assert clear not in text, f"clear identifier {clear!r} leaked into {text!r}"


def has(err: IntakeError, field: str, value: str | None = None) -> bool:
    return any(p.field == field and (value is None or p.value == value) for p in err.problems)


def t(*hours: int) -> tuple[time, ...]:
    return tuple(time(h) for h in hours)


def d(day: int) -> date:
    return date(2026, 11, day)


# --- good paths --------------------------------------------------------------------------


def test_fhir_bundle_gives_exactly_the_expected_orders(catalogue: Catalogue) -> None:
    orders = parse(fixture("fhir_bundle_good.json"), catalogue)
    assert orders == [
        # subject.identifier; no encounter: the default ward; GTIN coding
        DoseOrder(A, WARD, METO, 1, t(8), d(20), d(26)),
        # ATC coding alone; validityPeriod given as dateTimes: their dates
        DoseOrder(A, WARD, FURO, 1, t(8, 14), d(20), d(22)),
        # subject.reference to a Patient in the Bundle, ward from Encounter.location,
        # contained Medication with ATC + 500 mg: two products of one substitution group,
        # the first listed is taken
        DoseOrder(B, "SURG2", PARA, 2, t(8, 12, 17, 21), d(20), d(23)),
    ]


def test_fhir_single_request_with_two_instructions_and_authored_on(catalogue: Catalogue) -> None:
    orders = parse(fixture("fhir_request_good.json"), catalogue)
    patient = pseudonym("TEST-0001", SALT)
    assert orders == [
        DoseOrder(patient, WARD, PRED, 2, t(8), d(20), d(20)),
        DoseOrder(patient, WARD, PRED, 1, t(14), d(20), d(20)),
    ]


def test_fhir_accepts_text_bytes_and_dict_alike(catalogue: Catalogue) -> None:
    raw = fixture("fhir_bundle_good.json")
    expected = parse(raw, catalogue)
    assert parse(raw.decode(), catalogue) == expected
    assert parse("\ufeff  " + raw.decode(), catalogue) == expected
    assert parse(json.loads(raw), catalogue) == expected
    assert (
        parse_fhir(json.loads(raw), catalogue=catalogue, salt=SALT, default_ward=WARD, today=TODAY)
        == expected
    )


def test_hl7_message_gives_exactly_the_expected_orders(catalogue: Catalogue) -> None:
    orders = parse(fixture("hl7_rde_o11_good.hl7"), catalogue)
    assert orders == [
        DoseOrder(A, WARD, PARA, 2, t(8, 12, 17, 21), d(20), d(26)),
        # ATC + RXE-25/26 strength; one DoseOrder per TQ1 with its own period
        DoseOrder(A, WARD, METO, 1, t(8), d(20), d(22)),
        DoseOrder(A, WARD, METO, 1, t(20), d(23), d(26)),
    ]


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_hl7_segment_terminators_and_framing(catalogue: Catalogue, terminator: str) -> None:
    expected = parse(fixture("hl7_rde_o11_good.hl7"), catalogue)
    text = fixture("hl7_rde_o11_good.hl7").decode().replace("\r", terminator)
    assert parse(text, catalogue) == expected
    assert parse(f"\x0b{text}\x1c\r".encode(), catalogue) == expected  # MLLP frame


def test_hl7_other_delimiters_from_msh(catalogue: Catalogue) -> None:
    text = fixture("hl7_rde_o11_good.hl7").decode()
    assert not set("#$*@%") & set(text)
    other = text.translate(str.maketrans("|^~\\&", "#$*@%"))
    assert other.startswith("MSH#$*@%#")
    assert parse(other, catalogue) == parse(text, catalogue)


def test_hl7_escape_sequences_decode(catalogue: Catalogue) -> None:
    raw = fixture("hl7_escapes.hl7")
    [order] = parse(raw, catalogue)
    assert order.patient == pseudonym("TEST-0003|A&B", SALT)  # \F\ and \T\ in PID-3
    assert order == DoseOrder(order.patient, WARD, PARA, 2, t(8, 12, 17, 21), d(20), d(26))
    msg = parse_message(raw.decode())
    rxe, nte, pid = msg.first("RXE"), msg.first("NTE"), msg.first("PID")
    assert rxe is not None and nte is not None and pid is not None
    assert rxe.text(2, 2) == "Paracetamol 500 mg ^ tablet ~ 1\\2 | &"
    assert rxe.text(2, 3) == "GTIN"
    assert nte.text(3) == "Note: crush \\ mix\nline two A"
    assert pid.text(3, 4) == "TEST&AUTH"


def test_same_patient_same_pseudonym_across_formats(catalogue: Catalogue) -> None:
    fhir = parse(fixture("fhir_bundle_good.json"), catalogue)
    hl7 = parse(fixture("hl7_rde_o11_good.hl7"), catalogue)
    assert fhir[0].patient == hl7[0].patient == A
    # and the planner puts both sources in one pouch per time
    jobs = plan_day([*fhir, *hl7], d(20))
    eight = next(j for j in jobs if j.ward == WARD and j.time == time(8))
    [pouch] = [p for p in eight.pouches if p.patient == A]
    assert dict(pouch.items) == {PARA: 2, METO: 2, FURO: 1}


def test_hl7_charset_from_msh_18(catalogue: Catalogue) -> None:
    text = fixture("hl7_rde_o11_good.hl7").decode()
    latin = text.replace("UNICODE UTF-8", "8859/1").replace("19121212-1212", "TEST-ÅÄÖ-1")
    [first, *_] = parse(latin.encode("latin-1"), catalogue)
    assert first.patient == pseudonym("TEST-ÅÄÖ-1", SALT)
    err = refused(latin.encode("latin-1").replace(b"8859/1", b"UNICODE UTF-8"), catalogue)
    assert has(err, "payload")
    err = refused(text.replace("UNICODE UTF-8", "EBCDIC").encode(), catalogue)
    assert has(err, "MSH-18", "EBCDIC")


# --- bad fixtures ------------------------------------------------------------------------

BAD = [
    (
        "fhir_bad_unknown_product.json",
        "entry[2].resource.medicationCodeableConcept.coding[0].code",
        "07359990000990",
    ),
    (
        "fhir_bad_missing_times.json",
        "entry[3].resource.dosageInstruction[0].timing.repeat.timeOfDay",
        None,
    ),
    (
        "fhir_bad_negative_dose.json",
        "entry[4].resource.dosageInstruction[0].doseAndRate[0].doseQuantity.value",
        "-1",
    ),
    (
        "fhir_bad_fractional_dose.json",
        "entry[2].resource.dosageInstruction[0].doseAndRate[0].doseQuantity.value",
        "1.5",
    ),
    ("fhir_bad_status.json", "entry[3].resource.status", "stopped"),
    ("fhir_bad_malformed.json", "payload", None),
    ("hl7_bad_missing_rxe.hl7", "RXE", None),
    ("hl7_bad_dose.hl7", "RXE-3", "abc"),
    ("hl7_bad_message_type.hl7", "MSH-9", "ADT^A01^ADT_A01"),
]


@pytest.mark.parametrize(("name", "field", "value"), BAD, ids=[b[0] for b in BAD])
def test_bad_fixture_is_refused_naming_field_and_value(
    catalogue: Catalogue, name: str, field: str, value: str | None
) -> None:
    err = refused(fixture(name), catalogue)
    assert len(err.problems) == 1, str(err)
    assert has(err, field, value), str(err)
    shown = f"{field}: {value!r}" if value is not None else f"{field}: "
    assert shown in str(err)


def test_errors_carry_no_chained_exception_holding_the_payload(catalogue: Catalogue) -> None:
    err = refused(fixture("fhir_bad_malformed.json"), catalogue)
    assert err.__context__ is None and err.__cause__ is None


def test_messages_read_well(catalogue: Catalogue) -> None:
    text = str(refused(fixture("hl7_bad_dose.hl7"), catalogue))
    assert f"RXE-3: 'abc': is not a number [patient {A}]" in text
    text = str(refused(fixture("fhir_bad_negative_dose.json"), catalogue))
    assert "doseQuantity.value: '-1': dose must be at least 1 unit" in text
    assert f"[patient {B}]" in text  # the pseudonym, never the clear identifier
    text = str(refused(fixture("fhir_bad_missing_times.json"), catalogue))
    assert "timeOfDay: missing: administration times are required" in text


def test_bundle_with_one_bad_entry_gives_nothing_and_every_problem(catalogue: Catalogue) -> None:
    bundle = load_json("fhir_bundle_good.json")
    bundle["entry"][2]["resource"]["status"] = "draft"
    bundle["entry"][4]["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"][
        "value"
    ] = 0
    repeat = bundle["entry"][4]["resource"]["dosageInstruction"][0]["timing"]["repeat"]
    repeat.update(timeOfDay=["08:00:00", "8 am"], frequency=2)
    err = refused(bundle, catalogue)
    assert [(p.field, p.value, p.patient) for p in err.problems] == [
        ("entry[2].resource.status", "draft", A),
        ("entry[4].resource.dosageInstruction[0].doseAndRate[0].doseQuantity.value", "0", B),
        ("entry[4].resource.dosageInstruction[0].timing.repeat.timeOfDay[1]", "8 am", B),
    ]
    assert err.source == "FHIR Bundle"


# --- pseudonymisation ---------------------------------------------------------------------


def test_no_clear_identifier_in_any_order_or_error(catalogue: Catalogue) -> None:
    for path in sorted(FIXTURES.iterdir()):
        try:
            text = repr(parse(path.read_bytes(), catalogue))
        except IntakeError as exc:
            text = str(exc) + repr(exc.problems) + repr(exc.args)
        assert_no_clear_id(text)


def test_clear_identifier_in_a_reported_value_is_scrubbed(catalogue: Catalogue) -> None:
    bundle = load_json("fhir_bundle_good.json")
    bundle["entry"][2]["resource"]["status"] = "19121212-1212"  # a sender's mapping error
    err = refused(bundle, catalogue)
    assert has(err, "entry[2].resource.status", f"<{A}>")
    hl7 = fixture("hl7_rde_o11_good.hl7").replace(b"|2||TAB", b"|19121212-1212||TAB")
    err = refused(hl7, catalogue)
    assert has(err, "ORDER(0)/RXE-3", f"<{A}>")


def test_identifier_of_the_wrong_type_is_not_quoted(catalogue: Catalogue) -> None:
    request = load_json("fhir_request_good.json")
    request["subject"] = {"identifier": {"value": 191212121212}}
    err = refused(request, catalogue)
    assert has(err, "subject.identifier.value", "a number")
    assert "191212121212" not in str(err)


def test_subject_reference_outside_the_message_is_pseudonymised(catalogue: Catalogue) -> None:
    request = load_json("fhir_request_good.json")
    request["subject"] = {"reference": "Patient/TEST-0001"}
    orders = parse(request, catalogue)
    assert {o.patient for o in orders} == {pseudonym("Patient/TEST-0001", SALT)}


# --- FHIR rules ---------------------------------------------------------------------------


def request_with(**changes: Any) -> dict[str, Any]:
    request = load_json("fhir_request_good.json")
    request.update(changes)
    return request


def first_dosage(request: dict[str, Any]) -> dict[str, Any]:
    dosage = request["dosageInstruction"][0]
    assert isinstance(dosage, dict)
    return dosage


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (lambda r: r.update(intent="plan"), "intent", "plan"),
        (lambda r: r.update(doNotPerform=True), "doNotPerform", "true"),
        (
            lambda r: first_dosage(r).update(asNeededBoolean=True),
            "dosageInstruction[0].asNeeded[x]",
            None,
        ),
        (
            lambda r: first_dosage(r)["timing"]["repeat"].update(dayOfWeek=["mon"]),
            "dosageInstruction[0].timing.repeat.dayOfWeek",
            "a list",
        ),
        (
            lambda r: first_dosage(r)["timing"]["repeat"].update(period=2),
            "dosageInstruction[0].timing.repeat.period",
            "2",
        ),
        (
            lambda r: first_dosage(r)["timing"]["repeat"].update(
                timeOfDay=["08:00:30"], frequency=1
            ),
            "dosageInstruction[0].timing.repeat.timeOfDay[0]",
            "08:00:30",
        ),
        (
            lambda r: first_dosage(r)["timing"]["repeat"].update(timeOfDay=["14:00:00"]),
            "dosageInstruction[1].timing.repeat.timeOfDay",
            "14:00:00",
        ),
        (
            lambda r: first_dosage(r)["doseAndRate"][0]["doseQuantity"].update(
                unit="mg", code="mg"
            ),
            "dosageInstruction[0].doseAndRate[0].doseQuantity.code",
            "mg",
        ),
        (
            lambda r: first_dosage(r)["doseAndRate"][0]["doseQuantity"].update(value=21),
            "dosageInstruction[0].doseAndRate[0].doseQuantity.value",
            "21",
        ),
        (
            lambda r: first_dosage(r)["doseAndRate"][0]["doseQuantity"].update(value="2"),
            "dosageInstruction[0].doseAndRate[0].doseQuantity.value",
            "2",
        ),
        (
            lambda r: first_dosage(r)["doseAndRate"][0].update(doseRange={"low": {"value": 1}}),
            "dosageInstruction[0].doseAndRate[0].doseRange",
            None,
        ),
        (lambda r: r.update(authoredOn="2026-11-19"), "authoredOn", "2026-11-19"),
        (
            lambda r: r.update(dispenseRequest={"validityPeriod": {"start": "2026-11-20"}}),
            "dispenseRequest.validityPeriod.end",
            None,
        ),
        (
            lambda r: r.update(
                dispenseRequest={"validityPeriod": {"start": "2026-11-22", "end": "2026-11-21"}}
            ),
            "dispenseRequest.validityPeriod.end",
            "2026-11-21",
        ),
        (lambda r: r.update(authoredOn="2026-02-30"), "authoredOn", "2026-02-30"),
        (
            lambda r: r["medicationCodeableConcept"]["coding"][1].update(code="H02AB07"),
            "medicationCodeableConcept.coding[1].code",
            "H02AB07",
        ),
        (
            lambda r: r["medicationCodeableConcept"]["coding"][0].update(code="07359990000120"),
            "medicationCodeableConcept.coding[0].code",
            "07359990000120",
        ),
        (
            lambda r: r["medicationCodeableConcept"].update(
                coding=[{"system": "http://www.gs1.org/gtin", "code": SYRINGE}]
            ),
            "medicationCodeableConcept.coding[0].code",
            SYRINGE,
        ),
        (
            lambda r: r["medicationCodeableConcept"].update(
                coding=[{"system": "http://snomed.info/sct", "code": "322236009"}]
            ),
            "medicationCodeableConcept.coding",
            None,
        ),
        (
            lambda r: r.update(modifierExtension=[{"url": "https://example.org/x"}]),
            "modifierExtension",
            "https://example.org/x",
        ),
        (lambda r: r.update(subject={"display": "someone"}), "subject", None),
        (lambda r: r.update(resourceType="Observation"), "resourceType", "Observation"),
    ],
)
def test_fhir_request_refusals(
    catalogue: Catalogue, change: Any, field: str, value: str | None
) -> None:
    request = load_json("fhir_request_good.json")
    change(request)
    err = refused(request, catalogue)
    assert has(err, field, value), str(err)


def test_fhir_ward_rules(catalogue: Catalogue) -> None:
    bundle = load_json("fhir_bundle_good.json")
    encounter = bundle["entry"][1]["resource"]
    # an identifier on the location reference wins over the reference
    encounter["location"][0]["location"]["identifier"] = {"value": "GER3"}
    assert parse(bundle, catalogue)[2].ward == "GER3"
    # a Location in the Bundle: its first identifier
    del encounter["location"][0]["location"]["identifier"]
    encounter["location"][0]["location"]["reference"] = "urn:uuid:loc-1"
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:loc-1",
            "resource": {"resourceType": "Location", "identifier": [{"value": "ICU1"}]},
        }
    )
    assert parse(bundle, catalogue)[2].ward == "ICU1"
    # an inactive location is skipped, none left: the default ward
    encounter["location"][0]["status"] = "completed"
    assert parse(bundle, catalogue)[2].ward == WARD
    # no default ward: refused
    err = refused(bundle, catalogue, default_ward=None)
    assert has(err, "entry[4].resource.encounter")
    # a ward code that is not one
    encounter["location"][0]["status"] = "active"
    bundle["entry"][-1]["resource"]["identifier"] = [{"value": "ward 3 east"}]
    err = refused(bundle, catalogue)
    assert has(err, "entry[5].resource.identifier[0].value", "ward 3 east")


def test_fhir_atc_resolution(catalogue: Catalogue) -> None:
    bundle = load_json("fhir_bundle_good.json")
    medication = bundle["entry"][4]["resource"]["contained"][0]
    # ATC alone, two products of one substitution group: the first listed
    del medication["ingredient"]
    assert parse(bundle, catalogue)[2].gtin == PARA
    # a strength no product has
    medication["ingredient"] = [{"strength": {"numerator": {"value": 1, "unit": "g"}}}]
    err = refused(bundle, catalogue)
    assert has(err, "entry[4].resource.contained[0].code.coding[0].code", "N02BE01")
    assert "ATC N02BE01 1000 mg (Paracetamol 500 mg tablet): no drug" in str(err)
    # 0.5 g is 500 mg
    medication["ingredient"][0]["strength"]["numerator"]["value"] = Decimal("0.5")
    assert parse(bundle, catalogue)[2].gtin == PARA


def test_atc_ambiguity_names_the_code(catalogue: Catalogue) -> None:
    site = load_site(REPO / "config" / "demo.yaml")
    extra = site.catalogue[2].model_copy(
        update={
            "gtin": "07359990000235",
            "article": 100154,
            "strength": "500 mg",
            "name": "Furosemide 500 mg tablet",
        }
    )
    wide = Catalogue([*site.catalogue, extra])
    assert isinstance(extra, Product)
    bundle = load_json("fhir_bundle_good.json")
    err = refused(bundle, wide)
    assert has(err, "entry[3].resource.medicationCodeableConcept.coding[0].code", "C03CA01")
    assert "ATC C03CA01 (Furosemide 40 mg tablet) is ambiguous: 2 products" in str(err)
    assert wide.by_atc("C03CA01", Strength.of(Decimal(40), "mg")) == [site.catalogue[2]]


def test_fhir_bundle_rules(catalogue: Catalogue) -> None:
    bundle = load_json("fhir_bundle_good.json")
    bundle["type"] = "searchset"
    bundle["entry"][0]["request"]["method"] = "DELETE"
    bundle["entry"].append({"request": {"method": "DELETE", "url": "MedicationRequest/9"}})
    err = refused(bundle, catalogue)
    assert has(err, "type", "searchset")
    assert has(err, "entry[0].request.method", "DELETE")
    assert has(err, "entry[5].resource")
    err = refused(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": {"resourceType": "Patient"}}],
        },
        catalogue,
    )
    assert has(err, "entry")


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        ('{"resourceType": "Bundle", "resourceType": "MedicationRequest"}', "resourceType"),
        ('{"value": NaN}', None),
        ("[1, 2]", "a list"),
        ("[" * 100_000, None),
        (b"\xff\xfe{", None),
        ("{", "line 1 column 2"),
    ],
)
def test_fhir_json_refusals(catalogue: Catalogue, payload: Any, value: str | None) -> None:
    if isinstance(payload, bytes):
        with pytest.raises(IntakeError) as info:
            parse_fhir(payload, catalogue=catalogue, salt=SALT, today=TODAY)
        err = info.value
    else:
        err = refused(payload, catalogue)
    assert has(err, "payload", value), str(err)


# --- HL7 v2 rules ---------------------------------------------------------------------------


def hl7_with(old: str, new: str, name: str = "hl7_rde_o11_good.hl7") -> str:
    text = fixture(name).decode()
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "field", "value"),
    [
        ("ORC|NW|ORD-1001", "ORC|CA|ORD-1001", "ORDER(0)/ORC-1", "CA"),
        (
            "RXE||C07AB02^Metoprolol 50 mg prolonged-release tablet^ATC|1|",
            "RXE||C07AB02^Metoprolol 50 mg prolonged-release tablet^ATC|1.5|",
            "ORDER(1)/RXE-3",
            "1.5",
        ),
        ("|2||TAB^tablet^HL70292", "|2|3|TAB^tablet^HL70292", "ORDER(0)/RXE-4", "3"),
        ("|2||TAB^tablet^HL70292", "|500||mg^milligram^UCUM", "ORDER(0)/RXE-5.1", "mg"),
        ("|2||TAB^tablet^HL70292", "|25||TAB^tablet^HL70292", "ORDER(0)/RXE-3", "25"),
        ("|2||TAB^tablet^HL70292", "|2||", "ORDER(0)/RXE-5", None),
        ("TQ1|2||QD|2000", "TQ1|2||Q1W|2000", "ORDER(1)/TQ1(1)-3.1", "Q1W"),
        (
            "TQ1|2||QD|2000|||202611230000|202611262359",
            "TQ1|2||QD|2000|||202611230000|202611262359|PRN",
            "ORDER(1)/TQ1(1)-9.1",
            "PRN",
        ),
        ("0800~1200~1700~2100", "0800~1200~1700~08", "ORDER(0)/TQ1-4(3)", "08"),
        ("0800~1200~1700~2100", "0800~1200~1700~0800", "ORDER(0)/TQ1-4(3)", "08:00:00"),
        ("0800~1200~1700~2100", "", "ORDER(0)/TQ1-4", None),
        ("|||20261120|20261126", "|||20261120|", "ORDER(0)/TQ1-8", None),
        ("|||20261120|20261126", "|||20261118|20261119", "ORDER(0)/TQ1-8", "20261119"),
        ("|||20261120|20261126", "|||20261120|20261131", "ORDER(0)/TQ1-8", "20261131"),
        ("TQ1|2||QD|2000|||20261123", "TQ1|2||QD|0800|||20261122", "ORDER(1)/TQ1(1)-4", "0800"),
        (
            "07359990000013^Paracetamol 500 mg tablet^GTIN",
            "07359990000013^Paracetamol^LOCAL",
            "ORDER(0)/RXE-2",
            "07359990000013^Paracetamol^LOCAL",
        ),
        (
            "C07AB02^Metoprolol 50 mg prolonged-release tablet^ATC|1||TAB^tablet||||",
            "C07AB02^Metoprolol^ATC^07359990000037^Furosemide^GTIN|1||TAB^tablet||||",
            "ORDER(1)/RXE-2.1",
            "C07AB02",
        ),
        ("|50|mg^milligram^UCUM", "|100|mg^milligram^UCUM", "ORDER(1)/RXE-2.1", "C07AB02"),
        ("PID|1||19121212-1212^^^SE-PNR^NNSWE", "PID|1||^^^SE-PNR^NNSWE", "PID-3", None),
        ("MED1^12^1^HOSP1", "MED 1^12", "PV1-3.1", "MED 1"),
    ],
)
def test_hl7_refusals(
    catalogue: Catalogue, old: str, new: str, field: str, value: str | None
) -> None:
    err = refused(hl7_with(old, new), catalogue)
    assert has(err, field, value), str(err)


def test_hl7_escape_errors_only_where_read(catalogue: Catalogue) -> None:
    # PID-5 is never read, so a broken escape there does not matter
    assert parse(hl7_with("TEST^PATIENT ONE", "TEST^PATIENT\\Q\\ONE"), catalogue)
    err = refused(hl7_with("MED1^12", "MED\\Q\\1^12"), catalogue)
    assert has(err, "PV1-3.1", "MED\\Q\\1")
    err = refused(hl7_with("MED1^12", "MED\\F1^12"), catalogue)
    assert "is not closed" in str(err)


def test_hl7_structure_refusals(catalogue: Catalogue) -> None:
    good = fixture("hl7_rde_o11_good.hl7").decode()
    lines = good.split("\r")
    assert has(refused("MSH|^~", catalogue), "MSH-2")
    assert has(refused("MSH|^^\\&|x", catalogue), "MSH-2", "^^\\&")
    assert has(refused("\r".join(ln for ln in lines if not ln.startswith("PID")), catalogue), "PID")
    assert has(refused("\r".join(ln for ln in lines if not ln.startswith("ORC")), catalogue), "RXE")
    no_tq1 = "\r".join(ln for ln in lines if not ln.startswith("TQ1"))
    assert has(refused(no_tq1, catalogue), "ORDER(0)/TQ1")
    assert has(refused(good + "hello world\r", catalogue), "segment 13", "hel")
    assert has(refused(good + good, catalogue), "segment 13", "MSH")
    # no PV1: the default ward, or a refusal without one
    no_pv1 = "\r".join(ln for ln in lines if not ln.startswith("PV1"))
    assert {o.ward for o in parse(no_pv1, catalogue, default_ward="GER3")} == {"GER3"}
    assert has(refused(no_pv1, catalogue, default_ward=None), "PV1-3.1")


def test_hl7_period_from_orc_9_for_one_day(catalogue: Catalogue) -> None:
    text = hl7_with("|||20261120|20261126", "|||", "hl7_escapes.hl7")
    text = text.replace("|||||20261119140500", "|||||20261120083000")
    [order] = parse(text, catalogue)
    assert (order.start, order.end) == (d(20), d(20))


# --- dispatch --------------------------------------------------------------------------------


def test_dispatch_refuses_what_is_neither(catalogue: Catalogue) -> None:
    assert has(refused("PID|1||x", catalogue), "payload", "PID")
    assert has(refused(b"", catalogue), "payload", None)
    assert has(refused(42, catalogue), "payload", "int")
    with pytest.raises(ValueError, match="salt"):
        parse_orders("{}", catalogue=catalogue, salt="", today=TODAY)


def test_hl7_entry_point_directly(catalogue: Catalogue) -> None:
    orders = parse_hl7v2(
        fixture("hl7_rde_o11_good.hl7"),
        catalogue=catalogue,
        salt=SALT,
        default_ward=WARD,
        today=TODAY,
    )
    assert len(orders) == 3


# --- fuzzing: nothing but IntakeError escapes ------------------------------------------------

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FHIR_WORDS = [
    "resourceType",
    "Bundle",
    "MedicationRequest",
    "entry",
    "resource",
    "type",
    "transaction",
    "status",
    "active",
    "intent",
    "order",
    "subject",
    "reference",
    "identifier",
    "value",
    "encounter",
    "location",
    "medicationCodeableConcept",
    "medicationReference",
    "coding",
    "system",
    "code",
    "http://www.gs1.org/gtin",
    "http://www.whocc.no/atc",
    "dosageInstruction",
    "timing",
    "repeat",
    "timeOfDay",
    "doseAndRate",
    "doseQuantity",
    "dispenseRequest",
    "validityPeriod",
    "start",
    "end",
    "authoredOn",
    "contained",
    "#med",
    "ingredient",
    "strength",
    "numerator",
    "denominator",
    "unit",
    "fullUrl",
    "request",
    "method",
    "POST",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(FHIR_WORDS)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FHIR_WORDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def no_escape(catalogue: Catalogue, payload: Any) -> None:
    try:
        orders = parse(payload, catalogue)
    except IntakeError as exc:
        assert exc.problems
        return
    assert all(isinstance(o, DoseOrder) for o in orders)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(catalogue: Catalogue, data: bytes) -> None:
    no_escape(catalogue, data)
    no_escape(catalogue, b"MSH|^~\\&|" + data)
    no_escape(catalogue, b"{" + data)


@FUZZ
@given(json_values)
def test_fuzz_random_json(catalogue: Catalogue, value: Any) -> None:
    no_escape(catalogue, json.dumps(value))
    if isinstance(value, dict):
        no_escape(catalogue, value)
        no_escape(catalogue, {"resourceType": "MedicationRequest", **value})
        no_escape(catalogue, {"resourceType": "Bundle", "type": "batch", "entry": [value]})


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            out += _paths(value, (*prefix, k))
    return out


GOOD_BUNDLE = json.loads((FIXTURES / "fhir_bundle_good.json").read_text())
BUNDLE_PATHS = _paths(GOOD_BUNDLE)[1:]


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(BUNDLE_PATHS), json_values, st.booleans()), min_size=1, max_size=4
    )
)
def test_fuzz_mutated_fhir_bundle(catalogue: Catalogue, edits: list[Any]) -> None:
    bundle = copy.deepcopy(GOOD_BUNDLE)
    for path, value, delete in edits:
        node = bundle
        try:
            for step in path[:-1]:
                node = node[step]
            if delete and isinstance(node, dict):
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this path
    no_escape(catalogue, bundle)
    no_escape(catalogue, json.dumps(bundle))


GOOD_HL7 = (FIXTURES / "hl7_rde_o11_good.hl7").read_bytes().decode()
HL7_ALPHABET = "|^~\\&\r\nFSTREXH0123456789.:+-MSHPIDPVORCRXETQ1NW ÅÄÖ\x00"


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(GOOD_HL7)),
            st.integers(0, 12),
            st.text(alphabet=HL7_ALPHABET, max_size=12),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzz_mutated_hl7(catalogue: Catalogue, edits: list[tuple[int, int, str]]) -> None:
    text = GOOD_HL7
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut :]
    no_escape(catalogue, text)
    no_escape(catalogue, text.encode("utf-8"))


@FUZZ
@given(st.integers(0, 11), st.integers(0, 30), st.text(alphabet=HL7_ALPHABET, max_size=20))
def test_fuzz_hl7_field_replaced(catalogue: Catalogue, seg: int, field: int, value: str) -> None:
    lines = GOOD_HL7.rstrip("\r").split("\r")
    fields = lines[seg].split("|")
    while len(fields) <= field:
        fields.append("")
    fields[field] = value
    lines[seg] = "|".join(fields)
    no_escape(catalogue, "\r".join(lines))


def test_message_format_names_what_it_saw() -> None:
    assert message_format({"resourceType": "Bundle"}) == "fhir"
    assert message_format(b"\xef\xbb\xbf  {}") == "fhir"
    assert message_format("\x0bMSH|^~\\&|HIS") == "hl7v2"
    assert message_format(b"\r\nMSH|^~\\&|HIS") == "hl7v2"
    with pytest.raises(IntakeError) as refused:
        message_format("PID|1")
    assert "PID" in str(refused.value.problems[0])
