"""End to end: a real Prometheus scrapes the real monitor while a demo batch runs through the tracker CLI.

Prometheus runs the user guide's scrape configuration (job names and all; only the targets point at
this test's processes) and the shipped rules. Through Prometheus' HTTP API: every dashboard panel
query, every Grafana alert query and every Prometheus rule parses, evaluates without error and
returns data; nothing alerts while all is well; the monitor-down alert catches a stopped monitor;
with the monitor and a real Pushgateway both reporting the same batch, it alerts and counts once.
"""

from __future__ import annotations

import calendar
import json
import math
import os
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
from helpers import http_ok
from test_pushgateway import running_pushgateway

from utils.batch_tracker import BatchTracker, TrackerConfig

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.timeout(90)]

RULES = PROJECT_ROOT / "etc" / "prometheus" / "batch_completion_rules.yml"
DASHBOARD = PROJECT_ROOT / "grafana" / "batch_completion_dashboard.json"
GRAFANA_ALERTS = PROJECT_ROOT / "grafana" / "provisioning" / "alerting" / "batch_completion_alerts.yml"
MONITOR = PROJECT_ROOT / "bin" / "batch_completion_monitor.py"
GUIDE = PROJECT_ROOT / "docs" / "batch-completion-monitoring.md"
STAGES = ["scrape", "enrich", "dedupe", "score", "mockup", "email"]
# Concrete values for Grafana's variables (the dashboard's time range is 7 days).
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "1h", "$__interval": "1s", "$batch": ".*", "$host": ".*"}
MONITOR_PORT, PUSHGATEWAY_PORT = 9469, 9091


def guide_scrape_configs(monitor_target: str, pushgateway_target: str | None = None) -> list[dict]:
    """The user guide's ``scrape_configs`` as written, only each job's target swapped for this test's.

    The guide's monitor job (target port 9469) scrapes ``monitor_target``; its Pushgateway job (port
    9091) scrapes ``pushgateway_target``, or is left out without one. Everything else (job names,
    honor_labels) is the guide's.
    """
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    (block,) = [b for b in blocks if "scrape_configs:" in b]
    jobs = []
    for job in yaml.safe_load(block)["scrape_configs"]:
        ((target,),) = [c["targets"] for c in job["static_configs"]]
        port = int(target.rsplit(":", 1)[1])
        assert port in (MONITOR_PORT, PUSHGATEWAY_PORT), f"unexpected target {target} in the guide"
        replacement = monitor_target if port == MONITOR_PORT else pushgateway_target
        if replacement is not None:
            jobs.append({**job, "static_configs": [{"targets": [replacement]}]})
    return jobs


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


def start_prometheus(binary: str, tmp_path, scrape_configs: list[dict]) -> Prometheus:
    """A real Prometheus with the shipped rules (evaluated every second instead of every minute)."""
    port = free_port()
    rules = tmp_path / "batch_completion_rules.yml"
    rules.write_text(RULES.read_text().replace("interval: 1m", "interval: 1s"))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": scrape_configs,
            }
        )
    )
    process = Process(
        [
            binary,
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
    except BaseException:
        process.stop()
        raise
    return Prometheus(url, process)


@pytest.fixture
def prometheus(binaries, monitor, tmp_path):
    monitor_port, _ = monitor
    server = start_prometheus(binaries["prometheus"], tmp_path, guide_scrape_configs(f"127.0.0.1:{monitor_port}"))
    try:
        server.wait_for('anthrasite_batch_source_info{source="monitor"} == 1', "the monitor scraped")
        yield server
    finally:
        server.process.stop()


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


def panel_value(prometheus: Prometheus, title: str, ref_id: str = "A", at: float | None = None) -> float:
    """The single value a dashboard panel's query shows now (or at the instant ``at``)."""
    ((_, expr),) = [(w, e) for w, e in dashboard_queries() if w == f"panel {title!r} {ref_id}"]
    params = {} if at is None else {"time": f"{at:.3f}"}
    (value,) = finite_values(prometheus.api("query", query=substitute(expr), **params)["data"]["result"])
    return value


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


class PanelCheck:
    """Runs every dashboard and Grafana alert query at several moments of the night.

    Some panels have data only at some moments (the projected finish while the batch runs, open
    incidents while one is open): each query must never fail, and return data at least once.
    """

    def __init__(self, prometheus: Prometheus):
        self.prometheus = prometheus
        self.queries = dashboard_queries() + grafana_alert_queries()
        self.errors: list[str] = []
        self.answered: set[str] = set()

    def run(self) -> None:
        for where, expr in self.queries:
            concrete = substitute(expr)
            answer = self.prometheus.query(concrete)
            if answer.get("status") != "success":
                self.errors.append(f"{where}: {answer.get('error')} in {concrete}")
            elif finite_values(answer["data"]["result"]):
                self.answered.add(where)

    def problems(self) -> list[str]:
        silent = [f"{where}: no data at any moment from {substitute(expr)}" for where, expr in self.queries]
        return self.errors + [line for line in silent if line.split(":")[0] not in self.answered]


def test_it_serves_every_panel_and_alert_query_from_a_real_prometheus(past_nights, prometheus, monitor, base_env):
    env = base_env
    panels = PanelCheck(prometheus)
    # A demo night: start, progress, cost, a failure the monitor alerts on, resume, completion.
    cli(env, "start", "--stages", ",".join(STAGES))
    prometheus.wait_for('anthrasite_batch_state{state="running"} == 1', "the running batch")
    prometheus.wait_for(f"anthrasite_batch_completion_time_seconds_count == {past_nights}", "the past nights")
    prometheus.wait_for("anthrasite_batch_projected_completion_timestamp_seconds", "the projected finish")
    cli(env, "stage", "scrape", "100")
    cli(env, "stage", "enrich", "40")
    cli(env, "cost", "--per-lead", "0.42", "--gpu-dollars", "1.25")
    prometheus.wait_for("anthrasite_batch_cost_per_lead", "the cost per lead")
    panels.run()  # running: the projected finish
    cli(env, "fail", "--stage", "enrich", "--reason", "exit code 3")
    prometheus.wait_for('anthrasite_batch_state{state="failed"} == 1', "the failed batch")
    prometheus.wait_for('anthrasite_batch_alerts_sent_total{kind="failed"} >= 1', "the monitor's failure alert")
    prometheus.wait_for('anthrasite_batch_open_incidents{kind="failed"} == 1', "the open incident")
    panels.run()  # failed: the open incident
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

    prometheus.wait_for(
        f'anthrasite_batch_completed_total{{on_time="true"}} == {past_nights + 1}', "tonight's on-time completion"
    )
    panels.run()  # completed
    assert not panels.problems(), "\n".join(panels.problems()) + "\n" + monitor[1].log()
    # Each panel's number is the right one: one on-time batch of one, $2 of GPU spend (not a rate).
    assert panel_value(prometheus, "On-time rate") == 1.0
    assert panel_value(prometheus, "GPU spend in range") == pytest.approx(2.0, rel=0.2)

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


def evaluated_after(prometheus: Prometheus, instant: float) -> bool:
    """True when every rule group was last evaluated after ``instant`` (epoch seconds)."""
    groups = prometheus.api("rules")["data"]["groups"]
    stamps = [group.get("lastEvaluation", "") for group in groups]
    return bool(stamps) and all(
        stamp.startswith("2") and calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) > instant
        for stamp in stamps
    )


def alerts_of(prometheus: Prometheus, name: str | None = None) -> list[dict]:
    alerts = prometheus.api("alerts")["data"]["alerts"]
    return [a for a in alerts if name is None or a["labels"]["alertname"] == name]


def test_it_alerts_nothing_while_all_is_well_and_catches_a_stopped_monitor(past_nights, prometheus, monitor, base_env):
    monitor_port, monitor_process = monitor
    cli(base_env, "start", "--stages", ",".join(STAGES))
    cli(base_env, "stage", "scrape", "100")
    prometheus.wait_for('anthrasite_batch_stage_completion_percentage{stage="scrape"} == 100', "the progress")
    prometheus.wait_for("anthrasite_batch:deadline_remaining_seconds", "the recording rules on the monitor's data")
    # Rules evaluated (twice) on the monitor's data: nothing pending, nothing firing but the heartbeat.
    since = time.time() + 1
    wait_until(lambda: evaluated_after(prometheus, since), 20, 0.2, message="two more rule evaluations")
    assert [(a["labels"]["alertname"], a["state"]) for a in alerts_of(prometheus)] == [
        ("BatchMonitorHeartbeat", "firing")
    ]

    monitor_process.stop()
    (down,) = wait_until(lambda: alerts_of(prometheus, "BatchMonitorDown"), 20, 0.2, message="BatchMonitorDown")
    (guide_job,) = [job["job_name"] for job in guide_scrape_configs("x:1")]
    assert down["labels"]["job"] == guide_job and down["labels"]["instance"] == f"127.0.0.1:{monitor_port}"
    assert down["state"] == "pending"  # "for: 5m" as shipped; it fires if the monitor stays down
    # The failed scrape marks the monitor's series stale: the heartbeat stops, which a dead-man's switch notices.
    wait_until(lambda: not alerts_of(prometheus, "BatchMonitorHeartbeat"), 20, 0.2, message="the heartbeat to stop")
    assert [a["labels"]["alertname"] for a in alerts_of(prometheus)] == ["BatchMonitorDown"]


def test_it_alerts_and_counts_a_batch_once_when_the_monitor_and_a_pushgateway_both_report_it(
    past_nights, binaries, monitor, base_env, tmp_path
):
    monitor_port, _ = monitor
    (tmp_path / "gateway").mkdir()
    with running_pushgateway(tmp_path / "gateway") as gateway:
        gateway_target = gateway.removeprefix("http://")
        (tmp_path / "prometheus").mkdir()
        prometheus = start_prometheus(
            binaries["prometheus"],
            tmp_path / "prometheus",
            guide_scrape_configs(f"127.0.0.1:{monitor_port}", gateway_target),
        )
        try:
            env = {**base_env, "BATCH_PUSHGATEWAY_URL": gateway}  # the shared environment file sets it
            cli(env, "start", "--stages", ",".join(STAGES))
            # Both sources seen before any spend, so increase() sees the spend happen.
            prometheus.wait_for("count(anthrasite_batch_gpu_cost_dollars_total == 0) == 2", "both sources at $0")
            cli(env, "cost", "--gpu-dollars", "1.25")
            cli(env, "fail", "--stage", "scrape", "--reason", "exit code 3")
            # Both sources report the failed batch and its spend ...
            prometheus.wait_for('count(anthrasite_batch_state{state="failed"} == 1) == 2', "both sources failed")
            prometheus.wait_for("count(anthrasite_batch_gpu_cost_dollars_total == 1.25) == 2", "both sources' spend")
            sources = prometheus.query("anthrasite_batch_source_info")["data"]["result"]
            assert sorted(s["metric"]["source"] for s in sources) == ["monitor", "push"]
            # ... and it is one failure, one late-or-failed alert chain, $1.25 of spend.
            wait_until(lambda: alerts_of(prometheus, "BatchFailed"), 20, 0.2, message="BatchFailed")
            since = time.time() + 1
            wait_until(lambda: evaluated_after(prometheus, since), 20, 0.2, message="two more rule evaluations")
            (failed,) = alerts_of(prometheus, "BatchFailed")
            assert failed["labels"]["host"] == os.uname().nodename and failed["labels"]["batch"] == "nightly"
            # Spend in range: what one source shows (increase() extrapolates a few seconds of samples, so
            # compare at one instant with each source's own increase), not the sum of both.
            at = time.time()
            each = prometheus.api(
                "query", query="increase(anthrasite_batch_gpu_cost_dollars_total[1h])", time=f"{at:.3f}"
            )
            per_source = finite_values(each["data"]["result"])
            assert len(per_source) == 2 and min(per_source) >= 1.25
            assert panel_value(prometheus, "GPU spend in range", at=at) == pytest.approx(max(per_source))
            assert prometheus.wait_for("anthrasite_batch:gpu_cost_dollars:increase1d", "the recorded spend")
            assert len(prometheus.query("anthrasite_batch:gpu_cost_dollars:increase1d")["data"]["result"]) == 1
            assert panel_value(prometheus, "Batch state") == 1.0  # one state series, not one per source
        finally:
            prometheus.process.stop()


def test_it_alerts_per_job_when_one_monitor_watches_a_jobs_file(binaries, base_env, tmp_path):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[jobs.leads]\ndeadline = "05:00"\n\n[jobs.rescore]\ntimezone = "Australia/Sydney"\ndays = ["sat"]\n'
    )
    env = {**base_env, "BATCH_JOBS_FILE": str(jobs), "BATCH_OUTBOX_DIR": str(tmp_path / "outbox")}
    port = free_port()
    settings = {"METRICS_PORT": str(port), "BATCH_COMPLETION_CHECK_INTERVAL_SECONDS": "1"}
    monitor = Process([sys.executable, str(MONITOR)], tmp_path / "monitor.log", env={**env, **settings})
    (tmp_path / "prometheus").mkdir()
    try:
        monitor.wait_ready(f"http://127.0.0.1:{port}/metrics", "the jobs monitor's /metrics")
        prometheus = start_prometheus(
            binaries["prometheus"], tmp_path / "prometheus", guide_scrape_configs(f"127.0.0.1:{port}")
        )
        try:
            prometheus.wait_for('count(anthrasite_batch_source_info{source="monitor"}) == 2', "both jobs' series")
            for job in ("leads", "rescore"):
                cli({**env, "BATCH_NAME": job}, "start", "--stages", "load,score")
            cli({**env, "BATCH_NAME": "rescore"}, "fail", "--stage", "load", "--reason", "exit code 3")
            (failed,) = wait_until(lambda: alerts_of(prometheus, "BatchFailed"), 20, 0.2, message="BatchFailed")
            assert failed["labels"]["batch"] == "rescore"  # the job that failed, not the one still running
            # Two jobs behind one target: every rule, panel and Grafana alert query still runs (no
            # many-to-many match), and the per-job panels show each job.
            since = time.time() + 1
            wait_until(lambda: evaluated_after(prometheus, since), 20, 0.2, message="two more rule evaluations")
            groups = prometheus.api("rules")["data"]["groups"]
            assert [r["name"] for g in groups for r in g["rules"] if r["health"] != "ok"] == []
            for where, expr in dashboard_queries() + grafana_alert_queries():
                assert prometheus.query(substitute(expr))["status"] == "success", where
            ((_, state),) = [(w, e) for w, e in dashboard_queries() if w == "panel 'Batch state' A"]
            shown = prometheus.query(substitute(state))["data"]["result"]
            assert sorted((s["metric"]["batch"], s["metric"]["state"]) for s in shown) == [
                ("leads", "running"),
                ("rescore", "failed"),
            ]
        finally:
            prometheus.process.stop()
    finally:
        monitor.stop()
