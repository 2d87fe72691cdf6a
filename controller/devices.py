"""Builds drivers from the site file: the one place that maps a `driver:` name to code."""

from __future__ import annotations

from controller.config import Cabinet, Packer, Scanner
from drivers.base import CabinetDriver, PackerDriver, ScannerDriver


def packer_driver(config: Packer) -> PackerDriver:
    if config.driver == "serial":
        from drivers.serial_packer import SerialPackerDriver

        return SerialPackerDriver(config.name, config.address, baudrate=config.baudrate)
    from drivers.opcua_packer import OpcUaPackerDriver

    return OpcUaPackerDriver(config.name, config.address)


def cabinet_driver(config: Cabinet) -> CabinetDriver:
    from drivers.modbus_cabinet import ModbusCabinetDriver

    return ModbusCabinetDriver(
        config.name, config.address, unit_id=config.unit_id, pocket_count=len(config.pockets)
    )


def scanner_driver(config: Scanner) -> ScannerDriver:
    from drivers.serial_scanner import SerialScannerDriver

    return SerialScannerDriver(config.name, config.address, baudrate=config.baudrate)
