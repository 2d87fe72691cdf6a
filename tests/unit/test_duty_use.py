"""The whole use: every issue counts in cover (pouches, cabinets, drug rooms), external
volumes per product and month (recorded, replaced, removed, imported all or nothing),
cover judged on internal + external use, and the export per workplace.

NOW = 2026-11-22 12:00 UTC. Paracetamol (A) came in at T-100 (300 units at 0.50 SEK);
in the last 30 days 90 left through a canister (pouches), 60 through a cabinet pocket
and 30 through a drug room: 180 used, 120 usable, cover 120 x 90 / 180 = 60 days.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from controller.cli import main
from controller.duty_rules.external_file import FileProblem, parse_external_use
from controller.ledger import Ledger
from controller.ledger import reports as rp
from controller.ledger.duty_use import ExternalUseRefused
from controller.ledger.engine import make_engine
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.reports.cover import prorated
from controller.ledger.reports.workplace import (
    WORKPLACE_CSV_HEADER,
    Workplace,
    workplace_consumption,
    workplace_csv_text,
)
from controller.ledger.schema import audit_log, external_use

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
A = "07359990000013"
B = "07359990000020"
UNKNOWN = "07350000000000"
PRIVATE = "Privat vård AB"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def build(led: Ledger, clock: Clock) -> None:
    led.create_schema()
    for gtin, article, name in ((A, 100007, "Paracetamol 500 mg"), (B, 100014, "Metoprolol")):
        led.add_product(
            gtin=gtin,
            article=article,
            name=name,
            substance=name.lower(),
            atc="N02BE01",
            strength="500 mg",
            form="tablet",
            pack_size=100,
            unit_price="0.50",
        )
    for code, kind, parent, gtin in (
        ("CENTRAL", "store", None, None),
        ("CENTRAL/A01", "bin", "CENTRAL", None),
        ("PACKER-1", "store", None, None),
        ("PACKER-1/C01", "canister", "PACKER-1", A),
        ("CAB-1", "store", None, None),
        ("CAB-1/P01", "pocket", "CAB-1", A),
        ("H1", "hospital", None, None),
        ("H1/W1", "ward", "H1", None),
        ("H1/W1/DR1", "drugroom", "H1/W1", None),
    ):
        led.add_location(code, kind, parent=parent, product_gtin=gtin)
    clock.now = NOW - timedelta(days=100)
    led.receive(
        "r-a", gtin=A, batch="A1", expiry=date(2028, 1, 31), quantity=300,
        to_location="CENTRAL/A01", actor="t",
    )  # fmt: skip
    clock.now = NOW - timedelta(days=6)
    for place, qty in (("PACKER-1/C01", 90), ("CAB-1/P01", 60), ("H1/W1/DR1", 30)):
        led.transfer(
            f"t-{place}", gtin=A, quantity=qty, from_location="CENTRAL/A01", to_location=place,
            actor="t", reason="fill",
        )  # fmt: skip
    clock.now = NOW - timedelta(days=5)
    for place, qty in (("PACKER-1/C01", 90), ("CAB-1/P01", 60), ("H1/W1/DR1", 30)):
        led.consume(f"c-{place}", gtin=A, quantity=qty, location=place, actor="t", reason="use")
    clock.now = NOW


@pytest.fixture
def led(tmp_path: Path) -> Iterator[Ledger]:
    clock = Clock()
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, clock=clock)
    build(ledger, clock)
    yield ledger
    engine.dispose()


def cover_of(led: Ledger, gtin: str) -> rp.CoverRow:
    return next(r for r in rp.days_of_cover(led.engine, now=NOW).rows if r.gtin == gtin)


WORKPLACES = {
    "W1": Workplace("W1", "Ward 1", "K101", "1234567890", "H1"),
    "W2": Workplace("W2", "Ward 2", "K102", "", "H1"),
}
CABINETS = {"CAB-1": "W2", "H1/W1/DR1": "W1"}


def test_every_issue_and_the_external_use_count_on_both_databases(ledger_url: str) -> None:
    clock = Clock()
    engine = make_engine(ledger_url)
    led = Ledger(engine, clock=clock)
    try:
        build(led, clock)
        row = cover_of(led, A)
        assert row.use_30d_by_channel == {"cabinets": 60, "drug rooms": 30, "pouches": 90}
        assert (row.consumed_30d, row.consumed_90d, row.basis) == (180, 180, "90d")
        assert (row.mean_daily_90d, row.cover_days, row.meets_obligation) == (2.0, 60.0, True)
        assert (row.external_30d, row.external_90d, row.whole_cover_days) == (0, 0, 60.0)

        # October (31 days), 3100 units: all of it in the 90-day window, 8.5 days of it
        # in the 30-day window (from 2026-10-23 12:00).
        led.record_external_use(A, month="2026-10", unit_name=PRIVATE, quantity=3100, actor="p")
        row = cover_of(led, A)
        assert (row.external_30d, row.external_90d) == (850, 3100)
        assert row.cover_days == 60.0  # internal use alone
        assert row.whole_cover_days == 3.3  # 120 x 90 / (180 + 3100)
        assert (row.meets_obligation, row.status) == (False, "short")
        compliance = rp.compliance_summary(led.engine, now=NOW)
        drugs = next(c for c in compliance.categories if c.category == "drug")
        assert [p.gtin for p in drugs.short] == [A]

        report = workplace_consumption(
            led.engine, since="2026-10", until="2026-11", tz="UTC",
            workplaces=WORKPLACES, cabinets=CABINETS,
        )  # fmt: skip
        assert [
            (r.month, r.workplace_id, r.ward, r.cost_centre, r.customer, r.quantity, r.value)
            for r in report.rows
        ] == [
            ("2026-10", "", "", "", PRIVATE, 3100, Decimal("1550.00")),
            ("2026-11", "1234567890", "W1", "K101", "H1", 30, Decimal("15.00")),
            ("2026-11", "", "W2", "K102", "H1", 60, Decimal("30.00")),
            ("2026-11", "", "unassigned", "", "", 90, Decimal("45.00")),
        ]
        assert (report.units, report.unassigned_units) == (3280, 90)
    finally:
        engine.dispose()


def test_the_workplace_csv_layout(led: Ledger) -> None:
    report = workplace_consumption(
        led.engine, since="2026-11", until="2026-11", tz="UTC",
        workplaces=WORKPLACES, cabinets=CABINETS,
    )  # fmt: skip
    lines = workplace_csv_text(report).split("\n")
    assert lines[0] == ";".join(WORKPLACE_CSV_HEADER)
    assert lines[1] == "2026-11;1234567890;W1;K101;H1;100007;" + A + (
        ";Paracetamol 500 mg;N02BE01;tablet;30;15.00"
    )
    assert lines[-1] == "" and len(lines) == 5
    with pytest.raises(LedgerError, match="until: 2026-10 is before since 2026-11"):
        workplace_consumption(
            led.engine, since="2026-11", until="2026-10", tz="UTC", workplaces=WORKPLACES
        )
    with pytest.raises(LedgerError, match="month: '2026-13' is not a month"):
        workplace_consumption(
            led.engine, since="2026-13", until="2026-10", tz="UTC", workplaces=WORKPLACES
        )


def test_prorating_spreads_a_month_over_its_time() -> None:
    since, until = datetime(2026, 10, 23, 12, tzinfo=UTC), NOW
    assert prorated(3100, "2026-10", since, until) == 850
    assert prorated(300, "2026-11", since, until) == Fraction(300 * 21.5 / 30).limit_denominator()
    assert prorated(300, "2026-12", since, until) == 0
    assert prorated(310, "2026-09", since, until) == 0


def audit_count(led: Ledger) -> int:
    with led.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def volumes(led: Ledger) -> list[tuple[str, str, str, int]]:
    return [(v.month, v.gtin, v.unit_name, v.quantity) for v in led.external_uses()]


def test_record_replaces_and_remove_is_audited(led: Ledger) -> None:
    led.record_external_use(A, month="2026-10", unit_name=" Kommun X ", quantity=40, actor="p:a")
    led.record_external_use(A, month="2026-10", unit_name="Kommun X", quantity=55, actor="p:b")
    led.record_external_use(A, month="2026-11", unit_name="Kommun X", quantity=0, actor="p:b")
    assert volumes(led) == [("2026-10", A, "Kommun X", 55), ("2026-11", A, "Kommun X", 0)]
    assert [v.quantity for v in led.external_uses(since="2026-11")] == [0]
    with led.engine.connect() as conn:
        changes = conn.execute(
            select(audit_log.c.actor, audit_log.c.old_value, audit_log.c.new_value)
            .where(audit_log.c.entity == "external_use")
            .order_by(audit_log.c.seq)
        ).all()
    assert [(a, json.loads(o) if o else None, json.loads(n)) for a, o, n in changes] == [
        ("p:a", None, {"quantity": 40}),
        ("p:b", {"quantity": 40}, {"quantity": 55}),
        ("p:b", None, {"quantity": 0}),
    ]
    removed = led.remove_external_use(A, month="2026-10", unit_name="Kommun X", actor="p:c")
    assert removed.quantity == 55
    assert volumes(led) == [("2026-11", A, "Kommun X", 0)]
    with pytest.raises(
        UnknownEntity, match="unknown external use: '07359990000013/2026-10/Kommun X'"
    ):
        led.remove_external_use(A, month="2026-10", unit_name="Kommun X", actor="p:c")


@pytest.mark.parametrize(
    ("gtin", "month", "unit", "quantity", "message"),
    [
        (UNKNOWN, "2026-10", "U", 5, f"unknown gtin: '{UNKNOWN}'"),
        (A, "2026-13", "U", 5, "month: '2026-13' is not a month (YYYY-MM)"),
        (A, "26-10", "U", 5, "month: '26-10' is not a month"),
        (A, "2026-12", "U", 5, "month: '2026-12' is in the future (this month is 2026-11)"),
        (A, "2026-10", "  ", 5, "unit_name: '  ' is empty"),
        (A, "2026-10", "U" * 101, 5, "unit_name: 'UUU.* is longer than 100 characters"),
        (A, "2026-10", "U", -1, "quantity: -1 must be >= 0"),
        (A, "2026-10", "U", 2.5, "quantity: 2.5 is not a whole number"),
    ],
)
def test_a_bad_volume_is_named_and_nothing_is_written(
    led: Ledger, gtin: str, month: str, unit: str, quantity: int, message: str
) -> None:
    before = audit_count(led)
    with pytest.raises(LedgerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        led.record_external_use(gtin, month=month, unit_name=unit, quantity=quantity, actor="p")
    assert volumes(led) == [] and audit_count(led) == before


GOOD_FILE = (
    "\ufeffmonth;gtin;unit_name;quantity\n"
    f"2026-10;{A};Kommun X;120\n"
    f"2026-10;{A};{PRIVATE};80\n"
    "\n"
    f"2026-11;{B};Kommun X;7\n"
)


def test_an_import_writes_all_lines_and_a_second_run_changes_nothing(led: Ledger) -> None:
    dry = led.import_external_use(GOOD_FILE, actor="p", dry_run=True)
    assert (dry.rows, dry.inserted, dry.dry_run) == (3, 3, True)
    assert volumes(led) == []
    done = led.import_external_use(GOOD_FILE, actor="p")
    assert (done.rows, done.inserted, done.replaced, done.unchanged) == (3, 3, 0, 0)
    again = led.import_external_use(GOOD_FILE.replace(";7\n", ";9\n"), actor="p")
    assert (again.inserted, again.replaced, again.unchanged) == (0, 1, 2)
    assert volumes(led) == [
        ("2026-10", A, "Kommun X", 120),
        ("2026-10", A, PRIVATE, 80),
        ("2026-11", B, "Kommun X", 9),
    ]


def test_a_bad_import_names_every_line_and_writes_nothing(led: Ledger) -> None:
    led.record_external_use(A, month="2026-10", unit_name="Kommun X", quantity=1, actor="p")
    before = audit_count(led)
    text = (
        "month;gtin;unit_name;quantity\n"
        f"2026-10;{A};Kommun X;120\n"  # good, would replace
        f"2026-14;{A};Kommun X;5\n"
        f"2026-10;{UNKNOWN};Kommun X;5\n"
        f"2026-10;{A};Kommun Y;x\n"
        f"2026-10;{A};Kommun X;3\n"
        "2026-10;123;;-4\n"
        "2026-10;only three;fields\n"
        f"2027-01;{A};Kommun X;5\n"
    )
    with pytest.raises(ExternalUseRefused) as caught:
        led.import_external_use(text, actor="p")
    assert [str(p) for p in caught.value.problems] == [
        "line 3: month: '2026-14' is not a month (YYYY-MM)",
        f"line 4: gtin: '{UNKNOWN}' is not a known product",
        "line 5: quantity: 'x' is not a whole number",
        f"line 6: line: '2026-10;{A};Kommun X;3' repeats line 2 (same month, gtin and unit_name)",
        "line 7: gtin: '123' is not 8 to 14 digits",
        "line 7: unit_name: '' is empty",
        "line 7: quantity: '-4' must be >= 0",
        "line 8: line: '2026-10;only three;fields' has 3 fields, not 4",
        "line 9: month: '2027-01' is in the future (this month is 2026-11)",
    ]
    assert "9 problem(s), nothing written" in str(caught.value)
    assert volumes(led) == [("2026-10", A, "Kommun X", 1)] and audit_count(led) == before
    with pytest.raises(ExternalUseRefused, match="line 1: header: 'month,gtin'"):
        led.import_external_use("month,gtin\n", actor="p")


def test_the_cli_records_imports_and_lists(
    led: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(led.engine.url)
    base = ["duty", "external-use"]
    volume = ["--db", db, "--gtin", A, "--month", "2026-10", "--unit", "Kommun X"]
    # the ledger's clock is real here: 2026-10 is in the past from now on
    assert main([*base, "record", *volume, "--quantity", "12", "--actor", "p:a"]) == 0
    assert "recorded 12 of 07359990000013 Paracetamol 500 mg used by Kommun X in 2026-10" in (
        capsys.readouterr().out
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(f"month;gtin;unit_name;quantity\n2026-10;{UNKNOWN};U;1\n", encoding="utf-8")
    assert main([*base, "import", "--db", db, str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"doseline duty external-use import: {bad}: 1 problem(s), nothing written" in err
    assert f"line 2: gtin: '{UNKNOWN}' is not a known product" in err
    good = tmp_path / "good.csv"
    good.write_text(GOOD_FILE.replace("\ufeff", ""), encoding="utf-8")
    assert main([*base, "import", "--db", db, str(good)]) == 0
    # the file's first line replaces the volume recorded above
    assert "3 lines: 2 new, 1 replaced, 0 unchanged (written)" in capsys.readouterr().out
    assert main([*base, "list", "--db", db, "--gtin", A, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["unit_name"], v["quantity"]) for v in listed] == [("Kommun X", 120), (PRIVATE, 80)]
    assert main([*base, "list", "--db", db]) == 0
    assert "3 volumes, 207 units" in capsys.readouterr().out
    assert main([*base, "record", *volume[:-2], "--unit", "U", "--quantity", "-3"]) == 1
    assert "doseline duty external-use record: quantity: -3 must be >= 0" in (
        capsys.readouterr().err
    )
    assert main([*base, "remove", *volume, "--actor", "p:a"]) == 0
    assert main([*base, "remove", *volume, "--actor", "p:a"]) == 1
    assert "unknown external use" in capsys.readouterr().err
    with led.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(external_use)).scalar_one() == 2


def test_the_site_file_names_each_wards_workplace() -> None:
    from controller.cli.reports import site_workplaces
    from controller.config import ConfigError, parse_site
    from tests.sites import ward_site

    raw = ward_site()
    raw["wards"][0]["workplace_id"] = "1234567890"  # W1
    raw["drug_rooms"][1]["workplace_id"] = "ICU0000001"  # DR-ICU
    places = site_workplaces(parse_site(raw))
    assert {c: (w.workplace_id, w.cost_centre, w.customer) for c, w in places.items()} == {
        "W1": ("1234567890", "4711", "H1"),
        "W2": ("", "4722", "H2"),
        "ICU": ("ICU0000001", "4733", "H1"),
    }
    raw["wards"][1]["workplace_id"] = "12-34"
    with pytest.raises(ConfigError, match=r"wards.1.workplace_id: .* \(value: '12-34'\)"):
        parse_site(raw)


def test_the_workplace_cli_writes_the_export(
    led: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from tests.sites import ward_site

    raw = ward_site()
    raw["wards"][0]["workplace_id"] = "1234567890"
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw), encoding="utf-8")
    led.record_external_use(A, month="2026-11", unit_name=PRIVATE, quantity=10, actor="p")
    out = tmp_path / "workplace.csv"
    args = ["report", "workplace", "--site", str(site), "--db", str(led.engine.url)]
    assert main([*args, "--since", "2026-11", "--tz", "UTC", "--csv", str(out)]) == 0
    # the site names no cabinet or drug room of this ledger: the internal use is unassigned
    assert f"{out}: 2 lines, 190 units, 95.00 SEK" in capsys.readouterr().out
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("month;workplace_id;ward;cost_centre;customer;")
    assert lines[1].startswith("2026-11;;unassigned;;;100007;")
    assert lines[2].startswith(f"2026-11;;;;{PRIVATE};100007;")
    assert main([*args, "--since", "2026-11", "--until", "2026-10"]) == 2
    assert "until: 2026-10 is before since 2026-11" in capsys.readouterr().err


# ------------------------------------------------------------------ the file, as values

lines_st = st.lists(
    st.tuples(
        st.integers(2020, 2026).map(str),
        st.integers(1, 12).map(lambda m: f"{m:02d}"),
        st.from_regex(r"[0-9]{13,14}", fullmatch=True),
        st.text(
            st.characters(
                codec="utf-8", exclude_characters=';"\r\n\x00', exclude_categories=["Z", "C"]
            ),
            min_size=1,
            max_size=30,
        ),
        st.integers(0, 10**6),
    ),
    max_size=8,
    unique_by=lambda t: (t[0], t[1], t[2].zfill(14), t[3].strip()),
)


@settings(max_examples=60, deadline=None)
@given(lines_st)
def test_a_well_formed_file_reads_back_exactly(rows: list[tuple[str, str, str, str, int]]) -> None:
    text = "month;gtin;unit_name;quantity\n" + "".join(
        f"{y}-{m};{g};{u};{q}\n" for y, m, g, u, q in rows
    )
    lines, problems = parse_external_use(text, current="2026-12")
    assert problems == []
    assert [(x.line, x.month, x.gtin, x.unit_name, x.quantity) for x in lines] == [
        (i, f"{y}-{m}", g.zfill(14), u.strip(), q) for i, (y, m, g, u, q) in enumerate(rows, 2)
    ]


def test_the_header_and_a_byte_order_mark() -> None:
    assert parse_external_use("", current="2026-11") == (
        [],
        [FileProblem(1, "header", None, "is missing: month;gtin;unit_name;quantity")],
    )
    lines, problems = parse_external_use(
        "\ufeffMonth;GTIN;unit_name;quantity\n2026-11;7359990000013;U;1\n", current="2026-11"
    )
    assert problems == [] and lines[0].gtin == A


def test_the_cover_gauge_follows_the_whole_use(led: Ledger) -> None:
    from controller.stock_metrics import collect

    assert collect(led, now=NOW).cover_days["drug"] == 60.0
    led.record_external_use(A, month="2026-10", unit_name=PRIVATE, quantity=3100, actor="p")
    snap = collect(led, now=NOW)
    assert (snap.cover_days["drug"], snap.below_obligation["drug"]) == (3.3, 1)
