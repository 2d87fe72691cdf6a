"""Property tests of the HL7 cabinet interface's parser (drivers/hl7_messages.py) and of
what the listener books from whatever it lets through.

* Any bytes: `parse_message` returns or raises `Hl7MessageError`, nothing else.
* A valid message damaged (bytes flipped, inserted, cut; fields replaced by hostile
  values): either refused, or read into an event whose every field is in range.
* Whatever a damaged or hostile message becomes, the listener books it only when it is
  a well-formed transaction of a configured pocket of this cabinet with its product,
  and then exactly the doses it names; everything else books nothing at all.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.app import Controller
from controller.cabinets.hl7_listener import Hl7CabinetListener
from controller.config import parse_site
from drivers.base import AckCode, PocketEvent, PocketEventKind
from drivers.hl7_cabinet import Hl7CabinetDriver
from drivers.hl7_messages import Hl7MessageError, parse_message
from tests.sites import METO, PARA, site_dict

GTIN = re.compile(r"^\d{14}$")
MSH = "MSH|^~\\&|CABSRV|WARD|DOSELINE|PHARMACY|20261207101500||RDS^O13^RDS_O13|{id}|P|2.5"
VALID = "\r".join(
    [
        MSH.format(id="M1"),
        "ORC|RE|M1",
        f"RXD|1|{PARA}^Paracetamol^GTIN|20261207101500|2",
        "ZPK|CAB1|A|1|DISPENSE|10",
    ]
).encode()
HOSTILE = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "99999999999",
        "1e3",
        "2.5",
        " 1",
        "NaN",
        "CAB1\x00",
        "CAB9",
        "../CAB1",
        "DISPENSE",
        "COUNT",
        "RETURN",
        "REFILL",
        "WASTE",
        "SNAPSHOT",
        METO,
        PARA,
        "0735999000001",
        "\\F\\",
        "^^^",
        "~",
        "&",
        "'; DROP TABLE movements; --",
        "\u00e5\u00e4\u00f6",
        "1" * 300,
    ]
)
_ids = itertools.count(1)


def _checked(data: bytes) -> object | None:
    try:
        return parse_message(data).body
    except Hl7MessageError as exc:
        assert exc.code in (AckCode.ERROR, AckCode.REJECT)
        assert exc.text
        return None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_raise_nothing_but_message_errors(data: bytes) -> None:
    _checked(data)
    _checked(b"MSH|^~\\&|" + data)


def _in_range(body: object) -> None:
    if isinstance(body, PocketEvent):
        assert GTIN.match(body.gtin)
        assert 1 <= body.pocket <= 99
        assert 0 <= body.quantity <= 100_000
        assert body.kind == PocketEventKind.COUNT or body.quantity >= 1
        assert re.match(r"^[A-Za-z0-9_.-]{1,50}$", body.cabinet)
        assert re.match(r"^[A-Za-z0-9_.-]{1,50}$", body.message_id)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete" and data:
            del data[at : at + draw(st.integers(1, 5))]
        elif how == "cut":
            del data[at:]
    return bytes(data)


@st.composite
def hostile_fields(draw: st.DrawFn) -> bytes:
    """The valid dispense with some of its fields replaced by hostile values."""
    rxd = ["RXD", "1", f"{PARA}^Paracetamol^GTIN", "20261207101500", "2"]
    zpk = ["ZPK", "CAB1", "A", "1", "DISPENSE", "10", ""]
    for segment in (rxd, zpk):
        for index in draw(st.sets(st.integers(1, len(segment) - 1), max_size=3)):
            segment[index] = draw(HOSTILE)
    control_id = f"F{next(_ids)}"
    lines = [MSH.format(id=control_id), "ORC|RE", "|".join(rxd), "|".join(zpk)]
    return "\r".join(lines).encode("utf-8")


@settings(max_examples=400, deadline=None)
@given(damaged())
def test_a_damaged_message_is_refused_or_read_in_range(data: bytes) -> None:
    _in_range(_checked(data))


# --- what the listener books ------------------------------------------------------------
@pytest.fixture(scope="module")
def booked(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Controller, Hl7CabinetListener]]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('hl7fuzz')) / 'ledger.db'}"
    raw = site_dict(ledger_url=url)
    raw["packers"], raw["scanners"] = [], []
    raw["cabinets"][0].update(driver="hl7_mllp", address="mllp://127.0.0.1:1")
    controller = Controller(parse_site(raw), ledger_url=url)
    controller.prepare_ledger()
    controller.receive_opening_stock(date.today())
    for number, gtin in ((1, PARA), (2, METO)):
        controller.ledger.transfer(
            f"opening:{number}",
            gtin=gtin,
            quantity=5,
            from_location="CENTRAL/A01",
            to_location=f"CAB1/P{number:02d}",
            actor="test",
            reason="opening stock",
        )
    config = controller.site.cabinets[0]
    driver = Hl7CabinetDriver(
        "CAB1", config.address, cabinet_id="CAB1", pocket_gtins={1: PARA, 2: METO}
    )
    listener = Hl7CabinetListener(config, driver, controller.aledger, controller.metrics)
    yield controller, listener
    controller.close()


def _bookable(event: PocketEvent) -> bool:
    pockets = {1: PARA, 2: METO}
    return (
        event.cabinet == "CAB1"
        and pockets.get(event.pocket) == event.gtin
        and event.kind in (PocketEventKind.DISPENSE, PocketEventKind.WASTE)
    )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.one_of(hostile_fields(), damaged()))
def test_a_hostile_message_books_nothing_it_should_not(
    booked: tuple[Controller, Hl7CabinetListener], data: bytes
) -> None:
    controller, listener = booked
    body = _checked(data)
    movements_before = controller.ledger.movement_count()
    stock_before = _stock(controller)
    if not isinstance(body, PocketEvent) or body.kind not in (
        PocketEventKind.DISPENSE,
        PocketEventKind.WASTE,
    ):
        return  # refused by the parser, or a kind outside this property: nothing handled
    ack = asyncio.run(listener.handle(body))
    moved = controller.ledger.movement_count() - movements_before
    if not _bookable(body):
        assert ack.code == AckCode.ERROR
        assert moved == 0
        assert _stock(controller) == stock_before
        return
    assert ack.code == AckCode.ACCEPT
    location = f"CAB1/P{body.pocket:02d}"
    taken = stock_before.get(location, 0) - _stock(controller).get(location, 0)
    assert 0 <= taken <= body.quantity


def _stock(controller: Controller) -> dict[str, int]:
    totals: dict[str, int] = {}
    for lot in controller.ledger.stock():
        totals[lot.location] = totals.get(lot.location, 0) + lot.on_hand
    return totals


def test_the_listener_books_a_valid_dispense_and_refuses_a_foreign_one(
    booked: tuple[Controller, Hl7CabinetListener],
) -> None:
    """Both outcomes of the property above are reachable: a valid dispense books its
    doses, the same message for another cabinet books nothing."""
    controller, listener = booked
    before = _stock(controller).get("CAB1/P02", 0)
    foreign = VALID.replace(b"ZPK|CAB1|A|1|", b"ZPK|CAB2|A|2|").replace(
        PARA.encode(), METO.encode()
    )
    event = parse_message(foreign.replace(b"|M1|", b"|V1|")).body
    assert isinstance(event, PocketEvent)
    assert asyncio.run(listener.handle(event)).code == AckCode.ERROR
    assert _stock(controller).get("CAB1/P02", 0) == before
    valid = parse_message(foreign.replace(b"|M1|", b"|V2|").replace(b"ZPK|CAB2", b"ZPK|CAB1")).body
    assert isinstance(valid, PocketEvent)
    assert asyncio.run(listener.handle(valid)).code == AckCode.ACCEPT
    assert _stock(controller).get("CAB1/P02", 0) == before - 2
