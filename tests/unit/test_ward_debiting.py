"""Ward debiting on a small ledger, on SQLite and PostgreSQL, with exact numbers.

The story (site time zone Europe/Stockholm, UTC+1 in November):

- Lots: PARA P-BUY bought at 0.4235 SEK, METO M-CAT without a purchase price (the
  catalogue's 0.50 applies), FURO F-BUY at 1.10.
- Ward W2: job W2-20261105-0800 packs 37 PARA from canister PK1/C01 through its
  reservation (3 more are packing rejects: waste, not debited), 4 METO by hand through
  its `:manual` reservation, and 6 PARA booked without a reservation under the job's
  key (`job:<id>:1:consume:<gtin>`); the nurses of W2 withdraw 10 METO from CAB2.
- Ward W1: 25 PARA withdrawn from CAB1/P01, 5 returned; 3 more at 2026-10-31 23:30 UTC
  (00:30 on 1 November in Stockholm). 2 at 2026-10-31 22:30 UTC fall in October, 4 at
  2026-11-30 23:30 UTC in December.
- Unassigned: 7 FURO consumed straight from the store bin, by no job and no cabinet.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from controller.app import Controller
from controller.cli import main
from controller.config import ConfigError, parse_site
from controller.ledger import debiting
from controller.ledger.errors import LedgerError
from controller.ledger.ledger import CONSUMED, DeliveryError, Ledger, Need, Use
from controller.ledger.schema import locations, lots, movements
from controller.packing.planner import PlannedJob, PlannedPouch
from tests.sites import FURO, METO, PARA, site_dict

TZ = "Europe/Stockholm"
NOVEMBER = date(2026, 11, 17)  # any day of the month
JOB = "W2-20261105-0800"
EXPIRY = date(2027, 12, 31)
ACTOR = "test"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 10, 20, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, text: str) -> None:
        self.now = datetime.fromisoformat(text).astimezone(UTC)


def two_ward_site(ledger_url: str) -> dict[str, Any]:
    raw = site_dict(ledger_url=ledger_url)
    raw["cabinets"].append(
        {
            "name": "CAB2",
            "ward": "W2",
            "address": "tcp://127.0.0.1:1",
            "unit_id": 2,
            "pockets": [{"number": 1, "gtin": METO, "min": 4, "max": 40}],
        }
    )
    return raw


@pytest.fixture
def ctl(ledger_url: str) -> Iterator[Controller]:
    controller = Controller(parse_site(two_ward_site(ledger_url)), ledger_url=ledger_url)
    controller.prepare_ledger()
    clock = Clock()
    controller.ledger.clock = clock
    try:
        book_story(controller, clock)
        yield controller
    finally:
        controller.close()


def book_story(ctl: Controller, clock: Clock) -> None:
    led = ctl.ledger
    led.receive(
        "in-1",
        gtin=PARA,
        batch="P-BUY",
        expiry=EXPIRY,
        quantity=1000,
        to_location="CENTRAL/A01",
        actor=ACTOR,
        unit_price=Decimal("0.4235"),
    )
    led.receive(
        "in-2",
        gtin=METO,
        batch="M-CAT",
        expiry=EXPIRY,
        quantity=500,
        to_location="CENTRAL/A01",
        actor=ACTOR,
    )
    led.receive(
        "in-3",
        gtin=FURO,
        batch="F-BUY",
        expiry=EXPIRY,
        quantity=200,
        to_location="CENTRAL/A02",
        actor=ACTOR,
        unit_price=Decimal("1.10"),
    )
    for key, gtin, qty, dest in (
        ("t-1", PARA, 300, "PK1/C01"),
        ("t-2", PARA, 100, "CAB1/P01"),
        ("t-3", METO, 50, "CAB2/P01"),
    ):
        led.transfer(
            key,
            gtin=gtin,
            quantity=qty,
            from_location="CENTRAL/A01",
            to_location=dest,
            actor=ACTOR,
            reason="fill",
        )
    ctl.store.add_job(
        PlannedJob(JOB, "W2", date(2026, 11, 5), time(8), (PlannedPouch(1, "PT-1", ((PARA, 1),)),))
    )
    clock.at("2026-11-05T07:00:00+00:00")
    reservation = f"job:{JOB}:1"
    led.reserve(
        reservation,
        purpose="pouches",
        needs=[Need(PARA, 40)],
        from_locations=["PK1/C01"],
        timeout_s=3600,
        actor=ACTOR,
    )
    led.post(
        f"{reservation}:post",
        reservation_key=reservation,
        uses=[
            Use(PARA, 37, CONSUMED, "consume", "dose pouches"),
            Use(PARA, 3, "WASTE", "waste", "packing reject", reason_code="packing_reject"),
        ],
        actor=ACTOR,
    )
    led.reserve(
        f"{reservation}:manual",
        purpose="by hand",
        needs=[Need(METO, 4)],
        from_locations=["CENTRAL/A01"],
        timeout_s=3600,
        actor=ACTOR,
    )
    led.post(
        f"{reservation}:manual:post",
        reservation_key=f"{reservation}:manual",
        uses=[Use(METO, 4, CONSUMED, "consume", "added by hand")],
        actor=ACTOR,
    )
    consume(led, f"{reservation}:consume:{PARA}", PARA, 6, "PK1/C01")
    clock.at("2026-11-10T09:00:00+00:00")
    consume(led, "cab1-a", PARA, 25, "CAB1/P01")
    consume(led, "cab2-a", METO, 10, "CAB2/P01")
    consume(led, "store-a", FURO, 7, "CENTRAL/A02")
    clock.at("2026-11-11T09:00:00+00:00")
    led.return_consumed(
        "cab1-ret", gtin=PARA, quantity=5, location="CAB1/P01", actor=ACTOR, reason="returned"
    )
    clock.at("2026-10-31T22:30:00+00:00")  # 23:30 on 31 October in Stockholm
    consume(led, "cab1-oct", PARA, 2, "CAB1/P01")
    clock.at("2026-10-31T23:30:00+00:00")  # 00:30 on 1 November in Stockholm
    consume(led, "cab1-nov", PARA, 3, "CAB1/P01")
    clock.at("2026-11-30T23:30:00+00:00")  # 00:30 on 1 December in Stockholm
    consume(led, "cab1-dec", PARA, 4, "CAB1/P01")


def consume(led: Ledger, key: str, gtin: str, quantity: int, location: str) -> None:
    led.consume(key, gtin=gtin, quantity=quantity, location=location, actor=ACTOR, reason="use")


def report(ctl: Controller, month: date = NOVEMBER, tz: str = TZ) -> debiting.DebitingReport:
    site = ctl.site
    return debiting.ward_debiting(
        ctl.ledger, month=month, tz=tz, wards=site.ward_map(), cabinets=site.cabinet_wards()
    )


def lines(r: debiting.DebitingReport) -> list[tuple[Any, ...]]:
    return [
        (x.cost_centre, x.ward, x.gtin, x.batch, x.units, x.unit_price, x.price_source, x.value)
        for x in r.lines
    ]


def ledger_net_consumption(led: Ledger, since: datetime, until: datetime) -> int:
    """Independent of the report: every movement into and out of CONSUMED."""
    with led.engine.connect() as conn:
        consumed = select(locations.c.id).where(locations.c.code == CONSUMED).scalar_subquery()
        into = conn.execute(
            select(func.coalesce(func.sum(movements.c.quantity), 0)).where(
                movements.c.to_location_id == consumed,
                movements.c.kind == "consume",
                movements.c.ts >= since,
                movements.c.ts < until,
            )
        ).scalar_one()
        back = conn.execute(
            select(func.coalesce(func.sum(movements.c.quantity), 0)).where(
                movements.c.from_location_id == consumed,
                movements.c.kind == "return",
                movements.c.ts >= since,
                movements.c.ts < until,
            )
        ).scalar_one()
    return int(into) - int(back)


# ---------------------------------------------------------------- attribution


def test_pouches_withdrawals_and_returns_are_debited_to_their_wards(ctl: Controller) -> None:
    r = report(ctl)
    assert r.month == "2026-11" and r.timezone == TZ
    assert lines(r) == [
        # W1: 25 withdrawn - 5 returned + 3 at 00:30 local on 1 November
        ("4711", "W1", PARA, "P-BUY", 23, Decimal("0.4235"), "lot", Decimal("9.74")),
        # W2: METO 4 by hand in the job's pouches + 10 from CAB2
        ("4722", "W2", METO, "M-CAT", 14, Decimal("0.5000"), "catalogue", Decimal("7.00")),
        # W2: 37 in pouches (not the 3 rejects) + 6 booked under the job's key
        ("4722", "W2", PARA, "P-BUY", 43, Decimal("0.4235"), "lot", Decimal("18.21")),
        ("", "unassigned", FURO, "F-BUY", 7, Decimal("1.1000"), "lot", Decimal("7.70")),
    ]
    totals = {w.ward: (w.cost_centre, w.lines, w.units, w.value) for w in r.wards}
    assert totals == {
        "W1": ("4711", 1, 23, Decimal("9.74")),
        "W2": ("4722", 2, 57, Decimal("25.21")),
        "unassigned": ("", 1, 7, Decimal("7.70")),
    }
    assert (r.units, r.value, r.unassigned_units) == (87, Decimal("42.65"), 7)
    assert r.unknown_wards == ()


def test_lot_purchase_price_is_used_and_the_catalogue_price_without_one(
    ctl: Controller,
) -> None:
    with ctl.ledger.engine.connect() as conn:
        prices = dict(conn.execute(select(lots.c.batch, lots.c.purchase_price)).all())
    assert prices == {"P-BUY": Decimal("0.4235"), "M-CAT": None, "F-BUY": Decimal("1.1000")}
    by_batch = {x.batch: x for x in report(ctl).lines if x.ward == "W2"}
    assert by_batch["P-BUY"].unit_price == Decimal("0.4235")  # not the catalogue's 0.50
    assert by_batch["P-BUY"].value == Decimal("18.21")  # 43 x 0.4235 = 18.2105
    assert by_batch["M-CAT"].unit_price == Decimal("0.5000")
    assert by_batch["M-CAT"].price_source == "catalogue"


def test_month_boundary_is_the_site_time_zone(ctl: Controller) -> None:
    october = report(ctl, date(2026, 10, 1))
    assert [(x.ward, x.units) for x in october.lines] == [("W1", 2)]
    december = report(ctl, date(2026, 12, 31))
    assert [(x.ward, x.units) for x in december.lines] == [("W1", 4)]
    assert november_w1(report(ctl)) == 23
    # In UTC months the same doses fall the other way round.
    assert november_w1(report(ctl, tz="UTC")) == 25 - 5 + 4
    since, until = debiting.month_bounds(NOVEMBER, TZ)
    assert since == datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    assert until == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)


def november_w1(r: debiting.DebitingReport) -> int:
    return sum(x.units for x in r.lines if x.ward == "W1")


def test_unattributable_consumption_is_unassigned_never_dropped(ctl: Controller) -> None:
    # Without the cabinet map the withdrawals can no longer be attributed: they move to
    # the unassigned line and the report still adds up to the ledger.
    r = debiting.ward_debiting(
        ctl.ledger, month=NOVEMBER, tz=TZ, wards=ctl.site.ward_map(), cabinets={}
    )
    unassigned = {(x.gtin, x.units) for x in r.lines if x.ward == "unassigned"}
    assert unassigned == {(FURO, 7), (PARA, 23), (METO, 10)}
    assert r.unassigned_units == 40 and r.units == 87
    assert r.reconciliation.balanced
    # A ward that is attributed but not listed keeps its code, without a cost centre.
    r = debiting.ward_debiting(
        ctl.ledger, month=NOVEMBER, tz=TZ, wards={}, cabinets=ctl.site.cabinet_wards()
    )
    assert r.unknown_wards == ("W1", "W2")
    assert {x.cost_centre for x in r.lines} == {""}


def test_reconciliation_equals_the_ledger_to_the_unit(ctl: Controller) -> None:
    r = report(ctl)
    since, until = debiting.month_bounds(NOVEMBER, TZ)
    direct = ledger_net_consumption(ctl.ledger, since, until)
    assert direct == 87
    rec = r.reconciliation
    assert (rec.ledger_units, rec.report_units, rec.difference, rec.balanced) == (
        87,
        87,
        0,
        True,
    )
    assert sum(x.units for x in r.lines) == direct
    assert "reconciled: ledger net consumption 87 units, report 87 units" in (
        debiting.render_text(r)
    )


# ---------------------------------------------------------------- export


def test_csv_parses_back_and_sums_to_the_totals(ctl: Controller) -> None:
    r = report(ctl)
    buffer = io.StringIO(newline="")
    assert debiting.write_debiting_csv(r, buffer) == 4
    text = buffer.getvalue()
    assert text.splitlines()[0] == (
        "month;cost_centre;ward;gtin;article;product;batch;units;unit_price_sek;value_sek"
    )
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";"))
    data = [row for row in rows if row["cost_centre"] != "TOTAL"]
    control = [row for row in rows if row["cost_centre"] == "TOTAL"]
    assert len(data) == 4 and len(control) == 1 and rows[-1] is control[0]
    assert {row["month"] for row in rows} == {"2026-11"}
    assert sum(int(row["units"]) for row in data) == r.units == int(control[0]["units"])
    assert sum(Decimal(row["value_sek"]) for row in data) == r.value
    assert Decimal(control[0]["value_sek"]) == r.value == Decimal("42.65")
    for ward in r.wards:
        mine = [row for row in data if row["ward"] == ward.ward]
        assert sum(Decimal(row["value_sek"]) for row in mine) == ward.value
    first = data[0]
    assert (first["ward"], first["gtin"], first["unit_price_sek"], first["value_sek"]) == (
        "W1",
        PARA,
        "0.4235",
        "9.74",
    )


def test_bad_month_and_time_zone_are_refused_by_name() -> None:
    assert debiting.parse_month("2026-11") == date(2026, 11, 1)
    assert debiting.parse_month("2026-11-17") == date(2026, 11, 1)
    for bad in ("2026-13", "november", "2026-1", ""):
        with pytest.raises(LedgerError, match=f"month: {bad!r} is not a month"):
            debiting.parse_month(bad)
    with pytest.raises(LedgerError, match="tz: 'Mars/Olympus' is not a known time zone"):
        debiting.month_bounds(NOVEMBER, "Mars/Olympus")


# ---------------------------------------------------------------- CLI


def write_site(tmp_path: Path, ledger_url: str) -> Path:
    path = tmp_path / "site.yaml"
    raw = two_ward_site(ledger_url)
    raw["site"]["timezone"] = TZ
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_cli_prints_the_report_and_writes_the_csv(
    ctl: Controller, ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = write_site(tmp_path, ledger_url)
    base = ["report", "debiting", "--site", str(site), "--db", ledger_url, "--month", "2026-11"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "ward debiting 2026-11 (Europe/Stockholm)" in out
    assert "reconciled: ledger net consumption 87 units, report 87 units" in out
    assert "42.65" in out and "unassigned" in out

    target = tmp_path / "debiting.csv"
    assert main([*base, "--csv", str(target)]) == 0
    assert f"{target}: 4 lines + control line, 87 units, 42.65 SEK" in capsys.readouterr().out
    raw = target.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw
    assert raw.decode("utf-8").splitlines()[-1] == "2026-11;TOTAL;;;;;;87;;42.65"

    assert main([*base, "--json"]) == 0
    assert '"balanced": true' in capsys.readouterr().out

    assert main([*base[:-1], "2026-13"]) == 2
    assert "month: '2026-13' is not a month" in capsys.readouterr().err


# ---------------------------------------------------------------- receipts and site


def test_delivery_prices_are_read_stored_once_and_checked(
    ctl: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    led = ctl.ledger
    lines_ = led.parse_delivery_csv(
        "gtin;batch;expiry;quantity;unit_price\n"
        f"{METO};M-NEW;2027-06-30;10;0,4410\n"
        f"{METO};M-NOP;2027-06-30;10;\n",
        default_location="CENTRAL/A02",
    )
    assert [x.unit_price for x in lines_] == [Decimal("0.4410"), None]
    led.receive_many("d-1", lines_, actor=ACTOR)
    with caplog.at_level(logging.WARNING, logger="doseline.ledger"):
        led.receive(
            "d-2",
            gtin=METO,
            batch="M-NEW",
            expiry=date(2027, 6, 30),
            quantity=5,
            to_location="CENTRAL/A02",
            actor=ACTOR,
            unit_price=Decimal("0.50"),
        )
    assert "M-NEW" in caplog.text and "recorded purchase price is kept" in caplog.text
    with led.engine.connect() as conn:
        prices = dict(conn.execute(select(lots.c.batch, lots.c.purchase_price)).all())
    assert prices["M-NEW"] == Decimal("0.4410") and prices["M-NOP"] is None
    with pytest.raises(DeliveryError, match=r"line 2: unit_price: '-1' must be a number"):
        led.parse_delivery_csv(
            f"gtin;batch;expiry;quantity;unit_price\n{METO};X;2027-06-30;1;-1\n", "CENTRAL/A01"
        )
    with pytest.raises(DeliveryError, match=r"line 2: unit_price: '0.12345' has more than 4"):
        led.parse_delivery_csv(
            f"gtin;batch;expiry;quantity;unit_price\n{METO};X;2027-06-30;1;0.12345\n",
            "CENTRAL/A01",
        )


def test_opening_stock_takes_its_price_or_the_catalogue_price(ledger_url: str) -> None:
    raw = site_dict(ledger_url=ledger_url)
    raw["stock"][0]["unit_price"] = "0.3800"  # P-LATE; the others have none
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    try:
        controller.prepare_ledger()
        controller.receive_opening_stock(datetime.now(UTC).date())
        with controller.ledger.engine.connect() as conn:
            prices = dict(conn.execute(select(lots.c.batch, lots.c.purchase_price)).all())
    finally:
        controller.close()
    assert prices["P-LATE"] == Decimal("0.3800")
    assert prices["P-EARLY"] == Decimal("0.5000") and prices["M-1"] == Decimal("0.5000")


def test_wards_are_validated_by_field_and_value() -> None:
    raw = site_dict()
    raw["cabinets"][0]["ward"] = "W9"
    with pytest.raises(ConfigError, match=r"cabinets\.CAB1\.ward: 'W9' is not a listed ward"):
        parse_site(raw)
    raw = site_dict()
    raw["wards"].append({"code": "W1", "name": "Again", "cost_centre": "1"})
    with pytest.raises(ConfigError, match=r"wards\[2\]\.code: 'W1' appears twice"):
        parse_site(raw)
    raw = site_dict()
    raw["demo"] = {"ward": "ICU", "administration_times": ["08:00"]}
    with pytest.raises(ConfigError, match=r"demo\.ward: 'ICU' is not a listed ward"):
        parse_site(raw)
    raw = site_dict()
    del raw["wards"]
    raw["cabinets"][0]["ward"] = "ANY"  # without a ward list, any ward goes
    assert parse_site(raw).ward_map() == {}
