"""The bodies and answers of the ward-supply routes (controller/api/routes_wardsupply.py):
pydantic models, so the OpenAPI document describes every field and limit."""

from __future__ import annotations

import datetime as dt
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.api.models import Closed, one_of
from controller.ledger.ward_states import Deviation, LineStatus, NoteStatus, PickListStatus
from controller.wardsupply import model, views
from controller.wardsupply.notes import NOTE_PREFIX
from controller.wardsupply.reliability import ReliabilityReport

FHIR_TYPE = "application/fhir+json"
JSON_TYPE = "application/json"
MAX_ID = 2**31 - 1  # the id columns (INTEGER on PostgreSQL)
MAX_NUMBER = 40  # requisition, pick list and delivery note numbers
MAX_ROOM = 30  # drug room codes (config.DrugRoom.code)
MAX_REASON = 300  # a decision's or deviation's reason
MAX_SCAN = 500  # a decoded symbol
MAX_BATCH = 20  # GS1 AI (10): up to 20 characters
MAX_LIST = 400  # lines of a requisition, deviations of a receipt, counts of a round
MAX_RELIABILITY_DAYS = 3660

if TYPE_CHECKING:
    LineStatusName = str
    PickListStatusName = str
    NoteStatusName = str
    DeviationName = str
else:
    LineStatusName = one_of(LineStatus)
    PickListStatusName = one_of(PickListStatus)
    NoteStatusName = one_of(NoteStatus)
    DeviationName = one_of(Deviation)
DecisionName = Literal["approve", "reduce", "substitute", "reject"]
Gtin14 = Annotated[str, Field(pattern=r"^[0-9]{14}$", description="14-digit GTIN")]


# ----------------------------------------------------------------------------- models


class _Rows(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Booked(BaseModel):
    number: str = Field(description="the requisition's number, WR-<yyyymmdd>-<nnnnnn>")
    duplicate: bool = Field(description="true: the sender's id was booked before; nothing new")
    lines: int
    flagged: int = Field(description="lines a pharmacist decides one by one")


class Line(_Rows):
    id: int
    requisition: str
    line_no: int
    drug_room: str
    hospital: str
    ward: str
    urgent: bool
    gtin: str = Field(description="the product asked for")
    name: str
    packs: int = Field(description="packs asked for")
    pack_size: int = Field(description="units per pack (of the approved product, once decided)")
    approved_gtin: str | None = Field(description="the product approved (a substitute's GTIN)")
    approved_packs: int | None
    status: LineStatusName
    flags: list[str] = Field(
        description="why a pharmacist decides it alone: controlled, licence, not_on_list, "
        "unusual_quantity"
    )
    usual_packs: int | None = Field(description="the most the ward usually asks for")
    decision: str | None
    decided_by: str | None
    reason: str | None
    run: str | None = Field(description="the delivery run it goes with (URGENT: at once)")
    run_date: date | None
    due_at: datetime | None
    pick_list: str | None
    reserved_units: int
    picked_units: int
    delivered_units: int
    purchase_order: str | None = Field(description="ordered from the supplier first")
    back_order_of: int | None = Field(description="the short line this one carries on")


class Requisition(_Rows):
    number: str
    sender: str
    sender_id: str
    drug_room: str
    hospital: str
    ward: str
    source: str = Field(description="fhir, json, cli, topup or back_order")
    urgent: bool
    requested_by: str
    received_at: datetime
    lines: list[Line]


class RequisitionList(BaseModel):
    count: int
    requisitions: list[Requisition]


class ReviewQueue(BaseModel):
    count: int
    lines: list[Line]


class ApproveRoutineRequest(Closed):
    reason: str = Field(min_length=1, max_length=MAX_REASON, description="kept in the audit trail")
    drug_room: str | None = Field(
        default=None, min_length=1, max_length=MAX_ROOM, description="only this drug room's lines"
    )
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None,
        min_length=1,
        max_length=10_000,
        description="only these lines; each must be a routine line waiting for review",
    )


class ApproveRoutineResult(BaseModel):
    approved: int = Field(description="routine lines approved")
    by: str


class DecisionRequest(Closed):
    decision: DecisionName
    reason: str = Field(min_length=1, max_length=MAX_REASON, description="kept in the audit trail")
    packs: int | None = Field(
        default=None,
        ge=1,
        le=model.MAX_PACKS_PER_LINE,
        description="reduce: the packs approved (fewer than asked); substitute: optional",
    )
    substitute: Gtin14 | None = Field(
        default=None, description="substitute: the GTIN given instead (same substitution group)"
    )


class MakePickListsRequest(Closed):
    run: str = Field(
        min_length=1,
        max_length=10,
        pattern=r"^[A-Z0-9][A-Z0-9_-]*$",
        description="a delivery run of the site, or URGENT for the urgent lines",
    )
    date: dt.date | None = Field(
        default=None, description="the run's date (default: today, the site's local date)"
    )


class PickLot(BaseModel):
    gtin: str
    batch: str
    expiry: date
    location: str = Field(description="the bin to take it from")
    units: int
    picked: int = Field(description="units of the lot confirmed by scans")


class PickLine(BaseModel):
    line_id: int
    drug_room: str
    gtin: str
    name: str
    pack_size: int
    wanted_units: int
    reserved_units: int
    picked_units: int
    lots: list[PickLot] = Field(description="first expiry first")


class PickList(BaseModel):
    number: str
    hospital: str
    run: str
    run_date: date
    urgent: bool
    status: PickListStatusName
    created_at: datetime
    dispatched_at: datetime | None
    complete: bool = Field(description="every reserved unit is confirmed by a scan")
    lines: list[PickLine]

    @classmethod
    def of(cls, v: views.PickListView) -> PickList:
        return cls(
            number=v.number,
            hospital=v.hospital,
            run=v.run,
            run_date=v.run_date,
            urgent=v.urgent,
            status=v.status,
            created_at=v.created_at,
            dispatched_at=v.dispatched_at,
            complete=v.complete,
            lines=[
                PickLine(
                    line_id=x.line_id,
                    drug_room=x.drug_room,
                    gtin=x.gtin,
                    name=x.name,
                    pack_size=x.pack_size,
                    wanted_units=x.wanted_units,
                    reserved_units=x.reserved_units,
                    picked_units=x.picked_units,
                    lots=[PickLot(**lot) for lot in x.lots],
                )
                for x in v.lines
            ],
        )


class PickListList(BaseModel):
    count: int
    pick_lists: list[PickList]


class PickScanRequest(Closed):
    data: str = Field(
        min_length=1,
        max_length=MAX_SCAN,
        description="the pack's decoded GS1 symbol; group separators as \\u001d or '<GS>'",
    )


class PickScanResult(BaseModel):
    accepted: bool = Field(description="false: refused; `message` says why")
    message: str
    line_id: int | None = Field(description="the line the pack was confirmed on")
    list_complete: bool


class DispatchedPack(BaseModel):
    gtin: str
    batch: str
    expiry: date
    serial: str
    location: str


class DispatchResult(BaseModel):
    pick_list: str
    notes: list[str] = Field(description="one delivery note per drug room")
    lines: int = Field(description="lines dispatched now (0: the list was dispatched before)")
    short_lines: int
    back_orders: list[int] = Field(description="ids of the lines carrying what was short")
    packs: list[DispatchedPack] = Field(description="serialised packs sent")


class NoteLine(BaseModel):
    id: int
    line_id: int
    gtin: str
    name: str
    batch: str
    expiry: date
    units: int
    packs: float
    gs1: str = Field(description="GS1 element string of the lot: (01) GTIN (17) expiry (10) batch")
    received_units: int | None
    deviation: str | None
    deviation_units: int
    deviation_reason: str | None


class Note(BaseModel):
    number: str
    barcode: str = Field(description="the text of the note's barcode: DN:<number>")
    pick_list: str
    drug_room: str
    hospital: str
    ward: str
    status: NoteStatusName
    dispatched_at: datetime
    received_at: datetime | None
    received_by: str | None
    auto_received: bool
    lines: list[NoteLine]

    @classmethod
    def of(cls, n: views.NoteView) -> Note:
        return cls(
            number=n.number,
            barcode=NOTE_PREFIX + n.number,
            pick_list=n.pick_list,
            drug_room=n.drug_room,
            hospital=n.hospital,
            ward=n.ward,
            status=n.status,
            dispatched_at=n.dispatched_at,
            received_at=n.received_at,
            received_by=n.received_by,
            auto_received=n.auto_received,
            lines=[
                NoteLine(
                    id=x.id,
                    line_id=x.line_id,
                    gtin=x.gtin,
                    name=x.name,
                    batch=x.batch,
                    expiry=x.expiry,
                    units=x.units,
                    packs=x.packs,
                    gs1=x.gs1,
                    received_units=x.received_units,
                    deviation=x.deviation,
                    deviation_units=x.deviation_units,
                    deviation_reason=x.deviation_reason,
                )
                for x in n.lines
            ],
        )


class NoteList(BaseModel):
    count: int
    notes: list[Note]


class DeviationIn(Closed):
    gtin: Gtin14
    batch: str = Field(min_length=1, max_length=MAX_BATCH)
    deviation: DeviationName
    units: int = Field(ge=1, le=1_000_000, description="units missing, damaged or too many")
    reason: str = Field(min_length=1, max_length=MAX_REASON)


class ReceiptRequest(Closed):
    deviations: list[DeviationIn] = Field(
        default=[],
        max_length=MAX_LIST,
        description="what the ward found that the note does not say",
    )


class ReceiptResult(BaseModel):
    note: str
    booked: bool
    units: int = Field(description="units into the drug room")
    deviations: int
    consumed_on_delivery: int = Field(description="units of an uncounted room, used on delivery")


class NoteScanRequest(Closed):
    data: str = Field(
        min_length=1, max_length=MAX_NUMBER + 3, description="the note's barcode: DN:<number>"
    )


class Shelf(BaseModel):
    gtin: str
    name: str
    min: int = Field(description="packs")
    max: int = Field(description="packs")


class DrugRoom(BaseModel):
    code: str
    hospital: str
    ward: str
    counted: bool = Field(description="false: stock delivered counts as used on delivery")
    external: bool = Field(description="outside the hospital organisation: not supplied")
    runs: list[str] = Field(description="the delivery runs that serve it (empty: every run)")
    assortment: list[Shelf]


class DrugRoomList(BaseModel):
    count: int
    drug_rooms: list[DrugRoom]


class CountIn(Closed):
    gtin: Gtin14
    packs: int = Field(ge=0, le=10_000, description="whole packs on the shelf")


class TopUpRequest(Closed):
    round_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}$",
        description="the round's id: a round booked twice is booked once",
    )
    counts: list[CountIn] = Field(min_length=1, max_length=MAX_LIST)


class Proposed(BaseModel):
    gtin: str
    packs: int


class TopUpResult(BaseModel):
    drug_room: str
    round_id: str
    proposal: list[Proposed] = Field(description="packs up to max for what is at or below min")
    requisition: Booked | None = Field(description="the requisition booked (null: nothing due)")


class ParRow(_Rows):
    gtin: str
    name: str
    days: int
    days_seen: int
    total: int = Field(description="net units used over the days seen")
    mean_daily: float
    stdev_daily: float
    peak_daily: int
    current_min: int = Field(description="units")
    current_max: int = Field(description="units")
    suggested_min: int = Field(description="units")
    suggested_max: int = Field(description="units")
    pack_size: int
    suggested_min_packs: int
    suggested_max_packs: int


class ParList(BaseModel):
    drug_room: str
    days: int
    suggestions: list[ParRow]


class UnmetLine(_Rows):
    requisition: str
    line_no: int
    drug_room: str
    hospital: str
    gtin: str
    name: str
    wanted_units: int
    delivered_units: int
    due_at: datetime | None
    received_at: datetime | None
    cause: str


class HospitalShare(_Rows):
    hospital: str
    lines: int
    on_time_in_full: int
    share: float | None


class Reliability(BaseModel):
    since: datetime
    until: datetime
    target: float
    lines: int = Field(description="lines due (or delivered) in the window")
    on_time_in_full: int
    share: float | None = Field(description="on_time_in_full / lines; null when none")
    meets_target: bool | None
    by_hospital: list[HospitalShare]
    by_cause: dict[str, int] = Field(description="unmet lines per cause")
    unmet: list[UnmetLine]

    @classmethod
    def of(cls, r: ReliabilityReport) -> Reliability:
        return cls(
            since=r.since,
            until=r.until,
            target=r.target,
            lines=r.lines,
            on_time_in_full=r.on_time_in_full,
            share=r.share,
            meets_target=r.meets_target,
            by_hospital=[HospitalShare.model_validate(h) for h in r.by_hospital],
            by_cause=dict(r.by_cause),
            unmet=[UnmetLine.model_validate(u) for u in r.unmet],
        )
