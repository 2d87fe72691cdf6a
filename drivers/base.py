"""Device interfaces the controller programs against.

Drivers translate between these plain values and a wire protocol (OPC UA, Modbus,
serial). They hold no business rules and never touch the ledger, so the controller can
treat an OPC UA packer and a serial packer alike, and a cabinet on Modbus TCP like one
on an RTU bus.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


class DriverError(Exception):
    """A device could not be reached or answered something the driver cannot use."""


class PackMLState(enum.IntEnum):
    """PackML states with the numbering of ISA-TR88.00.02 / OPC 30050."""

    UNDEFINED = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17


class PackMLCommand(enum.StrEnum):
    """PackML commands; the value is the OPC UA method name."""

    RESET = "Reset"
    START = "Start"
    STOP = "Stop"
    HOLD = "Hold"
    UNHOLD = "Unhold"
    SUSPEND = "Suspend"
    UNSUSPEND = "Unsuspend"
    ABORT = "Abort"
    CLEAR = "Clear"


class UnitMode(enum.IntEnum):
    """PackML unit modes (PackTags UnitMode / OPC 30050 UnitModeCurrent).

    A packer changes mode only in Stopped, Idle or Aborted, and starts a job only in
    PRODUCTION. MAINTENANCE is for canister work (refills, calibration); in MANUAL the
    machine dispenses nothing.
    """

    PRODUCTION = 1
    MAINTENANCE = 2
    MANUAL = 3


class StopReason(enum.IntEnum):
    """Values of Admin.StopReason (0 = none).

    OUTPUT_FULL: the output tray reached its capacity in Execute and the machine
    suspended itself; once the tray is emptied (`PackerStatus.output_full` false) the
    controller sends Unsuspend. The machine never resumes by itself.
    """

    NONE = 0
    OPERATOR = 1
    CANISTER_EMPTY = 101
    JAM = 102
    OUTPUT_FULL = 103
    VISION_FAULT = 104


@dataclass(frozen=True)
class PouchItem:
    """Tablets of one canister that go into one pouch."""

    canister: int
    quantity: int


@dataclass(frozen=True)
class Pouch:
    """One pouch: one patient, one administration time, several tablets.

    `label` is what is printed on the pouch; it carries a pseudonymised patient
    reference, never a clear-text identifier.
    """

    sequence: int
    label: str
    items: tuple[PouchItem, ...]


@dataclass(frozen=True)
class PackerJobSpec:
    """A job as the machine sees it: an id and pouches in packing order."""

    job_id: str
    pouches: tuple[Pouch, ...]


@dataclass(frozen=True)
class CanisterStatus:
    """A canister as the machine reports it.

    `dispensed_total` and `refilled_total` never decrease: tablets ever dispensed from
    it and ever put into it by `refill_canister` since power-on. Comparing
    `refilled_total` with a value read before a refill tells whether that refill
    reached the machine (a machine that does not report it gives 0).
    """

    number: int
    gtin: str
    count: int
    dispensed_total: int
    capacity: int = 0
    refilled_total: int = 0


@dataclass(frozen=True)
class PackerStatus:
    """One read of a packer's PackML tags and its current job.

    `processed_total` counts every pouch made (good and rejected) since power-on,
    `defective_total` the rejected ones (PackTags ProdProcessedCount and
    ProdDefectiveCount). The job counters belong to `job_id`. `stop_canister` names
    the canister that ran empty when `stop_reason` is CANISTER_EMPTY.

    `unit_mode` is a `UnitMode` value (1 Production, 2 Maintenance, 3 Manual).
    `output_count` is the number of good pouches in the output tray, `output_capacity`
    how many it holds (0 = unlimited) and `output_full` whether it is full; a full tray
    in Execute suspends the machine with StopReason OUTPUT_FULL.
    """

    state: PackMLState
    unit_mode: int
    machine_speed: float
    processed_total: int
    defective_total: int
    stop_reason: int
    job_id: str
    job_pouches_total: int
    job_pouches_good: int
    job_pouches_rejected: int
    stop_canister: int = 0
    output_count: int = 0
    output_capacity: int = 0
    output_full: bool = False


class Device(ABC):
    """Anything reached at an address: connect() may be called again after a
    DriverError to re-establish the link; close() is idempotent."""

    name: str

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class PackerDriver(Device):
    """A dose-packing machine."""

    @abstractmethod
    async def read_status(self) -> PackerStatus: ...

    @abstractmethod
    async def read_canisters(self) -> Sequence[CanisterStatus]: ...

    @abstractmethod
    async def load_job(self, job: PackerJobSpec) -> None:
        """Hand a job to the machine; allowed in Idle only."""

    @abstractmethod
    async def command(self, command: PackMLCommand) -> None:
        """Send a PackML command; raises DriverError if the machine refuses it."""

    @abstractmethod
    async def refill_canister(self, number: int, quantity: int) -> None:
        """Tell the machine that `quantity` tablets were put into canister `number`."""

    @property
    def reports_refilled_total(self) -> bool:
        """Whether `CanisterStatus.refilled_total` comes from the machine (known after
        connect). Where it does not, it reads 0 and must not be taken as a fact."""
        return False

    async def set_unit_mode(self, mode: UnitMode) -> None:
        """Request a PackML unit mode; raises DriverError if the machine refuses it.

        The machine changes mode only in Stopped, Idle or Aborted (requesting the mode
        it is already in is accepted in any state). Drivers for machines without unit
        modes keep this default, which refuses.
        """
        raise DriverError(
            f"packer {self.name}: set_unit_mode {int(mode)}: not supported by {type(self).__name__}"
        )


class CabinetStatusBit(enum.IntFlag):
    """Bits of the cabinet status register."""

    DOOR_OPEN = 1
    FAULT = 2
    TEMPERATURE_ALARM = 4


@dataclass(frozen=True)
class PocketStatus:
    """One pocket as the cabinet reports it. The `*_total` counters never decrease
    (they wrap at 2**32), so a missed poll loses nothing: the next delta covers it."""

    number: int
    article: int
    count: int
    min_level: int
    max_level: int
    withdrawals_total: int
    refills_total: int
    returns_total: int
    # Register map 2.0 additions; defaulted so that code written for 1.0 still builds these.
    capacity: int = 0
    locked: bool = False
    """The cabinet refuses withdrawals from a locked pocket (refills are still accepted)."""
    empty_hits_total: int = 0
    """Doses a nurse wanted but the pocket was empty (demand the pocket did not meet)."""
    waste_total: int = 0
    """Doses a nurse discarded at the cabinet (dropped, broken)."""
    counted_up_total: int = 0
    """Doses added by stocktakes (a count keyed in at the cabinet or a SET_COUNT)."""
    counted_down_total: int = 0
    """Doses removed by stocktakes."""


@dataclass(frozen=True)
class CabinetStatus:
    """One poll of a cabinet."""

    cabinet_id: int
    map_version: int
    heartbeat: int
    status: CabinetStatusBit
    temperature_c: float
    last_ack_sequence: int
    pockets: tuple[PocketStatus, ...] = field(default_factory=tuple)
    map_minor: int = 0
    temp_low_c: float | None = None
    """The cabinet's own alarm band (None where the device does not report it)."""
    temp_high_c: float | None = None
    temp_excursions_total: int = 0
    """Times the temperature left the band; a counter, so an excursion that began and
    ended between two polls is still seen."""


class CabinetCommand(enum.IntEnum):
    """Codes written to the command mailbox."""

    NONE = 0
    REFILL = 1
    SET_COUNT = 2
    LOCK_POCKET = 3
    UNLOCK_POCKET = 4


class CabinetDriver(Device):
    """A ward dispensing cabinet."""

    @abstractmethod
    async def read_status(self) -> CabinetStatus: ...

    @abstractmethod
    async def send_command(
        self, sequence: int, command: CabinetCommand, pocket: int, quantity: int
    ) -> None:
        """Write a command to the mailbox and wait for its acknowledgement.

        The cabinet acts on a sequence number once, so a retried write is harmless.
        Raises DriverError if the acknowledgement does not come or reports an error.
        """


class ScannerDriver(Device):
    """A barcode scanner that delivers one decoded symbol per read."""

    @abstractmethod
    async def read_scan(self) -> str:
        """Wait for the next scan and return its data (GS1 group separators as \\x1d)."""


# --- cabinets behind a vendor's cabinet server (pushed events) --------------------------
class PocketEventKind(enum.StrEnum):
    """What happened at a pocket, as a cabinet server reports it (docs/cabinet-hl7.md)."""

    DISPENSE = "DISPENSE"
    WASTE = "WASTE"
    RETURN = "RETURN"
    REFILL = "REFILL"
    COUNT = "COUNT"


@dataclass(frozen=True)
class PocketEvent:
    """One transaction at one pocket. `message_id` is the server's unique id of the
    message (HL7 MSH-10): the controller books the event under it, so a resend books
    nothing twice. `quantity` is the doses moved, or for COUNT the doses counted;
    `count_after` what the pocket holds after it (None where not reported); `notice` the
    refill notice a REFILL confirms (None for a refill made without one)."""

    message_id: str
    cabinet: str
    kind: PocketEventKind
    drawer: str
    pocket: int
    gtin: str
    quantity: int
    count_after: int | None = None
    notice: int | None = None


@dataclass(frozen=True)
class CabinetSnapshot:
    """A stock-level snapshot of every pocket of a cabinet, at one moment."""

    message_id: str
    cabinet: str
    status: CabinetStatus


CabinetEvent = PocketEvent | CabinetSnapshot


class AckCode(enum.StrEnum):
    """HL7 table 0008 (original mode)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


@dataclass(frozen=True)
class EventAck:
    """The controller's verdict on one event, sent back to the server. `error_code` is
    from HL7 table 0357 (0 when accepted); the server resends an event only on AR with
    code 207 (the controller could not book it now)."""

    code: AckCode
    text: str = ""
    error_code: int = 0

    @classmethod
    def accept(cls) -> EventAck:
        return cls(AckCode.ACCEPT)


@dataclass(frozen=True)
class ItemMasterEntry:
    """One product of the item master sent to a cabinet server."""

    gtin: str
    name: str
    atc: str = ""
    strength: str = ""
    article: int = 0


class EventCabinetDriver(CabinetDriver):
    """A cabinet reached through its vendor's cabinet server, which pushes events.

    A second interface beside the polled one because the push model inverts it: the
    server decides when something is reported, and each event must be acknowledged only
    after the controller booked it (an event acknowledged and then lost on a crash would
    be lost for good). So the controller takes the events one by one with `next_event`
    and answers each with `acknowledge`. `read_status` returns the latest snapshot and
    `send_command` sends a pocket notice (refill, lock, unlock, set count), so the
    refill and cold-chain code that talks to a polled cabinet talks to this one too.
    """

    @abstractmethod
    async def next_event(self) -> CabinetEvent:
        """Waits for the next event; raises DriverError when the link is lost."""

    @abstractmethod
    async def acknowledge(self, event: CabinetEvent, ack: EventAck) -> None:
        """Sends the controller's verdict on `event` (HL7 ACK)."""

    @abstractmethod
    async def send_item_master(self, items: Sequence[ItemMasterEntry], *, replace: bool) -> None:
        """Sends products to the server's item master: the whole file (`replace`) or
        additions and changes; waits for its acceptance, raises DriverError if refused."""
