"""The HTTP API (FastAPI, served by uvicorn): docs/api.md."""

from __future__ import annotations

from controller.api.app import PREFIX, create_app
from controller.api.auth import (
    Role,
    TokenFileError,
    Tokens,
    User,
    hash_token,
    load_tokens,
    parse_tokens,
)
from controller.api.server import ApiServer

__all__ = [
    "PREFIX",
    "ApiServer",
    "Role",
    "TokenFileError",
    "Tokens",
    "User",
    "create_app",
    "hash_token",
    "load_tokens",
    "parse_tokens",
]
