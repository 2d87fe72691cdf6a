"""OPC UA adapter for dose-packing machines (OPC 30050 / PackTags naming).

The machine is the object `Objects/<name>` in the namespace `urn:doseline:packer`; the
address space is described in docs/packer-opcua.md. This module only maps nodes and
methods to the plain values of `drivers.base`; what to do with them is the controller's
business. Every failure leaves as `DriverError` naming machine, operation and cause.

The output tray (`Output/*`), `Canisters/*/RefilledTotal` and `Command/SetUnitMode` came
later than the rest of the model; they are optional: a machine without them still
connects, reads them as 0 / False, and refuses `set_unit_mode` with a DriverError.
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
