"""The completion monitor: detect incidents, alert each exactly once, send recoveries.

:meth:`Monitor.check` plans notifications (:mod:`utils.notifications`), then under the log's lock
persists each planned notice (with its stable Message-ID), queues it and marks it queued. A crash between
the two leaves the notice for the next check, and the outbox ignores a Message-ID it holds: a restart neither
repeats nor forgets an alert. The loop is in :mod:`utils.service`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from utils import notifications, status_report
from utils.alert_log import AlertLog, AlertLogStore, IncidentRecord, Notice
from utils.alertmanager import Reposter, enqueue_on_channels, make_channels
from utils.batch_tracker import BatchTracker
from utils.config import MonitorConfig
from utils.deadline import format_duration
from utils.errors import EXIT_OK, EXIT_PROBLEM
from utils.mail_compose import RECOVERY, MailContext, compose_message
from utils.outbox import DeliveryReport, Outbox
from utils.projection import batch_deadline
from utils.state_store import StorageError
from utils.status_chart import CHART_NIGHTS
from utils.transports import FileTransport, SmtpTransport

LOGGER = logging.getLogger(__name__)

HEALTH_FACTOR = 3
# MonitorConfig fields that MailContext takes as they are.


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one check (and optionally one delivery pass) did: the records open after it, the
    identities that opened / cleared / were retired (:class:`utils.notifications.Plan`), the
    notices it queued, and ``reason`` (:func:`utils.notifications.verdict`)."""

    now: float
    open_incidents: tuple[IncidentRecord, ...]
    opened: tuple[str, ...]
    cleared: tuple[str, ...]
    retired: tuple[str, ...]
    notifications: tuple[Notice, ...]
    reason: str
    delivery: DeliveryReport | None = None

    @property
    def ok(self) -> bool:
        return not self.open_incidents

    @property
    def exit_code(self) -> int:
        """``--once`` exit status: 0 all well, 1 an incident is open."""
        return EXIT_OK if self.ok else EXIT_PROBLEM

    @property
    def summary(self) -> str:
        """Why ``ok`` is what it is: the open incidents (``late: ...; failed: ...``), else the reason."""
        if self.open_incidents:
            return "; ".join(f"{r.kind}: {r.summary}" for r in self.open_incidents)
        return self.reason

    def status_line(self) -> str:
        """One line for ``--once``: ``OK: ...`` or ``PROBLEM: late: ...; failed: ...``."""
        return ("OK: " if self.ok else "PROBLEM: ") + self.summary


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


class CheckHealth:
    """Whether a monitor's checks complete, and recently enough: what /healthz and the watchdog go by."""

    def __init__(self, interval_seconds: float):
        self.limit = HEALTH_FACTOR * interval_seconds
        self.last_error: str | None = None  # why the last check failed; None when it completed (or none ran)
        self._last_ok_monotonic: float | None = None

    def failed(self, exc: Exception) -> None:
        self.last_error = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"

    def completed(self) -> None:
        self.last_error, self._last_ok_monotonic = None, time.monotonic()

    def verdict(self) -> tuple[bool, str]:
        """(True, "ok") when a check completed recently; else (False, why)."""
        if self.last_error is not None:
            return False, f"the last check failed: {self.last_error}"
        if self._last_ok_monotonic is None:
            return False, "no check has completed yet"
        age = time.monotonic() - self._last_ok_monotonic
        if age > self.limit:
            return False, f"the last check completed {format_duration(age)} ago (limit {format_duration(self.limit)})"
        return True, "ok"


class Monitor:
    """Watches one job's tracker and alerts on-call. ``transport``: e-mail (default :func:`make_transport`);
    ``channels``: all of them (default :func:`utils.alertmanager.make_channels`); ``early_warning``: at-risk,
    too-short, stalled-stage incidents. One job among several (:mod:`utils.monitor_jobs`) shares ``outbox`` and
    transports and puts its ``scope``, the job's name, in Message-IDs and incident headers ("" when alone)."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        clock=time.time,
        transport=None,
        early_warning: bool = True,
        outbox: Outbox | None = None,
        scope: str = "",
        channels=None,
    ):
        self.config = config
        self.clock = clock
        self.scope = scope
        self.tracker = BatchTracker(config.tracker, clock=clock)
        self.deadline = config.tracker.deadline()
        self.log_store = AlertLogStore(config.monitor_state_file)
        self.outbox = outbox if outbox is not None else Outbox(config.outbox_dir, clock=clock)
        self.transport = transport if transport is not None else make_transport(config, clock)
        # channel -> transport: e-mail (self.transport) unless switched off, Alertmanager(s), webhook.
        self.channels = dict(channels) if channels is not None else make_channels(config, self.transport, clock)
        self.reposter = Reposter(
            self.channels,
            self.log_store.open_incidents,
            job=config.tracker.batch_name,
            status_page_url=config.status_page_url,
        )
        self.early_warning = early_warning
        self.mail = MailContext.for_monitor(config, self.deadline, scope)
        self._last_log: AlertLog | None = None
        self._current_due: float | None = None
        self._delivered_once = False
        self._last_result: StepResult | None = None
        self.check_health = CheckHealth(config.check_interval_seconds)

    @property
    def monitors(self) -> tuple[Monitor, ...]:
        """The per-job monitors the service runs: this one (:class:`utils.monitor_jobs.JobsMonitor` has several)."""
        return (self,)

    @property
    def watched_paths(self) -> tuple[str, ...]:
        """The tracker files whose change wakes the loop."""
        return (self.tracker.path,)

    def job_status(self, name: str) -> dict | None:
        """:meth:`status` when ``name`` is this monitor's job (``BATCH_NAME``), else None (``/jobs/NAME``)."""
        return self.status() if name == self.config.tracker.batch_name else None

    def step(self, *, deliver: bool = True) -> StepResult:
        """One check; with ``deliver``, then one delivery pass over due outbox messages."""
        result = self.check()
        return dataclasses.replace(result, delivery=self.deliver()) if deliver else result

    def check(self) -> StepResult:
        """Detect incidents, queue and record their notifications; a failure is noted for :meth:`health`, and raised."""
        try:
            result = self._check()
        except Exception as exc:
            self.check_health.failed(exc)
            raise
        self.check_health.completed()
        self._last_result = result  # one reference swap: the HTTP thread reads it without a lock
        return result

    def _check(self) -> StepResult:
        deadline, now = self.tracker.schedule(), self.clock()  # the job's skipped and paused nights excused
        margin, repeat = self.config.at_risk_margin_seconds, self.config.alert_repeat_seconds
        snapshot = self.tracker.snapshot()
        queued: list[Notice] = []
        with self.log_store.updating(now) as log:  # saved on the way out, also when the outbox failed midway
            detected = notifications.detect(
                snapshot, now, deadline, log, early_warning=self.early_warning, margin_seconds=margin
            )
            plan = notifications.plan(
                log,
                detected,
                snapshot,
                now,
                deadline,
                repeat_seconds=repeat,
                domain=self.config.sender_domain,
                scope=self.scope,
            )
            log.last_check_at = now
            if log.pending:
                # Phase 1: the notice, with its Message-ID, is durable before the outbox sees it.
                self.log_store.save(log)
                queued = [self._enqueue(log, notice, snapshot, now) for notice in list(log.pending)]
            # Phase 2 (the save on leaving): what reached the outbox is marked queued.
            log.outbox = self.outbox.summary()
            self._last_log = log
        current = snapshot.current
        running = current is not None and (current.is_running or current.is_failed)
        self._current_due = batch_deadline(current, deadline) if running else None
        return StepResult(
            now=now,
            open_incidents=tuple(log.open_incidents.values()),
            opened=plan.opened,
            cleared=plan.cleared,
            retired=plan.retired,
            notifications=tuple(queued),
            reason=notifications.verdict(snapshot, now, deadline, log),
        )

    def _enqueue(self, log: AlertLog, notice: Notice, snapshot, now: float) -> Notice:
        """Compose ``notice``, put it in the outbox, record it in ``log``; return it as queued."""
        current = log.open_incidents.get(notice.identity)
        record = current if (current is not None and notice.type != RECOVERY) else notice.record
        message = compose_message(
            self.mail,
            notification_type=notice.type,
            incident=record,
            snapshot=snapshot,
            now=now,
            message_id=notice.message_id,
            resolution_text=notice.resolution,
            reminder_number=notice.number,
        )
        job, page = self.config.tracker.batch_name, self.config.status_page_url
        enqueue_on_channels(self.outbox, self.channels, message, notice, record, job=job, now=now, status_page_url=page)
        subject = str(message["Subject"])
        level = logging.INFO if notice.type == RECOVERY else logging.WARNING
        LOGGER.log(
            level, "%s queued for %s: %s (Message-ID %s)", notice.type, notice.identity, subject, notice.message_id
        )
        return log.record_queued(notice, subject, now)

    def deliver(self) -> DeliveryReport:
        """One delivery pass over due outbox messages; failures are counted in the log. The first pass
        also tries messages still backing off: a restart often follows fixing the SMTP settings."""
        first_pass, self._delivered_once = not self._delivered_once, True
        report = self.outbox.deliver_due(self.channels, retry_waiting=first_pass)
        if report.delivered or report.attempt_failures:
            summary = self.outbox.summary()
            self._last_log = self.log_store.record_delivery(
                self.clock(), len(report.deferred), len(report.failed), summary
            )
        if self.repost_due_in() <= 0:
            self.repost_alerts()
        return report

    def repost_due_in(self) -> float:
        """Seconds until open incidents are due to be re-posted to Alertmanager (inf without one)."""
        return self.reposter.due_in()

    def repost_alerts(self) -> int:
        """Post every open incident to each Alertmanager again (:class:`utils.alertmanager.Reposter`)."""
        return self.reposter.repost()

    def next_wake_at(self, now: float) -> float:
        """The next instant a check could change something: interval, next deadline, next reminder."""
        candidates = [now + self.config.check_interval_seconds, self.deadline.first_after(now)]
        start_by = self.deadline.start_by_for(candidates[1])  # a late start opens there (jobs with start_by)
        if start_by is not None and start_by > now:
            candidates.append(start_by)
        if self._current_due is not None and self._current_due > now:
            candidates.append(self._current_due)  # stored with the batch: may differ from today's settings
        reminder = notifications.next_reminder_at(self._last_log, self.config.alert_repeat_seconds)
        if reminder is not None:
            candidates.append(reminder)
        return min(candidates)

    def watchdog_health(self) -> tuple[bool, str]:
        """Whether systemd's watchdog may be pinged: :meth:`health` (jobs: while any job's checks complete)."""
        return self.health()

    def health(self) -> tuple[bool, str]:
        """(True, "ok") when a check completed recently; else (False, why)."""
        return self.check_health.verdict()

    @property
    def last_error(self) -> str | None:
        """Why the last check failed; None when it completed (or none ran)."""
        return self.check_health.last_error

    def status(self) -> dict:
        """The status report (as ``get_batch_status``) plus the monitor's view, JSON-ready (ISO times)."""
        # One instant for the whole report: that of the last check, whose verdict is the page's headline.
        last = self._last_result if self.last_error is None else None
        now = self.clock() if last is None else last.now
        snapshot = self.tracker.snapshot()
        report = status_report.describe(snapshot, now, self.tracker.schedule())
        report["tracker"]["path"] = self.tracker.path
        nights = snapshot.batches_newest_first()[:CHART_NIGHTS]
        report["history"]["nights"] = [status_report.summarize_batch(b, self.deadline, now) for b in nights]
        result = self._last_result  # its verdict alerts: deadlines count from watch_since, early warnings too
        report["monitor"] = {
            **self.log_store.read_view(),
            "delivery": "; ".join(transport.describe() for transport in self.channels.values()),
            "healthy": self.health()[0],
            **({"ok": None, "reason": None} if result is None else {"ok": result.ok, "reason": result.summary}),
        }
        return report
