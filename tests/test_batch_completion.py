"""Steps for tests/features/batch_completion.feature: the library with an injected clock and tmp_path files."""

from __future__ import annotations

import os

import pytest
from helpers import ny_epoch
from pytest_bdd import given, parsers, scenarios, then, when

from utils.batch_tracker import (
    BatchTracker,
    TrackerConfig,
    check_batch_completion,
    get_batch_status,
    load_snapshot,
)

scenarios("batch_completion.feature")


@pytest.fixture
def world(tracker_file, clock) -> dict:
    """What the steps share: the tracker file, the clock and the current config."""
    return {"file": tracker_file, "clock": clock, "config": TrackerConfig(tracker_file=str(tracker_file))}


def local_instant(world, text: str) -> float:
    """``YYYY-MM-DD HH:MM`` in the deadline's zone as a UTC epoch."""
    return ny_epoch(text, world["config"].timezone)


def tracker(world) -> BatchTracker:
    return BatchTracker(world["config"], clock=world["clock"])


def status(world) -> dict:
    return get_batch_status(config=world["config"], clock=world["clock"])


def check_at(world, when_text: str) -> tuple[bool, str]:
    return check_batch_completion(local_instant(world, when_text), config=world["config"])


# --------------------------------------------------------------------------- given


@given(parsers.parse("a tracker with the stages {stages} and a deadline of {hour:d}:{minute:d} {zone}"))
def configured_tracker(world, stages, hour, minute, zone):
    world["config"] = world["config"].replace(
        expected_stages=tuple(s.strip() for s in stages.split(",")),
        deadline_hour=hour,
        deadline_minute=minute,
        timezone=zone,
    )


@given(parsers.parse("a deadline of {hour:d}:{minute:d} {zone}"))
def configured_deadline(world, hour, minute, zone):
    world["config"] = world["config"].replace(deadline_hour=hour, deadline_minute=minute, timezone=zone)


@given("no tracker file exists")
def no_tracker_file(world):
    assert not world["file"].exists()


@given(parsers.parse('the tracker file contains "{content}"'))
def tracker_file_contains(world, content):
    world["file"].parent.mkdir(parents=True, exist_ok=True)
    world["file"].write_text(content)
    world["original"] = world["file"].read_bytes()


# --------------------------------------------------------------------------- when


@given(parsers.parse("a batch starts at {when_text}"))
@when(parsers.parse("a batch starts at {when_text}"))
def batch_starts(world, when_text):
    world["clock"].set(local_instant(world, when_text))
    world["batch_id"] = tracker(world).start()


@when(parsers.parse("at {when_text} stage {stage} reports {percentage:g} percent"))
def stage_reports(world, when_text, stage, percentage):
    world["clock"].set(local_instant(world, when_text))
    tracker(world).stage(stage, percentage)


@given(parsers.parse("at {when_text} the batch ends"))
@when(parsers.parse("at {when_text} the batch ends"))
def batch_ends(world, when_text):
    world["clock"].set(local_instant(world, when_text))
    tracker(world).end()


@when(parsers.parse('at {when_text} the batch fails at stage {stage} with reason "{reason}"'))
def batch_fails(world, when_text, stage, reason):
    world["clock"].set(local_instant(world, when_text))
    tracker(world).fail(stage, reason)


# --------------------------------------------------------------------------- then


@then(parsers.parse("the batch is {state} at {percentage:g} percent complete"))
def batch_state_and_progress(world, state, percentage):
    report = status(world)
    assert (report["id"], report["state"]) == (world["batch_id"], state)
    assert report["completion_percentage"] == pytest.approx(percentage)


@then(parsers.parse("stage {stage} reached 100 percent at {when_text}"))
def stage_reached_100(world, stage, when_text):
    detail = load_snapshot(config=world["config"]).current.stage(stage)
    assert detail.percentage == 100
    assert detail.completed_at == local_instant(world, when_text)


@then(parsers.parse("the batch took {minutes:d} minutes"))
def batch_took(world, minutes):
    assert status(world)["duration_seconds"] == minutes * 60


@then("the batch is on time")
def batch_on_time(world):
    assert status(world)["on_time"] is True


@then(parsers.parse('at {when_text} the check is ok saying "{text}"'))
def check_ok(world, when_text, text):
    ok, reason = check_at(world, when_text)
    assert ok, reason
    assert text in reason


@then(parsers.parse('at {when_text} the check reports a problem mentioning "{text}"'))
def check_problem(world, when_text, text):
    ok, reason = check_at(world, when_text)
    assert not ok, reason
    assert text in reason
    if world.get("batch_id") and "no batch started" not in text:
        assert world["batch_id"] in reason


@then("the status shows no batch and a readable tracker")
def status_empty(world):
    report = status(world)
    assert (report["state"], report["id"]) == ("none", None)
    assert report["tracker"]["readable"] is True
    assert report["tracker"]["recovered_from_corruption"] == []


@then("the tracker file exists")
def tracker_file_exists(world):
    assert world["file"].is_file()


@then("the status reports the tracker as unreadable")
def status_unreadable(world):
    report = status(world)
    assert report["tracker"]["readable"] is False
    assert report["tracker"]["error"]
    assert report["ok"] is False


@then("the tracker file is unchanged")
def tracker_file_unchanged(world):
    assert world["file"].read_bytes() == world["original"]


@then(parsers.parse('the corrupt file was moved aside as "{name}"'))
def moved_aside(world, name):
    moved = world["file"].parent / name
    assert moved.read_bytes() == world["original"]
    assert [n for n in os.listdir(world["file"].parent) if ".corrupt-" in n] == [name]


@then("the status shows the file was recovered from corruption")
def status_recovered(world):
    [event] = status(world)["tracker"]["recovered_from_corruption"]
    assert event["event"] == "corrupt_file_moved_aside"
    assert event["moved_to"].startswith(str(world["file"]) + ".corrupt-")


@then(parsers.parse("the batch's deadline is {utc} UTC and {local} local time"))
def batch_deadline(world, utc, local):
    deadline = status(world)["deadline"]
    assert (deadline["utc"], deadline["local"]) == (utc, local)
