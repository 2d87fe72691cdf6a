"""The one delivery-file reader: the checks both delivery files share."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from controller.ledger import DeliveryError, Ledger
from controller.purchasing import PurchasingError, parse_delivery_csv

PARA = "07359990000013"  # illustrative GTINs, valid check digits


def test_the_ledger_file_reads_with_a_byte_order_mark_and_blank_rows() -> None:
    text = (
        "\ufeffgtin ; batch;expiry;quantity;location;unit_price\n"
        f"{PARA};B1;2027-06-30;100;A1;0,35\n"
        ";;;;;\n"
    )
    [line] = Ledger.parse_delivery_csv(text)
    assert (line.gtin, line.batch, line.expiry, line.quantity, line.location) == (
        PARA,
        "B1",
        date(2027, 6, 30),
        100,
        "A1",
    )
    assert line.unit_price == Decimal("0.35")


def test_the_ledger_file_refuses_what_the_supplier_file_refuses() -> None:
    with pytest.raises(DeliveryError) as info:
        Ledger.parse_delivery_csv("gtin;batch;expiry;quantity;colour\n")
    assert info.value.problems == [
        "header: unknown column(s) colour "
        "(expected gtin;batch;expiry;quantity[;location][;unit_price])"
    ]
    with pytest.raises(DeliveryError) as info:
        Ledger.parse_delivery_csv("gtin;batch;expiry;quantity\n", default_location="A1")
    assert info.value.problems == ["the delivery file has no rows"]
    text = f"gtin;batch;expiry;quantity\n{PARA};;;-3\n{PARA};B-123456789012345678901;2027-06-30;1\n"
    with pytest.raises(DeliveryError) as info:
        Ledger.parse_delivery_csv(text, default_location="A1")
    assert info.value.problems == [
        "line 2: batch: missing for a row that delivers stock",
        "line 2: expiry: missing for a row that delivers stock",
        "line 2: quantity: '-3' is negative",
        "line 3: batch: 'B-123456789012345678901' is longer than 20 characters",
    ]


def test_the_supplier_file_checks_prices_as_the_ledger_does() -> None:
    text = (
        "order;line;gtin;quantity;batch;expiry;unit_price\n"
        f"PO-1;1;{PARA};10;B1;2028-01-31;-1\n"
        f"PO-1;2;{PARA};10;B1;2028-01-31;0.12340\n"
        f"PO-1;3;{PARA};10;B1;2028-01-31;100000000\n"
        f"PO-1;4;{PARA};0;B-123456789012345678901;;\n"
    )
    with pytest.raises(PurchasingError) as info:
        parse_delivery_csv(text)
    assert info.value.problems == [
        "row 2: unit_price: '-1' must be a number from 0 to below 100000000",
        "row 3: unit_price: '0.12340' has more than 4 decimals",
        "row 4: unit_price: '100000000' must be a number from 0 to below 100000000",
        "row 5: batch: 'B-123456789012345678901' is longer than 20 characters",
    ]
