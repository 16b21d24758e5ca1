"""Alert e-mails: composing them, a persistent outbox, and delivery with retries.

Composing (:func:`compose_message`): a plain-text :class:`email.message.EmailMessage`
(policy SMTP) whose subject says what happened, to which batch and when, and whose
body carries everything on-call needs (batch, start, deadline in local time and UTC,
every stage with its percentage and last update, the stage that looks stuck, the
failure reason, troubleshooting commands). Text that comes from the tracker (stage
names, failure reasons) is stripped of line breaks and control characters before it
reaches a header, so it can never add a header. The Message-ID is derived from the
incident occurrence and the message type (:func:`message_id_for`), so composing the
same notification again after a crash gives the same Message-ID.

Outbox (:class:`Outbox`): a directory that holds every notification until it is
delivered, across restarts and outages::

    <outbox>/pending/<id>.eml   the message, written atomically before any attempt
    <outbox>/pending/<id>.json  sidecar: recipients, attempts, next_attempt_at, last_error
    <outbox>/sent/              delivered messages (the newest ``keep`` pairs are kept)
    <outbox>/failed/            messages refused permanently (5xx)
    <outbox>/<UTC>-<kind>-<type>-<id8>.eml   alerts "delivered" by :class:`FileTransport`

``<id>`` is a hash of the Message-ID, so enqueueing the same message twice is a
no-op. A delivered message moves to ``sent/`` only after the transport accepted it:
a crash in between repeats that one e-mail (same Message-ID) and never loses it. A disk
that refuses to record the move (full, read-only) does not repeat it: the outbox remembers
in memory what the server accepted and records it once the disk takes writes again.

Delivery (:meth:`Outbox.deliver_due`): transient failures (connection refused,
timeouts, SMTP 4xx, disconnects) are retried with exponential backoff (5 s doubling to
10 min) for as long as it takes; permanent ones (SMTP 5xx) are logged at ERROR and the
message moves to ``failed/``. Authentication and TLS problems are logged at ERROR but
retried: fixing the configuration and restarting must still deliver the alert.
Passwords never appear in logs or exception messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate

from utils import batch_health
from utils.batch_health import batch_deadline, format_duration, format_local
from utils.deadline import DailyDeadline, format_utc
from utils.state_store import StorageError, read_json_object, write_json_atomically

LOGGER = logging.getLogger(__name__)

ALERT, RECOVERY, REMINDER = "alert", "recovery", "reminder"
NOTIFICATION_TYPES = (ALERT, RECOVERY, REMINDER)
KIND_LABELS = {
    "late": "LATE",
    "failed": "FAILED",
    "missing": "MISSING",
    "tracker_unreadable": "TRACKER UNREADABLE",
    "at_risk": "AT RISK",
    "too_short": "TOO SHORT",
    "stalled_stage": "STALLED",
}
TROUBLESHOOTING = (
    ("python -m utils.batch_tracker status", "the batch's stages, deadline and recent history"),
    ("journalctl -u batch-completion-monitor", "the monitor's own log"),
    ("grep -i error logs/nightly_*.log", "errors in the nightly batch logs"),
    ("bin/run_nightly.sh --resume", "re-run a failed batch from the stage that failed"),
)
MAX_SUBJECT = 200
BACKOFF_INITIAL_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 600.0
KEEP_DELIVERED = 200
ORPHAN_MAX_AGE_SECONDS = 86_400
# Long header lines rather than folding: Python folds a subject that fits on one continuation
# line right after "Subject:", which some readers show with a leading space. RFC 5322 allows 998.
MAIL_POLICY = policy.SMTP.clone(max_line_length=998)
AUTH_CODES = frozenset({530, 534, 535, 538})  # RFC 4954: a login problem, not a refusal of the message


# --------------------------------------------------------------------------- text hygiene


def header_safe(text: object, limit: int = MAX_SUBJECT) -> str:
    """``text`` as one header-safe line: CR, LF and other control characters become spaces."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in str(text))
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def body_safe(text: object) -> str:
    """``text`` for one line of the body: no control characters (a reason cannot fake a section)."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())


# --------------------------------------------------------------------------- identities


def message_id_for(incident_identity: str, opened_at: float, notification_type: str, number: int, domain: str) -> str:
    """The stable Message-ID of one notification about one occurrence of an incident.

    The same inputs always give the same id, so a message composed again after a
    crash is recognised (by the outbox here, by mail systems downstream) as the same.
    """
    seed = f"{incident_identity}\0{opened_at!r}\0{notification_type}\0{number}".encode()
    digest = hashlib.sha256(seed).hexdigest()[:32]
    return f"<batch-monitor.{digest}.{notification_type}@{header_safe(domain, 253)}>"


def outbox_id(message_id: str) -> str:
    """File-name-safe id of a message in the outbox (a hash of its Message-ID)."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- composing


@dataclasses.dataclass(frozen=True)
class MailContext:
    """What every message needs besides the incident: names, addresses and the deadline."""

    batch_name: str
    deadline: DailyDeadline
    sender: str
    recipients: tuple[str, ...]
    tracker_file: str
    hostname: str = dataclasses.field(default_factory=socket.gethostname)


def _find_batch(snapshot, batch_id: str | None) -> dict | None:
    if batch_id is None:
        return None
    return next((b for b in snapshot.batches_newest_first() if b["id"] == batch_id), None)


def _hm(instant: float, deadline: DailyDeadline) -> str:
    return deadline.to_local(instant).strftime("%H:%M %Z")


def _day(instant: float, deadline: DailyDeadline) -> str:
    return deadline.to_local(instant).strftime("%a %Y-%m-%d")


def _both(instant: float | None, deadline: DailyDeadline) -> str:
    if instant is None:
        return "-"
    return f"{format_local(instant, deadline)} ({format_utc(instant)})"


def alert_subject(ctx: MailContext, incident: dict, snapshot) -> str:
    """What, which batch and when, e.g. ``[LATE] nightly batch X missed its 05:00 EST deadline (Tue 2026-11-24)``."""
    kind, name, bid = incident["kind"], ctx.batch_name, incident.get("batch_id")
    label = KIND_LABELS.get(kind, kind.upper())
    batch = _find_batch(snapshot, bid)
    deadline = ctx.deadline
    if kind == "late":
        due = batch_deadline(batch, deadline) if batch else incident["since"]
        text = f"{name} batch {bid} missed its {_hm(due, deadline)} deadline ({_day(due, deadline)})"
    elif kind == "failed":
        failure = (batch or {}).get("failure") or ((batch or {}).get("failures") or [{}])[-1]
        where = f" at stage {failure['stage']}" if failure.get("stage") else ""
        at = failure.get("at", incident["since"])
        text = f"{name} batch {bid} failed{where} ({format_local(at, deadline)})"
    elif kind == "missing":
        due = float(incident["key"])
        text = f"no {name} batch started before the {_hm(due, deadline)} deadline ({_day(due, deadline)})"
    elif kind == "tracker_unreadable":
        text = f"{name} batch tracker file cannot be read (since {format_local(incident['opened_at'], deadline)})"
    elif kind == "at_risk":
        due = batch_deadline(batch, deadline) if batch else incident["since"]
        text = f"{name} batch {bid} is projected to miss its {_hm(due, deadline)} deadline ({_day(due, deadline)})"
    elif kind == "stalled_stage":
        stage = str(incident["key"]).rpartition(":")[2]
        text = f"{name} batch {bid}: stage {stage} has stopped moving ({format_local(incident['opened_at'], deadline)})"
    elif kind == "too_short":
        text = f"{name} batch {bid} finished suspiciously fast"
    else:
        text = incident.get("summary") or kind
    return header_safe(f"[{label}] {text}")


def resolution(incident: dict, snapshot, deadline: DailyDeadline, now: float) -> str | None:
    """Why an incident that is no longer detected has cleared, e.g. ``batch X completed 47 min late``.

    None means it did not really resolve: a missing deadline that only aged out of
    the window the tracker looks at, or an early warning superseded by a late or
    failed alert. No recovery message should claim otherwise.
    """
    kind, bid = incident["kind"], incident.get("batch_id")
    batches = snapshot.batches_newest_first()
    batch = _find_batch(snapshot, bid)
    newest = batches[0] if batches else None
    if kind == "missing":
        due = float(incident["key"])
        window_start = deadline.previous(due)
        # A batch started at or after the previous deadline covers this one (its deadline is this one or later).
        started = sorted((b for b in batches if b["started_at"] >= window_start), key=lambda b: b["started_at"])
        if not started:
            return None
        first = started[0]
        late_by = first["started_at"] - due
        when = f"{format_duration(late_by)} after" if late_by > 0 else "before"
        return (
            f"batch {first['id']} started at {format_local(first['started_at'], deadline)}, "
            f"{when} the {format_local(due, deadline)} deadline"
        )
    if kind == "tracker_unreadable":
        return "the tracker file is readable again"
    if kind in ("at_risk", "stalled_stage") and batch is not None:
        if batch["state"] == "failed":
            return None  # not better: the failed alert speaks for it now
        if kind == "at_risk" and batch["state"] == "running" and now >= batch_deadline(batch, deadline):
            return None  # not better: the deadline passed and the late alert speaks for it now
    if batch is not None and batch["state"] == "completed":
        due = batch_deadline(batch, deadline)
        margin = batch["ended_at"] - due
        timing = f"{format_duration(margin)} late" if margin > 0 else f"on time, {format_duration(margin)} early"
        if kind == "failed":
            resumed = " after resume" if batch.get("resumed_at") else ""
            return f"batch {bid} completed{resumed} at {format_local(batch['ended_at'], deadline)} ({timing})"
        if kind == "stalled_stage":
            return f"batch {bid} completed at {format_local(batch['ended_at'], deadline)} ({timing})"
        return f"batch {bid} completed {timing}, at {format_local(batch['ended_at'], deadline)}"
    if kind == "failed":
        completed = next((b for b in batches if b["state"] == "completed"), None)
        if completed is not None:
            return f"a new batch {completed['id']} completed at {format_local(completed['ended_at'], deadline)}"
    if kind == "stalled_stage" and batch is not None and batch["state"] == "running":
        stage = str(incident["key"]).rpartition(":")[2]
        detail = batch["stages"].get(stage)
        if detail is not None:
            return f"stage {stage} of batch {bid} is moving again ({detail['percentage']:.0f}%)"
        return f"batch {bid} is past stage {stage}"
    if kind == "at_risk" and batch is not None and batch["state"] == "running":
        return f"batch {bid} is projected to finish within its deadline again"
    if kind == "too_short":
        return "a later batch completed with a normal duration"
    if batch is not None and newest is not None and newest["id"] != bid:
        return f"batch {bid} ended {batch['state']}; batch {newest['id']} started at {format_local(newest['started_at'], deadline)}"
    if batch is not None:
        return f"batch {bid} is now {batch['state']}"
    return f"batch {bid} is no longer in the tracker's records"


def compose_message(
    ctx: MailContext,
    *,
    notification_type: str,
    incident: dict,
    snapshot,
    now: float,
    message_id: str,
    resolution_text: str | None = None,
    reminder_number: int = 0,
) -> EmailMessage:
    """The e-mail for one notification (``alert``, ``recovery`` or ``reminder``) about ``incident``.

    ``incident`` is the monitor's record of it (kind, key, summary, since, batch_id,
    opened_at); ``snapshot`` the tracker as read for this check.
    """
    if notification_type not in NOTIFICATION_TYPES:
        raise ValueError(f"notification type {notification_type!r} is not one of {NOTIFICATION_TYPES}")
    subject = alert_subject(ctx, incident, snapshot)
    if notification_type == RECOVERY:
        text = resolution_text or f"{incident['kind']} cleared"
        subject = header_safe(f"[RECOVERED] {ctx.batch_name} {KIND_LABELS.get(incident['kind'], '')}: {text}")
        headline = f"RECOVERED: {text}."
    elif notification_type == REMINDER:
        open_for = format_duration(now - incident["opened_at"])
        subject = header_safe(f"[REMINDER {reminder_number}] {subject} - open for {open_for}")
        headline = f"STILL OPEN after {open_for}: {incident['summary']}"
    else:
        headline = str(incident["summary"])

    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = ctx.sender
    message["To"] = ", ".join(ctx.recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(now, usegmt=True)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to an alert
    message["X-Batch-Incident"] = header_safe(identity_of(incident), 200)
    message["X-Batch-Notification"] = notification_type
    message.set_content(
        _body(ctx, notification_type, incident, snapshot, now, headline), charset="utf-8", cte="quoted-printable"
    )
    return message


def identity_of(incident: dict) -> str:
    return f"{incident['kind']}:{incident['key']}"


def _body(ctx: MailContext, notification_type: str, incident: dict, snapshot, now: float, headline: str) -> str:
    deadline = ctx.deadline
    lines = [body_safe(headline), ""]
    lines.append(f"Incident:      {body_safe(identity_of(incident))} ({incident['kind']})")
    lines.append(f"Detected:      {_both(incident['opened_at'], deadline)}")
    if notification_type != ALERT:
        lines.append(f"Originally:    {body_safe(incident['summary'])}")
    batch = _find_batch(snapshot, incident.get("batch_id"))
    if batch is None and snapshot.readable and incident["kind"] in ("missing", "tracker_unreadable"):
        batch = snapshot.current
        if batch is not None:
            lines.append("Last batch (for context):")
    if not snapshot.readable:
        lines.append(f"Tracker file:  {ctx.tracker_file}")
        lines.append(f"Read error:    {body_safe(snapshot.error)}")
    if incident["kind"] == "missing":
        due = float(incident["key"])
        lines.append(f"Deadline:      {_both(due, deadline)}")
    if batch is not None:
        lines.extend(_batch_lines(ctx, batch, now))
    elif incident["kind"] != "tracker_unreadable":
        lines.append("Batch:         none recorded")
    upcoming = deadline.first_after(now)
    lines.append(f"Next deadline: {_both(upcoming, deadline)}")
    lines.append("")
    lines.append("Troubleshooting:")
    width = max(len(command) for command, _ in TROUBLESHOOTING)
    for command, meaning in TROUBLESHOOTING:
        lines.append(f"  {command:<{width}}  # {meaning}")
    lines.append("")
    lines.append("-- ")
    lines.append(
        f"batch_completion_monitor on {body_safe(ctx.hostname)}, {_both(now, deadline)}. "
        "Each incident is alerted once; a recovery message follows when it clears."
    )
    return "\n".join(lines) + "\n"


def _batch_lines(ctx: MailContext, batch: dict, now: float) -> list[str]:
    deadline = ctx.deadline
    due = batch_deadline(batch, deadline)
    end = batch.get("ended_at")
    elapsed = (end if end is not None else now) - batch["started_at"]
    host = f", host {body_safe(batch['host'])}" if batch.get("host") else ""
    lines = [
        f"Batch:         {ctx.batch_name} {batch['id']}, state {batch['state']}{host}",
        f"Started:       {_both(batch['started_at'], deadline)}",
        f"Deadline:      {_both(due, deadline)}"
        + (f", passed {format_duration(now - due)} ago" if now >= due else f", in {format_duration(due - now)}"),
    ]
    if end is not None:
        lines.append(f"Ended:         {_both(end, deadline)}")
    lines.append(f"Elapsed:       {format_duration(elapsed)}")
    lines.append(f"Overall:       {batch_health.overall_percentage(batch):.1f}%")
    if batch["state"] != "completed":
        stuck = batch_health.active_stage(batch)
        if stuck:
            detail = batch["stages"].get(stuck)
            last = (
                f"last update {format_local(detail['updated_at'], deadline)}, {format_duration(now - detail['updated_at'])} ago"
                if detail
                else "not started"
            )
            lines.append(f"Looks stuck:   {stuck} ({last})")
    failure = batch.get("failure")
    if failure:
        where = f"stage {failure['stage']}" if failure.get("stage") else "no stage given"
        reason = body_safe(failure.get("reason") or "no reason given")
        lines.append(f"Failure:       {where}: {reason} ({format_local(failure.get('at'), deadline)})")
    elif batch.get("failures"):
        last_failure = batch["failures"][-1]
        reason = body_safe(last_failure.get("reason") or "no reason given")
        lines.append(f"Last failure:  stage {last_failure.get('stage') or '-'}: {reason} (then resumed)")
    names = batch_health.ordered_stage_names(batch)
    lines.append("Stages:" if names else "Stages:        none recorded")
    width = max([len(n) for n in names] + [5])
    for name in names:
        detail = batch["stages"].get(name)
        if detail is None:
            lines.append(f"  {name:<{width}}  {0.0:5.1f}%  not started")
        else:
            lines.append(
                f"  {name:<{width}}  {detail['percentage']:5.1f}%  last update {_both(detail['updated_at'], deadline)}"
            )
    return lines


# --------------------------------------------------------------------------- transports


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


class FileTransport:
    """ "Delivers" by writing the message as an ``.eml`` file into ``directory`` (no SMTP server)."""

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
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
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

    def _scrub(self, text: str) -> str:
        password = self._password_text()
        return text.replace(password, "********") if password else text

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def send(self, raw: bytes, *, sender: str, recipients: list[str], meta: dict) -> str:
        try:
            return self._send(raw, sender, recipients)
        except DeliveryError as exc:
            raise type(exc)(self._scrub(str(exc)), loud=exc.loud) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientDeliveryError(
                f"{self.describe()}: login refused ({exc.smtp_code} {_smtp_text(exc)})", loud=True
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TransientDeliveryError(f"{self.describe()}: {self._scrub(str(exc))}", loud=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{rcpt}: {code} {_decode(text)}" for rcpt, (code, text) in exc.recipients.items())
            cls = TransientDeliveryError if codes and all(400 <= c < 500 for c in codes) else PermanentDeliveryError
            raise cls(self._scrub(f"{self.describe()}: every recipient refused ({detail})")) from None
        except smtplib.SMTPResponseException as exc:
            text = self._scrub(f"{self.describe()}: {exc.smtp_code} {_smtp_text(exc)}")
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

    def _send(self, raw: bytes, sender: str, recipients: list[str]) -> str:
        if self.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self._context(),
            )
        else:
            client = smtplib.SMTP(self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout)
        with client:
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
        if refused:
            # Accepted for some recipients: resending would duplicate it for the others.
            LOGGER.error(
                "%s refused some recipients of an alert: %s",
                self.describe(),
                "; ".join(f"{r}: {c} {_decode(t)}" for r, (c, t) in refused.items()),
            )
        return f"{self.host}:{self.port}"


def _decode(text: object) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8", "replace")
    return str(text)


def _smtp_text(exc: smtplib.SMTPResponseException) -> str:
    return header_safe(_decode(exc.smtp_error), 300)


# --------------------------------------------------------------------------- outbox


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` (temp file, fsync, rename, fsync dir); raise StorageError."""
    directory = os.path.dirname(path) or "."
    temp_path = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp_path, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


@dataclasses.dataclass(frozen=True)
class QueuedMessage:
    """A message in the outbox: its sidecar record and where it lives."""

    id: str
    message_id: str
    subject: str
    kind: str
    type: str
    recipients: tuple[str, ...]
    sender: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    state: str  # pending | sent | failed

    @classmethod
    def from_record(cls, record: dict, state: str) -> QueuedMessage:
        return cls(
            id=record["id"],
            message_id=record["message_id"],
            subject=record.get("subject", ""),
            kind=record.get("kind", ""),
            type=record.get("type", ALERT),
            recipients=tuple(record.get("recipients", ())),
            sender=record.get("sender", ""),
            created_at=float(record.get("created_at", 0.0)),
            attempts=int(record.get("attempts", 0)),
            next_attempt_at=float(record.get("next_attempt_at", 0.0)),
            last_error=record.get("last_error"),
            state=state,
        )


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """What one delivery pass did. ``next_attempt_at`` is when a pending message is next due (or None)."""

    delivered: tuple[QueuedMessage, ...] = ()
    receipts: tuple[str, ...] = ()
    deferred: tuple[QueuedMessage, ...] = ()  # failed transiently this pass, retried later
    failed: tuple[QueuedMessage, ...] = ()  # refused permanently, moved to failed/
    not_due: int = 0
    next_attempt_at: float | None = None

    @property
    def attempt_failures(self) -> int:
        return len(self.deferred) + len(self.failed)


class Outbox:
    """The persistent outbox under ``directory``; see the module docstring for the layout.

    Enqueueing is idempotent per Message-ID. One delivery pass at a time runs (an
    ``flock`` on ``<directory>/.deliver.lock``), across threads and processes.
    """

    def __init__(
        self,
        directory: str,
        *,
        clock: Callable[[], float] = time.time,
        keep: int = KEEP_DELIVERED,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ):
        self.directory = os.path.abspath(directory)
        self.clock = clock
        self.keep = keep
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.pending_dir = os.path.join(self.directory, "pending")
        self.sent_dir = os.path.join(self.directory, "sent")
        self.failed_dir = os.path.join(self.directory, "failed")
        # id -> sent-record fields of messages the transport accepted but the disk would not record
        # as sent (full, read-only): later passes record them instead of sending them again.
        self._accepted: dict[str, dict] = {}

    def _ensure_dirs(self) -> None:
        try:
            for path in (self.pending_dir, self.sent_dir, self.failed_dir):
                os.makedirs(path, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the outbox {self.directory}: {exc.strerror or exc}") from exc

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt: 5, 10, 20, ... up to 600."""
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, attempts - 1))

    # ----- enqueue

    def enqueue(self, message: EmailMessage, *, kind: str, notification_type: str) -> QueuedMessage:
        """Store ``message`` durably before any delivery attempt; return its record.

        A message with the same Message-ID already pending, sent or failed is not
        stored again (its existing record is returned).
        """
        self._ensure_dirs()
        message_id = str(message["Message-ID"])
        oid = outbox_id(message_id)
        for state, directory in (("pending", self.pending_dir), ("sent", self.sent_dir), ("failed", self.failed_dir)):
            existing = self._read_sidecar(os.path.join(directory, oid + ".json"))
            if existing is not None:
                return QueuedMessage.from_record(existing, state)
        now = self.clock()
        recipients = [addr.strip() for addr in str(message["To"]).split(",") if addr.strip()]
        record = {
            "id": oid,
            "message_id": message_id,
            "subject": str(message["Subject"]),
            "kind": kind,
            "type": notification_type,
            "recipients": recipients,
            "sender": str(message["From"]),
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
        }
        # The message first, then the sidecar: a sidecar always has its message.
        write_bytes_atomically(os.path.join(self.pending_dir, oid + ".eml"), message.as_bytes(policy=MAIL_POLICY))
        write_json_atomically(os.path.join(self.pending_dir, oid + ".json"), record)
        return QueuedMessage.from_record(record, "pending")

    # ----- reads

    @staticmethod
    def _read_sidecar(path: str) -> dict | None:
        try:
            record = read_json_object(path)
        except StorageError as exc:
            LOGGER.error("outbox record %s is unreadable (%s); leaving it", path, exc)
            return None
        if record is None or not isinstance(record.get("id"), str) or not isinstance(record.get("message_id"), str):
            return None
        return record

    def _records(self, directory: str) -> list[dict]:
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc.strerror or exc}") from exc
        records = [self._read_sidecar(os.path.join(directory, name)) for name in names]
        return [r for r in records if r is not None]

    def pending(self) -> list[QueuedMessage]:
        """Messages waiting for delivery, oldest first."""
        records = sorted(self._records(self.pending_dir), key=lambda r: (r.get("created_at", 0), r["id"]))
        return [QueuedMessage.from_record(r, "pending") for r in records]

    def sent(self) -> list[QueuedMessage]:
        return [QueuedMessage.from_record(r, "sent") for r in self._records(self.sent_dir)]

    def failed(self) -> list[QueuedMessage]:
        return [QueuedMessage.from_record(r, "failed") for r in self._records(self.failed_dir)]

    def next_attempt_at(self) -> float | None:
        """When the earliest pending message is due, or None when nothing is pending."""
        due = [m.next_attempt_at for m in self.pending()]
        return min(due) if due else None

    def summary(self) -> dict:
        """Counts for the monitor's state file and status page."""
        pending = self.pending()
        return {
            "pending": len(pending),
            "oldest_pending_at": min((m.created_at for m in pending), default=None),
            "failed": len(self._records(self.failed_dir)),
        }

    # ----- delivery

    @contextlib.contextmanager
    def _delivery_lock(self) -> Iterator[None]:
        self._ensure_dirs()
        path = os.path.join(self.directory, ".deliver.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def deliver_due(self, transport, *, now: float | None = None, retry_waiting: bool = False) -> DeliveryReport:
        """Try every pending message that is due, oldest first; return what happened.

        After a transient failure the rest of this pass's due messages are deferred
        to the same retry time without an attempt: they would meet the same outage.
        With ``retry_waiting``, messages still backing off are due too: a process that
        just started may have a fixed configuration, and on-call should not wait out
        a back-off of up to ten minutes earned by the previous one.
        """
        delivered: list[QueuedMessage] = []
        receipts: list[str] = []
        deferred: list[QueuedMessage] = []
        failed: list[QueuedMessage] = []
        not_due = 0
        with self._delivery_lock():
            moment = self.clock() if now is None else now
            self._repair(moment)
            outage_until: float | None = None
            for item in self.pending():
                accepted = self._accepted.get(item.id)
                if accepted is not None:  # already with the server: record it, never send it twice
                    record = self._finish(item, self.sent_dir, **accepted)  # StorageError while the disk refuses
                    del self._accepted[item.id]
                    LOGGER.info("alert %r (%s) recorded as delivered at last", item.subject, item.message_id)
                    delivered.append(QueuedMessage.from_record(record, "sent"))
                    receipts.append(str(accepted["receipt"]))
                    continue
                if item.next_attempt_at > moment and not retry_waiting:
                    not_due += 1
                    continue
                if outage_until is not None:
                    self._update_pending(item.id, next_attempt_at=outage_until)
                    not_due += 1
                    continue
                raw = self._read_message(item)
                if raw is None:
                    continue
                try:
                    receipt = transport.send(
                        raw,
                        sender=item.sender,
                        recipients=list(item.recipients),
                        meta={"id": item.id, "kind": item.kind, "type": item.type},
                    )
                except PermanentDeliveryError as exc:
                    record = self._finish(item, self.failed_dir, last_error=str(exc), failed_at=moment)
                    LOGGER.error(
                        "alert %r (%s) refused permanently, moved to %s: %s",
                        item.subject,
                        item.message_id,
                        self.failed_dir,
                        exc,
                    )
                    failed.append(QueuedMessage.from_record(record, "failed"))
                except DeliveryError as exc:
                    attempts = item.attempts + 1
                    retry_at = moment + self.backoff(attempts)
                    record = self._update_pending(
                        item.id, attempts=attempts, next_attempt_at=retry_at, last_error=str(exc)
                    )
                    outage_until = retry_at
                    log = LOGGER.error if exc.loud else LOGGER.warning
                    log(
                        "could not deliver alert %r (attempt %d, retry in %s): %s",
                        item.subject,
                        attempts,
                        format_duration(retry_at - moment),
                        exc,
                    )
                    if record is not None:
                        deferred.append(QueuedMessage.from_record(record, "pending"))
                else:
                    try:
                        record = self._finish(item, self.sent_dir, delivered_at=moment, receipt=receipt)
                    except StorageError as exc:
                        self._accepted[item.id] = {"delivered_at": moment, "receipt": receipt}
                        LOGGER.error(
                            "alert %r (%s) was delivered via %s but cannot be recorded as sent (%s); "
                            "this process will not send it again",
                            item.subject,
                            item.message_id,
                            receipt,
                            exc,
                        )
                        raise
                    LOGGER.info(
                        "alert delivered via %s: %r to %s (Message-ID %s)",
                        receipt,
                        item.subject,
                        ", ".join(item.recipients),
                        item.message_id,
                    )
                    delivered.append(QueuedMessage.from_record(record, "sent"))
                    receipts.append(receipt)
            self._prune(self.sent_dir)
            self._prune(self.failed_dir)
        return DeliveryReport(
            delivered=tuple(delivered),
            receipts=tuple(receipts),
            deferred=tuple(deferred),
            failed=tuple(failed),
            not_due=not_due,
            next_attempt_at=self.next_attempt_at(),
        )

    def _read_message(self, item: QueuedMessage) -> bytes | None:
        path = os.path.join(self.pending_dir, item.id + ".eml")
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            LOGGER.error("outbox message %s has no .eml file; dropping its record", item.id)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.pending_dir, item.id + ".json"))
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _update_pending(self, oid: str, **changes: object) -> dict | None:
        path = os.path.join(self.pending_dir, oid + ".json")
        record = self._read_sidecar(path)
        if record is None:
            return None
        record.update(changes)
        write_json_atomically(path, record)
        return record

    def _finish(self, item: QueuedMessage, target_dir: str, **changes: object) -> dict:
        """Move a pending message to ``sent/`` or ``failed/``: the record first (it decides), then the .eml."""
        source_json = os.path.join(self.pending_dir, item.id + ".json")
        record = self._read_sidecar(source_json) or {}
        record.update(changes)
        write_json_atomically(os.path.join(target_dir, item.id + ".json"), record)
        try:
            os.unlink(source_json)
            os.replace(os.path.join(self.pending_dir, item.id + ".eml"), os.path.join(target_dir, item.id + ".eml"))
        except OSError as exc:
            # The record in target_dir already says what happened; _repair finishes the move.
            LOGGER.warning("could not finish moving outbox message %s: %s", item.id, exc)
        return record

    def _repair(self, now: float) -> None:
        """Finish moves a crash interrupted; drop message files whose enqueue never completed."""
        try:
            names = os.listdir(self.pending_dir)
        except FileNotFoundError:
            return
        for name in names:
            oid, _, ext = name.rpartition(".")
            path = os.path.join(self.pending_dir, name)
            for target in (self.sent_dir, self.failed_dir):
                if os.path.exists(os.path.join(target, oid + ".json")):
                    with contextlib.suppress(OSError):
                        if ext == "eml":
                            os.replace(path, os.path.join(target, name))
                        else:
                            os.unlink(path)
                    break
            else:
                if ext == "eml" and not os.path.exists(os.path.join(self.pending_dir, oid + ".json")):
                    with contextlib.suppress(OSError):
                        if now - os.stat(path).st_mtime > ORPHAN_MAX_AGE_SECONDS:
                            os.unlink(path)
                elif ".tmp-" in name:
                    with contextlib.suppress(OSError):
                        if now - os.stat(path).st_mtime > ORPHAN_MAX_AGE_SECONDS:
                            os.unlink(path)

    def _prune(self, directory: str) -> None:
        """Keep the newest ``keep`` messages in ``directory`` (by record time)."""
        try:
            names = [n for n in os.listdir(directory) if n.endswith(".json")]
        except OSError:
            return
        if len(names) <= self.keep:
            return

        def age_key(name: str) -> tuple[float, str]:
            try:
                return (os.stat(os.path.join(directory, name)).st_mtime, name)
            except OSError:
                return (0.0, name)

        for name in sorted(names, key=age_key)[: len(names) - self.keep]:
            for ext in (".json", ".eml"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name[:-5] + ext))


def parse_message(raw: bytes) -> EmailMessage:
    """An outbox ``.eml`` file back as a message (for tests and tools)."""
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]
