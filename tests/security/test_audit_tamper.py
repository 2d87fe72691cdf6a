"""The tamper-evident audit trail, attacked the way someone with write access to the
database would: on SQLite and PostgreSQL, after real ledger operations (receive,
reserve and post as a packing job does, a cabinet withdrawal, a transfer).

tests/unit/test_ledger_operations.py already checks that verify_ledger reports the rule
of an altered audit row, a deleted one and an altered movement. These tests add what a
reviewer of a tampered ledger relies on: each violation names the row or movement, the
command line `doseline ledger verify` fails with exit code 1 and prints it, and the
quieter attacks (a row whose own hash was recomputed, the newest row removed, a forged
movement with no audit record) are caught too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Connection, delete, func, insert, select, update

from controller.cli import main
from controller.ledger import Ledger, LedgerError, verify_ledger
from controller.ledger.audit import row_hash
from controller.ledger.engine import make_engine
from controller.ledger.ledger import CONSUMED, Need, Use
from controller.ledger.schema import audit_log, movements

PARA = "07359990000013"
METO = "07359990000020"
TODAY = date(2026, 11, 22)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    engine = make_engine(ledger_url)
    led = Ledger(engine, clock=lambda: datetime(2026, 11, 22, 8, 0, tzinfo=UTC))
    led.create_schema()
    for gtin, name, atc in (
        (PARA, "Paracetamol 500 mg", "N02BE01"),
        (METO, "Metoprolol 50 mg", "C07AB02"),
    ):
        led.add_product(
            gtin=gtin,
            article=int(gtin[-4:]),
            name=name,
            substance=name.split()[0].lower(),
            atc=atc,
            strength=name.split(maxsplit=1)[1],
            form="tablet",
            unit_price="0.30",
        )
    for code, kind in (("A1", "bin"), ("P1/C01", "canister"), ("CAB/P01", "pocket")):
        led.add_location(code, kind)
    for key, gtin, batch in (("r1", PARA, "L1"), ("r2", METO, "M1")):
        led.receive(
            key,
            gtin=gtin,
            batch=batch,
            expiry=TODAY + timedelta(days=200),
            quantity=500,
            to_location="A1",
            actor="tech:eva",
        )
    # A packing job: reserve, then post what was really packed (the rest is released).
    led.reserve(
        "job-1",
        purpose="packing job J1",
        needs=[Need(PARA, 40), Need(METO, 20)],
        from_locations=["A1"],
        timeout_s=900,
        actor="controller",
    )
    led.post(
        "job-1/post",
        reservation_key="job-1",
        uses=[Use(PARA, 38, CONSUMED), Use(METO, 20, CONSUMED)],
        actor="controller",
    )
    led.transfer(
        "t1",
        gtin=PARA,
        quantity=30,
        from_location="A1",
        to_location="CAB/P01",
        actor="tech:eva",
        reason="refill",
    )
    led.consume(
        "w1", gtin=PARA, quantity=2, location="CAB/P01", actor="cabinet:CAB", reason="withdrawal"
    )
    assert verify_ledger(engine) == []
    yield led
    engine.dispose()


def cli_verify(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["ledger", "verify", "--db", url])
    return code, capsys.readouterr().out


def audit_seq(conn: Connection, action: str, entity: str, last: bool = False) -> int:
    order = audit_log.c.seq.desc() if last else audit_log.c.seq
    query = (
        select(audit_log.c.seq)
        .where(audit_log.c.action == action, audit_log.c.entity == entity)
        .order_by(order)
    )
    return int(conn.execute(query).scalars().first())


def last_seq(conn: Connection) -> int:
    return int(conn.execute(select(func.max(audit_log.c.seq))).scalar_one())


def tamper(ledger: Ledger, change: Callable[[Connection], str]) -> str:
    """Applies `change` in one transaction; returns what it says it did."""
    with ledger.engine.begin() as conn:
        return change(conn)


def test_an_untouched_ledger_verifies(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli_verify(ledger_url, capsys)
    assert code == 0, out
    assert "audit chain intact" in out


def test_an_altered_audit_row_is_named(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def blame_someone_else(conn: Connection) -> str:
        seq = audit_seq(conn, "consume", "movement", last=True)
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(actor="tech:bob"))
        return f"row {seq} "

    row = tamper(ledger, blame_someone_else)
    violations = verify_ledger(ledger.engine)
    assert [v.rule for v in violations] == ["audit-altered"]
    assert violations[0].detail.startswith(row)
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1
    assert f"VIOLATION audit-altered: {row}" in out
    assert "1 violation(s)" in out


def test_an_audit_row_with_a_recomputed_hash_breaks_the_chain_after_it(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone who knows the hash function rewrites a row and its hash: the next row
    still points at the old hash."""

    def rewrite(conn: Connection) -> str:
        seq = audit_seq(conn, "post", "movement")
        row = conn.execute(select(audit_log).where(audit_log.c.seq == seq)).one()
        forged = {
            "seq": row.seq,
            "ts": row.ts,
            "actor": row.actor,
            "action": row.action,
            "entity": row.entity,
            "entity_key": row.entity_key,
            "reason": "nothing happened",
            "old_value": row.old_value,
            "new_value": row.new_value,
            "prev_hash": row.prev_hash,
        }
        conn.execute(
            update(audit_log)
            .where(audit_log.c.seq == seq)
            .values(reason=forged["reason"], hash=row_hash(**forged))
        )
        return f"row {seq + 1}: previous hash does not match row {seq}"

    detail = tamper(ledger, rewrite)
    violations = verify_ledger(ledger.engine)
    assert [(v.rule, v.detail) for v in violations] == [("audit-chain", detail)]
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1
    assert f"VIOLATION audit-chain: {detail}" in out


def test_a_deleted_audit_row_is_named(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def remove_the_transfer(conn: Connection) -> str:
        seq = audit_seq(conn, "transfer", "movement")
        conn.execute(delete(audit_log).where(audit_log.c.seq == seq))
        return f"row {seq} is missing (next row is {seq + 1})"

    detail = tamper(ledger, remove_the_transfer)
    violations = verify_ledger(ledger.engine)
    assert ("audit-gap", detail) in [(v.rule, v.detail) for v in violations]
    assert "audit-chain" in {v.rule for v in violations}
    # The transfer's movement lost its audit record with the row.
    assert "movement-unaudited" in {v.rule for v in violations}
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1
    assert f"VIOLATION audit-gap: {detail}" in out


def test_the_newest_audit_row_deleted_is_caught_by_the_head(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def truncate(conn: Connection) -> str:
        seq = last_seq(conn)
        conn.execute(delete(audit_log).where(audit_log.c.seq == seq))
        return f"head says row {seq}, the chain ends at row {seq - 1}"

    detail = tamper(ledger, truncate)
    violations = verify_ledger(ledger.engine)
    assert ("audit-head", detail) in [(v.rule, v.detail) for v in violations]
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1
    assert f"VIOLATION audit-head: {detail}" in out


def test_an_altered_movement_quantity_is_named(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The withdrawal of two doses made into one: the audit record and the balances
    both disagree."""

    def shrink(conn: Connection) -> str:
        movement_id = conn.execute(
            select(movements.c.id).where(movements.c.idempotency_key == "w1")
        ).scalar_one()
        conn.execute(update(movements).where(movements.c.id == movement_id).values(quantity=1))
        return f"movement {movement_id}: quantity differ from the audit record"

    detail = tamper(ledger, shrink)
    violations = verify_ledger(ledger.engine)
    assert ("movement-altered", detail) in [(v.rule, v.detail) for v in violations]
    assert "balance-mismatch" in {v.rule for v in violations}
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1
    assert f"VIOLATION movement-altered: {detail}" in out


def test_a_forged_movement_without_audit_record_is_named(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A movement inserted behind the ledger's back (say, to hide a loss)."""

    def forge(conn: Connection) -> str:
        template = (
            conn.execute(select(movements).where(movements.c.idempotency_key == "w1"))
            .one()
            ._asdict()
        )
        template.pop("id")
        template["idempotency_key"] = "forged"
        movement_id = conn.execute(insert(movements).values(**template)).inserted_primary_key[0]
        return f"movement {movement_id} has no audit record"

    detail = tamper(ledger, forge)
    violations = verify_ledger(ledger.engine)
    assert ("movement-unaudited", detail) in [(v.rule, v.detail) for v in violations]
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1
    assert f"VIOLATION movement-unaudited: {detail}" in out


# ---------------------------------------------------------------------- group commit


def batch_of_withdrawals(ledger: Ledger) -> list[int]:
    """Six withdrawals (one refused) committed as one batch; the seqs of their movements."""
    with ledger.batch():
        for n in range(6):
            try:
                ledger.consume(
                    f"bw{n}",
                    gtin=PARA,
                    quantity=500 if n == 3 else 1,  # the fourth asks for more than is there
                    location="CAB/P01",
                    actor="cabinet:CAB",
                    reason="withdrawal",
                )
            except LedgerError:
                pass
    with ledger.engine.connect() as conn:
        return list(
            conn.execute(
                select(audit_log.c.seq)
                .where(audit_log.c.action == "consume", audit_log.c.entity == "movement")
                .where(audit_log.c.reason == "withdrawal")
                .order_by(audit_log.c.seq)
            ).scalars()
        )[-5:]


def test_a_batch_chains_its_commands_in_order_and_leaves_no_row_of_a_refused_one(
    ledger: Ledger,
) -> None:
    seqs = batch_of_withdrawals(ledger)
    assert verify_ledger(ledger.engine) == []
    with ledger.engine.connect() as conn:
        keys = conn.execute(
            select(audit_log.c.entity_key)
            .where(audit_log.c.entity == "command", audit_log.c.entity_key.like("bw%"))
            .order_by(audit_log.c.seq)
        ).scalars()
        assert list(keys) == ["bw0", "bw1", "bw2", "bw4", "bw5"]
    assert seqs == sorted(seqs)


def test_a_row_altered_in_the_middle_of_a_batch_is_named(
    ledger: Ledger, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seqs = batch_of_withdrawals(ledger)

    def alter(conn: Connection) -> str:
        conn.execute(update(audit_log).where(audit_log.c.seq == seqs[2]).values(actor="tech:bob"))
        return f"row {seqs[2]} "

    row = tamper(ledger, alter)
    violations = verify_ledger(ledger.engine)
    assert [v.rule for v in violations] == ["audit-altered"]
    assert violations[0].detail.startswith(row)
    code, out = cli_verify(ledger_url, capsys)
    assert code == 1 and f"VIOLATION audit-altered: {row}" in out


def test_a_whole_batch_deleted_from_the_end_is_caught_by_the_head(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        first = last_seq(conn) + 1
    batch_of_withdrawals(ledger)

    def drop_the_batch(conn: Connection) -> str:
        last = last_seq(conn)
        conn.execute(delete(audit_log).where(audit_log.c.seq >= first))
        return f"head says row {last}, the chain ends at row {first - 1}"

    detail = tamper(ledger, drop_the_batch)
    violations = [(v.rule, v.detail) for v in verify_ledger(ledger.engine)]
    assert ("audit-head", detail) in violations
    # The batch's movements lost their audit records with it.
    assert sum(1 for rule, _ in violations if rule == "movement-unaudited") == 5
