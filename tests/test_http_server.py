"""The monitor's HTTP endpoint, exercised with real HTTP requests on a free loopback port.

The status page is also loaded in headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright) from a real monitor loop, to check what a person sees.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.request

import pytest
from conftest import free_port, wait_until
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge

from utils.batch_tracker import BatchTracker, TrackerConfig, get_batch_status, sibling_file
from utils.http_server import render_status_page, serve
from utils.metrics import register_batch_metrics
from utils.monitor import Monitor
from utils.monitor_config import MonitorConfig


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
        metrics_state_path=sibling_file(tracker.path, "metrics"),
        clock=clock,
    )
    with serve(
        "127.0.0.1", free_port(), registry=registry, status_provider=dict, health_provider=lambda: (True, "")
    ) as server:
        body = get(server, "/metrics")[2].decode()
    assert 'anthrasite_batch_stage_completion_percentage{stage="scrape"} 75.0' in body
    assert 'anthrasite_batch_state{state="running"} 1.0' in body


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
    assert "2023-11-14T22:13:20+00:00" in page  # epoch times shown as ISO-8601 UTC
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


# --------------------------------------------------------------------------- the page's content, rendered


def test_it_shows_elapsed_time_left_projection_and_slow_stage(tracker_config, clock):
    status = {
        "ok": True,
        "id": "b7",
        "state": "running",
        "elapsed_seconds": 6300,
        "deadline": {"local": "2026-11-23T05:00:00-05:00", "seconds_left": 8100},
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
    assert "<td>2026-11-23T15:10:00-05:00 (10 h 10 min after the deadline)</td>" in page
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
    assert "at stage enrich: exit code 3 &lt;oom&gt; (2023-11-14T23:13:20+00:00)" in page
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
    tracker_says["next_deadline"] = {"local": "2026-11-24T05:00:00-05:00", "seconds_left": 3600}
    monitor = {"open_incidents": [], "last_check_at": "2026-11-23T06:00:00+00:00", "healthy": True}
    monitor.update(ok=True, reason="no batch recorded yet; watching since 2026-11-23 00:30 EST")
    page = render_status_page({**tracker_says, "monitor": monitor})
    assert "<title>Batch completion: OK</title>" in page
    assert "<p>no batch recorded yet; watching since 2026-11-23 00:30 EST</p>" in page
    assert "<th>Next deadline</th><td>2026-11-24T05:00:00-05:00 (in 1 h 00 min)</td>" in page
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
    thread = threading.Thread(target=monitor.run, name="monitor-under-test")
    thread.start()
    try:
        wait_until(lambda: monitor.health()[0], timeout=5, message="the monitor's first check")
        yield f"http://127.0.0.1:{monitor.config.metrics_port}"
    finally:
        monitor.request_stop()
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
        assert rows["Deadline"] == "2026-11-23T05:00:00-05:00"
        assert rows["Time to deadline"] == "in 2 h 15 min"
        # enrich: 75 min * 90/10 left = 11 h 15 min, then the usual 70 min of the rest: 02:45 + 12 h 25 min.
        assert rows["Projected finish"] == "2026-11-23T15:10:00-05:00 (10 h 10 min after the deadline)"
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
        assert 'anthrasite_batch_stage_completion_percentage{stage="enrich"} 10.0' in metrics


@pytest.mark.chromium
def test_it_shows_a_fresh_install_without_a_batch(chromium, tmp_path, clock, smtp_server):
    clock.set(TONIGHT - 1800)  # 00:30 EST: installed tonight, nothing has run yet
    monitor = Monitor(monitor_config(tmp_path, smtp_server.port), clock=clock)
    with browser_page(chromium) as page, running(monitor) as url:
        page.goto(url + "/")
        title, rows, text = page.title(), visible_rows(page), page.inner_text("body")
    assert title == "Batch completion: OK"
    assert rows["Batch"] == "none recorded yet"
    assert rows["Next deadline"] == "2026-11-23T05:00:00-05:00 (in 4 h 30 min)"
    assert "no batch recorded yet; watching since 2026-11-23 00:30 EST; next deadline 2026-11-23 05:00 EST" in text
    assert "no stages recorded" in text and "no alerts sent" in text and "no finished batches yet" in text
    assert rows["Open incidents"] == "" and "\nnone\n" in text
    assert smtp_server.received() == []
