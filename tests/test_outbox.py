"""The persistent outbox: stored before any attempt, backoff, sent/failed, crash repair, serialised passes."""

from __future__ import annotations

import json
import logging
import os
import threading

from conftest import SmtpSink, free_port

from utils.deadline import DailyDeadline
from utils.mail_compose import (
    ALERT,
    outbox_id,
    parse_message,
)
from utils.outbox import Outbox
from utils.transports import FileTransport, SmtpTransport

DEADLINE = DailyDeadline(5, 0, "America/New_York")
BATCH_ID = "20261123T060000Z-ab12"
INJECTION = "exit code 3\r\nBcc: evil@example.com"


def simple_message(subject: str = "[LATE] test", message_id: str = "<one@example.com>", to="ops@example.com"):
    from email.message import EmailMessage
    from email.policy import SMTP

    message = EmailMessage(policy=SMTP)
    message["From"] = "leadfactory@example.com"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("body\n")
    return message


def plain(sink: SmtpSink, **kwargs) -> SmtpTransport:
    return SmtpTransport("127.0.0.1", sink.port, security="plain", timeout=5, **kwargs)


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
