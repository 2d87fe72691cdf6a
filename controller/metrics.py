"""Prometheus metrics of one controller.

Names follow Prometheus conventions: `doseline_` prefix, base units, `_total` for
counters. Labels name machines, pockets and outcomes, never patients or jobs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from drivers.base import PackMLState

# How each PackML state counts in a packer's OEE (docs/metrics.md). Running time is
# Execute. Planned time is every state in which the machine holds or works on a job:
# Execute and the states that interrupt, start or end one (held, suspended, aborted,
# stopping, clearing after an abort...). The states in which it waits without a job
# (Stopped, Idle, Resetting, Complete, Undefined) are not planned production time, and
# neither is the time the controller has no link to the machine.
OEE_RUNNING_STATES = frozenset({PackMLState.EXECUTE})
OEE_UNPLANNED_STATES = frozenset(
    {
        PackMLState.UNDEFINED,
        PackMLState.STOPPED,
        PackMLState.IDLE,
        PackMLState.RESETTING,
        PackMLState.COMPLETE,
    }
)
OEE_PLANNED_STATES = frozenset(set(PackMLState) - OEE_UNPLANNED_STATES)


def state_label(state: PackMLState) -> str:
    """The `state` label of a PackML state: its name as the standard writes it."""
    return state.name.title()


class PackerOEE:
    """Time in each PackML state and the OEE factors of one packer, since it was made.

    Pure bookkeeping: no I/O, and the clock (monotonic seconds) is a parameter. Each
    `observe` gives the time since the previous observation to the state seen then
    (sample and hold); after `lost()` (no link) the time until the next observation
    is given to no state. Pouch counts are the increments since the last observation.

    availability = Execute seconds / planned seconds (`OEE_PLANNED_STATES`)
    performance  = pouches processed / (Execute seconds x rated pouches per second)
    quality      = good pouches / pouches processed
    oee          = availability x performance x quality

    A factor without a denominator yet (no planned time, no Execute time, no pouch) is
    None. Performance is not capped at 1: above 1 the rated speed is set too low.
    """

    def __init__(
        self, pouches_per_minute: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not pouches_per_minute > 0:
            raise ValueError(f"pouches_per_minute: {pouches_per_minute!r} must be above 0")
        self.rated_per_s = pouches_per_minute / 60.0
        self.clock = clock
        self.seconds: dict[PackMLState, float] = {state: 0.0 for state in PackMLState}
        self.processed = 0
        self.defective = 0
        self._state: PackMLState | None = None
        self._since = 0.0

    @property
    def state(self) -> PackMLState | None:
        """The state seen last, None before the first observation or after `lost`."""
        return self._state

    def _close(self) -> tuple[PackMLState, float] | None:
        now = self.clock()
        spent: tuple[PackMLState, float] | None = None
        if self._state is not None:
            seconds = max(0.0, now - self._since)
            self.seconds[self._state] += seconds
            spent = (self._state, seconds)
        self._since = now
        return spent

    def observe(
        self, state: PackMLState, *, processed: int = 0, defective: int = 0
    ) -> tuple[PackMLState, float] | None:
        """Records one status read; returns (previous state, seconds given to it)."""
        spent = self._close()
        self._state = PackMLState(state)
        self.processed += max(0, processed)
        self.defective += max(0, defective)
        return spent

    def lost(self) -> tuple[PackMLState, float] | None:
        """The link is gone: the time up to now goes to the last state, then to none."""
        spent = self._close()
        self._state = None
        return spent

    @property
    def running_s(self) -> float:
        return sum(self.seconds[s] for s in OEE_RUNNING_STATES)

    @property
    def planned_s(self) -> float:
        return sum(self.seconds[s] for s in OEE_PLANNED_STATES)

    @property
    def availability(self) -> float | None:
        planned = self.planned_s
        return self.running_s / planned if planned > 0 else None

    @property
    def performance(self) -> float | None:
        running = self.running_s
        return self.processed / (running * self.rated_per_s) if running > 0 else None

    @property
    def quality(self) -> float | None:
        if self.processed <= 0:
            return None
        return max(0, self.processed - self.defective) / self.processed

    @property
    def oee(self) -> float | None:
        factors = (self.availability, self.performance, self.quality)
        if any(f is None for f in factors):
            return None
        a, p, q = factors
        assert a is not None and p is not None and q is not None
        return a * p * q


def _gauge_value(value: float | None) -> float:
    return math.nan if value is None else value


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.packer_state = Gauge(
            "doseline_packer_state",
            "PackML state number of the packer (OPC 30050)",
            ["packer"],
            registry=r,
        )
        self.packer_processed = Counter(
            "doseline_packer_pouches_processed_total",
            "Pouches made by the packer, good and rejected (PackTags ProdProcessedCount)",
            ["packer"],
            registry=r,
        )
        self.packer_defective = Counter(
            "doseline_packer_pouches_defective_total",
            "Pouches rejected by the vision check (PackTags ProdDefectiveCount)",
            ["packer"],
            registry=r,
        )
        self.packer_stop_reason = Gauge(
            "doseline_packer_stop_reason",
            "Admin.StopReason of the packer (0 = none)",
            ["packer"],
            registry=r,
        )
        self.jobs = Counter(
            "doseline_jobs_total", "Packing jobs ended, by outcome", ["outcome"], registry=r
        )
        self.pocket_count = Gauge(
            "doseline_cabinet_pocket_count",
            "Units in a cabinet pocket as the cabinet reports",
            ["cabinet", "pocket"],
            registry=r,
        )
        self.pocket_fill = Gauge(
            "doseline_cabinet_pocket_fill_ratio",
            "Pocket count divided by its max level",
            ["cabinet", "pocket"],
            registry=r,
        )
        self.withdrawals = Counter(
            "doseline_cabinet_withdrawals_total",
            "Doses taken from cabinets and booked",
            ["cabinet"],
            registry=r,
        )
        self.cabinet_up = Gauge(
            "doseline_cabinet_up",
            "1 if the last poll of the cabinet succeeded",
            ["cabinet"],
            registry=r,
        )
        self.cabinet_link_state = Gauge(
            "doseline_cabinet_link_state",
            "1 for the cabinet link's current state, 0 for the others",
            ["cabinet", "state"],
            registry=r,
        )
        self.cabinet_link_transitions = Counter(
            "doseline_cabinet_link_transitions_total",
            "Entries of the cabinet link into a state",
            ["cabinet", "state"],
            registry=r,
        )
        self.cabinet_temperature = Gauge(
            "doseline_cabinet_temperature_celsius",
            "Temperature the cabinet reported at its last answered poll",
            ["cabinet"],
            registry=r,
        )
        self.discrepancies = Counter(
            "doseline_stock_discrepancies_total",
            "Physical events the ledger could not fully book (stock missing at the location)",
            ["location_kind"],
            registry=r,
        )
        self.refills = Counter(
            "doseline_refills_total", "Pocket refills ended, by outcome", ["outcome"], registry=r
        )
        self.refills_pending = Gauge(
            "doseline_refills_pending", "Refills requested and not yet confirmed", registry=r
        )
        self.refills_overdue = Gauge(
            "doseline_refills_overdue",
            "Refills still waiting for the technician after their due time",
            registry=r,
        )
        self.pick_lists = Counter(
            "doseline_pick_lists_total",
            "Pick lists made, by kind: a scheduled round or urgent (a pocket at 0)",
            ["kind"],
            registry=r,
        )
        self.temperature_excursions = Counter(
            "doseline_cabinet_temperature_excursions_total",
            "Temperature excursions a cabinet reported",
            ["cabinet"],
            registry=r,
        )
        self.quarantined_lots = Gauge(
            "doseline_cabinet_quarantined_lots",
            "Lots held at a cabinet until a pharmacist releases or wastes them",
            ["cabinet"],
            registry=r,
        )
        self.open_discrepancies = Gauge(
            "doseline_stock_discrepancies_open",
            "Stock discrepancies raised and not yet resolved by an operator",
            registry=r,
        )
        self.scans = Counter(
            "doseline_scans_total", "Barcode scans at cabinets, by result", ["result"], registry=r
        )
        self.verification_alerts = Counter(
            "doseline_verification_alerts_total",
            "Alerts of the medicines verification system on packs, by alert code",
            ["code"],
            registry=r,
        )
        self.supplier_otif = Gauge(
            "doseline_supplier_on_time_in_full_ratio",
            "Share of a supplier's due order lines delivered in full by their expected date",
            ["supplier"],
            registry=r,
        )
        self.supplier_fill = Gauge(
            "doseline_supplier_fill_ratio",
            "Units received over units ordered on a supplier's due order lines",
            ["supplier"],
            registry=r,
        )
        self.purchase_order_lines = Gauge(
            "doseline_purchase_order_lines",
            "Purchase order lines still to be delivered, by supplier and status",
            ["supplier", "status"],
            registry=r,
        )
        self.ward_delivery_reliability = Gauge(
            "doseline_ward_delivery_reliability_ratio",
            "Share of ward order lines due in the last 30 days delivered on time and in full"
            " (NaN: none due)",
            registry=r,
        )
        self.ward_unmet_lines = Gauge(
            "doseline_ward_unmet_lines",
            "Ward order lines of the last 30 days not delivered on time and in full, by cause",
            ["cause"],
            registry=r,
        )
        self.ward_order_lines = Gauge(
            "doseline_ward_order_lines",
            "Ward requisition lines by status (review, picking, in transit and so on)",
            ["status"],
            registry=r,
        )
        self.verification_queue_pending = Gauge(
            "doseline_verification_queue_pending",
            "Verification requests (decommissions) waiting to be sent after an outage",
            registry=r,
        )
        self.open_reservations = Gauge(
            "doseline_ledger_open_reservations",
            "Reservations not yet posted, voided or expired",
            registry=r,
        )
        self.ledger_seconds = Histogram(
            "doseline_ledger_operation_seconds",
            "Duration of ledger operations",
            ["operation"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.ledger_batch_commands = Histogram(
            "doseline_ledger_batch_commands",
            "Ledger commands committed together in one transaction by the group-commit writer",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.driver_errors = Counter(
            "doseline_driver_errors_total", "Failed device operations", ["device"], registry=r
        )
        self.driver_latency = Histogram(
            "doseline_driver_latency_seconds",
            "Duration of device operations that answered (packer and cabinet status reads)",
            ["device", "operation"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.driver_reconnects = Counter(
            "doseline_driver_reconnects_total",
            "Links to a device opened again after they were lost",
            ["device"],
            registry=r,
        )

        # Packer time and OEE (PackerOEE; docs/metrics.md).
        self.packer_state_seconds = Counter(
            "doseline_packer_state_seconds_total",
            "Time the packer spent in each PackML state, while the controller had a link",
            ["packer", "state"],
            registry=r,
        )
        self.packer_rated_speed = Gauge(
            "doseline_packer_rated_pouches_per_second",
            "Rated speed of the packer from the site file (pouches_per_minute / 60)",
            ["packer"],
            registry=r,
        )
        self.packer_oee_availability = Gauge(
            "doseline_packer_oee_availability_ratio",
            "Execute time / planned time since the controller started (NaN: none yet)",
            ["packer"],
            registry=r,
        )
        self.packer_oee_performance = Gauge(
            "doseline_packer_oee_performance_ratio",
            "Pouches processed / (Execute seconds x rated pouches per second)",
            ["packer"],
            registry=r,
        )
        self.packer_oee_quality = Gauge(
            "doseline_packer_oee_quality_ratio",
            "Good pouches / pouches processed since the controller started",
            ["packer"],
            registry=r,
        )
        self.packer_oee = Gauge(
            "doseline_packer_oee_ratio",
            "Overall equipment effectiveness: availability x performance x quality",
            ["packer"],
            registry=r,
        )
        self._packers_seen: set[str] = set()

        # Stock, from the ledger reports (StockMetrics; docs/metrics.md).
        self.stock_cover_days = Gauge(
            "doseline_stock_cover_days",
            "Lowest days of cover among the category's products under the obligation",
            ["category"],
            registry=r,
        )
        self.stock_below_obligation = Gauge(
            "doseline_stock_products_below_obligation",
            "Products of the category under the obligation with less cover than it asks",
            ["category"],
            registry=r,
        )
        self.stock_below_obligation_in_crisis = Gauge(
            "doseline_stock_products_below_obligation_in_crisis",
            "Products of the category below the obligation while a crisis period covers them",
            ["category"],
            registry=r,
        )
        self.preparedness_below_floor = Gauge(
            "doseline_preparedness_products_below_floor",
            "Products of the category on the preparedness list whose usable preparedness "
            "stock is below the floor",
            ["category"],
            registry=r,
        )
        self.crisis_active = Gauge(
            "doseline_crisis_active",
            "1 while a crisis period is in force (stock may be drawn below the month), else 0",
            registry=r,
        )
        self.stock_preparedness_cover_days = Gauge(
            "doseline_stock_preparedness_cover_days",
            "Days the usable preparedness stock alone lasts, for its weakest product",
            registry=r,
        )
        self.stock_preparedness_value = Gauge(
            "doseline_stock_preparedness_value_sek",
            "Value of the stock in preparedness locations, any lot status",
            registry=r,
        )
        self.stock_expiring_value = Gauge(
            "doseline_stock_expiring_value_sek",
            "Value of stock whose lot expires within the days (already expired included)",
            ["within_days"],
            registry=r,
        )
        self.stock_expired_value = Gauge(
            "doseline_stock_expired_value_sek",
            "Value of stock on hand whose lot has expired",
            registry=r,
        )
        self.stock_waste_value_30d = Gauge(
            "doseline_stock_waste_value_30d_sek",
            "Value of stock wasted in the last 30 days",
            registry=r,
        )
        self.stock_service_level = Gauge(
            "doseline_stock_service_level_ratio",
            "Order lines filled completely / order lines, last 30 days (NaN: no lines)",
            registry=r,
        )
        self.oldest_open_reservation = Gauge(
            "doseline_ledger_oldest_open_reservation_seconds",
            "Age of the oldest reservation not yet posted, voided or expired (0: none)",
            registry=r,
        )
        self.stock_refresh_failures = Counter(
            "doseline_stock_metrics_refresh_failures_total",
            "Refreshes of the stock metrics from the ledger that failed",
            registry=r,
        )
        self.stock_refreshed = Gauge(
            "doseline_stock_metrics_last_refresh_timestamp_seconds",
            "Unix time of the last successful refresh of the stock metrics",
            registry=r,
        )
        self.stock_exemptions_review_overdue = Gauge(
            "doseline_stock_exemptions_review_overdue",
            "Active exemptions from the stock duty whose review date has passed",
            registry=r,
        )
        self.shortages_open = Gauge(
            "doseline_shortages_open",
            "Supplier shortage notices still open (docs/stock-duty.md)",
            registry=r,
        )
        self.rationed_products = Gauge(
            "doseline_rationed_products",
            "Products under a rationing rule in force (docs/stock-duty.md)",
            registry=r,
        )

    def packer_observed(
        self, packer: str, oee: PackerOEE, spent: tuple[PackMLState, float] | None
    ) -> None:
        """Publishes one packer status read: the time given to the state seen before,
        and the OEE factors. The first call makes a zero series for every state, so
        `increase()` sees a state's first seconds."""
        if packer not in self._packers_seen:
            self._packers_seen.add(packer)
            for state in PackMLState:
                self.packer_state_seconds.labels(packer, state_label(state))
            self.packer_rated_speed.labels(packer).set(oee.rated_per_s)
        if spent is not None and spent[1] > 0:
            self.packer_state_seconds.labels(packer, state_label(spent[0])).inc(spent[1])
        self.packer_oee_availability.labels(packer).set(_gauge_value(oee.availability))
        self.packer_oee_performance.labels(packer).set(_gauge_value(oee.performance))
        self.packer_oee_quality.labels(packer).set(_gauge_value(oee.quality))
        self.packer_oee.labels(packer).set(_gauge_value(oee.oee))

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint; returns the port (a free one if 0)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server: Any = server
        return int(server.server_port)

    def shutdown(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None
