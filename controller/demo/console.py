"""The console during the demo: served beside the API on a free loopback port, with one
fresh sign-in token per role printed at the start (tokens live only in this process), and
kept up after the simulated day with --keep until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from controller.api import ApiServer, create_app, hash_token, parse_tokens

if TYPE_CHECKING:
    from controller.app import Controller

DEMO_USERS = {
    "viewer": "viewer:demo",
    "technician": "technician:demo",
    "pharmacist": "pharmacist:demo",
    "admin": "admin:demo",
}


async def start_console(controller: Controller, say: Callable[[str], None]) -> ApiServer:
    """Starts the API and the console; prints the URL and a token for each role."""
    plain = {role: f"demo-{role}-{secrets.token_hex(6)}" for role in DEMO_USERS}
    text = "\n".join(f"{hash_token(plain[r])} {u} {r}" for r, u in DEMO_USERS.items())
    app = create_app(
        site=controller.site,
        ledger=controller.ledger,
        store=controller.store,
        controller=controller,
        tokens=parse_tokens(text, source="demo tokens"),
    )
    server = ApiServer(app, "127.0.0.1", 0)
    url = await server.start()
    say(f"console: {url}/console/ (API {url}/api/v1, its docs {url}/docs)")
    for role, user in DEMO_USERS.items():
        say(f"  sign in as {user:<16} with the token {plain[role]}")
    return server


async def keep_up(server: ApiServer, say: Callable[[str], None]) -> None:
    """Waits for Ctrl-C (or SIGTERM) with the console still served."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    say(f"console: the day is over; {server.url}/console/ stays up until Ctrl-C")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
