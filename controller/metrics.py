"""Prometheus metrics of one controller.

Names follow Prometheus conventions: `doseline_` prefix, base units, `_total` for
counters. Labels name machines, pockets and outcomes, never patients or jobs.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


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
        self.driver_errors = Counter(
            "doseline_driver_errors_total", "Failed device operations", ["device"], registry=r
        )

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
