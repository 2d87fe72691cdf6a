"""Request and response bodies of the HTTP API (the reports use the ledger's own
report dataclasses, so the API and `doseline report --json` give the same fields)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from controller.cabinets.refill_store import RefillRow
from controller.ledger.states import REVIEWED_ORDER_STATUSES, DoseOrderStatus, JobState
from controller.packing.store import JobRecord, OrderRecord


def one_of(*allowed: Iterable[str]) -> Any:
    """A `Literal` of the allowed values, built at run time from their one definition
    (controller.ledger.states), so the OpenAPI document lists them as an enum and a
    request with another value is refused. Type checkers see the alias as `str`."""
    return Literal.__getitem__(tuple(str(value) for values in allowed for value in values))


if TYPE_CHECKING:
    OrderStatus = str
    ReviewedStatus = str
    JobStateName = str
else:
    OrderStatus = one_of(DoseOrderStatus)
    ReviewedStatus = one_of(REVIEWED_ORDER_STATUSES)  # what a review decides
    JobStateName = one_of(JobState)
PackerCommandName = Literal["hold", "unhold", "reset", "stop"]


def no_nul(value: str) -> str:
    """Text from a request: a NUL character is refused (PostgreSQL cannot store one and
    no code, number or note holds one), as a 422 naming the field."""
    if "\x00" in value:
        raise ValueError("NUL characters (\\x00) are not accepted")
    return value


#: A text path or query parameter that is looked up or stored (see `no_nul`).
Text = Annotated[str, AfterValidator(no_nul)]


# A GTIN as a request carries it: 8 to 14 digits (no other character reaches the
# database); its check digit and whether the product is known are the ledger's checks.
GTIN_PATTERN = r"^[0-9]{8,14}$"
GtinText = Annotated[str, Field(pattern=GTIN_PATTERN, description="the product's GTIN")]


class Closed(BaseModel):
    """A request body: unknown fields are refused, not ignored, and no text field may
    hold a NUL character (`no_nul`)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return no_nul(value) if isinstance(value, str) else value


# ----------------------------------------------------------------------------- orders


class SubmitResult(BaseModel):
    format: Literal["fhir", "hl7v2"]
    added: list[int] = Field(description="ids of the orders filed now")
    duplicates: list[int] = Field(description="ids of orders of the message already on file")
    status: OrderStatus = Field(description="the status the new orders got")


class Order(BaseModel):
    id: int
    status: OrderStatus
    source: str
    ward: str
    patient: str = Field(description="the patient's pseudonym (never a clear identifier)")
    gtin: str
    units: int
    times: list[str] = Field(description="administration times, HH:MM")
    start: date
    end: date
    received_at: datetime
    received_by: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None

    @classmethod
    def of(cls, r: OrderRecord) -> Order:
        o = r.order
        return cls(
            id=r.id,
            status=r.status,
            source=r.source,
            ward=o.ward,
            patient=o.patient,
            gtin=o.gtin,
            units=o.units,
            times=[f"{t:%H:%M}" for t in o.times],
            start=o.start,
            end=o.end,
            received_at=r.received_at,
            received_by=r.received_by,
            reviewed_by=r.reviewed_by,
            reviewed_at=r.reviewed_at,
            review_note=r.review_note,
        )


class OrderList(BaseModel):
    count: int
    orders: list[Order]


MAX_ORDER_ID = 2**31 - 1  # the dose_orders id column (INTEGER on PostgreSQL)
OrderId = Annotated[int, Field(ge=1, le=MAX_ORDER_ID)]


class ReviewRequest(Closed):
    order_ids: list[OrderId] = Field(min_length=1, max_length=10_000)
    approve: bool
    note: str = Field(default="", max_length=200, description="required for a rejection")


class ReviewResult(BaseModel):
    reviewed: int
    status: ReviewedStatus
    by: str


class AmendRequest(Closed):
    units: int | None = Field(
        default=None,
        ge=1,
        le=20,
        description="reduce: the units per administration approved (fewer than ordered)",
    )
    gtin: Annotated[str, Field(pattern=r"^[0-9]{14}$")] | None = Field(
        default=None,
        description="substitute: the GTIN packed instead (same substitution group, active)",
    )
    note: str = Field(min_length=1, max_length=200, description="the reason, always required")


# ----------------------------------------------------------------------------- jobs


class SubstitutionOut(BaseModel):
    ordered: str
    packed: str
    units: int


class Job(BaseModel):
    job_id: str
    day: date
    ward: str
    time: str = Field(description="administration time, HH:MM")
    state: JobStateName
    packer: str | None
    attempt: int
    pouches: int = Field(description="pouches in the job")
    machine_pouches: int = Field(description="pouches with something for the machine")
    good: int
    rejected: int
    reason: str
    updated_at: datetime
    packers: list[str] = Field(description="packers able to pack it, fastest first")
    units_by_gtin: dict[str, int]
    manual_units_by_gtin: dict[str, int]
    substitutions: list[SubstitutionOut]

    @classmethod
    def of(cls, r: JobRecord) -> Job:
        j = r.job
        return cls(
            job_id=j.job_id,
            day=j.day,
            ward=j.ward,
            time=f"{j.time:%H:%M}",
            state=r.state,
            packer=r.packer,
            attempt=r.attempt,
            pouches=len(j.pouches),
            machine_pouches=len(j.machine_pouches()),
            good=r.good,
            rejected=r.rejected,
            reason=r.reason,
            updated_at=r.updated_at,
            packers=list(j.packers),
            units_by_gtin=j.units_by_gtin(),
            manual_units_by_gtin=j.manual_units_by_gtin(),
            substitutions=[
                SubstitutionOut(ordered=s.ordered, packed=s.packed, units=s.units)
                for s in j.substitutions
            ],
        )


class JobList(BaseModel):
    count: int
    jobs: list[Job]


# ----------------------------------------------------------------------------- packers


class PackerCommandRequest(Closed):
    command: PackerCommandName


class PackerCommandResult(BaseModel):
    packer: str
    command: str = Field(description="the PackML command sent (Hold, Unhold, Reset, Stop)")
    state: str | None = Field(description="PackML state read after the command, if readable")
    state_number: int | None
    audited: bool = Field(description="whether the command was written to the audit trail")


# ----------------------------------------------------------------------------- refills


class RefillList(BaseModel):
    count: int
    refills: list[RefillRow]


class ScanRequest(Closed):
    station: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,49}$",
        description="the scan station (a handheld's name); scans of one station form one flow",
    )
    data: str = Field(
        min_length=1,
        max_length=500,
        description="the decoded symbol; GS1 group separators as \\u001d or written '<GS>'",
    )


class ScanResult(BaseModel):
    accepted: bool
    message: str
    ref: str | None = None


# ----------------------------------------------------------------------------- audit


class AuditEntry(BaseModel):
    seq: int
    ts: datetime
    actor: str
    action: str
    entity: str
    key: str
    reason: str
    old: Any = Field(description="the old value (JSON), null for a creation")
    new: Any = Field(description="the new value (JSON), null for a removal")
    hash: str


class AuditList(BaseModel):
    count: int
    entries: list[AuditEntry]


# ----------------------------------------------------------------------------- health


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    site: str
    version: str
    ledger: bool = Field(description="the ledger database answers")
    controller: bool = Field(description="a controller runs behind this API")
    packers: dict[str, bool] = Field(description="packer name: linked (with a controller)")
