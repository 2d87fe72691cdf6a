"""Goods-in against a purchase order with the bundled verification system over HTTP:
serialised packs verified after booking, an unregistered pack blocked (its lot
quarantined, the pack then refused at use), an outage leaving packs unverified; and
the CLI's `ledger receive --scan --verify-site` on the same system."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.app import Controller
from controller.cli import main
from controller.config import parse_site
from controller.gs1 import PackId, encode_pack
from controller.purchasing import DeliveryRow
from controller.purchasing.goods_in import receive_delivery
from simulators.verification_http import VerificationSimulator
from tests.sites import FURO, PARA, purchasing_site

NOW = datetime.now(UTC).replace(microsecond=0)
EXPIRY = NOW.date() + timedelta(days=400)
ACTOR = "goods-in:gunnar"


def with_history(controller: Controller) -> None:
    """Use in the past so the proposal orders FURO (1 pack) and PARA (3 packs)."""
    led = controller.ledger
    led.clock = lambda: NOW - timedelta(hours=1)
    controller.prepare_ledger()
    controller.receive_opening_stock(NOW.date())
    led.consume("use-para", gtin=PARA, quantity=450, location="CENTRAL/A01", actor=ACTOR,
                reason="use")  # fmt: skip
    led.consume("use-furo", gtin=FURO, quantity=10, location="CENTRAL/A01", actor=ACTOR,
                reason="use")  # fmt: skip


@pytest.fixture
async def rig(ledger_url: str) -> AsyncIterator[tuple[Controller, VerificationSimulator]]:
    sim = VerificationSimulator()
    port = await sim.start()
    raw = purchasing_site(ledger_url=ledger_url)
    raw["verification"] = {"enabled": True, "url": f"http://127.0.0.1:{port}", "timeout_s": 2}
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    with_history(controller)
    try:
        yield controller, sim
    finally:
        await controller.stop()
        controller.close()
        await sim.stop()


async def receive(controller: Controller, number: str, note: str, rows: list[DeliveryRow]) -> Any:
    return await receive_delivery(
        controller.aledger,
        controller.purchasing,
        controller.verification,
        number,
        note,
        rows,
        actor=ACTOR,
        now=NOW,
        location="CENTRAL/A02",
        min_shelf_life_days=30,
    )


async def test_delivered_packs_are_verified_and_an_unregistered_one_is_blocked(
    rig: tuple[Controller, VerificationSimulator],
) -> None:
    controller, sim = rig
    (po,), _ = controller.purchasing.create_orders(now=NOW, actor=ACTOR)
    furo = ("F-0001",)
    para = ("P-0001", "P-0002", "P-0003")
    for s in furo:
        sim.add(FURO, s, "FN-1", EXPIRY)
    for s in para[:2]:  # P-0003 was never uploaded by the manufacturer
        sim.add(PARA, s, "PN-1", EXPIRY)
    rows = [
        DeliveryRow(2, po.number, 1, FURO, 100, "FN-1", EXPIRY, serials=furo),
        DeliveryRow(3, po.number, 2, PARA, 300, "PN-1", EXPIRY, serials=para),
    ]
    receipt = await receive(controller, po.number, "DN-1", rows)
    assert receipt.booked and receipt.units == 400
    assert receipt.verification == {
        "F-0001": "verified",
        "P-0001": "verified",
        "P-0002": "verified",
        "P-0003": f"alert UNKNOWN_SERIAL: serial P-0003 of {PARA} is not in the register",
    }
    assert sim.requests["verify"] == 4
    store = controller.verification.store  # type: ignore[union-attr]
    blocked = store.pack(PARA, "P-0003")
    assert blocked is not None and (blocked.status, blocked.location) == ("blocked", "CENTRAL/A02")
    # the whole delivered lot is quarantined until a pharmacist looks
    assert controller.ledger.lot(PARA, "PN-1")["status"] == "quarantined"
    assert controller.ledger.lot(FURO, "FN-1")["status"] == "released"
    # the blocked pack is refused when someone tries to dispatch it
    hook = controller.replenishment.on_pack_used
    assert hook is not None
    refusal = await hook(PackId(PARA, "PN-1", EXPIRY, "P-0003"), "CAB1/P01")
    assert refusal is not None and not refusal.accepted and "UNKNOWN_SERIAL" in refusal.message

    # The same delivery note again: nothing booked, nothing verified again.
    again = await receive(controller, po.number, "DN-1", rows)
    assert not again.booked and sim.requests["verify"] == 4


async def test_an_outage_at_goods_in_books_the_stock_and_says_what_was_not_verified(
    rig: tuple[Controller, VerificationSimulator],
) -> None:
    controller, sim = rig
    (po,), _ = controller.purchasing.create_orders(now=NOW, actor=ACTOR)
    sim.add(FURO, "F-0001", "FN-1", EXPIRY)
    sim.outage("503")
    before = controller.ledger.on_hand("CENTRAL/A02", FURO)
    rows = [DeliveryRow(2, po.number, 1, FURO, 100, "FN-1", EXPIRY, serials=("F-0001",))]
    receipt = await receive(controller, po.number, "DN-1", rows)
    assert receipt.booked
    assert receipt.verification["F-0001"].startswith("not verified: ")
    assert controller.ledger.on_hand("CENTRAL/A02", FURO) == before + 100
    store = controller.verification.store  # type: ignore[union-attr]
    assert store.pack(FURO, "F-0001") is None  # nothing recorded as verified


@pytest.fixture
def verification_process(free_port: int) -> Iterator[str]:
    """The bundled verification system as its own process, as a site would run it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.verification_http", "--port", str(free_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{free_port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/control/counts", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_cli_receive_scan_verifies_the_pack(
    verification_process: str,
    ledger_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = purchasing_site(ledger_url=ledger_url)
    raw["verification"] = {"enabled": True, "url": verification_process, "timeout_s": 2}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    controller = Controller(parse_site(raw), ledger_url=ledger_url)
    controller.prepare_ledger()
    controller.close()
    good = PackId(FURO, "FS-1", EXPIRY, "S-GOOD")
    httpx.post(
        f"{verification_process}/control/packs",
        json={"packs": [{"gtin": FURO, "serial": "S-GOOD", "batch": "FS-1",
                         "expiry": EXPIRY.isoformat()}]},
    ).raise_for_status()  # fmt: skip
    base = ["ledger", "receive", "--db", ledger_url, "--quantity", "100", "--location",
            "CENTRAL/A01", "--actor", ACTOR, "--verify-site", str(site_file)]  # fmt: skip
    assert main([*base, "--scan", encode_pack(good)]) == 0
    assert "pack S-GOOD verified with the national system" in capsys.readouterr().out
    bad = PackId(FURO, "FS-1", EXPIRY, "S-FAKE")
    assert main([*base, "--scan", encode_pack(bad)]) == 3
    err = capsys.readouterr().err
    assert "pack S-FAKE BLOCKED by the verification system (UNKNOWN_SERIAL)" in err
