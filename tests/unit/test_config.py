"""Site file validation: every error names the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ConfigError, gs1_check_digit, load_site, parse_site
from tests.sites import PARA, site_dict

REPO = Path(__file__).resolve().parents[2]


def test_demo_site_is_valid() -> None:
    site = load_site(REPO / "config" / "demo.yaml")
    assert len(site.packers) >= 2 and len(site.cabinets) >= 3 and len(site.scanners) >= 1
    assert site.demo is not None and site.demo.patients >= 50
    assert len(site.demo.administration_times) >= 4
    for product in site.catalogue:
        assert gs1_check_digit(product.gtin[:-1]) == int(product.gtin[-1])
    batches_per_product: dict[str, set[object]] = {}
    for lot in site.stock:
        batches_per_product.setdefault(lot.gtin, set()).add(lot.expires_in_days)
    assert all(len(expiries) >= 2 for expiries in batches_per_product.values())
    # a product the store does not keep has no opening stock (ward lines order it)
    not_kept = {p.gtin for p in site.catalogue if not p.stocked}
    assert not_kept and not_kept.isdisjoint(batches_per_product)


def test_bad_check_digit_is_named() -> None:
    raw = site_dict()
    raw["catalogue"][0]["gtin"] = PARA[:-1] + "9"
    with pytest.raises(ConfigError, match=r"catalogue\.0\.gtin.*check digit 9, expected 3"):
        parse_site(raw)


def test_unknown_product_in_pocket_is_named() -> None:
    raw = site_dict()
    raw["cabinets"][0]["pockets"][0]["gtin"] = "07359990000051"
    with pytest.raises(ConfigError, match=r"pocket 1\.gtin: '07359990000051' is not in the cat"):
        parse_site(raw)


def test_bad_address_and_levels_are_named() -> None:
    raw = site_dict(packer_address="http://x")
    raw["cabinets"][0]["pockets"][0]["min"] = 30
    with pytest.raises(ConfigError) as info:
        parse_site(raw)
    text = str(info.value)
    assert "packers.0" in text and "address 'http://x' must be an opc.tcp:// URL" in text
    assert "min 30 must be below max 20" in text


def test_unknown_key_is_refused() -> None:
    raw = site_dict()
    raw["ledger"]["ulr"] = "sqlite://"
    with pytest.raises(ConfigError, match=r"ledger\.ulr"):
        parse_site(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read site file"):
        load_site(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site(bad)


def test_serial_packer_needs_a_serial_address() -> None:
    raw = site_dict(packer_address="opc.tcp://127.0.0.1:4840/")
    raw["packers"][0]["driver"] = "serial"
    with pytest.raises(ConfigError, match="must be a serial port or pyserial URL"):
        parse_site(raw)
    raw["packers"][0]["address"] = "socket://127.0.0.1:7010"
    assert parse_site(raw).packers[0].driver == "serial"


def test_a_deployment_overrides_the_ledger_and_listen_addresses_from_the_environment() -> None:
    demo = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
    site = load_site(
        demo,
        environ={
            "DOSELINE_LEDGER_URL": "postgresql://doseline@postgres:5432/doseline",
            "DOSELINE_METRICS_HOST": "0.0.0.0",
            "DOSELINE_METRICS_PORT": "9400",
            "DOSELINE_API_ENABLED": "true",
        },
    )
    assert site.ledger.url == "postgresql://doseline@postgres:5432/doseline"
    assert (site.metrics.host, site.metrics.port, site.api.enabled) == ("0.0.0.0", 9400, True)
    assert load_site(demo, environ={}).metrics.port == 0  # the file's own value
    with pytest.raises(ConfigError, match=r"metrics\.port.*'lots'"):
        load_site(demo, environ={"DOSELINE_METRICS_PORT": "lots"})
