"""Small site files for tests, built as dicts and validated like real ones."""

from __future__ import annotations

from datetime import date, time
from typing import Any

from controller.config import Site, parse_site
from controller.packing.planner import PlannedJob, PlannedPouch

PARA = "07359990000013"
METO = "07359990000020"
FURO = "07359990000037"
OXY = "07359990000044"
PARA2 = "07359990000174"  # another paracetamol 500 mg, of PARA's substitution group


def site_dict(
    *,
    packer_address: str = "opc.tcp://127.0.0.1:1/",
    cabinet_address: str = "tcp://127.0.0.1:1",
    scanner_address: str = "socket://127.0.0.1:1",
    ledger_url: str = "sqlite://",
) -> dict[str, Any]:
    def product(gtin: str, article: int, name: str, atc: str) -> dict[str, Any]:
        return {
            "gtin": gtin,
            "article": article,
            "name": name,
            "substance": name.split()[0],
            "atc": atc,
            "strength": name.split()[1] + " mg",
            "unit_price": "0.50",
        }

    return {
        "site": {"name": "Test pharmacy"},
        "ledger": {"url": ledger_url, "reservation_timeout_s": 60, "min_shelf_life_days": 30},
        "catalogue": [
            product(PARA, 100001, "Paracetamol 500", "N02BE01"),
            product(METO, 100002, "Metoprolol 50", "C07AB02"),
            product(FURO, 100003, "Furosemide 40", "C03CA01"),
            product(OXY, 100004, "Oxycodone 5", "N02AA05"),
        ],
        "store": {"code": "CENTRAL", "bins": ["CENTRAL/A01", "CENTRAL/A02"]},
        "stock": [
            {
                "gtin": PARA,
                "batch": "P-LATE",
                "expires_in_days": 400,
                "quantity": 500,
                "bin": "CENTRAL/A01",
            },
            {
                "gtin": PARA,
                "batch": "P-EARLY",
                "expires_in_days": 90,
                "quantity": 50,
                "bin": "CENTRAL/A02",
            },
            {
                "gtin": PARA,
                "batch": "P-SHORT",
                "expires_in_days": 5,
                "quantity": 100,
                "bin": "CENTRAL/A02",
            },
            {
                "gtin": METO,
                "batch": "M-1",
                "expires_in_days": 200,
                "quantity": 300,
                "bin": "CENTRAL/A01",
            },
            {
                "gtin": FURO,
                "batch": "F-1",
                "expires_in_days": 200,
                "quantity": 10,
                "bin": "CENTRAL/A01",
            },
        ],
        "packers": [
            {
                "name": "PK1",
                "address": packer_address,
                "pouches_per_minute": 60,
                "canisters": [
                    {"number": 1, "gtin": PARA, "capacity": 200},
                    {"number": 2, "gtin": METO, "capacity": 200},
                    {"number": 3, "gtin": FURO, "capacity": 200},
                ],
            }
        ],
        "cabinets": [
            {
                "name": "CAB1",
                "ward": "W1",
                "address": cabinet_address,
                "unit_id": 1,
                "poll_interval_s": 0.05,
                "pockets": [
                    {"number": 1, "gtin": PARA, "min": 5, "max": 20, "sim": {"initial": 12}},
                    {"number": 2, "gtin": METO, "min": 4, "max": 10, "sim": {"initial": 8}},
                ],
            }
        ],
        "scanners": [{"name": "SC1", "address": scanner_address}],
        "wards": [
            {"code": "W1", "name": "Ward 1", "cost_centre": "4711"},
            {"code": "W2", "name": "Ward 2", "cost_centre": "4722"},
        ],
    }


def purchasing_site(
    *, ledger_url: str = "sqlite://", verification_port: int | None = None
) -> dict[str, Any]:
    """The test site with two suppliers: PARA, METO and FURO from WHOLE (one day), a
    second paracetamol (PARA2, PARA's substitution group) from ALT (three days); OXY
    has none. With `verification_port`, packs are verified with the system there."""
    raw = site_dict(ledger_url=ledger_url)
    raw["suppliers"] = [
        {"code": "WHOLE", "name": "Wholesale Nord", "lead_time_days": 1},
        {"code": "ALT", "name": "Second Source", "lead_time_days": 3},
    ]
    for p in raw["catalogue"]:
        if p["gtin"] in (PARA, METO, FURO):
            p["supplier"] = "WHOLE"
        if p["gtin"] == PARA:
            p["substitution_group"] = "N02BE01 500"
    raw["catalogue"].append(
        {
            "gtin": PARA2,
            "article": 100009,
            "name": "Paracetamol 500 (second)",
            "substance": "paracetamol",
            "atc": "N02BE01",
            "strength": "500 mg",
            "unit_price": "0.55",
            "substitution_group": "N02BE01 500",
            "supplier": "ALT",
        }
    )
    if verification_port is not None:
        raw["verification"] = {
            "enabled": True,
            "url": f"http://127.0.0.1:{verification_port}",
            "timeout_s": 2,
            "decommission_on": "both",
            "retry_interval_s": 30,
        }
    return raw


def make_site(**kwargs: Any) -> Site:
    return parse_site(site_dict(**kwargs))


JOB_DAY = date(2026, 11, 23)


def job(job_id: str, pouches: int, items: tuple[tuple[str, int], ...]) -> PlannedJob:
    """A job of `pouches` identical pouches for ward W1 at 08:00."""
    return PlannedJob(
        job_id,
        "W1",
        JOB_DAY,
        time(8),
        tuple(PlannedPouch(i, f"PT-{i:04d}", items) for i in range(1, pouches + 1)),
    )


def ward_site(*, ledger_url: str = "sqlite://") -> dict[str, Any]:
    """The purchasing site with two hospitals' drug rooms (docs/ward-supply.md): H1's
    MED drug room is uncounted, its ICU room counted; EXT is a unit outside the hospital
    organisation. OXY is a controlled substance, FURO a licence product; PARA2 is not
    kept in stock. Runs AM (cutoff 06:00, departs 07:30) and PM (12:00, 13:30)."""
    raw = purchasing_site(ledger_url=ledger_url)
    for p in raw["catalogue"]:
        if p["gtin"] == OXY:
            p["controlled_class"] = "II"
            p["supplier"] = "WHOLE"
        if p["gtin"] == FURO:
            p["licence"] = True
        if p["gtin"] == PARA2:
            p["stocked"] = False
    raw["stock"].append(
        {"gtin": OXY, "batch": "O-1", "expires_in_days": 300, "quantity": 500, "bin": "CENTRAL/A01"}
    )
    raw["wards"].append({"code": "ICU", "name": "Intensive care", "cost_centre": "4733"})
    raw["hospitals"] = [
        {"code": "H1", "name": "Central Hospital"},
        {"code": "H2", "name": "North Hospital"},
        {"code": "PRIV", "name": "Private clinic", "external": True},
    ]
    raw["ward_supply"] = {
        "runs": [
            {"code": "AM", "cutoff": "06:00", "departs": "07:30"},
            {"code": "PM", "cutoff": "12:00", "departs": "13:30"},
        ],
        "auto_receive_after_h": 6,
    }
    raw["drug_rooms"] = [
        {
            "code": "DR-MED",
            "hospital": "H1",
            "ward": "W1",
            "assortment": [
                {"gtin": PARA, "min": 1, "max": 3},
                {"gtin": METO, "min": 1, "max": 2},
                {"gtin": OXY, "min": 0, "max": 1},
            ],
        },
        {
            "code": "DR-ICU",
            "hospital": "H1",
            "ward": "ICU",
            "counted": True,
            "assortment": [{"gtin": PARA, "min": 1, "max": 2}],
        },
        {"code": "DR-N2", "hospital": "H2", "ward": "W2", "runs": ["AM"]},
        {"code": "DR-PRIV", "hospital": "PRIV", "ward": "W2"},
    ]
    return raw
