"""/api/v1/duty: supplier shortage notices with substitutes, rationing of scarce stock
among wards, and licences for unlicensed products.
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/duty", tags=["stock duty"])
