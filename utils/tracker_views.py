"""The read-only CLI commands: ``status``, ``history`` and ``check``.

Kept apart from :mod:`utils.batch_tracker` so the write hooks never pay for
rendering (or for pytz, which these commands need for local times).
"""

from __future__ import annotations

import json

from utils import batch_health
from utils.deadline import format_utc

BAR_WIDTH = 24
_COLOURS = {"green": "\033[32m", "yellow": "\033[33m", "red": "\033[31m", "dim": "\033[2m", "reset": "\033[0m"}


def run(command, args, tracker, out, take_options, expect_positionals) -> int:
    """Run ``command``; return the exit code (``check``: 1 when a problem is open)."""
    if command == "check":
        expect_positionals(take_options(args, {})[0], [], command)
        deadline = tracker.config.deadline()
        ok, reason = batch_health.check(tracker.snapshot(), tracker.clock(), deadline)
        out.write(("OK: " if ok else "PROBLEM: ") + reason + "\n")
        return 0 if ok else 1
    if command == "status":
        positionals, options = take_options(args, {"--json": False, "--color": False, "--no-color": False})
        expect_positionals(positionals, [], command)
        status = _status(tracker)
        if options.get("--json"):
            out.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        else:
            colour = _want_colour(out, options)
            out.write(render_status(status, colour))
        return 0
    positionals, options = take_options(args, {"--json": False, "--limit": True})
    expect_positionals(positionals, [], command)
    limit = _positive_int(options.get("--limit", "20"), "--limit")
    snapshot = tracker.snapshot()
    deadline = tracker.config.deadline()
    now = tracker.clock()
    batches = [batch_health.summarize_batch(b, deadline, now) for b in snapshot.batches_newest_first()[:limit]]
    if options.get("--json"):
        out.write(json.dumps(batches, indent=2, sort_keys=True) + "\n")
    else:
        out.write(render_history(batches, _want_colour(out, options)))
    return 0


def _status(tracker) -> dict:
    from utils.batch_tracker import get_batch_status

    return get_batch_status(path=tracker.path, clock=tracker.clock, config=tracker.config)


def _positive_int(raw, name: str) -> int:
    from utils.batch_tracker import UsageError

    try:
        value = int(str(raw))
    except ValueError:
        raise UsageError(f"{name} {raw!r} is not a whole number (allowed: 1 or more)") from None
    if value < 1:
        raise UsageError(f"{name} {value} is out of range (allowed: 1 or more)")
    return value


def _want_colour(out, options) -> bool:
    if options.get("--no-color"):
        return False
    if options.get("--color"):
        return True
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def _paint(text: str, colour: str, enabled: bool) -> str:
    return f"{_COLOURS[colour]}{text}{_COLOURS['reset']}" if enabled else text


def progress_bar(percentage: float, width: int = BAR_WIDTH) -> str:
    filled = round(max(0.0, min(100.0, percentage)) / 100 * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _on_time_mark(on_time, colour: bool) -> str:
    if on_time is True:
        return _paint("on time", "green", colour)
    if on_time is False:
        return _paint("LATE", "red", colour)
    return _paint("pending", "yellow", colour)


def render_status(status: dict, colour: bool = False) -> str:
    """The compact terminal view of :func:`utils.batch_tracker.get_batch_status`."""
    lines = []
    headline = "OK" if status["ok"] else "PROBLEM"
    lines.append(_paint(headline, "green" if status["ok"] else "red", colour) + ": " + status["reason"])
    if not status["tracker"]["readable"]:
        lines.append(_paint(f"tracker unreadable: {status['tracker']['error']}", "red", colour))
    for event in status["tracker"]["recovered_from_corruption"][-1:]:
        lines.append(
            _paint(
                f"note: a corrupt tracker file was moved aside to {event.get('moved_to')} at {event['at']}",
                "yellow",
                colour,
            )
        )
    if status["id"] is None:
        lines.append(f"next deadline: {status['next_deadline']['local']}")
    else:
        deadline = status["deadline"]
        lines.append(f"batch {status['id']}  state {status['state']}  {status['completion_percentage']:.0f}% complete")
        elapsed = batch_health.format_duration(status["elapsed_seconds"])
        lines.append(f"started {status['started_at']}  elapsed {elapsed}")
        left = deadline["seconds_left"]
        when = f"in {batch_health.format_duration(left)}" if left >= 0 else f"{batch_health.format_duration(left)} ago"
        lines.append(f"deadline {deadline['local']} ({deadline['utc']} UTC), {when}")
        projection = status.get("projection") or {}
        if projection.get("projected_completion_utc"):
            lines.append(f"projected finish {projection['projected_completion_local']}")
        if status["failure"]:
            failure = status["failure"]
            lines.append(_paint(f"failed at stage {failure['stage'] or '?'}: {failure['reason']}", "red", colour))
        width = max([len(s["name"]) for s in status["stages"]] + [5])
        for stage in status["stages"]:
            marker = "*" if stage["name"] == status["active_stage"] else " "
            bar = progress_bar(stage["percentage"])
            tint = "green" if stage["percentage"] >= 100 else ("yellow" if marker == "*" else "dim")
            updated = stage["updated_at"] or "not started"
            lines.append(
                f"{marker} {stage['name']:<{width}} {_paint(bar, tint, colour)} {stage['percentage']:5.1f}%  {updated}"
            )
    recent = status["history"]["recent"]
    if recent:
        lines.append("last batches:")
        lines.extend(_history_lines(recent, colour))
    return "\n".join(lines) + "\n"


def _history_lines(batches: list[dict], colour: bool) -> list[str]:
    lines = []
    for batch in batches:
        duration = (
            batch_health.format_duration(batch["duration_seconds"]) if batch["duration_seconds"] is not None else "-"
        )
        lines.append(
            f"  {batch['id']:<28} {batch['state']:<10} {batch['started_at'] or '-':<26} {duration:>12}  "
            + _on_time_mark(batch["on_time"], colour)
        )
    return lines


def render_history(batches: list[dict], colour: bool = False) -> str:
    if not batches:
        return "no batches recorded\n"
    header = f"  {'id':<28} {'state':<10} {'started (UTC)':<26} {'duration':>12}  on time"
    return "\n".join([header, *_history_lines(batches, colour)]) + "\n"


__all__ = ["format_utc", "progress_bar", "render_history", "render_status", "run"]
