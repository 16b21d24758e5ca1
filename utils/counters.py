"""Cumulative counters of the nightly batch, kept as the ``counters`` object of the tracker file.

The tracker moves them on (:func:`after_change`) in the locked write that causes the change, so each
completed batch is counted exactly once and readers (``/metrics``, the Pushgateway push) only read. A file
without them gets them once from :func:`rebuild`, carrying on from an older release's
``<tracker>.metrics.json`` (read, never written) instead of resetting.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable

from utils.numbers import finite_number
from utils.state_store import StorageError, read_json_object
from utils.values import Value, frozen

#: Duration histogram bounds (seconds): 30 s to 12 h, each 1.3-1.5x the previous, so ``histogram_quantile``
#: reads a 100 s or a 7 h run within a few percent.
DURATION_BUCKETS: tuple[float, ...] = (
    30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0, 1200.0, 1800.0,
    2400.0, 3600.0, 5400.0, 7200.0, 10800.0, 14400.0, 21600.0, 28800.0, 43200.0,
)  # fmt: skip
_EMPTY_COUNTS = (0,) * (len(DURATION_BUCKETS) + 1)
_GPU_EPSILON = 1e-9
_LAST_NUMBERS = ("last_success_at", "last_cost_per_lead", "last_started_at")


class CountersError(ValueError):
    """A stored ``counters`` object does not have the shape this code writes."""


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def bucket_index(seconds: float) -> int:
    """Index of the histogram bucket holding ``seconds`` (the last one is +Inf)."""
    return next((i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound), len(DURATION_BUCKETS))


@frozen()
class Counters(Value):
    """Totals over every batch ever recorded; they only grow (``last_*`` fields move forward).
    ``duration_counts``: one per bucket of :data:`DURATION_BUCKETS` plus +Inf (not cumulative).
    ``last_finished_on_time``: whether the newest batch in history completed by its deadline (None before any)."""

    gpu_dollars: float = 0.0
    completed_on_time: int = 0
    completed_late: int = 0
    duration_counts: tuple[int, ...] = _EMPTY_COUNTS
    duration_sum: float = 0.0
    last_success_at: float | None = None
    last_cost_per_lead: float | None = None
    last_finished_on_time: bool | None = None
    last_started_at: float | None = None

    @property
    def duration_count(self) -> int:
        return sum(self.duration_counts)

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """``[(upper bound, observations at or below it), ...]``, ending with ``(inf, count)``."""
        return list(zip([*DURATION_BUCKETS, math.inf], itertools.accumulate(self.duration_counts), strict=True))

    def after_start(self, started_at: float, archived_on_time: bool | None = None) -> Counters:
        """A batch started at ``started_at``; ``archived_on_time``: the verdict of the batch it archived, if any."""
        verdict = self.last_finished_on_time if archived_on_time is None else bool(archived_on_time)
        return self.replace(last_started_at=started_at, last_finished_on_time=verdict)

    def after_end(self, *, duration: float, ended_at: float, on_time: bool) -> Counters:
        """A batch completed (``end``): observe its duration, count it on time or late."""
        counts = list(self.duration_counts)
        counts[bucket_index(duration)] += 1
        return self.replace(
            duration_counts=tuple(counts),
            duration_sum=self.duration_sum + duration,
            completed_on_time=self.completed_on_time + (1 if on_time else 0),
            completed_late=self.completed_late + (0 if on_time else 1),
            last_success_at=ended_at if self.last_success_at is None else max(self.last_success_at, ended_at),
        )

    def add_gpu(self, dollars: float) -> Counters:
        """``dollars`` (>= 0) more GPU spend."""
        # Capped at the largest float: JSON cannot hold infinity, and the tracker file must stay writable.
        return self.replace(gpu_dollars=min(self.gpu_dollars + dollars, sys.float_info.max))

    def after_cost(self, cost_per_lead: float) -> Counters:
        """The newest cost per lead recorded."""
        return self.replace(last_cost_per_lead=cost_per_lead)

    def to_dict(self) -> dict:
        return {
            "gpu_dollars": self.gpu_dollars,
            "completed": {"on_time": self.completed_on_time, "late": self.completed_late},
            "duration": {
                "bounds": list(DURATION_BUCKETS),
                "counts": list(self.duration_counts),
                "sum": self.duration_sum,
                "count": self.duration_count,
            },
            **{key: getattr(self, key) for key in (*_LAST_NUMBERS, "last_finished_on_time")},
        }

    @classmethod
    def from_dict(cls, record: object) -> Counters:
        """The counters in ``record``; :class:`CountersError` unless it is what :meth:`to_dict` writes
        with today's bucket bounds (counts in other buckets cannot be re-bucketed: rebuild instead)."""
        try:
            duration, completed = record["duration"], record["completed"]
            counts, last = duration["counts"], {key: record.get(key) for key in _LAST_NUMBERS}
            ok = (
                [finite_number(b) for b in duration["bounds"]] == list(DURATION_BUCKETS)
                and isinstance(counts, list)
                and len(counts) == len(_EMPTY_COUNTS)
                and all(map(_count, counts))
                and duration["count"] == sum(counts)
                and finite_number(duration["sum"]) is not None
                and _count(completed["on_time"])
                and _count(completed["late"])
                and finite_number(record["gpu_dollars"]) is not None
                and all(value is None or finite_number(value) is not None for value in last.values())
                and record.get("last_finished_on_time") in (None, True, False)
            )
        except (KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise CountersError("tracker file has a malformed counters object")
        return cls(
            gpu_dollars=float(record["gpu_dollars"]),
            completed_on_time=completed["on_time"],
            completed_late=completed["late"],
            duration_counts=tuple(counts),
            duration_sum=float(duration["sum"]),
            last_finished_on_time=record.get("last_finished_on_time"),
            **{key: finite_number(value) for key, value in last.items()},
        )


def _duration(batch: object) -> float:
    return batch.duration_seconds if batch.duration_seconds is not None else batch.ended_at - batch.started_at


def after_change(counters: Counters, before: object, after: object, verdict: Callable[[object], bool]) -> Counters:
    """``counters`` after one locked write replaced batch ``before`` with ``after`` (or None). A new id is a
    start (``before`` went to history, judged by ``verdict``); the same batch turning ``completed`` is counted
    once (no write sees that transition twice); GPU spend counts as it grows; a new cost per lead is the newest."""
    if after is None:
        return counters
    if before is None or before.id != after.id:
        return counters.after_start(after.started_at, None if before is None else verdict(before))
    if before.state != "completed" and after.state == "completed" and after.ended_at is not None:
        duration = max(_duration(after), 0.0)
        counters = counters.after_end(duration=duration, ended_at=after.ended_at, on_time=verdict(after))
    if after.gpu_cost_dollars > before.gpu_cost_dollars:
        counters = counters.add_gpu(after.gpu_cost_dollars - before.gpu_cost_dollars)
    if after.cost_per_lead is not None and after.cost_per_lead != before.cost_per_lead:
        counters = counters.after_cost(after.cost_per_lead)
    return counters


def load_legacy_metrics_state(path: str | os.PathLike) -> tuple | None:
    """What the older release's metrics state file at ``path`` (read only) had counted, or None when missing
    or unusable: (counters carried over, ids already observed, spend already counted per id, watermark)."""
    try:
        document = read_json_object(os.fspath(path))
    except StorageError:
        return None
    try:
        histogram, gpu = document["completion_time"], document["gpu"]  # type: ignore[index]
        usable = (
            document.get("schema_version") == 1  # type: ignore[union-attr]
            and isinstance(histogram["counts"], list)
            and len(histogram["counts"]) == len(histogram["bounds"]) + 1
            and all(map(_count, histogram["counts"]))
            and histogram["count"] == sum(histogram["counts"])
            and finite_number(histogram["sum"]) is not None
            and isinstance(document["observed"], dict)  # type: ignore[index]
            and finite_number(gpu["total"]) is not None
            and isinstance(gpu["counted"], dict)
        )
    except (KeyError, TypeError, AttributeError):
        usable = False
    if not usable:
        return None
    completed = document.get("completed")  # type: ignore[union-attr]
    same_buckets = [finite_number(b) for b in histogram["bounds"]] == list(DURATION_BUCKETS)
    has_outcomes = isinstance(completed, dict) and all(_count(completed.get(k)) for k in ("on_time", "late"))
    counted = {
        batch_id: finite_number(entry[1]) or 0.0
        for batch_id, entry in gpu["counted"].items()
        if isinstance(entry, list) and len(entry) == 2
    }
    counters = Counters(gpu_dollars=float(gpu["total"]), last_success_at=finite_number(document.get("last_success_at")))
    if not (same_buckets and has_outcomes):
        # An older release's buckets: its counts cannot be re-bucketed. Rebuild the histogram from
        # the batches still on file (a counter reset, as that release did); keep the GPU spend.
        return counters, set(), counted, None
    counters = counters.replace(
        duration_counts=tuple(histogram["counts"]),
        duration_sum=float(histogram["sum"]),
        completed_on_time=completed["on_time"],
        completed_late=completed["late"],
    )
    return counters, set(document["observed"]), counted, finite_number(document.get("watermark"))


def rebuild(
    current: object, history: Iterable[object], verdict: Callable[[object], bool], legacy: tuple | None = None
) -> Counters:
    """Counters for a tracker file that has none, from ``current`` (or None) and ``history`` (oldest first);
    ``verdict(batch)``: whether a finished batch was done by its deadline. The totals of ``legacy`` (from
    :func:`load_legacy_metrics_state`) are carried over and only what it had not counted is added (batches it
    never observed, spend it never saw, nothing started by its watermark): no double count."""
    batches = ([current] if current is not None else []) + [b for b in reversed(list(history)) if b is not current]
    seen: set[str] = set()
    batches = [b for b in batches if not (b.id in seen or seen.add(b.id))]  # newest first, each id once
    counters, observed, counted, watermark = legacy if legacy is not None else (Counters(), set(), {}, None)
    for batch in reversed(batches):  # oldest first
        if watermark is not None and batch.started_at <= watermark:
            continue
        if batch.state == "completed" and batch.id not in observed and batch.ended_at is not None:
            duration = _duration(batch)
            if duration >= 0:
                counters = counters.after_end(duration=duration, ended_at=batch.ended_at, on_time=verdict(batch))
        spend = batch.gpu_cost_dollars - counted.get(batch.id, 0.0)
        if spend > _GPU_EPSILON:
            counters = counters.add_gpu(spend)
    newest_cost = next((b.cost_per_lead for b in batches if b.cost_per_lead is not None), None)
    archived = [b for b in batches if b is not current]
    return counters.replace(
        last_cost_per_lead=newest_cost,
        last_finished_on_time=verdict(archived[0]) if archived else None,
        last_started_at=max((b.started_at for b in batches), default=None),
    )
