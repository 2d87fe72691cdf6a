"""The stock duty in the ledger: supplier shortage notices with substitutes, rationing of
scarce stock among wards, and licences for unlicensed products.
"""

from __future__ import annotations

from controller.ledger.core import LedgerCore


class DutyShortages(LedgerCore):
    """Shortages, rationing and licences: written in audited transactions, read by the reports."""
