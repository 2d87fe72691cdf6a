"""The cabinet link's states, logs and metrics, driven by a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from controller.cabinets.link import CabinetLink, LinkState
from controller.metrics import Metrics
from drivers.base import CabinetStatus, CabinetStatusBit

B = CabinetStatusBit
CLEAR = B(0)
CAB = "CAB-1"
STATES = ["offline", "online", "degraded", "door_open", "temperature_alarm"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def status(
    heartbeat: int = 1, bits: CabinetStatusBit = CLEAR, temperature_c: float = 5.0
) -> CabinetStatus:
    return CabinetStatus(
        cabinet_id=1,
        map_version=1,
        heartbeat=heartbeat,
        status=bits,
        temperature_c=temperature_c,
        last_ack_sequence=0,
        pockets=(),
    )


class Cabinet:
    """A cabinet whose heartbeat moves on every answer unless told otherwise."""

    def __init__(self, link: CabinetLink, clock: Clock) -> None:
        self.link = link
        self.clock = clock
        self.heartbeat = 0

    def ok(self, bits: CabinetStatusBit = CLEAR, *, after: float = 1.0, **kw: float) -> str:
        self.clock.advance(after)
        self.heartbeat = (self.heartbeat + 1) % 65536
        return self.link.poll_ok(status(self.heartbeat, bits, **kw))

    def fail(self, text: str = "timeout", *, after: float = 1.0) -> str:
        self.clock.advance(after)
        return self.link.poll_failed(TimeoutError(text))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def link(metrics: Metrics, clock: Clock) -> CabinetLink:
    return CabinetLink(CAB, metrics, clock=clock)


@pytest.fixture
def cab(link: CabinetLink, clock: Clock) -> Cabinet:
    return Cabinet(link, clock)


def gauges(metrics: Metrics) -> dict[str, float | None]:
    return {
        s: metrics.registry.get_sample_value(
            "doseline_cabinet_link_state", {"cabinet": CAB, "state": s}
        )
        for s in STATES
    }


def entries(metrics: Metrics, state: str) -> float | None:
    return metrics.registry.get_sample_value(
        "doseline_cabinet_link_transitions_total", {"cabinet": CAB, "state": state}
    )


def up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("doseline_cabinet_up", {"cabinet": CAB})


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "doseline.cabinets"]


def test_state_values_are_the_documented_strings() -> None:
    assert [s.value for s in LinkState] == STATES
    assert all(isinstance(s, str) for s in LinkState)


def test_starts_offline_with_one_hot_gauges_and_zeroed_counters(
    link: CabinetLink, metrics: Metrics
) -> None:
    assert link.state == "offline"
    assert not link.reachable
    assert gauges(metrics) == {s: (1.0 if s == "offline" else 0.0) for s in STATES}
    assert all(entries(metrics, s) == 0.0 for s in STATES)
    assert up(metrics) == 0.0


def test_first_good_poll_goes_online_even_after_a_long_wait(
    link: CabinetLink, clock: Clock, metrics: Metrics
) -> None:
    """The first answer has no heartbeat to compare with: it counts as moving."""
    clock.advance(600)
    assert link.poll_ok(status(heartbeat=0)) == "online"
    assert link.reachable
    assert up(metrics) == 1.0


@pytest.mark.parametrize(
    ("bits", "state"),
    [
        (B.TEMPERATURE_ALARM, "temperature_alarm"),
        (B.DOOR_OPEN, "door_open"),
        (B.FAULT, "degraded"),
    ],
)
def test_each_status_bit_is_reached_from_online_and_left_back_to_online(
    cab: Cabinet, metrics: Metrics, bits: CabinetStatusBit, state: str
) -> None:
    assert cab.ok() == "online"
    assert cab.ok(bits) == state
    assert cab.link.state == state
    assert gauges(metrics) == {s: (1.0 if s == state else 0.0) for s in STATES}
    assert cab.ok() == "online"
    assert gauges(metrics)["online"] == 1.0
    assert gauges(metrics)[state] == 0.0


@pytest.mark.parametrize(
    ("bits", "state"),
    [
        (B.TEMPERATURE_ALARM | B.DOOR_OPEN | B.FAULT, "temperature_alarm"),
        (B.TEMPERATURE_ALARM | B.FAULT, "temperature_alarm"),
        (B.TEMPERATURE_ALARM | B.DOOR_OPEN, "temperature_alarm"),
        (B.DOOR_OPEN | B.FAULT, "door_open"),
        (B.FAULT, "degraded"),
        (B(0), "online"),
    ],
)
def test_priority_order_of_the_status_bits(
    cab: Cabinet, bits: CabinetStatusBit, state: str
) -> None:
    assert cab.ok(bits) == state


def test_door_open_wins_over_a_stuck_heartbeat(link: CabinetLink, clock: Clock) -> None:
    link.poll_ok(status(heartbeat=7))
    clock.advance(10)
    assert link.poll_ok(status(heartbeat=7, bits=B.DOOR_OPEN)) == "door_open"
    clock.advance(1)
    assert link.poll_ok(status(heartbeat=7)) == "degraded"


def test_offline_only_after_offline_after_failures_in_a_row(cab: Cabinet, metrics: Metrics) -> None:
    cab.ok()
    assert cab.fail() == "degraded"
    assert not cab.link.reachable
    assert up(metrics) == 0.0
    assert cab.fail() == "degraded"
    assert cab.fail() == "offline"
    assert cab.fail() == "offline"
    assert cab.link.failures == 4
    assert gauges(metrics) == {s: (1.0 if s == "offline" else 0.0) for s in STATES}


def test_a_good_poll_resets_the_failure_count(cab: Cabinet) -> None:
    cab.ok()
    cab.fail()
    cab.fail()
    assert cab.ok() == "online"
    assert cab.link.failures == 0
    assert cab.fail() == "degraded"
    assert cab.fail() == "degraded"
    assert cab.fail() == "offline"


@pytest.mark.parametrize("offline_after", [1, 5])
def test_offline_after_is_configurable(metrics: Metrics, clock: Clock, offline_after: int) -> None:
    cab = Cabinet(CabinetLink(CAB, metrics, offline_after=offline_after, clock=clock), clock)
    cab.ok()
    states = [cab.fail() for _ in range(offline_after)]
    assert states == ["degraded"] * (offline_after - 1) + ["offline"]


@pytest.mark.parametrize(
    "bits", [B.TEMPERATURE_ALARM, B.DOOR_OPEN, B.FAULT], ids=["temp", "door", "fault"]
)
def test_a_failure_from_any_answered_state_degrades_first(
    cab: Cabinet, bits: CabinetStatusBit
) -> None:
    cab.ok(bits)
    assert cab.fail() == "degraded"


def test_failures_while_offline_stay_offline_from_the_start(
    link: CabinetLink, cab: Cabinet, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert [cab.fail() for _ in range(5)] == ["offline"] * 5
    assert records(caplog) == []
    assert all(entries(metrics, s) == 0.0 for s in STATES)
    assert not link.reachable


@pytest.mark.parametrize(
    ("bits", "state"),
    [
        (B(0), "online"),
        (B.FAULT, "degraded"),
        (B.DOOR_OPEN, "door_open"),
        (B.TEMPERATURE_ALARM, "temperature_alarm"),
    ],
)
def test_offline_is_left_by_any_answer(cab: Cabinet, bits: CabinetStatusBit, state: str) -> None:
    cab.ok()
    for _ in range(3):
        cab.fail()
    assert cab.link.state == "offline"
    assert cab.ok(bits) == state
    assert cab.link.reachable


def test_heartbeat_wrap_counts_as_moving(link: CabinetLink, clock: Clock) -> None:
    assert link.poll_ok(status(heartbeat=65535)) == "online"
    clock.advance(6)
    assert link.poll_ok(status(heartbeat=0)) == "online"
    clock.advance(6)
    assert link.poll_ok(status(heartbeat=1)) == "online"


def test_stuck_heartbeat_degrades_and_moving_again_recovers(
    link: CabinetLink, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link.poll_ok(status(heartbeat=123))
    clock.advance(3)
    assert link.poll_ok(status(heartbeat=123)) == "online"
    clock.advance(2)  # exactly heartbeat_stale_s: not yet more than it
    assert link.poll_ok(status(heartbeat=123)) == "online"
    clock.advance(1)
    assert link.poll_ok(status(heartbeat=123)) == "degraded"
    warning = records(caplog)[-1]
    assert warning.levelno == logging.WARNING
    assert "heartbeat stuck at 123 for 6.0 s" in warning.getMessage()
    clock.advance(1)
    assert link.poll_ok(status(heartbeat=123)) == "degraded"
    clock.advance(1)
    assert link.poll_ok(status(heartbeat=124)) == "online"


def test_heartbeat_staleness_is_configurable(metrics: Metrics, clock: Clock) -> None:
    link = CabinetLink(CAB, metrics, heartbeat_stale_s=30.0, clock=clock)
    link.poll_ok(status(heartbeat=5))
    clock.advance(20)
    assert link.poll_ok(status(heartbeat=5)) == "online"
    clock.advance(11)
    assert link.poll_ok(status(heartbeat=5)) == "degraded"


def test_a_heartbeat_that_did_not_move_across_an_outage_is_stuck(
    cab: Cabinet, link: CabinetLink, clock: Clock
) -> None:
    """A hung controller whose Modbus also dropped for a while is still hung."""
    link.poll_ok(status(heartbeat=9))
    for _ in range(3):
        cab.fail(after=2)
    assert link.state == "offline"
    clock.advance(1)
    assert link.poll_ok(status(heartbeat=9)) == "degraded"


@pytest.mark.parametrize(
    ("poll", "reason"),
    [
        ("fail", "timeout"),
        ("door", "door open"),
        ("temp", "temperature alarm at 9.1 °C"),
        ("fault", "fault bit set"),
    ],
)
def test_a_worse_state_warns_once_naming_cabinet_states_and_reason(
    cab: Cabinet, caplog: pytest.LogCaptureFixture, poll: str, reason: str
) -> None:
    cab.ok()
    caplog.set_level(logging.DEBUG)
    for _ in range(2):
        if poll == "fail":
            cab.fail("timeout")
        elif poll == "door":
            cab.ok(B.DOOR_OPEN)
        elif poll == "temp":
            cab.ok(B.TEMPERATURE_ALARM, temperature_c=9.14)
        else:
            cab.ok(B.FAULT)
    [record] = records(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert CAB in message
    assert f"online -> {cab.link.state}" in message
    assert reason in message


def test_going_offline_warns_with_the_error_text(
    cab: Cabinet, caplog: pytest.LogCaptureFixture
) -> None:
    cab.ok()
    caplog.set_level(logging.DEBUG)
    cab.fail("no route to host")
    cab.fail("no route to host")
    cab.fail("connection refused")
    warnings = records(caplog)
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    assert "online -> degraded" in warnings[0].getMessage()
    assert "no route to host" in warnings[0].getMessage()
    assert "degraded -> offline" in warnings[1].getMessage()
    assert "connection refused" in warnings[1].getMessage()


def test_back_online_is_info_with_the_time_away(
    cab: Cabinet, caplog: pytest.LogCaptureFixture
) -> None:
    cab.ok()
    caplog.set_level(logging.DEBUG)
    cab.fail(after=10)  # leaves online at +10
    cab.ok(B.DOOR_OPEN, after=5)
    cab.ok(after=10)  # back at +25
    back = records(caplog)[-1]
    assert back.levelno == logging.INFO
    assert "door_open -> online" in back.getMessage()
    assert "15.0 s" in back.getMessage()
    assert CAB in back.getMessage()


def test_logs_only_on_change(cab: Cabinet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    polls: list[Callable[[], str]] = [
        cab.ok,
        cab.ok,  # online
        cab.fail,
        cab.fail,
        cab.fail,
        cab.fail,
        cab.fail,  # degraded, offline
        cab.ok,
        cab.ok,  # online
        lambda: cab.ok(B.DOOR_OPEN),
        lambda: cab.ok(B.DOOR_OPEN),
        lambda: cab.ok(B.DOOR_OPEN),
        cab.ok,
    ]
    states = [poll() for poll in polls]
    changes = sum(
        1 for before, after in zip(["offline", *states], states, strict=False) if before != after
    )
    assert changes == 6
    logged = records(caplog)
    assert len(logged) == changes
    assert [r.levelno for r in logged] == [
        logging.INFO,
        logging.WARNING,
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]


def test_transitions_counter_counts_entries_not_polls(cab: Cabinet, metrics: Metrics) -> None:
    cab.ok()
    cab.ok()
    cab.ok(B.DOOR_OPEN)
    cab.ok(B.DOOR_OPEN)
    cab.ok()
    cab.ok(B.DOOR_OPEN)
    for _ in range(4):
        cab.fail()
    assert entries(metrics, "online") == 2.0
    assert entries(metrics, "door_open") == 2.0
    assert entries(metrics, "degraded") == 1.0
    assert entries(metrics, "offline") == 1.0
    assert entries(metrics, "temperature_alarm") == 0.0


def test_state_gauges_stay_one_hot_through_every_state(cab: Cabinet, metrics: Metrics) -> None:
    steps: list[tuple[Callable[[], str], str]] = [
        (cab.ok, "online"),
        (lambda: cab.ok(B.TEMPERATURE_ALARM), "temperature_alarm"),
        (lambda: cab.ok(B.DOOR_OPEN), "door_open"),
        (lambda: cab.ok(B.FAULT), "degraded"),
        (cab.fail, "degraded"),
        (cab.fail, "degraded"),
        (cab.fail, "offline"),
        (cab.ok, "online"),
    ]
    for poll, state in steps:
        assert poll() == state
        assert gauges(metrics) == {s: (1.0 if s == state else 0.0) for s in STATES}


def test_temperature_gauge_follows_every_answered_poll(cab: Cabinet, metrics: Metrics) -> None:
    def temperature() -> float | None:
        return metrics.registry.get_sample_value(
            "doseline_cabinet_temperature_celsius", {"cabinet": CAB}
        )

    cab.ok(temperature_c=4.5)
    assert temperature() == 4.5
    cab.ok(temperature_c=6.25)  # no state change
    assert temperature() == 6.25
    cab.fail()
    assert temperature() == 6.25


def test_cabinet_up_follows_the_last_poll(cab: Cabinet, metrics: Metrics) -> None:
    cab.ok(B.FAULT)
    assert up(metrics) == 1.0
    cab.fail()
    assert up(metrics) == 0.0
    assert cab.link.state == "degraded"
    cab.ok(B.FAULT)
    assert up(metrics) == 1.0
    assert cab.link.reachable


def test_on_change_hears_each_change_once(cab: Cabinet) -> None:
    heard: list[tuple[str, str, str]] = []
    cab.link.on_change = lambda old, new, reason: heard.append((old, new, reason))
    cab.ok()
    cab.ok()
    cab.ok(B.TEMPERATURE_ALARM, temperature_c=9.1)
    cab.fail("reset by peer")
    cab.fail("reset by peer")
    assert heard == [
        ("offline", "online", heard[0][2]),
        ("online", "temperature_alarm", "temperature alarm at 9.1 °C"),
        ("temperature_alarm", "degraded", "reset by peer"),
    ]
    assert all(type(part) is str for change in heard for part in change)


def test_a_failing_listener_neither_stops_the_change_nor_escapes(
    cab: Cabinet, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(old: str, new: str, reason: str) -> None:
        raise RuntimeError("listener bug")

    cab.link.on_change = broken
    caplog.set_level(logging.DEBUG)
    assert cab.ok() == "online"
    assert gauges(metrics)["online"] == 1.0
    assert any(r.levelno == logging.ERROR and r.exc_info for r in records(caplog))


def test_links_of_two_cabinets_keep_apart(metrics: Metrics, clock: Clock) -> None:
    a = CabinetLink("A", metrics, clock=clock)
    b = CabinetLink("B", metrics, clock=clock)
    a.poll_ok(status())
    b.poll_failed(OSError("down"))
    assert (a.state, b.state) == ("online", "offline")
    value = metrics.registry.get_sample_value
    assert value("doseline_cabinet_link_state", {"cabinet": "A", "state": "online"}) == 1.0
    assert value("doseline_cabinet_link_state", {"cabinet": "B", "state": "online"}) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"offline_after": 0}, "offline_after"), ({"heartbeat_stale_s": 0.0}, "heartbeat_stale_s")],
)
def test_bad_settings_are_refused_by_name(
    metrics: Metrics, kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        CabinetLink(CAB, metrics, **kwargs)  # type: ignore[arg-type]
