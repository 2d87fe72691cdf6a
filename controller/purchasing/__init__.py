"""Purchasing: supplier orders from the order proposal, deliveries matched against
them, and each supplier's delivery reliability (docs/purchasing.md)."""

from controller.purchasing.files import DeliveryRow, delivery_csv, order_csv, parse_delivery_csv
from controller.purchasing.model import (
    LineOutcome,
    OrderLine,
    PurchaseOrder,
    PurchasingError,
    Receipt,
    Substitute,
    SupplierReliability,
)
from controller.purchasing.store import PurchasingStore

__all__ = [
    "DeliveryRow",
    "LineOutcome",
    "OrderLine",
    "PurchaseOrder",
    "PurchasingError",
    "PurchasingStore",
    "Receipt",
    "Substitute",
    "SupplierReliability",
    "delivery_csv",
    "order_csv",
    "parse_delivery_csv",
]
