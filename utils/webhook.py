"""JSON over HTTP: the webhook channel (``ALERT_WEBHOOK_URL``) and the POST both HTTP channels share.

:class:`HttpJsonTransport` POSTs a message's JSON body (stdlib :mod:`http.client`: no dependency, and the
timeout covers connecting and every read). ``send`` returns where the message went or raises
:class:`~utils.transports.TransientDeliveryError` (connection refused, timeout, 408, 429, 5xx: retried) or
:class:`~utils.transports.PermanentDeliveryError` (any other 3xx/4xx: the outbox moves it to ``failed/``, shown
by ``outbox list``). A server's reply reaches a log or ``last_error`` only scrubbed of the URL's path (a Slack
webhook's path is its secret) and cut to one short line. Logs and errors name ``scheme://host:port`` only.

:func:`webhook_payload` is the JSON of one notification: ``kind``, ``status`` (``alert`` or ``recovery``),
``notification`` (``alert``, ``reminder`` or ``recovery``), ``job``, ``batch_id``, ``incident``, ``summary``,
``subject``, ``text`` (Slack-compatible: a Slack incoming webhook shows it as the message), ``details`` (the
e-mail's text), ``status_page``, ``message_id`` (stable: a receiver can drop a repeat) and ``at`` (ISO-8601 UTC).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from utils.deadline import format_utc
from utils.text_safety import header_safe
from utils.transports import PermanentDeliveryError, TransientDeliveryError

WEBHOOK_CHANNEL = "webhook"
HTTP_TIMEOUT_SECONDS = 10.0
MAX_REPLY_BYTES = 2048  # of a server's reply, read for the log; the rest is never read
RETRY_STATUSES = frozenset({408, 429})  # 4xx that mean "later", not "never"


class HttpJsonTransport:
    """POSTs JSON bodies to ``url`` with a ``timeout`` (seconds) on connect and on every read."""

    keeps_copy = False
    label = "http"

    def __init__(self, url: str, *, timeout: float = HTTP_TIMEOUT_SECONDS, ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(url)
        self.url = url
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # Scrubbed from every reply, longest first: the path, its query, and each long part of them (a token).
        pieces = {parts.path.strip("/"), parts.query, *parts.path.split("/"), *parts.query.replace("=", "&").split("&")}
        self._secrets = sorted((p for p in pieces if len(p) >= 8), key=len, reverse=True)
        default_port = 443 if self._https else 80
        self._origin = f"{parts.scheme.lower()}://{parts.hostname}:{self._port or default_port}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return f"{self.label} {self._origin}"

    def _safe(self, text: str) -> str:
        """A server's reply as one short line without the URL's path."""
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return header_safe(text, 200)

    def post(self, body: bytes, path: str | None = None, headers: Mapping[str, str] | None = None) -> str:
        """POST ``body`` (JSON) to the URL, or to ``path`` on its host; return ``"<status> <reason>"``.

        Raises :class:`TransientDeliveryError` or :class:`PermanentDeliveryError` as the module docstring says.
        """
        target = path or self._path
        if self._https:
            context = self.ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=context)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        request_headers = {"Content-Type": "application/json", "User-Agent": "batch-completion-monitor"}
        request_headers.update(headers or {})
        try:
            connection.request("POST", target, body=body, headers=request_headers)
            response = connection.getresponse()
            reply = response.read(MAX_REPLY_BYTES).decode("utf-8", "replace")
            status, reason = response.status, response.reason
        except ssl.SSLError as exc:
            raise TransientDeliveryError(f"{self.describe()}: TLS error: {self._safe(str(exc))}", loud=True) from None
        except TimeoutError:
            raise TransientDeliveryError(f"{self.describe()}: timed out after {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TransientDeliveryError(f"{self.describe()}: {self._safe(detail)}") from None
        finally:
            connection.close()
        outcome = f"{status} {self._safe(reason)}"
        if 200 <= status < 300:
            return outcome
        problem = f"{self.describe()}: {outcome}" + (f": {self._safe(reply)}" if reply.strip() else "")
        if status in RETRY_STATUSES or status >= 500:
            raise TransientDeliveryError(problem)
        # Another 4xx (or a redirect, not followed: the URL should name the endpoint): sending again cannot help.
        raise PermanentDeliveryError(problem, loud=True)


class WebhookTransport(HttpJsonTransport):
    """The webhook channel: POSTs each queued notification's JSON as it is."""

    label = "webhook"

    def send(self, raw: bytes, *, sender: str, recipients: list[str], meta: dict) -> str:
        # A stable key per notification: a receiver can drop the repeat a crash after delivery may cause.
        self.post(raw, headers={"Idempotency-Key": str(meta.get("message_id") or meta.get("id", ""))})
        return self.describe()


def slack_escape(text: str) -> str:
    """``text`` with Slack's three control characters escaped (``&``, ``<``, ``>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(
    notification_type: str,
    incident: object,
    *,
    job: str,
    subject: str,
    details: str,
    message_id: str,
    at: float,
    status_page_url: str | None = None,
    resolution: str | None = None,
) -> dict:
    """The JSON of one notification (keys in the module docstring); ``incident`` as
    :meth:`utils.mail_compose.IncidentFacts.of` reads it."""
    from utils.mail_compose import RECOVERY, IncidentFacts

    facts = IncidentFacts.of(incident)
    summary = resolution if notification_type == RECOVERY and resolution else facts.summary
    text = f"*{slack_escape(subject)}*\n{slack_escape(summary)}"
    if status_page_url:
        text += f"\n<{status_page_url}|Status page>"
    return {
        "kind": facts.kind,
        "status": "recovery" if notification_type == RECOVERY else "alert",
        "notification": notification_type,
        "job": job,
        "batch_id": facts.batch_id,
        "incident": facts.identity,
        "summary": summary,
        "subject": subject,
        "text": text,
        "details": details,
        "status_page": status_page_url,
        "message_id": message_id,
        "at": format_utc(at),
    }


def encode(payload: object) -> bytes:
    """The bytes queued in the outbox for a JSON channel."""
    return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
