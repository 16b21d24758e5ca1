#!/usr/bin/env python3
"""Watch the nightly batch and e-mail on-call when it is late, failed, missing or unreadable.

Runs until SIGTERM/SIGINT (as a systemd service, Type=notify with a watchdog), or
with ``--once`` runs one check, delivers what it queued, prints one status line and
exits. Exit codes: 0 all well (or a clean stop), 1 an incident is open (``--once``),
2 bad configuration, 3 the state or outbox cannot be written.
Works from any working directory: paths default to the project root.
"""

from __future__ import annotations

import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)

import argparse  # noqa: E402
import logging  # noqa: E402

from utils.batch_tracker import ConfigError  # noqa: E402
from utils.monitor_config import MonitorConfig, help_text  # noqa: E402
from utils.state_store import StorageError  # noqa: E402

EXIT_OK, EXIT_PROBLEM, EXIT_CONFIG, EXIT_STORAGE = 0, 1, 2, 3
PROG = "batch_completion_monitor"

# journald reads "<N>" prefixes on stderr as the syslog priority of the line.
_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


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
    return parser


def main(argv: list[str] | None = None, environ=None) -> int:
    """Entry point: domain errors become exit codes here, and only here."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    try:
        config = MonitorConfig.from_env(env)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: configuration error: {exc}\n")
        return EXIT_CONFIG
    configure_logging(config.log_level, env)

    from utils.monitor import Monitor
    from utils.sdnotify import SystemdNotifier

    try:
        if args.once:
            monitor = Monitor(config)
            result = monitor.step()
            sys.stdout.write(result.status_line() + "\n")
            return result.exit_code
        monitor = Monitor(config, notifier=SystemdNotifier(env))
        monitor.install_signal_handlers()
        return monitor.run()
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: configuration error: {exc}\n")
        return EXIT_CONFIG
    except StorageError as exc:
        sys.stderr.write(f"{PROG}: storage error: {exc}\n")
        return EXIT_STORAGE


def _use_project_venv() -> None:
    """Re-run under the project's .venv when started by another interpreter (e.g. a bare ./bin/... call)."""
    venv = os.path.join(PROJECT_ROOT, ".venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv) or not os.access(python, os.X_OK):
        return
    if os.environ.get("BATCH_MONITOR_REEXECUTED"):
        return  # never loop, whatever the venv looks like
    os.environ["BATCH_MONITOR_REEXECUTED"] = "1"
    # A fixed interpreter path and this script's own arguments: nothing a shell could interpret.
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])  # noqa: S606  # nosec B606


if __name__ == "__main__":
    _use_project_venv()
    sys.exit(main())
