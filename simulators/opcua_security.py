"""OPC UA security of a simulated packer, set up as on a real machine: its own
certificate, signed or encrypted endpoints only, a trust list of client certificates
and, optionally, user names (docs/security.md).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509

_log = logging.getLogger("simulators.packer_opcua")


#: The endpoints a secured simulator offers unless told otherwise.
SECURE_POLICIES: tuple[ua.SecurityPolicyType, ...] = (
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
)


@dataclass(frozen=True)
class SimSecurity:
    """OPC UA security of a simulated packer, as a real machine would be set up.

    `certificate`/`private_key`: the machine's own application instance certificate
    (DER or PEM) and key. `trusted_clients`: certificates of the clients it accepts
    (its trust list); a client presenting any other certificate, or none (NoSecurity),
    gets no session. `policies`: the endpoints offered (never NoSecurity).
    `users`: user name -> password; when given, a session needs one of them and an
    anonymous one is refused."""

    certificate: Path
    private_key: Path
    trusted_clients: Sequence[Path] = ()
    policies: Sequence[ua.SecurityPolicyType] = SECURE_POLICIES
    users: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if ua.SecurityPolicyType.NoSecurity in self.policies:
            raise ValueError("policies: a secured simulator never offers NoSecurity")
        if not self.policies:
            raise ValueError("policies: name at least one security policy")


class TrustList:
    """The secured simulator's checks on a client: its certificate (time range and
    trust list, at CreateSession) and its identity (at ActivateSession)."""

    def __init__(self, trusted: Sequence[x509.Certificate], users: Mapping[str, str]) -> None:
        self._trusted = {uacrypto.der_from_x509(c) for c in trusted}
        self._users = dict(users)

    async def validate(self, cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        """asyncua's certificate validator hook: raise ServiceError to refuse."""
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ServiceError(ua.StatusCodes.BadCertificateTimeInvalid)
        if uacrypto.der_from_x509(cert) not in self._trusted:
            subject = cert.subject.rfc4514_string()
            _log.warning("refused client certificate %s: not trusted", subject)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        """asyncua's user manager hook; None refuses the session (BadUserAccessDenied).

        `certificate` is the secure channel's client certificate, None on a NoSecurity
        channel: asyncua opens one for discovery whatever the endpoints, and would then
        let a client that skips the endpoint check create a session on it."""
        # A chain arrives as the certificates' DER one after the other, leaf first.
        chain = certificate if isinstance(certificate, bytes) else b""
        if not any(chain.startswith(der) for der in self._trusted):
            return None
        if not self._users:
            return User(role=UserRole.User)
        expected = self._users.get(username or "")
        if expected is None or password is None:
            return None
        if not hmac.compare_digest(expected.encode(), password.encode()):
            return None
        return User(role=UserRole.User, name=username)


async def secure_server(server: Server, security: SimSecurity) -> None:
    """Own certificate, signed/encrypted endpoints only, trust list, users."""
    await server.load_certificate(str(security.certificate))
    await server.load_private_key(str(security.private_key))
    server.set_security_policy(list(security.policies))
    tokens: list[type] = (
        [ua.UserNameIdentityToken] if security.users else [ua.AnonymousIdentityToken]
    )
    server.set_identity_tokens(tokens)
    trusted = [await uacrypto.load_certificate(str(p)) for p in security.trusted_clients]
    checks = TrustList(trusted, security.users)
    server.set_certificate_validator(checks.validate)
    server.iserver.set_user_manager(checks)  # type: ignore[arg-type]
