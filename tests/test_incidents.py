"""utils.batch_health via check_batch_completion / get_batch_status: on time, late, failed, missing, unreadable."""

from __future__ import annotations

import datetime as dt

import pytest
import pytz

from utils import deadline, projection
from utils import incidents as incidents_module
from utils.batch_tracker import BatchTracker, check_batch_completion, get_batch_status, load_snapshot
from utils.incidents import LATE, MISSING, UNREADABLE
from utils.model import FAILED

NEW_YORK = pytz.timezone("America/New_York")


def ny(day, hour, minute=0, second=0, month=6) -> float:
    """Epoch of a local New York wall time in 2026 (June by default: EDT)."""
    return NEW_YORK.localize(dt.datetime(2026, month, day, hour, minute, second), is_dst=None).timestamp()


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


def start_at(tracker, clock, instant, stages=None) -> str:
    clock.set(instant)
    return tracker.start(stages)


def test_it_is_ok_while_a_batch_runs_before_its_deadline(tracker, clock, check):
    batch_id = start_at(tracker, clock, ny(1, 1, 0))
    tracker.stage("scrape", 100)
    ok, reason = check(ny(1, 4, 0))
    assert ok
    assert batch_id in reason and "running" in reason and "33%" in reason and "1 h 00 min" in reason


def test_it_is_late_once_the_deadline_passes_naming_the_batch_and_how_late(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny(1, 1, 0))
    assert check(ny(1, 4, 59, 59))[0]
    ok, reason = check(ny(1, 5, 20))
    assert not ok
    assert batch_id in reason and "missed its deadline" in reason and "20 min" in reason
    assert "2026-06-01 05:00 EDT" in reason
    [incident] = incidents(ny(1, 5, 20))
    assert (incident.kind, incident.key, incident.since) == (LATE, batch_id, ny(1, 5, 0))


def test_it_reports_a_failure_naming_the_stage_and_reason(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 2, 0))
    tracker.fail("enrich", "exit code 3")
    ok, reason = check(ny(1, 2, 5))
    assert not ok
    assert batch_id in reason and "enrich" in reason and "exit code 3" in reason
    [incident] = incidents(ny(1, 2, 5))
    assert (incident.kind, incident.key, incident.since) == (FAILED, batch_id, ny(1, 2, 0))


def test_it_reports_a_failed_batch_past_its_deadline_as_late_and_failed(tracker, clock, incidents):
    start_at(tracker, clock, ny(1, 1, 0))
    tracker.fail("score", "exit code 1")
    assert {i.kind for i in incidents(ny(1, 6, 0))} == {LATE, FAILED}


def test_it_is_not_ok_when_the_batch_completed_late_saying_how_late(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 5, 45))
    tracker.end()
    ok, reason = check(ny(1, 6, 0))
    assert not ok
    assert batch_id in reason and "45 min late" in reason
    assert incidents(ny(1, 6, 0)) == []  # the late incident has cleared; the verdict stays
    assert get_batch_status(ny(1, 6, 0), config=tracker.config)["on_time"] is False


def test_it_is_ok_when_the_batch_completed_on_time(tracker, clock, check):
    batch_id = start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 4, 0))
    tracker.end()
    for now in (ny(1, 4, 30), ny(1, 5, 0), ny(1, 23, 0)):
        ok, reason = check(now)
        assert ok, reason
        assert batch_id in reason and "on time" in reason and "1 h 00 min before" in reason
    assert get_batch_status(ny(1, 6, 0), config=tracker.config)["on_time"] is True


def test_it_counts_completion_exactly_at_the_deadline_as_on_time(tracker, clock, check):
    start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 5, 0))
    tracker.end()
    assert check(ny(1, 5, 1))[0]


def test_it_reports_a_missing_batch_keyed_by_the_deadline_instant(tracker, clock, check, incidents):
    start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 3, 0))
    tracker.end()
    assert check(ny(2, 4, 59))[0]
    ok, reason = check(ny(2, 5, 0, 1))
    assert not ok
    assert "no batch started before the deadline 2026-06-02 05:00 EDT" in reason
    [incident] = incidents(ny(2, 5, 0, 1))
    assert (incident.kind, incident.key, incident.batch_id) == (MISSING, f"{ny(2, 5, 0):.0f}", None)


def test_it_reports_every_missed_night_since_the_last_batch(tracker, clock, incidents):
    start_at(tracker, clock, ny(1, 1, 0))
    tracker.end()
    found = incidents(ny(4, 6, 0))
    assert [(i.kind, i.key) for i in found] == [(MISSING, f"{ny(d, 5, 0):.0f}") for d in (2, 3, 4)]


def test_it_turns_a_missing_night_into_a_late_batch_once_a_batch_starts(tracker, clock, check, incidents):
    start_at(tracker, clock, ny(1, 1, 0))
    tracker.end()
    assert not check(ny(2, 6, 0))[0]
    late = start_at(tracker, clock, ny(2, 6, 0))  # late start: it answers the missed 05:00 deadline
    assert load_snapshot(config=tracker.config).current["deadline_at"] == ny(2, 5, 0)
    found = incidents(ny(2, 7, 0))
    assert [(i.kind, i.key, i.since) for i in found] == [(LATE, late, ny(2, 5, 0))]
    ok, reason = check(ny(2, 7, 0))
    assert not ok and "missed its deadline 2026-06-02 05:00 EDT by 2 h 00 min" in reason, reason
    clock.set(ny(2, 16, 0))
    tracker.end()
    ok, reason = check(ny(2, 17, 0))
    assert not ok and reason.startswith(f"batch {late} completed 11 h 00 min late"), reason
    assert check(ny(3, 4, 0))[0] is False  # still judged by the missed night, not by the 3rd's deadline
    assert incidents(ny(3, 4, 0)) == []
    assert [i.kind for i in incidents(ny(3, 5, 0, 1))] == []  # the 3rd's window holds its start: not missing


def test_it_gives_a_late_start_after_a_covered_night_the_next_deadline(tracker, clock, check):
    start_at(tracker, clock, ny(2, 1, 0))
    clock.set(ny(2, 4, 0))
    tracker.end()
    second = start_at(tracker, clock, ny(2, 6, 0))  # the 2nd's deadline had its batch: a re-run for the 3rd
    assert load_snapshot(config=tracker.config).current["deadline_at"] == ny(3, 5, 0)
    ok, reason = check(ny(2, 7, 0))
    assert ok and second in reason, reason


def test_it_gives_a_first_batch_ever_the_next_deadline(tracker, clock, check):
    start_at(tracker, clock, ny(2, 12, 0))  # installed and run at noon: nothing was expected this morning
    assert load_snapshot(config=tracker.config).current["deadline_at"] == ny(3, 5, 0)
    assert check(ny(2, 13, 0))[0]


def test_it_does_not_call_a_batch_started_exactly_at_a_deadline_missing_for_its_own_deadline(tracker, clock, check):
    # Its deadline is the next day's 05:00 (strictly after the start), so that night is covered.
    start_at(tracker, clock, ny(1, 5, 0))
    clock.set(ny(1, 7, 0))
    tracker.end()
    ok, reason = check(ny(2, 5, 0, 1))
    assert ok, reason
    assert not check(ny(3, 5, 0, 1))[0]  # the night after is missing again


def test_it_ignores_deadlines_before_watch_since(tracker, clock, incidents):
    start_at(tracker, clock, ny(1, 1, 0))
    tracker.end()
    found = incidents(ny(5, 6, 0), watch_since=ny(3, 12, 0))
    assert [i.key for i in found] == [f"{ny(d, 5, 0):.0f}" for d in (4, 5)]


def test_it_counts_only_deadlines_after_watch_since_on_a_fresh_tracker(incidents):
    assert incidents(ny(2, 4, 0), watch_since=ny(1, 12, 0)) == []
    [incident] = incidents(ny(2, 5, 30), watch_since=ny(1, 12, 0))
    assert (incident.kind, incident.key) == (MISSING, f"{ny(2, 5, 0):.0f}")


def test_it_keeps_a_failure_open_after_resume_until_the_batch_completes(tracker, clock, check, incidents):
    batch_id = start_at(tracker, clock, ny(1, 1, 0))
    tracker.fail("enrich", "exit code 3")
    clock.set(ny(1, 2, 0))
    tracker.resume()
    [incident] = incidents(ny(1, 2, 30))
    assert (incident.kind, incident.key) == (FAILED, batch_id)
    assert "resumed, not yet completed" in incident.summary
    clock.set(ny(1, 3, 0))
    tracker.end()
    assert incidents(ny(1, 3, 30)) == []
    assert check(ny(1, 3, 30))[0]


def test_it_keeps_a_failure_open_until_a_later_batch_completes(tracker, clock, incidents):
    failed_id = start_at(tracker, clock, ny(1, 1, 0))
    tracker.fail("score", "exit code 9")
    start_at(tracker, clock, ny(1, 23, 0))  # the next night's batch
    assert [(i.kind, i.key) for i in incidents(ny(2, 1, 0))] == [(FAILED, failed_id)]
    clock.set(ny(2, 3, 0))
    tracker.end()
    assert incidents(ny(2, 3, 30)) == []


def test_it_reports_an_unreadable_tracker_as_its_own_incident(tracker_config, tracker_file, check, incidents):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_text("{not json")
    [incident] = incidents(ny(1, 3, 0))
    assert (incident.kind, incident.key) == (UNREADABLE, "tracker")
    ok, reason = check(ny(1, 3, 0))
    assert not ok and "tracker file unreadable" in reason and str(tracker_file) in reason


def test_it_uses_the_injected_clock_when_no_instant_is_given(tracker, clock, tracker_config):
    start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 6, 0))
    assert not check_batch_completion(config=tracker_config, clock=clock)[0]
    clock.set(ny(1, 2, 0))
    assert check_batch_completion(config=tracker_config, clock=clock)[0]


# --------------------------------------------------------------------------- status report


def test_it_reports_deadline_times_in_utc_and_local_with_offsets(tracker, clock):
    start_at(tracker, clock, ny(1, 1, 0))
    status = get_batch_status(ny(1, 2, 0), config=tracker.config)
    assert status["started_at"] == "2026-06-01T05:00:00+00:00"
    assert status["deadline"]["utc"] == "2026-06-01T09:00:00+00:00"
    assert status["deadline"]["local"] == "2026-06-01T05:00:00-04:00"
    assert status["deadline"]["timezone"] == "America/New_York"
    assert status["deadline"]["seconds_left"] == 3 * 3600
    assert status["elapsed_seconds"] == 3600
    assert status["on_time"] is None  # still undecided


def test_it_reports_the_deadline_of_a_batch_on_the_fall_back_night(tracker, clock):
    start_at(tracker, clock, ny(31, 22, 0, month=10))
    status = get_batch_status(ny(31, 23, 0, month=10), config=tracker.config)
    assert status["deadline"]["utc"] == "2026-11-01T10:00:00+00:00"
    assert status["deadline"]["local"] == "2026-11-01T05:00:00-05:00"


def test_it_summarises_recent_history(tracker, clock):
    on_time = start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 3, 0))
    tracker.end()
    failed = start_at(tracker, clock, ny(2, 1, 0))
    tracker.fail("score", "exit 1")
    abandoned = start_at(tracker, clock, ny(3, 1, 0))
    late = start_at(tracker, clock, ny(3, 1, 30))
    clock.set(ny(3, 6, 30))
    tracker.end()
    start_at(tracker, clock, ny(4, 1, 0))
    history = get_batch_status(ny(4, 2, 0), config=tracker.config)["history"]
    assert [b["id"] for b in history["recent"]] == [late, abandoned, failed, on_time]
    assert (history["count"], history["completed"], history["failed"], history["abandoned"]) == (4, 2, 1, 1)
    assert history["on_time_rate"] == round(1 / 3, 4)  # on time / (completed + failed)
    assert history["median_duration_seconds"] == (2 * 3600 + 5 * 3600) / 2
    assert [b["on_time"] for b in history["recent"]] == [False, False, False, True]


def test_it_names_the_active_stage_the_one_to_look_at(tracker, clock):
    start_at(tracker, clock, ny(1, 1, 0))
    tracker.stage("scrape", 100)
    assert get_batch_status(ny(1, 2, 0), config=tracker.config)["active_stage"] == "enrich"
    clock.advance(60)
    tracker.stage("enrich", 30)
    assert get_batch_status(ny(1, 2, 0), config=tracker.config)["active_stage"] == "enrich"
    tracker.fail("enrich", "boom")
    assert get_batch_status(ny(1, 2, 0), config=tracker.config)["active_stage"] == "enrich"


def test_it_times_a_stage_reported_only_at_100_from_the_end_of_the_one_before(tracker, clock):
    start_at(tracker, clock, ny(1, 1, 0))
    clock.set(ny(1, 1, 30))
    tracker.stage("scrape", 100)  # the runner's way: one record, at the end
    clock.set(ny(1, 2, 15))
    tracker.stage("enrich", 100)
    clock.set(ny(1, 2, 20))
    tracker.stage("score", 40)
    stages = {s["name"]: s for s in get_batch_status(ny(1, 2, 30), config=tracker.config)["stages"]}
    assert stages["scrape"]["duration_seconds"] == 30 * 60
    assert stages["enrich"]["duration_seconds"] == 45 * 60
    assert stages["score"]["duration_seconds"] is None  # unfinished


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h 00 min"),
        (-5400, "1 h 30 min"),
        (47 * 3600 + 59 * 60, "47 h 59 min"),
        (48 * 3600, "2 d 0 h"),
        (100 * 3600, "4 d 4 h"),
    ],
)
def test_it_formats_durations_for_people(seconds, text):
    assert deadline.format_duration(seconds) == text


def test_it_averages_completion_over_the_expected_stages_or_those_seen():
    declared = {"state": "running", "expected_stages": ["a", "b"], "stages": {"a": {"percentage": 50.0}}}
    assert projection.overall_percentage(declared) == 25.0
    undeclared = {"state": "running", "expected_stages": [], "stages": {"a": {"percentage": 50.0}}}
    assert projection.overall_percentage(undeclared) == 50.0
    assert projection.overall_percentage({"state": "running", "expected_stages": [], "stages": {}}) == 0.0
    assert projection.overall_percentage({"state": "completed", "expected_stages": ["a"], "stages": {}}) == 100.0
