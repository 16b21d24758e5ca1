"""Incidents: the problems open at a moment, each with its identity, and which one supersedes which.

Pure functions of a :class:`utils.model.Snapshot`, an instant (UTC epoch seconds) and a
:class:`utils.deadline.DailyDeadline`; no I/O. Late, failed, missing and unreadable come from the deadlines and the
recorded states; at risk, stalled stage and too short are the early warnings drawn from the projection and recent
history. :data:`PRECEDENCE` is the one statement of which incident supersedes which; detection applies it here
(:func:`apply_precedence`) and notification planning asks :func:`superseded_by`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Collection, Iterable

from utils.deadline import DailyDeadline, format_duration, format_local
from utils.model import Batch, Incident, Snapshot
from utils.projection import (
    MIN_SAMPLES,
    batch_deadline,
    elapsed_in_stage,
    percentile,
    project,
    recent_completed,
    usual_stage_durations,
)

MAX_MISSING_DEADLINES = 7

LATE, FAILED, MISSING, UNREADABLE = "late", "failed", "missing", "tracker_unreadable"
LATE_START = "late_start"  # no batch started by the job's start_by time; keyed, like missing, by the deadline
AT_RISK, TOO_SHORT, STALLED_STAGE = "at_risk", "too_short", "stalled_stage"
TOO_SHORT_FRACTION = 0.30
STALL_FACTOR = 1.5

SAME_BATCH, SAME_DEADLINE = "batch", "deadline"


@dataclasses.dataclass(frozen=True, slots=True)
class Precedence:
    """``winner`` supersedes ``loser`` when both concern the same ``subject`` (:data:`SAME_BATCH`:
    the same batch id; :data:`SAME_DEADLINE`: the same deadline instant, their ``since``).

    ``continues``: the loser's alert chain continues as the winner (no second alert, no
    recovery for the loser); otherwise the loser closes silently (it did not get better,
    so no recovery claims it did) and the winner alerts on its own.
    """

    winner: str
    loser: str
    subject: str
    continues: bool

    def applies(self, winner: Incident, loser: Incident) -> bool:
        if (winner.kind, loser.kind) != (self.winner, self.loser):
            return False
        if self.subject == SAME_BATCH:
            return winner.batch_id is not None and winner.batch_id == loser.batch_id
        return _deadline_of(winner) == _deadline_of(loser)


def _deadline_of(incident: Incident) -> str:
    """The deadline instant an incident concerns (``%.0f``): a late start's key; every other kind's ``since``."""
    return incident.key if incident.kind == LATE_START else f"{incident.since:.0f}"


PRECEDENCE: tuple[Precedence, ...] = (
    # Past its deadline a batch is late, no longer "at risk" of it.
    Precedence(LATE, AT_RISK, SAME_BATCH, continues=False),
    # A failed batch is not stalled: the failure names the stage and the reason.
    Precedence(FAILED, STALLED_STAGE, SAME_BATCH, continues=False),
    # A late start answers the missing night: one alert chain, whose recovery says how late it finished.
    Precedence(LATE, MISSING, SAME_DEADLINE, continues=True),
    # Once the deadline itself passes, the missing night (or the late batch) alerts on its own; the late start
    # closes without a recovery (it did not get better).
    Precedence(MISSING, LATE_START, SAME_DEADLINE, continues=False),
    Precedence(LATE, LATE_START, SAME_DEADLINE, continues=False),
)


def superseded_by(incident: Incident, others: Iterable[Incident]) -> tuple[Incident, Precedence] | None:
    """The first of ``others`` that supersedes ``incident``, with the rule that says so; None if none does."""
    return next(((other, rule) for other in others for rule in PRECEDENCE if rule.applies(other, incident)), None)


def apply_precedence(
    found: Iterable[Incident],
    *,
    open_now: Iterable[Incident] = (),
    open_identities: Collection[str] = frozenset(),
) -> list[Incident]:
    """``found`` in order, the first of each identity, without those another incident supersedes.

    The superseding incident may be in ``found``, in ``open_now`` (detected at the same
    moment but reported elsewhere), or be already open by identity (``open_identities``,
    e.g. the monitor's open records: a late batch stays late while a clock stepped back
    hides the lateness). By identity only :data:`SAME_BATCH` rules can match: the
    winners they name (late, failed) are keyed by their batch id.
    """
    found = list(found)
    candidates = found + list(open_now)
    kept: dict[str, Incident] = {}
    for incident in found:
        if incident.identity in kept or superseded_by(incident, candidates) is not None:
            continue
        if any(
            rule.loser == incident.kind
            and rule.subject == SAME_BATCH
            and incident.batch_id is not None
            and f"{rule.winner}:{incident.batch_id}" in open_identities
            for rule in PRECEDENCE
        ):
            continue
        kept[incident.identity] = incident
    return list(kept.values())


def open_incidents(
    snapshot: Snapshot, now: float, deadline: DailyDeadline, watch_since: float | None = None
) -> list[Incident]:
    """The problems open at ``now``: late, failed, missing, late start or unreadable.

    ``watch_since`` (the monitor's first start) keeps deadlines from before anyone
    was watching from counting as missing; without it only the latest deadline can.
    ``deadline`` is the job's schedule: its unscheduled, skipped and paused nights are
    not deadlines, so they are never missing, and a batch is not late for an excused one.
    """
    if not snapshot.readable:
        return [Incident(UNREADABLE, "tracker", f"tracker file unreadable: {snapshot.error}", now, None)]
    found = _late_and_failed(snapshot, now, deadline) + _missing_deadlines(snapshot, now, deadline, watch_since)
    found += _late_start(snapshot, now, deadline, watch_since)
    return apply_precedence(found)


def _late_and_failed(snapshot: Snapshot, now: float, deadline: DailyDeadline) -> list[Incident]:
    incidents: list[Incident] = []
    current = snapshot.current
    if current is not None and (current.is_running or current.is_failed):
        due = batch_deadline(current, deadline)
        if now >= due and not deadline.is_excused(due):
            summary = (
                f"batch {current.id} missed its deadline {format_local(due, deadline)} by {format_duration(now - due)}"
                f": {'failed' if current.is_failed else 'still running'} at {current.overall_percentage():.0f}%"
            )
            incidents.append(Incident(LATE, current.id, summary, due, current.id))
    for batch in snapshot.batches_newest_first():
        if batch.is_completed:
            break  # a later completed batch clears earlier failures
        failure = batch.last_failure
        if failure is not None and (batch.is_failed or (batch.is_running and batch.failures)):
            where = f" at stage {failure.stage}" if failure.stage else ""
            why = f": {failure.reason}" if failure.reason else ""
            resumed = " (resumed, not yet completed)" if batch.is_running else ""
            incidents.append(
                Incident(FAILED, batch.id, f"batch {batch.id} failed{where}{why}{resumed}", failure.at, batch.id)
            )
    return incidents


def _missing_deadlines(
    snapshot: Snapshot, now: float, deadline: DailyDeadline, watch_since: float | None
) -> list[Incident]:
    starts = [batch.started_at for batch in snapshot.batches_newest_first()]
    # The latest batch covers its own deadline, the first strictly after its start
    # (a start exactly at a deadline instant belongs to the next one, as its deadline does).
    floors = [deadline.first_after(max(starts))] if starts else []
    if watch_since is not None:
        floors.append(watch_since)
    floor = max(floors) if floors else deadline.previous(deadline.last_at_or_before(now))
    why = (
        f" (last batch started {format_local(max(starts), deadline)})" if starts else " (before any batch was recorded)"
    )
    return [
        Incident(MISSING, f"{due:.0f}", f"no batch started before the deadline {format_local(due, deadline)}{why}", due)
        for due in deadline.between(floor, now, limit=MAX_MISSING_DEADLINES)
    ]


def _late_start(snapshot: Snapshot, now: float, deadline: DailyDeadline, watch_since: float | None) -> list[Incident]:
    """A ``late_start`` incident when the coming deadline's start-by time has passed and no batch started in
    its window (the latest batch covers an earlier deadline); it gives way to missing/late at the deadline."""
    if deadline.start_by is None:
        return []
    due = deadline.first_after(now)
    start_by = deadline.start_by_for(due)
    if start_by is None or now < start_by or (watch_since is not None and start_by < watch_since):
        return []
    starts = [batch.started_at for batch in snapshot.batches_newest_first()]
    if starts and deadline.first_after(max(starts)) >= due:
        return []
    why = f"; last batch started {format_local(max(starts), deadline)}" if starts else ""
    summary = (
        f"no batch started by {format_local(start_by, deadline)}, the start-by time for the deadline "
        f"{format_local(due, deadline)}{why}"
    )
    return [Incident(LATE_START, f"{due:.0f}", summary, start_by)]


def check(snapshot: Snapshot, now: float, deadline: DailyDeadline) -> tuple[bool, str]:
    """``(ok, reason)``; see :func:`utils.batch_tracker.check_batch_completion`."""
    incidents = open_incidents(snapshot, now, deadline)
    if incidents:
        return False, "; ".join(incident.summary for incident in incidents)
    current = snapshot.current
    if current is None:
        upcoming = deadline.first_after(now)
        return True, f"no batch recorded yet; next deadline {format_local(upcoming, deadline)}"
    due = batch_deadline(current, deadline)
    if current.is_completed:
        margin = due - current.ended_at
        when = f"its deadline {format_local(due, deadline)}"
        if margin < 0 and deadline.is_excused(due):
            return True, f"batch {current.id} completed after {when}, a skipped or paused night"
        if margin < 0:
            return False, f"batch {current.id} completed {format_duration(margin)} late, after {when}"
        return True, f"batch {current.id} completed on time, {format_duration(margin)} before {when}"
    return True, (
        f"batch {current.id} running, {current.overall_percentage():.0f}% complete, "
        f"deadline {format_local(due, deadline)} in {format_duration(due - now)}"
    )


def early_warnings(
    snapshot: Snapshot,
    now: float,
    deadline: DailyDeadline,
    margin_seconds: float,
    already_open: frozenset[str] | set[str] = frozenset(),
) -> list[Incident]:
    """Open at-risk, too-short and stalled-stage incidents at ``now``, after :data:`PRECEDENCE`.

    At risk opens when the projection passes the deadline by more than ``margin_seconds``
    and, once open (its identity in ``already_open``), stays open until the projection is
    back within the deadline or the batch ends (hysteresis: no flapping near the threshold).
    A warning superseded by a late or failed incident, detected now or open by identity in
    ``already_open``, is not returned.
    """
    if not snapshot.readable:
        return []
    warnings: list[Incident] = []
    current = snapshot.current
    history = [b for b in snapshot.history if current is None or b.id != current.id]
    if current is not None and current.is_running:
        warnings.extend(_at_risk(current, history, now, deadline, margin_seconds, already_open))
        warnings.extend(_stalled(current, history, now))
    warnings.extend(_too_short(snapshot))
    if not warnings:
        return []
    return apply_precedence(
        warnings, open_now=_late_and_failed(snapshot, now, deadline), open_identities=frozenset(already_open)
    )


def _at_risk(
    batch: Batch, history: list[Batch], now: float, deadline: DailyDeadline, margin_seconds: float, already_open
) -> list[Incident]:
    projection = project(batch, history, now)
    if projection is None:
        return []
    due = batch_deadline(batch, deadline)
    if deadline.is_excused(due):
        return []
    overshoot = projection.completion_at - due
    candidate = Incident(AT_RISK, batch.id, "", due, batch.id)
    threshold = 0.0 if candidate.identity in already_open else margin_seconds
    if overshoot <= threshold:
        return []
    slow = ""
    if projection.slow_stage:
        slow = (
            f"; slow stage {projection.slow_stage}: {format_duration(projection.slow_stage_elapsed)} so far, "
            f"usually {format_duration(projection.slow_stage_usual)}"
        )
    summary = (
        f"batch {batch.id} is projected to finish at {format_local(projection.completion_at, deadline)}, "
        f"{format_duration(overshoot)} after its deadline {format_local(due, deadline)}{slow}"
    )
    return [candidate.replace(summary=summary)]


def _stalled(batch: Batch, history: list[Batch], now: float) -> list[Incident]:
    samples = usual_stage_durations(history)
    stages = batch.stage_map()
    for name in batch.ordered_stage_names():
        stage = stages.get(name)
        if stage is not None and stage.done:
            continue
        values = samples.get(name, [])
        if len(values) < MIN_SAMPLES:
            return []
        last_move = stage.updated_at if stage else now - elapsed_in_stage(batch, name, now)
        idle = now - last_move
        usual_at_most = percentile(values, 0.95)
        if idle > usual_at_most * STALL_FACTOR and idle > 60:
            summary = (
                f"stage {name} of batch {batch.id} has not moved for {format_duration(idle)} (at "
                f"{stage.percentage if stage else 0:.0f}%; it usually takes at most {format_duration(usual_at_most)})"
            )
            return [Incident(STALLED_STAGE, f"{batch.id}:{name}", summary, last_move, batch.id)]
        return []  # only the running stage can be stalled
    return []


def _too_short(snapshot: Snapshot) -> list[Incident]:
    latest = next((b for b in snapshot.batches_newest_first() if b.is_completed), None)
    if latest is None or latest.duration_seconds is None:
        return []
    reference = [b for b in snapshot.history if b.id != latest.id]
    durations = [b.duration_seconds for b in recent_completed(reference)]
    if len(durations) < MIN_SAMPLES:
        return []
    median = statistics.median(durations)
    if latest.duration_seconds >= TOO_SHORT_FRACTION * median:
        return []
    summary = (
        f"batch {latest.id} completed in {format_duration(latest.duration_seconds)}, "
        f"under {TOO_SHORT_FRACTION:.0%} of the usual {format_duration(median)}: it probably did nothing"
    )
    return [Incident(TOO_SHORT, latest.id, summary, latest.ended_at, latest.id)]
