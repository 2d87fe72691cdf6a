"""Site configuration: a YAML file validated by pydantic.

A site file names the ledger, the catalogue, the central store and every machine by
its address. The same file drives the bundled simulators (the `sim:` keys), which the
controller itself ignores, so a demo site and a real site differ only in addresses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from controller.gs1 import gs1_check_digit as gs1_check_digit  # re-exported: the site file's check
from controller.gs1 import valid_gtin as valid_gtin
from drivers.serial_address import serial_address_problem


class ConfigError(Exception):
    """The site file is missing or invalid; the message names the field and value."""


Gtin = Annotated[str, AfterValidator(valid_gtin)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteInfo(Strict):
    name: str
    timezone: str = "Europe/Stockholm"


class LedgerConfig(Strict):
    url: str = "sqlite:///var/ledger.db"
    reservation_timeout_s: float = Field(default=900, gt=0)
    min_shelf_life_days: int = Field(default=30, ge=0)
    # group commit: most commands one transaction takes, and how long the writer waits
    # for more after the first (0: what is queued at that moment)
    batch_max_commands: int = Field(default=64, ge=1, le=10_000)
    batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)


class MetricsConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)


class ApiConfig(Strict):
    """The HTTP API (docs/api.md), served by `doseline run` when enabled.

    Tokens are never written in the site file: they come from `tokens_file` (one line
    per token: `<sha256-hex of the token> <user> <role>`) or, without it, from the
    environment variable named by `tokens_env`, in the same format."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: a free port, printed at start
    tokens_file: str | None = None
    tokens_env: str = Field(default="DOSELINE_API_TOKENS", min_length=1)


class ConsoleConfig(Strict):
    """The pharmacy console (web UI, docs/console.md), served beside the API."""

    enabled: bool = True
    session_timeout_min: int = Field(default=30, ge=1, le=24 * 60)  # idle minutes
    # Secure cookies: None follows the request (https: Secure); true always, false never.
    secure_cookie: bool | None = None


class Product(Strict):
    gtin: Gtin
    article: int = Field(gt=0, lt=2**32)
    name: str
    substance: str
    atc: str = Field(default="", pattern=r"^([A-Z]\d{2}[A-Z]{2}\d{2})?$")  # drugs only
    strength: str
    form: str = "tablet"
    unit: str = "tablet"
    pack_size: int = Field(default=100, gt=0)
    unit_price: Decimal = Field(ge=0)
    category: Literal["drug", "medical_device", "special_food", "protective_equipment"] = "drug"
    storage: Literal["room", "cold", "frozen"] = "room"
    controlled_class: str | None = Field(default=None, max_length=10)
    substitution_group: str | None = Field(default=None, max_length=50)
    # the code of the supplier it is ordered from (`suppliers:`)
    supplier: str | None = Field(default=None, max_length=20)
    # an unlicensed product sold under a licence: a pharmacist decides each ward line
    licence: bool = False
    # False: the store keeps none (rarely used or expensive); a ward's line becomes a
    # supplier order and is delivered when it arrives (docs/ward-supply.md)
    stocked: bool = True
    # devices and protective equipment only: a durable one does not count in the
    # one-month duty (written to the ledger when the product is new to it)
    durability: Literal["consumable", "durable"] = "consumable"


class Supplier(Strict):
    """A supplier purchase orders go to (docs/purchasing.md)."""

    code: str = Field(min_length=1, max_length=20, pattern=r"^[A-Z0-9][A-Z0-9_-]*$")
    name: str = Field(min_length=1, max_length=200)
    # days from sending an order to its delivery: the order's expected date, and the
    # proposal's horizon for its products
    lead_time_days: int = Field(default=1, ge=0, le=90)


class PurchasingConfig(Strict):
    """Purchase orders made from the order proposal."""

    # the proposal covers this many days after the delivery arrives
    target_days: int = Field(default=30, ge=1, le=365)
    # where `doseline purchasing create` writes the order files
    orders_dir: str = "var/orders"
    # where a delivery is booked in when its rows name no location
    receiving_location: str | None = None


class StockLot(Strict):
    """An opening lot in a central bin (demo seeding and first installation)."""

    gtin: Gtin
    batch: str = Field(min_length=1, max_length=20)
    expiry: date | None = None
    expires_in_days: int | None = None
    quantity: int = Field(gt=0)
    bin: str
    # SEK per unit as bought; without it the lot is booked at the catalogue unit_price.
    unit_price: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=4)

    @model_validator(mode="after")
    def _one_expiry(self) -> StockLot:
        if (self.expiry is None) == (self.expires_in_days is None):
            raise ValueError(f"lot {self.batch!r}: give exactly one of expiry and expires_in_days")
        return self

    def expiry_on(self, today: date) -> date:
        from datetime import timedelta

        return self.expiry if self.expiry else today + timedelta(days=self.expires_in_days or 0)


class StoreConfig(Strict):
    code: str = "CENTRAL"
    bins: list[str] = Field(min_length=1)
    preparedness: list[str] = []  # bins of the preparedness stock inside the store

    @property
    def all_bins(self) -> list[str]:
        return [*self.bins, *self.preparedness]


class Canister(Strict):
    number: int = Field(gt=0, lt=1000)
    gtin: Gtin
    capacity: int = Field(gt=0)
    # A canister must be calibrated for its product before the machine may pack from
    # it; an uncalibrated one is ignored by the planner (its product goes to another
    # packer, a substitute of the same group, or is added to the pouch by hand).
    calibrated: bool = True


class PackerSim(Strict):
    speed_factor: float = Field(default=1.0, gt=0)
    reject_rate: float = Field(default=0.0, ge=0, le=0.5)
    jam_rate: float = Field(default=0.0, ge=0, le=0.5)
    # Output tray: the machine suspends (StopReason 103) when it holds this many pouches
    # (0: no limit); the simulated operator empties it after this many seconds.
    output_capacity: int = Field(default=0, ge=0)
    output_empty_after_s: float | None = Field(default=30.0, gt=0)


#: OPC UA security policies a packer link may use (asyncua 2.1 implements all three).
OPCUA_POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
OPCUA_MODES = ("Sign", "SignAndEncrypt")
_DEPRECATED_POLICIES = ("Basic128Rsa15", "Basic256")
_NO_SECURITY = ("None", "NoSecurity", "none")
_INLINE_PASSWORD = (
    "a password is never written in the site file: name an environment variable"
    " (password_env: NAME) or a file (password_file: PATH) that holds it"
)


class PackerSecurity(Strict):
    """OPC UA security of one packer link (docs/security.md).

    The controller signs (Sign) or signs and encrypts (SignAndEncrypt) every message
    with its own `certificate`/`private_key`, and talks only to a packer presenting
    exactly `server_certificate`. With `user`, the session runs as that user; the
    password is read at connect time from the environment variable `password_env` or
    the file `password_file`. Files are checked when the packer is connected."""

    policy: str = "Basic256Sha256"
    mode: str = "SignAndEncrypt"
    certificate: str = Field(min_length=1)
    private_key: str = Field(min_length=1)
    server_certificate: str = Field(min_length=1)
    user: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    password_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: object) -> object:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(f"security.password: {_INLINE_PASSWORD}")
        return data

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v in _NO_SECURITY:
            raise ValueError(
                f"security.policy: {v!r} gives no security; leave the security section out"
                " for an unsecured link, or choose one of " + ", ".join(OPCUA_POLICIES)
            )
        if v in _DEPRECATED_POLICIES:
            raise ValueError(
                f"security.policy: {v!r} is deprecated by the OPC Foundation (SHA-1);"
                " use one of " + ", ".join(OPCUA_POLICIES)
            )
        if v not in OPCUA_POLICIES:
            raise ValueError(f"security.policy: {v!r} is not one of " + ", ".join(OPCUA_POLICIES))
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v in _NO_SECURITY:
            raise ValueError(f"security.mode: {v!r} gives no security; use Sign or SignAndEncrypt")
        if v not in OPCUA_MODES:
            raise ValueError(f"security.mode: {v!r} is not one of " + ", ".join(OPCUA_MODES))
        return v

    @model_validator(mode="after")
    def _user(self) -> PackerSecurity:
        if self.password_env and self.password_file:
            raise ValueError(
                f"security.password_file: {self.password_file!r}: give password_env or"
                " password_file, not both"
            )
        has_password = bool(self.password_env or self.password_file)
        if has_password and not self.user:
            raise ValueError("security.user: a password_env or password_file needs a user")
        if self.user and not has_password:
            raise ValueError(f"security.user: {self.user!r} needs password_env or password_file")
        return self


class Packer(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    # opcua: OPC 30050 (PackML) over OPC UA (docs/packer-opcua.md); opcua_legacy: the
    # OPC UA model of doseline's first packers (same doc, "Legacy model"); serial: the
    # framed serial protocol of older packers (docs/packer-serial-protocol.md)
    driver: Literal["opcua", "opcua_legacy", "serial"] = "opcua"
    address: str
    baudrate: int = Field(default=115200, gt=0)  # serial only
    pouches_per_minute: float = Field(default=60, gt=0)
    canisters: list[Canister] = Field(min_length=1)
    # OPC UA security (opcua, opcua_legacy); without it the link is unsecured (docs/security.md)
    security: PackerSecurity | None = None
    sim: PackerSim = PackerSim()

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: object) -> object:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(f"password: {_INLINE_PASSWORD} (under security:)")
        return data

    @model_validator(mode="after")
    def _unique(self) -> Packer:
        opcua = self.driver in ("opcua", "opcua_legacy")
        if opcua and not self.address.startswith("opc.tcp://"):
            raise ValueError(f"address {self.address!r} must be an opc.tcp:// URL")
        if not opcua and self.security is not None:
            raise ValueError(
                f"packer {self.name}: security: only for driver opcua, not {self.driver!r}"
            )
        if self.driver == "serial" and self.address.startswith(("opc.tcp://", "tcp://")):
            raise ValueError(
                f"address {self.address!r} must be a serial port or pyserial URL "
                "(/dev/ttyUSB0, socket://host:port, rfc2217://host:port)"
            )
        numbers = [c.number for c in self.canisters]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"packer {self.name}: canister numbers repeat: {numbers}")
        return self


class PocketSim(Strict):
    initial: int = Field(default=0, ge=0)
    daily_withdrawals: float = Field(default=0, ge=0)
    # Share of visits in which a nurse drops the dose (discarded at the cabinet).
    waste_share: float = Field(default=0, ge=0, le=1)


class Pocket(Strict):
    number: int = Field(gt=0, lt=100)
    gtin: Gtin
    min: int = Field(ge=0)
    max: int = Field(gt=0)
    sim: PocketSim = PocketSim()

    @model_validator(mode="after")
    def _levels(self) -> Pocket:
        if self.min >= self.max:
            raise ValueError(f"pocket {self.number}: min {self.min} must be below max {self.max}")
        return self


class ExcursionSim(Strict):
    """Simulators only: a fridge fails at a time of the simulated day."""

    at: time
    celsius: float
    minutes: float = Field(default=30, gt=0)


class CabinetSim(Strict):
    excursions: list[ExcursionSim] = []


class CabinetTls(Strict):
    """Modbus/TCP Security (TLS, mutual authentication; docs/security.md): the CA that
    signed the cabinet's certificate, and the controller's own certificate and key."""

    ca_file: str = Field(min_length=1)
    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)


class Cabinet(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    ward: str
    # modbus_tcp: Modbus TCP to the cabinet or its gateway (tcp://host:port).
    # modbus_rtu: Modbus RTU on a serial line: a device path or a pyserial URL
    # (socket://host:port for a serial device server); several cabinets may share one
    # line, each with its own unit_id.
    # modbus_tls: Modbus/TCP Security, Modbus TCP inside mutual TLS (tcp://host:port,
    # port 802 when left out), with `tls:`.
    # hl7_mllp: a vendor's cabinet server over HL7 v2 and MLLP (docs/cabinet-hl7.md):
    # mllp://host:port, or mllps://host:port for mutual TLS with `tls:`; one cabinet per
    # address, and poll_interval_s is the server's snapshot interval.
    driver: Literal["modbus_tcp", "modbus_rtu", "modbus_tls", "hl7_mllp"] = "modbus_tcp"
    address: str
    baudrate: int = Field(default=19200, gt=0)  # modbus_rtu only; the line runs 8E1
    unit_id: int = Field(default=1, ge=1, le=247)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # A refrigerated cabinet: a temperature excursion quarantines its stock until a
    # pharmacist releases or wastes it.
    cold: bool = False
    pockets: list[Pocket] = Field(min_length=1)
    # driver modbus_tls only: certificates for mutual TLS
    tls: CabinetTls | None = None
    sim: CabinetSim = CabinetSim()

    @model_validator(mode="after")
    def _address(self) -> Cabinet:
        if self.driver in ("modbus_tcp", "modbus_tls") and not self.address.startswith("tcp://"):
            raise ValueError(
                f"cabinet {self.name}: address {self.address!r} must be a tcp://host:port URL"
                f" for driver {self.driver}"
            )
        if self.driver == "hl7_mllp":
            return self._hl7_address()
        if self.driver == "modbus_tls" and self.tls is None:
            raise ValueError(
                f"cabinet {self.name}: tls: driver modbus_tls needs tls (ca_file, cert_file,"
                " key_file)"
            )
        if self.driver != "modbus_tls" and self.tls is not None:
            raise ValueError(
                f"cabinet {self.name}: tls: only for driver modbus_tls, not {self.driver!r}"
            )
        if self.driver == "modbus_rtu":
            problem = serial_address_problem(self.address)
            if problem:
                raise ValueError(
                    f"cabinet {self.name}: address {self.address!r} {problem} for driver modbus_rtu"
                )
        return self

    def _hl7_address(self) -> Cabinet:
        scheme, _, rest = self.address.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme not in ("mllp", "mllps") or not host or not port.isdigit():
            raise ValueError(
                f"cabinet {self.name}: address {self.address!r} must be mllp://host:port or"
                " mllps://host:port for driver hl7_mllp"
            )
        if scheme == "mllps" and self.tls is None:
            raise ValueError(
                f"cabinet {self.name}: tls: address {self.address!r} is mllps:// and needs tls"
                " (ca_file, cert_file, key_file)"
            )
        if scheme == "mllp" and self.tls is not None:
            raise ValueError(
                f"cabinet {self.name}: tls: given, but address {self.address!r} is mllp://"
                " (use mllps:// for TLS)"
            )
        return self


class Scanner(Strict):
    name: str
    driver: Literal["serial"] = "serial"
    address: str  # a pyserial URL: /dev/ttyUSB0, socket://host:port, rfc2217://...
    baudrate: int = 9600


class Replenishment(Strict):
    """When pocket refills go out. Low pockets wait for the next scheduled round; an
    empty pocket gets a pick list at once, due within `urgent_due_minutes`."""

    # Times of day (site time zone) at which a round's pick lists are made.
    rounds: list[time] = Field(
        default_factory=lambda: [time(7, 0), time(13, 0), time(19, 0)], min_length=1
    )
    # How long a technician has to pick and fill a scheduled round's lists.
    round_due_minutes: float = Field(default=60, gt=0)
    # How long an urgent pick list (a pocket at 0) may take.
    urgent_due_minutes: float = Field(default=30, gt=0)
    # Demo only: how long the technician takes to pick a list.
    pick_delay_s: float = Field(default=1.0, ge=0)

    @field_validator("rounds")
    @classmethod
    def _rounds(cls, v: list[time]) -> list[time]:
        if len(set(v)) != len(v):
            raise ValueError(f"rounds: a time appears twice in {[t.isoformat() for t in v]}")
        return sorted(v)


class PackingConfig(Strict):
    """How packing jobs treat the people around the machines."""

    # A canister refill waits this long for the technician's scan of the reserved pack;
    # then it is given up (reservation released) and the job fails or stops.
    refill_scan_timeout_s: float = Field(default=600, gt=0)


class VerificationSim(Strict):
    """The bundled verification system (simulators/verification_http.py): the plant runs
    it with every pack of the opening stock registered (serials `<batch>-0001`...)."""

    register_stock: bool = True


class VerificationConfig(Strict):
    """EU falsified-medicines verification of serialised packs (docs/verification.md)."""

    enabled: bool = False
    url: str = "http://127.0.0.1:8090"
    timeout_s: float = Field(default=5.0, gt=0)
    # when a pack is decommissioned: opened for a packer's canister, dispatched to a
    # ward's cabinet, or both
    decommission_on: Literal["opened", "dispatched", "both"] = "both"
    retry_interval_s: float = Field(default=30.0, gt=0)
    # an alert also quarantines the pack's lot in the ledger (a pharmacist releases it)
    quarantine_lot_on_alert: bool = True
    sim: VerificationSim | None = None


class OrdersConfig(Strict):
    """How dose orders are accepted."""

    # Orders wait for a pharmacist's approval before they are planned.
    review_required: bool = True
    # The secret that makes patient pseudonyms unguessable is read from this
    # environment variable; without it the site name is used (fine for a demo only).
    pseudonym_salt_env: str = "DOSELINE_PSEUDONYM_SALT"
    # The ward for orders whose message names none; None refuses such orders.
    default_ward: str | None = None


class Ward(Strict):
    """A ward the pharmacy debits: its code (as cabinets and dose orders name it), its
    name, and the cost centre the finance system charges."""

    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=100)
    cost_centre: str = Field(min_length=1, max_length=20)
    # the workplace id the national follow-up knows the ward by (arbetsplatskod)
    workplace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,20}$")


class Hospital(Strict):
    """A hospital the pharmacy supplies. `external`: outside the hospital organisation
    (a private clinic, a municipal store), which an in-house pharmacy may not supply."""

    code: str = Field(min_length=1, max_length=20, pattern=r"^[A-Z0-9][A-Z0-9_-]*$")
    name: str = Field(min_length=1, max_length=100)
    external: bool = False


class DeliveryRun(Strict):
    """A scheduled delivery to the hospitals: its pick lists are made at `cutoff`
    (requisitions approved until then go with it) and it leaves at `departs`."""

    code: str = Field(min_length=1, max_length=10, pattern=r"^[A-Z0-9][A-Z0-9_-]*$")
    cutoff: time
    departs: time

    @model_validator(mode="after")
    def _order(self) -> DeliveryRun:
        if self.cutoff >= self.departs:
            raise ValueError(
                f"delivery run {self.code}: cutoff {self.cutoff} must be before departs"
                f" {self.departs}"
            )
        return self


class ShelfLevel(Strict):
    """A product on a drug room's list (its assortment), with min and max in packs."""

    gtin: Gtin
    min: int = Field(ge=0, le=500)
    max: int = Field(gt=0, le=500)

    @model_validator(mode="after")
    def _levels(self) -> ShelfLevel:
        if self.min >= self.max:
            raise ValueError(f"{self.gtin}: min {self.min} must be below max {self.max}")
        return self


class DrugRoom(Strict):
    """A ward's drug room: shelves, not a machine. Stock delivered into an uncounted
    room counts as used on delivery; a `counted` room books use from its counts."""

    code: str = Field(min_length=1, max_length=30, pattern=r"^[A-Z0-9][A-Z0-9_-]*$")
    hospital: str
    ward: str = Field(min_length=1, max_length=32)
    cost_centre: str | None = Field(default=None, max_length=20)
    counted: bool = False
    external: bool = False
    # the delivery runs that serve it; empty: every run
    runs: list[str] = []
    assortment: list[ShelfLevel] = []
    # the workplace id the national follow-up knows the room's ward by (arbetsplatskod)
    workplace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,20}$")

    def level(self, gtin: str) -> ShelfLevel | None:
        return next((s for s in self.assortment if s.gtin == gtin), None)


class UsualRule(Strict):
    """When a line's quantity is "far above the ward's usual" (docs/ward-supply.md):
    more than `factor` times the largest of the room's max level and its mean packs per
    line of the product over `window_days`, and never below `floor_packs`."""

    window_days: int = Field(default=90, ge=7, le=730)
    factor: float = Field(default=2.0, ge=1.0, le=20.0)
    floor_packs: int = Field(default=2, ge=1, le=500)


class WardSupplyConfig(Strict):
    """Ward supply: requisitions from the drug rooms, review, picking, delivery."""

    runs: list[DeliveryRun] = []
    # an urgent order is picked at once and due this long after approval
    urgent_due_minutes: int = Field(default=120, ge=10, le=1440)
    # a delivery nobody confirmed counts as received after this long in transit
    auto_receive_after_h: float = Field(default=6.0, gt=0, le=168)
    # delivered on time: received at most this long after the run departs
    on_time_grace_h: float = Field(default=4.0, ge=0, le=48)
    # the contract's delivery-reliability target (on time and in full, per line)
    reliability_target: float = Field(default=0.95, ge=0, le=1)
    usual: UsualRule = UsualRule()


class DemoHistory(Strict):
    """Units of a product used in the 30 days before the demo day: the order
    proposal's basis, so the demo has something to order."""

    gtin: Gtin
    units_30d: int = Field(gt=0)


class DemoConfig(Strict):
    ward: str
    patients: int = Field(default=60, gt=0)
    administration_times: list[time] = Field(min_length=1)
    seed: int = 7
    minutes: float = Field(default=1.0, gt=0)
    history: list[DemoHistory] = []
    # a bin that holds none of the history products: their past use is booked there
    history_bin: str | None = None


class Exemption(Strict):
    """A product exempted from the one-month obligation, for a documented reason."""

    gtin: Gtin
    reason: str = Field(min_length=10)
    risk_assessment: str = Field(min_length=10)
    review_date: date
    decided_by: str
    # the measures taken against the risk
    measures: str = ""
    # None: the product is out of the figures; N: it is judged against N days (< 30)
    level_days: int | None = Field(default=None, ge=0, lt=30)


class DutyScopeEntry(Strict):
    """A product or a whole category out of the one-month duty's scope, with its reason."""

    gtin: Gtin | None = None
    category: Literal["drug", "medical_device", "special_food", "protective_equipment"] | None = (
        None
    )
    reason: Literal["individual_patient", "dental_care", "manufacturing_material"]
    note: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _one_subject(self) -> DutyScopeEntry:
        if (self.gtin is None) == (self.category is None):
            raise ValueError("name either a gtin or a category")
        return self


class Site(Strict):
    site: SiteInfo
    ledger: LedgerConfig = LedgerConfig()
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    console: ConsoleConfig = ConsoleConfig()
    catalogue: list[Product] = Field(min_length=1)
    store: StoreConfig
    stock: list[StockLot] = []
    packers: list[Packer] = []
    cabinets: list[Cabinet] = []
    scanners: list[Scanner] = []
    replenishment: Replenishment = Replenishment()
    orders: OrdersConfig = OrdersConfig()
    packing: PackingConfig = PackingConfig()
    verification: VerificationConfig = VerificationConfig()
    suppliers: list[Supplier] = []
    purchasing: PurchasingConfig = PurchasingConfig()
    exemptions: list[Exemption] = []
    # The wards and their cost centres (ward debiting). When the list is given, every
    # cabinet's ward and the demo's ward must be in it.
    wards: list[Ward] = []
    hospitals: list[Hospital] = []
    drug_rooms: list[DrugRoom] = []
    ward_supply: WardSupplyConfig = WardSupplyConfig()
    seed: int = 7
    demo: DemoConfig | None = None
    # products and categories out of the one-month duty's scope (seeded into the
    # ledger only where it has no decision of its own: docs/stock-duty.md)
    duty_scope: list[DutyScopeEntry] = []

    def pseudonym_salt(self) -> str:
        """The salt for patient pseudonyms: from the environment, else the site name."""
        return os.environ.get(self.orders.pseudonym_salt_env) or self.site.name

    @model_validator(mode="after")
    def _references(self) -> Site:
        known = {p.gtin for p in self.catalogue}
        if len(known) != len(self.catalogue):
            raise ValueError("catalogue: a GTIN appears twice")
        articles = [p.article for p in self.catalogue]
        if len(set(articles)) != len(articles):
            raise ValueError("catalogue: an article number appears twice")
        for i, exemption in enumerate(self.exemptions):
            if exemption.gtin not in known:
                raise ValueError(
                    f"exemptions[{i}].gtin: {exemption.gtin!r} is not in the catalogue"
                )
        for p in self.catalogue:
            if p.category == "drug" and not p.atc:
                raise ValueError(f"catalogue {p.gtin}: atc: a drug needs an ATC code")
            if p.durability == "durable" and p.category not in (
                "medical_device",
                "protective_equipment",
            ):
                raise ValueError(
                    f"catalogue {p.gtin}: durability: a {p.category} cannot be durable "
                    "(only medical devices and protective equipment)"
                )
        for i, entry in enumerate(self.duty_scope):
            if entry.gtin is not None and entry.gtin not in known:
                raise ValueError(f"duty_scope[{i}].gtin: {entry.gtin!r} is not in the catalogue")
        bins = set(self.store.all_bins)
        for i, lot in enumerate(self.stock):
            if lot.gtin not in known:
                raise ValueError(f"stock[{i}].gtin: {lot.gtin!r} is not in the catalogue")
            if lot.bin not in bins:
                raise ValueError(f"stock[{i}].bin: {lot.bin!r} is not a bin of the store")
        for packer in self.packers:
            for can in packer.canisters:
                if can.gtin not in known:
                    raise ValueError(
                        f"packers.{packer.name}.canister {can.number}.gtin: {can.gtin!r} "
                        "is not in the catalogue"
                    )
        names = [
            *(p.name for p in self.packers),
            *(c.name for c in self.cabinets),
            *(s.name for s in self.scanners),
        ]
        if len(set(names)) != len(names):
            raise ValueError(f"machine names repeat: {names}")
        for cab in self.cabinets:
            for pocket in cab.pockets:
                if pocket.gtin not in known:
                    raise ValueError(
                        f"cabinets.{cab.name}.pocket {pocket.number}.gtin: {pocket.gtin!r} "
                        "is not in the catalogue"
                    )
        return self

    @model_validator(mode="after")
    def _wards(self) -> Site:
        codes = [w.code for w in self.wards]
        for i, code in enumerate(codes):
            if code in codes[:i]:
                raise ValueError(f"wards[{i}].code: {code!r} appears twice")
        if not self.wards:
            return self
        listed = ", ".join(codes)
        for cab in self.cabinets:
            if cab.ward not in codes:
                raise ValueError(
                    f"cabinets.{cab.name}.ward: {cab.ward!r} is not a listed ward ({listed})"
                )
        if self.demo is not None and self.demo.ward not in codes:
            raise ValueError(f"demo.ward: {self.demo.ward!r} is not a listed ward ({listed})")
        return self

    @model_validator(mode="after")
    def _suppliers(self) -> Site:
        codes = [s.code for s in self.suppliers]
        for i, code in enumerate(codes):
            if code in codes[:i]:
                raise ValueError(f"suppliers[{i}].code: {code!r} appears twice")
        for p in self.catalogue:
            if p.supplier is not None and p.supplier not in codes:
                raise ValueError(
                    f"catalogue {p.gtin}: supplier: {p.supplier!r} is not a listed supplier"
                    f" ({', '.join(codes) or 'none listed'})"
                )
        where = self.purchasing.receiving_location
        if where is not None and where not in self.store.all_bins:
            raise ValueError(f"purchasing.receiving_location: {where!r} is not a bin of the store")
        return self

    @model_validator(mode="after")
    def _drug_rooms(self) -> Site:
        hospitals = [h.code for h in self.hospitals]
        for i, code in enumerate(hospitals):
            if code in hospitals[:i]:
                raise ValueError(f"hospitals[{i}].code: {code!r} appears twice")
        runs = [r.code for r in self.ward_supply.runs]
        for i, code in enumerate(runs):
            if code in runs[:i]:
                raise ValueError(f"ward_supply.runs[{i}].code: {code!r} appears twice")
        known = {p.gtin for p in self.catalogue}
        wards = {w.code for w in self.wards}
        taken = {c.name for c in self.cabinets} | set(hospitals)
        seen: set[str] = set()
        for i, room in enumerate(self.drug_rooms):
            where = f"drug_rooms[{i}]"
            if room.code in seen or room.code in taken:
                raise ValueError(f"{where}.code: {room.code!r} is already used")
            seen.add(room.code)
            if room.hospital not in hospitals:
                raise ValueError(
                    f"{where}.hospital: {room.hospital!r} is not a listed hospital"
                    f" ({', '.join(hospitals) or 'none listed'})"
                )
            if self.wards and room.ward not in wards:
                raise ValueError(f"{where}.ward: {room.ward!r} is not a listed ward")
            for run in room.runs:
                if run not in runs:
                    raise ValueError(f"{where}.runs: {run!r} is not a delivery run")
            gtins = [s.gtin for s in room.assortment]
            for j, gtin in enumerate(gtins):
                if gtin not in known:
                    raise ValueError(
                        f"{where}.assortment[{j}].gtin: {gtin!r} is not in the catalogue"
                    )
                if gtin in gtins[:j]:
                    raise ValueError(f"{where}.assortment[{j}].gtin: {gtin!r} appears twice")
        if self.drug_rooms and not runs:
            raise ValueError("ward_supply.runs: drug rooms need at least one delivery run")
        return self

    def ward_codes(self) -> set[str]:
        """Every ward the site names: the listed wards, the drug rooms' wards and the
        cabinets' wards (rationing and licences may name any of them)."""
        return (
            {w.code for w in self.wards}
            | {r.ward for r in self.drug_rooms}
            | {c.ward for c in self.cabinets}
        )

    def drug_room(self, code: str) -> DrugRoom | None:
        return next((r for r in self.drug_rooms if r.code == code), None)

    def hospital(self, code: str) -> Hospital | None:
        return next((h for h in self.hospitals if h.code == code), None)

    def receiving_location(self) -> str:
        """Where deliveries are booked in by default: the configured bin, else the first."""
        return self.purchasing.receiving_location or self.store.bins[0]

    def ward_map(self) -> dict[str, Ward]:
        """The listed wards by code (ward debiting)."""
        return {w.code: w for w in self.wards}

    def cabinet_wards(self) -> dict[str, str]:
        """Each cabinet (the prefix of its pocket locations) and each drug room's
        location -> its ward code (ward debiting attributes use by these prefixes)."""
        from controller.ledger.ward_locations import drug_room_location

        mapping = {c.name: c.ward for c in self.cabinets}
        mapping.update({drug_room_location(r): r.ward for r in self.drug_rooms})
        return mapping

    @model_validator(mode="after")
    def _cabinet_lines(self) -> Site:
        """Cabinets on one address share a line (RTU) or a gateway connection (TCP):
        each needs its own unit id, and an RTU line runs at one baudrate."""
        first: dict[tuple[str, str, int], Cabinet] = {}
        line_rate: dict[str, Cabinet] = {}
        line_tls: dict[str, Cabinet] = {}
        for cab in self.cabinets:
            if cab.driver == "hl7_mllp":
                other = first.setdefault((cab.driver, cab.address, 0), cab)
                if other is not cab:
                    raise ValueError(
                        f"cabinets.{cab.name}.address: {cab.address} is also the address of"
                        f" cabinet {other.name}; a cabinet server link serves one cabinet"
                    )
                continue
            other = first.setdefault((cab.driver, cab.address, cab.unit_id), cab)
            if other is not cab:
                raise ValueError(
                    f"cabinets.{cab.name}.unit_id: {cab.unit_id} is also the unit id of"
                    f" cabinet {other.name} on {cab.address}"
                )
            if cab.driver == "modbus_tls":
                other = line_tls.setdefault(cab.address, cab)
                if other.tls != cab.tls:
                    raise ValueError(
                        f"cabinets.{cab.name}.tls: differs from the tls of cabinet"
                        f" {other.name} on the same connection {cab.address}"
                    )
            if cab.driver != "modbus_rtu":
                continue
            other = line_rate.setdefault(cab.address, cab)
            if other.baudrate != cab.baudrate:
                raise ValueError(
                    f"cabinets.{cab.name}.baudrate: {cab.baudrate} differs from"
                    f" {other.baudrate} of cabinet {other.name} on the same line {cab.address}"
                )
        return self

    def product(self, gtin: str) -> Product:
        for p in self.catalogue:
            if p.gtin == gtin:
                return p
        raise KeyError(gtin)


# Settings a deployment may set from the environment instead of the site file, so one
# site file serves a container stack and a ledger URL with a password never has to be
# written into it: variable -> (section, field).
ENVIRONMENT_OVERRIDES = {
    "DOSELINE_LEDGER_URL": ("ledger", "url"),
    "DOSELINE_METRICS_HOST": ("metrics", "host"),
    "DOSELINE_METRICS_PORT": ("metrics", "port"),
    "DOSELINE_API_ENABLED": ("api", "enabled"),
    "DOSELINE_API_HOST": ("api", "host"),
    "DOSELINE_API_PORT": ("api", "port"),
}


def load_site(path: str | Path, environ: Mapping[str, str] | None = None) -> Site:
    """Reads and validates a site file, with the ENVIRONMENT_OVERRIDES applied; errors
    name the field (or the variable) and the value."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read site file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"site file {path} is not valid YAML: {exc}") from exc
    env = os.environ if environ is None else environ
    if isinstance(raw, dict):
        for variable, (section, field_name) in ENVIRONMENT_OVERRIDES.items():
            if env.get(variable):
                part = raw.setdefault(section, {})
                if not isinstance(part, dict):
                    raise ConfigError(f"site file {path}: {section}: must be a mapping")
                part[field_name] = env[variable]
    return parse_site(raw, source=str(path))


def parse_site(raw: object, *, source: str = "<site>") -> Site:
    """Validates a site. Top-level keys starting with `x-` are ignored: they hold YAML
    anchors shared by other parts of the file (a drug committee's list, say)."""
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return Site.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            value = err.get("input")
            if err["type"] == "extra_forbidden":
                # A misspelt key may hold a secret: name the key, never echo its value.
                problems.append(f"  {where}: {err['msg']} (value not shown)")
                continue
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            problems.append(f"  {where or '(top)'}: {err['msg']} (value: {shown})")
        raise ConfigError(f"site file {source} is invalid:\n" + "\n".join(problems)) from exc
