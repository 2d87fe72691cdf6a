"""The stock duty in the ledger: use by units the pharmacy does not supply (external
volumes per product and month).
"""

from __future__ import annotations

from controller.ledger.core import LedgerCore


class DutyUse(LedgerCore):
    """The whole use: written in audited transactions, read by the reports."""
