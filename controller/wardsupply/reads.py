"""The ward-supply reads that take several queries, each on one connection, for the
API and the console: they open the ledger's connection here, below the routes."""

from __future__ import annotations

from collections import Counter, defaultdict

from controller.wardsupply import views
from controller.wardsupply.service import WardSupply


def requisitions(ws: WardSupply, limit: int) -> list[views.RequisitionView]:
    """The latest `limit` requisitions."""
    with ws.ledger.engine.connect() as c:
        numbers = views.requisition_numbers(c, limit=limit)
        return [views.requisition(c, n) for n in numbers]


def requisition(ws: WardSupply, number: str) -> views.RequisitionView:
    with ws.ledger.engine.connect() as c:
        return views.requisition(c, number)


def pick_lists(ws: WardSupply, status: str | None) -> list[views.PickListView]:
    with ws.ledger.engine.connect() as c:
        numbers = views.pick_list_numbers(c, status)
    return [ws.pick_list(n) for n in numbers]


def notes(ws: WardSupply, status: str | None, drug_room: str | None = None) -> list[views.NoteView]:
    with ws.ledger.engine.connect() as c:
        numbers = views.note_numbers(c, status=status, drug_room=drug_room)
        return [views.note(c, n) for n in numbers]


def drug_room_overview(
    ws: WardSupply, open_states: tuple[str, ...]
) -> tuple[dict[str, Counter[str]], dict[str, int]]:
    """Open lines per drug room by status, and notes in transit per drug room."""
    by_room: dict[str, Counter[str]] = defaultdict(Counter)
    in_transit: dict[str, int] = defaultdict(int)
    with ws.ledger.engine.connect() as c:
        for line in views.lines(c, statuses=open_states):
            by_room[line.drug_room][line.status] += 1
        for number in views.note_numbers(c, status="in_transit"):
            in_transit[views.note(c, number).drug_room] += 1
    return by_room, in_transit
