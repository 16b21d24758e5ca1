"""Alert e-mails: content, header safety, stable Message-IDs, resolutions."""

from __future__ import annotations

import datetime as dt

import pytest

from utils import batch_health
from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.deadline import DailyDeadline
from utils.mail_compose import (
    ALERT,
    RECOVERY,
    REMINDER,
    MailContext,
    compose_message,
    header_safe,
    message_id_for,
    resolution,
)

DEADLINE = DailyDeadline(5, 0, "America/New_York")
BATCH_ID = "20261123T060000Z-ab12"
INJECTION = "exit code 3\r\nBcc: evil@example.com"


def ny(text: str) -> float:
    """``YYYY-MM-DD HH:MM`` New York wall time as a UTC epoch."""
    return DEADLINE.zone.localize(dt.datetime.strptime(text, "%Y-%m-%d %H:%M"), is_dst=None).timestamp()


@pytest.fixture
def tracker(tracker_file, clock):
    config = TrackerConfig(tracker_file=str(tracker_file), expected_stages=("scrape", "enrich", "score"))
    return BatchTracker(config, clock=clock)


@pytest.fixture
def ctx(tracker_file):
    return MailContext(
        batch_name="nightly",
        deadline=DEADLINE,
        sender="leadfactory@example.com",
        recipients=("ops@example.com", "oncall@example.org"),
        tracker_file=str(tracker_file),
        hostname="worker-1",
    )


def record_of(incident, opened_at: float) -> dict:
    return {**incident._asdict(), "opened_at": opened_at, "alerted_at": None}


def late_batch(tracker, clock) -> None:
    clock.set(ny("2026-11-23 01:00"))
    tracker.start(batch_id=BATCH_ID)
    clock.set(ny("2026-11-23 01:40"))
    tracker.stage("scrape", 100)
    clock.set(ny("2026-11-23 02:10"))
    tracker.stage("enrich", 40)


def compose(ctx, tracker, now, kind, notification_type=ALERT, **extra):
    snapshot = tracker.snapshot()
    incident = next(i for i in batch_health.open_incidents(snapshot, now, DEADLINE) if i.kind == kind)
    record = record_of(incident, now)
    message_id = message_id_for(batch_health.identity(incident), now, notification_type, 0, "example.com")
    message = compose_message(
        ctx,
        notification_type=notification_type,
        incident=record,
        snapshot=snapshot,
        now=now,
        message_id=message_id,
        **extra,
    )
    return message, record


# --------------------------------------------------------------------------- composing


def test_it_composes_a_late_alert_with_everything_on_call_needs(ctx, tracker, clock):
    late_batch(tracker, clock)
    now = ny("2026-11-23 05:12")
    message, _ = compose(ctx, tracker, now, "late")
    assert message["Subject"] == f"[LATE] nightly batch {BATCH_ID} missed its 05:00 EST deadline (Mon 2026-11-23)"
    assert message["To"] == "ops@example.com, oncall@example.org"
    assert message["From"] == "leadfactory@example.com"
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    for expected in (
        BATCH_ID,
        "Started:       2026-11-23 01:00 EST (2026-11-23T06:00:00+00:00)",
        "Deadline:      2026-11-23 05:00 EST (2026-11-23T10:00:00+00:00), passed 12 min ago",
        "Elapsed:       4 h 12 min",
        "Overall:       46.7%",
        "Looks stuck:   enrich (last update 2026-11-23 02:10 EST, 3 h 02 min ago)",
        "scrape  100.0%  last update 2026-11-23 01:40 EST (2026-11-23T06:40:00+00:00)",
        "enrich   40.0%  last update 2026-11-23 02:10 EST (2026-11-23T07:10:00+00:00)",
        "score     0.0%  not started",
        "python -m utils.batch_tracker status",
        "journalctl -u batch-completion-monitor",
        "grep -i error logs/nightly_*.log",
        "bin/run_nightly.sh --resume",
    ):
        assert expected in body, f"{expected!r} not in:\n{body}"


def test_it_composes_a_failed_alert_with_the_reason_on_one_line(ctx, tracker, clock):
    late_batch(tracker, clock)
    clock.set(ny("2026-11-23 02:30"))
    tracker.fail("enrich", INJECTION)
    message, _ = compose(ctx, tracker, ny("2026-11-23 02:30"), "failed")
    assert message["Subject"] == f"[FAILED] nightly batch {BATCH_ID} failed at stage enrich (2026-11-23 02:30 EST)"
    body = message.get_content()
    assert "Failure:       stage enrich: exit code 3 Bcc: evil@example.com (2026-11-23 02:30 EST)" in body
    assert not any(line.startswith("Bcc") for line in body.splitlines())
    assert message["Bcc"] is None


def test_it_composes_missing_and_unreadable_alerts(ctx, tracker, tracker_file, clock):
    now = ny("2026-11-24 05:00")
    snapshot = tracker.snapshot()
    missing = batch_health.open_incidents(snapshot, now, DEADLINE, watch_since=ny("2026-11-23 12:00"))
    assert [i.kind for i in missing] == ["missing"]
    message = compose_message(
        ctx,
        notification_type=ALERT,
        incident=record_of(missing[0], now),
        snapshot=snapshot,
        now=now,
        message_id="<m@x>",
    )
    assert message["Subject"] == "[MISSING] no nightly batch started before the 05:00 EST deadline (Tue 2026-11-24)"
    assert "Deadline:      2026-11-24 05:00 EST (2026-11-24T10:00:00+00:00)" in message.get_content()

    tracker_file.parent.mkdir(parents=True, exist_ok=True)
    tracker_file.write_text("{not json")
    snapshot = tracker.snapshot()
    unreadable = batch_health.open_incidents(snapshot, now, DEADLINE)
    message = compose_message(
        ctx,
        notification_type=ALERT,
        incident=record_of(unreadable[0], now),
        snapshot=snapshot,
        now=now,
        message_id="<u@x>",
    )
    assert message["Subject"].startswith("[TRACKER UNREADABLE] nightly batch tracker file cannot be read")
    body = message.get_content()
    assert str(tracker_file) in body and "Read error:" in body


def test_it_composes_recoveries_and_reminders(ctx, tracker, clock):
    late_batch(tracker, clock)
    opened = ny("2026-11-23 05:00")
    _, record = compose(ctx, tracker, opened, "late")
    clock.set(ny("2026-11-23 05:47"))
    tracker.end()
    snapshot = tracker.snapshot()
    text = resolution(record, snapshot, DEADLINE, clock())
    assert text == f"batch {BATCH_ID} completed 47 min late, at 2026-11-23 05:47 EST"
    recovery = compose_message(
        ctx,
        notification_type=RECOVERY,
        incident=record,
        snapshot=snapshot,
        now=clock(),
        message_id="<r@x>",
        resolution_text=text,
    )
    assert recovery["Subject"] == f"[RECOVERED] nightly LATE: {text}"
    assert recovery.get_content().startswith(f"RECOVERED: {text}.")
    reminder = compose_message(
        ctx,
        notification_type=REMINDER,
        incident=record,
        snapshot=snapshot,
        now=opened + 7200,
        message_id="<n@x>",
        reminder_number=2,
    )
    assert reminder["Subject"].startswith("[REMINDER 2] [LATE] nightly batch")
    assert reminder["Subject"].endswith("open for 2 h 00 min")


def test_it_keeps_tracker_text_out_of_headers(ctx, tracker, clock):
    record = {
        "kind": "odd\r\nBcc: evil@example.com",
        "key": "k\nX-Injected: 1",
        "summary": "line one\r\nBcc: evil@example.com",
        "since": clock(),
        "batch_id": None,
        "opened_at": clock(),
    }
    message = compose_message(
        ctx, notification_type=ALERT, incident=record, snapshot=tracker.snapshot(), now=clock(), message_id="<h@x>"
    )
    raw = message.as_bytes()
    headers = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert "\nBcc:" not in headers and "\nX-Injected" not in headers
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert header_safe("a\r\nb\x00c\td") == "a b c d"


def test_it_derives_a_stable_message_id_per_notification():
    first = message_id_for("late:b1", 100.0, ALERT, 0, "example.com")
    assert first == message_id_for("late:b1", 100.0, ALERT, 0, "example.com")
    others = {
        message_id_for("late:b1", 100.0, RECOVERY, 0, "example.com"),
        message_id_for("late:b1", 101.0, ALERT, 0, "example.com"),
        message_id_for("late:b2", 100.0, ALERT, 0, "example.com"),
        message_id_for("late:b1", 100.0, REMINDER, 1, "example.com"),
        message_id_for("late:b1", 100.0, REMINDER, 2, "example.com"),
    }
    assert first not in others and len(others) == 5
    assert first.startswith("<") and first.endswith("@example.com>")


# --------------------------------------------------------------------------- resolutions


def test_it_explains_how_each_incident_cleared(tracker, clock):
    clock.set(ny("2026-11-23 01:00"))
    tracker.start(batch_id="b1")
    clock.set(ny("2026-11-23 02:00"))
    tracker.fail("enrich", "exit 3")
    failed = {"kind": "failed", "key": "b1", "batch_id": "b1", "summary": "", "since": 0, "opened_at": 0}
    clock.set(ny("2026-11-23 02:30"))
    tracker.resume()
    clock.set(ny("2026-11-23 04:00"))
    tracker.end()
    assert (
        resolution(failed, tracker.snapshot(), DEADLINE, clock())
        == "batch b1 completed after resume at 2026-11-23 04:00 EST (on time, 1 h 00 min early)"
    )

    clock.set(ny("2026-11-24 01:00"))
    tracker.start(batch_id="b2")
    tracker.fail(None, "killed")
    clock.set(ny("2026-11-25 01:00"))
    tracker.start(batch_id="b3")
    clock.set(ny("2026-11-25 03:00"))
    tracker.end()
    failed_b2 = dict(failed, key="b2", batch_id="b2")
    assert (
        resolution(failed_b2, tracker.snapshot(), DEADLINE, clock())
        == "a new batch b3 completed at 2026-11-25 03:00 EST"
    )

    due = ny("2026-11-26 05:00")
    missing = {"kind": "missing", "key": f"{due:.0f}", "batch_id": None, "summary": "", "since": due, "opened_at": due}
    assert resolution(missing, tracker.snapshot(), DEADLINE, due) is None  # nothing started: not resolved
    clock.set(ny("2026-11-26 06:10"))
    tracker.start(batch_id="b4")
    assert (
        resolution(missing, tracker.snapshot(), DEADLINE, clock())
        == "batch b4 started at 2026-11-26 06:10 EST, 1 h 10 min after the 2026-11-26 05:00 EST deadline"
    )
    unreadable = {"kind": "tracker_unreadable", "key": "tracker", "batch_id": None, "opened_at": 0}
    assert resolution(unreadable, tracker.snapshot(), DEADLINE, clock()) == "the tracker file is readable again"
