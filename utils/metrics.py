"""Prometheus metrics of the nightly batch, computed at scrape time (reading files, writing nothing).

:func:`batch_metric_families` is the pure part, shared with the Pushgateway path; the families are documented by their
HELP texts. Counters come from the tracker's persisted :mod:`utils.counters`: a batch counts once however many
processes scrape or push, and totals survive restarts.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from utils.counters import Counters
from utils.incidents import AT_RISK, LATE, LATE_START, MISSING, STALLED_STAGE, TOO_SHORT, UNREADABLE
from utils.model import FAILED, Batch, Snapshot, is_valid_name
from utils.numbers import finite_number
from utils.projection import batch_deadline, on_time, project
from utils.state_store import StorageError, read_json_object

LOGGER = logging.getLogger(__name__)

PREFIX = "anthrasite_batch_"
BATCH_STATE_VALUES = ("none", "running", "completed", "failed", "abandoned")
#: Incident kinds of :mod:`utils.incidents`.
KNOWN_INCIDENT_KINDS = (LATE, FAILED, MISSING, LATE_START, UNREADABLE, AT_RISK, TOO_SHORT, STALLED_STAGE)
MAX_STAGE_SERIES = 100
MAX_LABEL_KINDS = 32
# The label naming the job (BATCH_NAME, or a [jobs.NAME] of the jobs file) on every batch series. Not "job": a
# scrape sets its own job label (a target's "job" becomes "exported_job", or with honor_labels replaces the scrape
# job that "up" carries), and the Pushgateway path already groups by job=BATCH_NAME. "batch" means the same
# whether scraped from the monitor or pushed, and source_info has always carried it.
BATCH_LABEL = "batch"


def host_name() -> str:
    """This host's name: the ``host`` of ``source_info`` and the Pushgateway's ``instance``."""
    return os.uname().nodename or socket.gethostname()


#: HELP texts of the unlabelled gauges, by name without :data:`PREFIX`.
GAUGE_HELP = {
    "completion_percentage": "Completion of the current batch in percent (mean over its expected stages; 100 once completed).",
    "completion_success": "1 when the newest decided batch completed by its deadline, else 0.",
    "cost_per_lead": "Newest recorded cost per lead in dollars.",
    "start_timestamp_seconds": "Start of the current batch (UTC epoch seconds).",
    "end_timestamp_seconds": "End of the current batch (UTC epoch seconds); absent while it runs.",
    "deadline_timestamp_seconds": "Deadline of the current batch (UTC epoch seconds); the next deadline when there is no batch.",
    "next_deadline_timestamp_seconds": "The first deadline after now (UTC epoch seconds).",
    "next_start_due_timestamp_seconds": "The deadline after the one the current batch covers: if no batch starts by then, it is missing.",
    "last_success_timestamp_seconds": "End of the newest completed batch (UTC epoch seconds).",
    "projected_completion_timestamp_seconds": "Projected finish of the running batch from stage rates and usual durations (UTC epoch seconds).",
    "tracker_readable": "1 when the tracker file could be read and parsed, else 0.",
    "monitor_last_check_timestamp_seconds": "When the monitor last evaluated the batch (UTC epoch seconds).",
    "alerts_queued": "Alert and recovery e-mails waiting in the monitor's outbox.",
    "alerts_failed": "E-mails the monitor gave up on, kept in the outbox's failed directory.",
    "alerts_oldest_queued_age_seconds": "Age of the oldest e-mail waiting in the outbox (0 when none waits).",
}


def _gauge(name: str, value: float | None) -> Metric:
    """The gauge ``name`` (see :data:`GAUGE_HELP`), with ``value`` unless it is None."""
    family = GaugeMetricFamily(PREFIX + name, GAUGE_HELP[name])
    if value is not None:
        family.add_metric([], value)
    return family


def _bound_label(bound: float) -> str:
    if bound == math.inf:
        return "+Inf"
    return str(int(bound)) + ".0" if bound == int(bound) else repr(bound)


def _counter_families(counters: Counters) -> list[Metric]:
    """The persisted families: the duration histogram, completions on time or late, GPU spend."""
    outcomes = CounterMetricFamily(
        PREFIX + "completed",
        "Completed batches, each counted once, by whether they completed by their deadline.",
        labels=["on_time"],
    )
    outcomes.add_metric(["true"], counters.completed_on_time)
    outcomes.add_metric(["false"], counters.completed_late)
    return [
        HistogramMetricFamily(
            PREFIX + "completion_time_seconds",
            "Duration of completed batches (start to end), each batch observed once.",
            buckets=[(_bound_label(bound), count) for bound, count in counters.cumulative_buckets()],
            sum_value=counters.duration_sum,
        ),
        outcomes,
        CounterMetricFamily(
            PREFIX + "gpu_cost_dollars",
            "GPU spend in dollars over all batches (monotonic across batches and restarts).",
            value=counters.gpu_dollars,
        ),
    ]


def _completion_success(snapshot: Snapshot, deadline, now: float) -> float | None:
    """1/0 for the newest decided batch: the current one once decided, else the newest in history."""
    verdict = on_time(snapshot.current, deadline, now) if snapshot.current else None
    if verdict is None and snapshot.counters is not None:
        verdict = snapshot.counters.last_finished_on_time
    return None if verdict is None else (1.0 if verdict else 0.0)


def _stage_family(current: Batch | None) -> Metric:
    family = GaugeMetricFamily(
        PREFIX + "stage_completion_percentage",
        "Completion of each stage of the current batch in percent.",
        labels=["stage"],
    )
    if current:
        for name in [n for n in current.ordered_stage_names() if is_valid_name(n)][:MAX_STAGE_SERIES]:
            stage = current.stage(name)
            family.add_metric([name], stage.percentage if stage else 0.0)
    return family


def with_batch_label(family: Metric, batch_name: str) -> Metric:
    """``family`` with ``batch="<batch_name>"`` first on every sample (a sample's own ``batch`` is kept)."""
    family.samples = [sample._replace(labels={BATCH_LABEL: batch_name, **sample.labels}) for sample in family.samples]
    return family


def batch_metric_families(
    snapshot: Snapshot,
    now: float,
    deadline,
    monitor_state: dict | None = None,
    *,
    include_monitor: bool = True,
    include_outbox: bool = True,
    batch_name: str = "",
    host: str = "",
) -> list[Metric]:
    """The metric families for ``snapshot`` at ``now`` (pure). Without ``snapshot.counters`` the persisted families
    are left out (zeros would read as a counter reset); ``batch_name`` and ``host`` label ``source_info``, and a
    non-empty ``batch_name`` labels every series ``batch`` except the outbox gauges (:func:`outbox_families`: one
    outbox per monitor, whatever its jobs), which ``include_outbox`` False leaves out."""
    families = _batch_families(snapshot, now, deadline, monitor_state, include_monitor, batch_name, host)
    if batch_name:
        families = [with_batch_label(family, batch_name) for family in families]
    if include_monitor and include_outbox:
        families.extend(outbox_families((monitor_state or {}).get("outbox"), now))
    return families


def _batch_families(
    snapshot: Snapshot, now: float, deadline, monitor_state: dict | None, include_monitor: bool, batch_name, host
) -> list[Metric]:
    current = snapshot.current
    counters = snapshot.counters
    state = current.state if current else "none"

    source = GaugeMetricFamily(
        PREFIX + "source_info",
        "Where these series come from (always 1): source monitor or push, the batch name and the host.",
        labels=["source", "batch", "host"],
    )
    source.add_metric(["monitor" if include_monitor else "push", batch_name, host], 1.0)
    percentage = _gauge("completion_percentage", current.overall_percentage() if current else 0.0)
    families: list[Metric] = [source, percentage, _stage_family(current)]
    if counters is not None:
        families.extend(_counter_families(counters))
    next_deadline = deadline.first_after(now)
    watch_since = finite_number((monitor_state or {}).get("watch_since"))
    gauges = {
        "completion_success": _completion_success(snapshot, deadline, now),
        "cost_per_lead": counters.last_cost_per_lead if counters is not None else None,
        "start_timestamp_seconds": current and current.started_at,
        "end_timestamp_seconds": current and current.ended_at,
        "deadline_timestamp_seconds": batch_deadline(current, deadline) if current else next_deadline,
        "next_deadline_timestamp_seconds": next_deadline,
        "next_start_due_timestamp_seconds": next_start_due(snapshot, deadline, now, watch_since),
        "last_success_timestamp_seconds": counters.last_success_at if counters is not None else None,
        "projected_completion_timestamp_seconds": _projected_completion(snapshot, now),
    }
    families.extend(_gauge(name, value) for name, value in gauges.items())
    state_family = GaugeMetricFamily(
        PREFIX + "state", "1 for the current batch's state, 0 for the others.", labels=["state"]
    )
    for value in BATCH_STATE_VALUES:
        state_family.add_metric([value], 1.0 if value == state else 0.0)
    info = GaugeMetricFamily(PREFIX + "info", "The current batch (always 1).", labels=["batch_id", "host"])
    if current and is_valid_name(current.id):  # label values must be tracker names
        info.add_metric([current.id, current.host or ""], 1.0)
    families += [state_family, info, _gauge("tracker_readable", 1.0 if snapshot.readable else 0.0)]
    if include_monitor:
        families.extend(_monitor_families(monitor_state or {}, now))
    return families


def next_start_due(snapshot: Snapshot, deadline, now: float, watch_since: float | None = None) -> float:
    """The deadline by which the next batch must start: the one after the deadline the newest batch covers; with no
    batch, the first after ``watch_since`` (else ``now``). Independent of ``now`` otherwise, so a pushed value stays right."""
    if snapshot.current is not None:
        start = snapshot.current.started_at  # the newest batch: starts only move forward
    else:
        start = snapshot.counters.last_started_at if snapshot.counters is not None else None
    if start is None:
        return deadline.first_after(watch_since if watch_since is not None else now)
    covered = start if deadline.last_at_or_before(start) == start else deadline.first_after(start)
    return deadline.first_after(covered)


def _projected_completion(snapshot: Snapshot, now: float) -> float | None:
    current = snapshot.current
    if not current or not current.is_running:
        return None
    history = [batch for batch in snapshot.history if batch.id != current.id]
    try:
        projection = project(current, history, now)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a projection must never break a scrape
        LOGGER.debug("no projection for batch %s", current.id, exc_info=True)
        return None
    return None if projection is None else projection.completion_at


def _count(value: object) -> float:
    number = finite_number(value)
    return number if number is not None and number >= 0 else 0.0


def _monitor_families(monitor_state: dict, now: float) -> list[Metric]:
    counters = monitor_state.get("counters") if isinstance(monitor_state.get("counters"), dict) else {}
    by_kind = counters.get("alerts_sent") if isinstance(counters.get("alerts_sent"), dict) else {}
    sent = CounterMetricFamily(
        PREFIX + "alerts_sent", "Alert e-mails the monitor sent, by incident kind.", labels=["kind"]
    )
    # Known kinds start at 0 so increase() sees the first alert of each kind.
    kinds = sorted({*KNOWN_INCIDENT_KINDS, *(k for k in by_kind if is_valid_name(k))})[:MAX_LABEL_KINDS]
    for kind in kinds:
        sent.add_metric([kind], _count(by_kind.get(kind)))
    families: list[Metric] = [sent]
    for name, key, documentation in (
        ("recoveries_sent", "recoveries_sent", "Recovery e-mails the monitor sent."),
        ("alert_delivery_failures", "delivery_failures", "Failed attempts to deliver an alert or recovery e-mail."),
        ("alert_permanent_failures", "permanent_failures", "Alert e-mails the monitor gave up delivering."),
    ):
        families.append(CounterMetricFamily(PREFIX + name, documentation, value=_count(counters.get(key))))
    incidents = GaugeMetricFamily(
        PREFIX + "open_incidents", "Incidents the monitor has open, by kind.", labels=["kind"]
    )
    raw_incidents = monitor_state.get("open_incidents")
    records = raw_incidents.values() if isinstance(raw_incidents, dict) else ()
    open_by_kind = collections.Counter(
        r.get("kind") for r in records if isinstance(r, dict) and is_valid_name(r.get("kind"))
    )
    for kind in sorted(open_by_kind)[:MAX_LABEL_KINDS]:
        incidents.add_metric([kind], float(open_by_kind[kind]))
    last_check = _gauge("monitor_last_check_timestamp_seconds", finite_number(monitor_state.get("last_check_at")))
    return [*families, incidents, last_check]


def outbox_families(summary: object, now: float) -> list[Metric]:
    """The outbox gauges from the monitor's ``outbox`` summary (``Outbox.summary()``); absent without one."""
    summary = summary if isinstance(summary, dict) else {}
    pending, failed, oldest = (finite_number(summary.get(key)) for key in ("pending", "failed", "oldest_pending_at"))
    age = None
    if pending is not None:
        # Nothing queued: age 0, so the series exists and "older than 15 min" reads as a plain comparison.
        age = max(0.0, now - oldest) if pending > 0 and oldest is not None else 0.0
    return [
        _gauge("alerts_queued", pending),
        _gauge("alerts_failed", failed),
        _gauge("alerts_oldest_queued_age_seconds", age),
    ]


def _file_key(path: str) -> bytes | str:
    """The file's bytes (or why it cannot be read): an exact change detector, far cheaper than parsing, that
    unlike (inode, mtime, size) cannot miss two quick same-size writes within one kernel timestamp tick."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        return type(exc).__name__


def read_monitor_state(path: str | os.PathLike | None) -> dict | None:
    """The monitor's alert-state document, or None when it is missing, unreadable or corrupt."""
    if path is None:
        return None
    try:
        return read_json_object(os.fspath(path))
    except StorageError as exc:
        LOGGER.debug("monitor state %s not readable: %s", path, exc)
        return None


class BatchMetricsCollector:
    """A prometheus_client collector: every ``collect()`` reads the files afresh and writes nothing."""

    def __init__(
        self,
        tracker,
        *,
        monitor_state_path: str | os.PathLike | None,
        clock: Callable[[], float] = time.time,
        include_monitor: bool = True,
        host: str | None = None,
    ):
        self.tracker = tracker
        self.deadline = tracker.config.deadline()  # validates the time zone once, at start-up
        self.monitor_state_path = None if monitor_state_path is None else os.fspath(monitor_state_path)
        # The same identity the Pushgateway path groups by (job=BATCH_NAME, instance=host name).
        self.source_labels = {
            "batch_name": tracker.config.batch_name,
            "host": host if host is not None else host_name(),
        }
        self.clock = clock
        self.include_monitor = include_monitor
        self._cached_snapshot: tuple | None = None

    def describe(self) -> Iterator[Metric]:
        # Names only: registration must not read files.
        yield from _every_family(self.deadline, self.include_monitor)

    def snapshot(self) -> Snapshot:
        """``tracker.snapshot()``, parsed again only when either file changed. The key is read first: a racing
        write costs one more parse at the next scrape, never a stale value."""
        key = (_file_key(self.tracker.store.path), _file_key(self.tracker.history.summary_store.path))
        cached = self._cached_snapshot
        if cached is not None and cached[0] == key:
            return cached[1]
        snapshot = self.tracker.snapshot()
        # One assignment: concurrent scrapes never pair a newer key with an older snapshot.
        self._cached_snapshot = (key, snapshot)
        return snapshot

    def read_monitor_state(self) -> dict | None:
        return read_monitor_state(self.monitor_state_path) if self.include_monitor else None

    def families(self, monitor_state: dict | None, now: float, *, include_outbox: bool = True) -> list[Metric]:
        """This job's families at ``now``, from ``monitor_state`` (as :meth:`read_monitor_state` reads it)."""
        return batch_metric_families(
            self.snapshot(),
            now,
            self.deadline,
            monitor_state,
            include_monitor=self.include_monitor,
            include_outbox=include_outbox,
            **self.source_labels,
        )

    def collect(self) -> Iterator[Metric]:
        yield from self.families(self.read_monitor_state(), self.clock())


class JobsMetricsCollector:
    """One collector for the jobs of one monitor (one :class:`BatchMetricsCollector` each): every family once,
    holding each job's series (told apart by ``batch``), and the shared outbox's gauges once, from the job state
    the monitor wrote last. Two collectors could not do it: a registry refuses a family name twice."""

    def __init__(self, parts: list[BatchMetricsCollector], *, clock: Callable[[], float] = time.time):
        names = [part.source_labels["batch_name"] for part in parts]
        if not parts or len(set(names)) != len(names):
            raise ValueError(f"jobs {names!r}: need one or more, each named once")
        self.parts = tuple(parts)
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        yield from self.parts[0].describe()

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        states = [part.read_monitor_state() for part in self.parts]
        merged: dict[str, Metric] = {}
        for part, state in zip(self.parts, states, strict=True):
            for family in part.families(state, now, include_outbox=False):
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                else:
                    into.samples.extend(family.samples)
        yield from merged.values()
        if self.parts[0].include_monitor:
            newest = max((s for s in states if s), key=lambda s: finite_number(s.get("last_check_at")) or 0, default={})
            yield from outbox_families(newest.get("outbox"), now)


def exported_sample_names(include_monitor: bool = True) -> set[str]:
    """Every sample name the collector can export (``_total``/``_bucket``/``_sum``/``_count`` included)."""
    from utils.deadline import DailyDeadline

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    families = _every_family(DailyDeadline(5, 0, "UTC"), include_monitor)
    return {family.name + suffix for family in families for suffix in suffixes.get(family.type, ("",))}


def _every_family(deadline, include_monitor: bool) -> list[Metric]:
    """Every family, from an empty snapshot: their names and types, without reading a file."""
    return batch_metric_families(Snapshot(counters=Counters()), 0.0, deadline, {}, include_monitor=include_monitor)


def register_batch_metrics(
    registry,
    *,
    tracker,
    monitor_state_path: str | os.PathLike | None,
    clock: Callable[[], float] = time.time,
) -> BatchMetricsCollector:
    """Register a :class:`BatchMetricsCollector` of ``tracker`` (a :class:`utils.batch_tracker.BatchTracker`)
    and the monitor's alert-state file (read-only) on ``registry``; return it. Raises ``ConfigError`` for a bad zone."""
    collector = BatchMetricsCollector(tracker, monitor_state_path=monitor_state_path, clock=clock)
    registry.register(collector)
    return collector


def register_jobs_metrics(
    registry, *, jobs: list[tuple[object, str | os.PathLike | None]], clock: Callable[[], float] = time.time
) -> JobsMetricsCollector:
    """Register one :class:`JobsMetricsCollector` for ``jobs``, pairs of (tracker, monitor state path), on
    ``registry``; return it. ValueError when no job or a name twice; ``ConfigError`` for a bad zone."""
    parts = [BatchMetricsCollector(tracker, monitor_state_path=path, clock=clock) for tracker, path in jobs]
    collector = JobsMetricsCollector(parts, clock=clock)
    registry.register(collector)
    return collector
