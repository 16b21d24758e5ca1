"""Benchmark sections that run the tracker's hook CLI: hook overhead, history at scale, concurrent writers."""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench_support import (
    BIG_HISTORY,
    PYTHON,
    ROOT,
    STAGES,
    copied,
    env_for,
    ms,
    prepare_tracker,
    row,
    run_cli,
    time_command,
)

from utils.batch_tracker import BatchTracker
from utils.config import TrackerConfig

CLI = [PYTHON, "-m", "utils.batch_tracker"]
JOBS_FILE = """\
[jobs.nightly]
deadline = "05:00"
timezone = "America/New_York"
[jobs.weekly-rescore]
deadline = "12:00"
timezone = "Australia/Sydney"
days = ["sat"]
[jobs.eu-export]
deadline = "06:00"
timezone = "Europe/Berlin"
"""

# --------------------------------------------------------------------------- hook overhead


def bench_hook(work: Path, runs: int) -> dict:
    """A hook call against the interpreter's own start-up (`python -c pass`), interleaved."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", "utils", "bin"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    tracker_file = prepare_tracker(work / "hook", 0, STAGES)
    env = env_for(tracker_file)
    jobs_file = work / "hook-jobs" / "jobs.toml"
    jobs_file.parent.mkdir(parents=True)
    jobs_file.write_text(JOBS_FILE)
    jobs_env = env_for(work / "hook-jobs" / "batch_tracker.json", BATCH_JOBS_FILE=str(jobs_file))
    run_cli(jobs_env, "start", "--stages", ",".join(STAGES))  # the first write keeps the file's parse
    variants = {
        "python -c pass": ([PYTHON, "-c", "pass"], env),
        "-m utils.batch_tracker stage (aim 2.0x)": ([*CLI, "stage", "scrape", "50"], env),
        "bin/batch_tracker stage": (
            [str(ROOT / "bin" / "batch_tracker"), "stage", "scrape", "50"],
            env_for(tracker_file, BATCH_TRACKER_PYTHON=PYTHON),
        ),
        "-m utils.batch_tracker stage, jobs file of 3 jobs": ([*CLI, "stage", "scrape", "50"], jobs_env),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for command, variant_env in variants.values():  # warm-up: page cache, bytecode
        time_command(command, variant_env)
    for _ in range(runs):  # interleaved, so drift hits every variant alike
        for name, (command, variant_env) in variants.items():
            samples[name].append(time_command(command, variant_env))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["python -c pass"]
    rows = [
        row(
            "hook",
            name,
            median * 1000,
            "ms",
            median / baseline,
            None if name == "python -c pass" else 2.5,
            "x",
            baseline=baseline * 1000,
        )
        for name, median in medians.items()
    ]
    return {"rows": rows, "samples_ms": {k: ms(v) for k, v in samples.items()}}


# --------------------------------------------------------------------------- history at scale

# command -> (CLI arguments, exit codes that are normal for it, target ratio at 3650 batches vs empty)
HISTORY_COMMANDS: dict[str, tuple[list[str], tuple[int, ...], float]] = {
    "start": (["start", "--stages", ",".join(STAGES)], (0,), 1.2),
    "stage": (["stage", STAGES[3], "50"], (0,), 1.2),
    "end": (["end"], (0,), 1.2),
    "fail": (["fail", "--stage", STAGES[3], "--reason", "exit code 3"], (0,), 1.2),
    "cost": (["cost", "--per-lead", "0.42", "--gpu-dollars", "1.25"], (0,), 1.2),
    "status": (["status"], (0,), 1.5),
    "check": (["check"], (0, 1), 1.5),  # 1 = check found a problem; the same state in both variants
}
HISTORY_SHORT = 20  # `history` prints the last 20 by default: 20 stored batches is its baseline


def bench_history(work: Path, runs: int) -> dict:
    """Every hook and view through the real CLI at 3650 finished batches against an empty history.

    Each sample runs on a fresh copy of a prepared directory (copied outside the timed region), so a
    write command always finds the same running batch and `start` always archives one batch.
    """
    templates = {
        "empty": prepare_tracker(work / "history-templates" / "empty", 0, STAGES).parent,
        "short": prepare_tracker(work / "history-templates" / "short", HISTORY_SHORT, STAGES).parent,
        "big": prepare_tracker(work / "history-templates" / "big", BIG_HISTORY, STAGES).parent,
    }
    # (row name, command, baseline template, big template): both measured in every round, in alternating order.
    pairs: list[tuple[str, str, str, str]] = [(name, name, "empty", "big") for name in HISTORY_COMMANDS]
    pairs.append(("history (last 20)", "history", "short", "big"))
    commands = {name: (args, codes) for name, (args, codes, _) in HISTORY_COMMANDS.items()}
    commands["history"] = (["history"], (0,))
    samples: dict[tuple[str, str], list[float]] = {}
    sample_dirs = (work / f"history-sample-{n}" for n in itertools.count())

    def measure(command: str, template: str) -> float:
        args, codes = commands[command]
        with copied(templates[template], next(sample_dirs)) as directory:
            env = env_for(directory / "batch_tracker.json", BATCH_HISTORY_LIMIT=str(BIG_HISTORY))
            return time_command([*CLI, *args], env, ok_codes=codes)

    for _name, command, baseline, big in pairs:  # warm-up
        measure(command, baseline)
        measure(command, big)
    for index in range(runs):
        for name, command, baseline, big in pairs:
            order = (baseline, big) if index % 2 == 0 else (big, baseline)
            for template in order:
                samples.setdefault((name, template), []).append(measure(command, template))
    rows = []
    for name, command, baseline, big in pairs:
        base_median = statistics.median(samples[(name, baseline)])
        big_median = statistics.median(samples[(name, big)])
        target = HISTORY_COMMANDS[command][2] if command in HISTORY_COMMANDS else 1.2
        label = f"{name}: {BIG_HISTORY} vs {'0' if baseline == 'empty' else HISTORY_SHORT} batches"
        rows.append(
            row(
                "history",
                label,
                big_median * 1000,
                "ms",
                big_median / base_median,
                target,
                "x",
                baseline=base_median * 1000,
            )
        )
    return {
        "rows": rows,
        "samples_ms": {f"{name} [{template}]": ms(values) for (name, template), values in samples.items()},
    }


# --------------------------------------------------------------------------- concurrency


def _writer(tracker_file: str, writer: int, updates: int, barrier) -> None:
    tracker = BatchTracker(TrackerConfig(tracker_file=tracker_file))
    barrier.wait()
    for index in range(updates):
        tracker.stage(f"w{writer}_{index}", 50)


def _stage_count(tracker_file: Path) -> int:
    return len(BatchTracker(TrackerConfig(tracker_file=str(tracker_file))).snapshot().current.stages)


def bench_concurrency(work: Path, writers: int = 8, updates: int = 200, cli_updates: int = 200) -> dict:
    """``writers`` processes updating one batch at once: through the library in-process (forked
    writers), and through the real CLI (each writer runs ``cli_updates`` `stage` hooks in a row)."""
    tracker_file = work / "concurrency" / "batch_tracker.json"
    tracker_file.parent.mkdir(parents=True)
    BatchTracker(TrackerConfig(tracker_file=str(tracker_file))).start()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(writers + 1)
    processes = [context.Process(target=_writer, args=(str(tracker_file), w, updates, barrier)) for w in range(writers)]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    lost = writers * updates - _stage_count(tracker_file)

    cli_file = work / "concurrency-cli" / "batch_tracker.json"
    cli_file.parent.mkdir(parents=True)
    env = env_for(cli_file)
    run_cli(env, "start")
    failures: list[str] = []
    go = threading.Barrier(writers + 1)

    def cli_writer(writer: int) -> None:  # one thread per writer, each running the hooks one after another
        go.wait()
        for index in range(cli_updates):
            result = subprocess.run(
                [*CLI, "stage", f"w{writer}_{index}", "50"], env=env, cwd=ROOT, capture_output=True, check=False
            )
            if result.returncode:
                failures.append(result.stderr.decode().strip())

    threads = [threading.Thread(target=cli_writer, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    go.wait()
    cli_started = time.perf_counter()
    for thread in threads:
        thread.join()
    cli_elapsed = time.perf_counter() - cli_started
    cli_lost = writers * cli_updates - _stage_count(cli_file)
    return {
        "rows": [
            row(
                "concurrency",
                f"library: {writers} x {updates} updates",
                writers * updates / elapsed,
                "/s",
                None,
                None,
                "",
            ),
            row("concurrency", "library: updates lost", lost, "", None, 0, "", absolute=True),
            row(
                "concurrency",
                f"CLI: {writers} x {cli_updates} `stage` hooks",
                writers * cli_updates / cli_elapsed,
                "/s",
                None,
                None,
                "",
            ),
            row("concurrency", "CLI: updates lost", cli_lost, "", None, 0, "", absolute=True),
            row("concurrency", "CLI: hooks that failed", len(failures), "", None, 0, "", absolute=True),
        ],
        "cli_errors": failures[:5],
    }
