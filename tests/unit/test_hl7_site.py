"""Site-file rules and wiring of cabinets behind a cabinet server (driver hl7_mllp)."""

from __future__ import annotations

import pytest

from controller.app import Controller
from controller.cabinets.hl7_listener import Hl7CabinetListener
from controller.cabinets.poller import CabinetPoller
from controller.config import ConfigError, parse_site
from controller.devices import cabinet_drivers
from drivers.hl7_cabinet import Hl7CabinetDriver
from drivers.modbus_cabinet import ModbusCabinetDriver
from tests.sites import METO, site_dict


def two_cabinets(address: str) -> dict[str, object]:
    raw = site_dict()
    raw["packers"], raw["scanners"] = [], []
    first = raw["cabinets"][0]
    first.update(driver="hl7_mllp", address="mllp://127.0.0.1:2575")
    raw["cabinets"].append(
        {
            "name": "CAB2",
            "ward": "W2",
            "driver": "hl7_mllp",
            "address": address,
            "pockets": [{"number": 1, "gtin": METO, "min": 2, "max": 9}],
        }
    )
    return raw


def test_two_cabinets_on_one_cabinet_server_address_are_refused() -> None:
    with pytest.raises((ConfigError, ValueError), match=r"cabinets\.CAB2\.address: .* serves one"):
        parse_site(two_cabinets("mllp://127.0.0.1:2575"))
    parse_site(two_cabinets("mllp://127.0.0.1:2576"))


@pytest.mark.parametrize(
    "address", ["mllp://127.0.0.1", "mllp://:2575", "tcp://127.0.0.1:2575", "mllp://h:port"]
)
def test_a_cabinet_server_address_must_be_mllp_host_port(address: str) -> None:
    with pytest.raises((ConfigError, ValueError), match="must be mllp://host:port"):
        parse_site(two_cabinets(address))


def test_the_controller_listens_to_hl7_cabinets_and_polls_the_others() -> None:
    raw = two_cabinets("mllp://127.0.0.1:2576")
    raw["cabinets"].append({**site_dict()["cabinets"][0], "name": "CAB3"})
    site = parse_site(raw)
    drivers = cabinet_drivers(site.cabinets)
    assert isinstance(drivers["CAB2"], Hl7CabinetDriver)
    assert drivers["CAB2"].pocket_gtins == {1: METO}
    assert isinstance(drivers["CAB3"], ModbusCabinetDriver)
    controller = Controller(site, ledger_url="sqlite://")
    try:
        assert isinstance(controller.pollers["CAB2"], Hl7CabinetListener)
        assert type(controller.pollers["CAB3"]) is CabinetPoller
        listener = controller.pollers["CAB2"]
        assert isinstance(listener, Hl7CabinetListener)
        assert {item.gtin for item in listener.catalogue} == {p.gtin for p in site.catalogue}
    finally:
        controller.close()
