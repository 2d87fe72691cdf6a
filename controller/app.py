"""The controller: one site's ledger, machines and services, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from controller.async_ledger import AsyncLedger
from controller.cabinets.cold_chain import ColdChain
from controller.cabinets.hl7_listener import cabinet_poller
from controller.cabinets.poller import CabinetPoller, pocket_location
from controller.cabinets.replenishment import Replenishment
from controller.config import Site
from controller.devices import cabinet_drivers, packer_driver, scanner_driver
from controller.ledger import Ledger, LedgerError
from controller.ledger.engine import make_engine
from controller.ledger.group_commit import BatchSettings
from controller.metrics import Metrics
from controller.packing.canister_desk import CanisterDesk
from controller.packing.dispatcher import Dispatcher
from controller.packing.planner import (
    PlannedJob,
    capabilities,
    fit_to_machines,
    substitution_groups,
)
from controller.packing.runner import PackerRunner, PackingSettings, canister_location
from controller.packing.store import OPEN_STATES, PackingStore
from controller.ports import RunningSite
from controller.purchasing import PurchasingStore
from controller.scanning import ScanOutcome, ScanRouter
from controller.site_services import (
    ReplenishmentDesk,
    RoutedScans,
    RunnerMachines,
    VerifyingGoodsIn,
)
from controller.stock_metrics import StockMetrics
from controller.verification import HttpVerificationSystem, VerificationService
from controller.wardsupply.desk import WardSupplyDesk
from controller.wardsupply.service import WardSupply
from drivers.base import CabinetDriver, DriverError, PackerDriver, ScannerDriver

log = logging.getLogger("doseline.controller")
SITE_ROOT = "SITE"  # the root of the location tree


class Controller:
    def __init__(
        self,
        site: Site,
        *,
        ledger_url: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock` (aware datetimes) is the site's wall clock for refill rounds and due
        times; the demo passes one that runs a day in a minute."""
        self.site = site
        self.tz = ZoneInfo(site.site.timezone)
        self.metrics = Metrics()
        self.ledger = Ledger(
            make_engine(ledger_url or site.ledger.url),
            min_shelf_life_days=site.ledger.min_shelf_life_days,
        )
        self.aledger = AsyncLedger(
            self.ledger,
            self.metrics,
            BatchSettings(site.ledger.batch_max_commands, site.ledger.batch_wait_ms / 1000),
        )
        self.stock_metrics = StockMetrics(self.metrics, self.aledger, tz=self.tz)
        self.store = PackingStore(self.ledger)
        settings = PackingSettings(
            store_bins=site.store.all_bins,
            reservation_timeout_s=site.ledger.reservation_timeout_s,
            refill_scan_timeout_s=site.packing.refill_scan_timeout_s,
        )
        self.packer_drivers: dict[str, PackerDriver] = {
            p.name: packer_driver(p) for p in site.packers
        }
        self.canister_desk = CanisterDesk()
        self.runners = {
            p.name: PackerRunner(
                p,
                self.packer_drivers[p.name],
                self.aledger,
                self.store,
                self.metrics,
                settings,
                self.canister_desk,
            )
            for p in site.packers
        }
        self.dispatcher = Dispatcher(self.store, self.aledger, self.runners)
        self.cabinet_drivers: dict[str, CabinetDriver] = cabinet_drivers(site.cabinets)
        self.pollers: dict[str, CabinetPoller] = {}
        # Pockets are refilled from the whole store, preparedness bins included: that
        # stock is kept by rotation, first expiry first, so that none of it expires.
        self.replenishment = Replenishment(
            self.aledger,
            self.metrics,
            self.pollers,
            site.store.all_bins,
            reservation_timeout_s=site.ledger.reservation_timeout_s,
            settings=site.replenishment,
            tz=self.tz,
            clock=clock,
        )
        self.cold_chain = ColdChain(self.aledger, self.replenishment, self.metrics)
        for c in site.cabinets:
            poller = cabinet_poller(
                c,
                self.cabinet_drivers[c.name],
                self.aledger,
                self.metrics,
                on_low=self.replenishment.request,
                catalogue=site.catalogue,
            )
            poller.refill_in_flight = self.replenishment.in_flight
            self.cold_chain.attach(poller)
            self.pollers[c.name] = poller
        self.scanners: dict[str, ScannerDriver] = {s.name: scanner_driver(s) for s in site.scanners}
        self.scan_router = ScanRouter([self.replenishment, self.canister_desk])
        self.purchasing = PurchasingStore(self.ledger)
        self.wardsupply = WardSupply(
            self.ledger, site, clock=clock, order_products=self._order_products
        )
        self.verification: VerificationService | None = None
        if site.verification.enabled:
            v = site.verification
            self.verification = VerificationService(
                HttpVerificationSystem(v.url, v.timeout_s),
                self.aledger,
                self.metrics,
                decommission_on=v.decommission_on,
                retry_interval_s=v.retry_interval_s,
                quarantine_lot_on_alert=v.quarantine_lot_on_alert,
            )
            self.canister_desk.on_pack_used = self.verification.on_opened
            self.replenishment.on_pack_used = self.verification.on_dispatched
        self.ward_desk = WardSupplyDesk(
            self.wardsupply, self.aledger.run, verification=self.verification
        )
        self.scan_router.desks.append(self.ward_desk)
        self.scan_log: list[ScanOutcome] = []
        self._tasks: list[asyncio.Task[Any]] = []

    def running_site(self) -> RunningSite:
        """What the HTTP API and the console may use of this controller: narrow
        services over its runners, pollers, scan router and desks (controller.ports)."""
        return RunningSite(
            machines=RunnerMachines(self.runners, self.pollers),
            scans=RoutedScans(self.scan_router, self.metrics, self.scan_log),
            refills=ReplenishmentDesk(self.replenishment, self.canister_desk),
            ledger_calls=self.aledger,
            goods_in=VerifyingGoodsIn(self.aledger, self.verification),
            purchasing=self.purchasing,
            wardsupply=self.wardsupply,
            ward_desk=self.ward_desk,
            verification=self.verification,
        )

    def _order_products(self, items: list[tuple[str, int]], actor: str, note: str) -> list[str]:
        """Ward lines for products the store does not keep become supplier orders."""
        return self.purchasing.order_products(
            items, now=self.wardsupply.clock(), actor=actor, note=note
        )

    # ------------------------------------------------------------ ledger set-up

    def prepare_ledger(self) -> None:
        """Creates the schema and the site's master data (idempotent)."""
        led = self.ledger
        led.create_schema()
        known = {str(row["gtin"]) for row in led.products()}
        for p in self.site.catalogue:
            led.add_product(
                gtin=p.gtin,
                article=p.article,
                name=p.name,
                substance=p.substance,
                atc=p.atc,
                strength=p.strength,
                form=p.form,
                unit=p.unit,
                pack_size=p.pack_size,
                unit_price=p.unit_price,
                category=p.category,
                storage=p.storage,
                controlled_class=p.controlled_class,
                substitution_group=p.substitution_group,
            )
        PurchasingStore(led).sync_suppliers(
            ((s.code, s.name, s.lead_time_days) for s in self.site.suppliers),
            {p.gtin: p.supplier for p in self.site.catalogue},
        )
        store = self.site.store
        led.add_location(SITE_ROOT, "site")
        led.add_location(store.code, "store", parent=SITE_ROOT)
        for code in store.bins:
            led.add_location(code, "bin", parent=store.code)
        for code in store.preparedness:
            led.add_location(code, "preparedness", parent=store.code)
        led.add_location(f"{store.code}/QUARANTINE", "quarantine", parent=store.code)
        for packer in self.site.packers:
            led.add_location(packer.name, "packer", parent=SITE_ROOT)
            for can in packer.canisters:
                led.add_location(
                    canister_location(packer.name, can.number),
                    "canister",
                    parent=packer.name,
                    product_gtin=can.gtin,
                )
        for cab in self.site.cabinets:
            led.add_location(cab.name, "cabinet", parent=SITE_ROOT)
            for pocket in cab.pockets:
                led.add_location(
                    pocket_location(cab.name, pocket.number),
                    "pocket",
                    parent=cab.name,
                    product_gtin=pocket.gtin,
                )

        WardSupply(led, self.site).setup_locations()
        # The site file seeds the duty's decisions only where the ledger has none of
        # its own, so a later decision by CLI, API or console is not overwritten.
        for p in self.site.catalogue:
            if p.gtin not in known and p.durability == "durable":
                led.set_durability(p.gtin, "durable", actor="site-setup")
        exempted = {e.gtin for e in led.exemptions_list(include_revoked=True)}
        for exemption in self.site.exemptions:
            if exemption.gtin in exempted:
                continue
            led.set_exemption(
                gtin=exemption.gtin,
                reason=exemption.reason,
                risk_assessment=exemption.risk_assessment,
                review_date=exemption.review_date,
                decided_by=exemption.decided_by,
                actor="site-setup",
                measures=exemption.measures,
                level_days=exemption.level_days,
            )
        scoped = led.scope_list()
        have = {e.gtin for e in scoped if e.gtin} | {f"category:{e.category}" for e in scoped}
        for entry in self.site.duty_scope:
            key = entry.gtin or f"category:{entry.category}"
            if key in have:
                continue
            led.set_out_of_scope(
                gtin=entry.gtin,
                category=entry.category,
                reason=entry.reason,
                note=entry.note,
                actor="site-setup",
            )

    def receive_opening_stock(self, today: date) -> int:
        """Books the site file's opening lots into their bins; returns units booked."""
        units = 0
        for i, lot in enumerate(self.site.stock):
            price = lot.unit_price
            if price is None:
                price = self.site.product(lot.gtin).unit_price
            self.ledger.receive(
                f"opening:{lot.gtin}:{lot.batch}:{i}",
                gtin=lot.gtin,
                batch=lot.batch,
                expiry=lot.expiry_on(today),
                quantity=lot.quantity,
                to_location=lot.bin,
                actor="site-setup",
                reason="opening stock",
                unit_price=price,
            )
            units += lot.quantity
        return units

    # ------------------------------------------------------------ running

    async def start(self) -> None:
        # Packers connect in their runners (with backoff), so one unreachable packer
        # does not keep the rest of the site from running.
        for scanner in self.scanners.values():
            await scanner.connect()
        await self.replenishment.recover(self.site.cabinets)
        for runner in self.runners.values():
            self._spawn(runner.serve(), f"packer-{runner.name}")
        self._spawn(self.dispatcher.serve(), "dispatcher")
        for poller in self.pollers.values():
            self._spawn(poller.serve(), f"cabinet-{poller.name}")
        self._spawn(self.replenishment.serve(), "replenishment")
        if self.site.drug_rooms:
            self._spawn(self.ward_desk.serve(), "ward-supply")
        if self.verification is not None:
            self._spawn(self.verification.serve(), "verification")
        for name, scanner in self.scanners.items():
            self._spawn(self._scan_station(name, scanner), f"scanner-{name}")
        self._spawn(self._housekeeping(), "housekeeping")

    async def start_packing(self) -> None:
        """Only the packers, the dispatcher, the scan stations (canister refills are
        confirmed by a scan) and housekeeping (`doseline pack`)."""
        for name, scanner in self.scanners.items():
            await scanner.connect()
            self._spawn(self._scan_station(name, scanner), f"scanner-{name}")
        for runner in self.runners.values():
            self._spawn(runner.serve(), f"packer-{runner.name}")
        self._spawn(self.dispatcher.serve(), "dispatcher")
        if self.verification is not None:
            self._spawn(self.verification.serve(), "verification")
        self._spawn(self._housekeeping(), "housekeeping")

    async def adopt_cabinets(self) -> None:
        """Commissioning of cabinets the ledger does not know yet."""
        for poller in self.pollers.values():
            await poller.adopt(self.site.store.all_bins)

    def fit(self, jobs: list[PlannedJob]) -> list[PlannedJob]:
        """Maps jobs onto this site's calibrated canisters (substitutes, manual items)."""
        return fit_to_machines(jobs, capabilities(self.site), substitution_groups(self.site))

    async def plan(self, day: date) -> list[PlannedJob]:
        """Plans the approved doses of `day` that no job holds yet."""
        return await self.aledger.run(self.store.plan, day, fit=self.fit)

    async def wait_for_jobs(self, timeout_s: float, *, day: date | None = None) -> bool:
        """Waits until no job (of `day`) is open; False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            counts = await self.aledger.run(self.store.state_counts, day)
            if not any(counts.get(state) for state in OPEN_STATES):
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.2)

    async def stop_services(self) -> None:
        """Stops polling, packing and scanning; the device links stay open."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            while not task.done():
                # Python 3.11's asyncio.wait_for (pymodbus and asyncua await replies
                # with it) drops a cancellation that comes with the reply, and the
                # task goes on: cancel it again until it ends.
                await asyncio.wait([task], timeout=1.0)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.replenishment.drain()
        await self.ward_desk.drain()

    async def stop(self) -> None:
        await self.stop_services()
        for poller in self.pollers.values():
            await poller.close()
        drivers: list[PackerDriver | ScannerDriver] = [
            *self.packer_drivers.values(),
            *self.scanners.values(),
        ]
        for driver in drivers:
            with contextlib.suppress(DriverError, OSError):
                await driver.close()
        if self.verification is not None:
            await self.verification.aclose()

    def close(self) -> None:
        self.aledger.close()
        self.metrics.shutdown()
        self.ledger.engine.dispose()

    async def sweep(self) -> None:
        """Releases reservations past their timeout and refreshes the gauges; the stock
        gauges only every `stock_metrics.interval_s` (they run the ledger reports)."""
        expired = await self.aledger.expire_overdue()
        for key in expired:
            log.warning("reservation %s expired and was released", key)
            await self.replenishment.reservation_expired(key)
        self.metrics.open_discrepancies.set(await self.aledger.open_discrepancy_count())
        self.metrics.open_reservations.set(await self.aledger.open_reservation_count())
        await self.stock_metrics.tick()  # never raises: a failure is logged and counted

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self.sweep()
            except LedgerError as exc:
                log.error("housekeeping: %s", exc)
            await asyncio.sleep(1.0)

    async def _scan_station(self, name: str, scanner: ScannerDriver) -> None:
        while True:
            data = await scanner.read_scan()
            try:
                self.scan_log.append(await self.scan_router.route(name, data))
            except LedgerError as exc:
                log.error("scan could not be booked: %s", exc)
                self.metrics.scans.labels("error").inc()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    @staticmethod
    def _task_ended(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "service %s died: %r", task.get_name(), task.exception(), exc_info=task.exception()
            )


async def run_packing(
    site: Site,
    *,
    ledger_url: str | None = None,
    day: date | None = None,
    plan: bool = True,
    timeout_s: float = 3600,
) -> int:
    """`doseline pack`: settles what a previous run left open, plans the day's approved
    orders, and runs the packers until no job is open. 0 when every job ended, 1 when
    some are still open at the timeout (or on SIGTERM)."""
    import signal
    from datetime import UTC, datetime

    controller = Controller(site, ledger_url=ledger_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        if plan:
            planned = await controller.plan(day or datetime.now(UTC).date())
            print(f"planned {len(planned)} new jobs", flush=True)
        await controller.start_packing()
        waiter = asyncio.create_task(controller.wait_for_jobs(timeout_s))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        done = waiter.done() and waiter.result()
        if not waiter.done():
            waiter.cancel()
        counts = await controller.aledger.run(controller.store.state_counts)
        print("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
        for job_id, why in sorted(controller.dispatcher.waiting.items()):
            print(f"  {job_id} waits: {why}", flush=True)
        return 0 if done else 1
    finally:
        await controller.stop()
        controller.close()
