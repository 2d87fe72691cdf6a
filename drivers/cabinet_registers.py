"""Register map version 2 of the Modbus ward dispensing cabinet: layout and codec.

Pure functions and constants, no I/O and no pymodbus, so Modbus TCP, Modbus RTU and
unit tests share one definition of the bytes. The interface document is
docs/cabinet-register-map.md; keep both in step.

All addresses are 0-based protocol (PDU) addresses of holding registers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.base import CabinetCommand, CabinetStatusBit, PocketStatus

MAP_MAJOR = 2
MAP_MINOR = 0

# Identity block (read only).
REG_MAP_MAJOR = 0
REG_MAP_MINOR = 1
REG_CABINET_ID = 2
REG_POCKET_COUNT = 3
REG_POCKET_BASE = 4
REG_POCKET_STRIDE = 5
REG_FIRMWARE_MAJOR = 6
REG_FIRMWARE_MINOR = 7
# Live block (read only).
REG_HEARTBEAT = 8
REG_STATUS = 9
REG_TEMPERATURE = 10
REG_TEMP_LOW_LIMIT = 11  # int16, 0.1 degC: the cabinet's own alarm band
REG_TEMP_HIGH_LIMIT = 12  # int16, 0.1 degC
REG_TEMP_EXCURSIONS_TOTAL = 13  # uint32, high word first
# Acknowledgement block (read only).
REG_ACK_SEQUENCE = 16
REG_ACK_RESULT = 17
# Command mailbox (read/write, written with exactly one FC16 of MAILBOX_LENGTH registers).
REG_CMD_SEQUENCE = 20
REG_CMD_CODE = 21
REG_CMD_POCKET = 22
REG_CMD_QUANTITY = 23
MAILBOX_LENGTH = 4

HEADER_LENGTH = 32
POCKET_BASE = 32
POCKET_STRIDE = 24

# Offsets inside one pocket block.
POCKET_NUMBER = 0
POCKET_ARTICLE = 1  # uint32, high word first
POCKET_COUNT = 3
POCKET_MIN_LEVEL = 4
POCKET_MAX_LEVEL = 5
POCKET_CAPACITY = 6
POCKET_FLAGS = 7
POCKET_WITHDRAWALS_TOTAL = 8  # uint32, high word first (as every counter below)
POCKET_REFILLS_TOTAL = 10
POCKET_RETURNS_TOTAL = 12
POCKET_EMPTY_HITS_TOTAL = 14
POCKET_WASTE_TOTAL = 16
POCKET_COUNTED_UP_TOTAL = 18
POCKET_COUNTED_DOWN_TOTAL = 20

FLAG_LOCKED = 0x0001
"""POCKET_FLAGS bit 0: the cabinet refuses withdrawals from this pocket."""

MAX_READ_REGISTERS = 125
"""Modbus limit for one FC3 read."""

COUNTER_MODULUS = 2**32


class ResultCode(enum.IntEnum):
    """Values of REG_ACK_RESULT."""

    OK = 0
    UNKNOWN_COMMAND = 1
    UNKNOWN_POCKET = 2
    BAD_QUANTITY = 3
    OVER_CAPACITY = 4
    DEVICE_FAULT = 5


RESULT_MEANINGS: dict[int, str] = {
    ResultCode.OK: "ok",
    ResultCode.UNKNOWN_COMMAND: "unknown command code",
    ResultCode.UNKNOWN_POCKET: "unknown pocket",
    ResultCode.BAD_QUANTITY: "bad quantity",
    ResultCode.OVER_CAPACITY: "quantity would exceed the pocket capacity",
    ResultCode.DEVICE_FAULT: "cabinet is in fault and refuses commands",
}


def result_meaning(code: int) -> str:
    """Human text for an acknowledgement result, also for codes this map does not know."""
    return RESULT_MEANINGS.get(code, f"unknown result code {code}")


@dataclass(frozen=True)
class Identity:
    """The identity block as read from the device."""

    map_major: int
    map_minor: int
    cabinet_id: int
    pocket_count: int
    pocket_base: int
    pocket_stride: int
    firmware_major: int
    firmware_minor: int


@dataclass(frozen=True)
class Live:
    """Heartbeat, status, temperature, alarm band and the acknowledgement registers."""

    heartbeat: int
    status: CabinetStatusBit
    temperature_c: float
    temp_low_c: float
    temp_high_c: float
    temp_excursions_total: int
    ack_sequence: int
    ack_result: int


def u32_from_words(high: int, low: int) -> int:
    """Join two registers into a uint32, high word first (big-endian word order)."""
    return ((high & 0xFFFF) << 16) | (low & 0xFFFF)


def u32_to_words(value: int) -> tuple[int, int]:
    """Split a uint32 (taken modulo 2**32) into (high, low) registers."""
    value %= COUNTER_MODULUS
    return value >> 16, value & 0xFFFF


def s16_from_register(register: int) -> int:
    """Two's complement view of one register."""
    register &= 0xFFFF
    return register - 0x10000 if register & 0x8000 else register


def counter_delta(previous: int, current: int) -> int:
    """Increase of a wrapping uint32 counter between two polls.

    Correct as long as the counter moved less than 2**32 between the polls.
    """
    return (current - previous) % COUNTER_MODULUS


def decode_identity(header: Sequence[int]) -> Identity:
    """Decode the identity registers from a read that starts at address 0."""
    _require(header, REG_FIRMWARE_MINOR + 1, "identity block")
    return Identity(
        map_major=header[REG_MAP_MAJOR],
        map_minor=header[REG_MAP_MINOR],
        cabinet_id=header[REG_CABINET_ID],
        pocket_count=header[REG_POCKET_COUNT],
        pocket_base=header[REG_POCKET_BASE],
        pocket_stride=header[REG_POCKET_STRIDE],
        firmware_major=header[REG_FIRMWARE_MAJOR],
        firmware_minor=header[REG_FIRMWARE_MINOR],
    )


def decode_live(header: Sequence[int]) -> Live:
    """Decode heartbeat, status, temperature and ack from a read that starts at address 0."""
    _require(header, REG_ACK_RESULT + 1, "header block")
    return Live(
        heartbeat=header[REG_HEARTBEAT],
        # IntFlag keeps bits this map version does not name (a later minor version may).
        status=CabinetStatusBit(header[REG_STATUS]),
        temperature_c=_tenths(header[REG_TEMPERATURE]),
        temp_low_c=_tenths(header[REG_TEMP_LOW_LIMIT]),
        temp_high_c=_tenths(header[REG_TEMP_HIGH_LIMIT]),
        temp_excursions_total=_u32_at(header, REG_TEMP_EXCURSIONS_TOTAL),
        ack_sequence=header[REG_ACK_SEQUENCE],
        ack_result=header[REG_ACK_RESULT],
    )


def decode_pocket(block: Sequence[int]) -> PocketStatus:
    """Decode one pocket block of POCKET_STRIDE registers."""
    _require(block, POCKET_STRIDE, "pocket block")
    return PocketStatus(
        number=block[POCKET_NUMBER],
        article=u32_from_words(block[POCKET_ARTICLE], block[POCKET_ARTICLE + 1]),
        count=block[POCKET_COUNT],
        min_level=block[POCKET_MIN_LEVEL],
        max_level=block[POCKET_MAX_LEVEL],
        withdrawals_total=_u32_at(block, POCKET_WITHDRAWALS_TOTAL),
        refills_total=_u32_at(block, POCKET_REFILLS_TOTAL),
        returns_total=_u32_at(block, POCKET_RETURNS_TOTAL),
        capacity=block[POCKET_CAPACITY],
        # Other flag bits are reserved in 2.0; a later minor version may name them.
        locked=bool(block[POCKET_FLAGS] & FLAG_LOCKED),
        empty_hits_total=_u32_at(block, POCKET_EMPTY_HITS_TOTAL),
        waste_total=_u32_at(block, POCKET_WASTE_TOTAL),
        counted_up_total=_u32_at(block, POCKET_COUNTED_UP_TOTAL),
        counted_down_total=_u32_at(block, POCKET_COUNTED_DOWN_TOTAL),
    )


def decode_ack(registers: Sequence[int]) -> tuple[int, int]:
    """Decode (sequence, result) from a read of REG_ACK_SEQUENCE..REG_ACK_RESULT."""
    _require(registers, 2, "acknowledgement block")
    return registers[0], registers[1]


def encode_mailbox(sequence: int, command: CabinetCommand, pocket: int, quantity: int) -> list[int]:
    """Registers for one FC16 write at REG_CMD_SEQUENCE; bad values raise ValueError."""
    if not 1 <= sequence <= 0xFFFF:
        raise ValueError(f"sequence must be 1..65535, got {sequence!r}")
    for field, value in (("pocket", pocket), ("quantity", quantity)):
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{field} must be 0..65535, got {value!r}")
    return [sequence, int(command), pocket, quantity]


def pocket_address(slot: int) -> int:
    """Start address of the pocket block in slot `slot` (0-based)."""
    return POCKET_BASE + slot * POCKET_STRIDE


def read_plan(pocket_count: int) -> list[tuple[int, int]]:
    """(address, count) reads that cover the header and `pocket_count` pocket blocks.

    Every pocket block lies inside a single read, so its uint32 counters are never torn
    between two requests; the header shares the first read with as many pockets as fit.
    """
    if pocket_count < 0:
        raise ValueError(f"pocket_count must be >= 0, got {pocket_count!r}")
    per_read = MAX_READ_REGISTERS // POCKET_STRIDE
    first = min(pocket_count, (MAX_READ_REGISTERS - HEADER_LENGTH) // POCKET_STRIDE)
    plan = [(0, HEADER_LENGTH + first * POCKET_STRIDE)]
    slot = first
    while slot < pocket_count:
        n = min(per_read, pocket_count - slot)
        plan.append((pocket_address(slot), n * POCKET_STRIDE))
        slot += n
    return plan


def split_pockets(registers: Sequence[int], pocket_count: int) -> list[Sequence[int]]:
    """Cut the registers of a full read (address 0 onwards) into pocket blocks."""
    _require(registers, POCKET_BASE + pocket_count * POCKET_STRIDE, "cabinet read")
    return [
        registers[pocket_address(slot) : pocket_address(slot) + POCKET_STRIDE]
        for slot in range(pocket_count)
    ]


def _u32_at(block: Sequence[int], offset: int) -> int:
    return u32_from_words(block[offset], block[offset + 1])


def _tenths(register: int) -> float:
    return s16_from_register(register) / 10.0


def _require(registers: Sequence[int], length: int, what: str) -> None:
    if len(registers) < length:
        raise ValueError(f"{what} needs {length} registers, got {len(registers)}")
