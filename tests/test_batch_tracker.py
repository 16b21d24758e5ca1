"""utils.batch_tracker: lifecycle, cost, input validation, config, and the hook CLI as a real subprocess."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import run_tracker_cli

from utils import batch_tracker, errors, model, tracker_cli
from utils.batch_tracker import (
    BatchStateError,
    InvalidInputError,
    TrackerConfig,
    get_batch_status,
    load_snapshot,
    record_batch_cost,
    record_batch_end,
    record_batch_failure,
    record_batch_resume,
    record_batch_stage_completion,
    record_batch_start,
)
from utils.config import PROJECT_ROOT, ConfigError
from utils.state_store import StorageError, sibling_file


@pytest.fixture
def api(tracker_config, clock):
    """The module API bound to this test's tracker file, config and clock."""

    class Api:
        config = tracker_config
        path = tracker_config.tracker_file

        @staticmethod
        def start(stages=None, **kw):
            return record_batch_start(stages, config=tracker_config, clock=clock, **kw)

        @staticmethod
        def stage(name, percentage):
            return record_batch_stage_completion(name, percentage, config=tracker_config, clock=clock)

        @staticmethod
        def end():
            return record_batch_end(config=tracker_config, clock=clock)

        @staticmethod
        def fail(stage=None, reason=""):
            return record_batch_failure(stage, reason, config=tracker_config, clock=clock)

        @staticmethod
        def resume():
            return record_batch_resume(config=tracker_config, clock=clock)

        @staticmethod
        def cost(per_lead=None, gpu=None):
            return record_batch_cost(per_lead, gpu, config=tracker_config, clock=clock)

        @staticmethod
        def snapshot():
            return load_snapshot(config=tracker_config)

        @staticmethod
        def status():
            return get_batch_status(config=tracker_config, clock=clock)

        @staticmethod
        def raw() -> bytes | None:
            try:
                with open(tracker_config.tracker_file, "rb") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None

    return Api


# --------------------------------------------------------------------------- lifecycle


def test_it_returns_an_id_on_start_and_records_a_running_batch(api, clock):
    batch_id = api.start()
    assert batch_tracker.is_valid_name(batch_id)
    current = api.snapshot().current
    assert current.id == batch_id
    assert current.state == "running"
    assert current.started_at == clock.now
    assert current.expected_stages == ("scrape", "enrich", "score")  # from the config
    assert api.status()["state"] == "running"


def test_it_gives_every_batch_a_new_id(api, clock):
    first = api.start()
    clock.advance(1)
    second = api.start()
    assert first != second


def test_it_uses_the_stage_list_given_at_start_over_the_configured_one(api):
    api.start(["a", "b"])
    assert api.snapshot().current.expected_stages == ("a", "b")


def test_it_keeps_percentage_first_seen_last_update_and_completion_time_per_stage(api, clock):
    api.start()
    first_seen = clock.advance(60)
    api.stage("scrape", 10)
    clock.advance(60)
    api.stage("scrape", 60.5)
    completed = clock.advance(60)
    api.stage("scrape", 100)
    last = clock.advance(60)
    api.stage("scrape", 100)  # a repeated 100 keeps the time it first got there
    detail = api.snapshot().current.stage("scrape")
    assert detail.to_dict() == {
        "percentage": 100.0,
        "first_seen_at": first_seen,
        "updated_at": last,
        "completed_at": completed,
    }


def test_it_builds_only_the_recorded_stage_when_a_hook_writes_to_a_big_batch(api, monkeypatch):
    api.start([])
    for index in range(50):
        api.stage(f"s{index}", 50)
    built, build = [], model.Stage._from_checked

    def counted(cls, name, record):
        built.append(name)
        return build(name, record)

    # A hook's write reads thousands of stages; building a value for each made it slower than a plain dict.
    monkeypatch.setattr(model.Stage, "_from_checked", classmethod(counted))
    assert api.stage("s7", 100).percentage == 100.0
    assert api.stage("new", 10).percentage == 10.0
    assert set(built) == {"s7", "new"}
    monkeypatch.undo()
    batch = api.snapshot().current
    # In the order first reported, after a round trip through the file too (s10 after s9, not after s1).
    assert [stage.name for stage in batch.stages] == [f"s{index}" for index in range(50)] + ["new"]
    assert batch.stage("s7").completed_at is not None and batch.stage("s8").percentage == 50.0


def test_it_has_no_completion_time_for_a_stage_below_100(api, clock):
    api.start()
    api.stage("scrape", 99.9)
    assert api.snapshot().current.stage("scrape").completed_at is None


def test_it_computes_the_overall_percentage_over_the_expected_stages(api):
    api.start()
    api.stage("scrape", 100)
    api.stage("enrich", 50)
    status = api.status()
    assert status["completion_percentage"] == 50.0  # (100 + 50 + 0) / 3
    assert [s["name"] for s in status["stages"]] == ["scrape", "enrich", "score"]


def test_it_sets_the_end_time_and_duration_on_end(api, clock):
    api.start()
    started = clock.now
    ended = clock.advance(3 * 3600 + 5)
    batch = api.end()
    assert (batch.state, batch.ended_at, batch.duration_seconds) == ("completed", ended, 3 * 3600 + 5)
    status = api.status()
    assert status["state"] == "completed"
    assert status["duration_seconds"] == ended - started
    assert status["ended_at"].endswith("+00:00")
    assert status["completion_percentage"] == 100.0


@pytest.mark.parametrize(
    "action",
    [
        lambda api: api.end(),
        lambda api: api.stage("scrape", 50),
        lambda api: api.fail("scrape", "exit 1"),
        lambda api: api.resume(),
        lambda api: api.cost(0.5),
    ],
    ids=["end", "stage", "fail", "resume", "cost"],
)
def test_it_refuses_a_transition_with_no_batch_and_writes_nothing(api, action):
    with pytest.raises(BatchStateError, match="no batch has been started"):
        action(api)
    assert api.raw() is None  # not a new record
    assert not os.path.exists(sibling_file(api.path, "history"))


@pytest.mark.parametrize(
    "action",
    [lambda api: api.end(), lambda api: api.stage("scrape", 50), lambda api: api.fail("scrape", "x")],
    ids=["end", "stage", "fail"],
)
@pytest.mark.parametrize("finish", ["end", "fail"])
def test_it_refuses_a_transition_on_a_finished_batch_and_leaves_the_file_byte_identical(api, action, finish):
    batch_id = api.start()
    getattr(api, finish)()
    before = api.raw()
    with pytest.raises(BatchStateError, match=f"{batch_id} is {'completed' if finish == 'end' else 'failed'}"):
        action(api)
    assert api.raw() == before


def test_it_marks_a_still_running_batch_abandoned_when_a_new_one_starts(api, clock):
    first = api.start()
    api.stage("scrape", 40)
    replaced_at = clock.advance(600)
    second = api.start()
    snapshot = api.snapshot()
    assert snapshot.current.id == second and snapshot.current.state == "running"
    [old] = snapshot.history
    assert (old.id, old.state, old.ended_at, old.abandoned_by) == (first, "abandoned", replaced_at, second)
    assert old.stage("scrape").percentage == 40  # kept, not overwritten
    assert [b.id for b in snapshot.batches_newest_first()] == [second, first]


def test_it_archives_a_finished_batch_unchanged_when_the_next_starts(api, clock):
    first = api.start()
    api.end()
    clock.advance(86400)
    api.start()
    [old] = api.snapshot().history
    assert (old.id, old.state) == (first, "completed")


def test_it_records_a_failure_with_stage_and_reason(api, clock):
    api.start()
    failed_at = clock.advance(100)
    batch = api.fail("enrich", "exit code 3")
    assert batch.state == "failed"
    assert batch.failure.to_dict() == {"stage": "enrich", "reason": "exit code 3", "at": failed_at}
    assert batch.failures == (batch.failure,)
    assert batch.ended_at == failed_at
    assert api.status()["failure"]["stage"] == "enrich"


def test_it_records_a_failure_without_a_stage(api):
    api.start()
    assert api.fail().failure.stage is None


def test_it_resumes_a_failed_batch_with_the_same_id(api, clock):
    batch_id = api.start()
    api.stage("scrape", 100)
    api.fail("enrich", "exit code 3")
    resumed_at = clock.advance(300)
    batch = api.resume()
    assert (batch.id, batch.state, batch.failure, batch.ended_at) == (batch_id, "running", None, None)
    assert batch.resumed_at == (resumed_at,)
    assert len(batch.failures) == 1  # the failure stays on record
    assert batch.stage("scrape").percentage == 100  # completed stages survive
    api.stage("enrich", 100)
    clock.advance(60)
    assert api.end().id == batch_id
    assert api.snapshot().history == ()  # resuming is not a new batch


def test_it_refuses_to_resume_a_batch_that_did_not_fail(api):
    batch_id = api.start()
    api.end()
    before = api.raw()
    with pytest.raises(BatchStateError, match=f"batch {batch_id} is completed, not running; only a failed batch"):
        api.resume()
    assert api.raw() == before


def test_it_says_a_running_batch_is_already_running_when_asked_to_resume_it(api):
    batch_id = api.start()
    before = api.raw()
    with pytest.raises(BatchStateError) as refused:
        api.resume()
    assert str(refused.value) == f"batch {batch_id} is already running; nothing to resume"
    assert "no batch is running" not in str(refused.value)
    assert api.raw() == before


# --------------------------------------------------------------------------- cost


def test_it_sets_cost_per_lead_and_adds_up_gpu_dollars(api):
    api.start()
    api.cost(per_lead=0.12)
    api.cost(gpu=1.25)
    api.cost(per_lead=0.10, gpu=2.5)
    batch = api.snapshot().current
    assert batch.cost_per_lead == 0.10  # set, the latest wins
    assert batch.gpu_cost_dollars == 3.75  # added up
    status = api.status()
    assert (status["cost_per_lead"], status["gpu_cost_dollars"]) == (0.10, 3.75)


def test_it_records_a_cost_after_the_batch_ended(api):
    api.start()
    api.end()
    assert api.cost(gpu=1).gpu_cost_dollars == 1.0


@pytest.mark.parametrize(
    ("per_lead", "gpu"), [(None, None), (-0.01, None), (None, -1), (math.nan, None), (None, math.inf), ("abc", None)]
)
def test_it_refuses_a_missing_or_invalid_cost_and_leaves_the_file_byte_identical(api, per_lead, gpu):
    api.start()
    before = api.raw()
    with pytest.raises(InvalidInputError):
        api.cost(per_lead, gpu)
    assert api.raw() == before


# --------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize("name", ["has space", "sc\u00e9nario", "a" * 65, "", "a/b", "a\nb", None, 5])
def test_it_refuses_an_invalid_stage_name_and_leaves_the_file_byte_identical(api, name):
    api.start()
    api.stage("scrape", 10)
    before = api.raw()
    with pytest.raises(InvalidInputError, match="stage name"):
        api.stage(name, 50)
    if name is not None:  # fail() without a stage is allowed
        with pytest.raises(InvalidInputError, match="stage name"):
            api.fail(name, "x")
    assert api.raw() == before


@pytest.mark.parametrize(
    "percentage", [math.nan, math.inf, -math.inf, -1, -0.001, 100.001, 101, "abc", "nan", True, None]
)
def test_it_refuses_an_invalid_percentage_and_leaves_the_file_byte_identical(api, percentage):
    api.start()
    api.stage("scrape", 10)
    before = api.raw()
    with pytest.raises(InvalidInputError, match="percentage"):
        api.stage("scrape", percentage)
    assert api.raw() == before


@pytest.mark.parametrize(
    ("name", "percentage", "stored"), [("a" * 64, 0, 0.0), ("x.y-z_1", "42.5", 42.5), ("s", 100, 100.0)]
)
def test_it_accepts_the_limits_of_what_is_allowed(api, name, percentage, stored):
    api.start()
    assert api.stage(name, percentage).percentage == stored


def test_it_refuses_an_invalid_stage_list_or_batch_id_at_start(api):
    with pytest.raises(InvalidInputError, match="twice"):
        api.start(["a", "a"])
    with pytest.raises(InvalidInputError, match="stage name"):
        api.start(["ok", "not ok"])
    with pytest.raises(InvalidInputError, match="batch id"):
        api.start(batch_id="bad id")
    assert api.raw() is None


def test_it_truncates_a_very_long_failure_reason(api):
    api.start()
    reason = "x" * (batch_tracker.MAX_REASON_LENGTH + 10)
    assert api.fail("s", reason).failure.reason == reason[: batch_tracker.MAX_REASON_LENGTH]


def test_it_lets_the_path_argument_override_the_configured_file(tmp_path, tracker_config, clock):
    other = tmp_path / "elsewhere" / "tracker.json"
    record_batch_start(path=other, config=tracker_config, clock=clock)
    assert other.exists()
    assert not os.path.exists(tracker_config.tracker_file)


def test_it_hands_out_model_values_from_every_write_and_read(api, clock):
    batch_id = api.start(["scrape"])
    stage = api.stage("scrape", 100)
    assert isinstance(stage, model.Stage) and (stage.name, stage.completed_at) == ("scrape", clock.now)
    batch = api.end()
    assert isinstance(batch, model.Batch) and (batch.id, batch.is_completed) == (batch_id, True)
    snapshot = api.snapshot()
    assert isinstance(snapshot, model.Snapshot) and snapshot.current == batch
    clock.advance(86400)
    api.start()
    assert api.snapshot().history == (batch,)  # archived unchanged, read back as the same value


def test_it_keeps_the_cli_and_the_push_out_of_the_library(base_env, tracker_file):
    probe = (
        "import sys; from utils import batch_tracker; from utils.config import TrackerConfig; "
        f"config = TrackerConfig(tracker_file={str(tracker_file)!r}, pushgateway_url='http://127.0.0.1:9'); "
        "batch_tracker.record_batch_start(config=config); batch_tracker.record_batch_end(config=config); "
        "print(sorted(m for m in ('utils.tracker_cli', 'utils.pushgateway', 'utils.tracker_views', "
        "'prometheus_client', 'argparse') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=base_env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout.strip() == "[]", result.stderr
    assert json.loads(tracker_file.read_text())["current"]["state"] == "completed"


def test_it_runs_the_cli_module_itself(base_env):
    started = subprocess.run(
        [sys.executable, "-m", "utils.tracker_cli", "start"], env=base_env, capture_output=True, text=True, timeout=30
    )
    assert started.returncode == 0 and batch_tracker.is_valid_name(started.stdout.strip()), started.stderr
    status = cli(base_env, "status", "--json", check=True)  # python -m utils.batch_tracker hands over to it
    assert json.loads(status.stdout)["id"] == started.stdout.strip()


def test_it_maps_every_domain_error_to_its_exit_code_at_one_boundary(tmp_path, capsys):
    for error in (StorageError, ConfigError, InvalidInputError, BatchStateError, errors.UsageError):
        assert issubclass(error, errors.TrackerError)
    env = {"BATCH_TRACKER_FILE": str(tmp_path / "t.json")}
    blocked = {"BATCH_TRACKER_FILE": str(tmp_path / "blocker" / "x" / "t.json")}
    (tmp_path / "blocker").write_text("")  # a file where the blocked path needs a directory
    cases = [
        (["stage", "scrape", "50"], env, 2, "batch_tracker: error: cannot record stage scrape"),
        (["start"], dict(env, BATCH_NAME="a b"), 2, "batch_tracker: error: BATCH_NAME="),
        (["bogus"], env, 2, "batch_tracker: error: unknown command 'bogus'"),
        (["start"], blocked, 3, "batch_tracker: storage error: cannot lock"),
    ]
    for argv, environ, code, line in cases:
        assert tracker_cli.main(argv, environ, io.StringIO()) == code, argv
        [written] = capsys.readouterr().err.splitlines()
        assert written.startswith(line), written


def test_it_names_sibling_files_after_the_tracker_file():
    assert sibling_file("/d/batch_tracker.json", "monitor") == "/d/batch_tracker.monitor.json"
    assert sibling_file("/d/tracker", "history") == "/d/tracker.history.json"


# --------------------------------------------------------------------------- CLI (real subprocess)


def cli(env, *args, check=False):
    return run_tracker_cli(env, *args, check=check)


def test_it_runs_a_whole_batch_from_the_cli(base_env, tracker_file):
    started = cli(base_env, "start", "--stages", "scrape,enrich")
    assert started.returncode == 0, started.stderr
    batch_id = started.stdout.strip()
    for args in (["stage", "scrape", "100"], ["stage", "enrich", "40"], ["cost", "--per-lead", "0.2"]):
        result = cli(base_env, *args)
        assert (result.returncode, result.stderr) == (0, "")
    assert cli(base_env, "end").returncode == 0
    stored = json.loads(tracker_file.read_text())
    assert stored["current"]["id"] == batch_id
    assert stored["current"]["state"] == "completed"
    assert stored["current"]["stages"]["enrich"]["percentage"] == 40
    assert stored["current"]["cost_per_lead"] == 0.2


def test_it_fails_and_resumes_from_the_cli(base_env, tracker_file):
    batch_id = cli(base_env, "start").stdout.strip()
    assert cli(base_env, "fail", "--stage", "enrich", "--reason", "exit code 7").returncode == 0
    assert json.loads(tracker_file.read_text())["current"]["failure"]["reason"] == "exit code 7"
    resumed = cli(base_env, "resume")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, batch_id)


def test_it_exits_0_from_check_while_a_batch_runs_before_its_deadline(base_env):
    cli(base_env, "start")
    result = cli(base_env, "check")
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: ")


def test_it_exits_1_from_check_when_the_batch_failed(base_env):
    cli(base_env, "start")
    cli(base_env, "fail", "--stage", "score", "--reason", "exit code 2")
    result = cli(base_env, "check")
    assert result.returncode == 1
    assert result.stdout.startswith("PROBLEM: ")
    assert "score" in result.stdout and "exit code 2" in result.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["stage", "scrape", "abc"], "'abc'"),
        (["stage", "scrape", "101"], "'101'"),
        (["stage", "scrape", "nan"], "'nan'"),
        (["stage", "scrape", "-1"], "'-1'"),
        (["stage", "bad name", "50"], "'bad name'"),
        (["stage", "a" * 65, "50"], "a" * 65),
        (["stage", "scrape"], "'stage' takes 2 argument(s)"),
        (["fail", "--stage", "x y"], "'x y'"),
        (["cost", "--gpu-dollars", "-3"], "'-3'"),
        (["cost"], "nothing to record"),
        (["start", "--id", "no spaces"], "'no spaces'"),
        (["frobnicate"], "'frobnicate'"),
        (["stage", "scrape", "50", "--force"], "'--force'"),
        (["status", "--verbose"], "'--verbose'"),
        (["start", "--stages"], "--stages needs a value"),
    ],
)
def test_it_exits_2_with_one_line_naming_the_bad_value_and_leaves_the_file_untouched(
    base_env, tracker_file, args, named
):
    record_batch_start(["scrape"], config=TrackerConfig(tracker_file=str(tracker_file)))  # in-process: faster
    before = tracker_file.read_bytes()
    result = cli(base_env, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert tracker_file.read_bytes() == before


def test_it_exits_2_for_end_with_no_batch_and_creates_no_record(base_env, tracker_file):
    result = cli(base_env, "end")
    assert result.returncode == 2
    assert "no batch has been started" in result.stderr
    assert not tracker_file.exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_COMPLETION_DEADLINE_HOUR", "24"),
        ("BATCH_COMPLETION_DEADLINE_MINUTE", "abc"),
        ("BATCH_COMPLETION_TIMEZONE", "Mars/Olympus"),
        ("BATCH_EXPECTED_STAGES", "a,b c"),
    ],
)
def test_it_exits_2_naming_a_bad_environment_variable_before_writing(base_env, tracker_file, variable, value):
    result = cli(dict(base_env, **{variable: value}), "start")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert variable in result.stderr
    assert not tracker_file.exists()


def test_it_exits_3_when_the_tracker_directory_cannot_be_created(base_env, tmp_path):
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a directory")
    env = dict(base_env, BATCH_TRACKER_FILE=str(blocker / "data" / "batch_tracker.json"))
    result = cli(env, "start")
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1
    assert "storage error" in result.stderr and str(blocker) in result.stderr
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("command", ["start", "status", "check"])
def test_it_exits_2_naming_the_variable_when_the_tracker_file_is_a_directory(base_env, tmp_path, command):
    directory = tmp_path / "tracker-dir"
    directory.mkdir()
    env = dict(base_env, BATCH_TRACKER_FILE=str(directory))
    result = cli(env, command)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BATCH_TRACKER_FILE" in lines[0] and str(directory) in lines[0]
    assert "names a directory" in lines[0]
    assert os.listdir(directory) == []


def test_it_prints_usage_for_help_and_exits_2_without_a_command(base_env):
    helped = cli(base_env, "--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout
    bare = cli(base_env)
    assert bare.returncode == 2 and "usage:" in (bare.stdout + bare.stderr)


def test_it_does_not_import_prometheus_or_pytz_for_a_stage_hook(base_env):
    cli(base_env, "start")
    probe = (
        "import sys; from utils.tracker_cli import main; code = main(['stage', 'scrape', '50']);"
        "heavy = [m for m in ('prometheus_client', 'pytz', 'logging', 'argparse') if m in sys.modules];"
        "print(code, heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=base_env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout.strip() == "0 []", result.stderr


def test_the_executable_wrapper_runs_the_same_cli(base_env):
    wrapper = os.path.join(PROJECT_ROOT, "bin", "batch_tracker")
    if not os.access(wrapper, os.X_OK):
        pytest.skip("bin/batch_tracker is not built yet")
    result = subprocess.run([wrapper, "start"], env=base_env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert batch_tracker.is_valid_name(result.stdout.strip())


def test_it_reports_the_api_names_the_issue_fixes():
    for name in (
        "record_batch_start",
        "record_batch_stage_completion",
        "record_batch_end",
        "record_batch_failure",
        "record_batch_cost",
        "check_batch_completion",
        "get_batch_status",
    ):
        assert callable(getattr(batch_tracker, name))


# --------------------------------------------------------------------------- field trial (issue 10)


def test_it_refuses_gpu_dollars_whose_sum_is_not_finite_and_keeps_the_batch(api):
    batch_id = api.start()
    api.cost(gpu=1e308)
    before = api.raw()
    with pytest.raises(InvalidInputError, match=r"GPU dollars 1e\+308 would make .* inf"):
        api.cost(gpu=1e308)
    assert api.raw() == before
    api.stage("scrape", 50)  # the next hook still finds its batch
    assert api.snapshot().current.id == batch_id
    assert api.snapshot().storage_events == ()


def test_it_exits_2_from_the_cli_for_gpu_dollars_whose_sum_is_not_finite(base_env, tracker_file):
    batch_id = cli(base_env, "start", check=True).stdout.strip()
    cli(base_env, "cost", "--gpu-dollars", "1e308", check=True)
    before = tracker_file.read_bytes()

    again = cli(base_env, "cost", "--gpu-dollars", "1e308")

    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "'1e308'" in lines[0]
    assert tracker_file.read_bytes() == before
    assert b"Infinity" not in before
    cli(base_env, "stage", "scrape", "100", check=True)  # the next hook finds the batch, moves nothing aside
    assert [p.name for p in tracker_file.parent.iterdir() if ".corrupt-" in p.name] == []
    assert json.loads(cli(base_env, "status", "--json", check=True).stdout)["id"] == batch_id


def cli_lines(result) -> list[str]:
    return result.stderr.strip().splitlines()


@pytest.mark.parametrize("percentage", [" 50 ", "5_0", "\u0665\u0660", "50\n", "\uff15\uff10", "inf", "1e999"])
def test_it_exits_2_for_a_percentage_python_would_parse_but_a_person_would_not_write(
    base_env, tracker_file, percentage
):
    record_batch_start(["scrape"], config=TrackerConfig(tracker_file=str(tracker_file)))
    before = tracker_file.read_bytes()
    result = cli(base_env, "stage", "scrape", percentage)
    assert result.returncode == 2
    assert len(cli_lines(result)) == 1 and repr(percentage) in result.stderr
    assert tracker_file.read_bytes() == before


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_COMPLETION_DEADLINE_HOUR", "\u0665"),  # Arabic-Indic five: int() takes it
        ("BATCH_COMPLETION_DEADLINE_HOUR", "0_5"),
        ("BATCH_COMPLETION_DEADLINE_HOUR", " 5 "),
        ("BATCH_COMPLETION_DEADLINE_HOUR", "+5"),
        ("BATCH_COMPLETION_DEADLINE_MINUTE", "\uff13\uff10"),  # full-width 30
        ("BATCH_HISTORY_LIMIT", "1_000"),
    ],
)
def test_it_accepts_only_ascii_digits_in_whole_number_settings(base_env, tracker_file, variable, value):
    with pytest.raises(ConfigError) as raised:
        TrackerConfig.from_env({variable: value})
    assert f"{variable}={value!r}" in str(raised.value)
    result = cli(dict(base_env, **{variable: value}), "start")
    assert result.returncode == 2
    assert len(cli_lines(result)) == 1 and f"{variable}={value!r}" in result.stderr
    assert not tracker_file.exists()


def test_it_still_reads_plain_numbers(api):
    config = TrackerConfig.from_env({"BATCH_COMPLETION_DEADLINE_HOUR": "07", "BATCH_HISTORY_LIMIT": "30"})
    assert (config.deadline_hour, config.history_limit) == (7, 30)
    api.start()
    assert [api.stage("s", raw).percentage for raw in ("0", "42.5", ".5", "1e1", "100")] == [0, 42.5, 0.5, 10, 100]


def test_it_exits_2_and_changes_nothing_when_start_names_the_running_batchs_id(base_env, tracker_file):
    cli(base_env, "start", "--id", "night-1", check=True)
    before = tracker_file.read_bytes()

    again = cli(base_env, "start", "--id", "night-1")

    assert again.returncode == 2
    assert len(cli_lines(again)) == 1 and "'night-1' is already used" in again.stderr
    assert tracker_file.read_bytes() == before
    status = json.loads(cli(base_env, "status", "--json", check=True).stdout)
    assert (status["id"], status["state"], status["history"]["count"]) == ("night-1", "running", 0)


def test_it_never_reuses_an_id_from_history(base_env, tracker_file):
    cli(base_env, "start", "--id", "night-1", check=True)
    cli(base_env, "end", check=True)
    cli(base_env, "start", "--id", "night-2", check=True)
    history_files = [
        tracker_file.with_name(f"batch_tracker.{name}") for name in ("history.jsonl", "history-summary.json")
    ]
    before = [path.read_bytes() for path in (tracker_file, *history_files)]

    again = cli(base_env, "start", "--id", "night-1")

    assert again.returncode == 2
    assert "'night-1' is already used by a batch in history" in again.stderr
    assert [path.read_bytes() for path in (tracker_file, *history_files)] == before
    ids = [b["id"] for b in json.loads(cli(base_env, "history", "--json", check=True).stdout)]
    assert ids == ["night-2", "night-1"]


def test_it_says_what_is_wrong_when_resume_meets_a_running_batch_from_the_cli(base_env, tracker_file):
    batch_id = cli(base_env, "start", check=True).stdout.strip()
    before = tracker_file.read_bytes()
    result = cli(base_env, "resume")
    assert result.returncode == 2
    assert cli_lines(result) == [f"batch_tracker: error: batch {batch_id} is already running; nothing to resume"]
    assert tracker_file.read_bytes() == before


HOSTILE_REASON = "exit 3\nMAINPID=1\r\x1b[2J\x1b]0;owned\x07 \u202egnp.exe\u2028done\t."


def test_it_stores_a_failure_reason_as_one_printable_line(api):
    api.start()
    reason = api.fail("scrape", HOSTILE_REASON).failure.reason
    assert reason == batch_tracker.clean_text(HOSTILE_REASON)
    assert reason.isprintable()
    assert reason == "exit 3 MAINPID=1 \\x1b[2J\\x1b]0;owned\\x07 \\u202egnp.exe done ."


def test_it_keeps_hook_text_off_the_terminal_in_status_check_and_history(base_env, tracker_file):
    batch_id = cli(base_env, "start", "--stages", "scrape", check=True).stdout.strip()
    cli(base_env, "fail", "--stage", "scrape", "--reason", HOSTILE_REASON, check=True)

    outputs = [cli(base_env, *command) for command in (["status"], ["check"], ["history"], ["status", "--color"])]

    for result in outputs:
        assert result.returncode in (0, 1)
        assert "\r" not in result.stdout and "\x07" not in result.stdout and "\u202e" not in result.stdout
    status, check, history, coloured = (r.stdout for r in outputs)
    for text in (status, check, history):
        assert "\x1b" not in text
    # The whole reason stays on the line it belongs to.
    (failure_line,) = [line for line in status.splitlines() if line.startswith("failed at stage")]
    assert failure_line.endswith("done .") and "MAINPID=1" in failure_line
    assert check.count("\n") == 1 and batch_id in check and "MAINPID=1" in check
    assert not any(
        line.startswith("MAINPID") for text in (status, check, history, coloured) for line in text.splitlines()
    )
    # With --color only our own colour codes are escapes: none comes from the reason.
    assert "\x1b[2J" not in coloured and "\x1b]0;" not in coloured


def test_it_creates_the_state_directory_0750_and_files_0640_under_umask_000(base_env, tmp_path):
    tracker = tmp_path / "fresh" / "state" / "batch_tracker.json"
    env = dict(base_env, BATCH_TRACKER_FILE=str(tracker))
    script = f'umask 000 && exec "{sys.executable}" -m utils.batch_tracker "$@"'
    for args in (["start"], ["stage", "scrape", "50"], ["end"], ["start"]):
        subprocess.run(["sh", "-c", script, "sh", *args], env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)

    for directory in (tmp_path / "fresh", tracker.parent):
        assert os.stat(directory).st_mode & 0o777 == 0o750, directory
    files = sorted(tracker.parent.iterdir())
    names = {"batch_tracker.json", "batch_tracker.json.lock", "batch_tracker.history.jsonl"}
    assert {f.name for f in files} >= {*names, "batch_tracker.history-summary.json"}
    for path in files:
        assert os.stat(path).st_mode & 0o027 == 0, f"{path.name}: {oct(os.stat(path).st_mode & 0o777)}"


def test_it_keeps_a_hostile_reason_to_one_line_in_the_monitors_once_output(base_env, tmp_path):
    cli(base_env, "start", "--stages", "scrape", check=True)
    cli(base_env, "fail", "--stage", "scrape", "--reason", HOSTILE_REASON, check=True)
    env = dict(base_env, BATCH_OUTBOX_DIR=str(tmp_path / "outbox"), METRICS_PORT="0")
    monitor = os.path.join(PROJECT_ROOT, "bin", "batch_completion_monitor.py")

    result = subprocess.run([sys.executable, monitor, "--once"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1, result.stderr
    assert result.stdout.count("\n") == 1 and "MAINPID=1" in result.stdout
    assert not any(ch in result.stdout for ch in "\x1b\r\x07\u202e\u2028")
