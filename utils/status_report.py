"""The status report: what the tracker's state means at a moment, as JSON-ready data.

The ``status`` CLI, :func:`utils.batch_tracker.get_batch_status`, the status page and
/status.json all read the state through :func:`describe`, so they never disagree.
"""

from __future__ import annotations

import statistics

from utils.deadline import DailyDeadline, format_utc
from utils.incidents import check, open_incidents
from utils.projection import (
    active_stage,
    batch_deadline,
    describe_projection,
    on_time,
    ordered_stage_names,
    overall_percentage,
    stage_durations,
)


def _stage_details(batch: dict) -> list[dict]:
    details = []
    durations = stage_durations(batch)
    for name in ordered_stage_names(batch):
        stage = batch["stages"].get(name)
        details.append(
            {
                "name": name,
                "percentage": stage["percentage"] if stage else 0.0,
                "first_seen_at": format_utc(stage["first_seen_at"]) if stage else None,
                "updated_at": format_utc(stage["updated_at"]) if stage else None,
                "completed_at": format_utc(stage.get("completed_at")) if stage else None,
                "duration_seconds": durations.get(name),
            }
        )
    return details


def summarize_batch(batch: dict, deadline: DailyDeadline, now: float) -> dict:
    due = batch_deadline(batch, deadline)
    return {
        "id": batch["id"],
        "state": batch["state"],
        "started_at": format_utc(batch["started_at"]),
        "ended_at": format_utc(batch.get("ended_at")),
        "duration_seconds": batch.get("duration_seconds"),
        "deadline_utc": format_utc(due),
        "on_time": on_time(batch, deadline, now),
        "completion_percentage": round(overall_percentage(batch), 2),
        "cost_per_lead": batch.get("cost_per_lead"),
        "gpu_cost_dollars": batch.get("gpu_cost_dollars", 0.0),
    }


def history_summary(snapshot, deadline: DailyDeadline, now: float, recent: int = 7) -> dict:
    finished = [b for b in snapshot.history if b["state"] != "running"]
    completed = [b for b in finished if b["state"] == "completed"]
    durations = [b["duration_seconds"] for b in completed if b.get("duration_seconds") is not None]
    decided = [b for b in finished if b["state"] in ("completed", "failed")]
    punctual = [b for b in decided if on_time(b, deadline, now)]
    return {
        "count": len(snapshot.history),
        "completed": len(completed),
        "failed": sum(1 for b in finished if b["state"] == "failed"),
        "abandoned": sum(1 for b in finished if b["state"] == "abandoned"),
        "on_time_rate": round(len(punctual) / len(decided), 4) if decided else None,
        "median_duration_seconds": statistics.median(durations) if durations else None,
        "recent": [summarize_batch(b, deadline, now) for b in list(reversed(snapshot.history))[:recent]],
        "error": snapshot.history_error,
    }


def describe(snapshot, now: float, deadline: DailyDeadline) -> dict:
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
        "tracker": {
            "readable": snapshot.readable,
            "error": snapshot.error,
            "recovered_from_corruption": [
                dict(event, at=format_utc(event.get("at"))) for event in snapshot.storage_events
            ],
        },
    }
    if current is None:
        return report
    due = batch_deadline(current, deadline)
    end = current.get("ended_at")
    report.update(
        id=current["id"],
        state=current["state"],
        started_at=format_utc(current["started_at"]),
        ended_at=format_utc(end),
        duration_seconds=current.get("duration_seconds"),
        elapsed_seconds=(end if end is not None else now) - current["started_at"],
        deadline=_deadline_view(due, deadline, now),
        completion_percentage=round(overall_percentage(current), 2),
        expected_stages=list(current.get("expected_stages") or []),
        stages=_stage_details(current),
        active_stage=active_stage(current) if current["state"] != "completed" else None,
        on_time=on_time(current, deadline, now),
        failure=_failure_view(current.get("failure")),
        failures=[_failure_view(f) for f in current.get("failures") or []],
        resumed_at=[format_utc(t) for t in current.get("resumed_at") or []],
        cost_per_lead=current.get("cost_per_lead"),
        gpu_cost_dollars=current.get("gpu_cost_dollars", 0.0),
        host=current.get("host"),
    )
    history = [b for b in snapshot.history if b["id"] != current["id"]]
    report["projection"] = describe_projection(current, history, now, deadline)
    return report


def _deadline_view(due: float, deadline: DailyDeadline, now: float) -> dict:
    return {
        "utc": format_utc(due),
        "local": deadline.to_local(due).isoformat(timespec="seconds"),
        "timezone": deadline.zone.zone,
        "epoch": due,
        "seconds_left": due - now,
    }


def _failure_view(failure: dict | None) -> dict | None:
    if failure is None:
        return None
    return {"stage": failure.get("stage"), "reason": failure.get("reason", ""), "at": format_utc(failure.get("at"))}
