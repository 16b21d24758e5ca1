"""The monitor as a service (loop, signals, watchdog, file wake-ups, HTTP) and its command line, :func:`main`.

Delivery runs in a background thread so a slow SMTP server delays neither checks nor shutdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time

from utils.config import ConfigError, MonitorConfig, help_text
from utils.errors import EXIT_OK, EXIT_STORAGE, EXIT_USAGE
from utils.monitor import Monitor, StepResult
from utils.outbox import Outbox
from utils.outbox_admin import UnknownMessageError, listing_rows, retry
from utils.sdnotify import SystemdNotifier
from utils.state_store import StorageError

LOGGER = logging.getLogger(__name__)

PROG = "batch_completion_monitor"
# The one place where a domain error becomes an exit code and a one-line message.
EXIT_CODES: tuple[tuple[type[Exception], int, str], ...] = (
    (ConfigError, EXIT_USAGE, "configuration error"),
    (UnknownMessageError, EXIT_USAGE, "outbox retry"),
    (StorageError, EXIT_STORAGE, "storage error"),
)
# How often the waiting loop stats the tracker file: ten cheap syscalls a second put a failure in the outbox
# within about a tenth of a second of the hook (inotify would save the stats but not the check that follows).
POLL_SECONDS = 0.1
WORKER_IDLE_SECONDS = 60.0  # the delivery thread also looks for messages other processes queued
# journald reads "<N>" prefixes on stderr as the syslog priority of the line.
_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class Waker:
    """Sleep that a signal handler or another thread can cut short. A self-pipe, not :class:`threading.Event`:
    ``Event.set`` in a signal handler deadlocks if the signal lands while the main thread holds the event's lock."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.is_set = False

    def set(self) -> None:
        self.is_set = True
        with contextlib.suppress(OSError):  # the pipe is full (already woken) or closed (shutting down)
            os.write(self._write_fd, b"!")

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when :meth:`set` was called."""
        if self.is_set:
            return True
        readable, _, _ = select.select([self._read_fd], [], [], max(0.0, timeout))
        with contextlib.suppress(OSError):
            while readable and os.read(self._read_fd, 512):
                pass
        return self.is_set

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


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
        previous, self._signature = self._signature, self._stat()
        return previous != self._signature


class DeliveryWorker(threading.Thread):
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
            wait = WORKER_IDLE_SECONDS if next_at is None else max(1.0, next_at - self.monitor.clock())
            wait = min(wait, max(1.0, self.monitor.repost_due_in()))  # open alerts re-posted to Alertmanager
            self._nudge.wait(min(WORKER_IDLE_SECONDS, wait))


class Service:
    """Steps ``monitor``, then waits for its next wake-up, a tracker file change or a stop request."""

    def __init__(self, monitor: Monitor, notifier: SystemdNotifier | None = None):
        self.monitor = monitor
        self.notifier = notifier if notifier is not None else SystemdNotifier({})
        self.stop_signal: int | None = None
        self._stop_requested = False
        self._waker: Waker | None = None
        self._worker: DeliveryWorker | None = None
        self._last_ping = 0.0

    def request_stop(self, signum: int | None = None) -> None:
        """Ask :meth:`run` to return; safe from a signal handler and from any thread."""
        if signum is not None:
            self.stop_signal = signum
        self._stop_requested = True
        if self._waker is not None:
            self._waker.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop :meth:`run` (call from the main thread); the handler logs nothing (locks)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _frame: self.request_stop(number))

    def run(self) -> int:
        """Step, wait until the next relevant instant, repeat; return 0 after a stop request."""
        monitor, config = self.monitor, self.monitor.config
        self._waker = Waker()
        if self._stop_requested:
            self._waker.set()
        watchers = [FileWatcher(path) for path in monitor.watched_paths]  # every job's tracker file
        worker = self._worker = DeliveryWorker(monitor)
        http = start_http(monitor)
        worker.start()
        LOGGER.info(
            "monitoring %s (deadline %02d:%02d %s, check every %d s); alerts to %s via %s",
            ", ".join(monitor.watched_paths),
            config.tracker.deadline_hour,
            config.tracker.deadline_minute,
            config.tracker.timezone,
            config.check_interval_seconds,
            ", ".join(config.email_to) if config.email_enabled else "(e-mail off)",
            "; ".join(transport.describe() for transport in monitor.channels.values()),
        )
        for job in monitor.monitors if len(monitor.monitors) > 1 else ():  # a jobs file: each job's own settings
            tracker = job.config.tracker
            LOGGER.info(
                "job %s: %s, deadline %02d:%02d %s; alerts to %s",
                tracker.batch_name,
                job.tracker.path,
                tracker.deadline_hour,
                tracker.deadline_minute,
                tracker.timezone,
                ", ".join(job.config.email_to),
            )
        try:
            self.step()
            self.notifier.ready(self._status_text())
            while not self._stop_requested:
                why = self.wait_until(monitor.next_wake_at(monitor.clock()), watchers)
                if why == "stop":
                    break
                LOGGER.debug("woke up: %s", why)
                self.step()
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

    def step(self) -> None:
        """One check; a failing one is logged (and stops the watchdog pings), never raised."""
        try:
            result = self.monitor.check()
        except StorageError as exc:
            LOGGER.error("check failed: %s", exc)
        except Exception:
            LOGGER.exception("check failed")
        else:
            if result.notifications and self._worker is not None:
                self._worker.nudge()
            self.notifier.status(self._status_text(result))
            self.ping_watchdog(force=True)

    def wait_until(self, wake_at: float, watchers: list[FileWatcher]) -> str:
        """Wait until ``wake_at`` (by the monitor's clock), a stop request or a change to any tracker file."""
        waker = self._waker
        if waker is None:
            return "stop"
        # A monotonic bound as well: a wall clock stepped backwards must not stretch the wait.
        latest = time.monotonic() + self.monitor.config.check_interval_seconds
        while not self._stop_requested:
            remaining = min(wake_at - self.monitor.clock(), latest - time.monotonic())
            if remaining <= 0:
                return "due"
            if waker.wait(min(remaining, POLL_SECONDS)):
                return "stop"
            self.ping_watchdog()
            if [watcher for watcher in watchers if watcher.changed()]:  # every one looks: no stale signature
                return "tracker file changed"
        return "stop"

    def ping_watchdog(self, force: bool = False) -> None:
        """WATCHDOG=1, but only while checks complete: a monitor whose every check fails (too many
        open files, an unreadable state directory) stops pinging, and systemd restarts it. With many jobs,
        while any job's checks complete (one job's unreadable directory is not healed by a restart)."""
        if not self.monitor.watchdog_health()[0]:
            return
        interval = self.notifier.watchdog_interval_seconds
        now = time.monotonic()
        if force or interval is None or now - self._last_ping >= interval / 2:
            self.notifier.watchdog()
            self._last_ping = now

    def _status_text(self, result: StepResult | None = None) -> str:
        if result is None:
            error = self.monitor.last_error
            return "started" if error is None else f"check failing: {error}"
        return result.status_line()[:200]


def start_http(monitor: Monitor):
    """Serve /metrics, /healthz, /status.json and / when METRICS_PORT is set; None otherwise or on failure."""
    config = monitor.config
    addr, port = config.metrics_addr, config.metrics_port
    if port == 0:
        return None
    try:
        from prometheus_client import CollectorRegistry

        from utils import http_server, metrics

        registry = CollectorRegistry()
        single = isinstance(monitor, Monitor)
        if single:
            metrics.register_batch_metrics(
                registry, tracker=monitor.tracker, monitor_state_path=config.monitor_state_file, clock=monitor.clock
            )
        else:  # one monitor, many jobs: each job's series labelled batch=NAME, a page per job, / lists them all
            pairs = [(job.tracker, job.config.monitor_state_file) for job in monitor.monitors]
            metrics.register_jobs_metrics(registry, jobs=pairs, clock=monitor.clock)
        server = http_server.serve(
            addr,
            port,
            registry=registry,
            status_provider=monitor.status,
            health_provider=monitor.health,
            job_status_provider=monitor.job_status,
            overview_provider=None if single else monitor.status,
        )
    except Exception as exc:  # noqa: BLE001 - alerting matters more than metrics: keep going, loudly
        LOGGER.error("cannot serve metrics on %s:%s (%s); alerting continues without the HTTP server", addr, port, exc)
        return None
    LOGGER.info("serving /metrics, /healthz, /status.json and / on %s:%s", server.address, server.port)
    return server


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>" + super().format(record)


def configure_logging(level: str, environ) -> None:
    """Log to stderr at ``level``: journald-friendly under systemd, timestamped elsewhere."""
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] [--once]\n       {PROG} outbox list [--json]\n       {PROG} outbox retry ID... | --all",
        description=(
            "Watch the nightly batch tracker and e-mail on-call once per incident (late, failed, missing, "
            "tracker unreadable, at risk), with a recovery e-mail when it clears."
        ),
        epilog=help_text()
        + "\n\nexit codes: 0 ok, 1 an incident is open (--once), 2 bad configuration, 3 storage error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one check, deliver what it queued, print one status line and exit (0 ok, 1 problem)",
    )
    commands = parser.add_subparsers(dest="command", metavar="outbox")
    outbox = commands.add_parser(
        "outbox", help="list queued and failed alert e-mails, or re-queue failed ones (see: outbox --help)"
    )
    actions = outbox.add_subparsers(dest="action", metavar="{list,retry}", required=True)
    listing = actions.add_parser("list", help="pending and failed messages: subject, incident, attempts, error, age")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    again = actions.add_parser(
        "retry", help="move failed messages back to the queue (attempts reset, next attempt now)"
    )
    again.add_argument("ids", nargs="*", metavar="ID", help="id from 'outbox list' (or a unique prefix, 6+ chars)")
    again.add_argument("--all", action="store_true", help="re-queue every failed message")
    return parser


def outbox_command(args: argparse.Namespace, config: MonitorConfig, out) -> int:
    """``outbox list`` / ``outbox retry``: read or re-queue the outbox; never sends anything itself."""
    outbox = Outbox(config.outbox_dir)
    if args.action == "list":
        rows = listing_rows(outbox, time.time())
        if args.json:
            out.write(json.dumps(rows, indent=2) + "\n")
            return EXIT_OK
        pending = sum(1 for row in rows if row["state"] == "pending")
        out.write(f"outbox {config.outbox_dir}: {pending} pending, {len(rows) - pending} failed\n")
        for row in rows:
            out.write(
                f"{row['state']:<8} {row['id']}  {row['type']:<8} attempts {row['attempts']:<3} "
                f"age {row['age']:<12} {row['incident'] or '-'}  {row['subject']}"
                + ("\n" if row["channel"] == "email" else f"  (via {row['channel']})\n")
            )
            if row["last_error"]:
                out.write(f"{'':<9}last error: {row['last_error']}\n")
        return EXIT_OK
    requeued = retry(outbox, None if args.all else args.ids)
    for message in requeued:
        out.write(f"re-queued {message.id}  {message.subject}\n")
    if requeued:
        out.write("the running monitor delivers them within a minute (or run --once)\n")
    else:
        out.write("no failed messages to re-queue\n")
    return EXIT_OK


def build_monitor(config: MonitorConfig, env):
    """A :class:`Monitor` of the one job; with ``BATCH_JOBS_FILE``, a :class:`utils.monitor_jobs.JobsMonitor` of
    every job in it (validated here: a bad file is a ConfigError, exit 2)."""
    from utils.jobs import jobs_file, load_jobs

    if jobs_file(env) is None:
        return Monitor(config)
    from utils.monitor_jobs import JobsMonitor

    return JobsMonitor(config, load_jobs(env))


def main(argv: list[str] | None = None, environ=None) -> int:
    """Entry point: domain errors become exit codes here, and only here."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "outbox":
        if args.once:
            parser.error("--once cannot be combined with 'outbox'")
        if args.action == "retry" and bool(args.ids) == bool(args.all):
            parser.error("outbox retry: give one or more IDs or --all (not both)")
    try:
        config = MonitorConfig.from_env(env)
        if args.command == "outbox":
            configure_logging("WARNING", env)  # the command's own output says what it did
            return outbox_command(args, config, sys.stdout)
        configure_logging(config.log_level, env)
        monitor = build_monitor(config, env)
        if args.once:
            result = monitor.step()
            sys.stdout.write(result.status_line() + "\n")
            return result.exit_code
        service = Service(monitor, SystemdNotifier(env))
        service.install_signal_handlers()
        return service.run()
    except tuple(error for error, _code, _label in EXIT_CODES) as exc:
        code, label = next((code, label) for error, code, label in EXIT_CODES if isinstance(exc, error))
        sys.stderr.write(f"{PROG}: {label}: {exc}\n")
        return code


if __name__ == "__main__":
    sys.exit(main())
