"""The tracker's cumulative counters: each completion counted exactly once, GPU spend as recorded, migration."""

from __future__ import annotations

import json
import math
import os
import threading

import pytest
from conftest import run_tracker_cli
from helpers import forget_counters, legacy_metrics_state

from utils import counters
from utils.batch_tracker import BatchStateError, BatchTracker, TrackerConfig
from utils.counters import DURATION_BUCKETS, Counters, CountersError, bucket_index
from utils.state_store import append_line, read_json_object, sibling_file, write_json_atomically

HOUR = 3600.0


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


def stored(tracker: BatchTracker) -> Counters:
    """The counters as written in the tracker file (not rebuilt by a reader)."""
    return Counters.from_dict(read_json_object(tracker.path)["counters"])


def run_batch(tracker: BatchTracker, clock, seconds: float, *, gpu: float = 0.0) -> str:
    batch_id = tracker.start()
    if gpu:
        tracker.cost(gpu_cost_dollars=gpu)
    clock.advance(seconds)
    tracker.end()
    clock.advance(HOUR)
    return batch_id


# --------------------------------------------------------------------------- the value


def test_it_round_trips_through_json():
    value = (
        Counters()
        .after_start(100.0)
        .add_gpu(2.5)
        .after_cost(0.4)
        .after_end(duration=95.0, ended_at=200.0, on_time=True)
        .after_end(duration=50_000.0, ended_at=300.0, on_time=False)
        .after_start(400.0, archived_on_time=False)
    )
    again = Counters.from_dict(json.loads(json.dumps(value.to_dict())))
    assert again == value
    assert (again.completed_on_time, again.completed_late, again.duration_count) == (1, 1, 2)
    assert again.duration_sum == 50_095.0
    assert (again.last_success_at, again.last_started_at, again.last_finished_on_time) == (300.0, 400.0, False)
    assert again.cumulative_buckets()[bucket_index(95.0)] == (120.0, 1)
    assert again.cumulative_buckets()[-1] == (math.inf, 2)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.pop("gpu_dollars"),
        lambda r: r.update(gpu_dollars="3"),
        lambda r: r["duration"].update(count=7),  # not the sum of the counts
        lambda r: r["duration"].update(bounds=[60.0, 120.0], counts=[0, 0, 0], count=0),  # other buckets
        lambda r: r["completed"].update(late=-1),
        lambda r: r.update(last_finished_on_time="yes"),
    ],
)
def test_it_refuses_a_malformed_counters_object(change):
    record = Counters().to_dict()
    change(record)
    with pytest.raises(CountersError, match="malformed counters"):
        Counters.from_dict(record)


def test_it_never_lets_the_gpu_total_reach_infinity():
    assert math.isfinite(Counters(gpu_dollars=1e308).add_gpu(1e308).gpu_dollars)


# --------------------------------------------------------------------------- kept by the tracker


def test_it_counts_a_completed_batch_exactly_once_through_fail_resume_and_archive(tracker, clock):
    tracker.start()
    tracker.fail("scrape", "exit 1")
    assert stored(tracker).duration_count == 0  # a failure is not a completion
    tracker.resume()
    clock.advance(HOUR)
    tracker.end()
    assert (stored(tracker).duration_count, stored(tracker).duration_sum) == (1, HOUR)
    with pytest.raises(BatchStateError):
        tracker.end()  # already completed: refused, not counted again
    tracker.start()  # moves it to history
    tracker.start()  # abandons the running one
    tracker.cost(gpu_cost_dollars=1.0)
    tracker.stage("scrape", 100)
    assert stored(tracker).duration_count == 1
    assert (stored(tracker).completed_on_time, stored(tracker).completed_late) == (1, 0)
    assert tracker.snapshot().counters == stored(tracker)


def test_it_counts_a_batch_finished_after_its_deadline_as_late(tracker, clock):
    tracker.start()
    clock.advance(30 * HOUR)  # its stored deadline passed
    tracker.end()
    assert (stored(tracker).completed_on_time, stored(tracker).completed_late) == (0, 1)
    assert stored(tracker).last_success_at == clock()


def test_it_remembers_the_verdict_of_the_newest_batch_in_history(tracker, clock):
    run_batch(tracker, clock, HOUR)
    tracker.start()
    assert stored(tracker).last_finished_on_time is True
    tracker.fail("scrape", "exit 1")
    tracker.resume()  # the running batch is undecided: readers fall back on the archived verdict
    assert stored(tracker).last_finished_on_time is True
    tracker.start()  # abandons it
    assert stored(tracker).last_finished_on_time is False


def test_it_counts_each_completion_and_dollar_once_under_concurrent_hooks(tracker_config, clock):
    BatchTracker(tracker_config, clock=clock).start()
    trackers = [BatchTracker(tracker_config, clock=clock) for _ in range(8)]
    barrier = threading.Barrier(len(trackers))
    ended = []

    def hook(tracker: BatchTracker) -> None:
        barrier.wait()
        tracker.cost(gpu_cost_dollars=0.25)
        try:
            tracker.end()
            ended.append(tracker)
        except BatchStateError:
            pass  # only one of them can end the batch

    threads = [threading.Thread(target=hook, args=(t,)) for t in trackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(ended) == 1
    assert stored(trackers[0]).duration_count == 1
    assert stored(trackers[0]).gpu_dollars == 2.0


def test_it_adds_gpu_spend_from_the_cli_as_it_is_recorded(base_env, tracker_file):
    def cli(*args):
        return run_tracker_cli(base_env, *args, check=True)

    def gpu() -> float:
        return Counters.from_dict(read_json_object(str(tracker_file))["counters"]).gpu_dollars

    cli("start")
    cli("cost", "--gpu-dollars", "1.5")
    cli("cost", "--per-lead", "0.3", "--gpu-dollars", "2")
    assert gpu() == 3.5
    cli("cost", "--per-lead", "0.5")
    assert gpu() == 3.5
    cli("end")
    cli("start")  # a new batch at $0 does not lower the total
    assert gpu() == 3.5
    cli("cost", "--gpu-dollars", "1")
    assert gpu() == 4.5
    assert Counters.from_dict(read_json_object(str(tracker_file))["counters"]).last_cost_per_lead == 0.5


# --------------------------------------------------------------------------- migration


def test_it_builds_counters_once_from_the_history_of_an_older_tracker_file(tracker, clock):
    run_batch(tracker, clock, HOUR, gpu=1.0)
    run_batch(tracker, clock, 2 * HOUR, gpu=2.0)
    tracker.start()
    tracker.fail("scrape", "exit 1")
    forget_counters(tracker)  # as the older release wrote it
    before = os.stat(tracker.path)

    view = tracker.snapshot().counters  # a reader builds them in memory, writes nothing
    assert (view.duration_count, view.duration_sum, view.gpu_dollars) == (2, 3 * HOUR, 3.0)
    assert view.last_finished_on_time is True and view.last_started_at == tracker.snapshot().current.started_at
    after = os.stat(tracker.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    tracker.resume()  # the first write stores them, under the lock
    assert stored(tracker) == view
    # Once: a batch slipped into the history behind the tracker's back is not counted any more.
    archived = json.loads(open(tracker.history.path, "rb").readline())
    append_line(tracker.history.path, json.dumps({**archived, "id": "slipped-in"}).encode())
    tracker.stage("scrape", 10)
    assert stored(tracker).duration_count == 2


def test_it_carries_over_the_totals_of_an_older_releases_metrics_state(tracker, clock):
    first = run_batch(tracker, clock, HOUR, gpu=1.0)
    tracker.start()
    tracker.cost(gpu_cost_dollars=2.0)
    clock.advance(600)
    tracker.end()  # completed after the older release's monitor last scraped
    forget_counters(tracker)
    history = {b.id: b for b in tracker.snapshot().history}
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    counts[bucket_index(HOUR)] = 6  # five nights long gone from the history, and the first one
    legacy = legacy_metrics_state(
        completion_time={"bounds": list(DURATION_BUCKETS), "counts": counts, "sum": 6 * HOUR, "count": 6},
        observed={first: history[first].started_at},
        completed={"on_time": 5, "late": 1},
        gpu={"total": 41.0, "counted": {first: [history[first].started_at, 1.0]}},
        last_success_at=history[first].ended_at,
    )
    path = sibling_file(tracker.path, "metrics")
    write_json_atomically(path, legacy)
    legacy_bytes = open(path, "rb").read()

    tracker.start()  # the migration, under the lock
    value = stored(tracker)
    assert value.duration_count == 7  # the six it had counted, plus the one it never saw
    assert value.duration_sum == 6 * HOUR + 600
    assert (value.completed_on_time, value.completed_late) == (6, 1)
    assert value.gpu_dollars == 43.0  # its total plus the spend it never saw
    assert value.last_success_at > history[first].ended_at
    run_batch(tracker, clock, HOUR, gpu=1.0)
    assert stored(tracker).gpu_dollars == 44.0
    with open(path, "rb") as handle:
        assert handle.read() == legacy_bytes  # read once, never written


def test_it_rebuilds_the_histogram_of_a_metrics_state_with_other_buckets_and_keeps_its_gpu(tracker, clock):
    run_batch(tracker, clock, 100, gpu=3.5)
    run_batch(tracker, clock, 417)
    forget_counters(tracker)
    legacy = legacy_metrics_state(
        completion_time={"bounds": [300.0, 600.0], "counts": [5, 0, 0], "sum": 1500.0, "count": 5},
        gpu={"total": 10.0, "counted": {b.id: [b.started_at, 3.5] for b in tracker.snapshot().history}},
    )
    legacy.pop("completed")
    write_json_atomically(sibling_file(tracker.path, "metrics"), legacy)
    tracker.start()
    value = stored(tracker)
    assert value.duration_count == 2 and value.cumulative_buckets()[bucket_index(417)][1] == 2
    assert value.gpu_dollars == 10.0


def test_it_ignores_an_unusable_metrics_state(tracker, clock):
    run_batch(tracker, clock, HOUR, gpu=1.0)
    forget_counters(tracker)
    path = sibling_file(tracker.path, "metrics")
    for content in ("{not json", json.dumps({"schema_version": 1, "gpu": "x"})):
        with open(path, "w") as handle:
            handle.write(content)
        assert counters.load_legacy_metrics_state(path) is None
        view = tracker.snapshot().counters
        assert (view.duration_count, view.gpu_dollars) == (1, 1.0)  # rebuilt from the batches on file


def test_it_rebuilds_counters_from_a_hand_edited_malformed_object(tracker, clock):
    run_batch(tracker, clock, HOUR)
    document = read_json_object(tracker.path)
    document["counters"] = {"gpu_dollars": "lots"}
    write_json_atomically(tracker.path, document)
    assert tracker.snapshot().counters.duration_count == 1
    tracker.start()
    assert stored(tracker).duration_count == 1


def test_it_starts_a_fresh_tracker_with_zero_counters(tracker_file, clock):
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)), clock=clock)
    assert tracker.snapshot().counters == Counters()
    tracker.start()
    assert stored(tracker) == Counters(last_started_at=clock())
