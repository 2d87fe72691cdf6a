"""Log output: human text by default, one JSON object per line when asked.

Whatever the format, a patient's personal identity number never reaches a log in
clear: messages, their arguments and tracebacks are scrubbed on the way out. The
controller itself only handles pseudonyms (`PT-...`) after intake; this is the net
under the code that might one day log a raw message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
REDACTED = "<personal-id>"

# Swedish personal identity and coordination numbers: (YY)YYMMDD, optional - or +,
# four digits. The day may be 61-91 (coordination numbers). Kept narrow so that
# GTINs (14 digits), batch numbers, counts and ids with a date inside (a job
# MED1-20261123-0800) are left alone.
_PERSONAL_ID = re.compile(
    r"(?<![\w-])(?:19|20)?\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]|6[1-9]|[78]\d|9[01])"
    r"[-+]?\d{4}(?![\w])"
)
# Record fields every LogRecord has; anything else was passed in `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    """`text` with every personal identity number replaced."""
    return _PERSONAL_ID.sub(REDACTED, text)


class RedactPersonalIds(logging.Filter):
    """Scrubs the formatted message (and the traceback) of a record before output."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, message, the
    record's `extra=` fields, and the traceback as `exc` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    )
    handler.addFilter(RedactPersonalIds())
    return handler


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configures the root logger once per process (a root that already has handlers,
    as under a test runner, is left as it is)."""
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[make_handler(fmt)])
    # Library chatter (connection retries, frame dumps) is reported by the drivers as
    # DriverError with context; keep their own loggers to real problems.
    for noisy in ("asyncua", "pymodbus", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
