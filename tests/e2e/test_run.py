"""`doseline run` against a separately started plant, as a site would run it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_run_polls_the_site_and_stops_cleanly(tmp_path: Path) -> None:
    plant = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.plant",
            "--site",
            "config/demo.yaml",
            "--free-ports",
            "--day-seconds",
            "120",
            "--exit-on-stdin-close",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert plant.stdout is not None
        ready = json.loads(plant.stdout.readline())["ready"]
        site = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
        for machine in site["packers"]:
            machine["address"] = ready["packers"][machine["name"]]
        for machine in site["cabinets"]:
            machine["address"] = ready["cabinets"][machine["name"]]
        for machine in site["scanners"]:
            machine["address"] = ready["scanners"][machine["name"]]["address"]
        db = f"sqlite:///{tmp_path / 'site.db'}"
        site["ledger"]["url"] = db
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(site))

        init = subprocess.run(
            [
                sys.executable,
                "-m",
                "controller.cli",
                "ledger",
                "init",
                "--site",
                str(site_file),
                "--opening-stock",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stderr
        assert f"opening stock: {len(site['stock'])} lots" in init.stdout

        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller.cli",
                "run",
                "--site",
                str(site_file),
                "--adopt-cabinets",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert run.stdout is not None
        metrics_url = None
        for line in run.stdout:
            found = re.match(r"metrics: (http://\S+)", line)
            if found:
                metrics_url = found.group(1)
            if line.startswith("running"):
                break
        assert metrics_url is not None
        scraped = ""
        for _ in range(50):
            with urllib.request.urlopen(metrics_url, timeout=5) as response:
                scraped = response.read().decode()
            if re.search(
                r'doseline_cabinet_withdrawals_total\{cabinet="CAB-MED1"\} [1-9]', scraped
            ):
                break
            time.sleep(0.2)
        assert 'doseline_cabinet_up{cabinet="CAB-GER3"} 1.0' in scraped
        assert re.search(
            r'doseline_cabinet_withdrawals_total\{cabinet="CAB-MED1"\} [1-9]', scraped
        ), "no withdrawal booked"
        assert 'doseline_packer_state{packer="PACKER-1"}' not in scraped  # no job yet

        run.send_signal(signal.SIGTERM)
        _out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err[-3000:]

        verified = subprocess.run(
            [sys.executable, "-m", "controller.cli", "ledger", "verify", "--db", db],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout
    finally:
        if plant.stdin is not None:
            plant.stdin.close()
        plant.terminate()
        plant.wait(timeout=30)
        if plant.stdout is not None:
            plant.stdout.close()
