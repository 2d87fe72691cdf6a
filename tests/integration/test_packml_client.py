"""A client that knows only OPC 30050 (PackML) against the packer simulator.

The simulator runs as its own program, so nothing of doseline is imported here: the
client uses plain asyncua and the specification's published facts (namespace URI,
numeric node ids, browse names, structure layouts). It finds the machine by its type,
reads state and counters, and calls Reset and Start. Only the job has to come through
doseline's documented extension (`LoadJob`): OPC 30050 has no method to hand a machine
its work, and a dose packer starts nothing without a job.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua import Client, Node, ua

REPO = Path(__file__).resolve().parents[2]

PACKML = "http://opcfoundation.org/UA/PackML/"
# Node ids in the PackML namespace, from the published Opc.Ua.PackML.NodeSet2.xml.
BASE_OBJECT_TYPE = 6
COUNT_DATA_TYPE = 14
STOPPED, IDLE, EXECUTE, COMPLETE, RUNNING = 53, 28, 36, 38, 75
STATE_NUMBERS = {STOPPED: 2, IDLE: 4, EXECUTE: 6, COMPLETE: 17}


@pytest.fixture
async def packer(free_port: int, address_space_cache: Path) -> AsyncIterator[str]:
    """`python -m simulators.packer_opcua` on a free port; yields its endpoint."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.packer_opcua",
        "--name",
        "P1",
        "--port",
        str(free_port),
        "--speed",
        "100",
        "--transient",
        "0.005",
        "--address-space-cache",
        str(address_space_cache),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert f"127.0.0.1:{free_port}" in line.decode()
        yield f"opc.tcp://127.0.0.1:{free_port}/"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def subtypes(client: Client, root: ua.NodeId) -> set[ua.NodeId]:
    found, todo = {root}, [root]
    while todo:
        node = client.get_node(todo.pop())
        for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HasSubtype):
            found.add(ref.NodeId)
            todo.append(ref.NodeId)
    return found


async def machines(client: Client, ns: int) -> list[ua.ReferenceDescription]:
    """Objects (and one folder level below) whose type is PackMLBaseObjectType or a
    subtype: how a PackML client finds machines without knowing their names."""
    types = await subtypes(client, ua.NodeId(BASE_OBJECT_TYPE, ns))
    found = []
    for ref in await client.nodes.objects.get_children_descriptions(
        refs=ua.ObjectIds.HierarchicalReferences
    ):
        if ref.TypeDefinition in types:
            found.append(ref)
    return found


async def state(machine: Node, ns: int) -> tuple[int, int, int, int]:
    """Ids of BaseStateMachine's, MachineState's and ExecuteState's current states, and
    the innermost active state's Number."""
    path = [f"{ns}:BaseStateMachine"]
    ids = []
    for sub in ("", f"{ns}:MachineState", f"{ns}:ExecuteState"):
        if sub:
            path.append(sub)
        current = await machine.get_child([*path, "0:CurrentState"])
        ids.append(await (await current.get_child("0:Id")).read_value())
    number = 0
    for sub_path in (path, path[:-1], path[:-2]):
        current = await machine.get_child([*sub_path, "0:CurrentState"])
        if await (await current.get_child("0:Id")).read_value() != ua.NodeId():
            number = await (await current.get_child("0:Number")).read_value()
            break
    base, mach, execute = (i.Identifier if i.NamespaceIndex == ns else 0 for i in ids)
    return base, mach, execute, number


async def wait_execute_state(machine: Node, ns: int, wanted: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        _, mach, execute, number = await state(machine, ns)
        if mach == RUNNING and execute == wanted:
            return int(number)
        assert time.monotonic() < deadline, f"ExecuteState {execute}, wanted {wanted}"
        await asyncio.sleep(0.01)


async def test_a_packml_client_finds_reads_and_drives_the_machine(packer: str) -> None:
    async with Client(packer, timeout=5.0) as client:
        ns = await client.get_namespace_index(PACKML)

        (found,) = await machines(client, ns)
        assert found.BrowseName.Name == "P1"
        machine = client.get_node(found.NodeId)

        # The counter structure is the specification's, read from the server itself.
        definition = await client.get_node(
            ua.NodeId(COUNT_DATA_TYPE, ns)
        ).read_data_type_definition()
        assert [(f.Name, f.DataType) for f in definition.Fields] == [
            ("ID", ua.NodeId(ua.ObjectIds.Int32)),
            ("Name", ua.NodeId(ua.ObjectIds.String)),
            ("Unit", ua.NodeId(ua.ObjectIds.EUInformation)),
            ("Count", ua.NodeId(ua.ObjectIds.Int32)),
            ("AccCount", ua.NodeId(ua.ObjectIds.Int32)),
        ]
        await client.load_data_type_definitions()

        # Power-on: Stopped (MachineState), BaseStateMachine in Cleared, Production mode.
        base, mach, execute, number = await state(machine, ns)
        assert (base, mach, execute, number) == (71, STOPPED, 0, 2)
        mode = await machine.get_child([f"{ns}:Status", f"{ns}:UnitModeCurrent"])
        assert await mode.read_value() == 1
        processed = await machine.get_child([f"{ns}:Admin", f"{ns}:ProdProcessedCount"])
        defective = await machine.get_child([f"{ns}:Admin", f"{ns}:ProdDefectiveCount"])
        (count,) = await processed.read_value()
        assert (count.Count, count.AccCount) == (0, 0)
        assert count.Unit.DisplayName.Text == "pcs"
        stop = await (await machine.get_child([f"{ns}:Admin", f"{ns}:StopReason"])).read_value()
        assert (stop.ID, stop.Trigger) == (0, False)

        # Reset is MachineState's method (Stopped -> Resetting -> Idle).
        machine_state = await machine.get_child([f"{ns}:BaseStateMachine", f"{ns}:MachineState"])
        execute_state = await machine_state.get_child(f"{ns}:ExecuteState")
        await machine_state.call_method(f"{ns}:Reset")
        assert await wait_execute_state(machine, ns, IDLE) == 4

        # Start is ExecuteState's, with the optional Parameter array; without a job the
        # machine refuses it, saying why.
        no_parameters = ua.Variant([], ua.VariantType.ExtensionObject)
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await execute_state.call_method(f"{ns}:Start", no_parameters)
        assert refused.value.code == ua.StatusCodes.BadInvalidState

        # The job comes through doseline's extension; then the standard Start runs it.
        ext = await client.get_namespace_index("urn:doseline:packer:ext")
        pouches = [{"seq": n, "label": f"p{n}", "items": [[1, 1]]} for n in (1, 2, 3)]
        await machine.call_method(
            f"{ext}:LoadJob",
            ua.Variant("J-spec", ua.VariantType.String),
            ua.Variant(json.dumps(pouches), ua.VariantType.String),
        )
        await execute_state.call_method(f"{ns}:Start", no_parameters)
        assert await wait_execute_state(machine, ns, COMPLETE) == 17
        (count,) = await processed.read_value()
        assert (count.Count, count.AccCount) == (3, 3)
        (rejects,) = await defective.read_value()
        assert (rejects.Count, rejects.AccCount) == (0, 0)

        # From Complete, Reset is ExecuteState's; the job count starts again at 0 and
        # the accumulated count never goes back.
        await execute_state.call_method(f"{ns}:Reset")
        await wait_execute_state(machine, ns, IDLE)
        (count,) = await processed.read_value()
        assert (count.Count, count.AccCount) == (0, 3)
