"""Batch tracker: durable state of nightly batches, and the CLI the hooks call.

Library API (names are fixed: shell hooks, the monitor and people's scripts use them):

- :func:`record_batch_start` starts a batch and returns its id; an unfinished
  previous batch is closed as ``abandoned`` and kept in history.
- :func:`record_batch_stage_completion` records a stage's percentage.
- :func:`record_batch_end` / :func:`record_batch_failure` / :func:`record_batch_resume`
  move the running batch through its lifecycle
  (``none -> running -> completed | failed | abandoned``; ``failed -> running`` on resume).
- :func:`record_batch_cost` records cost per lead and adds GPU spend.
- :func:`check_batch_completion` says whether all is well, and why not.
- :func:`get_batch_status` returns everything a person or tool needs about the batch.

Every function takes ``path`` (tracker file), ``clock`` (returns UTC epoch seconds)
and ``config`` (:class:`TrackerConfig`) as optional keyword arguments; defaults come
from the environment.

Storage: the tracker file holds the current batch only, so a hook's write costs the
same however long the history grows; finished batches move to a bounded history
file beside it (``<name>.history.json``) when the next batch starts. Both files are
written with :mod:`utils.state_store`'s lock-and-replace protocol.

This module is imported by every hook call on the nightly critical path: it must
not import prometheus_client, pytz or logging at import time.
"""

from __future__ import annotations

import math
import os
import sys
import time

from utils.state_store import CorruptStateError, JsonStateStore, StorageError, remove_stale_temp_files

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable
    from typing import Any

    from utils.deadline import DailyDeadline

SCHEMA_VERSION = 1
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TRACKER_FILE = os.path.join("data", "batch_tracker.json")
NAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
NAME_RULE = "use 1-64 of A-Z a-z 0-9 _ . -"
BATCH_STATES = ("running", "completed", "failed", "abandoned")
MAX_REASON_LENGTH = 2000
# The failed stage's last output lines kept with a failure record (fail --output-file): bounded so a
# chatty stage cannot bloat the state file every hook rewrites.
MAX_OUTPUT_TAIL_LINES = 100
MAX_OUTPUT_TAIL_BYTES = 8192
MAX_STORAGE_EVENTS = 20
RECENT_HISTORY_SIZE = 7

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3


class TrackerError(Exception):
    """Base of the tracker's domain errors; ``exit_code`` is the CLI's exit status."""

    exit_code = EXIT_USAGE


class ConfigError(TrackerError):
    """An environment variable has a value that is not allowed."""


class InvalidInputError(TrackerError, ValueError):
    """A caller passed a value that is not allowed (stage name, percentage, cost)."""


class BatchStateError(TrackerError):
    """The requested transition does not apply to the current batch (e.g. end with none running)."""


def _log(level: str, message: str, *args: Any) -> None:
    # logging is imported only when something is worth saying: importing it costs
    # more than a whole stage update, and hooks run on the nightly critical path.
    import logging

    getattr(logging.getLogger(__name__), level)(message, *args)


# --------------------------------------------------------------------------- config


def is_valid_name(name: object) -> bool:
    """True for a stage name, batch id or batch name: 1-64 of ``A-Z a-z 0-9 _ . -``."""
    # A character set rather than a regex: importing re costs hook start-up time.
    return isinstance(name, str) and 0 < len(name) <= 64 and NAME_CHARACTERS.issuperset(name)


class TrackerConfig:
    """Tracker settings, parsed once and immutable.

    ``tracker_file`` is absolute (relative values are taken from the project root,
    not the working directory). ``expected_stages`` is a tuple of stage names used
    for the overall percentage when a batch does not declare its own.
    (A hand-written frozen class: dataclasses and namedtuple cost hook start-up time.)
    """

    __slots__ = (
        "tracker_file",
        "deadline_hour",
        "deadline_minute",
        "timezone",
        "history_limit",
        "expected_stages",
        "pushgateway_url",
        "batch_name",
    )

    def __init__(
        self,
        tracker_file: str,
        deadline_hour: int = 5,
        deadline_minute: int = 0,
        timezone: str = "America/New_York",
        history_limit: int = 90,
        expected_stages: tuple[str, ...] = (),
        pushgateway_url: str | None = None,
        batch_name: str = "nightly",
    ):
        values = dict(locals())
        del values["self"]
        values["tracker_file"] = os.path.abspath(tracker_file)
        values["expected_stages"] = tuple(expected_stages)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"TrackerConfig is immutable; use replace({name}=...)")

    def _asdict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def replace(self, **changes: object) -> TrackerConfig:
        """A copy with ``changes`` applied."""
        return TrackerConfig(**{**self._asdict(), **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrackerConfig) and self._asdict() == other._asdict()

    def __hash__(self) -> int:
        return hash(tuple(self._asdict().values()))

    def __repr__(self) -> str:
        return "TrackerConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._asdict().items()) + ")"

    @classmethod
    def from_env(cls, environ: dict | None = None) -> TrackerConfig:
        """Build the config from environment variables; raise :class:`ConfigError` naming a bad one."""
        env = os.environ if environ is None else environ
        tracker_file = env.get("BATCH_TRACKER_FILE", "").strip() or DEFAULT_TRACKER_FILE
        tracker_path = os.path.join(PROJECT_ROOT, os.path.expanduser(tracker_file))
        if "\0" in tracker_file or tracker_file.endswith(os.sep) or os.path.isdir(tracker_path):
            raise ConfigError(
                f"BATCH_TRACKER_FILE={_shorten(tracker_file, 300)!r} names a directory (allowed: a file path, "
                "e.g. data/batch_tracker.json)"
            )
        stages_raw = env.get("BATCH_EXPECTED_STAGES", "").strip()
        expected = tuple(name.strip() for name in stages_raw.split(",") if name.strip())
        for name in expected:
            if not is_valid_name(name):
                raise ConfigError(f"BATCH_EXPECTED_STAGES: stage name {name!r} is not allowed ({NAME_RULE})")
        pushgateway = env.get("BATCH_PUSHGATEWAY_URL", "").strip() or None
        if pushgateway and not _looks_like_http_url(pushgateway):
            raise ConfigError(f"BATCH_PUSHGATEWAY_URL={pushgateway!r} is not an http:// or https:// URL")
        batch_name = env.get("BATCH_NAME", "").strip() or "nightly"
        if not is_valid_name(batch_name):
            raise ConfigError(f"BATCH_NAME={batch_name!r} is not allowed ({NAME_RULE})")
        return cls(
            tracker_file=tracker_path,
            deadline_hour=_int_setting(env, "BATCH_COMPLETION_DEADLINE_HOUR", 5, 0, 23),
            deadline_minute=_int_setting(env, "BATCH_COMPLETION_DEADLINE_MINUTE", 0, 0, 59),
            timezone=env.get("BATCH_COMPLETION_TIMEZONE", "").strip() or "America/New_York",
            history_limit=_int_setting(env, "BATCH_HISTORY_LIMIT", 90, 1, 100_000),
            expected_stages=expected,
            pushgateway_url=pushgateway,
            batch_name=batch_name,
        )

    def deadline(self) -> DailyDeadline:
        """The daily deadline; validates the time zone (pytz is imported here, not at start-up)."""
        import pytz

        from utils.deadline import DailyDeadline

        try:
            return DailyDeadline(self.deadline_hour, self.deadline_minute, self.timezone)
        except pytz.UnknownTimeZoneError:
            raise ConfigError(
                f"BATCH_COMPLETION_TIMEZONE={self.timezone!r} is not an IANA time zone "
                "(e.g. America/New_York, Europe/Berlin, UTC)"
            ) from None


def _looks_like_http_url(url: str) -> bool:
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    return sep == "://" and scheme in ("http", "https") and bool(host) and not any(c.isspace() for c in url)


def is_plain_whole_number(text: str) -> bool:
    """True for ASCII digits only: no sign, underscore, whitespace or other scripts' digits.

    ``int()`` also accepts ``" 5 "``, ``"5_0"`` and ``"\\u0665"`` (Arabic-Indic five); settings and
    command-line numbers must look like what a person reading them takes them for.
    """
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def is_plain_decimal(text: str) -> bool:
    """True when ``text`` spells a decimal number in ASCII (``12``, ``-0.5``, ``1e3``).

    Refuses what ``float()`` would otherwise accept: surrounding whitespace, underscores,
    other scripts' digits, ``inf``/``nan``. ``float()`` then checks the syntax itself.
    """
    return 0 < len(text) <= 400 and _DECIMAL_CHARACTERS.issuperset(text) and any(c.isdigit() for c in text)


_DECIMAL_CHARACTERS = frozenset("0123456789.eE+-")


def _int_setting(env: dict, name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "")
    if not raw.strip():
        return default
    if not is_plain_whole_number(raw):
        raise ConfigError(f"{name}={raw!r} is not a whole number in ASCII digits (allowed: {low}-{high})")
    value = int(raw, 10)
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range (allowed: {low}-{high})")
    return value


# --------------------------------------------------------------------------- validation


def validate_stage_name(stage: object) -> str:
    """Return ``stage`` if it is an allowed stage name, else raise :class:`InvalidInputError`."""
    if not is_valid_name(stage):
        raise InvalidInputError(f"stage name {_shorten(stage)!r} is not allowed ({NAME_RULE})")
    return stage


def validate_percentage(percentage: object) -> float:
    """Return ``percentage`` as a float if it is a finite number in 0-100."""
    value = _finite_number(percentage, "percentage")
    if not 0 <= value <= 100:
        raise InvalidInputError(f"percentage {_shorten(percentage)!r} is out of range (allowed: 0-100)")
    return value


def _finite_number(raw: object, what: str) -> float:
    if isinstance(raw, bool):
        raise InvalidInputError(f"{what} {raw!r} is not a number")
    if isinstance(raw, str) and not is_plain_decimal(raw):
        raise InvalidInputError(
            f"{what} {_shorten(raw)!r} is not a number (allowed: ASCII digits like 42 or 0.5, no spaces or _)"
        )
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"{what} {_shorten(raw)!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"{what} {_shorten(raw)!r} is not a finite number")
    return value


def _non_negative(raw: object, what: str) -> float:
    value = _finite_number(raw, what)
    if value < 0:
        raise InvalidInputError(f"{what} {_shorten(raw)!r} is negative (allowed: 0 or more)")
    return value


def _shorten(value: object, limit: int = 80) -> object:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


def clean_text(value: object, limit: int = MAX_REASON_LENGTH) -> str:
    """The one rule for free text that hooks hand in (failure reasons), applied where it enters.

    Line breaks and tabs (including U+2028/U+2029/U+0085) become one space each, every other
    character that is not printable (ESC, other controls, bidi overrides, unassigned) becomes
    a visible escape such as ``\\x1b``; the result is stripped and cut to ``limit`` characters.
    So stored text is one printable line: it cannot add a line to systemd's notify message,
    a log line or a mail header, nor drive a terminal.
    """
    text = "" if value is None else str(value)
    out = []
    for char in text[: limit * 2]:
        if char.isprintable():
            out.append(char)
        elif char in _LINE_SPACES:
            out.append(" ")
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out).strip()[:limit]


_LINE_SPACES = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029")


def clean_output_tail(output: str | bytes | None) -> str | None:
    """The last lines of a stage's output, bounded and safe to store and show; None when empty.

    Bytes are decoded as UTF-8 (undecodable bytes replaced). ANSI escape sequences are
    removed, tabs become spaces, every other control character (CR included) is dropped:
    only newlines separate lines. At most :data:`MAX_OUTPUT_TAIL_LINES` lines and
    :data:`MAX_OUTPUT_TAIL_BYTES` bytes (UTF-8) are kept, the last ones.
    """
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
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines) or None


# --------------------------------------------------------------------------- storage shape


def sibling_file(tracker_file: str | os.PathLike, name: str) -> str:
    """The file beside the tracker file that holds ``name`` state, e.g.
    ``data/batch_tracker.json`` + ``monitor`` -> ``data/batch_tracker.monitor.json``."""
    path = os.fspath(tracker_file)
    base = path[:-5] if path.endswith(".json") else path
    return f"{base}.{name}.json"


def _history_path(tracker_file: str) -> str:
    return sibling_file(tracker_file, "history")


def _fresh_document() -> dict:
    return {"schema_version": SCHEMA_VERSION, "current": None, "storage_events": []}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_batch_shape(batch: object) -> None:
    """Raise CorruptStateError unless ``batch`` looks like a batch record this code wrote."""
    if not isinstance(batch, dict):
        raise CorruptStateError("batch record is not an object")
    if not isinstance(batch.get("id"), str) or batch.get("state") not in BATCH_STATES:
        raise CorruptStateError("batch record lacks a valid id or state")
    if not _is_number(batch.get("started_at")):
        raise CorruptStateError(f"batch {batch['id']!r} has no valid started_at")
    for key in ("ended_at", "cost_per_lead", "duration_seconds", "deadline_at"):
        if batch.get(key) is not None and not _is_number(batch[key]):
            raise CorruptStateError(f"batch {batch['id']!r} has an invalid {key}")
    if not _is_number(batch.get("gpu_cost_dollars", 0)):
        raise CorruptStateError(f"batch {batch['id']!r} has an invalid gpu_cost_dollars")
    stages = batch.get("stages")
    if not isinstance(stages, dict):
        raise CorruptStateError(f"batch {batch['id']!r} has no stages object")
    for name, detail in stages.items():
        if not is_valid_name(name) or not isinstance(detail, dict):
            raise CorruptStateError(f"batch {batch['id']!r} has an invalid stage entry")
        if not all(_is_number(detail.get(key)) for key in ("percentage", "updated_at", "first_seen_at")) or not (
            detail.get("completed_at") is None or _is_number(detail["completed_at"])
        ):
            raise CorruptStateError(f"batch {batch['id']!r} stage {name!r} is malformed")
    expected = batch.get("expected_stages", [])
    if not isinstance(expected, list) or not all(isinstance(s, str) for s in expected):
        raise CorruptStateError(f"batch {batch['id']!r} has invalid expected_stages")
    failure, failures = batch.get("failure"), batch.get("failures", [])
    if not isinstance(failures, list) or not all(map(_is_failure, failures)):
        raise CorruptStateError(f"batch {batch['id']!r} has an invalid failures list")
    if not (failure is None or _is_failure(failure)) or (batch["state"] == "failed" and not (failure or failures)):
        raise CorruptStateError(f"batch {batch['id']!r} has an invalid failure record")
    resumed_at = batch.get("resumed_at", [])
    if not isinstance(resumed_at, list) or not all(map(_is_number, resumed_at)):
        raise CorruptStateError(f"batch {batch['id']!r} has an invalid resumed_at list")


def _is_failure(failure: object) -> bool:
    # The views format these fields, so a hand-edited record must not reach them broken.
    return (
        isinstance(failure, dict)
        and _is_number(failure.get("at"))
        and (failure.get("stage") is None or isinstance(failure["stage"], str))
    )


def _check_document(document: dict, kind: str) -> dict:
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptStateError(f"{kind} file has no schema_version")
    if version > SCHEMA_VERSION:
        # Not corrupt: a newer release wrote it. Refuse rather than move it aside.
        raise StorageError(f"{kind} file has schema_version {version}; this release understands up to {SCHEMA_VERSION}")
    if kind == "tracker":
        if document.get("current") is not None:
            _check_batch_shape(document["current"])
        events = document.get("storage_events", [])
        if not isinstance(events, list) or not all(isinstance(e, dict) and _is_number(e.get("at")) for e in events):
            raise CorruptStateError("tracker file has an invalid storage_events list")
    else:
        batches = document.get("batches")
        if not isinstance(batches, list):
            raise CorruptStateError("history file has no batches list")
        for batch in batches:
            _check_batch_shape(batch)
    return document


class TrackerSnapshot:
    """A read-only view of both files at one moment.

    ``error`` is set (and ``current`` is None) when the tracker file cannot be read
    or does not parse; ``history_error`` likewise for the history file.
    """

    def __init__(self, current, history, storage_events, error=None, history_error=None):
        self.current: dict | None = current
        self.history: list[dict] = history
        self.storage_events: list[dict] = storage_events
        self.error: str | None = error
        self.history_error: str | None = history_error

    @property
    def readable(self) -> bool:
        return self.error is None

    def batches_newest_first(self) -> list[dict]:
        """The current batch (if any) followed by the history, newest first."""
        newest = [self.current] if self.current else []
        current_id = self.current["id"] if self.current else None
        return newest + [b for b in reversed(self.history) if b["id"] != current_id]


# --------------------------------------------------------------------------- the tracker


class BatchTracker:
    """Records batch lifecycle events in the tracker file. Thread- and process-safe."""

    def __init__(
        self,
        config: TrackerConfig | None = None,
        *,
        path: str | os.PathLike | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.config = config or TrackerConfig.from_env()
        self.path = os.path.abspath(os.fspath(path)) if path else self.config.tracker_file
        self.clock = clock or time.time
        self.store = JsonStateStore(self.path)
        self.history_store = JsonStateStore(_history_path(self.path), lock_path=self.store.lock_path)

    # ----- writes

    def start(self, stages: list[str] | tuple[str, ...] | None = None, *, batch_id: str | None = None) -> str:
        """Start a new batch and return its id; an unfinished one becomes ``abandoned``."""
        expected = [validate_stage_name(s) for s in (stages if stages is not None else self.config.expected_stages)]
        if len(set(expected)) != len(expected):
            raise InvalidInputError(f"stage list {','.join(expected)!r} names a stage twice")
        if batch_id is not None and not is_valid_name(batch_id):
            raise InvalidInputError(f"batch id {_shorten(batch_id)!r} is not allowed ({NAME_RULE})")
        now = self.clock()
        new_id = batch_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + os.urandom(3).hex()
        daily = self.config.deadline()  # the batch's deadline is fixed now, with today's settings
        with self.store.locked():
            # Once a night is often enough to sweep what killed writers left behind.
            remove_stale_temp_files(self.store.path)
            remove_stale_temp_files(self.history_store.path)
            document = self._read_for_update(now)
            previous = document.get("current")
            if batch_id is not None:
                self._refuse_used_id(batch_id, previous)
            due = daily.for_new_batch(now, previous["started_at"] if previous is not None else None)
            if previous is not None:
                if previous["state"] == "running":
                    previous["state"] = "abandoned"
                    previous["ended_at"] = now
                    previous["abandoned_by"] = new_id
                    _log(
                        "warning",
                        "batch %s was still running; marked abandoned by new batch %s",
                        previous["id"],
                        new_id,
                    )
                self._archive(previous, now)
            document["current"] = {
                "id": new_id,
                "state": "running",
                "started_at": now,
                "ended_at": None,
                "duration_seconds": None,
                "updated_at": now,
                "expected_stages": expected,
                "stages": {},
                "failure": None,
                "failures": [],
                "resumed_at": [],
                "cost_per_lead": None,
                "gpu_cost_dollars": 0.0,
                "host": os.uname().nodename,
                # Every reader judges the batch by these, whatever its own settings say.
                "deadline_at": due,
                "deadline_timezone": self.config.timezone,
                "deadline_time": f"{self.config.deadline_hour:02d}:{self.config.deadline_minute:02d}",
            }
            self.store.write(document)
        return new_id

    def stage(self, stage: str, percentage: float) -> dict:
        """Record ``stage`` at ``percentage`` for the running batch; return the stage detail."""
        name = validate_stage_name(stage)
        value = validate_percentage(percentage)

        def apply(batch: dict, now: float) -> dict:
            detail = batch["stages"].setdefault(name, {"first_seen_at": now, "completed_at": None})
            detail["percentage"] = value
            detail["updated_at"] = now
            if value >= 100:
                detail["completed_at"] = detail.get("completed_at") or now
            else:
                detail["completed_at"] = None  # the stage is being re-run
            return detail

        return self._update_running(apply, f"record stage {name}")

    def end(self) -> dict:
        """Mark the running batch completed; return it."""

        def apply(batch: dict, now: float) -> dict:
            batch["state"] = "completed"
            batch["ended_at"] = now
            batch["duration_seconds"] = now - batch["started_at"]
            return batch

        return self._update_running(apply, "end the batch")

    def fail(self, stage: str | None = None, reason: str = "", output_tail: str | bytes | None = None) -> dict:
        """Mark the running batch failed at ``stage`` with ``reason``; return it.

        ``output_tail``: the failed stage's last output; stored (as ``output_tail`` in the
        failure record) after :func:`clean_output_tail` bounds and sanitises it.
        """
        failed_stage = validate_stage_name(stage) if stage is not None else None
        text = clean_text(reason)
        tail = clean_output_tail(output_tail)

        def apply(batch: dict, now: float) -> dict:
            failure = {"stage": failed_stage, "reason": text, "at": now}
            if tail is not None:
                failure["output_tail"] = tail
            batch["state"] = "failed"
            batch["ended_at"] = now
            batch["duration_seconds"] = now - batch["started_at"]
            batch["failure"] = failure
            batch.setdefault("failures", []).append(failure)
            return batch

        return self._update_running(apply, "record a failure")

    def resume(self) -> dict:
        """Put the failed current batch back to ``running`` (same id); return it."""
        now = self.clock()
        with self.store.locked():
            document = self._read_for_update(now)
            batch = document.get("current")
            if batch is not None and batch["state"] == "running":
                raise BatchStateError(f"batch {batch['id']} is already running; nothing to resume")
            if batch is None or batch["state"] != "failed":
                raise BatchStateError(
                    f"cannot resume: {self._describe_current(batch)}; only a failed batch can be resumed"
                )
            batch["state"] = "running"
            batch["ended_at"] = None
            batch["duration_seconds"] = None
            batch["failure"] = None
            batch.setdefault("resumed_at", []).append(now)
            batch["updated_at"] = now
            self.store.write(document)
            return batch

    def cost(self, cost_per_lead: float | None = None, gpu_cost_dollars: float | None = None) -> dict:
        """Set the current batch's cost per lead and add to its GPU spend; return it."""
        if cost_per_lead is None and gpu_cost_dollars is None:
            raise InvalidInputError("nothing to record: give a cost per lead and/or GPU dollars")
        per_lead = None if cost_per_lead is None else _non_negative(cost_per_lead, "cost per lead")
        gpu = None if gpu_cost_dollars is None else _non_negative(gpu_cost_dollars, "GPU dollars")
        now = self.clock()
        with self.store.locked():
            document = self._read_for_update(now)
            batch = document.get("current")
            if batch is None:
                raise BatchStateError("cannot record a cost: no batch has been started")
            total = None if gpu is None else batch.get("gpu_cost_dollars", 0.0) + gpu
            if total is not None and not math.isfinite(total):
                # Each value was finite, but their sum is not: JSON cannot hold it, and a reader
                # would take the tracker file for corrupt and move the running batch aside.
                raise InvalidInputError(
                    f"GPU dollars {_shorten(gpu_cost_dollars)!r} would make the batch's GPU spend "
                    f"{total} (allowed: a total below {sys.float_info.max:.3g})"
                )
            if per_lead is not None:
                batch["cost_per_lead"] = per_lead
            if total is not None:
                batch["gpu_cost_dollars"] = total
            batch["updated_at"] = now
            self.store.write(document)
            return batch

    def _update_running(self, apply: Callable[[dict, float], dict], action: str) -> dict:
        now = self.clock()
        with self.store.locked():
            document = self._read_for_update(now)
            batch = document.get("current")
            if batch is None or batch["state"] != "running":
                raise BatchStateError(f"cannot {action}: {self._describe_current(batch)}; run 'start' first")
            result = apply(batch, now)
            batch["updated_at"] = now
            self.store.write(document)
            return result

    def _refuse_used_id(self, batch_id: str, current: dict | None) -> None:
        """Raise InvalidInputError when ``batch_id`` names the current batch or one in history.

        Ids are never reused: a second record under one id would make alerts, history and
        metrics mix two batches. Caller holds the lock; nothing has been changed yet.
        """
        if current is not None and current["id"] == batch_id:
            raise InvalidInputError(
                f"batch id {batch_id!r} is already used by the current batch ({current['state']}); "
                "ids are never reused (omit --id for a fresh one)"
            )
        try:
            history = self.history_store.read()
            batches = _check_document(history, "history")["batches"] if history is not None else []
        except CorruptStateError:
            batches = []  # _archive moves it aside; its ids cannot be known
        if any(batch["id"] == batch_id for batch in batches):
            raise InvalidInputError(
                f"batch id {batch_id!r} is already used by a batch in history; ids are never reused "
                "(omit --id for a fresh one)"
            )

    @staticmethod
    def _describe_current(batch: dict | None) -> str:
        if batch is None:
            return "no batch has been started"
        return f"batch {batch['id']} is {batch['state']}, not running"

    def _read_for_update(self, now: float) -> dict:
        """Read the tracker file under the lock, repairing a corrupt one. Caller holds the lock."""
        try:
            document = self.store.read()
            if document is None:
                return _fresh_document()
            return _check_document(document, "tracker")
        except CorruptStateError as exc:
            moved_to = self.store.move_aside(now)
            _log(
                "error", "tracker file %s is corrupt (%s); moved aside to %s, starting fresh", self.path, exc, moved_to
            )
            document = _fresh_document()
            document["storage_events"].append(
                {
                    "at": now,
                    "event": "corrupt_file_moved_aside",
                    "file": self.path,
                    "moved_to": moved_to,
                    "error": str(exc),
                }
            )
            # Persist the repair now, so the record of it survives even if the
            # caller's own change is then refused.
            self.store.write(document)
            return document

    def _archive(self, batch: dict, now: float) -> None:
        """Append a finished batch to the bounded history file. Caller holds the lock."""
        try:
            document = self.history_store.read()
            document = _check_document(document, "history") if document is not None else None
        except CorruptStateError as exc:
            moved_to = self.history_store.move_aside(now)
            _log("error", "history file %s is corrupt (%s); moved aside to %s", self.history_store.path, exc, moved_to)
            document = None
        batches = [b for b in (document or {}).get("batches", []) if b["id"] != batch["id"]]
        batches.append(batch)
        batches = batches[-self.config.history_limit :]
        self.history_store.write({"schema_version": SCHEMA_VERSION, "batches": batches})

    # ----- reads

    def snapshot(self) -> TrackerSnapshot:
        """Read both files without locking and without repairing anything."""
        try:
            document = self.store.read()
            # ``is not None``: an empty object is corrupt here exactly as it is for writers.
            document = _check_document(document, "tracker") if document is not None else _fresh_document()
            error = None
        except StorageError as exc:
            document, error = _fresh_document(), str(exc)
        try:
            history_document = self.history_store.read()
            history = _check_document(history_document, "history")["batches"] if history_document is not None else []
            history_error = None
        except StorageError as exc:
            history, history_error = [], str(exc)
        return TrackerSnapshot(
            document.get("current"), history, document.get("storage_events", []), error, history_error
        )


# --------------------------------------------------------------------------- module API


def _tracker(path, clock, config) -> BatchTracker:
    return BatchTracker(config, path=path, clock=clock)


def record_batch_start(stages=None, *, path=None, clock=None, config=None, batch_id=None) -> str:
    """Start a new batch and return its id. See :meth:`BatchTracker.start`."""
    return _tracker(path, clock, config).start(stages, batch_id=batch_id)


def record_batch_stage_completion(stage, percentage, *, path=None, clock=None, config=None) -> dict:
    """Record ``stage`` at ``percentage`` (finite, 0-100) for the running batch."""
    return _tracker(path, clock, config).stage(stage, percentage)


def record_batch_end(*, path=None, clock=None, config=None) -> dict:
    """Mark the running batch completed. Raises :class:`BatchStateError` when none is running."""
    return _tracker(path, clock, config).end()


def record_batch_failure(stage=None, reason="", *, path=None, clock=None, config=None) -> dict:
    """Mark the running batch failed at ``stage`` with ``reason`` (e.g. the exit code)."""
    return _tracker(path, clock, config).fail(stage, reason)


def record_batch_resume(*, path=None, clock=None, config=None) -> dict:
    """Put the failed current batch back to running, keeping its id and completed stages."""
    return _tracker(path, clock, config).resume()


def record_batch_cost(cost_per_lead=None, gpu_cost_dollars=None, *, path=None, clock=None, config=None) -> dict:
    """Set cost per lead and add ``gpu_cost_dollars`` to the current batch's GPU spend."""
    return _tracker(path, clock, config).cost(cost_per_lead, gpu_cost_dollars)


def load_snapshot(*, path=None, config=None) -> TrackerSnapshot:
    """Both files as a :class:`TrackerSnapshot`, read-only (never repairs, never raises StorageError)."""
    return _tracker(path, None, config).snapshot()


def check_batch_completion(now=None, *, path=None, clock=None, config=None) -> tuple[bool, str]:
    """Return ``(ok, reason)`` for the batch whose deadline matters at ``now``.

    ok: the current batch completed by its deadline, or is running before it.
    Not ok (with an actionable reason): it is late, failed, completed late, the
    tracker file is unreadable, or a deadline passed with no batch started in its
    window ("missing").
    """
    from utils import incidents

    tracker = _tracker(path, clock, config)
    moment = tracker.clock() if now is None else now
    return incidents.check(tracker.snapshot(), moment, tracker.config.deadline())


def get_batch_status(now=None, *, path=None, clock=None, config=None) -> dict:
    """Detailed status of the current batch and a summary of recent history (JSON-ready)."""
    from utils import status_report

    tracker = _tracker(path, clock, config)
    moment = tracker.clock() if now is None else now
    status = status_report.describe(tracker.snapshot(), moment, tracker.config.deadline())
    status["tracker"]["path"] = tracker.path
    return status


# --------------------------------------------------------------------------- CLI

USAGE = """\
usage: python -m utils.batch_tracker COMMAND [ARGS]   (or bin/batch_tracker)

commands:
  start [--stages a,b,c] [--id ID]   start a batch, print its id
  stage NAME PERCENT                 record a stage's completion (0-100)
  end                                mark the running batch completed
  fail [--stage S] [--reason R] [--output-file PATH]
                                     mark the running batch failed; PATH (- for stdin) holds the
                                     failed stage's output, whose last lines are kept
  resume                             put a failed batch back to running
  cost [--per-lead X] [--gpu-dollars Y]
  status [--json]                    show the current batch
  history [--limit N] [--json]       list past batches
  check                              exit 0 if all is well, 1 with the reason if not

exit codes: 0 ok, 1 check found a problem, 2 bad usage or value, 3 storage error
environment: BATCH_TRACKER_FILE, BATCH_COMPLETION_DEADLINE_HOUR, BATCH_COMPLETION_DEADLINE_MINUTE,
  BATCH_COMPLETION_TIMEZONE, BATCH_HISTORY_LIMIT, BATCH_EXPECTED_STAGES, BATCH_NAME, BATCH_PUSHGATEWAY_URL
"""


class UsageError(TrackerError):
    """The command line is malformed."""


def _take_options(args: list[str], allowed: dict[str, bool]) -> tuple[list[str], dict[str, str | bool]]:
    """Split ``args`` into positionals and options; ``allowed`` maps option -> takes a value.

    Hand-rolled rather than argparse: argparse's import alone costs a noticeable
    share of the hook's time budget, and the grammar here is tiny.
    """
    positionals: list[str] = []
    options: dict[str, str | bool] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            positionals.extend(args[index + 1 :])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, has_inline, inline = arg.partition("=")
            if name not in allowed:
                raise UsageError(f"unknown option {name!r} (allowed: {', '.join(sorted(allowed)) or 'none'})")
            if allowed[name]:
                if has_inline:
                    options[name] = inline
                elif index + 1 < len(args):
                    index += 1
                    options[name] = args[index]
                else:
                    raise UsageError(f"option {name} needs a value")
            else:
                options[name] = True
        else:
            positionals.append(arg)
        index += 1
    return positionals, options


def _expect_positionals(positionals: list[str], names: list[str], command: str) -> None:
    if len(positionals) != len(names):
        wanted = " ".join(n.upper() for n in names)
        raise UsageError(f"'{command}' takes {len(names)} argument(s) ({wanted or 'none'}), got {len(positionals)}")


def _run_command(argv: list[str], environ: dict, out) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        out.write(USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    command, args = argv[0], argv[1:]
    config = TrackerConfig.from_env(environ)
    tracker = BatchTracker(config)

    if command == "start":
        positionals, options = _take_options(args, {"--stages": True, "--id": True})
        _expect_positionals(positionals, [], command)
        stages_opt = options.get("--stages")
        stages = [s for s in str(stages_opt).split(",") if s] if stages_opt is not None else None
        config.deadline()  # fail the night's first hook on a bad zone, not the monitor hours later
        batch_id = tracker.start(stages, batch_id=options.get("--id"))  # type: ignore[arg-type]
        out.write(batch_id + "\n")
        _push(config, tracker, "start")
    elif command == "stage":
        positionals, _ = _take_options(args, {})
        _expect_positionals(positionals, ["name", "percent"], command)
        tracker.stage(positionals[0], positionals[1])
        _push(config, tracker, "stage")
    elif command == "end":
        _expect_positionals(_take_options(args, {})[0], [], command)
        tracker.end()
        _push(config, tracker, "end")
    elif command == "fail":
        positionals, options = _take_options(args, {"--stage": True, "--reason": True, "--output-file": True})
        _expect_positionals(positionals, [], command)
        output = _read_output_tail(options.get("--output-file"))  # type: ignore[arg-type]
        tracker.fail(options.get("--stage"), str(options.get("--reason", "")), output)  # type: ignore[arg-type]
        _push(config, tracker, "fail")
    elif command == "resume":
        _expect_positionals(_take_options(args, {})[0], [], command)
        batch = tracker.resume()
        out.write(batch["id"] + "\n")
        _push(config, tracker, "resume")
    elif command == "cost":
        positionals, options = _take_options(args, {"--per-lead": True, "--gpu-dollars": True})
        _expect_positionals(positionals, [], command)
        tracker.cost(options.get("--per-lead"), options.get("--gpu-dollars"))
        _push(config, tracker, "cost")
    elif command in ("status", "history", "check"):
        from utils import tracker_views

        return tracker_views.run(command, args, tracker, out, _take_options, _expect_positionals)
    else:
        raise UsageError(
            f"unknown command {_shorten(command)!r} (allowed: start, stage, end, fail, resume, cost, status, history, check)"
        )
    return EXIT_OK


def _read_output_tail(path: str | None) -> bytes | None:
    """The end of ``path`` (``-``: stdin), enough for :func:`clean_output_tail`.

    An unreadable file is a warning, not an error: the failure itself must still be recorded.
    """
    if path is None:
        return None
    limit = 8 * MAX_OUTPUT_TAIL_BYTES
    try:
        if path == "-":
            data = b""
            while chunk := sys.stdin.buffer.read(65536):
                data = (data + chunk)[-limit:]
            return data
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read()
    except OSError as exc:
        sys.stderr.write(
            f"batch_tracker: warning: --output-file {_shorten(path)!r} cannot be read ({exc.strerror}); "
            "recording the failure without the output\n"
        )
        return None


def _push(config: TrackerConfig, tracker: BatchTracker, event: str) -> None:
    """Push the batch's metrics to a Pushgateway when one is configured; never fails the batch."""
    if not config.pushgateway_url:
        return
    try:
        from utils import pushgateway

        pushgateway.push_batch_metrics(config, tracker.snapshot(), tracker.clock(), event)
    except Exception as exc:  # noqa: BLE001 - a monitoring side channel must never fail the batch
        sys.stderr.write(f"batch_tracker: warning: push to {config.pushgateway_url} failed: {exc}\n")


def main(argv: list[str] | None = None, environ: dict | None = None, out=None) -> int:
    """CLI entry point: map domain errors to exit codes at this single boundary."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return _run_command(args, os.environ if environ is None else environ, out or sys.stdout)
    except StorageError as exc:
        sys.stderr.write(f"batch_tracker: storage error: {exc}\n")
        return EXIT_STORAGE
    except TrackerError as exc:
        sys.stderr.write(f"batch_tracker: error: {exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    # Under ``python -m`` this file runs as ``__main__``. Register it under its real name too,
    # so modules that import utils.batch_tracker (tracker_views raises its UsageError) share
    # these classes instead of loading a second copy whose errors main() would not catch.
    sys.modules.setdefault("utils.batch_tracker", sys.modules[__name__])
    sys.exit(main())
