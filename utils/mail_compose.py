"""Alert e-mails: composing them (subject, body, headers, stable Message-IDs).

:func:`compose_message` builds a plain-text :class:`email.message.EmailMessage`
(policy SMTP) whose subject says what happened, to which batch and when, and whose
body carries everything on-call needs (batch, start, deadline in local time and UTC,
every stage with its percentage and last update, the stage that looks stuck, the
failure reason and the failed stage's last output lines, the status page, and next
steps for this kind of incident with the commands and paths of this installation,
from :class:`MailContext`). Text that comes from the tracker (stage names, failure
reasons, stage output) is stripped of line breaks and control characters before it
reaches a header, so it can never add a header; stage output appears in the body only.
The Message-ID is derived from the incident occurrence and the message type
(:func:`message_id_for`), so composing the same notification again after a crash
gives the same Message-ID; recoveries and reminders name their alert's Message-ID in
``In-Reply-To`` and ``References``, so mail readers thread them under it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shlex
import socket
import time
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import formatdate, getaddresses, parseaddr

from utils import projection
from utils.deadline import DailyDeadline, format_duration, format_local, format_utc
from utils.projection import batch_deadline

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
# Where the monitor's own log is when it runs as the installed service (bin/install_batch_monitor_service.sh).
MONITOR_UNIT = "batch-completion-monitor"
RUNNER_UNIT = "nightly-batch"
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
    """What every message needs besides the incident: names, addresses, the deadline, and
    this installation's commands and paths for the next steps.

    ``sender`` and ``recipients`` are ``user@domain`` or ``Name <user@domain>``.
    ``cli_command``, ``run_command``, ``resume_command`` are shown as typed (the
    installed service sets e.g. ``batch-tracker`` and ``sudo systemctl start
    nightly-batch-resume``); ``log_dir`` is the runner's log directory;
    ``status_page_url`` (None: no link); ``output_tail_lines``: the failed stage's last
    lines shown (0: none); ``under_systemd``: the monitor's log is in the journal.
    """

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

    @property
    def sender_domain(self) -> str:
        """The domain of the sender address (it names Message-IDs)."""
        return parseaddr(self.sender)[1].rpartition("@")[2]


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
    alert_message_id: str | None = None,
) -> EmailMessage:
    """The e-mail for one notification (``alert``, ``recovery`` or ``reminder``) about ``incident``.

    ``incident`` is the monitor's record of it (kind, key, summary, since, batch_id,
    opened_at); ``snapshot`` the tracker as read for this check. A recovery or reminder
    carries ``In-Reply-To`` and ``References`` = ``alert_message_id``, by default the
    Message-ID the alert of this occurrence got (:func:`alert_message_id_for`).
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
    # Address objects: the policy quotes and RFC 2047-encodes display names; the outbox
    # takes the bare addresses for the envelope.
    message["From"] = _address_objects([ctx.sender])
    message["To"] = _address_objects(ctx.recipients)
    message["Subject"] = subject
    message["Date"] = formatdate(now, usegmt=True)
    message["Message-ID"] = message_id
    if notification_type != ALERT:
        thread = alert_message_id or alert_message_id_for(incident, ctx.sender_domain)
        message["In-Reply-To"] = thread
        message["References"] = thread
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to an alert
    message["X-Batch-Incident"] = header_safe(identity_of(incident), 200)
    message["X-Batch-Notification"] = notification_type
    message.set_content(
        _body(ctx, notification_type, incident, snapshot, now, headline), charset="utf-8", cte="quoted-printable"
    )
    return message


def identity_of(incident: dict) -> str:
    return f"{incident['kind']}:{incident['key']}"


def alert_message_id_for(incident: dict, domain: str) -> str:
    """The Message-ID the alert of this occurrence of ``incident`` got (the monitor derives it the same way).

    A late incident that continues a missing one (``continues``: the missing identity) was
    alerted as that missing incident: its thread starts there.
    """
    identity = incident.get("continues") or identity_of(incident)
    return message_id_for(str(identity), incident["opened_at"], ALERT, 0, domain)


def _address_objects(entries) -> tuple[Address, ...]:
    """``user@domain`` / ``Name <user@domain>`` strings (validated by the config) as Address objects."""
    return tuple(Address(name, addr_spec=addr) for name, addr in getaddresses(list(entries)) if addr)


def _body(ctx: MailContext, notification_type: str, incident: dict, snapshot, now: float, headline: str) -> str:
    deadline = ctx.deadline
    lines = [body_safe(headline), ""]
    lines.append(f"Incident:      {body_safe(identity_of(incident))} ({incident['kind']})")
    lines.append(f"Detected:      {_both(incident['opened_at'], deadline)}")
    batch = _find_batch(snapshot, incident.get("batch_id"))
    if notification_type != ALERT:
        lines.append(f"Originally:    {body_safe(_original_summary(incident, batch, notification_type))}")
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
        lines.extend(_batch_lines(ctx, batch, now, incident["kind"]))
    elif incident["kind"] != "tracker_unreadable":
        lines.append("Batch:         none recorded")
    upcoming = deadline.first_after(now)
    lines.append(f"Next deadline: {_both(upcoming, deadline)}")
    if ctx.status_page_url:
        lines.append(f"Status page:   {body_safe(ctx.status_page_url)}")
    if notification_type != RECOVERY:
        steps = next_steps(ctx, incident, batch)
        lines.append("")
        lines.append("Next steps:")
        for command, meaning in steps:
            # The meaning above the command: paths of an installation make commands long, and
            # a command alone on its line copies cleanly.
            lines.append(f"  # {meaning}")
            lines.append(f"  {command}")
    lines.append("")
    lines.append("-- ")
    lines.append(
        f"batch_completion_monitor on {body_safe(ctx.hostname)}, {_both(now, deadline)}. "
        "Each incident is alerted once; a recovery message follows when it clears."
    )
    return "\n".join(lines) + "\n"


def _original_summary(incident: dict, batch: dict | None, notification_type: str) -> str:
    """What the alert said. The monitor refreshes the summary while the incident is open, so
    after a resume it reads "(resumed, not yet completed)"; a recovery must not repeat that."""
    if notification_type == RECOVERY and incident["kind"] == "failed" and batch and batch.get("failures"):
        failure = batch["failures"][-1]
        where = f" at stage {failure['stage']}" if failure.get("stage") else ""
        why = f": {failure['reason']}" if failure.get("reason") else ""
        return f"batch {batch['id']} failed{where}{why}"
    summary = str(incident["summary"])
    if notification_type == RECOVERY:
        summary = summary.replace(" (resumed, not yet completed)", "")
    return summary


def _quote(path: str) -> str:
    return shlex.quote(path)


def batch_log_file(ctx: MailContext, batch: dict | None) -> str:
    """The runner's log for ``batch``'s latest run (named by the UTC day the run started), else a glob."""
    log_dir = ctx.log_dir.rstrip("/") or "/"
    if batch is None:
        return f"{_quote(log_dir)}/nightly_*.log"
    run_started = max([batch["started_at"], *(batch.get("resumed_at") or [])])
    day = time.strftime("%Y%m%d", time.gmtime(run_started))
    return _quote(os.path.join(log_dir, f"nightly_{day}.log"))


def next_steps(ctx: MailContext, incident: dict, batch: dict | None) -> list[tuple[str, str]]:
    """(command, what it shows or does) for this kind of incident, with this installation's
    commands and paths. Only a failed batch is offered the resume command: resuming needs a
    failed batch (the runner refuses otherwise), and a late or missing one needs a look first."""
    kind, cli = incident["kind"], ctx.cli_command
    log = batch_log_file(ctx, batch)
    stage = (projection.active_stage(batch) if batch else None) or ""
    status = (f"{cli} status", "the batch's stages, deadline and projection")
    history = (f"{cli} history", "recent batches, their durations and outcomes")
    tail = (f"tail -n 50 {log}", f"the latest lines of the batch's log{f' (stage {stage})' if stage else ''}")
    monitor_log = [(f"journalctl -u {MONITOR_UNIT} -n 100", "the monitor's own log")] if ctx.under_systemd else []
    if kind == "failed":
        what = f"the failed stage {stage}'s full output" if stage else "the failed run's full output"
        steps = [(f"grep -n -e ERROR -e '\\[{stage}\\]' {log}" if stage else f"grep -n ERROR {log}", what), status]
        if batch is None or batch["state"] == "failed":  # once resumed, it is running again: nothing to resume
            steps.append(
                (
                    ctx.resume_command,
                    "after fixing the cause: re-run from the failed stage (finished stages are skipped)",
                )
            )
        return steps
    if kind == "late":
        return [status, tail, history]
    if kind == "missing":
        if ctx.under_systemd:
            scheduler = [
                (f"systemctl list-timers {RUNNER_UNIT}.timer", "when the nightly run last fired and fires next"),
                (f"journalctl -u {RUNNER_UNIT} -n 50", "what the last nightly run said"),
            ]
        else:
            scheduler = [("crontab -l", "is the nightly run scheduled")]
        return [
            *scheduler,
            (f"ls -lt {_quote(ctx.log_dir)} | head", "the latest nightly logs (did a run start at all?)"),
            history,
            (ctx.run_command, "start the batch now (it is recorded as late)"),
        ]
    if kind == "tracker_unreadable":
        folder = _quote(os.path.dirname(ctx.tracker_file) or ".")
        return [
            (f"{cli} status", "the read error"),
            (f"ls -l {folder}", "the tracker file and any copy moved aside (*.corrupt-*)"),
            *monitor_log,
        ]
    if kind == "at_risk":
        return [status, tail, history]
    if kind == "too_short":
        return [history, (f"grep -n -i -e error -e warning {log}", "stages that did little or complained")]
    if kind == "stalled_stage":
        alive = (
            (f"systemctl status {RUNNER_UNIT}", "is the nightly run still alive")
            if ctx.under_systemd
            else ("pgrep -af run_nightly.sh", "is the nightly run still alive")
        )
        return [tail, status, alive]
    return [status, tail, *monitor_log]


def _output_tail_lines(ctx: MailContext, failure: dict) -> list[str]:
    """The failed stage's last output lines (stored by the tracker, already sanitised), indented."""
    tail = failure.get("output_tail")
    if not tail or ctx.output_tail_lines <= 0:
        return []
    shown = str(tail).split("\n")[-ctx.output_tail_lines :]
    stage = f"stage {failure['stage']}" if failure.get("stage") else "the failed stage"
    # Indented, control characters blanked: stage output can neither fake a section nor reach a header.
    lines = [f"Last {len(shown)} line(s) of output from {stage}:"]
    lines.extend("    " + "".join(ch if ch.isprintable() else " " for ch in line).rstrip() for line in shown)
    return lines


def _batch_lines(ctx: MailContext, batch: dict, now: float, kind: str = "") -> list[str]:
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
    lines.append(f"Overall:       {projection.overall_percentage(batch):.1f}%")
    if batch["state"] == "running":
        # A failed batch has no stuck stage: its Failure line names the stage that failed.
        stuck = projection.active_stage(batch)
        if stuck:
            detail = batch["stages"].get(stuck)
            last = (
                f"last update {format_local(detail['updated_at'], deadline)}, {format_duration(now - detail['updated_at'])} ago"
                if detail
                else "not started"
            )
            label = "Looks stuck:  " if kind in ("late", "stalled_stage") else "Active stage: "
            lines.append(f"{label} {stuck} ({last})")
    failure = batch.get("failure")
    if failure:
        where = f"stage {failure['stage']}" if failure.get("stage") else "no stage given"
        reason = body_safe(failure.get("reason") or "no reason given")
        lines.append(f"Failure:       {where}: {reason} ({format_local(failure.get('at'), deadline)})")
        lines.extend(_output_tail_lines(ctx, failure))
    elif batch.get("failures"):
        last_failure = batch["failures"][-1]
        reason = body_safe(last_failure.get("reason") or "no reason given")
        lines.append(f"Last failure:  stage {last_failure.get('stage') or '-'}: {reason} (then resumed)")
    names = projection.ordered_stage_names(batch)
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
