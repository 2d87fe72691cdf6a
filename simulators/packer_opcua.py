"""A dose-packing machine that speaks OPC UA on a real socket.

The machine is an instance of OPC 30050's PackMLBaseObjectType (types built in code by
`simulators.packml_model`), with doseline's job, canister and output tray nodes as an
extension in a namespace of their own; `model="legacy"` shows the address space of
doseline's first packers instead (docs/packer-opcua.md). The physics is deterministic
for a given seed: the same commands give the same pouches, rejects and jams, so
integration tests and demos are reproducible. Time is scaled by `speed_factor` so tests
can pack a job in milliseconds.

Run one machine: ``python -m simulators.packer_opcua --name P1 --port 4841``; add
``--certificate C --private-key K --trust CLIENT_CERT [--user U --password-env VAR]``
for a secured machine (`SimSecurity`, docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from asyncua import Server, ua

from simulators import packml_model as pm
from simulators.opcua_methods import (
    REFUSAL_STATUS,
    MethodError,
    MethodSpec,
    argument_description,
    bind_command,
    check_arguments,
    error_result,
    parse_pouches,
    without_start_parameters,
)
from simulators.opcua_security import SimSecurity, secure_server
from simulators.packer_physics import (
    DEFAULT_CANISTERS,
    DEFAULT_OUTPUT_EMPTY_AFTER_S,
    PackerPhysics,
    Refusal,
)
from simulators.packer_view import PhysicsView
from simulators.packml import PackMLCommand, PackMLState, UnitMode
from simulators.standalone import packer_arguments, packer_settings, run, serve_until_stopped

#: The address space a simulator shows: OPC 30050 (PackML) with doseline's extension,
#: or the model of doseline's first packers (docs/packer-opcua.md, "Legacy model").
Model = Literal["opc30050", "legacy"]
MODELS: tuple[Model, ...] = ("opc30050", "legacy")
#: Namespace of the legacy model.
NAMESPACE_URI = "urn:doseline:packer"
#: Namespace of doseline's extension to an OPC 30050 machine (job, canisters, tray).
EXTENSION_URI = "urn:doseline:packer:ext"
PACKML_URI = pm.PACKML_URI

_log = logging.getLogger(__name__)

_VT = ua.VariantType
_STATUS = ua.StatusCodes


#: The variable each `PackerStatus` field is published in (for `misreport`).
_STATUS_NODES = {
    "state": "Status.StateCurrent",
    "unit_mode": "Status.UnitModeCurrent",
    "processed_total": "Admin.ProdProcessedCount",
    "defective_total": "Admin.ProdDefectiveCount",
    "stop_reason": "Admin.StopReason",
    "stop_canister": "Admin.StopCanister",
    "job_pouches_total": "Job.PouchesTotal",
    "job_pouches_good": "Job.PouchesGood",
    "job_pouches_rejected": "Job.PouchesRejected",
}


class PackerSimulator(PhysicsView):
    """One simulated dose-packing machine with an OPC UA server on `host:port`.

    `port=0` binds an ephemeral port; `endpoint` gives the real URL after `start()`.
    `address_space_cache` (a shelf file path) and `server_clock=False` make start and
    stop fast for tests; neither changes what a client sees of the machine.
    Plain-Python accessors (`state`, `canister_counts()`, ...) are for tests only; a
    controller must go through OPC UA. The machine itself (canisters, pouches, rejects,
    jams, PackML) is `simulators.packer_physics.PackerPhysics`, shared with the serial
    packer simulator; this class maps it onto an address space: OPC 30050 with
    doseline's extension (`model="opc30050"`, the default) or the legacy model.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        canisters: Sequence[tuple[int, str, int, int]] = DEFAULT_CANISTERS,
        pouches_per_minute: float = 60.0,
        speed_factor: float = 1.0,
        reject_rate: float = 0.0,
        jam_rate: float = 0.0,
        seed: int = 0,
        transient_seconds: float = 0.05,
        initial_state: PackMLState = PackMLState.STOPPED,
        address_space_cache: str | Path | None = None,
        server_clock: bool = True,
        output_capacity: int = 0,
        output_empty_after_s: float | None = DEFAULT_OUTPUT_EMPTY_AFTER_S,
        unit_mode: UnitMode = UnitMode.PRODUCTION,
        security: SimSecurity | None = None,
        model: Model = "opc30050",
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model: {model!r} is not one of {', '.join(MODELS)}")
        if not name or any(c in name for c in "/.:<>&!#"):
            raise ValueError(f"name: {name!r} is empty or holds a browse-path reserved character")
        self._physics = PackerPhysics(
            name,
            canisters,
            pouches_per_minute=pouches_per_minute,
            speed_factor=speed_factor,
            reject_rate=reject_rate,
            jam_rate=jam_rate,
            seed=seed,
            transient_seconds=transient_seconds,
            initial_state=initial_state,
            output_capacity=output_capacity,
            output_empty_after_s=output_empty_after_s,
            unit_mode=unit_mode,
        )
        self.name = name
        self.host = host
        self.port = port
        self.address_space_cache = Path(address_space_cache) if address_space_cache else None
        self.server_clock = server_clock
        self.security = security
        self.model = model
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._publish_lock = asyncio.Lock()
        self._nodes: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
        self._published: dict[str, Any] = {}
        self._packml_ns = 0
        self._stop_since: tuple[int, datetime] = (0, _NEVER)

    # -- plain-python view for tests -------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The URL clients use; the real bound port once started."""
        return f"opc.tcp://{self.host}:{self.port}/"

    async def empty_output(self) -> int:
        """Operator knob: empty the output tray now (the state does not change; a machine
        suspended for OUTPUT_FULL waits for Unsuspend). Returns the pouches taken."""
        taken = self._physics.empty_output()
        await self._publish()
        return taken

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space, bind the socket and start the physics task."""
        if self._server is not None:
            raise RuntimeError(f"packer simulator {self.name} is already started")
        server = Server()
        await _init_server(server, self.address_space_cache)
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        server.set_server_name(f"doseline packer simulator {self.name}")
        if self.security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        else:
            await secure_server(server, self.security)
        # asyncua's 1 Hz ServerStatus clock makes Server.stop() wait up to a second.
        server.disable_clock(not self.server_clock)
        await server.set_application_uri(f"urn:doseline:packer-simulator:{self.name}")
        self._server = server
        self._nodes, self._published = {}, {}
        try:
            if self.model == "legacy":
                await self._build_address_space(
                    server, await server.register_namespace(NAMESPACE_URI)
                )
            else:
                await self._build_packml(server)
            await server.start()
        except BaseException:
            self._server = None
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        # asyncua binds port 0 to an ephemeral port and records the real one on its
        # BinaryServer; the advertised endpoints are rewritten to the URL the client used.
        if server.bserver is not None:
            self.port = int(server.bserver.port)
        self._task = asyncio.create_task(
            self._physics.run(self._publish), name=f"packer-sim-{self.name}"
        )
        _log.info("packer simulator %s listening on %s", self.name, self.endpoint)

    async def stop(self) -> None:
        """Stop the physics and close the server; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def __aenter__(self) -> PackerSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- address space ---------------------------------------------------------------

    async def _build_address_space(self, server: Server, idx: int) -> None:
        root = await server.nodes.objects.add_object(
            _node_id(self.name, idx), ua.QualifiedName(self.name, idx)
        )

        async def folder(parent: Any, path: str) -> Any:
            bname = path.rsplit(".", 1)[-1]
            return await parent.add_object(
                _node_id(f"{self.name}.{path}", idx), ua.QualifiedName(bname, idx)
            )

        async def var(parent: Any, path: str, vtype: ua.VariantType) -> None:
            value = self._values()[path]
            bname = path.rsplit(".", 1)[-1]
            node = await parent.add_variable(
                _node_id(f"{self.name}.{path}", idx),
                ua.QualifiedName(bname, idx),
                ua.Variant(value, vtype),
                vtype,
            )
            self._nodes[path] = (node.nodeid, vtype)
            self._published[path] = value

        status = await folder(root, "Status")
        await var(status, "Status.StateCurrent", _VT.Int32)
        await var(status, "Status.UnitModeCurrent", _VT.Int32)
        await var(status, "Status.CurMachSpeed", _VT.Double)
        admin = await folder(root, "Admin")
        await var(admin, "Admin.ProdProcessedCount", _VT.Int64)
        await var(admin, "Admin.ProdDefectiveCount", _VT.Int64)
        await var(admin, "Admin.StopReason", _VT.Int32)
        await var(admin, "Admin.StopCanister", _VT.Int32)
        output = await folder(root, "Output")
        await var(output, "Output.Count", _VT.Int32)
        await var(output, "Output.Capacity", _VT.Int32)
        await var(output, "Output.Full", _VT.Boolean)
        job = await folder(root, "Job")
        await var(job, "Job.JobId", _VT.String)
        await var(job, "Job.PouchesTotal", _VT.Int32)
        await var(job, "Job.PouchesGood", _VT.Int32)
        await var(job, "Job.PouchesRejected", _VT.Int32)
        canisters = await folder(root, "Canisters")
        for number in sorted(self._physics.canisters):
            prefix = f"Canisters.{_canister_name(number)}"
            node = await folder(canisters, prefix)
            await var(node, f"{prefix}.Number", _VT.Int32)
            await var(node, f"{prefix}.Gtin", _VT.String)
            await var(node, f"{prefix}.Count", _VT.Int32)
            await var(node, f"{prefix}.Capacity", _VT.Int32)
            await var(node, f"{prefix}.DispensedTotal", _VT.Int64)
            await var(node, f"{prefix}.RefilledTotal", _VT.Int64)

        command = await folder(root, "Command")
        for spec in self._method_specs():
            inputs = [argument_description(arg) for arg in spec.arguments]
            await command.add_method(
                _node_id(f"{self.name}.Command.{spec.name}", idx),
                ua.QualifiedName(spec.name, idx),
                self._make_method(spec),
                inputs,
                [],
            )

    async def _build_packml(self, server: Server) -> None:
        """The machine as an OPC 30050 PackMLBaseObjectType instance, the job, canister
        and tray nodes as doseline's extension in a namespace of their own."""
        ns = await server.register_namespace(pm.PACKML_URI)
        ext = await server.register_namespace(EXTENSION_URI)
        self._packml_ns = ns
        await pm.build_types(server, ns)
        name = self.name
        machine = await server.nodes.objects.add_object(
            _node_id(name, ext),
            ua.QualifiedName(name, ext),
            objecttype=pm.node_id(pm.BASE_OBJECT_TYPE, ns),
            instantiate_optional=False,
        )

        def nid(path: str) -> ua.NodeId:
            return _node_id(f"{name}.{path}", ext)

        async def write(path: str, value: Any, vtype: ua.VariantType) -> None:
            await server.get_node(nid(path)).write_value(ua.DataValue(ua.Variant(value, vtype)))

        # Mandatory members, made by instantiation: record their node ids and types.
        packml_vars = {
            "Status.UnitModeCurrent": _VT.Int32,
            "Status.CurMachSpeed": _VT.Float,
            "Status.MachSpeed": _VT.Float,
            "Status.EquipmentBlocked": _VT.Boolean,
            "Status.EquipmentStarved": _VT.Boolean,
        }
        for path, vtype in packml_vars.items():
            self._nodes[path] = (nid(path), vtype)
        await server.get_node(nid("Status.UnitModeCurrent")).write_attribute(
            ua.AttributeIds.DataType,
            ua.DataValue(ua.Variant(pm.node_id(pm.PRODUCTION_MAINTENANCE_MODE_ENUM, ns))),
        )
        top = float(self._physics.pouches_per_minute * self._physics.speed_factor)
        for speed in ("CurMachSpeed", "MachSpeed"):
            await write(f"Status.{speed}.EURange", ua.Range(Low=0.0, High=top), _VT.ExtensionObject)
        await pm.admin_members(
            server, nid("Admin"), ns, node_ns=ext, prefix=f"{name}.Admin.", rule=None
        )
        self._nodes["Admin.ProdProcessedCount"] = (
            nid("Admin.ProdProcessedCount"),
            _VT.ExtensionObject,
        )
        self._nodes["Admin.ProdDefectiveCount"] = (
            nid("Admin.ProdDefectiveCount"),
            _VT.ExtensionObject,
        )
        self._nodes["Admin.StopReason"] = (nid("Admin.StopReason"), _VT.ExtensionObject)
        for parent, member in pm.OPTIONAL_MEMBERS:
            path = f"{parent}.{member}"
            vtype = await pm.optional_member(server, nid(parent), ns, nid(path), parent, member)
            self._nodes[path] = (nid(path), vtype)
        await machine.add_property(
            nid("TagID"), ua.QualifiedName("TagID", ns), ua.Variant(name, _VT.String)
        )

        # The three state machines: CurrentState (Id, Number), AvailableStates, methods.
        for sub, states in pm.available_states(ns).items():
            path = "BaseStateMachine" + (f".{sub}" if sub else "")
            await write(f"{path}.AvailableStates", states, _VT.NodeId)
            current = server.get_node(nid(f"{path}.CurrentState"))
            await current.add_property(
                nid(f"{path}.CurrentState.Number"),
                ua.QualifiedName("Number", 0),
                ua.Variant(0, _VT.UInt32),
            )
            self._nodes[f"{path}.CurrentState"] = (nid(f"{path}.CurrentState"), _VT.LocalizedText)
            self._nodes[f"{path}.CurrentState.Id"] = (nid(f"{path}.CurrentState.Id"), _VT.NodeId)
            self._nodes[f"{path}.CurrentState.Number"] = (
                nid(f"{path}.CurrentState.Number"),
                _VT.UInt32,
            )
        owners = {
            pm.BASE_STATE_MACHINE_TYPE: "BaseStateMachine",
            pm.MACHINE_STATE_MACHINE_TYPE: "BaseStateMachine.MachineState",
            pm.EXECUTE_STATE_MACHINE_TYPE: "BaseStateMachine.MachineState.ExecuteState",
        }
        for (owner, method), _ in pm.STATE_MACHINE_METHODS.items():
            spec = MethodSpec(
                method, (), bind_command(self._physics.command, PackMLCommand(method))
            )
            inputs: list[ua.Argument] = []
            callback = self._make_method(spec)
            if method == "Start":
                inputs = [
                    pm.argument(
                        "Parameter",
                        pm.node_id(pm.PACKML_DESCRIPTOR_DATA_TYPE, ns),
                        "Parameters for the start; this machine takes none",
                        rank=1,
                    )
                ]
                callback = without_start_parameters(callback)
            path = owners[owner]
            await server.get_node(nid(path)).add_method(
                nid(f"{path}.{method}"), ua.QualifiedName(method, ns), callback, inputs, []
            )
        (set_unit_mode,) = [m for m in self._method_specs() if m.name == "SetUnitMode"]
        server.link_method(server.get_node(nid("SetUnitMode")), self._make_method(set_unit_mode))

        # doseline's extension: job, output tray, canisters, LoadJob and RefillCanister.
        await self._build_extension(server, machine, ext)
        await self._write_changed(server)  # the true state before the first client comes

    async def _build_extension(self, server: Server, machine: Any, ext: int) -> None:
        name = self.name
        values = self._values()

        async def folder(parent: Any, path: str) -> Any:
            return await parent.add_object(
                _node_id(f"{name}.{path}", ext), ua.QualifiedName(path.rsplit(".", 1)[-1], ext)
            )

        async def var(parent: Any, path: str, vtype: ua.VariantType) -> None:
            node = await parent.add_variable(
                _node_id(f"{name}.{path}", ext),
                ua.QualifiedName(path.rsplit(".", 1)[-1], ext),
                ua.Variant(values[path], vtype),
                datatype=ua.NodeId(ua.Int32(vtype.value)),
            )
            self._nodes[path] = (node.nodeid, vtype)

        job = await folder(machine, "Job")
        await var(job, "Job.JobId", _VT.String)
        for counter in ("PouchesTotal", "PouchesGood", "PouchesRejected"):
            await var(job, f"Job.{counter}", _VT.Int32)
        output = await folder(machine, "Output")
        await var(output, "Output.Count", _VT.Int32)
        await var(output, "Output.Capacity", _VT.Int32)
        await var(output, "Output.Full", _VT.Boolean)
        canisters = await folder(machine, "Canisters")
        for number in sorted(self._physics.canisters):
            prefix = f"Canisters.{_canister_name(number)}"
            node = await folder(canisters, prefix)
            await var(node, f"{prefix}.Number", _VT.Int32)
            await var(node, f"{prefix}.Gtin", _VT.String)
            await var(node, f"{prefix}.Count", _VT.Int32)
            await var(node, f"{prefix}.Capacity", _VT.Int32)
            await var(node, f"{prefix}.DispensedTotal", _VT.Int64)
            await var(node, f"{prefix}.RefilledTotal", _VT.Int64)
        for spec in self._method_specs():
            if spec.name not in ("LoadJob", "RefillCanister"):
                continue
            await machine.add_method(
                _node_id(f"{name}.{spec.name}", ext),
                ua.QualifiedName(spec.name, ext),
                self._make_method(spec),
                [argument_description(arg) for arg in spec.arguments],
                [],
            )

    def _values(self) -> dict[str, Any]:
        """Every variable's current value by its dotted path below the machine object."""
        if self.model == "legacy":
            return self._legacy_values()
        return self._packml_values()

    def _packml_values(self) -> dict[str, Any]:
        """The OPC 30050 model's values; `misreport` (a fault knob) overrides fields."""
        machine = self._physics
        job = machine.job
        fake = machine.misreport
        state = int(fake.get("state", machine.state))
        reason = int(fake.get("stop_reason", machine.stop_reason))
        canister = int(fake.get("stop_canister", machine.stop_canister))
        if reason != self._stop_since[0]:
            self._stop_since = (reason, datetime.now(UTC) if reason else _NEVER)
        job_good = int(fake.get("job_pouches_good", job.good if job else 0))
        job_rejected = int(fake.get("job_pouches_rejected", job.rejected if job else 0))
        processed = int(fake.get("processed_total", machine.processed))
        defective = int(fake.get("defective_total", machine.defective))
        values: dict[str, Any] = {
            "Status.UnitModeCurrent": int(fake.get("unit_mode", machine.unit_mode)),
            "Status.CurMachSpeed": float(machine.machine_speed),
            "Status.MachSpeed": float(machine.pouches_per_minute * machine.speed_factor),
            "Status.EquipmentBlocked": machine.output_full,
            "Status.EquipmentStarved": reason == _CANISTER_EMPTY,
            "Status.StateRequested": _REQUESTED.get(state, state),
            "Status.StateChangeInProcess": state in _REQUESTED,
            "Status.UnitModeChangeInProcess": False,  # a mode change takes no time
            "Admin.MachDesignSpeed": float(machine.pouches_per_minute),
            "Admin.ProdProcessedCount": [_count(1, "pouches", job_good + job_rejected, processed)],
            "Admin.ProdDefectiveCount": [_count(2, "rejected pouches", job_rejected, defective)],
            "Admin.StopReason": pm.PackMLAlarmDataType(
                ID=ua.Int32(reason),
                Value=ua.Int32(canister),
                Message=ua.String(_stop_message(reason, canister)),
                DateTime=self._stop_since[1],  # type: ignore[arg-type]  # a datetime is one
                Trigger=reason != 0,  # type: ignore[arg-type]  # asyncua's Boolean: a marker
            ),
            "Output.Count": machine.output_count,
            "Output.Capacity": machine.output_capacity,
            "Output.Full": machine.output_full,
            "Job.JobId": job.job_id if job else "",
            "Job.PouchesTotal": int(fake.get("job_pouches_total", len(job.pouches) if job else 0)),
            "Job.PouchesGood": job_good,
            "Job.PouchesRejected": job_rejected,
        }
        for sub, (text, state_id, number) in pm.state_machine_values(
            state, self._packml_ns
        ).items():
            path = "BaseStateMachine" + (f".{sub}" if sub else "")
            values[f"{path}.CurrentState"] = ua.LocalizedText(text)
            values[f"{path}.CurrentState.Id"] = state_id
            values[f"{path}.CurrentState.Number"] = number
        self._canister_values(values)
        return values

    def _canister_values(self, values: dict[str, Any]) -> None:
        for number, can in self._physics.canisters.items():
            prefix = f"Canisters.{_canister_name(number)}"
            values[f"{prefix}.Number"] = number
            values[f"{prefix}.Gtin"] = can.gtin
            values[f"{prefix}.Count"] = can.count
            values[f"{prefix}.Capacity"] = can.capacity
            values[f"{prefix}.DispensedTotal"] = can.dispensed_total
            values[f"{prefix}.RefilledTotal"] = can.refilled_total

    def _legacy_values(self) -> dict[str, Any]:
        """The legacy model's values."""
        machine = self._physics
        job = machine.job
        values: dict[str, Any] = {
            "Status.StateCurrent": int(machine.state),
            "Status.UnitModeCurrent": int(machine.unit_mode),
            "Status.CurMachSpeed": machine.machine_speed,
            "Admin.ProdProcessedCount": machine.processed,
            "Admin.ProdDefectiveCount": machine.defective,
            "Admin.StopReason": int(machine.stop_reason),
            "Admin.StopCanister": machine.stop_canister,
            "Output.Count": machine.output_count,
            "Output.Capacity": machine.output_capacity,
            "Output.Full": machine.output_full,
            "Job.JobId": job.job_id if job else "",
            "Job.PouchesTotal": len(job.pouches) if job else 0,
            "Job.PouchesGood": job.good if job else 0,
            "Job.PouchesRejected": job.rejected if job else 0,
        }
        self._canister_values(values)
        for field_name, value in machine.misreport.items():  # fault knob, usually empty
            values[_STATUS_NODES[field_name]] = value
        return values

    async def _publish(self) -> None:
        """Copy changed Python state into the address space (this fires subscriptions)."""
        async with self._publish_lock:
            server = self._server
            if server is None:
                return
            await self._write_changed(server)

    async def _write_changed(self, server: Server) -> None:
        for path, value in self._values().items():
            if self._published.get(path) == value:
                continue
            nodeid, vtype = self._nodes[path]
            # Node.write_value raises on a Bad result; Server.write_attribute_value
            # would drop it (asyncua 2.1 returns None there even on BadTypeMismatch).
            await server.get_node(nodeid).write_value(ua.DataValue(ua.Variant(value, vtype)))
            self._published[path] = value

    # -- methods ---------------------------------------------------------------------

    def _method_specs(self) -> list[MethodSpec]:
        specs = [
            MethodSpec(cmd.value, (), bind_command(self._physics.command, cmd))
            for cmd in PackMLCommand
        ]
        specs.append(
            MethodSpec(
                "LoadJob",
                (
                    ("JobId", _VT.String, "Job identifier, non-empty"),
                    ("Pouches", _VT.String, 'JSON [{"seq":1,"label":"..","items":[[can,qty]]}]'),
                ),
                self._load_job,
            )
        )
        specs.append(
            MethodSpec(
                "RefillCanister",
                (
                    ("Number", _VT.Int32, "Canister number"),
                    ("Quantity", _VT.Int32, "Tablets put in, > 0"),
                ),
                self._physics.refill,
            )
        )
        specs.append(
            MethodSpec(
                "SetUnitMode",
                (("RequestedMode", _VT.Int32, "1 Production, 2 Maintenance, 3 Manual"),),
                self._physics.set_unit_mode,
            )
        )
        return specs

    def _make_method(self, spec: MethodSpec) -> Callable[..., Any]:
        async def call(parent: ua.NodeId, *args: ua.Variant) -> Any:
            try:
                values = check_arguments(spec, args)
                try:
                    spec.handler(*values)
                except Refusal as refusal:
                    raise MethodError(
                        REFUSAL_STATUS[refusal.kind], refusal.message, refusal.argument
                    ) from refusal
            except MethodError as exc:
                _log.info("packer %s refused %s: %s", self.name, spec.name, exc.message)
                return error_result(exc, len(args))
            self._physics.wake()
            await self._publish()
            return []

        return call

    def _load_job(self, job_id: str, pouches_json: str) -> None:
        self._physics.check_load(job_id)  # state and id first, as before parsing
        self._physics.load_job(job_id, parse_pouches(pouches_json))


async def _init_server(server: Server, cache: Path | None) -> None:
    """Load the standard address space, from a shelf file when one is given.

    Filling it from code takes about 1.5 s of CPU per server; a shelf (asyncua's own
    feature) loads in about 0.1 s. The first start with a new path writes the shelf.
    asyncua only recognises an existing shelf by `path` or `path.db`; the dbm.dumb
    backend (the only one in some Python builds) writes `path.dat`/`path.dir`, so an
    empty marker at `path` makes the next start load it instead of rebuilding.
    """
    if cache is None:
        await server.init()
        return
    await asyncio.to_thread(cache.parent.mkdir, parents=True, exist_ok=True)
    await server.init(cache)
    await asyncio.to_thread(_mark_dumb_shelf, cache)


def _mark_dumb_shelf(cache: Path) -> None:
    dumb = cache.with_name(cache.name + ".dat")
    if not cache.exists() and not cache.with_suffix(".db").exists() and dumb.exists():
        cache.touch()


_NEVER = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's "no time"
#: Acting PackML states and the state each one is heading for (Status/StateRequested).
_REQUESTED = {1: 2, 3: 6, 7: 2, 8: 9, 10: 11, 12: 6, 13: 5, 14: 6, 15: 4, 16: 17}
_CANISTER_EMPTY = 101  # StopReason values, docs/packer-opcua.md
_STOP_MESSAGES = {
    1: "stopped by a command",
    101: "canister {canister} empty",
    102: "pouch mechanism jammed",
    103: "output tray full",
    104: "vision system fault",
}
#: UNECE code H87 (piece) as OPC UA's EUInformation encodes it.
_PIECE = ua.EUInformation(
    NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
    UnitId=int.from_bytes(b"H87", "big"),
    DisplayName=ua.LocalizedText("pcs"),
    Description=ua.LocalizedText("piece"),
)


def _count(ident: int, name: str, count: int, total: int) -> pm.PackMLCountDataType:
    return pm.PackMLCountDataType(
        ID=ua.Int32(ident),
        Name=ua.String(name),
        Unit=_PIECE,
        Count=ua.Int32(count),
        AccCount=ua.Int32(total),
    )


def _stop_message(reason: int, canister: int) -> str:
    if reason == 0:
        return ""
    return _STOP_MESSAGES.get(reason, f"stop reason {reason}").format(canister=canister)


def _node_id(identifier: str, idx: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(idx))


def _canister_name(number: int) -> str:
    return f"Canister_{number:02d}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = packer_arguments(
        "Simulated OPC UA dose-packing machine",
        default_port=4840,
        name_help="machine name (object under Objects)",
    )
    parser.add_argument(
        "--address-space-cache",
        type=Path,
        default=None,
        help="shelf file for the OPC UA standard address space (faster start)",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="opc30050",
        help="address space: OPC 30050 (PackML) with doseline's extension, or the legacy"
        " model (docs/packer-opcua.md)",
    )
    secure = parser.add_argument_group(
        "security",
        "with --certificate the machine offers Basic256Sha256 Sign and"
        " SignAndEncrypt only (docs/security.md)",
    )
    secure.add_argument("--certificate", type=Path, help="the machine's certificate (DER/PEM)")
    secure.add_argument("--private-key", type=Path, help="the machine's private key (PEM)")
    secure.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        help="a client certificate to accept (repeat for several)",
    )
    secure.add_argument("--user", help="a user name sessions must log in with")
    secure.add_argument("--password-env", help="environment variable holding that user's password")
    return parser.parse_args(argv)


def _security(args: argparse.Namespace) -> SimSecurity | None:
    if args.certificate is None:
        if args.private_key or args.trust or args.user:
            raise SystemExit("--private-key, --trust and --user need --certificate")
        return None
    if args.private_key is None or not args.trust:
        raise SystemExit("--certificate needs --private-key and at least one --trust")
    users: dict[str, str] = {}
    if args.user:
        password = os.environ.get(args.password_env or "")
        if not password:
            raise SystemExit(f"--user {args.user}: set --password-env to a variable that is set")
        users[args.user] = password
    return SimSecurity(args.certificate, args.private_key, tuple(args.trust), users=users)


async def _serve(args: argparse.Namespace) -> None:
    sim = PackerSimulator(
        args.name,
        address_space_cache=args.address_space_cache,
        security=_security(args),
        model=args.model,
        **packer_settings(args),
    )
    await serve_until_stopped(sim, lambda: f"packer {sim.name} on {sim.endpoint}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run one simulated packer until Ctrl-C."""
    run(_serve(_parse_args(argv)), quiet=("asyncua",))


if __name__ == "__main__":
    main()
