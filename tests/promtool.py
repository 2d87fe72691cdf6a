"""Finds Prometheus' tools for the tests, installing Debian's `prometheus` package
through `.ci/install-prometheus` when they are missing. Where that cannot be done the
test skips with the reason, except under CI=true, where it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / ".ci" / "install-prometheus"


def _find(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None and os.access(f"/usr/bin/{tool}", os.X_OK):
        found = f"/usr/bin/{tool}"
    return found


def prometheus_tool(tool: str) -> str:
    """The path of `promtool` or `prometheus`."""
    found = _find(tool)
    if found is not None:
        return found
    proc = subprocess.run(
        [str(INSTALLER)], capture_output=True, text=True, timeout=840, check=False
    )
    found = _find(tool)
    if found is not None:
        return found
    reason = (
        f"{tool} is missing and {INSTALLER.relative_to(ROOT)} could not install it "
        f"(exit {proc.returncode}): {proc.stderr.strip()[-400:]}"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {tool} is required: {reason}")
    pytest.skip(reason)


def promtool() -> str:
    return prometheus_tool("promtool")
