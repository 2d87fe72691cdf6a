"""The ledger's name for a cabinet pocket, shared by the services and the rules."""

from __future__ import annotations


def pocket_location(cabinet: str, number: int) -> str:
    return f"{cabinet}/P{number:02d}"
