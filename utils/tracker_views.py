"""The read-only CLI commands ``status``, ``history`` and ``check`` (apart, so the write hooks never pay for them).

Times show in the deadline's zone (``2026-12-01 05:00 EST``); every field read from the state passes
:func:`terminal_safe`, so a hand-edited tracker file cannot drive the terminal. ``--json`` keeps UTC ISO-8601.
"""

from __future__ import annotations

import datetime as _dt
import json

import pytz

from utils import incidents, status_report
from utils.batch_tracker import get_batch_status
from utils.config import is_plain_whole_number
from utils.deadline import format_duration
from utils.errors import EXIT_OK, EXIT_PROBLEM, UsageError
from utils.text_safety import terminal_safe

BAR_WIDTH = 24
ON_TIME_MARKS = {True: ("on time", "green"), False: ("LATE", "red"), None: ("pending", "yellow")}
_COLOURS = {"green": "\033[32m", "yellow": "\033[33m", "red": "\033[31m", "dim": "\033[2m", "reset": "\033[0m"}


def run(command, args, tracker, out, take_options, expect_positionals) -> int:
    """Run ``command``; return the exit code (``check``: 1 when a problem is open)."""
    if command == "check":
        expect_positionals(take_options(args, {})[0], [], command)
        ok, reason = incidents.check(tracker.snapshot(), tracker.clock(), tracker.schedule())
        out.write(("OK: " if ok else "PROBLEM: ") + terminal_safe(reason) + "\n")
        return EXIT_OK if ok else EXIT_PROBLEM
    if command == "status":
        positionals, options = take_options(args, {"--json": False, "--color": False, "--no-color": False})
        expect_positionals(positionals, [], command)
        status = get_batch_status(path=tracker.path, clock=tracker.clock, config=tracker.config)
        if options.get("--json"):
            out.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        else:
            out.write(render_status(status, _want_colour(out, options)))
        return EXIT_OK
    positionals, options = take_options(args, {"--json": False, "--limit": True})
    expect_positionals(positionals, [], command)
    limit = _positive_int(options.get("--limit", "20"), "--limit")
    deadline, now = tracker.schedule(), tracker.clock()  # the schedule: skipped and paused nights show too
    newest = tracker.files.newest_batches(limit)
    batches = status_report.history_with_excused(newest, deadline, now)
    if options.get("--json"):
        out.write(json.dumps(batches, indent=2, sort_keys=True) + "\n")
    else:
        out.write(render_history(batches, _want_colour(out, options), deadline.zone.zone))
    return EXIT_OK


def _positive_int(raw, name: str) -> int:
    if not is_plain_whole_number(str(raw)):
        raise UsageError(f"{name} {raw!r} is not a whole number in ASCII digits (allowed: 1 or more)")
    value = int(str(raw))
    if value < 1:
        raise UsageError(f"{name} {value} is out of range (allowed: 1 or more)")
    return value


def _want_colour(out, options) -> bool:
    if options.get("--no-color") or options.get("--color"):
        return not options.get("--no-color")  # --no-color wins
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def local_time(iso: str | None, zone_name: str) -> str:
    """An ISO-8601 instant from the status report as ``2026-12-01 05:00 EST`` in ``zone_name``."""
    if not iso:
        return "-"
    zone = pytz.timezone(zone_name)
    instant = _dt.datetime.fromisoformat(iso)
    if instant.tzinfo is None:  # stored times carry an offset; be safe with a hand-edited one
        instant = pytz.utc.localize(instant)
    return zone.normalize(instant.astimezone(zone)).strftime("%Y-%m-%d %H:%M %Z")


def _paint(text: str, colour: str, enabled: bool) -> str:
    return f"{_COLOURS[colour]}{text}{_COLOURS['reset']}" if enabled else text


def progress_bar(percentage: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(100.0, percentage)) / 100 * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def render_status(status: dict, colour: bool = False) -> str:
    """The compact terminal view of :func:`utils.batch_tracker.get_batch_status`."""
    zone = (status.get("deadline") or status["next_deadline"])["timezone"]
    safe = terminal_safe
    headline = "OK" if status["ok"] else "PROBLEM"
    lines = [_paint(headline, "green" if status["ok"] else "red", colour) + ": " + safe(status["reason"])]
    if not status["tracker"]["readable"]:
        lines.append(_paint(f"tracker unreadable: {safe(status['tracker']['error'])}", "red", colour))
    for event in status["tracker"]["recovered_from_corruption"][-1:]:
        moved_to, at = safe(event.get("moved_to")), local_time(event.get("at"), zone)
        lines.append(_paint(f"note: a corrupt tracker file was moved aside to {moved_to} at {at}", "yellow", colour))
    if status["id"] is None:
        lines.append(f"next deadline: {local_time(status['next_deadline']['utc'], zone)}")
    else:
        deadline = status["deadline"]
        lines.append(
            f"batch {safe(status['id'])}  state {safe(status['state'])}  "
            f"{status['completion_percentage']:.0f}% complete"
        )
        elapsed = format_duration(status["elapsed_seconds"])
        lines.append(f"started {local_time(status['started_at'], zone)}  elapsed {elapsed}")
        left = deadline["seconds_left"]  # from the report's one "now", like elapsed
        when = f"in {format_duration(left)}" if left >= 0 else f"{format_duration(left)} ago"
        excused_note = " (a skipped or paused night: no alert)" if deadline.get("excused") else ""
        lines.append(f"deadline {local_time(deadline['utc'], zone)}, {when}{excused_note}")
        if projected := (status.get("projection") or {}).get("projected_completion_utc"):
            lines.append(f"projected finish {local_time(projected, zone)}")
        if failure := status["failure"]:
            text = f"failed at stage {safe(failure['stage'] or '?')}: {safe(failure['reason'])}"
            lines.append(_paint(text, "red", colour))
        names = {stage["name"]: safe(stage["name"]) for stage in status["stages"]}
        width = max([len(name) for name in names.values()] + [5])
        for stage in status["stages"]:
            marker = "*" if stage["name"] == status["active_stage"] else " "
            bar = progress_bar(stage["percentage"])
            tint = "green" if stage["percentage"] >= 100 else ("yellow" if marker == "*" else "dim")
            updated = local_time(stage["updated_at"], zone) if stage["updated_at"] else "not started"
            lines.append(
                f"{marker} {names[stage['name']]:<{width}} {_paint(bar, tint, colour)} "
                f"{stage['percentage']:5.1f}%  {updated}"
            )
    excused = status.get("excused") or {}
    for night in [night for night in excused.get("nights", []) if night["kind"] == "skipped"]:
        reason = f": {safe(night['reason'])}" if night["reason"] else ""
        lines.append(f"skipped {local_time(night['deadline_utc'], zone)}{reason} (no alert)")
    for pause in excused.get("pauses", []):
        reason = f": {safe(pause['reason'])}" if pause["reason"] else ""
        span = f"{local_time(pause['from'], zone)} until {local_time(pause['until'], zone)}"
        lines.append(f"{'paused' if pause['active'] else 'pause'} {span}{reason} (no alert)")
    if recent := status["history"]["recent"]:
        lines.append("last batches:")
        lines.extend(_history_lines(recent, colour, zone))
    return "\n".join(lines) + "\n"


def _history_lines(batches: list[dict], colour: bool, zone: str) -> list[str]:
    lines = []
    for batch in batches:
        if batch["id"] is None:  # a night deliberately not run (skip / pause)
            when = local_time(batch["deadline_utc"], zone)
            why = terminal_safe(batch["reason"])
            lines.append(f"  {'-':<28} {terminal_safe(batch['state']):<10} {when:<22} {'-':>12}  {why}")
            continue
        duration = format_duration(batch["duration_seconds"]) if batch["duration_seconds"] is not None else "-"
        started = local_time(batch["started_at"], zone)
        on_time = _paint(*ON_TIME_MARKS.get(batch["on_time"], ON_TIME_MARKS[None]), colour)
        lines.append(
            f"  {terminal_safe(batch['id']):<28} {terminal_safe(batch['state']):<10} {started:<22} {duration:>12}  "
            f"{on_time}"
        )
    return lines


def render_history(batches: list[dict], colour: bool = False, zone: str = "UTC") -> str:
    """The ``history`` table; start times in ``zone`` (the deadline's) with its abbreviation."""
    if not batches:
        return "no batches recorded\n"
    header = f"  {'id':<28} {'state':<10} {'started':<22} {'duration':>12}  on time"
    return "\n".join([header, *_history_lines(batches, colour, zone)]) + "\n"
