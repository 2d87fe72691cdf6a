"""The ledger commands a pharmacy technician types: receive, lot status, stocktake."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main

PARA = "07359990000013"
METO = "07359990000020"


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert main(["ledger", "init", "--db", url]) == 0
    return url


def test_receive_a_scanned_pack_once(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    scan = f"01{PARA}17280630101234<GS>21SN0001"
    args = [
        "ledger",
        "receive",
        "--db",
        db,
        "--scan",
        scan,
        "--quantity",
        "100",
        "--location",
        "CENTRAL/A01",
        "--actor",
        "anna",
    ]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"received 100 of {PARA} batch 1234 (expires 2028-06-30) into CENTRAL/A01" in out
    assert "pack already received" in out
    assert main(["ledger", "stock", "--db", db, "--location", "CENTRAL/A01"]) == 0
    assert " 100 " in capsys.readouterr().out


def test_receive_refuses_a_bad_check_digit(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "ledger",
            "receive",
            "--db",
            db,
            "--scan",
            "0107359990000014172806301012",
            "--quantity",
            "5",
            "--location",
            "CENTRAL/A01",
            "--actor",
            "anna",
        ]
    )
    assert code == 1
    assert "Invalid GTIN check digit for '07359990000014'" in capsys.readouterr().err


def test_delivery_file_then_stocktake_then_quarantine(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    delivery = tmp_path / "delivery.csv"
    delivery.write_text(
        f"gtin;batch;expiry;quantity\n{METO};M77;2027-09-30;500\n{PARA};P12;2027-10-31;200\n"
    )
    assert (
        main(
            [
                "ledger",
                "receive",
                "--db",
                db,
                "--file",
                str(delivery),
                "--location",
                "CENTRAL/A02",
                "--actor",
                "anna",
            ]
        )
        == 0
    )
    assert "received 2 lines, 700 units" in capsys.readouterr().out
    assert (
        main(
            [
                "ledger",
                "stocktake",
                "--db",
                db,
                "--location",
                "CENTRAL/A02",
                "--count",
                f"{METO}/M77=498",
                "--count",
                f"{PARA}/P12=200",
                "--actor",
                "anna",
            ]
        )
        == 0
    )
    assert f"CENTRAL/A02 {METO}/M77: -2" in capsys.readouterr().out
    assert (
        main(
            [
                "ledger",
                "lot-status",
                "--db",
                db,
                METO,
                "M77",
                "recalled",
                "--reason",
                "supplier recall 2026-41",
                "--actor",
                "anna",
            ]
        )
        == 0
    )
    assert f"lot {METO}/M77 is recalled" in capsys.readouterr().out
    assert main(["ledger", "verify", "--db", db]) == 0
    assert "audit chain intact" in capsys.readouterr().out


def test_bad_count_syntax_is_named(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "ledger",
                "stocktake",
                "--db",
                db,
                "--location",
                "CENTRAL/A02",
                "--count",
                "oops",
                "--actor",
                "anna",
            ]
        )
        == 2
    )
    assert "--count 'oops': expected GTIN/BATCH=UNITS" in capsys.readouterr().err


def test_init_books_the_site_master_data(db: str) -> None:
    from sqlalchemy import select

    from controller.ledger.engine import make_engine
    from controller.ledger.schema import exemptions, locations, products

    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            kinds = dict(conn.execute(select(products.c.gtin, products.c.category)).all())
            storage = dict(conn.execute(select(products.c.gtin, products.c.storage)).all())
            classes = dict(conn.execute(select(products.c.gtin, products.c.controlled_class)).all())
            exempt = conn.execute(select(exemptions.c.product_id)).all()
            prep = (
                conn.execute(select(locations.c.code).where(locations.c.kind == "preparedness"))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert set(kinds.values()) == {"drug", "medical_device", "special_food", "protective_equipment"}
    assert storage["07359990000181"] == "cold"
    assert classes["07359990000136"] == "II"
    assert len(exempt) == 1
    assert prep == ["CENTRAL/PREP"]
