"""The whole demo in a subprocess: its summary, its live metrics and `ledger verify`."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def doseline(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(240)
def test_demo_runs_a_day_and_the_ledger_verifies(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    url = f"sqlite:///{db}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "demo", "--minutes", "0.4", "--json", "--db", url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    metrics_url = None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        found = re.match(r"metrics: (http://\S+)", line)
        if found:
            metrics_url = found.group(1)
            break
    assert metrics_url, "the demo did not print its metrics address:\n" + "\n".join(lines)

    time.sleep(10)  # a part of the day in: machines have run, cabinets have been polled
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        scraped = response.read().decode()
    out, err = proc.communicate(timeout=200)
    lines += out.splitlines()
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"

    for name in (
        'doseline_packer_state{packer="PACKER-1"}',
        'doseline_packer_pouches_processed_total{packer="PACKER-2"}',
        "doseline_packer_pouches_defective_total",
        'doseline_cabinet_pocket_count{cabinet="CAB-MED1",pocket="1"}',
        "doseline_ledger_open_reservations",
        'doseline_ledger_operation_seconds_bucket{le="0.01",operation="reserve"}',
        "doseline_cabinet_withdrawals_total",
        # The cabinets on the RTU line are polled through their shared bus.
        'doseline_cabinet_link_state{cabinet="CAB-GER3",state="online"} 1.0',
        'doseline_cabinet_temperature_celsius{cabinet="CAB-ICU-COLD"}',
        "doseline_refills_pending",
    ):
        assert name in scraped, f"{name} missing from /metrics"
    assert "PT-" not in scraped  # no patient pseudonyms as labels, let alone names

    summary = json.loads(lines[-1])
    assert summary["pouches_packed"] > 0
    assert summary["withdrawals"] > 0
    # The cabinet behind the HL7 cabinet server books withdrawals beside the Modbus ones.
    assert summary["withdrawals_by_cabinet"]["CAB-ORT4"] > 0
    assert summary["withdrawals_by_cabinet"]["CAB-MED1"] > 0
    assert summary["refills_done"] > 0
    assert summary["jobs_failed"] == 0
    assert summary["negative_balances"] == 0
    assert summary["open_reservations"] == 0
    assert summary["ledger_verified"] is True
    assert summary["physical_mismatches"] == []
    assert summary["scans_refused"] >= 1  # the demo's deliberately wrong pack
    refused = " | ".join(summary["refused_scans"])
    assert "wrong pocket" in refused and "is not on pick list" in refused
    assert summary["pick_lists_scheduled"] >= 1 and summary["pick_lists_urgent"] >= 1
    assert summary["wasted_at_cabinets"] >= 1
    # The fridge's excursion: its stock was held, then wasted by the pharmacist.
    assert summary["cold_chain"] and "wasted by pharmacist:demo" in summary["cold_chain"][0]
    assert summary["stock_on_hold"] == 0 and summary["discrepancies_open"] == 0
    # Both packer types packed: PACKER-1 over OPC UA, PACKER-2 over the serial line.
    assert summary["pouches_by_packer"]["PACKER-1"] > 0
    assert summary["pouches_by_packer"]["PACKER-2"] > 0
    assert "demo summary" in out
    # Purchasing: last month's use became one order; its delivery was partial, with a
    # back order and a short line whose substitute was suggested.
    assert len(summary["purchase_orders"]) == 1 and summary["order_status"] == "partial"
    delivery = " | ".join(summary["delivery"])
    assert "back-ordered" in delivery and "short, order instead" in delivery
    # The stock duty: an exemption with a reduced level reviewed, a preparedness floor
    # (the masks below it), external use in the whole use, a short crisis period started
    # and ended, a shortage with rationing that held every ward but the ICU to its cap.
    duty = summary["stock_duty"]
    assert duty["exemption"]["level_days"] == 14 and duty["exemption"]["reviewed_by"]
    assert duty["preparedness"]["listed"] == 2
    assert [b["product"] for b in duty["preparedness"]["below_floor"]] == [
        "Surgical face mask type IIR"
    ]
    assert duty["external_use"]["whole_cover_days"] < duty["external_use"]["internal_cover_days"]
    crisis = duty["crisis"]
    assert crisis["categories"] == ["protective_equipment"] and crisis["to"] > crisis["from"]
    assert crisis["in_force_mid_period"] == [crisis["id"]]
    assert duty["shortage"]["substitutes"] == ["Paracetamol 500 mg tablet (second supplier)"]
    rationing = duty["rationing"]
    capped = {
        w: n
        for w, n in rationing["granted_by_ward"].items()
        if w not in rationing["priority_wards"]
    }
    assert capped and max(capped.values()) <= rationing["cap_per_ward_day"]
    assert "stock duty" in out and "rationing" in out
    # Verification: received packs verified, one alert, every opened or dispatched pack
    # decommissioned once at the national system.
    v = summary["verification"]
    assert v["verified_at_goods_in"] > 0 and v["blocked"] == 1
    assert [a.split(" ")[0] for a in v["alerts"]] == ["UNKNOWN_SERIAL"]
    assert v["decommissioned_opened"] > 0 and v["decommissioned_dispatched"] > 0
    assert v["system_decommissions"] == v["decommissioned_opened"] + v["decommissioned_dispatched"]
    assert v["system_repeats"] == [] and v["pending"] == 0
    # Ward supply: requisitions from the drug rooms reviewed, picked, dispatched and
    # received; the day is shorter here, so each room sends a part of its list.
    assert summary["drug_rooms"] == 15
    assert summary["ward_order_lines"] >= 30
    assert 0 < summary["ward_lines_delivered"] <= summary["ward_order_lines"]
    assert summary["ward_lines_short"] >= 1  # the short pick's back order
    assert summary["delivery_reliability"] is None or 0 <= summary["delivery_reliability"] <= 1
    ward = summary["ward_supply"]
    assert ward["duplicates"] == 1 and len(ward["refused"]) == 1
    assert "outside the hospital" in ward["refused"][0]
    assert ward["routine_approved"] > 0 and ward["decisions"] >= 1
    assert any(m.startswith("wrong lot") for m in ward["scans_refused"])
    assert ward["deviations"] == 1 and ward["urgent"] and ward["supplier_order"]

    verified = doseline("ledger", "verify", "--db", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Tampering with a cached balance is caught and named.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE balances SET on_hand = on_hand + 5 WHERE rowid = "
            "(SELECT min(rowid) FROM balances)"
        )
    tampered = doseline("ledger", "verify", "--db", url)
    assert tampered.returncode == 1
    assert "balance-mismatch" in tampered.stdout


def test_verify_refuses_an_unreadable_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    result = doseline("ledger", "verify", "--db", f"sqlite:///{junk}")
    assert result.returncode == 2
    assert "cannot be read" in result.stderr


def test_demo_refuses_a_bad_minutes_value() -> None:
    result = doseline("demo", "--minutes", "0")
    assert result.returncode == 2
    assert "--minutes must be above 0, got 0.0" in result.stderr


@pytest.mark.timeout(240)
def test_demo_on_postgresql(postgres_url: str) -> None:
    result = doseline("demo", "--minutes", "0.3", "--json", "--db", postgres_url, timeout=220)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["pouches_packed"] > 0 and summary["withdrawals"] > 0
    assert summary["ledger_verified"] is True and summary["open_reservations"] == 0
    assert summary["physical_mismatches"] == []
    assert summary["verification"]["system_repeats"] == []
    assert summary["order_status"] == "partial"
    verified = doseline("ledger", "verify", "--db", postgres_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
