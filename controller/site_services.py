"""The implementations of `controller.ports` that a site's controller and ledger give
the API and the console: small objects over the runners, pollers, scan router and
desks of a running controller, and the ledger queries that need no controller. The
queries that were written in the routes before live here, below the people's
interfaces, so that no route runs SQL."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, text

from controller.ledger import LedgerError
from controller.ledger.audit_search import AuditRow, search_audit
from controller.ledger.schema import audit_log, verification_alerts
from controller.ports import AuditRecord, LedgerQueries, PackerView
from controller.purchasing.goods_in import receive_delivery

if TYPE_CHECKING:
    from controller.async_ledger import AsyncLedger
    from controller.cabinets.poller import CabinetPoller
    from controller.cabinets.replenishment import PickList, Replenishment, Station
    from controller.ledger import Ledger
    from controller.metrics import Metrics
    from controller.packing.canister_desk import CanisterDesk, CanisterTicket
    from controller.packing.runner import PackerRunner
    from controller.purchasing import PurchasingStore
    from controller.purchasing.files import DeliveryRow
    from controller.purchasing.model import Receipt
    from controller.scanning import ScanOutcome, ScanRouter
    from controller.verification import VerificationService
    from drivers.base import PackerStatus, PackMLCommand

log = logging.getLogger("doseline.controller")


# ------------------------------------------------------------ a running controller


class RunnerMachines:
    """`ports.Machines` over the packer runners and cabinet pollers."""

    def __init__(
        self, runners: Mapping[str, PackerRunner], pollers: Mapping[str, CabinetPoller]
    ) -> None:
        self._runners = runners
        self._pollers = pollers

    def packer_links(self) -> dict[str, bool]:
        return {name: runner.link_ok for name, runner in self._runners.items()}

    def packer(self, name: str) -> PackerView | None:
        runner = self._runners.get(name)
        if runner is None:
            return None
        return PackerView(name, runner.link_ok, runner.oee.state, runner.last_status)

    async def packer_status(self, name: str) -> PackerStatus:
        return await self._runners[name].read_status()

    async def packer_command(self, name: str, command: PackMLCommand) -> None:
        await self._runners[name].driver.command(command)

    def cabinet_link(self, name: str) -> str | None:
        poller = self._pollers.get(name)
        return poller.link.state.value if poller is not None else None


class RoutedScans:
    """`ports.Scanning` over the scan router: a scan that could not be booked is
    counted as an error; every routed scan is kept in the controller's scan log."""

    def __init__(self, router: ScanRouter, metrics: Metrics, scan_log: list[ScanOutcome]) -> None:
        self._router = router
        self._metrics = metrics
        self._log = scan_log

    async def scan(self, station: str, data: str) -> ScanOutcome:
        try:
            outcome = await self._router.route(station, data)
        except LedgerError:
            self._metrics.scans.labels("error").inc()
            raise
        self._log.append(outcome)
        return outcome


class ReplenishmentDesk:
    """`ports.RefillDesk` over the replenishment's pick lists and the canister desk."""

    def __init__(self, replenishment: Replenishment, canisters: CanisterDesk) -> None:
        self._replenishment = replenishment
        self._canisters = canisters

    def open_pick_lists(self) -> list[PickList]:
        return [p for p in self._replenishment.lists.values() if p.status == "open"]

    def pick_list(self, list_id: str) -> PickList | None:
        return self._replenishment.lists.get(list_id)

    def station(self, name: str) -> Station | None:
        return self._replenishment.stations.get(name)

    def open_tickets(self) -> list[CanisterTicket]:
        return list(self._canisters.open.values())


class VerifyingGoodsIn:
    """`ports.GoodsIn` on the controller's ledger pool, with its verification service
    (None where the site does not verify packs)."""

    def __init__(self, aledger: AsyncLedger, verification: VerificationService | None) -> None:
        self._aledger = aledger
        self._verification = verification

    async def receive(
        self,
        store: PurchasingStore,
        number: str,
        note: str,
        rows: Sequence[DeliveryRow],
        *,
        actor: str,
        now: datetime,
        location: str,
        min_shelf_life_days: int = 0,
    ) -> Receipt:
        return await receive_delivery(
            self._aledger,
            store,
            self._verification,
            number,
            note,
            rows,
            actor=actor,
            now=now,
            location=location,
            min_shelf_life_days=min_shelf_life_days,
        )


# ------------------------------------------------------------ the ledger alone


def _decoded(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value  # never written by the ledger; shown as stored


class LedgerHealth:
    """`ports.Health`: the ledger database answers a trivial query."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def ledger_answers(self) -> bool:
        with self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True


class LedgerAuditTrail:
    """`ports.AuditTrail` read from the ledger's audit_log table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def entries(
        self,
        *,
        entity: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        query = select(audit_log)
        if entity is not None:
            query = query.where(audit_log.c.entity == entity)
        if key is not None:
            query = query.where(audit_log.c.entity_key == key)
        if since is not None:
            query = query.where(audit_log.c.ts >= since)
        if after is not None:
            query = query.where(audit_log.c.seq > after)
        newest_first = since is None and after is None
        order = audit_log.c.seq.desc() if newest_first else audit_log.c.seq
        with self._engine.connect() as conn:
            rows = list(conn.execute(query.order_by(order).limit(limit)))
        if newest_first:
            rows.reverse()
        return [
            AuditRecord(
                seq=r.seq,
                ts=r.ts,
                actor=r.actor,
                action=r.action,
                entity=r.entity,
                key=r.entity_key,
                reason=r.reason,
                old=_decoded(r.old_value),
                new=_decoded(r.new_value),
                hash=r.hash,
            )
            for r in rows
        ]

    def search(
        self,
        *,
        text_terms: Sequence[str] = (),
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> list[AuditRow]:
        return search_audit(
            self._engine, text_terms=text_terms, actor=actor, since=since, until=until, limit=limit
        )


class LedgerVerificationAlerts:
    """`ports.VerificationAlerts` read from the ledger's verification_alerts table."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def alert_status(self, alert_id: int) -> str | None:
        with self._engine.connect() as c:
            status = c.execute(
                select(verification_alerts.c.status).where(verification_alerts.c.id == alert_id)
            ).scalar()
        return None if status is None else str(status)


def ledger_queries(ledger: Ledger) -> LedgerQueries:
    """The ledger-only services over one ledger's engine."""
    engine = ledger.engine
    return LedgerQueries(
        health=LedgerHealth(engine),
        audit=LedgerAuditTrail(engine),
        alerts=LedgerVerificationAlerts(engine),
    )
