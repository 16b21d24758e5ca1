"""utils.state_store and the tracker's storage: atomic writes, locking, corruption, schema, bounded history."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import multiprocessing
import os
import time

import pytest

from utils import state_store
from utils.batch_tracker import (
    BatchStateError,
    BatchTracker,
    TrackerConfig,
    check_batch_completion,
    get_batch_status,
)
from utils.history_archive import SUMMARY_SCHEMA_VERSION
from utils.state_store import (
    CorruptStateError,
    JsonStateStore,
    ParsedFile,
    StorageError,
    read_json_object,
    remove_stale_temp_files,
    sibling_file,
    write_json_atomically,
)
from utils.tracker_files import SCHEMA_VERSION


def temp_files(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp-" in name)


def corrupt_copies(path) -> list[str]:
    directory, base = os.path.split(os.fspath(path))
    return sorted(name for name in os.listdir(directory) if name.startswith(base + ".corrupt-"))


@pytest.fixture
def tracker(tracker_config, clock) -> BatchTracker:
    return BatchTracker(tracker_config, clock=clock)


# --------------------------------------------------------------------------- the store


def test_it_writes_and_reads_back_a_json_object_leaving_no_temp_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomically(str(path), {"b": 1, "a": [1, 2]})
    assert read_json_object(str(path)) == {"a": [1, 2], "b": 1}
    assert temp_files(tmp_path) == []


def test_it_keeps_the_old_file_and_raises_storage_error_when_the_rename_fails(tmp_path, monkeypatch):
    # Tests run as root, which chmod does not stop, so inject the fault at the rename.
    path = tmp_path / "state.json"
    write_json_atomically(str(path), {"version": "old"})
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_store.os, "replace", full_disk)
    with pytest.raises(StorageError, match="no space left on device"):
        write_json_atomically(str(path), {"version": "new"})
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_it_keeps_the_old_file_and_raises_storage_error_when_the_data_cannot_be_written(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    write_json_atomically(str(path), {"version": "old"})
    before = path.read_bytes()

    def broken_write(fd, data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(state_store.os, "write", broken_write)
    with pytest.raises(StorageError, match=r"state\.json"):
        write_json_atomically(str(path), {"version": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_it_raises_storage_error_when_the_directory_does_not_exist(tmp_path):
    with pytest.raises(StorageError, match="cannot write"):
        write_json_atomically(str(tmp_path / "missing" / "state.json"), {})


def test_it_reads_a_missing_file_as_none(tmp_path):
    assert read_json_object(str(tmp_path / "absent.json")) is None


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b'{"a": 1', b"[1, 2]", b"", b"null", b'"text"'])
def test_it_reports_a_file_that_is_not_a_json_object_as_corrupt(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(CorruptStateError):
        read_json_object(str(path))


def test_it_reports_an_unreadable_path_as_storage_error_not_corruption(tmp_path):
    with pytest.raises(StorageError) as raised:
        read_json_object(str(tmp_path))  # a directory
    assert not isinstance(raised.value, CorruptStateError)


def test_it_holds_an_exclusive_lock_during_a_read_modify_write(tmp_path):
    store = JsonStateStore(tmp_path / "state.json")
    with store.locked():
        other = os.open(store.lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    other = os.open(store.lock_path, os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
    finally:
        os.close(other)


def test_it_applies_an_update_to_the_current_document(tmp_path):
    store = JsonStateStore(tmp_path / "state.json")
    store.update(lambda doc: {"n": 1})
    assert store.update(lambda doc: {"n": doc["n"] + 1}) == {"n": 2}
    assert store.read() == {"n": 2}


def test_it_moves_a_file_aside_with_a_utc_stamp_and_never_over_an_earlier_copy(tmp_path):
    store = JsonStateStore(tmp_path / "state.json")
    at = 1_772_935_200.0  # 2026-03-08T02:00:00Z
    (tmp_path / "state.json").write_text("first")
    first = store.move_aside(at)
    (tmp_path / "state.json").write_text("second")
    second = store.move_aside(at)
    assert os.path.basename(first) == "state.json.corrupt-20260308T020000Z"
    assert os.path.basename(second) == "state.json.corrupt-20260308T020000Z-2"
    assert (open(first).read(), open(second).read()) == ("first", "second")
    assert not (tmp_path / "state.json").exists()


def test_it_removes_temp_files_of_dead_writers_only(tmp_path):
    path = tmp_path / "state.json"
    dead = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    stale = tmp_path / f"state.json.tmp-{dead.pid}-abcd1234"
    live = tmp_path / f"state.json.tmp-{os.getpid()}-abcd1234"
    unrelated = tmp_path / f"other.json.tmp-{dead.pid}-abcd1234"
    for file in (stale, live, unrelated):
        file.write_text("{}")
    assert remove_stale_temp_files(str(path)) == [str(stale)]
    assert not stale.exists() and live.exists() and unrelated.exists()


# --------------------------------------------------------------------------- tracker: missing and corrupt files


def test_it_treats_a_missing_file_as_a_fresh_state_without_creating_it(tracker_config, tracker_file, clock):
    status = get_batch_status(config=tracker_config, clock=clock)
    assert (status["state"], status["id"], status["tracker"]["readable"]) == ("none", None, True)
    assert status["tracker"]["recovered_from_corruption"] == []
    assert not tracker_file.exists()
    assert BatchTracker(tracker_config, clock=clock).start()  # and a batch can start
    assert tracker_file.exists()


def _batch(**changes) -> dict:
    batch = {
        "id": "b1",
        "state": "running",
        "started_at": 1_700_000_000.0,
        "ended_at": None,
        "duration_seconds": None,
        "expected_stages": ["scrape"],
        "stages": {"scrape": {"percentage": 50.0, "first_seen_at": 1_700_000_000.0, "updated_at": 1_700_000_100.0}},
        "failure": None,
        "failures": [],
        "resumed_at": [],
        "cost_per_lead": None,
        "gpu_cost_dollars": 0.0,
    }
    batch["stages"]["scrape"]["completed_at"] = None
    batch.update(changes)
    return batch


def _document(**changes) -> bytes:
    return json.dumps({"schema_version": 1, "current": _batch(**changes), "storage_events": []}).encode()


CORRUPT_FILES = {
    "garbage": b"\x00\xffnot json at all",
    "truncated": _document()[:-20],
    "empty": b"",
    "json-list": b'[{"schema_version": 1}]',
    "empty-object": b"{}",
    "no-schema-version": json.dumps({"current": None}).encode(),
    "schema-version-text": json.dumps({"schema_version": "1", "current": None}).encode(),
    "stages-as-list": _document(stages=["scrape"]),
    "unknown-state": _document(state="sleeping"),
    "started-at-text": _document(started_at="yesterday"),
    "percentage-text": _document(stages={"scrape": {"percentage": "50", "updated_at": 1.0, "first_seen_at": 1.0}}),
    "first-seen-text": _document(stages={"scrape": {"percentage": 5, "updated_at": 1.0, "first_seen_at": "x"}}),
    "first-seen-missing": _document(stages={"scrape": {"percentage": 5, "updated_at": 1.0}}),
    "completed-at-text": _document(
        stages={"scrape": {"percentage": 100, "updated_at": 1.0, "first_seen_at": 1.0, "completed_at": "x"}}
    ),
    "failure-without-time": _document(state="failed", failure={"stage": "scrape"}, failures=[{"stage": "scrape"}]),
    "failures-of-text": _document(failures=["exit 1"]),
    "failure-empty": _document(state="failed", failure={}, failures=[]),
    "failed-without-failure": _document(state="failed", failure=None, failures=[]),
    "resumed-at-text": _document(resumed_at="never"),
    "duration-text": _document(state="completed", ended_at=1_700_000_500.0, duration_seconds="long"),
    "storage-events-not-list": json.dumps({"schema_version": 1, "current": None, "storage_events": {}}).encode(),
    "storage-event-without-time": json.dumps(
        {"schema_version": 1, "current": None, "storage_events": [{"event": "corrupt_file_moved_aside", "at": "x"}]}
    ).encode(),
}


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_it_moves_a_corrupt_file_aside_logs_an_error_and_starts_fresh(tracker, tracker_file, clock, caplog, content):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_bytes(content)
    clock.set(1_772_935_200.0)  # 2026-03-08T02:00:00Z
    caplog.set_level(logging.ERROR, logger="utils.batch_tracker")

    batch_id = tracker.start()

    [moved] = corrupt_copies(tracker_file)
    assert moved == "batch_tracker.json.corrupt-20260308T020000Z"
    assert (tracker_file.parent / moved).read_bytes() == content  # nothing silently discarded
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and moved in errors[0].getMessage()
    status = get_batch_status(config=tracker.config, clock=clock)
    assert (status["id"], status["state"]) == (batch_id, "running")
    [event] = status["tracker"]["recovered_from_corruption"]
    assert event["event"] == "corrupt_file_moved_aside"
    assert event["moved_to"].endswith(moved)
    assert event["at"] == "2026-03-08T02:00:00+00:00"


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_it_reports_a_corrupt_file_as_unreadable_without_touching_it(tracker_config, tracker_file, clock, content):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_bytes(content)
    status = get_batch_status(config=tracker_config, clock=clock)
    assert status["tracker"]["readable"] is False
    assert status["tracker"]["error"]
    assert status["state"] == "none"
    ok, reason = check_batch_completion(config=tracker_config, clock=clock)
    assert not ok and "tracker file unreadable" in reason
    assert tracker_file.read_bytes() == content
    assert corrupt_copies(tracker_file) == []


def test_it_keeps_the_repair_on_record_even_when_the_requested_change_is_refused(tracker, tracker_file, caplog):
    tracker_file.parent.mkdir(parents=True)
    tracker_file.write_bytes(b"garbage")
    with pytest.raises(BatchStateError):
        tracker.stage("scrape", 10)  # repaired, then refused: no batch runs in the fresh state
    assert len(corrupt_copies(tracker_file)) == 1
    stored = json.loads(tracker_file.read_text())
    assert stored["current"] is None
    assert stored["storage_events"][0]["event"] == "corrupt_file_moved_aside"


def test_it_refuses_a_file_from_a_newer_schema_without_moving_it_aside(tracker, tracker_file, clock):
    tracker_file.parent.mkdir(parents=True)
    newer = json.dumps({"schema_version": SCHEMA_VERSION + 1, "current": {"shape": "unknown"}}).encode()
    tracker_file.write_bytes(newer)
    with pytest.raises(StorageError, match="schema_version 2") as raised:
        tracker.start()
    assert not isinstance(raised.value, CorruptStateError)
    assert tracker_file.read_bytes() == newer
    assert corrupt_copies(tracker_file) == []
    status = get_batch_status(config=tracker.config, clock=clock)
    assert status["tracker"]["readable"] is False and "schema_version" in status["tracker"]["error"]


def test_it_moves_a_corrupt_history_file_aside_and_starts_a_new_history(tracker, clock, caplog):
    first = tracker.start()
    tracker.end()
    history = sibling_file(tracker.path, "history")
    with open(history, "w") as handle:
        handle.write('{"schema_version": 1, "batches": "oops"}')
    assert get_batch_status(config=tracker.config, clock=clock)["history"]["error"]
    clock.advance(86400)
    caplog.set_level(logging.ERROR, logger="utils.batch_tracker")
    tracker.start()
    assert len(corrupt_copies(history)) == 1
    assert any("history file" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert [b.id for b in tracker.snapshot().history] == [first]


# --------------------------------------------------------------------------- tracker: shape and bounds


def test_it_writes_a_schema_version_in_both_files(tracker, clock):
    tracker.start()
    clock.advance(10)
    tracker.start()
    assert json.loads(open(tracker.path).read())["schema_version"] == SCHEMA_VERSION
    summary = json.loads(open(tracker.history.summary_store.path).read())
    assert summary["schema_version"] == SUMMARY_SCHEMA_VERSION


def test_it_bounds_the_history_to_the_configured_limit(tracker_config, clock):
    tracker = BatchTracker(tracker_config.replace(history_limit=3), clock=clock)
    ids = []
    for _ in range(6):
        ids.append(tracker.start())
        clock.advance(60)
        tracker.end()
        clock.advance(86400)
    snapshot = tracker.snapshot()
    assert snapshot.current.id == ids[-1]
    assert [b.id for b in snapshot.history] == ids[-4:-1]  # the three newest finished batches


def test_it_keeps_the_tracker_file_the_same_size_however_long_the_history(tracker, clock):
    sizes = []
    for night in range(12):
        tracker.start(batch_id=f"night-{night:04d}")
        tracker.stage("scrape", 100)
        clock.advance(3600)
        tracker.end()
        clock.advance(86400)
        sizes.append(os.path.getsize(tracker.path))
    assert max(sizes) - min(sizes) <= 10  # only numbers' widths vary


def test_it_leaves_no_temp_files_after_many_writes(tracker):
    tracker.start()
    for percentage in range(0, 101, 10):
        tracker.stage("scrape", percentage)
    tracker.end()
    assert temp_files(os.path.dirname(tracker.path)) == []


def test_it_raises_storage_error_and_keeps_the_file_when_a_stage_write_fails(tracker, tracker_file, monkeypatch):
    tracker.start()
    tracker.stage("scrape", 10)
    before = tracker_file.read_bytes()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_store.os, "replace", full_disk)
    with pytest.raises(StorageError, match="no space left on device"):
        tracker.stage("scrape", 20)
    monkeypatch.undo()
    assert tracker_file.read_bytes() == before
    assert temp_files(tracker_file.parent) == []
    assert tracker.snapshot().current.stage("scrape").percentage == 10


# --------------------------------------------------------------------------- concurrency

WRITERS = 4
UPDATES = 30


def _stage_writer(tracker_file: str, writer: int, go) -> None:
    tracker = BatchTracker(TrackerConfig(tracker_file=tracker_file))
    go.wait(30)
    for index in range(UPDATES):
        tracker.stage(f"w{writer}-{index}", index + 1)


def test_it_loses_no_update_when_processes_write_different_stages_at_once(tracker):
    tracker.start([])
    context = multiprocessing.get_context("fork")
    go = context.Event()
    processes = [context.Process(target=_stage_writer, args=(tracker.path, w, go)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    go.set()  # release every writer at the same moment
    deadline = time.monotonic() + 60
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        assert process.exitcode == 0
    stages = tracker.snapshot().current.stage_map()
    expected = {f"w{w}-{i}": float(i + 1) for w in range(WRITERS) for i in range(UPDATES)}
    assert {name: detail.percentage for name, detail in stages.items()} == expected
    assert temp_files(os.path.dirname(tracker.path)) == []


# --------------------------------------------------------------------------- field trial (issue 10)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_it_refuses_to_write_nan_or_infinity_and_leaves_the_file_untouched(tmp_path, bad):
    path = str(tmp_path / "state.json")
    write_json_atomically(path, {"gpu_cost_dollars": 1.0})
    with open(path, "rb") as handle:
        before = handle.read()

    with pytest.raises(state_store.UnwritableValueError) as refused:
        write_json_atomically(path, {"current": {"gpu_cost_dollars": bad}})

    assert isinstance(refused.value, StorageError)
    assert path in str(refused.value) and "NaN or Infinity" in str(refused.value)
    assert "\n" not in str(refused.value)
    with open(path, "rb") as handle:
        assert handle.read() == before
    assert temp_files(tmp_path) == []


def test_it_creates_missing_directories_0750_whatever_the_umask(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    previous = os.umask(0)
    try:
        state_store.ensure_directory(str(target))
        state_store.ensure_directory(str(target))  # already there: no error
        JsonStateStore(str(tmp_path / "x" / "y" / "state.json")).update(lambda document: {"ok": True})
    finally:
        os.umask(previous)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", target, tmp_path / "x", tmp_path / "x" / "y"):
        assert os.stat(directory).st_mode & 0o777 == 0o750, directory
    for name in ("state.json", "state.json.lock"):
        assert os.stat(tmp_path / "x" / "y" / name).st_mode & 0o777 == 0o640, name


def test_it_leaves_an_existing_directory_mode_alone_and_refuses_a_file_in_the_way(tmp_path):
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    state_store.ensure_directory(str(existing / "sub"))
    assert os.stat(existing).st_mode & 0o777 == 0o755
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        state_store.ensure_directory(str(blocker / "sub"))


def test_it_parses_a_file_again_only_when_its_bytes_change_even_within_one_timestamp_tick(tmp_path):
    path = str(tmp_path / "state.json")
    write_json_atomically(path, {"value": "a"})
    parsed = ParsedFile(path)
    first = parsed.read()
    assert parsed.read() is first  # unchanged: no parse, the same object

    stamp = os.stat(path).st_mtime_ns
    write_json_atomically(path, {"value": "b"})  # same size, and the clock does not move on
    os.utime(path, ns=(stamp, stamp))
    assert parsed.read() == {"value": "b"}
    os.unlink(path)
    assert parsed.read() is None
