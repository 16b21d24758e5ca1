"""Projection of a running batch's finish, from the batch and recent history.

Pure functions of :class:`utils.model.Batch` values, an instant and a
:class:`utils.deadline.DailyDeadline`; no I/O (the batch queries are methods of ``Batch``).

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
import dataclasses
import statistics
from collections.abc import Iterable

from utils.deadline import DailyDeadline
from utils.model import ABANDONED, COMPLETED, FAILED, Batch

RECENT_BATCHES = 14
MIN_SAMPLES = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Projection:
    """A projected finish; ``slow_stage`` is the stage furthest behind its usual pace (None if none has a usual)."""

    completion_at: float
    remaining_seconds: float
    slow_stage: str | None = None
    slow_stage_elapsed: float | None = None
    slow_stage_usual: float | None = None


def batch_deadline(batch: Batch, deadline: DailyDeadline) -> float:
    """A batch's deadline: the one stored when it started (``deadline_at``), so changed
    settings never re-judge it; for a record written before deadlines were stored, the
    first deadline of ``deadline`` strictly after it started."""
    if batch.deadline_at is not None:
        return batch.deadline_at
    return deadline.first_after(batch.started_at)


def on_time(batch: Batch, deadline: DailyDeadline, now: float) -> bool | None:
    """True/False once decided; None while a running batch can still make it."""
    due = batch_deadline(batch, deadline)
    if batch.state == COMPLETED:
        return batch.ended_at is not None and batch.ended_at <= due
    if batch.state in (FAILED, ABANDONED) or now >= due:
        return False
    return None


def recent_completed(history: Iterable[Batch], limit: int = RECENT_BATCHES) -> list[Batch]:
    """The last ``limit`` completed batches of ``history`` (oldest first), a reference for "usual"."""
    completed = [b for b in history if b.state == COMPLETED and b.duration_seconds is not None]
    return completed[-limit:]


def usual_stage_durations(history: Iterable[Batch]) -> dict[str, list[float]]:
    """``{stage: [duration, ...]}`` over the recent completed batches of ``history``."""
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for batch in recent_completed(history):
        for name, seconds in batch.stage_durations().items():
            samples[name].append(seconds)
    return samples


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile of a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def elapsed_in_stage(batch: Batch, name: str, now: float) -> float:
    """How long the stage ``name`` has been running at ``now`` (it starts when the stages before it are done)."""
    windows = batch.stage_windows()
    if name in windows:
        return now - windows[name][0]
    finished = [done for _, done in windows.values() if done is not None]
    return now - max([batch.started_at, *finished])


def project(batch: Batch, history: Iterable[Batch], now: float) -> Projection | None:
    """Projected completion of a running ``batch``, or None when it cannot be projected."""
    if not batch.is_running:
        return None
    usual = {name: statistics.median(values) for name, values in usual_stage_durations(history).items()}
    names = batch.ordered_stage_names()
    if not names:
        return None
    stages = batch.stage_map()
    remaining = 0.0
    slow: tuple[float, str, float, float] | None = None  # (pace ratio, stage, elapsed, usual)
    active_seen = False
    for name in names:
        stage = stages.get(name)
        percentage = stage.percentage if stage else 0.0
        if percentage >= 100:
            continue
        typical = usual.get(name)
        running_now = not active_seen
        active_seen = True
        if running_now:
            elapsed = elapsed_in_stage(batch, name, now)
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
    return Projection(now + remaining, remaining, *(slow[1:] if slow else ()))
