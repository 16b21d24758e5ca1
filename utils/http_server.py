"""The monitor's small HTTP endpoint: Prometheus metrics, liveness, status JSON and an HTML page.

Contract:

- :func:`serve` binds ``(address, port)`` (port 0 picks a free port; the bound port
  is ``server.port``), serves in a daemon thread and returns at once.
- Routes (GET and HEAD):

  ``/metrics``      the registry in the Prometheus text format (``CONTENT_TYPE_LATEST``)
  ``/healthz``      200 ``ok`` when ``health_provider()`` says so, else 503 with its reason
  ``/status.json``  ``status_provider()`` as JSON
  ``/``             a server-rendered HTML status page for people (:func:`render_status_page`:
                    verdict, batch, stages, deadline and time left, projection, incidents,
                    alerts; no scripts, no external assets, every value escaped with
                    :func:`html.escape`; it refreshes itself every 30 s)

  Anything else is 404; other methods are 405. A provider that raises gives a 500
  with a one-line reason (and the error is logged), never a dead server thread.
- Request logging goes to :mod:`logging` at DEBUG (the library never configures logging).
- ``server.close()`` stops serving, waits for the thread and closes the socket; it is idempotent.
"""

from __future__ import annotations

import html
import json
import logging
import math
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from utils.batch_health import format_duration
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


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _when(value: object) -> str:
    """An epoch number as ISO-8601 UTC (the monitor state stores epochs); anything else escaped."""
    if _number(value) and 0 <= value < 1e11:
        return _e(format_utc(value))
    return _e(value)


def _percent(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1f}%"
    return _e(value)


def _duration(seconds: object) -> str:
    """Seconds as ``2 h 03 min`` (escaped); anything but a finite number is a dash."""
    return _e(format_duration(seconds)) if _number(seconds) else _e(None)


def _relative(seconds_left: object) -> str:
    """Seconds until an instant as ``in 2 h 03 min`` or ``47 min ago``; a dash when unknown."""
    if not _number(seconds_left):
        return _e(None)
    if seconds_left >= 0:
        return f"in {_duration(seconds_left)}"
    return f"{_duration(seconds_left)} ago"


def _deadline_text(deadline: object) -> str:
    if isinstance(deadline, dict):
        return _e(deadline.get("local") or deadline.get("utc"))
    return _e(deadline)


def _deadline_with_time_left(deadline: object) -> str:
    """``2026-11-23T05:00:00-05:00 (in 3 h 10 min)``: the local instant and how far away it is."""
    text = _deadline_text(deadline)
    left = _dict(deadline).get("seconds_left")
    return f"{text} ({_relative(left)})" if _number(left) else text


def _monitor(status: dict) -> dict:
    return _dict(status.get("monitor"))


def _monitor_view(status: dict) -> list[dict] | None:
    """The monitor's open incidents when its view is current (it has checked and is healthy), else None.

    The monitor's view is the one that alerts: it counts deadlines only from when it
    started watching and adds the early warnings, so the page follows it. A monitor
    whose checks fail has a stale view; then the tracker's own verdict speaks.
    """
    monitor = _monitor(status)
    incidents = monitor.get("open_incidents")
    if not isinstance(incidents, list) or not monitor.get("last_check_at") or monitor.get("healthy") is False:
        return None
    return [i for i in incidents if isinstance(i, dict)]


def _verdict(status: dict) -> tuple[bool | None, object]:
    """``(ok, reason)`` for the headline: the monitor's verdict when its view is current, else the tracker's."""
    monitor = _monitor(status)
    if _monitor_view(status) is not None and isinstance(monitor.get("ok"), bool):
        return monitor["ok"], monitor.get("reason")
    ok = status.get("ok")
    return (ok if isinstance(ok, bool) else None), status.get("reason")


def _recent_alerts(status: dict) -> list[dict]:
    alerts = status.get("recent_alerts") or _monitor(status).get("recent_alerts") or []
    if not isinstance(alerts, list):
        return []
    return [a for a in alerts if isinstance(a, dict)][-MAX_ALERTS_ON_PAGE:][::-1]


def _open_incidents(status: dict) -> list[dict]:
    monitored = _monitor_view(status)
    if monitored is not None:
        return monitored
    incidents = status.get("open_incidents") or _monitor(status).get("open_incidents") or []
    if isinstance(incidents, dict):
        incidents = list(incidents.values())
    if not isinstance(incidents, list):
        return []
    return [i for i in incidents if isinstance(i, dict)]


def _failure_text(failure: object) -> str | None:
    """``at stage enrich: exit code 3 (2026-...)`` for a failure record; None when there is none."""
    if not isinstance(failure, dict):
        return None
    where = f"at stage {failure['stage']}" if failure.get("stage") else "stage not recorded"
    why = f": {failure['reason']}" if failure.get("reason") else ""
    return f"{where}{why} ({failure.get('at') or 'time unknown'})"


def _projection_rows(status: dict, incidents: list[dict]) -> list[tuple[str, str]]:
    """Projected finish, at risk and slow stage, already escaped (empty when there is no batch)."""
    if status.get("id") is None:
        return []
    projection = status.get("projection")
    if not isinstance(projection, dict):
        return [("Projected finish", _e(None) if status.get("state") == "running" else "– (not running)")]
    if not projection.get("projected_completion_utc"):
        reason = projection.get("reason") or "cannot be projected"
        return [("Projected finish", f"– ({_e(reason)})")]
    finish = _e(projection.get("projected_completion_local") or projection.get("projected_completion_utc"))
    past = projection.get("seconds_past_deadline")
    if _number(past):
        side = "after" if past > 0 else "before"
        finish += f" ({_duration(past)} {side} the deadline)"
    warning = next((i for i in incidents if i.get("kind") == "at_risk"), None)
    if warning is not None:
        risk = "YES: early warning " + ("sent" if warning.get("alerted_at") else "open")
    elif _number(past):
        risk = f"projected {_duration(past)} late, no early warning yet" if past > 0 else "no"
    else:
        risk = _e(None)
    rows = [("Projected finish", finish), ("At risk", risk)]
    if projection.get("slow_stage"):
        rows.append(
            (
                "Slow stage",
                f"{_e(projection['slow_stage'])}: {_duration(projection.get('slow_stage_elapsed_seconds'))} so far, "
                f"usually {_duration(projection.get('slow_stage_usual_seconds'))}",
            )
        )
    return rows


def _summary_rows(status: dict, incidents: list[dict]) -> list[tuple[str, str]]:
    """The "current batch" table as (label, escaped HTML) pairs."""
    monitor = _monitor(status)
    tracker = _dict(status.get("tracker"))
    rows: list[tuple[str, str]] = []
    if tracker.get("readable") is False:
        rows.append(("Tracker file", f"unreadable: {_e(tracker.get('error'))}"))
    if status.get("id") is None:
        rows.append(("Batch", "none recorded yet"))
        rows.append(("Next deadline", _deadline_with_time_left(status.get("next_deadline"))))
    else:
        deadline = status.get("deadline")
        rows += [
            ("Batch", _e(status.get("id"))),
            ("State", _e(status.get("state"))),
            ("Completion", _percent(status.get("completion_percentage"))),
            ("Active stage", _e(status.get("active_stage"))),
            ("Started", _e(status.get("started_at"))),
            ("Elapsed", _duration(status.get("elapsed_seconds"))),
            ("Ended", _e(status.get("ended_at"))),
            ("Deadline", _deadline_text(deadline)),
            ("Time to deadline", _relative(_dict(deadline).get("seconds_left"))),
        ]
        rows += _projection_rows(status, incidents)
        failure = _failure_text(status.get("failure"))
        if failure:
            rows.append(("Failure", _e(failure)))
        elif status.get("state") == "running" and isinstance(status.get("failures"), list) and status["failures"]:
            earlier = _failure_text(status["failures"][-1])
            if earlier:
                rows.append(("Earlier failure", _e(f"{earlier}, resumed since")))
        rows += [
            ("Cost per lead", _e(status.get("cost_per_lead"))),
            ("GPU spend ($)", _e(status.get("gpu_cost_dollars"))),
        ]
        if _deadline_text(status.get("next_deadline")) != _deadline_text(deadline):
            rows.append(("Next deadline", _deadline_with_time_left(status.get("next_deadline"))))
    if monitor:
        rows.append(("Monitor last check", _when(monitor.get("last_check_at"))))
        if monitor.get("healthy") is False:
            rows.append(("Monitor health", "checks are not completing: see /healthz"))
        if monitor.get("delivery"):
            rows.append(("Alert delivery", _e(monitor.get("delivery"))))
        pending = _dict(monitor.get("outbox")).get("pending")
        if _number(pending) and pending > 0:
            rows.append(("Alerts awaiting delivery", _e(pending)))
    return rows


def _on_time_text(value: object) -> str:
    return {True: "on time", False: "LATE"}.get(value, "pending") if isinstance(value, bool | None) else _e(value)


def render_status_page(status: dict) -> str:
    """The HTML status page for a status dict shaped like ``get_batch_status()``.

    Shows the verdict, the current batch (state, overall and per-stage percentages,
    elapsed, deadline and time left, projected finish or why there is none, at risk,
    failure), open incidents, recent alerts and the last batches. Optional keys
    ``recent_alerts`` / ``open_incidents`` (top level or under ``monitor``) add the
    alert sections; a ``monitor`` section that has checked and is healthy decides the
    verdict and the incidents shown. Unknown shapes degrade to dashes, never errors.
    """
    status = status if isinstance(status, dict) else {}
    incidents = _open_incidents(status)
    ok, reason = _verdict(status)
    verdict = "OK" if ok else ("PROBLEM" if ok is False else "unknown")
    css_class = "ok" if ok else "bad"
    summary = "\n".join(
        f"<tr><th>{_e(label)}</th><td>{value}</td></tr>" for label, value in _summary_rows(status, incidents)
    )
    failure_stage = _dict(status.get("failure")).get("stage")
    stages = (
        [s for s in status.get("stages") or [] if isinstance(s, dict)] if isinstance(status.get("stages"), list) else []
    )

    def stage_row(s: dict) -> str:
        note = "failed here" if failure_stage and s.get("name") == failure_stage else ""
        if not note and s.get("name") and s.get("name") == status.get("active_stage"):
            note = "active"
        percentage = s.get("percentage") if _number(s.get("percentage")) else 0
        row_class = " class='active'" if note else ""
        return (
            f"<tr{row_class}><td>{_e(s.get('name'))}</td><td>{_percent(s.get('percentage'))}</td>"
            f"<td><progress max='100' value='{_e(percentage)}'></progress></td>"
            f"<td>{_e(s.get('updated_at'))}</td><td>{_e(s.get('completed_at'))}</td><td>{_e(note)}</td></tr>"
        )

    stage_rows = "\n".join(stage_row(s) for s in stages)
    incident_rows = "\n".join(
        f"<tr><td>{_e(i.get('kind'))}</td><td>{_e(i.get('summary'))}</td><td>{_when(i.get('since'))}</td>"
        f"<td>{_when(i.get('alerted_at')) if i.get('alerted_at') else 'not yet'}</td></tr>"
        for i in incidents
    )
    alert_rows = "\n".join(
        f"<tr><td>{_when(a.get('at'))}</td><td>{_e(a.get('type'))}</td><td>{_e(a.get('kind'))}</td>"
        f"<td>{_e(a.get('subject'))}</td></tr>"
        for a in _recent_alerts(status)
    )
    recent = _dict(status.get("history")).get("recent")
    history_rows = "\n".join(
        f"<tr><td>{_e(b.get('id'))}</td><td>{_e(b.get('state'))}</td><td>{_e(b.get('started_at'))}</td>"
        f"<td>{_duration(b.get('duration_seconds'))}</td><td>{_on_time_text(b.get('on_time'))}</td></tr>"
        for b in (recent if isinstance(recent, list) else [])
        if isinstance(b, dict)
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
tr.active td {{ font-weight: bold; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #b42318; }} .empty {{ color: #666; }}
</style>
</head>
<body>
<h1>Batch completion: <span class="{css_class}">{_e(verdict)}</span></h1>
<p>{_e(reason)}</p>
<p class="empty">as of {_e(status.get("now"))}</p>
<h2>Current batch</h2>
<table><tbody>
{summary}
</tbody></table>
<h2>Stages</h2>
{table(["stage", "complete", "", "updated", "completed", ""], stage_rows, "no stages recorded")}
<h2>Open incidents</h2>
{table(["kind", "summary", "since", "alerted"], incident_rows, "none")}
<h2>Recent alerts</h2>
{table(["at", "type", "kind", "subject"], alert_rows, "no alerts sent")}
<h2>Last batches</h2>
{table(["batch", "state", "started", "duration", "on time"], history_rows, "no finished batches yet")}
<p><a href="/metrics">/metrics</a> · <a href="/status.json">/status.json</a> · <a href="/healthz">/healthz</a></p>
</body>
</html>
"""
