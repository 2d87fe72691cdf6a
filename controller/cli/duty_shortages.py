"""`doseline duty ...`: supplier shortage notices with substitutes, rationing of scarce
stock among wards, and licences for unlicensed products.
"""

from __future__ import annotations

import argparse


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
