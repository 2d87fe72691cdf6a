"""OPC UA adapter for dose-packing machines that follow OPC 30050 (PackML).

The driver finds the machine by its type: an object below Objects whose type definition
is `PackMLBaseObjectType` (or a subtype) in the namespace
`http://opcfoundation.org/UA/PackML/`. It reads the PackML state from the three state
machines' `CurrentState/Id`, the PackTags counters and stop reason from `Admin`, and
drives the machine through the state machines' standard methods. Job, canister and
output tray nodes are doseline's extension in the namespace `urn:doseline:packer:ext`
on the same object; docs/packer-opcua.md has the mapping. This module only maps nodes
and methods to the plain values of `drivers.base`; what to do with them is the
controller's business. Every failure leaves as `DriverError` naming machine, operation
and cause. The model of doseline's first packers is in `drivers.opcua_packer_legacy`.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies, uacrypto
from cryptography import x509
from cryptography.hazmat.primitives import serialization

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

PACKML_URI = "http://opcfoundation.org/UA/PackML/"
EXTENSION_URI = "urn:doseline:packer:ext"
#: Node ids (numeric, in the PackML namespace) from the published NodeSet2.
_BASE_OBJECT_TYPE = 6
_COUNT_DATA_TYPE, _COUNT_ENCODING = 14, 69
_ALARM_DATA_TYPE, _ALARM_ENCODING = 15, 74
_CLEARED, _RUNNING = 71, 75
_BASE_STATES = {61: PackMLState.ABORTING, 62: PackMLState.ABORTED}
_MACHINE_STATES = {53: PackMLState.STOPPED, 54: PackMLState.STOPPING, 55: PackMLState.CLEARING}
_EXECUTE_STATES = {
    27: PackMLState.RESETTING,
    28: PackMLState.IDLE,
    29: PackMLState.STARTING,
    30: PackMLState.SUSPENDING,
    31: PackMLState.SUSPENDED,
    32: PackMLState.UNSUSPENDING,
    33: PackMLState.HOLDING,
    34: PackMLState.HELD,
    35: PackMLState.UNHOLDING,
    36: PackMLState.EXECUTE,
    37: PackMLState.COMPLETING,
    38: PackMLState.COMPLETE,
}
_BSM = "BaseStateMachine"
_MS = (_BSM, "MachineState")
_ES = (*_MS, "ExecuteState")
#: Where each command's method is (per the NodeSet): the state machine holding it.
#: Reset is on MachineState (from Stopped) and on ExecuteState (from Complete).
_COMMAND_OWNERS: dict[PackMLCommand, tuple[str, ...]] = {
    PackMLCommand.START: _ES,
    PackMLCommand.HOLD: _ES,
    PackMLCommand.UNHOLD: _ES,
    PackMLCommand.SUSPEND: _ES,
    PackMLCommand.UNSUSPEND: _ES,
    PackMLCommand.STOP: _MS,
    PackMLCommand.ABORT: (_BSM,),
    PackMLCommand.CLEAR: (_BSM,),
}
#: Argument names of the methods (for error messages).
_ARGUMENT_NAMES: dict[str, tuple[str, ...]] = {
    "Start": ("Parameter",),
    "LoadJob": ("JobId", "Pouches"),
    "RefillCanister": ("Number", "Quantity"),
    "SetUnitMode": ("RequestedMode",),
}
#: Extension variables per canister, read by `read_canisters`; RefilledTotal optional.
_CANISTER_VARS = ("Number", "Gtin", "Count", "Capacity", "DispensedTotal")
_REFILLED = "RefilledTotal"
_JOB_VARS = ("JobId", "PouchesTotal", "PouchesGood", "PouchesRejected")
_OUTPUT_VARS = ("Count", "Capacity", "Full")
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

    The machine is the PackMLBaseObjectType instance whose browse name is `object_name`
    (default: `name`); when `object_name` is not given and the server has exactly one
    such instance, that one. Nodes are resolved once in `connect()`; after a
    DriverError caused by a lost connection, call `connect()` again (it re-resolves and
    the caller re-reads state). `LegacyOpcUaPackerDriver` shares everything here but
    the address space.
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
        self._object_name_given = object_name is not None
        self._ns = 0
        self._machine: ua.NodeId | None = None
        self._calls: dict[tuple[tuple[str, ...], str], tuple[ua.NodeId, ua.NodeId]] = {}
        self._method_ids: dict[str, ua.NodeId] = {}  # the legacy model's

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
        if presented and _first_der(presented) != _der(pinned):
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
        """Find the machine by its type, then its members by browse path from it."""
        ns = await self._namespace(client, PACKML_URI, "not an OPC 30050 (PackML) server")
        ext = await self._namespace(
            client, EXTENSION_URI, "doseline's job and canister extension is missing"
        )
        _register_structures(ns)
        self._ns = ns
        machine = await self._find_machine(client, ns)
        self._machine = machine

        def q(*names: str) -> tuple[ua.QualifiedName, ...]:
            return tuple(ua.QualifiedName(n, ns) for n in names)

        def state_id(*owner: str) -> tuple[ua.QualifiedName, ...]:
            return (*q(*owner), ua.QualifiedName("CurrentState", 0), ua.QualifiedName("Id", 0))

        status_paths = [
            state_id(_BSM),
            state_id(*_MS),
            state_id(*_ES),
            q("Status", "UnitModeCurrent"),
            q("Status", "CurMachSpeed"),
            q("Admin", "ProdProcessedCount"),
            q("Admin", "ProdDefectiveCount"),
            q("Admin", "StopReason"),
            *[(ua.QualifiedName("Job", ext), ua.QualifiedName(v, ext)) for v in _JOB_VARS],
        ]
        canisters_folder = await self._translate(
            client, machine, [(ua.QualifiedName("Canisters", ext),)]
        )
        refs = await client.get_node(canisters_folder[0]).get_children_descriptions()
        canister_names = sorted(
            r.BrowseName.Name for r in refs if r.BrowseName.NamespaceIndex == ext
        )
        canister_paths = [
            tuple(ua.QualifiedName(n, ext) for n in ("Canisters", c, v))
            for c in canister_names
            for v in _CANISTER_VARS
        ]
        owners = sorted({*_COMMAND_OWNERS.values()})
        method_paths = [(*q(*owner), ua.QualifiedName(m, ns)) for owner, m in self._methods()]
        ids = await self._translate(
            client,
            machine,
            [*status_paths, *canister_paths, *[q(*o) for o in owners], *method_paths],
        )
        n_status, n_can, n_own = len(status_paths), len(canister_paths), len(owners)
        self._status_nodes = [client.get_node(i) for i in ids[:n_status]]
        can_ids = ids[n_status : n_status + n_can]
        n_vars = len(_CANISTER_VARS)
        self._canister_nodes = [
            [client.get_node(i) for i in can_ids[k : k + n_vars]]
            for k in range(0, len(can_ids), n_vars)
        ]
        owner_ids = dict(zip(owners, ids[n_status + n_can : n_status + n_can + n_own], strict=True))
        self._calls = {
            (owner, m): (owner_ids[owner], method_id)
            for (owner, m), method_id in zip(
                self._methods(), ids[n_status + n_can + n_own :], strict=True
            )
        }

        optional: list[tuple[ua.QualifiedName, ...]] = [
            (ua.QualifiedName("Output", ext), ua.QualifiedName(v, ext)) for v in _OUTPUT_VARS
        ]
        optional += [
            tuple(ua.QualifiedName(n, ext) for n in ("Canisters", c, _REFILLED))
            for c in canister_names
        ]
        optional += [
            (ua.QualifiedName("SetUnitMode", ns),),
            (ua.QualifiedName("LoadJob", ext),),
            (ua.QualifiedName("RefillCanister", ext),),
        ]
        found = [node_id for node_id, _ in await self._browse(client, machine, optional)]
        n_out = len(_OUTPUT_VARS)
        outputs = found[:n_out]
        self._output_nodes = (
            [client.get_node(i) for i in outputs if i is not None]
            if all(i is not None for i in outputs)
            else []
        )
        refilled = found[n_out : n_out + len(canister_names)]
        self._refilled_nodes = [None if i is None else client.get_node(i) for i in refilled]
        for name, node_id in zip(
            ("SetUnitMode", "LoadJob", "RefillCanister"),
            found[n_out + len(canister_names) :],
            strict=True,
        ):
            if node_id is not None:
                self._calls[((), name)] = (machine, node_id)

    @staticmethod
    def _methods() -> list[tuple[tuple[str, ...], str]]:
        """(state machine path, method) of every standard command the driver uses."""
        pairs = [(owner, c.value) for c, owner in _COMMAND_OWNERS.items()]
        pairs += [(_MS, "Reset"), (_ES, "Reset")]
        return pairs

    @staticmethod
    async def _namespace(client: Client, uri: str, meaning: str) -> int:
        try:
            return int(await client.get_namespace_index(uri))
        except ValueError:
            raise DriverError(f"namespace {uri} is not on the server ({meaning})") from None

    async def _find_machine(self, client: Client, ns: int) -> ua.NodeId:
        """The PackMLBaseObjectType instance (or of a subtype) for this packer: below
        Objects, up to two levels deep; by browse name `object_name`, or the only one
        when the name was not given and the server has exactly one machine."""
        types = await self._subtypes(client, ua.NodeId(ua.Int32(_BASE_OBJECT_TYPE), ua.Int16(ns)))
        machines: list[tuple[str, ua.NodeId]] = []
        level = [client.nodes.objects]
        for depth in range(2):
            deeper = []
            for parent in level:
                for ref in await parent.get_children_descriptions(
                    refs=ua.ObjectIds.HierarchicalReferences, nodeclassmask=ua.NodeClass.Object
                ):
                    if ref.TypeDefinition in types:
                        machines.append((ref.BrowseName.Name, ref.NodeId))
                    elif depth == 0 and ref.NodeId.NamespaceIndex != 0:
                        deeper.append(client.get_node(ref.NodeId))
            level = deeper
        named = [node_id for name, node_id in machines if name == self.object_name]
        if named:
            return named[0]
        if not self._object_name_given and len(machines) == 1:
            return machines[0][1]
        found = ", ".join(sorted(name for name, _ in machines)) or "none"
        raise DriverError(
            f"no PackMLBaseObjectType instance named {self.object_name!r} on the server"
            f" (found: {found})"
        )

    @staticmethod
    async def _subtypes(client: Client, root: ua.NodeId) -> set[ua.NodeId]:
        found = {root}
        todo = [root]
        while todo:
            node = client.get_node(todo.pop())
            for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HasSubtype):
                if ref.NodeId not in found:
                    found.add(ref.NodeId)
                    todo.append(ref.NodeId)
        return found

    @classmethod
    async def _translate(
        cls, client: Client, start: ua.NodeId, paths: Sequence[tuple[ua.QualifiedName, ...]]
    ) -> list[ua.NodeId]:
        """Browse paths from `start` to node ids; a path not found is a DriverError."""
        ids: list[ua.NodeId] = []
        for path, (node_id, status) in zip(
            paths, await cls._browse(client, start, paths), strict=True
        ):
            if node_id is None:
                where = "/".join(n.Name for n in path)
                raise DriverError(f"node {where} of the machine not found ({status})")
            ids.append(node_id)
        return ids

    @staticmethod
    async def _browse(
        client: Client, start: ua.NodeId, paths: Sequence[tuple[ua.QualifiedName, ...]]
    ) -> list[tuple[ua.NodeId | None, str]]:
        """One TranslateBrowsePaths request: (node id or None, status name) per path."""
        relative = [
            ua.RelativePath(
                Elements=[
                    ua.RelativePathElement(  # asyncua hints bools as its ua.Boolean marker
                        ReferenceTypeId=ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences)),
                        IsInverse=False,  # type: ignore[arg-type]
                        IncludeSubtypes=True,  # type: ignore[arg-type]
                        TargetName=name,
                    )
                    for name in path
                ]
            )
            for path in paths
        ]
        results = await client.translate_browsepaths(start, relative)
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
                base,
                machine,
                execute,
                mode,
                speed,
                processed,
                defective,
                reason,
                job_id,
                total,
                good,
                rejected,
            ) = values[:n_status]
            stop = _alarm(reason, "Admin/StopReason")
            return PackerStatus(
                state=_state(self._ns, base, machine, execute),
                unit_mode=_int(mode, "Status/UnitModeCurrent"),
                machine_speed=_float(speed, "Status/CurMachSpeed"),
                processed_total=_acc_count(processed, "Admin/ProdProcessedCount"),
                defective_total=_acc_count(defective, "Admin/ProdDefectiveCount"),
                stop_reason=stop[0],
                stop_canister=stop[1],
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
            ((), "LoadJob"),
            [
                ua.Variant(job.job_id, ua.VariantType.String),
                ua.Variant(json.dumps(pouches, separators=(",", ":")), ua.VariantType.String),
            ],
        )

    async def command(self, command: PackMLCommand) -> None:
        command = PackMLCommand(command)
        operation = f"command {command.value}"
        args: list[ua.Variant] = []
        if command is PackMLCommand.RESET:
            owner = await self._guarded(operation, self._reset_owner)
        else:
            owner = _COMMAND_OWNERS[command]
        if command is PackMLCommand.START:  # Parameter: an empty PackMLDescriptorDataType[]
            args = [ua.Variant([], ua.VariantType.ExtensionObject)]
        await self._call(operation, (owner, command.value), args)

    async def _reset_owner(self, client: Client) -> tuple[str, ...]:
        """Reset is MachineState's from Stopped and ExecuteState's from Complete: the
        one whose machine is active (MachineState in Running) gets the call."""
        (machine,) = await self._read(client, [self._status_nodes[1]])
        if _is_state(machine, self._ns, _RUNNING):
            return _ES
        return _MS

    async def refill_canister(self, number: int, quantity: int) -> None:
        await self._call(
            f"refill_canister {number} +{quantity}",
            ((), "RefillCanister"),
            [ua.Variant(number, ua.VariantType.Int32), ua.Variant(quantity, ua.VariantType.Int32)],
        )

    @property
    def reports_refilled_total(self) -> bool:
        return bool(self._refilled_nodes) and all(n is not None for n in self._refilled_nodes)

    async def set_unit_mode(self, mode: UnitMode) -> None:
        """OPC 30050 SetUnitMode(RequestedMode Int32) on the machine object; the machine
        refuses it outside Stopped, Idle and Aborted (BadInvalidState)."""
        try:
            label = f"{UnitMode(mode).name} ({int(mode)})"
        except ValueError:
            label = str(int(mode))
        operation = f"set_unit_mode {label}"
        if self._client is not None and ((), "SetUnitMode") not in self._calls:
            raise self._error(operation, DriverError("the machine has no SetUnitMode method"))
        await self._call(
            operation, ((), "SetUnitMode"), [ua.Variant(int(mode), ua.VariantType.Int32)]
        )

    async def _call(
        self, operation: str, method: tuple[tuple[str, ...], str], args: list[ua.Variant]
    ) -> None:
        async def call(client: Client) -> None:
            target = self._calls.get(method)
            if target is None:
                raise DriverError(f"the machine has no {method[1]} method")
            request = ua.CallMethodRequest(
                ObjectId=target[0], MethodId=target[1], InputArguments=args
            )
            (result,) = await client.uaclient.call([request])
            if not result.StatusCode.is_good():
                raise DriverError(f"refused: {_describe_call(method[1], result, _ARGUMENT_NAMES)}")

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
        cert: x509.Certificate = await uacrypto.load_certificate(path)
        return cert
    except (OSError, ValueError) as exc:
        raise DriverError(
            f"security.{field_name}: {path} is not a DER or PEM certificate: {exc}"
        ) from exc


def _der(cert: x509.Certificate) -> bytes:
    """A certificate's DER bytes, as OPC UA compares and sends them."""
    return cert.public_bytes(serialization.Encoding.DER)


def _certificate_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def _describe_certificate(cert: x509.Certificate) -> str:
    """Subject and SHA-256 fingerprint: what an operator compares with the machine's HMI."""
    digest = hashlib.sha256(_der(cert)).hexdigest()
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
    pinned_der = _der(pinned)

    async def validate(cert: x509.Certificate, _app: ua.ApplicationDescription) -> None:
        if _der(cert) != pinned_der:
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


def _describe_call(
    method: str, result: ua.CallMethodResult, argument_names: dict[str, tuple[str, ...]]
) -> str:
    """The machine's reason for refusing a call: status, bad arguments and any text.

    Servers may put human-readable text in InputArgumentDiagnosticInfos[].AdditionalInfo
    (the doseline simulator does); without it the status code names stay.
    """
    parts = [result.StatusCode.name]
    names = argument_names.get(method, ())
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


def _is_state(value: Any, ns: int, identifier: int) -> bool:
    return (
        isinstance(value, ua.NodeId)
        and value.NamespaceIndex == ns
        and value.Identifier == identifier
    )


def _state(ns: int, base: Any, machine: Any, execute: Any) -> PackMLState:
    """The PackML state from the three machines' CurrentState/Id: Aborting or Aborted
    in BaseStateMachine, else Stopped, Stopping or Clearing in MachineState, else (in
    Running) ExecuteState's state."""

    def lookup(value: Any, table: dict[int, PackMLState], composite: int, where: str) -> Any:
        if isinstance(value, ua.NodeId) and value.NamespaceIndex == ns:
            if isinstance(value.Identifier, int) and value.Identifier in table:
                return table[value.Identifier]
            if value.Identifier == composite:
                return None
        shown = value.to_string() if isinstance(value, ua.NodeId) else repr(value)
        raise ValueError(f"{where}/CurrentState/Id: {shown} is not a PackML state")

    state = lookup(base, _BASE_STATES, _CLEARED, "BaseStateMachine")
    if state is None:
        state = lookup(machine, _MACHINE_STATES, _RUNNING, "MachineState")
    if state is None:
        state = lookup(execute, _EXECUTE_STATES, -1, "ExecuteState")
    assert isinstance(state, PackMLState)
    return state


def _acc_count(value: Any, path: str) -> int:
    """The never-resetting total of a PackMLCountDataType[] counter: the sum of its
    materials' AccCount (doseline's packers report one material, pouches)."""
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected an array of PackMLCountDataType, got {value!r}")
    total = 0
    for i, item in enumerate(value):
        if not isinstance(item, PackMLCountDataType):
            raise ValueError(f"{path}[{i}]: expected a PackMLCountDataType, got {item!r}")
        total += _int(item.AccCount, f"{path}[{i}].AccCount")
    return total


def _alarm(value: Any, path: str) -> tuple[int, int]:
    """(ID, Value) of a PackMLAlarmDataType: the stop reason and, for an empty canister,
    the canister number."""
    if not isinstance(value, PackMLAlarmDataType):
        raise ValueError(f"{path}: expected a PackMLAlarmDataType, got {value!r}")
    return _int(value.ID, f"{path}.ID"), _int(value.Value, f"{path}.Value")


# Defaults of the structures' fields, typed as asyncua's codec wants them.
_ZERO = ua.Int32(0)
_EMPTY = ua.String("")
_NEVER_TIME = ua.DateTime(1601, 1, 1, tzinfo=UTC)  # OPC UA's "no time"


@dataclass
class PackMLCountDataType:
    """OPC 30050's counter structure (fields in the specification's order)."""

    ID: ua.Int32 = _ZERO
    Name: ua.String = _EMPTY
    Unit: ua.EUInformation = field(default_factory=ua.EUInformation)
    Count: ua.Int32 = _ZERO
    AccCount: ua.Int32 = _ZERO


@dataclass
class PackMLAlarmDataType:
    """OPC 30050's alarm / stop reason structure (fields in the specification's order)."""

    ID: ua.Int32 = _ZERO
    Value: ua.Int32 = _ZERO
    Message: ua.String = _EMPTY
    Category: ua.Int32 = _ZERO
    DateTime: ua.DateTime = _NEVER_TIME
    AckDateTime: ua.DateTime = _NEVER_TIME
    Trigger: ua.Boolean = False  # type: ignore[assignment]  # asyncua: a marker type


def _register_structures(ns: int) -> None:
    """Decode the two PackML structures the driver reads, at the server's index `ns`."""
    for cls, type_id, encoding in (
        (PackMLCountDataType, _COUNT_DATA_TYPE, _COUNT_ENCODING),
        (PackMLAlarmDataType, _ALARM_DATA_TYPE, _ALARM_ENCODING),
    ):
        data_type = ua.NodeId(ua.Int32(type_id), ua.Int16(ns))
        setattr(cls, "data_type", data_type)  # noqa: B010  # what asyncua's own classes carry
        ua.register_extension_object(
            cls.__name__, ua.NodeId(ua.Int32(encoding), ua.Int16(ns)), cls, data_type
        )
