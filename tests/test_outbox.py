"""The persistent outbox: stored before any attempt, backoff, sent/failed, crash repair, serialised passes."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import threading
import time

import pytest
from conftest import PROJECT_ROOT, VENV_PYTHON, SmtpSink, free_port
from helpers import plain, simple_message

from utils.mail_compose import (
    ALERT,
    RECOVERY,
    outbox_id,
    parse_message,
)
from utils.outbox import Outbox
from utils.transports import FileTransport, SmtpTransport


def test_it_stores_a_message_before_any_attempt_and_only_once(tmp_path, clock):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    queued = outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    again = outbox.enqueue(simple_message(subject="changed"), kind="late", notification_type=ALERT)
    assert again.id == queued.id == outbox_id("<one@example.com>")
    assert [m.id for m in outbox.pending()] == [queued.id]
    stored = parse_message((tmp_path / "outbox" / "pending" / f"{queued.id}.eml").read_bytes())
    assert stored["Subject"] == "[LATE] test"
    sidecar = json.loads((tmp_path / "outbox" / "pending" / f"{queued.id}.json").read_text())
    assert sidecar["attempts"] == 0 and sidecar["recipients"] == ["ops@example.com"]
    assert sidecar["next_attempt_at"] == clock()


def test_it_delivers_over_smtp_and_moves_the_message_to_sent(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    queued = outbox.enqueue(
        simple_message(to="ops@example.com, oncall@example.org"), kind="late", notification_type=ALERT
    )
    report = outbox.deliver_due(plain(smtp_server))
    assert [m.id for m in report.delivered] == [queued.id]
    assert outbox.pending() == [] and [m.id for m in outbox.sent()] == [queued.id]
    assert (tmp_path / "outbox" / "sent" / f"{queued.id}.eml").exists()
    rcpts, received = smtp_server.messages[0]
    assert rcpts == ["ops@example.com", "oncall@example.org"]
    assert received["Message-ID"] == "<one@example.com>"
    # Enqueueing the delivered message again does not send it again.
    outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    assert outbox.deliver_due(plain(smtp_server)).delivered == ()
    assert len(smtp_server.received()) == 1


def test_it_retries_a_transient_refusal_with_backoff_and_delivers_once(tmp_path, clock, smtp_server, caplog):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    outbox.enqueue(simple_message(message_id="<two@example.com>"), kind="late", notification_type=ALERT)
    smtp_server.reject_with = "451 4.3.0 try again later"
    report = outbox.deliver_due(plain(smtp_server))
    assert len(report.deferred) == 1 and report.delivered == ()
    assert report.next_attempt_at == clock() + 5
    assert "451" in report.deferred[0].last_error
    assert "could not deliver" in caplog.text
    # Not due yet: no attempt, even though the server would now accept it.
    smtp_server.reject_with = None
    clock.advance(4)
    assert outbox.deliver_due(plain(smtp_server)).delivered == ()
    assert smtp_server.received() == []
    clock.advance(1)
    report = outbox.deliver_due(plain(smtp_server))
    assert len(report.delivered) == 2
    clock.advance(3600)
    assert outbox.deliver_due(plain(smtp_server)).delivered == ()
    assert sorted(m["Message-ID"] for m in smtp_server.received()) == ["<one@example.com>", "<two@example.com>"]


def test_it_backs_off_exponentially_up_to_ten_minutes(tmp_path, clock):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    assert [outbox.backoff(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]


def test_it_keeps_a_message_through_hours_of_outage_and_restarts(tmp_path, clock):
    port = free_port()
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    transport = SmtpTransport("127.0.0.1", port, security="plain", timeout=2)
    attempts = 0
    for _ in range(40):  # about 3 h of retries against a closed port
        report = outbox.deliver_due(transport)
        attempts += len(report.deferred)
        clock.set(report.next_attempt_at)
    pending = outbox.pending()[0]
    assert pending.attempts == attempts >= 20
    assert "127.0.0.1" in pending.last_error
    sink = SmtpSink(port=port).start()
    try:
        restarted = Outbox(str(tmp_path / "outbox"), clock=clock)  # a new process after a restart
        assert len(restarted.deliver_due(transport).delivered) == 1
        clock.advance(7200)
        assert restarted.deliver_due(transport).delivered == ()
        assert len(sink.received()) == 1
    finally:
        sink.stop()


def test_it_moves_a_permanently_refused_message_to_failed(tmp_path, clock, smtp_server, caplog):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    queued = outbox.enqueue(simple_message(), kind="failed", notification_type=ALERT)
    smtp_server.reject_with = "554 5.7.1 rejected by policy"
    with caplog.at_level(logging.ERROR):
        report = outbox.deliver_due(plain(smtp_server))
    assert [m.id for m in report.failed] == [queued.id]
    assert outbox.pending() == [] and [m.id for m in outbox.failed()] == [queued.id]
    assert "refused permanently" in caplog.text and "554" in caplog.text
    assert outbox.summary()["failed"] == 1


def test_it_keeps_only_the_newest_delivered_messages(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock, keep=3)
    for number in range(5):
        outbox.enqueue(simple_message(message_id=f"<m{number}@example.com>"), kind="late", notification_type=ALERT)
    assert len(outbox.deliver_due(plain(smtp_server)).delivered) == 5
    assert len(outbox.sent()) == 3
    assert len(list((tmp_path / "outbox" / "sent").glob("*.eml"))) == 3


def test_it_writes_eml_files_when_no_smtp_server_is_configured(tmp_path, clock, caplog):
    directory = tmp_path / "outbox"
    outbox = Outbox(str(directory), clock=clock)
    outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    with caplog.at_level(logging.INFO):
        report = outbox.deliver_due(FileTransport(str(directory), clock=clock))
    path = report.receipts[0]
    assert os.path.dirname(path) == str(directory)
    assert os.path.basename(path).startswith("20231114T221320Z-late-alert-")
    assert parse_message(open(path, "rb").read())["Subject"] == "[LATE] test"
    assert path in caplog.text


def test_it_keeps_one_copy_of_a_message_delivered_as_a_file(tmp_path, clock):
    directory = tmp_path / "outbox"
    outbox = Outbox(str(directory), clock=clock)
    queued = outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    receipt = outbox.deliver_due(FileTransport(str(directory), clock=clock)).receipts[0]
    assert [str(p) for p in directory.rglob("*.eml")] == [receipt]  # not also in sent/
    [sent] = outbox.sent()
    assert (sent.id, sent.copy, sent.receipt) == (queued.id, receipt, receipt)
    # A crash after recording the delivery, before the pending message was dropped: repaired, still one copy.
    second = outbox.enqueue(simple_message(message_id="<two@example.com>"), kind="late", notification_type=ALERT)
    pending_json = directory / "pending" / f"{second.id}.json"
    record = {**json.loads(pending_json.read_text()), "delivered_at": 1, "receipt": receipt, "copy": receipt}
    (directory / "sent" / f"{second.id}.json").write_text(json.dumps(record))
    pending_json.unlink()
    assert outbox.deliver_due(FileTransport(str(directory), clock=clock)).delivered == ()
    assert [str(p) for p in directory.rglob("*.eml")] == [receipt]


def test_it_finishes_a_move_that_a_crash_interrupted(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    queued = outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    # As if the process died after recording the delivery but before removing the pending files.
    sidecar = json.loads((tmp_path / "outbox" / "pending" / f"{queued.id}.json").read_text())
    (tmp_path / "outbox" / "sent" / f"{queued.id}.json").write_text(json.dumps({**sidecar, "delivered_at": 1}))
    assert outbox.deliver_due(plain(smtp_server)).delivered == ()
    assert smtp_server.received() == []
    assert list((tmp_path / "outbox" / "pending").iterdir()) == []
    assert (tmp_path / "outbox" / "sent" / f"{queued.id}.eml").exists()


def test_it_refuses_to_downgrade_starttls_to_plain_text(tmp_path, clock, smtp_server, caplog):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
    transport = SmtpTransport("127.0.0.1", smtp_server.port, security="starttls", timeout=5)
    with caplog.at_level(logging.ERROR):
        report = outbox.deliver_due(transport)
    assert len(report.deferred) == 1 and "STARTTLS" in report.deferred[0].last_error
    assert smtp_server.received() == []
    assert "refusing to send in the clear" in caplog.text


def test_it_serialises_delivery_passes(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    for number in range(6):
        outbox.enqueue(simple_message(message_id=f"<p{number}@example.com>"), kind="late", notification_type=ALERT)
    reports = []
    threads = [
        threading.Thread(
            target=lambda: reports.append(Outbox(str(tmp_path / "outbox")).deliver_due(plain(smtp_server)))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(len(r.delivered) for r in reports) == 6
    assert len(smtp_server.received()) == 6


# ----- issue 10: order per incident, the summary, the operator command, private directories


def incident_message(incident: str, message_id: str, subject: str):
    message = simple_message(subject=subject, message_id=message_id)
    message["X-Batch-Incident"] = incident
    return message


def test_it_never_lets_a_recovery_overtake_its_alert_even_across_a_restart(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    outbox.enqueue(
        incident_message("late:b1", "<alert@example.com>", "[LATE] b1"), kind="late", notification_type=ALERT
    )
    smtp_server.reject_with = "451 4.3.0 try again later"
    report = outbox.deliver_due(plain(smtp_server))
    assert len(report.deferred) == 1
    alert_due = report.next_attempt_at
    # The relay recovers and the batch ends while the alert still backs off.
    smtp_server.reject_with = None
    clock.advance(1)
    outbox.enqueue(
        incident_message("late:b1", "<recovery@example.com>", "[RECOVERED] b1"), kind="late", notification_type=RECOVERY
    )
    outbox.enqueue(
        incident_message("failed:b0", "<other@example.com>", "[FAILED] b0"), kind="failed", notification_type=ALERT
    )
    report = outbox.deliver_due(plain(smtp_server))
    assert [m.subject for m in report.delivered] == ["[FAILED] b0"]  # another incident is not held up
    assert [m["Subject"] for m in smtp_server.received()] == ["[FAILED] b0"]
    assert report.next_attempt_at == alert_due  # the recovery can go no sooner than its alert
    restarted = Outbox(str(tmp_path / "outbox"), clock=clock)  # the order is on disk
    assert [m.subject for m in restarted.pending()] == ["[LATE] b1", "[RECOVERED] b1"]
    clock.set(alert_due)
    assert [m.subject for m in restarted.deliver_due(plain(smtp_server)).delivered] == ["[LATE] b1", "[RECOVERED] b1"]
    assert [m["Subject"] for m in smtp_server.received()] == ["[FAILED] b0", "[LATE] b1", "[RECOVERED] b1"]


def test_it_keeps_enqueue_order_within_an_incident_when_the_clock_ties(tmp_path, clock, smtp_server):
    # Message-IDs whose outbox ids sort the other way round: only the stored enqueue order decides.
    number = 0
    while outbox_id(f"<r{number}@example.com>") > outbox_id("<a@example.com>"):
        number += 1
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    outbox.enqueue(incident_message("late:b2", "<a@example.com>", "alert"), kind="late", notification_type=ALERT)
    outbox.enqueue(
        incident_message("late:b2", f"<r{number}@example.com>", "recovery"), kind="late", notification_type=RECOVERY
    )
    assert [m.subject for m in Outbox(str(tmp_path / "outbox"), clock=clock).pending()] == ["alert", "recovery"]
    assert len(outbox.deliver_due(plain(smtp_server)).delivered) == 2
    assert [m["Subject"] for m in smtp_server.received()] == ["alert", "recovery"]


def test_it_lets_a_recovery_go_once_its_alert_was_refused_for_good(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    outbox.enqueue(incident_message("late:b3", "<a3@example.com>", "alert"), kind="late", notification_type=ALERT)
    smtp_server.reject_with = "554 5.7.1 rejected by policy"
    assert len(outbox.deliver_due(plain(smtp_server)).failed) == 1
    smtp_server.reject_with = None
    outbox.enqueue(incident_message("late:b3", "<r3@example.com>", "recovery"), kind="late", notification_type=RECOVERY)
    assert [m.subject for m in outbox.deliver_due(plain(smtp_server)).delivered] == ["recovery"]


def test_it_summarises_queued_and_failed_messages(tmp_path, clock, smtp_server):
    outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
    assert outbox.summary() == {"pending": 0, "failed": 0, "oldest_pending_at": None}
    outbox.enqueue(simple_message(message_id="<f@example.com>"), kind="late", notification_type=ALERT)
    smtp_server.reject_with = "554 5.7.1 rejected by policy"
    outbox.deliver_due(plain(smtp_server))
    first_queued = clock.advance(60)
    outbox.enqueue(simple_message(message_id="<q1@example.com>"), kind="late", notification_type=ALERT)
    clock.advance(60)
    outbox.enqueue(simple_message(message_id="<q2@example.com>"), kind="late", notification_type=ALERT)
    smtp_server.reject_with = "451 4.3.0 try again later"
    outbox.deliver_due(plain(smtp_server))
    assert outbox.summary() == {"pending": 2, "failed": 1, "oldest_pending_at": first_queued}


def run_monitor(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VENV_PYTHON, str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def outbox_files(directory) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_it_lists_and_requeues_failed_messages_from_the_command_line(tmp_path, clock, smtp_server, base_env):
    directory = tmp_path / "outbox"
    env = {**base_env, "BATCH_OUTBOX_DIR": str(directory)}
    outbox = Outbox(str(directory), clock=clock)
    refused = outbox.enqueue(
        incident_message("failed:b4", "<f4@example.com>", "[FAILED] b4"), kind="failed", notification_type=ALERT
    )
    smtp_server.reject_with = "554 5.7.1 rejected by policy"
    outbox.deliver_due(plain(smtp_server))
    waiting = outbox.enqueue(
        incident_message("late:b5", "<l5@example.com>", "[LATE] b5"), kind="late", notification_type=ALERT
    )
    smtp_server.reject_with = "451 4.3.0 try again later"
    outbox.deliver_due(plain(smtp_server))

    listing = run_monitor(env, "outbox", "list")
    assert listing.returncode == 0, listing.stderr
    assert "1 pending, 1 failed" in listing.stdout
    lines = listing.stdout.splitlines()
    failed_line = next(line for line in lines if refused.id in line)
    assert failed_line.startswith("failed") and "[FAILED] b4" in failed_line and "failed:b4" in failed_line
    assert "attempts 1" in failed_line and " d " in failed_line  # created by the fake clock, long ago: age in days
    pending_line = next(line for line in lines if waiting.id in line)
    assert pending_line.startswith("pending") and "late:b5" in pending_line and "attempts 1" in pending_line
    assert "554 5.7.1 rejected by policy" in listing.stdout and "451 4.3.0" in listing.stdout
    as_json = json.loads(run_monitor(env, "outbox", "list", "--json").stdout)
    assert {(row["state"], row["id"], row["incident"]) for row in as_json} == {
        ("failed", refused.id, "failed:b4"),
        ("pending", waiting.id, "late:b5"),
    }

    before = outbox_files(directory)
    bad = run_monitor(env, "outbox", "retry", refused.id, "nosuchid")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "'nosuchid'" in bad.stderr
    assert outbox_files(directory) == before  # nothing moved, not even the good id
    assert run_monitor(env, "outbox", "retry").returncode == 2  # neither ids nor --all

    started = time.time()
    retried = run_monitor(env, "outbox", "retry", refused.id[:8])
    assert retried.returncode == 0, retried.stderr
    assert refused.id in retried.stdout
    assert outbox.failed() == []
    requeued = next(m for m in outbox.pending() if m.id == refused.id)
    assert requeued.attempts == 0 and requeued.last_error is None
    assert started - 1 <= requeued.next_attempt_at <= time.time() + 1
    smtp_server.reject_with = None
    clock.set(time.time() + 1)
    delivered = outbox.deliver_due(plain(smtp_server)).delivered
    assert refused.id in {m.id for m in delivered}
    assert "[FAILED] b4" in [m["Subject"] for m in smtp_server.received()]


def test_it_requeues_every_failed_message_with_all(tmp_path, clock, smtp_server, base_env):
    directory = tmp_path / "outbox"
    env = {**base_env, "BATCH_OUTBOX_DIR": str(directory)}
    outbox = Outbox(str(directory), clock=clock)
    for number in range(3):
        outbox.enqueue(simple_message(message_id=f"<all{number}@example.com>"), kind="late", notification_type=ALERT)
    smtp_server.reject_with = "550 5.1.1 no such user"
    assert len(outbox.deliver_due(plain(smtp_server)).failed) == 3
    result = run_monitor(env, "outbox", "retry", "--all")
    assert result.returncode == 0, result.stderr
    assert outbox.summary()["failed"] == 0 and outbox.summary()["pending"] == 3
    assert run_monitor(env, "outbox", "retry", "--all").stdout.startswith("no failed messages")


def test_it_creates_private_directories_whatever_the_umask(tmp_path, clock):
    loose = tmp_path / "old" / "outbox"
    loose.mkdir(parents=True)
    os.chmod(loose, 0o777)  # left by an older version under a loose umask
    previous = os.umask(0)
    try:
        outbox = Outbox(str(tmp_path / "state" / "deep" / "outbox"), clock=clock)
        outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
        files = tmp_path / "mail" / "eml"
        assert len(outbox.deliver_due(FileTransport(str(files), clock=clock)).delivered) == 1
        Outbox(str(loose), clock=clock).enqueue(simple_message(), kind="late", notification_type=ALERT)
    finally:
        os.umask(previous)
    created = [tmp_path / "state", tmp_path / "state" / "deep", tmp_path / "mail", files, loose]
    created += [tmp_path / "state" / "deep" / "outbox" / name for name in ("", "pending", "sent", "failed")]
    for directory in created:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750, directory
