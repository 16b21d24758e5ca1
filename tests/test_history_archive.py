"""The history archive (utils/history_archive.py): JSON Lines plus a summary, migration, crashes, bounds."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_tracker_cli

from utils.batch_tracker import BatchTracker
from utils.history_archive import WINDOW_COMPLETED, WINDOW_MAX, WINDOW_MIN, HistoryTotals, archive_path
from utils.model import RecordError
from utils.projection import RECENT_BATCHES
from utils.state_store import append_line, write_json_atomically

DAY = 86_400.0


def night(tracker: BatchTracker, clock, *, minutes: float = 60, fail: bool = False) -> str:
    """One batch: start, a stage, then end (or fail) ``minutes`` later; the clock moves on a day."""
    batch_id = tracker.start()
    tracker.stage("scrape", 100)
    clock.advance(minutes * 60)
    tracker.fail("score", "exit 1") if fail else tracker.end()
    clock.advance(DAY - minutes * 60)
    return batch_id


def archive_lines(tracker: BatchTracker) -> list[dict]:
    with open(tracker.history.path, "rb") as handle:
        return [json.loads(line) for line in handle.read().splitlines()]


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


def test_it_appends_one_line_per_finished_batch_and_keeps_the_tracker_file_for_the_current_one(tracker, clock):
    ids = [night(tracker, clock) for _ in range(3)]
    tracker.start()

    assert [record["id"] for record in archive_lines(tracker)] == ids
    snapshot = tracker.snapshot()
    assert [batch.id for batch in snapshot.history] == ids
    assert (snapshot.history_totals.count, snapshot.history_totals.completed) == (3, 3)
    assert snapshot.history_totals.median_duration_seconds == 3600


def test_it_answers_status_and_checks_from_the_summary_without_opening_the_archive(tracker, clock):
    for index in range(5):
        night(tracker, clock, fail=index == 1)
    tracker.start()
    os.unlink(tracker.history.path)  # readers must not need it

    status = BatchTracker(tracker.config, clock=clock).snapshot()
    assert status.history_error is None
    assert (status.history_totals.count, status.history_totals.failed, status.history_totals.completed) == (5, 1, 4)
    assert status.history_totals.on_time_rate == 0.8
    assert len(status.history) == 5


def test_it_keeps_a_bounded_window_that_reaches_back_to_enough_completed_batches(tracker_config, clock):
    assert RECENT_BATCHES <= WINDOW_COMPLETED  # projections see every completed batch they ask for
    tracker = BatchTracker(tracker_config.replace(history_limit=200), clock=clock)
    for index in range(WINDOW_MIN + 30):
        night(tracker, clock, fail=index % 3 != 0)  # one night in three completes
    tracker.start()

    window = tracker.snapshot().history
    assert WINDOW_MIN <= len(window) <= WINDOW_MAX
    assert sum(batch.is_completed for batch in window) >= WINDOW_COMPLETED
    assert tracker.snapshot().history_totals.count == WINDOW_MIN + 30


def test_it_compacts_the_archive_to_the_limit_and_keeps_totals_of_the_newest_limit(tracker_config, clock):
    tracker = BatchTracker(tracker_config.replace(history_limit=5), clock=clock)
    ids = [night(tracker, clock, minutes=10 + index) for index in range(30)]
    tracker.start()

    lines = archive_lines(tracker)
    assert 5 <= len(lines) <= 5 + 10
    assert [record["id"] for record in lines][-5:] == ids[-5:]
    totals = tracker.snapshot().history_totals
    assert totals.count == 5 and totals.median_duration_seconds == (10 + 27) * 60  # the middle of the newest 5
    assert [batch.id for batch in tracker.snapshot().history] == ids[-5:]


def test_it_prints_a_history_longer_than_the_window_from_the_archives_end(base_env, tracker_config, clock):
    env = dict(base_env, BATCH_HISTORY_LIMIT="500")
    tracker = BatchTracker(tracker_config.replace(history_limit=500), clock=clock)
    for index in range(WINDOW_MAX + 20):
        tracker.start(batch_id=f"night-{index:03d}")
        clock.advance(600)
        tracker.end()
        clock.advance(DAY)

    listed = json.loads(run_tracker_cli(env, "history", "--json", "--limit", "75", check=True).stdout)
    assert [batch["id"] for batch in listed] == [f"night-{index:03d}" for index in range(79, 4, -1)]
    default = json.loads(run_tracker_cli(env, "history", "--json", check=True).stdout)
    assert len(default) == 20 and default[0]["id"] == "night-079"


def test_it_migrates_an_older_releases_history_file_on_the_first_write(tracker, clock):
    old_ids = [night(tracker, clock) for _ in range(4)]
    records = archive_lines(tracker)
    os.unlink(tracker.history.path)
    os.unlink(tracker.history.summary_store.path)
    write_json_atomically(tracker.history.legacy_store.path, {"schema_version": 1, "batches": records})

    before = tracker.snapshot()  # a reader reads the older file as it is and changes nothing
    assert [batch.id for batch in before.history] == old_ids[:3]
    assert not os.path.exists(tracker.history.path)

    new_id = tracker.start()

    assert not os.path.exists(tracker.history.legacy_store.path)
    assert [record["id"] for record in archive_lines(tracker)] == old_ids
    after = tracker.snapshot()
    assert after.current.id == new_id and after.history_totals.count == 4
    assert [batch.id for batch in after.history] == old_ids


def test_it_cuts_off_a_torn_last_line_a_crashed_writer_left_and_appends_after_it(tracker, clock):
    ids = [night(tracker, clock) for _ in range(2)]
    with open(tracker.history.path, "ab") as handle:
        handle.write(b'{"id":"half-writ')  # the machine lost power in the middle of an append

    assert [batch.id for batch in tracker.history.newest(10)] == ids[:1]  # readers skip the torn line
    third = tracker.start()
    tracker.end()
    tracker.start()

    assert [record["id"] for record in archive_lines(tracker)] == [*ids, third]
    assert tracker.snapshot().history_totals.count == 3


def test_it_never_archives_a_batch_twice_when_a_writer_died_between_archive_and_tracker_file(tracker, clock):
    first = night(tracker, clock)
    second = tracker.start()
    tracker.end()
    tracker_file_before = open(tracker.path, "rb").read()
    tracker.start()  # archives `second`, then replaces the tracker file...
    with open(tracker.path, "wb") as handle:
        handle.write(tracker_file_before)  # ...which, in this run, the crash prevented

    tracker.start()

    assert [record["id"] for record in archive_lines(tracker)] == [first, second]
    assert tracker.snapshot().history_totals.count == 2


def test_it_rebuilds_a_corrupt_summary_from_the_archive_and_reports_it_to_readers_until_then(tracker, clock):
    ids = [night(tracker, clock) for _ in range(3)]
    with open(tracker.history.summary_store.path, "w") as handle:
        handle.write('{"schema_version": 1, "ledger": {"states": "c", "verdicts": ""}, "window": []}')

    assert "ledger" in tracker.snapshot().history_error
    tracker.start()

    snapshot = tracker.snapshot()
    assert snapshot.history_error is None and snapshot.history_totals.count == 3
    assert [batch.id for batch in snapshot.history] == ids


def test_it_finds_a_used_id_only_in_a_batch_record_not_in_text_that_looks_like_one(base_env, tracker_file):
    run_tracker_cli(base_env, "start", "--id", "night-1", check=True)
    run_tracker_cli(base_env, "fail", "--reason", 'reason mentions "id":"night-2"', check=True)
    run_tracker_cli(base_env, "start", "--id", "night-3", check=True)

    assert run_tracker_cli(base_env, "start", "--id", "night-2").returncode == 0
    assert run_tracker_cli(base_env, "start", "--id", "night-1").returncode == 2


def test_it_refuses_a_ledger_of_the_wrong_shape():
    ledger = {"states": "cfa", "verdicts": "10-", "durations": [60.0, None, None]}
    totals = HistoryTotals.from_ledger(ledger)
    assert (totals.count, totals.completed, totals.failed, totals.abandoned, totals.on_time_rate) == (3, 1, 1, 1, 0.5)
    bad = [
        {**ledger, "states": "cfx"},
        {**ledger, "verdicts": "1?-"},
        {**ledger, "durations": [60.0, None]},
        {**ledger, "durations": ["60", None, None]},
        {**ledger, "durations": [True, None, None]},
        {**ledger, "durations": [float("nan"), None, None]},
        {"states": "c", "verdicts": "1"},
        [["x"]],
    ]
    for ledger in bad:
        with pytest.raises(RecordError):
            HistoryTotals.from_ledger(ledger)


def test_it_names_the_archive_beside_the_tracker_file():
    assert archive_path("/d/batch_tracker.json") == "/d/batch_tracker.history.jsonl"


def test_it_appends_whole_lines_only(tmp_path):
    path = str(tmp_path / "archive.jsonl")
    append_line(path, b'{"a":1}')
    with open(path, "ab") as handle:
        handle.write(b'{"torn')
    size = append_line(path, b'{"b":2}')
    assert open(path, "rb").read() == b'{"a":1}\n{"b":2}\n' and size == 16
