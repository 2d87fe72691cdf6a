"""Bearer tokens and roles for the HTTP API.

A token is a random string a client sends as `Authorization: Bearer <token>`. The
controller never stores it in clear: the tokens file (or the environment variable)
holds one line per token,

    <sha256 hex of the token> <user name> <role>

so whoever reads the file learns who may call the API, but cannot call it. Blank lines
and lines starting with `#` are ignored. Roles are ordered, each including the ones
below it: viewer < technician < pharmacist < admin.

`hash_token` makes the first field:

    python -c "from controller.api import hash_token; print(hash_token('s3cret'))"
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from controller.config import ApiConfig

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")


class Role(enum.IntEnum):
    """API roles; a higher role may do everything a lower one may."""

    VIEWER = 1
    TECHNICIAN = 2
    PHARMACIST = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"role {text!r} is not one of {', '.join(r.label for r in cls)}"
            ) from None


class TokenFileError(ValueError):
    """A tokens file or variable could not be read; the message names the line."""


@dataclass(frozen=True)
class User:
    """Who called: the user name (recorded as the actor in the audit trail) and role."""

    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        return self.role >= needed


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of a token: the first field of its line in a tokens file."""
    if not token or token != token.strip():
        raise ValueError("a token must be non-empty and have no spaces around it")
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Tokens:
    """The known token hashes. `lookup` compares in constant time against every entry,
    so the time taken says nothing about how close a guess was."""

    def __init__(self, entries: Iterable[tuple[str, User]] = ()) -> None:
        self._entries: list[tuple[bytes, User]] = []
        seen: set[str] = set()
        for digest, user in entries:
            if not _HEX64.match(digest):
                raise ValueError(f"token hash {digest[:12]!r}...: not 64 lower-case hex digits")
            if digest in seen:
                raise ValueError(f"token hash {digest[:12]}... appears twice")
            seen.add(digest)
            self._entries.append((digest.encode("ascii"), user))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def users(self) -> list[User]:
        return [user for _digest, user in self._entries]

    def lookup(self, token: str) -> User | None:
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        presented_b = presented.encode("ascii")
        found: User | None = None
        for digest, user in self._entries:
            if hmac.compare_digest(digest, presented_b):
                found = user
        return found


def parse_tokens(text: str, *, source: str) -> Tokens:
    """Reads tokens in the file format; a bad line is refused with its number (1-based)
    and what is wrong with it. The hash itself is never quoted in full."""
    entries: list[tuple[str, User]] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        fields = line.split()
        if len(fields) != 3:
            raise TokenFileError(
                f"{where}: expected '<sha256-hex> <user> <role>', found {len(fields)} field(s)"
            )
        digest, user, role_text = fields
        if not _HEX64.match(digest):
            shown = digest[:8] + "..." if len(digest) > 8 else digest
            raise TokenFileError(
                f"{where}: token hash {shown!r} is not 64 lower-case hex digits "
                "(write hash_token(token), never the token itself)"
            )
        if not _USER.match(user):
            raise TokenFileError(
                f"{where}: user {user!r} must be letters, digits and _ . : @ - (up to 100)"
            )
        try:
            role = Role.parse(role_text)
        except ValueError as exc:
            raise TokenFileError(f"{where}: {exc}") from None
        if digest in first_line:
            raise TokenFileError(
                f"{where}: the same token hash as line {first_line[digest]} (user {user!r})"
            )
        first_line[digest] = number
        entries.append((digest, User(user, role)))
    return Tokens(entries)


def load_tokens(config: ApiConfig, *, environ: dict[str, str] | None = None) -> Tokens:
    """The tokens of a site: from `config.tokens_file` when set, else from the
    environment variable `config.tokens_env` (lines separated by newlines or ';')."""
    if config.tokens_file:
        path = Path(config.tokens_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(
                f"api.tokens_file: cannot read {str(path)!r}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise TokenFileError(f"api.tokens_file: {str(path)!r} is not UTF-8 text") from None
        return parse_tokens(text, source=str(path))
    env = os.environ if environ is None else environ
    text = env.get(config.tokens_env, "")
    return parse_tokens(text.replace(";", "\n"), source=f"${config.tokens_env}")
