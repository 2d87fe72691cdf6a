"""Cold-storage cabinets: a temperature excursion quarantines what they hold.

When a cold cabinet's excursion counter rises, every lot in its pockets is held in the
ledger (that cabinet only: the same lot elsewhere stays usable), its pockets are locked
so that nurses cannot take from them, and no refill goes there. A pharmacist then
releases or wastes the held stock (`doseline cabinets release|waste`, from any
process: the ledger is the shared truth). The poll after that decision carries it out
at the cabinet: a wasted pocket's count is set to what the ledger holds, and the
pockets are unlocked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from controller.async_ledger import AsyncLedger
from controller.cabinets.cold_chain_rules import (
    ColdChainStep,
    PocketLock,
    concerns_cold_chain,
    count_after_release,
    excursion_holds_stock,
    pockets_to_lock,
    reconcile_step,
)
from controller.cabinets.poller import CabinetPoller, pocket_location
from controller.ledger import LedgerError
from controller.metrics import Metrics
from drivers.base import CabinetCommand, CabinetStatus, DriverError

if TYPE_CHECKING:
    from controller.cabinets.replenishment import Replenishment

log = logging.getLogger("doseline.cold_chain")
ACTOR = "cold-chain"
QUARANTINE = "stock under temperature quarantine until a pharmacist releases or wastes it"


class ColdChain:
    def __init__(self, ledger: AsyncLedger, replenishment: Replenishment, metrics: Metrics) -> None:
        self.ledger = ledger
        self.replenishment = replenishment
        self.metrics = metrics

    def attach(self, poller: CabinetPoller) -> None:
        poller.on_excursion = self.on_excursion
        poller.after_poll = self.reconcile

    async def on_excursion(
        self, poller: CabinetPoller, status: CabinetStatus, excursions_total: int
    ) -> None:
        cabinet = poller.config
        if not excursion_holds_stock(cabinet.cold):
            log.warning(
                "cabinet %s is not a cold cabinet: excursion alarmed, stock not held", cabinet.name
            )
            return
        reason = (
            f"temperature excursion on {cabinet.name} (band {status.temp_low_c}-"
            f"{status.temp_high_c} °C, {status.temperature_c:.1f} °C when seen)"
        )
        holds = await self.ledger.hold_location(
            f"excursion:{cabinet.name}:{excursions_total}",
            cabinet.name,
            reason=reason,
            actor=ACTOR,
        )
        log.error("%s: %d lot(s) quarantined until a pharmacist decides", reason, len(holds))
        await self._quarantine(poller, status)

    async def _quarantine(self, poller: CabinetPoller, status: CabinetStatus) -> None:
        name = poller.name
        if name not in self.replenishment.blocked:
            self.replenishment.block(name, QUARANTINE)
            await self.replenishment.cancel_open(f"{name}: {QUARANTINE}", cabinet=name)
        locks = [PocketLock(p.number, p.locked) for p in status.pockets]
        for number in pockets_to_lock(locks, poller.pockets):
            await self._command(poller, CabinetCommand.LOCK_POCKET, number, 0)

    async def reconcile(self, poller: CabinetPoller, status: CabinetStatus) -> None:
        """Keeps the cabinet in step with the ledger's holds: locked while stock is
        held; after the pharmacist's decision, counts set and pockets unlocked."""
        any_locked = any(p.locked for p in status.pockets)
        if not concerns_cold_chain(cold=poller.config.cold, any_locked=any_locked):
            return
        held = await self.ledger.holds(location=poller.name, status="held")
        self.metrics.quarantined_lots.labels(poller.name).set(len(held))
        if reconcile_step(len(held)) is ColdChainStep.QUARANTINE:
            await self._quarantine(poller, status)
            return
        for pocket in status.pockets:
            config = poller.pockets.get(pocket.number)
            if not pocket.locked or config is None:
                continue
            location = pocket_location(poller.name, pocket.number)
            decided = await self.ledger.holds(location=location, status=None)
            if decided and decided[-1].status == "wasted":
                booked = await self.ledger.on_hand(location, config.gtin)
                count = count_after_release([h.status for h in decided], booked, pocket.count)
                if count is not None:
                    await self._command(poller, CabinetCommand.SET_COUNT, pocket.number, count)
            await self._command(poller, CabinetCommand.UNLOCK_POCKET, pocket.number, 0)
        if poller.name in self.replenishment.blocked:
            self.replenishment.unblock(poller.name)
            log.info("cabinet %s: quarantine resolved, pockets unlocked", poller.name)

    async def _command(
        self, poller: CabinetPoller, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        try:
            await poller.send_command(command, pocket, quantity)
        except (DriverError, LedgerError) as exc:
            # Tried again at the next poll: the ledger still says what should be.
            log.error(
                "cabinet %s pocket %d: %s not done: %s", poller.name, pocket, command.name, exc
            )
