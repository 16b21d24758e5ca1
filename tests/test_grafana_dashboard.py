"""Structure of the Grafana dashboard and of the provisioning files (datasource, dashboards, alert rules)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import PROJECT_ROOT

from utils.metrics import exported_sample_names

GRAFANA = PROJECT_ROOT / "grafana"
DASHBOARD = GRAFANA / "batch_completion_dashboard.json"
PROVISIONING = GRAFANA / "provisioning"
REQUIRED_PANELS = {
    "Overall completion": "anthrasite_batch_completion_percentage",
    "Stage completion": "anthrasite_batch_stage_completion_percentage",
    "Time left to deadline": "anthrasite_batch_deadline_timestamp_seconds",
    "Time since last success": "anthrasite_batch_last_success_timestamp_seconds",
    "Batch duration (p50 / p95 over 7 days)": "histogram_quantile(0.95",
    "On-time rate": 'anthrasite_batch_completed_total{on_time="true"}',
    "Batches completed": "anthrasite_batch_completed_total",
    "Cost per lead": "anthrasite_batch_cost_per_lead",
    "GPU spend per day": "increase(anthrasite_batch_gpu_cost_dollars_total[1d])",
    "GPU spend in range": "increase(anthrasite_batch_gpu_cost_dollars_total[$__range])",
    "Alerts sent by kind": "anthrasite_batch_alerts_sent_total",
    "Projected finish vs deadline": "anthrasite_batch_projected_completion_timestamp_seconds",
    "Open incidents": "anthrasite_batch_open_incidents",
    "Batch state": "anthrasite_batch_state",
    "Alert outbox": "anthrasite_batch_alerts_oldest_queued_age_seconds",
}
REQUIRED_GRAFANA_ALERTS = {
    "Batch not complete at deadline",
    "Batch failed",
    "High cost per lead",
    "High GPU cost",
    "Alert e-mails stuck",
}
SOURCE_JOIN = "* on (job, instance, batch) group_left (host) anthrasite_batch_source_info"
# The outbox gauges are the monitor's, one outbox for all its jobs (no batch label): joined to its hosts only.
OUTBOX_JOIN = "* on (job, instance) group_left (host) group by (job, instance, host) (anthrasite_batch_source_info"
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def data_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_it_is_a_grafana_10_dashboard(dashboard):
    assert dashboard["schemaVersion"] >= 38
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None  # importable anywhere
    assert "__inputs" not in dashboard  # no import-time datasource prompt: the variable does the job


def test_it_has_unique_panel_ids(dashboard):
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids))


def test_it_places_every_panel_on_the_grid_without_overlap(dashboard):
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"}, panel["title"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in grid), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


def test_it_takes_the_datasource_from_a_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in data_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    assert variables["batch"]["datasource"] == expected and variables["host"]["datasource"] == expected


def test_it_has_the_required_panels(dashboard):
    panels = {panel["title"]: panel for panel in data_panels(dashboard)}
    for title, needle in REQUIRED_PANELS.items():
        assert title in panels, title
        assert any(needle in target["expr"] for target in panels[title]["targets"]), title
    p50 = [t["expr"] for t in panels["Batch duration (p50 / p95 over 7 days)"]["targets"]]
    assert any(expr.startswith("histogram_quantile(0.5,") for expr in p50)


def test_it_gives_every_target_a_unique_ref_id_and_a_query(dashboard):
    for panel in data_panels(dashboard):
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_it_queries_only_exported_metrics(dashboard):
    exported = exported_sample_names()
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            for name in re.findall(r"\banthrasite_batch_[a-z_]+", target["expr"]):
                assert name in exported, f"{panel['title']}: {name}"


def test_it_provisions_a_prometheus_datasource_with_the_uid_the_alerts_use():
    document = yaml.safe_load((PROVISIONING / "datasources" / "anthrasite_prometheus.yml").read_text())
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "anthrasite-prometheus"
    assert source["url"].startswith("http")


def test_it_provisions_the_dashboard_from_files():
    document = yaml.safe_load((PROVISIONING / "dashboards" / "anthrasite_batch_completion.yml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def grafana_rules() -> list[dict]:
    document = yaml.safe_load((PROVISIONING / "alerting" / "batch_completion_alerts.yml").read_text())
    assert document["apiVersion"] == 1
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_it_provisions_the_grafana_alert_rules():
    rules = grafana_rules()
    assert {rule["title"] for rule in rules} == REQUIRED_GRAFANA_ALERTS
    uids = [rule["uid"] for rule in rules]
    assert len(uids) == len(set(uids)) and all(len(uid) <= 40 for uid in uids)
    for rule in rules:
        steps = {step["refId"]: step for step in rule["data"]}
        assert rule["condition"] in steps, rule["title"]
        query = steps["A"]
        assert query["datasourceUid"] == "anthrasite-prometheus"
        assert query["model"]["expr"].strip()
        assert steps["B"]["model"] | {"type": "reduce", "expression": "A"} == steps["B"]["model"]
        assert steps["C"]["model"]["type"] == "threshold" and steps["C"]["model"]["expression"] == "B"
        for step in ("B", "C"):
            assert steps[step]["datasourceUid"] == "__expr__"
        assert rule["noDataState"] in {"OK", "NoData", "Alerting"}
        assert rule["execErrState"] in {"OK", "Error", "Alerting"}
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]


def test_it_uses_only_exported_metrics_in_grafana_alerts():
    exported = exported_sample_names()
    for rule in grafana_rules():
        expr = next(step for step in rule["data"] if step["refId"] == "A")["model"]["expr"]
        for name in re.findall(r"\banthrasite_batch_[a-z_]+", expr):
            assert name in exported, f"{rule['title']}: {name}"


def test_it_counts_each_batch_once_whichever_sources_report_it(dashboard):
    # Monitor and Pushgateway both export the same tracker's series: every query joins them to their
    # source and aggregates by batch/host, and filters by the dashboard's batch/host, never a job name.
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            join = OUTBOX_JOIN if "anthrasite_batch_alerts_" in expr and "_total" not in expr else SOURCE_JOIN
            assert join + '{batch=~"$batch", host=~"$host"}' in expr, panel["title"]
            assert "job=" not in expr and "$job" not in expr, panel["title"]


def test_it_shows_spend_as_dollars_and_the_on_time_rate_as_a_share_of_batches(dashboard):
    exprs = " ".join(t["expr"] for p in data_panels(dashboard) for t in p["targets"])
    assert "rate(anthrasite_batch_gpu_cost_dollars_total" not in exprs  # not $/h after a single record
    assert "avg_over_time(anthrasite_batch_completion_success" not in exprs  # not weighted by time


def test_it_joins_every_grafana_alert_query_to_its_source():
    for rule in grafana_rules():
        expr = next(step for step in rule["data"] if step["refId"] == "A")["model"]["expr"]
        if "anthrasite_batch_alerts_" in expr:  # the shared outbox: one alert per monitor host
            assert " ".join(expr.split()).count(OUTBOX_JOIN) == 1 and "max by (host)" in expr, rule["title"]
            continue
        assert " ".join(expr.split()).count(SOURCE_JOIN) == 1, rule["title"]
        assert "max by (batch, host)" in expr, rule["title"]


def test_it_has_a_job_variable_and_names_the_job_in_every_per_job_series(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    job = variables["batch"]  # the job's name is the label "batch" (see etc/prometheus/batch_completion_rules.yml)
    assert job["label"].startswith("Job") and job["multi"] and job["includeAll"]
    assert job["query"] == "label_values(anthrasite_batch_source_info, batch)"
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            if "max by (batch, host" in target["expr"] and "{{host}}" in target.get("legendFormat", "{{host}}"):
                assert "{{batch}}" in target["legendFormat"], panel["title"]
