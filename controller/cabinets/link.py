"""The state of one cabinet's link, as its polls show it.

A cabinet can answer Modbus and still be of no use: its door is open, its fridge is too
warm, it reports a fault, or its own controller hung while the Modbus stack still answers
(seen as a heartbeat register that stops moving). A failed poll alone is not an outage:
the link is taken as offline only after several failed polls in a row, so one lost
answer on a busy bus does not make a pocket look empty.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from transitions import Machine

from controller.metrics import Metrics
from drivers.base import CabinetStatus, CabinetStatusBit

log = logging.getLogger("doseline.cabinets")


class LinkState(enum.StrEnum):
    OFFLINE = "offline"
    ONLINE = "online"
    DEGRADED = "degraded"
    DOOR_OPEN = "door_open"
    TEMPERATURE_ALARM = "temperature_alarm"


S = LinkState
ANSWERED = [S.ONLINE, S.DEGRADED, S.DOOR_OPEN, S.TEMPERATURE_ALARM]

# The first row of a trigger whose conditions hold wins, so for an answered poll the row
# order is the priority order. A row whose source is its destination changes nothing.
LINK_TRANSITIONS: list[dict[str, Any]] = [
    {
        "trigger": "_answered",
        "source": "*",
        "dest": S.TEMPERATURE_ALARM,
        "conditions": "_temperature_alarm",
    },
    {"trigger": "_answered", "source": "*", "dest": S.DOOR_OPEN, "conditions": "_door_open"},
    {"trigger": "_answered", "source": "*", "dest": S.DEGRADED, "conditions": "_unhealthy"},
    {"trigger": "_answered", "source": "*", "dest": S.ONLINE},
    {"trigger": "_unanswered", "source": ANSWERED, "dest": S.OFFLINE, "conditions": "_gave_up"},
    {"trigger": "_unanswered", "source": ANSWERED, "dest": S.DEGRADED},
    {"trigger": "_unanswered", "source": S.OFFLINE, "dest": None},
]


class CabinetLink:
    """Turns each poll's outcome into one of five link states.

    Every change, and only a change, is logged once, counted, shown in the state gauges
    and passed to `on_change(old, new, reason)`. A poll that keeps the state logs nothing,
    so a long outage is one warning, not one per poll.
    """

    state: LinkState
    # Triggers added by the state machine, from LINK_TRANSITIONS; call poll_ok/poll_failed.
    _answered: Callable[[], bool]
    _unanswered: Callable[[], bool]

    def __init__(
        self,
        cabinet: str,
        metrics: Metrics,
        *,
        offline_after: int = 3,
        heartbeat_stale_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if offline_after < 1:
            raise ValueError(f"offline_after must be at least 1, got {offline_after!r}")
        if not heartbeat_stale_s > 0:
            raise ValueError(f"heartbeat_stale_s must be above 0, got {heartbeat_stale_s!r}")
        self.cabinet = cabinet
        self.metrics = metrics
        self.offline_after = offline_after
        self.heartbeat_stale_s = heartbeat_stale_s
        self.clock = clock
        self.on_change: Callable[[str, str, str], None] | None = None
        self.failures = 0  # failed polls in a row
        self.last_ok = False
        self._status: CabinetStatus | None = None
        self._heartbeat: int | None = None
        self._heartbeat_moved_at = 0.0
        self._polled_at = 0.0  # clock at the last answered poll
        self._away_since = clock()  # when the link last left "online" (or was created)
        self.machine = Machine(
            model=self,
            states=LinkState,
            transitions=LINK_TRANSITIONS,
            initial=S.OFFLINE,
            auto_transitions=False,
        )
        for state in LinkState:  # every series exists from the start, so rate() works
            self.metrics.cabinet_link_transitions.labels(cabinet, state.value)
        self._show_state()
        self.metrics.cabinet_up.labels(cabinet).set(0)

    @property
    def reachable(self) -> bool:
        """Whether polls are getting answers right now."""
        return self.state is not S.OFFLINE and self.last_ok

    def poll_ok(self, status: CabinetStatus) -> LinkState:
        """Takes an answered poll; returns the state after it."""
        now = self.clock()
        if self._heartbeat is None or status.heartbeat != self._heartbeat:
            # Any new value is movement, the wrap 65535 -> 0 included. The first poll
            # has nothing to compare with and is taken as moving.
            self._heartbeat = status.heartbeat
            self._heartbeat_moved_at = now
        self.failures = 0
        self.last_ok = True
        self._status = status
        self._polled_at = now
        self.metrics.cabinet_up.labels(self.cabinet).set(1)
        self.metrics.cabinet_temperature.labels(self.cabinet).set(status.temperature_c)
        old = self.state
        self._answered()
        if self.state != old:
            self._changed(old, self._answer_reason(status))
        return self.state

    def poll_failed(self, error: Exception) -> LinkState:
        """Takes a poll that got no usable answer; returns the state after it."""
        self.failures += 1
        self.last_ok = False
        self.metrics.cabinet_up.labels(self.cabinet).set(0)
        old = self.state
        self._unanswered()
        if self.state != old:
            reason = str(error) or type(error).__name__
            if self.state is S.OFFLINE:
                reason = f"{reason} ({self.failures} polls in a row failed)"
            self._changed(old, reason)
        return self.state

    # ------------------------------------------------------------ conditions

    def _flag(self, bit: CabinetStatusBit) -> bool:
        return self._status is not None and bit in self._status.status

    def _temperature_alarm(self) -> bool:
        return self._flag(CabinetStatusBit.TEMPERATURE_ALARM)

    def _door_open(self) -> bool:
        return self._flag(CabinetStatusBit.DOOR_OPEN)

    def _heartbeat_stuck_for(self) -> float | None:
        """Seconds the heartbeat had not moved at the last answer, if longer than allowed."""
        still = self._polled_at - self._heartbeat_moved_at
        return still if self._heartbeat is not None and still > self.heartbeat_stale_s else None

    def _unhealthy(self) -> bool:
        return self._flag(CabinetStatusBit.FAULT) or self._heartbeat_stuck_for() is not None

    def _gave_up(self) -> bool:
        return self.failures >= self.offline_after

    # ------------------------------------------------------------ changes

    def _answer_reason(self, status: CabinetStatus) -> str:
        if self.state is S.TEMPERATURE_ALARM:
            return f"temperature alarm at {status.temperature_c:.1f} °C"
        if self.state is S.DOOR_OPEN:
            return "door open"
        if self.state is S.DEGRADED:
            reasons = []
            if CabinetStatusBit.FAULT in status.status:
                reasons.append("fault bit set")
            stuck_for = self._heartbeat_stuck_for()
            if stuck_for is not None:
                reasons.append(f"heartbeat stuck at {self._heartbeat} for {stuck_for:.1f} s")
            return "; ".join(reasons)
        return "answers again"

    def _changed(self, old: LinkState, reason: str) -> None:
        new = self.state
        now = self.clock()
        if new is S.ONLINE:
            away = now - self._away_since
            log.info("cabinet %s: %s -> online after %.1f s away", self.cabinet, old, away)
        else:
            if old is S.ONLINE:
                self._away_since = now
            log.warning("cabinet %s: %s -> %s: %s", self.cabinet, old, new, reason)
        self.metrics.cabinet_link_transitions.labels(self.cabinet, new.value).inc()
        self._show_state()
        if self.on_change is not None:
            try:
                self.on_change(old.value, new.value, reason)
            except Exception:  # a listener's bug must not stop the polling
                log.exception("cabinet %s: on_change listener failed", self.cabinet)

    def _show_state(self) -> None:
        for state in LinkState:
            value = 1 if state is self.state else 0
            self.metrics.cabinet_link_state.labels(self.cabinet, state.value).set(value)
