"""The crash suite: `doseline run` killed with SIGKILL at 20+ random moments of a busy
day, and started again each time.

The plant runs the demo site in its own process with a fast day: both packers (OPC UA
and serial), four cabinets (Modbus TCP and RTU) with nurses withdrawing and dropping
doses, the scanners, and the verification system. Two technicians (threads of this
test) work from what the ledger says is waiting: one scans canister refill tickets and
their packs at the packers, one picks refill lists and scans them at the cabinets. The
controller is killed while it polls, reserves, books, tells cabinets and packs.

At the end, with the nurses paused and the controller stopped, the ledger must agree
with the machines' own counts, pocket by pocket and canister by canister. Nothing
lost, nothing counted twice: every tablet that left a canister is booked exactly once
(in a good pouch or as a reject). No reservation is left open, the ledger verifies,
and every pack decommissioned at the verification system was decommissioned once.
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
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import pocket_label
from controller.config import load_site
from controller.demo.orders import demo_prescriptions
from controller.demo.supply import PackShelf
from controller.devices import cabinet_drivers, packer_driver
from controller.gs1 import PackId, encode_pack
from controller.ledger import Ledger, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.schema import (
    canister_fills,
    locations,
    lots,
    movements,
    pick_lists,
    pocket_refills,
    products,
)
from controller.packing.runner import canister_location
from controller.packing.store import PackingStore
from controller.verification import VerificationStore

REPO = Path(__file__).resolve().parents[2]
KILLS = 22
SEED = 20261122
DAY_SECONDS = 240  # the cabinets' day: busy enough to refill pockets between kills
pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Plant:
    """The simulated plant in its own process; commands go to its standard input."""

    def __init__(self, site_file: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulators.plant",
                "--site",
                str(site_file),
                "--free-ports",
                "--day-seconds",
                str(DAY_SECONDS),
                "--exit-on-stdin-close",
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.ready: dict[str, Any] = json.loads(self.process.stdout.readline())["ready"]

    def pause_withdrawals(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("pause-withdrawals\n")
        self.process.stdin.flush()
        assert json.loads(self.process.stdout.readline()) == {"paused": True}

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Scanner:
    """A hand at one scanner: holds symbols in front of it (its trigger socket)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = self.sock.makefile("r")

    def scan(self, data: str) -> None:
        self.sock.sendall(json.dumps({"scan": data}).encode() + b"\n")
        self.reader.readline()
        time.sleep(0.02)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Technician(threading.Thread):
    """Works from the ledger: what waits for a scan is scanned, again a while later if
    the controller was down and the scan went nowhere."""

    def __init__(self, db: str, canister_port: int, cabinet_port: int, shelf: PackShelf) -> None:
        super().__init__(name="technician", daemon=True)
        self.db = db
        self.ports = (canister_port, cabinet_port)
        self.shelf = shelf
        self.stop = threading.Event()
        self.last: dict[str, float] = {}
        self.canister_scans = 0
        self.list_scans = 0
        self.error: BaseException | None = None

    def due(self, key: str, every: float = 2.5) -> bool:
        if time.monotonic() - self.last.get(key, -100.0) < every:
            return False
        self.last[key] = time.monotonic()
        return True

    def run(self) -> None:
        engine = make_engine(self.db)
        ledger = Ledger(engine)
        packers, cabinets = Scanner(self.ports[0]), Scanner(self.ports[1])
        try:
            while not self.stop.wait(0.3):
                self.canisters(engine, packers)
                self.pockets(engine, ledger, cabinets)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            packers.close()
            cabinets.close()
            engine.dispose()

    def canisters(self, engine: Any, scanner: Scanner) -> None:
        with engine.connect() as conn:
            waiting = conn.execute(
                select(canister_fills.c.key, canister_fills.c.gtin, lots.c.batch, lots.c.expiry)
                .join(products, products.c.gtin == canister_fills.c.gtin)
                .join(
                    lots,
                    (lots.c.product_id == products.c.id) & (lots.c.batch == canister_fills.c.batch),
                )
                .where(canister_fills.c.status == "open", canister_fills.c.confirmed_by.is_(None))
            ).all()
        for key, gtin, batch, expiry in waiting:
            if not self.due(key):
                continue
            pack = PackId(gtin, batch, expiry, self.shelf.next(gtin, batch))
            scanner.scan("CR:" + key.removeprefix("canfill:"))
            scanner.scan(encode_pack(pack))
            self.canister_scans += 1

    def pockets(self, engine: Any, ledger: Ledger, scanner: Scanner) -> None:
        with engine.connect() as conn:
            lists = (
                conn.execute(select(pick_lists.c.list_id).where(pick_lists.c.status == "open"))
                .scalars()
                .all()
            )
            refills = conn.execute(
                select(
                    pocket_refills.c.pick_list,
                    pocket_refills.c.cabinet,
                    pocket_refills.c.pocket,
                    pocket_refills.c.reservation_key,
                )
                .where(pocket_refills.c.state == "picking")
                .order_by(pocket_refills.c.pocket)
            ).all()
        for list_id in lists:
            if not self.due(f"list:{list_id}"):
                continue
            scanner.scan(f"PL:{list_id}")
            for pick_list, cabinet, pocket, reservation in refills:
                if pick_list != list_id:
                    continue
                scanner.scan(pocket_label(cabinet, pocket))
                try:
                    lines = ledger.reservation(reservation).lines
                except Exception:
                    continue  # released meanwhile: the next pass sees the list again
                for line in lines:
                    pack = PackId(line.gtin, line.batch, line.expiry)
                    serial = self.shelf.next(line.gtin, line.batch)
                    scanner.scan(encode_pack(PackId(pack.gtin, pack.batch, pack.expiry, serial)))
            self.list_scans += 1


async def machine_counts(site_file: Path) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """What the machines themselves say: canisters (count, dispensed) and pockets."""
    site = load_site(site_file)
    canisters: dict[tuple[str, int], tuple[str, int, int]] = {}
    for packer in site.packers:
        driver = packer_driver(packer)
        await driver.connect()
        try:
            for can in await driver.read_canisters():
                canisters[(packer.name, can.number)] = (can.gtin, can.count, can.dispensed_total)
        finally:
            await driver.close()
    pockets: dict[tuple[str, int], tuple[str, int]] = {}
    drivers = cabinet_drivers(site.cabinets)
    try:
        for cab in site.cabinets:
            cabinet = drivers[cab.name]
            await cabinet.connect()
            status = await cabinet.read_status()
            gtins = {p.number: p.gtin for p in cab.pockets}
            for pocket in status.pockets:
                if pocket.number in gtins:
                    pockets[(cab.name, pocket.number)] = (gtins[pocket.number], pocket.count)
    finally:
        for each in drivers.values():
            await each.close()
    return canisters, pockets


def caught_in_flight(db: str) -> dict[str, int]:
    """What was half done when the controller died."""
    ledger = Ledger(make_engine(db))
    try:
        states = PackingStore(ledger).state_counts()
        with ledger.engine.connect() as conn:
            refills = conn.execute(
                select(func.count()).where(
                    pocket_refills.c.state.in_(("reserved", "picking", "booked"))
                )
            ).scalar_one()
            fills = conn.execute(
                select(func.count()).where(canister_fills.c.status == "open")
            ).scalar_one()
        return {
            "jobs on a machine": sum(states.get(s, 0) for s in ("loaded", "packing", "held")),
            "refills reserved or picked": int(refills),
            "canister fills open": int(fills),
        }
    finally:
        ledger.engine.dispose()


def moved_from_canisters(ledger: Ledger, kind: str) -> int:
    with ledger.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.coalesce(func.sum(movements.c.quantity), 0))
                .join(locations, locations.c.id == movements.c.from_location_id)
                .where(movements.c.kind == kind, locations.c.kind == "canister")
            ).scalar_one()
        )


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def crash_site(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    site = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    # The cabinets the suite reads itself are the Modbus ones (a cabinet server's
    # cabinet is read through its messages: tests/faults/test_hl7_cabinet_faults.py).
    site["cabinets"] = [c for c in site["cabinets"] if c.get("driver") != "hl7_mllp"]
    for cab in site["cabinets"]:
        cab.get("sim", {}).pop("excursions", None)  # the cold chain is not the subject here
    site["ledger"]["url"] = f"sqlite:///{tmp_path / 'site.db'}"
    site["verification"]["retry_interval_s"] = 1
    site["replenishment"]["pick_delay_s"] = 0
    # `doseline run` keeps the real clock: a refill round every 20 s for the next 20
    # minutes, so low pockets are picked while the test runs.
    now = datetime.now(ZoneInfo(site["site"]["timezone"]))
    site["replenishment"]["rounds"] = sorted(
        {(now + timedelta(seconds=20 * i)).strftime("%H:%M:%S") for i in range(1, 60)}
    )
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(site))
    return site, path


@pytest.mark.timeout(600)
def test_the_ledger_survives_twenty_kills(tmp_path: Path) -> None:
    site, plant_file = crash_site(tmp_path)
    plant = Plant(plant_file)
    run: subprocess.Popen[str] | None = None
    technician: Technician | None = None
    try:
        ready = plant.ready
        for machine in site["packers"]:
            machine["address"] = ready["packers"][machine["name"]]
        for cab in site["cabinets"]:
            cab["address"] = ready["cabinets"][cab["name"]]
        for scanner in site["scanners"]:
            scanner["address"] = ready["scanners"][scanner["name"]]["address"]
        site["verification"]["url"] = ready["verification"]
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site))
        db = site["ledger"]["url"]
        common = ["--site", str(site_file)]
        assert cli("ledger", "init", *common, "--opening-stock").returncode == 0

        # Tomorrow's orders, approved and planned, for the packers.
        day = datetime.now(UTC).date() + timedelta(days=1)
        model = load_site(site_file)
        assert model.demo is not None
        packable = [model.product(c.gtin) for c in model.packers[0].canisters[:6]]
        bundle = tmp_path / "orders.json"
        bundle.write_text(json.dumps(demo_prescriptions(model.demo, packable, day)))
        submitted = cli(
            "orders", "submit", *common, str(bundle), "--actor", "his:test", "--ward", "MED1"
        )
        assert submitted.returncode == 0, submitted.stderr
        added = int(re.match(r"(\d+) orders added", submitted.stdout).group(1))  # type: ignore[union-attr]
        ids = [str(i) for i in range(1, added + 1)]
        assert cli("orders", "approve", *common, *ids, "--by", "pharmacist:anna").returncode == 0
        planned = cli("jobs", "plan", *common, "--day", day.isoformat())
        assert re.search(r"[1-9]\d* new jobs", planned.stdout), planned.stdout + planned.stderr

        scanners = ready["scanners"]
        technician = Technician(
            db,
            scanners["SCANNER-PACKING"]["trigger_port"],
            scanners["SCANNER-1"]["trigger_port"],
            PackShelf.from_site(model),
        )
        technician.start()

        # Kill the controller at random moments, starting it again each time.
        rng = random.Random(SEED)
        kills = 0
        runs: list[float] = []
        hits: dict[str, int] = {}  # kills that caught work of this kind half done
        while kills < KILLS:
            args = ["run", *common] + (["--adopt-cabinets"] if kills == 0 else [])
            run = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", *args],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            alive = rng.uniform(0.8, 4.5) if kills else 6.0  # the first one adopts
            time.sleep(alive)
            assert run.poll() is None, f"run {kills} ended by itself: {run.communicate()[1]}"
            run.kill()
            run.communicate(timeout=30)
            run = None
            kills += 1
            runs.append(alive)
            caught = caught_in_flight(db)
            for what, n in caught.items():
                hits[what] = hits.get(what, 0) + (1 if n else 0)

        # The last run is left alone until the packing is done and the day quietens.
        run = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "run", *common],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ledger = Ledger(make_engine(db))
        store = PackingStore(ledger)

        def jobs_done() -> bool:
            states = store.state_counts()
            return bool(states) and set(states) <= {"completed", "partial", "failed", "manual"}

        wait_until(jobs_done, 240, "every job to end")
        plant.pause_withdrawals()

        def quiet() -> bool:
            with ledger.engine.connect() as conn:
                open_refills = conn.execute(
                    select(pocket_refills.c.id).where(
                        pocket_refills.c.state.in_(("reserved", "picking", "booked"))
                    )
                ).first()
            return open_refills is None and ledger.open_reservation_count() == 0

        try:
            wait_until(quiet, 120, "the refills to be picked and confirmed")
        except AssertionError:
            with ledger.engine.connect() as conn:
                left = conn.execute(
                    select(pocket_refills.c.refill_id, pocket_refills.c.state).where(
                        pocket_refills.c.state.in_(("reserved", "picking", "booked"))
                    )
                ).all()
            run.kill()
            _, err = run.communicate(timeout=30)
            run = None
            raise AssertionError(
                f"refills still open: {left}; reservations {ledger.open_reservations()}; "
                f"the last run said: {err[-4000:]}"
            ) from None
        time.sleep(2.0)  # a few more polls: the last withdrawals are booked
        run.terminate()
        _, err = run.communicate(timeout=60)
        run = None
        assert "Traceback" not in err, err[-3000:]
        technician.stop.set()
        technician.join(timeout=10)
        assert technician.error is None, repr(technician.error)
        # The kills hit the work the suite is about, not only idle moments.
        assert hits.get("jobs on a machine", 0) >= 1, hits
        assert hits.get("refills reserved or picked", 0) >= 1, hits
        assert technician.canister_scans and technician.list_scans

        jobs = store.jobs()
        assert {j.state for j in jobs} == {"completed"}, [(j.job_id, j.state) for j in jobs]
        assert ledger.open_reservation_count() == 0
        assert store.open_fills() == []
        assert verify_ledger(ledger.engine) == []

        canisters, pockets = asyncio.run(machine_counts(site_file))
        differ = [
            f"{packer} canister {n}: ledger {ledger.on_hand(canister_location(packer, n), g)}, "
            f"machine {count}"
            for (packer, n), (g, count, _) in canisters.items()
            if ledger.on_hand(canister_location(packer, n), g) != count
        ]
        differ += [
            f"{cab} pocket {n}: ledger {ledger.on_hand(pocket_location(cab, n), g)}, "
            f"cabinet {count}"
            for (cab, n), (g, count) in pockets.items()
            if ledger.on_hand(pocket_location(cab, n), g) != count
        ]
        assert differ == [], differ
        in_pouches = sum(sum(j.job.units_by_gtin().values()) for j in jobs)
        dispensed = sum(total for _, _, total in canisters.values())
        assert moved_from_canisters(ledger, "consume") == in_pouches
        assert (
            moved_from_canisters(ledger, "consume") + moved_from_canisters(ledger, "waste")
            == dispensed
        )

        # Each pack decommissioned at the national system once, as the ledger recorded.
        counts = httpx.get(f"{ready['verification']}/control/counts", timeout=5).json()
        assert [k for k, n in counts.items() if n > 1] == []
        packs = VerificationStore(ledger).counts()
        assert packs.get("pending", 0) == 0 and packs.get("unconfirmed", 0) == 0
        recorded = packs.get("decommissioned:dispensed", 0) + packs.get(
            "decommissioned:supplied", 0
        )
        assert recorded == sum(counts.values()) > 0
        print(
            f"crash suite: {kills} kills after {min(runs):.1f}-{max(runs):.1f} s of life "
            f"(caught half done: {hits}); "
            f"{len(jobs)} jobs, {in_pouches} tablets in pouches, {len(pockets)} pockets and "
            f"{len(canisters)} canisters agree; {recorded} packs decommissioned once"
        )
        ledger.engine.dispose()
    finally:
        if technician is not None:
            technician.stop.set()
        if run is not None:
            run.kill()
            run.communicate(timeout=30)
        plant.stop()
