"""Mail transports: SMTP with TLS and login, or ``.eml`` files when no server is configured.

``send`` returns where the message went or raises :class:`TransientDeliveryError` (retry) or
:class:`PermanentDeliveryError` (5xx). Server replies are scrubbed of the password before they reach any text.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable

from utils.state_store import StorageError, ensure_directory, write_bytes_atomically
from utils.text_safety import header_safe

LOGGER = logging.getLogger(__name__)

KEEP_DELIVERED = 200
AUTH_CODES = frozenset({530, 534, 535, 538})  # RFC 4954: a login problem, not a refusal of the message


class DeliveryError(Exception):
    """A transport could not deliver."""

    def __init__(self, message: str, *, loud: bool = False):
        super().__init__(message)
        self.loud = loud  # a configuration problem: log at ERROR although it is retried


class TransientDeliveryError(DeliveryError):
    """Worth retrying later (connection refused, timeout, 4xx, disconnect, login or TLS problem)."""


class PermanentDeliveryError(DeliveryError):
    """The server refused the message for good (5xx)."""


class FileTransport:
    """ "Delivers" by writing the message as an ``.eml`` file into ``directory`` (no SMTP server)."""

    keeps_copy = True  # the file is the delivered message: the outbox keeps no second copy in sent/

    def __init__(self, directory: str, *, clock: Callable[[], float] = time.time, keep: int = KEEP_DELIVERED):
        self.directory = directory
        self.clock = clock
        self.keep = keep

    def describe(self) -> str:
        return f".eml files in {self.directory}"

    def send(self, raw: bytes, *, sender: str, recipients: list[str], meta: dict) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        name = f"{stamp}-{meta.get('kind', 'alert')}-{meta.get('type', 'alert')}-{meta['id'][:8]}.eml"
        path = os.path.join(self.directory, name)
        try:
            ensure_directory(self.directory, exact=True)  # alert e-mails: owner and group only
            write_bytes_atomically(path, raw)
        except (OSError, StorageError) as exc:
            raise TransientDeliveryError(f"cannot write {path}: {exc}", loud=True) from None
        self._prune()
        return path

    def _prune(self) -> None:
        """Keep the newest ``keep`` files (names start with the UTC time, so they sort by age)."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".eml"))
        except OSError:
            return
        for name in names[: max(0, len(names) - self.keep)]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))


class SmtpTransport:
    """Sends over SMTP with STARTTLS, implicit TLS (``ssl``) or in the clear (``plain``); logs in when ``username``
    is given. Never downgrades: with ``starttls``, a server without STARTTLS is an error."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        username: str | None = None,
        password=None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ):
        if security not in ("starttls", "ssl", "plain"):
            raise ValueError(f"security {security!r} is not one of starttls, ssl, plain")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password  # a monitor_config.Secret (or str); never formatted into text
        self.timeout = timeout
        self.ssl_context = ssl_context
        # socket.getfqdn() (smtplib's default) can block on DNS; the host name is enough for EHLO.
        self.local_hostname = local_hostname or socket.gethostname() or "localhost"

    def __repr__(self) -> str:
        return f"SmtpTransport({self.describe()})"

    def describe(self) -> str:
        login = f", login as {self.username}" if self.username else ""
        return f"smtp {self.host}:{self.port} ({self.security}{login})"

    def _password_text(self) -> str:
        if self._password is None:
            return ""
        reveal = getattr(self._password, "reveal", None)
        return reveal() if reveal else str(self._password)

    def _scrub(self, text: str) -> str:
        """``text`` without the password or its AUTH LOGIN/PLAIN base64 forms (call before truncating)."""
        password = self._password_text()
        if not password:
            return text
        user = self.username or ""
        blobs = (password, f"{user}\0{user}\0{password}", f"\0{user}\0{password}")  # AUTH PLAIN: empty authzid
        encoded = [base64.b64encode(blob.encode("utf-8")).decode("ascii") for blob in blobs]
        for form in sorted({password, *encoded, *(e.rstrip("=") for e in encoded)}, key=len, reverse=True):
            text = text.replace(form, "********")
        return text

    def _safe(self, reply: object) -> str:
        """A server reply (bytes or str), scrubbed, then made one short safe line."""
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return header_safe(self._scrub(text), 300)

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def send(self, raw: bytes, *, sender: str, recipients: list[str], meta: dict) -> str:
        try:
            return self._send(raw, sender, recipients)
        except (DeliveryError, OSError) as exc:  # smtplib's and ssl's errors are OSErrors
            cls, reason, loud = self._classify(exc)
        raise cls(self._scrub(f"{self.describe()}: {reason}"), loud=loud) from None

    def _classify(self, exc: Exception) -> tuple[type[DeliveryError], str, bool]:
        """The error to raise for ``exc``: its class, the reason (unscrubbed) and whether it is loud."""
        if isinstance(exc, DeliveryError):
            return type(exc), str(exc), exc.loud
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return TransientDeliveryError, f"login refused ({exc.smtp_code} {self._safe(exc.smtp_error)})", True
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return TransientDeliveryError, str(exc), True
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            detail = "; ".join(f"{rcpt}: {code} {self._safe(text)}" for rcpt, (code, text) in exc.recipients.items())
            transient = exc.recipients and all(400 <= code < 500 for code, _ in exc.recipients.values())
            cls = TransientDeliveryError if transient else PermanentDeliveryError
            return cls, f"every recipient refused ({detail})", False
        if isinstance(exc, smtplib.SMTPResponseException):
            text = f"{exc.smtp_code} {self._safe(exc.smtp_error)}"
            if exc.smtp_code in AUTH_CODES:
                # "Authentication required/failed": fix the settings and restart; the alert must wait for that.
                return TransientDeliveryError, text, True
            return PermanentDeliveryError if 500 <= exc.smtp_code < 600 else TransientDeliveryError, text, False
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TransientDeliveryError, f"disconnected ({exc})", False
        if isinstance(exc, ssl.SSLError):  # ssl.CertificateError too
            return TransientDeliveryError, f"TLS error: {exc}", True
        if isinstance(exc, smtplib.SMTPException):
            return TransientDeliveryError, f"{type(exc).__name__}: {exc}", False
        if isinstance(exc, TimeoutError):
            return TransientDeliveryError, f"timed out ({exc})", False
        return TransientDeliveryError, exc.strerror or str(exc) or type(exc).__name__, False

    def _send(self, raw: bytes, sender: str, recipients: list[str]) -> str:
        options = {"local_hostname": self.local_hostname, "timeout": self.timeout}
        if self.security == "ssl":
            client = smtplib.SMTP_SSL(self.host, self.port, context=self._context(), **options)
        else:
            client = smtplib.SMTP(self.host, self.port, **options)
        try:
            client.ehlo()
            if self.security == "starttls":
                if not client.has_extn("starttls"):
                    raise TransientDeliveryError(
                        "the server does not offer STARTTLS; refusing to send in the clear "
                        "(set SMTP_SECURITY=plain to allow it)",
                        loud=True,
                    )
                client.starttls(context=self._context())
                client.ehlo()
            if self.username:
                client.login(self.username, self._password_text())
            refused = client.sendmail(sender, recipients, raw)
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        # DATA was accepted: delivered. Not ``with client``: a bad QUIT must neither resend nor refuse the alert.
        self._quit(client)
        if refused:
            # Accepted for some recipients: resending would duplicate it for the others.
            detail = "; ".join(f"{r}: {c} {self._safe(t)}" for r, (c, t) in refused.items())
            LOGGER.error("%s refused some recipients of an alert: %s", self.describe(), detail)
        return f"{self.host}:{self.port}"

    def _quit(self, client: smtplib.SMTP) -> None:
        """Say QUIT after an accepted message; whatever goes wrong here is logged, never raised."""
        try:
            code, reply = client.docmd("QUIT")
            problem = "" if code == 221 else f"answered QUIT with {code} {self._safe(reply)}"
        except (smtplib.SMTPException, OSError) as exc:
            problem = f"failed to close the connection ({self._safe(f'{type(exc).__name__}: {exc}')})"
        finally:
            with contextlib.suppress(Exception):
                client.close()
        if problem:
            LOGGER.info("%s %s after accepting the message; it counts as delivered", self.describe(), problem)
