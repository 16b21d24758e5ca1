"""The tracker's two files, as model values: read, checked once, repaired, written.

The tracker file holds the current batch, storage events and the counters of :mod:`utils.counters`;
finished batches go to the bounded archive of :mod:`utils.history_archive` beside it. :class:`utils.model.RecordError` becomes
:class:`CorruptStateError`, so a writer moves a file aside exactly when readers would call it corrupt.
"""

from __future__ import annotations

import os

from utils import counters
from utils.config import TrackerConfig
from utils.counters import Counters, CountersError
from utils.model import COMPLETED, Batch, RecordError, Snapshot, StorageEvent
from utils.state_store import CorruptStateError, JsonStateStore, ParsedFile, StorageError, sibling_file

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from utils.history_archive import HistoryArchive

SCHEMA_VERSION = 1


def _log(level: str, message: str, *args: object) -> None:
    # Imported only when something is worth saying (hooks run on the critical path); the tracker's
    # logger name is kept, operators filter on it.
    import logging

    getattr(logging.getLogger("utils.batch_tracker"), level)(message, *args)


def _check_version(document: dict, kind: str) -> None:
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptStateError(f"{kind} file has no schema_version")
    if version > SCHEMA_VERSION:
        # Not corrupt: a newer release wrote it. Refuse rather than move it aside.
        raise StorageError(f"{kind} file has schema_version {version}; this release understands up to {SCHEMA_VERSION}")


def _parse_tracker(document: dict) -> tuple[Batch | None, tuple[StorageEvent, ...]]:
    """The current batch and storage events of a tracker document; CorruptStateError unless well-formed."""
    _check_version(document, "tracker")
    current, events = document.get("current"), document.get("storage_events", [])
    if not isinstance(events, list):
        raise CorruptStateError("tracker file has an invalid storage_events list")
    try:
        return None if current is None else Batch.from_dict(current), tuple(map(StorageEvent.from_dict, events))
    except RecordError as exc:
        raise CorruptStateError(str(exc)) from None


class TrackerFiles:
    """Readers get a :class:`utils.model.Snapshot` and never repair; writers hold :meth:`locked` and read
    with :meth:`read_for_update`, which moves a corrupt file aside."""

    def __init__(self, path: str, config: TrackerConfig):
        self.path = path
        self.config = config
        self.store = JsonStateStore(path)
        self._legacy_history = sibling_file(path, "history")
        self._history: HistoryArchive | None = None
        self._document = ParsedFile(path)  # what readers read: parsed again only when the file changed
        self._excuses: tuple | None = None  # (the document they were read from, its Excuses)

    @property
    def history(self) -> HistoryArchive:
        """The archive of finished batches, imported on first use: ``stage``, ``end`` and ``cost`` never need it."""
        if self._history is None:
            from utils.history_archive import HistoryArchive

            self._history = HistoryArchive(self.path, self.store.lock_path, self._on_time, self.config.history_limit)
        return self._history

    def locked(self):
        """The exclusive lock every file of the tracker is written under."""
        return self.store.locked()

    def write(self, document: dict, current: Batch | None, events: tuple[StorageEvent, ...]) -> None:
        """Write the tracker document with ``current`` and ``events``. Caller holds the lock."""
        self.store.write(
            {
                **document,
                "schema_version": SCHEMA_VERSION,
                "current": None if current is None else current.to_dict(),
                "storage_events": [event.to_dict() for event in events],
            }
        )

    def read_for_update(self, now: float) -> tuple[dict, Batch | None, tuple[StorageEvent, ...]]:
        """The document, its current batch and storage events. Caller holds the lock. A corrupt file
        is moved aside and replaced by a fresh one that records the repair."""
        if os.path.exists(self._legacy_history):  # an older release's history file: migrated once
            self.history.migrate(now)
        try:
            document = self.store.read()
            if document is None:
                return {}, None, ()
            return (document, *_parse_tracker(document))
        except CorruptStateError as exc:
            moved_to = self.store.move_aside(now)
            _log(
                "error", "tracker file %s is corrupt (%s); moved aside to %s, starting fresh", self.path, exc, moved_to
            )
            details = {"file": self.path, "moved_to": moved_to, "error": str(exc)}
            events = (StorageEvent(event="corrupt_file_moved_aside", at=now, details=details),)
            # Persisted now, so the record of the repair survives even if the caller's change is refused.
            self.write({}, None, events)
            return {}, None, events

    def archive(self, batch: Batch) -> None:
        """Append a finished batch to the bounded history. Caller holds the lock."""
        self.history.append(batch)

    def counted(self, document: dict, before: Batch | None, after: Batch | None) -> dict:
        """``document`` with its counters moved on by the write of ``after`` over ``before``; a document
        without counters (an older release's) gets them built once, here, under the caller's lock."""
        value = counters.after_change(self.counters_in(document, before, None), before, after, self._on_time)
        return {**document, "counters": value.to_dict()}

    def counters_in(self, document: dict | None, current: Batch | None, history: tuple | None) -> Counters:
        """The counters ``document`` holds, else rebuilt from the batches on file and an older
        release's metrics state file (:func:`utils.counters.rebuild`). Reads only."""
        try:
            return Counters.from_dict((document or {}).get("counters"))
        except CountersError:
            pass  # none, or a hand-edited one: rebuilt like missing ones, it must not stop the tracker
        if history is None:
            try:
                history = self.history.all_batches()
            except StorageError:
                history = ()  # the next start moves it aside; its batches cannot be counted
        legacy = counters.load_legacy_metrics_state(sibling_file(self.path, "metrics"))
        return counters.rebuild(current, history, self._on_time, legacy)

    def _on_time(self, batch: Batch) -> bool:
        """Whether a finished batch completed by its stored deadline (an older record without one: the
        first deadline of the settings after its start, built only then). Failed or abandoned: False."""
        if batch.state != COMPLETED or batch.ended_at is None:
            return False
        if batch.deadline_at is not None:
            return batch.ended_at <= batch.deadline_at
        return batch.ended_at <= self.config.deadline().first_after(batch.started_at)

    def history_has_id(self, batch_id: str) -> bool:
        """Whether a kept batch has ``batch_id``; False when the history cannot be read (archiving moves a corrupt
        one aside, and its ids cannot be known)."""
        try:
            return self.history.contains_id(batch_id)
        except CorruptStateError:
            return False

    def update_excuses(self, change, now: float) -> None:
        """Apply ``change`` to the skipped dates and pauses (:class:`utils.jobs.Excuses`) under the lock. They are a
        top-level key of the tracker document, which the write path keeps whatever it holds."""
        from utils.jobs import EXCUSED_KEY, Excuses

        with self.locked():
            document, current, events = self.read_for_update(now)
            excuses = change(Excuses.from_document(document))
            self.write({**document, EXCUSED_KEY: excuses.to_dict()}, current, events)

    def excuses(self):
        """The skipped dates and pauses on file (:class:`utils.jobs.Excuses`; none when unreadable). The monitor
        asks at every check, then reads the snapshot: one parse of the tracker file serves both."""
        from utils.jobs import Excuses

        try:
            document = self._document.read()
        except StorageError:  # reported by snapshot() (tracker unreadable); no excuses meanwhile
            return Excuses()
        cached = self._excuses
        if cached is not None and cached[0] is document:
            return cached[1]
        excuses = Excuses.from_document(document)
        self._excuses = (document, excuses)
        return excuses

    def snapshot(self) -> Snapshot:
        """Read the tracker file and the history summary without locking and without repairing anything."""
        current, events, error, document = None, (), None, None
        try:
            document = self._document.read()
            # ``is not None``: an empty object is corrupt here exactly as it is for writers.
            if document is not None:
                current, events = _parse_tracker(document)
        except StorageError as exc:
            error = str(exc)
        history, totals, history_error = (), None, None
        try:
            view = self.history.read()
            history, totals = view.window, view.totals
        except StorageError as exc:
            history_error = str(exc)
        counters = None if error is not None else self.counters_in(document, current, None)
        return Snapshot(current, history, events, error, history_error, counters, totals)

    def newest_batches(self, count: int) -> list[Batch]:
        """The current batch and the newest kept ones, newest first, at most ``count``: what ``history`` prints,
        read from the archive's end when the summary's window is too short."""
        current = self.snapshot().current
        archived = self.history.newest(count)
        newest = ([current] if current is not None else []) + [
            b for b in archived if current is None or b.id != current.id
        ]
        return newest[:count]
