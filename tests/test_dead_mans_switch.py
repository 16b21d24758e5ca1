"""BATCH_PING_URL: the hooks ping an off-host dead-man's switch (healthchecks.io protocol) from a detached child,
never failing or waiting for it; the child retries a few times within a bound. Real CLI, real local HTTP servers."""

from __future__ import annotations

import os
import time

import pytest
from conftest import free_port, run_tracker_cli, wait_until
from http_sink import HttpSink

from utils.config import ConfigError, TrackerConfig
from utils.dead_mans_switch import TIMEOUT_SECONDS, ping, ping_url, spawn


@pytest.fixture
def sink():
    server = HttpSink().start()
    yield server
    server.stop()


def pings(sink: HttpSink) -> list[tuple[str, str]]:
    return [(path, body.decode()) for _, path, _, body in sink.requests()]


def test_it_pings_start_success_and_fail_from_the_hooks(base_env, sink):
    env = {**base_env, "BATCH_PING_URL": sink.url + "/ping/0b1c"}
    batch_id = run_tracker_cli(env, "start", check=True).stdout.strip()
    wait_until(lambda: len(sink.requests()) >= 1, message="start ping")
    run_tracker_cli(env, "stage", "scrape", "50", check=True)  # a stage is no ping
    run_tracker_cli(env, "end", check=True)
    wait_until(lambda: len(sink.requests()) >= 2, message="success ping")
    run_tracker_cli(env, "start", check=True)
    wait_until(lambda: len(sink.requests()) >= 3, message="second start ping")
    run_tracker_cli(env, "fail", "--stage", "enrich", "--reason", "quota", check=True)
    wait_until(lambda: len(sink.requests()) >= 4, message="fail ping")
    got = pings(sink)
    assert [path for path, _ in got] == ["/ping/0b1c/start", "/ping/0b1c", "/ping/0b1c/start", "/ping/0b1c/fail"]
    assert got[0][1] == f"nightly start {batch_id}" and got[1][1] == "nightly end"
    assert got[3][1] == "nightly fail: quota"
    assert {method for method, *_ in sink.requests()} == {"POST"}


def test_it_never_waits_for_a_hanging_ping_service(base_env, sink):
    sink.mode = "hang"
    env = {**base_env, "BATCH_PING_URL": sink.url}
    result = run_tracker_cli(env, "start")
    returned = time.monotonic()
    assert result.returncode == 0 and result.stderr == ""
    wait_until(sink.requests, message="the ping reached the hanging server")
    # The hook returned before its ping could even time out: it did not wait for the server's answer.
    assert returned - sink.arrivals[0] < TIMEOUT_SECONDS
    assert run_tracker_cli(env, "end").returncode == 0


def test_it_never_fails_a_hook_when_the_ping_service_is_down(base_env):
    env = {**base_env, "BATCH_PING_URL": f"http://127.0.0.1:{free_port()}/ping"}
    for command in (["start"], ["fail", "--reason", "x"]):
        result = run_tracker_cli(env, *command)
        assert result.returncode == 0 and result.stderr == "", result.stderr


def test_it_refuses_a_bad_ping_url_with_exit_2_and_writes_nothing(base_env, tracker_file):
    result = run_tracker_cli({**base_env, "BATCH_PING_URL": "hc-ping.com/abc"}, "start")
    assert result.returncode == 2 and "BATCH_PING_URL" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not tracker_file.exists()
    with pytest.raises(ConfigError, match="BATCH_PING_URL"):
        TrackerConfig.from_env({"BATCH_PING_URL": "https://a.example.com/x,https://b.example.com/y"})


def test_it_retries_a_failing_ping_and_stops_once_it_gets_through(sink):
    sink.mode = 503
    pauses: list[float] = []

    def recover(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            sink.mode = "ok"

    assert ping(sink.url + "/p", "b", attempts=5, pause=1.0, sleep=recover)
    assert len(sink.requests()) == 3 and pauses == [1.0, 2.0]


def test_it_gives_up_after_its_attempts_on_a_hanging_or_dropping_server(sink):
    sink.mode = "hang"
    assert not ping(sink.url, timeout=0.3, attempts=2, sleep=lambda _: None)
    assert len(sink.requests()) == 2
    sink.mode = "drop"
    assert not ping(sink.url, timeout=0.3, attempts=2, sleep=lambda _: None)
    assert len(sink.requests()) == 4


def test_it_does_not_retry_an_unknown_check(sink):
    sink.mode = 404
    assert not ping(sink.url, attempts=3, sleep=lambda _: None)
    assert len(sink.requests()) == 1


def test_it_runs_the_ping_in_a_detached_child_that_exits_when_done(sink):
    pid = spawn(sink.url + "/uuid", "end", "nightly end")
    assert pid is not None and pid != os.getpid()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pings(sink) == [("/uuid", "nightly end")]


def test_it_builds_the_healthchecks_urls():
    assert ping_url("https://hc-ping.com/abc", "start") == "https://hc-ping.com/abc/start"
    assert ping_url("https://hc-ping.com/abc/", "end") == "https://hc-ping.com/abc"
    assert ping_url("https://hc-ping.com/abc?rid=1", "fail") == "https://hc-ping.com/abc/fail?rid=1"
    assert ping_url("https://hc-ping.com/abc", "resume") == "https://hc-ping.com/abc/start"
