"""In-memory drivers: a fake packer, polled cabinet, event cabinet and scanner.

Each fake implements its interface from `drivers.base` completely, with no sockets, no
threads and no clock: what the device shows is plain attributes a test sets, and every
call through the interface is appended to `calls` as `(method, args)`. They refuse what
the real drivers refuse, with the same exception types (`DriverError`, and `ValueError`
where a real driver raises it before any I/O). tests/contract runs one behavioural suite
against each fake and against each real driver talking to its simulator, so a fake that
drifts from the real thing fails there.

How to drive them in a test::

    packer = FakePacker("P1", canisters=[(1, "07350000010015", 200, 300)])
    await packer.connect()
    await packer.command(PackMLCommand.RESET)          # Stopped -> Idle at once
    await packer.load_job(job)
    await packer.command(PackMLCommand.START)          # Execute
    packer.pack(2)                                     # two pouches (or: each read packs one)
    packer.canisters[1].count = 0                      # set any value directly
    packer.link_up = False                             # every call now raises DriverError
    packer.fail_next("read_status")                    # only the next read_status fails
    assert ("command", (PackMLCommand.START,)) in packer.calls

    cabinet = FakeCabinet("CAB1", pockets=[FakePocket(1, article=1001, count=10)])
    cabinet.withdraw(1, 3)                             # a nurse at the cabinet
    cabinet.temperature_c = 30.0                       # or cabinet.set_temperature(30.0)

    event_cabinet = FakeEventCabinet("CAB1", pockets=[FakeEventPocket(1, GTIN, 12, 20)])
    event_cabinet.withdraw(1)                          # queues a DISPENSE event

    scanner = FakeScanner("SC1")
    scanner.scan("0107359990000013...")                # read_scan returns it

Where the fakes are simpler than the machines (docs/architecture.md, "Fakes and the
contract suite"): acting PackML states (Starting, Holding, ...) complete at once, so a
command lands in the resting state; a packer in Execute packs `pouches_per_read` pouches
per `read_status` (0 = only when the test calls `pack`) instead of by the clock; an
event cabinet's `read_status` is its state now, not the last snapshot pushed; nothing
times out, so an unacknowledged event is redelivered only on AR 207 or a reconnect.
"""

from __future__ import annotations

from drivers.fake_cabinet import FakeCabinet, FakePocket
from drivers.fake_event_cabinet import FakeEventCabinet, FakeEventPocket
from drivers.fake_packer import FakeCanister, FakePacker
from drivers.fake_scanner import FakeScanner

__all__ = [
    "FakeCabinet",
    "FakeCanister",
    "FakeEventCabinet",
    "FakeEventPocket",
    "FakePacker",
    "FakePocket",
    "FakeScanner",
]
