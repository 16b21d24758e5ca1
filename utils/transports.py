"""Mail transports: SMTP with TLS and login, or ``.eml`` files when no server is configured.

A transport's ``send`` either returns a description of where the message went or raises
:class:`TransientDeliveryError` (worth retrying: connection refused, timeouts, 4xx,
disconnects, login or TLS problems) or :class:`PermanentDeliveryError` (5xx).

Once the server accepted DATA (250) the message is delivered: whatever QUIT answers
(421, 500, a disconnect) or closing the connection raises is logged and ignored, so a
relay with a broken QUIT never gets the same alert twice nor has it filed as refused.

Every server reply is scrubbed of the password, and of the base64 forms AUTH PLAIN and
AUTH LOGIN send it in, before it reaches an exception, a log line or the outbox: a
relay that echoes the credentials in its 535 cannot leak them.
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

from utils.mail_compose import header_safe
from utils.state_store import StorageError, write_bytes_atomically

LOGGER = logging.getLogger(__name__)

KEEP_DELIVERED = 200
PRIVATE_DIR_MODE = 0o750  # the outbox holds alert e-mails: nobody outside the service's group reads them
AUTH_CODES = frozenset({530, 534, 535, 538})  # RFC 4954: a login problem, not a refusal of the message


class DeliveryError(Exception):
    """A transport could not deliver; ``permanent`` says whether retrying can help."""

    permanent = False

    def __init__(self, message: str, *, loud: bool = False):
        super().__init__(message)
        self.loud = loud  # a configuration problem: log at ERROR although it is retried


class TransientDeliveryError(DeliveryError):
    """Worth retrying later (connection refused, timeout, 4xx, disconnect, login or TLS problem)."""


class PermanentDeliveryError(DeliveryError):
    """The server refused the message for good (5xx)."""

    permanent = True


def ensure_private_dir(path: str, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create ``path`` (and missing parents) with ``mode`` whatever the umask; raise OSError.

    ``os.makedirs`` creates missing parents with 0777 & ~umask (0777 under ``umask 000``),
    and ``mode`` itself is masked by the umask, so every directory created here is chmod-ed
    explicitly. An existing ``path`` that we own and that is more open than ``mode``
    (left by an older version under a loose umask) is tightened too.
    """
    path = os.path.abspath(path)
    missing: list[str] = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # created meanwhile by another process: not ours to chmod
        os.chmod(directory, mode)
    with contextlib.suppress(OSError):
        info = os.stat(path)
        if info.st_uid == os.geteuid() and info.st_mode & 0o777 & ~mode:
            os.chmod(path, info.st_mode & 0o777 & mode)


class FileTransport:
    """ "Delivers" by writing the message as an ``.eml`` file into ``directory`` (no SMTP server).

    ``keeps_copy``: the file is the delivered message, so the outbox keeps no second copy in ``sent/``.
    """

    keeps_copy = True

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
            ensure_private_dir(self.directory)
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
    """Sends over SMTP with STARTTLS, implicit TLS (``ssl``) or in the clear (``plain``).

    Logs in only when ``username`` is given. Never downgrades: with ``starttls`` a
    server that does not offer STARTTLS is an error, not a reason to send in the clear.
    """

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

    def _secret_forms(self) -> list[str]:
        """The password and the base64 forms AUTH LOGIN and AUTH PLAIN send it in, longest first."""
        password = self._password_text()
        if not password:
            return []
        plain = f"\0{self.username or ''}\0{password}"  # smtplib's AUTH PLAIN: empty authzid
        blobs = [password, f"{self.username or ''}\0{self.username or ''}\0{password}", plain]
        forms = {password}
        for blob in blobs:
            encoded = base64.b64encode(blob.encode("utf-8")).decode("ascii")
            forms.update({encoded, encoded.rstrip("=")})
        return sorted((f for f in forms if f), key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        """``text`` without the password or its base64 forms (call before truncating: no fragment stays)."""
        for form in self._secret_forms():
            text = text.replace(form, "********")
        return text

    def _reply(self, exc: smtplib.SMTPResponseException) -> str:
        """The server's reply text of ``exc``, scrubbed, then made one short safe line."""
        return header_safe(self._scrub(_decode(exc.smtp_error)), 300)

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def send(self, raw: bytes, *, sender: str, recipients: list[str], meta: dict) -> str:
        try:
            return self._send(raw, sender, recipients)
        except DeliveryError as exc:
            raise type(exc)(self._scrub(str(exc)), loud=exc.loud) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientDeliveryError(
                f"{self.describe()}: login refused ({exc.smtp_code} {self._reply(exc)})", loud=True
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TransientDeliveryError(f"{self.describe()}: {self._scrub(str(exc))}", loud=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{rcpt}: {code} {header_safe(self._scrub(_decode(text)), 300)}"
                for rcpt, (code, text) in exc.recipients.items()
            )
            cls = TransientDeliveryError if codes and all(400 <= c < 500 for c in codes) else PermanentDeliveryError
            raise cls(self._scrub(f"{self.describe()}: every recipient refused ({detail})")) from None
        except smtplib.SMTPResponseException as exc:
            text = f"{self.describe()}: {exc.smtp_code} {self._reply(exc)}"
            if exc.smtp_code in AUTH_CODES:
                # "Authentication required/failed": fix the settings and restart; the alert must wait for that.
                raise TransientDeliveryError(text, loud=True) from None
            cls = PermanentDeliveryError if 500 <= exc.smtp_code < 600 else TransientDeliveryError
            raise cls(text) from None
        except smtplib.SMTPServerDisconnected as exc:
            raise TransientDeliveryError(self._scrub(f"{self.describe()}: disconnected ({exc})")) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TransientDeliveryError(self._scrub(f"{self.describe()}: TLS error: {exc}"), loud=True) from None
        except smtplib.SMTPException as exc:
            raise TransientDeliveryError(self._scrub(f"{self.describe()}: {type(exc).__name__}: {exc}")) from None
        except TimeoutError as exc:
            raise TransientDeliveryError(self._scrub(f"{self.describe()}: timed out ({exc})")) from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise TransientDeliveryError(self._scrub(f"{self.describe()}: {reason}")) from None

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self._context(),
            )
        return smtplib.SMTP(self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout)

    def _send(self, raw: bytes, sender: str, recipients: list[str]) -> str:
        client = self._connect()
        try:
            client.ehlo()
            if self.security == "starttls":
                if not client.has_extn("starttls"):
                    raise TransientDeliveryError(
                        f"{self.describe()}: the server does not offer STARTTLS; refusing to send in the clear "
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
        # DATA was accepted: the message is delivered. Not ``with client`` (its QUIT raises on a
        # reply other than 221): a 421/500 to QUIT or a reset while closing must neither resend
        # the alert nor file it as refused.
        self._quit(client)
        if refused:
            # Accepted for some recipients: resending would duplicate it for the others.
            LOGGER.error(
                "%s refused some recipients of an alert: %s",
                self.describe(),
                "; ".join(f"{r}: {c} {header_safe(self._scrub(_decode(t)), 300)}" for r, (c, t) in refused.items()),
            )
        return f"{self.host}:{self.port}"

    def _quit(self, client: smtplib.SMTP) -> None:
        """Say QUIT after an accepted message; whatever goes wrong here is logged, never raised."""
        try:
            code, reply = client.docmd("QUIT")
            if code != 221:
                LOGGER.info(
                    "%s answered QUIT with %s %s after accepting the message; it counts as delivered",
                    self.describe(),
                    code,
                    header_safe(self._scrub(_decode(reply)), 300),
                )
        except (smtplib.SMTPException, OSError) as exc:
            LOGGER.info(
                "%s: closing the connection after an accepted message failed (%s); it counts as delivered",
                self.describe(),
                header_safe(self._scrub(f"{type(exc).__name__}: {exc}"), 300),
            )
        finally:
            with contextlib.suppress(Exception):
                client.close()


def _decode(text: object) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    return str(text)
