"""Shortages, rationing and licences in the ledger (SQLite and PostgreSQL), their hooks
in ward supply (a rationed line cut to its grant when it goes on a pick list; a licence
product refused at dispatch without a valid ward licence) and in cabinet refills, and
the `doseline duty` commands. Every refused input names its field and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from controller.app import Controller
from controller.cabinets.replenishment import Replenishment
from controller.cli import main
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.ledger import Ledger
from controller.ledger.engine import make_engine
from controller.ledger.errors import DutyRefused, UnknownEntity
from controller.ledger.schema import audit_log, movements
from controller.ledger.schema_duty import licences, ration_draws, rationing_rules, shortages
from controller.wardsupply import views
from controller.wardsupply.model import LineIn, LineStatus, Refused, RequisitionIn
from controller.wardsupply.model import RequisitionSource as Source
from controller.wardsupply.service import WardSupply
from tests.sites import FURO, METO, OXY, PARA, make_site, ward_site

# 05:00 in Stockholm: before the AM run's cutoff (06:00)
START = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)
TODAY = START.date()
PHARMACIST = "pharmacist:petra"
TECH = "technician:tove"


def ward_controller(ledger_url: str) -> Iterator[Controller]:
    controller = Controller(parse_site(ward_site(ledger_url=ledger_url)), ledger_url=ledger_url)
    controller.ledger.clock = lambda: START
    controller.wardsupply.clock = lambda: START
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        yield controller
    finally:
        controller.close()


@pytest.fixture
def ctl(ledger_url: str) -> Iterator[Controller]:
    """On SQLite and PostgreSQL."""
    yield from ward_controller(ledger_url)


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Controller]:
    """On SQLite only."""
    yield from ward_controller(f"sqlite:///{tmp_path / 'ledger.db'}")


def rows(led: Ledger, table: object) -> int:
    with led.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def req(sender_id: str, room: str, *lines: tuple[str, int]) -> RequisitionIn:
    return RequisitionIn(
        sender="ward-system",
        sender_id=sender_id,
        drug_room=room,
        lines=tuple(LineIn(g, p) for g, p in lines),
        source=Source.JSON,
    )


# ------------------------------------------------------------------ the ledger


def test_a_shortage_with_rationing_and_a_licence(ctl: Controller) -> None:
    led = ctl.ledger
    s = led.record_shortage(
        PARA,
        notice_ref="N-2026-41",
        supplier="WHOLE",
        expected_end=TODAY + timedelta(days=20),
        substitutes=[METO, FURO],
        note="API plant stopped",
        actor=PHARMACIST,
        today=TODAY,
    )
    assert (s.gtin, s.status, s.expected_end) == (PARA, "open", TODAY + timedelta(days=20))
    (listed,) = led.shortages(free_at=ctl.site.store.all_bins)
    assert {(x.gtin, x.free_units) for x in listed.substitutes} == {(METO, 300), (FURO, 10)}
    moved = led.update_shortage(
        s.id, expected_end=TODAY + timedelta(days=40), substitutes=[METO], actor=PHARMACIST
    )
    assert moved.expected_end == TODAY + timedelta(days=40)
    assert [x.gtin for x in moved.substitutes] == [METO]

    rule = led.start_rationing(
        PARA,
        cap_per_ward_day=200,
        priority_wards=["ICU"],
        reason="shortage N-2026-41",
        shortage_id=s.id,
        actor=PHARMACIST,
    )
    assert rule.in_force and rule.priority_wards == ("ICU",)
    assert (led.open_shortage_count(), led.rationed_products()) == (1, 1)  # the gauges
    with pytest.raises(DutyRefused, match=f"already rationed by rule {rule.id}"):
        led.start_rationing(PARA, cap_per_ward_day=1, reason="again", actor=PHARMACIST)
    first = led.draw_ration(
        PARA, ward="W1", day=TODAY, units=150, source="manual", ref="m1", actor=PHARMACIST
    )
    second = led.draw_ration(
        PARA, ward="W1", day=TODAY, units=150, source="manual", ref="m2", actor=PHARMACIST
    )
    assert first is not None and second is not None
    assert (first.granted, second.granted, second.capped) == (150, 50, 100)
    again = led.draw_ration(
        PARA, ward="W1", day=TODAY, units=150, source="manual", ref="m2", actor=PHARMACIST
    )
    assert again is not None and again.repeat and again.granted == 50  # drawn once
    assert [d.units for d in led.ration_draws(ward="W1", day=TODAY)] == [150, 50]
    assert led.draw_ration(METO, ward="W1", day=TODAY, units=5, source="manual", ref="x",
                           actor=PHARMACIST) is None  # fmt: skip
    ended = led.end_rationing(rule.id, actor=PHARMACIST)
    assert not ended.in_force and led.rationing_rules() == []
    closed = led.close_shortage(s.id, actor=PHARMACIST)
    assert (closed.status, closed.closed_by) == ("closed", PHARMACIST)
    assert led.shortages() == [] and len(led.shortages(status=None)) == 1
    assert (led.open_shortage_count(), led.rationed_products()) == (0, 0)

    lic = led.record_licence(
        FURO,
        holder_kind="ward",
        holder="W1",
        number="LIC-1",
        valid_from=TODAY,
        valid_to=TODAY + timedelta(days=90),
        fee_sek="1250.50",
        actor=PHARMACIST,
    )
    assert lic.fee_sek == Decimal("1250.50")
    assert led.valid_licence(FURO, "W1", TODAY) == lic
    assert led.valid_licence(FURO, "W1", TODAY + timedelta(days=91)) is None
    assert led.valid_licence(FURO, "W2", TODAY) is None
    led.revoke_licence("LIC-1", actor=PHARMACIST, reason="ward closed")
    assert led.valid_licence(FURO, "W1", TODAY) is None
    assert [x.number for x in led.licences()] == ["LIC-1"]
    with led.engine.connect() as c:
        actions = set(c.execute(select(audit_log.c.action)).scalars())
    assert {"shortage", "rationing", "ration draw", "licence"} <= actions


def test_bad_inputs_are_named_and_write_nothing(tmp_path: Path) -> None:
    led = Ledger(make_engine(f"sqlite:///{tmp_path / 'l.db'}"), clock=lambda: START)
    led.create_schema()
    for gtin, article in ((PARA, 1), (METO, 2)):
        led.add_product(
            gtin=gtin, article=article, name=gtin, substance="x", atc="N02BE01",
            strength="1 mg", form="tablet",
        )  # fmt: skip
    s = led.record_shortage(PARA, notice_ref="N1", actor=PHARMACIST, today=TODAY)
    rule = led.start_rationing(METO, cap_per_ward_day=5, reason="scarce", actor=PHARMACIST)
    led.record_licence(
        PARA, holder_kind="patient", holder="P-1", number="L1", valid_from=TODAY,
        valid_to=TODAY, fee_sek=0, actor=PHARMACIST,
    )  # fmt: skip
    with led.engine.connect() as c:
        audit_before = c.execute(select(func.count()).select_from(audit_log)).scalar_one()
    counts = [rows(led, t) for t in (shortages, rationing_rules, ration_draws, licences)]

    def lic(**changes: object) -> None:
        args: dict[str, object] = {
            "holder_kind": "ward", "holder": "W1", "number": "L2", "valid_from": TODAY,
            "valid_to": TODAY, "fee_sek": "10", "actor": PHARMACIST,
        }  # fmt: skip
        args.update(changes)
        gtin = str(args.pop("gtin", PARA))
        led.record_licence(gtin, **args)  # type: ignore[arg-type]

    cases: list[tuple[object, type[Exception], str]] = [
        (lambda: led.record_shortage("07359990099999", notice_ref="N", actor=PHARMACIST),
         UnknownEntity, "unknown gtin: '07359990099999'"),
        (lambda: led.record_shortage(PARA, notice_ref="N2", substitutes=["07359990088888"],
                                     actor=PHARMACIST),
         UnknownEntity, "unknown substitute: '07359990088888'"),
        (lambda: led.record_shortage(PARA, notice_ref="N3", substitutes=[METO, PARA],
                                     actor=PHARMACIST),
         DutyRefused, "substitutes: '07359990000013' is the product itself"),
        (lambda: led.record_shortage(PARA, notice_ref="N4", expected_end=date(2026, 1, 1),
                                     actor=PHARMACIST, today=TODAY),
         DutyRefused, "expected_end: 2026-01-01 is in the past"),
        (lambda: led.record_shortage(PARA, notice_ref="N1", actor=PHARMACIST),
         DutyRefused, "notice_ref: 'N1' is already recorded"),
        (lambda: led.record_shortage(PARA, notice_ref=" ", actor=PHARMACIST),
         DutyRefused, "notice_ref: ' ' is required"),
        (lambda: led.update_shortage(99, note="x", actor=PHARMACIST),
         UnknownEntity, "unknown shortage: 99"),
        (lambda: led.update_shortage(s.id, substitutes=[PARA], actor=PHARMACIST),
         DutyRefused, "is the product itself"),
        (lambda: led.start_rationing(PARA, cap_per_ward_day=-1, reason="x", actor=PHARMACIST),
         DutyRefused, "cap_per_ward_day: -1 must be a whole number"),
        (lambda: led.start_rationing(PARA, cap_per_ward_day=5, reason="", actor=PHARMACIST),
         DutyRefused, "reason: '' is required"),
        (lambda: led.start_rationing(PARA, cap_per_ward_day=5, reason="x", shortage_id=42,
                                     actor=PHARMACIST),
         UnknownEntity, "unknown shortage: 42"),
        (lambda: led.start_rationing(METO, cap_per_ward_day=5, reason="x", shortage_id=s.id,
                                     actor=PHARMACIST),
         DutyRefused, "already rationed by rule"),
        (lambda: led.end_rationing(77, actor=PHARMACIST), UnknownEntity, "unknown rule: 77"),
        (lambda: lic(gtin="07359990099999"), UnknownEntity, "unknown gtin"),
        (lambda: lic(valid_to=TODAY - timedelta(days=1)),
         DutyRefused, f"valid_to: {TODAY - timedelta(days=1)} is before valid_from"),
        (lambda: lic(fee_sek="-1"), DutyRefused, "fee_sek: '-1' must be 0 or more"),
        (lambda: lic(fee_sek="abc"), DutyRefused, "fee_sek: 'abc' is not a number"),
        (lambda: lic(fee_sek="1.001"), DutyRefused, "fee_sek: '1.001'"),
        (lambda: lic(holder_kind="room"), DutyRefused, "holder_kind: 'room' must be one of"),
        (lambda: lic(number="L1"), DutyRefused, "number: 'L1' is already recorded"),
        (lambda: led.revoke_licence("NOPE", actor=PHARMACIST), UnknownEntity, "licence"),
    ]  # fmt: skip
    for call, error, text in cases:
        with pytest.raises(error) as caught:
            call()  # type: ignore[operator]
        assert text in str(caught.value), (text, str(caught.value))
    with led.engine.connect() as c:
        audit_after = c.execute(select(func.count()).select_from(audit_log)).scalar_one()
    assert audit_after == audit_before  # nothing refused reached the audit trail
    assert [rows(led, t) for t in (shortages, rationing_rules, ration_draws, licences)] == counts
    led.end_rationing(rule.id, actor=PHARMACIST)
    with pytest.raises(DutyRefused, match=r"shortage_id: .* of another product"):
        led.start_rationing(METO, cap_per_ward_day=5, reason="x", shortage_id=s.id,
                            actor=PHARMACIST)  # fmt: skip
    with pytest.raises(DutyRefused, match="has already ended"):
        led.end_rationing(rule.id, actor=PHARMACIST)
    led.close_shortage(s.id, actor=PHARMACIST)
    with pytest.raises(DutyRefused, match="is already closed"):
        led.close_shortage(s.id, actor=PHARMACIST)
    with pytest.raises(DutyRefused, match="is closed"):
        led.update_shortage(s.id, note="late", actor=PHARMACIST)
    led.engine.dispose()


# ------------------------------------------------------------------ ward supply


def test_rationed_ward_lines_are_cut_to_their_grant_priority_first(ctl: Controller) -> None:
    w, led = ctl.wardsupply, ctl.ledger
    led.start_rationing(
        PARA, cap_per_ward_day=200, priority_wards=["ICU"], reason="shortage", actor=PHARMACIST
    )
    w.submit(req("R1", "DR-MED", (PARA, 3), (METO, 1)), actor=TECH)
    w.submit(req("R2", "DR-ICU", (PARA, 2)), actor=TECH)
    assert w.approve_routine(actor=PHARMACIST, reason="routine ward stock") == 3
    (pick,) = w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH)
    wanted = {(x.drug_room, x.gtin): x.wanted_units for x in pick.lines}
    assert wanted == {
        ("DR-MED", PARA): 200,  # capped at 200 units a day: 2 packs of the 3 asked
        ("DR-ICU", PARA): 200,  # a priority ward: not capped
        ("DR-MED", METO): 100,  # not rationed
    }
    with led.engine.connect() as c:
        lines = {
            (x.drug_room, x.gtin): x for x in views.lines(c, ids=[p.line_id for p in pick.lines])
        }
    med = lines[("DR-MED", PARA)]
    assert med.approved_packs == 2 and med.packs == 3
    assert med.reason is not None and med.reason.startswith("rationed: cap 200 a day for ward W1")
    draws = {(d.ward, d.source, d.ref): d.units for d in led.ration_draws(day=TODAY)}
    assert draws == {
        ("W1", "ward", str(med.id)): 200,
        ("ICU", "ward", str(lines[("DR-ICU", PARA)].id)): 200,
    }
    # The ward asks again the same day: its cap is used up, the line is rejected with
    # the reason and no list is made for it.
    w.submit(req("R3", "DR-MED", (PARA, 1)), actor=TECH)
    assert w.approve_routine(actor=PHARMACIST, reason="routine ward stock") == 1
    assert w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH) == []
    with led.engine.connect() as c:
        (late,) = views.lines(c, statuses=(str(LineStatus.REJECTED),))
    assert late.status == LineStatus.REJECTED and late.approved_packs == 0
    assert late.reason is not None and late.reason.startswith("rationed: cap 200")
    assert len(led.ration_draws()) == 2


def test_a_licence_product_leaves_only_under_a_valid_ward_licence(lite: Controller) -> None:
    w, led = lite.wardsupply, lite.ledger
    w.submit(req("L1", "DR-MED", (FURO, 1)), actor=TECH)
    (line,) = w.review_queue()
    assert "licence" in line.flags
    w.decide(line.id, "approve", actor=PHARMACIST, reason="for one patient")
    (pick,) = w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH)
    data = encode_pack(PackId(FURO, "F-1", TODAY + timedelta(days=200), None))
    assert w.scan(pick.number, data, actor=TECH).accepted
    with led.engine.connect() as c:
        before = c.execute(select(func.count()).select_from(movements)).scalar_one()
    with pytest.raises(Refused) as caught:
        w.dispatch(pick.number, actor=TECH)
    assert f"licence: no valid licence for Furosemide 40 ({FURO}) on ward W1 on {TODAY}" in str(
        caught.value
    )
    with led.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(movements)).scalar_one() == before
    assert w.pick_list(pick.number).status == "open"
    # a licence of another ward, or one that ended, does not count
    for number, ward, days in (("LIC-W2", "W2", 30), ("LIC-OLD", "W1", -1)):
        start = TODAY + timedelta(days=min(days, 0) - 10)
        led.record_licence(
            FURO, holder_kind="ward", holder=ward, number=number, valid_from=start,
            valid_to=TODAY + timedelta(days=days), fee_sek="900", actor=PHARMACIST,
        )  # fmt: skip
    with pytest.raises(Refused, match="ward W1"):
        w.dispatch(pick.number, actor=TECH)
    led.record_licence(
        FURO, holder_kind="ward", holder="W1", number="LIC-W1", valid_from=TODAY,
        valid_to=TODAY + timedelta(days=30), fee_sek="900", actor=PHARMACIST,
    )  # fmt: skip
    sent = w.dispatch(pick.number, actor=TECH)
    assert len(sent.notes) == 1


async def test_a_rationed_pocket_refill_is_capped_by_the_wards_grant(tmp_path: Path) -> None:
    site = make_site()
    controller = Controller(site, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        controller.prepare_ledger()
        controller.receive_opening_stock(datetime.now(UTC).date())
        led = controller.ledger
        cabinet = site.cabinets[0]
        repl = Replenishment(
            controller.aledger,
            controller.metrics,
            {},
            site.store.all_bins,
            reservation_timeout_s=60,
            settings=site.replenishment,
        )
        led.start_rationing(PARA, cap_per_ward_day=10, reason="shortage", actor=PHARMACIST)
        para = next(p for p in cabinet.pockets if p.gtin == PARA)
        meto = next(p for p in cabinet.pockets if p.gtin == METO)
        refill = await repl.request(cabinet, para, 2)  # 18 wanted, the cap is 10
        assert refill is not None and refill.quantity == 10
        (draw,) = led.ration_draws()
        assert (draw.ward, draw.units, draw.source, draw.ref) == (
            cabinet.ward,
            10,
            "refill",
            refill.refill_id,
        )
        other = await repl.request(cabinet, meto, 1)  # not rationed: up to the max
        assert other is not None and other.quantity == meto.max - 1
        await repl.cancel_open("test over")
        assert await repl.request(cabinet, para, 2) is None  # the ward's cap is used up
        assert [d.units for d in led.ration_draws()] == [10]
        await repl.drain()
    finally:
        controller.close()


# ------------------------------------------------------------------ the CLI


def test_the_duty_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["ledger", "init", "--db", db]) == 0
    base = ["--db", db, "--actor", PHARMACIST]
    capsys.readouterr()
    end = (date.today() + timedelta(days=30)).isoformat()
    assert main(["duty", "shortage", "record", PARA, "--notice-ref", "N-1", "--supplier",
                 "NORDPHARM", "--expected-end", end, "--substitute", METO, *base]) == 0  # fmt: skip
    assert "shortage 1" in capsys.readouterr().out
    assert main(["duty", "shortage", "list", "--db", db, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["gtin"] == PARA and listed["substitutes"][0]["gtin"] == METO
    assert listed["substitutes"][0]["free_units"] is not None
    assert main(["duty", "ration", "start", PARA, "--cap", "200", "--priority-ward", "ICU",
                 "--reason", "shortage N-1", "--shortage", "1", *base]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["duty", "ration", "start", PARA, "--cap", "5", "--priority-ward", "NOWARD",
                 "--reason", "x", *base]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("doseline duty ration start: priority_wards: 'NOWARD' is not a ward")
    assert main(["duty", "ration", "list", "--db", db, "--json"]) == 0
    (rule,) = json.loads(capsys.readouterr().out)
    assert (rule["cap_per_ward_day"], rule["priority_wards"]) == (200, ["ICU"])
    assert main(["duty", "ration", "draws", "--db", db]) == 0
    assert main(["duty", "ration", "end", "1", *base]) == 0
    assert main(["duty", "shortage", "close", "1", *base]) == 0
    capsys.readouterr()
    assert main(["duty", "shortage", "close", "1", *base]) == 1
    assert "doseline duty shortage close: shortage: 1 is already closed" in capsys.readouterr().err
    assert main(["duty", "shortage", "record", "07359990099999", "--notice-ref", "N-2",
                 *base]) == 1  # fmt: skip
    assert "unknown gtin: '07359990099999'" in capsys.readouterr().err

    melatonin = "07359990000235"
    assert main(["duty", "licence", "record", melatonin, "--ward", "MED1", "--number", "LIC-9",
                 "--from", date.today().isoformat(), "--to", end, "--fee", "1500",
                 *base]) == 0  # fmt: skip
    assert main(["duty", "licence", "record", melatonin, "--ward", "XX", "--number", "LIC-8",
                 "--from", date.today().isoformat(), "--to", end, "--fee", "1500",
                 *base]) == 1  # fmt: skip
    assert "holder: 'XX' is not a ward" in capsys.readouterr().err
    assert main(["duty", "licence", "check", melatonin, "--ward", "MED1", "--db", db]) == 0
    assert "LIC-9" in capsys.readouterr().out
    assert main(["duty", "licence", "list", "--db", db, "--json"]) == 0
    (fee,) = json.loads(capsys.readouterr().out)
    assert (fee["number"], fee["fee_sek"], fee["holder"]) == ("LIC-9", "1500.00", "MED1")
    assert main(["duty", "licence", "revoke", "LIC-9", "--reason", "ended", *base]) == 0
    assert main(["duty", "licence", "check", melatonin, "--ward", "MED1", "--db", db]) == 1
    assert "no valid licence" in capsys.readouterr().err


def test_without_a_rule_in_force_nothing_is_drawn(lite: Controller) -> None:
    """Without a rule in force, a pick list is made as before (OXY is controlled)."""
    w: WardSupply = lite.wardsupply
    w.submit(req("P1", "DR-MED", (PARA, 1), (OXY, 1)), actor=TECH)
    w.approve_routine(actor=PHARMACIST, reason="routine ward stock")
    (line,) = w.review_queue()
    w.decide(line.id, "approve", actor=PHARMACIST, reason="usual need")
    (pick,) = w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH)
    assert sorted(x.wanted_units for x in pick.lines) == [100, 100]
    assert lite.ledger.ration_draws() == []


def test_short_rationed_stock_goes_to_the_priority_ward_first(lite: Controller) -> None:
    """METO has 300 units in store: the priority ward's 3 packs take them all; the
    other ward's pack (within its cap) waits as a back order for the next run."""
    w, led = lite.wardsupply, lite.ledger
    led.start_rationing(
        METO, cap_per_ward_day=100, priority_wards=["ICU"], reason="shortage", actor=PHARMACIST
    )
    w.submit(req("S1", "DR-MED", (METO, 1)), actor=TECH)
    w.submit(req("S2", "DR-ICU", (METO, 3)), actor=TECH)
    assert w.approve_routine(actor=PHARMACIST, reason="routine ward stock") == 1
    (icu,) = w.review_queue()
    w.decide(icu.id, "approve", actor=PHARMACIST, reason="intensive care first")
    (pick,) = w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH)
    assert [(x.drug_room, x.wanted_units) for x in pick.lines] == [("DR-ICU", 300)]
    with led.engine.connect() as c:
        med = views.lines(c, drug_room="DR-MED")
    by_status = {x.status: x for x in med}
    assert set(by_status) == {LineStatus.SHORT, LineStatus.APPROVED}
    back = by_status[LineStatus.APPROVED]
    assert (back.approved_packs, back.run) == (1, "PM")
    assert back.reason is not None and "rationed: stock short, priority wards first" in back.reason
    assert [(d.ward, d.units) for d in led.ration_draws()] == [("ICU", 300)]


def test_a_draw_counts_what_left_for_the_ward(lite: Controller) -> None:
    """Two packs granted, one picked: the draw is lowered to the pack that left, and
    the back order of the other is rationed again when it goes on a list."""
    w, led = lite.wardsupply, lite.ledger
    led.start_rationing(METO, cap_per_ward_day=300, reason="shortage", actor=PHARMACIST)
    w.submit(req("D1", "DR-MED", (METO, 2)), actor=TECH)
    assert w.approve_routine(actor=PHARMACIST, reason="routine ward stock") == 1
    (pick,) = w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH)
    (line,) = pick.lines
    assert [d.units for d in led.ration_draws()] == [200]
    data = encode_pack(PackId(METO, "M-1", TODAY + timedelta(days=200), "S-1"))
    assert w.scan(pick.number, data, actor=TECH).accepted
    sent = w.dispatch(pick.number, actor=TECH)
    assert len(sent.back_orders) == 1
    assert [(d.ref, d.units) for d in led.ration_draws()] == [(str(line.line_id), 100)]
