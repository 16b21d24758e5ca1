"""The monitor's HTTP endpoint, exercised with real HTTP requests on a free loopback port."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.request

import pytest
from conftest import free_port
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge

from utils.batch_tracker import BatchTracker, get_batch_status, sibling_file
from utils.http_server import render_status_page, serve
from utils.metrics import register_batch_metrics


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
