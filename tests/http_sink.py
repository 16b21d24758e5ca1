"""A real HTTP server on 127.0.0.1 that records every request and answers as a test tells it to:
``ok`` (200), a status code, ``hang`` (holds the request until released or stopped) or ``drop`` (closes the
connection without an answer). Used by the webhook, Alertmanager and dead-man's switch tests, and the bench."""

from __future__ import annotations

import http.server
import json
import threading
import time

from conftest import free_port, wait_until


class HttpSink:
    """``mode``: "ok", an int status, "hang" or "drop"; ``requests``: (method, path, headers, body) received."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.mode: str | int = "ok"
        self.reply_body = b"ok"
        self._requests: list[tuple[str, str, dict, bytes]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request, in order
        self._lock = threading.Lock()
        self._release = threading.Event()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with sink._lock:
                    sink._requests.append((self.command, self.path, dict(self.headers), body))
                    sink.arrivals.append(time.monotonic())
                mode = sink.mode
                if mode == "hang":
                    sink._release.wait(60)
                    self.close_connection = True
                    return
                if mode == "drop":
                    self.close_connection = True
                    return
                status = 200 if mode == "ok" else int(mode)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(sink.reply_body)))
                self.end_headers()
                self.wfile.write(sink.reply_body)

            do_POST = do_GET = do_HEAD = do_PUT = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        """Let hanging requests go (they end without an answer)."""
        self._release.set()

    def requests(self) -> list[tuple[str, str, dict, bytes]]:
        with self._lock:
            return list(self._requests)

    def json_bodies(self, path_prefix: str = "") -> list:
        return [json.loads(body) for _, path, _, body in self.requests() if path.startswith(path_prefix) and body]

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        return wait_until(
            lambda: len(self.requests()) >= count and self.requests(), timeout, message=f"{count} request(s)"
        )
