"""The simulators' own reading of the site file (simulators/site_model.py).

- The demo site and the test sites parse, and the model holds what the file says.
- Every value of the wrong type is refused with its key path and the value.
- Keys the simulators do not use are ignored; absent knobs take their defaults.
- The plant built from the model has the machines the file describes.
"""

from __future__ import annotations

import copy
from datetime import date, time
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulators.cabinet_modbus import CabinetSimulator
from simulators.packer_opcua import PackerSimulator
from simulators.packer_physics import DEFAULT_OUTPUT_EMPTY_AFTER_S
from simulators.packer_serial import SerialPackerSimulator
from simulators.plant import Plant, _cabinet_spec
from simulators.site_model import PackerSim, SiteModel, SiteModelError
from tests.sites import METO, PARA, purchasing_site, site_dict, ward_site

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "demo.yaml"


def _demo_raw() -> dict[str, Any]:
    raw = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def test_the_demo_site_parses_to_what_the_file_says() -> None:
    raw = _demo_raw()
    site = SiteModel.load(DEMO)
    assert site.seed == raw["seed"]
    assert [p.name for p in site.packers] == [p["name"] for p in raw["packers"]]
    assert [p.driver for p in site.packers] == [p.get("driver", "opcua") for p in raw["packers"]]
    assert [c.name for c in site.cabinets] == [c["name"] for c in raw["cabinets"]]
    assert [s.address for s in site.scanners] == [s["address"] for s in raw["scanners"]]
    assert len(site.catalogue) == len(raw["catalogue"]) and len(site.stock) == len(raw["stock"])
    first = raw["packers"][0]
    assert site.packers[0].products == tuple(c["gtin"] for c in first["canisters"])
    assert site.packers[0].sim.speed_factor == first["sim"]["speed_factor"]
    assert site.verification.runs_bundled and site.verification.register_stock
    excursions = [e for c in site.cabinets for e in c.excursions]
    assert [(e.at, e.celsius, e.minutes) for e in excursions] == [(time(15, 0), 11.5, 40.0)]
    assert site.articles()[PARA] == next(
        p["article"] for p in raw["catalogue"] if p["gtin"] == PARA
    )


@pytest.mark.parametrize(
    "raw",
    [site_dict(), purchasing_site(verification_port=8099), ward_site()],
    ids=["site_dict", "purchasing_site", "ward_site"],
)
def test_the_test_sites_parse(raw: dict[str, Any]) -> None:
    site = SiteModel.from_site(raw)
    assert len(site.packers) == len(raw.get("packers", []))
    assert len(site.cabinets) == len(raw.get("cabinets", []))
    for cabinet, raw_cabinet in zip(site.cabinets, raw.get("cabinets", []), strict=True):
        assert [(p.number, p.gtin, p.min, p.max) for p in cabinet.pockets] == [
            (p["number"], p["gtin"], p["min"], p["max"]) for p in raw_cabinet["pockets"]
        ]
    assert site.verification.enabled == bool((raw.get("verification") or {}).get("enabled"))


def _set(raw: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of `raw` with the value at a dotted path (list indexes as numbers) set."""
    raw = copy.deepcopy(raw)
    *parents, last = path.split(".")
    node: Any = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


BAD = [
    ("packers.0.canisters.1.gtin", 12, "packers[0].canisters[1].gtin: expected text, got 12"),
    (
        "packers.0.canisters.1.capacity",
        "200",
        "packers[0].canisters[1].capacity: expected a whole number, got '200'",
    ),
    ("packers.0.canisters", "all", "packers[0].canisters: expected a list, got 'all'"),
    ("packers.0.name", None, "packers[0].name: expected text, got None"),
    (
        "packers.0.pouches_per_minute",
        "fast",
        "packers[0].pouches_per_minute: expected a number, got 'fast'",
    ),
    (
        "packers.0.sim",
        {"reject_rate": True},
        "packers[0].sim.reject_rate: expected a number, got True",
    ),
    ("packers.0.sim", [], "packers[0].sim: expected a mapping, got []"),
    (
        "packers.0.driver",
        "opcua30050",
        "packers[0].driver: expected one of 'opcua', 'opcua_legacy', 'serial', got 'opcua30050'",
    ),
    (
        "cabinets.0.pockets.1.min",
        4.5,
        "cabinets[0].pockets[1].min: expected a whole number, got 4.5",
    ),
    (
        "cabinets.0.pockets.0.gtin",
        "0735999000001X",
        "cabinets[0].pockets[0].gtin: expected a GTIN of up to 14 digits, got '0735999000001X'",
    ),
    (
        "cabinets.0.pockets.0.sim",
        {"initial": "12"},
        "cabinets[0].pockets[0].sim.initial: expected a whole number, got '12'",
    ),
    ("cabinets.0.cold", "yes", "cabinets[0].cold: expected true or false, got 'yes'"),
    ("cabinets.0.unit_id", None, "cabinets[0].unit_id: expected a whole number, got None"),
    ("cabinets.0.address", 502, "cabinets[0].address: expected text, got 502"),
    (
        "cabinets.0.driver",
        "modbus_ascii",
        "cabinets[0].driver: expected one of 'modbus_tcp', 'modbus_rtu', 'modbus_tls',"
        " 'hl7_mllp', got 'modbus_ascii'",
    ),
    (
        "cabinets.0.sim",
        {"excursions": [{"at": 930, "celsius": 11.5}]},
        "cabinets[0].sim.excursions[0].at: expected text, got 930",
    ),
    (
        "cabinets.0.sim",
        {"excursions": [{"at": "25:99", "celsius": 11.5}]},
        "cabinets[0].sim.excursions[0].at: expected a time of day (HH:MM), got '25:99'",
    ),
    (
        "cabinets.0.sim",
        {"excursions": [{"at": "15:00", "celsius": "warm"}]},
        "cabinets[0].sim.excursions[0].celsius: expected a number, got 'warm'",
    ),
    ("scanners.0", "SC1", "scanners[0]: expected a mapping, got 'SC1'"),
    ("scanners.0.address", None, "scanners[0].address: expected text, got None"),
    (
        "catalogue.2.article",
        "100003",
        "catalogue[2].article: expected a whole number, got '100003'",
    ),
    ("catalogue.2.pack_size", 1.5, "catalogue[2].pack_size: expected a whole number, got 1.5"),
    ("stock.0.quantity", "500", "stock[0].quantity: expected a whole number, got '500'"),
    ("stock.0.batch", 4711, "stock[0].batch: expected text, got 4711"),
    ("stock.0.expiry", "soon", "stock[0].expiry: expected a date (YYYY-MM-DD), got 'soon'"),
    ("verification", {"enabled": "yes"}, "verification.enabled: expected true or false, got 'yes'"),
    ("verification", {"url": 8090}, "verification.url: expected text, got 8090"),
    (
        "verification",
        {"enabled": True, "sim": {"register_stock": 1}},
        "verification.sim.register_stock: expected true or false, got 1",
    ),
    ("verification", {"sim": "bundled"}, "verification.sim: expected a mapping, got 'bundled'"),
    ("seed", "7", "seed: expected a whole number, got '7'"),
    ("packers", {"PK1": {}}, "packers: expected a list, got {'PK1': {}}"),
    (
        "cabinets.0.pockets.0.gtin",
        "07359990000051",
        "cabinets[0].pockets[0].gtin: '07359990000051' is not in the catalogue",
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_named_by_path_and_value(path: str, value: object, message: str) -> None:
    with pytest.raises(SiteModelError) as err:
        SiteModel.from_site(_set(site_dict(), path, value))
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("packers.0.name", "packers[0].name: missing, expected text"),
        (
            "cabinets.0.pockets.1.max",
            "cabinets[0].pockets[1].max: missing, expected a whole number",
        ),
        ("catalogue.0.article", "catalogue[0].article: missing, expected a whole number"),
    ],
)
def test_a_missing_required_key_is_named(path: str, message: str) -> None:
    raw = copy.deepcopy(site_dict())
    *parents, last = path.split(".")
    node: Any = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]
    with pytest.raises(SiteModelError) as err:
        SiteModel.from_site(raw)
    assert str(err.value) == message


def test_a_site_file_that_is_no_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SiteModelError, match=r"the site file: expected a mapping, got \[\]"):
        SiteModel.from_site([])  # type: ignore[arg-type]
    path = tmp_path / "site.yaml"
    path.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(SiteModelError, match="expected a mapping of site keys"):
        SiteModel.load(path)


def test_unknown_keys_are_ignored() -> None:
    raw = site_dict()
    noisy = _set(raw, "packers.0.colour", "red")
    noisy = _set(noisy, "cabinets.0.pockets.0.sim.colour", "blue")
    noisy["tomorrow"] = {"anything": [1, 2]}
    assert SiteModel.from_site(noisy) == SiteModel.from_site(raw)


def test_absent_knobs_take_their_defaults() -> None:
    site = SiteModel.from_site(site_dict())
    packer, cabinet = site.packers[0], site.cabinets[0]
    assert packer.driver == "opcua" and packer.sim == PackerSim()
    assert packer.sim.output_empty_after_s == DEFAULT_OUTPUT_EMPTY_AFTER_S
    assert (cabinet.driver, cabinet.cold, cabinet.excursions) == ("modbus_tcp", False, ())
    assert cabinet.pockets[1].sim.initial == 8 and cabinet.pockets[1].sim.daily_withdrawals == 0
    assert site.seed == 0 and not site.verification.runs_bundled
    assert site.stock[0].expiry is None and site.stock[0].expires_in_days == 400


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, None), (12, 12.0)])
def test_a_tray_emptied_only_by_hand_is_null_or_zero(value: object, expected: float | None) -> None:
    raw = _set(site_dict(), "packers.0.sim", {"output_empty_after_s": value})
    assert SiteModel.from_site(raw).packers[0].sim.output_empty_after_s == expected


def test_an_expiry_may_be_a_yaml_date_or_text() -> None:
    raw = _set(site_dict(), "stock.0.expiry", date(2031, 5, 1))
    raw = _set(raw, "stock.1.expiry", "2031-06-01")
    site = SiteModel.from_site(raw)
    assert (site.stock[0].expiry, site.stock[1].expiry) == (date(2031, 5, 1), date(2031, 6, 1))


def test_the_plant_from_the_demo_model_has_the_machines_of_the_file() -> None:
    raw = _demo_raw()
    plant = Plant(SiteModel.load(DEMO), day_seconds=600, free_ports=True)

    kinds = {
        "serial": SerialPackerSimulator,
        "opcua": PackerSimulator,
        "opcua_legacy": PackerSimulator,
    }
    for sim, p in zip(plant.packers, raw["packers"], strict=True):
        assert isinstance(sim, kinds[p.get("driver", "opcua")]) and sim.name == p["name"]
        assert sim.pouches_per_minute == p.get("pouches_per_minute", 60)
        assert sim.speed_factor == p["sim"]["speed_factor"]
        assert sim.reject_rate == p["sim"]["reject_rate"]

    hl7 = {c["name"] for c in raw["cabinets"] if c.get("driver") == "hl7_mllp"}
    assert set(plant.hl7_cabinets) == hl7
    modbus = [c for c in raw["cabinets"] if c["name"] not in hl7]
    assert set(plant.cabinet_sims) == {c["name"] for c in modbus}
    # cabinets on one RTU line share one simulator; every TCP cabinet has its own
    lines = {c["address"] if c.get("driver") == "modbus_rtu" else c["name"] for c in modbus}
    assert len(plant.cabinets) == len(lines)
    for c in modbus:
        line, unit = plant.cabinet_sims[c["name"]]
        assert isinstance(line, CabinetSimulator) and unit == c.get("unit_id", 1)
        first = c["pockets"][0]
        assert line.pocket(unit, first["number"]).count == first.get("sim", {}).get("initial", 0)

    assert plant.scanner_names == [s["name"] for s in raw["scanners"]]
    assert [(unit, e.celsius) for _, unit, e in plant.excursions] == [
        (c.get("unit_id", 1), e["celsius"])
        for c in modbus
        for e in c.get("sim", {}).get("excursions", [])
    ]

    # one serial per pack of every opening lot, as the manufacturers uploaded them
    sizes = {p["gtin"]: p.get("pack_size", 100) for p in raw["catalogue"]}
    packs = sum(-(-lot["quantity"] // sizes[lot["gtin"]]) for lot in raw["stock"])
    assert plant.verification is not None and len(plant.verification.packs) == packs


def test_a_modbus_pocket_reports_the_catalogue_article() -> None:
    site = SiteModel.from_site(site_dict())
    spec = _cabinet_spec(site.cabinets[0], site.articles())
    assert [(p.number, p.article, p.count, p.capacity) for p in spec.pockets] == [
        (1, 100001, 12, 20),
        (2, 100002, 8, 10),
    ]
    assert site.cabinets[0].products == (PARA, METO)
