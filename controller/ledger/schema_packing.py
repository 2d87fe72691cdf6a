"""Tables of dose packing: orders, jobs, the doses planned into them and canister fills.

They live beside the ledger, in the same database, so a job's state, its reservation
and its movements can never disagree after a crash.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from controller.ledger.schema_base import UTCDateTime, check_in, metadata
from controller.ledger.states import (
    DoseOrderStatus,
    JobState,
    values,
)

ORDER_STATUSES = values(DoseOrderStatus)
# packing_jobs.state has no CHECK (the migrations never gave it one); the values are
# JobState's all the same.
JOB_STATES = values(JobState)

# One dose order as received. `content_key` is a hash of what the order asks for (patient
# pseudonym, ward, product, dose, times, period): the same order received twice is one
# order, never a double dose.
dose_orders = Table(
    "dose_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("content_key", String(64), nullable=False, unique=True),
    Column("source", String(20), nullable=False),
    Column("patient", String(20), nullable=False),
    Column("ward", String(32), nullable=False),
    Column("gtin", String(14), nullable=False),
    Column("units", Integer, nullable=False),
    Column("times", String(200), nullable=False),
    Column("start_day", Date, nullable=False),
    Column("end_day", Date, nullable=False),
    Column("status", String(10), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("received_by", String(100), nullable=False),
    Column("reviewed_by", String(100), nullable=True),
    Column("reviewed_at", UTCDateTime(), nullable=True),
    Column("review_note", Text, nullable=True),
    CheckConstraint(check_in("status", DoseOrderStatus), name="ck_dose_order_status"),
    CheckConstraint("units > 0", name="ck_dose_order_units"),
)

# A packing job and everything recovery needs: the pouch list (`spec`, JSON), the
# packer, the attempt (part of the reservation key) and the canisters' dispensed
# totals when the machine took the job (`baseline`, JSON), from which its pouches are
# booked even if the controller died in between.
packing_jobs = Table(
    "packing_jobs",
    metadata,
    Column("job_id", String(100), primary_key=True),
    Column("day", Date, nullable=False),
    Column("ward", String(32), nullable=False),
    Column("slot", String(5), nullable=False),
    Column("state", String(10), nullable=False),
    Column("packer", String(64), nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("baseline", Text, nullable=True),
    Column("good", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)
Index("ix_packing_jobs_state", packing_jobs.c.state)

# Which order's dose at which day and time went into which job: planning again never
# plans a dose twice.
planned_doses = Table(
    "planned_doses",
    metadata,
    Column("order_id", Integer, ForeignKey("dose_orders.id"), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("slot", String(5), primary_key=True),
    Column("job_id", String(100), ForeignKey("packing_jobs.job_id"), nullable=False),
)

# A canister refill sent to a machine: written before the machine is told, with the
# canister's refilled total at that moment, so after a crash the machine's counter says
# whether the refill happened (post it) or not (void it).
canister_fills = Table(
    "canister_fills",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("packer", String(64), nullable=False),
    Column("canister", Integer, nullable=False),
    Column("gtin", String(14), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("refilled_before", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # The one lot the canister is filled from, and the canister's count and dispensed
    # total before the refill: with them recovery can tell whether a refill arrived on
    # a machine that reports no refilled total (count + dispensed - before = refilled).
    Column("batch", String(20)),
    Column("count_before", BigInteger),
    Column("dispensed_before", BigInteger),
    # The scan station whose GS1 scan confirmed the pack at the canister.
    Column("confirmed_by", String(64)),
)
