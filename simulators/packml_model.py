"""The OPC 30050 (PackML) types, built in code on an asyncua server.

The companion specification publishes its model as a NodeSet2 file, which is not
installable from PyPI; this module creates the parts a dose-packing machine uses from
the specification's published facts (namespace URI, numeric node ids, browse names,
data types, modelling rules), so that an instance is what a client that knows only
OPC 30050 expects. What is left out is listed in docs/packer-opcua.md.

The simulator keeps its own copy of these facts and does not import the driver's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from asyncua import Node, Server, ua

PACKML_URI = "http://opcfoundation.org/UA/PackML/"

# -- data types (numeric ids in the PackML namespace) -----------------------------------
PRODUCTION_MAINTENANCE_MODE_ENUM = 11
PACKML_COUNT_DATA_TYPE = 14
PACKML_ALARM_DATA_TYPE = 15
PACKML_DESCRIPTOR_DATA_TYPE = 16
_ENUM_VALUES = 194
_BINARY_ENCODING = {
    PACKML_COUNT_DATA_TYPE: 69,
    PACKML_ALARM_DATA_TYPE: 74,
    PACKML_DESCRIPTOR_DATA_TYPE: 77,
}
HAS_STOP_REASON = 25

# -- object types ------------------------------------------------------------------------
EXECUTE_STATE_MACHINE_TYPE = 1
MACHINE_STATE_MACHINE_TYPE = 2
BASE_STATE_MACHINE_TYPE = 3
STATUS_OBJECT_TYPE = 4
ADMIN_OBJECT_TYPE = 5
BASE_OBJECT_TYPE = 6

#: State objects of the three state machine types: browse name -> (node id, StateNumber
#: node id, PackML state number). The numbers are ISA-TR88.00.02's; Cleared (19) and
#: Running (18) are the composite states that hold the sub-state machines.
EXECUTE_STATES: dict[str, tuple[int, int, int]] = {
    "Resetting": (27, 127, 15),
    "Idle": (28, 128, 4),
    "Starting": (29, 129, 3),
    "Suspending": (30, 130, 13),
    "Suspended": (31, 131, 5),
    "Unsuspending": (32, 132, 14),
    "Holding": (33, 133, 10),
    "Held": (34, 134, 11),
    "Unholding": (35, 135, 12),
    "Execute": (36, 136, 6),
    "Completing": (37, 137, 16),
    "Complete": (38, 138, 17),
}
MACHINE_STATES: dict[str, tuple[int, int, int]] = {
    "Stopped": (53, 155, 2),
    "Stopping": (54, 156, 7),
    "Clearing": (55, 157, 1),
    "Running": (75, 171, 18),
}
BASE_STATES: dict[str, tuple[int, int, int]] = {
    "Aborting": (61, 168, 8),
    "Aborted": (62, 169, 9),
    "Cleared": (71, 178, 19),
}
RUNNING = 18
CLEARED = 19

#: Methods of the state machine types: (type, browse name) -> method node id. Reset is
#: on two machines: MachineState's leaves Stopped, ExecuteState's leaves Complete.
STATE_MACHINE_METHODS: dict[tuple[int, str], int] = {
    (EXECUTE_STATE_MACHINE_TYPE, "Reset"): 361,
    (EXECUTE_STATE_MACHINE_TYPE, "Start"): 369,
    (EXECUTE_STATE_MACHINE_TYPE, "Hold"): 366,
    (EXECUTE_STATE_MACHINE_TYPE, "Unhold"): 368,
    (EXECUTE_STATE_MACHINE_TYPE, "Suspend"): 367,
    (EXECUTE_STATE_MACHINE_TYPE, "Unsuspend"): 372,
    (MACHINE_STATE_MACHINE_TYPE, "Stop"): 375,
    (MACHINE_STATE_MACHINE_TYPE, "Reset"): 376,
    (BASE_STATE_MACHINE_TYPE, "Abort"): 364,
    (BASE_STATE_MACHINE_TYPE, "Clear"): 363,
}
_START_INPUT_ARGUMENTS = 342
SET_UNIT_MODE = 362
_SET_UNIT_MODE_INPUT_ARGUMENTS = 118

# Standard (namespace 0) node ids used below.
_I = ua.ObjectIds
_ENUMERATION = 29
_UTC_TIME = 294


def _n(identifier: int, ns: int = 0) -> ua.NodeId:
    return ua.NodeId(ua.Int32(identifier), ua.Int16(ns))


# -- Python classes of the structures (asyncua encodes them by field order and types) ----


# Defaults of the structures' fields, typed as asyncua's codec wants them.
_ZERO = ua.Int32(0)
_ZERO_FLOAT = ua.Float(0.0)
_EMPTY = ua.String("")
_NEVER_TIME = ua.DateTime(1601, 1, 1, tzinfo=UTC)  # OPC UA's "no time"


@dataclass
class PackMLCountDataType:
    """OPC 30050 6.5.3: a counter of one material; `AccCount` never resets."""

    ID: ua.Int32 = _ZERO
    Name: ua.String = _EMPTY
    Unit: ua.EUInformation = field(default_factory=ua.EUInformation)
    Count: ua.Int32 = _ZERO
    AccCount: ua.Int32 = _ZERO


@dataclass
class PackMLAlarmDataType:
    """OPC 30050 6.8.2.2: an alarm, warning or stop reason."""

    ID: ua.Int32 = _ZERO
    Value: ua.Int32 = _ZERO
    Message: ua.String = _EMPTY
    Category: ua.Int32 = _ZERO
    DateTime: ua.DateTime = _NEVER_TIME
    AckDateTime: ua.DateTime = _NEVER_TIME
    Trigger: ua.Boolean = False  # type: ignore[assignment]  # asyncua: a marker type


@dataclass
class PackMLDescriptorDataType:
    """OPC 30050 6.5.4: a named parameter value (Start's optional input)."""

    ID: ua.Int32 = _ZERO
    Name: ua.String = _EMPTY
    Unit: ua.EUInformation = field(default_factory=ua.EUInformation)
    Value: ua.Float = _ZERO_FLOAT


_STRUCTURES: dict[int, tuple[type, list[tuple[str, ua.NodeId]]]] = {
    PACKML_COUNT_DATA_TYPE: (
        PackMLCountDataType,
        [
            ("ID", _n(_I.Int32)),
            ("Name", _n(_I.String)),
            ("Unit", _n(_I.EUInformation)),
            ("Count", _n(_I.Int32)),
            ("AccCount", _n(_I.Int32)),
        ],
    ),
    PACKML_ALARM_DATA_TYPE: (
        PackMLAlarmDataType,
        [
            ("ID", _n(_I.Int32)),
            ("Value", _n(_I.Int32)),
            ("Message", _n(_I.String)),
            ("Category", _n(_I.Int32)),
            ("DateTime", _n(_UTC_TIME)),
            ("AckDateTime", _n(_UTC_TIME)),
            ("Trigger", _n(_I.Boolean)),
        ],
    ),
    PACKML_DESCRIPTOR_DATA_TYPE: (
        PackMLDescriptorDataType,
        [
            ("ID", _n(_I.Int32)),
            ("Name", _n(_I.String)),
            ("Unit", _n(_I.EUInformation)),
            ("Value", _n(_I.Float)),
        ],
    ),
}


def register_structures(ns: int) -> None:
    """Tell asyncua's codec about the PackML structures at namespace index `ns`."""
    for type_id, (cls, _fields) in _STRUCTURES.items():
        setattr(cls, "data_type", _n(type_id, ns))  # noqa: B010  # as asyncua's classes
        ua.register_extension_object(
            cls.__name__, _n(_BINARY_ENCODING[type_id], ns), cls, _n(type_id, ns)
        )


# -- building ------------------------------------------------------------------------------


class _Builder:
    """Adds nodes with exact ids, browse names, type definitions and modelling rules."""

    def __init__(self, server: Server, ns: int) -> None:
        self.server = server
        self.ns = ns

    def node(self, identifier: int) -> Node:
        return self.server.get_node(_n(identifier, self.ns))

    async def _add(self, item: ua.AddNodesItem, rule: bool | None) -> Node:
        (result,) = await self.server.iserver.isession.add_nodes([item])
        result.StatusCode.check()
        node = self.server.get_node(result.AddedNodeId)
        if rule is not None:
            await node.set_modelling_rule(rule)
        return node

    async def object_type(
        self, identifier: int, name: str, parent: int = _I.BaseObjectType
    ) -> Node:
        return await self.server.get_node(_n(parent)).add_object_type(
            _n(identifier, self.ns), ua.QualifiedName(name, self.ns)
        )

    async def obj(
        self,
        parent: ua.NodeId,
        identifier: int,
        name: str,
        type_definition: ua.NodeId,
        rule: bool | None,
    ) -> Node:
        item = ua.AddNodesItem(
            RequestedNewNodeId=_n(identifier, self.ns),
            BrowseName=ua.QualifiedName(name, self.ns),
            NodeClass=ua.NodeClass.Object,
            ParentNodeId=parent,
            ReferenceTypeId=_n(_I.HasComponent),
            TypeDefinition=type_definition,
            NodeAttributes=ua.ObjectAttributes(DisplayName=ua.LocalizedText(name), EventNotifier=0),
        )
        return await self._add(item, rule)

    async def var(
        self,
        parent: ua.NodeId,
        identifier: int,
        name: str,
        value: ua.Variant,
        data_type: ua.NodeId,
        *,
        rule: bool | None,
        name_ns: int | None = None,
        type_definition: int = _I.BaseDataVariableType,
        reference: ua.NodeId | None = None,
        value_rank: int = -1,
        prop: bool = False,
    ) -> Node:
        attrs = ua.VariableAttributes(
            DisplayName=ua.LocalizedText(name),
            Value=value,
            DataType=data_type,
            ValueRank=value_rank,
            ArrayDimensions=[0] if value_rank == 1 else [],
            AccessLevel=ua.AccessLevel.CurrentRead.mask,
            UserAccessLevel=ua.AccessLevel.CurrentRead.mask,
        )
        item = ua.AddNodesItem(
            RequestedNewNodeId=_n(identifier, self.ns),
            BrowseName=ua.QualifiedName(name, self.ns if name_ns is None else name_ns),
            NodeClass=ua.NodeClass.Variable,
            ParentNodeId=parent,
            ReferenceTypeId=reference or _n(_I.HasProperty if prop else _I.HasComponent),
            TypeDefinition=_n(_I.PropertyType if prop else type_definition),
            NodeAttributes=attrs,
        )
        return await self._add(item, rule)

    async def method(
        self,
        parent: ua.NodeId,
        identifier: int,
        name: str,
        rule: bool | None,
        arguments: list[ua.Argument],
        arguments_id: int | None,
    ) -> Node:
        item = ua.AddNodesItem(
            RequestedNewNodeId=_n(identifier, self.ns),
            BrowseName=ua.QualifiedName(name, self.ns),
            NodeClass=ua.NodeClass.Method,
            ParentNodeId=parent,
            ReferenceTypeId=_n(_I.HasComponent),
            NodeAttributes=ua.MethodAttributes(
                DisplayName=ua.LocalizedText(name), Executable=True, UserExecutable=True
            ),
        )
        node = await self._add(item, rule)
        if arguments and arguments_id is not None:
            await self.var(
                node.nodeid,
                arguments_id,
                "InputArguments",
                ua.Variant(arguments, ua.VariantType.ExtensionObject),
                _n(_I.Argument),
                rule=True,
                name_ns=0,
                value_rank=1,
                prop=True,
            )
        return node


def argument(name: str, data_type: ua.NodeId, description: str, rank: int = -1) -> ua.Argument:
    return ua.Argument(
        Name=name,
        DataType=data_type,
        ValueRank=rank,
        ArrayDimensions=[0] if rank == 1 else [],
        Description=ua.LocalizedText(description),
    )


async def build_types(server: Server, ns: int) -> None:
    """Create the PackML data types, reference type and object types in namespace `ns`
    (the index of `PACKML_URI`), with the specification's numeric node ids."""
    b = _Builder(server, ns)
    await _data_types(server, b)
    has_component = server.get_node(_n(_I.HasComponent))
    await has_component.add_reference_type(
        _n(HAS_STOP_REASON, ns), ua.QualifiedName("HasStopReason", ns), symmetric=False
    )
    await _state_machine_types(b)
    await _status_and_admin_types(b)
    await _base_object_type(b)


async def _data_types(server: Server, b: _Builder) -> None:
    ns = b.ns
    enum = await server.get_node(_n(_ENUMERATION)).add_data_type(
        _n(PRODUCTION_MAINTENANCE_MODE_ENUM, ns),
        ua.QualifiedName("ProductionMaintenanceModeEnum", ns),
    )
    names = ("Invalid", "Produce", "Maintenance", "Manual")
    definition = ua.EnumDefinition(
        Fields=[
            ua.EnumField(Value=i, DisplayName=ua.LocalizedText(n), Name=n)
            for i, n in enumerate(names)
        ]
    )
    await enum.write_data_type_definition(definition)
    await b.var(
        enum.nodeid,
        _ENUM_VALUES,
        "EnumValues",
        ua.Variant(
            [
                ua.EnumValueType(Value=i, DisplayName=ua.LocalizedText(n))
                for i, n in enumerate(names)
            ],
            ua.VariantType.ExtensionObject,
        ),
        _n(_I.EnumValueType),
        rule=None,
        name_ns=0,
        value_rank=1,
        prop=True,
    )
    structure = server.get_node(_n(_I.Structure))
    for type_id, (cls, fields) in _STRUCTURES.items():
        dtype = await structure.add_data_type(_n(type_id, ns), ua.QualifiedName(cls.__name__, ns))
        encoding = await dtype.add_object(
            _n(_BINARY_ENCODING[type_id], ns), ua.QualifiedName("Default Binary", 0)
        )
        # add_object links with HasComponent; an encoding hangs on HasEncoding.
        await dtype.delete_reference(encoding, _n(_I.HasComponent))
        await dtype.add_reference(encoding, _n(_I.HasEncoding))
        await encoding.delete_reference(_n(_I.BaseObjectType), _n(_I.HasTypeDefinition))
        await encoding.add_reference(_n(_I.DataTypeEncodingType), _n(_I.HasTypeDefinition))
        await dtype.write_data_type_definition(
            ua.StructureDefinition(
                DefaultEncodingId=encoding.nodeid,
                BaseDataType=_n(_I.Structure),
                StructureType=ua.StructureType.Structure,
                Fields=[
                    ua.StructureField(Name=name, DataType=data_type, ValueRank=-1, IsOptional=False)
                    for name, data_type in fields
                ],
            )
        )
    register_structures(ns)


async def _state_machine(
    b: _Builder,
    type_id: int,
    name: str,
    states: dict[str, tuple[int, int, int]],
    available_ids: tuple[int, int],
) -> Node:
    node = await b.object_type(type_id, name, parent=_I.FiniteStateMachineType)
    for state, (state_id, number_id, number) in states.items():
        obj = await b.obj(node.nodeid, state_id, state, _n(_I.StateType), None)
        await b.var(
            obj.nodeid,
            number_id,
            "StateNumber",
            ua.Variant(number, ua.VariantType.UInt32),
            _n(_I.UInt32),
            rule=True,
            name_ns=0,
            prop=True,
        )
    await _available(b, node.nodeid, available_ids)
    for (owner, method), method_id in STATE_MACHINE_METHODS.items():
        if owner != type_id:
            continue
        arguments: list[ua.Argument] = []
        if method == "Start":
            arguments = [
                argument(
                    "Parameter",
                    _n(PACKML_DESCRIPTOR_DATA_TYPE, b.ns),
                    "Parameters for the start of the machine",
                    rank=1,
                )
            ]
        await b.method(node.nodeid, method_id, method, False, arguments, _START_INPUT_ARGUMENTS)
    return node


async def _available(b: _Builder, parent: ua.NodeId, ids: tuple[int, int]) -> None:
    """AvailableStates and AvailableTransitions (NodeId arrays) of a state machine."""
    for ident, bname in zip(ids, ("AvailableStates", "AvailableTransitions"), strict=True):
        await b.var(
            parent,
            ident,
            bname,
            ua.Variant([], ua.VariantType.NodeId),
            _n(_I.NodeId),
            rule=True,
            name_ns=0,
            value_rank=1,
        )


async def _current_state(
    b: _Builder, parent: ua.NodeId, var_id: int, id_id: int, available: tuple[int, int]
) -> None:
    """A FiniteStateVariableType CurrentState with its mandatory Id, in a declaration,
    and the declaration's AvailableStates and AvailableTransitions."""
    await _available(b, parent, available)
    current = await b.var(
        parent,
        var_id,
        "CurrentState",
        ua.Variant(ua.LocalizedText(""), ua.VariantType.LocalizedText),
        _n(_I.LocalizedText),
        rule=True,
        name_ns=0,
        type_definition=_I.FiniteStateVariableType,
    )
    await b.var(
        current.nodeid,
        id_id,
        "Id",
        ua.Variant(ua.NodeId(), ua.VariantType.NodeId),
        _n(_I.NodeId),
        rule=True,
        name_ns=0,
        prop=True,
    )


async def _state_machine_types(b: _Builder) -> None:
    ns = b.ns
    await _state_machine(
        b, EXECUTE_STATE_MACHINE_TYPE, "PackMLExecuteStateMachineType", EXECUTE_STATES, (125, 126)
    )
    machine = await _state_machine(
        b, MACHINE_STATE_MACHINE_TYPE, "PackMLMachineStateMachineType", MACHINE_STATES, (153, 154)
    )
    execute = await b.obj(
        machine.nodeid, 56, "ExecuteState", _n(EXECUTE_STATE_MACHINE_TYPE, ns), True
    )
    await _current_state(b, execute.nodeid, 161, 162, (177, 160))
    await b.node(75).add_reference(execute.nodeid, _n(_I.HasSubStateMachine))
    base = await _state_machine(
        b, BASE_STATE_MACHINE_TYPE, "PackMLBaseStateMachineType", BASE_STATES, (167, 158)
    )
    machine_decl = await b.obj(
        base.nodeid, 64, "MachineState", _n(MACHINE_STATE_MACHINE_TYPE, ns), True
    )
    await _current_state(b, machine_decl.nodeid, 172, 173, (212, 204))
    await b.node(71).add_reference(machine_decl.nodeid, _n(_I.HasSubStateMachine))


async def _analog(b: _Builder, parent: ua.NodeId, ident: int, range_id: int, name: str) -> None:
    node = await b.var(
        parent,
        ident,
        name,
        ua.Variant(0.0, ua.VariantType.Float),
        _n(_I.Float),
        rule=True,
        type_definition=_I.AnalogItemType,
    )
    await b.var(
        node.nodeid,
        range_id,
        "EURange",
        ua.Variant(ua.Range(), ua.VariantType.ExtensionObject),
        _n(_I.Range),
        rule=True,
        name_ns=0,
        prop=True,
    )


async def _status_members(b: _Builder, parent: ua.NodeId, ids: dict[str, int]) -> None:
    """The Status members a machine must have, in the type or in a declaration."""
    ns = b.ns
    await b.var(
        parent,
        ids["UnitModeCurrent"],
        "UnitModeCurrent",
        ua.Variant(0, ua.VariantType.Int32),
        _n(_ENUMERATION),
        rule=True,
    )
    await _analog(b, parent, ids["CurMachSpeed"], ids["CurMachSpeed.EURange"], "CurMachSpeed")
    await _analog(b, parent, ids["MachSpeed"], ids["MachSpeed.EURange"], "MachSpeed")
    for name in ("EquipmentBlocked", "EquipmentStarved"):
        await b.var(
            parent,
            ids[name],
            name,
            ua.Variant(False, ua.VariantType.Boolean),
            _n(_I.Boolean),
            rule=True,
        )
    await b.var(
        parent,
        ids["UnitSupportedModes"],
        "UnitSupportedModes",
        ua.Variant(_n(PRODUCTION_MAINTENANCE_MODE_ENUM, ns), ua.VariantType.NodeId),
        _n(_I.NodeId),
        rule=True,
        prop=True,
    )


_STATUS_TYPE_IDS = {
    "UnitModeCurrent": 200,
    "CurMachSpeed": 232,
    "CurMachSpeed.EURange": 233,
    "MachSpeed": 219,
    "MachSpeed.EURange": 220,
    "EquipmentBlocked": 211,
    "EquipmentStarved": 224,
    "UnitSupportedModes": 193,
}
_STATUS_DECLARATION_IDS = {
    "UnitModeCurrent": 225,
    "CurMachSpeed": 255,
    "CurMachSpeed.EURange": 256,
    "MachSpeed": 257,
    "MachSpeed.EURange": 258,
    "EquipmentBlocked": 274,
    "EquipmentStarved": 275,
    "UnitSupportedModes": 290,
}
#: Admin members doseline fills (all Optional in the type): name -> node id in the type.
ADMIN_MEMBERS = {"ProdProcessedCount": 120, "ProdDefectiveCount": 119, "StopReason": 244}
#: Optional scalar members doseline fills: (object, browse name) -> (node id in the
#: type, data type, variant type).
OPTIONAL_MEMBERS: dict[tuple[str, str], tuple[int, int, ua.VariantType]] = {
    ("Status", "StateRequested"): (209, _I.Int32, ua.VariantType.Int32),
    ("Status", "StateChangeInProcess"): (210, _I.Boolean, ua.VariantType.Boolean),
    ("Status", "UnitModeChangeInProcess"): (201, _I.Boolean, ua.VariantType.Boolean),
    ("Admin", "MachDesignSpeed"): (253, _I.Float, ua.VariantType.Float),
}
_DEFAULTS: dict[ua.VariantType, Any] = {
    ua.VariantType.Int32: 0,
    ua.VariantType.Boolean: False,
    ua.VariantType.Float: 0.0,
}


async def _status_and_admin_types(b: _Builder) -> None:
    ns = b.ns
    status = await b.object_type(STATUS_OBJECT_TYPE, "PackMLStatusObjectType")
    await _status_members(b, status.nodeid, _STATUS_TYPE_IDS)
    admin = await b.object_type(ADMIN_OBJECT_TYPE, "PackMLAdminObjectType")
    await admin_members(b.server, admin.nodeid, ns, ids=ADMIN_MEMBERS, rule=False)
    owners = {"Status": status.nodeid, "Admin": admin.nodeid}
    for (owner, name), (ident, data_type, vtype) in OPTIONAL_MEMBERS.items():
        await b._add(
            _variable_item(
                _n(ident, ns),
                ua.QualifiedName(name, ns),
                owners[owner],
                ua.Variant(_DEFAULTS[vtype], vtype),
                _n(data_type),
            ),
            False,
        )


async def optional_member(
    server: Server, parent: ua.NodeId, ns: int, node_id: ua.NodeId, owner: str, name: str
) -> ua.VariantType:
    """One of `OPTIONAL_MEMBERS` on an instance; returns its variant type."""
    _, data_type, vtype = OPTIONAL_MEMBERS[(owner, name)]
    await _Builder(server, ns)._add(
        _variable_item(
            node_id,
            ua.QualifiedName(name, ns),
            parent,
            ua.Variant(_DEFAULTS[vtype], vtype),
            _n(data_type),
        ),
        None,
    )
    return vtype


async def admin_members(
    server: Server,
    parent: ua.NodeId,
    ns: int,
    *,
    ids: dict[str, int] | None = None,
    node_ns: int | None = None,
    prefix: str = "",
    rule: bool | None = None,
) -> None:
    """ProdProcessedCount, ProdDefectiveCount (PackMLCountDataType[]) and StopReason
    (PackMLAlarmDataType, linked by HasStopReason): in the type with their numeric ids,
    in an instance with string ids `prefix + name` in `node_ns`."""
    b = _Builder(server, ns)

    def nid(name: str) -> ua.NodeId:
        if ids is not None:
            return _n(ids[name], ns)
        return ua.NodeId(ua.String(prefix + name), ua.Int16(node_ns or 0))

    count_type = _n(PACKML_COUNT_DATA_TYPE, ns)
    for name in ("ProdProcessedCount", "ProdDefectiveCount"):
        await b._add(
            _variable_item(
                nid(name),
                ua.QualifiedName(name, ns),
                parent,
                ua.Variant([], ua.VariantType.ExtensionObject),
                count_type,
                value_rank=1,
            ),
            rule,
        )
    await b._add(
        _variable_item(
            nid("StopReason"),
            ua.QualifiedName("StopReason", ns),
            parent,
            ua.Variant(PackMLAlarmDataType(), ua.VariantType.ExtensionObject),
            _n(PACKML_ALARM_DATA_TYPE, ns),
            reference=_n(HAS_STOP_REASON, ns),
        ),
        rule,
    )


def _variable_item(
    nodeid: ua.NodeId,
    bname: ua.QualifiedName,
    parent: ua.NodeId,
    value: ua.Variant,
    data_type: ua.NodeId,
    *,
    value_rank: int = -1,
    reference: ua.NodeId | None = None,
) -> ua.AddNodesItem:
    return ua.AddNodesItem(
        RequestedNewNodeId=nodeid,
        BrowseName=bname,
        NodeClass=ua.NodeClass.Variable,
        ParentNodeId=parent,
        ReferenceTypeId=reference or _n(_I.HasComponent),
        TypeDefinition=_n(_I.BaseDataVariableType),
        NodeAttributes=ua.VariableAttributes(
            DisplayName=ua.LocalizedText(bname.Name),
            Value=value,
            DataType=data_type,
            ValueRank=value_rank,
            ArrayDimensions=[0] if value_rank == 1 else [],
            AccessLevel=ua.AccessLevel.CurrentRead.mask,
            UserAccessLevel=ua.AccessLevel.CurrentRead.mask,
        ),
    )


async def _base_object_type(b: _Builder) -> None:
    ns = b.ns
    base = await b.object_type(BASE_OBJECT_TYPE, "PackMLBaseObjectType")
    status = await b.obj(base.nodeid, 87, "Status", _n(STATUS_OBJECT_TYPE, ns), True)
    await _status_members(b, status.nodeid, _STATUS_DECLARATION_IDS)
    await b.obj(base.nodeid, 73, "Admin", _n(ADMIN_OBJECT_TYPE, ns), True)
    machines = await b.obj(
        base.nodeid, 88, "BaseStateMachine", _n(BASE_STATE_MACHINE_TYPE, ns), True
    )
    await _current_state(b, machines.nodeid, 272, 273, (259, 202))
    machine = await b.obj(
        machines.nodeid, 89, "MachineState", _n(MACHINE_STATE_MACHINE_TYPE, ns), True
    )
    await _current_state(b, machine.nodeid, 262, 263, (214, 213))
    execute = await b.obj(
        machine.nodeid, 90, "ExecuteState", _n(EXECUTE_STATE_MACHINE_TYPE, ns), True
    )
    await _current_state(b, execute.nodeid, 266, 227, (223, 222))
    await b.method(
        base.nodeid,
        SET_UNIT_MODE,
        "SetUnitMode",
        True,
        [
            argument(
                "RequestedMode",
                _n(_I.Int32),
                "The requested mode from the list of available modes",
            )
        ],
        _SET_UNIT_MODE_INPUT_ARGUMENTS,
    )
    await b.var(
        base.nodeid,
        221,
        "PackMLVersion",
        ua.Variant("TR88.00.02-2015", ua.VariantType.String),
        _n(_I.String),
        rule=False,
        prop=True,
    )
    await b.var(
        base.nodeid,
        218,
        "TagID",
        ua.Variant("", ua.VariantType.String),
        _n(_I.String),
        rule=False,
        prop=True,
    )


# -- state values --------------------------------------------------------------------------


def state_machine_values(state: int, ns: int) -> dict[str, tuple[str, ua.NodeId, int]]:
    """CurrentState of each machine for a PackML state number: path below
    BaseStateMachine ('' for itself) -> (state name, state node id, number).

    A sub-state machine that is not active (MachineState while Aborted, ExecuteState
    outside Running) shows an empty name, a null Id and number 0. A number outside the
    model (a fault knob) shows in ExecuteState with a null Id."""
    inactive = ("", ua.NodeId(), 0)

    def entry(table: dict[str, tuple[int, int, int]], name: str) -> tuple[str, ua.NodeId, int]:
        ident, _, number = table[name]
        return (name, _n(ident, ns), number)

    by_number = {
        number: (table, name)
        for table in (BASE_STATES, MACHINE_STATES, EXECUTE_STATES)
        for name, (_, _, number) in table.items()
        if number not in (RUNNING, CLEARED)
    }
    cleared = entry(BASE_STATES, "Cleared")
    running = entry(MACHINE_STATES, "Running")
    found = by_number.get(state)
    if found is None:
        return {
            "": cleared,
            "MachineState": running,
            "MachineState.ExecuteState": (str(state), ua.NodeId(), state),
        }
    table, name = found
    if table is BASE_STATES:
        return {
            "": entry(table, name),
            "MachineState": inactive,
            "MachineState.ExecuteState": inactive,
        }
    if table is MACHINE_STATES:
        return {
            "": cleared,
            "MachineState": entry(table, name),
            "MachineState.ExecuteState": inactive,
        }
    return {"": cleared, "MachineState": running, "MachineState.ExecuteState": entry(table, name)}


def available_states(ns: int) -> dict[str, list[ua.NodeId]]:
    """AvailableStates of each machine (path below BaseStateMachine)."""
    return {
        "": [_n(i, ns) for i, _, _ in BASE_STATES.values()],
        "MachineState": [_n(i, ns) for i, _, _ in MACHINE_STATES.values()],
        "MachineState.ExecuteState": [_n(i, ns) for i, _, _ in EXECUTE_STATES.values()],
    }


def node_id(identifier: int, ns: int) -> ua.NodeId:
    """A numeric node id in the PackML namespace (index `ns`)."""
    return _n(identifier, ns)
