"""Projection of a running batch's finish, and the batch queries it rests on.

Pure functions of batch records (as stored by :mod:`utils.batch_tracker`), an
instant and a :class:`utils.deadline.DailyDeadline`; no I/O.

Stage timing model. A stage *starts* at the earlier of its first record and the
moment the stages before it had all finished (the batch start for the first
one), because the nightly runner reports some stages only once, at 100%. A
stage's *duration* runs from that start to the time it reached 100%.

Projection of a running batch: for each expected stage not yet at 100%,
- in progress with a percentage p > 0: its own rate so far,
  ``elapsed * (100 - p) / p``;
- started but silent (p = 0): its usual (median) duration minus what has
  elapsed, never less than zero;
- not started: its usual duration.
The projected finish is ``now`` plus the sum. Without history for a stage that
has not reported progress, there is nothing to project from and the projection
is ``None``.
"""

from __future__ import annotations

import collections
import statistics

from utils.deadline import DailyDeadline, format_utc

RECENT_BATCHES = 14
MIN_SAMPLES = 3

Projection = collections.namedtuple(
    "Projection", ["completion_at", "remaining_seconds", "slow_stage", "slow_stage_elapsed", "slow_stage_usual"]
)
Projection.__doc__ = "A projected finish; ``slow_stage`` is the stage furthest behind its usual pace."


def batch_deadline(batch: dict, deadline: DailyDeadline) -> float:
    """A batch's deadline: the one stored when it started (``deadline_at``), so changed
    settings never re-judge it; for a record written before deadlines were stored, the
    first deadline of ``deadline`` strictly after it started."""
    stored = batch.get("deadline_at")
    if isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return float(stored)
    return deadline.first_after(batch["started_at"])


def overall_percentage(batch: dict) -> float:
    """Mean percentage over the batch's expected stages (stages seen, if none were declared)."""
    if batch["state"] == "completed":
        return 100.0
    stages = batch["stages"]
    names = batch.get("expected_stages") or list(stages)
    if not names:
        return 0.0
    return sum(stages.get(name, {}).get("percentage", 0.0) for name in names) / len(names)


def ordered_stage_names(batch: dict) -> list[str]:
    expected = list(batch.get("expected_stages") or [])
    return expected + [name for name in batch["stages"] if name not in expected]


def active_stage(batch: dict) -> str | None:
    """The stage that is (or should be) running now: the one to look at when a batch is stuck."""
    if batch.get("failure") and batch["failure"].get("stage"):
        return batch["failure"]["stage"]
    stages = batch["stages"]
    in_progress = [(d["updated_at"], n) for n, d in stages.items() if d["percentage"] < 100]
    if in_progress:
        return max(in_progress)[1]
    for name in batch.get("expected_stages") or []:
        if name not in stages:
            return name
    return None


def stage_windows(batch: dict) -> dict[str, tuple[float, float | None]]:
    """``{stage: (start, completed_at or None)}`` for the stages that have started, in order.

    A stage starts at the earlier of its first record and the moment the stages before
    it had all finished (the batch start for the first one): the nightly runner reports
    some stages only once, at 100%, and their first record is then their end.
    """
    windows: dict[str, tuple[float, float | None]] = {}
    boundary = batch["started_at"]
    for name in ordered_stage_names(batch):
        detail = batch["stages"].get(name)
        if detail is None:
            continue
        start = min(detail.get("first_seen_at", boundary), boundary)
        done = detail.get("completed_at")
        windows[name] = (start, done)
        if done is not None:
            boundary = max(boundary, done)
    return windows


def stage_durations(batch: dict) -> dict[str, float]:
    """Durations of the stages that reached 100% in ``batch``."""
    return {name: done - start for name, (start, done) in stage_windows(batch).items() if done is not None}


def on_time(batch: dict, deadline: DailyDeadline, now: float) -> bool | None:
    """True/False once decided; None while a running batch can still make it."""
    due = batch_deadline(batch, deadline)
    if batch["state"] == "completed":
        return batch["ended_at"] <= due
    if batch["state"] in ("failed", "abandoned") or now >= due:
        return False
    return None


def recent_completed(history: list[dict], limit: int = RECENT_BATCHES) -> list[dict]:
    """The last ``limit`` completed batches of ``history`` (oldest first), a reference for "usual"."""
    completed = [b for b in history if b["state"] == "completed" and b.get("duration_seconds") is not None]
    return completed[-limit:]


def usual_stage_durations(history: list[dict]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for batch in recent_completed(history):
        for name, seconds in stage_durations(batch).items():
            samples[name].append(seconds)
    return samples


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _elapsed_since_start(batch: dict, name: str, now: float) -> float:
    """How long the stage ``name`` has been running (it starts when the stages before it are done)."""
    windows = stage_windows(batch)
    if name in windows:
        return now - windows[name][0]
    finished = [done for _, done in windows.values() if done is not None]
    return now - max([batch["started_at"], *finished])


def project(batch: dict, history: list[dict], now: float) -> Projection | None:
    """Projected completion of a running ``batch``, or None when it cannot be projected."""
    if batch["state"] != "running":
        return None
    usual = {name: statistics.median(values) for name, values in usual_stage_durations(history).items()}
    names = ordered_stage_names(batch)
    if not names:
        return None
    remaining = 0.0
    slow: tuple[float, str, float, float] | None = None  # (pace ratio, stage, elapsed, usual)
    active_seen = False
    for name in names:
        detail = batch["stages"].get(name)
        percentage = detail["percentage"] if detail else 0.0
        if percentage >= 100:
            continue
        typical = usual.get(name)
        running_now = not active_seen
        active_seen = True
        if running_now:
            elapsed = _elapsed_since_start(batch, name, now)
            if percentage > 0:
                left = elapsed * (100 - percentage) / percentage
            elif typical is not None:
                left = max(typical - elapsed, 0.0)
            else:
                return None
            if typical:
                pace = (elapsed + left) / typical
                if slow is None or pace > slow[0]:
                    slow = (pace, name, elapsed, typical)
        else:
            if typical is None:
                return None
            left = typical
        remaining += left
    if slow is None:
        return Projection(now + remaining, remaining, None, None, None)
    return Projection(now + remaining, remaining, slow[1], slow[2], slow[3])


def describe_projection(batch: dict, history: list[dict], now: float, deadline) -> dict | None:
    """The projection as JSON-ready fields for the status report; None when not running."""
    if batch is None or batch["state"] != "running":
        return None
    projection = project(batch, history, now)
    due = batch_deadline(batch, deadline)
    if projection is None:
        return {"projected_completion_utc": None, "reason": "not enough completed batches to project from"}

    return {
        "projected_completion_utc": format_utc(projection.completion_at),
        "projected_completion_local": deadline.to_local(projection.completion_at).isoformat(timespec="seconds"),
        "projected_completion_epoch": projection.completion_at,
        "seconds_past_deadline": projection.completion_at - due,
        "slow_stage": projection.slow_stage,
        "slow_stage_elapsed_seconds": projection.slow_stage_elapsed,
        "slow_stage_usual_seconds": projection.slow_stage_usual,
    }
