"""The scrape-time batch collector: values, exactly-once histogram, monotonic GPU counter, bounds, speed.

The persisted families come from the tracker's counters (utils.counters); scrapes only read.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import threading
import time

import pytest
from helpers import forget_counters, legacy_metrics_state
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from utils import metrics
from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.counters import DURATION_BUCKETS, bucket_index
from utils.metrics import MAX_STAGE_SERIES, register_batch_metrics
from utils.projection import batch_deadline
from utils.state_store import read_json_object, sibling_file, write_json_atomically

HOUR = 3600.0
OUTBOX_GAUGES = ("anthrasite_batch_alerts_queued", "anthrasite_batch_alerts_failed", "anthrasite_batch_alerts_oldest")


class Scraper:
    """A registry with the batch collector on the tracker's sibling files (one per 'monitor process')."""

    def __init__(self, tracker: BatchTracker, clock):
        self.tracker = tracker
        self.monitor_state_path = sibling_file(tracker.path, "monitor")
        # The older release's metrics state file: read once by the tracker's migration, never written.
        self.metrics_state_path = sibling_file(tracker.path, "metrics")
        self.registry = CollectorRegistry()
        self.collector = register_batch_metrics(
            self.registry, tracker=tracker, monitor_state_path=self.monitor_state_path, clock=clock
        )

    def value(self, name: str, **labels: str) -> float | None:
        """Scrape (a full collect) and return one sample's value; every series but the outbox's carries the
        job's name as ``batch``."""
        if not name.startswith(OUTBOX_GAUGES):
            labels = {"batch": self.tracker.config.batch_name, **labels}
        return self.registry.get_sample_value(name, labels)

    def families(self) -> dict:
        text = generate_latest(self.registry).decode()
        return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


@pytest.fixture
def scraper(tracker, clock) -> Scraper:
    return Scraper(tracker, clock)


def run_batch(tracker: BatchTracker, clock, seconds: float, *, gpu: float = 0.0, stages=("scrape", "enrich", "score")):
    """A whole batch that takes ``seconds`` and spends ``gpu`` dollars."""
    tracker.start(list(stages))
    for stage in stages:
        tracker.stage(stage, 100)
    if gpu:
        tracker.cost(gpu_cost_dollars=gpu)
    clock.advance(seconds)
    tracker.end()
    clock.advance(HOUR)


def test_it_exports_the_running_batch(tracker, scraper, clock):
    batch_id = tracker.start()
    tracker.stage("scrape", 100)
    tracker.stage("enrich", 50)
    tracker.cost(cost_per_lead=0.42, gpu_cost_dollars=1.25)
    clock.advance(600)

    assert scraper.value("anthrasite_batch_completion_percentage") == pytest.approx(50.0)
    assert scraper.value("anthrasite_batch_stage_completion_percentage", stage="scrape") == 100.0
    assert scraper.value("anthrasite_batch_stage_completion_percentage", stage="enrich") == 50.0
    assert scraper.value("anthrasite_batch_stage_completion_percentage", stage="score") == 0.0
    assert scraper.value("anthrasite_batch_cost_per_lead") == 0.42
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 1.25
    assert scraper.value("anthrasite_batch_start_timestamp_seconds") == 1_700_000_000.0
    assert scraper.value("anthrasite_batch_end_timestamp_seconds") is None
    assert scraper.value("anthrasite_batch_info", batch_id=batch_id, host=os.uname().nodename) == 1.0
    assert scraper.value("anthrasite_batch_tracker_readable") == 1.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 0.0
    assert scraper.value("anthrasite_batch_completion_success") is None  # nothing decided yet
    assert scraper.value("anthrasite_batch_last_success_timestamp_seconds") is None


def test_it_sets_exactly_one_state(tracker, scraper):
    def states():
        return {s: scraper.value("anthrasite_batch_state", state=s) for s in metrics.BATCH_STATE_VALUES}

    assert states() == {"none": 1.0, "running": 0.0, "completed": 0.0, "failed": 0.0, "abandoned": 0.0}
    tracker.start()
    assert states()["running"] == 1.0 and sum(states().values()) == 1.0
    tracker.fail("enrich", "exit 3")
    assert states()["failed"] == 1.0 and sum(states().values()) == 1.0
    tracker.resume()
    tracker.end()
    assert states()["completed"] == 1.0 and sum(states().values()) == 1.0


def test_it_exports_deadlines_in_the_configured_zone(tracker, scraper, clock):
    deadline = tracker.config.deadline()
    # No batch yet: the deadline shown is the next one (05:00 New York = 10:00 UTC in November).
    assert scraper.value("anthrasite_batch_deadline_timestamp_seconds") == 1_700_042_400.0
    assert scraper.value("anthrasite_batch_next_deadline_timestamp_seconds") == 1_700_042_400.0
    tracker.start()
    batch = tracker.snapshot().current
    clock.advance(20 * HOUR)  # past the batch's deadline, before the next one
    assert scraper.value("anthrasite_batch_deadline_timestamp_seconds") == batch_deadline(batch, deadline)
    assert scraper.value("anthrasite_batch_next_deadline_timestamp_seconds") == deadline.first_after(clock())
    # The next batch must start in the window of the deadline after the batch's own.
    assert scraper.value("anthrasite_batch_next_start_due_timestamp_seconds") == 1_700_042_400.0 + 24 * HOUR


def write_monitor_state(scraper: Scraper, document: dict) -> None:
    os.makedirs(os.path.dirname(scraper.monitor_state_path), exist_ok=True)
    write_json_atomically(scraper.monitor_state_path, document)


def test_it_bases_the_next_start_due_on_the_monitors_first_start_when_no_batch_exists(scraper, clock):
    watch_since = clock() - 3 * 24 * HOUR
    write_monitor_state(scraper, {"schema_version": 1, "watch_since": watch_since})
    due = scraper.value("anthrasite_batch_next_start_due_timestamp_seconds")
    assert due == scraper.tracker.config.deadline().first_after(watch_since)
    assert due < clock()  # deadlines passed with no batch: Prometheus' BatchNotStarted fires


def test_it_says_whether_the_newest_decided_batch_was_on_time(tracker, scraper, clock):
    run_batch(tracker, clock, 2 * HOUR)
    assert scraper.value("anthrasite_batch_completion_success") == 1.0
    assert scraper.value("anthrasite_batch_last_success_timestamp_seconds") == 1_700_000_000.0 + 2 * HOUR

    tracker.start()  # running and can still make it: the last decided batch still counts
    assert scraper.value("anthrasite_batch_completion_success") == 1.0
    clock.advance(24 * HOUR)  # past its deadline: decided, late
    assert scraper.value("anthrasite_batch_completion_success") == 0.0
    tracker.end()  # completed late
    assert scraper.value("anthrasite_batch_completion_success") == 0.0
    assert scraper.value("anthrasite_batch_last_success_timestamp_seconds") == clock()


def test_it_observes_each_completed_batch_once_however_often_it_is_scraped(tracker, scraper, clock):
    run_batch(tracker, clock, 2 * HOUR)
    for _ in range(5):
        assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_sum") == 2 * HOUR
    assert scraper.value("anthrasite_batch_completion_time_seconds_bucket", le="3600.0") == 0.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_bucket", le="7200.0") == 1.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_bucket", le="+Inf") == 1.0

    run_batch(tracker, clock, 20 * 60)  # the first batch moves to history: still counted once
    tracker.start()  # and the second too
    for _ in range(3):
        assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 2.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_sum") == 2 * HOUR + 20 * 60
    assert scraper.value("anthrasite_batch_completion_time_seconds_bucket", le="1800.0") == 1.0


def test_it_never_observes_failed_or_abandoned_batches(tracker, scraper, clock):
    tracker.start()
    tracker.fail("scrape", "boom")
    tracker.start()  # the failed one goes to history
    tracker.start()  # the running one is abandoned
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 0.0


def test_it_keeps_the_counts_across_a_monitor_restart(tracker, clock):
    first = Scraper(tracker, clock)
    run_batch(tracker, clock, HOUR, gpu=3.0)
    assert first.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    del first  # the monitor stops

    restarted = Scraper(BatchTracker(tracker.config, clock=clock), clock)  # a new process on the same files
    assert restarted.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    assert restarted.value("anthrasite_batch_completion_time_seconds_sum") == HOUR
    assert restarted.value("anthrasite_batch_gpu_cost_dollars_total") == 3.0
    run_batch(tracker, clock, 2 * HOUR, gpu=1.0)
    assert restarted.value("anthrasite_batch_completion_time_seconds_count") == 2.0
    assert restarted.value("anthrasite_batch_gpu_cost_dollars_total") == 4.0


def test_it_counts_a_batch_completed_while_no_monitor_ran(tracker, clock):
    run_batch(tracker, clock, HOUR)
    Scraper(tracker, clock).value("anthrasite_batch_completion_time_seconds_count")
    run_batch(tracker, clock, HOUR)  # completed while the monitor was down
    tracker.start()  # ... and already moved to history
    assert Scraper(tracker, clock).value("anthrasite_batch_completion_time_seconds_count") == 2.0


def test_it_counts_each_batch_once_when_two_processes_scrape_at_the_same_time(tracker, clock):
    scrapers = [Scraper(BatchTracker(tracker.config, clock=clock), clock) for _ in range(4)]
    run_batch(tracker, clock, HOUR, gpu=2.0)
    barrier = threading.Barrier(len(scrapers))
    results: list[tuple] = []

    def scrape(scraper: Scraper) -> None:
        barrier.wait()
        results.append(
            (
                scraper.value("anthrasite_batch_completion_time_seconds_count"),
                scraper.value("anthrasite_batch_gpu_cost_dollars_total"),
            )
        )

    threads = [threading.Thread(target=scrape, args=(s,)) for s in scrapers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [(1.0, 2.0)] * len(scrapers)
    assert tracker.snapshot().counters.duration_count == 1
    assert not os.path.exists(scrapers[0].metrics_state_path)  # no metrics state file any more


def test_it_keeps_gpu_spend_monotonic_across_batches(tracker, scraper, clock):
    tracker.start()
    tracker.cost(gpu_cost_dollars=2.5)
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 2.5
    tracker.cost(gpu_cost_dollars=0.5)  # the running batch spends more
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 3.0
    tracker.end()
    tracker.start()  # a new batch at $0 must not lower the counter
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 3.0
    tracker.cost(gpu_cost_dollars=1.0)
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 4.0
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 4.0  # and not again on the next scrape


def test_it_counts_spend_reported_between_scrapes_only_once_across_restarts(tracker, clock):
    tracker.start()
    tracker.cost(gpu_cost_dollars=1.0)
    assert Scraper(tracker, clock).value("anthrasite_batch_gpu_cost_dollars_total") == 1.0
    tracker.cost(gpu_cost_dollars=1.0)
    tracker.end()
    assert Scraper(tracker, clock).value("anthrasite_batch_gpu_cost_dollars_total") == 2.0
    assert Scraper(tracker, clock).value("anthrasite_batch_gpu_cost_dollars_total") == 2.0


def test_it_writes_no_file_when_scraped(tracker, scraper, clock):
    tracker.start()
    scraper.value("anthrasite_batch_state", state="running")
    assert not os.path.exists(scraper.metrics_state_path)  # nothing to count yet
    tracker.end()
    directory = os.path.dirname(tracker.path)
    before = {name: os.stat(os.path.join(directory, name)) for name in os.listdir(directory)}
    for _ in range(5):
        assert scraper.value("anthrasite_batch_state", state="completed") == 1.0
        assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    after = {name: os.stat(os.path.join(directory, name)) for name in os.listdir(directory)}
    assert after.keys() == before.keys()  # no metrics state file, nothing else created
    assert not os.path.exists(scraper.metrics_state_path)
    for name, written in before.items():
        unchanged = after[name]
        assert (unchanged.st_ino, unchanged.st_mtime_ns) == (written.st_ino, written.st_mtime_ns), name


def test_it_keeps_counting_batches_the_history_no_longer_holds_in_bounded_counters(tracker_file, clock):
    config = TrackerConfig(tracker_file=str(tracker_file), expected_stages=("scrape",), history_limit=3)
    tracker = BatchTracker(config, clock=clock)
    scraper = Scraper(tracker, clock)
    ids = []
    for night in range(8):
        run_batch(tracker, clock, HOUR + night, gpu=1.0, stages=("scrape",))
        ids.append(tracker.snapshot().current.id)
        assert scraper.value("anthrasite_batch_completion_time_seconds_count") == night + 1
    kept = {b.id for b in tracker.snapshot().batches_newest_first()}
    assert len(kept) == 4  # 3 in history + the current one
    stored = json.dumps(read_json_object(tracker.path)["counters"])
    assert not any(batch_id in stored for batch_id in ids)  # totals only: no per-batch memory to bound
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 8.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 8.0


def test_it_never_recounts_a_batch_older_than_an_imported_watermark(tracker, scraper, clock):
    run_batch(tracker, clock, HOUR)
    old = tracker.snapshot().current
    forget_counters(tracker)  # a tracker file from the older release, next to its metrics state:
    state = legacy_metrics_state(watermark=old.started_at)  # the id was pruned, the watermark raised
    state["completion_time"]["counts"][bucket_index(HOUR)] = 1
    state["completion_time"].update(sum=HOUR, count=1)
    write_json_atomically(scraper.metrics_state_path, state)
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    tracker.start()  # the migration is written once, under the lock: still counted once
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 1.0


def test_it_ignores_a_corrupt_metrics_state_and_rebuilds_from_history(tracker, scraper, clock):
    run_batch(tracker, clock, HOUR)
    run_batch(tracker, clock, HOUR)
    forget_counters(tracker)
    with open(scraper.metrics_state_path, "w") as handle:
        handle.write("{not json")
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 2.0
    tracker.start()
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 2.0
    with open(scraper.metrics_state_path) as handle:
        assert handle.read() == "{not json"  # read, never repaired or rewritten


def test_it_leaves_out_persisted_families_when_the_tracker_file_cannot_be_read(tracker, scraper, clock):
    run_batch(tracker, clock, HOUR)
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    with open(tracker.path, "w") as handle:
        handle.write("{broken")
    # The counters cannot be read: no histogram or counter rather than zeros (a false reset) ...
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") is None
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") is None
    assert scraper.value("anthrasite_batch_completed_total", on_time="true") is None
    # ... and everything else still served.
    assert scraper.value("anthrasite_batch_tracker_readable") == 0.0
    assert scraper.value("anthrasite_batch_completion_percentage") == 0.0


def test_it_rebuilds_the_counts_from_history_after_a_corrupt_tracker_file_is_moved_aside(tracker, scraper, clock):
    run_batch(tracker, clock, HOUR, gpu=1.0)
    tracker.start()  # the completed batch moves to history
    with open(tracker.path, "w") as handle:
        handle.write("{broken")
    tracker.start()  # the hook moves the corrupt file aside and starts fresh
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 1.0
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 1.0


def test_it_reports_an_unreadable_tracker_file_without_failing_the_scrape(tracker, scraper):
    tracker.start()
    with open(tracker.path, "w") as handle:
        handle.write("garbage")
    assert scraper.value("anthrasite_batch_tracker_readable") == 0.0
    assert scraper.value("anthrasite_batch_state", state="none") == 1.0


def test_it_limits_stage_labels_to_real_stage_names(tracker_file, clock):
    many = [f"stage_{n:03d}" for n in range(MAX_STAGE_SERIES + 20)]
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)), clock=clock)
    scraper = Scraper(tracker, clock)
    tracker.start(many)
    tracker.stage("stage_005", 40)
    stages = scraper.families()["anthrasite_batch_stage_completion_percentage"].samples
    assert len(stages) == MAX_STAGE_SERIES
    assert {s.labels["stage"] for s in stages} <= set(many)
    tracker.start(["scrape", "email"])  # a new batch: the old stage series disappear
    stages = scraper.families()["anthrasite_batch_stage_completion_percentage"].samples
    assert sorted(s.labels["stage"] for s in stages) == ["email", "scrape"]


def test_it_exports_the_monitors_counters(scraper, clock):
    write_monitor_state(
        scraper,
        {
            "schema_version": 1,
            "last_check_at": clock() - 30,
            "open_incidents": {
                "late:b1": {"kind": "late", "key": "b1"},
                "failed:b1": {"kind": "failed", "key": "b1"},
                "weird:x": {"kind": "bad kind with spaces", "key": "x"},
            },
            "counters": {
                "alerts_sent": {"late": 2, "failed": 1, "custom_kind": 4, "bad kind": 9},
                "recoveries_sent": 1,
                "delivery_failures": 3,
                "permanent_failures": 1,
            },
        },
    )
    assert scraper.value("anthrasite_batch_alerts_sent_total", kind="late") == 2.0
    assert scraper.value("anthrasite_batch_alerts_sent_total", kind="failed") == 1.0
    assert scraper.value("anthrasite_batch_alerts_sent_total", kind="custom_kind") == 4.0
    assert scraper.value("anthrasite_batch_alerts_sent_total", kind="missing") == 0.0  # known kinds start at 0
    assert scraper.value("anthrasite_batch_alerts_sent_total", kind="bad kind") is None
    assert scraper.value("anthrasite_batch_recoveries_sent_total") == 1.0
    assert scraper.value("anthrasite_batch_alert_delivery_failures_total") == 3.0
    assert scraper.value("anthrasite_batch_alert_permanent_failures_total") == 1.0
    assert scraper.value("anthrasite_batch_open_incidents", kind="late") == 1.0
    assert scraper.value("anthrasite_batch_monitor_last_check_timestamp_seconds") == clock() - 30
    kinds = {s.labels["kind"] for s in scraper.families()["anthrasite_batch_open_incidents"].samples}
    assert kinds == {"late", "failed"}


@pytest.mark.parametrize("content", [None, "{broken", "[1, 2]", json.dumps({"counters": "nope"})])
def test_it_tolerates_a_missing_or_corrupt_monitor_state(scraper, content):
    if content is not None:
        os.makedirs(os.path.dirname(scraper.monitor_state_path), exist_ok=True)
        with open(scraper.monitor_state_path, "w") as handle:
            handle.write(content)
    assert scraper.value("anthrasite_batch_alert_delivery_failures_total") == 0.0
    assert scraper.value("anthrasite_batch_monitor_last_check_timestamp_seconds") is None
    with open(scraper.monitor_state_path) if content is not None else open(os.devnull) as handle:
        assert handle.read() == (content or "")  # read-only: never repaired or rewritten by metrics


def test_it_uses_histogram_buckets_that_fit_a_nightly_batch(scraper):
    buckets = [
        s.labels["le"]
        for s in scraper.families()["anthrasite_batch_completion_time_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    assert buckets[0] == "30.0" and buckets[-2] == "43200.0" and buckets[-1] == "+Inf"
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    # Roughly geometric: no bucket wider than 1.5x its lower bound, so a 100 s run never reads as 300 s.
    ratios = [upper / lower for lower, upper in itertools.pairwise(DURATION_BUCKETS)]
    assert max(ratios) <= 1.5 and min(ratios) > 1.0


def test_it_counts_completed_batches_on_time_and_late_once_each(tracker, clock):
    scraper = Scraper(tracker, clock)
    run_batch(tracker, clock, HOUR)  # on time
    tracker.start()
    clock.advance(30 * HOUR)  # past its deadline
    tracker.end()  # late
    run_batch(tracker, clock, 600)  # on time
    for _ in range(3):
        assert scraper.value("anthrasite_batch_completed_total", on_time="true") == 2.0
        assert scraper.value("anthrasite_batch_completed_total", on_time="false") == 1.0
    tracker.start()
    tracker.fail("scrape", "exit 1")  # failed batches are not completions
    restarted = Scraper(tracker, clock)  # a restarted monitor keeps the counts (persisted)
    assert restarted.value("anthrasite_batch_completed_total", on_time="true") == 2.0
    assert restarted.value("anthrasite_batch_completed_total", on_time="false") == 1.0


def test_it_rebuilds_an_older_releases_metrics_state_from_history_and_keeps_the_gpu_spend(tracker, clock):
    run_batch(tracker, clock, 100, gpu=3.5)
    run_batch(tracker, clock, 417)
    forget_counters(tracker)
    path = sibling_file(tracker.path, "metrics")
    older = legacy_metrics_state()
    older.pop("completed")
    older["completion_time"] = {
        "bounds": [300.0, 600.0],
        "counts": [5, 0, 0],
        "sum": 1500.0,
        "count": 5,
    }
    older["gpu"] = {"total": 10.0, "counted": {b.id: [b.started_at, 3.5] for b in tracker.snapshot().history}}
    write_json_atomically(path, older)
    scraper = Scraper(tracker, clock)
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 2.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_bucket", le="120.0") == 1.0
    assert scraper.value("anthrasite_batch_completion_time_seconds_bucket", le="420.0") == 2.0
    assert scraper.value("anthrasite_batch_completed_total", on_time="true") == 2.0
    assert scraper.value("anthrasite_batch_gpu_cost_dollars_total") == 10.0


def test_it_exports_the_outbox_gauges_from_the_monitor_state(scraper, clock):
    assert scraper.value("anthrasite_batch_alerts_queued") is None  # no monitor state: no outbox data
    write_monitor_state(
        scraper, {"schema_version": 1, "outbox": {"pending": 2, "failed": 1, "oldest_pending_at": clock() - 1000}}
    )
    assert scraper.value("anthrasite_batch_alerts_queued") == 2.0
    assert scraper.value("anthrasite_batch_alerts_failed") == 1.0
    assert scraper.value("anthrasite_batch_alerts_oldest_queued_age_seconds") == 1000.0
    clock.advance(60)  # the age is taken at scrape time
    assert scraper.value("anthrasite_batch_alerts_oldest_queued_age_seconds") == 1060.0
    write_monitor_state(
        scraper, {"schema_version": 1, "outbox": {"pending": 0, "failed": 0, "oldest_pending_at": None}}
    )
    assert scraper.value("anthrasite_batch_alerts_queued") == 0.0
    assert scraper.value("anthrasite_batch_alerts_oldest_queued_age_seconds") == 0.0


def test_it_names_its_source_the_way_the_pushgateway_groups(tracker, scraper, tracker_config, clock):
    from utils.pushgateway import build_registry

    labels = {"source": "monitor", "batch": tracker_config.batch_name, "host": metrics.host_name()}
    assert scraper.value("anthrasite_batch_source_info", **labels) == 1.0
    tracker.start()
    pushed = build_registry(tracker_config, tracker.snapshot(), clock())
    assert pushed.get_sample_value("anthrasite_batch_source_info", {**labels, "source": "push"}) == 1.0


def test_it_registers_without_reading_any_file(tracker_config, clock, tmp_path):
    missing = tmp_path / "nowhere"
    registry = CollectorRegistry()
    tracker = BatchTracker(tracker_config.replace(tracker_file=str(missing / "t.json")), clock=clock)
    register_batch_metrics(registry, tracker=tracker, monitor_state_path=str(missing / "m.json"), clock=clock)
    assert not missing.exists()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_batch_metrics(registry, tracker=tracker, monitor_state_path=None)


def test_it_scrapes_50_stages_and_90_nights_of_history_in_under_5_ms(tracker_file, clock):
    stages = [f"stage_{n:02d}" for n in range(50)]
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tracker_file)), clock=clock)
    run_batch(tracker, clock, 2 * HOUR, gpu=1.0, stages=stages[:6])
    template = tracker.snapshot().current.to_dict()
    nights = []
    for night in range(90):  # 90 recorded nights, written directly (90 real runs would take seconds)
        shift = (night - 90) * 24 * HOUR
        batch = json.loads(json.dumps(template))
        batch["id"] = f"night-{night:02d}"
        for key in ("started_at", "ended_at", "updated_at"):
            batch[key] += shift
        for detail in batch["stages"].values():
            for key in ("first_seen_at", "updated_at", "completed_at"):
                detail[key] += shift
        nights.append(batch)
    write_json_atomically(tracker.history.legacy_store.path, {"schema_version": 1, "batches": nights})  # older release
    tracker.start(stages)
    forget_counters(tracker)  # as an older release left it: the next write counts the 90 nights in history
    for stage in stages[:30]:
        tracker.stage(stage, 100)
    scraper = Scraper(tracker, clock)
    generate_latest(scraper.registry)
    timings = []
    for _ in range(60):
        began = time.perf_counter()
        generate_latest(scraper.registry)
        timings.append(time.perf_counter() - began)
    median_ms = statistics.median(timings) * 1000
    assert median_ms < 5.0, f"median scrape took {median_ms:.2f} ms"
    assert scraper.value("anthrasite_batch_completion_time_seconds_count") == 90.0
    assert len(scraper.families()["anthrasite_batch_stage_completion_percentage"].samples) == 50


def test_it_never_serves_a_stale_value_after_a_quick_same_size_change(tracker, scraper):
    tracker.start()
    for value in range(10, 100):  # every write is the same size, milliseconds apart
        tracker.stage("scrape", value)
        assert scraper.value("anthrasite_batch_stage_completion_percentage", stage="scrape") == value
