"""Turns a day's dose orders into packing jobs: one per ward and administration time.

A job's pouches are ordered by patient so the ward gets them in round order; each pouch
holds everything one patient takes at that time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, time

from controller.packing.orders import DoseOrder


@dataclass(frozen=True)
class PlannedPouch:
    sequence: int
    patient: str
    items: tuple[tuple[str, int], ...]  # (gtin, units), sorted by gtin

    @property
    def label(self) -> str:
        return self.patient


@dataclass(frozen=True)
class PlannedJob:
    job_id: str
    ward: str
    day: date
    time: time
    pouches: tuple[PlannedPouch, ...]

    def units_by_gtin(self, pouches: Iterable[PlannedPouch] | None = None) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for pouch in self.pouches if pouches is None else pouches:
            for gtin, units in pouch.items:
                totals[gtin] += units
        return dict(totals)


def plan_day(orders: Iterable[DoseOrder], day: date) -> list[PlannedJob]:
    by_slot: dict[tuple[str, time], dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for order in orders:
        if not order.active_on(day):
            continue
        for at in order.times:
            by_slot[(order.ward, at)][order.patient][order.gtin] += order.units
    jobs = []
    for (ward, at), patients in sorted(by_slot.items()):
        pouches = tuple(
            PlannedPouch(seq, patient, tuple(sorted(items.items())))
            for seq, (patient, items) in enumerate(sorted(patients.items()), start=1)
        )
        jobs.append(PlannedJob(f"{ward}-{day:%Y%m%d}-{at:%H%M}", ward, day, at, pouches))
    return jobs
