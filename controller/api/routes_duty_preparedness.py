"""/api/v1/duty: the preparedness list (target and floor per product, imported whole) and
crisis periods (decided, scoped, ended, audited).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/duty", tags=["stock duty"])
