"""Tables of the one-month stock duty beyond the stock itself: what is out of its scope,
exemptions as a lifecycle, the preparedness list, crisis periods, supplier shortages
and rationing, licences for unlicensed products, and the use of units the pharmacy
does not supply (so the region's obligation can be sized on its whole use).

Every row here is written through the ledger, in an audited transaction; none of
them moves stock.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from controller.ledger.schema_base import UTCDateTime, check_in, metadata

#: Why a product or a whole category does not count in the duty.
SCOPE_REASONS = ("individual_patient", "dental_care", "manufacturing_material")
#: Devices and protective equipment are consumable or durable; only consumables count.
DURABILITY = ("consumable", "durable")
EXEMPTION_STATUSES = ("active", "revoked")
SHORTAGE_STATUSES = ("open", "closed")
LICENCE_HOLDER_KINDS = ("patient", "ward")

# A product or a whole category marked out of the duty's scope, with its reason. One
# row names either a product or a category, never both.
duty_scope = Table(
    "duty_scope",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=True, unique=True),
    Column("category", String(30), nullable=True, unique=True),
    Column("reason", String(30), nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    Column("decided_by", String(100), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    CheckConstraint(
        "(product_id IS NULL AND category IS NOT NULL)"
        " OR (product_id IS NOT NULL AND category IS NULL)",
        name="ck_duty_scope_one_subject",
    ),
    CheckConstraint(check_in("reason", SCOPE_REASONS), name="ck_duty_scope_reason"),
)

# The preparedness list: per product a target and a floor in dispensing units, as the
# list was last imported (the whole file at once).
preparedness_targets = Table(
    "preparedness_targets",
    metadata,
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True),
    Column("target_units", Integer, nullable=False),
    Column("floor_units", Integer, nullable=False),
    Column("list_name", String(100), nullable=False),
    Column("imported_by", String(100), nullable=False),
    Column("imported_at", UTCDateTime(), nullable=False),
    CheckConstraint(
        "target_units > 0 AND floor_units >= 0 AND floor_units <= target_units",
        name="ck_preparedness_levels",
    ),
)

# A decided crisis period: stock may be drawn below the month. ends_at NULL: still on.
crisis_periods = Table(
    "crisis_periods",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=True),
    Column("reason", Text, nullable=False),
    Column("decided_by", String(100), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("ended_by", String(100), nullable=True),
    Column("end_reason", Text, nullable=True),
    CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="ck_crisis_period_order"),
)

# What a crisis period covers: categories and products. A period with no row covers
# every product.
crisis_scope = Table(
    "crisis_scope",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("crisis_id", Integer, ForeignKey("crisis_periods.id"), nullable=False),
    Column("category", String(30), nullable=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=True),
    CheckConstraint(
        "(product_id IS NULL AND category IS NOT NULL)"
        " OR (product_id IS NOT NULL AND category IS NULL)",
        name="ck_crisis_scope_one_subject",
    ),
)
Index("ix_crisis_scope_crisis", crisis_scope.c.crisis_id)

# A supplier's shortage notice for a product: when it was noticed, when it is expected
# to end, and which products stand in for it.
shortages = Table(
    "shortages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("notice_ref", String(100), nullable=False),
    Column("supplier", String(100), nullable=True),
    Column("noticed_at", UTCDateTime(), nullable=False),
    Column("expected_end", Date, nullable=True),
    Column("status", String(10), nullable=False, server_default="open"),
    Column("note", Text, nullable=False, server_default=""),
    Column("recorded_by", String(100), nullable=False),
    Column("closed_at", UTCDateTime(), nullable=True),
    Column("closed_by", String(100), nullable=True),
    UniqueConstraint("product_id", "notice_ref", name="uq_shortage_notice"),
    CheckConstraint(check_in("status", SHORTAGE_STATUSES), name="ck_shortage_status"),
)

shortage_substitutes = Table(
    "shortage_substitutes",
    metadata,
    Column("shortage_id", Integer, ForeignKey("shortages.id"), primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), primary_key=True),
)

# Rationing of a scarce product among wards: a cap in dispensing units per ward and
# day; the priority wards are served first and are not capped. ends_at NULL: in force.
rationing_rules = Table(
    "rationing_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("shortage_id", Integer, ForeignKey("shortages.id"), nullable=True),
    Column("cap_per_ward_day", Integer, nullable=False),
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=True),
    Column("reason", Text, nullable=False),
    Column("decided_by", String(100), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    CheckConstraint("cap_per_ward_day >= 0", name="ck_rationing_cap"),
)

rationing_priority_wards = Table(
    "rationing_priority_wards",
    metadata,
    Column("rule_id", Integer, ForeignKey("rationing_rules.id"), primary_key=True),
    Column("ward", String(32), primary_key=True),
)

# What each ward was granted of a rationed product on a day, one row per granting
# request (a requisition line, a pocket refill), so the cap counts every channel.
ration_draws = Table(
    "ration_draws",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rule_id", Integer, ForeignKey("rationing_rules.id"), nullable=False),
    Column("ward", String(32), nullable=False),
    Column("day", Date, nullable=False),
    Column("units", Integer, nullable=False),
    Column("source", String(50), nullable=False),
    Column("ref", String(200), nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    UniqueConstraint("source", "ref", name="uq_ration_draw_ref"),
    CheckConstraint("units >= 0", name="ck_ration_draw_units"),
)
Index(
    "ix_ration_draws_rule_ward_day", ration_draws.c.rule_id, ration_draws.c.ward, ration_draws.c.day
)

# A licence for an unlicensed product, per patient (pseudonym) or per ward, with its
# validity and the fee paid for it.
licences = Table(
    "licences",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("holder_kind", String(10), nullable=False),
    Column("holder", String(64), nullable=False),
    Column("number", String(50), nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date, nullable=False),
    Column("fee_sek", Numeric(12, 2), nullable=False),
    Column("recorded_by", String(100), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("revoked_by", String(100), nullable=True),
    UniqueConstraint("number", name="uq_licence_number"),
    CheckConstraint(check_in("holder_kind", LICENCE_HOLDER_KINDS), name="ck_licence_holder"),
    CheckConstraint("valid_from <= valid_to", name="ck_licence_validity"),
    CheckConstraint("fee_sek >= 0", name="ck_licence_fee"),
)
Index("ix_licences_product", licences.c.product_id)

# Units used by care the pharmacy does not supply (contracted private care, municipal
# emergency stores), per product and calendar month: the region's obligation covers
# them too. Recording the same unit, product and month again replaces the quantity.
external_use = Table(
    "external_use",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("month", String(7), nullable=False),  # YYYY-MM
    Column("unit_name", String(100), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("recorded_by", String(100), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    UniqueConstraint("product_id", "month", "unit_name", name="uq_external_use"),
    CheckConstraint("quantity >= 0", name="ck_external_use_quantity"),
)
