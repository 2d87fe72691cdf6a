"""Console sessions: a random id in an HttpOnly cookie, kept in memory with the signed
in user, a per-session CSRF token, the chosen language and the idle deadline.

Sessions live in the controller's process: a restart signs everyone out, which is the
safe direction for a console that acts on stock."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.api.auth import User

COOKIE = "doseline_console"
MAX_SESSIONS = 10_000


@dataclass
class Session:
    sid: str
    user: User
    csrf: str
    expires: float
    lang: str | None = None  # None: from the browser's Accept-Language
    station: str = field(default="")
    flash: list[tuple[str, str]] = field(default_factory=list)  # shown once, then gone

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            self.csrf.encode("ascii"), str(presented).encode("utf-8", "surrogateescape")
        )


class Sessions:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, user: User) -> Session:
        self._sweep()
        sid = secrets.token_urlsafe(32)
        session = Session(
            sid=sid,
            user=user,
            csrf=secrets.token_urlsafe(32),
            expires=self.clock() + self.timeout_s,
            station=f"console:{user.name}",
        )
        self._by_id[sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value (its idle deadline pushed on), or None."""
        if not sid or len(sid) > 100:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = self.clock()
        if now >= session.expires:
            del self._by_id[sid]
            return None
        session.expires = now + self.timeout_s
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def _sweep(self) -> None:
        now = self.clock()
        for sid in [s for s, v in self._by_id.items() if now >= v.expires]:
            del self._by_id[sid]
        if len(self._by_id) >= MAX_SESSIONS:  # the oldest deadlines go first
            for sid, _ in sorted(self._by_id.items(), key=lambda kv: kv[1].expires)[
                : len(self._by_id) - MAX_SESSIONS + 1
            ]:
                del self._by_id[sid]
