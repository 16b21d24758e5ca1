"""Replay four recorded weeks of nights (tests/fixtures/replay_history.json) through the tracker.

The early warning must fire hours before the deadline on the slow night and never
on a normal night; the empty night must be flagged as too short.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils import incidents
from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.projection import batch_deadline

pytestmark = pytest.mark.slow  # the module fixture replays four weeks of nights (~5-15 s)

FIXTURE = Path(__file__).parent / "fixtures" / "replay_history.json"
TICK = 300  # the monitor's default check interval
MARGIN = 1800  # BATCH_AT_RISK_MARGIN_SECONDS default


def replay(tracker, clock, night, on_tick):
    """Apply a night's events in time order, calling ``on_tick(now)`` every TICK seconds in between."""
    events = night["events"]
    moment = events[0]["at"]
    for event in events:
        while moment + TICK < event["at"]:
            moment += TICK
            clock.set(moment)
            on_tick(moment)
        clock.set(event["at"])
        moment = event["at"]
        if event["event"] == "start":
            tracker.start(event["stages"])
        elif event["event"] == "stage":
            tracker.stage(event["stage"], event["percentage"])
        else:
            tracker.end()
        on_tick(moment)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Every night replayed once; returns per-night findings."""
    from conftest import FakeClock

    recorded = json.loads(FIXTURE.read_text())
    clock = FakeClock()
    config = TrackerConfig(tracker_file=str(tmp_path_factory.mktemp("replay") / "batch_tracker.json"))
    tracker = BatchTracker(config, clock=clock)
    deadline = config.deadline()
    findings = []
    for night in recorded["nights"]:
        seen: dict[str, float] = {}
        open_now: set[str] = set()

        def on_tick(now, seen=seen, open_now=open_now):
            snapshot = tracker.snapshot()
            warnings = incidents.early_warnings(snapshot, now, deadline, MARGIN, frozenset(open_now))
            open_now.clear()
            for warning in warnings:
                open_now.add(warning.identity)
                if warning.batch_id == snapshot.current.id:  # not last night's, still open
                    seen.setdefault(warning.kind, now)

        replay(tracker, clock, night, on_tick)
        batch = tracker.snapshot().current
        findings.append(
            {
                "kind": night["kind"],
                "first_seen": seen,
                "deadline": batch_deadline(batch, deadline),
                "ended_at": batch.ended_at,
            }
        )
    return findings


def test_it_replays_a_realistic_history(replayed):
    kinds = [night["kind"] for night in replayed]
    assert kinds.count("normal") >= 20 and kinds.count("slow") == 1 and kinds.count("empty") == 1


def test_it_warns_hours_ahead_on_the_slow_night(replayed):
    slow = next(night for night in replayed if night["kind"] == "slow")
    assert slow["ended_at"] > slow["deadline"], "the slow night really misses its deadline"
    warned_at = slow["first_seen"]["at_risk"]
    assert slow["deadline"] - warned_at >= 2 * 3600


def test_it_never_warns_on_a_normal_night(replayed):
    for night in replayed:
        if night["kind"] == "normal":
            assert night["ended_at"] <= night["deadline"]
            assert night["first_seen"] == {}, night


def test_it_flags_the_empty_night_as_too_short(replayed):
    empty = next(night for night in replayed if night["kind"] == "empty")
    assert "too_short" in empty["first_seen"]
    assert "at_risk" not in empty["first_seen"]
