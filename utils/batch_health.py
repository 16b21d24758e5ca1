"""What the tracker's state means at a moment: open problems and a status report.

Pure functions of a :class:`utils.batch_tracker.TrackerSnapshot`, an instant (UTC
epoch seconds) and a :class:`utils.deadline.DailyDeadline`; no I/O. The ``check``
CLI, :func:`utils.batch_tracker.check_batch_completion`, the status views and the
monitor all read the state through here, so they never disagree.
"""

from __future__ import annotations

import collections
import statistics

from utils.deadline import DailyDeadline, format_utc

MAX_MISSING_DEADLINES = 7

Incident = collections.namedtuple("Incident", ["kind", "key", "summary", "since", "batch_id"])
Incident.__doc__ = """An open problem. ``(kind, key)`` is its identity: a batch id, or a deadline instant."""

LATE, FAILED, MISSING, UNREADABLE = "late", "failed", "missing", "tracker_unreadable"


def identity(incident: Incident) -> str:
    return f"{incident.kind}:{incident.key}"


def batch_deadline(batch: dict, deadline: DailyDeadline) -> float:
    """A batch's deadline: the one stored when it started (``deadline_at``), so changed
    settings never re-judge it; for a record written before deadlines were stored, the
    first deadline of ``deadline`` strictly after it started."""
    stored = batch.get("deadline_at")
    if isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return float(stored)
    return deadline.first_after(batch["started_at"])


def format_duration(seconds: float) -> str:
    """A short human duration: ``45 s``, ``47 min``, ``2 h 03 min``, ``1 d 4 h``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_local(instant: float | None, deadline: DailyDeadline) -> str | None:
    if instant is None:
        return None
    return deadline.to_local(instant).strftime("%Y-%m-%d %H:%M %Z")


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
        "open_incidents": [dict(i._asdict()) for i in open_incidents(snapshot, now, deadline)],
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
    from utils.prediction import describe_projection  # prediction builds on this module

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
