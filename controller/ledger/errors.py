"""Ledger errors. Each names the field and the value that was refused."""

from __future__ import annotations

from typing import Literal


class LedgerError(Exception):
    """A ledger command was refused; nothing of it was booked."""


class UnknownEntity(LedgerError):
    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"unknown {field}: {value!r}")
        self.field = field
        self.value = value


class InsufficientStock(LedgerError):
    def __init__(self, product: str, location: str, wanted: int, available: int) -> None:
        super().__init__(
            f"insufficient stock of {product} at {location}: wanted {wanted}, available {available}"
        )
        self.product = product
        self.location = location
        self.wanted = wanted
        self.available = available


class ReservationClosed(LedgerError):
    def __init__(self, key: str, status: str) -> None:
        super().__init__(f"reservation {key!r} is already {status}")
        self.key = key
        self.status = status


class InvalidQuantity(LedgerError):
    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"invalid {field}: {value!r} (must be a positive whole number)")
        self.field = field
        self.value = value


class HoldClosed(LedgerError):
    """A hold that is no longer 'held' cannot be decided on again."""

    def __init__(self, hold_id: int, status: str) -> None:
        super().__init__(f"hold {hold_id} is already {status}")
        self.hold_id = hold_id
        self.status = status


class DiscrepancyClosed(LedgerError):
    """A discrepancy is resolved once; a second resolution would hide who decided."""

    def __init__(self, discrepancy_id: int, status: str) -> None:
        super().__init__(f"discrepancy {discrepancy_id} is already {status}")
        self.discrepancy_id = discrepancy_id
        self.status = status


class DutyRefused(LedgerError):
    """A stock-duty decision refused before anything was written: the field and the
    value at fault, and why: the input is `invalid`, it is in `conflict` with what the
    ledger holds (a rule already in force, a closed shortage, a revoked exemption), or
    what it names is `missing`."""

    def __init__(
        self,
        field: str,
        value: object,
        message: str,
        kind: Literal["invalid", "conflict", "missing"] = "invalid",
    ) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.kind = kind

    @property
    def conflict(self) -> bool:
        return self.kind == "conflict"

    @classmethod
    def naming(
        cls, field: str, value: object, message: str, *, conflict: bool = False
    ) -> DutyRefused:
        """The refusal with its text built as `field: value message`."""
        shown = repr(value) if isinstance(value, str) else str(value)
        return cls(
            field, value, f"{field}: {shown} {message}", "conflict" if conflict else "invalid"
        )
