"""`doseline run` and `doseline check-config`: a site file checked, and a controller
run against its machines, with the HTTP API and the console when the site enables them."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING, Any

from controller.cli.common import DEFAULT_SITE
from controller.config import Site, load_site

if TYPE_CHECKING:
    from controller.api import ApiServer, Tokens


async def run_site(site: Site, *, ledger_url: str | None = None, adopt: bool = False) -> int:
    """Runs a controller until SIGTERM or Ctrl-C: cabinets polled, refills planned,
    scans checked, packers ready for jobs, metrics served, and the HTTP API when the
    site file enables it (`api.enabled`, docs/api.md). The controller is built first
    and the API over it, with the services it hands out (`Controller.running_site`)."""
    # Imported here: every other command starts without the web stack.
    from controller.api import ApiServer, TokenFileError, create_app, load_tokens
    from controller.app import Controller
    from drivers.base import DriverError

    tokens: Tokens | None = None
    if site.api.enabled:
        try:  # before anything is started: a bad tokens file stops the start
            tokens = load_tokens(site.api)
        except TokenFileError as exc:
            print(f"doseline run: {exc}", flush=True)
            return 2
    controller = Controller(site, ledger_url=ledger_url)
    api_server: ApiServer | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.to_thread(controller.prepare_ledger)
        port = controller.metrics.serve(site.metrics.host, site.metrics.port)
        print(f"metrics: http://{site.metrics.host}:{port}/metrics", flush=True)
        if adopt:
            await controller.adopt_cabinets()
        await controller.start()
        if tokens is not None:
            app = create_app(
                site=site,
                ledger=controller.ledger,
                store=controller.store,
                running=controller.running_site(),
                tokens=tokens,
            )
            api_server = ApiServer(app, site.api.host, site.api.port)
            try:
                url = await api_server.start()
            except OSError as exc:
                api_server = None
                print(
                    f"doseline run: api: cannot listen on {site.api.host}:{site.api.port}: "
                    f"{exc.strerror or exc}",
                    flush=True,
                )
                return 1
            print(f"api: {url}/api/v1 ({len(tokens)} tokens)", flush=True)
            if site.console.enabled:
                print(f"console: {url}/console/ (docs/console.md)", flush=True)
            if not tokens:
                source = site.api.tokens_file or f"${site.api.tokens_env}"
                print(
                    f"api: no tokens in {source}: every route but /health answers 401",
                    flush=True,
                )
        print(
            f"running {site.site.name}: {len(site.packers)} packers, {len(site.cabinets)} "
            f"cabinets, {len(site.scanners)} scanners; Ctrl-C stops",
            flush=True,
        )
        await stop.wait()
        return 0
    except DriverError as exc:
        print(f"doseline run: {exc}", flush=True)
        return 1
    finally:
        if api_server is not None:
            await api_server.stop()
        await controller.stop()
        controller.close()


def _cmd_run(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    return asyncio.run(run_site(site, ledger_url=args.db, adopt=args.adopt_cabinets))


def _cmd_check_config(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    print(
        f"{args.site}: valid: {len(site.catalogue)} products, {len(site.packers)} packers, "
        f"{len(site.cabinets)} cabinets, {len(site.scanners)} scanners"
    )
    return 0


def add_run_parsers(sub: Any) -> None:
    run = sub.add_parser("run", help="run the controller against the machines of a site file")
    run.add_argument("--site", required=True)
    run.add_argument("--db", default=None, help="ledger URL (default from the site file)")
    run.add_argument(
        "--adopt-cabinets",
        action="store_true",
        help="commissioning: book the pockets' current counts from the store",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a site file")
    check.add_argument("--site", default=DEFAULT_SITE)
    check.set_defaults(func=_cmd_check_config)
