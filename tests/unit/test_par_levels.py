"""Par-level suggestions for cabinet pockets from the consumption the ledger booked,
on SQLite and PostgreSQL alike. Expected levels are worked out by hand in each test."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from controller.cabinets.par import (
    ParError,
    ParSuggestion,
    PocketPlan,
    daily_consumption,
    suggest_par,
)
from controller.cabinets.poller import pocket_location
from controller.cli import main
from controller.ledger import Ledger
from controller.ledger.engine import make_engine
from tests.sites import METO, PARA, make_site, site_dict

UNTIL = date(2026, 11, 20)
FIRST = UNTIL - timedelta(days=6)  # a 7-day window: 2026-11-14 .. 2026-11-20
P01 = pocket_location("CAB1", 1)
P02 = pocket_location("CAB1", 2)
_keys = itertools.count()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """The test site's catalogue and cabinet, each pocket stocked long before the window."""
    engine = make_engine(ledger_url)
    led = Ledger(engine, clock=lambda: datetime(2026, 10, 1, 8, 0, tzinfo=UTC))
    led.create_schema()
    site = make_site()
    for p in site.catalogue:
        led.add_product(
            gtin=p.gtin,
            article=p.article,
            name=p.name,
            substance=p.substance,
            atc=p.atc,
            strength=p.strength,
            form=p.form,
        )
    for cab in site.cabinets:
        led.add_location(cab.name, "cabinet")
        for pocket in cab.pockets:
            code = pocket_location(cab.name, pocket.number)
            led.add_location(code, "pocket", parent=cab.name, product_gtin=pocket.gtin)
            led.receive(
                f"stock:{code}",
                gtin=pocket.gtin,
                batch=f"B-{pocket.number}",
                expiry=date(2027, 12, 31),
                quantity=1000,
                to_location=code,
                actor="test",
            )
    yield led
    engine.dispose()


def at(led: Ledger, day: date, hour: int = 10, minute: int = 0) -> None:
    when = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
    led.clock = lambda: when


def use(led: Ledger, day: date, qty: int, *, location: str = P01, gtin: str = PARA) -> None:
    at(led, day)
    led.consume(
        f"use:{next(_keys)}", gtin=gtin, quantity=qty, location=location, actor="t", reason="dose"
    )


def give_back(led: Ledger, day: date, qty: int, *, location: str = P01, gtin: str = PARA) -> None:
    at(led, day, hour=14)
    led.return_consumed(
        f"ret:{next(_keys)}", gtin=gtin, quantity=qty, location=location, actor="t", reason="unused"
    )


def day(n: int) -> date:
    """Day n of the window, 0 being the first."""
    return FIRST + timedelta(days=n)


def plan(capacity: int | None = None) -> PocketPlan:
    return PocketPlan("CAB1", 1, PARA, current_min=5, current_max=20, capacity=capacity)


def par(led: Ledger, *plans: PocketPlan, **kw: float) -> list[ParSuggestion]:
    return suggest_par(led.engine, list(plans or [plan()]), days=7, until=UNTIL, **kw)  # type: ignore[arg-type]


def book_mean_four(led: Ledger) -> None:
    """Daily use 2, 4, 6, 4, 2, 6, 4: mean 4, sample variance 16/6."""
    for n, qty in enumerate([2, 4, 6, 4, 2, 6, 4]):
        if qty == 4:
            use(led, day(n), 1)
            use(led, day(n), 3)  # two withdrawals on one day add up
        else:
            use(led, day(n), qty)


def test_known_consumption_gives_the_reorder_point_and_max(ledger: Ledger) -> None:
    book_mean_four(ledger)
    use(ledger, FIRST - timedelta(days=1), 50)  # before the window
    use(ledger, UNTIL + timedelta(days=1), 50)  # after it
    [s] = par(ledger)
    assert s.days_seen == 7 and s.total == 28 and s.peak_daily == 6
    assert s.mean_daily == pytest.approx(4.0)
    assert s.stdev_daily == pytest.approx((16 / 6) ** 0.5)
    # min = ceil(4 * 1 + 1.65 * 1.63299 * 1) = ceil(6.694) = 7; max = ceil(4 * (1 + 3)) = 16
    assert (s.suggested_min, s.suggested_max) == (7, 16)
    assert (s.current_min, s.current_max) == (5, 20)
    assert s.cover_days_current == pytest.approx(5.0)  # 20 units at 4 a day
    assert s.name == "Paracetamol 500" and s.location == "CAB1/P01" and s.note == ""
    # lead 2, supply 3: min = ceil(8 + 1.65 * 1.63299 * 1.41421) = ceil(11.81) = 12;
    # max = ceil(4 * 5) = 20
    [s] = par(ledger, lead_time_days=2, days_of_supply=3)
    assert (s.suggested_min, s.suggested_max) == (12, 20)
    # no safety stock: min = ceil(4 * 1) = 4, exactly, not 5 from rounding noise
    [s] = par(ledger, service_z=0)
    assert (s.suggested_min, s.suggested_max) == (4, 16)


def test_returns_are_netted_off_the_day_they_come_back(ledger: Ledger) -> None:
    for n in range(7):
        if n == 3:
            use(ledger, day(n), 6)
            give_back(ledger, day(n), 2)
        else:
            use(ledger, day(n), 4)
    history = daily_consumption(ledger.engine, [(P01, PARA)], days=7, until=UNTIL)
    assert history[(P01, PARA)].daily == (4, 4, 4, 4, 4, 4, 4)
    [s] = par(ledger)
    # every day 4, no spread: min = ceil(4) = 4, max = ceil(16) = 16
    assert (s.total, s.stdev_daily, s.peak_daily) == (28, 0.0, 4)
    assert (s.suggested_min, s.suggested_max) == (4, 16)


def test_waste_at_the_pocket_is_not_demand(ledger: Ledger) -> None:
    for n in range(7):
        use(ledger, day(n), 4)
    at(ledger, day(2))
    ledger.waste(
        "broken", gtin=PARA, quantity=10, location=P01, actor="t", reason="dropped",
        reason_code="damaged",
    )  # fmt: skip
    at(ledger, day(5))
    ledger.waste(
        "old", gtin=PARA, quantity=25, location=P01, actor="t", reason="expired",
        reason_code="expired",
    )  # fmt: skip
    assert ledger.moved_quantity("waste") == 35
    [s] = par(ledger)
    assert (s.total, s.peak_daily) == (28, 4)
    assert (s.suggested_min, s.suggested_max) == (4, 16)


def test_days_without_use_count_as_zero(ledger: Ledger) -> None:
    use(ledger, day(0), 14)
    use(ledger, day(4), 14)
    history = daily_consumption(ledger.engine, [(P01, PARA)], days=7, until=UNTIL)
    assert history[(P01, PARA)].daily == (14, 0, 0, 0, 14, 0, 0)
    [s] = par(ledger)
    assert s.mean_daily == pytest.approx(4.0) and s.days_seen == 7 and s.peak_daily == 14
    # sample variance 280 / 6; min = ceil(4 + 1.65 * 6.8313) = ceil(15.27) = 16;
    # ceil(4 * 4) = 16 is not above min, so max = min + 1 = 17
    assert s.stdev_daily == pytest.approx((280 / 6) ** 0.5)
    assert (s.suggested_min, s.suggested_max) == (16, 17)


def test_max_is_capped_at_the_pocket_capacity(ledger: Ledger) -> None:
    book_mean_four(ledger)
    [s] = par(ledger, plan(capacity=12))
    assert (s.suggested_min, s.suggested_max) == (7, 12)
    assert "capped at capacity 12" in s.note and "wanted 16" in s.note
    [s] = par(ledger, plan(capacity=16))  # exactly enough: nothing to say
    assert (s.suggested_min, s.suggested_max, s.note) == (7, 16, "")
    # a capacity below the reorder point: max is the capacity, min one below it
    [s] = par(ledger, plan(capacity=6))
    assert (s.suggested_min, s.suggested_max) == (5, 6)
    assert "capped at capacity 6" in s.note and "min lowered to 5 (wanted 7)" in s.note


def test_a_pocket_without_consumption_keeps_its_levels(ledger: Ledger) -> None:
    use(ledger, day(2), 9)  # P01 is used; P02 only had its stock booked in
    use(ledger, FIRST - timedelta(days=3), 8, location=P02, gtin=METO)  # before the window
    meto = PocketPlan("CAB1", 2, METO, current_min=4, current_max=10, capacity=30)
    used, idle = par(ledger, plan(), meto)
    assert used.suggested_min != 5
    assert idle.gtin == METO and idle.name == "Metoprolol 50"
    assert (idle.suggested_min, idle.suggested_max) == (4, 10)
    assert (idle.mean_daily, idle.total, idle.peak_daily) == (0.0, 0, 0)
    assert idle.cover_days_current is None and not idle.changed
    assert idle.note == "no consumption in 7 days: levels kept"
    # a pocket the ledger has never seen at all says the same
    [ghost] = par(ledger, PocketPlan("CAB9", 3, PARA, current_min=2, current_max=6))
    assert (ghost.suggested_min, ghost.suggested_max, ghost.days_seen) == (2, 6, 0)
    assert ghost.note == "no consumption in 7 days: levels kept"


def test_days_before_a_pocket_was_first_stocked_are_not_history(ledger: Ledger) -> None:
    ledger.add_location("CAB1/P03", "pocket", parent="CAB1", product_gtin=PARA)
    at(ledger, day(4), hour=7)
    ledger.receive(
        "new-pocket", gtin=PARA, batch="B-3", expiry=date(2027, 12, 31), quantity=100,
        to_location="CAB1/P03", actor="t",
    )  # fmt: skip
    for n in (4, 5, 6):
        use(ledger, day(n), 6, location="CAB1/P03")
    [s] = par(ledger, PocketPlan("CAB1", 3, PARA, current_min=5, current_max=20))
    # three days of 6, not seven days averaging 18 / 7
    assert (s.days_seen, s.mean_daily, s.stdev_daily) == (3, 6.0, 0.0)
    assert (s.suggested_min, s.suggested_max) == (6, 24)
    assert s.note == "only 3 of 7 days of history"


def test_days_are_local_calendar_days(ledger: Ledger) -> None:
    at(ledger, date(2026, 11, 19), hour=23, minute=30)  # 00:30 on the 20th in Stockholm
    ledger.consume("late", gtin=PARA, quantity=5, location=P01, actor="t", reason="dose")
    utc = daily_consumption(ledger.engine, [(P01, PARA)], days=2, until=UNTIL)
    local = daily_consumption(
        ledger.engine, [(P01, PARA)], days=2, until=UNTIL, tz="Europe/Stockholm"
    )
    assert utc[(P01, PARA)].daily == (5, 0)
    assert local[(P01, PARA)].daily == (0, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, "days: must be a whole number of at least 1, got 0"),
        ({"days": -3}, "days: must be a whole number of at least 1, got -3"),
        ({"lead_time_days": 0}, "lead_time_days: must be above 0, got 0"),
        ({"lead_time_days": -1.5}, "lead_time_days: must be above 0, got -1.5"),
        ({"days_of_supply": 0.0}, "days_of_supply: must be above 0, got 0.0"),
        ({"days_of_supply": float("nan")}, "days_of_supply: must be above 0, got nan"),
        ({"service_z": -1}, "service_z: must be 0 or more, got -1"),
        ({"until": datetime(2026, 11, 20, tzinfo=UTC)}, "until: must be a date"),
        ({"tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_arguments_are_refused_by_name_and_value(
    kwargs: dict[str, object], message: str
) -> None:
    engine = make_engine("sqlite://")  # no schema: refused before the ledger is read
    args: dict[str, object] = {"days": 7, "until": UNTIL} | kwargs
    try:
        with pytest.raises(ParError) as info:
            suggest_par(engine, [plan()], **args)  # type: ignore[arg-type]
        assert str(info.value).startswith(message)
    finally:
        engine.dispose()


def test_bad_current_levels_are_refused() -> None:
    engine = make_engine("sqlite://")
    try:
        bad = PocketPlan("CAB1", 1, PARA, current_min=8, current_max=8)
        with pytest.raises(
            ParError, match="pocket CAB1/P01: current_max must be above current_min 8"
        ):
            suggest_par(engine, [bad], until=UNTIL)
        tiny = PocketPlan("CAB1", 1, PARA, current_min=1, current_max=4, capacity=0)
        with pytest.raises(ParError, match="pocket CAB1/P01: capacity must be at least 1, got 0"):
            suggest_par(engine, [tiny], until=UNTIL)
    finally:
        engine.dispose()


def write_site(tmp_path: Path, ledger_url: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site_dict(ledger_url=ledger_url)), encoding="utf-8")
    return path


def test_cli_prints_a_table_per_cabinet_and_pocket(
    ledger: Ledger, ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book_mean_four(ledger)
    site = write_site(tmp_path, ledger_url)
    argv = ["cabinets", "par", "--config", str(site), "--until", "2026-11-20", "--days", "7"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2026-11-14..2026-11-20 (7 days, Europe/Stockholm)" in out
    assert "CAB1 (ward W1)" in out
    p01 = next(line for line in out.splitlines() if line.strip().startswith("P01"))
    p02 = next(line for line in out.splitlines() if line.strip().startswith("P02"))
    assert p01.split() == ["P01", "Paracetamol", "500", "4.0", "6", "5.0", "5/20", "->", "7/16"]
    assert "Metoprolol 50" in p02 and "4/10 == 4/10" in p02
    assert p02.endswith("no consumption in 7 days: levels kept")


def test_cli_json_parses_and_db_overrides_the_site_file(
    ledger: Ledger, ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book_mean_four(ledger)
    site = write_site(tmp_path, "sqlite:///" + str(tmp_path / "elsewhere" / "none.db"))
    argv = [
        "cabinets", "par", "--config", str(site), "--db", ledger_url, "--until", "2026-11-20",
        "--days", "7", "--lead-days", "2", "--supply-days", "3", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["until"], data["days"], data["lead_time_days"]) == ("2026-11-20", 7, 2.0)
    p01, p02 = data["pockets"]
    assert (p01["location"], p01["suggested_min"], p01["suggested_max"]) == ("CAB1/P01", 12, 20)
    assert (p01["mean_daily"], p01["peak_daily"], p01["changed"]) == (4.0, 6, True)
    assert (p02["location"], p02["suggested_min"], p02["suggested_max"]) == ("CAB1/P02", 4, 10)
    assert p02["cover_days_current"] is None and p02["changed"] is False


def test_cli_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = write_site(tmp_path, "sqlite:///" + str(tmp_path / "ledger.db"))
    assert main(["cabinets", "par", "--config", str(site), "--days", "0"]) == 2
    assert "doseline cabinets par: days: must be a whole number of at least 1, got 0" in (
        capsys.readouterr().err
    )
    assert main(["cabinets", "par", "--site", str(site), "--supply-days", "-2"]) == 2
    assert "days_of_supply: must be above 0, got -2.0" in capsys.readouterr().err
    assert main(["cabinets", "par", "--config", str(site), "--cabinet", "CAB7"]) == 2
    assert "--cabinet: unknown cabinet 'CAB7'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cabinets", "par", "--config", str(site), "--until", "20/11/2026"])
    assert "not a date (YYYY-MM-DD): '20/11/2026'" in capsys.readouterr().err
