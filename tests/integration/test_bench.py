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


def test_bench_wardsupply_phase_reports_its_figures(tmp_path: Path) -> None:
    """The ward-supply phase on a small day (the bench runs 250 lines and 3 rounds)."""
    from controller.bench import PHASES, wardsupply

    assert "wardsupply" in PHASES
    result = wardsupply.run(f"sqlite:///{tmp_path / 'ward.db'}", 1, lines=30, rounds=2)
    figures = result["figures"]
    assert figures["lines"] == 30
    assert len(figures["pick_lists"]["rounds_s"]) == 2
    assert figures["pick_lists"]["lists"] == 2  # one per hospital
    assert sum(figures["pick_lists"]["lines_per_list"]) == 30
    scan = figures["scan"]
    assert scan["samples"] == scan["packs"] > 0 and not scan["stopped_early"]
    assert scan["p50_ms"] > 0 and scan["p95_ms"] >= scan["p50_ms"]
    assert figures["dispatch"]["notes"] == figures["receipt"]["notes"] > 0
    assert figures["open_reservations_after"] == 0
    assert isinstance(result["met"], bool) and result["target"]
