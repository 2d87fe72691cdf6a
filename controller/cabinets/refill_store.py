"""Pocket refills and pick lists, kept in the ledger's database.

A refill row is written before its stock is reserved, and every later step (listed,
scanned, booked, told to the cabinet, cancelled) is one audited transaction. A
controller that stops at any point finds each open refill where it left it and can
settle it against the ledger's reservation of the same key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from controller.ledger import Ledger
from controller.ledger.schema import pick_lists, pocket_refills
from controller.ledger.states import OPEN_REFILL_STATES, RefillState


@dataclass(frozen=True)
class RefillRow:
    refill_id: str
    cabinet: str
    pocket: int
    gtin: str
    quantity: int
    urgent: bool
    state: RefillState
    pick_list: str | None
    reservation_key: str
    scanned: frozenset[int]
    created_at: datetime
    due_at: datetime
    confirmed_at: datetime | None
    confirmed_by: str | None
    command_sequence: int | None
    cancel_reason: str | None


@dataclass(frozen=True)
class PickListRow:
    list_id: str
    cabinet: str
    urgent: bool
    due_at: datetime
    created_at: datetime
    status: str


class RefillStore:
    def __init__(self, ledger: Ledger, actor: str = "replenishment") -> None:
        self.ledger = ledger
        self.actor = actor

    # ------------------------------------------------------------ writes

    def add(
        self,
        *,
        refill_id: str,
        cabinet: str,
        pocket: int,
        gtin: str,
        quantity: int,
        urgent: bool,
        reservation_key: str,
        created_at: datetime,
        due_at: datetime,
    ) -> None:
        row = {
            "refill_id": refill_id,
            "cabinet": cabinet,
            "pocket": pocket,
            "gtin": gtin,
            "quantity": quantity,
            "urgent": urgent,
            "state": "reserved",
            "reservation_key": reservation_key,
            "scanned": "[]",
            "created_at": created_at,
            "due_at": due_at,
        }
        with self.ledger.audited(self.actor, "refill requested", f"{cabinet} pocket {pocket}") as c:
            c.execute(insert(pocket_refills).values(**row))
            self.ledger.note("pocket_refill", refill_id, None, _public(row))

    def update(self, refill_id: str, action: str, **values: Any) -> None:
        """Changes some fields of one refill (state, quantity, scanned lines...)."""
        if "scanned" in values:
            values["scanned"] = json.dumps(sorted(values["scanned"]))
        with self.ledger.audited(self.actor, action, refill_id) as conn:
            old = conn.execute(
                select(*[pocket_refills.c[k] for k in values]).where(
                    pocket_refills.c.refill_id == refill_id
                )
            ).one()
            conn.execute(
                update(pocket_refills)
                .where(pocket_refills.c.refill_id == refill_id)
                .values(**values)
            )
            self.ledger.note(
                "pocket_refill", refill_id, _public(dict(old._mapping)), _public(values)
            )

    def add_list(
        self,
        *,
        list_id: str,
        cabinet: str,
        urgent: bool,
        created_at: datetime,
        due_at: datetime,
        refill_ids: Sequence[str],
    ) -> None:
        """A pick list and its refills moved to picking, in one transaction."""
        row = {
            "list_id": list_id,
            "cabinet": cabinet,
            "urgent": urgent,
            "due_at": due_at,
            "created_at": created_at,
            "status": "open",
        }
        with self.ledger.audited(self.actor, "pick list made", list_id) as conn:
            conn.execute(insert(pick_lists).values(**row))
            conn.execute(
                update(pocket_refills)
                .where(pocket_refills.c.refill_id.in_(list(refill_ids)))
                .values(state="picking", pick_list=list_id)
            )
            self.ledger.note("pick_list", list_id, None, {**_public(row), "refills": refill_ids})

    def close_list(self, list_id: str, status: str, closed_at: datetime) -> None:
        with self.ledger.audited(self.actor, f"pick list {status}", list_id) as conn:
            conn.execute(
                update(pick_lists)
                .where(pick_lists.c.list_id == list_id)
                .values(status=status, closed_at=closed_at)
            )
            self.ledger.note("pick_list", list_id, "open", status)

    # ------------------------------------------------------------ reads

    def open_refills(self) -> list[RefillRow]:
        return self.refills(states=OPEN_REFILL_STATES)

    def refills(self, states: Sequence[str] | None = None) -> list[RefillRow]:
        query = select(pocket_refills).order_by(pocket_refills.c.id)
        if states is not None:
            query = query.where(pocket_refills.c.state.in_(list(states)))
        with self.ledger.engine.connect() as conn:
            return [_refill(r._mapping) for r in conn.execute(query)]

    def last_number(self) -> int:
        """The highest running number in the ids of refills and pick lists on file
        (`...-<n>`): a controller started again numbers on from there, so an id made
        after a restart never meets one made before it."""
        highest = 0
        with self.ledger.engine.connect() as conn:
            for ident in [
                *conn.execute(select(pick_lists.c.list_id)).scalars(),
                *conn.execute(select(pocket_refills.c.refill_id)).scalars(),
            ]:
                tail = ident.rsplit("-", 1)[-1]
                if tail.isdigit():
                    highest = max(highest, int(tail))
        return highest

    def open_lists(self) -> list[PickListRow]:
        query = select(pick_lists).where(pick_lists.c.status == "open").order_by(pick_lists.c.id)
        with self.ledger.engine.connect() as conn:
            return [
                PickListRow(r.list_id, r.cabinet, bool(r.urgent), r.due_at, r.created_at, r.status)
                for r in conn.execute(query)
            ]


def _refill(m: Any) -> RefillRow:
    return RefillRow(
        refill_id=m["refill_id"],
        cabinet=m["cabinet"],
        pocket=m["pocket"],
        gtin=m["gtin"],
        quantity=m["quantity"],
        urgent=bool(m["urgent"]),
        state=RefillState(m["state"]),
        pick_list=m["pick_list"],
        reservation_key=m["reservation_key"],
        scanned=frozenset(json.loads(m["scanned"])),
        created_at=m["created_at"],
        due_at=m["due_at"],
        confirmed_at=m["confirmed_at"],
        confirmed_by=m["confirmed_by"],
        command_sequence=m["command_sequence"],
        cancel_reason=m["cancel_reason"],
    )


def _public(values: dict[str, Any]) -> dict[str, Any]:
    """Values as the audit trail stores them (datetimes as ISO text)."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}
