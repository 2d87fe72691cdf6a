"""The deployable stack in docker/: the compose file, Prometheus' configuration and
Grafana's provisioning hang together, and every dashboard query names real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.metrics import Metrics
from tests.promtool import promtool

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SERVICES = {"postgres", "plant", "controller", "prometheus", "grafana"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(DOCKER / "compose.yaml")


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [
        (p.name, json.loads(p.read_text(encoding="utf-8")))
        for p in sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
    ]


def known_series() -> set[str]:
    """Metric names the controller exports (with the histogram/counter suffixes
    Prometheus sees) and the recording rules' names."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for metric in Metrics().registry.collect():
        names.add(metric.name)
        names |= {metric.name + suffix for suffix in suffixes.get(metric.type, ())}
    for group in load(DOCKER / "prometheus" / "rules" / "doseline.yml")["groups"]:
        names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def test_the_stack_has_its_services_with_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if "image" in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image!r}"
        else:
            build = service["build"]
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name


def test_every_mounted_file_and_secret_exists_or_is_documented(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} undeclared"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} undeclared"
    for secret in compose["secrets"].values():
        path = secret["file"]
        assert path.startswith("./secrets/") and path.endswith(".txt")
        assert Path(path).name in (DOCKER / "secrets" / "README.md").read_text(encoding="utf-8")
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8")
    assert "docker/secrets/*.txt" in ignored  # passwords are never committed


def test_no_password_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    text = (DOCKER / "compose.yaml").read_text(encoding="utf-8")
    assert not re.search(r"PASSWORD\s*:\s*(?!.*_FILE)", text.replace("PASSWORD_FILE", ""))
    url = compose["services"]["controller"]["environment"]["DOSELINE_LEDGER_URL"]
    assert "@" in url and ":" not in url.split("//")[1].split("@")[0]  # a user, no password


def test_prometheus_scrapes_the_controller_where_it_serves_metrics(compose: dict[str, Any]) -> None:
    controller = compose["services"]["controller"]
    port = controller["environment"]["DOSELINE_METRICS_PORT"]
    network = controller["network_mode"]
    assert network.startswith("service:")
    host = network.split(":", 1)[1]
    published = [p.split(":")[-1] for p in compose["services"][host]["ports"]]
    assert port in published
    config = load(DOCKER / "prometheus" / "prometheus.yml")
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"{host}:{port}" in targets
    for rule_file in config["rule_files"]:
        assert (DOCKER / "prometheus" / rule_file).is_file()
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in mounts


def test_promtool_accepts_the_configuration() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    [source] = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    [provider] = load(provisioning / "dashboards" / "doseline.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    uids = [d["uid"] for _, d in dashboards()]
    assert len(uids) == len(set(uids)) == 4
    for name, board in dashboards():
        for panel in board["panels"]:
            if panel["type"] == "row":  # a row only heads the panels below it
                assert "targets" not in panel, f"{name}: row {panel['title']} queries"
                continue
            assert panel["datasource"]["uid"] == source["uid"], f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} queries nothing"
            for target in panel["targets"]:
                assert target["expr"].strip(), f"{name}: {panel['title']} has an empty query"
                assert target["datasource"]["uid"] == source["uid"]


def test_every_dashboard_query_names_metrics_that_exist() -> None:
    known = known_series()
    for name, board in dashboards():
        for panel in board["panels"]:
            for target in panel.get("targets", []):  # a row has none
                used = set(re.findall(r"doseline_[a-z0-9_:]+", target["expr"]))
                assert used, f"{name}: {panel['title']}: no doseline metric in {target['expr']}"
                assert used <= known, f"{name}: {panel['title']}: unknown {used - known}"
