"""The Alertmanager channel (``ALERTMANAGER_URL``): open incidents as alerts on its v2 API (``/api/v2/alerts``).

One alert per incident occurrence. Labels (only what every monitor watching the same tracker computes alike, so
Alertmanager deduplicates two monitors' posts of one incident, and nothing host-specific): ``alertname`` per kind
(:data:`ALERTNAMES`), ``job`` (``BATCH_NAME``), ``severity`` (critical or warning), ``incident`` (the identity:
kind and batch id or deadline instant) and ``batch_id`` when there is one. Annotations: ``summary``,
``description``, ``status_page`` (and ``resolution`` on the resolving post); ``generatorURL`` is the status page.

The firing post and the resolving post (``endsAt`` = when it cleared) go through the persistent outbox like the
e-mails: retried while Alertmanager is down, in order per incident, at most once each. A firing alert's
``endsAt`` is set when it is sent, :data:`VALID_FOR_SECONDS` ahead, and the monitor re-posts every open incident
every :data:`REPOST_SECONDS` (:meth:`AlertmanagerTransport.repost`), as Prometheus does: Alertmanager keeps it
firing whatever its own ``resolve_timeout``, three lost re-posts in a row are tolerated, and an alert of a monitor
that died resolves by itself after four minutes (the heartbeat rule and ``BatchMonitorDown`` say why).

:func:`make_channels` and :func:`channel_payload` are where a monitor's notification fans out to the channels.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from utils.deadline import format_utc
from utils.transports import DeliveryError
from utils.webhook import HttpJsonTransport

LOGGER = logging.getLogger("utils.outbox")

API_PATH = "/api/v2/alerts"
REPOST_SECONDS = 60.0
VALID_FOR_SECONDS = 4 * REPOST_SECONDS
ALERTNAMES = {
    "late": "BatchLate",
    "failed": "BatchFailed",
    "missing": "BatchMissing",
    "tracker_unreadable": "BatchTrackerUnreadable",
    "at_risk": "BatchAtRisk",
    "too_short": "BatchTooShort",
    "stalled_stage": "BatchStageStalled",
}
WARNING_KINDS = frozenset({"at_risk", "too_short", "stalled_stage"})


def channel_name(url: str) -> str:
    """The outbox channel of the Alertmanager at ``url`` (one per instance: an HA pair gets every alert twice,
    and one instance down holds up nothing for the other)."""
    parts = urlsplit(url)
    return f"alertmanager@{parts.hostname}:{parts.port or (443 if parts.scheme.lower() == 'https' else 80)}"


def labels(incident: object, job: str) -> dict[str, str]:
    """The identifying labels of ``incident`` (read as :meth:`utils.mail_compose.IncidentFacts.of` does)."""
    from utils.mail_compose import IncidentFacts

    facts = IncidentFacts.of(incident)
    found = {
        "alertname": ALERTNAMES.get(facts.kind, "Batch" + facts.kind.title().replace("_", "")),
        "job": job,
        "severity": "warning" if facts.kind in WARNING_KINDS else "critical",
        "incident": facts.identity,
    }
    if facts.batch_id:
        found["batch_id"] = str(facts.batch_id)
    return found


def alert(
    incident: object,
    *,
    job: str,
    status_page_url: str | None = None,
    resolved_at: float | None = None,
    resolution: str | None = None,
) -> dict:
    """One alert of the v2 API. Firing (``resolved_at`` None): ``endsAt`` is left out here and set when sent.
    Built from the incident alone (no tracker read), so a re-post and another monitor's post say the same."""
    from utils.mail_compose import KIND_LABELS, IncidentFacts
    from utils.text_safety import header_safe

    facts = IncidentFacts.of(incident)
    headline = header_safe(f"[{KIND_LABELS.get(facts.kind, facts.kind.upper())}] {job}: {facts.summary}", 300)
    annotations = {"summary": headline, "description": facts.summary}
    if status_page_url:
        annotations["status_page"] = status_page_url
    document = {"labels": labels(facts, job), "annotations": annotations, "startsAt": format_utc(facts.since)}
    if status_page_url:
        document["generatorURL"] = status_page_url
    if resolved_at is not None:
        document["endsAt"] = format_utc(max(resolved_at, facts.since or resolved_at))
        if resolution:
            annotations["resolution"] = resolution
    return document


class AlertmanagerTransport(HttpJsonTransport):
    """Posts queued alerts to one Alertmanager; ``clock`` (UTC epoch seconds) dates a firing alert's ``endsAt``."""

    label = "alertmanager"

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, **options):
        base = url.rstrip("/")
        super().__init__(base if base.endswith(API_PATH) else base + API_PATH, **options)
        self.clock = clock

    def _stamped(self, alerts: Iterable[dict]) -> bytes:
        """The request body: the alerts, each firing one valid for :data:`VALID_FOR_SECONDS` from now."""
        until = format_utc(self.clock() + VALID_FOR_SECONDS)
        return json.dumps([a if "endsAt" in a else {**a, "endsAt": until} for a in alerts]).encode("utf-8")

    def send(self, raw: bytes, *, sender: str, recipients: list[str], meta: dict) -> str:
        self.post(self._stamped([json.loads(raw)]))
        return self.describe()

    def repost(self, alerts: list[dict]) -> bool:
        """Post the still-open ``alerts`` again (one request); False when it failed (logged, never raised: the
        next re-post comes in :data:`REPOST_SECONDS`, well before they expire)."""
        if not alerts:
            return True
        try:
            self.post(self._stamped(alerts))
        except DeliveryError as exc:
            LOGGER.warning("could not re-post %d open alert(s) to %s: %s", len(alerts), self.describe(), exc)
            return False
        LOGGER.debug("re-posted %d open alert(s) to %s", len(alerts), self.describe())
        return True


# --------------------------------------------------------------------------- the HTTP channels of a monitor


def make_channels(config, email_transport, clock: Callable[[], float] = time.time) -> dict[str, object]:
    """Channel -> transport for what ``config`` (a MonitorConfig) asks for: e-mail unless ``ALERT_EMAIL=off``,
    each Alertmanager of ``ALERTMANAGER_URL``, the webhook of ``ALERT_WEBHOOK_URL``."""
    from utils.outbox import EMAIL
    from utils.webhook import WEBHOOK_CHANNEL, WebhookTransport

    channels: dict[str, object] = {EMAIL: email_transport} if config.email_enabled else {}
    for url in config.alertmanager_urls:
        channels[channel_name(url)] = AlertmanagerTransport(url, clock=clock)
    if config.webhook_url:
        channels[WEBHOOK_CHANNEL] = WebhookTransport(config.webhook_url)
    return channels


def channel_payload(
    channel: str, notification_type: str, incident: object, message, *, job: str, **facts
) -> bytes | None:
    """What ``channel`` gets for one notification (its e-mail ``message`` already composed), as queued bytes;
    None when it gets nothing (Alertmanager repeats by itself: no reminders). ``facts``: ``now``,
    ``status_page_url``, ``resolution``."""
    from utils.mail_compose import RECOVERY, REMINDER
    from utils.webhook import WEBHOOK_CHANNEL, encode, webhook_payload

    now, page, resolution = facts["now"], facts.get("status_page_url"), facts.get("resolution")
    if channel == WEBHOOK_CHANNEL:
        return encode(
            webhook_payload(
                notification_type,
                incident,
                job=job,
                subject=str(message["Subject"]),
                details=message.get_content(),
                message_id=str(message["Message-ID"]),
                at=now,
                status_page_url=page,
                resolution=resolution,
            )
        )
    if notification_type == REMINDER:
        return None
    resolved_at = now if notification_type == RECOVERY else None
    return encode(alert(incident, job=job, status_page_url=page, resolved_at=resolved_at, resolution=resolution))


def enqueue_on_channels(outbox, channels, message, notice, record, *, job: str, now: float, status_page_url) -> None:
    """Put one notification (``notice``, its e-mail ``message`` composed for ``record``) into ``outbox`` once per
    channel of ``channels``: the e-mail as it is, the others as :func:`channel_payload` makes it (none: skipped)."""
    from utils.outbox import EMAIL

    for channel in channels:
        payload = None
        if channel != EMAIL:
            payload = channel_payload(
                channel,
                notice.type,
                record,
                message,
                job=job,
                now=now,
                status_page_url=status_page_url,
                resolution=notice.resolution,
            )
            if payload is None:
                continue
        outbox.enqueue(
            message, kind=notice.kind, notification_type=notice.type, channel=channel, payload=payload or b""
        )


class Reposter:
    """Posts every open incident to each Alertmanager of ``channels`` again every :data:`REPOST_SECONDS` (firing,
    valid :data:`VALID_FOR_SECONDS` more). ``open_incidents()`` reads them from the monitor's state as saved: a
    cleared incident is gone from it before its resolving post is queued, so a re-post never revives it."""

    def __init__(self, channels, open_incidents: Callable[[], Iterable], *, job: str, status_page_url):
        self.targets = [t for t in channels.values() if isinstance(t, AlertmanagerTransport)]
        self.open_incidents = open_incidents
        self.job, self.status_page_url = job, status_page_url
        self._posted_at: float | None = None  # monotonic

    def due_in(self) -> float:
        """Seconds until the next re-post (0 now, inf without an Alertmanager)."""
        if not self.targets:
            return float("inf")
        return 0.0 if self._posted_at is None else self._posted_at + REPOST_SECONDS - time.monotonic()

    def repost(self) -> int:
        """Re-post now; return how many incidents. An unreadable state is logged and re-posts nothing."""
        from utils.state_store import StorageError

        self._posted_at = time.monotonic()
        try:
            records = list(self.open_incidents())
        except StorageError as exc:
            LOGGER.warning("cannot read the open incidents to re-post them to Alertmanager: %s", exc)
            return 0
        alerts = [alert(record, job=self.job, status_page_url=self.status_page_url) for record in records]
        for transport in self.targets:
            transport.repost(alerts)
        return len(alerts)
