"""The packing store: dose orders, their review, the jobs planned from them and canister
fills, each change one audited transaction; on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from controller.app import Controller
from controller.config import parse_site
from controller.ledger import LedgerError, verify_ledger
from controller.ledger.schema import (
    audit_log,
    dose_orders,
    packing_jobs,
    planned_doses,
    products,
)
from controller.packing.orders import DoseOrder
from controller.packing.planner import (
    PlannedJob,
    PlannedPouch,
    capabilities,
    fit_to_machines,
    substitution_groups,
)
from controller.packing.store import (
    REVIEW_NOT_REQUIRED,
    CanisterFill,
    OrderReviewError,
    PackingStore,
    content_key,
)
from tests.sites import FURO, METO, OXY, PARA, PARA2, make_site, purchasing_site

DAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
UNKNOWN_GTIN = "07359990000099"


@pytest.fixture
def controller(ledger_url: str) -> Iterator[Controller]:
    ctl = Controller(make_site(), ledger_url=ledger_url)
    ctl.prepare_ledger()
    ctl.ledger.clock = lambda: NOW  # fixed, so timestamps can be compared exactly
    try:
        yield ctl
    finally:
        ctl.close()


@pytest.fixture
def store(controller: Controller) -> PackingStore:
    return controller.store


def order(
    patient: str = "PT-000000000A",
    *,
    ward: str = "W1",
    gtin: str = PARA,
    units: int = 1,
    times: tuple[time, ...] = (time(8, 0),),
    start: date = DAY,
    end: date = DAY + timedelta(days=2),
) -> DoseOrder:
    return DoseOrder(patient, ward, gtin, units, times, start, end)


def audit_rows(controller: Controller, entity: str, key: str) -> list[Any]:
    with controller.ledger.engine.connect() as conn:
        return list(
            conn.execute(
                select(audit_log)
                .where(audit_log.c.entity == entity, audit_log.c.entity_key == key)
                .order_by(audit_log.c.seq)
            )
        )


def audit_count(controller: Controller) -> int:
    with controller.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def count(controller: Controller, table: Any) -> int:
    with controller.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def planned_rows(controller: Controller) -> set[tuple[int, date, str, str]]:
    with controller.ledger.engine.connect() as conn:
        return {(r.order_id, r.day, r.slot, r.job_id) for r in conn.execute(select(planned_doses))}


def hand_job(job_id: str = "W9-20261122-0800", ward: str = "W9") -> PlannedJob:
    return PlannedJob(
        job_id,
        ward,
        DAY,
        time(8, 0),
        (PlannedPouch(1, "PT-000000000A", ((PARA, 2),)),),
        packers=("PK1",),
    )


# ---------------------------------------------------------------- content key


def test_content_key_is_stable_and_covers_every_field() -> None:
    base = order()
    assert content_key(base) == content_key(order())
    assert len(content_key(base)) == 64
    variants = [
        order("PT-000000000B"),
        order(ward="W2"),
        order(gtin=METO),
        order(units=2),
        order(times=(time(8, 0), time(20, 0))),
        order(start=DAY - timedelta(days=1)),
        order(end=DAY + timedelta(days=3)),
    ]
    keys = {content_key(v) for v in variants}
    assert len(keys) == len(variants)
    assert content_key(base) not in keys


# ---------------------------------------------------------------- submit


def test_submit_with_review_files_pending_orders(
    controller: Controller, store: PackingStore
) -> None:
    first = order("PT-000000000A", times=(time(8, 0), time(20, 0)))
    second = order("PT-000000000B", ward="W2", gtin=METO, units=2, end=DAY)
    result = store.submit([first, second], source="hl7", actor="intake", review_required=True)

    assert result.status == "pending"
    assert len(result.added) == 2 and result.duplicates == ()
    pending = store.orders(status="pending")
    assert [r.id for r in pending] == list(result.added)
    assert [r.order for r in pending] == [first, second]
    for rec in pending:
        assert rec.status == "pending"
        assert rec.source == "hl7"
        assert rec.received_by == "intake"
        assert rec.received_at == NOW
        assert rec.reviewed_by is None and rec.reviewed_at is None and rec.review_note is None
    assert pending[0].order.times == (time(8, 0), time(20, 0))
    assert (pending[1].order.start, pending[1].order.end) == (DAY, DAY)
    assert store.orders(status="approved") == []
    # `day` filters on the order's period
    assert [r.id for r in store.orders(day=DAY + timedelta(days=1))] == [result.added[0]]

    rows = audit_rows(controller, "dose_order", str(result.added[1]))
    assert len(rows) == 1
    assert (rows[0].actor, rows[0].action, rows[0].old_value) == ("intake", "order", None)
    new = json.loads(rows[0].new_value)
    assert new["status"] == "pending" and new["gtin"] == METO and new["units"] == "2"


def test_submit_without_orders_is_refused(store: PackingStore) -> None:
    with pytest.raises(LedgerError, match="'hl7': no orders"):
        store.submit([], source="hl7", actor="intake", review_required=True)


def test_overlong_source_or_actor_is_refused_by_name_and_files_nothing(
    store: PackingStore,
) -> None:
    """On PostgreSQL these would otherwise fail deep in the database; on SQLite they
    would be stored whole. Both are refused up front, naming the field."""
    with pytest.raises(LedgerError, match=r"source: 'x{20}.*1 to 20 characters"):
        store.submit([order()], source="x" * 21, actor="intake", review_required=True)
    with pytest.raises(LedgerError, match=r"actor: .* longer than 100 characters"):
        store.submit([order()], source="hl7", actor="a" * 101, review_required=True)
    with pytest.raises(LedgerError, match=r"actor: .* longer than 100 characters"):
        store.review([1], approve=True, actor="pharmacist:" + "b" * 95, note="")
    assert store.orders() == []


def test_resubmitted_orders_are_duplicates(controller: Controller, store: PackingStore) -> None:
    orders = [order("PT-000000000A"), order("PT-000000000B", gtin=FURO)]
    first = store.submit(orders, source="hl7", actor="intake", review_required=True)
    audited = audit_count(controller)

    again = store.submit(orders, source="hl7", actor="intake", review_required=True)
    assert again.added == ()
    assert again.duplicates == first.added
    assert len(store.orders()) == 2
    assert audit_count(controller) == audited  # nothing changed, nothing audited

    # one new order among known ones: only it is added
    mixed = store.submit(
        [orders[0], order("PT-000000000C")], source="hl7", actor="intake", review_required=True
    )
    assert mixed.duplicates == (first.added[0],)
    assert len(mixed.added) == 1 and mixed.added[0] not in first.added
    assert len(store.orders()) == 3


def test_identical_orders_in_one_message_are_added_once(store: PackingStore) -> None:
    twice = order("PT-000000000D", gtin=METO)
    result = store.submit([twice, twice], source="hl7", actor="intake", review_required=True)
    assert len(result.added) == 1
    assert [r.order for r in store.orders()] == [twice]
    assert [r.id for r in store.orders()] == list(result.added)


def test_unknown_gtin_refuses_the_whole_message(
    controller: Controller, store: PackingStore
) -> None:
    audited = audit_count(controller)
    message = [order("PT-000000000A"), order("PT-000000000B", gtin=UNKNOWN_GTIN), order()]
    with pytest.raises(LedgerError, match=rf"orders\[1\]\.gtin: '{UNKNOWN_GTIN}'"):
        store.submit(message, source="hl7", actor="intake", review_required=True)
    assert store.orders() == []
    assert count(controller, dose_orders) == 0
    assert audit_count(controller) == audited
    # the valid orders can be filed afterwards: the refused message left no trace
    result = store.submit(message[:1], source="hl7", actor="intake", review_required=True)
    assert len(result.added) == 1 and result.duplicates == ()


def test_submit_without_review_files_approved_orders(store: PackingStore) -> None:
    result = store.submit([order()], source="hl7", actor="intake", review_required=False)
    assert result.status == "approved"
    [rec] = store.orders()
    assert rec.id == result.added[0]
    assert rec.status == "approved"
    assert rec.reviewed_by == REVIEW_NOT_REQUIRED == "site: review not required"
    assert rec.reviewed_at == NOW
    assert rec.review_note is None
    assert store.orders(status="pending") == []


# ---------------------------------------------------------------- review


def submit_pending(store: PackingStore, *orders: DoseOrder) -> tuple[int, ...]:
    return store.submit(list(orders), source="hl7", actor="intake", review_required=True).added


def test_approve_and_reject(controller: Controller, store: PackingStore) -> None:
    a, b, c = submit_pending(
        store, order("PT-000000000A"), order("PT-000000000B"), order("PT-000000000C")
    )
    assert store.review([a, b], approve=True, actor="Dr Lind", note="checked") == 2
    assert store.review([c], approve=False, actor="Dr Berg", note="dose too high") == 1

    by_id = {r.id: r for r in store.orders()}
    for approved in (a, b):
        rec = by_id[approved]
        assert (rec.status, rec.reviewed_by, rec.reviewed_at, rec.review_note) == (
            "approved",
            "Dr Lind",
            NOW,
            "checked",
        )
    rec = by_id[c]
    assert (rec.status, rec.reviewed_by, rec.reviewed_at, rec.review_note) == (
        "rejected",
        "Dr Berg",
        NOW,
        "dose too high",
    )
    assert [r.id for r in store.orders(status="approved")] == [a, b]
    assert [r.id for r in store.orders(status="rejected")] == [c]


def test_review_writes_the_audit_trail(controller: Controller, store: PackingStore) -> None:
    a, b = submit_pending(store, order("PT-000000000A"), order("PT-000000000B"))
    store.review([a], approve=True, actor="Dr Lind", note="checked")
    store.review([b], approve=False, actor="Dr Berg", note="duplicate therapy")

    received, approved = audit_rows(controller, "dose_order", str(a))
    assert json.loads(received.new_value)["status"] == "pending"
    assert approved.entity == "dose_order" and approved.entity_key == str(a)
    assert (approved.actor, approved.action, approved.reason) == ("Dr Lind", "review", "checked")
    assert json.loads(approved.old_value) == {"status": "pending"}
    assert json.loads(approved.new_value) == {
        "status": "approved",
        "reviewed_by": "Dr Lind",
        "note": "checked",
    }
    rejected = audit_rows(controller, "dose_order", str(b))[-1]
    assert (rejected.actor, rejected.reason) == ("Dr Berg", "duplicate therapy")
    assert json.loads(rejected.new_value)["status"] == "rejected"
    assert approved.seq < rejected.seq
    assert verify_ledger(controller.ledger.engine) == []


def test_rejection_needs_a_reason(store: PackingStore) -> None:
    (a,) = submit_pending(store, order())
    for note in ("", "   "):
        with pytest.raises(OrderReviewError, match="a rejection needs a reason"):
            store.review([a], approve=False, actor="Dr Berg", note=note)
    assert store.orders()[0].status == "pending"
    # an approval needs none
    assert store.review([a], approve=True, actor="Dr Lind", note="") == 1
    assert store.orders()[0].status == "approved"


@pytest.mark.parametrize("reviewer", ["controller", "system", ""])
def test_reviewer_must_be_a_person(store: PackingStore, reviewer: str) -> None:
    (a,) = submit_pending(store, order())
    with pytest.raises(OrderReviewError, match=rf"reviewer: '{reviewer}' is not a person"):
        store.review([a], approve=True, actor=reviewer, note="ok")
    [rec] = store.orders()
    assert rec.status == "pending" and rec.reviewed_by is None


def test_whitespace_reviewer_is_not_a_person(store: PackingStore) -> None:
    (a,) = submit_pending(store, order())
    with pytest.raises(OrderReviewError, match="is not a person"):
        store.review([a], approve=True, actor="   ", note="ok")


def test_reviewed_orders_cannot_be_reviewed_again(store: PackingStore) -> None:
    a, b = submit_pending(store, order("PT-000000000A"), order("PT-000000000B"))
    store.review([a], approve=True, actor="Dr Lind", note="ok")
    store.review([b], approve=False, actor="Dr Lind", note="wrong ward")
    with pytest.raises(OrderReviewError, match=rf"order {a}: status is 'approved'"):
        store.review([a], approve=False, actor="Dr Berg", note="changed my mind")
    with pytest.raises(OrderReviewError, match=rf"order {b}: status is 'rejected'"):
        store.review([b], approve=True, actor="Dr Berg", note="after all")
    by_id = {r.id: r for r in store.orders()}
    assert (by_id[a].status, by_id[a].reviewed_by) == ("approved", "Dr Lind")
    assert (by_id[b].status, by_id[b].review_note) == ("rejected", "wrong ward")


def test_review_of_unknown_or_no_orders(store: PackingStore) -> None:
    (a,) = submit_pending(store, order())
    missing = a + 1000
    with pytest.raises(OrderReviewError, match=rf"order {missing}: no such order"):
        store.review([missing], approve=True, actor="Dr Lind", note="ok")
    with pytest.raises(OrderReviewError, match="no order ids"):
        store.review([], approve=True, actor="Dr Lind", note="ok")


def test_review_batch_is_all_or_nothing(controller: Controller, store: PackingStore) -> None:
    a, b, c = submit_pending(
        store, order("PT-000000000A"), order("PT-000000000B"), order("PT-000000000C")
    )
    store.review([c], approve=True, actor="Dr Lind", note="ok")
    audited = audit_count(controller)

    with pytest.raises(OrderReviewError, match=rf"order {a + 1000}: no such order"):
        store.review([a, b, a + 1000], approve=True, actor="Dr Berg", note="batch")
    with pytest.raises(OrderReviewError, match=rf"order {c}: status is 'approved'"):
        store.review([a, b, c], approve=False, actor="Dr Berg", note="batch")

    by_id = {r.id: r for r in store.orders()}
    assert [by_id[i].status for i in (a, b, c)] == ["pending", "pending", "approved"]
    assert by_id[a].reviewed_by is None and by_id[b].reviewed_by is None
    assert audit_count(controller) == audited
    assert verify_ledger(controller.ledger.engine) == []


# ---------------------------------------------------------------- amend (reduce, substitute)


@pytest.fixture
def grouped(ledger_url: str) -> Iterator[Controller]:
    """The test site with PARA and PARA2 in one substitution group."""
    ctl = Controller(parse_site(purchasing_site()), ledger_url=ledger_url)
    ctl.prepare_ledger()
    ctl.ledger.clock = lambda: NOW
    try:
        yield ctl
    finally:
        ctl.close()


def test_amend_reduces_and_substitutes_and_planning_packs_the_amended_order(
    grouped: Controller,
) -> None:
    store = grouped.store
    a, b, c = submit_pending(
        store,
        order(PT_A, gtin=PARA, units=3),
        order(PT_B, gtin=PARA, units=2),
        order(PT_C, gtin=PARA, units=2),
    )
    assert store.substitutes(PARA) == [PARA2]
    assert store.substitutes(METO) == []

    reduced = store.amend(a, units=1, actor="Dr Lind", note="renal function")
    assert (reduced.id, reduced.status, reduced.order.units, reduced.order.gtin) == (
        a,
        "approved",
        1,
        PARA,
    )
    assert (reduced.reviewed_by, reduced.reviewed_at, reduced.review_note) == (
        "Dr Lind",
        NOW,
        "renal function",
    )
    swapped = store.amend(b, gtin=PARA2, actor="Dr Berg", note="PARA out of stock")
    assert (swapped.order.gtin, swapped.order.units) == (PARA2, 2)
    both = store.amend(c, units=1, gtin=PARA2, actor="Dr Berg", note="both")
    assert (both.order.gtin, both.order.units) == (PARA2, 1)
    assert [r.id for r in store.orders(status="approved")] == [a, b, c]

    # the audit trail names the pharmacist and keeps what was ordered
    [received, amended] = audit_rows(grouped, "dose_order", str(a))
    assert json.loads(received.new_value)["units"] == "3"
    assert (amended.actor, amended.action, amended.reason) == (
        "Dr Lind",
        "review",
        "renal function",
    )
    assert json.loads(amended.old_value) == {"status": "pending", "units": 3}
    assert json.loads(amended.new_value) == {
        "status": "approved",
        "units": 1,
        "amended": "reduced",
        "reviewed_by": "Dr Lind",
        "note": "renal function",
    }
    last = audit_rows(grouped, "dose_order", str(c))[-1]
    assert json.loads(last.old_value) == {"status": "pending", "units": 2, "gtin": PARA}
    assert json.loads(last.new_value)["amended"] == "reduced+substituted"
    assert json.loads(last.new_value)["gtin"] == PARA2

    # planning reads the amended product and dose
    [job] = store.plan(DAY)
    assert job.pouches == (
        PlannedPouch(1, PT_A, ((PARA, 1),)),
        PlannedPouch(2, PT_B, ((PARA2, 2),)),
        PlannedPouch(3, PT_C, ((PARA2, 1),)),
    )
    # the prescriber's message sent again is still a duplicate of the amended orders
    again = store.submit(
        [order(PT_A, gtin=PARA, units=3)], source="hl7", actor="intake", review_required=True
    )
    assert again.added == () and again.duplicates == (a,)
    assert verify_ledger(grouped.ledger.engine) == []


def test_amend_refuses_naming_field_and_value_and_changes_nothing(grouped: Controller) -> None:
    store = grouped.store
    a, m, done = submit_pending(
        store,
        order(PT_A, gtin=PARA, units=2),
        order(PT_B, gtin=METO, units=2),
        order(PT_C, gtin=PARA, units=2),
    )
    store.review([done], approve=True, actor="Dr Lind", note="ok")
    audited = audit_count(grouped)
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"units": 2}, r"units: 2 is not fewer than the 2 per administration of order"),
        ({"units": 5}, r"units: 5 is not fewer than the 2"),
        ({"units": 0}, r"units: 0 is less than 1"),
        ({}, r"units: none given, and no gtin"),
        ({"gtin": PARA}, rf"gtin: '{PARA}' is the product order {a} names"),
        ({"gtin": FURO}, rf"gtin: '{FURO}' is not of substitution group 'N02BE01 500'"),
        ({"gtin": UNKNOWN_GTIN}, rf"gtin: '{UNKNOWN_GTIN}' is not in the ledger"),
        ({"units": 1, "gtin": FURO}, rf"gtin: '{FURO}'"),  # all or nothing: no reduction
        ({"units": 1, "note": "  "}, r"note: a reduction or substitution needs a reason"),
        ({"units": 1, "actor": "system"}, r"reviewer: 'system' is not a person"),
    ]
    for given, message in refusals:
        kwargs: dict[str, Any] = {"actor": "Dr Lind", "note": "reason"} | given
        with pytest.raises(OrderReviewError, match=message):
            store.amend(a, **kwargs)
    with pytest.raises(OrderReviewError, match=rf"gtin: '{PARA}' cannot replace {METO}: .* no "):
        store.amend(m, gtin=PARA, actor="Dr Lind", note="reason")
    with pytest.raises(OrderReviewError, match=rf"order {done}: status is 'approved'"):
        store.amend(done, units=1, actor="Dr Lind", note="reason")
    with pytest.raises(OrderReviewError, match=rf"order {a + 1000}: no such order"):
        store.amend(a + 1000, units=1, actor="Dr Lind", note="reason")

    by_id = {r.id: r for r in store.orders()}
    assert (by_id[a].status, by_id[a].order.units, by_id[a].order.gtin) == ("pending", 2, PARA)
    assert by_id[m].status == "pending" and by_id[a].reviewed_by is None
    assert audit_count(grouped) == audited
    # an amended order is reviewed: it cannot be amended or reviewed again
    store.amend(a, units=1, actor="Dr Lind", note="reason")
    with pytest.raises(OrderReviewError, match=rf"order {a}: status is 'approved'"):
        store.amend(a, gtin=PARA2, actor="Dr Berg", note="again")
    with pytest.raises(OrderReviewError, match=rf"order {a}: status is 'approved'"):
        store.review([a], approve=False, actor="Dr Berg", note="again")


def test_amend_refuses_an_inactive_substitute(grouped: Controller) -> None:
    store = grouped.store
    (a,) = submit_pending(store, order(PT_A, gtin=PARA, units=2))
    with grouped.ledger.engine.begin() as conn:
        conn.execute(update(products).where(products.c.gtin == PARA2).values(active=0))
    assert store.substitutes(PARA) == []
    with pytest.raises(OrderReviewError, match=rf"gtin: '{PARA2}' is not an active product"):
        store.amend(a, gtin=PARA2, actor="Dr Lind", note="reason")
    assert store.orders()[0].order.gtin == PARA


# ---------------------------------------------------------------- planning

PT_A, PT_B, PT_C, PT_D, PT_E = (f"PT-00000000{x}" for x in "0A 0B 0C 0D 0E".split())


def test_plan_only_approved_orders_active_on_the_day(
    controller: Controller, store: PackingStore
) -> None:
    a, b, c, d, e = submit_pending(
        store,
        order(PT_A, gtin=PARA, times=(time(8, 0), time(20, 0))),  # approved
        order(PT_B, gtin=METO),  # stays pending
        order(PT_C, gtin=FURO),  # rejected
        order(PT_D, gtin=OXY, start=DAY + timedelta(days=1)),  # approved, starts tomorrow
        order(PT_E, ward="W2", gtin=METO, units=2),  # approved, another ward
    )
    store.review([a, d, e], approve=True, actor="Dr Lind", note="ok")
    store.review([c], approve=False, actor="Dr Lind", note="interaction")
    assert [r.id for r in store.orders(status="pending")] == [b]

    jobs = store.plan(DAY)
    assert [j.job_id for j in jobs] == [
        "W1-20261122-0800",
        "W1-20261122-2000",
        "W2-20261122-0800",
    ]
    assert [j.pouches for j in jobs] == [
        (PlannedPouch(1, PT_A, ((PARA, 1),)),),
        (PlannedPouch(1, PT_A, ((PARA, 1),)),),
        (PlannedPouch(1, PT_E, ((METO, 2),)),),
    ]
    assert [(j.ward, j.day, j.time) for j in jobs] == [
        ("W1", DAY, time(8, 0)),
        ("W1", DAY, time(20, 0)),
        ("W2", DAY, time(8, 0)),
    ]
    assert planned_rows(controller) == {
        (a, DAY, "08:00", "W1-20261122-0800"),
        (a, DAY, "20:00", "W1-20261122-2000"),
        (e, DAY, "08:00", "W2-20261122-0800"),
    }
    for job in jobs:
        rec = store.job(job.job_id)
        assert rec.job == job
        assert (rec.state, rec.attempt, rec.packer) == ("planned", 0, None)
        assert (rec.good, rec.rejected, rec.baseline, rec.reason) == (0, 0, None, "")
        assert rec.updated_at == NOW
    # jobs() lists by day, then slot, then job id
    assert [r.job for r in store.jobs(day=DAY)] == [jobs[0], jobs[2], jobs[1]]
    assert store.jobs(day=DAY + timedelta(days=1)) == []
    assert verify_ledger(controller.ledger.engine) == []


def test_planning_twice_plans_nothing_twice(controller: Controller, store: PackingStore) -> None:
    a, b = submit_pending(store, order(PT_A), order(PT_B, gtin=METO))
    store.review([a], approve=True, actor="Dr Lind", note="ok")
    [first] = store.plan(DAY)
    assert first.job_id == "W1-20261122-0800"
    audited = audit_count(controller)

    assert store.plan(DAY) == []
    assert count(controller, packing_jobs) == 1
    assert count(controller, planned_doses) == 1
    assert audit_count(controller) == audited

    # approved after its slot was planned: a job of its own
    store.review([b], approve=True, actor="Dr Lind", note="late")
    [late] = store.plan(DAY)
    assert late.job_id == "W1-20261122-0800-2"
    assert late.pouches == (PlannedPouch(1, PT_B, ((METO, 1),)),)
    assert store.job(late.job_id).job == late
    assert store.job(first.job_id).job == first  # the first job is left as it was
    assert planned_rows(controller) == {
        (a, DAY, "08:00", "W1-20261122-0800"),
        (b, DAY, "08:00", "W1-20261122-0800-2"),
    }
    assert store.plan(DAY) == []

    # and a third one gets -3
    (c,) = submit_pending(store, order(PT_C, gtin=FURO))
    store.review([c], approve=True, actor="Dr Lind", note="later still")
    assert [j.job_id for j in store.plan(DAY)] == ["W1-20261122-0800-3"]

    # the next day is planned afresh, with every order still active
    next_day = store.plan(DAY + timedelta(days=1))
    assert [j.job_id for j in next_day] == ["W1-20261123-0800"]
    assert [p.patient for p in next_day[0].pouches] == [PT_A, PT_B, PT_C]
    rows = audit_rows(controller, "packing_job", "W1-20261122-0800-2")
    assert json.loads(rows[0].new_value)["state"] == "planned"
    assert verify_ledger(controller.ledger.engine) == []


def test_planning_with_fit_round_trips_manual_items(
    controller: Controller, store: PackingStore
) -> None:
    a, b = submit_pending(store, order(PT_A, gtin=PARA), order(PT_A, gtin=OXY, units=1))
    store.review([a, b], approve=True, actor="Dr Lind", note="ok")
    site = controller.site

    def fit(jobs: list[PlannedJob]) -> list[PlannedJob]:
        return fit_to_machines(jobs, capabilities(site), substitution_groups(site))

    [job] = store.plan(DAY, fit=fit)
    assert job.packers == ("PK1",)
    assert job.pouches == (PlannedPouch(1, PT_A, ((PARA, 1),), manual=((OXY, 1),)),)
    assert store.job(job.job_id).job == job
    # both orders' doses are tied to the job, the manual one too
    assert planned_rows(controller) == {
        (a, DAY, "08:00", job.job_id),
        (b, DAY, "08:00", job.job_id),
    }
    new = json.loads(audit_rows(controller, "packing_job", job.job_id)[0].new_value)
    assert new == {
        "state": "planned",
        "pouches": 1,
        "packers": ["PK1"],
        "substitutions": 0,
        "manual_units": 1,
    }


# ---------------------------------------------------------------- jobs


def test_add_job_files_once(store: PackingStore) -> None:
    job = hand_job()
    rec = store.add_job(job)
    assert rec.job == job and rec.state == "planned" and rec.attempt == 0
    store.claim(job.job_id, "PK1")
    # filing it again leaves the job as it is
    again = store.add_job(job)
    assert again.packer == "PK1"
    assert len(store.jobs()) == 1
    with pytest.raises(LedgerError, match="'nope': no such job"):
        store.job("nope")


def test_claim_once_and_unclaim(controller: Controller, store: PackingStore) -> None:
    job_id = store.add_job(hand_job()).job_id
    assert store.job(job_id).reservation == f"job:{job_id}:0"

    assert store.claim(job_id, "PK1") is True
    assert store.claim(job_id, "PK2") is False
    assert store.claim(job_id, "PK1") is False
    rec = store.job(job_id)
    assert (rec.packer, rec.attempt, rec.state) == ("PK1", 0, "planned")

    # only the packer holding it can hand it back
    store.unclaim(job_id, "PK2", actor="controller", reason="not mine")
    assert (store.job(job_id).packer, store.job(job_id).attempt) == ("PK1", 0)

    store.unclaim(job_id, "PK1", actor="controller", reason="packer offline")
    rec = store.job(job_id)
    assert (rec.packer, rec.attempt, rec.state) == (None, 1, "planned")
    assert rec.reservation == f"job:{job_id}:1"

    assert store.claim(job_id, "PK2") is True
    assert store.job(job_id).packer == "PK2"
    assert store.job(job_id).reservation == f"job:{job_id}:1"

    notes = [
        (r.reason, json.loads(r.old_value), json.loads(r.new_value))
        for r in audit_rows(controller, "packing_job", job_id)[1:]
    ]
    assert notes == [
        ("assigned to PK1", {"packer": None}, {"packer": "PK1"}),
        ("packer offline", {"packer": "PK1"}, {"packer": None}),
        ("assigned to PK2", {"packer": None}, {"packer": "PK2"}),
    ]
    assert verify_ledger(controller.ledger.engine) == []


def test_move(controller: Controller, store: PackingStore) -> None:
    job_id = store.add_job(hand_job()).job_id
    store.claim(job_id, "PK1")

    with pytest.raises(LedgerError, match=rf"job {job_id}: state is 'planned', not 'reserved'"):
        store.move(job_id, old="reserved", new="loaded", actor="controller", reason="")
    assert store.job(job_id).state == "planned"

    with pytest.raises(ValueError, match=r"\['state'\] cannot be set"):
        store.move(job_id, old="planned", new="reserved", actor="c", reason="", state="x")

    store.move(
        job_id,
        old="planned",
        new="reserved",
        actor="controller",
        reason="stock reserved",
        baseline={"1": 120, "2": 40},
    )
    store.move(job_id, old="reserved", new="loaded", actor="controller", reason="")
    store.move(job_id, old="loaded", new="packing", actor="controller", reason="")
    store.move(job_id, old="packing", new="completed", actor="controller", reason="done", good=1)
    rec = store.job(job_id)
    assert (rec.state, rec.packer, rec.good, rec.rejected, rec.reason) == (
        "completed",
        "PK1",
        1,
        0,
        "done",
    )
    assert rec.baseline == {"1": 120, "2": 40}

    with pytest.raises(LedgerError, match="state is 'completed', not 'packing'"):
        store.move(job_id, old="packing", new="held", actor="controller", reason="")
    with pytest.raises(LedgerError, match="job ghost: state is None"):
        store.move("ghost", old="planned", new="reserved", actor="controller", reason="")

    states = [
        (json.loads(r.old_value), json.loads(r.new_value))
        for r in audit_rows(controller, "packing_job", job_id)
        if r.old_value and "state" in json.loads(r.old_value)
    ]
    assert states == [
        ({"state": "planned"}, {"state": "reserved"}),
        ({"state": "reserved"}, {"state": "loaded"}),
        ({"state": "loaded"}, {"state": "packing"}),
        ({"state": "packing"}, {"state": "completed", "good": 1}),
    ]
    assert verify_ledger(controller.ledger.engine) == []


def test_cancel(store: PackingStore) -> None:
    claimed = store.add_job(hand_job("W9-20261122-0800")).job_id
    free = store.add_job(hand_job("W9-20261122-1200")).job_id
    store.claim(claimed, "PK1")

    with pytest.raises(LedgerError, match="a cancellation needs one"):
        store.cancel(free, actor="Dr Lind", reason="  ")
    with pytest.raises(LedgerError, match=rf"job {claimed}: state is 'planned' on PK1"):
        store.cancel(claimed, actor="Dr Lind", reason="ward closed")
    assert store.job(claimed).state == "planned"
    assert store.job(free).state == "planned"

    store.cancel(free, actor="Dr Lind", reason="ward closed")
    rec = store.job(free)
    assert (rec.state, rec.reason, rec.packer) == ("cancelled", "ward closed", None)
    with pytest.raises(LedgerError, match="state is 'cancelled'"):
        store.cancel(free, actor="Dr Lind", reason="again")


def test_cancel_does_not_cancel_a_job_claimed_meanwhile(
    controller: Controller, store: PackingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = store.add_job(hand_job()).job_id
    other = Controller(make_site(), ledger_url=str(controller.ledger.engine.url))
    try:
        read = store.job

        def read_then_claimed(job_id: str) -> Any:
            record = read(job_id)
            assert other.store.claim(job_id, "PK2")  # another controller, same database
            return record

        monkeypatch.setattr(store, "job", read_then_claimed)
        with pytest.raises(LedgerError):
            store.cancel(job_id, actor="Dr Lind", reason="ward closed")
    finally:
        monkeypatch.undo()
        other.close()
    rec = store.job(job_id)
    assert (rec.state, rec.packer) == ("planned", "PK2")


def test_unfinished_and_state_counts(store: PackingStore) -> None:
    ids = [store.add_job(hand_job(f"W9-20261122-{h:02d}00")).job_id for h in range(8, 14)]
    tomorrow = PlannedJob(
        "W9-20261123-0800", "W9", DAY + timedelta(days=1), time(8, 0), hand_job().pouches
    )
    store.add_job(tomorrow)
    walk = {
        ids[1]: ["reserved"],
        ids[2]: ["reserved", "loaded", "packing", "held"],
        ids[3]: ["reserved", "loaded", "packing", "completed"],
        ids[4]: ["failed"],
        ids[5]: ["manual"],
    }
    for job_id, states in walk.items():
        old = "planned"
        for new in states:
            store.move(job_id, old=old, new=new, actor="controller", reason="")
            old = new
    store.cancel(ids[0], actor="Dr Lind", reason="not needed")

    assert [r.job_id for r in store.unfinished()] == [ids[1], ids[2], tomorrow.job_id]
    assert {r.job_id: r.state for r in store.unfinished()} == {
        ids[1]: "reserved",
        ids[2]: "held",
        tomorrow.job_id: "planned",
    }
    assert store.state_counts() == {
        "cancelled": 1,
        "reserved": 1,
        "held": 1,
        "completed": 1,
        "failed": 1,
        "manual": 1,
        "planned": 1,
    }
    assert store.state_counts(DAY + timedelta(days=1)) == {"planned": 1}
    assert store.state_counts(DAY + timedelta(days=5)) == {}
    assert [r.job_id for r in store.jobs(states=["failed", "manual"])] == [ids[4], ids[5]]


# ---------------------------------------------------------------- canister fills


def fill(key: str, packer: str = "PK1", canister: int = 1) -> CanisterFill:
    return CanisterFill(key, packer, canister, PARA, 150, 1200, "open")


def test_canister_fills(controller: Controller, store: PackingStore) -> None:
    assert store.open_fills("PK1") == []
    store.open_fill(fill("fill:PK1:1:a"), actor="controller")
    store.open_fill(fill("fill:PK1:2:a", canister=2), actor="controller")
    store.open_fill(fill("fill:PK2:1:a", packer="PK2"), actor="controller")

    assert sorted(store.open_fills("PK1"), key=lambda f: f.key) == [
        fill("fill:PK1:1:a"),
        fill("fill:PK1:2:a", canister=2),
    ]
    assert store.open_fills("PK2") == [fill("fill:PK2:1:a", packer="PK2")]

    store.close_fill("fill:PK1:1:a", "posted", actor="controller", reason="counter moved")
    store.close_fill("fill:PK1:2:a", "voided", actor="controller", reason="never happened")
    assert store.open_fills("PK1") == []
    assert store.open_fills("PK2") == [fill("fill:PK2:1:a", packer="PK2")]

    with pytest.raises(ValueError, match="fill status 'done'"):
        store.close_fill("fill:PK2:1:a", "done", actor="controller", reason="")
    assert len(store.open_fills("PK2")) == 1

    rows = audit_rows(controller, "canister_fill", "fill:PK1:1:a")
    assert [(json.loads(r.new_value) or {}).get("status") for r in rows] == ["open", "posted"]
    assert rows[1].reason == "counter moved"
    # closing again changes nothing and audits nothing
    audited = audit_count(controller)
    store.close_fill("fill:PK1:1:a", "voided", actor="controller", reason="again")
    assert audit_count(controller) == audited
    assert verify_ledger(controller.ledger.engine) == []
