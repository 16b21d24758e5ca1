"""The hooks' ping to an off-host dead-man's switch (``BATCH_PING_URL``), in the healthchecks.io protocol.

``start`` (and ``resume``) ping ``URL/start``, ``end`` pings ``URL``, ``fail`` pings ``URL/fail``; the body says
which batch (healthchecks.io shows it with the ping). The service on the other host alerts when the success ping
does not come in time, also when this host, its monitor and its mail are all gone.

The ping never fails or slows the hook: :func:`spawn` starts a detached child process (its own session, stdin,
stdout and stderr on /dev/null, so neither a shell's ``$(...)`` nor a log pipe waits for it) and returns at once;
the child (:func:`main`) tries :data:`ATTEMPTS` times with a :data:`TIMEOUT_SECONDS` timeout each and short
pauses, then gives up: at most about 18 s, whatever the pinged service does. A ping that fails is not reported
on this host: the pinged service notices the missing ping, which is the point of it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

SUFFIXES = {"start": "/start", "resume": "/start", "end": "", "fail": "/fail"}  # hook command -> URL suffix
TIMEOUT_SECONDS = 5.0
ATTEMPTS = 3
PAUSE_SECONDS = 1.0  # before the second attempt; doubled before each later one
# The child runs this very file as a script (stdlib only), so it needs no import path: the hook's checkout it is.
_SCRIPT = os.path.abspath(__file__)


def ping_url(base: str, command: str) -> str:
    """The URL ``command`` (a key of :data:`SUFFIXES`) pings: the suffix goes before a query string."""
    path, mark, query = base.partition("?")
    return path.rstrip("/") + SUFFIXES[command] + mark + query


def spawn(base: str, command: str, body: str = "", *, python: str = sys.executable) -> int | None:
    """Start the child that pings for ``command``; return its pid, or None when it could not start
    (a warning on stderr: the hook goes on)."""
    if command not in SUFFIXES:
        return None
    argv = [python, "-I", "-S", _SCRIPT, ping_url(base, command), body[:1000]]  # -S: a faster start
    null = os.devnull
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0),
    ]
    try:
        # posix_spawn: no fork of this process and no subprocess import on the hook's critical path.
        return os.posix_spawn(python, argv, os.environ, file_actions=actions, setsid=True)
    except OSError as exc:
        sys.stderr.write(f"batch_tracker: warning: cannot start the dead-man's switch ping: {exc.strerror or exc}\n")
        return None


def ping(
    url: str,
    body: str = "",
    *,
    timeout: float = TIMEOUT_SECONDS,
    attempts: int = ATTEMPTS,
    pause: float = PAUSE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST ``body`` to ``url`` until a 2xx answer, at most ``attempts`` times; True when one came.

    408, 429, 5xx, timeouts and connection errors are retried; another answer (an unknown check: 404) is not.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connect = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
    data = body.encode("utf-8", "replace")
    for attempt in range(attempts):
        if attempt:
            sleep(pause * 2 ** (attempt - 1))
        connection = connect(parts.hostname or "", parts.port, timeout=timeout)
        try:
            connection.request("POST", target, body=data, headers={"User-Agent": "batch-tracker"})
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException):  # refused, timed out, reset, not HTTP
            continue
        finally:
            connection.close()
        if 200 <= status < 300:
            return True
        if status < 500 and status not in (408, 429):
            return False
    return False


def main(argv: list[str] | None = None) -> int:
    """The child: ``URL [BODY]``; exit 0 when the ping got through, 1 when it did not."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        return 2
    return 0 if ping(args[0], args[1] if len(args) > 1 else "") else 1


if __name__ == "__main__":
    sys.exit(main())
