"""The completion monitor: detect incidents, alert each exactly once, send recoveries.

:class:`Monitor` is built from a :class:`~utils.monitor_config.MonitorConfig` with the
clock, mail transport and notifier passed in. :meth:`Monitor.step` runs one check
(and, by default, one delivery pass) and returns a :class:`StepResult`;
:meth:`Monitor.run` is a thin loop around it that sleeps until the next relevant
instant and stops on :meth:`Monitor.request_stop` (wired to SIGTERM/SIGINT).

Incidents come from :func:`utils.incidents.open_incidents` (late, failed,
missing, tracker_unreadable) and :func:`utils.incidents.early_warnings` (at_risk,
too_short, stalled_stage); their identity is ``"<kind>:<key>"``. Two one-shot reports
come from the monitor itself (:meth:`Monitor._one_shot_incidents`): a batch that started
and completed late between two checks, and a corrupt tracker file a hook moved aside.

Precedence, stated here once: late supersedes at risk (no at-risk alert for a batch with
an open late incident; an open one is retired without a recovery); failed supersedes
stalled; a missing night that a late start answers becomes late (the late record inherits
the missing one's alert: one chain, no "missing" recovery, no second alert). A late
incident clears only when its batch or a newer one completes, never because the clock
stepped back.

Alert state lives in the monitor state file (``sibling_file(tracker_file,
"monitor")``, schema in the project brief), written only here, with
:mod:`utils.state_store`'s lock-and-replace protocol. A notification goes through
two recorded steps under the state lock: the intent (with its Message-ID) is
persisted, then the message is put in the outbox and the intent is marked done.
A crash between the two leaves the intent, which the next check completes; the
outbox ignores a Message-ID it already holds. So a restarted monitor neither
repeats nor forgets an alert; only a crash between the SMTP server accepting a
message and the outbox recording it can repeat one e-mail, with the same Message-ID.

Timeliness: :meth:`Monitor.run` wakes at the check interval, at the next deadline,
at the next reminder, and within half a second of the tracker file changing (a
cheap ``os.stat`` twice a second). Delivery runs in a background thread so a slow
SMTP server delays neither checks nor shutdown.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable

from utils import incidents, status_report
from utils.batch_tracker import BatchTracker, get_batch_status
from utils.deadline import format_duration, format_local, format_utc
from utils.incidents import LATE, MISSING, UNREADABLE
from utils.mail_compose import ALERT, RECOVERY, REMINDER, MailContext, compose_message, message_id_for, resolution
from utils.model import Incident
from utils.monitor_config import MonitorConfig
from utils.outbox import DeliveryReport, Outbox
from utils.projection import batch_deadline
from utils.sdnotify import SystemdNotifier
from utils.state_store import CorruptStateError, JsonStateStore, StorageError
from utils.transports import FileTransport, SmtpTransport

LOGGER = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_RECENT_ALERTS = 50
POLL_SECONDS = 0.5  # how often the sleeping loop stats the tracker file: two cheap syscalls a second
WORKER_IDLE_SECONDS = 60.0  # the delivery thread also looks for messages other processes queued
HEALTH_FACTOR = 3
RECORD_KEYS = ("kind", "key", "summary", "since", "batch_id")
MAX_REPORTED = 200  # identities of incidents ever opened, so a one-shot report is never repeated
ONE_SHOT_WINDOW_SECONDS = 24 * 3600  # an unalerted late completion or a moved-aside file older than this is history
CLOCK_TOLERANCE_SECONDS = 5.0  # a stored instant this far ahead of now means a clock problem, not a race


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Notification:
    """One message put in the outbox by a check."""

    type: str  # alert | recovery | reminder
    kind: str
    key: str
    identity: str
    subject: str
    message_id: str
    outbox_id: str


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one :meth:`Monitor.step` did.

    ``open_incidents``: the monitor's records of the incidents open after the check
    (dicts with kind, key, summary, since, batch_id, opened_at, alerted_at).
    ``opened`` / ``cleared`` / ``retired``: identities that opened, cleared (a recovery
    was queued) or were dropped without a recovery (a missing deadline that aged out).
    ``reason``: the tracker's own verdict (:func:`utils.incidents.check`).
    """

    now: float
    open_incidents: tuple[dict, ...]
    opened: tuple[str, ...]
    cleared: tuple[str, ...]
    retired: tuple[str, ...]
    notifications: tuple[Notification, ...]
    reason: str
    delivery: DeliveryReport | None = None

    @property
    def ok(self) -> bool:
        return not self.open_incidents

    @property
    def exit_code(self) -> int:
        """``--once`` exit status: 0 all well, 1 an incident is open."""
        return 0 if self.ok else 1

    @property
    def summary(self) -> str:
        """Why ``ok`` is what it is: the open incidents (``late: ...; failed: ...``), else the reason."""
        if self.open_incidents:
            return "; ".join(f"{r['kind']}: {r['summary']}" for r in self.open_incidents)
        return self.reason

    def status_line(self) -> str:
        """One line for ``--once``: ``OK: ...`` or ``PROBLEM: late: ...; failed: ...``."""
        return ("OK: " if self.ok else "PROBLEM: ") + self.summary


# --------------------------------------------------------------------------- helpers


class Waker:
    """Sleep that a signal handler or another thread can cut short.

    A self-pipe rather than :class:`threading.Event`: ``Event.set`` from a signal
    handler can deadlock when the signal lands while the main thread holds the
    event's internal lock; a flag plus a non-blocking pipe write takes no lock.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.is_set = False

    def set(self) -> None:
        self.is_set = True
        try:
            os.write(self._write_fd, b"!")
        except OSError:
            pass  # the pipe is full (already woken) or closed (shutting down)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when :meth:`set` was called."""
        if self.is_set:
            return True
        readable, _, _ = select.select([self._read_fd], [], [], max(0.0, timeout))
        if readable:
            try:
                while os.read(self._read_fd, 512):
                    pass
            except OSError:
                pass
        return self.is_set

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class FileWatcher:
    """Tells whether a file changed since the last look (device, inode, mtime, size)."""

    def __init__(self, path: str):
        self.path = path
        self._signature = self._stat()

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("error", exc.errno)
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def changed(self) -> bool:
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            return True
        return False


class _DeliveryWorker(threading.Thread):
    """Delivers due outbox messages in the background; woken by :meth:`nudge` and at retry times."""

    def __init__(self, monitor: Monitor):
        super().__init__(name="alert-delivery", daemon=True)
        self.monitor = monitor
        self._nudge = threading.Event()
        self._stopping = False

    def nudge(self) -> None:
        self._nudge.set()

    def stop(self) -> None:
        self._stopping = True
        self._nudge.set()

    def run(self) -> None:
        while not self._stopping:
            self._nudge.clear()  # before the pass: a nudge during it triggers another pass
            next_at: float | None = None
            try:
                next_at = self.monitor.deliver().next_attempt_at
            except StorageError as exc:
                LOGGER.error("alert delivery pass failed: %s", exc)
            except Exception:
                LOGGER.exception("alert delivery pass failed")
            if self._stopping:
                break
            timeout = WORKER_IDLE_SECONDS
            if next_at is not None:
                timeout = min(WORKER_IDLE_SECONDS, max(1.0, next_at - self.monitor.clock()))
            self._nudge.wait(timeout)


def make_transport(config: MonitorConfig, clock: Callable[[], float] = time.time):
    """The transport the configuration asks for: SMTP, or ``.eml`` files in the outbox."""
    if config.smtp_server is None:
        return FileTransport(config.outbox_dir, clock=clock)
    return SmtpTransport(
        config.smtp_server,
        config.smtp_port,
        security=config.smtp_security,
        username=config.smtp_username,
        password=config.smtp_password,
        timeout=config.smtp_timeout_seconds,
    )


def fresh_state(now: float) -> dict:
    """A new alert state; ``watch_since`` is the moment the monitor first watched."""
    return {
        "schema_version": SCHEMA_VERSION,
        "watch_since": now,
        "last_check_at": None,
        "open_incidents": {},
        "recent_alerts": [],
        "counters": {
            "alerts_sent": {},
            "recoveries_sent": 0,
            "reminders_sent": 0,
            "delivery_failures": 0,
            "permanent_failures": 0,
        },
        "pending_notifications": [],
        "outbox": {"pending": 0, "oldest_pending_at": None, "failed": 0},
        "reported": [],
    }


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_state(document: dict) -> dict:
    """Fill in missing keys of an older state; raise CorruptStateError when it is not ours."""
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptStateError("monitor state has no schema_version")
    if version > SCHEMA_VERSION:
        raise StorageError(f"monitor state has schema_version {version}; this release understands {SCHEMA_VERSION}")
    if not _number(document.get("watch_since")):
        raise CorruptStateError("monitor state has no valid watch_since")
    base = fresh_state(document["watch_since"])
    state = {**base, **document}
    state["counters"] = {**base["counters"], **(document.get("counters") or {})}
    if not isinstance(state["open_incidents"], dict) or not isinstance(state["recent_alerts"], list):
        raise CorruptStateError("monitor state has malformed open_incidents or recent_alerts")
    if not isinstance(state["pending_notifications"], list) or not isinstance(state["counters"]["alerts_sent"], dict):
        raise CorruptStateError("monitor state has malformed pending_notifications or counters")
    if not isinstance(state["reported"], list):
        raise CorruptStateError("monitor state has a malformed reported list")
    for ident, record in state["open_incidents"].items():
        if not isinstance(record, dict) or not all(k in record for k in ("kind", "key", "opened_at")):
            raise CorruptStateError(f"monitor state record {ident!r} is malformed")
    return state


# --------------------------------------------------------------------------- the monitor


class Monitor:
    """Watches the tracker and alerts on-call; see the module docstring.

    ``clock`` returns UTC epoch seconds (inject a fake one in tests). ``transport``
    defaults to the one ``config`` asks for (:func:`make_transport`); ``notifier`` to a
    :class:`~utils.sdnotify.SystemdNotifier` that is a no-op (pass one built from the
    environment to talk to systemd). ``early_warning`` adds at-risk, too-short and
    stalled-stage incidents from :mod:`utils.prediction`.
    """

    def __init__(
        self,
        config: MonitorConfig,
        *,
        clock: Callable[[], float] = time.time,
        transport=None,
        notifier: SystemdNotifier | None = None,
        early_warning: bool = True,
    ):
        self.config = config
        self.clock = clock
        self.tracker = BatchTracker(config.tracker, clock=clock)
        self.deadline = config.tracker.deadline()
        self.state_store = JsonStateStore(config.monitor_state_file)
        self.outbox = Outbox(config.outbox_dir, clock=clock)
        self.transport = transport if transport is not None else make_transport(config, clock)
        self.notifier = notifier if notifier is not None else SystemdNotifier({})
        self.early_warning = early_warning
        self.mail = MailContext(
            batch_name=config.tracker.batch_name,
            deadline=self.deadline,
            sender=config.email_from,
            recipients=tuple(config.email_to),
            tracker_file=config.tracker.tracker_file,
            cli_command=config.cli_command,
            run_command=config.run_command,
            resume_command=config.resume_command,
            log_dir=config.log_dir,
            status_page_url=config.status_page_url,
            output_tail_lines=config.output_tail_lines,
            under_systemd=config.under_systemd,
        )
        self.stop_signal: int | None = None
        self._stop_requested = False
        self._waker: Waker | None = None
        self._worker: _DeliveryWorker | None = None
        self._last_state: dict | None = None
        self._last_ok_monotonic: float | None = None
        self._last_error: str | None = None
        self._last_ping = 0.0
        self._delivered_once = False
        self._last_result: StepResult | None = None
        self._current_due: float | None = None

    # ----- one check

    def step(self, *, deliver: bool = True) -> StepResult:
        """Run one check; with ``deliver``, then one delivery pass over due outbox messages."""
        result = self.check()
        if deliver:
            result = dataclasses.replace(result, delivery=self.deliver())
        return result

    def check(self) -> StepResult:
        """Detect incidents, queue the alerts, recoveries and reminders they call for, record them."""
        now = self.clock()
        snapshot = self.tracker.snapshot()
        with self.state_store.locked():
            state = self._load_state(now)
            self._clamp_future_instants(state, now)
            detected = self._detect(snapshot, now, state)
            opened, cleared, retired = self._plan(state, detected, snapshot, now)
            state["last_check_at"] = now
            notifications: list[Notification] = []
            try:
                if state["pending_notifications"]:
                    # Phase 1: the intent, with its Message-ID, is durable before the outbox sees it.
                    self.state_store.write(state)
                    notifications = self._enqueue_planned(state, snapshot, now)
                state["outbox"] = self.outbox.summary()
            finally:
                # Phase 2: what reached the outbox is marked done (also when the outbox failed midway).
                self.state_store.write(state)
            self._last_state = state
        current = snapshot.current
        running = current is not None and current["state"] in ("running", "failed")
        self._current_due = batch_deadline(current, self.deadline) if running else None
        ok_reason = self._reason(snapshot, now, state)
        result = StepResult(
            now=now,
            open_incidents=tuple(
                {k: r.get(k) for k in (*RECORD_KEYS, "opened_at", "alerted_at")}
                for r in state["open_incidents"].values()
            ),
            opened=tuple(opened),
            cleared=tuple(cleared),
            retired=tuple(retired),
            notifications=tuple(notifications),
            reason=ok_reason,
        )
        self._last_result = result  # one reference swap: the HTTP thread reads it without a lock
        return result

    def _reason(self, snapshot, now: float, state: dict) -> str:
        """The tracker's verdict, reworded when it names a problem the monitor does not count as open."""
        ok, reason = incidents.check(snapshot, now, self.deadline)
        if ok or state["open_incidents"]:
            return reason
        watching = format_local(state["watch_since"], self.deadline)
        if snapshot.current is None:
            upcoming = format_local(self.deadline.first_after(now), self.deadline)
            return f"no batch recorded yet; watching since {watching}; next deadline {upcoming}"
        if snapshot.current["state"] == "completed":
            return f"no open incident; {reason}"
        return f"no open incident (watching since {watching}); the tracker notes: {reason}"

    def deliver(self) -> DeliveryReport:
        """One delivery pass over due outbox messages; failures are counted in the alert state.

        The first pass of this monitor also tries messages still backing off: a restart
        is often what follows fixing the SMTP settings.
        """
        first_pass, self._delivered_once = not self._delivered_once, True
        report = self.outbox.deliver_due(self.transport, retry_waiting=first_pass)
        if report.delivered or report.attempt_failures:
            now = self.clock()
            with self.state_store.locked():
                state = self._load_state(now)
                state["counters"]["delivery_failures"] += len(report.deferred)
                state["counters"]["permanent_failures"] += len(report.failed)
                state["outbox"] = self.outbox.summary()
                self.state_store.write(state)
                self._last_state = state
        return report

    def _load_state(self, now: float) -> dict:
        """The alert state (caller holds the lock); a fresh one on first start, a corrupt one moved aside."""
        try:
            document = self.state_store.read()
            if document is not None:
                return _check_state(document)
        except CorruptStateError as exc:
            moved_to = self.state_store.move_aside(now)
            LOGGER.error(
                "monitor state %s is corrupt (%s); moved aside to %s; starting a fresh alert state",
                self.state_store.path,
                exc,
                moved_to,
            )
        else:
            LOGGER.info("no monitor state yet at %s: watching from now on", self.state_store.path)
        return fresh_state(now)

    def _clamp_future_instants(self, state: dict, now: float) -> None:
        """Bring stored instants that lie in the future back to ``now``, logging each as a clock problem.

        A monitor once run with its clock ahead stores a future ``watch_since`` (no deadline
        before it counts as missing) or future incident times (no reminder falls due): left
        alone, they would silence it for as long as the clock was wrong.
        """

        def clamp(holder: dict, key: str, what: str) -> None:
            value = holder.get(key)
            if _number(value) and value > now + CLOCK_TOLERANCE_SECONDS:
                LOGGER.warning(
                    "clock problem: %s in %s is %s, %s in the future of now (%s); using now",
                    what,
                    self.state_store.path,
                    format_utc(value),
                    format_duration(value - now),
                    format_utc(now),
                )
                holder[key] = now

        clamp(state, "watch_since", "watch_since")
        clamp(state, "last_check_at", "last_check_at")
        for ident, record in state["open_incidents"].items():
            for key in ("opened_at", "alerted_at", "last_notified_at"):
                clamp(record, key, f"{key} of incident {ident}")

    def _one_shot_incidents(self, snapshot, now: float, state: dict) -> list[Incident]:
        """Problems that happened between two checks and left no open condition behind.

        - the newest batch completed after its deadline and no late alert was ever opened
          for it (it started late and finished before a ``--once`` check ran);
        - a hook moved a corrupt tracker file aside and started afresh: the night's
          progress is gone even though the file reads fine now.
        Each is reported once: its identity goes to ``state["reported"]`` when it opens,
        and the next check clears it with a recovery.
        """
        if not snapshot.readable:
            return []
        reported = set(state["reported"]) | set(state["open_incidents"])
        reported |= {f"{a.get('kind')}:{a.get('key')}" for a in state["recent_alerts"] if isinstance(a, dict)}
        found: list[Incident] = []
        current = snapshot.current
        if current is not None and current["state"] == "completed" and f"{LATE}:{current['id']}" not in reported:
            due = batch_deadline(current, self.deadline)
            ended = current["ended_at"]
            if ended > due and now - ended <= ONE_SHOT_WINDOW_SECONDS:
                found.append(
                    Incident(
                        LATE,
                        current["id"],
                        f"batch {current['id']} completed {format_duration(ended - due)} late, at "
                        f"{format_local(ended, self.deadline)}, after its deadline {format_local(due, self.deadline)}",
                        due,
                        current["id"],
                    )
                )
        tracker_record = state["open_incidents"].get(f"{UNREADABLE}:tracker")
        for event in snapshot.storage_events:
            if event.get("event") != "corrupt_file_moved_aside" or now - event["at"] > ONE_SHOT_WINDOW_SECONDS:
                continue
            key = f"moved-{event['at']:.0f}"
            if f"{UNREADABLE}:{key}" in reported:
                continue
            if tracker_record is not None:
                # The open "unreadable" incident already alerted; its recovery names the new location.
                tracker_record["moved_to"] = event.get("moved_to")
                tracker_record["moved_at"] = event["at"]
                self._remember(state, f"{UNREADABLE}:{key}")
                continue
            found.append(
                Incident(
                    UNREADABLE,
                    key,
                    f"the tracker file was corrupt ({event.get('error') or 'unreadable'}); at "
                    f"{format_local(event['at'], self.deadline)} a hook moved it aside to {event.get('moved_to')} "
                    "and started a fresh one: the progress recorded before then is gone",
                    event["at"],
                    None,
                )
            )
        return found

    @staticmethod
    def _remember(state: dict, ident: str) -> None:
        if ident not in state["reported"]:
            state["reported"].append(ident)
            del state["reported"][:-MAX_REPORTED]

    def _detect(self, snapshot, now: float, state: dict) -> list[Incident]:
        found = incidents.open_incidents(snapshot, now, self.deadline, watch_since=state["watch_since"])
        found += self._one_shot_incidents(snapshot, now, state)
        if self.early_warning:
            warnings = incidents.early_warnings(
                snapshot, now, self.deadline, self.config.at_risk_margin_seconds, frozenset(state["open_incidents"])
            )
            # Precedence: late supersedes at risk, also while a clock stepped back hides the lateness.
            late = {r.get("batch_id") for r in state["open_incidents"].values() if r["kind"] == LATE}
            found += [w for w in warnings if not (w.kind == incidents.AT_RISK and w.batch_id in late)]
        unique: dict[str, Incident] = {}
        for incident in found:
            unique.setdefault(incidents.identity(incident), incident)
        return list(unique.values())

    @staticmethod
    def _stays_open(record: dict, snapshot) -> bool:
        """True when ``record`` is absent only because the tracker could not be read, not because it cleared."""
        if not snapshot.readable:
            return record["kind"] != UNREADABLE or record["key"] != "tracker"
        if snapshot.history_error and record.get("batch_id"):
            current = snapshot.current
            return current is None or current["id"] != record["batch_id"]
        if record["kind"] == LATE:
            # A late batch is late until it (or a newer batch) completes: a clock stepped back
            # to before the deadline does not make it on time.
            for batch in snapshot.batches_newest_first():
                if batch["state"] == "completed":
                    return False
                if batch["id"] == record.get("batch_id"):
                    return True
        return False

    def _resolution(self, record: dict, snapshot, now: float) -> str | None:
        """Why ``record`` cleared (:func:`~utils.mail_compose.resolution`), with what only the monitor knows."""
        if record["kind"] == UNREADABLE and record.get("moved_to"):
            return (
                f"the tracker file is readable again; the corrupt one was moved aside to {record['moved_to']} "
                f"at {format_local(record.get('moved_at'), self.deadline)}: the progress recorded before then is gone"
            )
        if record["kind"] == LATE:
            batches = snapshot.batches_newest_first()
            named = next((b for b in batches if b["id"] == record.get("batch_id")), None)
            newer = next((b for b in batches if b["state"] == "completed"), None)
            if named is not None and named["state"] != "completed" and newer is not None:
                return (
                    f"batch {named['id']} ended {named['state']}; a new batch {newer['id']} completed at "
                    f"{format_local(newer['ended_at'], self.deadline)}"
                )
        return resolution(record, snapshot, self.deadline, now)

    def _adopt_missing(self, records: dict, incident: Incident) -> tuple[str, dict] | None:
        """The open "missing" record a late start answers (its deadline is the batch's), if any."""
        for ident, record in records.items():
            if record["kind"] == MISSING and float(record["key"]) == incident.since:
                return ident, record
        return None

    def _plan(self, state: dict, detected: list[Incident], snapshot, now: float) -> tuple[list, list, list]:
        """Update the open records and append notification intents to ``state``."""
        records = state["open_incidents"]
        intents = state["pending_notifications"]
        planned = {(i["identity"], i["type"]) for i in intents}
        repeat = self.config.alert_repeat_seconds
        domain = self.config.sender_domain
        opened, cleared, retired = [], [], []
        seen = set()
        for incident in detected:
            ident = incidents.identity(incident)
            seen.add(ident)
            record = records.get(ident)
            adopted = self._adopt_missing(records, incident) if record is None and incident.kind == LATE else None
            if adopted is not None:
                # Precedence: a missing night that a late start answers becomes late -- one alert
                # chain. The late record inherits the missing one's alert; no second alert, no
                # "missing" recovery; the late recovery will say how late the batch finished.
                missing_ident, missing = adopted
                del records[missing_ident]
                record = incident.to_dict()
                record.update({k: missing.get(k) for k in ("opened_at", "alerted_at", "last_notified_at")})
                record.update(reminders_sent=missing.get("reminders_sent", 0), continues=missing_ident)
                records[ident] = record
                self._remember(state, ident)
                opened.append(ident)
                retired.append(missing_ident)
                LOGGER.info("incident %s is answered by a late start: it continues as %s", missing_ident, ident)
                continue
            if record is None:
                self._remember(state, ident)
                record = incident.to_dict()
                record.update(opened_at=now, alerted_at=None, last_notified_at=None, reminders_sent=0)
                records[ident] = record
                opened.append(ident)
                intents.append(self._intent(ALERT, ident, record, message_id_for(ident, now, ALERT, 0, domain), now))
                continue
            record.update(summary=incident.summary, since=incident.since, batch_id=incident.batch_id)
            last = record.get("last_notified_at") or record.get("alerted_at")
            if repeat and last is not None and (ident, REMINDER) not in planned and now - last >= repeat:
                number = int(record.get("reminders_sent", 0)) + 1
                message_id = message_id_for(ident, record["opened_at"], REMINDER, number, domain)
                intents.append(self._intent(REMINDER, ident, record, message_id, now, number=number))
        for ident, record in list(records.items()):
            if ident in seen or self._stays_open(record, snapshot):
                continue
            del records[ident]
            text = self._resolution(record, snapshot, now)
            if text is None:
                LOGGER.info("incident %s is no longer tracked (superseded or aged out; no recovery to report)", ident)
                retired.append(ident)
                continue
            cleared.append(ident)
            message_id = message_id_for(ident, record["opened_at"], RECOVERY, 0, domain)
            intents.append(self._intent(RECOVERY, ident, record, message_id, now, resolution_text=text))
        return opened, cleared, retired

    @staticmethod
    def _intent(kind_of_message, ident, record, message_id, now, *, number=0, resolution_text=None) -> dict:
        return {
            "type": kind_of_message,
            "identity": ident,
            "incident": copy.deepcopy(record),
            "message_id": message_id,
            "number": number,
            "resolution": resolution_text,
            "planned_at": now,
        }

    def _enqueue_planned(self, state: dict, snapshot, now: float) -> list[Notification]:
        """Put each planned notification in the outbox and record it; return what was queued."""
        done: list[Notification] = []
        counters = state["counters"]
        for intent in list(state["pending_notifications"]):
            ident, kind_of_message = intent["identity"], intent["type"]
            current = state["open_incidents"].get(ident)
            record = current if (current is not None and kind_of_message != RECOVERY) else intent["incident"]
            message = compose_message(
                self.mail,
                notification_type=kind_of_message,
                incident=record,
                snapshot=snapshot,
                now=now,
                message_id=intent["message_id"],
                resolution_text=intent.get("resolution"),
                reminder_number=intent.get("number", 0),
            )
            queued = self.outbox.enqueue(message, kind=record["kind"], notification_type=kind_of_message)
            if kind_of_message == ALERT:
                if current is not None:
                    current["alerted_at"] = now
                    current["last_notified_at"] = now
                by_kind = counters["alerts_sent"]
                by_kind[record["kind"]] = int(by_kind.get(record["kind"], 0)) + 1
            elif kind_of_message == REMINDER:
                if current is not None:
                    current["reminders_sent"] = intent.get("number", 0)
                    current["last_notified_at"] = now
                counters["reminders_sent"] = int(counters.get("reminders_sent", 0)) + 1
            else:
                counters["recoveries_sent"] = int(counters.get("recoveries_sent", 0)) + 1
            subject = str(message["Subject"])
            state["recent_alerts"].append(
                {
                    "at": now,
                    "kind": record["kind"],
                    "key": record["key"],
                    "type": kind_of_message,
                    "subject": subject,
                    "message_id": intent["message_id"],
                }
            )
            del state["recent_alerts"][:-MAX_RECENT_ALERTS]
            state["pending_notifications"].remove(intent)
            log = LOGGER.info if kind_of_message == RECOVERY else LOGGER.warning
            log("%s queued for %s: %s (Message-ID %s)", kind_of_message, ident, subject, intent["message_id"])
            done.append(
                Notification(
                    type=kind_of_message,
                    kind=record["kind"],
                    key=str(record["key"]),
                    identity=ident,
                    subject=subject,
                    message_id=intent["message_id"],
                    outbox_id=queued.id,
                )
            )
        return done

    # ----- scheduling

    def next_wake_at(self, now: float) -> float:
        """The next instant a check could change something: interval, next deadline, next reminder."""
        candidates = [now + self.config.check_interval_seconds, self.deadline.first_after(now)]
        if self._current_due is not None and self._current_due > now:
            candidates.append(self._current_due)  # stored with the batch: may differ from today's settings
        repeat = self.config.alert_repeat_seconds
        if repeat and self._last_state:
            for record in self._last_state["open_incidents"].values():
                last = record.get("last_notified_at") or record.get("alerted_at")
                if last is not None:
                    candidates.append(last + repeat)
        return min(candidates)

    # ----- the loop

    def request_stop(self, signum: int | None = None) -> None:
        """Ask :meth:`run` to return; safe from a signal handler and from any thread."""
        if signum is not None:
            self.stop_signal = signum
        self._stop_requested = True
        if self._waker is not None:
            self._waker.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop :meth:`run` (call from the main thread)."""

        def handler(signum, _frame):
            self.request_stop(signum)  # no logging here: a handler must not take locks

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Check, sleep until the next relevant instant, repeat; return 0 after a stop request."""
        self._waker = Waker()
        if self._stop_requested:
            self._waker.set()
        watcher = FileWatcher(self.tracker.path)
        worker = self._worker = _DeliveryWorker(self)
        http = self._start_http()
        worker.start()
        LOGGER.info(
            "monitoring %s (deadline %02d:%02d %s, check every %d s); alerts to %s via %s",
            self.tracker.path,
            self.config.tracker.deadline_hour,
            self.config.tracker.deadline_minute,
            self.config.tracker.timezone,
            self.config.check_interval_seconds,
            ", ".join(self.config.email_to),
            self.transport.describe(),
        )
        try:
            self._loop_step()
            self.notifier.ready(self._status_text())
            while not self._stop_requested:
                wake_at = self.next_wake_at(self.clock())
                why = self._sleep_until(wake_at, watcher)
                if why == "stop":
                    break
                LOGGER.debug("woke up: %s", why)
                self._loop_step()
        finally:
            self.notifier.stopping()
            worker.stop()
            if http is not None:
                http.close()
            worker.join(timeout=0.2)  # a send in flight stays queued and is retried at the next start
            self._waker.close()
            self._waker = None
        if self.stop_signal is not None:
            LOGGER.info("stopping on %s", signal.Signals(self.stop_signal).name)
        return 0

    def _loop_step(self) -> None:
        try:
            result = self.step(deliver=False)
        except StorageError as exc:
            self._last_error = str(exc)
            LOGGER.error("check failed: %s", exc)
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            LOGGER.exception("check failed")
        else:
            self._last_error = None
            self._last_ok_monotonic = time.monotonic()
            if result.notifications and self._worker is not None:
                self._worker.nudge()
            self.notifier.status(self._status_text(result))
            self._ping_watchdog(force=True)

    def _sleep_until(self, wake_at: float, watcher: FileWatcher) -> str:
        """Sleep until ``wake_at`` (by the injected clock), a stop request or a tracker file change."""
        waker = self._waker
        if waker is None:
            return "stop"
        # A monotonic bound as well: a wall clock stepped backwards must not stretch the sleep.
        latest = time.monotonic() + self.config.check_interval_seconds
        while not self._stop_requested:
            remaining = min(wake_at - self.clock(), latest - time.monotonic())
            if remaining <= 0:
                return "due"
            if waker.wait(min(remaining, POLL_SECONDS)):
                return "stop"
            self._ping_watchdog()
            if watcher.changed():
                return "tracker file changed"
        return "stop"

    def _ping_watchdog(self, force: bool = False) -> None:
        """WATCHDOG=1, but only while checks complete: a monitor whose every check fails (too many
        open files, an unreadable state directory) stops pinging, and systemd restarts it."""
        if not self.health()[0]:
            return
        interval = self.notifier.watchdog_interval_seconds
        now = time.monotonic()
        if force or interval is None or now - self._last_ping >= interval / 2:
            self.notifier.watchdog()
            self._last_ping = now

    def _status_text(self, result: StepResult | None = None) -> str:
        if result is None:
            return "started" if self._last_error is None else f"check failing: {self._last_error}"
        return result.status_line()[:200]

    # ----- HTTP: metrics, health, status

    def _start_http(self):
        """Start the metrics/status server when METRICS_PORT is set; None otherwise or on failure."""
        if self.config.metrics_port == 0:
            return None
        try:
            from prometheus_client import CollectorRegistry

            from utils import http_server, metrics

            registry = CollectorRegistry()
            metrics.register_batch_metrics(
                registry,
                tracker=self.tracker,
                monitor_state_path=self.config.monitor_state_file,
                metrics_state_path=self.config.metrics_state_file,
                clock=self.clock,
            )
            server = http_server.serve(
                self.config.metrics_addr,
                self.config.metrics_port,
                registry=registry,
                status_provider=self.status,
                health_provider=self.health,
            )
        except Exception as exc:  # noqa: BLE001 - alerting matters more than metrics: keep going, loudly
            LOGGER.error(
                "cannot serve metrics on %s:%s (%s); alerting continues without the HTTP server",
                self.config.metrics_addr,
                self.config.metrics_port,
                exc,
            )
            return None
        LOGGER.info("serving /metrics, /healthz, /status.json and / on %s:%s", server.address, server.port)
        return server

    def health(self) -> tuple[bool, str]:
        """(True, "ok") when the loop completed a check recently; else (False, why)."""
        if self._last_error is not None:
            return False, f"the last check failed: {self._last_error}"
        if self._last_ok_monotonic is None:
            return False, "no check has completed yet"
        age = time.monotonic() - self._last_ok_monotonic
        limit = HEALTH_FACTOR * self.config.check_interval_seconds
        if age > limit:
            return False, f"the last check completed {format_duration(age)} ago (limit {format_duration(limit)})"
        return True, "ok"

    def status(self) -> dict:
        """:func:`~utils.batch_tracker.get_batch_status` plus the monitor's view, JSON-ready (ISO times)."""
        # One instant for the whole report: the page's headline is the last check's verdict, so the
        # batch is described as of that check too (as of now before the first check or while checks fail).
        last = self._last_result if self._last_error is None else None
        now = self.clock() if last is None else last.now
        report = get_batch_status(now, path=self.tracker.path, clock=self.clock, config=self.config.tracker)
        # The status page charts the last 30 nights (utils.status_page.CHART_NIGHTS); history.recent has 7.
        report["history"]["nights"] = [
            status_report.summarize_batch(b, self.deadline, now)
            for b in self.tracker.snapshot().batches_newest_first()[:30]
        ]
        try:
            state = self.state_store.read() or {}
            error = None
        except StorageError as exc:
            state, error = {}, str(exc)
        records = state.get("open_incidents") if isinstance(state.get("open_incidents"), dict) else {}
        alerts = state.get("recent_alerts") if isinstance(state.get("recent_alerts"), list) else []

        def iso(value):
            return format_utc(value) if _number(value) else None

        report["monitor"] = {
            "open_incidents": [
                {
                    "identity": ident,
                    **{k: record.get(k) for k in RECORD_KEYS},
                    "since": iso(record.get("since")),
                    "opened_at": iso(record.get("opened_at")),
                    "alerted_at": iso(record.get("alerted_at")),
                }
                for ident, record in records.items()
                if isinstance(record, dict)
            ],
            "recent_alerts": [dict(a, at=iso(a.get("at"))) for a in alerts if isinstance(a, dict)],
            "last_check_at": iso(state.get("last_check_at")),
            "watch_since": iso(state.get("watch_since")),
            "counters": state.get("counters") or {},
            "outbox": state.get("outbox") or {},
            "delivery": self.transport.describe(),
            "state_error": error,
            "healthy": self.health()[0],
            # The verdict that alerts: deadlines count only from watch_since, early warnings included.
            "ok": None if self._last_result is None else self._last_result.ok,
            "reason": None if self._last_result is None else self._last_result.summary,
        }
        return report
