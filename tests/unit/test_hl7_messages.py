"""Building and parsing the HL7 messages of the cabinet-server interface, and the rules
for acknowledging them (docs/cabinet-hl7.md)."""

from __future__ import annotations

from pathlib import Path

import hl7
import pytest

from drivers.base import (
    AckCode,
    CabinetCommand,
    CabinetSnapshot,
    CabinetStatusBit,
    EventAck,
    ItemMasterEntry,
    PocketEvent,
    PocketEventKind,
)
from drivers.hl7_cabinet import parse_address
from drivers.hl7_messages import (
    AckMessage,
    Header,
    Hl7MessageError,
    build_ack,
    build_item_master,
    build_pocket_notice,
    escape,
    parse_message,
)

PARA = "07359990000013"
MSH = "MSH|^~\\&|CABSRV|WARD|DOSELINE|PHARMACY|20261207101500||{type}|{id}|P|2.5"


def rds(
    zpk: str, rxd: str = f"RXD|1|{PARA}^Paracetamol^GTIN|20261207101500|2", id_: str = "M1"
) -> bytes:
    lines = [MSH.format(type="RDS^O13^RDS_O13", id=id_), "ORC|RE|M1", rxd, zpk]
    return "\r".join(lines).encode()


SNAPSHOT = "\r".join(
    [
        MSH.format(type="INV^U06^INV_U06", id="S1"),
        "EQU|CAB1|20261207101500",
        "ZCS|CAB1|42|5.5|2.0|8.0|3|17|DOOR_OPEN~TEMPERATURE_ALARM",
        f"INV|{PARA}^^GTIN|OK||||||11",
        "ZPK|CAB1|A|1|SNAPSHOT|11||N",
        "INV|07359990000020^^GTIN|NE||||||0",
        "ZPK|CAB1|B|2|SNAPSHOT|0||Y",
    ]
).encode()


def test_a_dispense_is_read_with_its_pocket_and_control_id() -> None:
    inbound = parse_message(rds("ZPK|CAB1|A|3|DISPENSE|10"))
    assert inbound.body == PocketEvent(
        "M1", "CAB1", PocketEventKind.DISPENSE, "A", 3, PARA, 2, count_after=10
    )
    assert inbound.header == Header("M1", "CABSRV", "WARD", "O13")


def test_a_refill_confirmation_carries_its_notice_number() -> None:
    body = parse_message(rds("ZPK|CAB1|A|3|REFILL|12|417")).body
    assert isinstance(body, PocketEvent)
    assert (body.kind, body.notice, body.count_after) == (PocketEventKind.REFILL, 417, 12)


def test_a_count_may_be_zero_a_dispense_may_not() -> None:
    zero = f"RXD|1|{PARA}^^GTIN||0"
    assert parse_message(rds("ZPK|CAB1|A|3|COUNT|0", zero)).body.quantity == 0  # type: ignore[union-attr]
    with pytest.raises(Hl7MessageError, match=r"RXD-4: '0' is not a whole number from 1"):
        parse_message(rds("ZPK|CAB1|A|3|DISPENSE|0", zero))


def test_a_snapshot_lists_every_pocket_and_the_cabinet_state() -> None:
    body = parse_message(SNAPSHOT).body
    assert isinstance(body, CabinetSnapshot)
    status = body.status
    assert body.cabinet == "CAB1"
    assert (status.heartbeat, status.temperature_c, status.temp_low_c, status.temp_high_c) == (
        42,
        5.5,
        2.0,
        8.0,
    )
    assert (status.temp_excursions_total, status.last_ack_sequence) == (3, 17)
    assert status.status == CabinetStatusBit.DOOR_OPEN | CabinetStatusBit.TEMPERATURE_ALARM
    assert [(p.number, p.count, p.locked) for p in status.pockets] == [(1, 11, False), (2, 0, True)]


@pytest.mark.parametrize(
    ("zpk", "rxd", "message"),
    [
        ("ZPK|CAB1|A|x3|DISPENSE", None, "ZPK-3: 'x3' is not a whole number from 1 to 99"),
        ("ZPK|CAB1|A|3|TAKEN", None, "ZPK-4: transaction type 'TAKEN' is not one of"),
        ("ZPK||A|3|DISPENSE", None, "ZPK-1 is required"),
        ("ZPK|CAB1|A|3|DISPENSE", "RXD|1|123^^GTIN||2", "RXD-2.1: '123' is not a 14-digit GTIN"),
        ("ZPK|CAB1|A|3|DISPENSE", f"RXD|1|{PARA}^^GTIN||-2", "RXD-4: '-2' is not a whole number"),
        ("ZPK|CAB1|A|3|REFILL|5|70000", None, "ZPK-6: '70000' is not a whole number"),
    ],
)
def test_a_bad_field_is_an_application_error_naming_field_and_value(
    zpk: str, rxd: str | None, message: str
) -> None:
    data = rds(zpk) if rxd is None else rds(zpk, rxd)
    with pytest.raises(Hl7MessageError) as caught:
        parse_message(data)
    assert caught.value.code == AckCode.ERROR
    assert caught.value.control_id == "M1"
    assert message in caught.value.text


@pytest.mark.parametrize(
    ("data", "message", "error_code"),
    [
        (MSH.format(type="DFT^P03", id="M2").encode(), "MSH-9: message type 'DFT^P03'", 200),
        (MSH.format(type="RDS^O11", id="M2").encode(), "MSH-9: message type 'RDS^O11'", 201),
        (MSH.format(type="RDS^O13", id="M2").replace("|P|", "|T|").encode(), "MSH-11", 202),
        (MSH.format(type="RDS^O13", id="M2").replace("2.5", "2.3").encode(), "MSH-12", 203),
        (MSH.format(type="RDS^O13", id="").encode(), "MSH-10 (message control id)", 101),
        (b"PID|1||x", "does not begin with MSH", 100),
        (b"MSH|^~\\&|\xff\xfe", "not UTF-8", 102),
    ],
)
def test_what_cannot_be_taken_at_all_is_rejected(
    data: bytes, message: str, error_code: int
) -> None:
    with pytest.raises(Hl7MessageError) as caught:
        parse_message(data)
    assert caught.value.code == AckCode.REJECT
    assert message in caught.value.text
    assert caught.value.error_code == error_code


def test_a_segment_missing_or_repeated_is_an_error() -> None:
    with pytest.raises(Hl7MessageError, match="ZPK: 0 segments"):
        parse_message(rds("ORC|RE"))
    with pytest.raises(Hl7MessageError, match="ZPK: 2 segments"):
        parse_message(rds("ZPK|CAB1|A|3|DISPENSE\rZPK|CAB1|A|3|DISPENSE"))
    broken = SNAPSHOT.replace(b"ZPK|CAB1|B|2|SNAPSHOT|0||Y", b"")
    with pytest.raises(Hl7MessageError, match="the last INV has no ZPK"):
        parse_message(broken)
    twice = SNAPSHOT.replace(b"ZPK|CAB1|B|2|", b"ZPK|CAB1|B|1|")
    with pytest.raises(Hl7MessageError, match="ZPK-3: pocket 1 is listed twice"):
        parse_message(twice)


def test_an_acceptance_has_no_err_and_names_the_message_it_answers() -> None:
    ack = hl7.parse(build_ack(Header("M1", "CABSRV", "WARD", "O13"), EventAck.accept()).decode())
    assert str(ack.segment("MSH")[9]) == "ACK^O13^ACK"
    assert (str(ack.segment("MSH")[5]), str(ack.segment("MSH")[6])) == ("CABSRV", "WARD")
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AA", "M1")
    assert not [s for s in ack if str(s[0]) == "ERR"]


def test_an_error_acknowledgement_carries_err_with_the_code_and_location() -> None:
    try:
        parse_message(rds("ZPK|CAB1|A|x3|DISPENSE"))
    except Hl7MessageError as exc:
        data = build_ack(
            Header(exc.control_id, "CABSRV", "", exc.trigger), exc.ack, location=exc.location
        )
    ack = hl7.parse(data.decode())
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AE", "M1")
    assert str(ack.segment("ERR")[2]) == "ZPK^1^3"
    assert str(ack["ERR.F3.R1.C1"]) == "102"
    assert "x3" in str(ack["ERR.F3.R1.C2"])


def test_an_unreadable_message_is_rejected_without_a_control_id() -> None:
    ack = hl7.parse(build_ack(None, EventAck(AckCode.REJECT, "unreadable", 100)).decode())
    assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AR", "")


def test_acknowledgements_of_our_messages_are_read() -> None:
    data = "\r".join([MSH.format(type="MFK^M01^MFK_M01", id="A9"), "MSA|AE|OUR1|no such item"])
    assert parse_message(data.encode()).body == AckMessage("OUR1", "AE", "no such item")


def test_the_item_master_escapes_delimiters_and_round_trips() -> None:
    items = [ItemMasterEntry(PARA, "Paracetamol 500 mg | oral^tab", "N02BE01", "500 mg", 100001)]
    data = build_item_master(items, replace=True, receiver="CABSRV", control_id="IM1")
    message = hl7.parse(data.decode())
    assert str(message.segment("MSH")[9]) == "MFN^M01^MFN_M01"
    assert str(message["MFI.F3"]) == "REP"
    assert str(message["MFE.F1"]) == "MAD"
    assert str(message["MFE.F4.R1.C1"]) == PARA
    assert message.unescape(str(message["ZIM.F2"])) == "Paracetamol 500 mg | oral^tab"
    assert str(message["ZIM.F3"]) == "N02BE01"
    update = build_item_master(items, replace=False, receiver="CABSRV", control_id="IM2")
    assert str(hl7.parse(update.decode())["MFE.F1"]) == "MUP"


def test_a_refill_notice_names_pocket_quantity_and_number() -> None:
    data = build_pocket_notice(
        cabinet="CAB1",
        command=CabinetCommand.REFILL,
        notice=12,
        pocket=3,
        gtin=PARA,
        quantity=16,
        control_id="N1",
    )
    message = hl7.parse(data.decode())
    assert str(message.segment("MSH")[9]) == "RDS^O13^RDS_O13"
    assert (str(message["ZPK.F3"]), str(message["ZPK.F4"]), str(message["ZPK.F6"])) == (
        "3",
        "REFILL",
        "12",
    )
    assert str(message["RXD.F4"]) == "16"
    with pytest.raises(ValueError, match="has no pocket notice"):
        build_pocket_notice(
            cabinet="CAB1",
            command=CabinetCommand.NONE,
            notice=1,
            pocket=1,
            gtin=PARA,
            quantity=0,
            control_id="N2",
        )


def test_escape_covers_every_delimiter() -> None:
    assert escape("a|b^c~d\\e&f") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"


def test_addresses() -> None:
    assert parse_address("mllp://cabsrv.local:2575") == ("cabsrv.local", 2575, False)
    assert parse_address("mllps://10.0.0.5:2576") == ("10.0.0.5", 2576, True)
    for bad in ("tcp://h:1", "mllp://h", "mllp://:5"):
        with pytest.raises(ValueError, match="address"):
            parse_address(bad)


def test_the_examples_of_the_interface_document_are_read_as_it_says() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cabinet-hl7.md").read_text()
    blocks = [b.strip() for b in doc.split("```")[1::2] if b.strip().startswith("MSH|")]
    read = {}
    for block in blocks:
        data = block.replace("\n", "\r").encode()
        if b"|MFN^M01" in data:
            continue  # sent by doseline, built by build_item_master
        body = parse_message(data).body
        read[type(body).__name__ + ":" + str(getattr(body, "kind", ""))] = body
    dispense = read["PocketEvent:DISPENSE"]
    assert isinstance(dispense, PocketEvent)
    assert (dispense.cabinet, dispense.pocket, dispense.quantity, dispense.count_after) == (
        "CAB-ORT4",
        3,
        2,
        29,
    )
    snapshot = read["CabinetSnapshot:"]
    assert isinstance(snapshot, CabinetSnapshot)
    assert [(p.number, p.count, p.locked) for p in snapshot.status.pockets] == [
        (1, 9, False),
        (2, 0, True),
    ]
    notice = read["PocketEvent:REFILL"]
    assert isinstance(notice, PocketEvent) and notice.notice == 58
    assert isinstance(read["AckMessage:"], AckMessage)
