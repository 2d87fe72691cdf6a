"""One year of the region's ledger work, replayed on a fresh ledger, then verified and
reported on.

Why: the other phases measure rates over seconds. A ledger that keeps every movement
and every audit row also has to stay fast after a year of them, and `verify`, the
cover report and the compliance summary read the whole history. So this phase books
a year at the region's volumes through the ledger's public commands (the same calls
the services make), on a simulated clock, and then times the reads.

The year (each figure is a constant below):

* ward supply: two hospitals, 15 drug rooms, two delivery runs a day. Each run's
  pick list is one `reserve` (one need per line) from the central store, posted two
  hours later as transfers into the drug rooms; every evening each room books its
  use as a few `consume` lines;
* dose packing: 20 jobs a day, each a `reserve` of 15 needs from the packer's
  canisters and a `post` of what was packed (consumed), rejected (wasted) and,
  for a job cut short, released; a job never started expires with its timeout.
  Canisters are refilled from the store (reserve and post as a transfer);
* cabinets: every withdrawal is its own `consume` with its pocket's counter mark,
  as the cabinet poller books it; a pocket below its min is refilled from the
  store within the hour;
* receipts: weekly deliveries per supplier (`receive_many`), lots with expiry dates;
  a few products come in minimum order sizes with a short shelf life, so some of
  their stock expires in the year and is wasted as "expired" once a month;
* monthly: a stocktake of every store bin (small differences) and a count of every
  cabinet pocket (`count_to`).

The commands of one simulated hour run under `scope()`: a group commit
(`Ledger.batch`) when the ledger has one, else every command commits alone. Every
command and its outcome is deterministic (`random.Random(SEED)`, a simulated clock).
The replay keeps its own model of every balance, so it knows what a command will
need before it sends it, and the test compares the model and the ledger.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from sqlalchemy import func, select

from controller.bench.common import latency_ms, peak_rss_mib
from controller.gs1 import gs1_check_digit
from controller.ledger import (
    CounterMark,
    DeliveryLine,
    Ledger,
    LedgerError,
    Need,
    ReservationView,
    Use,
    reports,
    verify_ledger,
)
from controller.ledger.engine import make_engine
from controller.ledger.ledger import CONSUMED, WASTE, metadata

SEED = 2027
DAYS_PER_YEAR = 365
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday, 00:00 UTC: day 0 of the replay
ACTOR = "bench-year"

# -- the central store
STORE = "CENTRAL"
BINS = tuple(f"{STORE}/A{i:02d}" for i in range(1, 9))  # a product lives in one bin
SUPPLIERS = 4  # supplier s delivers every week on weekday s (Monday = 0), at 08:00
DELIVERY_HOUR = 8
COVER_TARGET_DAYS = 40  # a weekly delivery tops the store up to this many days of use
SHELF_LIFE_DAYS = (300, 720)  # a normal lot's shelf life at delivery
# Products bought in minimum order sizes with a short shelf life: what is left when
# a lot expires is wasted, so the year has expired stock to book.
SHORT_DATED_PRODUCTS = 6
SHORT_SHELF_LIFE_DAYS = 60
SHORT_MIN_ORDER_DAYS = 90  # the minimum order, in days of use

# -- ward supply: about 90,000 order lines a year
HOSPITAL_ROOMS = (8, 7)  # drug rooms per hospital: 15
WARD_LINES_PER_DAY = 250
WARD_RUN_HOURS = (7, 13)  # two runs a day: the pick list is reserved on the hour
DISPATCH_AFTER_H = 2  # ... and posted into the drug rooms this much later
WARD_PRODUCTS = 60
ROOM_LIST = 20  # products on each drug room's list
LINE_UNITS = (10, 20, 28, 30, 50, 100)  # units of one order line
ROOM_USE_HOUR = 18  # each room books its use once a day ...
ROOM_USE_LINES = 4  # ... as this many consume lines (its largest stocks)

# -- dose packing: about 1.5 million tablets a year
PACKERS = 2
CANISTERS_PER_PACKER = 30  # one tablet product each: 60 products
PACKING_JOBS_PER_DAY = 20  # one per packer and hour from 06:00
FIRST_JOB_HOUR = 6
JOB_NEEDS = 15  # products in one job
NEED_TABLETS = (8, 20)  # tablets of one product in one job: 15 x 14 x 20 x 365 = 1.5 M
REJECT_ALLOWANCE = 0.02  # reserved on top of the pouches' contents, as the runner does
REJECT_CHANCE = 0.1  # a need with one or two rejected tablets (wasted)
CUT_SHORT_CHANCE = 0.05  # a job stopped early: part posted, the rest released
NEVER_STARTED_CHANCE = 0.01  # a job reserved but never started: its reservation expires
JOB_TIMEOUT_S = 4 * 3600
EXPIRE_SWEEP_HOUR = 4  # `expire_overdue` once a day
CANISTER_MAX = 1000  # a canister is filled to this when a job needs more than it holds

# -- cabinets
CABINETS = 10
POCKETS = 40  # per cabinet
CABINET_PRODUCTS = 40
WITHDRAWALS_PER_CABINET_DAY = 150
WITHDRAWAL_DOSES = ((1, 0.70), (2, 0.25), (3, 0.05))  # doses of one withdrawal, weight
POCKET_MIN, POCKET_MAX = 12, 40
# Withdrawals by hour of day: the day shift's rounds take most of them.
HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 6, 8, 7, 6, 5, 6, 5, 4, 4, 5, 6, 7, 6, 4, 3, 2, 1)

# -- monthly, on the 1st
EXPIRY_HOUR = 2  # expired lots in the store wasted as "expired"
STOCKTAKE_HOUR = 3  # every store bin counted by lot
STOCKTAKE_DIFF_CHANCE = 0.03  # a lot counted 1 to 3 units off
POCKET_COUNT_HOUR = 5  # every cabinet pocket counted (count_to)
POCKET_DIFF_CHANCE = 0.02  # a pocket counted one dose off

# -- targets
TARGET_REPLAY_S = {"sqlite": 60.0, "postgresql": 120.0}
TARGET_PEAK_MIB = 500.0
TARGET_VERIFY_S = 10.0
TARGET_COMPLIANCE_S = 10.0

Scope = Callable[[], contextlib.AbstractContextManager[Any]]


def gtin(i: int) -> str:
    body = f"0735997{i:06d}"
    return body + str(gs1_check_digit(body))


class SimClock:
    """The replay's time: set by the replay before each command, read by the ledger."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Product:
    gtin: str
    index: int
    channel: str  # "packing", "ward" or "cabinet"
    bin: str
    supplier: int
    daily_use: float  # expected units a day out of the store
    short_dated: bool = False


@dataclass
class Tally:
    """What the replay booked, by command and by product (units)."""

    commands: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    refusal_examples: list[str] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    units: Counter[str] = field(default_factory=Counter)  # by movement kind
    received: Counter[str] = field(default_factory=Counter)  # by GTIN
    used: Counter[str] = field(default_factory=Counter)  # consumed or wasted, by GTIN
    adjusted: Counter[str] = field(default_factory=Counter)  # net count differences
    expired_reservations: int = 0
    empty_pocket_skips: int = 0
    order_lines: int = 0
    tablets_packed: int = 0
    withdrawals: int = 0
    room_use_lines: int = 0


@dataclass(frozen=True)
class Site:
    products: tuple[Product, ...]
    rooms: tuple[tuple[str, ...], ...]  # drug rooms per hospital
    room_lists: dict[str, tuple[str, ...]]  # GTINs each drug room orders
    canisters: dict[str, str]  # GTIN -> canister location
    packer_products: tuple[tuple[str, ...], ...]
    pockets: tuple[tuple[str, str, str, float], ...]  # cabinet, location, GTIN, weight


def build_site(rng: random.Random) -> Site:
    """The region's catalogue, store, drug rooms, packers and cabinets, with the
    expected daily use of each product (from the volumes above)."""
    rooms = tuple(
        tuple(f"H{h + 1}/DR{r + 1:02d}" for r in range(n)) for h, n in enumerate(HOSPITAL_ROOMS)
    )
    all_rooms = [room for hospital in rooms for room in hospital]
    ward = [gtin(100 + i) for i in range(WARD_PRODUCTS)]
    packing = [gtin(200 + i) for i in range(PACKERS * CANISTERS_PER_PACKER)]
    cabinet = [gtin(300 + i) for i in range(CABINET_PRODUCTS)]
    room_lists = {room: tuple(rng.sample(ward, ROOM_LIST)) for room in all_rooms}
    # The short-dated products are on a few lists only: slow movers.
    short = set(ward[:SHORT_DATED_PRODUCTS])
    for room in all_rooms:
        kept = [g for g in room_lists[room] if g not in short]
        if rng.random() < 0.3:
            kept[0] = rng.choice(sorted(short))
        room_lists[room] = tuple(dict.fromkeys(kept))
    lines_per_room_day = WARD_LINES_PER_DAY / len(all_rooms)
    mean_line = sum(LINE_UNITS) / len(LINE_UNITS)
    daily: dict[str, float] = defaultdict(float)
    for ordered in room_lists.values():
        for g in ordered:
            daily[g] += lines_per_room_day / len(ordered) * mean_line
    packer_products = tuple(
        tuple(packing[p * CANISTERS_PER_PACKER : (p + 1) * CANISTERS_PER_PACKER])
        for p in range(PACKERS)
    )
    canisters = {}
    jobs_per_packer = PACKING_JOBS_PER_DAY / PACKERS
    mean_need = (NEED_TABLETS[0] + NEED_TABLETS[1]) / 2 * (1 + REJECT_ALLOWANCE)
    for n, loaded in enumerate(packer_products):
        for c, g in enumerate(loaded):
            canisters[g] = f"PACKER-{n + 1}/C{c + 1:02d}"
            daily[g] += jobs_per_packer * JOB_NEEDS / len(loaded) * mean_need
    pockets = []
    mean_doses = sum(d * w for d, w in WITHDRAWAL_DOSES)
    for c in range(CABINETS):
        weights = [rng.uniform(0.5, 1.5) for _ in range(POCKETS)]
        total = sum(weights)
        for n in range(POCKETS):
            g = cabinet[(n + 3 * c) % CABINET_PRODUCTS]
            share = weights[n] / total
            pockets.append((f"CAB-{c + 1:02d}", f"CAB-{c + 1:02d}/P{n + 1:02d}", g, share))
            daily[g] += WITHDRAWALS_PER_CABINET_DAY * share * mean_doses
    products = tuple(
        Product(
            gtin=g,
            index=i,
            channel="ward" if g in ward else "packing" if g in canisters else "cabinet",
            bin=BINS[i % len(BINS)],
            supplier=i % SUPPLIERS,
            daily_use=daily[g],
            short_dated=g in short,
        )
        for i, g in enumerate(ward + packing + cabinet)
    )
    return Site(
        products=products,
        rooms=rooms,
        room_lists=room_lists,
        canisters=canisters,
        packer_products=packer_products,
        pockets=tuple(pockets),
    )


class RegionYear:
    """The replay: plans each simulated day, then books it hour by hour."""

    def __init__(
        self, ledger: Ledger, clock: SimClock, *, seed: int = SEED, start: datetime = START
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.start = start
        self.rng = random.Random(seed)
        self.site = build_site(self.rng)
        self.products = {p.gtin: p for p in self.site.products}
        self.tally = Tally()
        # The replay's own copy of every balance it touches: (location, GTIN) -> units.
        self.on_hand: Counter[tuple[str, str]] = Counter()
        self.counters: dict[str, int] = {}  # pocket location -> withdrawals counter
        self.pocket_of = {loc: (cab, g) for cab, loc, g, _ in self.site.pockets}
        self.low_pockets: dict[str, None] = {}  # ordered set: refilled at the hour's end
        # Canister stock held by jobs that never started, until their reservations expire.
        self.held: Counter[tuple[str, str]] = Counter()
        self.abandoned: dict[str, list[tuple[str, int]]] = {}
        self.serial = 0

    # ------------------------------------------------------------------ set-up

    def set_up(self) -> None:
        """Catalogue, locations, the opening stock and the cabinets' counters."""
        ledger = self.ledger
        ledger.create_schema()
        for p in self.site.products:
            ledger.add_product(
                gtin=p.gtin,
                article=700_000 + p.index,
                name=f"Region product {p.index + 1} ({p.channel})",
                substance=f"substance {p.index + 1}",
                atc="N02BE01",
                strength="1 unit",
                form="tablet" if p.channel == "packing" else "unit",
                unit_price=Decimal(self.rng.randint(50, 5000)) / 100,
                category="medical_device" if p.index % 25 == 24 else "drug",
                actor=ACTOR,
            )
        ledger.add_location(STORE, "store")
        for code in BINS:
            ledger.add_location(code, "bin", parent=STORE)
        for h, rooms in enumerate(self.site.rooms):
            ledger.add_location(f"H{h + 1}", "hospital")
            for room in rooms:
                ledger.add_location(room, "drugroom", parent=f"H{h + 1}")
        for n in range(PACKERS):
            ledger.add_location(f"PACKER-{n + 1}", "packer")
        for g, code in self.site.canisters.items():
            ledger.add_location(code, "canister", parent=code.split("/")[0], product_gtin=g)
        for c in range(CABINETS):
            ledger.add_location(f"CAB-{c + 1:02d}", "cabinet")
        for cab, loc, g, _ in self.site.pockets:
            ledger.add_location(loc, "pocket", parent=cab, product_gtin=g)
        for s in range(SUPPLIERS):
            self.deliver(s, week=0, opening=True)
        for cab, loc, _, _ in self.site.pockets:
            self.counters[loc] = 0
            self.command("counter-mark", ledger.set_counter_mark, self._mark(cab, loc, 0))
            self.refill_pocket(loc)

    # ------------------------------------------------------------------ the year

    def replay(self, days: int, scope: Scope = contextlib.nullcontext) -> None:
        for day in range(days):
            events = self.plan_day(day)
            by_hour: dict[int, list[tuple[int, int, Callable[[], None]]]] = defaultdict(list)
            for minute, order, action in events:
                by_hour[minute // 60].append((minute, order, action))
            midnight = self.start + timedelta(days=day)
            for hour in range(24):
                planned = sorted(by_hour.get(hour, []), key=lambda e: (e[0], e[1]))
                if not planned:
                    continue
                with scope():
                    for minute, _, action in planned:
                        self.clock.now = midnight + timedelta(minutes=minute)
                        action()
                    self.clock.now = midnight + timedelta(hours=hour, minutes=59)
                    for loc in list(self.low_pockets):
                        self.refill_pocket(loc)

    def plan_day(self, day: int) -> list[tuple[int, int, Callable[[], None]]]:
        """The day's events as (minute of day, order, action); the actions read the
        model when they run, so a refill or a count sees the day as it went."""
        rng = self.rng
        today = (self.start + timedelta(days=day)).date()
        events: list[tuple[int, int, Callable[[], None]]] = []

        def at(minute: int, action: Callable[[], None]) -> None:
            events.append((minute, len(events), action))

        if today.day == 1:
            at(EXPIRY_HOUR * 60, self.waste_expired)
            at(STOCKTAKE_HOUR * 60, lambda: self.stocktake(today))
            at(POCKET_COUNT_HOUR * 60, lambda: self.count_pockets(today))
        at(EXPIRE_SWEEP_HOUR * 60, self.expire_sweep)
        weekday = today.weekday()
        if weekday < SUPPLIERS:
            week = day // 7 + 1
            at(DELIVERY_HOUR * 60, lambda: self.deliver(weekday, week))
        for h, rooms in enumerate(self.site.rooms):
            share = len(rooms) / sum(HOSPITAL_ROOMS) / len(WARD_RUN_HOURS)
            for r, hour in enumerate(WARD_RUN_HOURS):
                count = max(1, round(WARD_LINES_PER_DAY * share * rng.uniform(0.85, 1.15)))
                lines = []
                for _ in range(count):
                    room = rng.choice(rooms)
                    lines.append(
                        (room, rng.choice(self.site.room_lists[room]), rng.choice(LINE_UNITS))
                    )
                key = f"ward:{today}:H{h + 1}:{r}"
                at(hour * 60, partial(self.pick, key, lines))
                at((hour + DISPATCH_AFTER_H) * 60 + 30, partial(self.dispatch, key, lines))
        for room in (room for rooms in self.site.rooms for room in rooms):
            at(ROOM_USE_HOUR * 60, partial(self.room_use, room, today))
        for j in range(PACKING_JOBS_PER_DAY):
            packer = j % PACKERS
            hour = FIRST_JOB_HOUR + j // PACKERS
            chosen = rng.sample(self.site.packer_products[packer], JOB_NEEDS)
            job = [(g, rng.randint(*NEED_TABLETS)) for g in chosen]
            fate = rng.random()
            cut = rng.uniform(0.3, 0.9) if fate < CUT_SHORT_CHANCE else 1.0
            started = fate >= CUT_SHORT_CHANCE + NEVER_STARTED_CHANCE or fate < CUT_SHORT_CHANCE
            rejects = {g: rng.randint(1, 2) for g, _ in job if rng.random() < REJECT_CHANCE}
            key = f"job:{today}:{j}"
            at(hour * 60 + 10, partial(self.reserve_job, key, job, started=started))
            if started:
                at(hour * 60 + 50, partial(self.post_job, key, job, cut, rejects))
        for cab in range(CABINETS):
            pockets = self.site.pockets[cab * POCKETS : (cab + 1) * POCKETS]
            weights = [w for _, _, _, w in pockets]
            for pocket in rng.choices(pockets, weights, k=WITHDRAWALS_PER_CABINET_DAY):
                minute = rng.choices(range(24), HOUR_WEIGHTS)[0] * 60 + rng.randrange(60)
                doses = rng.choices(
                    [d for d, _ in WITHDRAWAL_DOSES], [w for _, w in WITHDRAWAL_DOSES]
                )[0]
                at(minute, partial(self.withdraw, pocket[1], doses))
        return events

    # ------------------------------------------------------------------ commands

    def command(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs one ledger command, timed; a refusal is counted and the day goes on
        (nothing of a refused command is booked, so the model stays true)."""
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except LedgerError as exc:
            self.tally.refusals[kind] += 1
            if len(self.tally.refusal_examples) < 5:
                self.tally.refusal_examples.append(f"{kind} at {self.clock.now}: {exc}")
            return None
        self.tally.latency[kind].append(time.perf_counter() - t0)
        self.tally.commands[kind] += 1
        return result if result is not None else True

    def _key(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}:{self.serial}"

    def _mark(self, cabinet: str, location: str, value: int) -> CounterMark:
        number = int(location.rsplit("/P", 1)[1])
        return CounterMark(cabinet, f"pocket{number}.withdrawals", value)

    def _moved(self, kind: str, gtin_: str, units: int) -> None:
        self.tally.units[kind] += units
        if kind in ("consume", "waste"):
            self.tally.used[gtin_] += units

    def deliver(self, supplier: int, week: int, *, opening: bool = False) -> None:
        """A supplier's weekly delivery: each of its products topped up to the target
        cover (a short-dated one in its minimum order size), one lot per line."""
        today = self.clock.now.date()
        lines = []
        for p in self.site.products:
            if p.supplier != supplier:
                continue
            have = self.on_hand[(p.bin, p.gtin)]
            want = math.ceil(COVER_TARGET_DAYS * p.daily_use) - have
            if want <= 0:
                continue
            if p.short_dated:
                want = max(want, math.ceil(SHORT_MIN_ORDER_DAYS * p.daily_use))
                life = SHORT_SHELF_LIFE_DAYS
            else:
                life = self.rng.randint(*SHELF_LIFE_DAYS)
            batch = f"S{supplier}W{week:03d}P{p.index:03d}"
            lines.append(DeliveryLine(p.gtin, batch, today + timedelta(days=life), want, p.bin))
        if not lines:
            return
        key = f"delivery:{supplier}:{week}"
        reason = "opening stock" if opening else "weekly delivery"
        if self.command(
            "receive", self.ledger.receive_many, key, lines, actor=ACTOR, reason=reason
        ):
            for line in lines:
                self.on_hand[(line.location, line.gtin)] += line.quantity
                self.tally.received[line.gtin] += line.quantity
                self._moved("receive", line.gtin, line.quantity)

    def pick(self, key: str, lines: list[tuple[str, str, int]]) -> None:
        """A delivery run's pick list: one reservation, one need per line."""
        view = self.command(
            "reserve",
            self.ledger.reserve,
            key,
            purpose="ward delivery run",
            needs=[Need(g, units) for _, g, units in lines],
            from_locations=list(BINS),
            timeout_s=(DISPATCH_AFTER_H + 2) * 3600,
            actor=ACTOR,
            order_source="ward",
        )
        if view:
            self.tally.order_lines += len(lines)

    def dispatch(self, key: str, lines: list[tuple[str, str, int]]) -> None:
        """The run leaves: what was picked moves into the drug rooms."""
        uses = [Use(g, units, room, "transfer", "ward delivery") for room, g, units in lines]
        if self.command(
            "post", self.ledger.post, f"{key}:post", reservation_key=key, uses=uses, actor=ACTOR
        ):
            for room, g, units in lines:
                self.on_hand[(self.products[g].bin, g)] -= units
                self.on_hand[(room, g)] += units
                self._moved("transfer", g, units)

    def room_use(self, room: str, today: date) -> None:
        """A drug room's day of use, booked once: its largest stocks, used up."""
        held = [(units, g) for (loc, g), units in self.on_hand.items() if loc == room and units]
        for units, g in sorted(held, reverse=True)[:ROOM_USE_LINES]:
            key = f"room-use:{room}:{today}:{g}"
            if self.command(
                "consume",
                self.ledger.consume,
                key,
                gtin=g,
                quantity=units,
                location=room,
                actor=ACTOR,
                reason="drug room use",
            ):
                self.on_hand[(room, g)] -= units
                self._moved("consume", g, units)
                self.tally.room_use_lines += 1

    def _reserved_need(self, tablets: int) -> int:
        return tablets + math.ceil(tablets * REJECT_ALLOWANCE)

    def reserve_job(self, key: str, job: list[tuple[str, int]], *, started: bool = True) -> None:
        """A packing job's tablets, reserved in its canisters (refilled first where a
        canister holds less than the job needs). A job never started keeps its
        tablets held until its reservation times out."""
        for g, tablets in job:
            canister = self.site.canisters[g]
            free = self.on_hand[(canister, g)] - self.held[(canister, g)]
            if free < self._reserved_need(tablets):
                self.fill_canister(g)
        view = self.command(
            "reserve",
            self.ledger.reserve,
            key,
            purpose=f"dose pouches {key}",
            needs=[Need(g, self._reserved_need(t)) for g, t in job],
            from_locations=[self.site.canisters[g] for g, _ in job],
            timeout_s=JOB_TIMEOUT_S,
            actor=ACTOR,
            order_source="packing",
        )
        if view and not started:
            self.abandoned[key] = job
            for g, tablets in job:
                self.held[(self.site.canisters[g], g)] += self._reserved_need(tablets)

    def post_job(
        self, key: str, job: list[tuple[str, int]], cut: float, rejects: dict[str, int]
    ) -> None:
        """The finished (or stopped) job: good pouches consumed, rejects wasted, the
        rest of the reservation released."""
        uses = []
        booked: list[tuple[str, str, int]] = []
        for g, tablets in job:
            good = math.floor(tablets * cut)
            bad = min(rejects.get(g, 0), self._reserved_need(tablets) - good)
            if good:
                uses.append(Use(g, good, CONSUMED, "consume", f"dose pouches {key}"))
                booked.append(("consume", g, good))
            if bad:
                uses.append(
                    Use(g, bad, WASTE, "waste", "packing reject", reason_code="packing_reject")
                )
                booked.append(("waste", g, bad))
        if not uses:
            self.command(
                "void",
                self.ledger.void,
                f"{key}:void",
                reservation_key=key,
                actor=ACTOR,
                reason="nothing packed",
            )
            return
        if self.command(
            "post", self.ledger.post, f"{key}:post", reservation_key=key, uses=uses, actor=ACTOR
        ):
            for kind, g, units in booked:
                self.on_hand[(self.site.canisters[g], g)] -= units
                self._moved(kind, g, units)
                if kind == "consume":
                    self.tally.tablets_packed += units

    def fill_canister(self, g: str) -> None:
        canister = self.site.canisters[g]
        self._refill(g, canister, CANISTER_MAX - self.on_hand[(canister, g)], "canister refill")

    def _refill(self, g: str, location: str, quantity: int, purpose: str) -> None:
        """Reserve from the store (what it has), then post it into the location."""
        if quantity <= 0:
            return
        key = self._key(f"refill:{location}")
        view: ReservationView | None = self.command(
            "reserve",
            self.ledger.reserve,
            key,
            purpose=purpose,
            needs=[Need(g, quantity)],
            from_locations=list(BINS),
            timeout_s=3600,
            actor=ACTOR,
            partial=True,
            order_source="refill",
        )
        if not view:
            return
        got = view.reserved_of(g)
        if self.command(
            "post",
            self.ledger.post,
            f"{key}:post",
            reservation_key=key,
            uses=[Use(g, got, location, "transfer", purpose)],
            actor=ACTOR,
        ):
            self.on_hand[(self.products[g].bin, g)] -= got
            self.on_hand[(location, g)] += got
            self._moved("transfer", g, got)

    def withdraw(self, location: str, doses: int) -> None:
        """One withdrawal, booked as the cabinet poller books a counter's growth."""
        cabinet, g = self.pocket_of[location]
        if self.on_hand[(location, g)] < doses:
            self.tally.empty_pocket_skips += 1  # the nurse found the pocket short
            return
        old = self.counters[location]
        new = old + doses
        number = int(location.rsplit("/P", 1)[1])
        if self.command(
            "consume",
            self.ledger.consume,
            f"withdrawals:{cabinet}:{number}:{old}-{new}",
            gtin=g,
            quantity=doses,
            location=location,
            actor=ACTOR,
            reason=f"withdrawal at {cabinet}",
            mark=self._mark(cabinet, location, new),
        ):
            self.counters[location] = new
            self.on_hand[(location, g)] -= doses
            self._moved("consume", g, doses)
            self.tally.withdrawals += 1
            if self.on_hand[(location, g)] < POCKET_MIN:
                self.low_pockets[location] = None

    def refill_pocket(self, location: str) -> None:
        self.low_pockets.pop(location, None)
        _, g = self.pocket_of[location]
        self._refill(g, location, POCKET_MAX - self.on_hand[(location, g)], "pocket refill")

    def expire_sweep(self) -> None:
        expired = self.command("expire", self.ledger.expire_overdue)
        if isinstance(expired, list):
            self.tally.expired_reservations += len(expired)
            for key in expired:
                for g, tablets in self.abandoned.pop(key, []):
                    self.held[(self.site.canisters[g], g)] -= self._reserved_need(tablets)

    def waste_expired(self) -> None:
        """Expired lots in the store, wasted with the reason "expired"."""
        today = self.clock.now.date()
        for code in BINS:
            free: Counter[str] = Counter()
            for s in self.ledger.stock(location=code):
                if s.expiry < today and s.on_hand > s.reserved:
                    free[s.gtin] += s.on_hand - s.reserved
            for g, units in sorted(free.items()):
                if self.command(
                    "waste",
                    self.ledger.waste,
                    f"expired:{code}:{today}:{g}",
                    gtin=g,
                    quantity=units,
                    location=code,
                    actor=ACTOR,
                    reason="expired in the store",
                    reason_code="expired",
                ):
                    self.on_hand[(code, g)] -= units
                    self._moved("waste", g, units)

    def stocktake(self, today: date) -> None:
        """Every store bin counted by lot; a few lots are found a little off."""
        for code in BINS:
            counted: dict[tuple[str, str], int] = {}
            for s in self.ledger.stock(location=code):
                units = s.on_hand
                if self.rng.random() < STOCKTAKE_DIFF_CHANCE:
                    units = max(s.reserved, units + self.rng.choice((-3, -2, -1, 1, 2, 3)))
                counted[(s.gtin, s.batch)] = units
            differences = self.command(
                "stocktake",
                self.ledger.stocktake,
                f"stocktake:{code}:{today}",
                location=code,
                counted=counted,
                actor=ACTOR,
            )
            if isinstance(differences, dict):
                for name, diff in differences.items():
                    g = name.split("/", 1)[0]
                    self.on_hand[(code, g)] += diff
                    self.tally.adjusted[g] += diff
                    self.tally.units["adjust"] += abs(diff)

    def count_pockets(self, today: date) -> None:
        """Every cabinet pocket counted; now and then one dose off."""
        for _, location, g, _ in self.site.pockets:
            have = self.on_hand[(location, g)]
            counted = have
            if self.rng.random() < POCKET_DIFF_CHANCE:
                counted = max(0, have + self.rng.choice((-1, 1)))
            change = self.command(
                "count",
                self.ledger.count_to,
                f"count:{location}:{today}",
                location=location,
                gtin=g,
                counted=counted,
                actor=ACTOR,
                reason="monthly pocket count",
            )
            if change is not None and change is not True:
                self.on_hand[(location, g)] += int(change)
                self.tally.adjusted[g] += int(change)
                self.tally.units["adjust"] += abs(int(change))
            if self.on_hand[(location, g)] < POCKET_MIN:
                self.low_pockets[location] = None


def days_for(scale: float) -> int:
    """Simulated days for a fraction of the year (at least one)."""
    return max(1, round(DAYS_PER_YEAR * scale))


def ledger_scope(ledger: Ledger) -> Scope:
    """The group commit of the ledger when it has one, else a command per commit."""
    batch = getattr(ledger, "batch", None)
    return batch if callable(batch) else contextlib.nullcontext


def row_counts(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        return {
            name: int(
                conn.execute(select(func.count()).select_from(metadata.tables[name])).scalar_one()
            )
            for name in ("movements", "audit_log", "reservations", "commands", "order_lines")
        }


def run(url: str, scale: float = 1.0) -> dict[str, Any]:
    """The phase: set up, replay the year, verify, report; figures and targets."""
    engine = make_engine(url)
    try:
        clock = SimClock(START)
        ledger = Ledger(engine, clock=clock)
        year = RegionYear(ledger, clock)
        t0 = time.perf_counter()
        year.set_up()
        set_up_s = time.perf_counter() - t0
        set_up_commands = Counter(year.tally.commands)
        scope = ledger_scope(ledger)
        days = days_for(scale)
        t0 = time.perf_counter()
        year.replay(days, scope)
        replay_s = time.perf_counter() - t0
        replay_peak = peak_rss_mib()
        now = clock.now = START + timedelta(days=days)
        t0 = time.perf_counter()
        violations = verify_ledger(engine)
        verify_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cover = reports.days_of_cover(engine, now=now)
        cover_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compliance = reports.compliance_summary(engine, now=now)
        compliance_s = time.perf_counter() - t0
        counts = row_counts(ledger)
        open_reservations = ledger.open_reservation_count()
    finally:
        engine.dispose()
    tally = year.tally
    replayed = tally.commands - set_up_commands
    commands = sum(replayed.values())
    engine_name = "postgresql" if url.startswith("postgresql") else "sqlite"
    peak = peak_rss_mib()
    replay_target = TARGET_REPLAY_S[engine_name] * scale
    met = (
        replay_s < replay_target
        and peak < TARGET_PEAK_MIB
        and verify_s < TARGET_VERIFY_S
        and compliance_s < TARGET_COMPLIANCE_S
        and not violations
        and not tally.refusals
    )
    return {
        "figures": {
            "days": days,
            "scale": scale,
            "scope": getattr(scope, "__qualname__", str(scope)),
            "set_up_s": round(set_up_s, 2),
            "replay_s": round(replay_s, 2),
            "commands": commands,
            "commands_per_s": round(commands / replay_s, 1) if replay_s else None,
            "commands_by_kind": dict(sorted(replayed.items())),
            "set_up_commands": sum(set_up_commands.values()),
            # set-up included: its commands are a few hundred of the year's
            "latency_by_kind": {k: latency_ms(v) for k, v in sorted(tally.latency.items())},
            "refusals": dict(sorted(tally.refusals.items())),
            "refusal_examples": tally.refusal_examples,
            "units_by_movement_kind": dict(sorted(tally.units.items())),
            "order_lines": tally.order_lines,
            "tablets_packed": tally.tablets_packed,
            "cabinet_withdrawals": tally.withdrawals,
            "drug_room_use_lines": tally.room_use_lines,
            "empty_pocket_skips": tally.empty_pocket_skips,
            "expired_reservations": tally.expired_reservations,
            "open_reservations_at_end": open_reservations,
            "peak_rss_after_replay_mib": replay_peak,
            "peak_rss_after_reports_mib": peak,
            "verify_s": round(verify_s, 2),
            "violations": len(violations),
            "violation_examples": [str(v) for v in violations[:5]],
            "cover_s": round(cover_s, 2),
            "cover_rows": len(cover.rows),
            "compliance_s": round(compliance_s, 2),
            "compliance_share": compliance.share,
            "rows": counts,
        },
        "target": (
            f"replay < {TARGET_REPLAY_S['sqlite']:.0f} s on SQLite, "
            f"< {TARGET_REPLAY_S['postgresql']:.0f} s on PostgreSQL (x scale), "
            f"peak < {TARGET_PEAK_MIB:.0f} MiB; verify and compliance < "
            f"{TARGET_VERIFY_S:.0f} s each; 0 violations, 0 refusals"
        ),
        "ratio": round(replay_s / replay_target, 3) if replay_target else None,
        "met": met,
    }
