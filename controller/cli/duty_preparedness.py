"""`doseline duty ...`: the preparedness list (target and floor per product, imported
whole) and crisis periods (decided, scoped, ended, audited).
"""

from __future__ import annotations

import argparse


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
