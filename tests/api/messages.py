"""Order messages for the API tests, dated from today so they never expire."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from tests.sites import METO, PARA


def medication_request(
    patient: str,
    gtin: str,
    units: int | float,
    times: tuple[str, ...],
    start: date,
    days: int = 3,
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.gs1.org/gtin", "code": gtin}]
        },
        "subject": {"identifier": {"system": "https://example.org/pid", "value": patient}},
        "dispenseRequest": {
            "validityPeriod": {
                "start": start.isoformat(),
                "end": (start + timedelta(days=days)).isoformat(),
            }
        },
        "dosageInstruction": [
            {
                "timing": {"repeat": {"timeOfDay": [f"{t}:00" for t in times]}},
                "doseAndRate": [
                    {"doseQuantity": {"value": units, "unit": "tablet", "code": "732936001"}}
                ],
            }
        ],
    }


def bundle(*requests: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in requests],
    }


def good_bundle(start: date) -> dict[str, Any]:
    """Three orders for ward W1 (sent with ?ward=W1): two patients, 08:00 and 20:00."""
    return bundle(
        medication_request("CLEAR-PATIENT-0001", PARA, 2, ("08:00", "20:00"), start),
        medication_request("CLEAR-PATIENT-0001", METO, 1, ("08:00",), start),
        medication_request("CLEAR-PATIENT-0002", PARA, 1, ("08:00",), start),
    )


def hl7_message(start: date, dose: str = "1", ward: str = "W1") -> str:
    """An RDE^O11 with one order: `dose` tablets of paracetamol at 12:00."""
    end = start + timedelta(days=2)
    segments = [
        "MSH|^~\\&|EHR|HOSP|DOSELINE|PHARMACY|20261119140500||RDE^O11^RDE_O11|MSG-9|P|2.5.1",
        "PID|1||19121212-1212^^^SE-PNR^NNSWE||TEST^PATIENT",
        f"PV1|1|I|{ward}^12^1^HOSP1",
        "ORC|NW|ORD-9001^EHR||GRP-9|||||20261119140500",
        f"RXE||{PARA}^Paracetamol 500 mg tablet^GTIN|{dose}||TAB^tablet^HL70292",
        f"TQ1|1||QD|1200|||{start:%Y%m%d}|{end:%Y%m%d}",
    ]
    return "\r".join(segments) + "\r"
