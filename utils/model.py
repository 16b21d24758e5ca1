"""The domain model: what the tracker's files hold, as frozen values (stdlib only, no I/O).

``from_dict`` reads the JSON any release wrote (missing optional keys take their defaults) and raises
:class:`RecordError` naming the batch and field when a record is malformed; ``to_dict`` writes it back
with unknown keys kept (``extra``), so releases can share a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import isfinite

from utils.counters import Counters
from utils.numbers import finite_number
from utils.values import EMPTY, Value, frozen

RUNNING, COMPLETED, FAILED, ABANDONED = "running", "completed", "failed", "abandoned"
BATCH_STATES = (RUNNING, COMPLETED, FAILED, ABANDONED)
NAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_NAME_LENGTH = 64


class RecordError(ValueError):
    """A stored record does not have the shape this code writes."""


def is_valid_name(name: object) -> bool:
    """Stage names and batch ids: 1-64 characters of ``A-Z a-z 0-9 _ . -``."""
    # issuperset walks the string: no set built per name (every stage's name is checked on every write).
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and NAME_CHARACTERS.issuperset(name)


def _number(record: Mapping, key: str, where: str, *, default: float | None = None, required: bool = False):
    value = record.get(key, default)
    number = finite_number(value)
    if number is None and (value is not None or required):
        raise RecordError(f"{where} has an invalid {key}")
    return number


def _extra(record: Mapping, cls: type, not_stored: tuple[str, ...] = ("extra",)) -> Mapping:
    """The keys of ``record`` that no stored field of ``cls`` reads: kept and written back unchanged."""
    known = set(cls._fields) - set(not_stored)
    if len(record) <= len(known) and known.issuperset(record):
        return EMPTY  # the common case: nothing unknown to keep
    return {key: value for key, value in record.items() if key not in known}


_STAGE_KEYS = ("percentage", "first_seen_at", "updated_at", "completed_at")
_REAL = frozenset({int, float})  # exact types: a bool is no number here


def _check_stages(records: Mapping, where: str) -> None:
    """Raise :class:`RecordError` unless every ``name: record`` of ``records`` is a stage record this code
    writes (the first bad one, in order, is named)."""
    # Runs for every stage on every write (thousands in a big batch): one loop, exact-type checks.
    for name, record in records.items():
        if not is_valid_name(name) or type(record) is not dict:
            raise RecordError(f"{where} has an invalid stage entry")
        get = record.get
        percentage, first_seen_at, updated_at = get("percentage"), get("first_seen_at"), get("updated_at")
        completed_at = get("completed_at")
        if not (
            type(percentage) in _REAL
            and type(first_seen_at) in _REAL
            and type(updated_at) in _REAL
            and isfinite(percentage)
            and isfinite(first_seen_at)
            and isfinite(updated_at)
            and (completed_at is None or (type(completed_at) in _REAL and isfinite(completed_at)))
        ):
            raise RecordError(f"{where} stage {name!r} is malformed")


def _pick(value: object, *names: str) -> dict:
    return {name: getattr(value, name) for name in names}


@frozen(hidden=("extra",))
class Stage(Value):
    """One stage of a batch: its latest percentage and when it was first seen, updated, completed."""

    name: str
    percentage: float
    first_seen_at: float
    updated_at: float
    completed_at: float | None = None
    extra: Mapping[str, object] = EMPTY
    _source: dict | None  # the record it was read from: written back as it was while the stage is unchanged

    @classmethod
    def from_dict(cls, name: str, record: object, where: str) -> Stage:
        _check_stages({name: record}, where)
        return cls._from_checked(name, record)  # type: ignore[arg-type]

    @classmethod
    def _from_checked(cls, name: str, record: dict) -> Stage:
        """The stage of a record :func:`_check_stages` accepted (slots set directly: no per-field helpers)."""
        stage = object.__new__(cls)
        set_name, set_percentage, set_first_seen, set_updated, set_completed, set_extra, set_source = cls._setters
        completed_at = record.get("completed_at")
        set_name(stage, name)
        set_percentage(stage, float(record["percentage"]))
        set_first_seen(stage, float(record["first_seen_at"]))
        set_updated(stage, float(record["updated_at"]))
        set_completed(stage, None if completed_at is None else float(completed_at))
        set_extra(stage, EMPTY if len(record) <= len(_STAGE_KEYS) else _extra(record, cls, ("name", "extra")))
        set_source(stage, record)
        return stage

    def to_dict(self) -> dict:
        """The JSON record: the one it was read from while unchanged (shared: callers must not modify it)."""
        if self._source is not None:
            return self._source
        stored = {
            "percentage": self.percentage,
            "first_seen_at": self.first_seen_at,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
        }
        return {**self.extra, **stored} if self.extra else stored

    @property
    def done(self) -> bool:
        return self.percentage >= 100


@frozen(hidden=("extra",))
class Failure(Value):
    """A recorded failure: where, why, when, and the failed stage's last output lines."""

    at: float
    stage: str | None = None
    reason: str = ""
    output_tail: str | None = None
    extra: Mapping[str, object] = EMPTY

    @classmethod
    def from_dict(cls, record: object, where: str) -> Failure:
        if not isinstance(record, Mapping):
            raise RecordError(f"{where} has an invalid failure record")
        stage, reason, tail = record.get("stage"), record.get("reason", ""), record.get("output_tail")
        if not (stage is None or isinstance(stage, str)) or not isinstance(reason, str):
            raise RecordError(f"{where} has an invalid failure record")
        if not (tail is None or isinstance(tail, str)):
            raise RecordError(f"{where} has an invalid failure output")
        at = _number(record, "at", where, required=True)
        return cls(at=at, stage=stage, reason=reason, output_tail=tail, extra=_extra(record, cls))

    def to_dict(self) -> dict:
        tail = {} if self.output_tail is None else {"output_tail": self.output_tail}
        return {**self.extra, "stage": self.stage, "reason": self.reason, "at": self.at, **tail}

    def describe(self) -> str:
        """``at stage S: reason`` as much of it as is known (``""`` when neither is)."""
        where = f" at stage {self.stage}" if self.stage else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{where}{why}".lstrip()


def _batch_fields(record: object, cls: type) -> tuple[dict, dict]:
    """The constructor arguments of the batch in ``record`` (``cls``: :class:`Batch`) and its stage records, each
    checked; :class:`RecordError` naming the batch and field otherwise."""
    if not isinstance(record, Mapping):
        raise RecordError("batch record is not an object")
    batch_id, state = record.get("id"), record.get("state")
    if not isinstance(batch_id, str) or state not in BATCH_STATES:
        raise RecordError("batch record lacks a valid id or state")
    where = f"batch {batch_id!r}"
    if finite_number(record.get("started_at")) is None:
        raise RecordError(f"{where} has no valid started_at")
    stages = record.get("stages")
    if not isinstance(stages, Mapping):
        raise RecordError(f"{where} has no stages object")
    expected = record.get("expected_stages", [])
    if not isinstance(expected, list) or not all(isinstance(s, str) for s in expected):
        raise RecordError(f"{where} has invalid expected_stages")
    failures = record.get("failures", [])
    if not isinstance(failures, list):
        raise RecordError(f"{where} has an invalid failures list")
    try:
        failure_list = tuple(Failure.from_dict(f, where) for f in failures)
    except RecordError:
        raise RecordError(f"{where} has an invalid failures list") from None
    failure = None if record.get("failure") is None else Failure.from_dict(record["failure"], where)
    if state == FAILED and not (failure or failure_list):
        raise RecordError(f"{where} has an invalid failure record")
    resumed_at = record.get("resumed_at", [])
    if not isinstance(resumed_at, list) or any(finite_number(t) is None for t in resumed_at):
        raise RecordError(f"{where} has an invalid resumed_at list")
    texts = {key: record.get(key) for key in ("host", "deadline_timezone", "deadline_time", "abandoned_by")}
    for key, value in texts.items():
        if not (value is None or isinstance(value, str)):
            raise RecordError(f"{where} has an invalid {key}")
    records = dict(stages)
    _check_stages(records, where)
    optional_numbers = ("updated_at", "ended_at", "duration_seconds", "cost_per_lead", "deadline_at")
    fields = dict(
        id=batch_id,
        state=state,
        started_at=float(record["started_at"]),
        expected_stages=tuple(expected),
        failure=failure,
        failures=failure_list,
        resumed_at=tuple(float(t) for t in resumed_at),
        gpu_cost_dollars=_number(record, "gpu_cost_dollars", where, default=0.0),
        **{key: _number(record, key, where) for key in optional_numbers},
        **texts,
        extra=_extra(record, cls),
    )
    return fields, records


@frozen(hidden=("extra",))
class Batch(Value):
    """One run of the nightly pipeline. ``deadline_at``: fixed when it started (None only in records written
    before deadlines were stored: readers use the settings). ``stages``: in the order first reported.

    A batch read by :meth:`from_dict` checks every stage record at once but builds its :class:`Stage` values
    only when ``stages`` is first read (a hook's write reads one stage of thousands): ``stage``, ``with_stage``,
    ``replace`` and ``to_dict`` work on the checked records meanwhile."""

    id: str
    state: str
    started_at: float
    updated_at: float | None = None
    ended_at: float | None = None
    duration_seconds: float | None = None
    expected_stages: tuple[str, ...] = ()
    stages: tuple[Stage, ...] = ()
    failure: Failure | None = None
    failures: tuple[Failure, ...] = ()
    resumed_at: tuple[float, ...] = ()
    cost_per_lead: float | None = None
    gpu_cost_dollars: float = 0.0
    host: str | None = None
    deadline_at: float | None = None
    deadline_timezone: str | None = None
    deadline_time: str | None = None
    abandoned_by: str | None = None
    extra: Mapping[str, object] = EMPTY
    _stage_records: dict | None  # name -> checked stage record, in order; None when built from Stage values

    @classmethod
    def from_dict(cls, record: object) -> Batch:
        """The batch in ``record``; :class:`RecordError` unless it has the shape this code writes. Each stage's
        record is kept, not copied, and written back while unchanged: callers must not change them afterwards."""
        fields, records = _batch_fields(record, cls)
        return cls(**fields)._defer_stages(records)

    def _defer_stages(self, records: dict) -> Batch:
        """``self``, just built and not yet shared, with ``records`` (checked) as its stages until first read."""
        slots = type(self).__dict__
        slots["_stage_records"].__set__(self, records)
        slots["stages"].__delete__(self)  # an unset slot: reading it reaches __getattr__
        return self

    def __getattr__(self, name: str) -> object:
        # Python calls this only for an attribute that is not there: ``stages`` while it is still records.
        records = self._stage_records if name == "stages" else None
        if records is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        stages = tuple(Stage._from_checked(stage, record) for stage, record in records.items())
        type(self).__dict__["stages"].__set__(self, stages)
        return stages

    def replace(self, **changes: object) -> Batch:
        """A copy with ``changes`` applied; unchanged stages stay records (see the class docstring)."""
        records = self._stage_records
        if records is None or "stages" in changes:
            # Not super(): frozen() rebuilds the class, so the method's own class is not this one's base.
            return Value.replace(self, **changes)  # type: ignore[return-value]
        return self._copy(records, changes)

    def with_stage(self, stage: Stage, **changes: object) -> Batch:
        """A copy with ``stage`` in place of the stage of its name (else after the others) and ``changes``;
        :class:`RecordError` when ``stage`` could not be read back (e.g. a NaN percentage)."""
        record = stage.to_dict()
        _check_stages({stage.name: record}, f"batch {self.id!r}")
        records = self._stage_records
        if records is not None:
            return self._copy({**records, stage.name: record}, changes)
        stages = self.stages
        if self.stage(stage.name) is None:
            return self.replace(stages=(*stages, stage), **changes)
        return self.replace(stages=tuple(stage if s.name == stage.name else s for s in stages), **changes)

    def _copy(self, records: dict, changes: dict) -> Batch:
        kept = {field: getattr(self, field) for field in self._fields if field != "stages"}
        return type(self)(**{**kept, **changes})._defer_stages(records)

    def to_dict(self) -> dict:
        """The JSON record (``from_dict(b.to_dict()) == b``); optional keys absent when unset."""
        optional = _pick(self, "host", "deadline_at", "deadline_timezone", "deadline_time", "abandoned_by")
        return {
            **self.extra,
            **_pick(self, "id", "state", "started_at", "ended_at", "duration_seconds", "updated_at"),
            "expected_stages": list(self.expected_stages),
            "stages": (
                dict(self._stage_records)
                if self._stage_records is not None
                else {stage.name: stage.to_dict() for stage in self.stages}
            ),
            "failure": None if self.failure is None else self.failure.to_dict(),
            "failures": [failure.to_dict() for failure in self.failures],
            "resumed_at": list(self.resumed_at),
            **_pick(self, "cost_per_lead", "gpu_cost_dollars"),
            **{key: value for key, value in optional.items() if value is not None},
        }

    @property
    def is_running(self) -> bool:
        return self.state == RUNNING

    @property
    def is_completed(self) -> bool:
        return self.state == COMPLETED

    @property
    def is_failed(self) -> bool:
        return self.state == FAILED

    @property
    def last_failure(self) -> Failure | None:
        """The failure in force, else the latest recorded one (a resumed batch keeps its history)."""
        return self.failure or (self.failures[-1] if self.failures else None)

    def stage(self, name: str) -> Stage | None:
        """The stage named ``name``, else None."""
        records = self._stage_records
        if records is None:
            return next((stage for stage in self.stages if stage.name == name), None)
        record = records.get(name)
        return None if record is None else Stage._from_checked(name, record)

    def stage_map(self) -> dict[str, Stage]:
        return {stage.name: stage for stage in self.stages}

    def ordered_stage_names(self) -> list[str]:
        """The expected stages in their declared order, then any other reported stage."""
        expected = list(self.expected_stages)
        return expected + [stage.name for stage in self.stages if stage.name not in expected]

    def overall_percentage(self) -> float:
        """Mean percentage over the expected stages (the stages seen, if none were declared)."""
        if self.state == COMPLETED:
            return 100.0
        stages = self.stage_map()
        names = list(self.expected_stages) or list(stages)
        if not names:
            return 0.0
        return sum(stages[name].percentage if name in stages else 0.0 for name in names) / len(names)

    def active_stage(self) -> str | None:
        """The stage that is (or should be) running now: the one to look at when a batch is stuck."""
        if self.failure and self.failure.stage:
            return self.failure.stage
        in_progress = [(stage.updated_at, stage.name) for stage in self.stages if stage.percentage < 100]
        if in_progress:
            return max(in_progress)[1]
        seen = {stage.name for stage in self.stages}
        return next((name for name in self.expected_stages if name not in seen), None)

    def stage_windows(self) -> dict[str, tuple[float, float | None]]:
        """``{stage: (start, completed_at or None)}`` for the stages that have started, in order.

        A stage starts at the earlier of its first record and the moment the stages before
        it had all finished (the batch start for the first one): the nightly runner reports
        some stages only once, at 100%, and their first record is then their end.
        """
        windows: dict[str, tuple[float, float | None]] = {}
        boundary = self.started_at
        stages = self.stage_map()
        for stage in [stages[name] for name in self.ordered_stage_names() if name in stages]:
            windows[stage.name] = (min(stage.first_seen_at, boundary), stage.completed_at)
            if stage.completed_at is not None:
                boundary = max(boundary, stage.completed_at)
        return windows

    def stage_durations(self) -> dict[str, float]:
        """Durations of the stages that reached 100%."""
        return {name: done - start for name, (start, done) in self.stage_windows().items() if done is not None}


@frozen(hidden=("details",))
class StorageEvent(Value):
    """Something the tracker did to its own files, e.g. moving a corrupt file aside."""

    event: str
    at: float
    details: Mapping[str, object] = EMPTY

    @classmethod
    def from_dict(cls, record: object) -> StorageEvent:
        valid = isinstance(record, Mapping) and isinstance(record.get("event"), str)
        if not valid or finite_number(record.get("at")) is None:
            raise RecordError("tracker file has an invalid storage_events list")
        return cls(event=record["event"], at=float(record["at"]), details=_extra(record, cls, ("details",)))

    def to_dict(self) -> dict:
        return {**self.details, "event": self.event, "at": self.at}


@frozen()
class Snapshot(Value):
    """The tracker's files at one moment. ``error`` is set (and ``current`` None) when the tracker file cannot
    be read or parsed; ``history_error`` likewise for the history. ``history``: the newest finished batches
    (oldest first; see :mod:`utils.history_archive` for how many), ``history_totals`` counts every kept one."""

    current: Batch | None = None
    history: tuple[Batch, ...] = ()
    storage_events: tuple[StorageEvent, ...] = ()
    error: str | None = None
    history_error: str | None = None
    counters: Counters | None = None  # None when unreadable: readers leave totals out, not report a reset
    history_totals: object = None  # a utils.history_archive.HistoryTotals (above this module), None when unreadable

    @property
    def readable(self) -> bool:
        return self.error is None

    def batches_newest_first(self) -> list[Batch]:
        """The current batch (if any) followed by the history, newest first."""
        newest = [self.current] if self.current else []
        current_id = self.current.id if self.current else None
        return newest + [batch for batch in reversed(self.history) if batch.id != current_id]

    def find(self, batch_id: str | None) -> Batch | None:
        """The batch with ``batch_id`` in the current slot or the history, else None."""
        return next((batch for batch in self.batches_newest_first() if batch.id == batch_id), None)


@frozen()
class Incident(Value):
    """An open problem. ``(kind, key)`` is its identity: a batch id, or a deadline instant."""

    kind: str
    key: str
    summary: str
    since: float
    batch_id: str | None = None

    @property
    def identity(self) -> str:
        return f"{self.kind}:{self.key}"

    def to_dict(self) -> dict:
        return _pick(self, "kind", "key", "summary", "since", "batch_id")
