"""One day of dose orders for a demo ward: plausible regimens, seeded, no real people."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date
from typing import Any

from controller.config import DemoConfig, Product, Site
from controller.intake import Catalogue, parse_orders
from controller.packing.orders import DoseOrder

# ATC code -> (units per dose, administration times as hours of the day)
REGIMENS: dict[str, tuple[int, tuple[int, ...]]] = {
    "N02BE01": (2, (8, 12, 17, 21)),  # paracetamol 1 g four times a day
    "C07AB02": (1, (8,)),
    "C03CA01": (1, (8, 12)),
    "B01AF02": (1, (8, 21)),
    "C10AA05": (1, (21,)),
    "A02BC01": (1, (8,)),
    "C09AA02": (1, (8,)),
    "A10BA02": (1, (8, 17)),
    "H03AA01": (1, (8,)),
    "C08CA01": (1, (8,)),
    "N05CF01": (1, (21,)),
    "H02AB06": (2, (8,)),
    "A12BA01": (1, (8, 17)),
}


def demo_prescriptions(
    demo: DemoConfig,
    packable: Sequence[Product],
    day: date,
    others: Sequence[Product] = (),
) -> dict[str, Any]:
    """The day's prescriptions as the hospital's system would send them: one FHIR R4
    Bundle of MedicationRequests. Each patient gets two to five regimens of the
    packable products; every seventh patient also gets one of `others` (products no
    canister packs: substituted or added by hand). The patient identifiers are test
    identifiers, not people."""
    rng = random.Random(demo.seed)
    hours = {t.hour for t in demo.administration_times}
    choices = [p for p in packable if p.atc in REGIMENS]
    extras = [p for p in others if p.atc in REGIMENS]
    entries = []
    for n in range(1, demo.patients + 1):
        chosen = rng.sample(choices, rng.randint(2, min(5, len(choices))))
        if extras and n % 7 == 0:
            extra = extras[(n // 7) % len(extras)]
            # never the same substance twice for one patient (a double dose)
            chosen = [p for p in chosen if p.substance != extra.substance] + [extra]
        for product in chosen:
            units, regimen_hours = REGIMENS[product.atc]
            at = [h for h in regimen_hours if h in hours]
            if not at:
                continue
            entries.append(
                {
                    "resource": {
                        "resourceType": "MedicationRequest",
                        "id": f"demo-{n:03d}-{product.article}",
                        "status": "active",
                        "intent": "order",
                        "medicationCodeableConcept": {
                            "coding": [
                                {
                                    "system": "http://www.gs1.org/gtin",
                                    "code": product.gtin,
                                    "display": product.name,
                                },
                            ]
                        },
                        "subject": {
                            "identifier": {
                                "system": "urn:doseline:demo-patient",
                                "value": f"TEST-{demo.ward}-{n:04d}",
                            }
                        },
                        "authoredOn": day.isoformat(),
                        "dosageInstruction": [
                            {
                                "timing": {
                                    "repeat": {
                                        "frequency": len(at),
                                        "period": 1,
                                        "periodUnit": "d",
                                        "timeOfDay": [f"{h:02d}:00:00" for h in at],
                                    }
                                },
                                "doseAndRate": [
                                    {"doseQuantity": {"value": units, "unit": product.unit}}
                                ],
                            }
                        ],
                        "dispenseRequest": {
                            "validityPeriod": {"start": day.isoformat(), "end": day.isoformat()}
                        },
                    }
                }
            )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def demo_orders(site: Site, demo: DemoConfig, day: date, today: date) -> list[DoseOrder]:
    """The demo day's dose orders, through the same intake as real prescriptions."""
    in_canisters = {c.gtin for p in site.packers for c in p.canisters if c.calibrated}
    packable = [site.product(g) for g in sorted(in_canisters)]
    others = [
        p
        for p in site.catalogue
        if p.gtin not in in_canisters and p.category == "drug" and p.unit == "tablet"
    ]
    return parse_orders(
        demo_prescriptions(demo, packable, day, others),
        catalogue=Catalogue.from_site(site),
        salt=site.site.name,
        default_ward=demo.ward,
        today=today,
    )
