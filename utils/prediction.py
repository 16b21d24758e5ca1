"""Early warning: project a running batch's finish and spot abnormal durations.

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

from utils.batch_health import (
    Incident,
    batch_deadline,
    format_duration,
    format_local,
    identity,
    ordered_stage_names,
    stage_durations,
    stage_windows,
)

AT_RISK, TOO_SHORT, STALLED_STAGE = "at_risk", "too_short", "stalled_stage"
RECENT_BATCHES = 14
MIN_SAMPLES = 3
TOO_SHORT_FRACTION = 0.30
STALL_FACTOR = 1.5

Projection = collections.namedtuple(
    "Projection", ["completion_at", "remaining_seconds", "slow_stage", "slow_stage_elapsed", "slow_stage_usual"]
)
Projection.__doc__ = "A projected finish; ``slow_stage`` is the stage furthest behind its usual pace."


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
    from utils.deadline import format_utc

    return {
        "projected_completion_utc": format_utc(projection.completion_at),
        "projected_completion_local": deadline.to_local(projection.completion_at).isoformat(timespec="seconds"),
        "projected_completion_epoch": projection.completion_at,
        "seconds_past_deadline": projection.completion_at - due,
        "slow_stage": projection.slow_stage,
        "slow_stage_elapsed_seconds": projection.slow_stage_elapsed,
        "slow_stage_usual_seconds": projection.slow_stage_usual,
    }


def early_warnings(
    snapshot,
    now: float,
    deadline,
    margin_seconds: float,
    already_open: frozenset[str] | set[str] = frozenset(),
) -> list[Incident]:
    """Open at-risk, too-short and stalled-stage incidents at ``now``.

    At risk opens when the projection passes the deadline by more than
    ``margin_seconds`` and, once open (its identity in ``already_open``), stays open
    until the projection is back within the deadline or the batch ends: the
    hysteresis keeps a projection hovering near the threshold from flapping.
    """
    if not snapshot.readable:
        return []
    incidents: list[Incident] = []
    current = snapshot.current
    history = [b for b in snapshot.history if current is None or b["id"] != current["id"]]
    if current is not None and current["state"] == "running":
        incidents.extend(_at_risk(current, history, now, deadline, margin_seconds, already_open))
        incidents.extend(_stalled(current, history, now))
    incidents.extend(_too_short(snapshot))
    return incidents


def _at_risk(batch, history, now, deadline, margin_seconds, already_open) -> list[Incident]:
    projection = project(batch, history, now)
    if projection is None:
        return []
    due = batch_deadline(batch, deadline)
    if now >= due:
        return []  # past the deadline the "late" incident speaks; a warning is no longer early
    overshoot = projection.completion_at - due
    candidate = Incident(AT_RISK, batch["id"], "", due, batch["id"])
    threshold = 0.0 if identity(candidate) in already_open else margin_seconds
    if overshoot <= threshold:
        return []
    slow = ""
    if projection.slow_stage:
        slow = (
            f"; slow stage {projection.slow_stage}: {format_duration(projection.slow_stage_elapsed)} so far, "
            f"usually {format_duration(projection.slow_stage_usual)}"
        )
    summary = (
        f"batch {batch['id']} is projected to finish at {format_local(projection.completion_at, deadline)}, "
        f"{format_duration(overshoot)} after its deadline {format_local(due, deadline)}{slow}"
    )
    return [candidate._replace(summary=summary)]


def _stalled(batch, history, now) -> list[Incident]:
    samples = usual_stage_durations(history)
    for name in ordered_stage_names(batch):
        detail = batch["stages"].get(name)
        if detail and detail["percentage"] >= 100:
            continue
        values = samples.get(name, [])
        if len(values) < MIN_SAMPLES:
            return []
        since_start = _elapsed_since_start(batch, name, now)
        last_move = detail["updated_at"] if detail else now - since_start
        idle = now - last_move
        limit = percentile(values, 0.95) * STALL_FACTOR
        if idle > limit and idle > 60:
            return [
                Incident(
                    STALLED_STAGE,
                    f"{batch['id']}:{name}",
                    f"stage {name} of batch {batch['id']} has not moved for {format_duration(idle)} "
                    f"(at {detail['percentage'] if detail else 0:.0f}%; it usually takes at most "
                    f"{format_duration(percentile(values, 0.95))})",
                    last_move,
                    batch["id"],
                )
            ]
        return []  # only the running stage can be stalled
    return []


def _too_short(snapshot) -> list[Incident]:
    batches = snapshot.batches_newest_first()
    latest = next((b for b in batches if b["state"] == "completed"), None)
    if latest is None or latest.get("duration_seconds") is None:
        return []
    reference = [b for b in snapshot.history if b["id"] != latest["id"]]
    durations = [b["duration_seconds"] for b in recent_completed(reference)]
    if len(durations) < MIN_SAMPLES:
        return []
    median = statistics.median(durations)
    if latest["duration_seconds"] >= TOO_SHORT_FRACTION * median:
        return []
    return [
        Incident(
            TOO_SHORT,
            latest["id"],
            f"batch {latest['id']} completed in {format_duration(latest['duration_seconds'])}, "
            f"under {TOO_SHORT_FRACTION:.0%} of the usual {format_duration(median)}: it probably did nothing",
            latest["ended_at"],
            latest["id"],
        )
    ]
