"""Pack verification against the bundled verification system, over real sockets.

The controller is built from a site file with `verification.enabled`, so the canister
desk and the pocket refills use the service through their `on_pack_used` hooks. The
ledger runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from controller.app import Controller
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.packing.canister_desk import CanisterTicket
from controller.verification import VerificationService, VerificationUnavailable
from simulators.verification_http import VerificationSimulator
from tests.sites import METO, PARA, site_dict

TODAY = datetime.now(UTC).date()
EXPIRY = TODAY + timedelta(days=200)


def meto(serial: str, *, batch: str = "M-1", expiry: date = EXPIRY) -> PackId:
    return PackId(METO, batch, expiry, serial)


@dataclass
class Rig:
    sim: VerificationSimulator
    controller: Controller

    @property
    def service(self) -> VerificationService:
        assert self.controller.verification is not None
        return self.controller.verification

    def register(self, *packs: PackId) -> None:
        for p in packs:
            assert p.serial
            self.sim.add(p.gtin, p.serial, p.batch, p.expiry)

    def lot_status(self, gtin: str, batch: str) -> str:
        return str(self.controller.ledger.lot(gtin, batch)["status"])

    def metric(self, name: str, **labels: str) -> float:
        value = self.controller.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def open_canister(self, pack: PackId, station: str = "SC1") -> tuple[bool, str]:
        """A canister ticket for METO batch M-1 into PK1 canister 2, and the scan of
        `pack` for it: (accepted, message)."""
        desk = self.controller.canister_desk
        ticket = CanisterTicket(
            f"PK1:2:{pack.serial}", "PK1", 2, METO, "M-1", EXPIRY, 40, ("CENTRAL/A01",)
        )
        waiting = asyncio.create_task(desk.wait_for_scan(ticket, 5))
        await desk.tickets.get()
        assert (await desk.on_scan(ticket.barcode, station)).accepted
        outcome = await desk.on_scan(encode_pack(pack), station)
        if outcome.accepted:
            assert await waiting == station
        else:
            desk.withdraw(ticket.ticket_id)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        return outcome.accepted, outcome.message


@pytest.fixture
async def rig(ledger_url: str) -> AsyncIterator[Rig]:
    sim = VerificationSimulator()
    port = await sim.start()
    raw = site_dict()
    raw["stock"][3]["expiry"] = EXPIRY.isoformat()  # METO M-1 with a known expiry
    del raw["stock"][3]["expires_in_days"]
    raw["verification"] = {
        "enabled": True,
        "url": f"http://127.0.0.1:{port}",
        "timeout_s": 2,
        "decommission_on": "both",
        "retry_interval_s": 0.05,
    }
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.receive_opening_stock(TODAY)
    try:
        yield Rig(sim, controller)
    finally:
        await controller.stop()
        controller.close()
        await sim.stop()


async def test_a_received_pack_is_verified(rig: Rig) -> None:
    pack = meto("SN-0001")
    rig.register(pack)
    result = await rig.service.verify_received(pack, "CENTRAL/A01")
    assert result.ok
    row = rig.service.store.pack(METO, "SN-0001")
    assert row is not None and row.status == "verified" and row.verified_at is not None
    assert rig.sim.requests["verify"] == 1
    assert rig.service.store.alerts() == []
    # A pack with the right serial but another batch is not this pack.
    wrong = meto("SN-0001", batch="M-2")
    result = await rig.service.verify_received(wrong, "CENTRAL/A01")
    assert (result.ok, result.code) == (False, "BATCH_MISMATCH")


async def test_an_unknown_serial_is_an_alert(rig: Rig) -> None:
    pack = meto("SN-NOBODY")
    result = await rig.service.verify_received(pack, "CENTRAL/A01")
    assert (result.ok, result.code) == (False, "UNKNOWN_SERIAL")
    (alert,) = rig.service.store.alerts()
    assert (alert.code, alert.serial, alert.status) == ("UNKNOWN_SERIAL", "SN-NOBODY", "open")
    row = rig.service.store.pack(METO, "SN-NOBODY")
    assert row is not None and row.status == "blocked"
    assert rig.metric("doseline_verification_alerts_total", code="UNKNOWN_SERIAL") == 1
    # The blocked pack is refused at a cabinet too.
    refusal = await rig.controller.replenishment.on_pack_used(pack, "CAB1/P02")  # type: ignore[misc]
    assert refusal is not None and not refusal.accepted
    assert "UNKNOWN_SERIAL" in refusal.message


async def test_a_recalled_pack_is_blocked_its_lot_quarantined_and_its_scan_refused(
    rig: Rig,
) -> None:
    pack, good = meto("SN-R1"), meto("SN-OK1")
    rig.register(pack, good)
    rig.sim.set_status(METO, "SN-R1", "recalled")
    accepted, message = await rig.open_canister(pack)
    assert not accepted
    assert "RECALLED" in message and "batch M-1 of" in message
    row = rig.service.store.pack(METO, "SN-R1")
    assert row is not None and (row.status, row.alert_code) == ("blocked", "RECALLED")
    (alert,) = rig.service.store.alerts()
    assert alert.code == "RECALLED"
    assert rig.lot_status(METO, "M-1") == "quarantined"
    assert rig.sim.decommissions[(METO, "SN-R1")] == 0
    # Scanned again (at the canister desk, or at a cabinet): refused locally with the
    # alert's message, without asking the system again.
    asked = sum(rig.sim.requests.values())
    accepted, again = await rig.open_canister(pack)
    assert not accepted and "RECALLED" in again
    refusal = await rig.service.on_dispatched(pack, "CAB1/P02")
    assert refusal is not None and "RECALLED" in refusal.message
    assert sum(rig.sim.requests.values()) == asked
    # A good pack is decommissioned as dispensed, once.
    accepted, _ = await rig.open_canister(good)
    assert accepted
    assert rig.sim.decommissions[(METO, "SN-OK1")] == 1
    done = rig.service.store.pack(METO, "SN-OK1")
    assert done is not None and done.status == "decommissioned"
    assert done.decommission_reason == "dispensed" and done.decommissioned_at is not None
    # The pharmacist closes the alert.
    closed = rig.service.store.close_alert(alert.id, actor="pharmacist", note="pack destroyed")
    assert closed.status == "closed" and rig.service.store.alerts() == []


async def test_an_outage_queues_decommissions_and_the_retry_sends_each_once(rig: Rig) -> None:
    packs = [meto(f"SN-Q{i}") for i in range(3)]
    rig.register(*packs)
    rig.sim.outage("503")  # until cleared
    for p in packs[:2]:
        accepted, _ = await rig.open_canister(p)
        assert accepted  # the floor keeps working
    rig.sim.outage("drop")
    refusal = await rig.service.on_dispatched(packs[2], "CAB1/P02")
    assert refusal is None
    pending = rig.service.store.queue("pending")
    assert [q.serial for q in pending] == ["SN-Q0", "SN-Q1", "SN-Q2"]
    assert [q.key for q in pending] == [f"decommission:{METO}:SN-Q{i}" for i in range(3)]
    assert all(q.attempts == 1 and q.last_error for q in pending)
    assert rig.metric("doseline_verification_queue_pending") == 3
    assert sum(rig.sim.decommissions.values()) == 0
    # Still down: the retry stops at the first failure and sends nothing more.
    assert await rig.service.retry_pending() == 0
    rig.sim.clear_outage()
    # The retry loop as the controller runs it.
    task = asyncio.create_task(rig.service.serve())
    try:
        for _ in range(100):
            if not rig.service.store.queue("pending"):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a few more rounds: nothing is sent again
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    once = {(METO, p.serial): 1 for p in packs}
    assert dict(rig.sim.decommissions) == once
    assert dict(rig.sim.decommission_requests) == once  # none sent twice
    assert rig.metric("doseline_verification_queue_pending") == 0
    assert [q.status for q in rig.service.store.queue(None)] == ["done"] * 3
    assert rig.service.store.alerts() == []
    reasons = [rig.service.store.pack(METO, f"SN-Q{i}") for i in range(3)]
    assert [r.decommission_reason for r in reasons if r] == ["dispensed", "dispensed", "supplied"]
    # The same pack scanned again later is not sent again.
    accepted, _ = await rig.open_canister(packs[0])
    assert accepted and rig.sim.decommission_requests[(METO, "SN-Q0")] == 1


async def test_a_lost_reply_retried_is_not_an_alert(rig: Rig) -> None:
    pack = meto("SN-LOST")
    rig.register(pack)
    rig.sim.outage("lose_reply", requests=1)
    result = await rig.service.decommission(pack, "supplied", "CAB1/P01")
    assert result.queued
    assert rig.sim.decommissions[(METO, "SN-LOST")] == 1  # it did arrive
    assert await rig.service.retry_pending() == 1
    assert rig.service.store.alerts() == []
    (row,) = rig.service.store.queue(None)
    assert (row.status, row.attempts) == ("done", 2)
    assert rig.sim.decommissions[(METO, "SN-LOST")] == 1
    assert rig.sim.decommission_requests[(METO, "SN-LOST")] == 2  # the retry was sent
    assert rig.lot_status(METO, "M-1") == "released"
    # Someone else's decommission of a serial, on the first attempt, is an alert.
    other = meto("SN-ELSEWHERE")
    rig.register(other)
    rig.sim.set_status(METO, "SN-ELSEWHERE", "decommissioned")
    result = await rig.service.decommission(other, "supplied", "CAB1/P01")
    assert (result.ok, result.code) == (False, "ALREADY_DECOMMISSIONED")
    assert [a.code for a in rig.service.store.alerts()] == ["ALREADY_DECOMMISSIONED"]


async def test_undo_within_the_window_and_not_after(rig: Rig) -> None:
    first, second = meto("SN-U1"), meto("SN-U2")
    rig.register(first, second)
    for p in (first, second):
        assert (await rig.service.decommission(p, "supplied", "CAB1/P01")).ok
    rig.sim.advance(timedelta(days=9).total_seconds())
    assert (await rig.service.undo(first)).ok
    row = rig.service.store.pack(METO, "SN-U1")
    assert row is not None and row.status == "verified"
    assert rig.sim.packs[(METO, "SN-U1")].status == "active"
    # Active again: it can be decommissioned anew (a new request, sent once).
    assert (await rig.service.decommission(first, "dispensed", "PK1/C02")).ok
    assert rig.sim.decommissions[(METO, "SN-U1")] == 2
    rig.sim.advance(timedelta(days=2).total_seconds())  # 11 days after the second's
    late = await rig.service.undo(second)
    assert (late.ok, late.code) == (False, "UNDO_WINDOW_CLOSED")
    row = rig.service.store.pack(METO, "SN-U2")
    assert row is not None and row.status == "decommissioned"
    assert rig.service.store.alerts() == []  # a refused undo blocks nothing
    # During an outage an undo raises: nothing is recorded.
    rig.sim.outage("503", requests=1)
    with pytest.raises(VerificationUnavailable):
        await rig.service.undo(first)


async def test_unserialised_packs_and_other_products_pass(rig: Rig) -> None:
    plain = PackId(PARA, "P-LATE", EXPIRY, None)
    assert await rig.service.on_opened(plain, "PK1/C01") is None
    assert (await rig.service.verify_received(plain)).ok
    assert sum(rig.sim.requests.values()) == 0


async def test_the_cli_lists_alerts_and_the_queue_and_undoes(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.cli import main

    bad, queued, sent = meto("SN-C1"), meto("SN-C2"), meto("SN-C3")
    rig.register(queued, sent)
    await rig.service.verify_received(bad, "CENTRAL/A01")  # unknown serial: an alert
    assert (await rig.service.decommission(sent, "supplied", "CAB1/P02")).ok
    rig.sim.outage("503", requests=1)
    assert (await rig.service.decommission(queued, "supplied", "CAB1/P02")).queued
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(json.loads(rig.controller.site.model_dump_json())))
    db = str(rig.controller.ledger.engine.url.render_as_string(hide_password=False))
    common = ["--site", str(site), "--db", db]
    capsys.readouterr()
    assert main(["verification", "alerts", *common]) == 0
    assert "UNKNOWN_SERIAL" in capsys.readouterr().out
    assert main(["verification", "queue", *common]) == 0
    out = capsys.readouterr().out
    assert "SN-C2" in out and "SN-C3" not in out
    args = ["verification", "undo", *common, "--gtin", METO, "--serial", "SN-C3"]
    args += ["--actor", "pharmacist:petra"]
    # The undo runs its own event loop, as from a shell.
    assert await asyncio.to_thread(main, args) == 0
    assert rig.sim.packs[(METO, "SN-C3")].status == "active"
    # The audit trail names who asked for the undo.
    from sqlalchemy import select

    from controller.ledger.schema import audit_log

    with rig.controller.ledger.engine.connect() as c:
        actors = (
            c.execute(select(audit_log.c.actor).where(audit_log.c.action == "decommission undone"))
            .scalars()
            .all()
        )
    assert actors == ["pharmacist:petra"]
    assert await asyncio.to_thread(main, args) == 2  # not decommissioned any more
    assert "NOT_DECOMMISSIONED" in capsys.readouterr().err
