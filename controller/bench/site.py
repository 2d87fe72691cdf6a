"""The sites the bench runs: N packers or M cabinets, and the matching fleet spec.

Why generated: a measurement of "50 packers" or "500 cabinets" needs a site file that
size, and the controller reads nothing else. The site is validated like any site file
(`parse_site`), so the bench runs the code a real site runs. The fleet spec tells
`simulators.fleet` which simulators to start for it.
"""

from __future__ import annotations

import tempfile
from datetime import date, time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from controller.config import Site, parse_site
from controller.packing.planner import PlannedJob, PlannedPouch

# (gtin, article, name) from the demo catalogue: valid GTINs.
PRODUCTS = (
    ("07359990000013", 100007, "Paracetamol 500 mg tablet"),
    ("07359990000020", 100014, "Metoprolol 50 mg prolonged-release tablet"),
    ("07359990000037", 100021, "Furosemide 40 mg tablet"),
    ("07359990000044", 100028, "Apixaban 5 mg tablet"),
    ("07359990000051", 100035, "Atorvastatin 20 mg tablet"),
    ("07359990000068", 100042, "Omeprazole 20 mg capsule"),
    ("07359990000075", 100049, "Enalapril 10 mg tablet"),
    ("07359990000082", 100056, "Metformin 500 mg tablet"),
)
STORE_BIN = "CENTRAL/A01"
PPM = 60.0  # pouches per minute: the common machine speed
CANISTERS = 3  # products per packer
CANISTER_UNITS = 200_000  # what each canister holds at the start (no refill in a run)
POUCH_ITEMS = ((0, 1), (1, 1), (2, 2))  # (product index, tablets): four tablets a pouch
JOB_POUCHES = 60  # one ward's administration time
POCKETS = 8  # pockets per cabinet, as the demo's cabinets
POCKET_START = 30
POCKET_MIN, POCKET_MAX = 5, 40
# A busy ward: a nurse takes a dose from each pocket every half hour, in real time.
DAILY_WITHDRAWALS = 48.0
CABINETS_PER_GATEWAY = 50


def _catalogue() -> list[dict[str, Any]]:
    return [
        {
            "gtin": gtin,
            "article": article,
            "name": name,
            "substance": name.split()[0].lower(),
            "atc": "N02BE01",
            "strength": "1 unit",
            "unit_price": "1.00",
        }
        for gtin, article, name in PRODUCTS
    ]


def _base(ledger_url: str) -> dict[str, Any]:
    return {
        "site": {"name": "doseline bench", "timezone": "Europe/Stockholm"},
        "ledger": {"url": ledger_url, "min_shelf_life_days": 30},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "catalogue": _catalogue(),
        "store": {"code": "CENTRAL", "bins": [STORE_BIN]},
    }


def packer_name(i: int) -> str:
    return f"PACKER-{i + 1:03d}"


def cabinet_name(i: int) -> str:
    return f"CAB-{i + 1:04d}"


def address_space_cache() -> str:
    """The shelf of the OPC UA standard address space, kept between bench runs."""
    folder = Path(tempfile.gettempdir()) / "doseline-bench"
    return str(folder / f"ua-address-space-{version('asyncua')}")


def packer_fleet(n: int) -> dict[str, Any]:
    return {
        "address_space_cache": address_space_cache(),
        "packers": [
            {
                "name": packer_name(i),
                "ppm": PPM,
                "seed": i,
                "canisters": [
                    [c + 1, PRODUCTS[c][0], CANISTER_UNITS, CANISTER_UNITS]
                    for c in range(CANISTERS)
                ],
            }
            for i in range(n)
        ],
    }


def packer_site(ledger_url: str, endpoints: dict[str, str]) -> Site:
    raw = _base(ledger_url)
    raw["packers"] = [
        {
            "name": name,
            "address": endpoint,
            "pouches_per_minute": PPM,
            "canisters": [
                {"number": c + 1, "gtin": PRODUCTS[c][0], "capacity": CANISTER_UNITS}
                for c in range(CANISTERS)
            ],
        }
        for name, endpoint in endpoints.items()
    ]
    return parse_site(raw, source="<bench packers>")


def job(packer: str, number: int, pouches: int) -> PlannedJob:
    """A job for one packer: `pouches` patients with four tablets each."""
    return PlannedJob(
        job_id=f"BENCH-{packer}-{number:04d}",
        ward="BENCH",
        day=date.today(),
        time=time(8, 0),
        pouches=tuple(
            PlannedPouch(
                sequence=s + 1,
                patient=f"patient-{s + 1:03d}",
                items=tuple((PRODUCTS[p][0], units) for p, units in POUCH_ITEMS),
            )
            for s in range(pouches)
        ),
        packers=(packer,),
    )


def gateways(m: int) -> list[list[int]]:
    """Cabinet indexes per gateway: CABINETS_PER_GATEWAY each (unit ids 1..247)."""
    return [
        list(range(start, min(start + CABINETS_PER_GATEWAY, m)))
        for start in range(0, m, CABINETS_PER_GATEWAY)
    ]


def cabinet_fleet(m: int) -> dict[str, Any]:
    return {
        "gateways": [
            {
                "seed": g,
                "time_factor": 1.0,
                "tick": 0.25,
                "cabinets": [
                    {
                        "unit": unit + 1,
                        "pockets": [
                            {
                                "number": p + 1,
                                "article": PRODUCTS[p][1],
                                "count": POCKET_START,
                                "min_level": POCKET_MIN,
                                "max_level": POCKET_MAX,
                                "capacity": POCKET_MAX,
                                "daily_withdrawals": DAILY_WITHDRAWALS,
                            }
                            for p in range(POCKETS)
                        ],
                    }
                    for unit, _cabinet in enumerate(members)
                ],
            }
            for g, members in enumerate(gateways(m))
        ]
    }


def cabinet_site(ledger_url: str, m: int, addresses: list[str]) -> Site:
    raw = _base(ledger_url)
    raw["cabinets"] = [
        {
            "name": cabinet_name(i),
            "ward": f"WARD-{i + 1:04d}",
            "address": addresses[g],
            "unit_id": unit + 1,
            "poll_interval_s": 1.0,
            "pockets": [
                {
                    "number": p + 1,
                    "gtin": PRODUCTS[p][0],
                    "min": POCKET_MIN,
                    "max": POCKET_MAX,
                }
                for p in range(POCKETS)
            ],
        }
        for g, members in enumerate(gateways(m))
        for unit, i in enumerate(members)
    ]
    return parse_site(raw, source="<bench cabinets>")
