"""`doseline bench` runs and prints a JSON report; its figures are never asserted (the
machine decides them), only that the report has the shape docs/performance.md gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_ledger_phase_prints_a_json_report(tmp_path: Path) -> None:
    out = f"{tmp_path}/report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "bench",
            "--only",
            "ledger",
            "--seconds",
            "1",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    with open(out, encoding="utf-8") as file:
        assert json.load(file) == report

    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["python"]
    assert set(machine["versions"]) >= {"sqlalchemy", "asyncua", "pymodbus"}
    assert report["options"]["phases"] == ["ledger"]
    [phase] = report["phases"]
    assert phase["phase"] == "ledger"
    assert phase["db"] == "sqlite (temporary file)"
    assert set(phase["figures"]) >= {
        "raw_commits_per_s",
        "reserve_and_post_per_s",
        "ledger_commands_per_s",
        "reserve_latency",
        "post_latency",
    }
    assert phase["figures"]["raw_commits_per_s"] > 0
    assert phase["figures"]["reserve_and_post_per_s"] > 0
    assert isinstance(phase["met"], bool)
    assert isinstance(phase["ratio"], float)
    assert phase["target"]
    assert phase["peak_rss_mib"] > 0
    assert set(report["summary"]) == {"met", "missed", "error", "skipped"}
