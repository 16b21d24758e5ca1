"""Alert e-mails: content, header safety, stable Message-IDs, resolutions."""

from __future__ import annotations

import dataclasses
import os
import types

import pytest
from conftest import wait_until
from helpers import NEW_YORK, ny_epoch

from utils import batch_tracker, incidents, model
from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.config import ConfigError, MonitorConfig
from utils.deadline import DailyDeadline
from utils.mail_compose import (
    ALERT,
    RECOVERY,
    REMINDER,
    IncidentFacts,
    MailContext,
    compose_message,
    header_safe,
    message_id_for,
    parse_message,
    resolution,
)
from utils.outbox import Outbox
from utils.transports import SmtpTransport

DEADLINE = DailyDeadline(5, 0, NEW_YORK)
BATCH_ID = "20261123T060000Z-ab12"
INJECTION = "exit code 3\r\nBcc: evil@example.com"


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
    return {**incident.to_dict(), "opened_at": opened_at, "alerted_at": None}


def late_batch(tracker, clock) -> None:
    clock.set(ny_epoch("2026-11-23 01:00"))
    tracker.start(batch_id=BATCH_ID)
    clock.set(ny_epoch("2026-11-23 01:40"))
    tracker.stage("scrape", 100)
    clock.set(ny_epoch("2026-11-23 02:10"))
    tracker.stage("enrich", 40)


def compose(ctx, tracker, now, kind, notification_type=ALERT, **extra):
    snapshot = tracker.snapshot()
    incident = next(i for i in incidents.open_incidents(snapshot, now, DEADLINE) if i.kind == kind)
    record = record_of(incident, now)
    message_id = message_id_for(incident.identity, now, notification_type, 0, "example.com")
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
    now = ny_epoch("2026-11-23 05:12")
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
        "bin/batch_tracker status",
        "tail -n 50 logs/nightly_20261123.log",  # the log the runner wrote for this batch's run
    ):
        assert expected in body, f"{expected!r} not in:\n{body}"
    assert "--resume" not in body  # only a failed batch can be resumed


def test_it_composes_a_failed_alert_with_the_reason_on_one_line(ctx, tracker, clock):
    late_batch(tracker, clock)
    clock.set(ny_epoch("2026-11-23 02:30"))
    tracker.fail("enrich", INJECTION)
    message, _ = compose(ctx, tracker, ny_epoch("2026-11-23 02:30"), "failed")
    assert message["Subject"] == f"[FAILED] nightly batch {BATCH_ID} failed at stage enrich (2026-11-23 02:30 EST)"
    body = message.get_content()
    assert "Failure:       stage enrich: exit code 3 Bcc: evil@example.com (2026-11-23 02:30 EST)" in body
    assert not any(line.startswith("Bcc") for line in body.splitlines())
    assert message["Bcc"] is None


def test_it_composes_missing_and_unreadable_alerts(ctx, tracker, tracker_file, clock):
    now = ny_epoch("2026-11-24 05:00")
    snapshot = tracker.snapshot()
    missing = incidents.open_incidents(snapshot, now, DEADLINE, watch_since=ny_epoch("2026-11-23 12:00"))
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
    unreadable = incidents.open_incidents(snapshot, now, DEADLINE)
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
    opened = ny_epoch("2026-11-23 05:00")
    _, record = compose(ctx, tracker, opened, "late")
    clock.set(ny_epoch("2026-11-23 05:47"))
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


def test_it_keeps_the_message_ids_of_two_jobs_apart_and_one_jobs_as_before():
    # One monitor, many jobs: two jobs may open the same identity at the same check (the same deadline missed).
    leads, rescore = (message_id_for("missing:100", 5.0, ALERT, 0, "example.com", scope) for scope in ("a", "b"))
    assert leads != rescore
    # Hard-coded: the id of one job without a jobs file stays what it was before jobs existed (threads and
    # pending notices of an upgraded monitor keep matching).
    assert message_id_for("late:b1", 100.0, ALERT, 0, "example.com", "") == (
        "<batch-monitor.2e803ff4711ec7c370bdd52799817625.alert@example.com>"
    )


# --------------------------------------------------------------------------- resolutions


def test_it_explains_how_each_incident_cleared(tracker, clock):
    clock.set(ny_epoch("2026-11-23 01:00"))
    tracker.start(batch_id="b1")
    clock.set(ny_epoch("2026-11-23 02:00"))
    tracker.fail("enrich", "exit 3")
    failed = {"kind": "failed", "key": "b1", "batch_id": "b1", "summary": "", "since": 0, "opened_at": 0}
    clock.set(ny_epoch("2026-11-23 02:30"))
    tracker.resume()
    clock.set(ny_epoch("2026-11-23 04:00"))
    tracker.end()
    assert (
        resolution(failed, tracker.snapshot(), DEADLINE, clock())
        == "batch b1 completed after resume at 2026-11-23 04:00 EST (on time, 1 h 00 min early)"
    )

    clock.set(ny_epoch("2026-11-24 01:00"))
    tracker.start(batch_id="b2")
    tracker.fail(None, "killed")
    clock.set(ny_epoch("2026-11-25 01:00"))
    tracker.start(batch_id="b3")
    clock.set(ny_epoch("2026-11-25 03:00"))
    tracker.end()
    failed_b2 = dict(failed, key="b2", batch_id="b2")
    assert (
        resolution(failed_b2, tracker.snapshot(), DEADLINE, clock())
        == "a new batch b3 completed at 2026-11-25 03:00 EST"
    )

    due = ny_epoch("2026-11-26 05:00")
    missing = {"kind": "missing", "key": f"{due:.0f}", "batch_id": None, "summary": "", "since": due, "opened_at": due}
    assert resolution(missing, tracker.snapshot(), DEADLINE, due) is None  # nothing started: not resolved
    clock.set(ny_epoch("2026-11-26 06:10"))
    tracker.start(batch_id="b4")
    assert (
        resolution(missing, tracker.snapshot(), DEADLINE, clock())
        == "batch b4 started at 2026-11-26 06:10 EST, 1 h 10 min after the 2026-11-26 05:00 EST deadline"
    )
    unreadable = {"kind": "tracker_unreadable", "key": "tracker", "batch_id": None, "opened_at": 0}
    assert resolution(unreadable, tracker.snapshot(), DEADLINE, clock()) == "the tracker file is readable again"


# --------------------------------------------------------------------------- issue 11: what on-call reads at 05:05

INSTALLED = {
    "cli_command": "batch-tracker",
    "run_command": "sudo systemctl start nightly-batch@run",
    "resume_command": "sudo systemctl start nightly-batch@resume",
    "log_dir": "/var/log/batch-completion-monitor",
    "under_systemd": True,
}


def record(kind, key, batch_id=None, opened_at=None, summary="something happened"):
    opened_at = ny_epoch("2026-11-23 05:00") if opened_at is None else opened_at
    return {
        "kind": kind,
        "key": key,
        "summary": summary,
        "since": opened_at,
        "batch_id": batch_id,
        "opened_at": opened_at,
    }


def body_of(ctx, tracker, incident, notification_type=ALERT, now=None, **extra):
    now = ny_epoch("2026-11-23 05:05") if now is None else now
    message = compose_message(
        ctx,
        notification_type=notification_type,
        incident=incident,
        snapshot=tracker.snapshot(),
        now=now,
        message_id=message_id_for(IncidentFacts.of(incident).identity, now, notification_type, 0, "example.com"),
        **extra,
    )
    return message, message.get_content()


def steps_of(body: str) -> str:
    assert "\nNext steps:\n" in body, body
    return body.split("\nNext steps:\n", 1)[1].split("\n\n", 1)[0]


def test_it_gives_next_steps_per_incident_kind_with_the_installations_commands(ctx, tracker, clock, tracker_file):
    installed = dataclasses.replace(ctx, **INSTALLED)
    late_batch(tracker, clock)
    due = f"{ny_epoch('2026-11-24 05:00'):.0f}"
    incidents = {
        "late": record("late", BATCH_ID, BATCH_ID),
        "missing": record("missing", due),
        "tracker_unreadable": record("tracker_unreadable", "tracker"),
        "at_risk": record("at_risk", BATCH_ID, BATCH_ID),
        "too_short": record("too_short", BATCH_ID, BATCH_ID),
        "stalled_stage": record("stalled_stage", f"{BATCH_ID}:enrich", BATCH_ID),
    }
    steps = {kind: steps_of(body_of(installed, tracker, incident)[1]) + "\n" for kind, incident in incidents.items()}
    clock.set(ny_epoch("2026-11-23 02:30"))
    tracker.fail("enrich", "exit code 4")
    steps["failed"] = steps_of(body_of(installed, tracker, record("failed", BATCH_ID, BATCH_ID))[1]) + "\n"

    log = "/var/log/batch-completion-monitor/nightly_20261123.log"
    expected = {
        "late": ["batch-tracker status", f"tail -n 50 {log}", "batch-tracker history"],
        "failed": [f"grep -n -e ERROR -e '\\[enrich\\]' {log}", "sudo systemctl start nightly-batch@resume"],
        "missing": [
            "systemctl list-timers nightly-batch.timer",
            "journalctl -u 'nightly-batch@*'",
            "ls -lt /var/log/batch-completion-monitor",
            "  sudo systemctl start nightly-batch@run\n",
        ],
        "tracker_unreadable": [
            "batch-tracker status",
            f"ls -l {tracker_file.parent}",
            "journalctl -u batch-completion-monitor",
        ],
        "at_risk": ["batch-tracker status", f"tail -n 50 {log}"],
        "too_short": ["batch-tracker history", f"-e warning {log}"],
        "stalled_stage": [f"tail -n 50 {log}", "systemctl status 'nightly-batch@*'"],
    }
    for kind, wanted in expected.items():
        for text in wanted:
            assert text in steps[kind], f"{kind}: {text!r} not in:\n{steps[kind]}"
        # The checkout's paths never reach an installed service's e-mail.
        assert "python -m utils.batch_tracker" not in steps[kind] and "logs/nightly_" not in steps[kind]
        assert "bin/run_nightly.sh" not in steps[kind]
        # Resume only for a failed batch.
        assert ("nightly-batch@resume" in steps[kind]) == (kind == "failed"), (kind, steps[kind])
    assert "pgrep" not in steps["stalled_stage"]

    checkout = steps_of(body_of(ctx, tracker, record("missing", due))[1])
    assert "crontab -l" in checkout and checkout.endswith("\n  bin/run_nightly.sh") and "systemctl" not in checkout


def test_it_shows_the_failed_stages_last_output_lines_in_the_body(ctx, tracker, clock):
    late_batch(tracker, clock)
    clock.set(ny_epoch("2026-11-23 02:30"))
    output = "".join(f"progress line {n}\n" for n in range(1, 31))
    output += "\x1b[31mERROR\x1b[0m upstream API returned 503\r\nBcc: evil@example.com\n"
    tracker.fail("enrich", "exit code 4", output_tail=output)
    incident = record("failed", BATCH_ID, BATCH_ID)

    message, body = body_of(ctx, tracker, incident)
    assert "Last 20 line(s) of output from stage enrich:" in body
    assert "\n    ERROR upstream API returned 503\n" in body
    assert "\n    Bcc: evil@example.com\n" in body  # indented in the body: text, not a header
    assert "\n    progress line 13\n" in body and "progress line 12\n" not in body
    assert "\x1b" not in body
    headers = message.as_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"upstream" not in headers and b"evil" not in headers and message["Bcc"] is None

    _, five = body_of(dataclasses.replace(ctx, output_tail_lines=5), tracker, incident)
    assert "Last 5 line(s)" in five and "progress line 27" not in five and "progress line 28" in five
    _, none = body_of(dataclasses.replace(ctx, output_tail_lines=0), tracker, incident)
    assert "upstream API" not in none and "Failure:       stage enrich: exit code 4" in none


def test_it_bounds_and_sanitises_the_stored_output_tail(tracker, clock):
    clock.set(ny_epoch("2026-11-23 01:00"))
    tracker.start(batch_id="b1")
    noisy = b"\x00\x07bell\tand tab\r\n" + b"x" * 20_000 + b"\n" + b"".join(b"l%d\n" % n for n in range(500))
    failure = tracker.fail("scrape", "exit code 1", output_tail=noisy).failure
    tail = failure.output_tail
    assert tail.splitlines()[-1] == "l499"
    assert len(tail.splitlines()) == batch_tracker.MAX_OUTPUT_TAIL_LINES
    assert len(tail.encode()) <= batch_tracker.MAX_OUTPUT_TAIL_BYTES
    assert all(ch == "\n" or ch.isprintable() for ch in tail)
    assert batch_tracker.clean_output_tail(b"\x00\x07bell\tand tab\r\n") == "bell and tab"
    assert batch_tracker.clean_output_tail("\n\n") is None


def test_it_links_the_status_page_when_configured(ctx, tracker, clock):
    late_batch(tracker, clock)
    incident = record("late", BATCH_ID, BATCH_ID)
    _, without = body_of(ctx, tracker, incident)
    assert "Status page:" not in without
    linked = dataclasses.replace(ctx, status_page_url="https://batch-status.example.com/")
    _, body = body_of(linked, tracker, incident)
    assert "Status page:   https://batch-status.example.com/\n" in body


def test_it_does_not_call_the_failed_stage_stuck(ctx, tracker, clock):
    late_batch(tracker, clock)
    clock.set(ny_epoch("2026-11-23 02:30"))
    tracker.fail("enrich", "exit code 4")
    for kind in ("failed", "late"):
        _, body = body_of(ctx, tracker, record(kind, BATCH_ID, BATCH_ID), now=ny_epoch("2026-11-23 05:05"))
        assert "Looks stuck" not in body, body
        assert "Failure:       stage enrich: exit code 4" in body


def test_it_says_completed_in_the_recovery_of_a_resumed_batch(ctx, tracker, clock):
    late_batch(tracker, clock)
    clock.set(ny_epoch("2026-11-23 02:30"))
    tracker.fail("enrich", "exit code 4")
    failed = next(i for i in incidents.open_incidents(tracker.snapshot(), clock(), DEADLINE) if i.kind == "failed")
    incident = record_of(failed, clock())
    clock.set(ny_epoch("2026-11-23 03:00"))
    tracker.resume()
    # The monitor refreshes the open record's summary at every check: now it says "resumed".
    resumed = next(i for i in incidents.open_incidents(tracker.snapshot(), clock(), DEADLINE) if i.kind == "failed")
    assert "not yet completed" in resumed.summary
    incident["summary"] = resumed.summary
    clock.set(ny_epoch("2026-11-23 04:00"))
    tracker.end()
    text = resolution(incident, tracker.snapshot(), DEADLINE, clock())
    message, body = body_of(ctx, tracker, incident, RECOVERY, now=clock(), resolution_text=text)
    assert "completed after resume" in message["Subject"]
    assert "not yet completed" not in body and "not yet completed" not in message["Subject"]
    assert f"Originally:    batch {BATCH_ID} failed at stage enrich: exit code 4\n" in body
    assert "Next steps:" not in body and "--resume" not in body


def test_it_threads_recoveries_and_reminders_under_the_alert(ctx, tracker, clock):
    late_batch(tracker, clock)
    opened = ny_epoch("2026-11-23 05:00")
    incident = record("late", BATCH_ID, BATCH_ID, opened_at=opened)
    alert_id = message_id_for(f"late:{BATCH_ID}", opened, ALERT, 0, "example.com")
    alert, _ = body_of(ctx, tracker, incident, ALERT, now=opened)
    assert alert["Message-ID"] == alert_id  # what the monitor gives the alert
    assert alert["In-Reply-To"] is None and alert["References"] is None
    for notification_type in (RECOVERY, REMINDER):
        message, _ = body_of(ctx, tracker, incident, notification_type, now=opened + 3600, reminder_number=1)
        assert message["In-Reply-To"] == alert_id and message["References"] == alert_id

    # A late start that answered a missing night continues that alert chain.
    due = f"{opened:.0f}"
    continued = dict(incident, continues=f"missing:{due}")
    message, _ = body_of(ctx, tracker, continued, RECOVERY, now=opened + 3600)
    assert message["In-Reply-To"] == message_id_for(f"missing:{due}", opened, ALERT, 0, "example.com")


# --------------------------------------------------------------------------- issue 12: the domain model


def test_it_takes_the_incident_as_a_record_or_an_object(ctx, tracker, clock):
    late_batch(tracker, clock)
    opened = ny_epoch("2026-11-23 05:00")
    as_record = record("late", BATCH_ID, BATCH_ID, opened_at=opened)
    as_object = types.SimpleNamespace(**as_record, continues=None)
    detected = model.Incident("late", BATCH_ID, "something happened", opened, BATCH_ID)  # opened_at: its since
    composed = []
    for incident in (as_record, as_object, detected):
        message, body = body_of(ctx, tracker, incident, REMINDER, now=opened + 3600, reminder_number=1)
        composed.append((message["Subject"], message["In-Reply-To"], message["X-Batch-Incident"], body))
    assert composed[0] == composed[1] == composed[2]
    assert composed[0][2] == f"late:{BATCH_ID}" and "open for 1 h 00 min" in composed[0][0]
    assert IncidentFacts.of(detected).opened_at == opened and IncidentFacts.of(as_record).identity == f"late:{BATCH_ID}"
    with pytest.raises(ValueError, match="lacks a kind or key"):
        IncidentFacts.of({"kind": "late"})


def test_it_reads_batches_by_attribute_only(ctx, tracker, clock, monkeypatch):
    # Model objects answer no dict-style reads: any batch["..."] in the composer would raise here.
    assert not hasattr(model.Batch, "__getitem__") and not hasattr(model.Batch, "get")
    late_batch(tracker, clock)
    clock.set(ny_epoch("2026-11-23 02:30"))
    tracker.fail("enrich", "exit code 4", output_tail="last words\n")
    clock.set(ny_epoch("2026-11-23 03:00"))
    tracker.resume()
    now = ny_epoch("2026-11-23 05:05")
    kinds = {
        "late": BATCH_ID,
        "failed": BATCH_ID,
        "at_risk": BATCH_ID,
        "too_short": BATCH_ID,
        "stalled_stage": f"{BATCH_ID}:enrich",
        "missing": f"{ny_epoch('2026-11-22 05:00'):.0f}",
        "tracker_unreadable": "tracker",
    }
    snapshot = tracker.snapshot()
    for kind, key in kinds.items():
        incident = record(kind, key, BATCH_ID if ":" in key or key == BATCH_ID else None)
        for notification_type in (ALERT, REMINDER, RECOVERY):
            _, body = body_of(ctx, tracker, incident, notification_type, now=now, reminder_number=1)
            assert f"Batch:         nightly {BATCH_ID}, state running" in body
        assert resolution(incident, snapshot, DEADLINE, now) is not None or kind == "at_risk"
    _, body = body_of(ctx, tracker, record("late", BATCH_ID, BATCH_ID), now=now)
    assert "Last failure:  stage enrich: exit code 4 (then resumed)" in body
    assert "Looks stuck:   enrich (last update 2026-11-23 02:10 EST, 2 h 55 min ago)" in body
    assert "tail -n 50 logs/nightly_20261123.log" in body


def test_it_keeps_display_names_in_headers_and_bare_addresses_in_the_envelope(
    ctx, tracker, clock, tmp_path, smtp_server
):
    env = {
        "BATCH_TRACKER_FILE": str(tmp_path / "t.json"),
        "ALERT_EMAIL_FROM": "Batch Monitor <monitor@example.com>",
        "ALERT_EMAIL_TO": '"Doe, John" <jd@example.org>, Jörg Ops <joerg@example.de>, ops@example.net',
    }
    config = MonitorConfig.from_env(env)
    assert config.email_to == ('"Doe, John" <jd@example.org>', "Jörg Ops <joerg@example.de>", "ops@example.net")
    assert config.sender_domain == "example.com"
    named = dataclasses.replace(ctx, sender=config.email_from, recipients=config.email_to)
    late_batch(tracker, clock)
    message, _ = body_of(named, tracker, record("late", BATCH_ID, BATCH_ID))
    raw = message.as_bytes()
    headers = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")  # non-ASCII names are RFC 2047-encoded
    assert "From: Batch Monitor <monitor@example.com>" in headers
    assert '"Doe, John" <jd@example.org>' in headers and "=?utf-8?" in headers
    parsed = parse_message(raw)
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [
        ("Doe, John", "jd@example.org"),
        ("Jörg Ops", "joerg@example.de"),
        ("", "ops@example.net"),
    ]

    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    queued = outbox.enqueue(message, kind="late", notification_type=ALERT)
    assert queued.sender == "monitor@example.com"
    assert queued.recipients == ("jd@example.org", "joerg@example.de", "ops@example.net")
    report = outbox.deliver_due(SmtpTransport("127.0.0.1", smtp_server.port, security="plain"), now=clock())
    assert report is not None
    wait_until(lambda: smtp_server.messages, message="the alert at the SMTP server")
    rcpt_tos, received = smtp_server.messages[0]
    assert rcpt_tos == ["jd@example.org", "joerg@example.de", "ops@example.net"]
    assert received["From"].addresses[0].display_name == "Batch Monitor"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ALERT_EMAIL_TO", "Ops <not-an-address>"),
        ("ALERT_EMAIL_TO", "a@example.com <b@example.com>"),
        ("ALERT_EMAIL_FROM", "Monitor <a@example.com>, Other <b@example.com>"),
        ("STATUS_PAGE_URL", "ftp://status.example.com/"),
        ("STATUS_PAGE_URL", "status.example.com"),
        ("ALERT_OUTPUT_TAIL_LINES", "101"),
        ("BATCH_CLI_COMMAND", "batch-tracker\x07"),
    ],
)
def test_it_rejects_bad_mail_settings_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as raised:
        MonitorConfig.from_env({variable: value})
    assert variable in str(raised.value) and "\n" not in str(raised.value)


def test_it_reads_the_next_step_settings_from_the_environment(tmp_path):
    config = MonitorConfig.from_env(
        {
            "BATCH_CLI_COMMAND": "batch-tracker",
            "BATCH_RUN_COMMAND": "sudo systemctl start nightly-batch@run",
            "BATCH_RESUME_COMMAND": "sudo systemctl start nightly-batch@resume",
            "LOG_DIR": str(tmp_path / "logs"),
            "STATUS_PAGE_URL": "http://batch.example.com:9469/",
            "ALERT_OUTPUT_TAIL_LINES": "5",
            "INVOCATION_ID": "0123abcd",
        }
    )
    assert (config.cli_command, config.run_command, config.resume_command) == (
        "batch-tracker",
        "sudo systemctl start nightly-batch@run",
        "sudo systemctl start nightly-batch@resume",
    )
    assert config.log_dir == str(tmp_path / "logs") and config.status_page_url == "http://batch.example.com:9469/"
    assert config.output_tail_lines == 5 and config.under_systemd
    default = MonitorConfig.from_env({})
    assert default.cli_command.endswith("/bin/batch_tracker") and os.path.isabs(default.cli_command)
    assert default.log_dir.endswith("/logs") and default.status_page_url is None and not default.under_systemd
