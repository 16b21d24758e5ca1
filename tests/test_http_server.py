"""The monitor's HTTP endpoint, exercised with real HTTP requests on a free loopback port.

The status page is also loaded in headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright) from a real monitor loop, to check what a person sees.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import logging
import os
import re
import select
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import PROJECT_ROOT, VENV_PYTHON, free_port, run_tracker_cli, wait_until
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge

from utils.batch_tracker import BatchTracker, TrackerConfig, get_batch_status
from utils.config import MonitorConfig
from utils.http_server import MAX_CONNECTIONS, default_max_connections, serve
from utils.metrics import register_batch_metrics
from utils.monitor import Monitor
from utils.service import Service
from utils.state_store import sibling_file
from utils.status_page import render_status_page


class Providers:
    """Status and health providers a test can change while the server runs."""

    def __init__(self):
        self.status: dict = {"ok": True, "reason": "all good", "id": "b1", "state": "running"}
        self.health: tuple[bool, str] = (True, "")
        self.fail_with: Exception | None = None

    def status_provider(self) -> dict:
        if self.fail_with:
            raise self.fail_with
        return self.status

    def health_provider(self) -> tuple[bool, str]:
        return self.health


@pytest.fixture
def providers() -> Providers:
    return Providers()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("test_gauge_value", "A gauge for the test.", registry=registry).set(42)
    return registry


@pytest.fixture
def server(registry, providers):
    server = serve(
        "127.0.0.1",
        free_port(),
        registry=registry,
        status_provider=providers.status_provider,
        health_provider=providers.health_provider,
    )
    yield server
    server.close()


def get(server, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(server.url + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_it_serves_metrics_in_the_prometheus_text_format(server):
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert b"test_gauge_value 42.0" in body


def test_it_serves_the_batch_collector(tmp_path, tracker_config, clock, providers):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    tracker.stage("scrape", 75)
    registry = CollectorRegistry()
    register_batch_metrics(
        registry,
        tracker=tracker,
        monitor_state_path=sibling_file(tracker.path, "monitor"),
        clock=clock,
    )
    with serve(
        "127.0.0.1", free_port(), registry=registry, status_provider=dict, health_provider=lambda: (True, "")
    ) as server:
        body = get(server, "/metrics")[2].decode()
    assert 'anthrasite_batch_stage_completion_percentage{batch="nightly",stage="scrape"} 75.0' in body
    assert 'anthrasite_batch_state{batch="nightly",state="running"} 1.0' in body


def test_it_reports_health(server, providers):
    assert get(server, "/healthz")[::2] == (200, b"ok\n")
    providers.health = (False, "last check 900 s ago")
    status, headers, body = get(server, "/healthz")
    assert status == 503
    assert body == b"unhealthy: last check 900 s ago\n"
    assert headers["Content-Type"].startswith("text/plain")


def test_it_serves_the_status_as_json(server, providers):
    providers.status = {"ok": False, "reason": "late", "stages": [{"name": "scrape", "percentage": 40.0}]}
    status, headers, body = get(server, "/status.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == providers.status


def test_it_renders_the_status_page(server, providers, tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    batch_id = tracker.start()
    tracker.stage("enrich", 60)
    providers.status = get_batch_status(path=tracker.path, clock=clock, config=tracker_config)
    providers.status["recent_alerts"] = [
        {"at": clock(), "kind": "failed", "key": batch_id, "type": "alert", "subject": "Batch failed at enrich"}
    ]
    status, headers, body = get(server, "/")
    page = body.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert batch_id in page
    assert "<td>enrich</td><td>60.0%</td>" in page
    assert "Batch failed at enrich" in page
    assert 'title="2023-11-14T22:13:20+00:00">17:13 EST, Tue 14 Nov</time>' in page  # epochs too
    assert 'href="/metrics"' in page and 'href="/status.json"' in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # no external assets


def test_it_escapes_everything_on_the_status_page(server, providers):
    hostile = '<script>alert("x")</script>&'
    providers.status = {
        "ok": False,
        "reason": hostile,
        "id": hostile,
        "state": hostile,
        "deadline": {"local": hostile},
        "stages": [{"name": hostile, "percentage": hostile, "updated_at": hostile}],
        "open_incidents": [{"kind": hostile, "summary": hostile, "since": hostile}],
        "monitor": {"recent_alerts": [{"at": hostile, "kind": hostile, "type": hostile, "subject": hostile}]},
    }
    page = get(server, "/")[2].decode()
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;") >= 10


def test_it_renders_an_empty_or_odd_status_without_failing():
    for status in ({}, {"stages": "nope", "recent_alerts": [1, "x"], "open_incidents": {"a": {"kind": "late"}}}, []):
        page = render_status_page(status)
        assert page.startswith("<!DOCTYPE html>")


def test_it_answers_404_for_other_paths(server):
    for path in ("/nope", "/metrics/extra", "/../etc/passwd"):
        status, _, body = get(server, path)
        assert status == 404, path
        assert b"not found" in body


def test_it_answers_405_for_other_methods(server):
    status, headers, _ = get(server, "/metrics", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_it_answers_head_without_a_body(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("HEAD", "/healthz")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == "3"
    assert response.read() == b""
    connection.close()


def test_it_answers_500_when_a_provider_fails_and_keeps_serving(server, providers):
    providers.fail_with = RuntimeError("tracker exploded")
    status, _, body = get(server, "/status.json")
    assert status == 500
    assert body == b"internal error: RuntimeError: tracker exploded\n"
    assert get(server, "/healthz")[0] == 200


def test_it_logs_requests_at_debug_level_only(server, caplog):
    with caplog.at_level(logging.DEBUG, logger="utils.http_server"):
        get(server, "/healthz")
    request_logs = [r for r in caplog.records if "GET /healthz" in r.getMessage()]
    assert request_logs and all(r.levelno == logging.DEBUG for r in request_logs)


def test_it_releases_the_port_on_close(registry, providers):
    port = free_port()
    server = serve("127.0.0.1", port, registry=registry, status_provider=dict, health_provider=lambda: (True, ""))
    assert server.port == port
    assert get(server, "/healthz")[0] == 200
    server.close()
    server.close()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    again = serve("127.0.0.1", port, registry=registry, status_provider=dict, health_provider=lambda: (True, ""))
    assert get(again, "/healthz")[0] == 200
    again.close()


def test_it_refuses_a_port_in_use(server, registry):
    with pytest.raises(OSError):
        serve("127.0.0.1", server.port, registry=registry, status_provider=dict, health_provider=lambda: (True, ""))


def test_it_serves_requests_concurrently(server):
    # A client that connects and says nothing must not block other requests.
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        assert get(server, "/healthz")[0] == 200
    finally:
        idle.close()


# --------------------------------------------------------------------------- bounded, fast, quiet


def idle_connections(port: int, count: int, timeout: float = 3.0) -> list[socket.socket]:
    """``count`` connections that send half a request and never finish their headers.

    Connected without blocking: when the server does not accept them all, the rest wait
    in the kernel (or for their SYN to be answered) rather than stalling the test.
    """
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    pending, deadline = set(sockets), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(pending), [], 0.1)
        for sock in writable:
            pending.discard(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                with contextlib.suppress(OSError):
                    sock.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return sockets


def test_it_handles_at_most_max_connections_and_drops_idle_ones_after_the_read_timeout(registry, providers):
    with serve(
        "127.0.0.1",
        free_port(),
        registry=registry,
        status_provider=providers.status_provider,
        health_provider=providers.health_provider,
        max_connections=2,
        read_timeout=0.3,
    ) as server:
        idle = idle_connections(server.port, 6)
        try:
            wait_until(lambda: server.active_connections == 2, timeout=5, message="both slots taken")
            seen = {server.active_connections for _ in range(200)}
            assert max(seen) <= 2
            # The idle ones time out two by two, each closed by the server; then a real request gets its turn.
            assert get(server, "/healthz")[0] == 200
            for sock in idle:
                sock.settimeout(5)
                assert sock.recv(1) == b""
        finally:
            for sock in idle:
                sock.close()


def accept_queue_length(port: int) -> int:
    """How many connections wait in the kernel's accept queue of the listening socket on ``port``."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)
    return 0


def flood(port: int, count: int) -> list[socket.socket]:
    """``count`` half-open connections, paced so a server that accepts everything does accept them all.

    Connecting faster than a server accepts overflows its listen queue, and the kernel
    then delays the overflow by seconds; so each connection waits for the queue to
    drain, until the server evidently stops accepting (it is at its connection cap).
    """
    sockets, pacing = [], True
    for _ in range(count):
        if pacing:
            try:
                wait_until(lambda: accept_queue_length(port) < 2, timeout=0.2, interval=0.001)
            except AssertionError:
                pacing = False  # the server holds back: queue the rest at once
        sockets += idle_connections(port, 1, timeout=0.5)
    return sockets


@pytest.mark.slow
def test_it_alerts_within_seconds_while_more_connections_than_file_descriptors_hold_the_port(base_env, tmp_path):
    port = free_port()
    env = dict(
        base_env,
        BATCH_OUTBOX_DIR=str(tmp_path / "outbox"),
        METRICS_ADDR="127.0.0.1",
        METRICS_PORT=str(port),
        BATCH_COMPLETION_TIMEZONE="UTC",  # the deadline 12 hours away: only the failure alerts
        BATCH_COMPLETION_DEADLINE_HOUR=str((dt.datetime.now(dt.UTC).hour + 12) % 24),
    )
    run_tracker_cli(env, "start", "--stages", "scrape,enrich", cwd=PROJECT_ROOT, check=True)
    limit = 256
    with open(tmp_path / "monitor.log", "wb") as log:
        process = subprocess.Popen(
            [
                "prlimit",
                f"--nofile={limit}:{limit}",
                VENV_PYTHON,
                str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py"),
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    connections: list[socket.socket] = []
    try:
        wait_until(lambda: http_status(port, "/healthz") == 200, timeout=15, message="the monitor's first check")
        connections = flood(port, 300)
        open_files = len(os.listdir(f"/proc/{process.pid}/fd"))
        run_tracker_cli(env, "fail", "--stage", "enrich", "--reason", "exit code 3", cwd=PROJECT_ROOT, check=True)
        alert = wait_until(
            lambda: list((tmp_path / "outbox").glob("*-failed-alert-*.eml")), timeout=3, message="the failure alert"
        )
        assert process.poll() is None
        assert len(alert) == 1 and "[FAILED]" in alert[0].read_text()
        assert open_files <= limit // 2  # HTTP took a bounded share, the checks had descriptors to spare
    finally:
        for sock in connections:
            sock.close()
        process.kill()
        process.wait(timeout=10)
    assert "check failed" not in (tmp_path / "monitor.log").read_text()


def http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_it_rejects_a_bad_connection_limit_or_timeout(registry):
    for changes in ({"max_connections": 0}, {"read_timeout": 0}):
        with pytest.raises(ValueError, match="out of range"):
            serve(
                "127.0.0.1", 0, registry=registry, status_provider=dict, health_provider=lambda: (True, ""), **changes
            )


def test_it_leaves_a_quarter_of_a_low_file_limit_to_http():
    assert default_max_connections(1024) == MAX_CONNECTIONS
    assert default_max_connections(64) == 16
    assert default_max_connections(2) == 1


@pytest.fixture
def server_writes(monkeypatch):
    """Every ``sendall`` on any socket: (peer port, bytes, TCP_NODELAY at the time)."""
    writes: list[tuple[int, int, int]] = []
    real_sendall = socket.socket.sendall

    def sendall(sock, data, *args):
        with contextlib.suppress(OSError):
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writes.append((sock.getpeername()[1], len(data), nodelay))
        return real_sendall(sock, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", sendall)
    return writes


def test_it_answers_every_scrape_on_a_kept_alive_connection_in_one_write_without_nagle(server, server_writes):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.connect()
        client_socket, client_port = connection.sock, connection.sock.getsockname()[1]
        for _ in range(50):
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200
            assert b"test_gauge_value 42.0" in response.read()
            assert response.getheader("Connection") is None  # kept alive
        assert connection.sock is client_socket  # the same connection all along
    finally:
        connection.close()
    mine = [w for w in server_writes if w[0] == client_port]  # the server's side of this connection
    assert len(mine) == 50  # one write per response: status line, headers and body together
    assert all(size > len(b"test_gauge_value 42.0") for _, size, _ in mine)
    assert all(nodelay for _, _, nodelay in mine)


def test_it_logs_one_debug_line_when_a_client_hangs_up_mid_response(registry, providers, caplog, capfd):
    asked, release = threading.Event(), threading.Event()
    big = {"reason": "x" * 2_000_000}

    def slow_status() -> dict:
        asked.set()
        release.wait(5)
        return big

    providers.status_provider = slow_status
    with caplog.at_level(logging.DEBUG, logger="utils.http_server"):
        with serve(
            "127.0.0.1", free_port(), registry=registry, status_provider=slow_status, health_provider=lambda: (True, "")
        ) as server:
            client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            client.sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert asked.wait(5)  # the request is in hand
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset: the client is gone before the answer is written
            release.set()
            wait_until(lambda: any("hung up" in r.getMessage() for r in caplog.records), message="the hang-up logged")
            assert get(server, "/healthz")[0] == 200  # and it keeps serving
    hangups = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert len(hangups) == 1 and hangups[0].levelno == logging.DEBUG
    assert "\n" not in hangups[0].getMessage() and hangups[0].exc_info is None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "BrokenPipe" not in captured.err


# --------------------------------------------------------------------------- the page's content, rendered


def test_it_shows_elapsed_time_left_projection_and_slow_stage(tracker_config, clock):
    status = {
        "ok": True,
        "id": "b7",
        "state": "running",
        "elapsed_seconds": 6300,
        "now": "2026-11-23T07:45:00+00:00",
        "deadline": {"utc": "2026-11-23T10:00:00+00:00", "timezone": "America/New_York", "seconds_left": 8100},
        "projection": {
            "projected_completion_utc": "2026-11-23T20:10:00+00:00",
            "projected_completion_local": "2026-11-23T15:10:00-05:00",
            "seconds_past_deadline": 36600,
            "slow_stage": "enrich",
            "slow_stage_elapsed_seconds": 4500,
            "slow_stage_usual_seconds": 2400,
        },
    }
    page = render_status_page(status)
    assert "<th>Elapsed</th><td>1 h 45 min</td>" in page
    assert "<th>Time to deadline</th><td>in 2 h 15 min</td>" in page
    assert (
        '<td><time datetime="2026-11-23T20:10:00+00:00" title="2026-11-23T20:10:00+00:00">15:10 EST, Mon 23 Nov</time>'
        " (10 h 10 min after the deadline)</td>" in page
    )
    assert "<th>At risk</th><td>projected 10 h 10 min late, no early warning yet</td>" in page
    assert "<th>Slow stage</th><td>enrich: 1 h 15 min so far, usually 40 min</td>" in page


def test_it_says_how_long_ago_a_passed_deadline_was_and_why_a_batch_failed(tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    clock.advance(3600)
    tracker.fail("enrich", "exit code 3 <oom>")
    clock.advance(86_400)
    page = render_status_page(get_batch_status(path=tracker.path, clock=clock, config=tracker_config))
    assert "<th>Time to deadline</th><td>" in page and " ago</td>" in page
    assert 'at stage enrich: exit code 3 &lt;oom&gt; (<time datetime="2023-11-14T23:13:20+00:00"' in page
    assert ">18:13 EST, Tue 14 Nov</time>)" in page
    assert "<tr class='active'><td>enrich</td>" in page and "<td>failed here</td>" in page
    assert "<th>Projected finish</th><td>– (not running)</td>" in page


def test_it_says_why_there_is_no_projection(tracker_config, clock):
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start()
    tracker.stage("scrape", 100)
    page = render_status_page(get_batch_status(path=tracker.path, clock=clock, config=tracker_config))
    assert "– (not enough completed batches to project from)" in page


def test_it_follows_the_monitors_view_when_it_is_current():
    tracker_says = {"ok": False, "reason": "no batch started before the deadline", "id": None}
    tracker_says["next_deadline"] = {
        "utc": "2026-11-24T10:00:00+00:00",
        "timezone": "America/New_York",
        "seconds_left": 3600,
    }
    monitor = {"open_incidents": [], "last_check_at": "2026-11-23T06:00:00+00:00", "healthy": True}
    monitor.update(ok=True, reason="no batch recorded yet; watching since 2026-11-23 00:30 EST")
    page = render_status_page({**tracker_says, "monitor": monitor})
    assert "<title>Batch completion: OK</title>" in page
    assert "<p>no batch recorded yet; watching since 2026-11-23 00:30 EST</p>" in page
    assert ">05:00 EST, Tue 24 Nov</time> (in 1 h 00 min)</td>" in page
    warning = {"kind": "at_risk", "summary": "projected 10 h late", "since": "x", "alerted_at": "y"}
    at_risk = {**monitor, "open_incidents": [warning], "ok": False, "reason": "at_risk: projected 10 h late"}
    page = render_status_page({**tracker_says, "ok": True, "monitor": at_risk})
    assert "<title>Batch completion: PROBLEM</title>" in page and "at_risk: projected 10 h late" in page
    # A monitor whose checks fail has a stale view: the tracker's verdict speaks.
    page = render_status_page({**tracker_says, "monitor": {**monitor, "healthy": False}})
    assert "<title>Batch completion: PROBLEM</title>" in page
    assert "<p>no batch started before the deadline</p>" in page
    assert "checks are not completing" in page


def test_it_renders_odd_numbers_as_dashes():
    odd = {"id": "b", "elapsed_seconds": float("nan"), "deadline": {"seconds_left": float("inf")}}
    odd["projection"] = {"projected_completion_utc": "x", "seconds_past_deadline": True, "slow_stage": "s"}
    odd["history"] = {"recent": [{"id": "a", "duration_seconds": "long", "on_time": "?"}, 3]}
    page = render_status_page(odd)
    assert "<th>Elapsed</th><td>–</td>" in page
    assert "<th>Time to deadline</th><td>–</td>" in page


NY_NOW = "2026-11-23T07:45:00+00:00"  # 02:45 EST


def outbox_row(outbox: dict) -> tuple[str, str]:
    status = {"now": NY_NOW, "deadline": {"timezone": "America/New_York"}, "monitor": {"outbox": outbox}}
    page = render_status_page(status)
    return re.search(r"<th>Alert outbox</th><td>(.*?)</td>", page).group(1), page


def test_it_shows_the_alert_outbox_and_flags_failed_or_stuck_alerts():
    now = dt.datetime.fromisoformat(NY_NOW).timestamp()
    row, page = outbox_row({"pending": 0, "failed": 0, "oldest_pending_at": None})
    assert row == "0 queued, 0 failed" and "class='bad banner'" not in page
    row, page = outbox_row({"pending": 1, "failed": 0, "oldest_pending_at": now - 30})
    assert row.startswith('1 queued (oldest since <time datetime="2026-11-23T07:44:30+00:00"')
    assert ">02:44 EST, Mon 23 Nov</time>, 30 s old), 0 failed" in row
    assert "bad" not in row and "class='bad banner'" not in page
    row, page = outbox_row({"pending": 2, "failed": 0, "oldest_pending_at": now - 1800})
    assert row.startswith("<span class='bad'>⚠ 2 queued") and ", 30 min old), 0 failed</span>" in row
    assert "Alert e-mails are not getting through: an alert has waited 30 min for delivery." in page
    row, page = outbox_row({"pending": 0, "failed": 1, "oldest_pending_at": None})
    assert row == "<span class='bad'>⚠ 0 queued, 1 failed</span>"
    assert "Alert e-mails are not getting through: 1 alert(s) could not be delivered." in page


HOSTILE = (
    "\x1b[31mRED\x1b[0m\x1b]0;title\x07\x00\r\x9b2J \u202egnp.exe\u2066 "
    '</td><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">\ud800'
)
UNSAFE_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def hostile_status() -> dict:
    """A status whose every hook-supplied text (stage names, reasons, ids, subjects) is hostile."""
    return {
        "now": NY_NOW,
        "ok": False,
        "reason": HOSTILE,
        "id": HOSTILE,
        "state": "failed",
        "deadline": {"utc": "2026-11-23T10:00:00+00:00", "timezone": "America/New_York", "seconds_left": 8100},
        "stages": [{"name": HOSTILE, "percentage": 40.0, "updated_at": HOSTILE}],
        "failure": {"stage": HOSTILE, "reason": HOSTILE, "at": "2026-11-23T07:00:00+00:00"},
        "open_incidents": [{"kind": "failed", "summary": HOSTILE, "since": HOSTILE}],
        "recent_alerts": [{"at": HOSTILE, "kind": HOSTILE, "type": "alert", "subject": HOSTILE}],
        "history": {"recent": [{"id": HOSTILE, "state": HOSTILE, "started_at": HOSTILE}]},
    }


def test_it_neutralises_control_characters_escape_sequences_and_markup_in_hook_text(server, providers):
    page = render_status_page(hostile_status())
    assert not UNSAFE_CHARACTERS.search(page)
    assert "␛[31mRED␛[0m␛]0;title␇␀␍\ufffd2J \ufffdgnp.exe\ufffd " in page  # visible, inert stand-ins
    assert "<script>" not in page and "<img" not in page
    assert page.count("&lt;script&gt;window.pwned = 1&lt;/script&gt;") >= 8
    providers.status = hostile_status()
    status, headers, body = get(server, "/")
    assert status == 200 and not UNSAFE_CHARACTERS.search(body.decode("utf-8"))
    assert headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_it_shows_times_in_the_deadlines_zone_with_the_utc_instant_on_hover():
    status = {
        "now": NY_NOW,
        "id": "b1",
        "state": "running",
        "started_at": "2026-11-23T06:00:00+00:00",
        "deadline": {"utc": "2026-11-23T10:00:00+00:00", "timezone": "America/New_York", "seconds_left": 8100},
        "stages": [{"name": "scrape", "percentage": 100.0, "updated_at": "2026-11-23T06:30:00+00:00"}],
        "monitor": {"last_check_at": "2026-11-23T07:40:00+00:00", "open_incidents": [], "healthy": True},
    }
    page = render_status_page(status)
    started = (
        '<time datetime="2026-11-23T06:00:00+00:00" title="2026-11-23T06:00:00+00:00">01:00 EST, Mon 23 Nov</time>'
    )
    assert f"<th>Started</th><td>{started}</td>" in page
    assert ">05:00 EST, Mon 23 Nov</time></td>" in page
    assert ">02:40 EST, Mon 23 Nov</time> (5 min ago)</td>" in page  # against the status's instant, not the clock
    assert 'as of <time datetime="2026-11-23T07:45:00+00:00"' in page
    visible = re.sub(r"<[^>]*>", "", page.split("<body>")[1])
    assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", visible)  # no ISO instants for people to convert
    summer = dict(status, now="2026-07-01T03:00:00+00:00", started_at="2026-07-01T01:00:00+00:00")
    summer["deadline"] = {"utc": "2026-07-01T04:00:00+00:00", "timezone": "Europe/Berlin"}
    page = render_status_page(summer)
    assert ">03:00 CEST, Wed 1 Jul</time>" in page and ">06:00 CEST, Wed 1 Jul</time>" in page


def test_it_describes_the_batch_as_of_the_last_check_that_made_the_headline(tmp_path, clock, smtp_server):
    config = monitor_config(tmp_path, smtp_server.port)
    tracker = BatchTracker(config.tracker, clock=clock)
    clock.set(TONIGHT)
    tracker.start(list(STAGES))
    monitor = Monitor(config, clock=clock)
    assert monitor.step(deliver=False).ok  # 01:00 EST: on time
    clock.set(TONIGHT + 5 * 3600)  # 06:00 EST: past the deadline, but the monitor has not checked again yet
    status = monitor.status()
    assert status["now"] == "2026-11-23T06:00:00+00:00"  # the last check's instant, not the clock's
    assert status["ok"] is True and status["deadline"]["seconds_left"] == 4 * 3600
    assert status["monitor"]["ok"] is True
    monitor.step(deliver=False)
    status = monitor.status()
    assert status["now"] == "2026-11-23T11:00:00+00:00" and status["ok"] is False and status["monitor"]["ok"] is False


# --------------------------------------------------------------------------- what a person sees, in Chromium

CHROMIUM = "/usr/bin/chromium"
# No sandbox: the tests run as root. The rest keeps Chromium from calling home (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
STAGES = ("scrape", "enrich", "dedupe", "score", "mockup", "email")
USUAL = {"scrape": 1800, "enrich": 2400, "dedupe": 600, "score": 1200, "mockup": 1500, "email": 900}
DAY = 86_400
TONIGHT = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC).timestamp()  # 01:00 EST; deadline 05:00 EST


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module; None when the binary is missing (the test then fails)."""
    if not os.path.exists(CHROMIUM):
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def browser_page(chromium):
    """A fresh page; fails the test (in its body, so it counts as a failure) when Chromium is missing."""
    if chromium is None:
        pytest.fail(f"{CHROMIUM} is not installed; bin/setup.sh --test installs it")
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(5000)
        yield page
    finally:
        context.close()


def monitor_config(tmp_path, smtp_port: int) -> MonitorConfig:
    return MonitorConfig(
        tracker=TrackerConfig(tracker_file=str(tmp_path / "data" / "batch_tracker.json"), expected_stages=STAGES),
        outbox_dir=str(tmp_path / "outbox"),
        email_to=("oncall@example.com",),
        email_from="leadfactory@example.com",
        smtp_server="127.0.0.1",
        smtp_port=smtp_port,
        smtp_security="plain",
        smtp_timeout_seconds=5.0,
        metrics_port=free_port(),
    )


@contextlib.contextmanager
def running(monitor: Monitor):
    """The monitor's real loop (its own HTTP server included) in a thread, until the block ends."""
    service = Service(monitor)
    thread = threading.Thread(target=service.run, name="monitor-under-test")
    thread.start()
    try:
        wait_until(lambda: monitor.health()[0], timeout=5, message="the monitor's first check")
        yield f"http://127.0.0.1:{monitor.config.metrics_port}"
    finally:
        service.request_stop()
        thread.join(5)
    assert not thread.is_alive()


def run_night(tracker: BatchTracker, clock, start: float) -> None:
    clock.set(start)
    tracker.start(list(STAGES))
    for name in STAGES:
        clock.advance(USUAL[name])
        tracker.stage(name, 100)
    tracker.end()


def visible_rows(page) -> dict[str, str]:
    """The visible "label: value" rows of the page's tables, as a person reads them."""
    rows = {}
    for line in page.inner_text("body").splitlines():
        label, _, value = line.partition("\t")
        rows.setdefault(label.strip(), value.strip())
    return rows


@pytest.mark.chromium
def test_it_shows_a_person_the_running_batch_its_projection_and_the_alerts(chromium, tmp_path, clock, smtp_server):
    config = monitor_config(tmp_path, smtp_server.port)
    tracker = BatchTracker(config.tracker, clock=clock)
    for night in range(7, 0, -1):  # a week of normal 2 h 20 min nights
        run_night(tracker, clock, TONIGHT - night * DAY)
    clock.set(TONIGHT)
    batch_id = tracker.start(list(STAGES), batch_id="tonight-20261123")
    clock.set(TONIGHT + 1800)  # 01:30
    tracker.stage("scrape", 100)
    clock.set(TONIGHT + 3600)  # 02:00: enrich fails; the operator resumes it five minutes later
    tracker.fail("enrich", "exit code 3")
    clock.set(TONIGHT + 3900)
    tracker.resume()
    clock.set(TONIGHT + 6300)  # 02:45: enrich at 10% after 75 min; it usually takes 40 min in all
    tracker.stage("enrich", 10)

    monitor = Monitor(config, clock=clock)
    with browser_page(chromium) as page, running(monitor) as url:
        subjects = [str(m["Subject"]) for m in smtp_server.wait_for(2)]
        assert sorted(s.split("]")[0] for s in subjects) == ["[AT RISK", "[FAILED"]
        wait_until(lambda: len(monitor.status()["monitor"]["recent_alerts"]) == 2, message="the alerts recorded")
        page.goto(url + "/")
        text = page.inner_text("body")
        rows = visible_rows(page)
        assert page.title() == "Batch completion: PROBLEM"
        assert rows["Batch"] == batch_id and rows["State"] == "running"
        assert rows["Completion"] == "18.3%"  # (100 + 10) / 6 stages
        for name, percentage in zip(STAGES, ("100.0%", "10.0%", "0.0%", "0.0%", "0.0%", "0.0%"), strict=True):
            assert rows[name].startswith(percentage), (name, rows[name])
        assert rows["Elapsed"] == "1 h 45 min"
        assert rows["Deadline"] == "05:00 EST, Mon 23 Nov"
        assert rows["Time to deadline"] == "in 2 h 15 min"
        # enrich: 75 min * 90/10 left = 11 h 15 min, then the usual 70 min of the rest: 02:45 + 12 h 25 min.
        assert rows["Projected finish"] == "15:10 EST, Mon 23 Nov (10 h 10 min after the deadline)"
        assert rows["At risk"] == "YES: early warning sent"
        assert rows["Slow stage"] == "enrich: 1 h 15 min so far, usually 40 min"
        assert rows["Earlier failure"].startswith("at stage enrich: exit code 3")
        for subject in subjects:
            assert subject in text
        assert re.search(r"^at_risk\tbatch tonight-20261123 is projected to finish", text, re.MULTILINE)
        assert "<" not in text  # nothing shows up as raw markup

        with page.expect_navigation() as navigation:
            page.click("a[href='/metrics']")
        response = navigation.value
        assert response.status == 200 and response.url == url + "/metrics"
        metrics = response.text()
        assert "anthrasite_batch_completion_percentage" in metrics
        assert 'anthrasite_batch_stage_completion_percentage{batch="nightly",stage="enrich"} 10.0' in metrics


@pytest.mark.chromium
def test_it_shows_a_fresh_install_without_a_batch(chromium, tmp_path, clock, smtp_server):
    clock.set(TONIGHT - 1800)  # 00:30 EST: installed tonight, nothing has run yet
    monitor = Monitor(monitor_config(tmp_path, smtp_server.port), clock=clock)
    with browser_page(chromium) as page, running(monitor) as url:
        page.goto(url + "/")
        title, rows, text = page.title(), visible_rows(page), page.inner_text("body")
    assert title == "Batch completion: OK"
    assert rows["Batch"] == "none recorded yet"
    assert rows["Next deadline"] == "05:00 EST, Mon 23 Nov (in 4 h 30 min)"
    assert "no batch recorded yet; watching since 2026-11-23 00:30 EST; next deadline 2026-11-23 05:00 EST" in text
    assert "no stages recorded" in text and "no alerts sent" in text and "no finished batches yet" in text
    assert rows["Open incidents"] == "" and "\nnone\n" in text
    assert smtp_server.received() == []


def slow_night(tracker: BatchTracker, clock, start: float, *, stretch: float) -> None:
    """A night whose stages all take ``stretch`` times their usual time."""
    clock.set(start)
    tracker.start(list(STAGES))
    for name in STAGES:
        clock.advance(USUAL[name] * stretch)
        tracker.stage(name, 100)
    tracker.end()


RED_AND_GREEN_PIXELS = """async (png) => {
  const image = new Image();
  image.src = "data:image/png;base64," + png;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, image.width, image.height).data;
  let red = 0, green = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > 150 && data[i + 1] < 80 && data[i + 2] < 80) red++;
    if (data[i] < 60 && data[i + 1] > 100 && data[i + 2] < 90) green++;
  }
  return [red, green, image.width, image.height];
}"""


@pytest.mark.slow
@pytest.mark.chromium
def test_it_charts_the_last_30_nights_against_the_deadline(chromium, tmp_path, clock, smtp_server):
    config = monitor_config(tmp_path, smtp_server.port)
    tracker = BatchTracker(config.tracker, clock=clock)
    late_nights, failed_night, abandoned_night = {4, 11, 18}, 8, 15
    for night in range(35, 0, -1):  # five weeks, across the end of daylight saving time (1 Nov)
        start = TONIGHT - night * DAY
        if night in late_nights:
            slow_night(tracker, clock, start, stretch=2.0)  # 4 h 40 min from 01:00: past 05:00
        elif night == failed_night:
            clock.set(start)
            tracker.start(list(STAGES))
            clock.advance(2400)
            tracker.fail("enrich", "exit code 3")
        elif night == abandoned_night:
            clock.set(start)
            tracker.start(list(STAGES))
            run_night(tracker, clock, start + 600)  # restarted: the first one is abandoned
        else:
            run_night(tracker, clock, start)
    clock.set(TONIGHT)
    tracker.start(list(STAGES), batch_id="tonight")
    clock.set(TONIGHT + 2700)
    tracker.stage("scrape", 100)

    monitor = Monitor(config, clock=clock)
    with browser_page(chromium) as page, running(monitor) as url:
        page.set_viewport_size({"width": 1000, "height": 900})
        page.goto(url + "/")
        chart = page.locator("svg.nights")
        assert chart.count() == 1 and page.locator("script").count() == 0
        points = chart.locator(".point")
        assert points.count() == 30  # tonight and the 29 batches before it, of 37
        kinds = [points.nth(i).get_attribute("class").split()[1] for i in range(30)]
        assert kinds.count("late") == 3 and kinds.count("failed") == 1 and kinds.count("unfinished") == 1
        assert kinds.count("running") == 1 and kinds[-1] == "running"
        assert kinds.count("on-time") == 24
        assert chart.locator("line.deadline").count() == 1
        assert chart.locator("text.deadline-label").text_content() == "deadline 05:00 EST"
        deadline_y = chart.locator("line.deadline").bounding_box()["y"]
        for i, kind in enumerate(kinds):
            box = points.nth(i).bounding_box()
            middle = box["y"] + box["height"] / 2
            if kind == "late":
                assert middle < deadline_y, "late batches sit above the deadline line"
            elif kind == "on-time":
                assert middle > deadline_y, "on-time batches sit below it"
        assert "finished LATE 05:40 EST" in points.nth(kinds.index("late")).locator("title").text_content()
        screenshot = tmp_path / "last-30-nights.png"
        page.screenshot(path=str(screenshot), full_page=True)
        chart.screenshot(path=str(tmp_path / "chart.png"))
        png = (tmp_path / "chart.png").read_bytes()
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        blank = page.context.new_page()  # the status page's policy forbids images, data: ones included
        red, green, width, height = blank.evaluate(RED_AND_GREEN_PIXELS, base64.b64encode(png).decode())
        assert width >= 600 and height >= 200
        assert red > 100 and green > 100  # the deadline line and late marks; the on-time points


@pytest.mark.chromium
def test_it_keeps_hostile_text_inert_in_a_browser(chromium, server, providers):
    providers.status = hostile_status()
    with browser_page(chromium) as page:
        page.goto(server.url + "/")
        assert page.evaluate("window.pwned") is None
        assert page.locator("script, img").count() == 0
        assert "␛[31mRED␛[0m" in page.inner_text("body")
