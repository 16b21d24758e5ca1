"""The status report: what the tracker's state means at a moment, as JSON-ready data.

The ``status`` CLI, :func:`utils.batch_tracker.get_batch_status`, the status page and
/status.json all read the state through :func:`describe`, so they never disagree.
Every input is a :class:`utils.model.Snapshot` / :class:`utils.model.Batch`; every
output is plain JSON-shaped data (dicts, lists, strings, numbers).
"""

from __future__ import annotations

from utils.deadline import DailyDeadline, format_utc
from utils.history_archive import HistoryTotals
from utils.incidents import check, open_incidents
from utils.model import Batch, Failure, Snapshot, Stage
from utils.projection import batch_deadline, on_time, project


def _stage_details(batch: Batch) -> list[dict]:
    durations, stages = batch.stage_durations(), batch.stage_map()
    return [_stage_view(name, stages.get(name), durations.get(name)) for name in batch.ordered_stage_names()]


def _stage_view(name: str, stage: Stage | None, duration: float | None) -> dict:
    return {
        "name": name,
        "percentage": stage.percentage if stage else 0.0,
        "first_seen_at": format_utc(stage.first_seen_at) if stage else None,
        "updated_at": format_utc(stage.updated_at) if stage else None,
        "completed_at": format_utc(stage.completed_at) if stage else None,
        "duration_seconds": duration,
    }


def summarize_batch(batch: Batch, deadline: DailyDeadline, now: float) -> dict:
    """One batch as a line of the history: ids, times (ISO-8601 UTC), verdict, completion, cost."""
    return {
        "id": batch.id,
        "state": batch.state,
        "started_at": format_utc(batch.started_at),
        "ended_at": format_utc(batch.ended_at),
        "duration_seconds": batch.duration_seconds,
        "deadline_utc": format_utc(batch_deadline(batch, deadline)),
        "on_time": on_time(batch, deadline, now),
        "completion_percentage": round(batch.overall_percentage(), 2),
        "cost_per_lead": batch.cost_per_lead,
        "gpu_cost_dollars": batch.gpu_cost_dollars,
    }


def history_summary(snapshot: Snapshot, deadline: DailyDeadline, now: float, recent: int = 7) -> dict:
    """Counts by outcome over every kept batch, on-time rate (on time / (completed + failed)), median
    duration, and the ``recent`` newest batches."""
    totals = snapshot.history_totals or HistoryTotals()
    return {
        "count": totals.count,
        "completed": totals.completed,
        "failed": totals.failed,
        "abandoned": totals.abandoned,
        "on_time_rate": totals.on_time_rate,
        "median_duration_seconds": totals.median_duration_seconds,
        "recent": [summarize_batch(b, deadline, now) for b in list(reversed(snapshot.history))[:recent]],
        "error": snapshot.history_error,
    }


def describe(snapshot: Snapshot, now: float, deadline: DailyDeadline) -> dict:
    """The status report behind ``get_batch_status``; every time ISO-8601 with offset."""
    current = snapshot.current
    ok, reason = check(snapshot, now, deadline)
    report: dict = {
        "now": format_utc(now),
        "ok": ok,
        "reason": reason,
        "id": None,
        "state": "none",
        "started_at": None,
        "ended_at": None,
        "duration_seconds": None,
        "elapsed_seconds": None,
        "deadline": None,
        "completion_percentage": 0.0,
        "expected_stages": [],
        "stages": [],
        "active_stage": None,
        "on_time": None,
        "failure": None,
        "failures": [],
        "resumed_at": [],
        "cost_per_lead": None,
        "gpu_cost_dollars": 0.0,
        "projection": None,
        "open_incidents": [i.to_dict() for i in open_incidents(snapshot, now, deadline)],
        "next_deadline": _deadline_view(deadline.first_after(now), deadline, now),
        "history": history_summary(snapshot, deadline, now),
        "excused": excused_view(deadline, now),
        "tracker": {
            "readable": snapshot.readable,
            "error": snapshot.error,
            "recovered_from_corruption": [
                {**event.to_dict(), "at": format_utc(event.at)} for event in snapshot.storage_events
            ],
        },
    }
    if current is None:
        return report
    end = current.ended_at
    report.update(
        id=current.id,
        state=current.state,
        started_at=format_utc(current.started_at),
        ended_at=format_utc(end),
        duration_seconds=current.duration_seconds,
        elapsed_seconds=(end if end is not None else now) - current.started_at,
        deadline=_deadline_view(batch_deadline(current, deadline), deadline, now),
        completion_percentage=round(current.overall_percentage(), 2),
        expected_stages=list(current.expected_stages),
        stages=_stage_details(current),
        active_stage=current.active_stage() if not current.is_completed else None,
        on_time=on_time(current, deadline, now),
        failure=_failure_view(current.failure),
        failures=[_failure_view(f) for f in current.failures],
        resumed_at=[format_utc(t) for t in current.resumed_at],
        cost_per_lead=current.cost_per_lead,
        gpu_cost_dollars=current.gpu_cost_dollars,
        host=current.host,
    )
    history = [b for b in snapshot.history if b.id != current.id]
    report["projection"] = projection_view(current, history, now, deadline)
    return report


def projection_view(batch: Batch | None, history: list[Batch], now: float, deadline: DailyDeadline) -> dict | None:
    """The projected finish as JSON-ready fields for the status report; None when not running."""
    if batch is None or not batch.is_running:
        return None
    projection = project(batch, history, now)
    if projection is None:
        return {"projected_completion_utc": None, "reason": "not enough completed batches to project from"}
    return {
        "projected_completion_utc": format_utc(projection.completion_at),
        "projected_completion_local": deadline.to_local(projection.completion_at).isoformat(timespec="seconds"),
        "projected_completion_epoch": projection.completion_at,
        "seconds_past_deadline": projection.completion_at - batch_deadline(batch, deadline),
        "slow_stage": projection.slow_stage,
        "slow_stage_elapsed_seconds": projection.slow_stage_elapsed,
        "slow_stage_usual_seconds": projection.slow_stage_usual,
    }


def _deadline_view(due: float, deadline: DailyDeadline, now: float) -> dict:
    return {
        "utc": format_utc(due),
        "local": deadline.to_local(due).isoformat(timespec="seconds"),
        "timezone": deadline.zone.zone,
        "epoch": due,
        "seconds_left": due - now,
        "excused": deadline.is_excused(due),
    }


EXCUSED_DAYS_BACK = 14
EXCUSED_DAYS_AHEAD = 31


def excused_nights(deadline: DailyDeadline, after: float, until: float, limit: int = 62) -> list[dict]:
    """The scheduled deadlines in ``(after, until]`` that ``deadline`` excuses (a skipped date or inside a
    pause), oldest first, at most ``limit``: ``{kind: skipped|paused, date, deadline_utc, deadline_epoch, reason}``."""
    if not deadline.skipped_dates and not deadline.paused:
        return []
    nights = []
    for due in deadline.excusing().between(after, until, limit=limit):
        day = deadline.to_local(due).date()
        if day in deadline.skipped_dates:
            nights.append(_excused_night("skipped", day, due, deadline.reasons.get(day, "")))
        elif (window := deadline.pause_at(due)) is not None:
            nights.append(_excused_night("paused", day, due, deadline.reasons.get(window, "")))
    return nights


def _excused_night(kind: str, day, due: float, reason: str) -> dict:
    return {
        "kind": kind,
        "date": day.isoformat(),
        "deadline_utc": format_utc(due),
        "deadline_epoch": due,
        "reason": reason,
    }


def excused_view(deadline: DailyDeadline, now: float) -> dict:
    """Nights deliberately not run, for the status views: those of the last :data:`EXCUSED_DAYS_BACK` and next
    :data:`EXCUSED_DAYS_AHEAD` days, and the pauses not over before then (``active`` at ``now``)."""
    back = now - EXCUSED_DAYS_BACK * 86_400
    pauses = [
        {
            "from": format_utc(start),
            "until": format_utc(until),
            "reason": deadline.reasons.get((start, until), ""),
            "active": start <= now < until,
        }
        for start, until in deadline.paused
        if until > back
    ]
    return {"nights": excused_nights(deadline, back, now + EXCUSED_DAYS_AHEAD * 86_400), "pauses": pauses}


def _failure_view(failure: Failure | None) -> dict | None:
    if failure is None:
        return None
    return {"stage": failure.stage, "reason": failure.reason, "at": format_utc(failure.at)}


def history_with_excused(batches: list[Batch], deadline: DailyDeadline, now: float) -> list[dict]:
    """:func:`summarize_batch` of ``batches`` (newest first) with the excused nights (:func:`excused_nights`)
    from the oldest one's start (or :data:`EXCUSED_DAYS_BACK` days ago, if earlier) to now, merged newest first. An
    excused night's row has ``id`` None, ``state`` ``skipped`` or ``paused``, its deadline and ``reason``."""
    rows = [(batch.started_at, summarize_batch(batch, deadline, now)) for batch in batches]
    after = min([now - EXCUSED_DAYS_BACK * 86_400, *(batch.started_at for batch in batches)])
    for night in excused_nights(deadline, after, now):
        row = {
            "id": None,
            "state": night["kind"],
            "started_at": None,
            "ended_at": None,
            "duration_seconds": None,
            "deadline_utc": night["deadline_utc"],
            "on_time": None,
            "completion_percentage": 0.0,
            "cost_per_lead": None,
            "gpu_cost_dollars": 0.0,
            "reason": night["reason"],
        }
        rows.append((night["deadline_epoch"], row))
    rows.sort(key=lambda pair: pair[0], reverse=True)
    return [row for _, row in rows]
