"""The legacy OPC UA address space of doseline's first packers (`driver: opcua_legacy`).

Before OPC 30050, doseline's packers exposed a model of their own in the namespace
`urn:doseline:packer`: the machine object `Objects/<name>` with `Status`, `Admin`,
`Output`, `Job`, `Canisters` and a `Command` object holding every method, found by
browse path (docs/packer-opcua.md, "Legacy model"). Machines that still run it keep
working through this driver; the connection, security and error handling are those of
`OpcUaPackerDriver`, only the address space differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from asyncua import Client, Node, ua

from drivers.base import (
    CanisterStatus,
    DriverError,
    PackerJobSpec,
    PackerStatus,
    PackMLCommand,
    PackMLState,
    UnitMode,
)
from drivers.opcua_packer import OpcUaPackerDriver, _bool, _describe_call, _float, _int, _str

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


class LegacyOpcUaPackerDriver(OpcUaPackerDriver):
    """A packer with the legacy model at `address`; `object_name` is the machine
    object's browse name under Objects (default: `name`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._status_nodes: list[Node] = []
        self._command_node: ua.NodeId | None = None

    async def _resolve(self, client: Client) -> None:
        try:
            ns = await client.get_namespace_index(NAMESPACE_URI)
        except ValueError:
            raise DriverError(f"namespace {NAMESPACE_URI} is not on the server") from None
        root = (self.object_name,)
        canisters_folder = await self._legacy_translate(client, ns, [(*root, "Canisters")])
        refs = await client.get_node(canisters_folder[0]).get_children_descriptions()
        canister_names = sorted(
            r.BrowseName.Name for r in refs if r.BrowseName.NamespaceIndex == ns
        )
        paths: list[tuple[str, ...]] = [(*root, *p) for p in _STATUS_PATHS]
        paths += [(*root, "Canisters", c, v) for c in canister_names for v in _CANISTER_VARS]
        paths.append((*root, "Command"))
        paths += [(*root, "Command", m) for m in _METHODS]
        ids = await self._legacy_translate(client, ns, paths)

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
        found = await self._legacy_translate_optional(client, ns, optional)
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
    async def _legacy_translate(
        cls, client: Client, ns: int, paths: Sequence[tuple[str, ...]]
    ) -> list[ua.NodeId]:
        """Browse paths below Objects to node ids; a path not found is a DriverError."""
        ids: list[ua.NodeId] = []
        for path, (node_id, status) in zip(
            paths, await cls._legacy_browse(client, ns, paths), strict=True
        ):
            if node_id is None:
                raise DriverError(f"node Objects/{'/'.join(path)} not found ({status})")
            ids.append(node_id)
        return ids

    @classmethod
    async def _legacy_translate_optional(
        cls, client: Client, ns: int, paths: Sequence[tuple[str, ...]]
    ) -> list[ua.NodeId | None]:
        """Like `_translate`, but a path the server does not have gives None."""
        return [node_id for node_id, _ in await cls._legacy_browse(client, ns, paths)]

    @staticmethod
    async def _legacy_browse(
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
        await self._legacy_call(
            f"load_job {job.job_id!r}",
            "LoadJob",
            [
                ua.Variant(job.job_id, ua.VariantType.String),
                ua.Variant(json.dumps(pouches, separators=(",", ":")), ua.VariantType.String),
            ],
        )

    async def command(self, command: PackMLCommand) -> None:
        command = PackMLCommand(command)
        await self._legacy_call(f"command {command.value}", command.value, [])

    async def refill_canister(self, number: int, quantity: int) -> None:
        await self._legacy_call(
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
        await self._legacy_call(
            operation, "SetUnitMode", [ua.Variant(int(mode), ua.VariantType.Int32)]
        )

    async def _legacy_call(self, operation: str, method: str, args: list[ua.Variant]) -> None:
        async def call(client: Client) -> None:
            request = ua.CallMethodRequest(
                ObjectId=self._command_node,
                MethodId=self._method_ids[method],
                InputArguments=args,
            )
            (result,) = await client.uaclient.call([request])
            if not result.StatusCode.is_good():
                raise DriverError(f"refused: {_describe_call(method, result, _ARGUMENT_NAMES)}")

        await self._guarded(operation, call)


def _state(value: Any) -> PackMLState:
    number = _int(value, "Status/StateCurrent")
    try:
        return PackMLState(number)
    except ValueError:
        raise ValueError(f"Status/StateCurrent: {number} is not a PackML state") from None
