"""Wiring the console into the API's FastAPI app: its routes under /console, its own
script and style sheet under /console/static, and / sending a browser to it."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from controller.config import ConsoleConfig
from controller.console import (
    screens_core,
    screens_duty,
    screens_floor,
    screens_pharmacist,
    screens_technician,
    screens_wardsupply,
)
from controller.console.sessions import Sessions
from controller.console.web import PREFIX, Console, make_env

STATIC = Path(__file__).parent / "static"

# Screen modules in menu order. A new screen is one template
# and one module like these, added here.
SCREEN_MODULES = (
    screens_core,
    screens_technician,
    screens_pharmacist,
    screens_duty,
    screens_floor,
    screens_wardsupply,
)


def install_console(app: FastAPI, config: ConsoleConfig) -> None:
    app.state.console = Console(
        env=make_env(),
        sessions=Sessions(timeout_s=config.session_timeout_min * 60.0),
        secure_cookie=config.secure_cookie,
    )
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    for module in SCREEN_MODULES:
        app.include_router(module.router, prefix=PREFIX, include_in_schema=False)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    @app.get(PREFIX, include_in_schema=False)
    async def bare() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)
