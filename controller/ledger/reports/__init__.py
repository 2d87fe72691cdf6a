"""Reports on the ledger: stock, expiry, cover against the one-month obligation, waste,
delivery reliability, consumption for national follow-up and order proposals, one
module each; `render` turns any of them into text or JSON data.

Every report is a pure read on an Engine (or a Ledger) that returns a frozen dataclass,
so the CLI, the HTTP API and metrics all share one definition of each number. Times
are explicit parameters (UTC-aware), never read from the clock in here, so the same
call gives the same answer in a test and in production. The exact definitions are in
docs/reports.md. The import of an assortment and price list writes, so it lives in
controller.ledger.assortment; its names are offered here too, as before.

Conventions: quantities are whole dispensing units (int); money is Decimal SEK rounded
to öre (0.01, half up) per row, and totals are summed from unrounded values; rates,
days and shares are floats rounded half up (rates to 3 decimals, days to 1, shares
to 4). `to_jsonable` turns any report into JSON-ready data (Decimal as a string).
"""

from controller.ledger.assortment import (
    ASSORTMENT_COLUMNS,
    ATC_PATTERN,
    FieldChange,
    ImportChange,
    ImportProblem,
    ImportReport,
    import_assortment,
)
from controller.ledger.reports.balances import BalanceReport, BalanceRow, GroupBy, balances
from controller.ledger.reports.common import (
    LONG_WINDOW_DAYS,
    SHORT_WINDOW_DAYS,
    _load_products,
    _net_consumption_filter,
    _signed_quantity,
)
from controller.ledger.reports.compliance import (
    CategoryCompliance,
    ComplianceSummary,
    ExemptProduct,
    OutOfScopeProduct,
    PreparednessLine,
    PreparednessProduct,
    ProductRef,
    compliance_summary,
)
from controller.ledger.reports.consumption import (
    CONSUMPTION_CSV_HEADER,
    ConsumptionReport,
    ConsumptionRow,
    consumption_by_month,
    write_consumption_csv,
)
from controller.ledger.reports.cover import (
    CHANNELS,
    CoverReport,
    CoverRow,
    Exemption,
    days_of_cover,
)
from controller.ledger.reports.expiry import ExpiringLot, ExpiryReport, expiring
from controller.ledger.reports.proposal import (
    OrderProposal,
    ProposalRow,
    order_proposal,
    order_proposal_on,
)
from controller.ledger.reports.render import render_text, table, to_jsonable
from controller.ledger.reports.service import ServiceLevelReport, ServiceLine, service_level
from controller.ledger.reports.waste import (
    UNSPECIFIED_REASON,
    WasteByProduct,
    WasteByReason,
    WasteReport,
    waste_report,
)
from controller.ledger.source import Source
from controller.ledger.source import engine_of as _engine

__all__ = [
    "ASSORTMENT_COLUMNS",
    "ATC_PATTERN",
    "CHANNELS",
    "CONSUMPTION_CSV_HEADER",
    "LONG_WINDOW_DAYS",
    "SHORT_WINDOW_DAYS",
    "UNSPECIFIED_REASON",
    "BalanceReport",
    "BalanceRow",
    "CategoryCompliance",
    "ComplianceSummary",
    "ConsumptionReport",
    "ConsumptionRow",
    "CoverReport",
    "CoverRow",
    "ExemptProduct",
    "Exemption",
    "ExpiringLot",
    "ExpiryReport",
    "FieldChange",
    "GroupBy",
    "ImportChange",
    "ImportProblem",
    "ImportReport",
    "OrderProposal",
    "OutOfScopeProduct",
    "PreparednessLine",
    "PreparednessProduct",
    "ProductRef",
    "ProposalRow",
    "ServiceLevelReport",
    "ServiceLine",
    "Source",
    "WasteByProduct",
    "WasteByReason",
    "WasteReport",
    # shared with controller.ledger.debiting, which reads the same consumption
    "_engine",
    "_load_products",
    "_net_consumption_filter",
    "_signed_quantity",
    "balances",
    "compliance_summary",
    "consumption_by_month",
    "days_of_cover",
    "expiring",
    "import_assortment",
    "order_proposal",
    "order_proposal_on",
    "render_text",
    "service_level",
    "table",
    "to_jsonable",
    "waste_report",
    "write_consumption_csv",
]
