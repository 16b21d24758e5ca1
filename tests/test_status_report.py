"""utils.status_report via get_batch_status: deadline times, history summary, stages, active stage, completion."""

from __future__ import annotations

import pytest
from helpers import NEW_YORK, ny_epoch, start_at

from utils import status_report
from utils.batch_tracker import BatchTracker, get_batch_status
from utils.deadline import DailyDeadline
from utils.model import Batch


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


def test_it_reports_deadline_times_in_utc_and_local_with_offsets(tracker, clock):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    status = get_batch_status(ny_epoch("2026-06-01 02:00"), config=tracker.config)
    assert status["started_at"] == "2026-06-01T05:00:00+00:00"
    assert status["deadline"]["utc"] == "2026-06-01T09:00:00+00:00"
    assert status["deadline"]["local"] == "2026-06-01T05:00:00-04:00"
    assert status["deadline"]["timezone"] == "America/New_York"
    assert status["deadline"]["seconds_left"] == 3 * 3600
    assert status["elapsed_seconds"] == 3600
    assert status["on_time"] is None  # still undecided


def test_it_reports_the_deadline_of_a_batch_on_the_fall_back_night(tracker, clock):
    start_at(tracker, clock, ny_epoch("2026-10-31 22:00"))
    status = get_batch_status(ny_epoch("2026-10-31 23:00"), config=tracker.config)
    assert status["deadline"]["utc"] == "2026-11-01T10:00:00+00:00"
    assert status["deadline"]["local"] == "2026-11-01T05:00:00-05:00"


def test_it_summarises_recent_history(tracker, clock):
    on_time = start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 03:00"))
    tracker.end()
    failed = start_at(tracker, clock, ny_epoch("2026-06-02 01:00"))
    tracker.fail("score", "exit 1")
    abandoned = start_at(tracker, clock, ny_epoch("2026-06-03 01:00"))
    late = start_at(tracker, clock, ny_epoch("2026-06-03 01:30"))
    clock.set(ny_epoch("2026-06-03 06:30"))
    tracker.end()
    start_at(tracker, clock, ny_epoch("2026-06-04 01:00"))
    history = get_batch_status(ny_epoch("2026-06-04 02:00"), config=tracker.config)["history"]
    assert [b["id"] for b in history["recent"]] == [late, abandoned, failed, on_time]
    assert (history["count"], history["completed"], history["failed"], history["abandoned"]) == (4, 2, 1, 1)
    assert history["on_time_rate"] == round(1 / 3, 4)  # on time / (completed + failed)
    assert history["median_duration_seconds"] == (2 * 3600 + 5 * 3600) / 2
    assert [b["on_time"] for b in history["recent"]] == [False, False, False, True]


def test_it_names_the_active_stage_the_one_to_look_at(tracker, clock):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    tracker.stage("scrape", 100)
    assert get_batch_status(ny_epoch("2026-06-01 02:00"), config=tracker.config)["active_stage"] == "enrich"
    clock.advance(60)
    tracker.stage("enrich", 30)
    assert get_batch_status(ny_epoch("2026-06-01 02:00"), config=tracker.config)["active_stage"] == "enrich"
    tracker.fail("enrich", "boom")
    assert get_batch_status(ny_epoch("2026-06-01 02:00"), config=tracker.config)["active_stage"] == "enrich"


def test_it_times_a_stage_reported_only_at_100_from_the_end_of_the_one_before(tracker, clock):
    start_at(tracker, clock, ny_epoch("2026-06-01 01:00"))
    clock.set(ny_epoch("2026-06-01 01:30"))
    tracker.stage("scrape", 100)  # the runner's way: one record, at the end
    clock.set(ny_epoch("2026-06-01 02:15"))
    tracker.stage("enrich", 100)
    clock.set(ny_epoch("2026-06-01 02:20"))
    tracker.stage("score", 40)
    stages = {s["name"]: s for s in get_batch_status(ny_epoch("2026-06-01 02:30"), config=tracker.config)["stages"]}
    assert stages["scrape"]["duration_seconds"] == 30 * 60
    assert stages["enrich"]["duration_seconds"] == 45 * 60
    assert stages["score"]["duration_seconds"] is None  # unfinished


def test_it_averages_completion_over_the_expected_stages_or_those_seen():
    def batch(state, expected, stages):
        return Batch.from_dict(
            {
                "id": "b1",
                "state": state,
                "started_at": 0.0,
                "expected_stages": expected,
                "stages": {n: {"percentage": p, "first_seen_at": 1.0, "updated_at": 1.0} for n, p in stages.items()},
                "failure": {"stage": "a", "reason": "x", "at": 2.0} if state == "failed" else None,
            }
        )

    declared = batch("running", ["a", "b"], {"a": 50.0})
    assert declared.overall_percentage() == 25.0
    undeclared = batch("running", [], {"a": 50.0})
    assert undeclared.overall_percentage() == 50.0
    assert batch("running", [], {}).overall_percentage() == 0.0
    assert batch("completed", ["a"], {}).overall_percentage() == 100.0
    deadline = DailyDeadline(5, 0, NEW_YORK)
    assert status_report.summarize_batch(declared, deadline, 1.0)["completion_percentage"] == 25.0
