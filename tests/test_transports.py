"""Mail transports against real aiosmtpd servers: login, TLS, error classification, .eml files."""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import struct
import subprocess

import pytest
from conftest import SmtpSink, free_port
from helpers import plain, simple_message

from utils.config import Secret
from utils.mail_compose import (
    ALERT,
)
from utils.outbox import Outbox
from utils.transports import PermanentDeliveryError, SmtpTransport, TransientDeliveryError

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


# ----- issue 10: odd replies to QUIT, credentials echoed by the server


class OddQuitSink(SmtpSink):
    """An SmtpSink whose server answers QUIT with ``quit_reply``, or resets the connection on QUIT."""

    def __init__(self, quit_reply: str):
        super().__init__()
        handler = self._controller.handler

        async def handle_QUIT(server, session, envelope):
            if quit_reply == "reset":
                sock = server.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                server.transport.abort()  # RST instead of a reply
            return quit_reply

        handler.handle_QUIT = handle_QUIT


@pytest.mark.parametrize("quit_reply", ["421 4.3.2 shutting down", "500 5.5.1 what?", "reset"])
def test_it_counts_a_message_as_delivered_once_data_was_accepted_whatever_quit_says(tmp_path, clock, quit_reply):
    sink = OddQuitSink(quit_reply).start()
    try:
        outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
        queued = outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
        report = outbox.deliver_due(plain(sink))
        assert [m.id for m in report.delivered] == [queued.id]
        assert report.deferred == () and report.failed == ()
        assert outbox.pending() == [] and outbox.failed() == [] and [m.id for m in outbox.sent()] == [queued.id]
        clock.advance(3600)  # long past any back-off: nothing is sent again
        assert outbox.deliver_due(plain(sink)).delivered == ()
        assert len(sink.received()) == 1
    finally:
        sink.stop()


class EchoingAuthSink(SmtpSink):
    """A server that offers only ``mechanism`` and answers every login with a 535 echoing the credentials."""

    def __init__(self, mechanism: str):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        super().__init__()

        def authenticator(server, session, envelope, mechanism_used, auth_data):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            plain_blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
            login_blob = base64.b64encode(password.encode()).decode()
            echo = f"535 5.7.8 bad credentials {login}:{password} ({plain_blob} {login_blob})"
            return AuthResult(success=False, handled=False, message=echo)

        other = {"PLAIN": "LOGIN", "LOGIN": "PLAIN"}[mechanism]
        self._controller = Controller(
            self._controller.handler,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=False,
            auth_exclude_mechanism=[other],
        )


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_it_scrubs_credentials_a_server_echoes_in_its_535_reply(tmp_path, clock, caplog, mechanism):
    password = "s3cret-Pa55word!"
    forms = {
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0monitor\0{password}".encode()).decode(),
    }
    forms |= {form.rstrip("=") for form in forms}
    sink = EchoingAuthSink(mechanism).start()
    try:
        outbox = Outbox(str(tmp_path / "outbox"), clock=clock)
        outbox.enqueue(simple_message(), kind="late", notification_type=ALERT)
        transport = SmtpTransport(
            "127.0.0.1", sink.port, security="plain", username="monitor", password=Secret(password), timeout=5
        )
        with caplog.at_level(logging.DEBUG):
            report = outbox.deliver_due(transport)
        assert len(report.deferred) == 1
        error = report.deferred[0].last_error
        assert "535" in error and "bad credentials monitor:********" in error  # the reply is kept, scrubbed
        # The server's own log (aiosmtpd, "mail.log") is the server's business; ours must be clean.
        ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
        assert "535" in ours
        stored = "".join(p.read_text() for p in (tmp_path / "outbox").rglob("*.json"))
        assert "bad credentials" in stored
        for form in forms:
            assert form not in ours and form not in stored and form not in error, form
    finally:
        sink.stop()
