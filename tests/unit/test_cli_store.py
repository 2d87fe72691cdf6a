"""`doseline ledger move` and `doseline ledger waste-expired` over the demo site's store
(config/demo.yaml), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from controller.cli import main
from controller.ledger import Ledger
from controller.ledger.engine import make_engine

PARA = "07359990000013"


@pytest.fixture
def db(ledger_url: str) -> str:
    assert main(["ledger", "init", "--db", ledger_url]) == 0
    # Received a month ago: one lot has expired since.
    then = datetime.now(UTC) - timedelta(days=30)
    led = Ledger(make_engine(ledger_url), clock=lambda: then)
    for batch, days, qty in (("OLD1", 20, 12), ("NEW1", 400, 40)):
        led.receive(
            f"r:{batch}",
            gtin=PARA,
            batch=batch,
            expiry=then.date() + timedelta(days=days),
            quantity=qty,
            to_location="CENTRAL/A02",
            actor="goods-in",
        )
    led.engine.dispose()
    return ledger_url


def stock_of(db: str, location: str, batch: str) -> int:
    led = Ledger(make_engine(db))
    try:
        return sum(r.on_hand for r in led.stock(location=location) if r.batch == batch)
    finally:
        led.engine.dispose()


def move_args(db: str, *extra: str) -> list[str]:
    return [
        "ledger",
        "move",
        "--db",
        db,
        "--gtin",
        PARA,
        "--batch",
        "NEW1",
        "--from",
        "CENTRAL/A02",
        "--to",
        "CENTRAL/B02",
        "--actor",
        "tech:eva",
        *extra,
    ]


def test_move_prints_its_key_and_books_once(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(move_args(db, "--quantity", "15")) == 0
    out = capsys.readouterr().out
    found = re.search(
        r"moved 15 of 07359990000013 batch NEW1 from CENTRAL/A02 to CENTRAL/B02 \(key (\S+)\)", out
    )
    assert found, out
    key = found.group(1)
    assert stock_of(db, "CENTRAL/B02", "NEW1") == 15

    assert main(move_args(db, "--quantity", "15", "--key", key)) == 0
    assert f"key {key} was booked before: nothing booked" in capsys.readouterr().out
    assert stock_of(db, "CENTRAL/B02", "NEW1") == 15

    assert main(move_args(db, "--quantity", "5", "--key", "m-json", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["booked"] is True and data["quantity"] == 5 and data["key"] == "m-json"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--quantity", "0"], "quantity: 0 must be a whole number above zero"),
        (["--quantity", "41"], "quantity: 41 is more than the 40 free units"),
        (["--quantity", "1", "--to", "CAB-MED1/P01"], "to_location: 'CAB-MED1/P01' is not a store"),
        (["--quantity", "1", "--batch", "NOPE"], "batch: 'NOPE' is not a lot of"),
    ],
)
def test_move_refusals_name_the_field_and_value(
    db: str, extra: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(move_args(db, *extra)) == 1
    assert named in capsys.readouterr().err
    assert stock_of(db, "CENTRAL/A02", "NEW1") == 40


def test_waste_expired_lists_then_books(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ledger", "waste-expired", "--db", db, "--actor", "tech:eva", "--key", "w1"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would waste: expired before ")
    assert re.search(rf"CENTRAL/A02 +{PARA} +OLD1 +\S+ +12\n", out), out
    assert "NEW1" not in out and "total: 12 units" in out
    assert stock_of(db, "CENTRAL/A02", "OLD1") == 12

    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dry_run"] is False and data["units"] == 12 and data["location"] == "CENTRAL"
    assert [(w["location"], w["batch"], w["units"]) for w in data["wasted"]] == [
        ("CENTRAL/A02", "OLD1", 12)
    ]
    assert stock_of(db, "CENTRAL/A02", "OLD1") == 0

    assert main(args) == 0
    assert "total: 0 units" in capsys.readouterr().out


def test_waste_expired_refuses_a_place_outside_the_store(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ledger", "waste-expired", "--db", db, "--actor", "t", "--location", "CAB-MED1"])
    assert code == 1
    assert "location: 'CAB-MED1' is not a store location" in capsys.readouterr().err
    assert stock_of(db, "CENTRAL/A02", "OLD1") == 12
