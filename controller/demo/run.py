"""`doseline demo`: the main job on the embedded default, end to end.

It starts the simulated plant in its own process (the controller never imports the
simulators), points a controller at the addresses the plant reports, seeds an empty
ledger with the site's catalogue and opening stock, packs tomorrow's pouches for the
demo ward while the cabinets live through one accelerated day, plays the technician who
picks refills and scans them at the cabinets, and ends with a summary that is checked
against the ledger's invariants and the machines' own counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from controller.api import ApiServer
from controller.app import Controller
from controller.cabinets.poller import pocket_location
from controller.cabinets.replenishment import PickList, pack_of, pocket_label
from controller.config import Site
from controller.demo.console import keep_up, start_console
from controller.demo.duty import DutyDemo
from controller.demo.orders import demo_orders
from controller.demo.supply import DemoSupplier, PackShelf, book_history
from controller.demo.wards import WardDemo
from controller.gs1 import PackId, encode_pack
from controller.ledger import Allocation, verify_ledger
from controller.ledger.migrations import reset
from controller.ledger.verify import count_negative_balances
from controller.packing.planner import describe
from controller.packing.runner import canister_location
from controller.packing.store import OPEN_STATES

log = logging.getLogger("doseline.demo")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_PHARMACIST = "pharmacist:demo"


class DemoError(Exception):
    pass


@dataclass
class Plant:
    """The simulator process and the addresses it bound."""

    process: asyncio.subprocess.Process
    addresses: dict[str, Any]

    async def stop(self) -> None:
        if self.process.returncode is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_plant(site_path: Path, day_seconds: float, free_ports: bool) -> Plant:
    args = [
        sys.executable,
        "-m",
        "simulators.plant",
        "--site",
        str(site_path),
        "--day-seconds",
        str(day_seconds),
        "--exit-on-stdin-close",
    ]
    if free_ports:
        args.append("--free-ports")
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO_ROOT),
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        ready = json.loads(line)["ready"]
    except (TimeoutError, ValueError, KeyError) as exc:
        process.kill()
        await process.wait()
        raise DemoError(f"the simulated plant did not start: {exc!r}") from exc
    return Plant(process, ready)


def with_plant_addresses(site: Site, addresses: dict[str, Any]) -> Site:
    return site.model_copy(
        update={
            "packers": [
                p.model_copy(update={"address": addresses["packers"][p.name]}) for p in site.packers
            ],
            "cabinets": [
                c.model_copy(update={"address": addresses["cabinets"][c.name]})
                for c in site.cabinets
            ],
            "scanners": [
                s.model_copy(update={"address": addresses["scanners"][s.name]["address"]})
                for s in site.scanners
            ],
            "verification": site.verification.model_copy(
                update={"url": addresses.get("verification", site.verification.url)}
            ),
        }
    )


@dataclass
class Technician:
    """Picks each list after a while and scans it at the cabinet: the list, then for
    each pocket its label and its packs.

    Once per demo it first holds up a pack that is not on the list, and once a pack in
    front of the wrong pocket, to show that the cabinet refuses both.
    """

    controller: Controller
    trigger_port: int
    pick_delay_s: float
    shelf: PackShelf
    wrong_scan_done: bool = False
    wrong_pocket_done: bool = False
    lists_done: int = 0
    scans_sent: list[str] = field(default_factory=list)

    async def work(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.trigger_port)
        try:
            while True:
                pick = await self.controller.replenishment.pick_lists.get()
                await asyncio.sleep(self.pick_delay_s)
                await self._scan(reader, writer, pick.barcode)
                open_refills = [r for r in pick.refills if r.open]
                for i, refill in enumerate(open_refills):
                    await self._scan(
                        reader, writer, pocket_label(refill.cabinet, refill.pocket.number)
                    )
                    if not self.wrong_scan_done:
                        wrong = self._wrong_pack(pick)
                        if wrong is not None:
                            await self._scan(reader, writer, encode_pack(wrong))
                            self.wrong_scan_done = True
                    if not self.wrong_pocket_done and i + 1 < len(open_refills):
                        # A pack of the next pocket's product, held up at this pocket.
                        other = open_refills[i + 1]
                        if other.lines and other.pocket.gtin != refill.pocket.gtin:
                            await self._scan(reader, writer, self._pack(other.lines[0]))
                            self.wrong_pocket_done = True
                    for line in refill.lines:
                        await self._scan(reader, writer, self._pack(line))
                self.lists_done += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _pack(self, line: Allocation) -> str:
        return encode_pack(pack_of(line, self.shelf.next(line.gtin, line.batch)))

    async def _scan(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: str
    ) -> None:
        await _send_scan(reader, writer, data)
        self.scans_sent.append(data)

    def _wrong_pack(self, pick: PickList) -> PackId | None:
        on_list = {line.gtin for _, line in pick.lines()}
        for lot in self.controller.ledger.stock():
            if lot.gtin not in on_list and lot.location.startswith(self.controller.site.store.code):
                serial = self.shelf.next(lot.gtin, lot.batch)
                return PackId(lot.gtin, lot.batch, lot.expiry, serial)
        return None


@dataclass
class Pharmacist:
    """Decides on stock quarantined in a cold cabinet a while after the alarm: the
    fridge was warm too long, so the pens are wasted."""

    controller: Controller
    decide_after_s: float
    decisions: list[str] = field(default_factory=list)

    async def work(self) -> None:
        led = self.controller.aledger
        while True:
            held = await led.holds(status="held")
            if held:
                await asyncio.sleep(self.decide_after_s)
                for hold in await led.holds(status="held"):
                    if hold.on_hand_now:
                        await led.waste_hold(
                            f"demo-waste:{hold.id}",
                            hold.id,
                            actor=DEMO_PHARMACIST,
                            note="above 8 °C for 40 minutes: not usable",
                        )
                    else:
                        await led.release_hold(hold.id, actor=DEMO_PHARMACIST, note="nothing left")
                    self.decisions.append(
                        f"{hold.location} batch {hold.batch}: {hold.on_hand_now} wasted by "
                        f"{DEMO_PHARMACIST}"
                    )
            await asyncio.sleep(0.2)


@dataclass
class CanisterTechnician:
    """Fetches the reserved pack for each canister ticket and scans the ticket and the
    pack at the packers' scanner. Once per demo it first holds up a pack of the right
    product but another lot, to show that the canister refuses it."""

    controller: Controller
    trigger_port: int
    shelf: PackShelf
    wrong_lot_done: bool = False
    refills: int = 0

    async def work(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.trigger_port)
        try:
            while True:
                ticket = await self.controller.canister_desk.tickets.get()
                await asyncio.sleep(0.2)  # to the store and back
                await _send_scan(reader, writer, ticket.barcode)
                if not self.wrong_lot_done:
                    other = self._other_lot(ticket.gtin, ticket.batch)
                    if other is not None:
                        await _send_scan(reader, writer, encode_pack(other))
                        self.wrong_lot_done = True
                serial = self.shelf.next(ticket.gtin, ticket.batch)
                pack = PackId(ticket.gtin, ticket.batch, ticket.expiry, serial)
                await _send_scan(reader, writer, encode_pack(pack))
                self.refills += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _other_lot(self, gtin: str, batch: str) -> PackId | None:
        for lot in self.controller.ledger.stock(gtin=gtin):
            if lot.batch != batch and lot.location.startswith(self.controller.site.store.code):
                return PackId(gtin, lot.batch, lot.expiry, self.shelf.next(gtin, lot.batch))
        return None


async def _send_scan(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: str) -> None:
    """Holds a symbol in front of a simulated scanner (its trigger socket)."""
    writer.write(json.dumps({"scan": data}).encode() + b"\n")
    await writer.drain()
    await reader.readline()
    await asyncio.sleep(0.05)  # a hand moves between packs


def _cabinet_links(site: Site) -> str:
    tcp = sum(1 for c in site.cabinets if c.driver == "modbus_tcp")
    lines = {c.address for c in site.cabinets if c.driver == "modbus_rtu"}
    rtu = sum(1 for c in site.cabinets if c.driver == "modbus_rtu")
    parts = [f"{tcp} Modbus TCP"] if tcp else []
    if rtu:
        parts.append(f"{rtu} on {len(lines)} Modbus RTU line{'s' if len(lines) > 1 else ''}")
    hl7 = sum(1 for c in site.cabinets if c.driver == "hl7_mllp")
    if hl7:
        parts.append(f"{hl7} behind a cabinet server (HL7 MLLP)")
    return ", ".join(parts)


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(
    site: Site,
    site_path: Path,
    *,
    minutes: float,
    ledger_url: str,
    free_ports: bool = True,
    quiet: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    say = (lambda _t: None) if quiet else _say
    day_seconds = minutes * 60
    started = time.monotonic()
    plant = await start_plant(site_path, day_seconds, free_ports)
    # The site's clock runs as fast as the simulated day at the cabinets: refill rounds
    # and due times are in simulated hours.
    day_started = time.monotonic()
    midnight = datetime.combine(
        datetime.now(UTC).date(), dt_time(0, 0), tzinfo=ZoneInfo(site.site.timezone)
    )

    def day_clock() -> datetime:
        return midnight + timedelta(seconds=(time.monotonic() - day_started) * 86400 / day_seconds)

    controller: Controller | None = None
    console: ApiServer | None = None
    tech_tasks: list[asyncio.Task[None]] = []
    try:
        kinds = ", ".join(
            f"{sum(1 for p in site.packers if p.driver == d)} {label}"
            for d, label in (
                ("opcua", "OPC UA"),
                ("opcua_legacy", "OPC UA legacy"),
                ("serial", "serial"),
            )
            if any(p.driver == d for p in site.packers)
        )
        say(
            f"plant: {len(site.packers)} packers ({kinds}), {len(site.cabinets)} cabinets "
            f"({_cabinet_links(site)}), {len(site.scanners)} scanners (serial) on loopback"
        )
        for name, url in plant.addresses["packers"].items():
            say(f"  {name:<10} {url}")
        for name, url in plant.addresses["cabinets"].items():
            say(f"  {name:<10} {url}")
        for name, info in plant.addresses["scanners"].items():
            say(f"  {name:<10} {info['address']}")
        live_site = with_plant_addresses(site, plant.addresses)
        controller = Controller(live_site, ledger_url=ledger_url, clock=day_clock)
        # The stock gauges run the ledger reports: every simulated half hour here.
        controller.stock_metrics.interval_s = max(1.0, day_seconds / 48)
        reset(controller.ledger.engine)
        controller.prepare_ledger()
        today = datetime.now(UTC).date()
        units = controller.receive_opening_stock(today)
        say(
            f"ledger: {ledger_url} (fresh), {len(site.catalogue)} products, "
            f"{len(site.stock)} lots, {units} units in {site.store.code}"
        )
        used = book_history(controller.ledger, site, now=datetime.now(UTC))
        if used:
            say(
                f"history: {used} units used over the last 30 days by "
                f"{len(site.demo.history) if site.demo else 0} products (the order "
                "proposal's basis)"
            )
        shelf = PackShelf.from_site(site)
        verification_url = plant.addresses.get("verification")
        if verification_url:
            say(
                f"verification: the national system on {verification_url}, "
                f"{sum(shelf.packs.values())} serialised packs of the opening stock registered"
            )
        supplier = DemoSupplier(
            controller,
            shelf,
            say,
            Path(site.purchasing.orders_dir),
            verification_url=verification_url,
        )
        await supplier.order(datetime.now(UTC))
        port = controller.metrics.serve(site.metrics.host, site.metrics.port)
        say(f"metrics: http://{site.metrics.host}:{port}/metrics")

        await controller.adopt_cabinets()
        await controller.start()
        console = await start_console(controller, say)
        demo = site.demo
        if demo is None:
            raise DemoError("the site file has no demo: section")
        day = today + timedelta(days=1)
        orders = demo_orders(site, demo, day, today)
        filed = await controller.aledger.run(
            controller.store.submit,
            orders,
            source="fhir",
            actor="intake:demo-bundle",
            review_required=site.orders.review_required,
        )
        say(
            f"orders: a FHIR Bundle of prescriptions for {demo.patients} patients on ward "
            f"{demo.ward} became {len(orders)} dose orders for {day} ({filed.status})"
        )
        if filed.status == "pending":
            rejected, approved = filed.added[:1], filed.added[1:]
            await controller.aledger.run(
                controller.store.review,
                rejected,
                approve=False,
                actor=DEMO_PHARMACIST,
                note="duplicate therapy: already on a long-acting preparation",
            )
            await controller.aledger.run(
                controller.store.review,
                approved,
                approve=True,
                actor=DEMO_PHARMACIST,
                note="checked against the medication list",
            )
            say(
                f"review: {DEMO_PHARMACIST} approved {len(approved)} orders and rejected "
                f"{len(rejected)} (duplicate therapy)"
            )
        jobs = await controller.plan(day)
        pouches = sum(len(j.machine_pouches()) for j in jobs)
        say(f"planning: {len(jobs)} jobs, {pouches} machine pouches")
        names = {p.gtin: p.name for p in site.catalogue}
        for job in jobs:
            for line in describe(job):
                for gtin, name in names.items():
                    line = line.replace(gtin, name)
                say(f"  {job.job_id}: {line}")
        say(f"day: one day at the cabinets in {day_seconds:.0f} s")

        # The first scanner is at the cabinets, the last at the packers.
        scanners = list(plant.addresses["scanners"].values())
        technician = Technician(
            controller, scanners[0]["trigger_port"], site.replenishment.pick_delay_s, shelf
        )
        canister_technician = CanisterTechnician(controller, scanners[-1]["trigger_port"], shelf)
        pharmacist = Pharmacist(controller, decide_after_s=day_seconds / 24)
        duty = DutyDemo(controller, say, day_seconds, day_clock, today)
        await duty.before_the_day()
        wards = WardDemo(controller, shelf, say, day_seconds, today) if site.drug_rooms else None
        tech_tasks = [
            asyncio.create_task(technician.work(), name="technician"),
            asyncio.create_task(canister_technician.work(), name="canister-technician"),
            asyncio.create_task(pharmacist.work(), name="pharmacist"),
        ]
        ward_day = asyncio.create_task(wards.work(), name="wards") if wards else None
        crisis = asyncio.create_task(duty.crisis(), name="crisis")

        # The supplier's van comes at 09:00.
        delivery = asyncio.create_task(
            _at(day_seconds * 9 / 24, supplier.deliver(today)), name="delivery"
        )
        deadline = started + day_seconds
        ticker = asyncio.create_task(_progress(controller, say, started, day_seconds, pouches))
        try:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if not await controller.wait_for_jobs(timeout_s=max(120.0, day_seconds)):
            log.error("packing did not finish in time")
        # Give the technician a moment to finish the list in hand.
        await asyncio.sleep(min(2.0, site.replenishment.pick_delay_s + 1))
        if ward_day is not None:
            # the wards finish the day (a list still open is dispatched as it stands)
            await asyncio.wait_for(ward_day, timeout=max(120.0, day_seconds))
        await _cancel_all(tech_tasks)
        await delivery
        await crisis
        summary = await _wind_down(controller, technician)
        summary.update(await _supply_summary(controller, supplier))
        if wards is not None:
            summary.update(await wards.summary())
        summary.update(await duty.summary())
        summary["canister_refills"] = canister_technician.refills
        summary["cold_chain"] = pharmacist.decisions
        summary["duration_s"] = round(time.monotonic() - started, 1)
        summary["metrics_port"] = port
        summary["ledger_url"] = ledger_url
        if keep:
            await keep_up(console, say)
        return summary
    finally:
        await _cancel_all(tech_tasks)
        if console is not None:
            await console.stop()
        if controller is not None:
            await controller.stop()
            controller.close()
        await plant.stop()


async def _at(delay_s: float, action: Any) -> None:
    await asyncio.sleep(delay_s)
    await action


async def _supply_summary(controller: Controller, supplier: DemoSupplier) -> dict[str, Any]:
    """Purchasing and verification at the end of the day, with the verification
    system's own count of decommissions per serial."""
    out: dict[str, Any] = {
        "purchase_orders": [
            f"{po.number} ({po.supplier}, {len(po.lines)} lines)" for po in supplier.orders
        ],
        "delivery": [],
        "order_status": None,
    }
    r = supplier.receipt
    if r is not None:
        out["order_status"] = r.order_status
        out["delivery"] = [
            f"line {o.line_no} {o.name.split(' ')[0]}: {o.status}"
            + (f", {o.back_order} back-ordered" if o.back_order else "")
            + (
                f", order instead {o.substitutes[0].name} from {o.substitutes[0].supplier}"
                if o.substitutes
                else ""
            )
            for o in r.lines
        ]
    reliability = await controller.aledger.run(
        controller.purchasing.reliability, today=datetime.now(UTC).date()
    )
    out["supplier_reliability"] = {
        s.supplier: {"otif": s.otif, "fill_rate": s.fill_rate} for s in reliability if s.lines_due
    }
    if controller.verification is None:
        return out
    store = controller.verification.store
    await controller.verification.retry_pending()
    counts = await controller.aledger.run(store.counts)
    alerts = await controller.aledger.run(store.alerts)
    system: dict[str, int] = {}
    if supplier.verification_url:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.get(f"{supplier.verification_url}/control/counts")
            system = answer.json()
    out["verification"] = {
        "verified_at_goods_in": counts.get("verified", 0),
        "blocked": counts.get("blocked", 0),
        "decommissioned_opened": counts.get("decommissioned:dispensed", 0),
        "decommissioned_dispatched": counts.get("decommissioned:supplied", 0),
        "unconfirmed": counts.get("unconfirmed", 0),
        "pending": counts.get("pending", 0),
        "alerts": [f"{a.code} on {a.gtin} serial {a.serial}: {a.message}" for a in alerts],
        "system_decommissions": sum(system.values()),
        "system_repeats": sorted(k for k, n in system.items() if n > 1),
    }
    return out


async def _progress(
    controller: Controller, say: Any, started: float, day_seconds: float, pouches: int
) -> None:
    """One line every three simulated hours, so the day can be followed as it runs."""
    step = day_seconds / 8
    for tick in range(1, 8):
        await asyncio.sleep(max(0.0, started + tick * step - time.monotonic()))
        jobs = [r.job for runner in controller.runners.values() for r in runner.results]
        packed = sum(j.pouches_good for j in jobs)
        withdrawals = sum(p.withdrawals_booked for p in controller.pollers.values())
        refills = controller.replenishment
        pending = sum(1 for r in refills.refills if r.open)
        say(
            f"  {tick * 3:02d}:00  pouches {packed}/{pouches}  withdrawals {withdrawals}  "
            f"refills confirmed {refills.confirmed}, open {pending}"
        )


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()


async def _wind_down(controller: Controller, technician: Technician) -> dict[str, Any]:
    """Stops the services, books the last withdrawals, releases what was not picked,
    and checks the ledger against itself and against the machines."""
    await controller.stop_services()
    # A refill booked but not yet told (its cabinet was busy or slow to answer) is told
    # now, so that the comparison below sees the cabinet with it.
    await controller.replenishment.tell_cabinets()
    mismatches: list[str] = []
    for poller in controller.pollers.values():
        poller.on_low = None  # the day is over: no new refills
        status = await poller.poll_once()
        for pocket in status.pockets:
            cfg = poller.pockets.get(pocket.number)
            if cfg is None:
                continue
            booked = controller.ledger.on_hand(
                pocket_location(poller.name, pocket.number), cfg.gtin
            )
            if booked != pocket.count:
                mismatches.append(
                    f"{poller.name} pocket {pocket.number}: cabinet {pocket.count}, ledger {booked}"
                )
    for runner in controller.runners.values():
        for can in await runner.driver.read_canisters():
            booked = controller.ledger.on_hand(canister_location(runner.name, can.number), can.gtin)
            if booked != can.count:
                mismatches.append(
                    f"{runner.name} canister {can.number}: machine {can.count}, ledger {booked}"
                )
    cancelled = await controller.replenishment.cancel_open("end of demo day: not picked")
    await controller.sweep()
    violations = verify_ledger(controller.ledger.engine)
    results = [r for runner in controller.runners.values() for r in runner.results]
    jobs = [r.job for r in results]
    job_states = controller.store.state_counts()
    scans = controller.scan_log
    return {
        "pouches_packed": sum(j.pouches_good for j in jobs),
        "pouches_rejected": sum(j.pouches_rejected for j in jobs),
        "jobs_completed": job_states.get("completed", 0),
        "jobs_partial": job_states.get("partial", 0),
        "jobs_failed": job_states.get("failed", 0),
        "jobs_manual": job_states.get("manual", 0),
        "jobs_open": sum(job_states.get(s, 0) for s in OPEN_STATES),
        "pouches_by_packer": {
            name: sum(r.job.pouches_good for r in runner.results)
            for name, runner in controller.runners.items()
        },
        "tablets_consumed": sum(sum(r.consumed.values()) for r in results),
        "tablets_wasted": sum(sum(r.wasted.values()) for r in results),
        "withdrawals": sum(p.withdrawals_booked for p in controller.pollers.values()),
        "withdrawals_by_cabinet": {
            name: p.withdrawals_booked for name, p in controller.pollers.items()
        },
        "refills_done": controller.replenishment.confirmed,
        "refills_cancelled": cancelled,
        "pick_lists": technician.lists_done,
        "pick_lists_scheduled": sum(
            1 for p in controller.replenishment.lists.values() if not p.urgent
        ),
        "pick_lists_urgent": sum(1 for p in controller.replenishment.lists.values() if p.urgent),
        "wasted_at_cabinets": sum(p.wasted_booked for p in controller.pollers.values()),
        "discrepancies_open": controller.ledger.open_discrepancy_count(),
        "stock_on_hold": len(controller.ledger.holds(status="held")),
        "scans_accepted": sum(1 for s in scans if s.accepted),
        "scans_refused": sum(1 for s in scans if not s.accepted),
        "refused_scans": [s.message for s in scans if not s.accepted][:5],
        "open_reservations": controller.ledger.open_reservation_count(),
        "open_reservation_keys": [key for key, _ in controller.ledger.open_reservations()],
        "negative_balances": count_negative_balances(controller.ledger.engine),
        "physical_mismatches": mismatches,
        "ledger_violations": [str(v) for v in violations],
        "ledger_verified": not violations,
    }


def print_summary(summary: dict[str, Any]) -> None:
    s = summary
    lines = [
        "",
        "demo summary",
        f"  dose pouches packed      {s['pouches_packed']} good, {s['pouches_rejected']} rejected "
        f"by vision and packed again",
        f"  packing jobs             {s['jobs_completed']} completed, {s['jobs_partial']} partial, "
        f"{s['jobs_failed']} failed, {s['jobs_manual']} by hand, {s['jobs_open']} open",
        "  pouches per packer       "
        + ", ".join(f"{name} {n}" for name, n in s["pouches_by_packer"].items()),
        f"  tablets                  {s['tablets_consumed']} in pouches, {s['tablets_wasted']} "
        f"wasted in rejects",
        f"  cabinet withdrawals      {s['withdrawals']} doses booked",
        "  withdrawals per cabinet  "
        + ", ".join(f"{name} {n}" for name, n in s.get("withdrawals_by_cabinet", {}).items()),
        f"  cabinet waste            {s['wasted_at_cabinets']} doses discarded at the cabinets, "
        "booked as waste",
        f"  pocket refills           {s['refills_done']} confirmed by scan in {s['pick_lists']} "
        f"pick lists ({s['pick_lists_scheduled']} from scheduled rounds, "
        f"{s['pick_lists_urgent']} urgent for an empty pocket), {s['refills_cancelled']} "
        "not picked by day's end (released)",
        "  cold chain               "
        + (
            f"{len(s['cold_chain'])} lot(s) quarantined after a temperature excursion, "
            "then decided by a pharmacist"
            if s.get("cold_chain")
            else "no excursion"
        ),
        *[f"      {m}" for m in s.get("cold_chain", [])],
        f"  canister refills         {s.get('canister_refills', 0)} confirmed by a scan of the "
        "reserved lot",
        f"  scans                    {s['scans_accepted']} accepted, {s['scans_refused']} refused",
    ]
    lines += [f"      refused: {m}" for m in s["refused_scans"]]
    lines += [
        f"  open discrepancies       {s['discrepancies_open']}",
        f"  stock on hold            {s['stock_on_hold']}",
    ]
    lines += [
        f"  open reservations        {s['open_reservations']}",
    ]
    lines += [f"      still open: {key}" for key in s["open_reservation_keys"]]
    lines += [
        f"  negative balances        {s['negative_balances']}",
        "  ledger vs machines       "
        + (
            "every pocket and canister agrees"
            if not s["physical_mismatches"]
            else f"{len(s['physical_mismatches'])} differ"
        ),
    ]
    lines += [f"      {m}" for m in s["physical_mismatches"]]
    lines.append(f"  ledger verified          {'yes' if s['ledger_verified'] else 'NO'}")
    lines += [f"      {v}" for v in s["ledger_violations"]]
    if s.get("purchase_orders") is not None:
        lines.append(
            "  purchasing               "
            + (", ".join(s["purchase_orders"]) or "nothing to order")
            + (
                f"; after the delivery the order is {s['order_status']}"
                if s["order_status"]
                else ""
            )
        )
        lines += [f"      {d}" for d in s["delivery"]]
        for code, figures in s.get("supplier_reliability", {}).items():
            lines.append(
                f"      {code}: on time in full {figures['otif']:.0%}, "
                f"fill rate {figures['fill_rate']:.0%}"
            )
    w = s.get("ward_supply")
    if w is not None:
        share = s["delivery_reliability"]
        lines += [
            f"  ward supply              {s['ward_order_lines']} order lines from "
            f"{s['drug_rooms']} drug rooms ({w['requisitions']} requisitions, "
            f"{w['duplicates']} resend answered as duplicate, {len(w['refused'])} refused)",
            f"      review               {w['routine_approved']} routine lines approved "
            f"together, {w['decisions']} flagged lines decided one by one "
            f"({w['rejected']} rejected)",
            f"      picking              {len(w['pick_lists'])} pick lists, {w['scans']} scans "
            f"({len(w['scans_refused'])} refused), {w['short_picks']} short pick, "
            f"{w['back_orders']} back orders",
            f"      delivery             {s['ward_lines_delivered']} lines delivered in "
            f"{w['notes']} notes, {w['deviations']} receipt deviation, "
            f"{w['notes_in_transit']} still in transit; urgent order {w['urgent'] or '-'}; "
            f"supplier order {w['supplier_order'] or '-'}",
            "      reliability          "
            + ("no line due" if share is None else f"{share:.1%} on time and in full")
            + f" (target {w['reliability']['target']:.0%})"
            + "".join(f"; {k} {n}" for k, n in w["reliability"]["by_cause"].items()),
        ]
        lines += [f"      refused: {m}" for m in w["refused"] + w["scans_refused"][:3]]
    lines += _duty_lines(s.get("stock_duty"))
    v = s.get("verification")
    if v is not None:
        lines.append(
            f"  pack verification        {v['verified_at_goods_in']} verified at goods-in, "
            f"{v['blocked']} blocked, {v['decommissioned_opened']} decommissioned when opened "
            f"for a canister, {v['decommissioned_dispatched']} when dispatched to a ward; "
            f"{v['pending']} queued; the system counted {v['system_decommissions']} "
            f"decommissions, {len(v['system_repeats'])} serial(s) twice"
        )
        lines += [f"      alert: {a}" for a in v["alerts"]]
    lines.append(f"  took                     {s['duration_s']} s")
    print("\n".join(lines), flush=True)


def _duty_lines(d: dict[str, Any] | None) -> list[str]:
    """The stock duty's part of the summary."""
    if d is None:
        return []
    e, p, r = d["exemption"], d["preparedness"], d["rationing"]
    cover = "no use" if e["cover_days"] is None else f"{e['cover_days']} days of cover"
    lines = [
        f"  stock duty               exemption: {e['product']} judged on {e['level_days']} "
        f"days ({cover}: {e['status']}), reviewed by {e['reviewed_by']}, next review "
        f"{e['review_date']}",
        f"      preparedness         {p['listed']} products on '{p['list']}', "
        f"{len(p['below_floor'])} below the floor"
        + "".join(
            f"; {b['product']} {b['stock']} of floor {b['floor']} (target {b['target']})"
            for b in p["below_floor"]
        ),
    ]
    x = d.get("external_use")
    if x:
        whole = x["whole_cover_days"]
        lines.append(
            f"      whole use            {x['unit']} used {x['quantity']} of {x['product']} in "
            f"{x['month']}: cover on the whole use "
            + ("-" if whole is None else f"{whole} days")
            + f" ({x['status']})"
        )
    c = d.get("crisis")
    if c is not None:
        lines.append(
            f"      crisis               period {c['id']} for {', '.join(c['categories'])} "
            f"{c['hours']} (site time): {c['reason']}; "
            f"midway {c['below_month_in_crisis']} product(s) below the month, reported as "
            "information"
            + (
                ", the masks below their floor (critical in a crisis)"
                if c["masks_below_floor"]
                else ""
            )
        )
    sh = d["shortage"]
    lines += [
        f"      shortage             {sh['product']}: notice {sh['notice']} until "
        f"{sh['expected_end']}, substitute {', '.join(sh['substitutes'])}",
        f"      rationing            {r['cap_per_ward_day']} units per ward and day, "
        f"{', '.join(r['priority_wards'])} first: {r['lines_cut']} ward line(s) cut; granted "
        + (", ".join(f"{w} {n}" for w, n in r["granted_by_ward"].items()) or "nothing"),
    ]
    return lines


def demo_ok(summary: dict[str, Any]) -> bool:
    return bool(
        summary["ledger_verified"]
        and summary["negative_balances"] == 0
        and summary["open_reservations"] == 0
        and summary["discrepancies_open"] == 0
        and summary["stock_on_hold"] == 0
        and not summary["physical_mismatches"]
        and summary["jobs_failed"] == 0
        and summary["jobs_open"] == 0
        and _verification_ok(summary.get("verification"))
    )


def _verification_ok(v: dict[str, Any] | None) -> bool:
    """Every decommission the ledger recorded reached the system once, none waits."""
    if v is None:
        return True
    recorded = v["decommissioned_opened"] + v["decommissioned_dispatched"]
    return bool(
        v["pending"] == 0
        and v["unconfirmed"] == 0
        and not v["system_repeats"]
        and v["system_decommissions"] == recorded
    )
