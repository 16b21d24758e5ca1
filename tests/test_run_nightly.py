"""bin/run_nightly.sh (and bin/batch_tracker, bin/demo_stage.sh) run as real subprocesses.

Every run is isolated: base_env points BATCH_TRACKER_FILE and LOG_DIR into tmp_path, and each
test writes its own small stages file there. The runner is started from tmp_path, not the
project root, to prove it finds its way home.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, wait_until

from utils.batch_tracker import TrackerConfig, get_batch_status

RUNNER = PROJECT_ROOT / "bin" / "run_nightly.sh"
TRACKER_CLI = PROJECT_ROOT / "bin" / "batch_tracker"
DEMO_CONF = PROJECT_ROOT / "etc" / "nightly_stages.demo.conf"
EXAMPLE_CONF = PROJECT_ROOT / "etc" / "nightly_stages.conf.example"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) ")
EXIT_LOCKED = 75


@pytest.fixture
def env(base_env, tmp_path) -> dict:
    """base_env plus OUT, a scratch directory stage commands use to leave evidence."""
    out = tmp_path / "out"
    out.mkdir()
    return {**base_env, "OUT": str(out)}


def write_stages(tmp_path: Path, env: dict, text: str) -> Path:
    path = tmp_path / "stages.conf"
    path.write_text(text)
    env["NIGHTLY_STAGES_FILE"] = str(path)
    return path


def run(env: dict, cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUNNER), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def status(tracker_file: Path) -> dict:
    return get_batch_status(path=str(tracker_file), config=TrackerConfig(tracker_file=str(tracker_file)))


def percentages(state: dict) -> dict:
    return {stage["name"]: stage["percentage"] for stage in state["stages"]}


def log_text(tmp_path: Path) -> str:
    logs = sorted((tmp_path / "logs").glob("nightly_*.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def test_it_runs_every_stage_and_completes_the_batch(tmp_path, env, tracker_file):
    write_stages(
        tmp_path,
        env,
        "# the nightly pipeline\n"
        "\n"
        'one    echo "out of one"; bin/batch_tracker stage "$BATCH_STAGE" 40 && bin/batch_tracker status --json > "$OUT/mid.json"\n'
        "   two    echo 'err of two' >&2\n"
        "three  true\n",
    )
    day_before = time.strftime("%Y%m%d", time.gmtime())
    result = run(env, tmp_path)
    day_after = time.strftime("%Y%m%d", time.gmtime())

    assert result.returncode == 0, result.stdout + result.stderr
    state = status(tracker_file)
    assert state["state"] == "completed"
    assert state["expected_stages"] == ["one", "two", "three"]
    assert percentages(state) == {"one": 100.0, "two": 100.0, "three": 100.0}
    # The stage's own intermediate report reached the tracker while the batch was running.
    mid = json.loads((tmp_path / "out" / "mid.json").read_text())
    assert mid["id"] == state["id"] and mid["state"] == "running"
    assert percentages(mid)["one"] == 40.0

    log_files = list((tmp_path / "logs").glob("nightly_*.log"))
    assert [p.name for p in log_files] in (
        [f"nightly_{day_before}.log"],
        [f"nightly_{day_after}.log"],
    )
    log = log_text(tmp_path)
    lines = log.splitlines()
    assert lines, "empty log"
    for line in lines:
        match = STAMP.match(line)
        assert match, f"line without an ISO-8601 timestamp: {line!r}"
        assert datetime.fromisoformat(match.group(1)).utcoffset() is not None
    assert re.search(r"\[one\] out of one$", log, re.M)
    assert re.search(r"\[two\] err of two$", log, re.M)
    assert f"batch {state['id']} completed" in log
    assert "[one] out of one" in result.stdout  # echoed to stdout as well


def test_it_appends_each_run_to_the_same_log_file(tmp_path, env):
    write_stages(tmp_path, env, "only  echo ran-once\n")
    assert run(env, tmp_path).returncode == 0
    assert run(env, tmp_path).returncode == 0
    assert log_text(tmp_path).count("[only] ran-once") == 2


def test_it_records_the_failed_stage_and_stops_with_its_exit_code(tmp_path, env, tracker_file):
    write_stages(
        tmp_path,
        env,
        'one    touch "$OUT/one-ran"\ntwo    echo about to fail; exit 3\nthree  touch "$OUT/three-ran"\n',
    )
    result = run(env, tmp_path)

    assert result.returncode == 3, result.stdout + result.stderr
    state = status(tracker_file)
    assert state["state"] == "failed"
    assert state["failure"]["stage"] == "two"
    assert state["failure"]["reason"] == "exit code 3"
    assert (tmp_path / "out" / "one-ran").exists()
    assert not (tmp_path / "out" / "three-ran").exists()
    assert percentages(state) == {"one": 100.0, "two": 0.0, "three": 0.0}
    log = log_text(tmp_path)
    assert "[two] about to fail" in log
    assert "ERROR stage two failed" in log and "exit code 3" in log
    assert "--resume" in result.stderr


def test_it_names_the_signal_that_killed_a_stage(tmp_path, env, tracker_file):
    write_stages(tmp_path, env, "doomed  kill -KILL $$\n")
    result = run(env, tmp_path)
    assert result.returncode == 137
    assert status(tracker_file)["failure"]["reason"] == "exit code 137 (killed by SIGKILL)"


def test_it_resumes_a_failed_batch_from_the_failed_stage(tmp_path, env, tracker_file):
    write_stages(
        tmp_path,
        env,
        'one    echo run >> "$OUT/one.count"\n'
        'two    echo run >> "$OUT/two.count"; [ -e "$OUT/fixed" ] || exit 4\n'
        'three  echo run >> "$OUT/three.count"\n',
    )
    first = run(env, tmp_path)
    assert first.returncode == 4, first.stdout + first.stderr
    failed = status(tracker_file)
    assert failed["state"] == "failed"

    (tmp_path / "out" / "fixed").touch()
    resumed = run(env, tmp_path, "--resume")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    state = status(tracker_file)
    assert state["id"] == failed["id"]
    assert state["state"] == "completed"
    assert len(state["resumed_at"]) == 1
    assert [f["reason"] for f in state["failures"]] == ["exit code 4"]
    assert percentages(state) == {"one": 100.0, "two": 100.0, "three": 100.0}
    counts = {name: (tmp_path / "out" / f"{name}.count").read_text().count("run") for name in ("one", "two", "three")}
    assert counts == {"one": 1, "two": 2, "three": 1}  # the completed stage was not re-run
    assert "stage one already at 100%" in resumed.stdout
    assert state["history"]["count"] == 0  # no new batch was started


def test_it_refuses_to_resume_when_no_batch_failed(tmp_path, env, tracker_file):
    write_stages(tmp_path, env, 'one  touch "$OUT/ran"\n')
    nothing = run(env, tmp_path, "--resume")
    assert nothing.returncode == 2
    assert "cannot resume: no batch has been started" in nothing.stderr
    assert not (tmp_path / "out" / "ran").exists()

    assert run(env, tmp_path).returncode == 0
    before = tracker_file.read_bytes()
    again = run(env, tmp_path, "--resume")
    assert again.returncode == 2
    assert "only a failed batch can be resumed" in again.stderr
    assert tracker_file.read_bytes() == before


def test_it_refuses_a_run_while_the_lock_is_held(tmp_path, env, tracker_file):
    write_stages(tmp_path, env, 'one  touch "$OUT/ran"\n')
    (tmp_path / "logs").mkdir()
    with open(tmp_path / "logs" / ".run_nightly.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        started = time.monotonic()
        result = run(env, tmp_path)
        elapsed = time.monotonic() - started

    assert result.returncode == EXIT_LOCKED
    assert "another run is in progress" in result.stderr
    assert elapsed < 5  # refused at once, not after waiting for the lock
    assert not tracker_file.exists()
    assert not (tmp_path / "out" / "ran").exists()


def test_it_lets_only_one_of_two_concurrent_runs_proceed(tmp_path, env, tracker_file):
    out = tmp_path / "out"
    write_stages(
        tmp_path,
        env,
        'wait   touch "$OUT/started"; until [ -e "$OUT/release" ]; do sleep 0.01; done\nafter  true\n',
    )
    first = subprocess.Popen(
        [str(RUNNER)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: (out / "started").exists(), message="the first run's stage to start")
        running_id = status(tracker_file)["id"]
        second = run(env, tmp_path)
        assert second.returncode == EXIT_LOCKED
        assert f"pid {first.pid} holds" in second.stderr
        assert status(tracker_file)["id"] == running_id  # the refused run recorded nothing
        (out / "release").touch()
        assert first.wait(timeout=20) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    state = status(tracker_file)
    assert state["id"] == running_id and state["state"] == "completed"


def test_it_records_an_interrupted_run_as_failed(tmp_path, env, tracker_file):
    out = tmp_path / "out"
    write_stages(tmp_path, env, 'first  true\nslow   touch "$OUT/started"; exec sleep 60\nlast   touch "$OUT/last"\n')
    runner = subprocess.Popen(
        [str(RUNNER)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: (out / "started").exists(), message="the slow stage to start")
        os.killpg(runner.pid, signal.SIGTERM)  # as systemd and Ctrl-C do: the whole process group
        assert runner.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    state = status(tracker_file)
    assert state["state"] == "failed"
    assert state["failure"] == {**state["failure"], "stage": "slow", "reason": "interrupted by SIGTERM"}
    assert not (out / "last").exists()


def test_it_goes_on_when_the_tracker_cannot_store(tmp_path, env):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env["BATCH_TRACKER_FILE"] = str(blocker / "batch_tracker.json")
    write_stages(tmp_path, env, 'one  touch "$OUT/one"\ntwo  touch "$OUT/two"\n')
    result = run(env, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "out" / "one").exists() and (tmp_path / "out" / "two").exists()
    warnings = [line for line in log_text(tmp_path).splitlines() if " WARNING " in line]
    assert any("'start --stages one,two' failed with exit code 3" in w for w in warnings), warnings
    assert any("'end' failed with exit code 3" in w for w in warnings), warnings


def test_it_prints_the_plan_and_records_nothing_on_dry_run(tmp_path, env, tracker_file):
    write_stages(tmp_path, env, 'one  touch "$OUT/one"\ntwo  echo second\n')
    result = run(env, tmp_path, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert '1. one: touch "$OUT/one"' in result.stdout
    assert "2. two: echo second" in result.stdout
    assert str(tracker_file) in result.stdout
    assert str(tmp_path / "logs" / "nightly_") in result.stdout
    assert not tracker_file.exists()
    assert not (tmp_path / "logs").exists()
    assert not (tmp_path / "out" / "one").exists()


def test_it_shows_which_stages_a_resume_would_skip_on_dry_run(tmp_path, env, tracker_file):
    write_stages(tmp_path, env, "one  true\ntwo  exit 5\n")
    assert run(env, tmp_path).returncode == 5
    before = tracker_file.read_bytes()
    result = run(env, tmp_path, "--dry-run", "--resume")
    assert result.returncode == 0, result.stderr
    assert "1. one  (skip: already at 100%)" in result.stdout
    assert "2. two: exit 5" in result.stdout
    assert "is failed" in result.stdout
    assert tracker_file.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("good  true\nbad/name  true\n", r"stages\.conf:2: stage name 'bad/name' is not allowed \(use 1-64 of"),
        ("x" * 65 + "  true\n", r"stages\.conf:1: stage name 'x{65}' is not allowed"),
        ("# only a comment\nlonely\n", r"stages\.conf:2: stage 'lonely' has no command"),
        ("one  true\n\none  false\n", r"stages\.conf:3: stage 'one' is already defined on line 1"),
        ("one  if then fi\n", r"stages\.conf:1: stage 'one' command is not valid bash"),
        ("# nothing here\n\n", r"defines no stages"),
    ],
)
def test_it_rejects_a_bad_stages_file_with_exit_2(tmp_path, env, tracker_file, text, message):
    write_stages(tmp_path, env, text)
    result = run(env, tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert result.stdout == ""
    assert not tracker_file.exists()
    assert not (tmp_path / "logs").exists()


def test_it_rejects_a_missing_stages_file_and_bad_arguments_with_exit_2(tmp_path, env, tracker_file):
    env["NIGHTLY_STAGES_FILE"] = str(tmp_path / "absent.conf")
    missing = run(env, tmp_path)
    assert missing.returncode == 2
    assert f"stages file {tmp_path / 'absent.conf'} not found" in missing.stderr

    write_stages(tmp_path, env, "one  true\n")
    unknown = run(env, tmp_path, "--bogus")
    assert unknown.returncode == 2
    assert "unknown argument '--bogus' (allowed: --run, --resume, --dry-run, --help)" in unknown.stderr
    assert not tracker_file.exists()

    # --run and --resume are the two instances of nightly-batch@.service: one at a time.
    both = run(env, tmp_path, "--run", "--resume")
    assert both.returncode == 2
    assert (
        both.stderr
        == "run_nightly.sh: error: '--run' and '--resume' exclude each other (a new batch, or the failed one resumed)\n"
    )
    assert not tracker_file.exists()

    usage = run(env, tmp_path, "--help")
    assert usage.returncode == 0
    assert usage.stdout.startswith("Usage: bin/run_nightly.sh")
    assert "Exit codes:" in usage.stdout


def test_it_runs_a_new_batch_with_run_as_without_an_option(tmp_path, env, tracker_file):
    write_stages(tmp_path, env, "one  true\n")

    result = run(env, tmp_path, "--run")

    assert result.returncode == 0, result.stdout + result.stderr
    assert status(tracker_file)["state"] == "completed"


@pytest.mark.slow
def test_it_runs_the_demo_pipeline_end_to_end(tmp_path, env, tracker_file):
    env["NIGHTLY_STAGES_FILE"] = str(DEMO_CONF)
    result = run(env, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    state = status(tracker_file)
    assert state["state"] == "completed"
    assert state["expected_stages"] == ["scrape", "enrich", "dedupe", "score", "mockup", "email"]
    assert set(percentages(state).values()) == {100.0}
    assert state["cost_per_lead"] == 0.42
    assert state["gpu_cost_dollars"] == 1.25
    demo = tracker_file.parent / "demo"
    assert len(list((demo / "emails").glob("*.txt"))) == 20
    assert "[dedupe] removed 60 duplicates, 540 unique leads" in result.stdout


@pytest.mark.slow
def test_it_fails_and_resumes_the_demo_pipeline(tmp_path, env, tracker_file):
    env["NIGHTLY_STAGES_FILE"] = str(DEMO_CONF)
    result = run({**env, "DEMO_STAGE_FAIL": "score"}, tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    state = status(tracker_file)
    assert state["failure"]["stage"] == "score" and state["failure"]["reason"] == "exit code 3"
    # The demo stage reported progress, then failed part-way, and said so.
    assert percentages(state)["score"] == 25.0
    assert "simulated failure in stage score (DEMO_STAGE_FAIL=score)" in result.stdout

    resumed = run(env, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert status(tracker_file)["state"] == "completed"
    assert "stage dedupe already at 100%" in resumed.stdout


def test_it_rejects_an_unknown_demo_failure_stage(tmp_path, env, tracker_file):
    result = subprocess.run(
        [str(PROJECT_ROOT / "bin" / "demo_stage.sh"), "scrape"],
        env={**env, "DEMO_STAGE_FAIL": "sc0re"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "DEMO_STAGE_FAIL='sc0re' is not a demo stage (allowed: scrape, enrich," in result.stderr


def test_it_runs_the_tracker_cli_from_any_directory(tmp_path, env, tracker_file):
    link = tmp_path / "batch_tracker"
    link.symlink_to(TRACKER_CLI)
    started = subprocess.run(
        [str(link), "start", "--stages", "a"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert started.returncode == 0, started.stderr
    assert status(tracker_file)["id"] == started.stdout.strip()

    bad = subprocess.run(
        [str(TRACKER_CLI), "stage", "a", "101"], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert percentages(status(tracker_file)) == {"a": 0.0}


def test_it_parses_the_example_stages_file(tmp_path, env):
    env["NIGHTLY_STAGES_FILE"] = str(EXAMPLE_CONF)
    result = run(env, tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^\s+\d\. (\w+):", result.stdout, re.M) == [
        "scrape",
        "enrich",
        "dedupe",
        "score",
        "mockup",
        "email",
    ]


def test_it_puts_the_failed_stages_own_error_in_the_failure_email(tmp_path, env, tracker_file):
    """End to end: the runner records the stage's output tail, the monitor's failure e-mail shows it."""
    from utils.config import MonitorConfig
    from utils.mail_compose import parse_message
    from utils.monitor import Monitor

    write_stages(
        tmp_path,
        env,
        "fetch  echo 'fetching page 1'; echo 'upstream API returned 503' >&2; exit 4\nnever  true\n",
    )
    result = run(env, tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    failure = json.loads(tracker_file.read_text())["current"]["failure"]
    assert failure["reason"] == "exit code 4"
    assert failure["output_tail"] == "fetching page 1\nupstream API returned 503"

    outbox = tmp_path / "outbox"
    config = MonitorConfig.from_env({**env, "BATCH_OUTBOX_DIR": str(outbox), "METRICS_PORT": "0"})
    notifications = Monitor(config, early_warning=False).check().notifications
    assert [n.kind for n in notifications] == ["failed"]
    message = parse_message((outbox / "pending" / f"{notifications[0].outbox_id}.eml").read_bytes())
    body = message.get_content().replace("\r\n", "\n")
    assert "\n    upstream API returned 503\n" in body, body
    assert "Last 2 line(s) of output from stage fetch:" in body
    assert f"{tmp_path / 'logs'}/nightly_" in body  # this run's LOG_DIR, not the checkout's logs/
    assert "upstream" not in str(message["Subject"])


def test_it_stamps_log_lines_with_the_local_offset(tmp_path, env):
    write_stages(tmp_path, env, "one  echo hello\ntwo  exit 3\n")
    before = time.time()
    result = run({**env, "TZ": "Asia/Kolkata"}, tmp_path)
    after = time.time()
    assert result.returncode == 3
    lines = log_text(tmp_path).splitlines()
    assert any("[one] hello" in line for line in lines) and any(" ERROR " in line for line in lines)
    for line in lines:
        match = STAMP.match(line)
        assert match, f"line without an ISO-8601 timestamp: {line!r}"
        assert match.group(1).endswith("+05:30"), line
        instant = datetime.fromisoformat(match.group(1)).timestamp()
        assert before - 1 <= instant <= after + 1, line


def test_it_records_the_failure_even_when_the_output_file_is_unreadable(tmp_path, env, tracker_file):
    assert subprocess.run([str(TRACKER_CLI), "start"], env=env, capture_output=True, check=False).returncode == 0
    result = subprocess.run(
        [
            str(TRACKER_CLI),
            "fail",
            "--stage",
            "one",
            "--reason",
            "exit code 4",
            "--output-file",
            str(tmp_path / "nope"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "cannot be read" in result.stderr and "recording the failure without the output" in result.stderr
    failure = json.loads(tracker_file.read_text())["current"]["failure"]
    assert failure["reason"] == "exit code 4" and "output_tail" not in failure
