"""One monitor, many jobs (utils/monitor_jobs.py and its wiring in service, metrics, HTTP and the pages).

Three jobs of a real jobs file in three zones, one southern-hemisphere and weekly, checked with an injected clock
against a real SMTP server on 127.0.0.1; the loop, /metrics and the pages over real HTTP; the entry point as a
subprocess.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import PROJECT_ROOT, VENV_PYTHON, free_port, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.config import MonitorConfig
from utils.jobs import load_jobs
from utils.mail_compose import parse_message
from utils.metrics import JobsMetricsCollector, register_jobs_metrics
from utils.monitor import Monitor
from utils.monitor_jobs import JobsMonitor
from utils.service import Service

MONITOR = str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py")
STAGES = ["scrape", "enrich", "score"]
JOBS_TOML = """
[jobs.leads]
deadline = "05:00"
timezone = "America/New_York"
expected_stages = ["scrape", "enrich", "score"]
recipients = ["leads-oncall@example.com"]

[jobs.rescore]
deadline = "06:00"
timezone = "Australia/Sydney"
days = ["sat"]
recipients = ["ml@example.com", "Data Science <ds@example.com>"]

[jobs.export]
deadline = "07:00"
timezone = "Europe/London"
"""


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


class Jobs:
    """A jobs file with three jobs, their trackers on one fake clock, and monitors over them sending to ``sink``."""

    def __init__(self, tmp_path, clock, sink, toml: str = JOBS_TOML):
        self.tmp_path, self.clock, self.sink = tmp_path, clock, sink
        (tmp_path / "jobs.toml").write_text(toml)
        self.env = {
            "BATCH_JOBS_FILE": str(tmp_path / "jobs.toml"),
            "BATCH_TRACKER_FILE": str(tmp_path / "data" / "batch_tracker.json"),
        }
        self.jobs = load_jobs(self.env)
        self.trackers = {job.name: BatchTracker(job.tracker, clock=clock) for job in self.jobs}

    def config(self, **changes) -> MonitorConfig:
        values = {
            "tracker": TrackerConfig(tracker_file=self.env["BATCH_TRACKER_FILE"]),
            "outbox_dir": str(self.tmp_path / "outbox"),
            "email_to": ("oncall@example.com",),
            "email_from": "leadfactory@example.com",
            "smtp_server": "127.0.0.1",
            "smtp_port": self.sink.port,
            "smtp_security": "plain",
            "smtp_timeout_seconds": 5.0,
            "metrics_port": 0,
            **changes,
        }
        return MonitorConfig(**values)

    def monitor(self, **changes) -> JobsMonitor:
        return JobsMonitor(self.config(**changes), self.jobs, clock=self.clock)

    def mails(self, job: str | None = None) -> list:
        return [m for m in self.sink.received() if job is None or m["X-Batch-Job"] == job]


@pytest.fixture
def world(tmp_path, clock, smtp_server) -> Jobs:
    return Jobs(tmp_path, clock, smtp_server)


def step_at(monitor: JobsMonitor, clock, instant: float):
    clock.set(instant)
    result = monitor.step()
    assert not result.errors, result.errors
    return result


def test_it_sends_each_job_its_own_alerts_once_naming_the_job(world):
    monitor = world.monitor()
    step_at(monitor, world.clock, utc("2026-10-01 22:00"))  # Thu 18:00 in New York: all watching, nothing due
    assert world.mails() == []

    leads = world.trackers["leads"]
    world.clock.set(utc("2026-10-02 05:00"))  # 01:00 EDT
    leads.start(STAGES)
    world.clock.set(utc("2026-10-02 05:30"))
    leads.fail("enrich", "exit code 3")
    # 06:30 UTC: leads has failed; export's 07:00 BST deadline (06:00 UTC) passed with no batch.
    result = step_at(monitor, world.clock, utc("2026-10-02 06:30"))
    assert result.results["leads"].opened and result.results["export"].opened
    assert not result.results["rescore"].opened and not result.ok and result.exit_code == 1
    mails = world.sink.wait_for(2)
    by_job = {m["X-Batch-Job"]: m for m in mails}
    assert sorted(by_job) == ["export", "leads"]
    assert str(by_job["leads"]["Subject"]).startswith("[FAILED] leads batch ")
    assert str(by_job["leads"]["To"]) == "leads-oncall@example.com"  # the job's own recipients
    assert (
        str(by_job["export"]["Subject"])
        == "[MISSING] no export batch started before the 07:00 BST deadline (Fri 2026-10-02)"
    )
    assert str(by_job["export"]["To"]) == "oncall@example.com"  # none of its own: ALERT_EMAIL_TO
    assert by_job["leads"]["X-Batch-Incident"].startswith("leads/failed:")
    assert "leads: failed: " in result.status_line() and "export: missing: " in result.status_line()

    step_at(monitor, world.clock, utc("2026-10-02 06:45"))  # nothing new: each alert went once
    assert len(world.mails()) == 2

    # The weekly job in Sydney: its Saturday 06:00 AEST deadline is Friday 20:00 UTC.
    step_at(monitor, world.clock, utc("2026-10-02 19:55"))
    assert world.mails("rescore") == []
    step_at(monitor, world.clock, utc("2026-10-02 20:05"))
    (missing,) = world.sink.wait_for(3) and world.mails("rescore")
    assert (
        str(missing["Subject"]) == "[MISSING] no rescore batch started before the 06:00 AEST deadline (Sat 2026-10-03)"
    )
    assert str(missing["To"]) == "ml@example.com, Data Science <ds@example.com>"


def test_it_alerts_a_weekly_job_only_on_its_day_across_a_dst_change(world):
    monitor = world.monitor()
    rescore = world.trackers["rescore"]
    step_at(monitor, world.clock, utc("2026-10-02 12:00"))
    world.clock.set(utc("2026-10-02 18:00"))  # Sat 04:00 AEST: this week's batch runs and completes on time
    rescore.start(STAGES)
    world.clock.set(utc("2026-10-02 19:00"))
    for stage in STAGES:
        rescore.stage(stage, 100)
    rescore.end()
    # Daily checks through the week, past Sydney's change to daylight time (Sun 4 Oct 02:00 AEST).
    for day in range(3, 10):
        step_at(monitor, world.clock, utc(f"2026-10-{day:02d} 18:30"))
    assert world.mails("rescore") == []  # no deadline on Sunday to Friday: nothing missing
    step_at(monitor, world.clock, utc("2026-10-09 19:05"))  # Sat 10 Oct 06:05 AEDT: this week's is missing
    world.sink.wait_for(1)
    wait_until(lambda: world.mails("rescore"), message="the rescore alert")
    (missing,) = world.mails("rescore")
    assert (
        str(missing["Subject"]) == "[MISSING] no rescore batch started before the 06:00 AEDT deadline (Sat 2026-10-10)"
    )


def test_it_keeps_two_jobs_with_the_same_incident_apart(tmp_path, clock, smtp_server):
    toml = '[jobs.a]\ndeadline = "05:00"\ntimezone = "UTC"\n\n[jobs.b]\ndeadline = "05:00"\ntimezone = "UTC"\n'
    world = Jobs(tmp_path, clock, smtp_server, toml)
    monitor = world.monitor()
    step_at(monitor, clock, utc("2026-11-23 00:00"))
    step_at(monitor, clock, utc("2026-11-23 05:01"))  # both miss the same deadline at the same check
    mails = smtp_server.wait_for(2)
    assert sorted(m["X-Batch-Job"] for m in mails) == ["a", "b"]
    assert len({m["Message-ID"] for m in mails}) == 2  # one id each: the outbox drops neither
    assert {m["X-Batch-Incident"] for m in mails} == {f"{job}/missing:{utc('2026-11-23 05:00'):.0f}" for job in "ab"}
    step_at(monitor, clock, utc("2026-11-23 05:30"))
    assert len(smtp_server.received()) == 2


def test_it_keeps_checking_the_other_jobs_when_one_cannot_be_read(world, caplog):
    monitor = world.monitor()
    step_at(monitor, world.clock, utc("2026-10-01 22:00"))
    state = monitor.by_name["leads"].config.monitor_state_file
    with open(state, "w") as handle:
        handle.write('{"schema_version": 99}')  # a newer release's state: a storage error, never overwritten
    world.clock.set(utc("2026-10-02 06:30"))
    result = monitor.step()
    assert list(result.errors) == ["leads"] and result.exit_code == 3
    assert "export" in result.results and world.sink.wait_for(1)[0]["X-Batch-Job"] == "export"
    healthy, why = monitor.health()
    assert not healthy and why.startswith("job leads: the last check failed: ")
    assert monitor.watchdog_health() == (True, "ok")  # systemd keeps it: a restart would not heal one job


def test_it_merges_every_jobs_series_into_one_family_each(world):
    for name, tracker in world.trackers.items():
        tracker.start(STAGES, batch_id=f"{name}-1")
        tracker.stage("scrape", 50)
    registry = CollectorRegistry()
    register_jobs_metrics(registry, jobs=[(t, None) for t in world.trackers.values()], clock=world.clock)
    text = generate_latest(registry).decode()
    assert text.count("# TYPE anthrasite_batch_state gauge") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    state = [(s.labels["batch"], s.labels["state"]) for s in families["anthrasite_batch_state"].samples if s.value]
    assert sorted(state) == [("export", "running"), ("leads", "running"), ("rescore", "running")]
    infos = {s.labels["batch"]: s.labels["batch_id"] for s in families["anthrasite_batch_info"].samples}
    assert infos == {"leads": "leads-1", "rescore": "rescore-1", "export": "export-1"}
    with pytest.raises(ValueError, match="each named once"):
        JobsMetricsCollector([])


# --------------------------------------------------------------------------- the loop and HTTP, for real


@contextlib.contextmanager
def running(monitor):
    service = Service(monitor)
    thread = threading.Thread(target=service.run, name="jobs-monitor-under-test")
    thread.start()
    try:
        wait_until(lambda: monitor.health()[0], timeout=5, message="every job's first check")
        yield f"http://127.0.0.1:{monitor.config.metrics_port}"
    finally:
        service.request_stop()
        thread.join(5)
    assert not thread.is_alive()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_it_serves_every_job_on_metrics_and_the_pages(world):
    step_at(world.monitor(), world.clock, utc("2026-10-02 04:00"))  # watching since before export's deadline
    world.clock.set(utc("2026-10-02 05:00"))
    world.trackers["leads"].start(STAGES, batch_id="leads-tonight")
    world.trackers["leads"].stage("scrape", 100)
    world.clock.set(utc("2026-10-02 06:30"))  # export has missed its deadline
    monitor = world.monitor(metrics_port=free_port())
    with running(monitor) as url:
        world.sink.wait_for(1)
        status, metrics = fetch(url + "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        for name in ("anthrasite_batch_completion_percentage", "anthrasite_batch_monitor_last_check_timestamp_seconds"):
            assert sorted(s.labels["batch"] for s in families[name].samples) == ["export", "leads", "rescore"]
        percentage = {s.labels["batch"]: s.value for s in families["anthrasite_batch_completion_percentage"].samples}
        assert percentage["leads"] == pytest.approx(100 / 3)
        opened = [s.labels for s in families["anthrasite_batch_open_incidents"].samples]
        assert opened == [{"batch": "export", "kind": "missing"}]
        (queued,) = families["anthrasite_batch_alerts_queued"].samples  # the one outbox, once, unlabelled
        assert queued.labels == {}

        status, page = fetch(url + "/")
        assert status == 200 and "<title>Batch jobs: PROBLEM</title>" in page
        for name in ("leads", "rescore", "export"):
            assert f'<a href="/jobs/{name}">{name}</a>' in page
        assert "deadline 06:00 Australia/Sydney, sat" in page and "33.3%" in page
        overview = json.loads(fetch(url + "/status.json")[1])
        lines = {line["name"]: line for line in overview["jobs"]}
        assert lines["leads"]["state"] == "running" and lines["leads"]["batch_id"] == "leads-tonight"
        assert lines["export"]["ok"] is False and lines["export"]["open_incidents"] == ["missing"]
        assert lines["rescore"]["days"] == ["sat"] and lines["rescore"]["ok"] is True
        assert lines["leads"]["next_deadline"]["timezone"] == "America/New_York"

        status, page = fetch(url + "/jobs/leads")
        assert status == 200 and "<title>Batch completion: leads: OK</title>" in page
        assert "leads-tonight" in page and '<a href="/jobs/leads/status.json">' in page and '<a href="/">' in page
        job = json.loads(fetch(url + "/jobs/export/status.json")[1])
        assert job["job"]["name"] == "export" and job["state"] == "none"
        assert [i["kind"] for i in job["monitor"]["open_incidents"]] == ["missing"]
        assert fetch(url + "/jobs/nope")[0] == 404 and fetch(url + "/jobs/../status.json")[0] == 404


def test_it_wakes_for_a_change_to_any_jobs_tracker_file(tmp_path, smtp_server):
    world = Jobs(tmp_path, time.time, smtp_server)
    monitor = world.monitor(check_interval_seconds=300, metrics_port=0)
    export = BatchTracker(world.jobs[2].tracker)
    export.start(STAGES)
    with running(monitor):
        export.fail("score", "exit code 9")  # the third job's file: the loop must notice it, not wait 300 s
        (mail,) = smtp_server.wait_for(1, timeout=5)
    assert mail["X-Batch-Job"] == "export" and str(mail["Subject"]).startswith("[FAILED] export batch ")


def test_it_keeps_one_job_without_a_jobs_file_as_before(tmp_path, clock, smtp_server):
    config = Jobs(tmp_path, clock, smtp_server).config(metrics_port=free_port())
    monitor = Monitor(config, clock=clock)
    assert monitor.monitors == (monitor,) and monitor.watched_paths == (config.tracker.tracker_file,)
    with running(monitor) as url:
        assert "<title>Batch completion: OK</title>" in fetch(url + "/")[1]
        assert json.loads(fetch(url + "/status.json")[1])["state"] == "none"
        assert json.loads(fetch(url + "/jobs/nightly/status.json")[1])["state"] == "none"
        assert fetch(url + "/jobs/other")[0] == 404
        assert 'anthrasite_batch_state{batch="nightly",state="none"} 1.0' in fetch(url + "/metrics")[1]


def test_it_checks_every_job_once_from_the_command_line(world, base_env):
    env = {**base_env, **world.env, "BATCH_OUTBOX_DIR": str(world.tmp_path / "outbox"), "METRICS_PORT": "0"}
    result = subprocess.run(
        [VENV_PYTHON, MONITOR, "--once"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("OK: leads: ") and " | rescore: " in line and " | export: " in line
    assert all((world.tmp_path / "data" / "jobs" / f"{name}.monitor.json").exists() for name in world.trackers)
    (world.tmp_path / "jobs.toml").write_text('[jobs.x]\ndays = ["someday"]\n')
    bad = subprocess.run([VENV_PYTHON, MONITOR, "--once"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "someday" in bad.stderr and bad.stdout == ""


def test_it_names_the_job_in_every_subject_of_one_job(world):
    monitor = world.monitor()
    step_at(monitor, world.clock, utc("2026-10-01 22:00"))
    leads = world.trackers["leads"]
    world.clock.set(utc("2026-10-02 05:00"))
    leads.start(STAGES)
    leads.fail("scrape", "boom")
    step_at(monitor, world.clock, utc("2026-10-02 05:10"))
    world.clock.set(utc("2026-10-02 05:20"))
    leads.resume()
    for stage in STAGES:
        leads.stage(stage, 100)
    leads.end()
    step_at(monitor, world.clock, utc("2026-10-02 05:30"))
    subjects = [str(m["Subject"]) for m in world.mails("leads")]
    assert len(subjects) == 2 and subjects[1].startswith("[RECOVERED] leads FAILED: ")
    raw = [parse_message(p.read_bytes()) for p in (world.tmp_path / "outbox").rglob("*.eml")]
    assert all(m["X-Batch-Job"] for m in raw)


def test_it_shows_skipped_and_paused_nights_on_a_jobs_page():
    from utils.status_page import render_jobs_page, render_status_page

    night = {"kind": "skipped", "date": "2026-12-24", "deadline_utc": "2026-12-24T10:00:00+00:00", "reason": "holiday"}
    status = {
        "now": "2026-12-20T12:00:00+00:00",
        "next_deadline": {"utc": "2026-12-21T10:00:00+00:00", "timezone": "America/New_York"},
        "excused": {"nights": [night], "pauses": []},
        "job": {"name": "leads", "deadline": "05:00", "timezone": "America/New_York", "days": ["sat"]},
    }
    page = render_status_page(status, json_path="/jobs/leads/status.json", home="/")
    assert "<h2>Skipped and paused nights</h2>" in page and "<td>holiday</td>" in page
    assert "Job leads: deadline 05:00 America/New_York, sat" in page
    assert "Skipped and paused" not in render_status_page({"excused": {"nights": [], "pauses": []}})
    line = {"name": "leads", "url": "/jobs/leads", "next_deadline": {**status["next_deadline"], "excused": True}}
    assert "(skipped or paused: no alert)" in render_jobs_page({"now": status["now"], "jobs": [line]})
