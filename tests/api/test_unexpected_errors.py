"""An unexpected failure in a route: a JSON 500 without details, and a log line that
names the route's template, never the path as sent (it may quote ids or control
characters)."""

from __future__ import annotations

import logging

import pytest

from controller.api import create_app
from controller.app import Controller
from controller.config import parse_site
from tests.api.conftest import served, tokens
from tests.sites import site_dict


async def test_an_unexpected_error_is_a_bare_500_and_logs_the_route_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = Controller(parse_site(site_dict()), ledger_url="sqlite://")
    try:
        app = create_app(
            site=controller.site, ledger=controller.ledger, store=controller.store, tokens=tokens()
        )

        async def broken(item: str) -> None:
            raise RuntimeError(f"secret detail about {item}")

        app.add_api_route("/api/v1/broken/{item}", broken, methods=["GET"])
        with caplog.at_level(logging.ERROR, logger="doseline.api"):
            async with served(app) as client:
                r = await client.get("/broken/PT-19121212-1212")
        assert r.status_code == 500
        assert r.json()["error"] == "internal error; the controller's log has the details"
        assert "secret detail" not in r.text
        logged = " | ".join(rec.getMessage() for rec in caplog.records)
        assert "GET /api/v1/broken/{item} failed: RuntimeError" in logged
        assert "PT-19121212-1212" not in logged and "secret detail" not in logged
    finally:
        controller.close()
