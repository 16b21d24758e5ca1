"""The tracker's command line: ``bin/batch_tracker`` / ``python -m utils.batch_tracker``.

Write commands (the nightly hooks) call :class:`utils.batch_tracker.BatchTracker`, then push the batch's metrics when
``BATCH_PUSHGATEWAY_URL`` is set (a failed push is a warning, never a failed hook) and, with ``BATCH_PING_URL``,
ping a dead-man's switch after ``start``, ``resume``, ``end`` and ``fail`` (:mod:`utils.dead_mans_switch`);
``status``, ``history`` and ``check`` are rendered by :mod:`utils.tracker_views`. :func:`main` alone turns a :class:`utils.errors.TrackerError` into
its own exit code (2 bad usage or value, 3 storage) and one line, ``batch_tracker: <label>: <message>``.

The hooks run on the nightly critical path: the grammar is parsed by hand (argparse's import alone costs a noticeable
share of the hook's time budget), and nothing heavy (logging, pytz, prometheus_client) is imported for a write command.
"""

from __future__ import annotations

import os
import sys

from utils.batch_tracker import MAX_OUTPUT_TAIL_BYTES, BatchTracker, shown
from utils.config import TrackerConfig
from utils.errors import EXIT_OK, EXIT_USAGE, TrackerError, UsageError

COMMANDS = ("start", "stage", "end", "fail", "resume", "cost", "skip", "pause", "status", "history", "check")

USAGE = """\
usage: python -m utils.batch_tracker [--job NAME] COMMAND [ARGS]   (or bin/batch_tracker)

commands:
  start [--stages a,b,c] [--id ID]   start a batch, print its id
  stage NAME PERCENT                 record a stage's completion (0-100)
  end                                mark the running batch completed
  fail [--stage S] [--reason R] [--output-file PATH]
                                     mark the running batch failed; PATH (- for stdin) holds the
                                     failed stage's output, whose last lines are kept
  resume                             put a failed batch back to running
  cost [--per-lead X] [--gpu-dollars Y]
  skip --date YYYY-MM-DD [--reason R]
                                     the night whose deadline falls on that local date is not run:
                                     no missing, late or late-start alert for it
  pause --until ISO-8601 [--reason R]
                                     no deadline counts from now until then (e.g. 2026-12-27T05:00:00-05:00)
  status [--json]                    show the current batch
  history [--limit N] [--json]       list past batches
  check                              exit 0 if all is well, 1 with the reason if not

--job NAME (any position): the job of BATCH_JOBS_FILE to record (default: BATCH_NAME); unknown: exit 2

exit codes: 0 ok, 1 check found a problem, 2 bad usage or value, 3 storage error
environment: BATCH_TRACKER_FILE, BATCH_COMPLETION_DEADLINE_HOUR, BATCH_COMPLETION_DEADLINE_MINUTE,
  BATCH_COMPLETION_TIMEZONE, BATCH_HISTORY_LIMIT, BATCH_EXPECTED_STAGES, BATCH_NAME, BATCH_PUSHGATEWAY_URL,
  BATCH_JOBS_FILE, BATCH_PING_URL
"""


def _take_options(args: list[str], allowed: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Split ``args`` into positionals and options; ``allowed`` maps option -> takes a value."""
    positionals: list[str] = []
    options: dict[str, str | bool] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            positionals.extend(args[index + 1 :])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, has_inline, inline = arg.partition("=")
            if name not in allowed:
                raise UsageError(f"unknown option {name!r} (allowed: {', '.join(sorted(allowed)) or 'none'})")
            if allowed[name]:
                if has_inline:
                    options[name] = inline
                elif index + 1 < len(args):
                    index += 1
                    options[name] = args[index]
                else:
                    raise UsageError(f"option {name} needs a value")
            else:
                options[name] = True
        else:
            positionals.append(arg)
        index += 1
    return positionals, options


def _expect_positionals(positionals: list[str], names: list[str], command: str) -> None:
    if len(positionals) != len(names):
        wanted = " ".join(n.upper() for n in names)
        raise UsageError(f"'{command}' takes {len(names)} argument(s) ({wanted or 'none'}), got {len(positionals)}")


# command -> (options it takes: name -> takes a value, positional argument names)
_WRITES: dict[str, tuple[dict[str, bool], list[str]]] = {
    "start": ({"--stages": True, "--id": True}, []),
    "stage": ({}, ["name", "percent"]),
    "end": ({}, []),
    "fail": ({"--stage": True, "--reason": True, "--output-file": True}, []),
    "resume": ({}, []),
    "cost": ({"--per-lead": True, "--gpu-dollars": True}, []),
    "skip": ({"--date": True, "--reason": True}, []),
    "pause": ({"--until": True, "--reason": True}, []),
}


def _take_job(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without its ``--job NAME`` / ``--job=NAME`` (before any ``--``), and that NAME."""
    rest: list[str] = []
    job: str | None = None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest.extend(argv[index:])
            break
        if arg == "--job" or arg.startswith("--job="):
            if job is not None:
                raise UsageError("option --job is given twice")
            if arg == "--job":
                if index + 1 >= len(argv):
                    raise UsageError("option --job needs a value")
                index += 1
                job = argv[index]
            else:
                job = arg.partition("=")[2]
        else:
            rest.append(arg)
        index += 1
    return rest, job


def _config(environ: dict, job: str | None, command: str, parses: list) -> TrackerConfig:
    """The tracker settings of the job ``command`` works on: with ``BATCH_JOBS_FILE`` or ``--job``, that
    job's (:func:`utils.jobs.select_job`; its time zone checked by the commands that use it; a fresh parse of
    the file appended to ``parses``); otherwise the environment's, as always."""
    if job is None and not str(environ.get("BATCH_JOBS_FILE", "")).strip():
        return TrackerConfig.from_env(environ)
    from utils.jobs import select_job

    check_zone = command in ("start", "status", "history", "check")
    return select_job(environ, job, check_zone=check_zone, parses=parses).tracker


def _run_command(argv: list[str], environ: dict, out) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        out.write(USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    argv, job = _take_job(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        out.write(USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    command, args = argv[0], argv[1:]
    parses: list = []
    config = _config(environ, job, command, parses)  # an unknown job is refused here, before anything is written
    tracker = BatchTracker(config)
    if command in ("status", "history", "check"):
        from utils import tracker_views

        return tracker_views.run(command, args, tracker, out, _take_options, _expect_positionals)
    if command not in _WRITES:
        raise UsageError(f"unknown command {shown(command)} (allowed: {', '.join(COMMANDS)})")
    allowed, names = _WRITES[command]
    positionals, options = _take_options(args, allowed)
    _expect_positionals(positionals, names, command)
    printed = _write(command, positionals, options, config, tracker)
    if parses:  # the jobs file was parsed afresh: keep the parse, the next hooks skip tomllib (~20 ms)
        from utils.jobs import keep_parses

        keep_parses(parses)
    if printed is not None:
        out.write(printed + "\n")
    if command not in ("skip", "pause"):  # no batch changed: nothing to push
        _push(config, tracker, command)
    if config.ping_url and command in ("start", "resume", "end", "fail"):
        from utils import dead_mans_switch  # a detached child pings; this hook does not wait for it

        detail = f" {printed}" if printed else f": {options.get('--reason', '')}" if command == "fail" else ""
        dead_mans_switch.spawn(config.ping_url, command, f"{config.batch_name} {command}{detail}".rstrip(": "))
    return EXIT_OK


def _write(command: str, positionals: list[str], options: dict, config: TrackerConfig, tracker: BatchTracker):
    """Apply one write command; return the line it prints (a batch id), if any."""
    if command == "start":
        stages_opt = options.get("--stages")
        stages = [s for s in str(stages_opt).split(",") if s] if stages_opt is not None else None
        config.deadline()  # fail the night's first hook on a bad zone, not the monitor hours later
        return tracker.start(stages, batch_id=options.get("--id"))
    if command == "stage":
        tracker.stage(positionals[0], positionals[1])
    elif command == "end":
        tracker.end()
    elif command == "fail":
        output = _read_output_tail(options.get("--output-file"))
        tracker.fail(options.get("--stage"), str(options.get("--reason", "")), output)
    elif command == "resume":
        return tracker.resume().id
    elif command == "cost":
        tracker.cost(options.get("--per-lead"), options.get("--gpu-dollars"))
    elif command == "skip":
        if "--date" not in options:
            raise UsageError("'skip' needs --date YYYY-MM-DD")
        skip = tracker.skip(str(options["--date"]), str(options.get("--reason", "")))
        return f"{config.batch_name}: {skip.date} skipped"
    elif command == "pause":
        if "--until" not in options:
            raise UsageError("'pause' needs --until ISO-8601 (e.g. 2026-12-27T05:00:00-05:00)")
        pause = tracker.pause(str(options["--until"]), str(options.get("--reason", "")))
        return f"{config.batch_name}: paused until {pause_text(pause.until)}"
    return None


def pause_text(instant: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(instant, _dt.UTC).isoformat(timespec="seconds")


def _read_output_tail(path: str | None) -> bytes | None:
    """The end of ``path`` (``-``: stdin), enough for :func:`clean_output_tail`.

    An unreadable file is a warning, not an error: the failure itself must still be recorded.
    """
    if path is None:
        return None
    limit = 8 * MAX_OUTPUT_TAIL_BYTES
    try:
        if path == "-":
            data = b""
            while chunk := sys.stdin.buffer.read(65536):
                data = (data + chunk)[-limit:]
            return data
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read()
    except OSError as exc:
        sys.stderr.write(
            f"batch_tracker: warning: --output-file {shown(path)} cannot be read ({exc.strerror}); "
            "recording the failure without the output\n"
        )
        return None


def _push(config: TrackerConfig, tracker: BatchTracker, event: str) -> None:
    """Push the batch's metrics to a Pushgateway when one is configured; never fails the batch."""
    if not config.pushgateway_url:
        return
    try:
        from utils import pushgateway

        pushgateway.push_batch_metrics(config, tracker.snapshot(), tracker.clock(), event)
    except Exception as exc:  # noqa: BLE001 - a monitoring side channel must never fail the batch
        sys.stderr.write(f"batch_tracker: warning: push to {config.pushgateway_url} failed: {exc}\n")


def main(argv: list[str] | None = None, environ: dict | None = None, out=None) -> int:
    """CLI entry point: map domain errors to exit codes at this single boundary."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return _run_command(args, os.environ if environ is None else environ, out or sys.stdout)
    except TrackerError as exc:
        sys.stderr.write(f"batch_tracker: {exc.label}: {exc}\n")
        return exc.exit_code


def run() -> None:
    """The process entry point (``bin/batch_tracker``, ``python -m utils.batch_tracker``, the ``batch-tracker``
    script): :func:`main`, then the process exits with its code, skipping the interpreter's teardown. That teardown
    would cost every hook about 4 ms (a tenth of its run) and has nothing left to do: the state is written, fsynced
    and closed, the lock released, a ping child detached. Output is flushed first."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away (a closed pipe): what was recorded stays recorded; the code says how
    os._exit(code)


if __name__ == "__main__":
    run()
