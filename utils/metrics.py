"""Prometheus metrics of the nightly batch, computed at scrape time.

:func:`register_batch_metrics` registers a :class:`BatchMetricsCollector` on a
prometheus_client registry. Every scrape reads the tracker (``tracker.snapshot()``),
the monitor's alert-state file (read-only; missing or corrupt means "no monitor
data") and the metrics state file this module maintains, so the values are never
older than the scrape. :func:`batch_metric_families` is the pure part, shared with
the Pushgateway path (:mod:`utils.pushgateway`).

Exported metrics (all names start ``anthrasite_batch_``; a "current batch" is the
one in the tracker file: running, or the last one finished until the next starts):

=================================================  =========  ==========================================
``completion_percentage``                          gauge      current batch, mean over its expected stages
                                                              (100 once completed; 0 with no batch)
``stage_completion_percentage{stage}``             gauge      current batch, one series per real stage
                                                              (at most ``MAX_STAGE_SERIES``)
``completion_time_seconds``                        histogram  duration of every completed batch, observed
                                                              exactly once, ever (persisted); buckets 30 s
                                                              to 12 h, roughly geometric
``completed_total{on_time}``                       counter    completed batches by ``true``/``false``: done
                                                              by their deadline or not; each counted once,
                                                              with the histogram (persisted)
``completion_success``                             gauge      1 when the newest decided batch completed by
                                                              its deadline, else 0 (absent before any)
``cost_per_lead``                                  gauge      newest recorded cost per lead (dollars)
``gpu_cost_dollars_total``                         counter    GPU spend of all batches ever (persisted)
``start_timestamp_seconds``                        gauge      current batch's start
``end_timestamp_seconds``                          gauge      current batch's end (absent while running)
``deadline_timestamp_seconds``                     gauge      current batch's deadline; with no batch, the
                                                              next deadline
``next_deadline_timestamp_seconds``                gauge      first deadline after now
``next_start_due_timestamp_seconds``               gauge      the next batch must start by then, else that
                                                              deadline is "missing" (see :func:`next_start_due`)
``last_success_timestamp_seconds``                 gauge      end of the newest completed batch (persisted)
``projected_completion_timestamp_seconds``         gauge      projected finish of a running batch (when
                                                              history allows a projection)
``state{state}``                                   gauge      1 for the current state, 0 for the others
                                                              (none, running, completed, failed, abandoned)
``info{batch_id,host}``                            gauge      1, for the current batch only
``tracker_readable``                               gauge      1 when the tracker file parses, else 0
``alerts_sent_total{kind}``                        counter    alert e-mails sent by incident kind (monitor)
``recoveries_sent_total``                          counter    recovery e-mails sent (monitor)
``alert_delivery_failures_total``                  counter    failed delivery attempts (monitor)
``alert_permanent_failures_total``                 counter    alerts given up on (monitor)
``open_incidents{kind}``                           gauge      incidents the monitor has open, by kind
``monitor_last_check_timestamp_seconds``           gauge      when the monitor last evaluated the batch
``alerts_queued``                                  gauge      e-mails waiting in the outbox (monitor)
``alerts_failed``                                  gauge      e-mails given up on, in the outbox's
                                                              ``failed/`` directory (monitor)
``alerts_oldest_queued_age_seconds``               gauge      age of the oldest waiting e-mail at scrape
                                                              time, 0 when none waits (monitor)
``source_info{source,batch,host}``                 gauge      1; ``source`` is ``monitor`` or ``push``,
                                                              ``batch`` ``BATCH_NAME``, ``host`` this host's
                                                              name: the key rules and panels join on, so
                                                              a batch reported by the monitor and by a
                                                              Pushgateway counts once
=================================================  =========  ==========================================

``gpu_cost_dollars`` and ``completed`` are counters: prometheus_client exposes them as
``anthrasite_batch_gpu_cost_dollars_total`` and ``anthrasite_batch_completed_total``. The outbox
gauges come from the ``outbox`` summary in the monitor's state file (absent without one).

Persistence (``metrics_state_path``, JSON, written with :mod:`utils.state_store`'s
lock-and-replace protocol, only when something new must be counted):

- the histogram's per-bucket counts, sum and count, the on-time/late completion
  counts, and the ids of the completed batches already observed. A completed batch is observed when a scrape first sees
  it (current batch or history), under the lock after re-reading the file, so two
  processes or a restarted monitor never count it twice;
- the GPU counter: a running total plus, per batch id, the spend already added.
  The tracker's per-batch ``gpu_cost_dollars`` only grows while that batch is
  current, so each scrape adds the growth since the last one; a later batch
  starting at $0 never lowers the total (unlike exporting the current batch's spend,
  which would reset nightly), and spend reported before a restart is never added
  again;
- bounded: ids are kept while their batch is still in the tracker's files (at most
  ``MAX_TRACKED_BATCHES``); older ids are dropped and the ``watermark`` (the latest
  start among dropped batches) makes every batch started at or before it ineligible,
  so a dropped id can never be counted again.

A metrics state file that does not parse is moved aside and rebuilt from the
tracker's history (a counter reset, which Prometheus' ``rate``/``increase`` handle).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from utils.batch_tracker import TrackerSnapshot, is_valid_name
from utils.incidents import AT_RISK, LATE, MISSING, STALLED_STAGE, TOO_SHORT, UNREADABLE
from utils.model import FAILED
from utils.projection import batch_deadline, on_time, ordered_stage_names, overall_percentage, project
from utils.state_store import CorruptStateError, JsonStateStore, StorageError, read_json_object

LOGGER = logging.getLogger(__name__)

PREFIX = "anthrasite_batch_"
SCHEMA_VERSION = 1
#: Histogram buckets (seconds) for a nightly batch: 30 s to 12 h, roughly geometric (each bound
#: 1.3-1.5x the previous), so ``histogram_quantile`` reads a 100 s or a 7 h run within a few percent.
COMPLETION_TIME_BUCKETS: tuple[float, ...] = (
    30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0, 1200.0, 1800.0,
    2400.0, 3600.0, 5400.0, 7200.0, 10800.0, 14400.0, 21600.0, 28800.0, 43200.0,
)  # fmt: skip
BATCH_STATE_VALUES = ("none", "running", "completed", "failed", "abandoned")
#: Incident kinds of :mod:`utils.batch_health` and :mod:`utils.prediction`.
KNOWN_INCIDENT_KINDS = (LATE, FAILED, MISSING, UNREADABLE, AT_RISK, TOO_SHORT, STALLED_STAGE)
MAX_STAGE_SERIES = 100
MAX_LABEL_KINDS = 32
MAX_TRACKED_BATCHES = 2000
_GPU_EPSILON = 1e-9

# Label values (stage names, incident kinds, batch ids) must be tracker names: 1-64 of A-Z a-z 0-9 _ . -
_is_label_value = is_valid_name


def host_name() -> str:
    """This host's name: the ``host`` of ``source_info`` and the Pushgateway's ``instance``."""
    return os.uname().nodename or socket.gethostname()


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --------------------------------------------------------------------------- persisted state


def fresh_metrics_state() -> dict:
    """An empty metrics state document."""
    return {
        "schema_version": SCHEMA_VERSION,
        "completion_time": {
            "bounds": list(COMPLETION_TIME_BUCKETS),
            "counts": [0] * (len(COMPLETION_TIME_BUCKETS) + 1),
            "sum": 0.0,
            "count": 0,
        },
        "observed": {},
        "completed": {"on_time": 0, "late": 0},
        "gpu": {"total": 0.0, "counted": {}},
        "last_success_at": None,
        "watermark": None,
    }


def _valid_state(document: object) -> dict:
    """Return ``document`` if it is a metrics state this code can use, else raise CorruptStateError."""
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        raise CorruptStateError("metrics state has no supported schema_version")
    histogram = document.get("completion_time")
    gpu = document.get("gpu")
    completed = document.get("completed")
    try:
        counts = histogram["counts"]
        ok = (
            isinstance(counts, list)
            and len(counts) == len(histogram["bounds"]) + 1
            and all(isinstance(c, int) and c >= 0 for c in counts)
            and _number(histogram["sum"]) is not None
            and histogram["count"] == sum(counts)
            and isinstance(document["observed"], dict)
            and _number(gpu["total"]) is not None
            and isinstance(gpu["counted"], dict)
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise CorruptStateError("metrics state is malformed")
    same_buckets = [float(b) for b in histogram["bounds"]] == list(COMPLETION_TIME_BUCKETS)
    has_outcomes = isinstance(completed, dict) and all(
        isinstance(completed.get(k), int) and completed[k] >= 0 for k in ("on_time", "late")
    )
    if not (same_buckets and has_outcomes):
        # The buckets changed (or the on-time counts are new) in this release: old counts cannot be
        # re-bucketed. Rebuild from the history the tracker still has (a counter reset), keep GPU spend.
        LOGGER.warning("completion-time buckets changed; rebuilding the histogram from the tracker history")
        rebuilt = fresh_metrics_state()
        rebuilt["gpu"] = gpu
        rebuilt["last_success_at"] = document.get("last_success_at")
        return rebuilt
    return document


def _eligible(batch: dict, watermark: float | None) -> bool:
    return watermark is None or batch["started_at"] > watermark


def _completion_seconds(batch: dict) -> float | None:
    duration = _number(batch.get("duration_seconds"))
    if duration is None and _number(batch.get("ended_at")) is not None:
        duration = batch["ended_at"] - batch["started_at"]
    return duration if duration is not None and duration >= 0 else None


def pending_changes(state: dict, snapshot) -> bool:
    """True when ``snapshot`` holds a completed batch not yet observed, or GPU spend not yet counted."""
    watermark = state.get("watermark")
    observed = state["observed"]
    counted = state["gpu"]["counted"]
    for batch in snapshot.batches_newest_first():
        if not _eligible(batch, watermark):
            continue
        if batch["state"] == "completed" and batch["id"] not in observed:
            return True
        if _spend(batch) > _already_counted(counted, batch["id"]) + _GPU_EPSILON:
            return True
    return False


def _spend(batch: dict) -> float:
    return _number(batch.get("gpu_cost_dollars")) or 0.0


def _already_counted(counted: dict, batch_id: str) -> float:
    entry = counted.get(batch_id)
    return (_number(entry[1]) or 0.0) if isinstance(entry, list) and len(entry) == 2 else 0.0


def apply_snapshot(state: dict, snapshot, deadline) -> dict:
    """Count what is new in ``snapshot`` into ``state`` (mutated and returned); see the module docstring.

    ``deadline`` (a :class:`utils.deadline.DailyDeadline`) judges whether a newly observed
    completed batch was on time.
    """
    watermark = state.get("watermark")
    histogram = state["completion_time"]
    outcomes = state["completed"]
    observed: dict = state["observed"]
    gpu = state["gpu"]
    counted: dict = gpu["counted"]
    present: dict[str, float] = {}
    for batch in snapshot.batches_newest_first():
        present[batch["id"]] = batch["started_at"]
        if not _eligible(batch, watermark):
            continue
        if batch["state"] == "completed" and batch["id"] not in observed:
            seconds = _completion_seconds(batch)
            if seconds is not None:
                index = next(
                    (i for i, bound in enumerate(COMPLETION_TIME_BUCKETS) if seconds <= bound),
                    len(COMPLETION_TIME_BUCKETS),
                )
                histogram["counts"][index] += 1
                histogram["sum"] += seconds
                histogram["count"] += 1
            observed[batch["id"]] = batch["started_at"]
            ended = _number(batch.get("ended_at"))
            if ended is not None:
                outcomes["on_time" if on_time(batch, deadline, ended) else "late"] += 1
            if ended is not None and (state.get("last_success_at") is None or ended > state["last_success_at"]):
                state["last_success_at"] = ended
        spend, already = _spend(batch), _already_counted(counted, batch["id"])
        if spend > already + _GPU_EPSILON:
            gpu["total"] += spend - already
            counted[batch["id"]] = [batch["started_at"], spend]
    _prune(state, present, complete=snapshot.readable and snapshot.history_error is None)
    return state


def _prune(state: dict, present: dict[str, float], complete: bool) -> None:
    """Drop ids whose batch left the tracker's files (only when both files were read), cap the rest."""
    observed: dict = state["observed"]
    counted: dict = state["gpu"]["counted"]
    dropped_starts: list[float] = []
    if complete:
        for batch_id in [i for i in observed if i not in present]:
            dropped_starts.append(_number(observed.pop(batch_id)) or 0.0)
        for batch_id in [i for i in counted if i not in present]:
            entry = counted.pop(batch_id)
            dropped_starts.append((_number(entry[0]) or 0.0) if isinstance(entry, list) and entry else 0.0)
    for mapping, start_of in ((observed, lambda v: v), (counted, lambda v: v[0] if isinstance(v, list) else 0.0)):
        if len(mapping) > MAX_TRACKED_BATCHES:
            oldest = sorted(mapping, key=lambda i: _number(start_of(mapping[i])) or 0.0)
            for batch_id in oldest[: len(mapping) - MAX_TRACKED_BATCHES]:
                dropped_starts.append(_number(start_of(mapping.pop(batch_id))) or 0.0)
    if dropped_starts:
        state["watermark"] = max([*dropped_starts, state.get("watermark") or 0.0])


# --------------------------------------------------------------------------- metric families


def _gauge(name: str, documentation: str, value: float | None = None, labels: list[str] | None = None):
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=labels)
    if value is not None:
        family.add_metric([], value)
    return family


def _last_decided(snapshot, deadline, now: float) -> tuple[dict, bool] | None:
    for batch in snapshot.batches_newest_first():
        verdict = on_time(batch, deadline, now)
        if verdict is not None:
            return batch, verdict
    return None


def _newest_with_cost(snapshot) -> float | None:
    for batch in snapshot.batches_newest_first():
        cost = _number(batch.get("cost_per_lead"))
        if cost is not None:
            return cost
    return None


def batch_metric_families(
    snapshot,
    now: float,
    deadline,
    metrics_state: dict | None,
    monitor_state: dict | None = None,
    *,
    include_monitor: bool = True,
    batch_name: str = "",
    host: str = "",
) -> list[Metric]:
    """The metric families for ``snapshot`` at ``now`` (pure: no I/O).

    ``metrics_state`` (after :func:`apply_snapshot`) supplies the histogram, the GPU
    counter and the last success; when None those families are left out rather than
    exported as zeros (a false counter reset). ``include_monitor=False`` leaves out
    the monitor's families (the Pushgateway path has no monitor). ``batch_name`` and
    ``host`` (``BATCH_NAME`` and this host's name) label ``source_info``, the one series
    the monitor and a Pushgateway export alike for the same tracker: rules and panels
    join on it to count a batch once whichever way its series arrive.
    """
    families: list[Metric] = []
    current = snapshot.current
    state = current["state"] if current else "none"

    source = GaugeMetricFamily(
        PREFIX + "source_info",
        "Where these series come from (always 1): source monitor or push, the batch name and the host.",
        labels=["source", "batch", "host"],
    )
    source.add_metric(["monitor" if include_monitor else "push", batch_name, host], 1.0)
    families.append(source)

    families.append(
        _gauge(
            "completion_percentage",
            "Completion of the current batch in percent (mean over its expected stages; 100 once completed).",
            overall_percentage(current) if current else 0.0,
        )
    )
    stages = GaugeMetricFamily(
        PREFIX + "stage_completion_percentage",
        "Completion of each stage of the current batch in percent.",
        labels=["stage"],
    )
    if current:
        names = [n for n in ordered_stage_names(current) if _is_label_value(n)][:MAX_STAGE_SERIES]
        for name in names:
            detail = current["stages"].get(name)
            stages.add_metric([name], (_number(detail.get("percentage")) or 0.0) if detail else 0.0)
    families.append(stages)

    if metrics_state is not None:
        histogram = metrics_state["completion_time"]
        cumulative, buckets = 0, []
        for bound, count in zip([*COMPLETION_TIME_BUCKETS, math.inf], histogram["counts"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else _bound_label(bound), cumulative))
        families.append(
            HistogramMetricFamily(
                PREFIX + "completion_time_seconds",
                "Duration of completed batches (start to end), each batch observed once.",
                buckets=buckets,
                sum_value=histogram["sum"],
            )
        )
        outcomes = CounterMetricFamily(
            PREFIX + "completed",
            "Completed batches, each counted once, by whether they completed by their deadline.",
            labels=["on_time"],
        )
        outcomes.add_metric(["true"], metrics_state["completed"]["on_time"])
        outcomes.add_metric(["false"], metrics_state["completed"]["late"])
        families.append(outcomes)
        families.append(
            CounterMetricFamily(
                PREFIX + "gpu_cost_dollars",
                "GPU spend in dollars over all batches (monotonic across batches and restarts).",
                value=metrics_state["gpu"]["total"],
            )
        )

    decided = _last_decided(snapshot, deadline, now)
    families.append(
        _gauge(
            "completion_success",
            "1 when the newest decided batch completed by its deadline, else 0.",
            None if decided is None else (1.0 if decided[1] else 0.0),
        )
    )
    families.append(_gauge("cost_per_lead", "Newest recorded cost per lead in dollars.", _newest_with_cost(snapshot)))
    families.append(
        _gauge(
            "start_timestamp_seconds",
            "Start of the current batch (UTC epoch seconds).",
            current["started_at"] if current else None,
        )
    )
    families.append(
        _gauge(
            "end_timestamp_seconds",
            "End of the current batch (UTC epoch seconds); absent while it runs.",
            _number(current.get("ended_at")) if current else None,
        )
    )
    next_deadline = deadline.first_after(now)
    families.append(
        _gauge(
            "deadline_timestamp_seconds",
            "Deadline of the current batch (UTC epoch seconds); the next deadline when there is no batch.",
            batch_deadline(current, deadline) if current else next_deadline,
        )
    )
    families.append(
        _gauge("next_deadline_timestamp_seconds", "The first deadline after now (UTC epoch seconds).", next_deadline)
    )
    families.append(
        _gauge(
            "next_start_due_timestamp_seconds",
            "The deadline after the one the current batch covers: if no batch starts by then, it is missing.",
            next_start_due(snapshot, deadline, now, _number((monitor_state or {}).get("watch_since"))),
        )
    )
    last_success = _newest_completed_end(snapshot)
    if metrics_state is not None and _number(metrics_state.get("last_success_at")) is not None:
        last_success = max(last_success or 0.0, metrics_state["last_success_at"])
    families.append(
        _gauge(
            "last_success_timestamp_seconds",
            "End of the newest completed batch (UTC epoch seconds).",
            last_success,
        )
    )
    families.append(
        _gauge(
            "projected_completion_timestamp_seconds",
            "Projected finish of the running batch from stage rates and usual durations (UTC epoch seconds).",
            _projected_completion(snapshot, now),
        )
    )
    state_family = GaugeMetricFamily(
        PREFIX + "state", "1 for the current batch's state, 0 for the others.", labels=["state"]
    )
    for value in BATCH_STATE_VALUES:
        state_family.add_metric([value], 1.0 if value == state else 0.0)
    families.append(state_family)
    info = GaugeMetricFamily(PREFIX + "info", "The current batch (always 1).", labels=["batch_id", "host"])
    if current and _is_label_value(current["id"]):
        host = current.get("host")
        info.add_metric([current["id"], host if isinstance(host, str) else ""], 1.0)
    families.append(info)
    families.append(
        _gauge(
            "tracker_readable",
            "1 when the tracker file could be read and parsed, else 0.",
            1.0 if snapshot.readable else 0.0,
        )
    )
    if include_monitor:
        families.extend(_monitor_families(monitor_state or {}, now))
    return families


def next_start_due(snapshot, deadline, now: float, watch_since: float | None = None) -> float:
    """The deadline by which the next batch must start, else that deadline is "missing".

    A deadline D covers the starts in (previous deadline, D]; the newest batch covers
    the first deadline at or after its start, so the next start is due by the deadline
    after that one. With no batch recorded: the first deadline after ``watch_since``
    (the monitor's first start) if known, else the next deadline. Depends on the
    batches, not on ``now``, so a value pushed hours ago is still right.
    """
    starts = [b["started_at"] for b in snapshot.batches_newest_first()]
    if not starts:
        return deadline.first_after(watch_since if watch_since is not None else now)
    start = max(starts)
    covered = start if deadline.last_at_or_before(start) == start else deadline.first_after(start)
    return deadline.first_after(covered)


def _bound_label(bound: float) -> str:
    return str(int(bound)) + ".0" if bound == int(bound) else repr(bound)


def _newest_completed_end(snapshot) -> float | None:
    ends = [_number(b.get("ended_at")) for b in snapshot.batches_newest_first() if b["state"] == "completed"]
    ends = [e for e in ends if e is not None]
    return max(ends) if ends else None


def _projected_completion(snapshot, now: float) -> float | None:
    current = snapshot.current
    if not current or current["state"] != "running":
        return None
    history = [b for b in snapshot.history if b["id"] != current["id"]]
    try:
        projection = project(current, history, now)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a projection must never break a scrape
        LOGGER.debug("no projection for batch %s", current["id"], exc_info=True)
        return None
    return None if projection is None else projection.completion_at


def _count(value: object) -> float:
    number = _number(value)
    return number if number is not None and number >= 0 else 0.0


def _monitor_families(monitor_state: dict, now: float) -> list[Metric]:
    counters = monitor_state.get("counters") if isinstance(monitor_state.get("counters"), dict) else {}
    by_kind = counters.get("alerts_sent") if isinstance(counters.get("alerts_sent"), dict) else {}
    sent = CounterMetricFamily(
        PREFIX + "alerts_sent", "Alert e-mails the monitor sent, by incident kind.", labels=["kind"]
    )
    # Known kinds start at 0 so increase() sees the first alert of each kind.
    kinds = sorted({*KNOWN_INCIDENT_KINDS, *(k for k in by_kind if _is_label_value(k))})[:MAX_LABEL_KINDS]
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
    open_by_kind: dict[str, int] = {}
    raw_incidents = monitor_state.get("open_incidents")
    for incident in (raw_incidents if isinstance(raw_incidents, dict) else {}).values():
        kind = incident.get("kind") if isinstance(incident, dict) else None
        if _is_label_value(kind):
            open_by_kind[kind] = open_by_kind.get(kind, 0) + 1
    for kind in sorted(open_by_kind)[:MAX_LABEL_KINDS]:
        incidents.add_metric([kind], float(open_by_kind[kind]))
    families.append(incidents)
    families.append(
        _gauge(
            "monitor_last_check_timestamp_seconds",
            "When the monitor last evaluated the batch (UTC epoch seconds).",
            _number(monitor_state.get("last_check_at")),
        )
    )
    families.extend(_outbox_families(monitor_state.get("outbox"), now))
    return families


def _outbox_families(summary: object, now: float) -> list[Metric]:
    """The outbox gauges from the monitor's ``outbox`` summary (``Outbox.summary()``); absent without one."""
    summary = summary if isinstance(summary, dict) else None
    pending = _number(summary.get("pending")) if summary else None
    failed = _number(summary.get("failed")) if summary else None
    oldest = _number(summary.get("oldest_pending_at")) if summary else None
    age = None
    if pending is not None:
        # Nothing queued: age 0, so the series exists and "older than 15 min" reads as a plain comparison.
        age = max(0.0, now - oldest) if pending > 0 and oldest is not None else 0.0
    return [
        _gauge("alerts_queued", "Alert and recovery e-mails waiting in the monitor's outbox.", pending),
        _gauge("alerts_failed", "E-mails the monitor gave up on, kept in the outbox's failed directory.", failed),
        _gauge(
            "alerts_oldest_queued_age_seconds",
            "Age of the oldest e-mail waiting in the outbox (0 when none waits).",
            age,
        ),
    ]


# --------------------------------------------------------------------------- I/O


class MetricsStateFile:
    """The persisted histogram and GPU counter; see the module docstring.

    :meth:`sync` brings the file up to date with a snapshot and returns the state to
    export. It writes only when something new must be counted, under the store's
    lock after re-reading the file, so concurrent processes count each batch once.
    """

    def __init__(self, path: str | os.PathLike, *, deadline):
        self.store = JsonStateStore(path)
        self.deadline = deadline
        self._last_good: dict | None = None
        self._last_problem: str | None = None

    @property
    def path(self) -> str:
        return self.store.path

    def _read(self) -> dict:
        document = self.store.read()
        return fresh_metrics_state() if document is None else _valid_state(document)

    def sync(self, snapshot) -> dict | None:
        """The state to export after counting ``snapshot``; None if nothing usable can be read."""
        try:
            try:
                state = self._read()
            except CorruptStateError:
                state = None  # repaired under the lock below
            if state is not None and not pending_changes(state, snapshot):
                self._remember(state)
                return state
            with self.store.locked():
                try:
                    state = self._read()
                except CorruptStateError as exc:
                    moved_to = self.store.move_aside()
                    LOGGER.error("metrics state %s is corrupt (%s); moved aside to %s", self.path, exc, moved_to)
                    state = fresh_metrics_state()
                if pending_changes(state, snapshot):
                    apply_snapshot(state, snapshot, self.deadline)
                    state["updated_at"] = time.time()
                    self.store.write(state)
            self._remember(state)
            return state
        except StorageError as exc:
            self._warn_once(str(exc))
            return self._last_good

    def _remember(self, state: dict) -> None:
        self._last_good = state
        if self._last_problem is not None:
            LOGGER.info("metrics state %s is writable again", self.path)
            self._last_problem = None

    def _warn_once(self, problem: str) -> None:
        if problem != self._last_problem:
            LOGGER.warning("metrics state not updated (%s); exporting the last known values", problem)
            self._last_problem = problem


def _file_key(path: str) -> bytes | str:
    """The file's bytes (or why it cannot be read): an exact change detector.

    Reading a few kilobytes costs far less than parsing and validating them, and
    unlike (inode, mtime, size) it cannot miss two quick same-size writes that land
    on a reused inode within one coarse kernel timestamp tick.
    """
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
    """A prometheus_client collector: every ``collect()`` reads the files afresh."""

    def __init__(
        self,
        tracker,
        *,
        monitor_state_path: str | os.PathLike | None,
        metrics_state_path: str | os.PathLike,
        clock: Callable[[], float] = time.time,
        include_monitor: bool = True,
        host: str | None = None,
    ):
        self.tracker = tracker
        self.deadline = tracker.config.deadline()  # validates the time zone once, at start-up
        self.monitor_state_path = None if monitor_state_path is None else os.fspath(monitor_state_path)
        self.metrics_state = MetricsStateFile(metrics_state_path, deadline=self.deadline)
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
        snapshot = TrackerSnapshot(None, [], [])
        yield from batch_metric_families(
            snapshot,
            0.0,
            self.deadline,
            fresh_metrics_state(),
            {},
            include_monitor=self.include_monitor,
            **self.source_labels,
        )

    def snapshot(self):
        """``tracker.snapshot()``, parsed again only when the tracker or history file changed.

        The key (both files' bytes) is taken before the snapshot reads them: a write
        racing the read only causes one more parse at the next scrape, never a stale value.
        """
        key = (_file_key(self.tracker.store.path), _file_key(self.tracker.history_store.path))
        cached = self._cached_snapshot
        if cached is not None and cached[0] == key:
            return cached[1]
        snapshot = self.tracker.snapshot()
        # One assignment of a (key, snapshot) pair: concurrent scrapes never pair a newer
        # key with an older snapshot.
        self._cached_snapshot = (key, snapshot)
        return snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        now = self.clock()
        state = self.metrics_state.sync(snapshot)
        monitor_state = read_monitor_state(self.monitor_state_path) if self.include_monitor else None
        yield from batch_metric_families(
            snapshot,
            now,
            self.deadline,
            state,
            monitor_state,
            include_monitor=self.include_monitor,
            **self.source_labels,
        )


def exported_sample_names(include_monitor: bool = True) -> set[str]:
    """Every sample name the collector can export (``_total``/``_bucket``/``_sum``/``_count`` included)."""
    from utils.deadline import DailyDeadline

    families = batch_metric_families(
        TrackerSnapshot(None, [], []),
        0.0,
        DailyDeadline(5, 0, "UTC"),
        fresh_metrics_state(),
        {},
        include_monitor=include_monitor,
    )
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + suffix for family in families for suffix in suffixes.get(family.type, ("",))}


def register_batch_metrics(
    registry,
    *,
    tracker,
    monitor_state_path: str | os.PathLike | None,
    metrics_state_path: str | os.PathLike,
    clock: Callable[[], float] = time.time,
) -> BatchMetricsCollector:
    """Register a :class:`BatchMetricsCollector` on ``registry`` and return it.

    ``tracker`` is a :class:`utils.batch_tracker.BatchTracker`; ``monitor_state_path``
    the monitor's alert-state file (read-only); ``metrics_state_path`` the file this
    module keeps its persisted counts in (``sibling_file(tracker_file, "metrics")``).
    Raises :class:`utils.batch_tracker.ConfigError` for an invalid time zone.
    """
    collector = BatchMetricsCollector(
        tracker, monitor_state_path=monitor_state_path, metrics_state_path=metrics_state_path, clock=clock
    )
    registry.register(collector)
    return collector
