"""Supplier orders: from the proposal to purchase orders and order files, deliveries
matched against them (partial, back orders, shortages, substitutes), and each
supplier's reliability; on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from controller.app import Controller
from controller.config import ConfigError, parse_site
from controller.ledger.ledger import DeliveryLine
from controller.ledger.reports import order_proposal
from controller.ledger.schema import deliveries, movements
from controller.purchasing import (
    DeliveryRow,
    PurchasingError,
    PurchasingStore,
    delivery_csv,
    order_csv,
    parse_delivery_csv,
)
from tests.sites import FURO, METO, OXY, PARA, PARA2, purchasing_site

ACTOR = "buyer:berit"
NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
LATER = TODAY + timedelta(days=400)


@pytest.fixture
def ctl(ledger_url: str) -> Iterator[Controller]:
    controller = Controller(
        parse_site(purchasing_site(ledger_url=ledger_url)), ledger_url=ledger_url
    )
    led = controller.ledger
    led.clock = lambda: NOW - timedelta(hours=1)  # the history lies before NOW
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    led.receive(
        "oxy-in", gtin=OXY, batch="O-1", expiry=LATER, quantity=100,
        to_location="CENTRAL/A02", actor=ACTOR,
    )  # fmt: skip
    # Demand over the last days: the proposal works from it (30-day basis).
    for key, gtin, qty, where in (
        ("use-para", PARA, 450, "CENTRAL/A01"),
        ("use-meto", METO, 240, "CENTRAL/A01"),
        ("use-furo", FURO, 10, "CENTRAL/A01"),
        ("use-oxy", OXY, 50, "CENTRAL/A02"),
    ):
        led.consume(key, gtin=gtin, quantity=qty, location=where, actor=ACTOR, reason="use")
    try:
        yield controller
    finally:
        controller.close()


def store(ctl: Controller) -> PurchasingStore:
    return ctl.purchasing


def row(n: int, order: str, line: int, gtin: str, qty: int, **kw: Any) -> DeliveryRow:
    batch = kw.pop("batch", f"B{line}{gtin[-3:]}" if qty else "")
    expiry = kw.pop("expiry", LATER if qty else None)
    return DeliveryRow(n, order, line, gtin, qty, batch=batch, expiry=expiry, **kw)


def on_hand(ctl: Controller, gtin: str) -> int:
    return sum(s.on_hand for s in ctl.ledger.stock(gtin=gtin))


def receipts_count(ctl: Controller) -> tuple[int, int]:
    with ctl.ledger.engine.connect() as c:
        return (
            c.execute(select(func.count()).select_from(deliveries)).scalar_one(),
            c.execute(select(func.count()).select_from(movements)).scalar_one(),
        )


def test_orders_per_supplier_from_the_proposal_net_of_what_is_on_order(ctl: Controller) -> None:
    before = {r.gtin: r for r in order_proposal(ctl.ledger, now=NOW).rows}
    # PARA: 450 used in 30 days, lead time 1 (WHOLE): ceil(450 x 31 / 30) = 465 target;
    # usable 50 + 50 + 100 = 200 -> 265 short -> 3 packs of 100
    assert (before[PARA].supplier, before[PARA].horizon_days, before[PARA].target_units) == (
        "WHOLE",
        31,
        465,
    )
    assert (before[PARA].shortfall, before[PARA].packs) == (265, 3)
    # OXY has no supplier: the default lead time (2) and no order
    assert (before[OXY].supplier, before[OXY].horizon_days, before[OXY].packs) == (None, 32, 1)

    orders, unassigned = store(ctl).create_orders(now=NOW, actor=ACTOR)
    assert unassigned == [OXY]
    assert len(orders) == 1
    po = orders[0]
    assert po.number == f"PO-{NOW:%Y%m%d}-WHOLE-01"
    assert (po.supplier, po.status, po.expected_on) == ("WHOLE", "open", TODAY + timedelta(1))
    assert [(ln.line_no, ln.gtin, ln.packs, ln.units) for ln in po.lines] == [
        (1, FURO, 1, 100),
        (2, METO, 2, 200),
        (3, PARA, 3, 300),
    ]

    after = {r.gtin: r for r in order_proposal(ctl.ledger, now=NOW).rows}
    assert (after[PARA].on_order, after[PARA].packs) == (300, 0)
    again, _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    assert again == []  # what is on order is not ordered twice


def test_the_order_file_has_one_row_per_line(ctl: Controller) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    rows = list(csv.DictReader(io.StringIO(order_csv(po, "Test pharmacy")), delimiter=";"))
    assert [(r["order"], r["supplier"], r["line"], r["gtin"], r["units"]) for r in rows] == [
        (po.number, "WHOLE", "1", FURO, "100"),
        (po.number, "WHOLE", "2", METO, "200"),
        (po.number, "WHOLE", "3", PARA, "300"),
    ]
    assert rows[0]["delivery_date"] == (TODAY + timedelta(1)).isoformat()
    assert rows[0]["buyer"] == "Test pharmacy" and rows[0]["unit_price"] == "0.5000"


def test_partial_delivery_back_order_shortage_substitute_and_completion(
    ctl: Controller,
) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    n = po.number
    para_before, para2_before = on_hand(ctl, PARA), on_hand(ctl, PARA2)
    first = [
        row(2, n, 3, PARA, 100, batch="P-NEW", serials=("S1",)),
        row(3, n, 3, PARA2, 100, batch="Q-1", back_order=100),  # a substitute
        row(4, n, 2, METO, 100),  # the rest of line 2 will not come
    ]
    r1 = store(ctl).receive(n, "DN-1", first, actor=ACTOR, now=NOW, location="CENTRAL/A01")
    assert r1.booked and r1.order_status == "partial" and r1.units == 300
    got = {o.line_no: o for o in r1.lines}
    assert (got[3].delivered_now, got[3].substituted_now, got[3].back_order) == (200, 100, 100)
    assert (got[3].status, got[2].status, got[2].short_now) == ("back_order", "short", 100)
    assert got[2].substitutes == ()  # metoprolol has no substitution group
    assert [p.serial for p in r1.packs] == ["S1"]
    assert on_hand(ctl, PARA) == para_before + 100
    assert on_hand(ctl, PARA2) == para2_before + 100
    lines = {ln.line_no: ln for ln in store(ctl).order(n).lines}
    assert (lines[1].status, lines[2].status, lines[3].status) == ("open", "short", "back_order")
    # on order now: FURO 100 and the PARA back order 100
    proposal = {r.gtin: r for r in order_proposal(ctl.ledger, now=NOW).rows}
    assert (proposal[FURO].on_order, proposal[PARA].on_order, proposal[METO].on_order) == (
        100,
        100,
        0,
    )

    # The same delivery note again books nothing.
    counts = receipts_count(ctl)
    again = store(ctl).receive(n, "DN-1", first, actor=ACTOR, now=NOW, location="CENTRAL/A01")
    assert not again.booked and receipts_count(ctl) == counts
    assert on_hand(ctl, PARA) == para_before + 100

    # The second delivery completes FURO and says the PARA back order will not come.
    second = [row(2, n, 1, FURO, 100), row(3, n, 3, PARA, 0)]
    r2 = store(ctl).receive(n, "DN-2", second, actor=ACTOR, now=NOW, location="CENTRAL/A02")
    assert r2.order_status == "complete"
    para = {o.line_no: o for o in r2.lines}[3]
    assert (para.status, para.short_now, para.received_total) == ("short", 100, 200)
    # the other product of the substitution group is suggested, with its supplier and
    # its usable stock (the 100 just received)
    assert [(s.gtin, s.supplier, s.usable_units) for s in para.substitutes] == [
        (PARA2, "ALT", para2_before + 100)
    ]
    with pytest.raises(PurchasingError, match=r"row 2: line: 1 is delivered already"):
        store(ctl).receive(n, "DN-3", [row(2, n, 1, FURO, 100)], actor=ACTOR, now=NOW,
                           location="CENTRAL/A01")  # fmt: skip


def test_a_finished_line_refuses_more(ctl: Controller) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    n = po.number
    store(ctl).receive(n, "DN-1", [row(2, n, 1, FURO, 100)], actor=ACTOR, now=NOW,
                       location="CENTRAL/A01")  # fmt: skip
    with pytest.raises(PurchasingError, match=r"row 2: line: 1 is delivered already"):
        store(ctl).receive(n, "DN-2", [row(2, n, 1, FURO, 100)], actor=ACTOR, now=NOW,
                           location="CENTRAL/A01")  # fmt: skip


def test_a_bad_delivery_names_every_row_and_books_nothing(ctl: Controller) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    n = po.number
    counts, para = receipts_count(ctl), on_hand(ctl, PARA)
    bad = [
        row(2, "PO-OTHER", 1, FURO, 100),
        row(3, n, 9, FURO, 100),
        row(4, n, 2, OXY, 100),  # not metoprolol, no group
        row(5, n, 3, PARA, 150),  # not whole packs
        row(6, n, 3, PARA, 100, expiry=TODAY - timedelta(1)),
        row(7, n, 3, PARA, 200, serials=("A",)),
        row(8, n, 1, FURO, 200),  # 100 ordered
        row(9, n, 3, PARA, 100, batch="OK-1"),
    ]
    with pytest.raises(PurchasingError) as caught:
        store(ctl).receive(n, "DN-X", bad, actor=ACTOR, now=NOW, location="CENTRAL/A01")
    problems = caught.value.problems
    assert problems == [
        f"row 2: order: 'PO-OTHER' is not this delivery's order {n}",
        f"row 3: line: 9 is not a line of {n} (1-3)",
        f"row 4: gtin: '{OXY}' is neither {METO} ordered on line 2 nor a product of its "
        "substitution group (none)",
        "row 5: quantity: 150 is not a whole number of packs of 100",
        f"row 6: expiry: {TODAY - timedelta(1)} has passed: the lot cannot be received",
        "row 7: serials: 1 serial numbers for 2 packs",
        "line 1: 200 units delivered but only 100 open (ordered 100, received 0 before)",
    ]
    assert receipts_count(ctl) == counts and on_hand(ctl, PARA) == para
    with pytest.raises(PurchasingError, match=r"row 2: location: 'CAB9' is not a store location"):
        store(ctl).receive(n, "DN-Y", [row(2, n, 1, FURO, 100, location="CAB9")], actor=ACTOR,
                           now=NOW, location="CENTRAL/A01")  # fmt: skip
    with pytest.raises(PurchasingError, match=r"order: 'PO-NONE' is not on file"):
        store(ctl).receive("PO-NONE", "DN-Z", [], actor=ACTOR, now=NOW, location="CENTRAL/A01")


def test_a_failure_inside_the_booking_leaves_no_movement(ctl: Controller) -> None:
    counts = receipts_count(ctl)

    def broken(_conn: Any, lot_ids: list[int]) -> dict[str, Any]:
        assert len(lot_ids) == 1
        raise PurchasingError(["line 1: changed by another delivery meanwhile; try again"])

    line = DeliveryLine(PARA, "ATOM-1", LATER, 100, "CENTRAL/A01")
    with pytest.raises(PurchasingError):
        ctl.ledger.receive_many("atom", [line], actor=ACTOR, within=broken)
    assert receipts_count(ctl) == counts
    assert not ctl.ledger.command_done("atom")


def test_closing_cancels_what_is_still_open(ctl: Controller) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    n = po.number
    store(ctl).receive(n, "DN-1", [row(2, n, 1, FURO, 100)], actor=ACTOR, now=NOW,
                       location="CENTRAL/A01")  # fmt: skip
    with pytest.raises(PurchasingError, match=r"note: a reason"):
        store(ctl).close(n, actor=ACTOR, note=" ", now=NOW)
    closed = store(ctl).close(n, actor=ACTOR, note="ordered elsewhere", now=NOW)
    assert closed.status == "complete"
    assert [ln.status for ln in closed.lines] == ["delivered", "cancelled", "cancelled"]
    assert {r.gtin: r.on_order for r in order_proposal(ctl.ledger, now=NOW).rows}[PARA] == 0
    with pytest.raises(PurchasingError, match=r"is complete already"):
        store(ctl).close(n, actor=ACTOR, note="again", now=NOW)
    assert store(ctl).orders() == []
    assert [o.number for o in store(ctl).orders(status=None)] == [n]


def test_supplier_reliability(ctl: Controller) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    n = po.number
    s = store(ctl)
    # FURO on time and in full; METO short; PARA delivered in full but two days late
    s.receive(n, "DN-1", [row(2, n, 1, FURO, 100), row(3, n, 2, METO, 100)], actor=ACTOR,
              now=NOW, location="CENTRAL/A01")  # fmt: skip
    s.receive(n, "DN-2", [row(2, n, 3, PARA, 300)], actor=ACTOR, now=NOW + timedelta(days=3),
              location="CENTRAL/A01")  # fmt: skip
    (alt, whole) = s.reliability(today=TODAY + timedelta(days=3))
    assert (alt.supplier, alt.lines_due, alt.otif, alt.fill_rate) == ("ALT", 0, None, None)
    assert (whole.orders, whole.lines_due, whole.lines_in_full) == (1, 3, 2)
    assert (whole.lines_on_time_in_full, whole.otif) == (1, pytest.approx(1 / 3, abs=1e-4))
    assert (whole.units_ordered, whole.units_received) == (600, 500)
    assert whole.fill_rate == pytest.approx(500 / 600, abs=1e-4)
    assert whole.mean_lead_days == 1.5


def test_two_buyers_at_once_order_the_gap_once(ctl: Controller) -> None:
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def buy(name: str) -> None:
        barrier.wait()
        results.append(store(ctl).create_orders(now=NOW, actor=name)[0])

    threads = [threading.Thread(target=buy, args=(f"buyer:{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [po for orders in results for po in orders]
    assert len(made) == 1
    assert sum(ln.units for ln in made[0].lines if ln.gtin == PARA) == 300


def test_delivery_file_parses_and_reports_each_bad_field() -> None:
    good = [
        DeliveryRow(2, "PO-1", 1, PARA, 200, "B-1", date(2028, 1, 31), serials=("A", "B")),
        DeliveryRow(3, "PO-1", 2, METO, 0, back_order=100),
    ]
    assert parse_delivery_csv(delivery_csv(good)) == good
    text = (
        "order;line;gtin;quantity;batch;expiry;back_order;unit_price;serials\n"
        f"PO-1;x;{PARA};-3;;2028-13-01;;abc;A A\n"
        f"PO-1;1;07359990000012;100;B;2028-01-01;;;\n"
    )
    with pytest.raises(PurchasingError) as caught:
        parse_delivery_csv(text)
    assert caught.value.problems == [
        "row 2: line: 'x' is not a whole number",
        "row 2: quantity: '-3' is negative",
        "row 2: expiry: '2028-13-01' is not a date (YYYY-MM-DD)",
        "row 2: unit_price: 'abc' is not a number",
        "row 2: serials: a serial number repeats",
        "row 3: gtin: GTIN '07359990000012' has check digit 2, expected 3",
    ]
    with pytest.raises(PurchasingError, match=r"header: missing column\(s\) quantity"):
        parse_delivery_csv("order;line;gtin\nPO-1;1;" + PARA + "\n")


def test_suppliers_are_validated_by_field_and_value(ledger_url: str) -> None:
    raw = purchasing_site(ledger_url=ledger_url)
    raw["catalogue"][0]["supplier"] = "NOPE"
    with pytest.raises((ConfigError, ValueError), match=r"supplier: 'NOPE' is not a listed"):
        parse_site(raw)
    raw = purchasing_site(ledger_url=ledger_url)
    raw["suppliers"].append({"code": "WHOLE", "name": "twice"})
    with pytest.raises((ConfigError, ValueError), match=r"suppliers\[2\].code: 'WHOLE'"):
        parse_site(raw)


def test_supplier_gauges_follow_the_orders(ctl: Controller) -> None:
    from controller.metrics import Metrics
    from controller.stock_metrics import StockMetrics, collect

    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR)
    n = po.number
    store(ctl).receive(n, "DN-1", [row(2, n, 1, FURO, 100), row(3, n, 3, PARA, 100,
                       back_order=200)], actor=ACTOR, now=NOW, location="CENTRAL/A01")  # fmt: skip
    metrics = Metrics()
    snap = collect(ctl.ledger, now=NOW + timedelta(hours=1))
    StockMetrics(metrics, ctl.aledger).publish(snap)

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    # due: FURO (delivered on time); METO and PARA are neither settled nor late yet
    assert value("doseline_supplier_on_time_in_full_ratio", supplier="WHOLE") == 1.0
    assert value("doseline_supplier_fill_ratio", supplier="WHOLE") == 1.0
    assert value("doseline_purchase_order_lines", supplier="WHOLE", status="open") == 1
    assert value("doseline_purchase_order_lines", supplier="WHOLE", status="back_order") == 1
    assert value("doseline_purchase_order_lines", supplier="ALT", status="open") == 0


def test_cli_orders_receives_and_reports(
    ctl: Controller, ledger_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import yaml

    from controller.cli import main

    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(purchasing_site(ledger_url=ledger_url)), encoding="utf-8")
    common = ["--site", str(site_file), "--db", ledger_url]
    out_dir = tmp_path / "orders"
    assert main(["purchasing", "create", *common, "--actor", ACTOR, "--out", str(out_dir)]) == 0
    created = capsys.readouterr()
    number = f"PO-{datetime.now(UTC):%Y%m%d}-WHOLE-01"
    assert number in created.out and f"{OXY} is needed but has no supplier" in created.err
    order_file = out_dir / f"{number}.csv"
    assert order_file.read_text(encoding="utf-8").count("\n") == 4  # header + 3 lines

    delivery = tmp_path / "dn.csv"
    delivery.write_text(
        delivery_csv([row(2, number, 3, PARA, 100, back_order=200), row(3, number, 2, METO, 0)]),
        encoding="utf-8",
    )
    args = ["--file", str(delivery), "--note", "DN-7", "--actor", ACTOR]
    assert main(["purchasing", "receive", number, *common, *args]) == 0
    receipt = capsys.readouterr().out
    assert f"delivery DN-7 for {number}: 100 units booked, order partial" in receipt
    assert "200 back-ordered" in receipt and "200 SHORT" in receipt
    assert main(["purchasing", "receive", number, *common, *args]) == 0
    assert "was booked before (100 units); nothing changed" in capsys.readouterr().out

    delivery.write_text(delivery_csv([row(2, number, 7, PARA, 100)]), encoding="utf-8")
    bad = ["--file", str(delivery), "--note", "DN-8", "--actor", ACTOR]
    assert main(["purchasing", "receive", number, *common, *bad]) == 2
    assert f"row 2: line: 7 is not a line of {number} (1-3)" in capsys.readouterr().err

    assert main(["purchasing", "reliability", *common, "--json"]) == 0
    figures = {r["supplier"]: r for r in json.loads(capsys.readouterr().out)}
    assert (figures["WHOLE"]["lines_due"], figures["WHOLE"]["units_received"]) == (1, 0)
    assert main(["purchasing", "list", *common, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["number"], listed["status"]) == (number, "partial")


def test_the_same_delivery_note_at_once_is_booked_by_one_caller(ctl: Controller) -> None:
    (po,), _ = store(ctl).create_orders(now=NOW, actor=ACTOR, note="daily run")
    n = po.number
    before = on_hand(ctl, FURO)
    barrier = threading.Barrier(3)
    receipts: list[Any] = []

    def receive() -> None:
        barrier.wait()
        rows = [row(2, n, 1, FURO, 100)]
        receipt = store(ctl).receive(n, "DN-1", rows, actor=ACTOR, now=NOW, location="CENTRAL/A01")
        receipts.append(receipt)

    threads = [threading.Thread(target=receive) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.booked for r in receipts) == [False, False, True]
    assert on_hand(ctl, FURO) == before + 100
    closed = store(ctl).close(n, actor=ACTOR, note="rest ordered elsewhere", now=NOW)
    assert closed.note == "daily run; closed: rest ordered elsewhere"
