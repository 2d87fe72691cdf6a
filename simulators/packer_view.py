"""What a packer simulator shows tests and operators of its physics, whatever protocol
it speaks: both packer simulators read the same `PackerPhysics`."""

from __future__ import annotations

from simulators.packer_physics import PackerPhysics, StopReason
from simulators.packml import PackMLState, UnitMode


class PhysicsView:
    """Read-only properties and fault knobs passed through to `self._physics`."""

    _physics: PackerPhysics

    @property
    def pouches_per_minute(self) -> float:
        return self._physics.pouches_per_minute

    @property
    def speed_factor(self) -> float:
        return self._physics.speed_factor

    @property
    def reject_rate(self) -> float:
        return self._physics.reject_rate

    @property
    def jam_rate(self) -> float:
        return self._physics.jam_rate

    @property
    def transient_seconds(self) -> float:
        return self._physics.transient_seconds

    @property
    def state(self) -> PackMLState:
        return self._physics.state

    @property
    def unit_mode(self) -> UnitMode:
        return self._physics.unit_mode

    @property
    def output_count(self) -> int:
        return self._physics.output_count

    @property
    def output_full(self) -> bool:
        return self._physics.output_full

    @property
    def stop_reason(self) -> StopReason:
        return self._physics.stop_reason

    @property
    def stop_canister(self) -> int:
        return self._physics.stop_canister

    @property
    def processed_count(self) -> int:
        return self._physics.processed

    @property
    def defective_count(self) -> int:
        return self._physics.defective

    def canister_counts(self) -> dict[int, int]:
        return self._physics.canister_counts()

    def dispensed_totals(self) -> dict[int, int]:
        return self._physics.dispensed_totals()

    def refilled_totals(self) -> dict[int, int]:
        return self._physics.refilled_totals()

    def inject_jam(self) -> None:
        """Fault knob: the next pouch attempt jams (Hold with StopReason JAM)."""
        self._physics.inject_jam()

    def power_cycle(self, *, keep_counters: bool = True) -> None:
        """Fault knob, between stop() and start(): the machine lost power; it comes back
        Stopped, without its job, with its canisters' tablets (and, unless
        `keep_counters` is False, its counters)."""
        self._physics.power_cycle(keep_counters=keep_counters)

    async def misreport(self, **fields: int) -> None:
        """Fault knob: report these `PackerStatus` fields (state, stop_reason,
        stop_canister, processed_total, ...) as the given values whatever the machine
        does, e.g. a PackML state outside the model; without arguments the truth again."""
        self._physics.misreport = dict(fields)
        await self._publish()

    async def _publish(self) -> None:
        """Pushes changed values to clients; a simulator whose clients poll needs nothing."""
