"""The HTTP API application: `create_app` wires the routes to a site's ledger, its
stores and (optionally) the services of a running controller (controller.ports).
docs/api.md describes every route."""

from __future__ import annotations

import importlib.metadata

from fastapi import FastAPI

from controller.api import errors
from controller.api.auth import Tokens
from controller.api.context import ApiContext
from controller.api.local_docs import install_local_docs
from controller.api.routes_debiting import router as debiting_router
from controller.api.routes_duty_preparedness import router as duty_preparedness_router
from controller.api.routes_duty_scope import router as duty_scope_router
from controller.api.routes_duty_shortages import router as duty_shortages_router
from controller.api.routes_duty_use import router as duty_use_router
from controller.api.routes_jobs import jobs_router, packers_router
from controller.api.routes_misc import audit_router, health_router, refills_router
from controller.api.routes_orders import router as orders_router
from controller.api.routes_purchasing import router as purchasing_router
from controller.api.routes_stock import router as stock_router
from controller.api.routes_verification import router as verification_router
from controller.api.routes_wardsupply import router as wardsupply_router
from controller.config import Site
from controller.ledger import Ledger
from controller.packing.store import PackingStore
from controller.ports import LedgerQueries, RunningSite, RunsSite
from controller.site_services import ledger_queries

PREFIX = "/api/v1"

TAGS = [
    {"name": "orders", "description": "Dose orders in (FHIR, HL7 v2), listed and reviewed"},
    {"name": "jobs", "description": "Packing jobs planned from approved orders"},
    {"name": "packers", "description": "PackML commands to the dose-packing machines"},
    {"name": "stock", "description": "Stock reports from the ledger, and the store tasks"},
    {"name": "debiting", "description": "Ward debiting: consumption charged to the wards"},
    {"name": "refills", "description": "Cabinet pocket refills, and scans from handhelds"},
    {"name": "verification", "description": "Pack verification (EU FMD): alerts, queue, undo"},
    {
        "name": "purchasing",
        "description": "Supplier orders from the order proposal, deliveries (goods-in), "
        "supplier reliability",
    },
    {
        "name": "ward-supply",
        "description": "Drug room requisitions, review, pick lists, delivery notes and "
        "receipt, top-up rounds, delivery reliability",
    },
    {
        "name": "stock duty",
        "description": "The one-month stock duty: scope, exemptions, preparedness, crisis "
        "periods, shortages, rationing, licences, external use and the monthly follow-up",
    },
    {"name": "audit", "description": "The hash-chained audit trail"},
    {"name": "health", "description": "Liveness; no token needed"},
]

DESCRIPTION = """\
The doseline controller over HTTP. Every route except `/health` needs
`Authorization: Bearer <token>`; a token's role decides what it may do
(viewer < technician < pharmacist < admin, each including the ones below).
Each route names its least role under `x-required-role`.

Every error is JSON: `{"error": ..., "field": ..., "value": ...}`.
"""


def _version() -> str:
    try:
        return importlib.metadata.version("doseline")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def create_app(
    *,
    site: Site,
    ledger: Ledger,
    store: PackingStore,
    controller: RunsSite | None = None,
    running: RunningSite | None = None,
    queries: LedgerQueries | None = None,
    tokens: Tokens,
) -> FastAPI:
    """The API for one site. The routes that need the machines (packer commands,
    scans) use `running`, a running controller's services (or `controller`'s own);
    without them the ledger routes work and those answer 503. `queries` are the
    ledger reads (by default over `ledger`)."""
    if running is None and controller is not None:
        running = controller.running_site()
    version = _version()
    app = FastAPI(
        title=f"doseline API: {site.site.name}",
        version=version,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,  # served with local assets by install_local_docs
        redoc_url=None,
    )
    app.state.ctx = ApiContext(
        site=site,
        ledger=ledger,
        store=store,
        tokens=tokens,
        queries=queries or ledger_queries(ledger),
        running=running,
        version=version,
    )
    errors.install(app)
    for router in (
        orders_router,
        jobs_router,
        packers_router,
        stock_router,
        debiting_router,
        refills_router,
        verification_router,
        purchasing_router,
        wardsupply_router,
        duty_scope_router,
        duty_preparedness_router,
        duty_shortages_router,
        duty_use_router,
        audit_router,
        health_router,
    ):
        app.include_router(router, prefix=PREFIX)
    # Load balancers and probes look for /health at the root as well.
    app.include_router(health_router, include_in_schema=False)
    install_local_docs(app)
    if site.console.enabled:
        from controller.console import install_console

        install_console(app, site.console)
    return app
