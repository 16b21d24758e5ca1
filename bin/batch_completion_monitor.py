#!/usr/bin/env python3
"""Watch the nightly batch and e-mail on-call when it is late, failed, missing or unreadable.

Runs until SIGTERM/SIGINT (as a systemd service, Type=notify with a watchdog), or
with ``--once`` runs one check, delivers what it queued, prints one status line and
exits. ``outbox list`` shows the queued and failed alert e-mails; ``outbox retry ID...``
(or ``--all``) puts failed ones back in the queue. Exit codes: 0 all well (or a clean
stop), 1 an incident is open (``--once``), 2 bad configuration or usage (an unknown id),
3 the state or outbox cannot be written.
Works from any working directory: paths default to the project root.
"""

from __future__ import annotations

import os
import sys

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

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
    retry = actions.add_parser(
        "retry", help="move failed messages back to the queue (attempts reset, next attempt now)"
    )
    retry.add_argument("ids", nargs="*", metavar="ID", help="id from 'outbox list' (or a unique prefix, 6+ chars)")
    retry.add_argument("--all", action="store_true", help="re-queue every failed message")
    return parser


def _outbox_rows(outbox, now: float) -> list[dict]:
    from utils.deadline import format_duration

    rows = []
    for message in [*outbox.pending(), *sorted(outbox.failed(), key=lambda m: (m.created_at, m.id))]:
        rows.append(
            {
                "state": message.state,
                "id": message.id,
                "type": message.type,
                "incident": message.incident,
                "subject": message.subject,
                "attempts": message.attempts,
                "last_error": message.last_error,
                "created_at": message.created_at,
                "age": format_duration(now - message.created_at),
                "next_attempt_at": message.next_attempt_at if message.state == "pending" else None,
            }
        )
    return rows


def run_outbox_command(args: argparse.Namespace, config) -> int:
    """``outbox list`` / ``outbox retry``: read or re-queue the outbox; never sends anything itself."""
    from utils.outbox import Outbox, UnknownMessageError

    outbox = Outbox(config.outbox_dir)
    if args.action == "list":
        rows = _outbox_rows(outbox, time.time())
        if args.json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return EXIT_OK
        pending = sum(1 for row in rows if row["state"] == "pending")
        sys.stdout.write(f"outbox {config.outbox_dir}: {pending} pending, {len(rows) - pending} failed\n")
        for row in rows:
            sys.stdout.write(
                f"{row['state']:<8} {row['id']}  {row['type']:<8} attempts {row['attempts']:<3} "
                f"age {row['age']:<12} {row['incident'] or '-'}  {row['subject']}\n"
            )
            if row["last_error"]:
                sys.stdout.write(f"{'':<9}last error: {row['last_error']}\n")
        return EXIT_OK
    try:
        requeued = outbox.retry(None if args.all else args.ids)
    except UnknownMessageError as exc:
        sys.stderr.write(f"{PROG}: outbox retry: {exc}\n")
        return EXIT_CONFIG
    for message in requeued:
        sys.stdout.write(f"re-queued {message.id}  {message.subject}\n")
    if requeued:
        sys.stdout.write("the running monitor delivers them within a minute (or run --once)\n")
    else:
        sys.stdout.write("no failed messages to re-queue\n")
    return EXIT_OK


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
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: configuration error: {exc}\n")
        return EXIT_CONFIG
    if args.command == "outbox":
        configure_logging("WARNING", env)  # the command's own output says what it did
        try:
            return run_outbox_command(args, config)
        except StorageError as exc:
            sys.stderr.write(f"{PROG}: storage error: {exc}\n")
            return EXIT_STORAGE
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
