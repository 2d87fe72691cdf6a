"""Where ward stock lives in the ledger: hospital -> ward -> drug room, and one
in-transit location per hospital for what has left the store but not yet arrived.
Pure naming, used by the site file (ward debiting), ward supply and the reports."""

from __future__ import annotations

from typing import Protocol

TRANSIT_PREFIX = "TRANSIT"


class RoomLike(Protocol):
    @property
    def code(self) -> str: ...

    @property
    def hospital(self) -> str: ...

    @property
    def ward(self) -> str: ...


def hospital_location(hospital: str) -> str:
    return hospital


def ward_location(hospital: str, ward: str) -> str:
    return f"{hospital}/{ward}"


def drug_room_location(room: RoomLike) -> str:
    """`<hospital>/<ward>/<drug room>`: a ward's drug room in the location tree."""
    return f"{room.hospital}/{room.ward}/{room.code}"


def transit_location(hospital: str) -> str:
    return f"{TRANSIT_PREFIX}/{hospital}"
