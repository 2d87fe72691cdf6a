"""`doseline run` loads the controller's runtime only: the bench and the demo live beside
it and are never imported by it.

Checked in a fresh interpreter, so that what other tests imported does not count. The
import contracts in pyproject.toml say the same statically for the services, the app,
the API and the console; this checks the command itself, lazy imports included.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import controller.cli.run, controller.app, controller.api, controller.console
print(json.dumps(sorted(m for m in sys.modules if m.startswith("controller."))))
"""


def test_the_run_command_imports_neither_the_bench_nor_the_demo() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert "controller.app" in loaded and "controller.api" in loaded
    stray = [m for m in loaded if m.startswith(("controller.bench", "controller.demo"))]
    assert stray == []
