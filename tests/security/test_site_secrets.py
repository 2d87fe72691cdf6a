"""The site file's security sections: secrets are never accepted inline, and a bad
policy, mode or combination is named with its field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import ConfigError, load_site, parse_site
from controller.devices import BusRegistry, cabinet_driver, packer_driver
from drivers.modbus_cabinet import ModbusCabinetDriver, ModbusTlsBus, TlsFiles
from drivers.opcua_packer import OpcUaPackerDriver, OpcUaSecurity
from tests.sites import site_dict

SECURITY: dict[str, Any] = {
    "policy": "Basic256Sha256",
    "mode": "SignAndEncrypt",
    "certificate": "/etc/doseline/pki/own/controller.der",
    "private_key": "/etc/doseline/pki/own/controller.pem",
    "server_certificate": "/etc/doseline/pki/trusted/PK1.der",
    "user": "doseline",
    "password_env": "DOSELINE_PK1_PASSWORD",
}
TLS = {
    "ca_file": "/etc/doseline/pki/cabinets-ca.pem",
    "cert_file": "/etc/doseline/pki/controller.crt",
    "key_file": "/etc/doseline/pki/controller.key",
}


def secured(**changes: Any) -> dict[str, Any]:
    raw = site_dict()
    security = {**SECURITY, **changes}
    raw["packers"][0]["security"] = {k: v for k, v in security.items() if v is not None}
    return raw


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_site(raw)
    return str(info.value)


def test_a_secured_packer_and_a_tls_cabinet_are_accepted_and_wired() -> None:
    raw = secured()
    raw["cabinets"][0].update(driver="modbus_tls", address="tcp://cab1.ward.example", tls=TLS)
    site = parse_site(raw)

    driver = packer_driver(site.packers[0])
    assert isinstance(driver, OpcUaPackerDriver)
    assert driver.security == OpcUaSecurity(**SECURITY)
    cabinet = cabinet_driver(site.cabinets[0], BusRegistry())
    assert isinstance(cabinet, ModbusCabinetDriver)
    bus = cabinet.bus
    assert isinstance(bus, ModbusTlsBus)
    assert (bus.host, bus.port) == ("cab1.ward.example", 802)  # Modbus/TCP Security's port
    assert bus.tls == TlsFiles(**TLS)


def test_an_inline_opcua_password_is_refused_with_its_field() -> None:
    text = refused(secured(password="hunter2", password_env=None))
    assert "packers.0.security: Value error, security.password: a password is never" in text
    assert "password_env" in text and "password_file" in text
    assert "hunter2" not in text  # the secret itself is not echoed


def test_an_inline_password_beside_the_packer_is_refused_too() -> None:
    raw = site_dict()
    raw["packers"][0]["password"] = "hunter2"
    text = refused(raw)
    assert "packers.0: Value error, password: a password is never written" in text
    assert "hunter2" not in text


@pytest.mark.parametrize("key", ["tokens", "token", "bearer_tokens"])
def test_api_tokens_are_never_accepted_inline(key: str) -> None:
    """ApiConfig takes tokens_file or tokens_env only; anything else is named."""
    raw = site_dict()
    raw["api"] = {"enabled": True, key: ["0123abcd pharmacist:anna pharmacist"]}
    text = refused(raw)
    assert f"api.{key}: Extra inputs are not permitted (value not shown)" in text
    assert "0123abcd" not in text  # a misspelt key may hold a secret: never echoed


def test_inline_secrets_in_a_yaml_file_are_refused(tmp_path: Path) -> None:
    raw = secured(password="hunter2", password_env=None)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"packers\.0\.security: .*security\.password"):
        load_site(path)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"policy": "None"}, "security.policy: 'None' gives no security"),
        ({"policy": "Basic256"}, "security.policy: 'Basic256' is deprecated"),
        ({"policy": "Basic128Rsa15"}, "security.policy: 'Basic128Rsa15' is deprecated"),
        ({"policy": "Basic512"}, "security.policy: 'Basic512' is not one of Basic256Sha256"),
        ({"mode": "None"}, "security.mode: 'None' gives no security"),
        ({"mode": "Encrypt"}, "security.mode: 'Encrypt' is not one of Sign, SignAndEncrypt"),
        ({"password_env": None}, "security.user: 'doseline' needs password_env or password_file"),
        ({"user": None}, "security.user: a password_env or password_file needs a user"),
        (
            {"password_file": "/run/secrets/pk1"},
            "security.password_file: '/run/secrets/pk1': give password_env or password_file,"
            " not both",
        ),
        ({"password_env": "not a variable"}, "security.password_env: String should match"),
        ({"certificate": None}, "security.certificate: Field required"),
        ({"server_certificate": None}, "security.server_certificate: Field required"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_bad_security_settings_name_the_field_and_value(
    changes: dict[str, Any], expected: str
) -> None:
    text = refused(secured(**changes))
    assert "packers.0.security" in text
    assert expected in text
    for value in changes.values():
        if value is not None:
            assert repr(value) in text or value in text


def test_security_is_only_for_opcua_packers() -> None:
    raw = secured()
    raw["packers"][0].update(driver="serial", address="socket://127.0.0.1:1")
    assert "packer PK1: security: only for driver opcua, not 'serial'" in refused(raw)


def test_tls_settings_of_cabinets_are_checked() -> None:
    raw = site_dict()
    raw["cabinets"][0]["driver"] = "modbus_tls"
    assert "cabinet CAB1: tls: driver modbus_tls needs tls" in refused(raw)

    raw = site_dict()
    raw["cabinets"][0]["tls"] = TLS
    assert "cabinet CAB1: tls: only for driver modbus_tls, not 'modbus_tcp'" in refused(raw)

    raw = site_dict()
    raw["cabinets"][0].update(driver="modbus_tls", address="socket://127.0.0.1:1", tls=TLS)
    assert "must be a tcp://host:port URL for driver modbus_tls" in refused(raw)

    raw = site_dict()
    raw["cabinets"][0].update(driver="modbus_tls", tls={**TLS, "key_file": ""})
    assert "cabinets.0.tls.key_file: String should have at least 1 character" in refused(raw)

    # Two cabinets behind one TLS gateway share its connection, so also its certificates.
    raw = site_dict()
    first = raw["cabinets"][0]
    first.update(driver="modbus_tls", tls=TLS)
    second = {**first, "name": "CAB2", "unit_id": 2, "tls": {**TLS, "cert_file": "/other.crt"}}
    raw["cabinets"].append(second)
    assert (
        "cabinets.CAB2.tls: differs from the tls of cabinet CAB1 on the same connection"
        in refused(raw)
    )
