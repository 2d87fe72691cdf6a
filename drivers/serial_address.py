"""Whether a text can name a serial line: a device path or a pyserial URL.

pyserial only fails when a line is opened, long after start-up; the site file and
the drivers check the address early with this one rule, so both refuse the same
addresses with the same words.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SERIAL_URL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep", "cp2110")
"""pyserial URL handlers; anything else must be a device path (/dev/ttyUSB0, COM3)."""

_NETWORK_SCHEMES = ("socket", "rfc2217")
"""The handlers that reach a serial device server, and so need a host and a port."""


def serial_address_problem(address: str) -> str | None:
    """Why `address` is neither a serial device path nor a pyserial URL (None if it is
    one), as words that follow the address: "'x' must be ..."."""
    if not address or address != address.strip():
        return "must be a serial device path or a pyserial URL, without spaces around it"
    if "://" not in address:
        return None  # a device path; whether it exists is known only when it is opened
    scheme = address.split("://", 1)[0]
    if scheme not in SERIAL_URL_SCHEMES:
        return (
            "must be a serial device path (/dev/ttyUSB0) or a pyserial URL "
            "(socket://host:port, rfc2217://host:port, loop://)"
        )
    if scheme in _NETWORK_SCHEMES:
        try:
            parts = urlsplit(address)
            port = parts.port
        except ValueError as exc:  # a port that is no number, or out of range
            return f"must be {scheme}://host:port ({exc})"
        if not parts.hostname or port is None:
            return f"must be {scheme}://host:port"
    return None
