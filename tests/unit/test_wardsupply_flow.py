"""Ward supply end to end on the ledger (SQLite and PostgreSQL): a drug room's
requisition reviewed, picked by scan, dispatched, received with a deviation, and the
stock's way store -> in transit -> drug room -> used; the bad paths book nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from controller.app import Controller
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.ledger import verify_ledger
from controller.ledger.schema import movements
from controller.ledger.schema_wardsupply import ward_requisitions
from controller.wardsupply.model import (
    Conflict,
    Decision,
    Deviation,
    LineIn,
    LineStatus,
    Refused,
    RequisitionIn,
    RequisitionSource,
    UnknownEntity,
    WardSupplyError,
)
from controller.wardsupply.service import ReceiptLine, WardSupply
from tests.sites import FURO, METO, OXY, PARA, PARA2, ward_site

# 05:00 in Stockholm: before the AM run's cutoff (06:00)
START = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)
TODAY = START.date()
PHARMACIST = "pharmacist:petra"
TECH = "technician:tove"


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def ctl(ledger_url: str) -> Iterator[Controller]:
    clock = Clock(START)
    controller = Controller(parse_site(ward_site(ledger_url=ledger_url)), ledger_url=ledger_url)
    controller.ledger.clock = clock
    controller.wardsupply.clock = clock
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        yield controller
    finally:
        controller.close()


def ws(ctl: Controller) -> WardSupply:
    return ctl.wardsupply


def req(sender_id: str, room: str, *lines: tuple[str, int], urgent: bool = False) -> RequisitionIn:
    return RequisitionIn(
        sender="ward-system",
        sender_id=sender_id,
        drug_room=room,
        lines=tuple(LineIn(g, p) for g, p in lines),
        source=RequisitionSource.JSON,
        urgent=urgent,
    )


def scan(gtin: str, batch: str, days: int = 300, serial: str | None = None) -> str:
    return encode_pack(PackId(gtin, batch, TODAY + timedelta(days=days), serial))


def expiry_of(ctl: Controller, gtin: str, batch: str) -> int:
    lot = ctl.ledger.lot(gtin, batch)
    return (lot["expiry"] - TODAY).days


def at(ctl: Controller, location: str, gtin: str) -> int:
    return sum(s.on_hand for s in ctl.ledger.stock(location=location, gtin=gtin))


def moved(ctl: Controller) -> int:
    with ctl.ledger.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(movements)).scalar_one())


def test_a_requisition_from_request_to_the_ward_shelf(ctl: Controller) -> None:
    w = ws(ctl)
    booked = w.submit(req("R-1", "DR-MED", (PARA, 2), (METO, 1), (OXY, 1), (PARA2, 1)), actor=TECH)
    assert (booked.duplicate, booked.lines, booked.flagged) == (False, 4, 2)
    again = w.submit(req("R-1", "DR-MED", (PARA, 2)), actor=TECH)
    assert again.duplicate and again.number == booked.number

    queue = {x.gtin: x for x in w.review_queue()}
    assert queue[OXY].flags == ("controlled",)
    assert queue[PARA2].flags == ("not_on_list",)
    assert queue[PARA].flags == () and queue[PARA].status == "pending"

    # the bulk approval takes the routine lines only
    assert w.approve_routine(actor=PHARMACIST, reason="routine ward stock") == 2
    assert {x.gtin for x in w.review_queue()} == {OXY, PARA2}
    w.decide(queue[OXY].id, Decision.APPROVE, actor=PHARMACIST, reason="usual for the ward")
    ordered = w.decide(queue[PARA2].id, "approve", actor=PHARMACIST, reason="patient on it")
    assert ordered.status == LineStatus.ORDERED and ordered.purchase_order is not None
    assert w.review_queue() == []

    lists = w.make_pick_lists(run="AM", run_date=TODAY, actor=TECH)
    assert [pl.hospital for pl in lists] == ["H1"]
    pick = lists[0]
    para = next(x for x in pick.lines if x.gtin == PARA)
    # first expiry first: the 50 units of P-EARLY, then P-LATE; P-SHORT is too short-dated
    assert [(lot["batch"], lot["units"]) for lot in para.lots] == [("P-EARLY", 50), ("P-LATE", 150)]

    def take(data: str) -> str:
        result = w.scan(pick.number, data, actor=TECH)
        assert not result.accepted, result.message
        return result.message

    assert take(scan(PARA, "P-SHORT", 5)).startswith("wrong lot")
    assert take(scan(PARA, "P-LATE", -1)).startswith("expired")
    assert take(scan(FURO, "F-1")).startswith("not on the list")
    assert take("garbage").startswith("unreadable")
    for batch, days in (("P-EARLY", 90), ("P-LATE", 400), ("P-LATE", 400)):
        assert w.scan(pick.number, scan(PARA, batch, days), actor=TECH).accepted
    assert take(scan(PARA, "P-LATE", 400)).startswith("already picked")
    assert w.scan(pick.number, scan(METO, "M-1", 200, "S1"), actor=TECH).accepted
    assert take(scan(METO, "M-1", 200, "S1")).startswith(("already", "wrong"))
    # oxycodone is not picked at all: a short line, carried as a back order

    store_para = at(ctl, "CENTRAL/A01", PARA) + at(ctl, "CENTRAL/A02", PARA)
    sent = w.dispatch(pick.number, actor=TECH)
    assert sent.short_lines == 1 and len(sent.back_orders) == 1 and len(sent.notes) == 1
    assert [p.serial for p, _ in sent.packs] == ["S1"]
    assert at(ctl, "TRANSIT/H1", PARA) == 200 and at(ctl, "TRANSIT/H1", METO) == 100
    assert at(ctl, "CENTRAL/A01", PARA) + at(ctl, "CENTRAL/A02", PARA) == store_para - 200
    assert w.dispatch(pick.number, actor=TECH).notes == sent.notes  # repeat: nothing new
    back = w.review_queue()  # back orders are approved for the next run, not reviewed again
    assert back == []
    with ctl.ledger.engine.connect() as c:
        from controller.wardsupply import views

        carried = views.lines(c, ids=list(sent.back_orders))[0]
    assert (carried.gtin, carried.approved_packs, carried.status, carried.run) == (
        OXY,
        1,
        "approved",
        "PM",
    )

    note = w.note(sent.notes[0])
    assert {(x.gtin, x.batch, x.units) for x in note.lines} == {
        (PARA, "P-EARLY", 50),
        (PARA, "P-LATE", 150),
        (METO, "M-1", 100),
    }
    assert note.lines[0].gs1.startswith("(01)")
    consumed_before = ctl.ledger.moved_quantity("consume")
    got = w.receive(
        note.number,
        actor="nurse:nils",
        deviations=[ReceiptLine(PARA, "P-LATE", Deviation.DAMAGED, 50, "crushed box")],
    )
    assert (got.units, got.deviations, got.consumed_on_delivery) == (250, 1, 250)
    # an uncounted drug room: what arrived counts as used on delivery
    assert ctl.ledger.moved_quantity("consume") - consumed_before == 250
    assert at(ctl, "TRANSIT/H1", PARA) == 0 and at(ctl, "H1/W1/DR-MED", PARA) == 0
    with pytest.raises(Conflict, match="already received"):
        w.receive(note.number, actor="nurse:nils")
    with pytest.raises(UnknownEntity, match="DN-NOPE"):
        w.receive("DN-NOPE", actor="nurse:nils")
    assert verify_ledger(ctl.ledger.engine) == []


def test_bad_requisitions_book_nothing(ctl: Controller) -> None:
    w = ws(ctl)
    before = moved(ctl)
    cases = [
        (req("B1", "DR-NOPE", (PARA, 1)), UnknownEntity, "drug_room: 'DR-NOPE'"),
        (req("B2", "DR-PRIV", (PARA, 1)), Refused, "outside the hospital"),
        (req("B3", "DR-MED", ("07359990099999", 1)), UnknownEntity, "lines[0].gtin"),
        (req("B4", "DR-MED", (PARA, 0)), WardSupplyError, "lines[0].packs: '0'"),
        (req("B5", "DR-MED", (PARA, -2)), WardSupplyError, "lines[0].packs: '-2'"),
        (req("B6", "DR-MED", (PARA, 100_000)), WardSupplyError, "more than"),
        (req("B7", "DR-MED", (PARA, 1), (PARA, 2)), WardSupplyError, "lines[1].gtin"),
        (req("", "DR-MED", (PARA, 1)), WardSupplyError, "id"),
    ]
    for r, error, text in cases:
        with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")):
            w.submit(r, actor=TECH)
    with ctl.ledger.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(ward_requisitions)).scalar_one() == 0
    assert moved(ctl) == before


def test_decisions_need_a_reason_and_stay_in_their_group(ctl: Controller) -> None:
    w = ws(ctl)
    w.submit(req("D1", "DR-MED", (PARA, 3), (FURO, 1)), actor=TECH)
    lines = {x.gtin: x for x in w.review_queue()}
    assert lines[FURO].flags == ("licence", "not_on_list")
    with pytest.raises(WardSupplyError, match="reason"):
        w.decide(lines[PARA].id, "approve", actor=PHARMACIST, reason="")
    with pytest.raises(WardSupplyError, match="substitution group"):
        w.decide(lines[PARA].id, "substitute", actor=PHARMACIST, reason="x" * 5, substitute=METO)
    with pytest.raises(WardSupplyError, match="packs: '3'"):
        w.decide(lines[PARA].id, "reduce", actor=PHARMACIST, reason="too much", packs=3)
    with pytest.raises(WardSupplyError, match="decision: 'maybe'"):
        w.decide(lines[PARA].id, "maybe", actor=PHARMACIST, reason="hmm hmm")
    cut = w.decide(lines[PARA].id, "reduce", actor=PHARMACIST, reason="two will do", packs=2)
    assert (cut.status, cut.approved_packs, cut.decided_by) == ("approved", 2, PHARMACIST)
    no = w.decide(lines[FURO].id, "reject", actor=PHARMACIST, reason="no licence for the ward")
    assert no.status == "rejected"
    with pytest.raises(Conflict, match="not waiting for review"):
        w.decide(lines[FURO].id, "approve", actor=PHARMACIST, reason="changed my mind")
    trail = (
        ctl.ledger.audit_records(entity="ward_line")
        if hasattr(ctl.ledger, "audit_records")
        else None
    )
    del trail
    from controller.ledger.schema import audit_log

    with ctl.ledger.engine.connect() as c:
        rows = c.execute(
            select(audit_log.c.actor, audit_log.c.new_value).where(
                audit_log.c.entity == "ward_line"
            )
        ).all()
    assert {r.actor for r in rows} == {PHARMACIST}
    assert any("no licence for the ward" in (r.new_value or "") for r in rows)


def test_a_substitute_is_delivered_for_the_ordered_product(ctl: Controller) -> None:
    w = ws(ctl)
    ctl.ledger.receive(
        "para2-in", gtin=PARA2, batch="Q-1", expiry=TODAY + timedelta(days=300), quantity=300,
        to_location="CENTRAL/A02", actor=TECH,
    )  # fmt: skip
    w.submit(req("S1", "DR-MED", (PARA, 1)), actor=TECH)
    line = w.review_queue()[0]
    done = w.decide(line.id, "substitute", actor=PHARMACIST, reason="shortage", substitute=PARA2)
    assert (done.approved_gtin, done.status) == (PARA2, "approved")
    pick = w.make_pick_lists(run="AM", run_date=TODAY)[0]
    assert [x.gtin for x in pick.lines] == [PARA2]
    assert not w.scan(pick.number, scan(PARA, "P-LATE", 400), actor=TECH).accepted
    assert w.scan(pick.number, scan(PARA2, "Q-1", 300), actor=TECH).accepted
    note = w.dispatch(pick.number, actor=TECH).notes[0]
    assert w.receive(note, actor="nurse:nils").units == 100


def test_urgent_counted_room_top_up_and_auto_receipt(ctl: Controller) -> None:
    w = ws(ctl)
    w.submit(req("U1", "DR-ICU", (PARA, 1), urgent=True), actor=TECH)
    w.approve_routine(actor=PHARMACIST, reason="urgent, routine product")
    line = w.review_queue(drug_room="DR-ICU")
    assert line == []
    assert w.make_pick_lists(run="AM", run_date=TODAY) == []  # urgent lines have their own run
    pick = w.make_pick_lists(run="URGENT", run_date=TODAY)[0]
    assert pick.urgent and pick.run == "URGENT"
    assert w.scan(pick.number, scan(PARA, "P-EARLY", 90), actor=TECH).accepted
    assert w.scan(pick.number, scan(PARA, "P-LATE", 400), actor=TECH).accepted
    note = w.dispatch(pick.number, actor=TECH).notes[0]
    assert w.auto_receive() == []  # not yet overdue
    ctl.ledger.clock.at = START + timedelta(hours=7)  # type: ignore[attr-defined]
    assert w.auto_receive() == [note]
    assert w.note(note).auto_received
    # a counted room keeps its stock until it is counted
    assert at(ctl, "H1/ICU/DR-ICU", PARA) == 100
    booked, proposal = w.top_up("DR-ICU", [(PARA, 0)], actor=TECH, round_id="R1")
    assert proposal == [(PARA, 2)] and booked is not None and not booked.duplicate
    assert at(ctl, "H1/ICU/DR-ICU", PARA) == 0  # the count booked the use
    again, _ = w.top_up("DR-ICU", [(PARA, 0)], actor=TECH, round_id="R1")
    assert again is not None and again.duplicate
    with pytest.raises(WardSupplyError, match=r"counts\[0\].gtin"):
        w.top_up("DR-ICU", [(METO, 0)], actor=TECH, round_id="R2")
    with pytest.raises(WardSupplyError, match=r"counts\[0\].packs: '-1'"):
        w.top_up("DR-ICU", [(PARA, -1)], actor=TECH, round_id="R3")
    assert verify_ledger(ctl.ledger.engine) == []


def test_a_product_not_kept_is_delivered_once_it_arrives(ctl: Controller) -> None:
    w = ws(ctl)
    w.submit(req("N1", "DR-MED", (PARA2, 1)), actor=TECH)
    line = w.review_queue()[0]
    ordered = w.decide(line.id, "approve", actor=PHARMACIST, reason="only for this patient")
    order = ctl.purchasing.order(ordered.purchase_order or "")
    assert [(x.gtin, x.packs) for x in order.lines] == [(PARA2, 1)]
    assert w.release_arrived() == 0
    ctl.ledger.receive(
        "para2-in", gtin=PARA2, batch="Q-2", expiry=TODAY + timedelta(days=300), quantity=100,
        to_location="CENTRAL/A02", actor=TECH,
    )  # fmt: skip
    assert w.release_arrived() == 1
    pick = w.make_pick_lists(run="AM", run_date=TODAY)[0]
    assert [x.gtin for x in pick.lines] == [PARA2]


def test_receipt_deviations_are_checked_whole(ctl: Controller) -> None:
    w = ws(ctl)
    w.submit(req("V1", "DR-MED", (METO, 1)), actor=TECH)
    w.approve_routine(actor=PHARMACIST, reason="routine")
    pick = w.make_pick_lists(run="AM", run_date=TODAY)[0]
    assert w.scan(pick.number, scan(METO, "M-1", 200), actor=TECH).accepted
    note = w.dispatch(pick.number, actor=TECH).notes[0]
    before = moved(ctl)
    for dev, text in (
        (ReceiptLine(METO, "M-9", Deviation.MISSING, 1, "gone"), "is not on note"),
        (ReceiptLine(METO, "M-1", Deviation.MISSING, 0, "gone"), "units: '0'"),
        (ReceiptLine(METO, "M-1", Deviation.MISSING, 101, "gone"), "more than the 100"),
        (ReceiptLine(METO, "M-1", Deviation.MISSING, 1, ""), "reason"),
    ):
        with pytest.raises(WardSupplyError, match=text):
            w.receive(note, actor="nurse:nils", deviations=[dev])
    assert moved(ctl) == before
    got = w.receive(
        note,
        actor="nurse:nils",
        deviations=[
            ReceiptLine(METO, "M-1", Deviation.MISSING, 10, "not in the box"),
            ReceiptLine(METO, "M-1", Deviation.TOO_MANY, 5, "an extra strip"),
        ],
    )
    assert got.units == 95
    assert verify_ledger(ctl.ledger.engine) == []


def test_reliability_counts_lines_on_time_and_in_full(ctl: Controller) -> None:
    from controller.wardsupply.reliability import delivery_reliability, render_text

    w = ws(ctl)
    w.submit(req("Q1", "DR-MED", (PARA, 1), (METO, 1), (OXY, 1)), actor=TECH)
    w.approve_routine(actor=PHARMACIST, reason="routine")
    oxy = w.review_queue()[0]
    w.decide(oxy.id, "approve", actor=PHARMACIST, reason="usual")
    pick = w.make_pick_lists(run="AM", run_date=TODAY)[0]
    assert w.scan(pick.number, scan(PARA, "P-EARLY", 90), actor=TECH).accepted
    assert w.scan(pick.number, scan(PARA, "P-LATE", 400), actor=TECH).accepted
    assert w.scan(pick.number, scan(METO, "M-1", 200), actor=TECH).accepted
    # oxycodone not picked: short; metoprolol comes with a deviation
    note = w.dispatch(pick.number, actor=TECH).notes[0]
    w.receive(
        note,
        actor="nurse:nils",
        deviations=[ReceiptLine(METO, "M-1", Deviation.MISSING, 10, "not in the box")],
    )
    report = delivery_reliability(
        ctl.ledger.engine,
        since=START - timedelta(days=1),
        until=START + timedelta(days=1),
        now=START + timedelta(hours=8),
    )
    assert (report.lines, report.on_time_in_full) == (3, 1)
    assert report.share == pytest.approx(1 / 3, abs=1e-4) and report.meets_target is False
    assert report.by_cause == {"receipt deviation": 1, "short in store": 1}
    assert {u.gtin for u in report.unmet} == {METO, OXY}
    assert "short in store" in render_text(report)


def test_drug_room_use_is_debited_to_its_ward(ctl: Controller) -> None:
    from controller.ledger import debiting

    w = ws(ctl)
    w.submit(req("DB1", "DR-MED", (METO, 1)), actor=TECH)
    w.approve_routine(actor=PHARMACIST, reason="routine")
    pick = w.make_pick_lists(run="AM", run_date=TODAY)[0]
    assert w.scan(pick.number, scan(METO, "M-1", 200), actor=TECH).accepted
    w.receive(w.dispatch(pick.number, actor=TECH).notes[0], actor="nurse:nils")
    site = ctl.site
    month = START.astimezone(ctl.wardsupply.tz).date().replace(day=1)
    report = debiting.ward_debiting(
        ctl.ledger,
        month=month,
        tz=site.site.timezone,
        wards=site.ward_map(),
        cabinets=site.cabinet_wards(),
    )
    used = {(x.ward, x.gtin): x.units for x in report.lines}
    assert used == {("W1", METO): 100}
    assert report.unassigned_units == 0
