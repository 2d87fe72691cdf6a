"""OPC UA adapter for dose-packing machines (OPC 30050 / PackTags naming).

The machine is the object `Objects/<name>` in the namespace `urn:doseline:packer`; the
address space is described in docs/packer-opcua.md. This module only maps nodes and
methods to the plain values of `drivers.base`; what to do with them is the controller's
business. Every failure leaves as `DriverError` naming machine, operation and cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState

from drivers.base import (
    CanisterStatus,
    DriverError,
    PackerDriver,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
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
#: Canister variables read by `read_canisters`, per canister.
_CANISTER_VARS = ("Number", "Gtin", "Count", "Capacity", "DispensedTotal")
#: Methods of the Command object and their argument names (for error messages).
_METHODS: dict[str, tuple[str, ...]] = {
    **{c.value: () for c in PackMLCommand},
    "LoadJob": ("JobId", "Pouches"),
    "RefillCanister": ("Number", "Quantity"),
}
#: Requested session lifetime: short, so a crashed controller's session is freed soon.
_SESSION_TIMEOUT_MS = 60_000

_T = TypeVar("_T")


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
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0, got {timeout}")
        if not address.startswith("opc.tcp://"):
            raise ValueError(f"address: {address!r} is not an opc.tcp:// URL")
        self.name = name
        self.address = address
        self.timeout = timeout
        self.object_name = object_name or name
        self._client: Client | None = None
        self._status_nodes: list[Node] = []
        self._canister_nodes: list[list[Node]] = []
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
                await client.connect()
                await self._resolve(client)
        except BaseException as exc:
            await self._shutdown(client)
            if isinstance(exc, Exception):
                raise self._error("connect", exc) from exc
            raise
        self._client = client

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

    @staticmethod
    async def _translate(
        client: Client, ns: int, paths: Sequence[tuple[str, ...]]
    ) -> list[ua.NodeId]:
        """Browse paths below Objects to node ids in one TranslateBrowsePaths request."""
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
        ids: list[ua.NodeId] = []
        for path, result in zip(paths, results, strict=True):
            if not result.StatusCode.is_good() or not result.Targets:
                raise DriverError(
                    f"node Objects/{'/'.join(path)} not found ({result.StatusCode.name})"
                )
            target = result.Targets[0].TargetId
            ids.append(ua.NodeId(target.Identifier, target.NamespaceIndex))
        return ids

    # -- reads -----------------------------------------------------------------------

    async def read_status(self) -> PackerStatus:
        values = await self._guarded("read_status", lambda c: self._read(c, self._status_nodes))
        try:
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
            ) = values
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
            )
        except ValueError as exc:
            raise self._error("read_status", exc) from exc

    async def read_canisters(self) -> Sequence[CanisterStatus]:
        flat = [node for nodes in self._canister_nodes for node in nodes]
        values = await self._guarded("read_canisters", lambda c: self._read(c, flat))
        n = len(_CANISTER_VARS)
        result: list[CanisterStatus] = []
        try:
            for k in range(0, len(values), n):
                number, gtin, count, capacity, dispensed = values[k : k + n]
                where = f"Canisters[{k // n}]"
                result.append(
                    CanisterStatus(
                        number=_int(number, f"{where}/Number"),
                        gtin=_str(gtin, f"{where}/Gtin"),
                        count=_int(count, f"{where}/Count"),
                        capacity=_int(capacity, f"{where}/Capacity"),
                        dispensed_total=_int(dispensed, f"{where}/DispensedTotal"),
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
            cause = f"{ua.StatusCode(exc.code).name}: {exc}"
        else:
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return DriverError(f"packer {self.name} ({self.address}): {operation}: {cause}")


def _describe(method: str, result: ua.CallMethodResult) -> str:
    """The machine's reason for refusing a call: status, bad arguments and any text.

    Servers may put human-readable text in InputArgumentDiagnosticInfos[].AdditionalInfo
    (the doseline simulator does); without it the status code names stay.
    """
    parts = [result.StatusCode.name]
    names = _METHODS.get(method, ())
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
