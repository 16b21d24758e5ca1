"""Alert e-mails: content, header safety, the persistent outbox, SMTP delivery against a real server."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import ssl
import subprocess
import threading

import pytest
from conftest import SmtpSink, free_port

from utils import batch_health
from utils.alerting import (
    ALERT,
    RECOVERY,
    REMINDER,
    FileTransport,
    MailContext,
    Outbox,
    PermanentDeliveryError,
    SmtpTransport,
    TransientDeliveryError,
    compose_message,
    header_safe,
    message_id_for,
    outbox_id,
    parse_message,
    resolution,
)
from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.deadline import DailyDeadline
from utils.monitor_config import Secret

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


# --------------------------------------------------------------------------- outbox and SMTP


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


# ----- login and TLS against real aiosmtpd servers


class AuthSink(SmtpSink):
    """An SmtpSink that requires AUTH (over plain text here, TLS below) with one user."""

    def __init__(self, user: str, password: str, **server_kwargs):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        super().__init__()
        self.logins: list[str] = []

        def authenticator(server, session, envelope, mechanism, auth_data):
            login = auth_data.login.decode()
            self.logins.append(login)
            return AuthResult(success=login == user and auth_data.password.decode() == password, handled=False)

        handler = self._controller.handler
        self._controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticator,
            auth_required=True,
            **server_kwargs,
        )


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_it_logs_in_only_with_a_username_and_never_shows_the_password(tmp_path, clock, caplog):
    sink = AuthSink("monitor", "right-password", auth_require_tls=False).start()
    try:
        outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
        outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
        wrong = SmtpTransport(
            "127.0.0.1", sink.port, security="plain", username="monitor", password=Secret("wrong-password-xyz")
        )
        with caplog.at_level(logging.DEBUG):
            report = outbox.deliver_due(wrong)
        assert len(report.deferred) == 1 and "login refused" in report.deferred[0].last_error
        leaked = caplog.text + repr(wrong) + wrong.describe() + report.deferred[0].last_error
        leaked += "".join(p.read_text() for p in (tmp_path / "outbox").rglob("*.json"))
        assert "wrong-password-xyz" not in leaked
        assert sink.received() == []
        right = SmtpTransport(
            "127.0.0.1", sink.port, security="plain", username="monitor", password=Secret("right-password")
        )
        clock.advance(5)
        assert len(outbox.deliver_due(right).delivered) == 1
        assert set(sink.logins) == {"monitor"} and len(sink.received()) == 1
        # Without a username there is no login attempt; the server's 530 is a loud, retried error.
        outbox.enqueue(simple_message(message_id="<anon@example.com>"), kind="late", notification_type=ALERT)
        logins_before = len(sink.logins)
        report = outbox.deliver_due(SmtpTransport("127.0.0.1", sink.port, security="plain"))
        assert len(report.deferred) == 1 and "530" in report.deferred[0].last_error
        assert len(sink.logins) == logins_before and outbox.failed() == []
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def server_context(tls_files) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    return context


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_it_sends_over_tls_and_logs_in(tmp_path, clock, tls_files, security):
    if security == "starttls":
        sink = AuthSink("monitor", "pw", tls_context=server_context(tls_files), require_starttls=True)
    else:
        sink = AuthSink("monitor", "pw", auth_require_tls=False)
        handler = sink._controller.handler
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        def authenticator(server, session, envelope, mechanism, auth_data):
            sink.logins.append(auth_data.login.decode())
            return AuthResult(success=auth_data.password == b"pw", handled=False)

        sink._controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=sink.port,
            ssl_context=server_context(tls_files),
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=False,
        )
    sink.start()
    try:
        client_context = ssl.create_default_context(cafile=tls_files[0])
        transport = SmtpTransport(
            "127.0.0.1",
            sink.port,
            security=security,
            username="monitor",
            password=Secret("pw"),
            ssl_context=client_context,
            timeout=5,
        )
        outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
        outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
        assert len(outbox.deliver_due(transport).delivered) == 1
        assert sink.logins == ["monitor"] and len(sink.received()) == 1
        # An untrusted certificate is a loud, retried error, never a silent plain-text fallback.
        outbox.enqueue(simple_message(message_id="<other@example.com>"), kind="late", notification_type=ALERT)
        untrusting = SmtpTransport("127.0.0.1", sink.port, security=security, timeout=5)
        report = outbox.deliver_due(untrusting)
        assert len(report.deferred) == 1 and "TLS" in report.deferred[0].last_error
    finally:
        sink.stop()


def test_it_classifies_smtp_errors(tmp_path, smtp_server):
    transport = plain(smtp_server)
    raw = simple_message().as_bytes()
    smtp_server.reject_with = "452 4.2.2 mailbox full"
    with pytest.raises(TransientDeliveryError):
        transport.send(raw, sender="a@example.com", recipients=["b@example.com"], meta={"id": "x"})
    smtp_server.reject_with = "550 5.1.1 no such user"
    with pytest.raises(PermanentDeliveryError):
        transport.send(raw, sender="a@example.com", recipients=["b@example.com"], meta={"id": "x"})
    closed = SmtpTransport("127.0.0.1", free_port(), security="plain", timeout=2)
    with pytest.raises(TransientDeliveryError, match="refused"):
        closed.send(raw, sender="a@example.com", recipients=["b@example.com"], meta={"id": "x"})


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
