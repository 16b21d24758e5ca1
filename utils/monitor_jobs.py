"""One monitor for many jobs: a :class:`~utils.monitor.Monitor` per job of the jobs file (``BATCH_JOBS_FILE``).

Each job keeps what is its own: its tracker file, its alert state file beside it (so its incidents, exactly-once
bookkeeping and counters), its deadline (zone, days, start-by) and its recipients. The jobs share what a
process has one of: the outbox, the transport, the delivery worker, the HTTP server and the loop of
:mod:`utils.service`. Every job's Message-IDs and ``X-Batch-Incident`` carry its name (the monitor's ``scope``):
two jobs opening the same identity at one check (``tracker_unreadable:tracker``, a shared deadline's
``missing``) still send two e-mails.

:class:`JobsMonitor` offers what the service uses of a :class:`~utils.monitor.Monitor` (``check``, ``deliver``,
``next_wake_at``, ``health``, ``status``, ``monitors``, ``watched_paths``), so the loop is the same for one job or
many. One job's failing check never stops the others' (its error is in the result and in :meth:`health`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from utils.config import MonitorConfig
from utils.deadline import format_utc
from utils.errors import EXIT_OK, EXIT_PROBLEM, EXIT_STORAGE
from utils.jobs import WEEKDAYS, Job
from utils.monitor import Monitor, StepResult, make_transport
from utils.outbox import DeliveryReport, Outbox
from utils.state_store import StorageError

LOGGER = logging.getLogger(__name__)

JOB_PAGE_PREFIX = "/jobs/"


def job_config(config: MonitorConfig, job: Job) -> MonitorConfig:
    """``config`` for ``job``: its tracker settings (and so its own alert state file), its recipients if it names any."""
    return config.replace(tracker=job.tracker, email_to=tuple(job.recipients) or config.email_to)


def job_page_path(name: str) -> str:
    """The status page of job ``name``: ``/jobs/NAME`` (``/jobs/NAME/status.json`` for its JSON)."""
    return JOB_PAGE_PREFIX + name


@dataclasses.dataclass(frozen=True)
class JobsStepResult:
    """One check of every job: ``results`` by job name (in the jobs file's order) and ``errors``, the jobs
    whose check failed, with why."""

    now: float
    results: dict[str, StepResult]
    errors: dict[str, str]
    delivery: DeliveryReport | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and all(result.ok for result in self.results.values())

    @property
    def exit_code(self) -> int:
        """``--once`` exit status: 3 a job's check failed, 1 an incident is open, 0 all well."""
        return EXIT_STORAGE if self.errors else (EXIT_OK if self.ok else EXIT_PROBLEM)

    @property
    def notifications(self) -> tuple:
        return tuple(notice for result in self.results.values() for notice in result.notifications)

    @property
    def summary(self) -> str:
        """``JOB: why`` for each job with a problem (all of them when none has one)."""
        troubled = {name: r for name, r in self.results.items() if not r.ok}
        parts = [f"{name}: check failed: {error}" for name, error in self.errors.items()]
        parts += [f"{name}: {result.summary}" for name, result in (troubled or self.results).items()]
        return " | ".join(parts)

    def status_line(self) -> str:
        """One line for ``--once``: ``OK: job: ... | job: ...`` or ``PROBLEM: job: late: ...``."""
        return ("OK: " if self.ok else "PROBLEM: ") + self.summary


class JobsMonitor:
    """The monitors of ``jobs`` (names unique, one or more), sharing one outbox and ``transport`` (by default
    :func:`~utils.monitor.make_transport` of ``config``); ``config`` holds the monitor-wide settings."""

    def __init__(
        self,
        config: MonitorConfig,
        jobs: Sequence[Job],
        *,
        clock: Callable[[], float] = time.time,
        transport=None,
        early_warning: bool = True,
    ):
        names = [job.name for job in jobs]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"jobs {names!r}: need one or more, each named once")
        self.config = config
        self.clock = clock
        self.jobs = tuple(jobs)
        self.outbox = Outbox(config.outbox_dir, clock=clock)
        self.transport = transport if transport is not None else make_transport(config, clock)
        self.by_name: dict[str, Monitor] = {}
        shared: dict = {}
        for job in jobs:
            monitor = Monitor(
                job_config(config, job),
                clock=clock,
                transport=self.transport,
                early_warning=early_warning,
                outbox=self.outbox,
                scope=job.name,
                **shared,
            )
            self.by_name[job.name] = monitor
            shared = {"channels": monitor.channels}  # e-mail, Alertmanager, webhook: one set for all jobs
        self.channels = shared["channels"]
        self._delivered_once = False

    @property
    def monitors(self) -> tuple[Monitor, ...]:
        return tuple(self.by_name.values())

    @property
    def watched_paths(self) -> tuple[str, ...]:
        """Every job's tracker file: a change to any wakes the loop."""
        return tuple(monitor.tracker.path for monitor in self.monitors)

    @property
    def last_error(self) -> str | None:
        """Why the last check of some job failed (``job NAME: why; ...``); None when every job's completed."""
        errors = [f"job {name}: {m.last_error}" for name, m in self.by_name.items() if m.last_error is not None]
        return "; ".join(errors) or None

    def step(self, *, deliver: bool = True) -> JobsStepResult:
        """One check of every job; with ``deliver``, then one delivery pass over the shared outbox."""
        result = self.check()
        return dataclasses.replace(result, delivery=self.deliver()) if deliver else result

    def check(self) -> JobsStepResult:
        """Check every job; a job whose check fails is logged and reported in the result, never raised."""
        results, errors = {}, {}
        for name, monitor in self.by_name.items():
            try:
                results[name] = monitor.check()
            except StorageError as exc:
                LOGGER.error("check of job %s failed: %s", name, exc)
                errors[name] = monitor.last_error or str(exc)
            except Exception:
                LOGGER.exception("check of job %s failed", name)
                errors[name] = monitor.last_error or "unexpected error"
        return JobsStepResult(now=self.clock(), results=results, errors=errors)

    def deliver(self) -> DeliveryReport:
        """One delivery pass over the shared outbox (the first also tries messages backing off, as
        :meth:`Monitor.deliver`); failed attempts are counted in the log of the job each message belongs to."""
        first_pass, self._delivered_once = not self._delivered_once, True
        report = self.outbox.deliver_due(self.channels, retry_waiting=first_pass)
        if report.delivered or report.attempt_failures:
            summary = self.outbox.summary()
            for name, monitor in self.by_name.items():
                deferred = sum(1 for m in report.deferred if self._owner(m.incident) == name)
                failed = sum(1 for m in report.failed if self._owner(m.incident) == name)
                try:  # every job's state shows the shared outbox as of now
                    monitor._last_log = monitor.log_store.record_delivery(self.clock(), deferred, failed, summary)
                except StorageError as exc:  # that job's checks report it; the others' counts still go in
                    LOGGER.warning("cannot record the delivery pass in job %s's state: %s", name, exc)
        for monitor in self.monitors:  # each job re-posts its own open incidents to Alertmanager
            if monitor.repost_due_in() <= 0:
                monitor.repost_alerts()
        return report

    def repost_due_in(self) -> float:
        """Seconds until some job's open incidents are due to be re-posted to Alertmanager (inf without one)."""
        return min((monitor.repost_due_in() for monitor in self.monitors), default=float("inf"))

    def _owner(self, incident: str | None) -> str:
        """The job a queued message belongs to: its ``X-Batch-Incident`` is ``JOB/kind:key``; else the first job."""
        name = (incident or "").partition("/")[0]
        return name if name in self.by_name else self.jobs[0].name

    def next_wake_at(self, now: float) -> float:
        """The earliest instant a check of any job could change something."""
        return min(monitor.next_wake_at(now) for monitor in self.monitors)

    def health(self) -> tuple[bool, str]:
        """(True, "ok") when every job's check completed recently; else (False, "job NAME: why; ...")."""
        problems = []
        for name, monitor in self.by_name.items():
            healthy, reason = monitor.health()
            if not healthy:
                problems.append(f"job {name}: {reason}")
        return (False, "; ".join(problems)) if problems else (True, "ok")

    def watchdog_health(self) -> tuple[bool, str]:
        """For systemd's watchdog: (True, "ok") while any job's checks complete. A restart heals what stops
        every check (a hung loop, no file descriptors left), not one job's unwritable directory, and would
        only delay the other jobs' alerts; :meth:`health` (``/healthz``) still names that job."""
        if any(monitor.health()[0] for monitor in self.monitors):
            return True, "ok"
        return self.health()

    def job_status(self, name: str) -> dict | None:
        """The status report of job ``name`` (as :meth:`Monitor.status`, plus ``job``), None for no such job."""
        monitor = self.by_name.get(name)
        if monitor is None:
            return None
        return {**monitor.status(), "job": job_summary_fields(self._job(name))}

    def _job(self, name: str) -> Job:
        return next(job for job in self.jobs if job.name == name)

    def status(self) -> dict:
        """Every job in a line (``jobs``: state, deadline, progress, verdict, its page) and the shared delivery,
        JSON-ready: what ``/`` and ``/status.json`` show when a monitor watches a jobs file."""
        healthy, why = self.health()
        lines = [_job_line(job, self.by_name[job.name].status()) for job in self.jobs]
        troubled = [line for line in lines if line["ok"] is not True]
        reason = "; ".join(f"{line['name']}: {line['reason']}" for line in troubled) or f"all {len(lines)} jobs ok"
        first = self.monitors[0].log_store.read_view()
        return {
            "now": format_utc(self.clock()),
            "ok": not troubled and healthy,
            "reason": reason,
            "jobs": lines,
            "monitor": {
                "healthy": healthy,
                "health": why,
                "delivery": self.transport.describe(),
                "outbox": first["outbox"],
            },
        }


def job_summary_fields(job: Job) -> dict:
    """A job's schedule as shown on the pages: deadline ``HH:MM``, zone, days (names), start-by, recipients."""
    tracker = job.tracker
    start_by = tracker.start_by
    return {
        "name": job.name,
        "deadline": f"{tracker.deadline_hour:02d}:{tracker.deadline_minute:02d}",
        "timezone": tracker.timezone,
        "days": [WEEKDAYS[day] for day in sorted(tracker.days)],
        "start_by": None if start_by is None else f"{start_by[0]:02d}:{start_by[1]:02d}",
        "recipients": list(job.recipients),
    }


def _job_line(job: Job, status: dict) -> dict:
    """One job's line of the overview, from its status report."""
    monitor = status.get("monitor") or {}
    # The monitor's verdict (the one that alerts) once it has checked; the tracker's before that.
    ok = monitor.get("ok") if isinstance(monitor.get("ok"), bool) else status.get("ok")
    reason = monitor.get("reason") if isinstance(monitor.get("ok"), bool) else status.get("reason")
    return {
        **job_summary_fields(job),
        "url": job_page_path(job.name),
        "ok": ok,
        "reason": reason,
        "batch_id": status.get("id"),
        "state": status.get("state") or "none",
        "completion_percentage": status.get("completion_percentage"),
        "active_stage": status.get("active_stage"),
        "batch_deadline": status.get("deadline"),
        "next_deadline": status.get("next_deadline"),
        "open_incidents": [i.get("kind") for i in monitor.get("open_incidents") or [] if isinstance(i, dict)],
        "last_check_at": monitor.get("last_check_at"),
        "healthy": monitor.get("healthy"),
    }
