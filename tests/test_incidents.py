"""utils.incidents via check_batch_completion / open_incidents / early_warnings: on time, late, failed,
missing, unreadable, and which incident supersedes which (PRECEDENCE)."""

from __future__ import annotations

import pytest
from helpers import NEW_YORK, ny_epoch, start_at

from utils import incidents as incidents_module
from utils.batch_tracker import BatchTracker, check_batch_completion, get_batch_status, load_snapshot
from utils.deadline import DailyDeadline
from utils.incidents import (
    AT_RISK,
    LATE,
    LATE_START,
    MISSING,
    PRECEDENCE,
    STALLED_STAGE,
    UNREADABLE,
    apply_precedence,
    superseded_by,
)
from utils.model import FAILED, Batch, Incident, Snapshot


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


@pytest.fixture
def check(tracker_config):
    def run(now):
        return check_batch_completion(now, config=tracker_config)

    return run


@pytest.fixture
def incidents(tracker_config):
    deadline = tracker_config.deadline()

    def run(now, watch_since=None):
        return incidents_module.open_incidents(load_snapshot(config=tracker_config), now, deadline, watch_since)

    return run


def test_it_is_ok_while_a_batch_runs_before_its_deadline(tracker, clock, check):
    batch_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.stage("scrape", 100)
    ok, reason = check(ny_epoch("2026-06-01 04:00"))
    assert ok
    assert batch_id in reason and "running" in reason and "33%" in reason and "1 h 00 min" in reason


def test_it_is_late_once_the_deadline_passes_naming_the_batch_and_how_late(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    assert check(ny_epoch("2026-06-01 04:59:59"))[0]
    ok, reason = check(ny_epoch("2026-06-01 05:20"))
    assert not ok
    assert batch_id in reason and "missed its deadline" in reason and "20 min" in reason
    assert "2026-06-01 05:00 EDT" in reason
    [incident] = incidents(ny_epoch("2026-06-01 05:20"))
    assert (incident.kind, incident.key, incident.since) == (LATE, batch_id, ny_epoch("2026-06-01 05:00"))


def test_it_reports_a_failure_naming_the_stage_and_reason(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 02:00"))
    tracker.fail("enrich", "exit code 3")
    ok, reason = check(ny_epoch("2026-06-01 02:05"))
    assert not ok
    assert batch_id in reason and "enrich" in reason and "exit code 3" in reason
    [incident] = incidents(ny_epoch("2026-06-01 02:05"))
    assert (incident.kind, incident.key, incident.since) == (FAILED, batch_id, ny_epoch("2026-06-01 02:00"))


def test_it_reports_a_failed_batch_past_its_deadline_as_late_and_failed(tracker, clock, incidents):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.fail("score", "exit code 1")
    assert {i.kind for i in incidents(ny_epoch("2026-06-01 06:00"))} == {LATE, FAILED}


def test_it_is_not_ok_when_the_batch_completed_late_saying_how_late(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 05:45"))
    tracker.end()
    ok, reason = check(ny_epoch("2026-06-01 06:00"))
    assert not ok
    assert batch_id in reason and "45 min late" in reason
    assert incidents(ny_epoch("2026-06-01 06:00")) == []  # the late incident has cleared; the verdict stays
    assert get_batch_status(ny_epoch("2026-06-01 06:00"), config=tracker.config)["on_time"] is False


def test_it_is_ok_when_the_batch_completed_on_time(tracker, clock, check):
    batch_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 04:00"))
    tracker.end()
    for now in (ny_epoch("2026-06-01 04:30"), ny_epoch("2026-06-01 05:00"), ny_epoch("2026-06-01 23:00")):
        ok, reason = check(now)
        assert ok, reason
        assert batch_id in reason and "on time" in reason and "1 h 00 min before" in reason
    assert get_batch_status(ny_epoch("2026-06-01 06:00"), config=tracker.config)["on_time"] is True


def test_it_counts_completion_exactly_at_the_deadline_as_on_time(tracker, clock, check):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 05:00"))
    tracker.end()
    assert check(ny_epoch("2026-06-01 05:01"))[0]


def test_it_reports_a_missing_batch_keyed_by_the_deadline_instant(tracker, clock, check, incidents):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 03:00"))
    tracker.end()
    assert check(ny_epoch("2026-06-02 04:59"))[0]
    ok, reason = check(ny_epoch("2026-06-02 05:00:01"))
    assert not ok
    assert "no batch started before the deadline 2026-06-02 05:00 EDT" in reason
    [incident] = incidents(ny_epoch("2026-06-02 05:00:01"))
    assert (incident.kind, incident.key, incident.batch_id) == (MISSING, f"{ny_epoch('2026-06-02 05:00'):.0f}", None)


def test_it_reports_every_missed_night_since_the_last_batch(tracker, clock, incidents):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.end()
    found = incidents(ny_epoch("2026-06-04 06:00"))
    assert [(i.kind, i.key) for i in found] == [
        (MISSING, f"{ny_epoch(f'2026-06-{d:02d} 05:00'):.0f}") for d in (2, 3, 4)
    ]


def test_it_turns_a_missing_night_into_a_late_batch_once_a_batch_starts(tracker, clock, check, incidents):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.end()
    assert not check(ny_epoch("2026-06-02 06:00"))[0]
    late = start_at(tracker, clock, ny_epoch("2026-06-02 06:00"))  # late start: it answers the missed 05:00 deadline
    assert load_snapshot(config=tracker.config).current.deadline_at == ny_epoch("2026-06-02 05:00")
    found = incidents(ny_epoch("2026-06-02 07:00"))
    assert [(i.kind, i.key, i.since) for i in found] == [(LATE, late, ny_epoch("2026-06-02 05:00"))]
    ok, reason = check(ny_epoch("2026-06-02 07:00"))
    assert not ok and "missed its deadline 2026-06-02 05:00 EDT by 2 h 00 min" in reason, reason
    clock.set(ny_epoch("2026-06-02 16:00"))
    tracker.end()
    ok, reason = check(ny_epoch("2026-06-02 17:00"))
    assert not ok and reason.startswith(f"batch {late} completed 11 h 00 min late"), reason
    assert (
        check(ny_epoch("2026-06-03 04:00"))[0] is False
    )  # still judged by the missed night, not by the 3rd's deadline
    assert incidents(ny_epoch("2026-06-03 04:00")) == []
    assert [
        i.kind for i in incidents(ny_epoch("2026-06-03 05:00:01"))
    ] == []  # the 3rd's window holds its start: not missing


def test_it_gives_a_late_start_after_a_covered_night_the_next_deadline(tracker, clock, check):
    start_at(tracker, clock, ny_epoch("2026-06-02 01:00"))
    clock.set(ny_epoch("2026-06-02 04:00"))
    tracker.end()
    second = start_at(
        tracker, clock, ny_epoch("2026-06-02 06:00")
    )  # the 2nd's deadline had its batch: a re-run for the 3rd
    assert load_snapshot(config=tracker.config).current.deadline_at == ny_epoch("2026-06-03 05:00")
    ok, reason = check(ny_epoch("2026-06-02 07:00"))
    assert ok and second in reason, reason


def test_it_gives_a_first_batch_ever_the_next_deadline(tracker, clock, check):
    start_at(
        tracker, clock, ny_epoch("2026-06-02 12:00")
    )  # installed and run at noon: nothing was expected this morning
    assert load_snapshot(config=tracker.config).current.deadline_at == ny_epoch("2026-06-03 05:00")
    assert check(ny_epoch("2026-06-02 13:00"))[0]


def test_it_does_not_call_a_batch_started_exactly_at_a_deadline_missing_for_its_own_deadline(tracker, clock, check):
    # Its deadline is the next day's 05:00 (strictly after the start), so that night is covered.
    start_at(tracker, clock, ny_epoch("2026-06-01 05:00"))
    clock.set(ny_epoch("2026-06-01 07:00"))
    tracker.end()
    ok, reason = check(ny_epoch("2026-06-02 05:00:01"))
    assert ok, reason
    assert not check(ny_epoch("2026-06-03 05:00:01"))[0]  # the night after is missing again


def test_it_ignores_deadlines_before_watch_since(tracker, clock, incidents):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.end()
    found = incidents(ny_epoch("2026-06-05 06:00"), watch_since=ny_epoch("2026-06-03 12:00"))
    assert [i.key for i in found] == [f"{ny_epoch(f'2026-06-{d:02d} 05:00'):.0f}" for d in (4, 5)]


def test_it_counts_only_deadlines_after_watch_since_on_a_fresh_tracker(incidents):
    assert incidents(ny_epoch("2026-06-02 04:00"), watch_since=ny_epoch("2026-06-01 12:00")) == []
    [incident] = incidents(ny_epoch("2026-06-02 05:30"), watch_since=ny_epoch("2026-06-01 12:00"))
    assert (incident.kind, incident.key) == (MISSING, f"{ny_epoch('2026-06-02 05:00'):.0f}")


def test_it_keeps_a_failure_open_after_resume_until_the_batch_completes(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.fail("enrich", "exit code 3")
    clock.set(ny_epoch("2026-06-01 02:00"))
    tracker.resume()
    [incident] = incidents(ny_epoch("2026-06-01 02:30"))
    assert (incident.kind, incident.key) == (FAILED, batch_id)
    assert "resumed, not yet completed" in incident.summary
    clock.set(ny_epoch("2026-06-01 03:00"))
    tracker.end()
    assert incidents(ny_epoch("2026-06-01 03:30")) == []
    assert check(ny_epoch("2026-06-01 03:30"))[0]


def test_it_keeps_a_failure_open_until_a_later_batch_completes(tracker, clock, incidents):
    failed_id = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.fail("score", "exit code 9")
    start_at(tracker, clock, ny_epoch("2026-06-01 23:00"))  # the next night's batch
    assert [(i.kind, i.key) for i in incidents(ny_epoch("2026-06-02 01:00"))] == [(FAILED, failed_id)]
    clock.set(ny_epoch("2026-06-02 03:00"))
    tracker.end()
    assert incidents(ny_epoch("2026-06-02 03:30")) == []


def test_it_reports_an_unreadable_tracker_as_its_own_incident(tracker_config, tracker_file, check, incidents):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_text("{not json")
    [incident] = incidents(ny_epoch("2026-06-01 03:00"))
    assert (incident.kind, incident.key) == (UNREADABLE, "tracker")
    ok, reason = check(ny_epoch("2026-06-01 03:00"))
    assert not ok and "tracker file unreadable" in reason and str(tracker_file) in reason


def test_it_uses_the_injected_clock_when_no_instant_is_given(tracker, clock, tracker_config):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 06:00"))
    assert not check_batch_completion(config=tracker_config, clock=clock)[0]
    clock.set(ny_epoch("2026-06-01 02:00"))
    assert check_batch_completion(config=tracker_config, clock=clock)[0]


# --------------------------------------------------------------------------- precedence

USUAL_HOUR = 3600.0


def night(batch_id, day, state="completed", *, a=(100.0, "01:00", "02:00"), b=(100.0, "02:00", "03:00"), **extra):
    """A batch of two stages ``a`` and ``b`` started at 01:00 New York on June ``day``.

    Each stage is ``(percentage, first seen HH:MM, last update HH:MM)``; completed at its last update
    when at 100. A completed batch ends at 03:00 (two usual hours)."""

    def at(hhmm):
        return ny_epoch(f"2026-06-{day:02d} {hhmm}")

    def stage(percentage, first, updated):
        done = at(updated) if percentage >= 100 else None
        return {"percentage": percentage, "first_seen_at": at(first), "updated_at": at(updated), "completed_at": done}

    record = {
        "id": batch_id,
        "state": state,
        "started_at": at("01:00"),
        "expected_stages": ["a", "b"],
        "stages": {name: stage(*spec) for name, spec in (("a", a), ("b", b)) if spec is not None},
        "deadline_at": at("05:00"),
        **extra,
    }
    if state == "completed":
        record.update(ended_at=at("03:00"), duration_seconds=2 * USUAL_HOUR)
    return Batch.from_dict(record)


def three_usual_nights():
    return tuple(night(f"n{day}", day) for day in (1, 2, 3))


def test_it_states_which_incident_supersedes_which_in_one_table():
    assert {(rule.winner, rule.loser, rule.continues) for rule in PRECEDENCE} == {
        (LATE, AT_RISK, False),
        (FAILED, STALLED_STAGE, False),
        (LATE, MISSING, True),
        (MISSING, LATE_START, False),
        (LATE, LATE_START, False),
    }


def test_it_drops_a_superseded_incident_and_keeps_the_rest_in_order():
    due = ny_epoch("2026-06-04 05:00")
    late = Incident(LATE, "b1", "late", due, "b1")
    risk_b1, risk_b2 = Incident(AT_RISK, "b1", "", due, "b1"), Incident(AT_RISK, "b2", "", due, "b2")
    stalled = Incident(STALLED_STAGE, "b1:a", "", due - 600, "b1")
    failed = Incident(FAILED, "b1", "failed", due - 60, "b1")
    missing = Incident(MISSING, f"{due:.0f}", "missing", due, None)
    assert apply_precedence([risk_b1, late, risk_b2, risk_b2]) == [late, risk_b2]
    assert apply_precedence([stalled, risk_b2], open_now=[failed]) == [risk_b2]
    assert apply_precedence([missing, late]) == [late]
    assert apply_precedence([risk_b1, risk_b2], open_identities={"late:b1"}) == [risk_b2]
    earlier_night = Incident(MISSING, f"{due - 86_400:.0f}", "missing", due - 86_400, None)
    assert apply_precedence([earlier_night, late]) == [earlier_night, late]


def test_it_says_whether_a_superseded_incident_continues_as_the_winner_or_closes_silently():
    due = ny_epoch("2026-06-04 05:00")
    late = Incident(LATE, "b1", "late", due, "b1")
    winner, rule = superseded_by(Incident(MISSING, f"{due:.0f}", "", due, None), [late])
    assert winner is late and rule.continues  # one alert chain: missing -> late
    winner, rule = superseded_by(Incident(AT_RISK, "b1", "", due, "b1"), [late])
    assert winner is late and not rule.continues  # no recovery: it did not get better
    assert superseded_by(Incident(AT_RISK, "b2", "", due, "b2"), [late]) is None


def test_it_keeps_an_at_risk_warning_closed_while_the_late_alert_is_open_even_before_the_deadline():
    deadline = DailyDeadline(5, 0, NEW_YORK)
    tonight = night("b4", 4, "running", a=(10.0, "01:00", "02:00"), b=None)  # 10 % in an hour: hours late
    snapshot = Snapshot(current=tonight, history=three_usual_nights())
    now = ny_epoch("2026-06-04 02:00")  # a clock stepped back to before the deadline
    assert [w.kind for w in incidents_module.early_warnings(snapshot, now, deadline, 1800)] == [AT_RISK]
    assert incidents_module.early_warnings(snapshot, now, deadline, 1800, frozenset({"late:b4"})) == []


def test_it_does_not_warn_of_a_stalled_stage_while_the_batch_has_an_open_failure():
    deadline = DailyDeadline(5, 0, NEW_YORK)
    failure = {"stage": "a", "reason": "exit 3", "at": ny_epoch("2026-06-04 01:20")}
    resumed = night(
        "b4", 4, "running", a=(50.0, "01:00", "01:10"), b=None, failures=[failure],
        resumed_at=[ny_epoch("2026-06-04 01:30")],
    )  # fmt: skip
    snapshot = Snapshot(current=resumed, history=three_usual_nights())
    now = ny_epoch("2026-06-04 04:00")  # stage a has not moved for 2 h 50 min; it usually takes 1 h
    assert [i.kind for i in incidents_module.open_incidents(snapshot, now, deadline)] == [FAILED]
    assert [w.kind for w in incidents_module.early_warnings(snapshot, now, deadline, 1800)] == [AT_RISK]
    without_failure = Snapshot(current=resumed.replace(failures=()), history=three_usual_nights())
    assert {w.kind for w in incidents_module.early_warnings(without_failure, now, deadline, 1800)} == {
        AT_RISK,
        STALLED_STAGE,
    }
