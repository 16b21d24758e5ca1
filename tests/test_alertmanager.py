"""The Alertmanager channel against Debian's real prometheus-alertmanager (own config and storage in tmp_path,
cluster off, free ports; its webhook receiver is a local HTTP sink): firing, resolving, two monitors deduplicated,
Alertmanager down and back with nothing lost, re-posts while open."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from http_sink import HttpSink

from utils.alertmanager import REPOST_SECONDS, VALID_FOR_SECONDS, AlertmanagerTransport, alert, channel_name, labels
from utils.batch_tracker import BatchTracker
from utils.config import ConfigError, MonitorConfig, TrackerConfig
from utils.monitor import Monitor

pytestmark = pytest.mark.alertmanager

BATCH = "20261201T060000Z-am01"
AM_CONFIG = """\
route:
  receiver: sink
  group_by: [alertname, job, incident]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: sink
    webhook_configs:
      - url: {url}/alertmanager
        send_resolved: true
"""


def _binary() -> str:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is not installed; bin/setup.sh --test installs it")
    return binary


class Alertmanager:
    """A real Alertmanager on a free loopback port, HA cluster off, config and storage in ``directory``."""

    def __init__(self, directory, receiver_url: str):
        self.port = free_port()
        self.directory = directory
        (directory / "alertmanager.yml").write_text(AM_CONFIG.format(url=receiver_url))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Alertmanager:
        self.process = subprocess.Popen(
            [
                _binary(),
                f"--config.file={self.directory / 'alertmanager.yml'}",
                f"--storage.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ready, 20, message="alertmanager ready")
        return self

    def _ready(self) -> bool:
        assert self.process.poll() is None, "alertmanager exited"
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as response:
            return json.loads(response.read())


@pytest.fixture
def receiver():
    sink = HttpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def alertmanager(tmp_path, receiver):
    directory = tmp_path / "am"
    directory.mkdir()
    manager = Alertmanager(directory, receiver.url)
    yield manager
    manager.stop()


def notifications(receiver: HttpSink) -> list[dict]:
    """What Alertmanager sent its webhook receiver: one dict per notification."""
    return receiver.json_bodies("/alertmanager")


def firing_notifications(receiver: HttpSink) -> list[dict]:
    return [n for n in notifications(receiver) if n["status"] == "firing"]


def resolved_notifications(receiver: HttpSink) -> list[dict]:
    return [n for n in notifications(receiver) if n["status"] == "resolved"]


def make_monitor(tmp_path, name: str, am_url: str, *, email: bool = True) -> tuple[Monitor, BatchTracker]:
    """A monitor (real clock: Alertmanager judges endsAt by its own) on its own tracker copy and outbox."""
    tracker_config = TrackerConfig(tracker_file=str(tmp_path / name / "batch_tracker.json"), batch_name="nightly")
    config = MonitorConfig(
        tracker=tracker_config,
        outbox_dir=str(tmp_path / name / "outbox"),
        metrics_port=0,
        alertmanager_urls=(am_url,),
        status_page_url="https://status.example.com/",
        email_enabled=email,
    )
    return Monitor(config, early_warning=False), BatchTracker(tracker_config)


def fail_batch(tracker: BatchTracker) -> None:
    tracker.start(batch_id=BATCH)
    tracker.fail("enrich", "API quota exceeded")


def mirror(source: BatchTracker, target: BatchTracker) -> None:
    """Give ``target`` the batch files of ``source`` (not its monitor's state): a second host's view."""
    source_dir, target_dir = Path(source.path).parent, Path(target.path).parent
    target_dir.mkdir(parents=True, exist_ok=True)
    for path in source_dir.glob("batch_tracker*"):
        if path.is_file() and ".monitor." not in path.name and not path.name.endswith(".lock"):
            shutil.copy(path, target_dir / path.name)


def finish_batch(tracker: BatchTracker) -> None:
    tracker.resume()
    tracker.end()


def am_records(monitor: Monitor, state: str = "pending"):
    records = {"pending": monitor.outbox.pending, "sent": monitor.outbox.sent}[state]()
    return [r for r in records if r.channel.startswith("alertmanager@")]


def test_it_posts_a_firing_alert_and_then_resolves_it(tmp_path, alertmanager, receiver):
    alertmanager.start()
    monitor, tracker = make_monitor(tmp_path, "one", alertmanager.url)
    fail_batch(tracker)
    result = monitor.step()
    assert result.opened == (f"failed:{BATCH}",)
    assert {r.channel for r in monitor.outbox.sent()} == {"email", channel_name(alertmanager.url)}
    (posted,) = alertmanager.alerts()
    assert posted["labels"] == {
        "alertname": "BatchFailed",
        "job": "nightly",
        "batch_id": BATCH,
        "severity": "critical",
        "incident": f"failed:{BATCH}",
    }
    assert posted["annotations"]["summary"].startswith("[FAILED] nightly: batch " + BATCH)
    assert "API quota exceeded" in posted["annotations"]["description"]
    assert posted["annotations"]["status_page"] == "https://status.example.com/"
    assert posted["status"]["state"] == "active"
    (firing,) = wait_until(lambda: firing_notifications(receiver), message="firing notification")
    assert firing["alerts"][0]["labels"]["alertname"] == "BatchFailed"
    finish_batch(tracker)
    result = monitor.step()
    assert result.cleared == (f"failed:{BATCH}",)
    (resolved,) = wait_until(lambda: resolved_notifications(receiver), message="resolved notification")
    assert resolved["alerts"][0]["labels"]["incident"] == f"failed:{BATCH}"
    assert "completed after resume" in resolved["alerts"][0]["annotations"]["resolution"]
    assert alertmanager.alerts() == []  # resolved: no longer active
    assert len(firing_notifications(receiver)) == 1


def test_it_gives_one_notification_for_two_monitors_posting_the_same_incident(tmp_path, alertmanager, receiver):
    alertmanager.start()
    first, first_tracker = make_monitor(tmp_path, "host-a", alertmanager.url)
    second, second_tracker = make_monitor(tmp_path, "host-b", alertmanager.url, email=False)
    fail_batch(first_tracker)
    # The second host sees the same tracker (a copy: the same batch, the same failure).
    mirror(first_tracker, second_tracker)
    first.step()
    wait_until(lambda: firing_notifications(receiver), message="first monitor's notification")
    second.step()
    assert len(am_records(second, "sent")) == 1
    (posted,) = alertmanager.alerts()  # one alert: the same labels from both monitors
    assert posted["labels"]["incident"] == f"failed:{BATCH}"
    second.repost_alerts()
    first.repost_alerts()
    finish_batch(first_tracker)
    first.step()
    mirror(first_tracker, second_tracker)
    second.step()
    wait_until(lambda: resolved_notifications(receiver), message="resolved notification")
    # Every notification Alertmanager sent came before the resolved one: exactly one firing among them.
    assert [n["status"] for n in notifications(receiver)] == ["firing", "resolved"]


def test_it_loses_nothing_while_alertmanager_is_down_and_restores_it_after_a_restart(tmp_path, alertmanager, receiver):
    monitor, tracker = make_monitor(tmp_path, "one", alertmanager.url)
    fail_batch(tracker)
    result = monitor.step()  # Alertmanager is not running yet
    (waiting,) = am_records(monitor)
    assert waiting.attempts == 1 and "refused" in waiting.last_error.lower()
    assert [r.channel for r in result.delivery.delivered] == ["email"]  # e-mail is not held up
    alertmanager.start()
    report = monitor.outbox.deliver_due(monitor.channels, retry_waiting=True)  # the retry, without waiting 5 s
    assert [r.channel for r in report.delivered] == [channel_name(alertmanager.url)]
    wait_until(lambda: firing_notifications(receiver), message="firing notification after the outage")
    # Alertmanager keeps alerts in memory: a restart forgets them; the monitor's re-post brings it back.
    alertmanager.stop()
    alertmanager.start()
    assert alertmanager.alerts() == []
    assert monitor.repost_alerts() == 1
    assert [a["labels"]["incident"] for a in alertmanager.alerts()] == [f"failed:{BATCH}"]
    # The batch completes while Alertmanager is down: the resolving post waits, and goes when it is back.
    alertmanager.stop()
    finish_batch(tracker)
    monitor.step()
    assert [r.type for r in am_records(monitor)] == ["recovery"]
    alertmanager.start()
    monitor.outbox.deliver_due(monitor.channels, retry_waiting=True)
    assert am_records(monitor) == []
    wait_until(lambda: resolved_notifications(receiver), message="resolved notification after the outage")


def test_it_reposts_open_alerts_with_a_fresh_end_time(tmp_path, alertmanager):
    alertmanager.start()
    monitor, tracker = make_monitor(tmp_path, "one", alertmanager.url)
    fail_batch(tracker)
    monitor.step()
    (posted,) = alertmanager.alerts()
    ends = _epoch(posted["endsAt"])
    assert abs(ends - (time.time() + VALID_FOR_SECONDS)) < 30
    assert VALID_FOR_SECONDS >= 3 * REPOST_SECONDS  # three lost re-posts in a row are survived
    assert monitor.repost_due_in() > REPOST_SECONDS - 30  # the step's delivery pass re-posted already
    transport = monitor.channels[channel_name(alertmanager.url)]
    transport.clock = lambda: time.time() + 100  # a re-post 100 s later
    assert monitor.repost_alerts() == 1
    (reposted,) = alertmanager.alerts()
    assert _epoch(reposted["endsAt"]) > ends + 50
    assert reposted["startsAt"] == posted["startsAt"]
    finish_batch(tracker)
    monitor.step()
    assert monitor.repost_alerts() == 0 and alertmanager.alerts() == []


def _epoch(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- without a real Alertmanager


def test_it_keeps_firing_before_resolving_per_incident_at_the_http_level(tmp_path):
    """An Alertmanager that refuses (503) until both posts are queued gets them in order when it recovers."""
    sink = HttpSink().start()
    try:
        sink.mode = 503
        monitor, tracker = make_monitor(tmp_path, "one", sink.url, email=False)
        fail_batch(tracker)
        monitor.step()
        finish_batch(tracker)
        monitor.step()
        assert [r.type for r in am_records(monitor)] == ["alert", "recovery"]
        sink.mode = "ok"
        monitor.outbox.deliver_due(monitor.channels, retry_waiting=True)
        posts = [body[0] for body in sink.json_bodies("/api/v2/alerts")]
        delivered = posts[-2:]
        assert [p["labels"]["incident"] for p in delivered] == [f"failed:{BATCH}"] * 2
        assert _epoch(delivered[0]["endsAt"]) > time.time() and _epoch(delivered[1]["endsAt"]) <= time.time() + 1
    finally:
        sink.stop()


def test_it_labels_incidents_without_anything_host_specific():
    found = labels({"kind": "missing", "key": "1764583200.0", "summary": "s", "since": 0.0}, "weekly")
    assert found == {
        "alertname": "BatchMissing",
        "job": "weekly",
        "severity": "critical",
        "incident": "missing:1764583200.0",
    }
    assert labels({"kind": "at_risk", "key": "b", "batch_id": "b"}, "nightly")["severity"] == "warning"
    firing = alert({"kind": "late", "key": "b", "summary": "s", "since": 0.0, "batch_id": "b"}, job="nightly")
    assert "endsAt" not in firing and firing["startsAt"] == "1970-01-01T00:00:00+00:00"
    assert "generatorURL" not in firing


def test_it_posts_to_the_v2_api_path_whatever_the_url_says():
    assert AlertmanagerTransport("http://am.example.com:9093").describe() == "alertmanager http://am.example.com:9093"
    assert AlertmanagerTransport("http://am:9093/prefix/")._path == "/prefix/api/v2/alerts"
    assert AlertmanagerTransport("http://am:9093/api/v2/alerts")._path == "/api/v2/alerts"


def test_it_reads_several_alertmanagers_and_refuses_bad_urls():
    config = MonitorConfig.from_env({"ALERTMANAGER_URL": "http://am1:9093, https://am2.example.com"})
    assert config.alertmanager_urls == ("http://am1:9093", "https://am2.example.com")
    assert [channel_name(u) for u in config.alertmanager_urls] == [
        "alertmanager@am1:9093",
        "alertmanager@am2.example.com:443",
    ]
    for bad in ("am1:9093", "http://", "http://am1:port", "mailto:x@y"):
        with pytest.raises(ConfigError, match="ALERTMANAGER_URL"):
            MonitorConfig.from_env({"ALERTMANAGER_URL": bad})


def test_it_documents_a_working_alertmanager_route(tmp_path):
    """The user guide's route passes amtool's check and sends each alert where it says."""
    import re

    from conftest import PROJECT_ROOT

    guide = (PROJECT_ROOT / "docs" / "batch-completion-monitoring.md").read_text()
    section = guide[guide.index("A working route") :]
    route = tmp_path / "alertmanager.yml"
    route.write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is not installed (Debian package prometheus-alertmanager); bin/setup.sh --test installs it")

    def receiver_of(*label_values: str) -> str:
        result = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={route}", *label_values],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout.strip()

    check = subprocess.run(
        [amtool, "check-config", str(route)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert receiver_of("alertname=BatchMonitorHeartbeat", "severity=none") == "heartbeat"
    assert receiver_of("alertname=BatchFailed", "job=nightly", f"incident=failed:{BATCH}") == "oncall"
    assert receiver_of("alertname=Other") == "default"


def test_it_runs_the_service_with_alertmanager_only(tmp_path, base_env, alertmanager, receiver):
    """The real monitor process, e-mail off: a failure recorded by the hooks fires in Alertmanager, the
    resume and end resolve it, and no e-mail is written anywhere."""
    from conftest import PROJECT_ROOT, VENV_PYTHON, run_tracker_cli

    alertmanager.start()
    outbox = tmp_path / "outbox"
    env = {
        **base_env,
        "ALERTMANAGER_URL": alertmanager.url,
        "ALERT_EMAIL": "off",
        "BATCH_OUTBOX_DIR": str(outbox),
        "METRICS_PORT": "0",
    }
    process = subprocess.Popen(
        [VENV_PYTHON, str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_tracker_cli(env, "start", "--id", BATCH, check=True)
        run_tracker_cli(env, "fail", "--stage", "enrich", "--reason", "exit code 3", check=True)
        wait_until(lambda: firing_notifications(receiver), 20, message="firing notification via the service")
        assert [a["labels"]["batch_id"] for a in alertmanager.alerts()] == [BATCH]
        run_tracker_cli(env, "resume", check=True)
        run_tracker_cli(env, "end", check=True)
        wait_until(lambda: resolved_notifications(receiver), 20, message="resolved notification via the service")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "alertmanager http://127.0.0.1" in stderr and "(e-mail off)" in stderr
    stored = [json.loads(path.read_bytes()) for path in outbox.rglob("*.eml")]
    assert stored and all("labels" in entry for entry in stored)  # Alertmanager JSON only: no e-mail


def test_it_reposts_open_incidents_from_the_running_service_until_they_clear(tmp_path, monkeypatch):
    import threading

    from utils.service import Service

    sink = HttpSink().start()
    monkeypatch.setattr("utils.alertmanager.REPOST_SECONDS", 1.0)  # the delivery thread wakes for each re-post
    monitor, tracker = make_monitor(tmp_path, "one", sink.url, email=False)
    fail_batch(tracker)
    service = Service(monitor)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(sink.json_bodies("/api/v2/alerts")) >= 4, 20, message="the post and re-posts")
        finish_batch(tracker)

        def resolved() -> bool:
            posted = [a for body in sink.json_bodies("/api/v2/alerts") for a in body]
            return any(_epoch(a["endsAt"]) <= time.time() for a in posted)

        wait_until(resolved, 20, message="the resolving post")
        seen, mark = len(sink.requests()), time.monotonic()
        wait_until(lambda: monitor.reposter._posted_at > mark + 1.0, 20, message="re-post rounds after the resolve")
        assert len(sink.requests()) == seen  # nothing open: nothing re-posted, the resolved alert stays resolved
    finally:
        service.request_stop()
        thread.join(10)
        sink.stop()
