"""The narrow interfaces the people's interfaces (the HTTP API and the console) use.

The API and the console never reach into a running `Controller`: `doseline run` builds
the controller and hands the API a `RunningSite` (what only a running controller can
do: command the machines, route scans, run the ward desk), and the API builds a
`LedgerQueries` over the ledger alone (what works without one). Each interface is a
`Protocol`, so a test or another front end can hand in its own implementation;
`controller.site_services` holds the ones the controller uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from controller.cabinets.replenishment import PickList, Station
    from controller.packing.canister_desk import CanisterTicket
    from controller.purchasing import PurchasingStore
    from controller.purchasing.files import DeliveryRow
    from controller.purchasing.model import Receipt
    from controller.scanning import ScanOutcome
    from controller.verification import VerificationService
    from controller.wardsupply.service import Dispatched, ScanResult, WardSupply
    from drivers.base import PackerStatus, PackMLCommand, PackMLState

T = TypeVar("T")


@dataclass(frozen=True)
class PackerView:
    """One packer as the packing floor shows it: its link, its PackML state in the
    controller's bookkeeping, and the last status read from it."""

    name: str
    link_ok: bool
    state: PackMLState | None
    last_status: PackerStatus | None


class Machines(Protocol):
    """The packers and cabinets of a running controller."""

    def packer_links(self) -> dict[str, bool]:
        """Packer name: whether the controller is connected to it."""
        ...

    def packer(self, name: str) -> PackerView | None:
        """None for a packer the controller does not run."""
        ...

    async def packer_status(self, name: str) -> PackerStatus:
        """A fresh read of the machine; raises DriverError when it does not answer."""
        ...

    async def packer_command(self, name: str, command: PackMLCommand) -> None:
        """Sends a PackML command; raises DriverError when the machine refuses it."""
        ...

    def cabinet_link(self, name: str) -> str | None:
        """The cabinet's link state (`up`, `degraded`, `offline`), None when unknown."""
        ...


class Scanning(Protocol):
    """The scan router of a running controller: pick lists, pocket labels, packs and
    canister tickets, the same for a serial scanner, the API and the console."""

    async def scan(self, station: str, data: str) -> ScanOutcome:
        """Raises LedgerError when the scan could not be booked (counted as an error)."""
        ...


class RefillDesk(Protocol):
    """What the technicians work on: the cabinets' open pick lists, what each scan
    station is on, and the open canister refill tickets."""

    def open_pick_lists(self) -> list[PickList]: ...

    def pick_list(self, list_id: str) -> PickList | None: ...

    def station(self, name: str) -> Station | None: ...

    def open_tickets(self) -> list[CanisterTicket]: ...


class LedgerCalls(Protocol):
    """Runs a synchronous ledger call off the event loop, queued with the controller's
    own writes (SQLite has one writer)."""

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


class GoodsIn(Protocol):
    """A delivery booked against its purchase order, then its serialised packs
    verified where the site verifies packs."""

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
    ) -> Receipt: ...


class WardDesk(Protocol):
    """Drug-room pick list scans and dispatch, with pack verification where the site
    verifies packs."""

    async def scan(self, number: str, data: str, *, actor: str) -> ScanResult: ...

    async def dispatch(self, number: str, *, actor: str) -> Dispatched: ...


@dataclass(frozen=True)
class RunningSite:
    """What a running controller offers the API and the console, and nothing more."""

    machines: Machines
    scans: Scanning
    refills: RefillDesk
    ledger_calls: LedgerCalls
    goods_in: GoodsIn
    purchasing: PurchasingStore
    wardsupply: WardSupply
    ward_desk: WardDesk
    verification: VerificationService | None


class RunsSite(Protocol):
    """A controller that can hand out its `RunningSite` (the `Controller` does)."""

    def running_site(self) -> RunningSite: ...


# ------------------------------------------------------------ without a controller


@dataclass(frozen=True)
class AuditRecord:
    """One row of the hash-chained audit trail, its values decoded from JSON."""

    seq: int
    ts: datetime
    actor: str
    action: str
    entity: str
    key: str
    reason: str
    old: Any
    new: Any
    hash: str


class Health(Protocol):
    def ledger_answers(self) -> bool:
        """True when the ledger database answers; raises what stopped it otherwise."""
        ...


class AuditTrail(Protocol):
    def entries(
        self,
        *,
        entity: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Rows in chain order: with `since` or `after`, the first `limit` from there;
        without either, the latest `limit`."""
        ...

    def search(
        self,
        *,
        text_terms: Sequence[str] = (),
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 200,
    ) -> list[Any]:
        """Rows mentioning every term, newest first (`controller.ledger.audit_search`)."""
        ...


class VerificationAlerts(Protocol):
    def alert_status(self, alert_id: int) -> str | None:
        """`open` or `closed`; None for an alert that does not exist."""
        ...


@dataclass(frozen=True)
class LedgerQueries:
    """The reads the API and the console make of the ledger beside its own methods and
    reports, with or without a running controller."""

    health: Health
    audit: AuditTrail
    alerts: VerificationAlerts
