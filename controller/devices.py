"""Builds drivers from the site file: the one place that maps a `driver:` name to code."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from controller.config import Cabinet, Packer, Scanner
from drivers.base import CabinetDriver, PackerDriver, ScannerDriver

if TYPE_CHECKING:
    from drivers.modbus_cabinet import ModbusBus


def packer_driver(config: Packer) -> PackerDriver:
    if config.driver == "serial":
        from drivers.serial_packer import SerialPackerDriver

        return SerialPackerDriver(config.name, config.address, baudrate=config.baudrate)
    from drivers.opcua_packer import OpcUaPackerDriver, OpcUaSecurity

    security = None
    if config.security is not None:
        sec = config.security
        security = OpcUaSecurity(
            policy=sec.policy,
            mode=sec.mode,
            certificate=sec.certificate,
            private_key=sec.private_key,
            server_certificate=sec.server_certificate,
            user=sec.user,
            password_env=sec.password_env,
            password_file=sec.password_file,
        )
    if config.driver == "opcua_legacy":
        from drivers.opcua_packer_legacy import LegacyOpcUaPackerDriver

        return LegacyOpcUaPackerDriver(config.name, config.address, security=security)
    return OpcUaPackerDriver(config.name, config.address, security=security)


class BusRegistry:
    """One Modbus bus per (driver, address), shared by every cabinet driver on it.

    Cabinets on one RTU line must share one bus: the port opens exclusively, and only
    one object can keep the line's request/reply turns and inter-frame silence. Cabinets
    behind one TCP gateway share its connection the same way. A bus closes its
    connection when the last cabinet driver using it closes, and opens it again on
    the next use, so the registry itself holds nothing that needs closing.
    """

    def __init__(self) -> None:
        self._buses: dict[tuple[str, str], ModbusBus] = {}

    def bus(self, config: Cabinet) -> ModbusBus:
        from drivers.modbus_cabinet import ModbusRtuBus, ModbusTcpBus, ModbusTlsBus, TlsFiles

        key = (config.driver, config.address)
        bus = self._buses.get(key)
        tls = None
        if config.tls is not None:
            tls = TlsFiles(config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
        if bus is None:
            if config.driver == "modbus_rtu":
                bus = ModbusRtuBus(config.address, baudrate=config.baudrate)
            elif config.driver == "modbus_tls":
                if tls is None:
                    raise ValueError(f"cabinet {config.name}: driver modbus_tls needs tls")
                bus = ModbusTlsBus(config.address, tls)
            else:
                bus = ModbusTcpBus(config.address)
            self._buses[key] = bus
        elif isinstance(bus, ModbusRtuBus) and bus.baudrate != config.baudrate:
            # The site validator refuses this; a registry fed by hand must not either.
            raise ValueError(
                f"cabinet {config.name}: baudrate {config.baudrate} differs from"
                f" {bus.baudrate} already used on {config.address}"
            )
        elif isinstance(bus, ModbusTlsBus) and bus.tls != tls:
            raise ValueError(
                f"cabinet {config.name}: tls differs from the one already used on {config.address}"
            )
        return bus

    def __len__(self) -> int:
        return len(self._buses)


def cabinet_driver(config: Cabinet, buses: BusRegistry | None = None) -> CabinetDriver:
    """The driver of one cabinet. Pass the controller's one `buses` registry so that
    cabinets on the same line or gateway share a bus; without it the cabinet gets a bus
    of its own (fine for one Modbus TCP cabinet, wrong for a shared RTU line)."""
    if config.driver == "hl7_mllp":
        return hl7_cabinet_driver(config)
    from drivers.modbus_cabinet import ModbusCabinetDriver

    bus = (buses if buses is not None else BusRegistry()).bus(config)
    return ModbusCabinetDriver(
        config.name,
        config.address,
        unit_id=config.unit_id,
        pocket_count=len(config.pockets),
        timeout=bus.timeout,
        bus=bus,
    )


def hl7_cabinet_driver(config: Cabinet) -> CabinetDriver:
    """A cabinet behind a vendor's cabinet server (HL7 v2 over MLLP)."""
    from drivers.hl7_cabinet import Hl7CabinetDriver
    from drivers.modbus_cabinet import TlsFiles

    tls = None
    if config.tls is not None:
        tls = TlsFiles(config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
    return Hl7CabinetDriver(
        config.name,
        config.address,
        cabinet_id=config.name,
        pocket_gtins={p.number: p.gtin for p in config.pockets},
        tls=tls,
        snapshot_timeout=max(10.0, 5 * config.poll_interval_s),
    )


def cabinet_drivers(cabinets: Iterable[Cabinet]) -> dict[str, CabinetDriver]:
    """Drivers for all of a site's cabinets by name, over one shared bus registry."""
    buses = BusRegistry()
    return {c.name: cabinet_driver(c, buses) for c in cabinets}


def scanner_driver(config: Scanner) -> ScannerDriver:
    from drivers.serial_scanner import SerialScannerDriver

    return SerialScannerDriver(config.name, config.address, baudrate=config.baudrate)
