"""What every route needs: the site, the ledger and stores, the ledger queries, the
services of a running controller (when one runs) and the tokens; and the bearer-token
dependency that checks roles."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError

from controller.api.auth import Role, Tokens, User
from controller.api.errors import ApiError
from controller.cabinets.refill_store import RefillStore
from controller.config import Site
from controller.ledger import Ledger
from controller.packing.store import PackingStore
from controller.ports import LedgerQueries, RunningSite

log = logging.getLogger("doseline.api")
T = TypeVar("T")


@dataclass
class ApiContext:
    site: Site
    ledger: Ledger
    store: PackingStore
    tokens: Tokens
    queries: LedgerQueries
    running: RunningSite | None = None
    version: str = "0"
    refills: RefillStore = field(init=False)
    # SQLite has one writer: without a controller's ledger pool, calls queue here.
    _sqlite_lock: asyncio.Lock | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.refills = RefillStore(self.ledger)
        if self.ledger.engine.dialect.name == "sqlite":
            self._sqlite_lock = asyncio.Lock()

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a synchronous read (a listing, a report) in a worker thread, beside the
        controller's writes: readers never wait for the writer (SQLite runs in WAL)."""
        return await self._guard(fn, asyncio.to_thread(functools.partial(fn, *args, **kwargs)))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a synchronous write off the event loop: on the running controller's
        ledger pool when there is one (it queues behind the controller's own writes,
        as SQLite has one writer), else in a worker thread, one at a time on SQLite."""
        if self.running is not None:
            return await self._guard(fn, self.running.ledger_calls.run(fn, *args, **kwargs))
        call = functools.partial(fn, *args, **kwargs)
        if self._sqlite_lock is None:
            return await self._guard(fn, asyncio.to_thread(call))
        async with self._sqlite_lock:
            return await self._guard(fn, asyncio.to_thread(call))

    @staticmethod
    async def _guard(fn: Callable[..., Any], work: Awaitable[T]) -> T:
        try:
            return await work
        except OperationalError as exc:
            # The driver's message can quote statement parameters: log the kind only.
            name = getattr(fn, "__name__", "call")
            log.error("api: ledger call %s failed: %s", name, type(exc.orig).__name__)
            raise ApiError(503, "the ledger database is unreachable or busy; try again") from None

    def need_running(self, what: str) -> RunningSite:
        if self.running is None:
            raise ApiError(
                503,
                f"{what} needs a running controller (`doseline run` with api.enabled); "
                "this API serves the ledger only",
            )
        return self.running

    def today(self) -> date:
        """The site's local date."""
        return datetime.now(UTC).astimezone(ZoneInfo(self.site.site.timezone)).date()


async def get_context(request: Request) -> ApiContext:
    # async: FastAPI would run a plain function in its thread pool, for nothing.
    ctx: ApiContext = request.app.state.ctx
    return ctx


Context = Annotated[ApiContext, Depends(get_context)]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="`Authorization: Bearer <token>`; tokens are listed by their SHA-256 hash "
    "in the tokens file (docs/api.md)",
)


def require(role: Role) -> Callable[..., Awaitable[User]]:
    """A dependency that admits a token of `role` or above, and gives its user."""

    async def check(
        ctx: Context,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> User:
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                field="Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
        user = ctx.tokens.lookup(credentials.credentials)
        if user is None:
            raise ApiError(
                401,
                "unknown token",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if not user.may(role):
            raise ApiError(
                403,
                f"role {role.label} or above is needed; {user.name} has role {user.role.label}",
                field="role",
                value=user.role.label,
            )
        return user

    check.__name__ = f"require_{role.label}"
    return check


Viewer = Annotated[User, Depends(require(Role.VIEWER))]
Technician = Annotated[User, Depends(require(Role.TECHNICIAN))]
Pharmacist = Annotated[User, Depends(require(Role.PHARMACIST))]


def role_note(role: Role) -> dict[str, Any]:
    """OpenAPI extension naming the least role a route needs."""
    return {"x-required-role": role.label}
