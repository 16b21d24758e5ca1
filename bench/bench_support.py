"""What every benchmark section shares: the environment, the real CLI and monitor as subprocesses,
prepared tracker directories (with a big history in the legacy format), and result rows.

Loaded by bench/run.py (bench/ is the script's directory, so it is importable by name).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from utils.batch_tracker import BatchTracker
from utils.config import TrackerConfig

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
STAGES = ["scrape", "enrich", "dedupe", "score", "mockup", "email"]
BIG_HISTORY = 3650  # ten years of nights
MONITOR_STAGES = [f"stage{i:02d}" for i in range(50)]  # the monitor rows: 50 stages per batch


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


def env_for(tracker_file: Path, **extra: str) -> dict:
    """A clean environment for the tracker CLI / monitor on ``tracker_file`` (no inherited BATCH_/SMTP_ settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "SMTP_", "ALERT_", "METRICS_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.update({"BATCH_TRACKER_FILE": str(tracker_file)})
    env.update(extra)
    return env


def run_cli(env: dict, *args: str, ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """``python -m utils.batch_tracker ARGS`` (the real hook); raise on an exit code not in ``ok_codes``."""
    result = subprocess.run(
        [PYTHON, "-m", "utils.batch_tracker", *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode not in ok_codes:
        raise RuntimeError(f"batch_tracker {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def time_command(command: list[str], env: dict, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Wall time of one run of ``command`` (seconds); raise on an exit code not in ``ok_codes``."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode not in ok_codes:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode().strip()}")
    return elapsed


def legacy_history_file(tracker_file: Path) -> Path:
    """Where the legacy history lives: ``<tracker>.history.json`` beside the tracker file."""
    name = tracker_file.name[:-5] if tracker_file.name.endswith(".json") else tracker_file.name
    return tracker_file.with_name(f"{name}.history.json")


def fill_history(tracker_file: Path, batches: int, stages: list[str]) -> None:
    """Write ``batches`` realistic completed batches of ``stages`` in the LEGACY history format
    (``{"schema_version": 1, "batches": [...]}``), as the tracker wrote it before the archive: the next
    real write migrates it, so the same fill works for the old and the new storage."""
    start = 1_500_000_000.0
    records = []
    for night in range(batches):
        begin = start + night * 86_400
        stage_records, moment = {}, begin
        for name in stages:
            moment += 5_400 / len(stages)
            stage_records[name] = {
                "percentage": 100.0,
                "first_seen_at": moment - 60,
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
                "expected_stages": stages,
                "stages": stage_records,
                "failure": None,
                "failures": [],
                "resumed_at": [],
                "cost_per_lead": 0.4,
                "gpu_cost_dollars": 1.25,
                "host": "bench",
            }
        )
    legacy_history_file(tracker_file).write_text(json.dumps({"schema_version": 1, "batches": records}))


def prepare_tracker(directory: Path, batches: int, stages: list[str], progressed: int | None = None) -> Path:
    """A tracker directory with ``batches`` finished batches and a running batch of ``stages``, half of
    them done (``progressed`` stages, if given); return the tracker file.

    The history is filled in the legacy format, then a real CLI ``start`` archives the first batch and
    lets the tracker migrate the history (its first write), so the timed commands never pay for that.
    """
    directory.mkdir(parents=True)
    tracker_file = directory / "batch_tracker.json"
    env = env_for(tracker_file, BATCH_HISTORY_LIMIT=str(max(batches, BIG_HISTORY)))
    run_cli(env, "start", "--stages", ",".join(stages))
    if batches:
        fill_history(tracker_file, batches - 1, stages)
        run_cli(env, "start", "--stages", ",".join(stages))  # archives the first batch: `batches` in all
    tracker = BatchTracker(TrackerConfig.from_env(env))
    for name in stages[: len(stages) // 2 if progressed is None else progressed]:
        tracker.stage(name, 100)
    # Snapshot.history may hold only the recent batches (the archive keeps the rest): check it is there at all.
    if bool(tracker.snapshot().history) != bool(batches):
        raise RuntimeError(f"prepared {directory}: history does not match {batches} finished batches")
    return tracker_file


@contextlib.contextmanager
def copied(template: Path, target: Path):
    """A fresh copy of the directory ``template`` at ``target`` for one sample (on disk), removed afterwards."""
    shutil.copytree(template, target)
    # ext4 in ordered mode can make the timed command's fsync wait for the copy's dirty pages.
    os.sync()
    try:
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)


class MonitorProcess:
    """The real monitor as a subprocess on ``work/batch_tracker.json``, metrics on a free port."""

    def __init__(self, work: Path, smtp_port: int | None, **extra: str):
        self.tracker_file = work / "batch_tracker.json"
        self.outbox = work / "outbox"
        self.metrics_port = free_port()
        smtp = {} if smtp_port is None else {"SMTP_SERVER": "127.0.0.1", "SMTP_PORT": str(smtp_port)}
        if smtp:
            smtp["SMTP_SECURITY"] = "plain"
        self.env = env_for(
            self.tracker_file,
            BATCH_OUTBOX_DIR=str(self.outbox),
            METRICS_ADDR="127.0.0.1",
            METRICS_PORT=str(self.metrics_port),
            LOG_LEVEL="WARNING",
            **smtp,
            **extra,
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> MonitorProcess:
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "bin" / "batch_completion_monitor.py")],
            env=self.env,
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.get("/healthz") is not None, timeout=60, message="monitor /healthz")
        return self

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=10) as response:
                return response.read()
        except OSError:
            return None

    def tracker(self) -> BatchTracker:
        """The library on this monitor's tracker file, with the monitor's settings."""
        return BatchTracker(TrackerConfig.from_env(self.env))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(self.env, *args)

    def last_check_at(self) -> float:
        """When the monitor's last completed check began (its alert-state file's ``last_check_at``; 0 if none)."""
        try:
            document = json.loads(Path(f"{str(self.tracker_file)[:-5]}.monitor.json").read_text())
        except (OSError, ValueError):
            return 0.0
        value = document.get("last_check_at") if isinstance(document, dict) else None
        return float(value) if isinstance(value, int | float) else 0.0

    def wait_checked_after(self, moment: float, timeout: float = 30) -> None:
        """Wait until the monitor has completed a check that began after ``moment`` (UTC epoch)."""
        wait_until(lambda: self.last_check_at() > moment, timeout=timeout, interval=0.003, message="a monitor check")

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


def row(group, name, value, unit, ratio, target, target_unit, absolute=False, baseline=None) -> dict:
    """One result row. ``absolute``: the target applies to ``value``, else to ``ratio``; ``baseline``:
    the same measurement's baseline value (same unit), shown for context."""
    measured = value if absolute else ratio
    met = None if target is None or measured is None else measured <= target
    return {
        "group": group,
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "target_unit": target_unit,
        "met": met,
    }


def ms(values: list[float]) -> list[float]:
    return [round(v * 1000, 3) for v in values]
