"""Alert e-mails: subject, body, headers and stable Message-IDs.

Tracker text reaches a header only as one line (:mod:`utils.text_safety`); stage output appears in
the body only. Message-IDs derive from the incident occurrence and the message type (composing again
after a crash gives the same one); recoveries and reminders thread under their alert's Message-ID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from collections.abc import Mapping
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, getaddresses, parseaddr

from utils.deadline import DailyDeadline, format_duration, format_local, format_utc
from utils.model import Batch, Snapshot
from utils.next_steps import next_steps
from utils.projection import batch_deadline
from utils.text_safety import blank_controls, body_safe, header_safe

ALERT, RECOVERY, REMINDER = "alert", "recovery", "reminder"
NOTIFICATION_TYPES = (ALERT, RECOVERY, REMINDER)
KIND_LABELS = {
    "late": "LATE",
    "failed": "FAILED",
    "missing": "MISSING",
    "late_start": "LATE START",
    "tracker_unreadable": "TRACKER UNREADABLE",
    "at_risk": "AT RISK",
    "too_short": "TOO SHORT",
    "stalled_stage": "STALLED",
}
# No folding (RFC 5322 allows 998): some readers show a subject folded after "Subject:" with a leading space.
MAIL_POLICY = policy.SMTP.clone(max_line_length=998)


def message_id_for(
    incident_identity: str, opened_at: float, notification_type: str, number: int, domain: str, scope: str = ""
) -> str:
    """The Message-ID of one notification about one occurrence of an incident; the same inputs give the same id.
    ``scope``, the job's name when one monitor watches several, keeps two jobs' ids apart (both may open
    ``tracker_unreadable:tracker`` or the same deadline's ``missing`` at one check); "" gives the ids of before."""
    seed = f"{incident_identity}\0{opened_at!r}\0{notification_type}\0{number}"
    seed = (f"{scope}\0{seed}" if scope else seed).encode()
    digest = hashlib.sha256(seed).hexdigest()[:32]
    return f"<batch-monitor.{digest}.{notification_type}@{header_safe(domain, 253)}>"


def outbox_id(message_id: str) -> str:
    """File-name-safe id of a message in the outbox (a hash of its Message-ID)."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class MailContext:
    """What every message needs besides the incident. Addresses: ``user@domain`` or ``Name <user@domain>``;
    ``status_page_url`` None: no link; ``output_tail_lines``: the failed stage's last lines shown (0: none)."""

    batch_name: str
    deadline: DailyDeadline
    sender: str
    recipients: tuple[str, ...]
    tracker_file: str
    hostname: str = dataclasses.field(default_factory=socket.gethostname)
    cli_command: str = "bin/batch_tracker"
    run_command: str = "bin/run_nightly.sh"
    resume_command: str = "bin/run_nightly.sh --resume"
    log_dir: str = "logs"
    status_page_url: str | None = None
    output_tail_lines: int = 20
    under_systemd: bool = False
    scope: str = ""  # the job's name when one monitor watches several jobs (see message_id_for), else ""

    @property
    def sender_domain(self) -> str:
        return parseaddr(self.sender)[1].rpartition("@")[2]

    @classmethod
    def for_monitor(cls, config, deadline: DailyDeadline, scope: str = "") -> MailContext:
        """The context of a monitor's messages: its ``config`` (a MonitorConfig), its job's ``deadline``."""
        settings = "cli_command run_command resume_command log_dir status_page_url output_tail_lines under_systemd"
        return cls(
            batch_name=config.tracker.batch_name,
            deadline=deadline,
            sender=config.email_from,
            recipients=tuple(config.email_to),
            tracker_file=config.tracker.tracker_file,
            scope=scope,
            **{name: getattr(config, name) for name in settings.split()},
        )


@dataclasses.dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What a message says about one occurrence of an incident. ``opened_at``: when the monitor opened
    it (default ``since``); ``continues``: the missing incident a late start answered (its thread)."""

    kind: str
    key: str
    summary: str = ""
    since: float | None = None
    batch_id: str | None = None
    opened_at: float | None = None
    continues: str | None = None

    @classmethod
    def of(cls, incident: object) -> IncidentFacts:
        """From the monitor's record: a mapping (its log record) or an object with these attributes
        (:class:`utils.model.Incident` and the like); ``kind`` and ``key`` are required."""
        if isinstance(incident, IncidentFacts):
            return incident

        def read(name: str) -> object:
            return incident.get(name) if isinstance(incident, Mapping) else getattr(incident, name, None)

        fields = {field.name: read(field.name) for field in dataclasses.fields(cls)}
        if fields["kind"] is None or fields["key"] is None:
            raise ValueError(f"incident {incident!r} lacks a kind or key")
        fields["kind"], fields["key"] = str(fields["kind"]), str(fields["key"])
        fields["summary"] = "" if fields["summary"] is None else str(fields["summary"])
        if fields["opened_at"] is None:
            fields["opened_at"] = fields["since"]
        return cls(**fields)

    @property
    def identity(self) -> str:
        return f"{self.kind}:{self.key}"


def _deadline_words(due: float, deadline: DailyDeadline) -> str:
    """``05:00 EST deadline (Tue 2026-11-24)``."""
    local = deadline.to_local(due)
    return f"{local:%H:%M %Z} deadline ({local:%a %Y-%m-%d})"


def _both(instant: float | None, deadline: DailyDeadline) -> str:
    return "-" if instant is None else f"{format_local(instant, deadline)} ({format_utc(instant)})"


def alert_subject(ctx: MailContext, incident: object, snapshot: Snapshot) -> str:
    """What, which batch and when, e.g. ``[LATE] nightly batch X missed its 05:00 EST deadline (Tue 2026-11-24)``."""
    facts = IncidentFacts.of(incident)
    kind, name, bid = facts.kind, ctx.batch_name, facts.batch_id
    label = KIND_LABELS.get(kind, kind.upper())
    batch = snapshot.find(bid)
    deadline = ctx.deadline
    if kind in ("late", "at_risk"):
        due = batch_deadline(batch, deadline) if batch else facts.since
        missed = "missed" if kind == "late" else "is projected to miss"
        text = f"{name} batch {bid} {missed} its {_deadline_words(due, deadline)}"
    elif kind == "failed":
        failure = batch.last_failure if batch else None
        where = f" at stage {failure.stage}" if failure and failure.stage else ""
        at = failure.at if failure else facts.since
        text = f"{name} batch {bid} failed{where} ({format_local(at, deadline)})"
    elif kind == "missing":
        text = f"no {name} batch started before the {_deadline_words(float(facts.key), deadline)}"
    elif kind == "late_start":
        start_by = deadline.to_local(facts.since)
        text = f"no {name} batch started by {start_by:%H:%M %Z} for the {_deadline_words(float(facts.key), deadline)}"
    elif kind == "tracker_unreadable":
        text = f"{name} batch tracker file cannot be read (since {format_local(facts.opened_at, deadline)})"
    elif kind == "stalled_stage":
        stage = facts.key.rpartition(":")[2]
        text = f"{name} batch {bid}: stage {stage} has stopped moving ({format_local(facts.opened_at, deadline)})"
    elif kind == "too_short":
        text = f"{name} batch {bid} finished suspiciously fast"
    else:
        text = facts.summary or kind
    return header_safe(f"[{label}] {text}")


def resolution(incident: object, snapshot: Snapshot, deadline: DailyDeadline, now: float) -> str | None:
    """Why an incident that is no longer detected has cleared, e.g. ``batch X completed 47 min late``; None when
    it did not really resolve (a missing deadline aged out, an early warning superseded by a late or failed alert)."""
    facts = IncidentFacts.of(incident)
    kind, bid = facts.kind, facts.batch_id
    batches = snapshot.batches_newest_first()
    batch = snapshot.find(bid)
    newest = batches[0] if batches else None
    if kind == "missing":
        due = float(facts.key)
        window_start = deadline.previous(due)
        # A batch started at or after the previous deadline covers this one (its deadline is this one or later).
        first = min((b for b in batches if b.started_at >= window_start), key=lambda b: b.started_at, default=None)
        if first is None:
            return None
        late_by = first.started_at - due
        when = f"{format_duration(late_by)} after" if late_by > 0 else "before"
        return (
            f"batch {first.id} started at {format_local(first.started_at, deadline)}, "
            f"{when} the {format_local(due, deadline)} deadline"
        )
    if kind == "late_start":
        due, start_by = float(facts.key), facts.since
        window_start = deadline.previous(due)
        first = min((b for b in batches if b.started_at >= window_start), key=lambda b: b.started_at, default=None)
        if first is None:
            return None  # not started: the missing alert at the deadline speaks for it (or the night was excused)
        late_by = first.started_at - start_by
        return (
            f"batch {first.id} started at {format_local(first.started_at, deadline)}, "
            f"{format_duration(late_by)} after the start-by time {format_local(start_by, deadline)}"
        )
    if kind == "tracker_unreadable":
        return "the tracker file is readable again"
    if kind in ("at_risk", "stalled_stage") and batch is not None:
        if batch.is_failed:
            return None  # not better: the failed alert speaks for it now
        if kind == "at_risk" and batch.is_running and now >= batch_deadline(batch, deadline):
            return None  # not better: the deadline passed and the late alert speaks for it now
    if batch is not None and batch.is_completed:
        due = batch_deadline(batch, deadline)
        ended = format_local(batch.ended_at, deadline)
        margin = batch.ended_at - due
        timing = f"{format_duration(margin)} late" if margin > 0 else f"on time, {format_duration(margin)} early"
        if kind in ("failed", "stalled_stage"):
            resumed = " after resume" if kind == "failed" and batch.resumed_at else ""
            return f"batch {bid} completed{resumed} at {ended} ({timing})"
        return f"batch {bid} completed {timing}, at {ended}"
    if kind == "failed":
        completed = next((b for b in batches if b.is_completed), None)
        if completed is not None:
            return f"a new batch {completed.id} completed at {format_local(completed.ended_at, deadline)}"
    if kind == "stalled_stage" and batch is not None and batch.is_running:
        stage_name = facts.key.rpartition(":")[2]
        stage = batch.stage(stage_name)
        if stage is not None:
            return f"stage {stage_name} of batch {bid} is moving again ({stage.percentage:.0f}%)"
        return f"batch {bid} is past stage {stage_name}"
    if kind == "at_risk" and batch is not None and batch.is_running:
        return f"batch {bid} is projected to finish within its deadline again"
    if kind == "too_short":
        return "a later batch completed with a normal duration"
    if batch is not None and newest is not None and newest.id != bid:
        return (
            f"batch {bid} ended {batch.state}; batch {newest.id} started at {format_local(newest.started_at, deadline)}"
        )
    if batch is not None:
        return f"batch {bid} is now {batch.state}"
    return f"batch {bid} is no longer in the tracker's records"


def compose_message(
    ctx: MailContext,
    *,
    notification_type: str,
    incident: object,
    snapshot: Snapshot,
    now: float,
    message_id: str,
    resolution_text: str | None = None,
    reminder_number: int = 0,
) -> EmailMessage:
    """The e-mail for one ``alert``, ``recovery`` or ``reminder`` about ``incident`` (see :meth:`IncidentFacts.of`);
    ValueError for any other notification type."""
    if notification_type not in NOTIFICATION_TYPES:
        raise ValueError(f"notification type {notification_type!r} is not one of {NOTIFICATION_TYPES}")
    facts = IncidentFacts.of(incident)
    subject = alert_subject(ctx, facts, snapshot)
    if notification_type == RECOVERY:
        text = resolution_text or f"{facts.kind} cleared"
        subject = header_safe(f"[RECOVERED] {ctx.batch_name} {KIND_LABELS.get(facts.kind, '')}: {text}")
        headline = f"RECOVERED: {text}."
    elif notification_type == REMINDER:
        open_for = format_duration(now - facts.opened_at)
        subject = header_safe(f"[REMINDER {reminder_number}] {subject} - open for {open_for}")
        headline = f"STILL OPEN after {open_for}: {facts.summary}"
    else:
        headline = facts.summary

    message = EmailMessage(policy=MAIL_POLICY)
    # Address objects: the policy quotes and RFC 2047-encodes display names.
    message["From"] = _address_objects([ctx.sender])
    message["To"] = _address_objects(ctx.recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(now, usegmt=True)
    message["Message-ID"] = message_id
    if notification_type != ALERT:
        message["In-Reply-To"] = message["References"] = alert_message_id_for(facts, ctx.sender_domain, ctx.scope)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to an alert
    # Jobs apart: the outbox keeps one incident's messages in order, and two jobs may share an identity.
    message["X-Batch-Incident"] = header_safe(f"{ctx.scope}/{facts.identity}" if ctx.scope else facts.identity, 200)
    if ctx.scope:  # one monitor, many jobs: name the job for filters and tools (one job: the headers of before)
        message["X-Batch-Job"] = header_safe(ctx.batch_name, 64)
    message["X-Batch-Notification"] = notification_type
    message.set_content(
        _body(ctx, notification_type, facts, snapshot, now, headline), charset="utf-8", cte="quoted-printable"
    )
    return message


def alert_message_id_for(incident: object, domain: str, scope: str = "") -> str:
    """The Message-ID of this occurrence's alert (a late incident continuing a missing one: the missing one's)."""
    facts = IncidentFacts.of(incident)
    return message_id_for(str(facts.continues or facts.identity), facts.opened_at, ALERT, 0, domain, scope)


def _address_objects(entries) -> tuple[Address, ...]:
    return tuple(Address(name, addr_spec=addr) for name, addr in getaddresses(list(entries)) if addr)


def _body(
    ctx: MailContext, notification_type: str, facts: IncidentFacts, snapshot: Snapshot, now: float, headline: str
) -> str:
    deadline = ctx.deadline
    lines = [
        body_safe(headline),
        "",
        f"Incident:      {body_safe(facts.identity)} ({facts.kind})",
        f"Detected:      {_both(facts.opened_at, deadline)}",
    ]
    batch = snapshot.find(facts.batch_id)
    if notification_type != ALERT:
        lines.append(f"Originally:    {body_safe(_original_summary(facts, batch, notification_type))}")
    if batch is None and snapshot.readable and facts.kind in ("missing", "tracker_unreadable"):
        batch = snapshot.current
        if batch is not None:
            lines.append("Last batch (for context):")
    if not snapshot.readable:
        lines += [f"Tracker file:  {ctx.tracker_file}", f"Read error:    {body_safe(snapshot.error)}"]
    if facts.kind == "missing":
        lines.append(f"Deadline:      {_both(float(facts.key), deadline)}")
    if batch is not None:
        lines.extend(_batch_lines(ctx, batch, now, facts.kind))
    elif facts.kind != "tracker_unreadable":
        lines.append("Batch:         none recorded")
    lines.append(f"Next deadline: {_both(deadline.first_after(now), deadline)}")
    if ctx.status_page_url:
        lines.append(f"Status page:   {body_safe(ctx.status_page_url)}")
    if notification_type != RECOVERY:
        lines += ["", "Next steps:"]
        for command, meaning in next_steps(ctx, facts.kind, batch):
            # The meaning above the command: commands get long, and alone on its line one copies cleanly.
            lines += [f"  # {meaning}", f"  {command}"]
    lines += [
        "",
        "-- ",
        f"batch_completion_monitor on {body_safe(ctx.hostname)}, {_both(now, deadline)}. "
        "Each incident is alerted once; a recovery message follows when it clears.",
    ]
    return "\n".join(lines) + "\n"


def _original_summary(facts: IncidentFacts, batch: Batch | None, notification_type: str) -> str:
    """What the alert said: a recovery drops the "(resumed, not yet completed)" the monitor added since."""
    if notification_type == RECOVERY and facts.kind == "failed" and batch and batch.failures:
        return f"batch {batch.id} failed {batch.failures[-1].describe()}".rstrip()
    if notification_type == RECOVERY:
        return facts.summary.replace(" (resumed, not yet completed)", "")
    return facts.summary


def _batch_lines(ctx: MailContext, batch: Batch, now: float, kind: str = "") -> list[str]:
    deadline = ctx.deadline
    due = batch_deadline(batch, deadline)
    end = batch.ended_at
    elapsed = (end if end is not None else now) - batch.started_at
    host = f", host {body_safe(batch.host)}" if batch.host else ""
    lines = [
        f"Batch:         {ctx.batch_name} {batch.id}, state {batch.state}{host}",
        f"Started:       {_both(batch.started_at, deadline)}",
        f"Deadline:      {_both(due, deadline)}"
        + (f", passed {format_duration(now - due)} ago" if now >= due else f", in {format_duration(due - now)}"),
    ]
    if end is not None:
        lines.append(f"Ended:         {_both(end, deadline)}")
    lines += [f"Elapsed:       {format_duration(elapsed)}", f"Overall:       {batch.overall_percentage():.1f}%"]
    stages = batch.stage_map()
    if batch.is_running:
        # A failed batch has no stuck stage: its Failure line names the stage that failed.
        if stuck := batch.active_stage():
            last = "not started"
            if detail := stages.get(stuck):
                ago = format_duration(now - detail.updated_at)
                last = f"last update {format_local(detail.updated_at, deadline)}, {ago} ago"
            label = "Looks stuck:  " if kind in ("late", "stalled_stage") else "Active stage: "
            lines.append(f"{label} {stuck} ({last})")
    failure = batch.failure
    if failure:
        where = f"stage {failure.stage}" if failure.stage else "no stage given"
        reason = body_safe(failure.reason or "no reason given")
        lines.append(f"Failure:       {where}: {reason} ({format_local(failure.at, deadline)})")
        if failure.output_tail and ctx.output_tail_lines > 0:
            shown = failure.output_tail.split("\n")[-ctx.output_tail_lines :]
            stage = f"stage {failure.stage}" if failure.stage else "the failed stage"
            # Indented, control characters blanked: stage output can neither fake a section nor reach a header.
            lines.append(f"Last {len(shown)} line(s) of output from {stage}:")
            lines += ["    " + blank_controls(line).rstrip() for line in shown]
    elif batch.failures:
        last_failure = batch.failures[-1]
        reason = body_safe(last_failure.reason or "no reason given")
        lines.append(f"Last failure:  stage {last_failure.stage or '-'}: {reason} (then resumed)")
    names = batch.ordered_stage_names()
    lines.append("Stages:" if names else "Stages:        none recorded")
    width = max([len(n) for n in names] + [5])
    for name in names:
        stage = stages.get(name)
        last = f"last update {_both(stage.updated_at, deadline)}" if stage else "not started"
        lines.append(f"  {name:<{width}}  {stage.percentage if stage else 0.0:5.1f}%  {last}")
    return lines


def parse_message(raw: bytes) -> EmailMessage:
    """An outbox ``.eml`` file back as a message (for tests and tools)."""
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]
