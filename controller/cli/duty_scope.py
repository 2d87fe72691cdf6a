"""`doseline duty ...`: what is out of the duty's scope (a product or a category, with its
reason; durable devices and protective equipment) and exemptions as a lifecycle (create,
review, change, revoke).
"""

from __future__ import annotations

import argparse


def register(duty: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds this part's commands under `doseline duty`."""
