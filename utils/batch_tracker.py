"""Batch tracker: durable state of nightly batches (the library; the CLI is :mod:`utils.tracker_cli`).

The ``record_batch_*`` functions (fixed names: hooks and scripts use them) move a batch through ``none -> running ->
completed | failed | abandoned`` (``failed -> running`` on resume); each takes optional ``path``, ``clock`` and
``config`` (default :meth:`TrackerConfig.from_env`). The tracker file holds the current batch only; finished batches
move to a bounded ``<name>.history.jsonl`` (:mod:`utils.history_archive`). Every hook imports this module: no prometheus_client, pytz or logging here.
"""

from __future__ import annotations

import math
import os
import sys
import time

from utils.config import NAME_RULE, TrackerConfig, is_plain_decimal
from utils.errors import TrackerError
from utils.model import (
    ABANDONED,
    COMPLETED,
    FAILED,
    RUNNING,
    Batch,
    Failure,
    Snapshot,
    Stage,
    is_valid_name,
)
from utils.state_store import remove_stale_temp_files
from utils.tracker_files import TrackerFiles, _log

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any

    from utils.history_archive import HistoryArchive


MAX_REASON_LENGTH = 2000
# Bounded so a chatty failed stage cannot bloat the state file every hook rewrites.
MAX_OUTPUT_TAIL_LINES = 100
MAX_OUTPUT_TAIL_BYTES = 8192


class InvalidInputError(TrackerError, ValueError):
    """A caller passed a value that is not allowed (stage name, percentage, cost)."""


class BatchStateError(TrackerError):
    """The requested transition does not apply to the current batch (e.g. end with none running)."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, a string cut to ``limit`` characters and ``...``."""
    return repr(value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value)


def validate_stage_name(stage: object) -> str:
    """Return ``stage`` if it is an allowed stage name, else raise :class:`InvalidInputError`."""
    if not is_valid_name(stage):
        raise InvalidInputError(f"stage name {shown(stage)} is not allowed ({NAME_RULE})")
    return stage


def _finite_number(raw: object, what: str) -> float:
    if isinstance(raw, bool):
        raise InvalidInputError(f"{what} {raw!r} is not a number")
    if isinstance(raw, str) and not is_plain_decimal(raw):
        raise InvalidInputError(
            f"{what} {shown(raw)} is not a number (allowed: ASCII digits like 42 or 0.5, no spaces or _)"
        )
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"{what} {shown(raw)} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"{what} {shown(raw)} is not a finite number")
    return value


def _non_negative(raw: object, what: str) -> float:
    value = _finite_number(raw, what)
    if value < 0:
        raise InvalidInputError(f"{what} {shown(raw)} is negative (allowed: 0 or more)")
    return value


def clean_text(value: object, limit: int = MAX_REASON_LENGTH) -> str:
    """Free text from a hook as stored: one printable line of at most ``limit`` characters (see
    :func:`utils.text_safety.visible_line`), so it cannot add a line to a message, log or header."""
    from utils.text_safety import visible_line  # only the hooks that take text need it

    return visible_line(value, limit)


def clean_output_tail(output: str | bytes | None) -> str | None:
    """The last lines (at most :data:`MAX_OUTPUT_TAIL_LINES` and :data:`MAX_OUTPUT_TAIL_BYTES`) of a stage's
    output without ANSI escapes or controls (tabs become spaces), safe to store and show; None when empty."""
    if output is None:
        return None
    if isinstance(output, bytes):
        output = output[-8 * MAX_OUTPUT_TAIL_BYTES :].decode("utf-8", errors="replace")
    import re  # not at import time: only a failing stage needs it

    text = re.sub(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])", "", str(output))
    text = text.replace("\t", " ")
    lines = ["".join(ch for ch in line if ch.isprintable()).rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    lines = lines[-MAX_OUTPUT_TAIL_LINES:]
    while lines and len("\n".join(lines).encode()) > MAX_OUTPUT_TAIL_BYTES:
        if len(lines) == 1:  # one huge line: keep its end, cut at a character boundary
            lines[0] = lines[0].encode()[-MAX_OUTPUT_TAIL_BYTES:].decode("utf-8", errors="ignore")
            break
        lines.pop(0)
    return "\n".join(lines).lstrip("\n") or None


def _describe_current(batch: Batch | None) -> str:
    if batch is None:
        return "no batch has been started"
    return f"batch {batch.id} is {batch.state}, not running"


def _with_stage(batch: Batch, name: str, value: float, now: float) -> Batch:
    """``batch`` with stage ``name`` at ``value``: a stage keeps its place and first sighting;
    100% marks it completed (once), less means it is being re-run."""
    old = batch.stage(name)
    completed_at = ((old and old.completed_at) or now) if value >= 100 else None
    stage = Stage(
        name=name,
        percentage=value,
        first_seen_at=old.first_seen_at if old else now,
        updated_at=now,
        completed_at=completed_at,
        extra=old.extra if old else {},
    )
    return batch.with_stage(stage, updated_at=now)


def _ended(batch: Batch, now: float, state: str, **changes: Any) -> Batch:
    return batch.replace(state=state, ended_at=now, duration_seconds=now - batch.started_at, updated_at=now, **changes)


class BatchTracker:
    """Records batch lifecycle events in the tracker file (thread- and process-safe; unknown keys are kept)."""

    def __init__(
        self,
        config: TrackerConfig,
        *,
        path: str | os.PathLike | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.config = config
        self.path = os.path.abspath(os.fspath(path)) if path else config.tracker_file
        self.clock = clock or time.time
        self.files = TrackerFiles(self.path, config)
        self.store = self.files.store

    @property
    def history(self) -> HistoryArchive:
        """The archive of finished batches (:mod:`utils.history_archive`)."""
        return self.files.history

    def start(self, stages: list[str] | tuple[str, ...] | None = None, *, batch_id: str | None = None) -> str:
        """Start a new batch and return its id; an unfinished one becomes ``abandoned``."""
        expected = [validate_stage_name(s) for s in (stages if stages is not None else self.config.expected_stages)]
        if len(set(expected)) != len(expected):
            raise InvalidInputError(f"stage list {','.join(expected)!r} names a stage twice")
        if batch_id is not None and not is_valid_name(batch_id):
            raise InvalidInputError(f"batch id {shown(batch_id)} is not allowed ({NAME_RULE})")
        now = self.clock()
        new_id = batch_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + os.urandom(3).hex()
        daily = self.config.deadline()  # the batch's deadline is fixed now, with today's settings
        with self.files.locked():
            # Once a night is often enough to sweep what killed writers left behind.
            for path in (self.store.path, self.history.path, self.history.summary_store.path):
                remove_stale_temp_files(path)
            document, previous, events = self.files.read_for_update(now)
            if batch_id is not None:
                self._refuse_used_id(batch_id, previous)
            if "excused" in document:  # skipped and paused nights are no deadlines (utils.jobs.EXCUSED_KEY)
                from utils.jobs import Excuses

                daily = Excuses.from_document(document).apply(daily)
            due = daily.for_new_batch(now, previous.started_at if previous is not None else None)
            if previous is not None:
                if previous.is_running:
                    previous = previous.replace(state=ABANDONED, ended_at=now, abandoned_by=new_id)
                    _log("warning", "batch %s was still running; marked abandoned by new batch %s", previous.id, new_id)
                self.files.archive(previous)
            batch = Batch(
                id=new_id,
                state=RUNNING,
                started_at=now,
                updated_at=now,
                expected_stages=tuple(expected),
                host=os.uname().nodename,
                # Every reader judges the batch by these, whatever its own settings say.
                deadline_at=due,
                deadline_timezone=self.config.timezone,
                deadline_time=f"{self.config.deadline_hour:02d}:{self.config.deadline_minute:02d}",
            )
            self.files.write(self.files.counted(document, previous, batch), batch, events)
        return new_id

    def stage(self, stage: str, percentage: float) -> Stage:
        """Record ``stage`` at ``percentage`` for the running batch; return the stage."""
        name = validate_stage_name(stage)
        value = _finite_number(percentage, "percentage")
        if not 0 <= value <= 100:
            raise InvalidInputError(f"percentage {shown(percentage)} is out of range (allowed: 0-100)")
        batch = self._update_running(lambda batch, now: _with_stage(batch, name, value, now), f"record stage {name}")
        return batch.stage(name)

    def end(self) -> Batch:
        """Mark the running batch completed; return it."""
        return self._update_running(lambda batch, now: _ended(batch, now, COMPLETED), "end the batch")

    def fail(self, stage: str | None = None, reason: str = "", output_tail: str | bytes | None = None) -> Batch:
        """Mark the running batch failed at ``stage`` with ``reason`` and ``output_tail`` (the stage's last
        output, through :func:`clean_output_tail`); return it."""
        failed_stage = validate_stage_name(stage) if stage is not None else None
        text = clean_text(reason)
        tail = clean_output_tail(output_tail)

        def apply(batch: Batch, now: float) -> Batch:
            failure = Failure(at=now, stage=failed_stage, reason=text, output_tail=tail)
            return _ended(batch, now, FAILED, failure=failure, failures=(*batch.failures, failure))

        return self._update_running(apply, "record a failure")

    def resume(self) -> Batch:
        """Put the failed current batch back to ``running`` (same id); return it."""

        def apply(batch: Batch | None, now: float) -> Batch:
            if batch is not None and batch.is_running:
                raise BatchStateError(f"batch {batch.id} is already running; nothing to resume")
            if batch is None or not batch.is_failed:
                raise BatchStateError(f"cannot resume: {_describe_current(batch)}; only a failed batch can be resumed")
            return batch.replace(
                state=RUNNING,
                ended_at=None,
                duration_seconds=None,
                failure=None,
                resumed_at=(*batch.resumed_at, now),
                updated_at=now,
            )

        return self._update(apply)

    def cost(self, cost_per_lead: float | None = None, gpu_cost_dollars: float | None = None) -> Batch:
        """Set the current batch's cost per lead and add to its GPU spend; return it."""
        if cost_per_lead is None and gpu_cost_dollars is None:
            raise InvalidInputError("nothing to record: give a cost per lead and/or GPU dollars")
        per_lead = None if cost_per_lead is None else _non_negative(cost_per_lead, "cost per lead")
        gpu = None if gpu_cost_dollars is None else _non_negative(gpu_cost_dollars, "GPU dollars")

        def apply(batch: Batch | None, now: float) -> Batch:
            if batch is None:
                raise BatchStateError("cannot record a cost: no batch has been started")
            total = batch.gpu_cost_dollars if gpu is None else batch.gpu_cost_dollars + gpu
            if not math.isfinite(total):
                # Each value was finite, but their sum is not: JSON cannot hold it, and a reader
                # would take the tracker file for corrupt and move the running batch aside.
                raise InvalidInputError(
                    f"GPU dollars {shown(gpu_cost_dollars)} would make the batch's GPU spend "
                    f"{total} (allowed: a total below {sys.float_info.max:.3g})"
                )
            per_lead_now = batch.cost_per_lead if per_lead is None else per_lead
            return batch.replace(cost_per_lead=per_lead_now, gpu_cost_dollars=total, updated_at=now)

        return self._update(apply)

    def _update_running(self, apply: Callable[[Batch, float], Batch], action: str) -> Batch:
        def running_only(batch: Batch | None, now: float) -> Batch:
            if batch is None or not batch.is_running:
                raise BatchStateError(f"cannot {action}: {_describe_current(batch)}; run 'start' first")
            return apply(batch, now)

        return self._update(running_only)

    def _update(self, apply: Callable[[Batch | None, float], Batch]) -> Batch:
        """Read the current batch, ``apply`` and write the batch it returns under the lock; return that batch."""
        now = self.clock()
        with self.files.locked():
            document, current, events = self.files.read_for_update(now)
            batch = apply(current, now)
            self.files.write(self.files.counted(document, current, batch), batch, events)
            return batch

    def _refuse_used_id(self, batch_id: str, current: Batch | None) -> None:
        """Raise InvalidInputError when ``batch_id`` names the current batch or one in history (caller holds
        the lock): a second record under one id would make alerts, history and metrics mix two batches."""
        if current is not None and current.id == batch_id:
            user = f"the current batch ({current.state})"
        elif self.files.history_has_id(batch_id):
            user = "a batch in history"
        else:
            return
        raise InvalidInputError(
            f"batch id {batch_id!r} is already used by {user}; ids are never reused (omit --id for a fresh one)"
        )

    def snapshot(self) -> Snapshot:
        """Read both files without locking and without repairing anything."""
        return self.files.snapshot()

    def skip(self, date: str, reason: str = ""):
        """Record that the night whose deadline falls on local ``date`` (``YYYY-MM-DD``) is deliberately not run:
        no missing, late or late-start alert for it. A date the job is not scheduled on is refused. Returns
        the :class:`utils.jobs.Skip`."""
        from utils.jobs import Skip, parse_skip_date

        now = self.clock()
        skip = Skip(parse_skip_date(date, now, self.config), clean_text(reason), now)
        self.files.update_excuses(lambda excuses: excuses.with_skip(skip), now)
        return skip

    def pause(self, until: str, reason: str = ""):
        """Pause the job from now until ``until`` (ISO-8601 with an offset): no deadline in between counts.
        Returns the :class:`utils.jobs.Pause`."""
        from utils.jobs import Pause, parse_pause_until

        now = self.clock()
        pause = Pause(now, parse_pause_until(until, now), clean_text(reason), now)
        self.files.update_excuses(lambda excuses: excuses.with_pause(pause), now)
        return pause

    def excuses(self):
        """The skipped dates and pauses on file (:meth:`utils.tracker_files.TrackerFiles.excuses`)."""
        return self.files.excuses()

    def schedule(self):
        """This job's :class:`utils.deadline.DailyDeadline` with its skipped and paused nights excused: the one
        every reader judges missing, late and late-start incidents by."""
        return self.excuses().apply(self.config.deadline())


def _tracker(path, clock, config) -> BatchTracker:
    return BatchTracker(config if config is not None else TrackerConfig.from_env(), path=path, clock=clock)


def record_batch_start(stages=None, *, path=None, clock=None, config=None, batch_id=None) -> str:
    """Start a new batch and return its id. See :meth:`BatchTracker.start`."""
    return _tracker(path, clock, config).start(stages, batch_id=batch_id)


def record_batch_stage_completion(stage, percentage, *, path=None, clock=None, config=None) -> Stage:
    """Record ``stage`` at ``percentage`` (finite, 0-100) for the running batch."""
    return _tracker(path, clock, config).stage(stage, percentage)


def record_batch_end(*, path=None, clock=None, config=None) -> Batch:
    """Mark the running batch completed. Raises :class:`BatchStateError` when none is running."""
    return _tracker(path, clock, config).end()


def record_batch_failure(stage=None, reason="", *, path=None, clock=None, config=None) -> Batch:
    """Mark the running batch failed at ``stage`` with ``reason`` (e.g. the exit code)."""
    return _tracker(path, clock, config).fail(stage, reason)


def record_batch_resume(*, path=None, clock=None, config=None) -> Batch:
    """Put the failed current batch back to running, keeping its id and completed stages."""
    return _tracker(path, clock, config).resume()


def record_batch_cost(cost_per_lead=None, gpu_cost_dollars=None, *, path=None, clock=None, config=None) -> Batch:
    """Set cost per lead and add ``gpu_cost_dollars`` to the current batch's GPU spend."""
    return _tracker(path, clock, config).cost(cost_per_lead, gpu_cost_dollars)


def load_snapshot(*, path=None, config=None) -> Snapshot:
    """Both files as a :class:`utils.model.Snapshot`, read-only (never repairs, never raises StorageError)."""
    return _tracker(path, None, config).snapshot()


def check_batch_completion(now=None, *, path=None, clock=None, config=None) -> tuple[bool, str]:
    """``(ok, reason)`` for the batch whose deadline matters at ``now``: ok when it completed by its deadline or
    runs before it; else why (late, failed, completed late, tracker unreadable, or missing)."""
    from utils import incidents

    tracker = _tracker(path, clock, config)
    moment = tracker.clock() if now is None else now
    return incidents.check(tracker.snapshot(), moment, tracker.schedule())


def get_batch_status(now=None, *, path=None, clock=None, config=None) -> dict:
    """Detailed status of the current batch and a summary of recent history (JSON-ready)."""
    from utils import status_report

    tracker = _tracker(path, clock, config)
    moment = tracker.clock() if now is None else now
    status = status_report.describe(tracker.snapshot(), moment, tracker.schedule())
    status["tracker"]["path"] = tracker.path
    return status


if __name__ == "__main__":
    # ``python -m utils.batch_tracker``: the CLI lives above the library (no import of it here).
    import runpy

    runpy.run_module("utils.tracker_cli", run_name="__main__")
