"""`doseline run` serves the API when the site file enables it, and stops it on SIGTERM;
a bad tokens file stops the start, naming the line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.api import hash_token
from tests.api.conftest import TOKENS, auth, tokens_text
from tests.sites import site_dict

REPO = Path(__file__).resolve().parents[2]


def site_file(tmp_path: Path, tokens: str, **api: Any) -> Path:
    raw = site_dict(ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    raw["packers"], raw["cabinets"], raw["scanners"] = [], [], []
    tokens_path = tmp_path / "api-tokens"
    tokens_path.write_text(tokens)
    raw["api"] = {"enabled": True, "port": 0, "tokens_file": str(tokens_path), **api}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


async def start_run(path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        "run",
        "--site",
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # The site file alone decides: no DOSELINE_* setting of this shell leaks in.
        env={k: v for k, v in os.environ.items() if not k.startswith("DOSELINE_")},
    )


@pytest.mark.timeout(60)
async def test_run_serves_the_api_until_sigterm(tmp_path: Path) -> None:
    proc = await start_run(site_file(tmp_path, tokens_text()))
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url = None
        lines: list[str] = []
        while url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "doseline run ended: " + "".join(lines)
            lines.append(line)
            found = re.match(r"api: (http://127\.0\.0\.1:\d+/api/v1) \(4 tokens\)$", line.strip())
            if found:
                url = found.group(1)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            health = await client.get("/health")
            assert health.status_code == 200, health.text
            assert health.json()["controller"] is True and health.json()["ledger"] is True
            jobs = await client.get("/jobs", headers=auth("viewer"))
            assert jobs.status_code == 200 and jobs.json() == {"count": 0, "jobs": []}
            assert (await client.get("/jobs")).status_code == 401
            r = await client.post(
                "/packers/PK1/commands", headers=auth("admin"), json={"command": "stop"}
            )
            assert r.status_code == 404 and r.json()["value"] == "PK1"
            balances = await client.get("/stock/balances", headers=auth("viewer"))
            assert balances.json()["on_hand"] == 0  # `run` books no opening stock
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        err = (await proc.stderr.read()).decode()
        assert code == 0, err[-3000:]
        for token in TOKENS.values():  # no token in clear in anything it printed
            assert token not in err and token not in "".join(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(60)
async def test_run_refuses_a_bad_tokens_file(tmp_path: Path) -> None:
    bad = f"{hash_token('a')} ann admin\n\n{hash_token('b')} bo superuser\n"
    proc = await start_run(site_file(tmp_path, bad))
    out, _err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, out
    assert re.search(
        r"api-tokens line 3: role 'superuser' is not one of viewer, technician, pharmacist,"
        r" admin",
        out.decode(),
    ), out
