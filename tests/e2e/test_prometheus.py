"""A real Prometheus scrapes a running demo; every query of every Grafana panel returns
data, and every metric every alert rule names is there.

Prometheus is Debian's package, installed by `.ci/install-prometheus` when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promtool import prometheus_tool

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]
SELECTOR = re.compile(r"\bdoseline_[a-z0-9_:]+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str, at: float) -> dict[str, Any]:
        params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        answer = get(f"{self.base}/api/v1/query?{params}")
        assert answer["status"] == "success", f"{expr}: {answer}"
        return dict(answer["data"])

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("Prometheus did not become ready")


@pytest.fixture
def demo_and_prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, float, list[str]]]:
    """Starts the demo, then Prometheus scraping it every second; yields the moment
    late in the demo day (its 21:00 line) at which the queries are made."""
    binary = prometheus_tool("prometheus")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "demo",
            "--minutes",
            "0.5",
            "--db",
            f"sqlite:///{tmp_path / 'demo.db'}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    prometheus: subprocess.Popen[str] | None = None
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        target = None
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            found = re.match(r"metrics: http://(\S+)/metrics", line)
            if found:
                target = found.group(1)
                break
        assert target, "the demo printed no metrics address:\n" + "\n".join(lines)
        shutil.copytree(DOCKER / "prometheus" / "rules", tmp_path / "rules")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules/doseline.yml"],
            "scrape_configs": [{"job_name": "doseline", "static_configs": [{"targets": [target]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = Prometheus(f"http://127.0.0.1:{port}")
        server.wait_ready()
        late = None
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if re.match(r"\s+21:00\s", line):
                late = time.time()
                break
        assert late is not None, "the demo day did not reach 21:00:\n" + "\n".join(lines)
        time.sleep(3)  # a few more scrapes; the queries look at `late` + 2 s
        yield server, late + 2, lines
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
        assert demo.wait(timeout=200) == 0, "\n".join(lines[-40:])
    finally:
        if demo.stdout is not None:
            demo.stdout.close()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def panel_queries() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((DOCKER / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):  # a row has none
                found.append((path.stem, panel["title"], target["expr"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DOCKER / "prometheus" / "rules" / "doseline.yml").read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def test_every_panel_and_every_alert_rule_has_data_from_a_running_demo(
    demo_and_prometheus: tuple[Prometheus, float, list[str]],
) -> None:
    server, at, _lines = demo_and_prometheus
    empty = []
    for board, title, expr in panel_queries():
        if not server.query(expr, at)["result"]:
            empty.append(f"{board} / {title}: {expr}")
    assert not empty, "panels that query nothing:\n" + "\n".join(empty)

    missing = []
    for name, expr in rule_expressions():
        server.query(expr, at)  # evaluates without error
        # An alert that does not fire returns nothing; what it watches must exist.
        for metric in sorted(set(SELECTOR.findall(expr))):
            if ":" in metric:  # a recording rule, evaluated by Prometheus itself
                continue
            if not server.query(metric, at)["result"]:
                missing.append(f"{name}: {metric}")
    assert not missing, "alert rules watching metrics with no data:\n" + "\n".join(missing)
