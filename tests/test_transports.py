"""Mail transports against real aiosmtpd servers: login, TLS, error classification, .eml files."""

from __future__ import annotations

import logging
import ssl
import subprocess

import pytest
from conftest import SmtpSink, free_port

from utils.deadline import DailyDeadline
from utils.mail_compose import (
    ALERT,
)
from utils.monitor_config import Secret
from utils.outbox import Outbox
from utils.transports import PermanentDeliveryError, SmtpTransport, TransientDeliveryError

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
