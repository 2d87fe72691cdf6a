"""Top-up rounds in a drug room and its par levels: the counts become a requisition up
to max (and, in a counted room, the booked use), and min/max are suggested from the
room's use by the cabinets' par rule. Functions on a WardSupply, offered as its methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from controller.config import DrugRoom
from controller.ledger import LedgerError
from controller.ledger.ward_locations import drug_room_location
from controller.wardsupply import rules
from controller.wardsupply.model import (
    Booked,
    LineIn,
    RequisitionIn,
    RequisitionSource,
    UnknownEntity,
    WardSupplyError,
)

if TYPE_CHECKING:
    from controller.wardsupply.service import WardSupply


def top_up(
    ws: WardSupply, drug_room: str, counts: Sequence[tuple[str, int]], *, actor: str, round_id: str
) -> tuple[Booked | None, list[tuple[str, int]]]:
    """A technician's top-up round: the count of each shelf (in packs). A counted
    room books its use from the count; every room gets a requisition up to max for
    what is at or below min. Returns the booking (None: nothing to order) and the
    proposal."""
    room = ws.room(drug_room)
    ws.check_unit(room)
    shelf: list[rules.ShelfCount] = []
    seen: set[str] = set()
    for i, (gtin, packs) in enumerate(counts):
        level = room.level(gtin)
        if gtin not in ws.products:
            raise UnknownEntity(f"counts[{i}].gtin", gtin, "is not in the catalogue")
        if level is None:
            raise WardSupplyError(
                f"counts[{i}].gtin", gtin, f"is not on the list of drug room {drug_room}"
            )
        if gtin in seen:
            raise WardSupplyError(f"counts[{i}].gtin", gtin, "is counted twice")
        seen.add(gtin)
        if isinstance(packs, bool) or not isinstance(packs, int) or not 0 <= packs <= 10_000:
            raise WardSupplyError(f"counts[{i}].packs", packs, "must be 0 or more whole packs")
        shelf.append(rules.ShelfCount(gtin, packs, level.min, level.max))
    if room.counted:
        for gtin, packs in counts:
            _book_count(ws, room, gtin, packs * ws.products[gtin].pack_size, actor, round_id)
    proposal = rules.top_up(shelf)
    if not proposal:
        return None, []
    booked = ws.submit(
        RequisitionIn(
            sender="topup",
            sender_id=f"{drug_room}:{round_id}",
            drug_room=drug_room,
            lines=tuple(LineIn(g, p) for g, p in proposal),
            source=RequisitionSource.TOPUP,
            requested_by=actor,
        ),
        actor=actor,
    )
    return booked, proposal


def _book_count(
    ws: WardSupply, room: DrugRoom, gtin: str, units: int, actor: str, round_id: str
) -> None:
    """In a counted room, what is gone since the last count was used. More on the
    shelf than the ledger knows is put on the lot last there; with no lot known (stock
    that came before the room was counted) a discrepancy asks for a stocktake by lot."""
    shelf = drug_room_location(room)
    on_hand = ws.ledger.on_hand(shelf, gtin)
    key = f"ward-count:{room.code}:{round_id}:{gtin}"
    if units < on_hand:
        ws.ledger.consume(
            key,
            gtin=gtin,
            quantity=on_hand - units,
            location=shelf,
            actor=actor,
            reason=f"used since the last count ({round_id})",
        )
    elif units > on_hand:
        try:
            ws.ledger.count_to(
                key,
                location=shelf,
                gtin=gtin,
                counted=units,
                actor=actor,
                reason=f"top-up round {round_id}: more on the shelf than booked",
            )
        except LedgerError as exc:
            ws.ledger.raise_discrepancy(
                key,
                shelf,
                gtin,
                source="count",
                device_value=units,
                ledger_value=on_hand,
                detail=f"top-up round {round_id}: {exc}",
                actor=actor,
            )


def suggest_par(ws: WardSupply, drug_room: str, *, days: int = 28) -> list[Any]:
    """Suggested min and max for a room's list from its use, by the cabinets' par
    rule (controller.cabinets.par), converted to packs."""
    from controller.cabinets.par import PocketPlan, suggest_par

    room = ws.room(drug_room)
    plans = [
        PocketPlan(
            cabinet=room.code,
            pocket=i,
            gtin=s.gtin,
            current_min=s.min * ws.products[s.gtin].pack_size,
            current_max=s.max * ws.products[s.gtin].pack_size,
            at=drug_room_location(room),
        )
        for i, s in enumerate(room.assortment, start=1)
    ]
    return suggest_par(
        ws.ledger.engine,
        plans,
        days=days,
        until=ws.clock().astimezone(ws.tz).date(),
        tz=ws.tz,
        lead_time_days=1.0,
        days_of_supply=7.0,
    )
