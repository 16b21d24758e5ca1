"""Incidents: the problems open at a moment, each with its identity.

Pure functions of a snapshot, an instant (UTC epoch seconds) and a
:class:`utils.deadline.DailyDeadline`; no I/O. Late, failed, missing and unreadable come
from the deadlines and the recorded states; at risk, stalled stage and too short are the
early warnings drawn from the projection and recent history.
"""

from __future__ import annotations

import dataclasses
import statistics

from utils.deadline import DailyDeadline, format_duration, format_local
from utils.model import Incident
from utils.projection import (
    MIN_SAMPLES,
    _elapsed_since_start,
    batch_deadline,
    ordered_stage_names,
    overall_percentage,
    percentile,
    project,
    recent_completed,
    usual_stage_durations,
)

MAX_MISSING_DEADLINES = 7

LATE, FAILED, MISSING, UNREADABLE = "late", "failed", "missing", "tracker_unreadable"
AT_RISK, TOO_SHORT, STALLED_STAGE = "at_risk", "too_short", "stalled_stage"
TOO_SHORT_FRACTION = 0.30
STALL_FACTOR = 1.5


def identity(incident: Incident) -> str:
    return f"{incident.kind}:{incident.key}"


def open_incidents(snapshot, now: float, deadline: DailyDeadline, watch_since: float | None = None) -> list[Incident]:
    """The problems open at ``now``.

    ``watch_since`` (the monitor's first start) keeps deadlines from before anyone
    was watching from counting as missing; without it only the latest deadline can.
    """
    if not snapshot.readable:
        return [Incident(UNREADABLE, "tracker", f"tracker file unreadable: {snapshot.error}", now, None)]
    incidents: list[Incident] = []
    current = snapshot.current
    if current and current["state"] in ("running", "failed"):
        due = batch_deadline(current, deadline)
        if now >= due:
            percent = overall_percentage(current)
            doing = "failed" if current["state"] == "failed" else "still running"
            incidents.append(
                Incident(
                    LATE,
                    current["id"],
                    f"batch {current['id']} missed its deadline {format_local(due, deadline)} "
                    f"by {format_duration(now - due)}: {doing} at {percent:.0f}%",
                    due,
                    current["id"],
                )
            )
    for batch in snapshot.batches_newest_first():
        if batch["state"] == "completed":
            break  # a later completed batch clears earlier failures
        failures = batch.get("failures") or []
        if batch["state"] == "failed" or (batch["state"] == "running" and failures):
            failure = batch.get("failure") or failures[-1]
            where = f" at stage {failure['stage']}" if failure.get("stage") else ""
            why = f": {failure['reason']}" if failure.get("reason") else ""
            resumed = " (resumed, not yet completed)" if batch["state"] == "running" else ""
            incidents.append(
                Incident(
                    FAILED, batch["id"], f"batch {batch['id']} failed{where}{why}{resumed}", failure["at"], batch["id"]
                )
            )
    incidents.extend(_missing_deadlines(snapshot, now, deadline, watch_since))
    return incidents


def _missing_deadlines(snapshot, now: float, deadline: DailyDeadline, watch_since: float | None) -> list[Incident]:
    starts = [b["started_at"] for b in snapshot.batches_newest_first()]
    floor = None
    if starts:
        latest = max(starts)
        # The latest batch covers its own deadline, the first strictly after its start
        # (a start exactly at a deadline instant belongs to the next one, as its deadline does).
        floor = deadline.first_after(latest)
    if watch_since is not None:
        floor = watch_since if floor is None else max(floor, watch_since)
    if floor is None:
        floor = deadline.previous(deadline.last_at_or_before(now))
    since_text = "any batch was recorded" if not starts else "the last batch started"
    return [
        Incident(
            MISSING,
            f"{due:.0f}",
            f"no batch started before the deadline {format_local(due, deadline)}"
            + (f" (last batch started {format_local(max(starts), deadline)})" if starts else f" (before {since_text})"),
            due,
            None,
        )
        for due in deadline.between(floor, now, limit=MAX_MISSING_DEADLINES)
    ]


def check(snapshot, now: float, deadline: DailyDeadline) -> tuple[bool, str]:
    """``(ok, reason)``; see :func:`utils.batch_tracker.check_batch_completion`."""
    incidents = open_incidents(snapshot, now, deadline)
    if incidents:
        return False, "; ".join(incident.summary for incident in incidents)
    current = snapshot.current
    if current is None:
        upcoming = deadline.first_after(now)
        return True, f"no batch recorded yet; next deadline {format_local(upcoming, deadline)}"
    due = batch_deadline(current, deadline)
    if current["state"] == "completed":
        margin = due - current["ended_at"]
        if margin < 0:
            return (
                False,
                f"batch {current['id']} completed {format_duration(margin)} late, after its deadline {format_local(due, deadline)}",
            )
        return (
            True,
            f"batch {current['id']} completed on time, {format_duration(margin)} before its deadline {format_local(due, deadline)}",
        )
    percent = overall_percentage(current)
    return True, (
        f"batch {current['id']} running, {percent:.0f}% complete, "
        f"deadline {format_local(due, deadline)} in {format_duration(due - now)}"
    )


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
    return [dataclasses.replace(candidate, summary=summary)]


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
