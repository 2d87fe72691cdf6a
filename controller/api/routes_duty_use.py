"""/api/v1/duty: use by units the pharmacy does not supply (external volumes per product
and month).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/duty", tags=["stock duty"])
