"""`doseline wards ...`: a drug room's requisition typed in and read from files,
reviewed, picked by scan, dispatched and received with a deviation, on a ledger of its
own (SQLite and PostgreSQL); refused input exits 2 naming the field and the value."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from controller.cli import main
from controller.gs1 import PackId, encode_pack
from controller.ledger import Ledger, verify_ledger
from controller.ledger.engine import make_engine
from controller.ledger.schema import movements
from tests.sites import METO, OXY, PARA, ward_site

SITE_NAME = "Pharmacy <b>&</b> Co"
TECH = "tech:tove"
PHARMACIST = "pharmacist:petra"


class Wards:
    """`doseline wards ...` against one site file and ledger; the output of each call."""

    def __init__(self, site: Path, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.site = site
        self.db = db
        self.capsys = capsys
        self.err = ""

    def __call__(self, *args: str, code: int = 0) -> str:
        self.capsys.readouterr()
        got = main(["wards", *args, "--site", str(self.site), "--db", self.db])
        out, self.err = self.capsys.readouterr()
        assert got == code, f"exit {got}, expected {code}: {out}{self.err}"
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json"))

    def ledger(self) -> Ledger:
        return Ledger(make_engine(self.db))


@pytest.fixture
def wards(tmp_path: Path, ledger_url: str, capsys: pytest.CaptureFixture[str]) -> Wards:
    raw = ward_site(ledger_url=ledger_url)
    raw["site"]["name"] = SITE_NAME
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["ledger", "init", "--site", str(site), "--db", ledger_url, "--opening-stock"]) == 0
    return Wards(site, ledger_url, capsys)


def today() -> Any:
    return datetime.now(UTC).date()  # the day `ledger init --opening-stock` dated the lots by


def scan(gtin: str, batch: str, days: int, serial: str | None = None) -> str:
    return encode_pack(PackId(gtin, batch, today() + timedelta(days=days), serial))


def on_hand(led: Ledger, location: str, gtin: str) -> int:
    return sum(s.on_hand for s in led.stock(location=location, gtin=gtin))


def moves(db: str) -> int:
    engine = make_engine(db)
    try:
        with engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(movements)).scalar_one())
    finally:
        engine.dispose()


def test_a_requisition_from_the_command_line_to_the_ward_shelf(
    wards: Wards, tmp_path: Path
) -> None:
    lines = ["--line", f"{PARA}:2", "--line", f"{METO}:1", "--line", f"{OXY}:1"]
    out = wards(
        "requisition", "--room", "DR-MED", "--id", "CLI-1", *lines, "--urgent", "--actor", TECH
    )
    assert "booked, 3 line(s), 1 flagged" in out
    number = out.split(":")[0]
    assert "already booked" in wards(
        "requisition", "--room", "DR-MED", "--id", "CLI-1", "--line", f"{PARA}:5", "--actor", TECH
    )

    [req] = wards.json("requisitions")
    assert (req["number"], req["source"], req["sender"], req["urgent"]) == (
        number,
        "cli",
        TECH,
        True,
    )
    queue = {x["gtin"]: x for x in wards.json("review", "--room", "DR-MED")}
    assert queue[OXY]["flags"] == ["controlled"]

    assert "2 routine line(s) approved" in wards(
        "approve-routine", "--reason", "routine ward stock", "--actor", PHARMACIST
    )
    [decided] = wards.json(
        "decide", str(queue[OXY]["id"]), "approve", "--reason", "usual", "--actor", PHARMACIST
    )
    assert (decided["status"], decided["decided_by"]) == ("approved", PHARMACIST)
    assert wards.json("review") == []

    [pick] = wards.json("pick-lists", "make", "--run", "URGENT", "--actor", TECH)
    assert pick["urgent"] and pick["hospital"] == "H1"
    assert [p["number"] for p in wards.json("pick-lists", "list")] == [pick["number"]]
    assert "P-EARLY" in wards("pick-list", pick["number"])

    out = wards("scan", pick["number"], scan(PARA, "P-SHORT", 5), "--actor", TECH, code=1)
    assert out.startswith("refused: wrong lot")
    before = moves(wards.db)
    for data in (
        scan(PARA, "P-EARLY", 90),
        scan(PARA, "P-LATE", 400),
        scan(PARA, "P-LATE", 400),
        scan(METO, "M-1", 200, "S1").replace("\x1d", "<GS>"),
    ):
        assert wards("scan", pick["number"], data, "--actor", TECH).startswith("accepted")
    out = wards("scan", pick["number"], scan(OXY, "O-1", 300), "--actor", TECH)
    assert "is complete: dispatch it" in out
    assert moves(wards.db) == before  # scans confirm; the ledger moves at dispatch

    out = wards("dispatch", pick["number"], "--actor", TECH)
    assert "dispatched: 3 line(s), 0 short" in out and "1 serialised pack(s)" in out
    [note] = wards.json("notes", "--status", "in_transit")
    led = wards.ledger()
    try:
        assert on_hand(led, "TRANSIT/H1", PARA) == 200
    finally:
        led.engine.dispose()
    assert "was dispatched before" in wards("dispatch", pick["number"], "--actor", TECH)

    page = tmp_path / "note.html"
    out = wards("note", note["number"], "--html", str(page))
    assert f"print page: {page}" in out
    html = page.read_text(encoding="utf-8")
    assert "Pharmacy &lt;b&gt;&amp;&lt;/b&gt; Co" in html and "<b>" not in html
    assert f"DN:{note['number']}" in html

    out = wards(
        "receive",
        note["number"],
        "--deviation",
        f"{PARA}:P-LATE:damaged:50:crushed: box and all",
        "--actor",
        "nurse:nils",
    )
    assert "350 units into the drug room, 1 deviation(s), 350 counted as used" in out
    wards("receive", note["number"], "--actor", "nurse:nils", code=2)
    assert "already received at" in wards.err
    [got] = wards.json("note", note["number"])
    assert got["status"] == "received" and got["received_by"] == "nurse:nils"
    assert any(x["deviation_reason"] == "crushed: box and all" for x in got["lines"])

    led = wards.ledger()
    try:
        assert on_hand(led, "TRANSIT/H1", PARA) == 0 and on_hand(led, "H1/W1/DR-MED", PARA) == 0
        assert led.moved_quantity("consume") == 350
        assert verify_ledger(led.engine) == []
    finally:
        led.engine.dispose()
    assert "ward delivery reliability" in wards("reliability")
    assert wards.json("reliability", "--until", (today() + timedelta(days=2)).isoformat())


def test_files_top_up_rounds_and_the_rooms(wards: Wards, tmp_path: Path) -> None:
    fhir = tmp_path / "bundle.json"
    fhir.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "batch",
                "identifier": {"system": "urn:oid:1.2.3", "value": "F-1"},
                "entry": [
                    {
                        "resource": {
                            "resourceType": "SupplyRequest",
                            "status": "active",
                            "itemReference": {
                                "identifier": {"system": "http://www.gs1.org/gtin", "value": METO}
                            },
                            "quantity": {"value": 1},
                            "deliverTo": {"reference": "Location/DR-N2"},
                        }
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    plain = tmp_path / "req.json"
    plain.write_text(
        json.dumps(
            {"id": "J-1", "drug_room": "DR-MED", "lines": [{"article": 100002, "packs": 1}]}
        ),
        encoding="utf-8",
    )
    assert "booked, 1 line(s)" in wards("requisition", "--fhir-file", str(fhir))
    assert "booked, 1 line(s)" in wards("requisition", "--json-file", str(plain), "--actor", TECH)
    assert "already booked" in wards("requisition", "--fhir-file", str(fhir))
    sources = {r["source"] for r in wards.json("requisitions", "--limit", "5")}
    assert sources == {"fhir", "json"}

    booked = wards.json("top-up", "DR-ICU", "--round", "R1", "--count", f"{PARA}:0")
    assert booked["proposal"] == [{"gtin": PARA, "packs": 2}]
    assert booked["requisition"]["duplicate"] is False
    assert "already booked" in wards("top-up", "DR-ICU", "--round", "R1", "--count", f"{PARA}:0")
    assert "nothing ordered" in wards("top-up", "DR-MED", "--round", "R2", "--count", f"{PARA}:3")

    rooms = {r["code"]: r for r in json.loads(wards("rooms", "--json"))}
    assert rooms["DR-PRIV"]["external"] and rooms["DR-ICU"]["counted"]
    assert "EXTERNAL" in wards("rooms")
    assert [s["gtin"] for s in wards.json("par", "DR-MED", "--days", "14")] == [PARA, METO, OXY]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["requisition", "--room", "DR-MED", "--id", "B-1", "--line", f"{PARA}:0"],
            "lines[0].packs: '0': must be at least 1 pack",
        ),
        (
            ["requisition", "--room", "DR-MED", "--id", "B-2", "--line", f"{PARA}:-3"],
            "lines[0].packs: '-3'",
        ),
        (
            ["requisition", "--room", "DR-MED", "--id", "B-3", "--line", f"{PARA}:100000"],
            "lines[0].packs: '100000'",
        ),
        (
            ["requisition", "--room", "DR-MED", "--id", "B-4", "--line", f"{PARA}:two"],
            f"--line: '{PARA}:two': packs 'two' is not a whole number",
        ),
        (
            ["requisition", "--room", "DR-MED", "--id", "B-5", "--line", "07359990099994:1"],
            "lines[0].gtin: '07359990099994'",
        ),
        (
            ["requisition", "--room", "DR-NOPE", "--id", "B-6", "--line", f"{PARA}:1"],
            "drug_room: 'DR-NOPE': is not a drug room of this site",
        ),
        (
            ["requisition", "--room", "DR-PRIV", "--id", "B-7", "--line", f"{PARA}:1"],
            "drug_room: 'DR-PRIV' is outside the hospital",
        ),
        (["requisition", "--room", "DR-MED", "--line", f"{PARA}:1"], "--id: missing"),
        (
            ["requisition", "--fhir-file", "/nonexistent/x.json"],
            "--fhir-file: '/nonexistent/x.json'",
        ),
        (["decide", "999999", "approve", "--reason", "fine"], "line: '999999'"),
        (["receive", "DN-NOPE"], "note: 'DN-NOPE'"),
        (["receive", "DN-NOPE", "--deviation", f"{PARA}:B:lost:1:why"], "kind 'lost'"),
        (["pick-lists", "make", "--run", "NIGHT"], "--run: 'NIGHT'"),
        (["top-up", "DR-ICU", "--round", "R9", "--count", f"{METO}:0"], "counts[0].gtin"),
        (["top-up", "DR-NOPE", "--round", "R9", "--count", f"{PARA}:0"], "drug_room: 'DR-NOPE'"),
        (["review", "--room", "DR-NOPE"], "drug_room: 'DR-NOPE'"),
    ],
)
def test_refused_input_exits_2_naming_field_and_value(
    wards: Wards, args: list[str], message: str
) -> None:
    before = moves(wards.db)
    wards(*args, code=2)
    assert message in wards.err, wards.err
    assert moves(wards.db) == before
    assert wards.json("requisitions") == []


def test_a_malformed_file_lists_every_problem(wards: Wards, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "X", "drug_room": "DR-MED", "lines": [{"gtin": "1", "packs": 0}]}')
    wards("requisition", "--json-file", str(bad), code=2)
    assert "lines[0].gtin: '1'" in wards.err and "lines[0].packs: '0'" in wards.err
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", ')
    wards("requisition", "--fhir-file", str(broken), code=2)
    assert "payload:" in wards.err and "not valid JSON" in wards.err
