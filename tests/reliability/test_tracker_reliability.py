"""Fault injection against the tracker: kill -9 mid-write, parallel writers, bad disks, hostile input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import time
import uuid

import pytest
from conftest import copy_for_other_users, python_for_other_users, run_tracker_cli
from disk_faults import fill, remount, small_tmpfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils import batch_tracker, tracker_files
from utils.batch_tracker import BatchTracker, TrackerConfig, get_batch_status
from utils.state_store import read_json_object
from utils.tracker_cli import main

KILLS = 300


def _writer_loop(tracker_file: str, start_value: int) -> None:
    """Child process body: update one stage with increasing values forever."""
    tracker = BatchTracker(TrackerConfig(tracker_file=tracker_file))
    value = start_value
    while True:
        value = value + 1 if value < 100 else 0
        tracker.stage("scrape", value)


@pytest.mark.slow
def test_it_never_tears_the_file_when_writers_are_killed_mid_write(tracker_config):
    tracker = BatchTracker(tracker_config)
    tracker.start(["scrape"])
    tracker.stage("scrape", 0)
    rng = random.Random(1234)
    seen_values = set()
    for _ in range(KILLS):
        before = read_json_object(tracker.path)
        pid = os.fork()
        if pid == 0:  # child: write until killed
            try:
                _writer_loop(tracker.path, int(before["current"]["stages"]["scrape"]["percentage"]))
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 0.004))  # the random kill point, not a wait for a condition
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        after = read_json_object(tracker.path)  # raises if torn
        tracker_files._parse_tracker(after)
        assert after["current"]["id"] == before["current"]["id"]
        seen_values.add(after["current"]["stages"]["scrape"]["percentage"])
    assert len(seen_values) > 10, "the writers should have made progress between kills"
    # Temporary files of killed writers are swept by the next start.
    tracker.start(["scrape"])
    leftovers = [n for n in os.listdir(os.path.dirname(tracker.path)) if ".tmp-" in n]
    assert leftovers == []


def _parallel_writer(tracker_file: str, writer: int, updates: int) -> None:
    tracker = BatchTracker(TrackerConfig(tracker_file=tracker_file))
    for index in range(updates):
        tracker.stage(f"w{writer}_{index}", (index % 100) + 0.5)


@pytest.mark.slow
def test_it_keeps_every_update_from_8_processes_x_200(tracker_config):
    import multiprocessing

    tracker = BatchTracker(tracker_config)
    tracker.start([])
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_parallel_writer, args=(tracker.path, w, 200)) for w in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    stages = tracker.snapshot().current.stage_map()
    assert len(stages) == 1600
    assert all(stages[f"w{w}_{i}"].percentage == (i % 100) + 0.5 for w in range(8) for i in range(200))


def _cli(env, *args):
    return run_tracker_cli(env, *args)


def test_it_reports_a_full_disk_with_exit_3_and_keeps_the_old_file(tmp_path, base_env):
    with small_tmpfs(tmp_path / "disk", size="64k") as disk:
        env = dict(base_env, BATCH_TRACKER_FILE=str(disk / "batch_tracker.json"))
        assert _cli(env, "start", "--stages", "scrape").returncode == 0
        assert _cli(env, "stage", "scrape", "40").returncode == 0
        before = (disk / "batch_tracker.json").read_bytes()
        fill(disk)
        result = _cli(env, "stage", "scrape", "60")
        assert result.returncode == 3, result.stderr
        assert "no space left on device" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert (disk / "batch_tracker.json").read_bytes() == before
        assert not [n for n in os.listdir(disk) if ".tmp-" in n]


def test_it_reports_a_read_only_disk_with_exit_3_and_keeps_the_old_file(tmp_path, base_env):
    with small_tmpfs(tmp_path / "disk", size="1m") as disk:
        env = dict(base_env, BATCH_TRACKER_FILE=str(disk / "batch_tracker.json"))
        assert _cli(env, "start", "--stages", "scrape").returncode == 0
        before = (disk / "batch_tracker.json").read_bytes()
        remount(disk, "ro")
        result = _cli(env, "stage", "scrape", "60")
        assert result.returncode == 3, result.stderr
        assert "read-only file system" in result.stderr.lower()
        assert (disk / "batch_tracker.json").read_bytes() == before
        status = _cli(env, "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["state"] == "running"


def test_it_reports_a_directory_it_may_not_write_with_exit_3(reachable_dir, base_env):
    # The user must reach the directory, the code and an interpreter, wherever the checkout is.
    copy_for_other_users(reachable_dir / "code", "utils", packages=("pytz",))
    data = reachable_dir / "locked"
    data.mkdir()
    env = dict(base_env, BATCH_TRACKER_FILE=str(data / "batch_tracker.json"), PYTHONPATH=str(reachable_dir / "code"))
    assert _cli(env, "start").returncode == 0
    before = (data / "batch_tracker.json").read_bytes()
    os.chmod(data, 0o755)
    os.chmod(data / "batch_tracker.json.lock", 0o644)
    # root ignores permissions, so run the hook as an unprivileged user.
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            python_for_other_users(),
            "-m",
            "utils.batch_tracker",
            "stage",
            "scrape",
            "10",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "permission denied" in result.stderr.lower()
    assert (data / "batch_tracker.json").read_bytes() == before


# --------------------------------------------------------------------------- hostile input

stage_names = st.one_of(st.text(max_size=80), st.sampled_from(["scrape", "a" * 64, "a" * 65, "", "x y", "é", "a\nb"]))
percentages = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=20),
    st.sampled_from(["nan", "inf", "-1", "101", "1e400", "50", "0x10", " 5 "]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=stage_names, percentage=percentages)
def test_it_never_crashes_or_corrupts_on_arbitrary_stage_input(tmp_path, name, percentage):
    tracker_file = tmp_path / f"{uuid.uuid4().hex}.json"
    env = {"BATCH_TRACKER_FILE": str(tracker_file)}
    assert main(["start", "--stages", "scrape"], env, io.StringIO()) == 0
    before = tracker_file.read_bytes()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["stage", name, str(percentage)], env, io.StringIO())
    assert code in (0, 2)
    if code == 2:
        assert tracker_file.read_bytes() == before
        assert len(err.getvalue().strip().splitlines()) == 1
    tracker_files._parse_tracker(read_json_object(str(tracker_file)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reason=st.text(max_size=3000), stage=st.one_of(st.none(), stage_names))
def test_it_stores_any_failure_reason_safely(tmp_path, reason, stage):
    tracker = BatchTracker(TrackerConfig(tracker_file=str(tmp_path / f"{uuid.uuid4().hex}.json")))
    tracker.start()
    try:
        tracker.fail(stage, reason)
    except batch_tracker.InvalidInputError:
        assert tracker.snapshot().current.state == "running"
        return
    failure = tracker.snapshot().current.failure
    assert failure.reason == batch_tracker.clean_text(reason)
    # One printable line, whatever came in: nothing can add a notify assignment or drive a terminal.
    assert failure.reason.isprintable() and len(failure.reason) <= batch_tracker.MAX_REASON_LENGTH
    if reason.isprintable():
        assert failure.reason == reason.strip()[: batch_tracker.MAX_REASON_LENGTH]


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
hostile_documents = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"schema_version": st.sampled_from([1, 0, "1", None]), "current": json_values, "storage_events": json_values}
    ).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b'{"schema_version": 1, "current": {"id": "x"', b"[" * 5000, b'{"schema_version": 1}' + b"\0"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=hostile_documents)
def test_it_survives_hostile_tracker_files(tmp_path, content):
    tracker_file = tmp_path / f"{uuid.uuid4().hex}.json"
    tracker_file.write_bytes(content)
    config = TrackerConfig(tracker_file=str(tracker_file))
    status = get_batch_status(config=config)  # never raises, never touches the file
    assert tracker_file.read_bytes() == content
    assert status["state"] in ("none", "running", "completed", "failed", "abandoned")
    tracker = BatchTracker(config)
    tracker.start(["scrape"])  # repairs (moves aside) when it must, never crashes
    tracker.stage("scrape", 10)
    assert tracker.snapshot().current.stage("scrape").percentage == 10
    if not status["tracker"]["readable"]:
        assert any(n.startswith(tracker_file.name + ".corrupt-") for n in os.listdir(tmp_path))
