"""The whole simulated plant of a site file: packers, cabinets and scanners on loopback.

`python -m simulators.plant --site config/demo.yaml` starts one simulator per machine
in the file, at the addresses it names (or at free ports with `--free-ports`), and
prints one JSON line with the addresses actually bound, so that a controller (or a
test) can be pointed at them. It stops on SIGTERM, Ctrl-C or when its standard input
closes, so it never outlives the process that started it. With `--exit-on-stdin-close`
it also reads commands there: `pause-withdrawals` stops the nurses at every cabinet.

The plant reads the site file on its own, through `simulators.site_model`: machines,
their `sim:` keys and the catalogue's article numbers. It shares no code with the
controller.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from simulators.cabinet_hl7 import Hl7CabinetServer, hl7_spec
from simulators.cabinet_modbus import CabinetSimulator, CabinetSpec, PocketSpec
from simulators.packer_opcua import PackerSimulator
from simulators.scanner_serial import ScannerSimulator
from simulators.site_model import CabinetSite, Excursion, PackerSite, SiteModel, SiteModelError
from simulators.verification_http import VerificationSimulator, register_stock

if TYPE_CHECKING:
    from simulators.packer_serial import SerialPackerSimulator

DAY_SECONDS = 86400.0


class Simulator(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _port(address: str, free: bool) -> int:
    if free:
        return 0
    port = urlsplit(address).port
    if port is None:
        raise ValueError(f"address {address!r} names no port")
    return port


def _packer(p: PackerSite, seed: int, free_ports: bool) -> PackerSimulator | SerialPackerSimulator:
    """An OPC UA or a serial packer simulator, as the site file's `driver:` says."""
    canisters = [(c.number, c.gtin, 0, c.capacity) for c in p.canisters]
    port = _port(p.address, free_ports)
    if p.driver == "serial":
        from simulators.packer_serial import SerialPackerSimulator

        return SerialPackerSimulator(
            p.name,
            port=port,
            canisters=canisters,
            pouches_per_minute=p.pouches_per_minute,
            speed_factor=p.sim.speed_factor,
            reject_rate=p.sim.reject_rate,
            jam_rate=p.sim.jam_rate,
            seed=seed,
            output_capacity=p.sim.output_capacity,
            output_empty_after_s=p.sim.output_empty_after_s,
        )
    return PackerSimulator(
        p.name,
        port=port,
        canisters=canisters,
        pouches_per_minute=p.pouches_per_minute,
        speed_factor=p.sim.speed_factor,
        reject_rate=p.sim.reject_rate,
        jam_rate=p.sim.jam_rate,
        seed=seed,
        output_capacity=p.sim.output_capacity,
        output_empty_after_s=p.sim.output_empty_after_s,
        model="legacy" if p.driver == "opcua_legacy" else "opc30050",
    )


def _endpoint(sim: PackerSimulator | SerialPackerSimulator) -> str:
    if isinstance(sim, PackerSimulator):
        return sim.endpoint
    return f"socket://127.0.0.1:{sim.port}"


def _cabinet_spec(c: CabinetSite, articles: dict[str, int]) -> CabinetSpec:
    return CabinetSpec(
        cabinet_id=c.unit_id,
        cold=c.cold,
        pockets=[
            PocketSpec(
                number=p.number,
                article=articles[p.gtin],
                count=p.sim.initial,
                min_level=p.min,
                max_level=p.max,
                capacity=p.max,
                daily_withdrawals=p.sim.daily_withdrawals,
                waste_share=p.sim.waste_share,
            )
            for p in c.pockets
        ],
    )


class Plant:
    def __init__(
        self, site: SiteModel, *, day_seconds: float, free_ports: bool, seed: int | None = None
    ) -> None:
        seed = site.seed if seed is None else seed
        articles = site.articles()
        self.packers = [_packer(p, seed + i, free_ports) for i, p in enumerate(site.packers)]
        # One simulator per Modbus line: a TCP cabinet has its own, cabinets on one RTU
        # line (same address) share one, each answering to its unit id.
        lines: dict[tuple[str, str], list[CabinetSite]] = {}
        # A cabinet behind a vendor's cabinet server (HL7/MLLP) has a server of its own.
        self.hl7_cabinets: dict[str, Hl7CabinetServer] = {}
        for i, c in enumerate(site.cabinets):
            if c.driver == "hl7_mllp":
                self.hl7_cabinets[c.name] = Hl7CabinetServer(
                    hl7_spec(c),
                    port=_port(c.address, free_ports),
                    time_factor=DAY_SECONDS / day_seconds,
                    seed=seed + 300 + i,
                    snapshot_interval_s=c.poll_interval_s,
                )
                continue
            key = (c.driver, c.address if c.driver == "modbus_rtu" else c.name)
            lines.setdefault(key, []).append(c)
        self.cabinets: list[CabinetSimulator] = []
        self.cabinet_sims: dict[str, tuple[CabinetSimulator, int]] = {}
        self.excursions: list[tuple[CabinetSimulator, int, Excursion]] = []
        for i, ((driver, _), members) in enumerate(lines.items()):
            sim = CabinetSimulator(
                port=_port(members[0].address, free_ports),
                cabinets=[_cabinet_spec(c, articles) for c in members],
                time_factor=DAY_SECONDS / day_seconds,
                seed=seed + 100 + i,
                transport="rtu" if driver == "modbus_rtu" else "tcp",
            )
            self.cabinets.append(sim)
            for c in members:
                self.cabinet_sims[c.name] = (sim, c.unit_id)
                for excursion in c.excursions:
                    self.excursions.append((sim, c.unit_id, excursion))
        self.day_seconds = day_seconds
        self._weather: list[asyncio.Task[None]] = []
        self.scanner_names = [s.name for s in site.scanners]
        self.scanners = [
            ScannerSimulator(port=_port(s.address, free_ports), seed=seed + 200 + i)
            for i, s in enumerate(site.scanners)
        ]

        # The national verification system, when the site verifies packs and asks for
        # the bundled one: every pack of the opening stock is registered, as the
        # manufacturers would have uploaded them.
        self.verification: VerificationSimulator | None = None
        self.verification_port = 0
        if site.verification.runs_bundled:
            self.verification = VerificationSimulator()
            url = site.verification.url
            self.verification_port = 0 if free_ports else (urlsplit(url).port or 8090)
            if site.verification.register_stock:
                register_stock(self.verification, site)

    def _all(self) -> list[Simulator]:
        return [*self.packers, *self.cabinets, *self.hl7_cabinets.values(), *self.scanners]

    async def start(self) -> None:
        for sim in self._all():
            await sim.start()
        if self.verification is not None:
            self.verification_port = await self.verification.start(
                "127.0.0.1", self.verification_port
            )
        for sim, unit, excursion in self.excursions:
            self._weather.append(asyncio.create_task(self._excursion(sim, unit, excursion)))

    async def _excursion(self, sim: CabinetSimulator, unit: int, excursion: Excursion) -> None:
        """A fridge failing at a time of the simulated day, for a while."""
        await asyncio.sleep(excursion.hours / 24 * self.day_seconds)
        normal = sim.temperature(unit)
        sim.set_temperature(unit, excursion.celsius)
        await asyncio.sleep(excursion.minutes * 60 / DAY_SECONDS * self.day_seconds)
        sim.set_temperature(unit, normal)

    async def stop(self) -> None:
        for task in self._weather:
            task.cancel()
        if self.verification is not None:
            with contextlib.suppress(Exception):
                await self.verification.stop()
        for sim in reversed(self._all()):
            with contextlib.suppress(Exception):
                await sim.stop()

    def addresses(self) -> dict[str, Any]:
        extra = {}
        if self.verification is not None:
            extra["verification"] = f"http://127.0.0.1:{self.verification_port}"
        return {
            **extra,
            "packers": {p.name: _endpoint(p) for p in self.packers},
            "cabinets": {
                **{name: sim.address for name, (sim, _) in self.cabinet_sims.items()},
                **{name: sim.address for name, sim in self.hl7_cabinets.items()},
            },
            "scanners": {
                n: {"address": f"socket://127.0.0.1:{s.port}", "trigger_port": s.trigger_port}
                for n, s in zip(self.scanner_names, self.scanners, strict=True)
            },
        }


async def _stdin_commands(plant: Plant) -> None:
    """Reads commands from standard input until it closes: `pause-withdrawals` stops
    the nurses at every cabinet (a test's quiet moment before it compares counts) and
    answers one JSON line."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if not line:
            return
        command = line.decode(errors="replace").strip()
        if command == "pause-withdrawals":
            for sim in plant.cabinets:
                sim.pause_withdrawals()
            for server in plant.hl7_cabinets.values():
                server.pause_withdrawals()
            print(json.dumps({"paused": True}), flush=True)
        elif command:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)


async def _serve(args: argparse.Namespace, site: SiteModel) -> None:
    plant = Plant(site, day_seconds=args.day_seconds, free_ports=args.free_ports, seed=args.seed)
    await plant.start()
    print(json.dumps({"ready": plant.addresses()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchers: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if args.exit_on_stdin_close:
        watchers.append(asyncio.create_task(_stdin_commands(plant)))
    try:
        await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in watchers:
            w.cancel()
        await plant.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the simulated plant of a site file")
    parser.add_argument("--site", default="config/demo.yaml")
    parser.add_argument(
        "--day-seconds",
        type=float,
        default=DAY_SECONDS,
        help="real seconds one simulated day at the cabinets lasts",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="bind free loopback ports instead of those in the site file",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--exit-on-stdin-close", action="store_true")
    args = parser.parse_args()
    try:
        site = SiteModel.load(args.site)
    except SiteModelError as exc:
        raise SystemExit(f"{args.site}: {exc}") from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, site))


if __name__ == "__main__":
    main()
