"""The operations kit (deploy/): alerting rules, their promtool tests and the dashboard.

What promtool itself cannot know: that every metric they read is one taskman
exports, that each alert's runbook link lands on a section of docs/operations.md,
and that the unit tests make every alert both fire and clear. promtool runs in
tests/integration/test_operations_kit.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from taskman.cluster.leadership import REMEMBER_DATACENTER
from taskman.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "taskman-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "taskman-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "taskman-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\b(taskman_[a-z_]+)\b")
# Prometheus's own series that the rules may read besides taskman's.
PROMETHEUS_SERIES = {"up"}


def exported_series() -> set[str]:
    """Every series name a node can export: counters end in _total, histograms have 3."""
    names = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    sections = anchors(OPERATIONS.read_text())
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names)) >= 8
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor == name.lower(), name
        assert anchor in sections, f"{name}: docs/operations.md has no section {anchor}"


def test_the_rules_and_the_dashboard_read_only_metrics_taskman_exports() -> None:
    exported = exported_series()
    rule_names = {m for rule in alerts() for m in METRIC.findall(rule["expr"])}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    dashboard_names = {m for expr in exprs for m in METRIC.findall(expr)}
    assert rule_names - exported == set()
    assert dashboard_names - exported == set()
    # Every alert-relevant family is on the dashboard too.
    assert rule_names <= dashboard_names
    for rule in alerts():
        other = set(re.findall(r"\b([a-z_]+)\{", rule["expr"])) - exported
        assert other <= PROMETHEUS_SERIES, rule["alert"]


def _evaluations() -> dict[str, list[tuple[int, int, bool]]]:
    """Alert name -> (test group, minute, fires?) of each evaluation its unit tests make."""
    found: dict[str, list[tuple[int, int, bool]]] = {}
    for group, test in enumerate(yaml.safe_load(RULE_TESTS.read_text())["tests"]):
        for check in test.get("alert_rule_test", []):
            minute = int(str(check["eval_time"]).removesuffix("m"))
            fires = bool(check.get("exp_alerts"))
            found.setdefault(check["alertname"], []).append((group, minute, fires))
    return found


def test_the_unit_tests_make_every_alert_fire_and_then_clear() -> None:
    evaluations = _evaluations()
    assert set(evaluations) == {rule["alert"] for rule in alerts()}
    for name, checks in evaluations.items():
        cleared_after_firing = [
            (g, m)
            for g, m, fires in checks
            if fires and any(g2 == g and m2 > m and not f2 for g2, m2, f2 in checks)
        ]
        quiet_before_firing = [
            (g, m)
            for g, m, fires in checks
            if fires and any(g2 == g and m2 < m and not f2 for g2, m2, f2 in checks)
        ]
        assert cleared_after_firing, f"{name}: no test sees it clear after firing"
        assert quiet_before_firing, f"{name}: no test sees it quiet before firing"


def test_the_datacenter_rule_looks_back_as_long_as_the_leader_remembers() -> None:
    (rule,) = [r for r in alerts() if r["alert"] == "TaskmanDatacenterWithoutNodes"]
    (window,) = re.findall(r"taskman_nodes_live\[(\d+)([dh])\]", rule["expr"])
    seconds = int(window[0]) * {"d": 86400, "h": 3600}[window[1]]
    assert seconds == REMEMBER_DATACENTER


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
