"""One rule for serial line addresses: the site file and the Modbus RTU driver refuse
the same addresses, with the same words."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, parse_site
from drivers.modbus_cabinet import ModbusRtuBus, check_serial_address
from drivers.serial_address import serial_address_problem
from tests.sites import site_dict

BAD = {
    "": "without spaces around it",
    " /dev/ttyUSB0": "without spaces around it",
    "tcp://127.0.0.1:502": "must be a serial device path (/dev/ttyUSB0) or a pyserial URL",
    "socket://gw": "must be socket://host:port",
    "rfc2217://:4001": "must be rfc2217://host:port",
    "socket://gw:port": "must be socket://host:port (",
    "socket://gw:99999": "must be socket://host:port (",
}
GOOD = ("/dev/ttyUSB0", "COM3", "socket://10.0.0.9:4001", "rfc2217://gw.ward:2217", "loop://")


def _rtu_site(address: str) -> dict[str, object]:
    raw = site_dict()
    raw["cabinets"][0].update(driver="modbus_rtu", address=address)
    return raw


@pytest.mark.parametrize(("address", "words"), BAD.items())
def test_a_bad_address_is_refused_with_the_same_text_by_site_file_and_driver(
    address: str, words: str
) -> None:
    problem = serial_address_problem(address)
    assert problem is not None and words in problem

    with pytest.raises(ConfigError) as by_config:
        parse_site(_rtu_site(address))
    with pytest.raises(ValueError) as by_driver:
        check_serial_address(address)
    with pytest.raises(ValueError) as by_bus:
        ModbusRtuBus(address)

    assert f"{address!r} {problem}" in str(by_config.value)
    assert f"{address!r}: {problem}" in str(by_driver.value)
    assert str(by_bus.value) == str(by_driver.value)


@pytest.mark.parametrize("address", GOOD)
def test_a_good_address_passes_site_file_and_driver(address: str) -> None:
    assert serial_address_problem(address) is None
    assert check_serial_address(address) == address
    site = parse_site(_rtu_site(address))
    assert site.cabinets[0].address == address
