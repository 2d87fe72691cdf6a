"""The Prometheus rules in docker/prometheus/rules: promtool checks them and runs their
unit tests, and every metric, label and PackML state they name exists in `Metrics`.

promtool comes from Debian's `prometheus` package. When it is missing the tests run
`.ci/install-prometheus`; when that cannot install it they skip with the reason,
except under CI=true, where they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.metrics import OEE_RUNNING_STATES, OEE_UNPLANNED_STATES, Metrics, state_label
from drivers.base import PackMLState
from tests.promtool import promtool as find_promtool

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "docker" / "prometheus" / "rules"
RULES = RULES_DIR / "doseline.yml"
RULE_TESTS = RULES_DIR / "doseline_test.yml"

# Install time is allowed for; promtool itself answers in well under a second.
pytestmark = pytest.mark.timeout(900)

NAME = re.compile(r"\b(doseline_[a-zA-Z0-9_:]*)")
SELECTOR = re.compile(r"\b(doseline_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_promtool()


def _run(promtool: str, *args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _exposed_names(metrics: Metrics) -> dict[str, str]:
    """Every sample name the registry can expose -> the family it belongs to."""
    names: dict[str, str] = {}
    for family in metrics.registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }[family.type]
        for suffix in suffixes:
            names[family.name + suffix] = family.name
    return names


def _label_names(metrics: Metrics) -> dict[str, set[str]]:
    """Family name -> its label names (a test may look inside the client's objects)."""
    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        describe = getattr(value, "describe", None)
        if describe is None or not hasattr(value, "_labelnames"):
            continue
        (family,) = describe()
        out[family.name] = set(value._labelnames)
    return out


# ---------------------------------------------------------------------------- promtool


def test_promtool_checks_the_rules(promtool: str) -> None:
    proc = _run(promtool, "check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    proc = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("PackerAborted", "doseline_packer_state == 9", "doseline_packer_state == 8"),
        ("PackerHeldTooLong", "for: 15m", "for: 10m"),
        ("ReservationStuck", "> 1800", "> 3600"),
    ],
)
def test_promtool_unit_tests_catch_a_changed_rule(
    promtool: str, tmp_path: Path, alert: str, old: str, new: str
) -> None:
    """The unit tests pin the rules down: a changed threshold, state or duration fails."""
    text = RULES.read_text(encoding="utf-8")
    start = text.index(f"- alert: {alert}")
    end = text.find("- alert:", start + 1)
    end = len(text) if end < 0 else end
    assert old in text[start:end]
    changed = text[:start] + text[start:end].replace(old, new, 1) + text[end:]
    (tmp_path / RULES.name).write_text(changed, encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert f"alertname: {alert}" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- structure


def test_every_alert_has_severity_duration_and_annotations() -> None:
    alerts = _alerts()
    assert set(alerts) == {
        "PackerAborted",
        "PackerHeldTooLong",
        "CabinetOffline",
        "PocketEmpty",
        "TemperatureExcursion",
        "ProductBelowObligation",
        "LotExpiring",
        "DiscrepancyOpen",
        "StockMetricsStale",
        "ReservationStuck",
        "WardDeliveryReliabilityBelowTarget",
        "ProductBelowObligationInCrisis",
        "PreparednessBelowFloor",
        "ExemptionReviewOverdue",
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    # The rule states the brief: Held for 15 minutes, offline for 2, an hour open...
    assert alerts["PackerHeldTooLong"]["for"] == "15m"
    assert alerts["CabinetOffline"]["for"] == "2m"
    assert alerts["PocketEmpty"]["for"] == "10m"
    assert alerts["ReservationStuck"]["for"] == "5m"
    assert alerts["DiscrepancyOpen"]["for"] == "1h"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == set(_alerts())
    assert quiet == set(_alerts())


def test_every_recording_rule_is_tested() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    tested = {
        check["expr"]
        for case in _load(RULE_TESTS)["tests"]
        for check in case.get("promql_expr_test", [])
    }
    assert recorded and recorded <= tested


# ---------------------------------------------------------------------------- names


def test_metric_names_in_rules_and_tests_exist_in_metrics() -> None:
    exposed = _exposed_names(Metrics())
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    used = {m for rule in _rules() for m in NAME.findall(rule["expr"])}
    used |= {
        NAME.findall(series["series"])[0]
        for case in _load(RULE_TESTS)["tests"]
        for series in case.get("input_series", [])
    }
    assert used, "no doseline_ metric found in the rules"
    unknown = sorted(n for n in used if n not in exposed and n not in recorded)
    assert unknown == []
    # recorded series keep the level:metric:operations form and are not raw metrics
    assert all(n.count(":") == 2 and n not in exposed for n in recorded)


def test_label_names_in_rules_exist_on_their_metrics() -> None:
    metrics = Metrics()
    exposed = _exposed_names(metrics)
    labels = _label_names(metrics)
    texts = [rule["expr"] for rule in _rules()]
    texts += [
        series["series"]
        for case in _load(RULE_TESTS)["tests"]
        for series in case.get("input_series", [])
    ]
    checked = 0
    for text in texts:
        for name, inner in SELECTOR.findall(text):
            family = exposed[name]
            for label, _op, _value in MATCHER.findall(inner):
                if label == "instance":  # added by the scrape
                    continue
                assert label in labels[family], f"{name} has no label {label!r}"
                checked += 1
    assert checked > 10


def test_state_labels_in_rules_are_packml_names_and_match_the_oee_definition() -> None:
    """The recording rules' PromQL and `PackerOEE` define OEE the same way."""
    known = {state_label(s) for s in PackMLState}
    seen: list[tuple[str, str]] = []
    for rule in _rules():
        for name, inner in SELECTOR.findall(rule["expr"]):
            if name != "doseline_packer_state_seconds_total":
                continue
            for label, op, value in MATCHER.findall(inner):
                if label == "state":
                    seen.append((op, value))
                    assert set(value.split("|")) <= known, value
    assert ("=", "Execute") in seen
    assert {state_label(s) for s in OEE_RUNNING_STATES} == {"Execute"}
    excluded = {value for op, value in seen if op == "!~"}
    assert len(excluded) == 1
    assert set(excluded.pop().split("|")) == {state_label(s) for s in OEE_UNPLANNED_STATES}


def test_packml_numbers_in_rules() -> None:
    alerts = _alerts()
    assert (
        alerts["PackerAborted"]["expr"].strip()
        == f"doseline_packer_state == {PackMLState.ABORTED.value}"
    )
    assert (
        alerts["PackerHeldTooLong"]["expr"].strip()
        == f"doseline_packer_state == {PackMLState.HELD.value}"
    )


# ---------------------------------------------------------------------------- docs


def test_every_metric_and_alert_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(doseline_[a-z0-9_]+)`", doc, flags=re.MULTILINE))
    # a counter is documented by its _total name, the others by their family name
    expected = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
    }
    assert documented == expected
    alerts_documented = set(re.findall(r"^\| ([A-Z][A-Za-z]+) \|", doc, flags=re.MULTILINE))
    assert set(_alerts()) <= alerts_documented
