"""Planning notifications (pure, no I/O): reconcile the incidents detected now with the :class:`AlertLog`.

An incident alerts once when it opens, reminds every ``repeat_seconds`` (if set) and recovers once when it clears;
a superseded record is retired without a recovery; a late start answering a missing night continues its alert chain.
"""

from __future__ import annotations

import dataclasses
import logging

from utils import incidents
from utils.alert_log import AlertLog, IncidentRecord, Notice
from utils.deadline import DailyDeadline, format_duration, format_local
from utils.incidents import LATE, UNREADABLE
from utils.mail_compose import ALERT, RECOVERY, REMINDER, message_id_for, resolution
from utils.model import Incident, Snapshot
from utils.projection import batch_deadline

LOGGER = logging.getLogger("utils.monitor")

ONE_SHOT_WINDOW_SECONDS = 24 * 3600  # an unalerted late completion or a moved-aside file older than this is history


@dataclasses.dataclass(frozen=True)
class Plan:
    """Identities that opened, cleared (a recovery is planned) or were retired without a recovery."""

    opened: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()


def detect(
    snapshot: Snapshot,
    now: float,
    deadline: DailyDeadline,
    log: AlertLog,
    *,
    early_warning: bool = True,
    margin_seconds: float = 0.0,
) -> list[Incident]:
    """The incidents open at ``now``, one per identity, superseded warnings left out."""
    found = incidents.open_incidents(snapshot, now, deadline, watch_since=log.watch_since)
    found += one_shot_incidents(snapshot, now, deadline, log)
    if early_warning:
        found += incidents.early_warnings(snapshot, now, deadline, margin_seconds, frozenset(log.open_incidents))
    # The open records count as well: late supersedes at risk also while a clock stepped back hides the lateness.
    return incidents.apply_precedence(found, open_identities=frozenset(log.open_incidents))


def one_shot_incidents(snapshot: Snapshot, now: float, deadline: DailyDeadline, log: AlertLog) -> list[Incident]:
    """Problems between two checks that left no open condition (a late completion never alerted, a corrupt
    tracker file moved aside): each reported once, cleared with a recovery at the next check."""
    if not snapshot.readable:
        return []
    reported = log.ever_reported()
    found: list[Incident] = []
    current = snapshot.current
    if current is not None and current.is_completed and f"{LATE}:{current.id}" not in reported:
        due = batch_deadline(current, deadline)
        ended = current.ended_at
        late = ended is not None and ended > due and not deadline.is_excused(due)
        if late and now - ended <= ONE_SHOT_WINDOW_SECONDS:
            summary = (
                f"batch {current.id} completed {format_duration(ended - due)} late, at "
                f"{format_local(ended, deadline)}, after its deadline {format_local(due, deadline)}"
            )
            found.append(Incident(LATE, current.id, summary, due, current.id))
    tracker_ident = f"{UNREADABLE}:tracker"
    for event in snapshot.storage_events:
        if event.event != "corrupt_file_moved_aside" or now - event.at > ONE_SHOT_WINDOW_SECONDS:
            continue
        key = f"moved-{event.at:.0f}"
        if f"{UNREADABLE}:{key}" in reported:
            continue
        moved_to = event.details.get("moved_to")
        tracker_record = log.open_incidents.get(tracker_ident)
        if tracker_record is not None:
            # The open "unreadable" incident already alerted; its recovery names the new location.
            log.open_incidents[tracker_ident] = tracker_record.replace(moved_to=moved_to, moved_at=event.at)
            log.remember(f"{UNREADABLE}:{key}")
            continue
        summary = (
            f"the tracker file was corrupt ({event.details.get('error') or 'unreadable'}); at "
            f"{format_local(event.at, deadline)} a hook moved it aside to {moved_to} "
            "and started a fresh one: the progress recorded before then is gone"
        )
        found.append(Incident(UNREADABLE, key, summary, event.at, None))
    return found


def stays_open(record: IncidentRecord, snapshot: Snapshot) -> bool:
    """True when ``record`` is absent only because the tracker could not be read, not because it cleared."""
    if not snapshot.readable:
        return record.identity != f"{UNREADABLE}:tracker"
    if snapshot.history_error and record.batch_id:
        current = snapshot.current
        return current is None or current.id != record.batch_id
    if record.kind == LATE:  # late until it (or a newer batch) completes, whatever the clock says
        for batch in snapshot.batches_newest_first():
            if batch.is_completed:
                return False
            if batch.id == record.batch_id:
                return True
    return False


def resolution_text(record: IncidentRecord, snapshot: Snapshot, deadline: DailyDeadline, now: float) -> str | None:
    """Why ``record`` cleared (:func:`~utils.mail_compose.resolution`), with what only the monitor knows;
    None when it did not clear but was superseded or aged out (no recovery)."""
    if record.kind == UNREADABLE and record.moved_to:
        return (
            f"the tracker file is readable again; the corrupt one was moved aside to {record.moved_to} "
            f"at {format_local(record.moved_at, deadline)}: the progress recorded before then is gone"
        )
    if record.kind == LATE:
        named = snapshot.find(record.batch_id)
        newer = next((b for b in snapshot.batches_newest_first() if b.is_completed), None)
        if named is not None and not named.is_completed and newer is not None:
            return (
                f"batch {named.id} ended {named.state}; a new batch {newer.id} completed at "
                f"{format_local(newer.ended_at, deadline)}"
            )
    return resolution(record, snapshot, deadline, now)


def plan(
    log: AlertLog,
    detected: list[Incident],
    snapshot: Snapshot,
    now: float,
    deadline: DailyDeadline,
    *,
    repeat_seconds: float = 0,
    domain: str = "localhost",
    scope: str = "",
) -> Plan:
    """Update the open records of ``log`` and append the notices they call for to ``log.pending`` (once each);
    ``domain`` and ``scope`` (the job's name when one monitor watches several) go into their Message-IDs."""
    records = log.open_incidents
    planned = {(n.identity, n.type) for n in log.pending}
    opened, cleared, retired = [], [], []
    seen = {incident.identity for incident in detected}
    for incident in detected:
        ident = incident.identity
        record = records.get(ident)
        if record is None:
            log.remember(ident)
            opened.append(ident)
            # The open record whose alert chain this continues (a missing night answered by a late start).
            rules = ((record, incidents.superseded_by(record.incident, [incident])) for record in records.values())
            earlier = next((record for record, hit in rules if hit is not None and hit[1].continues), None)
            if earlier is None:
                record = records[ident] = IncidentRecord(incident=incident, opened_at=now)
                log.pending.append(
                    Notice.planned(ALERT, record, message_id_for(ident, now, ALERT, 0, domain, scope), now)
                )
            else:  # one alert chain: the late record inherits the missing one's alert; no "missing" recovery
                del records[earlier.identity]
                records[ident] = dataclasses.replace(earlier, incident=incident, continues=earlier.identity)
                retired.append(earlier.identity)
                LOGGER.info("incident %s is answered by a late start: it continues as %s", earlier.identity, ident)
            continue
        record = records[ident] = record.replace(incident=incident)
        last = record.last_notice_at
        if repeat_seconds and last is not None and (ident, REMINDER) not in planned and now - last >= repeat_seconds:
            number = record.reminders_sent + 1
            message_id = message_id_for(ident, record.opened_at, REMINDER, number, domain, scope)
            log.pending.append(Notice.planned(REMINDER, record, message_id, now, number=number))
    for ident, record in list(records.items()):
        if ident in seen or stays_open(record, snapshot):
            continue
        del records[ident]
        superseded = incidents.superseded_by(record.incident, detected) is not None
        text = None if superseded else resolution_text(record, snapshot, deadline, now)
        if text is None:
            LOGGER.info("incident %s is no longer tracked (superseded or aged out; no recovery to report)", ident)
            retired.append(ident)
            continue
        cleared.append(ident)
        message_id = message_id_for(ident, record.opened_at, RECOVERY, 0, domain, scope)
        log.pending.append(Notice.planned(RECOVERY, record, message_id, now, resolution=text))
    return Plan(tuple(opened), tuple(cleared), tuple(retired))


def next_reminder_at(log: AlertLog | None, repeat_seconds: float) -> float | None:
    """When the earliest reminder falls due (None without reminders or open alerted incidents)."""
    if not repeat_seconds or log is None:
        return None
    due = [r.last_notice_at + repeat_seconds for r in log.open_incidents.values() if r.last_notice_at is not None]
    return min(due, default=None)


def verdict(snapshot: Snapshot, now: float, deadline: DailyDeadline, log: AlertLog) -> str:
    """The tracker's verdict, reworded when it names a problem the monitor does not count as open."""
    ok, reason = incidents.check(snapshot, now, deadline)
    if ok or log.open_incidents:
        return reason
    watching = format_local(log.watch_since, deadline)
    if snapshot.current is None:
        upcoming = format_local(deadline.first_after(now), deadline)
        return f"no batch recorded yet; watching since {watching}; next deadline {upcoming}"
    if snapshot.current.is_completed:
        return f"no open incident; {reason}"
    return f"no open incident (watching since {watching}); the tracker notes: {reason}"
