"""The stock duty in the ledger: the preparedness list (target and floor per product,
imported whole) and crisis periods (decided, scoped, ended, audited).
"""

from __future__ import annotations

from controller.ledger.core import LedgerCore


class DutyPreparedness(LedgerCore):
    """Preparedness and crisis: written in audited transactions, read by the reports."""
