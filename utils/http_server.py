"""The monitor's small HTTP endpoint: Prometheus metrics, liveness, status JSON and an HTML page.

Contract:

- :func:`serve` binds ``(address, port)`` (port 0 picks a free port; the bound port
  is ``server.port``), serves in a daemon thread and returns at once.
- Routes (GET and HEAD):

  ``/metrics``      the registry in the Prometheus text format (``CONTENT_TYPE_LATEST``)
  ``/healthz``      200 ``ok`` when ``health_provider()`` says so, else 503 with its reason
  ``/status.json``  ``status_provider()`` as JSON
  ``/``             a server-rendered HTML status page (no scripts, no external assets;
                    every value is escaped with :func:`html.escape`)

  Anything else is 404; other methods are 405. A provider that raises gives a 500
  with a one-line reason (and the error is logged), never a dead server thread.
- Request logging goes to :mod:`logging` at DEBUG (the library never configures logging).
- ``server.close()`` stops serving, waits for the thread and closes the socket; it is idempotent.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from utils.deadline import format_utc

LOGGER = logging.getLogger(__name__)

MAX_ALERTS_ON_PAGE = 10
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"


class MonitorHTTPServer:
    """A running server: ``address``, ``port`` (the bound port), ``url`` and :meth:`close`."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread
        self._closed = False
        self._close_lock = threading.Lock()
        self.address, self.port = httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in str(self.address) else self.address
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the socket. Safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        stopper = threading.Thread(target=self._httpd.shutdown, name="metrics-http-stop", daemon=True)
        stopper.start()
        # serve_forever() notices the shutdown request only when its select() returns:
        # a throwaway connection wakes it at once instead of after its poll interval.
        while stopper.is_alive():
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
            except OSError:
                pass
            stopper.join(0.05)
        self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> MonitorHTTPServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A restarted monitor must be able to bind its port again at once.
    allow_reuse_address = True

    def __init__(self, server_address, handler, *, registry, status_provider, health_provider):
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(server_address, handler)
        self.registry = registry
        self.status_provider = status_provider
        self.health_provider = health_provider


def serve(
    address: str,
    port: int,
    *,
    registry,
    status_provider: Callable[[], dict],
    health_provider: Callable[[], tuple[bool, str]],
) -> MonitorHTTPServer:
    """Start serving on ``(address, port)`` in a daemon thread; see the module docstring.

    Raises :class:`OSError` when the address cannot be bound (e.g. the port is in use).
    """
    httpd = _Server(
        (address, port),
        _Handler,
        registry=registry,
        status_provider=status_provider,
        health_provider=health_provider,
    )
    thread = threading.Thread(target=httpd.serve_forever, name=f"metrics-http-{port}", daemon=True)
    thread.start()
    server = MonitorHTTPServer(httpd, thread)
    LOGGER.debug("serving metrics and status on %s", server.url)
    return server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "batch-completion-monitor"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the base class names the parameter so
        LOGGER.debug("%s - " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def _not_allowed(self) -> None:
        self._respond(405, TEXT_TYPE, b"method not allowed (allowed: GET, HEAD)\n", True, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _dispatch(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        routes = {
            "/metrics": self._metrics,
            "/healthz": self._health,
            "/status.json": self._status_json,
            "/": self._status_page,
            "/index.html": self._status_page,
        }
        route = routes.get(path)
        if route is None:
            self._respond(404, TEXT_TYPE, b"not found (try /, /metrics, /healthz, /status.json)\n", send_body)
            return
        try:
            status, content_type, body = route()
        except Exception as exc:  # a provider's bug must not kill the endpoint
            LOGGER.exception("error serving %s", path)
            status, content_type = 500, TEXT_TYPE
            body = f"internal error: {type(exc).__name__}: {exc}\n".encode()
        self._respond(status, content_type, body, send_body)

    def _respond(
        self, status: int, content_type: str, body: bytes, send_body: bool, headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    # ----- routes: each returns (status, content type, body)

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)

    def _health(self) -> tuple[int, str, bytes]:
        healthy, reason = self.server.health_provider()
        if healthy:
            return 200, TEXT_TYPE, b"ok\n"
        return 503, TEXT_TYPE, f"unhealthy: {reason}\n".encode()

    def _status_json(self) -> tuple[int, str, bytes]:
        body = json.dumps(self.server.status_provider(), indent=2, sort_keys=True, default=str)
        return 200, JSON_TYPE, (body + "\n").encode()

    def _status_page(self) -> tuple[int, str, bytes]:
        return 200, HTML_TYPE, render_status_page(self.server.status_provider()).encode()


# --------------------------------------------------------------------------- the HTML page


def _e(value: object) -> str:
    """Escape anything for HTML text or attribute context; None shows as a dash."""
    return "–" if value is None else html.escape(str(value), quote=True)


def _when(value: object) -> str:
    """An epoch number as ISO-8601 UTC (the monitor state stores epochs); anything else escaped."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11:
        return _e(format_utc(value))
    return _e(value)


def _percent(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1f}%"
    return _e(value)


def _deadline_text(deadline: object) -> str:
    if isinstance(deadline, dict):
        return _e(deadline.get("local") or deadline.get("utc"))
    return _e(deadline)


def _recent_alerts(status: dict) -> list[dict]:
    monitor = status.get("monitor") if isinstance(status.get("monitor"), dict) else {}
    alerts = status.get("recent_alerts") or monitor.get("recent_alerts") or []
    return [a for a in alerts if isinstance(a, dict)][-MAX_ALERTS_ON_PAGE:][::-1]


def _open_incidents(status: dict) -> list[dict]:
    monitor = status.get("monitor") if isinstance(status.get("monitor"), dict) else {}
    incidents = status.get("open_incidents") or monitor.get("open_incidents") or []
    if isinstance(incidents, dict):
        incidents = list(incidents.values())
    return [i for i in incidents if isinstance(i, dict)]


def render_status_page(status: dict) -> str:
    """The HTML status page for a status dict shaped like ``get_batch_status()``.

    Optional keys ``recent_alerts`` / ``open_incidents`` (top level or under
    ``monitor``) add the alert sections. Unknown shapes degrade to dashes, never errors.
    """
    status = status if isinstance(status, dict) else {}
    ok = status.get("ok")
    verdict = "OK" if ok else ("PROBLEM" if ok is False else "unknown")
    css_class = "ok" if ok else "bad"
    rows = [
        ("Batch", status.get("id")),
        ("State", status.get("state")),
        ("Completion", _percent(status.get("completion_percentage"))),
        ("Started", status.get("started_at")),
        ("Ended", status.get("ended_at")),
        ("Deadline", _deadline_text(status.get("deadline"))),
        ("Next deadline", _deadline_text(status.get("next_deadline"))),
        ("Active stage", status.get("active_stage")),
        ("Cost per lead", status.get("cost_per_lead")),
        ("GPU spend ($)", status.get("gpu_cost_dollars")),
    ]
    monitor = status.get("monitor") if isinstance(status.get("monitor"), dict) else {}
    if monitor:
        rows.append(("Monitor last check", monitor.get("last_check_at")))
    already_escaped = {"Completion", "Deadline", "Next deadline"}
    summary = "\n".join(
        f"<tr><th>{_e(label)}</th><td>{value if label in already_escaped else _e(value)}</td></tr>"
        for label, value in rows
    )
    stages = [s for s in status.get("stages") or [] if isinstance(s, dict)]
    stage_rows = "\n".join(
        f"<tr><td>{_e(s.get('name'))}</td><td>{_percent(s.get('percentage'))}</td>"
        f"<td><progress max='100' value='{_e(s.get('percentage') or 0)}'></progress></td>"
        f"<td>{_e(s.get('updated_at'))}</td><td>{_e(s.get('completed_at'))}</td></tr>"
        for s in stages
    )
    incident_rows = "\n".join(
        f"<tr><td>{_e(i.get('kind'))}</td><td>{_e(i.get('summary'))}</td><td>{_when(i.get('since'))}</td></tr>"
        for i in _open_incidents(status)
    )
    alert_rows = "\n".join(
        f"<tr><td>{_when(a.get('at'))}</td><td>{_e(a.get('type'))}</td><td>{_e(a.get('kind'))}</td>"
        f"<td>{_e(a.get('subject'))}</td></tr>"
        for a in _recent_alerts(status)
    )

    def table(headers: list[str], body: str, empty: str) -> str:
        if not body:
            return f"<p class='empty'>{_e(empty)}</p>"
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<title>Batch completion: {_e(verdict)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #b42318; }} .empty {{ color: #666; }}
</style>
</head>
<body>
<h1>Batch completion: <span class="{css_class}">{_e(verdict)}</span></h1>
<p>{_e(status.get("reason"))}</p>
<p class="empty">as of {_e(status.get("now"))}</p>
<h2>Current batch</h2>
<table><tbody>
{summary}
</tbody></table>
<h2>Stages</h2>
{table(["stage", "complete", "", "updated", "completed"], stage_rows, "no stages recorded")}
<h2>Open incidents</h2>
{table(["kind", "summary", "since"], incident_rows, "none")}
<h2>Recent alerts</h2>
{table(["at", "type", "kind", "subject"], alert_rows, "no alerts sent")}
<p><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a> · <a href="/healthz">/healthz</a></p>
</body>
</html>
"""
