"""utils.tracker_views: the status, history and check commands, rendered and as a real subprocess."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_tracker_cli

from utils import tracker_views
from utils.batch_tracker import BatchTracker, TrackerConfig, get_batch_status

ANSI = re.compile(r"\x1b\[[0-9;]*m")

DOCUMENTED_STATUS_KEYS = {
    "id",
    "state",
    "started_at",
    "ended_at",
    "deadline",
    "completion_percentage",
    "stages",
    "on_time",
    "history",
    "tracker",
    "ok",
    "reason",
    "next_deadline",
    "open_incidents",
}


def cli(env, *args):
    return run_tracker_cli(env, *args)


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("percentage", "bar"),
    [
        (0, "[" + "-" * 24 + "]"),
        (50, "[" + "#" * 12 + "-" * 12 + "]"),
        (100, "[" + "#" * 24 + "]"),
        (-5, "[" + "-" * 24 + "]"),
        (250, "[" + "#" * 24 + "]"),
    ],
)
def test_it_draws_a_fixed_width_progress_bar(percentage, bar):
    assert tracker_views.progress_bar(percentage) == bar


def test_it_renders_each_stage_with_a_bar_and_marks_the_active_one(tracker, clock):
    tracker.start()
    tracker.stage("scrape", 100)
    clock.advance(60)
    tracker.stage("enrich", 50)
    text = tracker_views.render_status(get_batch_status(config=tracker.config, clock=clock))
    lines = text.splitlines()
    assert lines[0].startswith("OK: ")
    scrape = next(line for line in lines if "scrape" in line)
    enrich = next(line for line in lines if " enrich " in line)
    score = next(line for line in lines if " score " in line)
    assert "[" + "#" * 24 + "]" in scrape and "100.0%" in scrape
    assert enrich.startswith("*") and "[" + "#" * 12 + "-" * 12 + "]" in enrich and "50.0%" in enrich
    assert "not started" in score and "0.0%" in score
    assert "50% complete" in text
    assert not ANSI.search(text)


def test_it_colours_the_view_only_when_asked(tracker, clock):
    tracker.start()
    status = get_batch_status(config=tracker.config, clock=clock)
    coloured = tracker_views.render_status(status, colour=True)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == tracker_views.render_status(status, colour=False)


def test_it_renders_a_failure_and_the_note_about_a_repaired_file(tracker, tracker_file, clock):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_text("garbage")
    tracker.start()
    tracker.fail("enrich", "exit code 3")
    text = tracker_views.render_status(get_batch_status(config=tracker.config, clock=clock))
    assert text.startswith("PROBLEM: ")
    assert "failed at stage enrich: exit code 3" in text
    assert "corrupt tracker file was moved aside to" in text and ".corrupt-" in text


def test_it_renders_an_unreadable_tracker_and_an_empty_one(tracker_config, tracker_file, clock):
    empty = tracker_views.render_status(get_batch_status(config=tracker_config, clock=clock))
    assert "next deadline:" in empty
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_text("[]")
    text = tracker_views.render_status(get_batch_status(config=tracker_config, clock=clock))
    assert text.startswith("PROBLEM: ") and "tracker unreadable:" in text


def test_it_renders_history_rows_or_says_there_is_none():
    assert tracker_views.render_history([]) == "no batches recorded\n"
    row = {"id": "b1", "state": "completed", "started_at": "2026-06-01T05:00:00+00:00"}
    text = tracker_views.render_history([dict(row, duration_seconds=7200, on_time=True)], zone="America/New_York")
    assert "b1" in text and "completed" in text and "2 h 00 min" in text and "on time" in text
    assert "2026-06-01 01:00 EDT" in text and "+00:00" not in text
    late = tracker_views.render_history([dict(row, duration_seconds=None, on_time=False)])
    assert "LATE" in late


# --------------------------------------------------------------------------- CLI (real subprocess)


def test_it_prints_the_status_as_json_with_the_documented_keys(base_env, tracker_file):
    config = TrackerConfig(tracker_file=str(tracker_file), expected_stages=("scrape", "enrich"))
    tracker = BatchTracker(config)
    batch_id = tracker.start()
    tracker.stage("scrape", 100)
    result = cli(base_env, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert DOCUMENTED_STATUS_KEYS <= set(status)
    assert (status["id"], status["state"], status["completion_percentage"]) == (batch_id, "running", 50.0)
    assert {"utc", "local", "timezone"} <= set(status["deadline"])
    assert status["deadline"]["utc"].endswith("+00:00")
    assert re.search(r"[+-]\d\d:\d\d$", status["deadline"]["local"])
    assert status["started_at"].endswith("+00:00")
    assert [s["name"] for s in status["stages"]] == ["scrape", "enrich"]
    assert status["tracker"]["readable"] is True
    assert status["tracker"]["path"] == str(tracker_file)


def test_it_prints_a_status_with_a_progress_bar_per_stage(base_env, tracker_file):
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)))
    tracker.start(["scrape", "enrich", "score"])
    tracker.stage("scrape", 100)
    tracker.stage("enrich", 25)
    result = cli(base_env, "status")
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stdout)  # not a terminal
    bars = {name: line for line in result.stdout.splitlines() for name in ("scrape", "enrich", "score") if name in line}
    assert "[" + "#" * 24 + "]" in bars["scrape"]
    assert "[" + "#" * 6 + "-" * 18 + "]" in bars["enrich"]
    assert "[" + "-" * 24 + "]" in bars["score"]
    coloured = cli(base_env, "status", "--color")
    assert ANSI.search(coloured.stdout)


def test_it_prints_a_status_for_a_tracker_with_no_batch(base_env, tracker_file):
    result = cli(base_env, "status", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["state"] == "none"
    assert not tracker_file.exists()


def test_it_lists_past_batches_newest_first(base_env, tracker_file):
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)))
    ids = []
    for night in range(3):
        ids.append(tracker.start(batch_id=f"night-{night}"))
        tracker.end()
    text = cli(base_env, "history")
    assert text.returncode == 0, text.stderr
    rows = [line for line in text.stdout.splitlines() if line.strip().startswith("night-")]
    assert [row.split()[0] for row in rows] == ids[::-1]
    listed = json.loads(cli(base_env, "history", "--json", "--limit", "2").stdout)
    assert [b["id"] for b in listed] == ["night-2", "night-1"]
    assert {"id", "state", "started_at", "duration_seconds", "on_time"} <= set(listed[0])


@pytest.mark.parametrize("limit", ["0", "abc"])
def test_it_refuses_a_bad_history_limit_with_exit_2(base_env, limit):
    result = cli(base_env, "history", "--limit", limit)
    assert result.returncode == 2
    assert f"--limit {limit}" in result.stderr or repr(limit) in result.stderr


def test_it_refuses_stray_arguments_to_the_views(base_env):
    for args in (["status", "extra"], ["check", "--json"], ["history", "--all"]):
        result = cli(base_env, *args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1


def test_it_shows_a_corrupt_file_in_status_without_touching_it(base_env, tracker_file):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_bytes(b'{"schema_version": 1, "current": [')
    result = cli(base_env, "status", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["tracker"]["readable"] is False
    check = cli(base_env, "check")
    assert check.returncode == 1 and "tracker file unreadable" in check.stdout
    assert tracker_file.read_bytes() == b'{"schema_version": 1, "current": ['


# --------------------------------------------------------------------------- field trial (issues 10.10, 11.11)

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d|[+-]\d\d:\d\d\b|\bUTC\b")
HUMAN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d (EST|EDT)\b")


def test_it_shows_every_human_time_in_the_deadline_zone_with_its_abbreviation(tracker, tracker_file, clock):
    # 1_700_000_000 is 2023-11-14 22:13:20 UTC, 17:13 in New York (EST).
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_text("garbage")  # so the "moved aside" note, with its time, is shown too
    tracker.start(batch_id="b1")
    tracker.end()
    clock.advance(3600)
    tracker.start(batch_id="b2")
    tracker.stage("scrape", 40)
    text = tracker_views.render_status(get_batch_status(config=tracker.config, clock=clock))

    assert "started 2023-11-14 18:13 EST  elapsed 0 s" in text
    assert "deadline 2023-11-15 05:00 EST, in 10 h 46 min" in text
    assert "at 2023-11-14 17:13 EST" in text  # the repaired-file note
    scrape = next(line for line in text.splitlines() if " scrape " in line)
    assert scrape.endswith("2023-11-14 18:13 EST")
    b1 = next(line for line in text.splitlines() if line.strip().startswith("b1"))
    assert "2023-11-14 17:13 EST" in b1
    assert not ISO_TIME.search(text), text

    idle = TrackerConfig(tracker_file=str(tracker_file.with_name("other.json")), timezone="Europe/Berlin")
    assert "next deadline: 2023-11-15 05:00 CET" in tracker_views.render_status(
        get_batch_status(config=idle, clock=clock)
    )


def test_it_prints_local_times_in_the_cli_and_keeps_utc_iso_in_json(base_env, tracker_file):
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)))
    tracker.start(["scrape"], batch_id="b1")
    tracker.stage("scrape", 100)
    tracker.end()
    tracker.start(["scrape"], batch_id="b2")

    status, history, check = (cli(base_env, command).stdout for command in ("status", "history", "check"))

    for text in (status, history, check):
        assert not ISO_TIME.search(text), text
        assert HUMAN_TIME.search(text), text
    assert "started (UTC)" not in history
    listed = json.loads(cli(base_env, "history", "--json").stdout)
    assert all(b["started_at"].endswith("+00:00") and "T" in b["started_at"] for b in listed)
    assert json.loads(cli(base_env, "status", "--json").stdout)["started_at"].endswith("+00:00")


def test_it_escapes_control_characters_it_finds_in_the_state_file(base_env, tracker_file):
    # A file written by an older release (or by hand) can hold raw control characters.
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)))
    tracker.start(["scrape"], batch_id="b1")
    tracker.fail("scrape", "placeholder")
    document = json.loads(tracker_file.read_text())
    raw_reason = "exit 3\nMAINPID=1\r\x1b[2J\x1b]0;owned\x07"
    document["current"]["id"] = "b1\x1b[31m"
    document["current"]["failure"]["reason"] = raw_reason
    document["current"]["failures"][-1]["reason"] = raw_reason
    tracker_file.write_text(json.dumps(document))

    for command in ("status", "check", "history"):
        result = cli(base_env, command)
        assert result.returncode in (0, 1), result.stderr
        assert not any(ch in result.stdout for ch in "\x1b\r\x07"), (command, result.stdout)
        assert not any(line.startswith("MAINPID") for line in result.stdout.splitlines()), command
    status = cli(base_env, "status").stdout
    assert "failed at stage scrape: exit 3\\x0aMAINPID=1\\x0d\\x1b[2J\\x1b]0;owned\\x07" in status
    assert "batch b1\\x1b[31m  state failed" in status
    assert json.loads(cli(base_env, "status", "--json").stdout)["failure"]["reason"] == raw_reason  # JSON escapes


def test_it_escapes_what_a_terminal_would_act_on_and_nothing_else():
    assert tracker_views.terminal_safe("plain text, caf\u00e9 \u2713") == "plain text, caf\u00e9 \u2713"
    assert tracker_views.terminal_safe("a\nb\r\x1b[2J\u202e\x00") == "a\\x0ab\\x0d\\x1b[2J\\u202e\\x00"
    assert tracker_views.terminal_safe(None) == ""


@pytest.mark.parametrize("limit", ["\u0665", " 5", "5_0", "+5"])
def test_it_refuses_a_history_limit_not_in_ascii_digits(base_env, limit):
    result = cli(base_env, "history", "--limit", limit)
    assert result.returncode == 2
    assert repr(limit) in result.stderr and len(result.stderr.strip().splitlines()) == 1
