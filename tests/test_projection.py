"""Projection of a running batch (utils.projection) and duration anomalies (utils.incidents early warnings)."""

from __future__ import annotations

import datetime as dt

import pytest

from utils import incidents
from utils import projection as projection_module
from utils.batch_tracker import BatchTracker

STAGES = ("scrape", "enrich", "dedupe", "score", "mockup", "email")
USUAL = {"scrape": 1800, "enrich": 2400, "dedupe": 600, "score": 1200, "mockup": 1500, "email": 900}  # 2 h 20 min
DAY = 86_400
# 2026-11-02 01:00 EST (06:00 UTC): the first night; deadline 05:00 EST = 10:00 UTC.
FIRST_NIGHT = dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def tracker(tracker_config, clock):
    return BatchTracker(tracker_config, clock=clock)


def run_batch(tracker, clock, start, durations=USUAL, upto=None):
    """Run a batch from ``start`` whose stages take ``durations``; stop before stage ``upto``."""
    clock.set(start)
    batch_id = tracker.start(list(STAGES))
    for name in STAGES:
        if name == upto:
            return batch_id
        clock.advance(durations[name])
        tracker.stage(name, 100)
    tracker.end()
    return batch_id


def build_history(tracker, clock, nights=7):
    for night in range(nights):
        run_batch(tracker, clock, FIRST_NIGHT + night * DAY)
    return FIRST_NIGHT + nights * DAY


def test_it_measures_stage_durations_from_the_previous_stage_end(tracker, clock):
    run_batch(tracker, clock, FIRST_NIGHT)
    batch = tracker.snapshot().current
    assert batch.stage_durations() == pytest.approx(USUAL)


def test_it_projects_from_usual_durations_when_stages_report_only_at_the_end(tracker, clock):
    tonight = build_history(tracker, clock)
    run_batch(tracker, clock, tonight, upto="dedupe")  # scrape and enrich done, dedupe running
    clock.advance(100)
    snapshot = tracker.snapshot()
    projection = projection_module.project(snapshot.current, snapshot.history, clock())
    remaining = (USUAL["dedupe"] - 100) + USUAL["score"] + USUAL["mockup"] + USUAL["email"]
    assert projection.remaining_seconds == pytest.approx(remaining)
    assert projection.completion_at == pytest.approx(clock() + remaining)


def test_it_projects_a_stage_in_progress_from_its_own_rate(tracker, clock):
    tonight = build_history(tracker, clock)
    run_batch(tracker, clock, tonight, upto="scrape")
    clock.advance(3000)
    tracker.stage("scrape", 25)  # 25 % after 50 min: 150 min to go on this stage
    snapshot = tracker.snapshot()
    projection = projection_module.project(snapshot.current, snapshot.history, clock())
    rest = sum(USUAL[s] for s in STAGES[1:])
    assert projection.remaining_seconds == pytest.approx(9000 + rest)
    assert projection.slow_stage == "scrape"
    assert projection.slow_stage_usual == pytest.approx(USUAL["scrape"])


def test_it_cannot_project_without_history(tracker, clock):
    run_batch(tracker, clock, FIRST_NIGHT, upto="enrich")
    snapshot = tracker.snapshot()
    assert projection_module.project(snapshot.current, snapshot.history, clock()) is None
    assert incidents.early_warnings(snapshot, clock(), tracker.config.deadline(), 1800) == []


def test_it_warns_at_risk_only_past_the_margin_and_clears_back_within_the_deadline(tracker, clock):
    deadline = tracker.config.deadline()
    tonight = build_history(tracker, clock)
    run_batch(tracker, clock, tonight, upto="scrape")
    # Deadline 10:00 UTC, start 06:00 UTC: 4 h for a 2 h 20 min batch.
    clock.advance(60 * 60)
    tracker.stage("scrape", 30)  # 60 min for 30 %: scrape needs 140 min more: finish ~ 11:10 UTC
    snapshot = tracker.snapshot()
    assert incidents.early_warnings(snapshot, clock(), deadline, margin_seconds=2 * 3600) == []
    warnings = incidents.early_warnings(snapshot, clock(), deadline, margin_seconds=1800)
    assert [w.kind for w in warnings] == ["at_risk"]
    assert "slow stage scrape" in warnings[0].summary and "usually 30 min" in warnings[0].summary

    clock.advance(10 * 60)
    tracker.stage("scrape", 50)  # catching up: finish ~ 10:10 UTC, 10 min over, inside the margin
    snapshot = tracker.snapshot()
    assert incidents.early_warnings(snapshot, clock(), deadline, 1800) == []
    still_open = incidents.early_warnings(snapshot, clock(), deadline, 1800, already_open={warnings[0].identity})
    assert [w.kind for w in still_open] == ["at_risk"], "hysteresis: open until back within the deadline"

    clock.advance(10 * 60)
    tracker.stage("scrape", 95)
    snapshot = tracker.snapshot()
    assert incidents.early_warnings(snapshot, clock(), deadline, 1800, already_open={warnings[0].identity}) == []


def test_it_reports_a_stalled_stage_until_it_moves(tracker, clock):
    deadline = tracker.config.deadline()
    tonight = build_history(tracker, clock)
    run_batch(tracker, clock, tonight, upto="dedupe")
    clock.advance(USUAL["dedupe"] * 1.4)
    assert incidents.early_warnings(tracker.snapshot(), clock(), deadline, 10 * 3600) == []
    clock.advance(USUAL["dedupe"] * 0.2)
    stalled = incidents.early_warnings(tracker.snapshot(), clock(), deadline, 10 * 3600)
    assert [(w.kind, w.key) for w in stalled] == [("stalled_stage", f"{tracker.snapshot().current.id}:dedupe")]
    tracker.stage("dedupe", 10)
    assert incidents.early_warnings(tracker.snapshot(), clock(), deadline, 10 * 3600) == []


def test_it_flags_a_batch_that_finished_far_too_fast_until_a_normal_one_completes(tracker, clock):
    deadline = tracker.config.deadline()
    tonight = build_history(tracker, clock)
    empty_night = run_batch(tracker, clock, tonight, durations=dict.fromkeys(STAGES, 30))
    warnings = incidents.early_warnings(tracker.snapshot(), clock(), deadline, 1800)
    assert [(w.kind, w.key) for w in warnings] == [("too_short", empty_night)]
    assert "probably did nothing" in warnings[0].summary
    run_batch(tracker, clock, tonight + DAY)
    assert incidents.early_warnings(tracker.snapshot(), clock(), deadline, 1800) == []


def test_it_adds_the_projection_to_the_status_report(tracker, clock):
    from utils.batch_tracker import get_batch_status

    tonight = build_history(tracker, clock)
    run_batch(tracker, clock, tonight, upto="score")
    status = get_batch_status(path=tracker.path, clock=clock, config=tracker.config)
    projection = status["projection"]
    assert projection["projected_completion_utc"].endswith("+00:00")
    assert projection["seconds_past_deadline"] < 0
