"""Each set of states is defined once (controller/ledger/states.py, ward_states.py): the
tables' CHECK constraints, the HTTP API's allowed values and the state machines must
all say the same, so a state added in one place only fails here."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import CheckConstraint, Table

from controller.api import models, models_wardsupply, routes_purchasing, routes_verification
from controller.cabinets import refill_store
from controller.cabinets.replenishment import REFILL_TRANSITIONS, Refill
from controller.config import Pocket
from controller.ledger import schema, states, ward_states
from controller.packing import job, store

# ---------------------------------------------------------------- reading each place


def check_values(table: Table, name: str) -> list[str]:
    """The values a named CHECK constraint allows, in its order."""
    found = [c for c in table.constraints if isinstance(c, CheckConstraint) and c.name == name]
    assert len(found) == 1, f"{table.name}: no CHECK named {name}"
    match = re.search(r"\bIN \(([^)]*)\)", str(found[0].sqltext))
    assert match is not None, str(found[0].sqltext)
    return re.findall(r"'([^']*)'", match.group(1))


def _enum_of(schema_: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    ref = schema_.get("$ref")
    if ref is not None:
        return _enum_of(defs[ref.rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema_:  # an optional field: the non-null part
        (inner,) = [s for s in schema_["anyOf"] if s.get("type") != "null"]
        return _enum_of(inner, defs)
    values = schema_["enum"]
    assert all(isinstance(v, str) for v in values), values
    return list(values)


def api_values(model: type[BaseModel], field: str) -> list[str]:
    """The values a pydantic model's field allows, read from its JSON schema (what the
    OpenAPI document shows)."""
    doc = model.model_json_schema()
    return _enum_of(doc["properties"][field], doc.get("$defs", {}))


def type_values(annotation: Any) -> list[str]:
    """The values a query parameter's type allows, read from its JSON schema."""
    doc = TypeAdapter(annotation).json_schema()
    return _enum_of(doc, doc.get("$defs", {}))


def defined(states_: type[enum.StrEnum]) -> list[str]:
    return [s.value for s in states_]


def machine_values(machine: Any) -> list[str]:
    return [str(state.value) for state in machine.states.values()]


def transition_values(transitions: list[dict[str, Any]]) -> set[str]:
    used: set[str] = set()
    for t in transitions:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        used.update(str(s.value) for s in [*sources, t["dest"]])
    return used


# ---------------------------------------------------------------- dose orders and jobs


def test_dose_order_statuses() -> None:
    one = defined(states.DoseOrderStatus)
    assert one == ["pending", "approved", "rejected"]  # stored values never change
    assert check_values(schema.dose_orders, "ck_dose_order_status") == one
    assert list(schema.ORDER_STATUSES) == one
    assert api_values(models.Order, "status") == one
    assert api_values(models.SubmitResult, "status") == one
    assert type_values(models.OrderStatus) == one
    reviewed = [str(s) for s in states.REVIEWED_ORDER_STATUSES]
    assert api_values(models.ReviewResult, "status") == reviewed
    assert set(reviewed) < set(one)


def test_job_states() -> None:
    one = defined(states.JobState)
    assert one == [
        "planned",
        "reserved",
        "loaded",
        "packing",
        "held",
        "completed",
        "partial",
        "failed",
        "cancelled",
        "manual",
    ]
    assert list(schema.JOB_STATES) == one
    assert api_values(models.Job, "state") == one
    assert type_values(models.JobStateName) == one
    assert machine_values(job.Job("job-1").machine) == one
    assert transition_values(job.TRANSITIONS) == set(one)
    open_ = [str(s) for s in store.OPEN_STATES]
    assert open_ == ["planned", "reserved", "loaded", "packing", "held"]
    assert set(open_) | {str(s) for s in job.TERMINAL} == set(one)


# ---------------------------------------------------------------- pocket refills


def test_refill_states() -> None:
    one = defined(states.RefillState)
    assert one == ["reserved", "picking", "booked", "confirmed", "cancelled"]
    refill = Refill(
        "r-1",
        "CAB-1",
        Pocket.model_construct(number=1, gtin="07046261111111", min=5, max=20),
        10,
        False,
        created=datetime(2026, 1, 1, tzinfo=UTC),
        due_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert machine_values(refill.machine) == one
    assert transition_values(REFILL_TRANSITIONS) == set(one)
    doc = models.RefillList.model_json_schema()  # the refills as the API answers them
    assert _enum_of(doc["$defs"]["RefillRow"]["properties"]["state"], doc["$defs"]) == one
    assert [str(s) for s in refill_store.OPEN_REFILL_STATES] == ["reserved", "picking", "booked"]


# ---------------------------------------------------------------- purchasing


def test_purchase_order_statuses() -> None:
    one = defined(states.PurchaseOrderStatus)
    assert one == ["open", "partial", "complete", "cancelled"]
    assert check_values(schema.purchase_orders, "ck_purchase_orders_status") == one
    assert list(schema.PURCHASE_ORDER_STATUSES) == one
    assert api_values(routes_purchasing.PurchaseOrder, "status") == one
    assert api_values(routes_purchasing.DeliveryReceipt, "order_status") == one
    assert type_values(routes_purchasing.OrderStatusFilter) == [*one, "all"]


def test_purchase_order_line_statuses() -> None:
    one = defined(states.PurchaseLineStatus)
    assert one == ["open", "back_order", "delivered", "short", "cancelled"]
    assert check_values(schema.purchase_order_lines, "ck_po_lines_status") == one
    assert list(schema.ORDER_LINE_STATUSES) == one
    assert api_values(routes_purchasing.PurchaseOrderLine, "status") == one
    assert api_values(routes_purchasing.DeliveryLineOutcome, "status") == one


# ---------------------------------------------------------------- ward supply


@pytest.mark.parametrize(
    ("states_", "table", "check", "model", "field"),
    [
        (
            ward_states.LineStatus,
            schema.ward_requisition_lines,
            "ck_ward_requisition_lines_status",
            models_wardsupply.Line,
            "status",
        ),
        (
            ward_states.PickListStatus,
            schema.ward_pick_lists,
            "ck_ward_pick_lists_status",
            models_wardsupply.PickList,
            "status",
        ),
        (
            ward_states.NoteStatus,
            schema.ward_delivery_notes,
            "ck_ward_delivery_notes_status",
            models_wardsupply.Note,
            "status",
        ),
        (
            ward_states.Deviation,
            schema.ward_note_lines,
            "ck_ward_note_lines_deviation",
            models_wardsupply.DeviationIn,
            "deviation",
        ),
    ],
)
def test_ward_supply_states(
    states_: type[enum.StrEnum], table: Table, check: str, model: type[BaseModel], field: str
) -> None:
    one = defined(states_)
    assert check_values(table, check) == one
    assert api_values(model, field) == one


def test_ward_supply_filters() -> None:
    assert type_values(models_wardsupply.PickListStatusName) == defined(ward_states.PickListStatus)
    assert type_values(models_wardsupply.NoteStatusName) == defined(ward_states.NoteStatus)
    source = check_values(schema.ward_requisitions, "ck_ward_requisitions_source")
    assert source == defined(ward_states.RequisitionSource)


# ---------------------------------------------------------------- holds, discrepancies


def test_hold_and_discrepancy_statuses() -> None:
    holds = defined(states.HoldStatus)
    assert holds == ["held", "released", "wasted"]
    assert check_values(schema.stock_holds, "ck_stock_hold_status") == holds
    assert list(schema.HOLD_STATUSES) == holds
    found = defined(states.DiscrepancyStatus)
    assert found == ["open", "resolved"]
    assert check_values(schema.stock_discrepancies, "ck_stock_discrepancy_status") == found
    assert list(schema.DISCREPANCY_STATUSES) == found


# ---------------------------------------------------------------- pack verification


def test_verification_states() -> None:
    packs = defined(states.PackStatus)
    assert packs == ["verified", "blocked", "decommissioned"]
    assert check_values(schema.packs, "ck_packs_status") == packs
    assert api_values(routes_verification.PackStatus, "status") == packs
    assert api_values(routes_verification.UndoResult, "status") == packs

    queue = defined(states.VerificationRequestStatus)
    assert queue == ["pending", "done", "failed"]
    assert check_values(schema.verification_queue, "ck_verification_queue_status") == queue
    assert api_values(routes_verification.QueuedRequest, "status") == queue
    assert type_values(routes_verification.QueueStatusFilter) == [*queue, "all"]

    operations = defined(states.VerificationOperation)
    assert operations == ["verify", "decommission", "undo"]
    ops = check_values(schema.verification_queue, "ck_verification_queue_operation")
    assert ops == operations

    alerts = defined(states.AlertStatus)
    assert alerts == ["open", "closed"]
    assert check_values(schema.verification_alerts, "ck_verification_alerts_status") == alerts
    assert api_values(routes_verification.Alert, "status") == alerts
    assert type_values(routes_verification.AlertStatusFilter) == [*alerts, "all"]
