"""The site file's `driver:` for an OPC UA packer picks the address-space model."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, parse_site
from controller.devices import packer_driver
from drivers.opcua_packer import OpcUaPackerDriver
from drivers.opcua_packer_legacy import LegacyOpcUaPackerDriver
from tests.sites import site_dict

SECURITY = {
    "policy": "Basic256Sha256",
    "mode": "SignAndEncrypt",
    "certificate": "pki/controller.der",
    "private_key": "pki/controller.pem",
    "server_certificate": "pki/packer.der",
}


def test_opcua_is_opc_30050_and_the_default() -> None:
    raw = site_dict(packer_address="opc.tcp://127.0.0.1:4840/")
    packer = parse_site(raw).packers[0]
    assert packer.driver == "opcua"
    driver = packer_driver(packer)
    assert type(driver) is OpcUaPackerDriver


def test_opcua_legacy_gets_the_legacy_driver_with_the_same_fields() -> None:
    raw = site_dict(packer_address="opc.tcp://127.0.0.1:4840/")
    raw["packers"][0]["driver"] = "opcua_legacy"
    raw["packers"][0]["security"] = SECURITY
    packer = parse_site(raw).packers[0]
    driver = packer_driver(packer)
    assert type(driver) is LegacyOpcUaPackerDriver
    assert (driver.name, driver.address) == (packer.name, "opc.tcp://127.0.0.1:4840/")
    assert driver.security is not None and driver.security.mode == "SignAndEncrypt"


def test_opcua_legacy_needs_an_opc_tcp_address() -> None:
    raw = site_dict(packer_address="socket://127.0.0.1:7010")
    raw["packers"][0]["driver"] = "opcua_legacy"
    with pytest.raises(ConfigError, match=r"address 'socket://127.0.0.1:7010' must be an opc"):
        parse_site(raw)


def test_an_unknown_driver_is_named() -> None:
    raw = site_dict()
    raw["packers"][0]["driver"] = "opcua30050"
    with pytest.raises(ConfigError, match=r"packers\.0\.driver") as info:
        parse_site(raw)
    assert "opcua_legacy" in str(info.value)


@pytest.mark.parametrize(("driver", "model"), [("opcua", "opc30050"), ("opcua_legacy", "legacy")])
def test_the_plant_gives_each_packer_the_model_its_driver_speaks(driver: str, model: str) -> None:
    from simulators.packer_opcua import PackerSimulator
    from simulators.plant import _packer
    from simulators.site_model import PackerSite

    raw = site_dict(packer_address="opc.tcp://127.0.0.1:4840/")["packers"][0]
    raw["driver"] = driver
    sim = _packer(PackerSite.from_site(raw), seed=1, free_ports=True)
    assert isinstance(sim, PackerSimulator) and sim.model == model
