"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.policy import SMTP

import pytz

from utils.counters import DURATION_BUCKETS
from utils.state_store import read_json_object, write_json_atomically
from utils.transports import SmtpTransport

NEW_YORK = "America/New_York"


def local_epoch(zone: str, year: int, month: int, day: int, hour=0, minute=0, second=0, *, is_dst=None) -> float:
    """UTC epoch of a wall time in ``zone`` (pytz ``localize``; ``is_dst=None`` refuses a skipped or
    repeated wall time, True/False picks a side)."""
    wall = dt.datetime(year, month, day, hour, minute, second)
    return pytz.timezone(zone).localize(wall, is_dst=is_dst).timestamp()


def ny_epoch(text: str, zone: str = NEW_YORK, *, is_dst=None) -> float:
    """UTC epoch of ``YYYY-MM-DD HH:MM[:SS]`` New York wall time (or ``zone``'s), e.g. ``ny_epoch("2026-06-01 05:00")``."""
    wall = dt.datetime.fromisoformat(text)
    return local_epoch(zone, wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, is_dst=is_dst)


def start_at(tracker, clock, instant: float, stages=None) -> str:
    """Start a batch on ``tracker`` at ``instant`` (the injected ``clock`` set there); its id."""
    clock.set(instant)
    return tracker.start(stages)


def forget_counters(tracker) -> None:
    """Rewrite the tracker file without its counters, as an older release wrote it."""
    document = read_json_object(tracker.path)
    del document["counters"]
    write_json_atomically(tracker.path, document)


def legacy_metrics_state(**changes) -> dict:
    """An older release's metrics state document (``<tracker>.metrics.json``), empty unless changed."""
    return {
        "schema_version": 1,
        "completion_time": {
            "bounds": list(DURATION_BUCKETS),
            "counts": [0] * (len(DURATION_BUCKETS) + 1),
            "sum": 0.0,
            "count": 0,
        },
        "observed": {},
        "completed": {"on_time": 0, "late": 0},
        "gpu": {"total": 0.0, "counted": {}},
        "last_success_at": None,
        "watermark": None,
        **changes,
    }


def simple_message(
    subject: str = "[LATE] test", message_id: str = "<one@example.com>", to="ops@example.com"
) -> EmailMessage:
    """A minimal, well-formed alert-like message for transport and outbox tests."""
    message = EmailMessage(policy=SMTP)
    message["From"] = "leadfactory@example.com"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("body\n")
    return message


def plain(sink, **kwargs) -> SmtpTransport:
    """An unencrypted SMTP transport to ``sink`` (conftest's SmtpSink on 127.0.0.1)."""
    return SmtpTransport("127.0.0.1", sink.port, security="plain", timeout=5, **kwargs)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within a second (False while nothing listens yet)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def assert_systemd_verifies(unit_files) -> None:
    """``systemd-analyze verify`` accepts the unit files, silently (a warning fails too)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(path) for path in unit_files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
