"""OPC UA adapter for dose-packing machines (OPC 30050 / PackTags naming).

The machine is the object `Objects/<name>` in the namespace `urn:doseline:packer`; the
address space is described in docs/packer-opcua.md. This module only maps nodes and
methods to the plain values of `drivers.base`; what to do with them is the controller's
business. Every failure leaves as `DriverError` naming machine, operation and cause.

The output tray (`Output/*`), `Canisters/*/RefilledTotal` and `Command/SetUnitMode` came
later than the rest of the model; they are optional: a machine without them still
connects, reads them as 0 / False, and refuses `set_unit_mode` with a DriverError.

Security (docs/security.md): with an `OpcUaSecurity` the session runs over a signed or
signed-and-encrypted secure channel, with the controller's own certificate, only to a
packer presenting exactly the configured (pinned) certificate, and optionally as a user
whose password comes from an environment variable or a file, never from the site file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies, uacrypto
from cryptography import x509

from drivers.base import (
    CanisterStatus,
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    UnitMode,
)

NAMESPACE_URI = "urn:doseline:packer"

#: Status nodes in the order `read_status` reads them (one Read request).
_STATUS_PATHS: tuple[tuple[str, str], ...] = (
    ("Status", "StateCurrent"),
    ("Status", "UnitModeCurrent"),
    ("Status", "CurMachSpeed"),
    ("Admin", "ProdProcessedCount"),
    ("Admin", "ProdDefectiveCount"),
    ("Admin", "StopReason"),
    ("Admin", "StopCanister"),
    ("Job", "JobId"),
    ("Job", "PouchesTotal"),
    ("Job", "PouchesGood"),
    ("Job", "PouchesRejected"),
)
#: Optional status nodes (output tray), read with the status when the machine has them.
_OUTPUT_PATHS: tuple[tuple[str, str], ...] = (
    ("Output", "Count"),
    ("Output", "Capacity"),
    ("Output", "Full"),
)
#: Canister variables read by `read_canisters`, per canister.
_CANISTER_VARS = ("Number", "Gtin", "Count", "Capacity", "DispensedTotal")
#: Optional canister variable, read when the machine has it.
_REFILLED = "RefilledTotal"
#: Methods of the Command object and their argument names (for error messages).
_METHODS: dict[str, tuple[str, ...]] = {
    **{c.value: () for c in PackMLCommand},
    "LoadJob": ("JobId", "Pouches"),
    "RefillCanister": ("Number", "Quantity"),
}
#: Optional methods (OPC 30050 SetUnitMode) and their argument names.
_OPTIONAL_METHODS: dict[str, tuple[str, ...]] = {"SetUnitMode": ("RequestedMode",)}
_ARGUMENT_NAMES: dict[str, tuple[str, ...]] = {**_METHODS, **_OPTIONAL_METHODS}
#: Requested session lifetime: short, so a crashed controller's session is freed soon.
_SESSION_TIMEOUT_MS = 60_000

_T = TypeVar("_T")

SecurityPolicyName = Literal["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]
SecurityModeName = Literal["Sign", "SignAndEncrypt"]
#: The policies a secured packer link may use (asyncua 2.1 implements all three).
SECURITY_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
SECURITY_MODES: dict[str, ua.MessageSecurityMode] = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}

#: Why a secured packer refused the controller, by status code: what to fix.
_REFUSALS: dict[int, str] = {
    ua.StatusCodes.BadCertificateUntrusted: (
        "the packer does not trust the controller's certificate"
        " (add security.certificate to the packer's trust list)"
    ),
    ua.StatusCodes.BadCertificateTimeInvalid: "a certificate is expired or not yet valid",
    ua.StatusCodes.BadCertificateUriInvalid: (
        "the certificate's application URI does not match the application"
    ),
    ua.StatusCodes.BadCertificateUseNotAllowed: "the certificate's key usage does not allow this",
    ua.StatusCodes.BadCertificateRevoked: "the controller's certificate is revoked",
    ua.StatusCodes.BadCertificateInvalid: "a certificate is invalid",
    ua.StatusCodes.BadSecurityChecksFailed: "the security checks failed",
    ua.StatusCodes.BadUserAccessDenied: "user access denied (wrong user name or password)",
    ua.StatusCodes.BadIdentityTokenInvalid: "the user identity is invalid",
    ua.StatusCodes.BadIdentityTokenRejected: (
        "the packer rejected the user identity (it wants a user name and password,"
        " or does not accept this kind of identity)"
    ),
    ua.StatusCodes.BadSecurityPolicyRejected: "the packer rejected the security policy",
}


@dataclass(frozen=True)
class OpcUaSecurity:
    """The security of one packer link (the site file's `packers[].security`).

    Paths are checked and files read when the driver connects, so a missing file is a
    DriverError naming it. The password comes from the environment variable
    `password_env` or the file `password_file` (first line), never from the site file.
    """

    policy: str  # a SecurityPolicyName
    mode: str  # a SecurityModeName
    certificate: str
    private_key: str
    server_certificate: str
    user: str | None = None
    password_env: str | None = None
    password_file: str | None = None

    def __post_init__(self) -> None:
        if self.policy not in SECURITY_POLICIES:
            raise ValueError(f"policy: {self.policy!r} is not one of {sorted(SECURITY_POLICIES)}")
        if self.mode not in SECURITY_MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {sorted(SECURITY_MODES)}")
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.user:
            raise ValueError("a password needs a user")

    def check_files(self) -> str | None:
        """Checks the certificate and key files exist; returns the password (blocking)."""
        for field_name in ("certificate", "private_key", "server_certificate"):
            path = getattr(self, field_name)
            if not Path(path).is_file():
                raise DriverError(f"security.{field_name}: file {path} not found")
        return self.password()

    def password(self) -> str | None:
        """The user's password from its variable or file; DriverError if it is not there."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if not value:
                raise DriverError(
                    f"security.password_env: environment variable {self.password_env} is not set"
                )
            return value
        if self.password_file:
            try:
                text = Path(self.password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise DriverError(
                    f"security.password_file: cannot read {self.password_file}:"
                    f" {exc.strerror or exc}"
                ) from exc
            lines = text.splitlines()
            if not lines or not lines[0]:
                raise DriverError(f"security.password_file: {self.password_file} is empty")
            return lines[0]
        return None


class OpcUaPackerDriver(PackerDriver):
    """A packer reached over OPC UA at `address` (an ``opc.tcp://`` URL).

    `object_name` is the machine object's browse name under Objects; it defaults to
    `name`. Nodes are resolved once in `connect()`; after a DriverError caused by a lost
    connection, call `connect()` again (it re-resolves and the caller re-reads state).
    """

    def __init__(
        self,
        name: str,
        address: str,
        timeout: float = 5.0,
        *,
        object_name: str | None = None,
        security: OpcUaSecurity | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0, got {timeout}")
        if not address.startswith("opc.tcp://"):
            raise ValueError(f"address: {address!r} is not an opc.tcp:// URL")
        self.name = name
        self.address = address
        self.timeout = timeout
        self.object_name = object_name or name
        self.security = security
        self._client: Client | None = None
        self._status_nodes: list[Node] = []
        self._output_nodes: list[Node] = []  # empty when the machine has no Output tray
        self._canister_nodes: list[list[Node]] = []
        self._refilled_nodes: list[Node | None] = []  # per canister, None when absent
        self._command_node: ua.NodeId | None = None
        self._method_ids: dict[str, ua.NodeId] = {}

    # -- connection ------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a session and resolve every node by browse path (bounded by `timeout`)."""
        await self.close()
        try:
            client = Client(self.address, timeout=self.timeout)
            client.server_url.port  # noqa: B018  # raises ValueError on a bad port
        except ValueError as exc:
            raise self._error("connect", exc) from exc
        client.name = client.description = f"doseline packer driver {self.name}"
        client.session_timeout = _SESSION_TIMEOUT_MS
        try:
            async with asyncio.timeout(self.timeout):
                if self.security is not None:
                    await self._secure(client, self.security)
                await client.connect()
                await self._resolve(client)
        except BaseException as exc:
            await self._shutdown(client)
            if isinstance(exc, Exception):
                raise self._error("connect", exc) from exc
            raise
        self._client = client

    async def _secure(self, client: Client, security: OpcUaSecurity) -> None:
        """Certificates, pinned server certificate and user on `client`, before connect."""
        password = await asyncio.to_thread(security.check_files)
        own = await _load_certificate(security.certificate, "certificate")
        pinned = await _load_certificate(security.server_certificate, "server_certificate")
        policy = SECURITY_POLICIES[security.policy]
        mode = SECURITY_MODES[security.mode]
        await self._check_endpoint(security, policy, mode, pinned)
        # The client's application URI must be the one in its certificate (servers check).
        uris = _certificate_uris(own)
        if uris:
            client.application_uri = uris[0]
        try:
            await client.set_security(
                policy,
                security.certificate,
                security.private_key,
                server_certificate=security.server_certificate,
                mode=mode,
            )
        except (OSError, ValueError, TypeError) as exc:
            raise DriverError(
                f"security: cannot load certificate {security.certificate} or private key"
                f" {security.private_key}: {exc}"
            ) from exc
        client.certificate_validator = _pinned_validator(pinned, security.server_certificate)
        if security.user:
            client.set_user(security.user)
            if password is not None:
                client.set_password(password)

    async def _check_endpoint(
        self,
        security: OpcUaSecurity,
        policy: type[security_policies.SecurityPolicy],
        mode: ua.MessageSecurityMode,
        pinned: x509.Certificate,
    ) -> None:
        """Ask the packer for its endpoints first (OPC UA discovery, unsecured by design)
        so that a wrong certificate or a missing policy is named instead of showing as a
        timeout: a packer cannot even read an OpenSecureChannel meant for another
        certificate. The secured channel itself is what enforces the pin."""
        probe = Client(self.address, timeout=self.timeout)
        try:
            endpoints = await probe.connect_and_get_server_endpoints()
        except ua.UaStatusCodeError:
            return  # discovery refused: the secured attempt will tell
        wanted = f"{security.policy} {security.mode}"
        offered = [
            ep for ep in endpoints if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode
        ]
        if not offered:
            names = sorted({_endpoint_name(ep) for ep in endpoints})
            raise DriverError(
                f"the packer offers no {wanted} endpoint (it offers: {', '.join(names) or 'none'})"
            )
        presented = offered[0].ServerCertificate
        if presented and _first_der(presented) != uacrypto.der_from_x509(pinned):
            try:
                other = _describe_certificate(x509.load_der_x509_certificate(_first_der(presented)))
            except ValueError:
                other = "an unreadable certificate"
            raise DriverError(
                f"untrusted server: the packer presents {other}, not the certificate in"
                f" security.server_certificate {security.server_certificate}"
                f" ({_describe_certificate(pinned)})"
            )

    async def close(self) -> None:
        """Close the session; does nothing when not connected."""
        client, self._client = self._client, None
        if client is not None:
            await self._shutdown(client)

    async def _shutdown(self, client: Client) -> None:
        # Client.disconnect() logs a traceback when the peer is already gone; these
        # steps are the same without the noise. close_session() also cancels the
        # client's supervisor and watchdog tasks, so nothing is left running.
        try:
            async with asyncio.timeout(self.timeout):
                with contextlib.suppress(Exception):
                    await client.close_session()
                if client.state is UaClientState.CHANNEL_OPEN:
                    with contextlib.suppress(Exception):
                        await client.close_secure_channel()
        except TimeoutError:
            pass
        finally:
            client.disconnect_socket()

    async def _resolve(self, client: Client) -> None:
        try:
            ns = await client.get_namespace_index(NAMESPACE_URI)
        except ValueError:
            raise DriverError(f"namespace {NAMESPACE_URI} is not on the server") from None
        root = (self.object_name,)
        canisters_folder = await self._translate(client, ns, [(*root, "Canisters")])
        refs = await client.get_node(canisters_folder[0]).get_children_descriptions()
        canister_names = sorted(
            r.BrowseName.Name for r in refs if r.BrowseName.NamespaceIndex == ns
        )
        paths: list[tuple[str, ...]] = [(*root, *p) for p in _STATUS_PATHS]
        paths += [(*root, "Canisters", c, v) for c in canister_names for v in _CANISTER_VARS]
        paths.append((*root, "Command"))
        paths += [(*root, "Command", m) for m in _METHODS]
        ids = await self._translate(client, ns, paths)

        n_status, n_vars = len(_STATUS_PATHS), len(_CANISTER_VARS)
        self._status_nodes = [client.get_node(i) for i in ids[:n_status]]
        can_ids = ids[n_status : n_status + n_vars * len(canister_names)]
        self._canister_nodes = [
            [client.get_node(i) for i in can_ids[k : k + n_vars]]
            for k in range(0, len(can_ids), n_vars)
        ]
        rest = ids[n_status + len(can_ids) :]
        self._command_node = rest[0]
        self._method_ids = dict(zip(_METHODS, rest[1:], strict=True))

        optional: list[tuple[str, ...]] = [(*root, *p) for p in _OUTPUT_PATHS]
        optional += [(*root, "Canisters", c, _REFILLED) for c in canister_names]
        optional += [(*root, "Command", m) for m in _OPTIONAL_METHODS]
        found = await self._translate_optional(client, ns, optional)
        n_out = len(_OUTPUT_PATHS)
        outputs = found[:n_out]
        self._output_nodes = (
            [client.get_node(i) for i in outputs if i is not None]
            if all(i is not None for i in outputs)
            else []
        )
        refilled = found[n_out : n_out + len(canister_names)]
        self._refilled_nodes = [None if i is None else client.get_node(i) for i in refilled]
        for name, node_id in zip(
            _OPTIONAL_METHODS, found[n_out + len(canister_names) :], strict=True
        ):
            if node_id is not None:
                self._method_ids[name] = node_id

    @classmethod
    async def _translate(
        cls, client: Client, ns: int, paths: Sequence[tuple[str, ...]]
    ) -> list[ua.NodeId]:
        """Browse paths below Objects to node ids; a path not found is a DriverError."""
        ids: list[ua.NodeId] = []
        for path, (node_id, status) in zip(
            paths, await cls._browse(client, ns, paths), strict=True
        ):
            if node_id is None:
                raise DriverError(f"node Objects/{'/'.join(path)} not found ({status})")
            ids.append(node_id)
        return ids

    @classmethod
    async def _translate_optional(
        cls, client: Client, ns: int, paths: Sequence[tuple[str, ...]]
    ) -> list[ua.NodeId | None]:
        """Like `_translate`, but a path the server does not have gives None."""
        return [node_id for node_id, _ in await cls._browse(client, ns, paths)]

    @staticmethod
    async def _browse(
        client: Client, ns: int, paths: Sequence[tuple[str, ...]]
    ) -> list[tuple[ua.NodeId | None, str]]:
        """One TranslateBrowsePaths request: (node id or None, status name) per path."""
        relative = [
            ua.RelativePath(
                Elements=[
                    ua.RelativePathElement(  # asyncua hints bools as its ua.Boolean marker
                        ReferenceTypeId=ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences)),
                        IsInverse=False,  # type: ignore[arg-type]
                        IncludeSubtypes=True,  # type: ignore[arg-type]
                        TargetName=ua.QualifiedName(name, ns),
                    )
                    for name in path
                ]
            )
            for path in paths
        ]
        results = await client.translate_browsepaths(client.nodes.objects.nodeid, relative)
        found: list[tuple[ua.NodeId | None, str]] = []
        for result in results:
            if not result.StatusCode.is_good() or not result.Targets:
                found.append((None, result.StatusCode.name))
                continue
            target = result.Targets[0].TargetId
            found.append((ua.NodeId(target.Identifier, target.NamespaceIndex), "Good"))
        return found

    # -- reads -----------------------------------------------------------------------

    async def read_status(self) -> PackerStatus:
        nodes = [*self._status_nodes, *self._output_nodes]
        values = await self._guarded("read_status", lambda c: self._read(c, nodes))
        n_status = len(self._status_nodes)
        output_count, output_capacity, output_full = 0, 0, False
        try:
            if self._output_nodes:
                count, capacity, full = values[n_status:]
                output_count = _int(count, "Output/Count")
                output_capacity = _int(capacity, "Output/Capacity")
                output_full = _bool(full, "Output/Full")
            (
                state,
                mode,
                speed,
                processed,
                defective,
                reason,
                stop_canister,
                job_id,
                total,
                good,
                rejected,
            ) = values[:n_status]
            return PackerStatus(
                state=_state(state),
                unit_mode=_int(mode, "Status/UnitModeCurrent"),
                machine_speed=_float(speed, "Status/CurMachSpeed"),
                processed_total=_int(processed, "Admin/ProdProcessedCount"),
                defective_total=_int(defective, "Admin/ProdDefectiveCount"),
                stop_reason=_int(reason, "Admin/StopReason"),
                stop_canister=_int(stop_canister, "Admin/StopCanister"),
                job_id=_str(job_id, "Job/JobId"),
                job_pouches_total=_int(total, "Job/PouchesTotal"),
                job_pouches_good=_int(good, "Job/PouchesGood"),
                job_pouches_rejected=_int(rejected, "Job/PouchesRejected"),
                output_count=output_count,
                output_capacity=output_capacity,
                output_full=output_full,
            )
        except ValueError as exc:
            raise self._error("read_status", exc) from exc

    async def read_canisters(self) -> Sequence[CanisterStatus]:
        """All canisters in one Read request, with RefilledTotal where the machine has it."""
        flat: list[Node] = []
        for nodes, refilled_node in zip(self._canister_nodes, self._refilled_nodes, strict=True):
            flat += nodes
            if refilled_node is not None:
                flat.append(refilled_node)
        values = await self._guarded("read_canisters", lambda c: self._read(c, flat))
        n = len(_CANISTER_VARS)
        result: list[CanisterStatus] = []
        try:
            pos = 0
            for k, refilled_node in enumerate(self._refilled_nodes):
                number, gtin, count, capacity, dispensed = values[pos : pos + n]
                pos += n
                where = f"Canisters[{k}]"
                refilled = 0
                if refilled_node is not None:
                    refilled = _int(values[pos], f"{where}/{_REFILLED}")
                    pos += 1
                result.append(
                    CanisterStatus(
                        number=_int(number, f"{where}/Number"),
                        gtin=_str(gtin, f"{where}/Gtin"),
                        count=_int(count, f"{where}/Count"),
                        capacity=_int(capacity, f"{where}/Capacity"),
                        dispensed_total=_int(dispensed, f"{where}/DispensedTotal"),
                        refilled_total=refilled,
                    )
                )
        except ValueError as exc:
            raise self._error("read_canisters", exc) from exc
        return sorted(result, key=lambda c: c.number)

    @staticmethod
    async def _read(client: Client, nodes: Sequence[Node]) -> list[Any]:
        """One Read request. Unlike Client.read_values, a Bad status per node is an error."""
        data = await client.read_attributes(nodes, ua.AttributeIds.Value)
        values: list[Any] = []
        for node, dv in zip(nodes, data, strict=True):
            status = dv.StatusCode
            if status is not None and not status.is_good():
                raise DriverError(f"reading {node.nodeid.to_string()} gave {status.name}")
            values.append(dv.Value.Value if dv.Value is not None else None)
        return values

    # -- methods ---------------------------------------------------------------------

    async def load_job(self, job: PackerJobSpec) -> None:
        pouches = [
            {
                "seq": p.sequence,
                "label": p.label,
                "items": [[i.canister, i.quantity] for i in p.items],
            }
            for p in job.pouches
        ]
        await self._call(
            f"load_job {job.job_id!r}",
            "LoadJob",
            [
                ua.Variant(job.job_id, ua.VariantType.String),
                ua.Variant(json.dumps(pouches, separators=(",", ":")), ua.VariantType.String),
            ],
        )

    async def command(self, command: PackMLCommand) -> None:
        command = PackMLCommand(command)
        await self._call(f"command {command.value}", command.value, [])

    async def refill_canister(self, number: int, quantity: int) -> None:
        await self._call(
            f"refill_canister {number} +{quantity}",
            "RefillCanister",
            [ua.Variant(number, ua.VariantType.Int32), ua.Variant(quantity, ua.VariantType.Int32)],
        )

    @property
    def reports_refilled_total(self) -> bool:
        return bool(self._refilled_nodes) and all(n is not None for n in self._refilled_nodes)

    async def set_unit_mode(self, mode: UnitMode) -> None:
        """OPC 30050 SetUnitMode(RequestedMode Int32) on the Command object; the machine
        refuses it outside Stopped, Idle and Aborted (BadInvalidState)."""
        try:
            label = f"{UnitMode(mode).name} ({int(mode)})"
        except ValueError:
            label = str(int(mode))
        operation = f"set_unit_mode {label}"
        if self._client is not None and "SetUnitMode" not in self._method_ids:
            raise self._error(
                operation, DriverError("the machine has no Command/SetUnitMode method")
            )
        await self._call(operation, "SetUnitMode", [ua.Variant(int(mode), ua.VariantType.Int32)])

    async def _call(self, operation: str, method: str, args: list[ua.Variant]) -> None:
        async def call(client: Client) -> None:
            request = ua.CallMethodRequest(
                ObjectId=self._command_node,
                MethodId=self._method_ids[method],
                InputArguments=args,
            )
            (result,) = await client.uaclient.call([request])
            if not result.StatusCode.is_good():
                raise DriverError(f"refused: {_describe(method, result)}")

        await self._guarded(operation, call)

    # -- plumbing --------------------------------------------------------------------

    async def _guarded(self, operation: str, func: Callable[[Client], Awaitable[_T]]) -> _T:
        """Run one exchange with a deadline; every failure becomes a DriverError."""
        client = self._client
        if client is None:
            raise DriverError(f"packer {self.name} ({self.address}): {operation}: not connected")
        try:
            async with asyncio.timeout(self.timeout):
                return await func(client)
        except Exception as exc:
            raise self._error(operation, exc) from exc

    def _error(self, operation: str, exc: Exception) -> DriverError:
        if isinstance(exc, DriverError):
            cause = str(exc)
        elif isinstance(exc, TimeoutError):
            cause = f"no answer within {self.timeout:g} s"
        elif isinstance(exc, ua.UaStatusCodeError):
            name = ua.StatusCode(exc.code).name
            refusal = _REFUSALS.get(exc.code)
            cause = f"refused: {refusal} ({name})" if refusal else f"{name}: {exc}"
        elif str(exc).startswith("No matching endpoints") and isinstance(exc, ua.UaError):
            wanted = (
                "unsecured (None)"
                if self.security is None
                else f"{self.security.policy} {self.security.mode}"
            )
            cause = f"refused: the packer offers no {wanted} endpoint"
            if self.security is None:
                cause += " (it requires security: set packers[].security in the site file)"
        else:
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return DriverError(f"packer {self.name} ({self.address}): {operation}: {cause}")


async def _load_certificate(path: str, field_name: str) -> x509.Certificate:
    try:
        return await uacrypto.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise DriverError(
            f"security.{field_name}: {path} is not a DER or PEM certificate: {exc}"
        ) from exc


def _certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _describe_certificate(cert: x509.Certificate) -> str:
    """Subject and SHA-256 fingerprint: what an operator compares with the machine's HMI."""
    digest = hashlib.sha256(uacrypto.der_from_x509(cert)).hexdigest()
    return f"{cert.subject.rfc4514_string() or 'no subject'}, SHA-256 {digest[:16]}..."


def _first_der(data: bytes) -> bytes:
    """The first certificate of a DER chain (a server may send its chain concatenated)."""
    if len(data) < 2 or data[0] != 0x30:
        return data
    length = data[1]
    if length < 0x80:
        return data[: 2 + length]
    n = length & 0x7F
    return data[: 2 + n + int.from_bytes(data[2 : 2 + n], "big")]


def _endpoint_name(ep: ua.EndpointDescription) -> str:
    policy = (ep.SecurityPolicyUri or "").rsplit("#", 1)[-1] or "?"
    mode = {
        ua.MessageSecurityMode.None_: "None",
        ua.MessageSecurityMode.Sign: "Sign",
        ua.MessageSecurityMode.SignAndEncrypt: "SignAndEncrypt",
    }.get(ep.SecurityMode, str(ep.SecurityMode))
    return policy if policy == "None" else f"{policy} {mode}"


def _pinned_validator(
    pinned: x509.Certificate, path: str
) -> Callable[[x509.Certificate, ua.ApplicationDescription], Awaitable[None]]:
    """asyncua's certificate validator hook for the server certificate (asyncua checks
    none unless one is set): it must be the configured one, and valid now."""
    pinned_der = uacrypto.der_from_x509(pinned)

    async def validate(cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        if uacrypto.der_from_x509(cert) != pinned_der:
            raise DriverError(
                f"untrusted server: the packer presents {_describe_certificate(cert)}, not the"
                f" certificate in security.server_certificate {path}"
                f" ({_describe_certificate(pinned)})"
            )
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise DriverError(
                f"the packer's certificate ({_describe_certificate(cert)}) is valid only from"
                f" {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to"
                f" {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )

    return validate


def _describe(method: str, result: ua.CallMethodResult) -> str:
    """The machine's reason for refusing a call: status, bad arguments and any text.

    Servers may put human-readable text in InputArgumentDiagnosticInfos[].AdditionalInfo
    (the doseline simulator does); without it the status code names stay.
    """
    parts = [result.StatusCode.name]
    names = _ARGUMENT_NAMES.get(method, ())
    for i, status in enumerate(result.InputArgumentResults or []):
        if status.is_bad():
            arg = names[i] if i < len(names) else f"argument {i}"
            parts.append(f"{arg}: {status.name}")
    texts = []
    for info in result.InputArgumentDiagnosticInfos or []:
        text = info.AdditionalInfo if info is not None else None
        if text and text not in texts:
            texts.append(text)
    detail = "; ".join(texts) if texts else result.StatusCode.doc
    return f"{detail} ({', '.join(parts)})"


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{path}: expected a boolean, got {value!r}")
    return value


def _float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    return float(value)


def _str(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected a string, got {value!r}")
    return value


def _state(value: Any) -> PackMLState:
    number = _int(value, "Status/StateCurrent")
    try:
        return PackMLState(number)
    except ValueError:
        raise ValueError(f"Status/StateCurrent: {number} is not a PackML state") from None
