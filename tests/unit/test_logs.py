"""Log output: JSON lines when asked, and no personal identity number in clear."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from controller.logs import REDACTED, make_handler, redact

REPO = Path(__file__).resolve().parents[2]


def logger_to(stream: io.StringIO, fmt: str) -> logging.Logger:
    log = logging.getLogger(f"doseline.test.{fmt}.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.handlers = [make_handler(fmt, stream)]
    return log


@pytest.mark.parametrize(
    "text",
    [
        "patient 19121212-1212 admitted",
        "patient 191212121212 admitted",
        "patient 121212-1212 admitted",
        "patient 121212+1212 admitted (over 100)",
        "coordination number 19121272-1212",
    ],
)
def test_personal_identity_numbers_are_redacted(text: str) -> None:
    clean = redact(text)
    assert REDACTED in clean and "1212" not in clean.replace("admitted", "")


@pytest.mark.parametrize(
    "text",
    [
        "GTIN 07359990000013 batch N0201A",  # 14 digits: a product, not a person
        "withdrawals:CAB-MED1:1:4294967290-4294967295",
        "refill CAB-MED1-P01-20261122T080000-1",
        "job MED1-20261123-0800",
    ],
)
def test_product_and_stock_numbers_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_json_lines_carry_level_logger_message_and_extras() -> None:
    stream = io.StringIO()
    log = logger_to(stream, "json")
    log.warning("pocket %d of %s low", 3, "CAB-MED1", extra={"cabinet": "CAB-MED1", "count": 2})
    record = json.loads(stream.getvalue())
    assert record["level"] == "WARNING"
    assert record["message"] == "pocket 3 of CAB-MED1 low"
    assert record["cabinet"] == "CAB-MED1" and record["count"] == 2
    assert record["ts"].endswith("+00:00")


def test_identity_numbers_are_scrubbed_from_arguments_and_tracebacks() -> None:
    for fmt in ("json", "text"):
        stream = io.StringIO()
        log = logger_to(stream, fmt)
        try:
            raise ValueError("PID-3 was 19121212-1212")
        except ValueError:
            log.exception("order from %s refused", "19121212-1212")
        out = stream.getvalue()
        assert "19121212-1212" not in out and REDACTED in out
        if fmt == "json":
            record = json.loads(out)
            assert "ValueError" in record["exc"] and REDACTED in record["exc"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json, got 'xml'"):
        make_handler("xml")


def test_the_command_line_writes_json_logs(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "--log-format",
            "json",
            "--log-level",
            "INFO",
            "ledger",
            "init",
            "--site",
            "config/demo.yaml",
            "--db",
            f"sqlite:///{tmp_path / 'ledger.db'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stdout + result.stderr  # the migrations log at INFO
    for line in lines:
        assert json.loads(line)["level"] in ("INFO", "WARNING", "ERROR")
