#!/usr/bin/env python3
"""Benchmarks: hook overhead, history at scale, time to alert, monitor footprint and scale, scrapes, concurrent writers.

Usage: .venv/bin/python bench/run.py [--only hook,history,ping,alert,footprint,scrape,monitor,concurrency] [--quick]

Prints a table and writes bench/results/latest.json. Ratios are measured against
a baseline taken in the same run (interleaved), so they hold on a noisy machine;
absolute numbers are printed for context (the baseline's value beside them). Exit
status 0 when every target is met, 1 otherwise.

Everything runs on this machine: the real hook CLI and the real monitor as
subprocesses, a real SMTP server on 127.0.0.1 (aiosmtpd), real HTTP scrapes.
The sections live in bench/bench_cli.py (hook, history, concurrency),
bench/ping_bench.py (ping) and bench/bench_monitor.py (alert, footprint, scrape, monitor).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_cli import bench_concurrency, bench_history, bench_hook
from bench_monitor import bench_alert, bench_footprint, bench_monitor, bench_scrape
from bench_support import ROOT

SECTIONS = ("hook", "history", "ping", "alert", "footprint", "scrape", "monitor", "concurrency")


# --------------------------------------------------------------------------- report


def print_table(rows: list[dict]) -> None:
    width = max([46, *(len(r["name"]) for r in rows)])
    print(f"{'group':<12} {'measurement':<{width}} {'value':>13} {'baseline':>13} {'ratio':>8} {'target':>10}  ok")
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.2f} {r['unit']}"
        baseline = "" if r.get("baseline") is None else f"{r['baseline']:.2f} {r['unit']}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        target = "" if r["target"] is None else f"<= {r['target']}{r['target_unit']}"
        ok = {True: "yes", False: "NO", None: ""}[r["met"]]
        print(f"{r['group']:<12} {r['name']:<{width}} {value:>13} {baseline:>13} {ratio:>8} {target:>10}  {ok}")


def run_section(section: str, work: Path, quick: bool) -> dict:
    if section == "hook":
        return bench_hook(work, runs=15 if quick else 40)
    if section == "history":
        return bench_history(work, runs=5 if quick else 15)
    if section == "ping":
        from ping_bench import bench_ping  # what BATCH_PING_URL costs a hook (bench/ping_bench.py)

        return bench_ping(work, runs=8 if quick else 20)
    if section == "alert":
        return bench_alert(work)
    if section == "footprint":
        return bench_footprint(work, quick)
    if section == "scrape":
        return bench_scrape(work, quick)
    if section == "monitor":
        return bench_monitor(work, quick)
    return bench_concurrency(work, cli_updates=50 if quick else 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke run)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))} (allowed: {', '.join(SECTIONS)})")
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    results: dict = {
        "python": sys.version.split()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    try:
        for section in sections:
            started = time.monotonic()
            results[section] = run_section(section, work, args.quick)
            results[section]["seconds"] = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [r for section in sections for r in results[section]["rows"]]
    print_table(rows)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {output}")
    return 0 if all(r["met"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
