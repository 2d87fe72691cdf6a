"""EU falsified-medicines pack verification (docs/verification.md)."""

from controller.verification.adapter import (
    ALERT_CODES,
    HttpVerificationSystem,
    Verdict,
    VerificationSystem,
    VerificationUnavailable,
)
from controller.verification.service import Result, VerificationService
from controller.verification.store import VerificationStore

__all__ = [
    "ALERT_CODES",
    "HttpVerificationSystem",
    "Result",
    "Verdict",
    "VerificationService",
    "VerificationStore",
    "VerificationSystem",
    "VerificationUnavailable",
]
