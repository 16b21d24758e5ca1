#!/usr/bin/env python3
"""Benchmark: what BATCH_PING_URL costs a hook (issue 15: never noticeably slowing it).

Usage: .venv/bin/python bench/ping_bench.py [--runs N]

Times ``start`` + ``end`` pairs through the real CLI (``python -m utils.batch_tracker``) without a ping URL
(the baseline), with one pointing at a dead port (connection refused), and with one pointing at a server that
accepts connections and never answers; interleaved, so drift hits every variant alike. Each ping variant is
printed as a ratio against the baseline measured in the same run (target <= 1.25x); :func:`bench_ping` returns
rows shaped like bench/run.py's, for its table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_support import row

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TARGET_RATIO = 1.25


def _listening_socket(accepting: bool) -> socket.socket:
    """A loopback socket that completes TCP handshakes (the kernel's backlog) but never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if accepting:
        sock.listen(512)
    return sock


def _env(tracker_file: Path, ping_url: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "SMTP_", "ALERT_", "METRICS_"))}
    env["BATCH_TRACKER_FILE"] = str(tracker_file)
    env["BATCH_HISTORY_LIMIT"] = "10"
    if ping_url:
        env["BATCH_PING_URL"] = ping_url
    return env


SETTLE_SECONDS = 0.3


def _pair(env: dict) -> float:
    """Seconds for one ``start`` and one ``end`` hook, each timed alone. After each, outside the timing, the
    ping child gets :data:`SETTLE_SECONDS` to start its interpreter: hooks of a real batch run seconds apart, and
    on a two-core machine a child started by the previous hook would otherwise compete with the one timed."""
    elapsed = 0.0
    for command in ("start", "end"):
        started = time.perf_counter()
        subprocess.run(
            [PYTHON, "-m", "utils.batch_tracker", command], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        elapsed += time.perf_counter() - started
        time.sleep(SETTLE_SECONDS)
    return elapsed


def bench_ping(work: Path, runs: int = 20) -> dict:
    """Hook time with BATCH_PING_URL at a dead port and at a hanging server, as ratios to no ping URL."""
    dead = _listening_socket(accepting=False)  # bound, not listening: connection refused
    hanging = _listening_socket(accepting=True)  # listening, never accepting: the request hangs
    try:
        variants = {
            "start+end, no BATCH_PING_URL (baseline)": None,
            "start+end, ping to a dead port": f"http://127.0.0.1:{dead.getsockname()[1]}/ping",
            "start+end, ping to a hanging server": f"http://127.0.0.1:{hanging.getsockname()[1]}/ping",
        }
        envs = {}
        for index, (name, url) in enumerate(variants.items()):
            tracker_file = work / f"ping-{index}" / "batch_tracker.json"
            tracker_file.parent.mkdir(parents=True)
            envs[name] = _env(tracker_file, url)
            _pair(envs[name])  # warm-up: page cache, bytecode
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, env in envs.items():
                samples[name].append(_pair(env))
    finally:
        dead.close()
        hanging.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = next(iter(medians.values()))
    rows = []
    for index, (name, median) in enumerate(medians.items()):
        target = None if index == 0 else TARGET_RATIO
        rows.append(row("ping", name, median * 1000, "ms", median / baseline, target, "x", baseline=baseline * 1000))
    return {"rows": rows, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="start+end pairs per variant (default 20)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ping-bench-"))
    try:
        result = bench_ping(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for result_row in result["rows"]:
        target = "" if result_row["target"] is None else f"<= {result_row['target']}x"
        ok = {True: "yes", False: "NO", None: ""}[result_row["met"]]
        print(f"{result_row['name']:<44} {result_row['value']:8.1f} ms {result_row['ratio']:6.2f}x {target:>9}  {ok}")
    return 0 if all(result_row["met"] is not False for result_row in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
