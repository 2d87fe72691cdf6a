"""The preparedness list: the file checked whole (every bad line named, nothing
written), the list replaced in one audited transaction, one product set or removed,
cover split into rotating and preparedness stock, compliance with targets and floors,
the CLI, and first-expiry-first-out across store and preparedness locations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from controller.cli import main
from controller.config import gs1_check_digit
from controller.duty_rules.preparedness_file import check_levels, parse_preparedness
from controller.ledger import Ledger, verify_ledger
from controller.ledger import reports as rp
from controller.ledger.duty_preparedness import PreparednessRefused
from controller.ledger.engine import make_engine
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.ledger import Need
from controller.ledger.schema import audit_log
from controller.ledger.schema_duty import preparedness_targets

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
A = "07350000000016"  # drug, store and preparedness stock, used
B = "07350000000023"  # drug, store stock only
M = "07350000000030"  # protective equipment, preparedness stock only
UNKNOWN = "07350000000047"


def gtin(n: int) -> str:
    body = f"{735000000000 + n:013d}"
    return body + str(gs1_check_digit(body))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def build(led: Ledger, clock: Clock) -> None:
    """A: 300 in the store, 200 in preparedness, 300 used in the last 30 days (cover 50
    days). B: 100 in the store, 300 used (cover 10 days). M: 400 in preparedness, unused."""
    led.create_schema()
    for gtin, article, name, category in (
        (A, 200001, "Amoxicillin 500", "drug"),
        (B, 200002, "Bisoprolol 5", "drug"),
        (M, 200003, "Mask IIR", "protective_equipment"),
    ):
        led.add_product(
            gtin=gtin,
            article=article,
            name=name,
            substance=name.split()[0],
            atc="",
            strength=name.split()[1],
            form="tablet",
            category=category,
        )
    led.add_location("CENTRAL", "store")
    led.add_location("CENTRAL/A01", "bin", parent="CENTRAL")
    led.add_location("CENTRAL/PREP", "preparedness", parent="CENTRAL")
    clock.now = NOW - timedelta(days=20)
    for key, gtin, batch, expiry, qty, to in (
        ("r1", A, "A-STORE", date(2027, 6, 30), 600, "CENTRAL/A01"),
        ("r2", A, "A-PREP", date(2027, 3, 31), 200, "CENTRAL/PREP"),
        ("r3", B, "B-1", date(2027, 6, 30), 400, "CENTRAL/A01"),
        ("r4", M, "M-1", date(2030, 1, 31), 400, "CENTRAL/PREP"),
    ):
        led.receive(
            key, gtin=gtin, batch=batch, expiry=expiry, quantity=qty, to_location=to, actor="t"
        )
    clock.now = NOW - timedelta(days=10)
    led.consume("c1", gtin=A, quantity=300, location="CENTRAL/A01", actor="t", reason="dose")
    led.consume("c2", gtin=B, quantity=300, location="CENTRAL/A01", actor="t", reason="dose")
    clock.now = NOW


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def led(clock: Clock, tmp_path: Path) -> Iterator[Ledger]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = Ledger(engine, clock=clock)
    build(ledger, clock)
    yield ledger
    engine.dispose()


def _rows(led: Ledger) -> int:
    with led.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(preparedness_targets)).scalar_one()
        )


def _audited(led: Ledger, entity: str) -> list[tuple[str, str | None, str | None]]:
    with led.engine.connect() as conn:
        rows = conn.execute(
            select(audit_log.c.entity_key, audit_log.c.old_value, audit_log.c.new_value)
            .where(audit_log.c.entity == entity)
            .order_by(audit_log.c.seq)
        )
        return [(str(k), o, n) for k, o, n in rows]


# ---------------------------------------------------------------------------- the file


def test_a_good_file_is_parsed_with_its_optional_name_and_blank_lines() -> None:
    text = f"\ufeffgtin;target_units;floor_units;name\n{A};500;200;Amoxicillin\n\n{M[1:]};1000;0;\n"
    parsed = parse_preparedness(text)
    assert parsed.problems == ()
    assert [(x.line, x.gtin, x.target_units, x.floor_units) for x in parsed.lines] == [
        (2, A, 500, 200),
        (4, M, 1000, 0),  # 13 digits given, 14 kept
    ]


def test_every_bad_line_is_named_with_its_field_and_value() -> None:
    text = "\n".join(
        [
            "gtin;target_units;floor_units",
            f"{A};500;200",
            "0735000000001X;10;5",  # 3: not a GTIN
            f"{B};ten;5",  # 4: not a number
            f"{M};100;-1",  # 5: negative
            f"{A};600;100",  # 6: twice
            f"{gtin(5)};500;900",  # 7: floor above target
            f"{gtin(6)}",  # 8: missing columns
            f"{gtin(7)};0;0",  # 9: target 0
            f"{gtin(8)};1;1;x;y",  # 10: too many columns
        ]
    )
    shown = [str(p) for p in parse_preparedness(text).problems]
    assert shown[0].startswith("line 3: gtin: '0735000000001X' is not a valid GTIN")
    assert shown[1:] == [
        "line 4: target_units: 'ten' is not a whole number",
        "line 5: floor_units: -1 is negative",
        f"line 6: gtin: {A} is listed twice (first on line 2)",
        "line 7: floor_units: 900 is above target_units 500",
        "line 8: target_units: is missing (the line has 1 of 3 columns)",
        "line 9: target_units: 0 must be above 0",
        "line 10: line: has 5 columns, the header 3",
    ]


def test_a_bad_header_or_an_empty_file_is_refused() -> None:
    (problem,) = parse_preparedness("gtin,target,floor\n1;2;3\n").problems
    assert (problem.line, problem.field) == (1, "header")
    (problem,) = parse_preparedness("gtin;target_units;floor_units\n\n").problems
    assert problem.field == "file"


@given(st.integers(-5, 50), st.integers(-5, 50))
def test_levels_are_good_exactly_when_target_above_0_and_floor_within(
    target: int, floor: int
) -> None:
    good = target > 0 and 0 <= floor <= target
    assert (check_levels(target, floor) == []) is good


# ---------------------------------------------------------------------------- the ledger


def test_an_import_replaces_the_list_in_one_audited_transaction(ledger_url: str) -> None:
    clock = Clock()
    engine = make_engine(ledger_url)
    try:
        led = Ledger(engine, clock=clock)
        build(led, clock)
        first = f"gtin;target_units;floor_units\n{A};500;200\n{B};100;50\n"
        done = led.import_preparedness(first, list_name="list 2026", actor="pharm:eva")
        assert (done.added, done.changed, done.removed) == ((A, B), (), ())
        second = f"gtin;target_units;floor_units\n{A};500;200\n{M};1000;300\n{B};120;50\n"
        plan = led.import_preparedness(
            second, list_name="list 2027", actor="pharm:eva", dry_run=True
        )
        assert (plan.added, plan.changed, plan.removed, plan.unchanged) == ((M,), (B,), (), (A,))
        assert [t.target_units for t in led.preparedness_list()] == [500, 100]  # nothing written
        third = f"gtin;target_units;floor_units\n{M};1000;300\n{B};120;50\n"
        done = led.import_preparedness(third, list_name="list 2027", actor="pharm:eva")
        assert (done.added, done.changed, done.removed, done.unchanged) == ((M,), (B,), (A,), ())
        listed = {
            t.gtin: (t.target_units, t.floor_units, t.list_name) for t in led.preparedness_list()
        }
        assert listed == {B: (120, 50, "list 2027"), M: (1000, 300, "list 2027")}
        keys = [k for k, _, _ in _audited(led, "preparedness")]
        assert keys == [A, B, A, M, B]  # added A, B; then removed A, added M, changed B
        assert _audited(led, "preparedness")[2][2] is None
        assert verify_ledger(engine) == []
    finally:
        engine.dispose()


def test_a_bad_import_names_every_problem_and_writes_nothing(led: Ledger) -> None:
    led.import_preparedness(
        f"gtin;target_units;floor_units\n{A};500;200\n", list_name="l", actor="p"
    )
    text = f"gtin;target_units;floor_units\n{B};100;50\n{UNKNOWN};10;5\n{M};500;900\n"
    with pytest.raises(PreparednessRefused) as caught:
        led.import_preparedness(text, list_name="l", actor="p")
    assert [str(p) for p in caught.value.problems] == [
        f"line 3: gtin: {UNKNOWN} is not a known product",
        "line 4: floor_units: 900 is above target_units 500",
    ]
    assert [(t.gtin, t.target_units) for t in led.preparedness_list()] == [(A, 500)]
    assert len(_audited(led, "preparedness")) == 1


def test_one_product_is_set_and_removed_with_the_same_checks(led: Ledger) -> None:
    t = led.set_preparedness(A, target_units=400, floor_units=100, actor="p")
    assert (t.target_units, t.floor_units, t.list_name) == (400, 100, "set by hand")
    t = led.set_preparedness(A[1:], target_units=400, floor_units=150, actor="p")
    assert t.floor_units == 150 and t.list_name == "set by hand"
    with pytest.raises(PreparednessRefused, match="floor_units: 900 is above target_units 500"):
        led.set_preparedness(A, target_units=500, floor_units=900, actor="p")
    with pytest.raises(UnknownEntity, match=UNKNOWN):
        led.set_preparedness(UNKNOWN, target_units=5, floor_units=1, actor="p")
    with pytest.raises(PreparednessRefused, match="gtin: '123' is not a valid GTIN"):
        led.set_preparedness("123", target_units=5, floor_units=1, actor="p")
    assert [(x.gtin, x.floor_units) for x in led.preparedness_list()] == [(A, 150)]
    led.remove_preparedness(A, actor="p")
    assert _rows(led) == 0
    with pytest.raises(LedgerError, match=f"gtin: {A} is not on the preparedness list"):
        led.remove_preparedness(A, actor="p")
    assert [k for k, _, _ in _audited(led, "preparedness")] == [A, A, A]


# ---------------------------------------------------------------------------- reports


def test_cover_splits_rotating_and_preparedness_stock_and_flags_the_floor(led: Ledger) -> None:
    led.import_preparedness(
        f"gtin;target_units;floor_units\n{A};300;250\n{M};500;400\n", list_name="l", actor="p"
    )
    rows = {r.gtin: r for r in rp.days_of_cover(led, now=NOW).rows}
    a, b, m = rows[A], rows[B], rows[M]
    assert (a.usable, a.usable_rotating, a.usable_preparedness) == (500, 300, 200)
    assert a.cover_days == 50.0  # on all usable stock
    assert (a.preparedness_target, a.preparedness_floor, a.below_floor) == (300, 250, True)
    assert (m.usable_preparedness, m.below_floor) == (400, False)  # the floor itself is enough
    assert (b.usable_rotating, b.usable_preparedness, b.below_floor) == (100, 0, None)
    text = rp.render_text(rp.days_of_cover(led, now=NOW))
    line = next(x for x in text.splitlines() if x.startswith(A))
    assert "300/200" in line and "BELOW FLOOR floor 250 / target 300" in line

    s = rp.compliance_summary(led, now=NOW)
    prep = s.preparedness
    assert (prep.products_listed, prep.below_floor) == (2, 1)
    assert [(p.gtin, p.target, p.floor, p.stock, p.below_floor) for p in prep.listed] == [
        (A, 300, 250, 200, True),
        (M, 500, 400, 400, False),
    ]
    assert prep.units == 600  # the stock held there, as before
    data = rp.to_jsonable(s)
    assert data["preparedness"]["listed"][0]["below_floor"] is True
    assert data["crisis"] == []


def test_report_compliance_json_carries_the_list_and_crisis(
    led: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    led.set_preparedness(A, target_units=300, floor_units=250, actor="p")
    led.start_crisis(starts_at=NOW, reason="regional decision RD-1", gtins=[B], actor="p")
    args = ["report", "compliance", "--db", str(led.engine.url), "--now", NOW.isoformat()]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    prep = data["preparedness"]
    assert (prep["products_listed"], prep["below_floor"]) == (1, 1)
    assert {
        k: prep["listed"][0][k] for k in ("gtin", "target", "floor", "stock", "below_floor")
    } == {
        "gtin": A,
        "target": 300,
        "floor": 250,
        "stock": 200,
        "below_floor": True,
    }
    assert [(c["gtins"], c["categories"], c["ends_at"]) for c in data["crisis"]] == [
        ([B], [], None)
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "preparedness list: 1 products, 1 below floor" in text
    assert f"CRISIS  1: since {NOW.isoformat()} (until open), {B}: regional decision RD-1" in text


def test_report_compliance_json_carries_scope_levels_preparedness_and_crisis(
    led: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """The four things the follow-up reads from `report compliance --json`, together."""
    led.set_out_of_scope(gtin=M, reason="dental_care", note="the dental clinic's", actor="p")
    led.create_exemption(
        B,
        reason="single supplier, licence caps stock",
        risk_assessment="the supplier delivers within 24 h",
        measures="stock counted daily, second source agreed",
        review_date=NOW.date() + timedelta(days=90),
        level_days=14,
        actor="p",
    )
    led.set_preparedness(A, target_units=300, floor_units=250, actor="p")
    led.start_crisis(starts_at=NOW, reason="regional decision RD-2", categories=["drug"], actor="p")
    args = ["report", "compliance", "--db", str(led.engine.url), "--now", NOW.isoformat()]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_category = {c["category"]: c for c in data["categories"]}
    assert by_category["protective_equipment"]["out_of_scope"] == [
        {"gtin": M, "name": by_category["protective_equipment"]["out_of_scope"][0]["name"],
         "reason": "dental_care"}
    ]  # fmt: skip
    assert [(e["gtin"], e["level_days"]) for e in by_category["drug"]["exempted"]] == [(B, 14)]
    assert data["preparedness"]["listed"][0]["gtin"] == A
    assert [c["categories"] for c in data["crisis"]] == [["drug"]]


def test_fefo_takes_the_preparedness_lot_when_it_expires_first(led: Ledger) -> None:
    # A-PREP (2027-03-31) expires before A-STORE (2027-06-30): it is taken first.
    view = led.reserve(
        "res-1",
        purpose="t",
        needs=[Need(A, 250)],
        from_locations=["CENTRAL/A01", "CENTRAL/PREP"],
        timeout_s=60,
        actor="t",
    )
    assert [(x.batch, x.location, x.quantity) for x in view.lines] == [
        ("A-PREP", "CENTRAL/PREP", 200),
        ("A-STORE", "CENTRAL/A01", 50),
    ]
    # A later store lot that expires first is taken before the preparedness lot.
    led.receive(
        "r5",
        gtin=M,
        batch="M-0",
        expiry=date(2028, 1, 31),
        quantity=50,
        to_location="CENTRAL/A01",
        actor="t",
    )
    view = led.reserve(
        "res-2",
        purpose="t",
        needs=[Need(M, 60)],
        from_locations=["CENTRAL/A01", "CENTRAL/PREP"],
        timeout_s=60,
        actor="t",
    )
    assert [(x.batch, x.location, x.quantity) for x in view.lines] == [
        ("M-0", "CENTRAL/A01", 50),
        ("M-1", "CENTRAL/PREP", 10),
    ]


# ---------------------------------------------------------------------------- CLI


def test_cli_import_list_set_remove(
    led: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", str(led.engine.url)]
    bad = tmp_path / "prep.csv"
    bad.write_text(f"gtin;target_units;floor_units\n{A};500;900\n{UNKNOWN};1;1\n", encoding="utf-8")
    assert main(["duty", "preparedness", "import", str(bad), *db]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "doseline duty preparedness import: 2 problem(s), nothing written",
        "  line 2: floor_units: 900 is above target_units 500",
        f"  line 3: gtin: {UNKNOWN} is not a known product",
    ]
    good = tmp_path / "lista-2027.csv"
    good.write_text(f"gtin;target_units;floor_units\n{A};500;200\n", encoding="utf-8")
    assert main(["duty", "preparedness", "import", str(good), *db, "--dry-run"]) == 0
    assert "would replace the preparedness list with 'lista-2027.csv'" in capsys.readouterr().out
    assert _rows(led) == 0
    assert main(["duty", "preparedness", "import", str(good), *db, "--actor", "p:eva"]) == 0
    assert main(["duty", "preparedness", "set", M, "--target", "10", "--floor", "5", *db]) == 0
    capsys.readouterr()
    assert main(["duty", "preparedness", "list", *db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(x["gtin"], x["list_name"]) for x in data] == [
        (A, "lista-2027.csv"),
        (M, "set by hand"),
    ]
    assert main(["duty", "preparedness", "set", M, "--target", "10", "--floor", "50", *db]) == 1
    assert "  floor_units: 50 is above target_units 10" in capsys.readouterr().err
    assert main(["duty", "preparedness", "remove", M, *db]) == 0
    assert main(["duty", "preparedness", "remove", M, *db]) == 1
    assert "is not on the preparedness list" in capsys.readouterr().err
    assert main(["duty", "preparedness", "list", *db]) == 0
    assert "1 product(s) on the preparedness list" in capsys.readouterr().out


@given(st.text(alphabet="0123456789", min_size=7, max_size=15))
def test_the_files_gtin_check_agrees_with_the_site_files(text: str) -> None:
    from controller.config import valid_gtin as site_check
    from controller.duty_rules.preparedness_file import valid_gtin

    def outcome(check: object) -> str | None:
        try:
            return check(text)  # type: ignore[operator, no-any-return]
        except ValueError:
            return None

    assert outcome(valid_gtin) == outcome(site_check)
