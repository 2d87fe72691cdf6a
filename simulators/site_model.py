"""The parts of a site file the simulators use, as typed, frozen values.

The simulators may not import the controller (they are written from the documents, so
that a shared mistake cannot hide), so they cannot use its site model. This one reads
only what the plant and the standalone simulators need and ignores every other key: the
controller's model is the strict one. What it does read it checks, so that a wrong
value stops the plant at start-up with its key path (`packers[1].canisters[3].gtin:
expected text, got 12`) instead of a KeyError deep inside a simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args

import yaml

from simulators.packer_physics import DEFAULT_OUTPUT_EMPTY_AFTER_S

PackerDriver = Literal["opcua", "opcua_legacy", "serial"]
CabinetDriver = Literal["modbus_tcp", "modbus_rtu", "modbus_tls", "hl7_mllp"]

T = TypeVar("T")


class SiteModelError(ValueError):
    """A value of the site file the simulators cannot use; the message names its key path."""


class _Node:
    """One mapping of the site file and where it sits, so that every error names its path."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SiteModelError(f"{path or 'the site file'}: expected a mapping, got {data!r}")
        self.data: Mapping[object, object] = data
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str, value: object) -> SiteModelError:
        return SiteModelError(f"{self.where(key)}: expected {expected}, got {value!r}")

    def _get(self, key: str, default: object, expected: str) -> object:
        """The value under `key`; a `default` of None makes the key required."""
        if key in self.data:
            return self.data[key]
        if default is None:
            raise SiteModelError(f"{self.where(key)}: missing, expected {expected}")
        return default

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default, "text")
        if not isinstance(value, str):
            raise self.fail(key, "text", value)
        return value

    def gtin(self, key: str = "gtin") -> str:
        """A GTIN as text, left-padded to the 14 digits the protocols carry."""
        value = self.text(key)
        if not value.isdigit() or len(value) > 14:
            raise self.fail(key, "a GTIN of up to 14 digits", value)
        return value.zfill(14)

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default, "a whole number")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "a whole number", value)
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key, default, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "a number", value)
        return float(value)

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self._get(key, default, "true or false")
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.fail(key, "one of " + ", ".join(map(repr, choices)), value)
        return value

    def child(self, key: str) -> _Node:
        """The mapping under `key`; an absent key reads as an empty one (all defaults)."""
        return _Node(self.data.get(key, {}), self.where(key))

    def children(self, key: str) -> Iterator[_Node]:
        """The mappings of the list under `key`; an absent key reads as an empty list."""
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        for i, item in enumerate(value):
            yield _Node(item, f"{self.where(key)}[{i}]")


def _parsed(cls: Callable[[_Node], T], nodes: Iterator[_Node]) -> tuple[T, ...]:
    return tuple(cls(node) for node in nodes)


@dataclass(frozen=True)
class CatalogueEntry:
    """A product as the machines know it: the Modbus cabinets by article number, the
    verification system by pack size."""

    gtin: str
    article: int
    pack_size: int = 100

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> CatalogueEntry:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> CatalogueEntry:
        return cls(node.gtin(), node.integer("article"), node.integer("pack_size", 100))


@dataclass(frozen=True)
class StockLot:
    """An opening lot: the bundled verification system registers its packs."""

    gtin: str
    batch: str
    quantity: int
    expiry: date | None = None
    expires_in_days: int = 365

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> StockLot:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> StockLot:
        expiry = node.data.get("expiry")
        if isinstance(expiry, str):
            try:
                expiry = date.fromisoformat(expiry)
            except ValueError:
                raise node.fail("expiry", "a date (YYYY-MM-DD)", expiry) from None
        if expiry is not None and not isinstance(expiry, date):
            raise node.fail("expiry", "a date (YYYY-MM-DD)", expiry)
        return cls(
            gtin=node.gtin(),
            batch=node.text("batch"),
            quantity=node.integer("quantity"),
            expiry=expiry,
            expires_in_days=node.integer("expires_in_days", 365),
        )


@dataclass(frozen=True)
class Canister:
    number: int
    gtin: str
    capacity: int

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> Canister:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> Canister:
        return cls(node.integer("number"), node.gtin(), node.integer("capacity"))


@dataclass(frozen=True)
class PackerSim:
    """A simulated packer's knobs: its pace, its faults and its output tray."""

    speed_factor: float = 1.0
    reject_rate: float = 0.0
    jam_rate: float = 0.0
    # 0 = an unlimited tray
    output_capacity: int = 0
    # the operator empties a full tray after this many seconds (scaled by
    # speed_factor); None (null or 0 in the file) = only by hand
    output_empty_after_s: float | None = DEFAULT_OUTPUT_EMPTY_AFTER_S

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> PackerSim:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> PackerSim:
        empty_after: float | None = DEFAULT_OUTPUT_EMPTY_AFTER_S
        if "output_empty_after_s" in node.data:
            if node.data["output_empty_after_s"] is None:
                empty_after = None
            else:
                empty_after = node.number("output_empty_after_s") or None
        return cls(
            speed_factor=node.number("speed_factor", 1.0),
            reject_rate=node.number("reject_rate", 0.0),
            jam_rate=node.number("jam_rate", 0.0),
            output_capacity=node.integer("output_capacity", 0),
            output_empty_after_s=empty_after,
        )


@dataclass(frozen=True)
class PackerSite:
    name: str
    address: str
    canisters: tuple[Canister, ...]
    driver: PackerDriver = "opcua"
    pouches_per_minute: float = 60.0
    sim: PackerSim = field(default_factory=PackerSim)

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> PackerSite:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> PackerSite:
        return cls(
            name=node.text("name"),
            address=node.text("address"),
            canisters=_parsed(Canister._read, node.children("canisters")),
            driver=cast(PackerDriver, node.choice("driver", get_args(PackerDriver), "opcua")),
            pouches_per_minute=node.number("pouches_per_minute", 60.0),
            sim=PackerSim._read(node.child("sim")),
        )

    @property
    def products(self) -> tuple[str, ...]:
        """The GTINs in the machine's canisters, in canister order."""
        return tuple(c.gtin for c in self.canisters)


@dataclass(frozen=True)
class PocketSim:
    """A simulated pocket's opening count and the nurses' habits at it."""

    initial: int = 0
    daily_withdrawals: float = 0.0
    # share of visits in which a nurse drops the dose
    waste_share: float = 0.0

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> PocketSim:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> PocketSim:
        return cls(
            initial=node.integer("initial", 0),
            daily_withdrawals=node.number("daily_withdrawals", 0.0),
            waste_share=node.number("waste_share", 0.0),
        )


@dataclass(frozen=True)
class Pocket:
    number: int
    gtin: str
    min: int
    max: int
    sim: PocketSim = field(default_factory=PocketSim)

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> Pocket:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> Pocket:
        return cls(
            number=node.integer("number"),
            gtin=node.gtin(),
            min=node.integer("min"),
            max=node.integer("max"),
            sim=PocketSim._read(node.child("sim")),
        )


@dataclass(frozen=True)
class Excursion:
    """A fridge failing at a time of the simulated day, for a while."""

    at: time
    celsius: float
    minutes: float = 30.0

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> Excursion:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> Excursion:
        # Unquoted, YAML 1.1 reads 15:30 as the number 930: only text is a time here.
        at = node.text("at")
        try:
            when = time.fromisoformat(at)
        except ValueError:
            raise node.fail("at", "a time of day (HH:MM)", at) from None
        return cls(when, node.number("celsius"), node.number("minutes", 30.0))

    @property
    def hours(self) -> float:
        """The time of day as hours since midnight."""
        return self.at.hour + self.at.minute / 60 + self.at.second / 3600


@dataclass(frozen=True)
class CabinetSite:
    name: str
    address: str
    pockets: tuple[Pocket, ...]
    driver: CabinetDriver = "modbus_tcp"
    unit_id: int = 1
    cold: bool = False
    poll_interval_s: float = 1.0
    excursions: tuple[Excursion, ...] = ()

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> CabinetSite:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> CabinetSite:
        driver = node.choice("driver", get_args(CabinetDriver), "modbus_tcp")
        return cls(
            name=node.text("name"),
            address=node.text("address"),
            pockets=_parsed(Pocket._read, node.children("pockets")),
            driver=cast(CabinetDriver, driver),
            unit_id=node.integer("unit_id", 1),
            cold=node.flag("cold", False),
            poll_interval_s=node.number("poll_interval_s", 1.0),
            excursions=_parsed(Excursion._read, node.child("sim").children("excursions")),
        )

    @property
    def products(self) -> tuple[str, ...]:
        """The GTINs in the cabinet's pockets, in pocket order."""
        return tuple(p.gtin for p in self.pockets)


@dataclass(frozen=True)
class ScannerSite:
    name: str
    address: str

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> ScannerSite:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> ScannerSite:
        return cls(node.text("name"), node.text("address"))


@dataclass(frozen=True)
class VerificationSite:
    """The national verification system. `bundled` (the file's `sim:`) asks the plant to
    run the simulated one; `register_stock` has it know every pack of the opening stock."""

    enabled: bool = False
    url: str = "http://127.0.0.1:8090"
    bundled: bool = False
    register_stock: bool = True

    @classmethod
    def from_site(cls, data: Mapping[str, object], path: str = "") -> VerificationSite:
        return cls._read(_Node(data, path))

    @classmethod
    def _read(cls, node: _Node) -> VerificationSite:
        sim = node.data.get("sim")
        register = (
            True if sim is None else _Node(sim, node.where("sim")).flag("register_stock", True)
        )
        return cls(
            enabled=node.flag("enabled", False),
            url=node.text("url", "http://127.0.0.1:8090"),
            bundled=sim is not None,
            register_stock=register,
        )

    @property
    def runs_bundled(self) -> bool:
        return self.enabled and self.bundled


@dataclass(frozen=True)
class SiteModel:
    """The machines of a site, the products they hold and the knobs of their simulators."""

    catalogue: tuple[CatalogueEntry, ...] = ()
    stock: tuple[StockLot, ...] = ()
    packers: tuple[PackerSite, ...] = ()
    cabinets: tuple[CabinetSite, ...] = ()
    scanners: tuple[ScannerSite, ...] = ()
    verification: VerificationSite = field(default_factory=VerificationSite)
    # the plant's seed; every simulator's own is derived from it
    seed: int = 0

    @classmethod
    def from_site(cls, data: Mapping[str, object]) -> SiteModel:
        node = _Node(data, "")
        verification = node.data.get("verification")
        site = cls(
            catalogue=_parsed(CatalogueEntry._read, node.children("catalogue")),
            stock=_parsed(StockLot._read, node.children("stock")),
            packers=_parsed(PackerSite._read, node.children("packers")),
            cabinets=_parsed(CabinetSite._read, node.children("cabinets")),
            scanners=_parsed(ScannerSite._read, node.children("scanners")),
            verification=(
                VerificationSite()
                if verification is None
                else VerificationSite._read(_Node(verification, "verification"))
            ),
            seed=node.integer("seed", 0),
        )
        site._check_products_known()
        return site

    @classmethod
    def load(cls, path: str | Path) -> SiteModel:
        """The site file at `path` (YAML)."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise SiteModelError(f"expected a mapping of site keys, got {data!r}")
        return cls.from_site(data)

    def _check_products_known(self) -> None:
        """A Modbus cabinet reports its pockets by article number: every product in a
        machine must be in the catalogue to have one."""
        known = {p.gtin for p in self.catalogue}
        for i, cabinet in enumerate(self.cabinets):
            for j, pocket in enumerate(cabinet.pockets):
                if pocket.gtin not in known:
                    raise SiteModelError(
                        f"cabinets[{i}].pockets[{j}].gtin: {pocket.gtin!r} is not in the catalogue"
                    )

    def articles(self) -> dict[str, int]:
        """Article number by GTIN."""
        return {p.gtin: p.article for p in self.catalogue}

    def pack_sizes(self) -> dict[str, int]:
        """Pack size by GTIN."""
        return {p.gtin: p.pack_size for p in self.catalogue}

    def cabinet(self, name: str) -> CabinetSite | None:
        return next((c for c in self.cabinets if c.name == name), None)
