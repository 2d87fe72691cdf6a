"""Turns a day's dose orders into packing jobs: one per ward and administration time.

A job's pouches are ordered by patient so the ward gets them in round order; each pouch
holds everything one patient takes at that time.

`fit_to_machines` then fits each job to the packers' calibrated canisters: a product no
chosen packer holds is replaced by a product of the same substitution group that it does
hold (generic substitution, recorded on the job), or else moved to the pouch's `manual`
items, which are added by hand after packing. `pick_packer` chooses, at dispatch time,
the fastest packer that is free and can reach the stock the job needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, time
from typing import Any, TypeVar

from controller.config import Site
from controller.packing.orders import DoseOrder

Items = tuple[tuple[str, int], ...]
T = TypeVar("T")


@dataclass(frozen=True)
class PlannedPouch:
    sequence: int
    patient: str
    items: Items  # machine-packed (gtin, units), sorted by gtin
    manual: Items = ()  # to be added by hand after packing (gtin, units), sorted by gtin

    @property
    def label(self) -> str:
        return self.patient


@dataclass(frozen=True)
class Substitution:
    ordered: str  # GTIN the prescriber ordered
    packed: str  # GTIN packed instead (same substitution group)
    units: int  # total units in this job


@dataclass(frozen=True)
class PlannedJob:
    job_id: str
    ward: str
    day: date
    time: time
    pouches: tuple[PlannedPouch, ...]
    packers: tuple[str, ...] = ()  # packers able to pack it, fastest first
    substitutions: tuple[Substitution, ...] = ()

    def units_by_gtin(self, pouches: Iterable[PlannedPouch] | None = None) -> dict[str, int]:
        """Machine-packed units per GTIN (manual items are not counted)."""
        totals: dict[str, int] = defaultdict(int)
        for pouch in self.pouches if pouches is None else pouches:
            for gtin, units in pouch.items:
                totals[gtin] += units
        return dict(totals)

    def manual_units_by_gtin(self, pouches: Iterable[PlannedPouch] | None = None) -> dict[str, int]:
        """Units per GTIN to be added to the pouches by hand."""
        totals: dict[str, int] = defaultdict(int)
        for pouch in self.pouches if pouches is None else pouches:
            for gtin, units in pouch.manual:
                totals[gtin] += units
        return dict(totals)

    def machine_pouches(self) -> tuple[PlannedPouch, ...]:
        """The pouches with something for the machine to pack. A pouch whose contents
        are all manual has no machine items, and packers refuse an empty pouch."""
        return tuple(p for p in self.pouches if p.items)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form: ISO date, "HH:MM" time, lists for tuples."""
        return {
            "job_id": self.job_id,
            "ward": self.ward,
            "day": self.day.isoformat(),
            "time": _time_text(self.time),
            "pouches": [
                {
                    "sequence": p.sequence,
                    "patient": p.patient,
                    "items": [[gtin, units] for gtin, units in p.items],
                    "manual": [[gtin, units] for gtin, units in p.manual],
                }
                for p in self.pouches
            ],
            "packers": list(self.packers),
            "substitutions": [
                {"ordered": s.ordered, "packed": s.packed, "units": s.units}
                for s in self.substitutions
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedJob:
        """The inverse of `to_dict`; a ValueError names the field and value at fault."""
        reader = _Reader(data, "job")
        job_id = reader.text("job_id")
        reader = _Reader(data, f"job {job_id}")
        return cls(
            job_id=job_id,
            ward=reader.text("ward"),
            day=reader.parsed("day", date.fromisoformat),
            time=reader.parsed("time", time.fromisoformat),
            pouches=tuple(
                PlannedPouch(
                    sequence=pouch.integer("sequence"),
                    patient=pouch.text("patient"),
                    items=pouch.items("items"),
                    manual=pouch.items("manual", default=()),
                )
                for pouch in reader.records("pouches")
            ),
            packers=tuple(reader.texts("packers", default=())),
            substitutions=tuple(
                Substitution(sub.text("ordered"), sub.text("packed"), sub.integer("units"))
                for sub in reader.records("substitutions", default=())
            ),
        )


def _time_text(at: time) -> str:
    if at.second or at.microsecond:
        return at.isoformat()  # never from the intake, but never lose precision
    return f"{at:%H:%M}"


class _Reader:
    """Typed access to one record of a persisted job, with errors that say where."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        self.data = data
        self.where = where

    def _get(self, name: str, default: object = ...) -> Any:
        if name not in self.data:
            if default is ...:
                raise ValueError(f"{self.where}: {name}: missing")
            return default
        return self.data[name]

    def _bad(self, name: str, value: object, expected: str) -> ValueError:
        return ValueError(f"{self.where}: {name}: {value!r} is not {expected}")

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str) or not value:
            raise self._bad(name, value, "a non-empty string")
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(name, value, "an integer")
        return value

    def parsed(self, name: str, parse: Callable[[str], T]) -> T:
        value = self.text(name)
        try:
            return parse(value)
        except ValueError:
            raise self._bad(name, value, f"a valid {name}") from None

    def texts(self, name: str, default: object = ...) -> list[str]:
        value = self._get(name, default)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise self._bad(name, value, "a list of strings")
        return list(value)

    def records(self, name: str, default: object = ...) -> list[_Reader]:
        value = self._get(name, default)
        if not isinstance(value, list | tuple):
            raise self._bad(name, value, "a list")
        return [_Reader(v, f"{self.where}: {name}[{i}]") for i, v in enumerate(value)]

    def items(self, name: str, default: object = ...) -> Items:
        value = self._get(name, default)
        if not isinstance(value, list | tuple):
            raise self._bad(name, value, "a list of [gtin, units]")
        out = []
        for i, pair in enumerate(value):
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or not isinstance(pair[1], int)
                or isinstance(pair[1], bool)
                or pair[1] <= 0
            ):
                raise self._bad(f"{name}[{i}]", pair, "a [gtin, units] pair with units > 0")
            out.append((pair[0], pair[1]))
        return tuple(out)


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


# --- fitting jobs to the packers' canisters ---------------------------------------------


@dataclass(frozen=True)
class PackerCapability:
    """What a packer can machine-pack: the GTINs of its calibrated canisters."""

    name: str
    pouches_per_minute: float
    gtins: frozenset[str]


def capabilities(site: Site) -> list[PackerCapability]:
    """The site's packers in config order; uncalibrated canisters do not count."""
    return [
        PackerCapability(
            packer.name,
            packer.pouches_per_minute,
            frozenset(c.gtin for c in packer.canisters if c.calibrated),
        )
        for packer in site.packers
    ]


def substitution_groups(site: Site) -> dict[str, str | None]:
    """GTIN -> substitution group (None: the product has no substitutes)."""
    return {p.gtin: p.substitution_group for p in site.catalogue}


def _speed_order(name: str, pouches_per_minute: float) -> tuple[float, str]:
    return (-pouches_per_minute, name)


def _substitute(gtin: str, holds: frozenset[str], groups: Mapping[str, str | None]) -> str | None:
    """The lowest GTIN the packer holds of the same substitution group, if any."""
    group = groups.get(gtin)
    if group is None:
        return None
    partners = sorted(g for g in holds if g != gtin and groups.get(g) == group)
    return partners[0] if partners else None


def _reach(
    totals: Mapping[str, int], packer: PackerCapability, groups: Mapping[str, str | None]
) -> tuple[int, int]:
    """(units the packer can machine-pack including substitutes, units as ordered)."""
    direct = sum(u for g, u in totals.items() if g in packer.gtins)
    substituted = sum(
        u
        for g, u in totals.items()
        if g not in packer.gtins and _substitute(g, packer.gtins, groups) is not None
    )
    return direct + substituted, direct


def _merged(pairs: Iterable[tuple[str, int]]) -> Items:
    totals: dict[str, int] = defaultdict(int)
    for gtin, units in pairs:
        totals[gtin] += units
    return tuple(sorted(totals.items()))


def fit_to_machines(
    jobs: Iterable[PlannedJob],
    packers: Sequence[PackerCapability],
    catalogue_groups: Mapping[str, str | None],
) -> list[PlannedJob]:
    """Fits each job to one packer's calibrated canisters.

    The packer chosen is the one that can machine-pack the most units of the job,
    counting units it can pack through a substitute (ties: more units as ordered, then
    faster, then name). A GTIN that packer cannot pack is replaced by the lowest GTIN of
    the same substitution group it holds, recorded as a `Substitution`, or else moved to
    the pouches' `manual` items. The job's `packers` are then all packers whose
    calibrated canisters cover every machine GTIN of the rewritten job, fastest first;
    a job with nothing left for a machine has `packers=()`.

    Made for jobs fresh from `plan_day`; manual items and substitutions a job already
    has are kept (substitutions of the same pair are merged).
    """
    fitted = []
    for job in jobs:
        totals = job.units_by_gtin()
        mapping: dict[str, str] = {}  # ordered GTIN -> substitute
        manual: set[str] = set()
        if totals and packers:
            chosen = min(
                packers,
                key=lambda p: (
                    tuple(-n for n in _reach(totals, p, catalogue_groups)),
                    *_speed_order(p.name, p.pouches_per_minute),
                ),
            )
            for gtin in totals:
                if gtin in chosen.gtins:
                    continue
                substitute = _substitute(gtin, chosen.gtins, catalogue_groups)
                if substitute is None:
                    manual.add(gtin)
                else:
                    mapping[gtin] = substitute
        else:
            manual.update(totals)

        pouches = tuple(
            replace(
                pouch,
                items=_merged((mapping.get(g, g), u) for g, u in pouch.items if g not in manual),
                manual=_merged([*pouch.manual, *((g, u) for g, u in pouch.items if g in manual)]),
            )
            for pouch in job.pouches
        )
        subs: dict[tuple[str, str], int] = defaultdict(int)
        for s in job.substitutions:
            subs[(s.ordered, s.packed)] += s.units
        for ordered, packed in mapping.items():
            subs[(ordered, packed)] += totals[ordered]
        rewritten = replace(job, pouches=pouches)
        needed = set(rewritten.units_by_gtin())
        able = (
            sorted(
                (p for p in packers if needed <= p.gtins),
                key=lambda p: _speed_order(p.name, p.pouches_per_minute),
            )
            if needed
            else []
        )
        fitted.append(
            replace(
                rewritten,
                packers=tuple(p.name for p in able),
                substitutions=tuple(
                    Substitution(ordered, packed, units)
                    for (ordered, packed), units in sorted(subs.items())
                ),
            )
        )
    return fitted


def describe(job: PlannedJob) -> list[str]:
    """Lines for the summary and the pick list: substitutions, then manual items."""
    lines = [
        f"substituted: {s.units} x {s.ordered} packed as {s.packed}" for s in job.substitutions
    ]
    lines += [
        f"manual: {units} x {gtin} (no calibrated canister)"
        for gtin, units in sorted(job.manual_units_by_gtin().items())
    ]
    return lines


# --- choosing a packer at dispatch time -------------------------------------------------


@dataclass(frozen=True)
class PackerOffer:
    """A packer as it stands now: whether it takes a job and the units it can reach
    per GTIN (its canister's free units plus what the central store could top up)."""

    name: str
    pouches_per_minute: float
    available: bool
    stock: Mapping[str, int]


def pick_packer(job: PlannedJob, offers: Iterable[PackerOffer]) -> str | None:
    """The fastest available packer named in `job.packers` whose stock covers the job's
    machine units (ties: order in `job.packers`); None when none qualifies."""
    rank = {name: i for i, name in enumerate(job.packers)}
    needs = job.units_by_gtin()
    qualified = [
        offer
        for offer in offers
        if offer.available
        and offer.name in rank
        and all(offer.stock.get(gtin, 0) >= units for gtin, units in needs.items())
    ]
    if not qualified:
        return None
    best = min(qualified, key=lambda o: (-o.pouches_per_minute, rank[o.name]))
    return best.name
