"""Two everyday tasks of the store staff, for the CLI and the HTTP API alike: move one
lot between two places of the store, and book the store's expired stock as waste.

Both book through the ledger's own lot-exact command (`Ledger.move_lots`), so each
booking is one idempotent, audited transaction under its key. The checks come first
and name the field and the value at fault, so a refused request writes nothing. The
ledger's `move_lots` never takes reserved units, but it would take stock under a
location hold (a physical move may carry held stock); a store task must not, so the
free stock of the lot is checked here before the call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from controller.config import StoreConfig, valid_gtin
from controller.ledger import InsufficientStock, Ledger, LedgerError, LotMove, LotStock
from controller.ledger import UnknownEntity as LedgerUnknown
from controller.ledger.ledger import WASTE
from controller.ledger.reports import balances

#: The location kinds of the store: the only places a store task books between.
STORE_KINDS = ("store", "bin", "preparedness", "quarantine")
MAX_KEY = 200  # characters of an idempotency key, as the ledger stores it
MAX_REASON = 200
DEFAULT_MOVE_REASON = "moved between store locations"
WASTE_REASON = "expired store stock"

RefusalKind = Literal["invalid", "unknown", "short"]


class StoreTaskRefused(LedgerError):
    """A store task refused before anything was booked. `kind` says why: a bad value
    (`invalid`), something the ledger does not know (`unknown`), or less free stock
    than asked for (`short`)."""

    def __init__(self, field: str, value: object, message: str, *, kind: RefusalKind) -> None:
        super().__init__(f"{field}: {value!r} {message}")
        self.field = field
        self.value = value
        self.kind = kind


# ------------------------------------------------------------------ pure checks


def store_places(store: StoreConfig) -> dict[str, str]:
    """The store's locations and their kinds, as the site set-up creates them
    (Controller.prepare_ledger): the store, its bins, its preparedness bins and its
    quarantine."""
    places = {store.code: "store"}
    places.update({code: "bin" for code in store.bins})
    places.update({code: "preparedness" for code in store.preparedness})
    places[f"{store.code}/QUARANTINE"] = "quarantine"
    return places


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise StoreTaskRefused(
            "key", key, f"must be 1 to {MAX_KEY} characters, not blank", kind="invalid"
        )
    return key


def check_quantity(quantity: object) -> int:
    """A whole number of units above zero (a bool or 2.0 is not one)."""
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise StoreTaskRefused(
            "quantity", quantity, "must be a whole number above zero", kind="invalid"
        )
    return quantity


def check_reason(reason: object) -> str:
    if reason is None:
        return DEFAULT_MOVE_REASON
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise StoreTaskRefused(
            "reason", reason, f"must be 1 to {MAX_REASON} characters, not blank", kind="invalid"
        )
    return reason.strip()


def check_gtin(gtin: object) -> str:
    try:
        return valid_gtin(gtin if isinstance(gtin, str) else "")
    except ValueError as exc:
        raise StoreTaskRefused("gtin", gtin, f"is refused: {exc}", kind="invalid") from None


def check_actor(actor: object) -> str:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 100:
        raise StoreTaskRefused("actor", actor, "must name who did it", kind="invalid")
    return actor


def outside_store(places: Mapping[str, str], **codes: str) -> tuple[str, str] | None:
    """The first (field, code) whose code is not a store location, or None."""
    for field, code in codes.items():
        if code not in places:
            return field, code
    return None


def check_distinct(from_location: str, to_location: str) -> None:
    if from_location == to_location:
        raise StoreTaskRefused(
            "to_location", to_location, "is the location moved from", kind="invalid"
        )


def free_units(rows: Iterable[LotStock], location: str, gtin: str, batch: str) -> int:
    """Units of one lot at one location that nothing holds: on hand less reserved, and
    nothing at all while a location hold is on it."""
    return sum(
        r.available for r in rows if r.location == location and r.gtin == gtin and r.batch == batch
    )


def check_free(quantity: int, free: int, *, gtin: str, batch: str, location: str) -> None:
    if quantity > free:
        raise StoreTaskRefused(
            "quantity",
            quantity,
            f"is more than the {free} free units of {gtin}/{batch} at {location} "
            "(reserved or held units are not moved)",
            kind="short",
        )


def waste_key(key: str, location: str, gtin: str, batch: str) -> str:
    """The key of one (location, lot) of an expiry waste, derived from the request's
    key, so a retry finds it booked. A key too long for the ledger keeps its start
    and ends in a digest of the whole, which is as unique and as stable."""
    full = f"{key}:{location}:{gtin}/{batch}"
    if len(full) <= MAX_KEY:
        return full
    digest = hashlib.sha256(full.encode("utf-8")).hexdigest()[:32]
    return f"{full[: MAX_KEY - 33]}~{digest}"


def scope_of(location: str, places: Mapping[str, str]) -> set[str]:
    """A store location and the store locations under it (the store holds them all)."""
    if places.get(location) == "store":
        return set(places)
    return {location}


def local_today(timezone: str, now: datetime | None = None) -> date:
    """The date at the site: a lot that expires today is still usable there today."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(ZoneInfo(timezone)).date()


@dataclass(frozen=True)
class ExpiredLot:
    """Units of one expired lot at one location."""

    location: str
    gtin: str
    batch: str
    expiry: date
    units: int


@dataclass(frozen=True)
class LeftLot:
    """Expired units left in place, and why: `reserved` (reservations never take an
    expired lot, so they were reserved before it expired), `held` (a pharmacist decides
    on a location hold), `booked before` (this key wasted the lot already) or `changed`
    (the stock moved while it was booked: run again)."""

    location: str
    gtin: str
    batch: str
    expiry: date
    units: int
    why: str


def expired_stock(
    rows: Iterable[LotStock], scope: Collection[str], today: date
) -> tuple[list[ExpiredLot], list[LeftLot]]:
    """What of the stock in `scope` has expired (expiry before `today`): the free units,
    to be wasted, and the units left in place with the reason."""
    wasted: list[ExpiredLot] = []
    left: list[LeftLot] = []
    for r in rows:
        if r.location not in scope or r.expiry >= today or r.on_hand <= 0:
            continue
        if r.held:
            left.append(LeftLot(r.location, r.gtin, r.batch, r.expiry, r.on_hand, "held"))
            continue
        if r.on_hand - r.reserved > 0:
            wasted.append(ExpiredLot(r.location, r.gtin, r.batch, r.expiry, r.on_hand - r.reserved))
        if r.reserved > 0:
            left.append(LeftLot(r.location, r.gtin, r.batch, r.expiry, r.reserved, "reserved"))
    return sorted(wasted, key=_place_order), sorted(left, key=_place_order)


def _place_order(lot: ExpiredLot | LeftLot) -> tuple[str, date, str, str]:
    return lot.location, lot.expiry, lot.gtin, lot.batch


# ------------------------------------------------------------------ moving a lot


@dataclass(frozen=True)
class MoveRequest:
    gtin: str
    batch: str
    from_location: str
    to_location: str
    quantity: int
    key: str
    actor: str
    reason: str | None = None


@dataclass(frozen=True)
class MoveResult:
    """A move as booked. `booked` is False when the key had been booked before: this
    request booked nothing."""

    key: str
    gtin: str
    batch: str
    from_location: str
    to_location: str
    quantity: int
    booked: bool


def move_stock(led: Ledger, places: Mapping[str, str], req: MoveRequest) -> MoveResult:
    """Moves free units of one lot between two store locations, under `req.key`."""
    key = check_key(req.key)
    quantity = check_quantity(req.quantity)
    reason = check_reason(req.reason)
    actor = check_actor(req.actor)
    gtin = check_gtin(req.gtin)
    check_distinct(req.from_location, req.to_location)

    move = LotMove(gtin, req.batch, quantity, req.from_location, req.to_location, reason=reason)
    booked = MoveResult(key, gtin, req.batch, req.from_location, req.to_location, quantity, True)
    if led.command_done(key):
        # A retry: the ledger gives back the first run's result and books nothing (or
        # refuses a key that was used for another kind of command).
        led.move_lots(key, [move], actor=actor, reason=reason)
        return replace(booked, booked=False)
    _known_lot(led, gtin, req.batch)
    outside = outside_store(places, from_location=req.from_location, to_location=req.to_location)
    if outside is not None:
        raise _not_store(led, *outside)
    rows = led.stock(location=req.from_location, gtin=gtin)
    free = free_units(rows, req.from_location, gtin, req.batch)
    check_free(quantity, free, gtin=gtin, batch=req.batch, location=req.from_location)
    try:
        led.move_lots(key, [move], actor=actor, reason=reason)
    except InsufficientStock as exc:  # taken by someone else since the check above
        check_free(quantity, exc.available, gtin=gtin, batch=req.batch, location=req.from_location)
        raise
    except LedgerUnknown as exc:  # in the site file, not in the ledger
        field = "from_location" if exc.value == req.from_location else "to_location"
        raise StoreTaskRefused(
            field, exc.value, "is not a location of the ledger", kind="unknown"
        ) from None
    return booked


def _known_lot(led: Ledger, gtin: str, batch: str) -> None:
    try:
        led.lot(gtin, batch)
    except LedgerUnknown as exc:
        if exc.field == "gtin":
            raise StoreTaskRefused(
                "gtin", gtin, "is not a product of the ledger", kind="unknown"
            ) from None
        raise StoreTaskRefused(
            "batch", batch, f"is not a lot of {gtin} in the ledger", kind="unknown"
        ) from None


def _not_store(led: Ledger, field: str, code: str) -> StoreTaskRefused:
    """An unknown location, or a known one outside the store (a pocket, a canister)."""
    try:
        balances(led, by="location", location=code)
    except LedgerUnknown:
        return StoreTaskRefused(field, code, "is not a location of the ledger", kind="unknown")
    return StoreTaskRefused(
        field,
        code,
        f"is not a store location (one of the kinds {', '.join(STORE_KINDS)})",
        kind="invalid",
    )


# ------------------------------------------------------------------ expired stock


@dataclass(frozen=True)
class ExpiredWaste:
    """What an expiry waste booked (or, with `dry_run`, would book), and the total."""

    location: str
    today: date
    dry_run: bool
    key: str
    wasted: tuple[ExpiredLot, ...]
    left: tuple[LeftLot, ...]
    units: int


def waste_expired(
    led: Ledger,
    places: Mapping[str, str],
    *,
    location: str,
    key: str,
    actor: str,
    today: date,
    dry_run: bool = False,
) -> ExpiredWaste:
    """Books every free unit of an expired lot in `location` (and the store locations
    under it) to WASTE with reason code `expired`: one lot-exact command per (location,
    lot), under a key derived from `key`."""
    key = check_key(key)
    actor = check_actor(actor)
    if location not in places:
        raise _not_store(led, "location", location)
    wasted, left = expired_stock(led.stock(), scope_of(location, places), today)
    if dry_run:
        return _summary(location, today, True, key, wasted, left)
    booked: list[ExpiredLot] = []
    for lot in wasted:
        line_key = waste_key(key, lot.location, lot.gtin, lot.batch)
        if led.command_done(line_key):
            left.append(_left(lot, "booked before"))
            continue
        move = LotMove(
            lot.gtin,
            lot.batch,
            lot.units,
            lot.location,
            WASTE,
            kind="waste",
            reason=f"expired {lot.expiry.isoformat()}",
            reason_code="expired",
        )
        try:
            led.move_lots(line_key, [move], actor=actor, reason=WASTE_REASON)
        except InsufficientStock:
            left.append(_left(lot, "changed"))
            continue
        booked.append(lot)
    return _summary(location, today, False, key, booked, left)


def _left(lot: ExpiredLot, why: str) -> LeftLot:
    return LeftLot(lot.location, lot.gtin, lot.batch, lot.expiry, lot.units, why)


def _summary(
    location: str,
    today: date,
    dry_run: bool,
    key: str,
    wasted: list[ExpiredLot],
    left: list[LeftLot],
) -> ExpiredWaste:
    return ExpiredWaste(
        location=location,
        today=today,
        dry_run=dry_run,
        key=key,
        wasted=tuple(wasted),
        left=tuple(left),
        units=sum(lot.units for lot in wasted),
    )
