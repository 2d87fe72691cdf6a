"""Ward dispensing cabinet over Modbus (register map version 1).

Two layers, so a Modbus RTU serial line can be added without touching the cabinet
logic: `ModbusBus` owns one pymodbus client and the lock every request on that
connection takes (a serial bus carries several cabinets, and a TCP gateway may too),
and turns every pymodbus failure into DriverError; `ModbusCabinetDriver` knows the
register map (through drivers.cabinet_registers) and nothing about transports.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from drivers import cabinet_registers as reg
from drivers.base import CabinetCommand, CabinetDriver, CabinetStatus, DriverError

log = logging.getLogger(__name__)

DEFAULT_MODBUS_TCP_PORT = 502


def parse_tcp_address(address: str) -> tuple[str, int]:
    """Split `tcp://host:port` (port defaults to 502); anything else is a ValueError."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad Modbus TCP address {address!r}: {exc}") from None
    if parts.scheme != "tcp" or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"bad Modbus TCP address {address!r}: expected tcp://host:port")
    return parts.hostname, port if port is not None else DEFAULT_MODBUS_TCP_PORT


class ModbusBus(ABC):
    """One Modbus connection and the lock that serialises requests on it.

    `timeout` bounds one request including pymodbus' own retries: each attempt gets
    timeout / (retries + 1). A retried write reaches the device twice, which the
    cabinet's sequence-numbered mailbox makes harmless.
    """

    def __init__(self, address: str, timeout: float, retries: int) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.lock = asyncio.Lock()
        self.generation = 0
        """Increases with every successful connect, so users can re-check the device."""
        self._client: ModbusBaseClient | None = None

    @abstractmethod
    def _create_client(self, attempt_timeout: float) -> ModbusBaseClient:
        """A fresh, unconnected pymodbus async client without automatic reconnect."""

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self, context: str) -> None:
        """Open the connection (a fresh client each time); call with `lock` held."""
        self.close()
        client = self._create_client(self.timeout / (self.retries + 1))
        try:
            async with asyncio.timeout(self.timeout):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise DriverError(f"{context}: cannot connect to {self.address}: {exc!r}") from exc
        if not ok:
            client.close()
            raise DriverError(
                f"{context}: cannot connect to {self.address} within {self.timeout} s"
                " (refused or no answer)"
            )
        self._client = client
        self.generation += 1

    def close(self) -> None:
        """Drop the connection; safe to call any number of times."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read_holding(self, unit: int, address: int, count: int, context: str) -> list[int]:
        """FC3; call with `lock` held."""
        response = await self._execute(
            context,
            f"reading {count} registers at {address}",
            lambda c: c.read_holding_registers(address, count=count, device_id=unit),
        )
        registers = list(response.registers)
        if len(registers) != count:
            raise DriverError(
                f"{context}: asked for {count} registers at {address}, got {len(registers)}"
            )
        return registers

    async def write_registers(
        self, unit: int, address: int, values: Sequence[int], context: str
    ) -> None:
        """FC16 in one request; call with `lock` held."""
        await self._execute(
            context,
            f"writing {len(values)} registers at {address}",
            lambda c: c.write_registers(address, list(values), device_id=unit),
        )

    async def _execute(
        self,
        context: str,
        what: str,
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
    ) -> ModbusPDU:
        client = self._client
        if client is None or not client.connected:
            self.close()
            raise DriverError(f"{context}: {what}: not connected to {self.address}")
        try:
            # pymodbus bounds each attempt itself; this is only a backstop.
            async with asyncio.timeout(self.timeout * 2):
                response = await call(client)
        except TimeoutError as exc:
            self.close()
            raise DriverError(f"{context}: {what}: no answer within {self.timeout} s") from exc
        except (ModbusException, OSError) as exc:
            if not client.connected:
                self.close()
            raise DriverError(f"{context}: {what}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", 0)
            try:
                name = ExcCodes(code).name
            except ValueError:
                name = "unknown"
            raise DriverError(f"{context}: {what}: Modbus exception {code} ({name})")
        return response


class ModbusTcpBus(ModbusBus):
    """Modbus TCP to a cabinet or a gateway: `tcp://host:port`."""

    def __init__(self, address: str, timeout: float = 2.0, retries: int = 1) -> None:
        self.host, self.port = parse_tcp_address(address)
        super().__init__(address, timeout, retries)

    def _create_client(self, attempt_timeout: float) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=attempt_timeout,
            retries=self.retries,
            reconnect_delay=0,  # no background reconnect task: the driver reconnects
            name=self.address,
        )


class ModbusCabinetDriver(CabinetDriver):
    """A cabinet speaking register map 1.x on one Modbus unit id.

    After connect() a lost connection is re-opened by the next call (and the identity
    checked again); the failing call itself raises DriverError. close() ends that.
    """

    def __init__(
        self,
        name: str,
        address: str,
        unit_id: int,
        pocket_count: int,
        timeout: float = 2.0,
        *,
        retries: int = 1,
        bus: ModbusBus | None = None,
        ack_poll_interval: float = 0.05,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"cabinet {name}: unit_id must be 0..255, got {unit_id!r}")
        if pocket_count < 0 or reg.pocket_address(pocket_count) > 0x10000:
            raise ValueError(f"cabinet {name}: pocket_count out of range: {pocket_count!r}")
        self.name = name
        self.address = address
        self.unit_id = unit_id
        self.pocket_count = pocket_count
        self.timeout = timeout
        self.ack_poll_interval = ack_poll_interval
        self._owns_bus = bus is None
        self._bus = bus if bus is not None else ModbusTcpBus(address, timeout, retries)
        self._plan = reg.read_plan(pocket_count)
        self._open = False
        self._checked_generation = -1
        self.identity: reg.Identity | None = None

    def _context(self, operation: str) -> str:
        return f"cabinet {self.name} (unit {self.unit_id} at {self.address}) {operation}"

    async def connect(self) -> None:
        """Open the connection and check the register map; bounded by the timeout."""
        self._open = True
        async with self._bus.lock:
            await self._ready("connect", force_check=True)

    async def close(self) -> None:
        self._open = False
        self._checked_generation = -1
        if self._owns_bus:
            self._bus.close()

    async def read_status(self) -> CabinetStatus:
        context = self._context("read_status")
        registers: list[int] = []
        for address, count in self._plan:
            # One lock per request, so other cabinets on the bus are not starved.
            async with self._bus.lock:
                await self._ready("read_status")
                registers += await self._bus.read_holding(self.unit_id, address, count, context)
        try:
            identity = reg.decode_identity(registers)
            self._check_identity(identity, context)
            live = reg.decode_live(registers)
            pockets = tuple(
                reg.decode_pocket(block)
                for block in reg.split_pockets(registers, self.pocket_count)
            )
        except ValueError as exc:
            raise DriverError(f"{context}: cannot decode registers: {exc}") from exc
        return CabinetStatus(
            cabinet_id=identity.cabinet_id,
            map_version=identity.map_major,
            heartbeat=live.heartbeat,
            status=live.status,
            temperature_c=live.temperature_c,
            last_ack_sequence=live.ack_sequence,
            pockets=pockets,
        )

    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        """Write the whole mailbox in one FC16, then poll the acknowledgement."""
        values = reg.encode_mailbox(sequence, CabinetCommand(command), pocket, quantity)
        what = f"{CabinetCommand(command).name} sequence {sequence} pocket {pocket} x{quantity}"
        context = self._context(f"send_command {what}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        async with self._bus.lock:
            await self._ready("send_command")
            await self._bus.write_registers(self.unit_id, reg.REG_CMD_SEQUENCE, values, context)
        while True:
            async with self._bus.lock:
                await self._ready("send_command")
                ack = await self._bus.read_holding(self.unit_id, reg.REG_ACK_SEQUENCE, 2, context)
            ack_sequence, result = reg.decode_ack(ack)
            if ack_sequence == sequence:
                break
            if loop.time() >= deadline:
                raise DriverError(
                    f"{context}: not acknowledged within {self.timeout} s"
                    f" (last acknowledged sequence {ack_sequence})"
                )
            await asyncio.sleep(self.ack_poll_interval)
        if result != reg.ResultCode.OK:
            raise DriverError(
                f"{context}: refused: {reg.result_meaning(result)} (result code {result})"
            )

    async def _ready(self, operation: str, force_check: bool = False) -> None:
        """Connect if needed and check the identity once per connection; lock held."""
        context = self._context(operation)
        if not self._open:
            raise DriverError(f"{context}: not connected (call connect() first)")
        if not self._bus.connected:
            await self._bus.connect(context)
        if force_check or self._checked_generation != self._bus.generation:
            header = await self._bus.read_holding(
                self.unit_id, 0, reg.REG_FIRMWARE_MINOR + 1, context
            )
            identity = reg.decode_identity(header)
            self._check_identity(identity, context)
            self.identity = identity
            self._checked_generation = self._bus.generation
            log.info(
                "cabinet %s: map %d.%d, firmware %d.%d, %d pockets",
                self.name,
                identity.map_major,
                identity.map_minor,
                identity.firmware_major,
                identity.firmware_minor,
                identity.pocket_count,
            )

    def _check_identity(self, identity: reg.Identity, context: str) -> None:
        if identity.map_major != reg.MAP_MAJOR:
            raise DriverError(
                f"{context}: device has register map version"
                f" {identity.map_major}.{identity.map_minor}, driver supports"
                f" {reg.MAP_MAJOR}.x (written for {reg.MAP_MAJOR}.{reg.MAP_MINOR})"
            )
        if (identity.pocket_base, identity.pocket_stride) != (reg.POCKET_BASE, reg.POCKET_STRIDE):
            raise DriverError(
                f"{context}: device puts pockets at {identity.pocket_base} stride"
                f" {identity.pocket_stride}, map {reg.MAP_MAJOR} says {reg.POCKET_BASE}"
                f" stride {reg.POCKET_STRIDE}"
            )
        if identity.pocket_count != self.pocket_count:
            raise DriverError(
                f"{context}: device reports {identity.pocket_count} pockets,"
                f" configuration says {self.pocket_count}"
            )
