"""The HTTP API fuzzed from its own OpenAPI description with schemathesis.

The description is the real one: `create_app(...).openapi()`, the very document the
served app gives at `/openapi.json` (checked below). Every operation gets generated
requests, valid and invalid (schemathesis' positive and negative modes, plus its
coverage phase of boundary values), sent over a real socket to uvicorn serving the app
over a seeded ledger (orders, a job, a purchase order, verified and blocked packs).
Path parameters are now and then replaced by ids that exist, so the found paths are
fuzzed too, not only the 404s.

Each operation runs with an admin token and with a viewer token (which must get 403
wherever a higher role is needed, before anything is done). The checks: no 5xx, the
status code is documented, the content type and the body match the documented
response schema. The run is bounded (`MAX_EXAMPLES` per operation and mode, a fixed
seed, no example database) so CI sees the same requests every time.

The ledger is SQLite and, for the admin run, PostgreSQL as well where a server answers
(some inputs, NUL characters for one, only break there). The PostgreSQL run is skipped
when no server answers, except under CI=true, as everywhere in the suite.

Regressions of what the fuzzing found are plain tests in test_api_regressions.py; the
seeded server is in api_server.py and conftest.py.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from controller.api import create_app
from controller.ledger import Ledger
from controller.ledger.engine import make_engine
from controller.packing.store import PackingStore
from tests.api.conftest import TOKENS, tokens
from tests.fuzz.api_server import (
    ALERT_ID,
    BAD_SERIAL,
    GOOD_SERIAL,
    JOB_ID,
    PACKER,
    fuzz_site,
)
from tests.fuzz.conftest import Served
from tests.sites import METO, PARA

# Per operation and generation mode. DOSELINE_FUZZ_EXAMPLES and DOSELINE_FUZZ_SEED
# run a longer or another search by hand; CI uses the defaults and so the same requests.
MAX_EXAMPLES = int(os.environ.get("DOSELINE_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("DOSELINE_FUZZ_SEED", "20261123"))

KNOWN: dict[str, list[Any]] = {
    "job_id": [JOB_ID],
    "name": [PACKER],
    "id": [ALERT_ID],
    "gtin": [PARA, METO],
    "serial": [GOOD_SERIAL, BAD_SERIAL],
    "number": [],  # the purchase order's number, known once the ledger is seeded
}


def _openapi() -> dict[str, Any]:
    """The app's own OpenAPI document (routes only: the ledger is never touched)."""
    ledger = Ledger(make_engine("sqlite://"))
    try:
        app = create_app(
            site=fuzz_site(), ledger=ledger, store=PackingStore(ledger), tokens=tokens()
        )
        return app.openapi()
    finally:
        ledger.engine.dispose()


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES}}
    ),
)
# HL7 v2 bodies of POST /orders are text; schemathesis sends text/plain bodies as is.
schemathesis.serializer.alias("x-application/hl7-v2+er7", "text/plain")
schemathesis.serializer.alias("application/hl7-v2+er7", "text/plain")


NUL = "\x00"  # PostgreSQL refuses it in text; SQLite stores it


def _variants(values: dict[str, Any], known: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The generated values; each with one value swapped for an id that exists; each
    with one text value given a NUL character (rare in generated text, and a value that
    only PostgreSQL refuses)."""
    out = [values]
    for name, value in values.items():
        out += [{**values, name: other} for other in known.get(name, [])]
        if isinstance(value, str) and NUL not in value:
            out.append({**values, name: value + NUL})
    return out


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[Any]:
    if not path_parameters:
        return st.just(path_parameters)
    return st.sampled_from(_variants(path_parameters, KNOWN))


@schema.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[Any]:
    if not query:
        return st.just(query)
    return st.sampled_from(_variants(query, {}))


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    if not isinstance(body, dict) or not body:
        return st.just(body)
    return st.sampled_from(_variants(body, {}))


@pytest.fixture(scope="module")
def admin_api(api: Served) -> Served:
    KNOWN["number"] = [api.number]
    return api


@pytest.fixture(scope="module")
def viewer_api(sqlite_api: Served) -> Served:
    KNOWN["number"] = [sqlite_api.number]
    return sqlite_api


# ----------------------------------------------------------------------------- the tests

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Routes that hand the request to a running controller (docs/api.md, "Without a running
# controller"): over a ledger alone they answer 503 by design, with an error naming
# what needs the controller. That one answer is checked here for what it must be, and
# then validated with every other check; any other 5xx of these routes, and every 5xx
# of every other route, still fails.
NEEDS_CONTROLLER = {
    ("POST", "/api/v1/packers/{name}/commands"): "a command to packer",
    ("POST", "/api/v1/refills/scan"): "a scan",
    ("POST", "/api/v1/verification/undo"): "an undo of a decommission",
}
H11_REFUSAL = b"Invalid HTTP request received."
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


def call(case: schemathesis.Case, base_url: str, role: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS[role]}"}
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    if response.status_code == 400 and response.content == H11_REFUSAL:
        # uvicorn's HTTP parser (h11) refused the request itself (a header name that is
        # not a token, an empty Content-Length) before the app saw it: there is no API
        # answer to check. The app never answers 400 (errors.py makes body decoding
        # errors 422), so this text is the server's alone.
        return
    checks = CHECKS
    what = NEEDS_CONTROLLER.get((case.method.upper(), case.path))
    if response.status_code == 503 and what is not None:
        body = response.json()
        assert body["error"].startswith(what) and "needs a running controller" in body["error"]
        checks = [check for check in CHECKS if check is not not_a_server_error]
    required = case.operation.definition.raw.get("x-required-role")
    if role == "viewer" and required not in (None, "viewer"):
        # A route above the viewer's role does nothing for it: 403, or a refusal of the
        # request itself (a bad body or method, a path that is no route) before the role
        # is looked at, or 401 where schemathesis left the token out. Never an answer
        # that depends on the ledger (200, 404, 409).
        refused = response.status_code in (401, 403, 405, 413, 415, 422)
        no_route = response.status_code == 404 and response.json().get("field") == "path"
        assert refused or no_route, (
            f"viewer got {response.status_code} on {case.method} {case.path} "
            f"(needs {required}): {response.text[:200]}"
        )
    case.validate_response(response, checks=checks, headers=headers)


@schema.parametrize()
@FUZZ
def test_api_as_admin(case: schemathesis.Case, admin_api: Served) -> None:
    call(case, admin_api.root, "admin")


@schema.parametrize()
@FUZZ
def test_api_as_viewer(case: schemathesis.Case, viewer_api: Served) -> None:
    call(case, viewer_api.root, "viewer")


def test_the_fuzzed_description_is_the_served_one(sqlite_api: Served) -> None:
    served = httpx.get(f"{sqlite_api.root}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == OPENAPI


# The routes docs/api.md lists (and ward debiting, which it does not list yet).
DOCUMENTED = {
    ("POST", "/orders"),
    ("GET", "/orders"),
    ("POST", "/orders/review"),
    ("POST", "/orders/{id}/amend"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("POST", "/packers/{name}/commands"),
    ("GET", "/stock/balances"),
    ("GET", "/stock/expiring"),
    ("GET", "/stock/cover"),
    ("GET", "/stock/compliance"),
    ("POST", "/stock/moves"),
    ("POST", "/stock/waste-expired"),
    ("GET", "/duty/preparedness"),
    ("PUT", "/duty/preparedness"),
    ("GET", "/duty/crisis"),
    ("POST", "/duty/crisis"),
    ("POST", "/duty/crisis/{crisis_id}/end"),
    ("GET", "/debiting"),
    ("GET", "/refills"),
    ("POST", "/refills/scan"),
    ("GET", "/verification/alerts"),
    ("POST", "/verification/alerts/{id}/close"),
    ("GET", "/verification/queue"),
    ("GET", "/verification/packs/{gtin}/{serial}"),
    ("POST", "/verification/undo"),
    ("GET", "/purchasing/suppliers"),
    ("GET", "/purchasing/suppliers/reliability"),
    ("GET", "/purchasing/orders"),
    ("POST", "/purchasing/orders"),
    ("GET", "/purchasing/orders/{number}"),
    ("POST", "/purchasing/orders/{number}/deliveries"),
    ("POST", "/purchasing/orders/{number}/close"),
    ("GET", "/audit"),
    ("GET", "/health"),
    ("POST", "/ward-supply/requisitions"),
    ("GET", "/ward-supply/requisitions"),
    ("GET", "/ward-supply/requisitions/{number}"),
    ("GET", "/ward-supply/review"),
    ("POST", "/ward-supply/review/approve-routine"),
    ("POST", "/ward-supply/lines/{id}/decision"),
    ("POST", "/ward-supply/pick-lists"),
    ("GET", "/ward-supply/pick-lists"),
    ("GET", "/ward-supply/pick-lists/{number}"),
    ("POST", "/ward-supply/pick-lists/{number}/scans"),
    ("POST", "/ward-supply/pick-lists/{number}/dispatch"),
    ("GET", "/ward-supply/notes"),
    ("GET", "/ward-supply/notes/{number}"),
    ("GET", "/ward-supply/notes/{number}/print"),
    ("POST", "/ward-supply/notes/{number}/receipt"),
    ("POST", "/ward-supply/receipts/scan"),
    ("GET", "/ward-supply/drug-rooms"),
    ("POST", "/ward-supply/drug-rooms/{code}/top-up"),
    ("GET", "/ward-supply/drug-rooms/{code}/par"),
    ("GET", "/ward-supply/reliability"),
    ("GET", "/duty/shortages"),
    ("POST", "/duty/shortages"),
    ("PATCH", "/duty/shortages/{shortage_id}"),
    ("POST", "/duty/shortages/{shortage_id}/close"),
    ("GET", "/duty/rationing"),
    ("GET", "/duty/rationing/draws"),
    ("POST", "/duty/rationing"),
    ("POST", "/duty/rationing/{rule_id}/end"),
    ("GET", "/duty/licences"),
    ("POST", "/duty/licences"),
    ("POST", "/duty/licences/{number}/revoke"),
    ("GET", "/duty/scope"),
    ("PUT", "/duty/scope/products/{gtin}"),
    ("DELETE", "/duty/scope/products/{gtin}"),
    ("PUT", "/duty/scope/categories/{category}"),
    ("DELETE", "/duty/scope/categories/{category}"),
    ("PUT", "/duty/products/{gtin}/durability"),
    ("GET", "/duty/exemptions"),
    ("POST", "/duty/exemptions"),
    ("GET", "/duty/exemptions/{gtin}"),
    ("POST", "/duty/exemptions/{gtin}/review"),
    ("PATCH", "/duty/exemptions/{gtin}"),
    ("POST", "/duty/exemptions/{gtin}/revoke"),
    ("GET", "/duty/external-use"),
    ("POST", "/duty/external-use"),
    ("POST", "/duty/external-use/import"),
    ("GET", "/duty/followup"),
}


def test_every_route_is_fuzzed() -> None:
    """Every documented route is in the description the fuzzing works from (a route
    left out of it would be left out of the fuzzing too)."""
    described = {
        (m.upper(), p.removeprefix("/api/v1")) for p, ops in OPENAPI["paths"].items() for m in ops
    }
    assert described == DOCUMENTED
    assert {(m, p.removeprefix("/api/v1")) for m, p in NEEDS_CONTROLLER} <= described
