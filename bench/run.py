#!/usr/bin/env python3
"""Benchmarks: hook overhead, time to alert, monitor footprint, scrapes, concurrent writers.

Usage: .venv/bin/python bench/run.py [--only hook,alert,footprint,scrape,concurrency] [--quick]

Prints a table and writes bench/results/latest.json. Ratios are measured against
a baseline taken in the same run (interleaved), so they hold on a noisy machine;
absolute numbers are printed for context only. Exit status 0 when every target
is met, 1 otherwise.

Everything runs on this machine: a real SMTP server on 127.0.0.1 (aiosmtpd),
the real monitor as a subprocess, real HTTP scrapes of /metrics.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from utils.batch_tracker import BatchTracker
from utils.config import TrackerConfig
from utils.state_store import sibling_file
from utils.tracker_files import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent


def _test_helpers():
    """The test suite's conftest module (real SMTP sink, free ports, polling), loaded from its file.

    `utils` comes from the venv (bin/setup.sh installs the project); the tests directory is not a
    package, so it is loaded by path rather than by putting it on sys.path.
    """
    spec = importlib.util.spec_from_file_location("bench_test_helpers", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _test_helpers()
SmtpSink, free_port, wait_until = _helpers.SmtpSink, _helpers.free_port, _helpers.wait_until

PYTHON = sys.executable
STAGES = ["scrape", "enrich", "dedupe", "score", "mockup", "email"]


def env_for(tracker_file: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "SMTP_", "ALERT_", "METRICS_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.update({"BATCH_TRACKER_FILE": str(tracker_file)})
    env.update(extra)
    return env


def time_command(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def fill_history(tracker_file: Path, batches: int) -> None:
    """Write a history file of ``batches`` realistic completed batches (as the tracker would)."""
    start = 1_700_000_000.0
    records = []
    for night in range(batches):
        begin = start + night * 86_400
        stages, moment = {}, begin
        for name in STAGES:
            moment += 900
            stages[name] = {
                "percentage": 100.0,
                "first_seen_at": moment - 450,
                "updated_at": moment,
                "completed_at": moment,
            }
        records.append(
            {
                "id": f"bench-{night:05d}",
                "state": "completed",
                "started_at": begin,
                "ended_at": moment,
                "duration_seconds": moment - begin,
                "updated_at": moment,
                "expected_stages": STAGES,
                "stages": stages,
                "failure": None,
                "failures": [],
                "resumed_at": [],
                "cost_per_lead": 0.4,
                "gpu_cost_dollars": 1.25,
                "host": "bench",
            }
        )
    Path(sibling_file(tracker_file, "history")).write_text(
        json.dumps({"schema_version": SCHEMA_VERSION, "batches": records})
    )


# --------------------------------------------------------------------------- hook overhead


def bench_hook(work: Path, runs: int) -> dict:
    subprocess.run([PYTHON, "-m", "compileall", "-q", "utils", "bin"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    empty = work / "empty" / "batch_tracker.json"
    full = work / "full" / "batch_tracker.json"
    for tracker_file, history in ((empty, 0), (full, 3650)):
        tracker_file.parent.mkdir(parents=True)
        limit_env = env_for(tracker_file, BATCH_HISTORY_LIMIT="3650")
        subprocess.run(
            [PYTHON, "-m", "utils.batch_tracker", "start"],
            env=limit_env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if history:
            fill_history(tracker_file, history)
    variants = {
        "python -c pass": ([PYTHON, "-c", "pass"], env_for(empty)),
        "-m utils.batch_tracker stage (empty history)": (
            [PYTHON, "-m", "utils.batch_tracker", "stage", "scrape", "50"],
            env_for(empty, BATCH_HISTORY_LIMIT="3650"),
        ),
        "-m utils.batch_tracker stage (3650 batches)": (
            [PYTHON, "-m", "utils.batch_tracker", "stage", "scrape", "50"],
            env_for(full, BATCH_HISTORY_LIMIT="3650"),
        ),
        "bin/batch_tracker stage (empty history)": (
            [str(ROOT / "bin" / "batch_tracker"), "stage", "scrape", "50"],
            env_for(empty, BATCH_HISTORY_LIMIT="3650", BATCH_TRACKER_PYTHON=PYTHON),
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for command, env in variants.values():  # warm-up: page cache, bytecode
        time_command(command, env)
    for _ in range(runs):  # interleaved, so drift hits every variant alike
        for name, (command, env) in variants.items():
            samples[name].append(time_command(command, env))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["python -c pass"]
    empty_median = medians["-m utils.batch_tracker stage (empty history)"]
    rows = []
    for name, median in medians.items():
        ratio = median / baseline
        target = None if name == "python -c pass" else 2.5
        rows.append(_row("hook", name, median * 1000, "ms", ratio, target, "x python -c pass"))
    full_ratio = medians["-m utils.batch_tracker stage (3650 batches)"] / empty_median
    rows.append(_row("hook", "full history / empty history", None, "", full_ratio, 1.2, "x"))
    return {"rows": rows, "samples_ms": {k: [round(v * 1000, 3) for v in vals] for k, vals in samples.items()}}


# --------------------------------------------------------------------------- monitor helpers


class MonitorProcess:
    """The real monitor as a subprocess on a fresh tracker file, metrics on a free port."""

    def __init__(self, work: Path, smtp_port: int, **extra: str):
        self.tracker_file = work / "batch_tracker.json"
        self.metrics_port = free_port()
        self.env = env_for(
            self.tracker_file,
            SMTP_SERVER="127.0.0.1",
            SMTP_PORT=str(smtp_port),
            SMTP_SECURITY="plain",
            BATCH_OUTBOX_DIR=str(work / "outbox"),
            METRICS_ADDR="127.0.0.1",
            METRICS_PORT=str(self.metrics_port),
            LOG_LEVEL="WARNING",
            **extra,
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> MonitorProcess:
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "bin" / "batch_completion_monitor.py")], env=self.env, cwd=ROOT, stderr=subprocess.PIPE
        )
        wait_until(lambda: self._get("/healthz") is not None, timeout=15, message="monitor /healthz")
        return self

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as response:
                return response.read()
        except OSError:
            return None

    def cli(self, *args: str) -> None:
        subprocess.run(
            [PYTHON, "-m", "utils.batch_tracker", *args], env=self.env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --------------------------------------------------------------------------- time to alert


def bench_alert(work: Path) -> dict:
    rows = []
    smtp = SmtpSink().start()
    try:
        # From `fail` recorded to the e-mail at the SMTP server, default 300 s interval.
        monitor = MonitorProcess(work / "fail", smtp.port).start()
        try:
            monitor.cli("start", "--stages", ",".join(STAGES))
            monitor.cli("stage", "scrape", "100")
            before = len(smtp.received())
            monitor.cli("fail", "--stage", "enrich", "--reason", "exit code 3")
            failed_at = (
                BatchTracker(TrackerConfig(tracker_file=str(monitor.tracker_file))).snapshot().current.failure.at
            )
            smtp.wait_for(before + 1, timeout=30)
            latency = time.time() - failed_at
            rows.append(_row("alert", "fail recorded -> e-mail received", latency, "s", None, 2.0, "s", absolute=True))
        finally:
            monitor.stop()

        # From the deadline passing to the e-mail; the deadline is the next whole UTC minute.
        now = time.time()
        deadline_at = (int(now // 60) + 1) * 60
        if deadline_at - now < 5:
            deadline_at += 60
        minute = time.gmtime(deadline_at)
        monitor = MonitorProcess(
            work / "late",
            smtp.port,
            BATCH_COMPLETION_TIMEZONE="UTC",
            BATCH_COMPLETION_DEADLINE_HOUR=str(minute.tm_hour),
            BATCH_COMPLETION_DEADLINE_MINUTE=str(minute.tm_min),
        ).start()
        try:
            monitor.cli("start", "--stages", ",".join(STAGES))
            before = len(smtp.received())
            smtp.wait_for(before + 1, timeout=deadline_at - time.time() + 30)
            latency = time.time() - deadline_at
            rows.append(
                _row("alert", "deadline passed -> e-mail received", latency, "s", None, 2.0, "s", absolute=True)
            )
        finally:
            monitor.stop()
    finally:
        smtp.stop()
    return {"rows": rows}


# --------------------------------------------------------------------------- footprint


def bench_footprint(work: Path, quick: bool) -> dict:
    rows = []
    smtp = SmtpSink().start()
    monitor = MonitorProcess(work / "footprint", smtp.port).start()
    try:
        stages = [f"stage{i:02d}" for i in range(50)]
        monitor.cli("start", "--stages", ",".join(stages))
        tracker = BatchTracker(TrackerConfig(tracker_file=str(monitor.tracker_file)))
        for index, name in enumerate(stages):
            tracker.stage(name, index * 2)
        url = f"http://127.0.0.1:{monitor.metrics_port}/metrics"
        latencies = []
        for _ in range(50):  # warm-up
            urllib.request.urlopen(url, timeout=5).read()
        for _ in range(300 if not quick else 100):
            started = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=5).read()
            latencies.append(time.perf_counter() - started)
        assert b'anthrasite_batch_stage_completion_percentage{stage="stage49"}' in body
        latencies.sort()
        rows.append(
            _row(
                "footprint",
                "/metrics median latency (50 stages)",
                statistics.median(latencies) * 1000,
                "ms",
                None,
                5.0,
                "ms",
                absolute=True,
            )
        )
        rows.append(
            _row(
                "footprint",
                "/metrics p99 latency (50 stages)",
                latencies[int(len(latencies) * 0.99) - 1] * 1000,
                "ms",
                None,
                None,
                "ms",
                absolute=True,
            )
        )

        # Idle CPU at the default 300 s interval (it still watches the file once a second).
        idle_seconds = 30 if not quick else 10
        cpu_before, wall_before = monitor.cpu_seconds(), time.monotonic()
        threading.Event().wait(idle_seconds)
        cpu_share = (monitor.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before) * 100
        rows.append(
            _row(
                "footprint", f"CPU idle over {idle_seconds} s", cpu_share, "% of a core", None, 1.0, "%", absolute=True
            )
        )
    finally:
        monitor.stop()

    # Resident memory after an hour's worth of checks: 3600 tracker changes, each
    # followed by a check (the monitor re-checks within a second of every change),
    # driven faster here with a 1 s interval and a writer that changes the file.
    monitor = MonitorProcess(work / "memory", smtp.port, BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="1").start()
    try:
        monitor.cli("start", "--stages", ",".join(STAGES))
        tracker = BatchTracker(TrackerConfig(tracker_file=str(monitor.tracker_file)))
        deadline = time.monotonic() + (20 if not quick else 8)
        updates = 0
        while time.monotonic() < deadline:
            tracker.stage(STAGES[updates % len(STAGES)], updates % 100)
            updates += 1
            if updates % 50 == 0:
                urllib.request.urlopen(f"http://127.0.0.1:{monitor.metrics_port}/metrics", timeout=5).read()
        rows.append(
            _row(
                "footprint",
                f"RSS after {updates} tracker updates",
                monitor.rss_mib(),
                "MiB",
                None,
                40.0,
                "MiB",
                absolute=True,
            )
        )
    finally:
        monitor.stop()
        smtp.stop()
    return {"rows": rows}


# --------------------------------------------------------------------------- scrapes


def bench_scrape(work: Path, quick: bool) -> dict:
    """/metrics on a new connection per scrape (the baseline) and on one kept-alive connection.

    Prometheus keeps its connection alive between scrapes. A response written in several
    small writes meets Nagle's algorithm and the client's delayed ACK there: 40 ms per
    scrape however fast the server is, so the kept-alive median must not exceed the
    new-connection one (interleaved, same monitor, same run) and must stay under 5 ms.
    """
    smtp = SmtpSink().start()
    monitor = MonitorProcess(work / "scrape", smtp.port).start()
    try:
        monitor.cli("start", "--stages", ",".join(STAGES))
        for name in STAGES[:3]:
            monitor.cli("stage", name, "100")

        def scrape(connection: http.client.HTTPConnection) -> float:
            started = time.perf_counter()
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            assert response.status == 200 and b"anthrasite_batch_completion_percentage" in body
            return elapsed

        kept = http.client.HTTPConnection("127.0.0.1", monitor.metrics_port, timeout=5)
        samples: dict[str, list[float]] = {"new": [], "kept": []}
        rounds = 100 if quick else 400
        for index in range(rounds + 20):  # interleaved; the first 20 rounds warm up
            fresh = http.client.HTTPConnection("127.0.0.1", monitor.metrics_port, timeout=5)
            new_time = scrape(fresh)
            fresh.close()
            kept_time = scrape(kept)
            if index >= 20:
                samples["new"].append(new_time)
                samples["kept"].append(kept_time)
        kept.close()
    finally:
        monitor.stop()
        smtp.stop()
    new_median, kept_median = statistics.median(samples["new"]), statistics.median(samples["kept"])
    rows = [
        _row("scrape", "/metrics, new connection each (baseline)", new_median * 1000, "ms", 1.0, None, "x"),
        _row(
            "scrape",
            "/metrics, one kept-alive connection",
            kept_median * 1000,
            "ms",
            kept_median / new_median,
            1.0,
            "x",
        ),
        _row("scrape", "/metrics kept-alive median", kept_median * 1000, "ms", None, 5.0, "ms", absolute=True),
    ]
    return {"rows": rows, "samples_ms": {k: [round(v * 1000, 3) for v in vals] for k, vals in samples.items()}}


# --------------------------------------------------------------------------- concurrency


def _writer(tracker_file: str, writer: int, updates: int, barrier) -> None:
    tracker = BatchTracker(TrackerConfig(tracker_file=tracker_file))
    barrier.wait()
    for index in range(updates):
        tracker.stage(f"w{writer}_{index}", 50)


def bench_concurrency(work: Path, writers: int = 8, updates: int = 200) -> dict:
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
    stages = BatchTracker(TrackerConfig(tracker_file=str(tracker_file))).snapshot().current.stages
    lost = writers * updates - len(stages)
    rows = [
        _row(
            "concurrency",
            f"{writers} writers x {updates} stage updates",
            writers * updates / elapsed,
            "updates/s",
            None,
            None,
            "",
        ),
        _row("concurrency", "updates lost", lost, "", None, 0, "", absolute=True),
    ]
    return {"rows": rows}


# --------------------------------------------------------------------------- report


def _row(group, name, value, unit, ratio, target, target_unit, absolute=False) -> dict:
    measured = value if absolute else ratio
    met = None if target is None or measured is None else measured <= target
    return {
        "group": group,
        "name": name,
        "value": value,
        "unit": unit,
        "ratio": ratio,
        "target": target,
        "target_unit": target_unit,
        "met": met,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'group':<12} {'measurement':<46} {'value':>12} {'ratio':>8} {'target':>10}  ok")
    for row in rows:
        value = "" if row["value"] is None else f"{row['value']:.2f} {row['unit']}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        target = (
            ""
            if row["target"] is None
            else f"<= {row['target']}{row['target_unit'] if row['target_unit'] != 'x' else 'x'}"
        )
        ok = {True: "yes", False: "NO", None: ""}[row["met"]]
        print(f"{row['group']:<12} {row['name']:<46} {value:>12} {ratio:>8} {target:>10}  {ok}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="hook,alert,footprint,scrape,concurrency", help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke run)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - {"hook", "alert", "footprint", "scrape", "concurrency"}
    if unknown:
        parser.error(
            f"unknown section(s) {', '.join(sorted(unknown))} (allowed: hook, alert, footprint, scrape, concurrency)"
        )
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    results: dict = {"python": sys.version.split()[0], "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for section in sections:
            if section == "hook":
                results["hook"] = bench_hook(work, runs=15 if args.quick else 40)
            elif section == "alert":
                results["alert"] = bench_alert(work)
            elif section == "footprint":
                results["footprint"] = bench_footprint(work, args.quick)
            elif section == "scrape":
                results["scrape"] = bench_scrape(work, args.quick)
            else:
                results["concurrency"] = bench_concurrency(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [row for section in sections for row in results[section]["rows"]]
    print_table(rows)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {output}")
    return 0 if all(row["met"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
