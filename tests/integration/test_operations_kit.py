"""The operations kit checked by Prometheus's own promtool, and the metrics it reads, live.

* ``promtool check rules`` and ``promtool test rules`` on deploy/prometheus, and
  proof that those unit tests fail when an alert never fires or never clears;
* the dashboard's queries through Prometheus's parser;
* ``promtool check metrics`` on a real node's /metrics and on a real
  ``taskman dev``'s, which export the same families;
* the leader's cluster gauges the alerts read, on a real two-datacenter cluster.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from taskman import Client, TaskState
from taskman.lab import free_port
from tests.integration.cluster_support import wait_state, wait_until
from tests.integration.conftest import StartNode
from tests.integration.embedded_support import Dev
from tests.integration.promtool_support import run_promtool
from tests.integration.scrape_support import families, get, sample

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "taskman-alerts.yml"
RULE_TESTS = PROMETHEUS / "taskman-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "taskman-dashboard.json"
FAILURE = re.compile(r"alertname: (\w+), time: (\d+)m, \s*exp:\[(\]?)")


def _alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in result.stdout


def test_every_alert_fires_and_clears_in_promtool_unit_tests() -> None:
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _expected(fires: bool) -> set[tuple[str, int]]:
    """(alert, minute) of every evaluation whose unit test expects it firing, or quiet."""
    found = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in test["alert_rule_test"]:
            if bool(check.get("exp_alerts")) == fires:
                minute = int(str(check["eval_time"]).removesuffix("m"))
                found.add((check["alertname"], minute))
    return found


def _run_with_every_expr(tmp_path: Path, expr: str) -> tuple[set[tuple[str, int]], set[Any]]:
    """Run the unit tests against rules whose every expression is ``expr``.

    Returns the (alert, minute) failures where an alert was expected, and where none was.
    """
    tmp_path.mkdir()
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = expr
    (tmp_path / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    missed, unexpected = set(), set()
    for alert, minute, empty in FAILURE.findall(result.stdout + result.stderr):
        (unexpected if empty else missed).add((alert, int(minute)))
    return missed, unexpected


def test_the_unit_tests_catch_an_alert_that_never_fires_or_never_clears(tmp_path: Path) -> None:
    never_fires, _ = _run_with_every_expr(tmp_path / "never", "vector(1) < 0")
    assert never_fires == _expected(fires=True)
    _, never_clears = _run_with_every_expr(tmp_path / "always", "vector(1)")
    assert never_clears == _expected(fires=False)
    assert {alert for alert, _ in never_clears} == set(_alert_names())


def test_the_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    # promtool has no "check this expression": recording rules make it parse each one.
    dashboard = json.loads(DASHBOARD.read_text())
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$plugin", ".*")
            rules.append(
                {"record": f"dashboard:panel{panel['id']}_{target['refId']}", "expr": expr}
            )
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_metrics_rejects_a_bad_exposition() -> None:
    bad = "# HELP taskman_things Things.\n# TYPE taskman_things counter\ntaskman_things 1\n"
    result = run_promtool("check", "metrics", stdin=bad)
    assert result.returncode != 0 and "_total" in result.stdout + result.stderr


def _scrape_after_work(base: str, dsn: str) -> str:
    """Run one task, then the node's exposition once the leader has published its gauges."""
    with Client(dsn) as client:
        task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 2))
        wait_state(client, task_id, TaskState.SUCCEEDED)

    def scraped() -> str | None:
        status, text = get(base + "/metrics")
        assert status == 200
        return text if sample(text, "taskman_queue_depth", state="succeeded") >= 1 else None

    found: str = wait_until(scraped, 20, "the leader to publish its gauges", interval=0.5)
    return found


def test_a_node_and_taskman_dev_export_the_same_families_and_pass_promtool(
    start_node: StartNode, dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    start_node("a", metrics_address=f"127.0.0.1:{port}")
    node_text = _scrape_after_work(f"http://127.0.0.1:{port}", dsn)
    dev = Dev(tmp_path / "dev.sqlite3", free_port())
    try:
        dev_text = _scrape_after_work(f"http://127.0.0.1:{dev.port}", f"sqlite:///{dev.db}")
    finally:
        dev.stop()
    for name, text in (("node", node_text), ("taskman dev", dev_text)):
        result = run_promtool("check", "metrics", stdin=text)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), name
    assert families(dev_text) == families(node_text)
    assert "taskman_nodes_live" in families(node_text)
    assert sample(node_text, "taskman_nodes_live", datacenter="dc1") == 1
    assert sample(dev_text, "taskman_nodes_live", datacenter="local") == 1
    # Known label values are exported at 0 before their first event (docs/operations.md).
    assert "taskman_fenced_writes_total" in node_text
    assert 'taskman_fenced_writes_total{write="heartbeat"} 0.0' in node_text
    assert 'taskman_attempt_duration_seconds_count{outcome="crashed",plugin="demo"} 0.0' in (
        node_text
    )


def test_the_leader_reports_a_datacenter_left_without_nodes_and_the_oldest_wait(
    start_node: StartNode, client: Client
) -> None:
    port = free_port()
    start_node("a", metrics_address=f"127.0.0.1:{port}")  # the first node leads
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: sample(get(url)[1], "taskman_is_leader") == 1, 20, "a to lead")
    other = start_node("b", datacenter="dc2")

    def live(datacenter: str, count: int) -> bool:
        return sample(get(url)[1], "taskman_nodes_live", datacenter=datacenter) == count

    wait_until(lambda: live("dc2", 1), 20, "the leader to count dc2's node", interval=0.5)
    other.stop(timeout=15)
    wait_until(lambda: live("dc2", 0), 20, "dc2 to read 0, not vanish", interval=0.5)
    assert live("dc1", 1)
    # Pinned to dc2, which has no node now: it waits, and the leader says for how long.
    task_id = client.submit("demo.tasks:add", plugin="demo", args=(1, 1), datacenter="dc2")
    age = wait_until(
        lambda: sample(get(url)[1], "taskman_oldest_queued_age_seconds") or None,
        20,
        "the leader to publish the oldest queued task's wait",
        interval=0.5,
    )
    assert 0 < age < 60
    assert client.get(task_id).state is TaskState.QUEUED
