"""What only the fakes have: recorded calls, settable values, injected failures. The
behaviour they share with the real drivers is in the contract tests beside this file."""

from __future__ import annotations

import pytest

from drivers.base import (
    AckCode,
    CabinetCommand,
    DriverError,
    EventAck,
    PackerJobSpec,
    PackMLCommand,
    PackMLState,
    PocketEvent,
    Pouch,
    PouchItem,
    StopReason,
)
from drivers.fakes import (
    FakeCabinet,
    FakeEventCabinet,
    FakeEventPocket,
    FakePacker,
    FakePocket,
    FakeScanner,
)

GTIN = "07350000010015"


async def test_packer_records_calls_and_takes_set_values() -> None:
    packer = FakePacker("P1", [(1, GTIN, 10, 20)], pouches_per_read=0)
    await packer.connect()
    packer.state = PackMLState.IDLE
    job = PackerJobSpec(
        "J1", (Pouch(1, "x", (PouchItem(1, 2),)), Pouch(2, "y", (PouchItem(1, 2),)))
    )
    await packer.load_job(job)
    await packer.command(PackMLCommand.START)
    assert (await packer.read_status()).job_pouches_good == 0  # frozen: no packing per read
    packer.reject_next = 1
    assert packer.pack(2) == 2
    status = packer.status()
    assert (status.job_pouches_good, status.job_pouches_rejected, status.defective_total) == (
        1,
        1,
        1,
    )
    packer.canisters[1].count = 1
    packer.pack()
    assert (packer.state, packer.stop_reason, packer.stop_canister) == (
        PackMLState.HELD,
        StopReason.CANISTER_EMPTY,
        1,
    )
    packer.processed_total = 1000
    assert (await packer.read_status()).processed_total == 1000
    assert packer.calls_to("command") == [(PackMLCommand.START,)]
    assert [name for name, _ in packer.calls] == [
        "connect",
        "load_job",
        "command",
        "read_status",
        "read_status",
    ]


async def test_injected_failures_and_link_down() -> None:
    packer = FakePacker("P1", [(1, GTIN, 10, 20)])
    await packer.connect()
    packer.fail_next("read_status")
    packer.fail_next("read_status", DriverError("second"))
    with pytest.raises(DriverError, match="injected"):
        await packer.read_status()
    with pytest.raises(DriverError, match="second"):
        await packer.read_status()
    await packer.read_status()
    packer.link_up = False
    with pytest.raises(DriverError, match="link down"):
        await packer.read_status()
    packer.link_up = True
    with pytest.raises(DriverError, match="not connected"):
        await packer.read_status()  # the session ended with the link
    await packer.connect()
    await packer.read_status()


async def test_cabinet_records_commands_and_stalls() -> None:
    cabinet = FakeCabinet("CAB1", [FakePocket(1, 1001, 5, 2, 8, 10)])
    await cabinet.connect()
    await cabinet.send_command(1, CabinetCommand.REFILL, 1, 3)
    cabinet.stalled = True
    with pytest.raises(DriverError, match="not acknowledged"):
        await cabinet.send_command(2, CabinetCommand.REFILL, 1, 1)
    cabinet.door_open = True
    cabinet.pockets[1].min_level = 4
    status = await cabinet.read_status()
    assert (status.pockets[0].count, status.pockets[0].min_level, status.status) == (8, 4, 1)
    assert cabinet.calls_to("send_command") == [
        (1, CabinetCommand.REFILL, 1, 3),
        (2, CabinetCommand.REFILL, 1, 1),
    ]
    assert (cabinet.commands_executed, cabinet.commands_repeated) == (1, 0)


async def test_event_cabinet_keeps_acks_and_item_master() -> None:
    cabinet = FakeEventCabinet("CAB1", [FakeEventPocket(1, GTIN, 5, 10)], snapshot_on_connect=False)
    await cabinet.connect()
    cabinet.stocktake(1, 4)
    event = await cabinet.next_event()
    assert isinstance(event, PocketEvent) and event.quantity == 4
    refusal = EventAck(AckCode.ERROR, "unknown product", 204)
    await cabinet.acknowledge(event, refusal)
    assert cabinet.acks == [(event, refusal)] and cabinet.outbox == []
    cabinet.refuse_item_master = "busy"
    with pytest.raises(DriverError, match="busy"):
        await cabinet.send_item_master([], replace=True)


async def test_scanner_loses_scans_while_the_line_is_down() -> None:
    scanner = FakeScanner("SC1")
    await scanner.connect()
    scanner.link_up = False
    scanner.scan("lost")
    scanner.link_up = True
    scanner.scan("kept")
    assert await scanner.read_scan() == "kept"
    assert scanner.lost_scans == 1
