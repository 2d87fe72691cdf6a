"""Every table of the ledger's database, on one MetaData, by name.

The tables are defined per area (controller/ledger/schema_*.py: stock, audit, packing,
cabinets, verification, purchasing, ward supply) on the MetaData of schema_base.
This module imports every area, so `metadata.create_all` and alembic (which read
`metadata` from here) see every table, and `from controller.ledger.schema import X`
works for any table or constant of any area.
"""

from controller.ledger.schema_audit import (
    audit_head,
    audit_log,
)
from controller.ledger.schema_base import (
    UTCDateTime,
    check_in,
    metadata,
)
from controller.ledger.schema_cabinets import (
    pick_lists,
    pocket_refills,
)
from controller.ledger.schema_packing import (
    JOB_STATES,
    ORDER_STATUSES,
    canister_fills,
    dose_orders,
    packing_jobs,
    planned_doses,
)
from controller.ledger.schema_purchasing import (
    ORDER_LINE_STATUSES,
    PURCHASE_ORDER_STATUSES,
    deliveries,
    delivery_lines,
    purchase_order_lines,
    purchase_orders,
    supplier_products,
    suppliers,
)
from controller.ledger.schema_stock import (
    DISCREPANCY_STATUSES,
    EXTERNAL_KINDS,
    HOLD_STATUSES,
    INTERNAL_KINDS,
    PRODUCT_CATEGORIES,
    STORAGE,
    WASTE_REASONS,
    balances,
    commands,
    counter_marks,
    exemptions,
    locations,
    lots,
    movements,
    order_lines,
    products,
    reservation_lines,
    reservations,
    stock_discrepancies,
    stock_holds,
)
from controller.ledger.schema_verification import (
    packs,
    verification_alerts,
    verification_queue,
)
from controller.ledger.schema_wardsupply import (
    ward_delivery_notes,
    ward_note_lines,
    ward_pick_lists,
    ward_pick_scans,
    ward_requisition_lines,
    ward_requisitions,
)

__all__ = [
    "DISCREPANCY_STATUSES",
    "EXTERNAL_KINDS",
    "HOLD_STATUSES",
    "INTERNAL_KINDS",
    "JOB_STATES",
    "ORDER_LINE_STATUSES",
    "ORDER_STATUSES",
    "PRODUCT_CATEGORIES",
    "PURCHASE_ORDER_STATUSES",
    "STORAGE",
    "WASTE_REASONS",
    "UTCDateTime",
    "audit_head",
    "audit_log",
    "balances",
    "canister_fills",
    "check_in",
    "commands",
    "counter_marks",
    "deliveries",
    "delivery_lines",
    "dose_orders",
    "exemptions",
    "locations",
    "lots",
    "metadata",
    "movements",
    "order_lines",
    "packing_jobs",
    "packs",
    "pick_lists",
    "planned_doses",
    "pocket_refills",
    "products",
    "purchase_order_lines",
    "purchase_orders",
    "reservation_lines",
    "reservations",
    "stock_discrepancies",
    "stock_holds",
    "supplier_products",
    "suppliers",
    "verification_alerts",
    "verification_queue",
    "ward_delivery_notes",
    "ward_note_lines",
    "ward_pick_lists",
    "ward_pick_scans",
    "ward_requisition_lines",
    "ward_requisitions",
]
