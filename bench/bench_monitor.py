"""Benchmark sections that run the real monitor as a subprocess: time to alert, footprint, scrapes,
and the monitor at scale (3650 finished batches of 50 stages)."""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench_support import (
    BIG_HISTORY,
    MONITOR_STAGES,
    STAGES,
    MonitorProcess,
    SmtpSink,
    ms,
    prepare_tracker,
    row,
    wait_until,
)

ALERT_TRIALS = 20
MIN_ROUNDS = 3  # a measurement's time budget never cuts it below this many rounds
ALERT_SPREAD_SECONDS = 1.0  # random delay before each `fail`: uniform over any file-poll period dividing 1 s

# --------------------------------------------------------------------------- time to alert


def _outbox_records(outbox: Path) -> list[dict]:
    """Every message record (sidecar) in the outbox, whatever its state."""
    records = []
    for path in outbox.glob("*/*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # moved between states meanwhile: seen at the next look
        if isinstance(record, dict):
            records.append(record)
    return records


def _failure_alert(outbox: Path, batch_id: str) -> dict | None:
    for record in _outbox_records(outbox):
        if record.get("type") == "alert" and batch_id in f"{record.get('incident')} {record.get('subject')}":
            return record
    return None


def bench_alert(work: Path, trials: int = ALERT_TRIALS, deadline_row: bool = True) -> dict:
    """`fail` recorded -> the alert in the outbox, over ``trials`` failures, each after a random delay
    (so the failures land all over the monitor's file-poll phase); then deadline -> e-mail once."""
    rows = []
    # No SMTP server: the outbox is where an alert is first durable, and .eml files are its delivery.
    monitor = MonitorProcess(work / "fail", None)
    prepare_tracker(monitor.tracker_file.parent, 0, STAGES)
    monitor.start()
    rng = random.Random(13)
    queued, delivered = [], []
    try:
        for _ in range(trials):
            started_at = time.time()
            batch_id = monitor.cli("start", "--stages", ",".join(STAGES)).stdout.strip()
            monitor.wait_checked_after(started_at)  # the monitor is back in its waiting loop
            threading.Event().wait(rng.uniform(0, ALERT_SPREAD_SECONDS))
            monitor.cli("fail", "--stage", STAGES[1], "--reason", "exit code 3")
            failed_at = monitor.tracker().snapshot().current.failure.at
            record = wait_until(
                lambda batch=batch_id: _failure_alert(monitor.outbox, batch), timeout=30, interval=0.005
            )
            queued.append(float(record["created_at"]) - failed_at)
            done = wait_until(
                lambda batch=batch_id: (r := _failure_alert(monitor.outbox, batch)) and r.get("delivered_at") and r,
                timeout=30,
                interval=0.005,
            )
            delivered.append(float(done["delivered_at"]) - failed_at)
    finally:
        monitor.stop()
    for label, values, targets in (
        ("fail recorded -> alert in the outbox", queued, (0.3, 1.0)),
        ("fail recorded -> .eml delivered", delivered, (None, None)),
    ):
        rows.append(
            row(
                "alert",
                f"{label}: median of {len(values)}",
                statistics.median(values),
                "s",
                None,
                targets[0],
                "s",
                absolute=True,
            )
        )
        rows.append(row("alert", f"{label}: min", min(values), "s", None, None, "s", absolute=True))
        rows.append(row("alert", f"{label}: max", max(values), "s", None, targets[1], "s", absolute=True))
    if deadline_row:
        rows.append(_deadline_alert(work))
    return {"rows": rows, "samples_s": {"queued": queued, "delivered": delivered}}


def _deadline_alert(work: Path) -> dict:
    """From the deadline passing to the e-mail at a real SMTP server; the deadline is the next whole UTC minute."""
    smtp = SmtpSink().start()
    try:
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
        finally:
            monitor.stop()
    finally:
        smtp.stop()
    return row("alert", "deadline passed -> e-mail received", latency, "s", None, 2.0, "s", absolute=True)


# --------------------------------------------------------------------------- footprint


def bench_footprint(work: Path, quick: bool) -> dict:
    """Steady /metrics latency with 50 stages (no history) and idle CPU at the default interval."""
    rows = []
    smtp = SmtpSink().start()
    monitor = MonitorProcess(work / "footprint", smtp.port).start()
    try:
        monitor.cli("start", "--stages", ",".join(MONITOR_STAGES))
        tracker = monitor.tracker()
        for index, name in enumerate(MONITOR_STAGES):
            tracker.stage(name, index * 2)
        latencies = []
        for _ in range(50):  # warm-up
            monitor.get("/metrics")
        for _ in range(300 if not quick else 100):
            started = time.perf_counter()
            body = monitor.get("/metrics")
            latencies.append(time.perf_counter() - started)
        assert body and b'stage="stage49"}' in body
        latencies.sort()
        median, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
        rows.append(row("footprint", "/metrics median (50 stages, steady)", median * 1000, "ms", None, 5.0, "ms", True))
        rows.append(row("footprint", "/metrics p99 (50 stages, steady)", p99 * 1000, "ms", None, None, "ms", True))

        # Idle CPU at the default 300 s interval (it still watches the file).
        idle_seconds = 30 if not quick else 10
        cpu_before, wall_before = monitor.cpu_seconds(), time.monotonic()
        threading.Event().wait(idle_seconds)
        cpu_share = (monitor.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before) * 100
        rows.append(row("footprint", f"CPU idle over {idle_seconds} s", cpu_share, "% core", None, 1.0, "%", True))
    finally:
        monitor.stop()
        smtp.stop()
    return {"rows": rows}


# --------------------------------------------------------------------------- scrapes


def _scrape(connection: http.client.HTTPConnection, path: str = "/metrics") -> float:
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or not body:
        raise RuntimeError(f"GET {path}: HTTP {response.status}")
    return elapsed


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
        kept = http.client.HTTPConnection("127.0.0.1", monitor.metrics_port, timeout=5)
        samples: dict[str, list[float]] = {"new": [], "kept": []}
        rounds = 100 if quick else 400
        for index in range(rounds + 20):  # interleaved; the first 20 rounds warm up
            fresh = http.client.HTTPConnection("127.0.0.1", monitor.metrics_port, timeout=5)
            new_time = _scrape(fresh)
            fresh.close()
            kept_time = _scrape(kept)
            if index >= 20:
                samples["new"].append(new_time)
                samples["kept"].append(kept_time)
        kept.close()
    finally:
        monitor.stop()
        smtp.stop()
    new_median, kept_median = statistics.median(samples["new"]), statistics.median(samples["kept"])
    rows = [
        row("scrape", "/metrics, new connection each (baseline)", new_median * 1000, "ms", 1.0, None, "x"),
        row(
            "scrape",
            "/metrics, one kept-alive connection",
            kept_median * 1000,
            "ms",
            kept_median / new_median,
            1.0,
            "x",
        ),
        row("scrape", "/metrics kept-alive median", kept_median * 1000, "ms", None, 5.0, "ms", absolute=True),
    ]
    return {"rows": rows, "samples_ms": {k: ms(v) for k, v in samples.items()}}


# --------------------------------------------------------------------------- the monitor at scale


class _Watched:
    """A monitor, the library on its tracker file and a kept-alive connection to its HTTP server."""

    def __init__(self, monitor: MonitorProcess):
        self.monitor = monitor
        self.tracker = monitor.tracker()
        self.connection = http.client.HTTPConnection("127.0.0.1", monitor.metrics_port, timeout=30)
        self.updates = 0

    def change(self) -> float:
        """One stage update through the library; return when it began (UTC epoch)."""
        moment = time.time()
        self.tracker.stage(MONITOR_STAGES[self.updates % len(MONITOR_STAGES)], self.updates % 100)
        self.updates += 1
        return moment

    def scrape(self, path: str) -> float:
        try:
            return _scrape(self.connection, path)
        except (OSError, http.client.HTTPException):
            self.connection.close()  # the server closed an idle connection: one more on a fresh one
            self.connection = http.client.HTTPConnection("127.0.0.1", self.monitor.metrics_port, timeout=30)
            return _scrape(self.connection, path)


def _interleaved(
    pair: dict[str, _Watched], trials: int, trial: Callable[[_Watched], float], budget_seconds: float
) -> dict[str, list[float]]:
    """``trials`` rounds of ``trial`` on each monitor, alternating which goes first; fewer (at least
    MIN_ROUNDS) when the rounds take longer than ``budget_seconds`` (a slow monitor must not take hours)."""
    samples: dict[str, list[float]] = {name: [] for name in pair}
    give_up_at = time.monotonic() + budget_seconds
    for index in range(trials):
        if index >= MIN_ROUNDS and time.monotonic() > give_up_at:
            break
        for name in pair if index % 2 == 0 else reversed(pair):
            samples[name].append(trial(pair[name]))
    return samples


def bench_monitor(work: Path, quick: bool) -> dict:
    """The monitor at 3650 finished batches of 50 stages against the same monitor with an empty history,
    both running at once and measured interleaved.

    - check CPU per tracker change: N library stage updates, each waited for until the monitor has
      checked after it; the monitor's utime+stime from /proc, before and after, over N;
    - /metrics and /status.json right after a change: change the file, then scrape at once (the first
      scrape after the change, on a kept-alive connection), then wait for the monitor's check;
    - RSS after an hour's worth of updates and scrapes: 3600 updates and a /metrics scrape per 15 of
      them (one a second, one scrape per 15 s), each update waited for until checked while a time
      budget lasts, the rest of the updates as fast as they go (the row says how many were checked
      and scraped).

    Each measurement stops early (after at least MIN_ROUNDS) when its time budget runs out.
    """
    pair: dict[str, _Watched] = {}
    monitors = []
    try:
        for name, batches in (("empty", 0), ("big", BIG_HISTORY)):
            monitor = MonitorProcess(work / f"monitor-{name}", None, BATCH_HISTORY_LIMIT=str(BIG_HISTORY))
            prepare_tracker(monitor.tracker_file.parent, batches, MONITOR_STAGES)
            monitors.append(monitor.start())
            pair[name] = _Watched(monitor)
        for watched in pair.values():  # warm-up: a first change, check and scrapes
            watched.monitor.wait_checked_after(watched.change())
            watched.scrape("/metrics")
            watched.scrape("/status.json")
        results: dict[str, dict[str, float]] = {}
        samples: dict[str, dict[str, list[float]]] = {}

        trials, budget = (20, 20.0) if quick else (60, 60.0)
        # Check CPU per change.
        cpu = {name: w.monitor.cpu_seconds() for name, w in pair.items()}

        def checked_change(watched: _Watched) -> float:
            watched.monitor.wait_checked_after(watched.change())
            return 0.0

        changes = len(_interleaved(pair, trials, checked_change, budget)["big"])
        results[f"check CPU per tracker change ({changes} changes)"] = {
            name: (w.monitor.cpu_seconds() - cpu[name]) / changes * 1000 for name, w in pair.items()
        }

        # Scrapes right after a change.
        for path in ("/metrics", "/status.json"):

            def scrape_after_change(watched: _Watched, path: str = path) -> float:
                moment = watched.change()
                elapsed = watched.scrape(path)
                watched.monitor.wait_checked_after(moment)
                return elapsed

            samples[path] = _interleaved(pair, trials, scrape_after_change, budget)
            results[f"{path} right after a change (median of {len(samples[path]['big'])})"] = {
                name: statistics.median(values) * 1000 for name, values in samples[path].items()
            }

        # RSS after an hour's worth of updates and scrapes.
        updates, per_scrape = (600, 15) if quick else (3600, 15)
        give_up_at = time.monotonic() + (40 if quick else 300)
        checked = scrapes = 0
        moments: dict[str, float] = {}
        for index in range(updates):
            moments = {name: w.change() for name, w in pair.items()}
            paced = time.monotonic() < give_up_at
            if paced:
                for name, w in pair.items():
                    w.monitor.wait_checked_after(moments[name])
                checked += 1
            if paced and index % per_scrape == per_scrape - 1:
                for w in pair.values():
                    w.scrape("/metrics")
                scrapes += 1
        for name, w in pair.items():  # the last change checked too
            w.monitor.wait_checked_after(moments[name])
        rss_label = (
            f"RSS after {updates} updates ({checked} checked one by one), {scrapes} of {updates // per_scrape} scrapes"
        )
        results[rss_label] = {name: w.monitor.rss_mib() for name, w in pair.items()}
    finally:
        for watched in pair.values():
            watched.connection.close()
        for monitor in monitors:
            monitor.stop()

    targets = [(15.0, "ms"), (10.0, "ms"), (20.0, "ms"), (40.0, "MiB")]  # in the order measured
    rows = []
    for label, (target, unit) in zip(results, targets, strict=True):
        big, empty = results[label]["big"], results[label]["empty"]
        rows.append(
            row(
                "monitor",
                f"{label} ({BIG_HISTORY} x 50 stages vs empty)",
                big,
                unit,
                big / empty if empty else None,
                target,
                unit,
                absolute=True,
                baseline=empty,
            )
        )
    return {"rows": rows, "samples_ms": {p: {n: ms(v) for n, v in s.items()} for p, s in samples.items()}}
