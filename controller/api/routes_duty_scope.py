"""/api/v1/duty: what is out of the duty's scope (a product or a category, with its reason;
durable devices and protective equipment) and exemptions as a lifecycle (create, review,
change, revoke).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/duty", tags=["stock duty"])
