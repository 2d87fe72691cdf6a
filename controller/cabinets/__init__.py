"""Ward cabinets: polling, withdrawals into the ledger, and pocket refills."""
