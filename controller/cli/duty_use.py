"""`doseline duty ...`: use by units the pharmacy does not supply (external volumes per
product and month).
"""

from __future__ import annotations

import argparse


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
