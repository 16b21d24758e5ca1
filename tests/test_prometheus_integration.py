"""End to end: a real Prometheus scrapes the real monitor while a demo batch runs through the tracker CLI.

Then, through Prometheus' HTTP API: every dashboard panel query, every Grafana alert query and every
Prometheus rule (loaded into this Prometheus) parses, evaluates without error and returns data.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml
from conftest import PROJECT_ROOT, FakeClock, free_port, run_tracker_cli, wait_until

from utils.batch_tracker import BatchTracker, TrackerConfig

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(90)]

RULES = PROJECT_ROOT / "etc" / "prometheus" / "batch_completion_rules.yml"
DASHBOARD = PROJECT_ROOT / "grafana" / "batch_completion_dashboard.json"
GRAFANA_ALERTS = PROJECT_ROOT / "grafana" / "provisioning" / "alerting" / "batch_completion_alerts.yml"
MONITOR = PROJECT_ROOT / "bin" / "batch_completion_monitor.py"
JOB = "batch_completion_monitor"
STAGES = ["scrape", "enrich", "dedupe", "score", "mockup", "email"]
# Concrete values for Grafana's variables (the dashboard's time range is 7 days).
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "1h", "$__interval": "1s", "$job": ".*"}


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Process:
    """A background process whose output goes to a log file, for failure messages."""

    def __init__(self, command: list[str], log_path, **kwargs):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, url: str, what: str) -> None:
        wait_until(lambda: self.process.poll() is not None or http_ok(url), 20, message=what)
        assert self.process.poll() is None, f"{what}: exited early\n{self.log()}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


class Prometheus:
    def __init__(self, url: str, process: Process):
        self.url = url
        self.process = process

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400 on a parse error: the body says why
            return json.loads(error.read())

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def has_data(self, expr: str) -> list:
        answer = self.query(expr)
        return answer.get("status") == "success" and answer["data"]["result"]

    def wait_for(self, expr: str, what: str) -> list:
        return wait_until(lambda: self.has_data(expr), 20, 0.2, message=f"Prometheus to see {what} ({expr})")


def finite_values(result: list) -> list[float]:
    values = []
    for series in result:
        raw = series["value"][1] if "value" in series else series["values"][-1][1]
        if math.isfinite(float(raw)):
            values.append(float(raw))
    return values


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr.replace("{{", "").replace("}}", ""), f"unsubstituted variable in {expr}"
    return expr


@pytest.fixture
def binaries() -> dict:
    found = {name: shutil.which(name) for name in ("prometheus",)}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian package prometheus; bin/setup.sh --test)")
    return found


@pytest.fixture
def monitor(base_env, tmp_path):
    """The real completion monitor, serving /metrics on a free loopback port."""
    port = free_port()
    env = {
        **base_env,
        "METRICS_ADDR": "127.0.0.1",
        "METRICS_PORT": str(port),
        "BATCH_COMPLETION_CHECK_INTERVAL_SECONDS": "1",
        "BATCH_OUTBOX_DIR": str(tmp_path / "outbox"),
        "LOG_LEVEL": "INFO",
    }
    process = Process([sys.executable, str(MONITOR)], tmp_path / "monitor.log", env=env, cwd=PROJECT_ROOT)
    try:
        process.wait_ready(f"http://127.0.0.1:{port}/metrics", "the monitor's /metrics")
        yield port, process
    finally:
        process.stop()


@pytest.fixture
def prometheus(binaries, monitor, tmp_path):
    monitor_port, _ = monitor
    port = free_port()
    # The shipped rules, evaluated every second instead of every minute.
    rules = tmp_path / "batch_completion_rules.yml"
    rules.write_text(RULES.read_text().replace("interval: 1m", "interval: 1s"))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{monitor_port}"]}]},
                ],
            }
        )
    )
    process = Process(
        [
            binaries["prometheus"],
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        tmp_path / "prometheus.log",
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(url + "/-/ready", "Prometheus ready")
        server = Prometheus(url, process)
        server.wait_for(f'up{{job="{JOB}"}} == 1', "the monitor up")
        yield server
    finally:
        process.stop()


def cli(env: dict, *args: str) -> str:
    return run_tracker_cli(env, *args, cwd=PROJECT_ROOT, check=True).stdout.strip()


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def grafana_alert_queries() -> list[tuple[str, str]]:
    document = yaml.safe_load(GRAFANA_ALERTS.read_text())
    return [
        (f"Grafana alert {rule['title']!r}", step["model"]["expr"])
        for group in document["groups"]
        for rule in group["rules"]
        for step in rule["data"]
        if step["datasourceUid"] != "__expr__"
    ]


def record_past_nights(tracker_file, nights: int = 3) -> None:
    """Completed batches on the previous nights, so the running batch has a projected finish."""
    clock = FakeClock(time.time() - nights * 86_400 - 7_200)
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)), clock=clock)
    for _ in range(nights):
        tracker.start(STAGES)
        for stage in STAGES:
            tracker.stage(stage, 0)
            clock.advance(600)
            tracker.stage(stage, 100)
        tracker.end()
        clock.advance(86_400 - 600 * len(STAGES))


@pytest.fixture
def past_nights(tracker_file) -> int:
    record_past_nights(tracker_file)
    return 3


def test_it_serves_every_panel_and_alert_query_from_a_real_prometheus(past_nights, prometheus, monitor, base_env):
    env = base_env
    # A demo night: start, progress, cost, a failure the monitor alerts on, resume, completion.
    cli(env, "start", "--stages", ",".join(STAGES))
    prometheus.wait_for('anthrasite_batch_state{state="running"} == 1', "the running batch")
    prometheus.wait_for(f"anthrasite_batch_completion_time_seconds_count == {past_nights}", "the past nights")
    prometheus.wait_for("anthrasite_batch_projected_completion_timestamp_seconds", "the projected finish")
    cli(env, "stage", "scrape", "100")
    cli(env, "stage", "enrich", "40")
    cli(env, "cost", "--per-lead", "0.42", "--gpu-dollars", "1.25")
    cli(env, "fail", "--stage", "enrich", "--reason", "exit code 3")
    prometheus.wait_for('anthrasite_batch_state{state="failed"} == 1', "the failed batch")
    prometheus.wait_for('anthrasite_batch_alerts_sent_total{kind="failed"} >= 1', "the monitor's failure alert")
    wait_until(
        lambda: any(a["labels"]["alertname"] == "BatchFailed" for a in prometheus.api("alerts")["data"]["alerts"]),
        20,
        0.2,
        message="Prometheus' BatchFailed alert",
    )
    cli(env, "resume")
    for stage in STAGES:
        cli(env, "stage", stage, "100")
    cli(env, "cost", "--per-lead", "0.40", "--gpu-dollars", "0.75")
    cli(env, "end")
    prometheus.wait_for('anthrasite_batch_state{state="completed"} == 1', "the completed batch")
    prometheus.wait_for(
        f"anthrasite_batch_completion_time_seconds_count == {past_nights + 1}", "tonight's batch in the histogram"
    )
    prometheus.wait_for("anthrasite_batch_gpu_cost_dollars_total == 2", "the GPU spend")
    prometheus.wait_for("anthrasite_batch_monitor_last_check_timestamp_seconds", "the monitor's last check")

    problems = []
    for where, expr in dashboard_queries() + grafana_alert_queries():
        concrete = substitute(expr)
        answer = prometheus.query(concrete)
        if answer.get("status") != "success":
            problems.append(f"{where}: {answer.get('error')} in {concrete}")
        elif not finite_values(answer["data"]["result"]):
            problems.append(f"{where}: no data from {concrete}")
    assert not problems, "\n".join(problems) + "\n" + monitor[1].log()

    # The shipped rules, loaded by this Prometheus: all evaluated without error ...
    def evaluated_rules() -> list[dict]:
        groups = prometheus.api("rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules) else []

    rules = wait_until(evaluated_rules, 20, 0.2, message="every rule evaluated")
    assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], [r.get("lastError") for r in rules]
    for rule in rules:
        # ... every expression parses and runs as a query ...
        assert prometheus.query(rule["query"])["status"] == "success", rule["name"]
        # ... every recording rule produced a series ...
        if rule["type"] == "recording":
            assert prometheus.wait_for(rule["name"], f"recorded {rule['name']}"), rule["name"]
        # ... and every series an alert reads was there during the night (the alert itself fires
        # only when it should; the projected finish exists only while the batch runs).
        else:
            for name in set(re.findall(r"\b(anthrasite_batch_[a-z_]+|up)\b(?!\s*\()", rule["query"])):
                assert prometheus.has_data(f"last_over_time({name}[10m])"), f"{rule['name']}: no series {name}"

    # The batch completed, so the failure alert resolves (at the next evaluation), and neither the
    # deadline nor the missing-batch alert fired.
    def firing() -> set[str]:
        alerts = prometheus.api("alerts")["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    wait_until(lambda: "BatchFailed" not in firing(), 20, 0.2, message="BatchFailed to resolve")
    assert not firing() & {"BatchNotCompleteAtDeadline", "BatchNotStarted", "BatchMonitorDown"}
