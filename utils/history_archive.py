"""The history of finished batches: an append-only JSON Lines archive and a small summary beside it.

Beside the tracker file ``<name>.json``:

- ``<name>.history.jsonl``: one finished batch record per line, oldest first, appended (and fsynced) under the
  tracker's lock; once it holds ``limit`` plus a tenth more lines it is rewritten with the newest ``limit``.
- ``<name>.history-summary.json``: all that readers need without opening the archive: the newest batches in full
  (the *window*: enough for projections, the too-short check, the failure chain and the status chart) and a
  ledger of one short entry per kept batch (counts, on-time rate, median duration).

So a check, a scrape or ``status`` costs what the summary costs, whatever the archive holds, and ``start`` appends
one line and rewrites the summary. Only ``history --limit N`` and ``start --id`` open the archive, from its end or
by a byte search. An older release's ``<name>.history.json`` is read as it is and migrated by the first writer.
"""

from __future__ import annotations

import json
import os
from math import isfinite

from utils.model import ABANDONED, COMPLETED, FAILED, RUNNING, Batch, RecordError
from utils.state_store import (
    CorruptStateError,
    JsonStateStore,
    ParsedFile,
    StorageError,
    _describe_os_error,
    append_line,
    read_bytes,
    sibling_file,
    write_bytes_atomically,
)
from utils.values import Value, frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

SUMMARY_SCHEMA_VERSION = 1
# The window: at least this many newest batches, and back to the 14th newest completed one (projection.py's
# RECENT_BATCHES, the "usual" durations), but never more than WINDOW_MAX (a month of failures is enough).
WINDOW_MIN = 30
WINDOW_COMPLETED = 14
WINDOW_MAX = 60
_BLOCK = 65536


def _log(level: str, message: str, *args: object) -> None:
    import logging  # only when something is worth saying: hooks run on the critical path

    getattr(logging.getLogger("utils.batch_tracker"), level)(message, *args)


# The history ledger's one character per batch (utils.history_archive): its state, and its verdict.
LEDGER_STATE_CODES = {COMPLETED: "c", FAILED: "f", ABANDONED: "a", RUNNING: "r"}
_LEDGER_STATES = frozenset(LEDGER_STATE_CODES.values())
_LEDGER_VERDICTS = frozenset("10-")
_REAL = frozenset({int, float})  # exact types: a bool is no number here


@frozen()
class HistoryTotals(Value):
    """Counts over every kept finished batch. ``decided``: completed or failed (abandoned ones are neither on time
    nor late); ``on_time``: completed by their deadline."""

    count: int = 0
    completed: int = 0
    failed: int = 0
    abandoned: int = 0
    on_time: int = 0
    median_duration_seconds: float | None = None

    @classmethod
    def from_ledger(cls, ledger: object) -> HistoryTotals:
        """Totals of a ledger (see :data:`LEDGER_STATE_CODES`): ``{"states": "ccf...", "verdicts": "10-...",
        "durations": [seconds or None, ...]}``, one character or item per kept batch, oldest first (``verdicts``:
        1 on time, 0 late or failed, - neither). :class:`RecordError` unless it has that shape."""
        fields = ledger if type(ledger) is dict else {}
        states, verdicts, durations = fields.get("states"), fields.get("verdicts"), fields.get("durations")
        # Whole-sequence checks run in C: every start reads ten years of entries.
        if not (
            type(states) is str
            and type(verdicts) is str
            and type(durations) is list
            and len(states) == len(verdicts) == len(durations)
            and set(states) <= _LEDGER_STATES
            and set(verdicts) <= _LEDGER_VERDICTS
        ):
            raise RecordError("history ledger is malformed")
        finished = [d for d in durations if d is not None]
        if not set(map(type, finished)) <= _REAL or not all(map(isfinite, finished)):
            raise RecordError("history ledger has an invalid duration")
        finished.sort()
        middle = len(finished) // 2
        median = None
        if finished:
            median = float(finished[middle] if len(finished) % 2 else (finished[middle - 1] + finished[middle]) / 2)
        return cls(
            count=len(states),
            completed=states.count(LEDGER_STATE_CODES[COMPLETED]),
            failed=states.count(LEDGER_STATE_CODES[FAILED]),
            abandoned=states.count(LEDGER_STATE_CODES[ABANDONED]),
            on_time=verdicts.count("1"),
            median_duration_seconds=median,
        )

    @property
    def decided(self) -> int:
        return self.completed + self.failed

    @property
    def on_time_rate(self) -> float | None:
        """On time / (completed + failed), rounded to 4 places; None before any batch was decided."""
        return round(self.on_time / self.decided, 4) if self.decided else None


def archive_path(tracker_path: str) -> str:
    """``data/batch_tracker.json`` -> ``data/batch_tracker.history.jsonl``."""
    return sibling_file(tracker_path, "history") + "l"


def _line(batch: Batch) -> bytes:
    return json.dumps(batch.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def _ledger(batches: list[Batch], verdict: Callable[[Batch], bool]) -> dict:
    """The ledger of ``batches`` (:meth:`utils.model.HistoryTotals.from_ledger`): a few bytes per batch."""
    states, verdicts, durations = [], [], []
    for batch in batches:
        states.append(LEDGER_STATE_CODES[batch.state])
        decided = batch.state in (COMPLETED, FAILED)
        verdicts.append(("1" if verdict(batch) else "0") if decided else "-")
        durations.append(batch.duration_seconds if batch.state == COMPLETED else None)
    return {"states": "".join(states), "verdicts": "".join(verdicts), "durations": durations}


def _ledger_slice(ledger: dict, part: slice) -> dict:
    return {key: value[part] for key, value in ledger.items()}


def _ledger_join(first: dict, second: dict) -> dict:
    return {key: first[key] + second[key] for key in first}


def _window(batches: list[Batch]) -> list[Batch]:
    """The newest batches of ``batches`` (oldest first) a reader needs; see :data:`WINDOW_MIN`."""
    kept: list[Batch] = []
    completed = 0
    for batch in reversed(batches):
        if len(kept) >= WINDOW_MAX or (len(kept) >= WINDOW_MIN and completed >= WINDOW_COMPLETED):
            break
        kept.append(batch)
        completed += batch.state == COMPLETED
    return kept[::-1]


def _parse_line(line: bytes) -> Batch | None:
    try:
        return Batch.from_dict(json.loads(line))
    except (ValueError, RecursionError, RecordError):
        return None


def _read_whole(path: str) -> bytes:
    return read_bytes(path) or b""


def _tail_lines(path: str, count: int) -> list[bytes]:
    """The last ``count`` whole lines of the file at ``path``, oldest first, read backwards in blocks."""
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            data = b""
            position = end
            while position > 0 and data.count(b"\n") <= count:
                step = min(_BLOCK, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(_describe_os_error("read", path, exc)) from exc
    lines = data.split(b"\n")
    lines.pop()  # after the final newline: empty, or a torn line a crashed writer left
    if position > 0:
        lines.pop(0)  # may be the end of a longer line
    return [line for line in lines if line.strip()][-count:]


class HistoryView:
    """What :meth:`HistoryArchive.read` returns: the window (oldest first) and the totals over every kept batch."""

    __slots__ = ("totals", "window")

    def __init__(self, window: tuple[Batch, ...] = (), totals: HistoryTotals | None = None):
        self.window = window
        self.totals = totals if totals is not None else HistoryTotals()


class HistoryArchive:
    """The archive and its summary for the tracker file at ``tracker_path`` (both written under ``lock_path``)."""

    def __init__(self, tracker_path: str, lock_path: str, verdict: Callable[[Batch], bool], limit: int):
        self.path = archive_path(tracker_path)
        self.limit = limit  # batches kept: the archive holds up to a tenth more until it is compacted
        self.verdict = verdict  # whether a finished batch completed by its deadline
        self.summary_store = JsonStateStore(sibling_file(tracker_path, "history-summary"), lock_path=lock_path)
        self.legacy_store = JsonStateStore(sibling_file(tracker_path, "history"), lock_path=lock_path)
        self._summary = ParsedFile(self.summary_store.path)
        self._cached: tuple | None = None  # (the summary document, its HistoryView)

    # ------------------------------------------------------------------ readers (no lock, no repair)

    def read(self) -> HistoryView:
        """The window and totals; parsed again only when the summary file changed. CorruptStateError when the
        summary (or an older release's history file) is malformed, StorageError when unreadable."""
        summary = self._summary.read()
        if summary is None:
            # No summary yet: an older release's file, or an archive whose summary is gone (rebuilt by the next
            # writer). Both are read whole, once; a fresh installation has neither.
            batches = self._legacy_batches()
            if batches is None:
                batches = self.all_batches() if os.path.exists(self.path) else []
            return self._view(batches)
        cached = self._cached
        if cached is not None and cached[0] is summary:
            return cached[1]
        view = self._parse_summary(summary)
        self._cached = (summary, view)  # one assignment: a concurrent reader sees the old pair or the new one
        return view

    def newest(self, count: int) -> list[Batch]:
        """The newest ``count`` kept batches, newest first: from the window when it holds them, else from the
        archive's end (a torn or unreadable line is skipped)."""
        count = min(count, self.limit)
        try:
            window = self.read().window
        except StorageError:
            window = ()
        if count <= len(window) or not os.path.exists(self.path):
            return list(reversed(window))[:count]
        batches = [batch for batch in map(_parse_line, _tail_lines(self.path, count)) if batch is not None]
        return batches[::-1]

    def contains_id(self, batch_id: str) -> bool:
        """Whether a kept batch has ``batch_id`` (a byte search of the archive, then the matching lines parsed)."""
        legacy = self._legacy_batches()
        if legacy is not None:
            return any(batch.id == batch_id for batch in legacy)
        needle = json.dumps({"id": batch_id}, separators=(",", ":"))[1:-1].encode()
        data = _read_whole(self.path)
        start = data.find(needle)
        while start >= 0:
            line_start = data.rfind(b"\n", 0, start) + 1
            line_end = data.find(b"\n", start)
            batch = _parse_line(data[line_start : len(data) if line_end < 0 else line_end])
            if batch is not None and batch.id == batch_id:
                return True
            start = data.find(needle, start + 1)
        return False

    def all_batches(self) -> list[Batch]:
        """Every kept batch (the newest ``limit``), oldest first; reads the whole archive: for rebuilding."""
        legacy = self._legacy_batches()
        if legacy is not None:
            return legacy[-self.limit :]
        return self._archived()[-self.limit :]

    def _archived(self) -> list[Batch]:
        """Every batch of the archive file, oldest first (an unreadable line is logged and skipped)."""
        batches = []
        for line in _read_whole(self.path).split(b"\n"):
            batch = _parse_line(line) if line.strip() else None
            if batch is not None:
                batches.append(batch)
            elif line.strip():
                _log("warning", "history archive %s has an unreadable line; it is skipped", self.path)
        return batches

    def _legacy_batches(self) -> list[Batch] | None:
        """The batches of an older release's history file, None when there is none."""
        document = self.legacy_store.read()
        if document is None:
            return None
        batches = document.get("batches")
        if not isinstance(document.get("schema_version"), int) or not isinstance(batches, list):
            raise CorruptStateError(f"history file {self.legacy_store.path} has no batches list")
        try:
            return [Batch.from_dict(batch) for batch in batches]
        except RecordError as exc:
            raise CorruptStateError(str(exc)) from None

    def _view(self, batches: list[Batch]) -> HistoryView:
        return HistoryView(tuple(_window(batches)), HistoryTotals.from_ledger(_ledger(batches, self.verdict)))

    def _parse_summary(self, document: dict | None) -> HistoryView:
        if document is None:
            return HistoryView()
        version = document.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptStateError(f"history summary {self.summary_store.path} has no schema_version")
        if version > SUMMARY_SCHEMA_VERSION:
            raise StorageError(
                f"history summary has schema_version {version}; this release understands up to {SUMMARY_SCHEMA_VERSION}"
            )
        window, ledger = document.get("window"), document.get("ledger")
        if not isinstance(window, list) or not isinstance(ledger, dict):
            raise CorruptStateError(f"history summary {self.summary_store.path} lacks its window or ledger")
        try:
            return HistoryView(tuple(map(Batch.from_dict, window)), HistoryTotals.from_ledger(ledger))
        except RecordError as exc:
            raise CorruptStateError(f"history summary {self.summary_store.path}: {exc}") from None

    # ------------------------------------------------------------------ writers (caller holds the lock)

    def migrate(self, now: float) -> None:
        """Turn an older release's history file into the archive and summary, then remove it. A corrupt one is
        moved aside. Lines already in the archive (an interrupted migration) are kept, each id once."""
        try:
            legacy = self._legacy_batches()
        except CorruptStateError as exc:
            moved_to = self.legacy_store.move_aside(now)
            _log("error", "history file %s is corrupt (%s); moved aside to %s", self.legacy_store.path, exc, moved_to)
            return
        if legacy is None:
            return
        ids = {batch.id for batch in legacy}
        appended = [batch for batch in self._archived() if batch.id not in ids]
        batches = (legacy + appended)[-self.limit :]
        self._rewrite(batches)
        os.unlink(self.legacy_store.path)
        _log("info", "history file %s migrated to %s", self.legacy_store.path, self.path)

    def append(self, batch: Batch) -> None:
        """Archive a finished ``batch``. Archiving the newest batch again (a
        writer that crashed after archiving it but before replacing the tracker file) replaces it: never twice."""
        try:
            summary = self.summary_store.read()
            view = self._parse_summary(summary)
        except CorruptStateError as exc:
            _log("error", "history summary is corrupt (%s); rebuilt from %s", exc, self.path)
            summary = None
        if summary is None:
            batches = [b for b in self.all_batches() if b.id != batch.id] + [batch]
            self._rewrite(batches[-self.limit :])
            return
        window, ledger = list(view.window), summary["ledger"]
        lines, size = summary.get("archive_lines"), summary.get("archive_bytes")
        tail = _tail_lines(self.path, 1)
        last = _parse_line(tail[0]) if tail else None
        if window and window[-1].id == batch.id:
            window.pop()
            ledger = _ledger_slice(ledger, slice(None, -1))
        if last is not None and last.id == batch.id:
            # Already the archive's last line: the interrupted write got that far.
            batches = [b for b in self.all_batches() if b.id != batch.id] + [batch]
            self._rewrite(batches[-self.limit :])
            return
        try:
            actual = os.stat(self.path).st_size
        except FileNotFoundError:
            actual = 0
        if not isinstance(lines, int) or actual != size:
            lines = _read_whole(self.path).count(b"\n")  # an append the summary never heard of: count again
        size = append_line(self.path, _line(batch))
        lines += 1
        window = _window([*window, batch])[-self.limit :]
        ledger = _ledger_slice(_ledger_join(ledger, _ledger([batch], self.verdict)), slice(-self.limit, None))
        if lines > self.limit + max(10, self.limit // 10):
            # Compaction: rewriting the archive once every tenth of the limit keeps appends O(1) on average.
            kept = _read_whole(self.path).split(b"\n")[:-1][-self.limit :]
            data = b"".join(line + b"\n" for line in kept)
            write_bytes_atomically(self.path, data)
            lines, size = len(kept), len(data)
        self._write_summary(window, ledger, lines, size)

    def _rewrite(self, batches: list[Batch]) -> None:
        data = b"".join(_line(batch) + b"\n" for batch in batches)
        write_bytes_atomically(self.path, data)
        self._write_summary(_window(batches), _ledger(batches, self.verdict), len(batches), len(data))

    def _write_summary(self, window: list[Batch], ledger: dict, lines: int, size: int) -> None:
        self.summary_store.write(
            {
                "schema_version": SUMMARY_SCHEMA_VERSION,
                "archive_lines": lines,
                "archive_bytes": size,
                "ledger": ledger,
                "window": [batch.to_dict() for batch in window],
            }
        )
