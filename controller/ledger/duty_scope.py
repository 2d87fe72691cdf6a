"""The stock duty in the ledger: what is out of the duty's scope (a product or a category,
with its reason; durable devices and protective equipment) and exemptions as a lifecycle
(create, review, change, revoke).
"""

from __future__ import annotations

from controller.ledger.core import LedgerCore


class DutyScope(LedgerCore):
    """Scope and exemptions: written in audited transactions, read by the reports."""
