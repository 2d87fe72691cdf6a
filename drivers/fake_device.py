"""What every in-memory driver shares: recorded calls, a link that can go down, and
injected failures (see `drivers.fakes`)."""

from __future__ import annotations

from drivers.base import DriverError

Call = tuple[str, tuple[object, ...]]
COUNTER_MODULUS = 2**32
"""Cabinet counters wrap here, as the registers do."""
RESEND_LATER = 207
"""HL7 table 0357 code on an AR that makes a cabinet server resend the event."""


class FakeDevice:
    """Recorded calls, a link that can go down, and injected failures."""

    name: str
    kind = "device"
    #: Whether a failure of the link ends the session (the caller must connect() again,
    #: as with OPC UA, a serial packer or MLLP), or the next call re-opens it (Modbus).
    link_loss_needs_connect = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[Call] = []
        self.connected = False
        self._link_up = True
        self._failures: dict[str, list[Exception]] = {}

    @property
    def link_up(self) -> bool:
        """False: the device is unreachable; connect() and every call raise DriverError."""
        return self._link_up

    @link_up.setter
    def link_up(self, up: bool) -> None:
        self._link_up = up
        self._link_changed()

    def _link_changed(self) -> None:
        """Hook for fakes with a call waiting on the device."""

    def calls_to(self, method: str) -> list[tuple[object, ...]]:
        """The arguments of every recorded call of `method`, in order."""
        return [args for name, args in self.calls if name == method]

    def fail_next(self, method: str, error: Exception | None = None) -> None:
        """The next call of `method` raises `error` (default: a DriverError) and does
        nothing else; several calls queue up."""
        if error is None:
            error = DriverError(f"{self.kind} {self.name} (fake): {method}: injected failure")
        self._failures.setdefault(method, []).append(error)

    def _error(self, operation: str, cause: str) -> DriverError:
        return DriverError(f"{self.kind} {self.name} (fake): {operation}: {cause}")

    def _enter(self, method: str, args: tuple[object, ...], operation: str | None = None) -> None:
        """Record the call, then raise what the device would: an injected failure, the
        link down, or no session."""
        self.calls.append((method, args))
        operation = operation or method
        queued = self._failures.get(method)
        if queued:
            raise queued.pop(0)
        if not self.connected:
            raise self._error(operation, "not connected")
        if not self.link_up:
            if self.link_loss_needs_connect:
                self.connected = False
            raise self._error(operation, "no answer (link down)")

    async def _connect(self) -> None:
        self.calls.append(("connect", ()))
        queued = self._failures.get("connect")
        if queued:
            raise queued.pop(0)
        if not self.link_up:
            self.connected = False
            raise self._error("connect", "cannot connect (link down)")
        self.connected = True

    async def _close(self) -> None:
        self.calls.append(("close", ()))
        self.connected = False
