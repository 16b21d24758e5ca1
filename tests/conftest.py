"""Shared fixtures: isolated tracker files, an injectable clock, free ports, a real SMTP server."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from utils.batch_tracker import TrackerConfig

# libfaketime, where Debian's package puts it on this machine's architecture ("" when it is not installed).
FAKETIME_LIB = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), "")

# The checkout, for its files (bin/, etc/, docs/). `utils` itself is imported from the venv, where
# bin/setup.sh installed the project (editable): no sys.path edits, here or anywhere.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

VENV_PYTHON = sys.executable


class FakeClock:
    """A settable clock (UTC epoch seconds) to inject wherever the code takes ``clock=``."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, instant: float) -> None:
        self.now = float(instant)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def run_tracker_cli(env: dict, *args: str, cwd=None, check: bool = False) -> subprocess.CompletedProcess:
    """``python -m utils.batch_tracker ARGS`` as a real subprocess, output captured as text.

    With ``check``, a non-zero exit fails the test with the command and its stderr.
    """
    result = subprocess.run(
        [VENV_PYTHON, "-m", "utils.batch_tracker", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"batch_tracker {' '.join(args)}: exit {result.returncode}: {result.stderr}"
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def at_clock():
    """``at_clock(env, "YYYY-MM-DD HH:MM")``: ``env`` for a process whose clock starts at that UTC instant."""
    if not FAKETIME_LIB:
        pytest.skip("libfaketime is not installed (Debian package faketime; bin/setup.sh --test installs it)")

    def at(env: dict, when_utc: str) -> dict:
        return dict(env, LD_PRELOAD=FAKETIME_LIB, FAKETIME=f"@{when_utc}:00", TZ="UTC")

    return at


@pytest.fixture
def tracker_file(tmp_path) -> Path:
    return tmp_path / "data" / "batch_tracker.json"


@pytest.fixture
def tracker_config(tracker_file) -> TrackerConfig:
    return TrackerConfig(tracker_file=str(tracker_file), expected_stages=("scrape", "enrich", "score"))


@pytest.fixture
def base_env(tmp_path, tracker_file) -> dict:
    """A clean environment for subprocesses: the project's settings point into tmp_path only.

    No PYTHONPATH: the venv's interpreter (first on PATH) imports the installed project.
    """
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "SMTP_", "ALERT_", "METRICS_"))}
    keep.update(
        {
            "BATCH_TRACKER_FILE": str(tracker_file),
            "LOG_DIR": str(tmp_path / "logs"),
            "PATH": f"{Path(VENV_PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    keep.pop("NOTIFY_SOCKET", None)
    return keep


class SmtpSink:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts."""

    def __init__(self, port: int | None = None):
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        self.messages: list = []
        self._lock = threading.Lock()
        self.reject_with: str | None = None  # e.g. "451 try later" to simulate a transient failure
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                if sink.reject_with:
                    return sink.reject_with
                message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
                with sink._lock:
                    sink.messages.append((envelope.rcpt_tos, message))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def received(self) -> list:
        with self._lock:
            return [message for _, message in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        return wait_until(
            lambda: len(self.received()) >= count and self.received(), timeout, message=f"{count} mail(s)"
        )


@pytest.fixture
def smtp_server():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


# --------------------------------------------------------------------------- other users


@pytest.fixture
def reachable_dir():
    """A fresh directory that every user can reach (mode 0755, in the system temp directory).

    tmp_path and the checkout may sit below directories only their owner can enter (pytest's
    basetemp is 0700; a clone may live in /root or a 0700 ``mktemp -d``): tests that run a
    program as another user put what it needs here (see :func:`copy_for_other_users`).
    """
    directory = Path(tempfile.mkdtemp(prefix="reachable-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def copy_for_other_users(directory: Path, *items: str, packages: tuple[str, ...] = ()) -> Path:
    """Copy project ``items`` (e.g. "bin", "utils") and importable ``packages`` into ``directory``.

    Everything is made readable (and directories searchable) by every user; returns
    ``directory``, to use as the project root or PYTHONPATH of a program run as another user.
    """
    import importlib

    directory.mkdir(exist_ok=True)
    directory.chmod(directory.stat().st_mode | 0o755)
    sources = [(PROJECT_ROOT / item, directory / item) for item in items]
    for package in packages:
        origin = Path(importlib.import_module(package).__file__)
        source = origin.parent if origin.name == "__init__.py" else origin
        sources.append((source, directory / source.name))
    for source, target in sources:
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
        for path in [target, *target.rglob("*")] if target.is_dir() else [target]:
            path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o444))
    return directory


def python_for_other_users() -> str:
    """An interpreter every user can run: the system's python3 (the venv's may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable
