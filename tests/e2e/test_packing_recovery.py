"""Dose packing through the command line, with the controller killed mid-run.

Orders go in as a FHIR Bundle (`doseline orders submit`), a pharmacist approves them,
`doseline jobs plan` makes the jobs, and `doseline pack` runs them on both demo packers
(OPC UA and serial) in a separate plant process. A technician (a thread of this test)
confirms each canister refill by scanning its ticket and the reserved pack at the
packers' serial scanner. `pack` is killed with SIGKILL several
times at random moments and started again; at the end every job is complete, the ledger
agrees with the machines' own canister counts, and every tablet that left a canister is
booked exactly once (in a good pouch or as a reject).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from controller.config import load_site
from controller.demo.orders import demo_prescriptions
from controller.devices import packer_driver
from controller.gs1 import PackId, encode_pack
from controller.ledger import Ledger, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.schema import canister_fills, lots, products
from controller.packing.runner import canister_location
from controller.packing.store import PackingStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_plant() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    plant = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.plant",
            "--site",
            "config/demo.yaml",
            "--free-ports",
            "--day-seconds",
            "600",
            "--exit-on-stdin-close",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert plant.stdout is not None
    return plant, json.loads(plant.stdout.readline())["ready"]


async def machine_canisters(site_file: Path) -> dict[tuple[str, int], tuple[str, int, int]]:
    """(packer, canister) -> (gtin, count, dispensed total), read from the machines."""
    site = load_site(site_file)
    found = {}
    for packer in site.packers:
        driver = packer_driver(packer)
        await driver.connect()
        try:
            for can in await driver.read_canisters():
                found[(packer.name, can.number)] = (can.gtin, can.count, can.dispensed_total)
        finally:
            await driver.close()
    return found


class CanisterTechnician(threading.Thread):
    """Watches the ledger for canister refills waiting for a scan and scans the ticket
    and a pack of the reserved lot at the scanner (through its trigger socket)."""

    def __init__(self, db: str, trigger_port: int) -> None:
        super().__init__(name="canister-technician", daemon=True)
        self.db = db
        self.trigger_port = trigger_port
        self.stop = threading.Event()
        self.scanned: dict[str, float] = {}  # fill key -> when its pack was last scanned

    def run(self) -> None:
        engine = make_engine(self.db)
        try:
            with socket.create_connection(("127.0.0.1", self.trigger_port)) as sock:
                reader = sock.makefile("r")
                while not self.stop.wait(0.3):
                    with engine.connect() as conn:
                        waiting = conn.execute(
                            select(canister_fills.c.key, canister_fills.c.gtin, lots.c.batch)
                            .add_columns(lots.c.expiry)
                            .join(products, products.c.gtin == canister_fills.c.gtin)
                            .join(
                                lots,
                                (lots.c.product_id == products.c.id)
                                & (lots.c.batch == canister_fills.c.batch),
                            )
                            .where(
                                canister_fills.c.status == "open",
                                canister_fills.c.confirmed_by.is_(None),
                            )
                        ).all()
                    for key, gtin, batch, expiry in waiting:
                        if time.monotonic() - self.scanned.get(key, -10.0) < 2.0:
                            continue  # give the controller time to open the ticket
                        pack = encode_pack(PackId(gtin, batch, expiry, f"E2E{len(self.scanned)}"))
                        for data in ("CR:" + key.removeprefix("canfill:"), pack):
                            sock.sendall(json.dumps({"scan": data}).encode() + b"\n")
                            reader.readline()
                        self.scanned[key] = time.monotonic()
        finally:
            engine.dispose()


def job_states(db: str) -> dict[str, int]:
    ledger = Ledger(make_engine(db))
    try:
        return PackingStore(ledger).state_counts()
    finally:
        ledger.engine.dispose()


@pytest.mark.timeout(420)
def test_packing_survives_repeated_kills(tmp_path: Path) -> None:
    plant, ready = start_plant()
    try:
        site = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
        for machine in site["packers"]:
            machine["address"] = ready["packers"][machine["name"]]
        site["cabinets"] = []
        site["scanners"] = [
            {"name": "SCANNER-PACKING", "address": ready["scanners"]["SCANNER-PACKING"]["address"]}
        ]
        trigger_port = ready["scanners"]["SCANNER-PACKING"]["trigger_port"]
        db = f"sqlite:///{tmp_path / 'site.db'}"
        site["ledger"]["url"] = db
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site))
        common = ["--site", str(site_file)]

        init = cli("ledger", "init", *common, "--opening-stock")
        assert init.returncode == 0, init.stderr

        # Orders in: a FHIR Bundle through intake; the same message twice adds nothing.
        today = datetime.now(UTC).date()
        day = today + timedelta(days=1)
        site_model = load_site(site_file)
        assert site_model.demo is not None
        packable = [site_model.product(c.gtin) for c in site_model.packers[0].canisters[:6]]
        bundle = demo_prescriptions(site_model.demo, packable, day)
        orders_file = tmp_path / "orders.json"
        orders_file.write_text(json.dumps(bundle))
        submitted = cli(
            "orders", "submit", *common, str(orders_file), "--actor", "his:test", "--ward", "MED1"
        )
        assert submitted.returncode == 0, submitted.stderr
        added = int(re.match(r"(\d+) orders added \(pending\)", submitted.stdout).group(1))  # type: ignore[union-attr]
        assert added > 50
        again = cli(
            "orders", "submit", *common, str(orders_file), "--actor", "his:test", "--ward", "MED1"
        )
        assert f"0 orders added (pending), {added} already on file" in again.stdout

        # Nothing is planned before a pharmacist approved it.
        early = cli("jobs", "plan", *common, "--day", day.isoformat())
        assert early.returncode == 0 and "0 new jobs" in early.stdout
        ids = [str(i) for i in range(1, added + 1)]
        refused = cli("orders", "approve", *common, *ids, "--by", "controller")
        assert refused.returncode == 1 and "is not a person" in refused.stderr
        approved = cli("orders", "approve", *common, *ids, "--by", "pharmacist:anna")
        assert approved.returncode == 0, approved.stderr
        planned = cli("jobs", "plan", *common, "--day", day.isoformat())
        assert planned.returncode == 0, planned.stderr
        assert re.search(r"[1-9]\d* new jobs", planned.stdout), planned.stdout
        replanned = cli("jobs", "plan", *common, "--day", day.isoformat())
        assert "0 new jobs" in replanned.stdout

        # Pack, killing the controller at random moments.
        technician = CanisterTechnician(db, trigger_port)
        technician.start()
        rng = random.Random(20261122)
        kills = in_flight = 0
        for _ in range(4):
            run = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "pack", *common, "--no-plan"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(rng.uniform(1.5, 4.0))
            if run.poll() is not None:
                break
            run.kill()
            run.communicate(timeout=30)
            kills += 1
            states = job_states(db)
            in_flight += sum(states.get(s, 0) for s in ("loaded", "packing", "held"))
        assert kills >= 2, "packing ended before the controller could be killed twice"
        assert in_flight, "no kill hit a job on a machine"

        final = cli("pack", *common, "--no-plan", "--timeout", "240", timeout=300)
        technician.stop.set()
        technician.join(timeout=10)
        assert final.returncode == 0, final.stdout + final.stderr[-3000:]
        assert technician.scanned, "no canister refill was scanned"

        ledger = Ledger(make_engine(db))
        try:
            store = PackingStore(ledger)
            jobs = store.jobs()
            assert jobs and {j.state for j in jobs} == {"completed"}, [
                (j.job_id, j.state, j.reason) for j in jobs
            ]
            assert sum(j.good for j in jobs) == sum(len(j.job.machine_pouches()) for j in jobs)
            assert ledger.open_reservation_count() == 0
            assert store.open_fills() == []  # every refill posted or voided
            assert verify_ledger(ledger.engine) == []

            machines = asyncio.run(machine_canisters(site_file))
            for (packer, number), (gtin, count, _) in machines.items():
                booked = ledger.on_hand(canister_location(packer, number), gtin)
                assert booked == count, (
                    f"{packer} canister {number}: ledger {booked}, machine {count}"
                )
            in_pouches = sum(sum(j.job.units_by_gtin().values()) for j in jobs)
            dispensed = sum(total for _, _, total in machines.values())
            assert ledger.moved_quantity("consume") == in_pouches
            assert ledger.moved_quantity("consume") + ledger.moved_quantity("waste") == dispensed
        finally:
            ledger.engine.dispose()
    finally:
        if plant.stdin is not None:
            plant.stdin.close()
        plant.terminate()
        plant.wait(timeout=30)
        if plant.stdout is not None:
            plant.stdout.close()
