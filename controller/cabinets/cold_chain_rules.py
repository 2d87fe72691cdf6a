"""Cold-chain decisions without I/O: what an excursion and the ledger's holds mean
for a cabinet's pockets.

`controller.cabinets.cold_chain` reads the cabinet and the ledger, asks these
functions, and sends the commands and holds they decide.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass


def excursion_holds_stock(cold: bool) -> bool:
    """An excursion quarantines stock only in a cold cabinet; at room temperature it
    is alarmed and nothing more."""
    return cold


def concerns_cold_chain(*, cold: bool, any_locked: bool) -> bool:
    """A cabinet the cold chain keeps in step with the ledger: a cold one, or one that
    still has a locked pocket (it was cold, or locked by a quarantine)."""
    return cold or any_locked


class ColdChainStep(enum.Enum):
    QUARANTINE = "quarantine"  # lots still held: keep the pockets locked
    RELEASE = "release"  # no lot held any more: carry out the decision, unlock


def reconcile_step(held_lots: int) -> ColdChainStep:
    """While any lot at the cabinet is held the quarantine stands; after the
    pharmacist's last decision the pockets are released."""
    return ColdChainStep.QUARANTINE if held_lots else ColdChainStep.RELEASE


@dataclass(frozen=True)
class PocketLock:
    number: int
    locked: bool


def pockets_to_lock(pockets: Iterable[PocketLock], configured: Container[int]) -> list[int]:
    """The configured pockets that are not locked yet."""
    return [p.number for p in pockets if not p.locked and p.number in configured]


def count_after_release(decisions: Sequence[str], booked: int, count: int) -> int | None:
    """The count a released pocket must be set to: what the ledger holds there when
    the pharmacist's last decision wasted stock and the cabinet still counts otherwise;
    None when the cabinet's count stands (released, or already right)."""
    if decisions and decisions[-1] == "wasted" and booked != count:
        return booked
    return None
