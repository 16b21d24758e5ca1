"""Alert e-mails: composing them (subject, body, headers, stable Message-IDs).

:func:`compose_message` builds a plain-text :class:`email.message.EmailMessage`
(policy SMTP) whose subject says what happened, to which batch and when, and whose
body carries everything on-call needs (batch, start, deadline in local time and UTC,
every stage with its percentage and last update, the stage that looks stuck, the
failure reason, troubleshooting commands). Text that comes from the tracker (stage
names, failure reasons) is stripped of line breaks and control characters before it
reaches a header, so it can never add a header. The Message-ID is derived from the
incident occurrence and the message type (:func:`message_id_for`), so composing the
same notification again after a crash gives the same Message-ID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate

from utils import batch_health
from utils.batch_health import batch_deadline, format_duration, format_local
from utils.deadline import DailyDeadline, format_utc

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
# Long header lines rather than folding: Python folds a subject that fits on one continuation
# line right after "Subject:", which some readers show with a leading space. RFC 5322 allows 998.
MAIL_POLICY = policy.SMTP.clone(max_line_length=998)


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


def parse_message(raw: bytes) -> EmailMessage:
    """An outbox ``.eml`` file back as a message (for tests and tools)."""
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]
