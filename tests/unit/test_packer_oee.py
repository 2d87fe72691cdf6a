"""Time in PackML states and OEE of a packer: `PackerOEE` on a fake clock, and the
runner publishing it from its status reads into a real registry."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytest

from controller.async_ledger import AsyncLedger
from controller.ledger import Ledger
from controller.ledger.engine import make_engine
from controller.metrics import (
    OEE_PLANNED_STATES,
    OEE_UNPLANNED_STATES,
    Metrics,
    PackerOEE,
    state_label,
)
from controller.packing.canister_desk import CanisterDesk
from controller.packing.runner import PackerRunner, PackingSettings
from controller.packing.store import PackingStore
from drivers.base import (
    CanisterStatus,
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
)
from tests.sites import make_site

S = PackMLState


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_availability_performance_quality_and_oee(clock: FakeClock) -> None:
    oee = PackerOEE(60, clock=clock)  # one pouch per second
    assert oee.observe(S.IDLE) is None  # nothing before the first read
    clock.t += 100
    assert oee.observe(S.EXECUTE) == (S.IDLE, 100)
    clock.t += 60
    assert oee.observe(S.HELD, processed=50, defective=5) == (S.EXECUTE, 60)
    clock.t += 20
    oee.observe(S.EXECUTE)
    clock.t += 40
    oee.observe(S.COMPLETE, processed=30, defective=3)
    clock.t += 500
    oee.observe(S.IDLE)

    assert oee.seconds[S.EXECUTE] == 100
    assert oee.seconds[S.HELD] == 20
    assert oee.seconds[S.IDLE] == 100
    assert oee.seconds[S.COMPLETE] == 500
    # Idle and Complete are not planned time: 100 s Execute of 120 s planned.
    assert oee.planned_s == 120
    assert oee.availability == pytest.approx(100 / 120)
    # 80 pouches in 100 s of Execute at a rated 1 per second.
    assert oee.performance == pytest.approx(0.8)
    assert oee.quality == pytest.approx(72 / 80)
    assert oee.oee == pytest.approx(100 / 120 * 0.8 * 0.9)


def test_rated_speed_is_the_site_files_pouches_per_minute(clock: FakeClock) -> None:
    oee = PackerOEE(120, clock=clock)
    assert oee.rated_per_s == 2
    oee.observe(S.EXECUTE)
    clock.t += 10
    oee.observe(S.EXECUTE, processed=15)
    assert oee.performance == pytest.approx(0.75)  # 15 of 20 possible
    with pytest.raises(ValueError, match="pouches_per_minute"):
        PackerOEE(0)


def test_factors_without_a_denominator_are_none(clock: FakeClock) -> None:
    oee = PackerOEE(60, clock=clock)
    assert (oee.availability, oee.performance, oee.quality, oee.oee) == (None,) * 4
    oee.observe(S.IDLE)
    clock.t += 30
    oee.observe(S.STOPPED)
    assert oee.availability is None  # only unplanned time so far
    clock.t += 30
    oee.observe(S.ABORTED)
    clock.t += 30
    oee.observe(S.CLEARING)
    assert oee.availability == 0  # 30 s planned (in Aborted), none of it Execute
    assert oee.performance is None and oee.quality is None and oee.oee is None


def test_time_without_a_link_belongs_to_no_state(clock: FakeClock) -> None:
    oee = PackerOEE(60, clock=clock)
    oee.observe(S.EXECUTE)
    clock.t += 10
    assert oee.lost() == (S.EXECUTE, 10)  # up to the failed read: the last state
    assert oee.state is None
    clock.t += 3600  # an hour unreachable
    assert oee.observe(S.EXECUTE) is None
    clock.t += 5
    oee.observe(S.HELD)
    assert oee.seconds[S.EXECUTE] == 15
    assert sum(oee.seconds.values()) == 15


def test_counter_resets_and_clock_steps_do_not_count_backwards(clock: FakeClock) -> None:
    oee = PackerOEE(60, clock=clock)
    oee.observe(S.EXECUTE)
    clock.t -= 5  # a monotonic clock never does this; nothing negative if it did
    oee.observe(S.EXECUTE, processed=-3, defective=-1)
    assert oee.seconds[S.EXECUTE] == 0
    assert (oee.processed, oee.defective) == (0, 0)


def test_state_classes_cover_every_packml_state() -> None:
    assert OEE_PLANNED_STATES | OEE_UNPLANNED_STATES == set(PackMLState)
    assert not OEE_PLANNED_STATES & OEE_UNPLANNED_STATES
    assert {S.EXECUTE, S.HELD, S.SUSPENDED, S.ABORTED, S.STOPPING} <= OEE_PLANNED_STATES
    assert {S.STOPPED, S.IDLE, S.COMPLETE} <= OEE_UNPLANNED_STATES
    assert [state_label(s) for s in (S.EXECUTE, S.HELD, S.UNHOLDING)] == [
        "Execute",
        "Held",
        "Unholding",
    ]


# ---------------------------------------------------------------------------- runner


def status(state: PackMLState, processed: int = 0, defective: int = 0) -> PackerStatus:
    return PackerStatus(
        state=state,
        unit_mode=1,
        machine_speed=60.0,
        processed_total=processed,
        defective_total=defective,
        stop_reason=0,
        job_id="",
        job_pouches_total=0,
        job_pouches_good=0,
        job_pouches_rejected=0,
    )


class ScriptedPacker(PackerDriver):
    """Answers status reads from a script; None in the script is a failed read."""

    def __init__(self, script: Sequence[PackerStatus | None]) -> None:
        self.name = "PK1"
        self.script = list(script)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read_status(self) -> PackerStatus:
        answer = self.script.pop(0)
        if answer is None:
            raise DriverError("PK1: no answer")
        return answer

    async def read_canisters(self) -> Sequence[CanisterStatus]:
        return []

    async def load_job(self, job: PackerJobSpec) -> None:
        raise NotImplementedError

    async def command(self, command: PackMLCommand) -> None:
        raise NotImplementedError

    async def refill_canister(self, number: int, quantity: int) -> None:
        raise NotImplementedError


@pytest.fixture
def aledger_metrics() -> Iterator[tuple[AsyncLedger, PackingStore, Metrics]]:
    metrics = Metrics()
    ledger = Ledger(make_engine("sqlite://"))
    aledger = AsyncLedger(ledger, metrics)
    yield aledger, PackingStore(ledger), metrics
    aledger.close()
    ledger.engine.dispose()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_runner_publishes_state_seconds_and_oee(
    aledger_metrics: tuple[AsyncLedger, PackingStore, Metrics], clock: FakeClock
) -> None:
    aledger, store, metrics = aledger_metrics
    site = make_site()
    packer = site.packers[0]  # PK1, 60 pouches per minute
    script: list[PackerStatus | None] = [
        status(S.IDLE, 100, 10),  # t=0: counters since power-on, not pouches of ours
        status(S.EXECUTE, 100, 10),  # t=30
        status(S.EXECUTE, 130, 13),  # t=60
        status(S.HELD, 140, 14),  # t=90
        None,  # t=100: the link fails
        status(S.EXECUTE, 140, 14),  # t=700: back
        status(S.COMPLETE, 150, 14),  # t=710
    ]
    runner = PackerRunner(
        packer,
        ScriptedPacker(script),
        aledger,
        store,
        metrics,
        PackingSettings(store_bins=site.store.all_bins),
        CanisterDesk(),
    )
    runner.oee = PackerOEE(packer.pouches_per_minute, clock=clock)
    start = clock.t
    for at in (0, 30, 60, 90, 100, 700, 710):
        clock.t = start + at
        try:
            await runner.read_status()
        except DriverError:
            assert at == 100

    def seconds(state: str) -> float | None:
        return sample(metrics, "doseline_packer_state_seconds_total", packer="PK1", state=state)

    assert seconds("Idle") == 30
    assert seconds("Execute") == 60 + 10  # 30-90, and 700-710
    assert seconds("Held") == 10  # 90-100; the outage 100-700 counts nowhere
    assert seconds("Aborted") == 0  # every state's series exists from the first read
    assert sample(metrics, "doseline_packer_state", packer="PK1") == S.COMPLETE
    assert sample(metrics, "doseline_packer_pouches_processed_total", packer="PK1") == 50
    assert sample(metrics, "doseline_packer_pouches_defective_total", packer="PK1") == 4
    assert sample(metrics, "doseline_packer_rated_pouches_per_second", packer="PK1") == 1
    assert sample(metrics, "doseline_packer_oee_availability_ratio", packer="PK1") == (
        pytest.approx(70 / 80)
    )
    assert sample(metrics, "doseline_packer_oee_performance_ratio", packer="PK1") == (
        pytest.approx(50 / 70)
    )
    assert sample(metrics, "doseline_packer_oee_quality_ratio", packer="PK1") == (
        pytest.approx(46 / 50)
    )
    assert sample(metrics, "doseline_packer_oee_ratio", packer="PK1") == pytest.approx(
        70 / 80 * 50 / 70 * 46 / 50
    )
    latency = "doseline_driver_latency_seconds_count"
    assert sample(metrics, latency, device="PK1", operation="read_status") == 6  # answered
    assert sample(metrics, "doseline_driver_errors_total", device="PK1") == 1


async def test_oee_gauges_are_nan_before_there_is_anything_to_measure(
    aledger_metrics: tuple[AsyncLedger, PackingStore, Metrics], clock: FakeClock
) -> None:
    aledger, store, metrics = aledger_metrics
    site = make_site()
    runner = PackerRunner(
        site.packers[0],
        ScriptedPacker([status(S.IDLE), status(S.IDLE)]),
        aledger,
        store,
        metrics,
        PackingSettings(store_bins=site.store.all_bins),
        CanisterDesk(),
    )
    runner.oee = PackerOEE(60, clock=clock)
    await runner.read_status()
    clock.t += 60
    await runner.read_status()
    assert sample(metrics, "doseline_packer_state_seconds_total", packer="PK1", state="Idle") == 60
    for name in ("availability_ratio", "performance_ratio", "quality_ratio", "ratio"):
        value = sample(metrics, f"doseline_packer_oee_{name}", packer="PK1")
        assert value is not None and math.isnan(value), name
