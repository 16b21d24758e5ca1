"""The monitor's small HTTP endpoint: Prometheus metrics, liveness, status JSON and an HTML page.

GET and HEAD of ``/metrics``, ``/healthz`` (200 ``ok`` or 503 with the reason), ``/status.json`` and
``/`` (:func:`utils.status_page.render_status_page`), and per job ``/jobs/NAME`` and ``/jobs/NAME/status.json``;
with an ``overview_provider`` (one monitor, many jobs), ``/`` and ``/status.json`` list every job
(:func:`utils.status_page.render_jobs_page`). Anything else 404, other methods 405, a provider that raises 500
with a one-line reason. At most ``max_connections`` are handled at once (the rest wait
in the kernel's listen queue) and each read times out, so clients cannot starve the checks and alerts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import resource
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from utils.model import is_valid_name
from utils.status_page import PAGE_POLICY, render_jobs_page, render_status_page

LOGGER = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
READ_TIMEOUT_SECONDS = 5.0
LISTEN_BACKLOG = 128  # waiting connections live in the kernel's queue, not in this process
ACCEPT_BACKOFF_SECONDS = 0.2  # after accept() failed (no file descriptor to spare): do not spin
ACCEPT_ERROR_LOG_SECONDS = 60.0
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
# The client went away: nothing to answer, nothing worth a traceback.
HANGUPS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
JOBS_PREFIX = "/jobs/"  # /jobs/NAME: one job's page; /jobs/NAME/status.json: its JSON
JSON_SUFFIX = "/status.json"


def default_max_connections(limit: int | None = None) -> int:
    """:data:`MAX_CONNECTIONS`, or a quarter of the open-file limit when that is lower: the checks,
    state files and alert delivery need descriptors too, whatever ``ulimit -n`` the service has."""
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY or limit <= 0:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, limit // 4))


class MonitorHTTPServer(socketserver.TCPServer):
    """A running server (from :func:`serve`): ``address``, ``port`` (the bound port), ``url``,
    ``active_connections`` (never more than ``max_connections``) and :meth:`close`."""

    allow_reuse_address = True  # a restarted monitor must be able to bind its port again at once
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        server_address,
        registry,
        status_provider,
        health_provider,
        max_connections,
        read_timeout,
        job_status_provider=None,
        overview_provider=None,
    ):
        if ":" in server_address[0]:
            self.address_family = socket.AF_INET6
        self._wake_read, self._wake_write = socket.socketpair()  # before binding: a failed bind closes them
        super().__init__(server_address, _Handler)
        self.address, self.port = self.server_address[:2]
        self.registry = registry
        self.status_provider = status_provider
        self.health_provider = health_provider
        self.job_status_provider = job_status_provider
        self.overview_provider = overview_provider
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.active_connections = 0
        self._slots = threading.Condition()
        self._stopping = threading.Event()
        self._last_accept_error_log = -ACCEPT_ERROR_LOG_SECONDS
        self.socket.setblocking(False)
        self._thread = threading.Thread(target=self._serve, name=f"metrics-http-{server_address[1]}", daemon=True)
        self._thread.start()
        LOGGER.debug("serving metrics and status on %s (at most %d connections)", self.url, max_connections)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in str(self.address) else self.address
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving, wait for the accept thread and release the socket. Safe to call more than once."""
        with self._slots:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._slots.notify_all()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"!")
        self._thread.join(timeout=10)
        self.server_close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve(self) -> None:
        """Accept until :meth:`close`: wait for a free slot first, then for a connection."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                with self._slots:
                    # At capacity the listening socket is not watched: queued clients wait in the kernel.
                    while self.active_connections >= self.max_connections and not self._stopping.is_set():
                        self._slots.wait()
                if self._stopping.is_set():
                    return
                selector.select()
                if self._stopping.is_set():
                    return
                self._accept_one()

    def _accept_one(self) -> None:
        try:
            connection, client = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the connection stays queued; try again shortly
            now = time.monotonic()
            if now - self._last_accept_error_log >= ACCEPT_ERROR_LOG_SECONDS:
                self._last_accept_error_log = now
                LOGGER.warning("cannot accept HTTP connections for now (%s); alerting goes on", exc)
            self._stopping.wait(ACCEPT_BACKOFF_SECONDS)
            return
        with self._slots:
            self.active_connections += 1
        try:
            threading.Thread(target=self._handle, args=(connection, client), name="metrics-http", daemon=True).start()
        except RuntimeError as exc:  # no thread to spare: drop this client, keep the process healthy
            LOGGER.warning("cannot start an HTTP handler thread (%s); dropping %s", exc, client[0])
            self._release(connection)

    def _handle(self, connection: socket.socket, client) -> None:
        try:
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.RequestHandlerClass(connection, client, self)
        except HANGUPS as exc:
            LOGGER.debug("%s - client hung up: %s", client[0], type(exc).__name__)
        except Exception:
            LOGGER.exception("error handling an HTTP request from %s", client[0])
        finally:
            self._release(connection)

    def _release(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.close()
        with self._slots:
            self.active_connections -= 1
            self._slots.notify()

    def server_close(self) -> None:
        super().server_close()
        for end in (self._wake_read, self._wake_write):
            end.close()


def serve(
    address: str,
    port: int,
    *,
    registry,
    status_provider: Callable[[], dict],
    health_provider: Callable[[], tuple[bool, str]],
    max_connections: int | None = None,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    job_status_provider: Callable[[str], dict | None] | None = None,
    overview_provider: Callable[[], dict] | None = None,
) -> MonitorHTTPServer:
    """Serve on ``(address, port)`` (port 0: a free one) in a daemon thread and return at once.
    ``job_status_provider(name)``: a job's status for ``/jobs/NAME`` (None: no such job, 404); ``overview_provider``:
    every job, for ``/`` and ``/status.json`` (None: they show ``status_provider``'s one job).

    OSError when the address cannot be bound, ValueError for ``max_connections`` < 1 or ``read_timeout`` <= 0.
    """
    if max_connections is None:
        max_connections = default_max_connections()
    if max_connections < 1:
        raise ValueError(f"max_connections {max_connections!r} is out of range (allowed: 1 or more)")
    if not read_timeout > 0:
        raise ValueError(f"read_timeout {read_timeout!r} is out of range (allowed: more than 0 seconds)")
    return MonitorHTTPServer(
        (address, port),
        registry,
        status_provider,
        health_provider,
        max_connections,
        read_timeout,
        job_status_provider,
        overview_provider,
    )


class _Handler(BaseHTTPRequestHandler):
    server: MonitorHTTPServer
    server_version = "batch-completion-monitor"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # StreamRequestHandler.setup applies it to every read
        super().setup()

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
        if path.startswith(JOBS_PREFIX):
            self._job_route(path[len(JOBS_PREFIX) :], send_body)
            return
        routes = {
            "/metrics": self._metrics,
            "/healthz": self._health,
            "/status.json": self._status_json,
            "/": self._status_page,
            "/index.html": self._status_page,
        }
        if (route := routes.get(path)) is None:
            self._respond(404, TEXT_TYPE, b"not found (try /, /metrics, /healthz, /status.json)\n", send_body)
            return
        self._serve_route(path, route, route == self._status_page, send_body)

    def _serve_route(self, path: str, route, is_page: bool, send_body: bool) -> None:
        headers = {"Content-Security-Policy": PAGE_POLICY} if is_page else None
        try:
            status, content_type, body = route()
        except Exception as exc:  # a provider's bug must not kill the endpoint
            LOGGER.exception("error serving %s", path)
            status, content_type, headers = 500, TEXT_TYPE, None
            body = f"internal error: {type(exc).__name__}: {exc}\n".encode()
        self._respond(status, content_type, body, send_body, headers)

    def _job_route(self, rest: str, send_body: bool) -> None:
        """``/jobs/NAME`` (its page) and ``/jobs/NAME/status.json``; 404 for a job the monitor does not watch."""
        as_json = rest.endswith(JSON_SUFFIX)
        name = rest[: -len(JSON_SUFFIX)] if as_json else rest
        provider = self.server.job_status_provider
        status = provider(name) if provider is not None and is_valid_name(name) else None
        if status is None:
            self._respond(404, TEXT_TYPE, f"not found: no job {name!r} (see /)\n".encode(), send_body)
            return
        if as_json:
            route = functools.partial(self._json, status)
        else:
            route = functools.partial(self._page, status, json_path=JOBS_PREFIX + name + JSON_SUFFIX, home="/")
        self._serve_route(self.path, route, not as_json, send_body)

    def _respond(
        self, status: int, content_type: str, body: bytes, send_body: bool, headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.server.active_connections >= self.server.max_connections:
            self.send_header("Connection", "close")  # full: free this slot for a client waiting in the queue
        # Status line, headers and body in ONE write: a second small write on a kept-alive connection
        # would wait for the client's delayed ACK under Nagle's algorithm, 40 ms per scrape.
        self._headers_buffer.append(b"\r\n" + (body if send_body else b""))
        self.flush_headers()

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)

    def _health(self) -> tuple[int, str, bytes]:
        healthy, reason = self.server.health_provider()
        return (200, TEXT_TYPE, b"ok\n") if healthy else (503, TEXT_TYPE, f"unhealthy: {reason}\n".encode())

    def _status_json(self) -> tuple[int, str, bytes]:
        overview = self.server.overview_provider
        return self._json(self.server.status_provider() if overview is None else overview())

    def _status_page(self) -> tuple[int, str, bytes]:
        if self.server.overview_provider is not None:
            return 200, HTML_TYPE, render_jobs_page(self.server.overview_provider()).encode("utf-8", "replace")
        return self._page(self.server.status_provider())

    @staticmethod
    def _json(status: dict) -> tuple[int, str, bytes]:
        body = json.dumps(status, indent=2, sort_keys=True, default=str)
        return 200, JSON_TYPE, (body + "\n").encode()

    @staticmethod
    def _page(status: dict, **links: str) -> tuple[int, str, bytes]:
        return 200, HTML_TYPE, render_status_page(status, **links).encode("utf-8", "replace")
