"""Dose orders and the pouches they turn into."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, time


class OrderError(ValueError):
    """A dose order that cannot be packed; the message names the field and value."""


def pseudonym(patient_id: str, salt: str) -> str:
    """A stable pseudonym for a patient: what pouch labels, logs and jobs carry."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).hexdigest()
    return f"PT-{digest[:10]}"


@dataclass(frozen=True)
class DoseOrder:
    """`units` of a product for a patient at each administration time, every day
    from `start` to `end` inclusive."""

    patient: str  # pseudonym, never a clear identifier
    ward: str
    gtin: str
    units: int
    times: tuple[time, ...]
    start: date
    end: date

    def __post_init__(self) -> None:
        if not self.times:
            raise OrderError(f"order for {self.patient}: times: none given")
        if not 0 < self.units <= 20:
            raise OrderError(f"order for {self.patient}: units: {self.units} (allowed 1 to 20)")
        if self.end < self.start:
            raise OrderError(
                f"order for {self.patient}: end {self.end} is before start {self.start}"
            )

    def active_on(self, day: date) -> bool:
        return self.start <= day <= self.end
