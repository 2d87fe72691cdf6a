"""`doseline demo --keep`: the console's address and a token per role are printed, the
console answers during the day, stays up after it, and Ctrl-C ends the run cleanly."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _sign_in(base: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=20) as http:
        _log_in(http, token)
        yield http


def _log_in(http: httpx.Client, token: str) -> None:
    form = http.get("/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce is not None
    r = http.post("/console/login", data={"csrf": nonce.group(1), "token": token})
    assert r.status_code == 303, r.text


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_demo_keeps_the_console_up_until_ctrl_c(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--minutes", "0.3", "--keep",
         "--db", url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    base = None
    tokens: dict[str, str] = {}
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            found = re.match(r"console: (http://127\.0\.0\.1:\d+)/console/ ", line)
            if found:
                base = found.group(1)
            role = re.match(r"\s+sign in as (\w+):demo\s+with the token (\S+)$", line)
            if role:
                tokens[role.group(1)] = role.group(2)
            if len(tokens) == 4:
                break
        assert base and set(tokens) == {"viewer", "technician", "pharmacist", "admin"}, lines
        with _sign_in(base, tokens["viewer"]) as http:  # during the day
            floor = http.get("/console/floor")
            assert floor.status_code == 200 and "PACKER-1" in floor.text
            assert http.get("/console/orders").status_code == 403
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "stays up until Ctrl-C" in line:
                break
        else:
            pytest.fail("the demo ended without keeping the console up:\n" + "\n".join(lines))
        time.sleep(0.5)
        with _sign_in(base, tokens["pharmacist"]) as http:  # after the day
            orders = http.get("/console/orders")
            assert orders.status_code == 200 and "pharmacist:demo" in orders.text
            assert "/docs-assets/swagger-ui-bundle.js" in http.get("/docs").text
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out[-3000:]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
