"""Pushing batch metrics from the tracker CLI to a real Prometheus Pushgateway on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import PROJECT_ROOT, free_port, run_tracker_cli, wait_until
from helpers import http_ok
from prometheus_client.parser import text_string_to_metric_families

from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.metrics import host_name
from utils.pushgateway import PushError, build_registry, push_batch_metrics

pytestmark = pytest.mark.prometheus

HOST = os.uname().nodename


def pushgateway_binary() -> str:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway is not installed (Debian package prometheus-pushgateway)")
    return binary


def pushgateway_command(binary: str, port: int, directory) -> list[str]:
    """The gateway's command line, its persistence file inside ``directory``.

    Debian's build defaults --persistence.file to /var/lib/prometheus/pushgateway.data: a
    gateway started without the flag loads the system gateway's pushes and writes the test's
    pushes back into that file when it stops.
    """
    return [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={directory / 'pushgateway.data'}",
        "--log.level=warn",
    ]


@contextlib.contextmanager
def running_pushgateway(directory):
    """A real prometheus-pushgateway on a free loopback port, state in ``directory``; yields its URL."""
    port = free_port()
    log = open(directory / "pushgateway.log", "wb")
    process = subprocess.Popen(pushgateway_command(pushgateway_binary(), port, directory), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or http_ok(url + "/-/ready"), 15, message="pushgateway ready")
        assert process.poll() is None, (directory / "pushgateway.log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def pushgateway(tmp_path):
    """A real prometheus-pushgateway on a free loopback port, persisting into tmp_path; yields its URL."""
    with running_pushgateway(tmp_path) as url:
        yield url


NIGHTLY = {"batch": "nightly"}  # the job's name, on every batch series


def gateway_samples(url: str) -> dict:
    """``{(name, frozenset(labels)): value}`` of the anthrasite_batch_* samples the gateway exposes."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("anthrasite_batch_"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    # Every pushed series carries the job's name as "batch", as the monitor's do; the group key has it as "job".
    return samples.get((name, frozenset({"job": "nightly", "instance": HOST, "batch": "nightly", **labels}.items())))


def cli(env, *args):
    return run_tracker_cli(env, *args, cwd=PROJECT_ROOT)


def test_it_pushes_every_hook_event_to_the_gateway(base_env, pushgateway):
    env = {**base_env, "BATCH_PUSHGATEWAY_URL": pushgateway}
    start = cli(env, "start", "--stages", "scrape,enrich")
    assert start.returncode == 0, start.stderr
    assert start.stderr == ""
    batch_id = start.stdout.strip()
    samples = gateway_samples(pushgateway)
    assert value(samples, "anthrasite_batch_state", state="running") == 1.0
    assert value(samples, "anthrasite_batch_info", batch_id=batch_id, host=HOST) == 1.0

    assert cli(env, "stage", "scrape", "100").returncode == 0
    assert cli(env, "stage", "enrich", "50").returncode == 0
    samples = gateway_samples(pushgateway)
    assert value(samples, "anthrasite_batch_stage_completion_percentage", stage="enrich") == 50.0
    assert value(samples, "anthrasite_batch_completion_percentage") == 75.0

    assert cli(env, "cost", "--per-lead", "0.42", "--gpu-dollars", "1.5").returncode == 0
    assert cli(env, "fail", "--stage", "enrich", "--reason", "exit 3").returncode == 0
    samples = gateway_samples(pushgateway)
    assert value(samples, "anthrasite_batch_state", state="failed") == 1.0
    assert value(samples, "anthrasite_batch_cost_per_lead") == 0.42

    assert cli(env, "resume").returncode == 0
    assert cli(env, "stage", "enrich", "100").returncode == 0
    assert cli(env, "end").returncode == 0
    samples = gateway_samples(pushgateway)
    assert value(samples, "anthrasite_batch_state", state="completed") == 1.0
    assert value(samples, "anthrasite_batch_completion_time_seconds_count") == 1.0
    assert value(samples, "anthrasite_batch_gpu_cost_dollars_total") == 1.5
    assert value(samples, "anthrasite_batch_end_timestamp_seconds") is not None
    # The monitor's own families are not pushed: there is no monitor on this host.
    assert not any(name.startswith("anthrasite_batch_alerts_sent") for name, _ in samples)
    assert not any(name == "anthrasite_batch_monitor_last_check_timestamp_seconds" for name, _ in samples)

    # The next night's batch replaces the group: the old stage series are gone, the counts stay.
    assert cli(env, "start", "--stages", "email").returncode == 0
    samples = gateway_samples(pushgateway)
    stages = {dict(labels)["stage"] for name, labels in samples if name.endswith("stage_completion_percentage")}
    assert stages == {"email"}
    assert value(samples, "anthrasite_batch_completion_time_seconds_count") == 1.0
    assert value(samples, "anthrasite_batch_gpu_cost_dollars_total") == 1.5


def test_it_groups_by_batch_name_and_instance(base_env, pushgateway):
    env = {**base_env, "BATCH_PUSHGATEWAY_URL": pushgateway, "BATCH_NAME": "weekly-rescore"}
    assert cli(env, "start").returncode == 0
    samples = gateway_samples(pushgateway)
    labels = {"job": "weekly-rescore", "instance": HOST, "batch": "weekly-rescore", "state": "running"}
    key = ("anthrasite_batch_state", frozenset(labels.items()))
    assert samples[key] == 1.0
    assert host_name() == HOST


def test_it_never_fails_the_batch_when_the_gateway_is_down(base_env, tracker_file):
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**base_env, "BATCH_PUSHGATEWAY_URL": dead}
    result = cli(env, "start", "--stages", "scrape")
    assert result.returncode == 0
    assert result.stdout.strip()  # the batch id
    assert result.stderr.startswith(f"batch_tracker: warning: push to {dead} failed: ")
    assert "Connection refused" in result.stderr and "(after 'start')" in result.stderr
    stage = cli(env, "stage", "scrape", "100")
    assert stage.returncode == 0 and "warning" in stage.stderr
    batch = BatchTracker(TrackerConfig(tracker_file=str(tracker_file))).snapshot().current
    assert batch.stage("scrape").percentage == 100.0  # the hook's real work was done


def test_it_raises_a_one_line_push_error_for_a_dead_gateway(tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    config = tracker_config.replace(pushgateway_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PushError, match=r"^.*Connection refused.*\(after 'start'\)$"):
        push_batch_metrics(config, tracker.snapshot(), clock(), "start", timeout=2)


def test_it_reports_a_gateway_that_refuses_the_push(tracker_config, clock, pushgateway):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    config = tracker_config.replace(pushgateway_url=pushgateway + "/no-such-prefix")
    with pytest.raises(PushError, match="after 'start'"):
        push_batch_metrics(config, tracker.snapshot(), clock(), "start")


def test_it_does_nothing_without_a_url(tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    assert push_batch_metrics(tracker_config, tracker.snapshot(), clock(), "start") is None


def test_it_builds_the_same_batch_families_as_the_monitor(tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    tracker.stage("scrape", 30)
    registry = build_registry(tracker_config, tracker.snapshot(), clock())
    stage = {**NIGHTLY, "stage": "scrape"}
    assert registry.get_sample_value("anthrasite_batch_stage_completion_percentage", stage) == 30.0
    assert registry.get_sample_value("anthrasite_batch_state", {**NIGHTLY, "state": "running"}) == 1.0
    assert registry.get_sample_value("anthrasite_batch_alert_delivery_failures_total") is None


def test_it_builds_the_push_from_the_trackers_counters_and_writes_nothing(tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    tracker.cost(gpu_cost_dollars=2.5)
    clock.advance(600)
    tracker.end()
    tracker.start()  # a new batch at $0: the counter stays
    directory = os.path.dirname(tracker.path)
    before = {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)}
    registry = build_registry(tracker_config, tracker.snapshot(), clock())
    assert registry.get_sample_value("anthrasite_batch_gpu_cost_dollars_total", NIGHTLY) == 2.5
    assert registry.get_sample_value("anthrasite_batch_completion_time_seconds_count", NIGHTLY) == 1.0
    assert registry.get_sample_value("anthrasite_batch_completed_total", {**NIGHTLY, "on_time": "true"}) == 1.0
    after = {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)}
    assert after == before  # no metrics state file, nothing rewritten


def test_it_keeps_prometheus_client_off_the_hook_path_without_a_url(base_env):
    code = (
        "import sys; from utils import tracker_cli; "
        "rc = tracker_cli.main(['start']); "
        "print(rc, 'prometheus_client' in sys.modules, 'utils.pushgateway' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=base_env, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.split()[-3:] == ["0", "False", "False"], result.stderr


def system_persistence_file(binary: str) -> str | None:
    """The --persistence.file default this gateway build has (Debian: /var/lib/prometheus/pushgateway.data)."""
    result = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10, check=False)
    text = result.stdout + result.stderr
    match = re.search(r'--persistence\.file="([^"]*)"', text)
    return match.group(1) if match and match.group(1) else None


def test_it_keeps_the_test_gateways_pushes_out_of_the_system_gateways_file(base_env, tmp_path):
    binary = pushgateway_binary()
    system_file = system_persistence_file(binary)
    job = f"test-only-{os.getpid()}-{free_port()}"
    with running_pushgateway(tmp_path) as url:
        cli({**base_env, "BATCH_PUSHGATEWAY_URL": url, "BATCH_NAME": job}, "start")
        assert any(dict(labels).get("job") == job for _, labels in gateway_samples(url))
    # The gateway wrote its state where the test told it to, on shutdown ...
    assert job.encode() in (tmp_path / "pushgateway.data").read_bytes()
    # ... and never into the default file a user's own gateway uses.
    if system_file and os.path.exists(system_file) and os.access(system_file, os.R_OK):
        with open(system_file, "rb") as handle:
            assert job.encode() not in handle.read()
