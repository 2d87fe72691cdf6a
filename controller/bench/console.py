"""The console on a busy day: page and scan latencies over a real socket.

Why: a pharmacist's screens and a technician's scans go through the same services as
the machines' work, on the same ledger; they must stay quick on a ledger with a busy
day in it. This phase seeds one (a day of withdrawals and pouches as consumption
movements, each with its audit row, and a batch of dose orders waiting for review),
runs a real controller against simulated Modbus cabinets (`simulators.fleet`), serves
the API and the console with uvicorn, and measures with an HTTP client:

* every console screen, signed in as admin, in rounds (p50, p95, max per screen and
  over all of them), against 200 ms at p95;
* scans typed at the console (pick list, pocket label, a refused pack, the right
  packs that book the refill and tell the cabinet), against 100 ms at p95.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any

import httpx

from controller.api import ApiServer, create_app, hash_token, parse_tokens
from controller.app import Controller
from controller.bench import site as bench_site
from controller.bench.cabinets import _seed as seed_cabinets
from controller.bench.common import Fleet, ms, quantile
from controller.cabinets.replenishment import pocket_label
from controller.gs1 import PackId, encode_pack
from controller.ledger.ledger import DeliveryLine
from controller.packing.orders import DoseOrder

PAGE_TARGET_MS = 200.0
SCAN_TARGET_MS = 100.0
CABINETS = 10
DAY_MOVEMENTS = 5_000  # a busy day: pouches packed and doses withdrawn, one movement each
PENDING_ORDERS = 250  # a day's order lines waiting for a pharmacist
TOKEN = "bench-console-admin"
SCREENS = (
    "/console/",
    "/console/orders",
    "/console/alerts",
    "/console/holds",
    "/console/discrepancies",
    "/console/audit",
    "/console/audit?product=Paracetamol",
    "/console/picking",
    "/console/goods-in",
    "/console/stocktake?location=CENTRAL/A01",
    "/console/floor",
    "/console/cabinets",
    "/console/stock?product=Paracetamol",
    "/console/cover",
    "/console/fragments/floor",
    "/console/fragments/picking",
)


def _busy_day(controller: Controller) -> None:
    """Store stock, and a day of consumption from it, one audited movement each."""
    ledger = controller.ledger
    expiry = datetime.now(UTC).date() + timedelta(days=400)
    ledger.receive_many(
        "bench:store",
        [
            DeliveryLine(gtin, f"STORE{i + 1}", expiry, 1_000_000, bench_site.STORE_BIN)
            for i, (gtin, _article, _name) in enumerate(bench_site.PRODUCTS)
        ],
        actor="bench",
        reason="bench: store filled",
    )
    products = [gtin for gtin, _a, _n in bench_site.PRODUCTS]
    for n in range(DAY_MOVEMENTS):
        ledger.consume(
            f"bench:day:{n}",
            gtin=products[n % len(products)],
            quantity=1 + n % 3,
            location=bench_site.STORE_BIN,
            actor="bench",
            reason="bench: a busy day",
        )
    today = datetime.now(UTC).date()
    orders = [
        DoseOrder(
            f"PT-{n:05d}",
            "WARD-0001",
            products[n % len(products)],
            1,
            (dt_time(8),),
            today + timedelta(days=1),
            today + timedelta(days=1),
        )
        for n in range(PENDING_ORDERS)
    ]
    controller.store.submit(orders, source="fhir", actor="intake:bench", review_required=True)


def latency_ms(samples: list[float]) -> dict[str, Any]:
    """p50, p95 (the target's quantile), p99 and max, in milliseconds."""
    return {
        "samples": len(samples),
        "p50_ms": ms(quantile(samples, 0.5)),
        "p95_ms": ms(quantile(samples, 0.95)),
        "p99_ms": ms(quantile(samples, 0.99)),
        "max_ms": ms(max(samples)) if samples else None,
    }


async def _timed(samples: list[float], call: Any) -> httpx.Response:
    t0 = time.perf_counter()
    response: httpx.Response = await call
    samples.append(time.perf_counter() - t0)
    return response


async def measure(url: str, seconds: float, workdir: str) -> dict[str, Any]:
    fleet = Fleet(bench_site.cabinet_fleet(CABINETS), workdir)
    ready = await fleet.start()
    site = bench_site.cabinet_site(url, CABINETS, ready["gateways"])
    controller = Controller(site, ledger_url=url)
    server: ApiServer | None = None
    pages: dict[str, list[float]] = {path: [] for path in SCREENS}
    scans: dict[str, list[float]] = {"list": [], "pocket": [], "refused": [], "pack": []}
    accepted = refused = 0
    try:
        seed_started = time.perf_counter()
        await asyncio.to_thread(seed_cabinets, controller, CABINETS)
        await asyncio.to_thread(_busy_day, controller)
        seed_s = time.perf_counter() - seed_started
        await controller.start()
        tokens = parse_tokens(f"{hash_token(TOKEN)} admin:bench admin", source="bench")
        app = create_app(
            site=site,
            ledger=controller.ledger,
            store=controller.store,
            controller=controller,
            tokens=tokens,
        )
        server = ApiServer(app, "127.0.0.1", 0)
        base = await server.start()
        # Refills for two pockets of every cabinet, and their pick lists.
        for cabinet in site.cabinets:
            for pocket in cabinet.pockets[:2]:
                await controller.replenishment.request(cabinet, pocket, bench_site.POCKET_MIN - 1)
        lists = await controller.replenishment.make_pick_lists()
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            login = await http.get("/console/login")
            nonce = re.search(r'name="csrf" value="([^"]+)"', login.text)
            assert nonce is not None
            await http.post("/console/login", data={"csrf": nonce.group(1), "token": TOKEN})
            home = await http.get("/console/")
            found = re.search(r'name="csrf" value="([^"]+)"', home.text)
            if found is None:
                raise RuntimeError("the bench could not sign in to the console")
            csrf = found.group(1)
            for path in SCREENS:  # warm-up: templates compiled, connections open
                await http.get(path)
            window_started = time.perf_counter()
            rounds = 0
            while rounds < 10 or time.perf_counter() - window_started < seconds:
                for path in SCREENS:
                    r = await _timed(pages[path], http.get(path))
                    if r.status_code != 200:
                        raise RuntimeError(f"{path} answered {r.status_code}")
                rounds += 1

            def scan(code: str) -> Any:
                return http.post(
                    "/console/scan",
                    data={"csrf": csrf, "code": code.replace("\x1d", "<GS>")},
                    headers={"x-console-fragment": "1"},
                )

            for pick in lists:
                await _timed(scans["list"], scan(pick.barcode))
                for refill in pick.refills:
                    await _timed(
                        scans["pocket"], scan(pocket_label(refill.cabinet, refill.pocket.number))
                    )
                    line = refill.lines[0]
                    wrong = PackId(line.gtin, "NOT-PICKED", line.expiry)
                    r = await _timed(scans["refused"], scan(encode_pack(wrong)))
                    refused += "refused" in r.text
                    for line in refill.lines:
                        pack = PackId(line.gtin, line.batch, line.expiry)
                        r = await _timed(scans["pack"], scan(encode_pack(pack)))
                        accepted += "scan-result ok" in r.text
    finally:
        if server is not None:
            await server.stop()
        await controller.stop()
        controller.close()
        await fleet.stop()
    every_page = [s for samples in pages.values() for s in samples]
    every_scan = [s for samples in scans.values() for s in samples]
    worst_page_p95 = max((quantile(s, 0.95) or 0) * 1000 for s in pages.values())
    scan_p95 = (quantile(every_scan, 0.95) or 0) * 1000
    return {
        "figures": {
            "ledger_movements": DAY_MOVEMENTS,
            "pending_orders": PENDING_ORDERS,
            "cabinets": CABINETS,
            "rounds": rounds,
            "pages": {path: latency_ms(samples) for path, samples in pages.items()},
            "all_pages": latency_ms(every_page),
            "worst_screen_p95_ms": round(worst_page_p95, 1),
            "scans": {kind: latency_ms(samples) for kind, samples in scans.items()},
            "all_scans": latency_ms(every_scan),
            "scans_accepted": accepted,
            "scans_refused": refused,
            "seed_s": round(seed_s, 1),
        },
        "target": (
            f"every console screen under {PAGE_TARGET_MS:.0f} ms at p95, every scan under "
            f"{SCAN_TARGET_MS:.0f} ms at p95, on a ledger with a busy day"
        ),
        "met": worst_page_p95 < PAGE_TARGET_MS and scan_p95 < SCAN_TARGET_MS,
    }


def run(url: str, seconds: float, workdir: str) -> dict[str, Any]:
    return asyncio.run(measure(url, seconds, workdir))
