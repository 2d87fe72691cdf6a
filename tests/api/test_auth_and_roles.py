"""Bearer tokens and roles: who may call what; the tokens file format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from controller.api import Role, TokenFileError, hash_token, load_tokens, parse_tokens
from controller.config import ApiConfig
from tests.api.conftest import ROLES, TODAY, TOKENS, USERS, Api, tokens_text
from tests.api.messages import good_bundle

# (method, path, least role, request body)
ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("POST", "/orders?ward=W1", "technician", {"fhir": True}),
    ("GET", "/orders", "pharmacist", None),
    ("POST", "/orders/review", "pharmacist", {"order_ids": [1], "approve": True}),
    ("GET", "/jobs", "viewer", None),
    ("GET", "/jobs/W1-nope", "viewer", None),
    ("POST", "/packers/PK1/commands", "technician", {"command": "stop"}),
    ("GET", "/stock/balances", "viewer", None),
    ("GET", "/stock/expiring", "viewer", None),
    ("GET", "/stock/cover", "viewer", None),
    ("GET", "/stock/compliance", "viewer", None),
    ("GET", "/debiting", "pharmacist", None),
    ("GET", "/refills", "viewer", None),
    ("POST", "/refills/scan", "technician", {"station": "HH1", "data": "PL:1"}),
    ("GET", "/audit", "pharmacist", None),
]


async def call(api: Api, method: str, path: str, role: str | None, body: Any) -> Any:
    if method == "GET":
        return await api.get(path, role)
    if body == {"fhir": True}:
        return await api.post(
            path, role, content=json.dumps(good_bundle(TODAY)), content_type="application/json"
        )
    return await api.post(path, role, json=body)


async def test_every_route_checks_the_role_of_the_token(ledger_api: Api) -> None:
    order = {r: i for i, r in enumerate(ROLES)}
    for method, path, least, body in ROUTES:
        for role in ROLES:
            r = await call(ledger_api, method, path, role, body)
            where = f"{method} {path} as {role}: {r.status_code} {r.text}"
            if order[role] < order[least]:
                assert r.status_code == 403, where
                assert r.json() == {
                    "error": f"role {least} or above is needed; {USERS[role]} has role {role}",
                    "field": "role",
                    "value": role,
                }, where
            else:
                assert r.status_code not in (401, 403), where
                assert r.status_code < 500 or r.status_code == 503, where


async def test_role_boundaries_on_the_order_routes(ledger_api: Api) -> None:
    api = ledger_api
    body = json.dumps(good_bundle(TODAY))
    # A viewer cannot file orders; a technician can.
    r = await api.post("/orders?ward=W1", "viewer", content=body, content_type="application/json")
    assert r.status_code == 403 and "technician" in r.json()["error"]
    r = await api.post(
        "/orders?ward=W1", "technician", content=body, content_type="application/json"
    )
    assert r.status_code == 201, r.text
    ids = r.json()["added"]
    # A technician can neither list nor review them; a pharmacist and an admin can.
    assert (await api.get("/orders", "technician")).status_code == 403
    r = await api.post("/orders/review", "technician", json={"order_ids": ids, "approve": True})
    assert r.status_code == 403 and "pharmacist" in r.json()["error"]
    r = await api.post("/orders/review", "pharmacist", json={"order_ids": ids[:1], "approve": True})
    assert r.status_code == 200 and r.json()["by"] == USERS["pharmacist"]
    r = await api.post(
        "/orders/review", "admin", json={"order_ids": ids[1:], "approve": False, "note": "stop"}
    )
    assert r.status_code == 200 and r.json()["by"] == USERS["admin"]
    # The audit trail is for pharmacists and admins only.
    assert (await api.get("/audit", "technician")).status_code == 403
    assert (await api.get("/audit", "pharmacist")).status_code == 200


async def test_missing_or_unknown_tokens_get_401(ledger_api: Api) -> None:
    client = ledger_api.client
    r = await client.get("/jobs")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["field"] == "Authorization" and "Bearer" in r.json()["error"]

    for header in (
        "Bearer not-a-token",
        f"Bearer {hash_token(TOKENS['admin'])}",  # the hash is not the token
        f"Basic {TOKENS['admin']}",  # the right secret, the wrong scheme
        "Bearer",
    ):
        r = await client.get("/jobs", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.headers["www-authenticate"].startswith("Bearer"), header
        assert TOKENS["admin"] not in r.text and "not-a-token" not in r.text

    # Health needs no token, and the machine routes say what they need.
    r = await client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert r.json()["ledger"] is True and r.json()["controller"] is False
    root = await client.get(client.base_url.copy_with(path="/health"))
    assert root.status_code == 200 and root.json()["site"] == "Test pharmacy"


def test_tokens_file_is_parsed_into_users_and_roles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hash_token("s3cret") == hashlib.sha256(b"s3cret").hexdigest()
    tokens = parse_tokens(tokens_text(), source="tokens.txt")
    assert len(tokens) == 4
    for role in ROLES:
        user = tokens.lookup(TOKENS[role])
        assert user is not None and user.name == USERS[role] and user.role.label == role
    assert tokens.lookup("tok-admin") is None
    assert tokens.lookup(hash_token(TOKENS["admin"])) is None
    assert Role.ADMIN > Role.PHARMACIST > Role.TECHNICIAN > Role.VIEWER

    path = tmp_path / "tokens"
    path.write_text(tokens_text())
    from_file = load_tokens(ApiConfig(tokens_file=str(path)), environ={})
    assert from_file.lookup(TOKENS["technician"]) == tokens.lookup(TOKENS["technician"])

    # Without a file, the environment variable; its lines may be separated by ';'.
    env = f"{hash_token('a')} ann pharmacist;{hash_token('b')} bo viewer"
    from_env = load_tokens(ApiConfig(tokens_env="MY_TOKENS"), environ={"MY_TOKENS": env})
    ann = from_env.lookup("a")
    assert ann is not None and ann.name == "ann" and ann.role is Role.PHARMACIST
    monkeypatch.setenv("DOSELINE_API_TOKENS", env)
    assert len(load_tokens(ApiConfig())) == 2
    monkeypatch.delenv("DOSELINE_API_TOKENS")
    assert len(load_tokens(ApiConfig())) == 0

    with pytest.raises(TokenFileError, match=r"cannot read"):
        load_tokens(ApiConfig(tokens_file=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"{hash_token('x')} ann", r"line 3: expected '<sha256-hex> <user> <role>', found 2"),
        ("s3cret ann admin", r"line 3: token hash 's3cret' is not 64 lower-case hex digits"),
        (f"{hash_token('x')} ann nurse", r"line 3: role 'nurse' is not one of viewer, "),
        (f"{hash_token('x')} 'ann' admin", r"line 3: user \"'ann'\" must be"),
        (f"{hash_token('ok')} bo viewer", r"line 3: the same token hash as line 2"),
        (f"{hash_token('x').upper()} ann admin", r"line 3: token hash '[0-9A-F]{8}\.\.\.' is"),
    ],
)
def test_tokens_file_refuses_a_bad_line_naming_its_number(line: str, message: str) -> None:
    text = f"# tokens\n{hash_token('ok')} ann viewer\n{line}\n"
    with pytest.raises(TokenFileError, match=message) as caught:
        parse_tokens(text, source="/etc/doseline/tokens")
    assert str(caught.value).startswith("/etc/doseline/tokens line 3: ")
