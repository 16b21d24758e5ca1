"""The outbox directory on disk: each message's record, and the file handling under it::

    <outbox>/pending/<id>.eml   the message, written atomically before any attempt (JSON for the HTTP channels)
    <outbox>/pending/<id>.json  sidecar: recipients, incident, seq, attempts, next_attempt_at, last_error
    <outbox>/sent/              delivered messages (the newest ``keep`` are kept)
    <outbox>/failed/            messages refused permanently (the newest ``keep`` are kept)

A message is on disk once: it moves record first (the record decides), then its ``.eml``, which is
dropped when the transport keeps its own copy (the record's ``copy``). :meth:`OutboxStore.repair`
finishes a move a crash interrupted. Every directory is 0750 whatever the umask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from email.parser import BytesHeaderParser
from typing import Any

from utils.mail_compose import ALERT
from utils.state_store import (
    StorageError,
    ensure_directory,
    exclusive_lock,
    read_json_object,
    write_bytes_atomically,
    write_json_atomically,
)
from utils.transports import KEEP_DELIVERED

LOGGER = logging.getLogger("utils.outbox")  # one logger for the whole outbox: operators grep its name

ORPHAN_MAX_AGE_SECONDS = 86_400
INCIDENT_HEADER = "X-Batch-Incident"
STATES = ("pending", "sent", "failed")
# Sidecar values that are converted when read (JSON stores lists, and may store a float as an int).
_CONVERT = (("recipients", tuple), ("created_at", float), ("attempts", int), ("next_attempt_at", float), ("seq", int))


@dataclasses.dataclass(frozen=True)
class QueuedMessage:
    """A message's sidecar record read into one value; ``state`` (not stored) is its directory.

    Keys this release does not know are kept in ``extra`` and written back. ``copy``: where
    the transport keeps its own copy of a delivered message (``FileTransport``'s ``.eml``).
    """

    id: str
    message_id: str
    subject: str = ""
    kind: str = ""
    type: str = ALERT
    recipients: tuple[str, ...] = ()
    sender: str = ""
    created_at: float = 0.0
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    state: str = "pending"
    incident: str | None = None  # X-Batch-Incident: messages of one incident leave in order
    channel: str = "email"  # where it goes: "email", "webhook", "alertmanager@host:port" (the bytes: JSON)
    seq: int = 0  # enqueue order (0: stored by a version without it, so older than any numbered one)
    delivered_at: float | None = None
    receipt: str | None = None
    copy: str | None = None
    failed_at: float | None = None
    previous_error: str | None = None
    requeued_at: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    _OPTIONAL = ("delivered_at", "receipt", "copy", "failed_at", "previous_error", "requeued_at")  # stored when set

    @classmethod
    def from_dict(cls, record: Mapping, state: str) -> QueuedMessage:
        """The record of a message in ``state``; raises TypeError or ValueError when it is malformed."""
        stored = {field.name for field in dataclasses.fields(cls)} - {"state", "extra"}
        values = {key: record[key] for key in stored if key in record}
        for key, convert in _CONVERT:
            if key in values:
                values[key] = convert(values[key])
        return cls(**values, state=state, extra={k: v for k, v in record.items() if k not in stored})

    def to_dict(self) -> dict:
        record = dict(self.extra)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in ("state", "extra") and not (value is None and field.name in self._OPTIONAL):
                record[field.name] = list(value) if field.name == "recipients" else value
        return record

    def replace(self, **changes: Any) -> QueuedMessage:
        return dataclasses.replace(self, **changes)


class OutboxStore:
    """The files of the outbox under ``directory``; see the module docstring for the layout."""

    def __init__(self, directory: str, *, keep: int = KEEP_DELIVERED):
        self.directory = os.path.abspath(directory)
        self.keep = keep

    def _file(self, state: str, name: str = "") -> str:
        return os.path.join(self.directory, state, name)

    def _ensure_dirs(self) -> None:
        try:
            for path in (self.directory, *(self._file(state) for state in STATES)):
                ensure_directory(path, exact=True)
        except OSError as exc:
            raise StorageError(f"cannot create the outbox {self.directory}: {exc.strerror or exc}") from exc

    def _lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        self._ensure_dirs()
        return exclusive_lock(os.path.join(self.directory, name))

    def delivery_lock(self) -> contextlib.AbstractContextManager[None]:
        """One delivery pass or operator re-queue at a time, across threads and processes."""
        return self._lock(".deliver.lock")

    def read_sidecar(self, state: str, oid: str) -> QueuedMessage | None:
        """The record of ``oid`` in ``state``; None when there is none or it is not one (logged, left alone)."""
        path = self._file(state, oid + ".json")
        try:
            record = read_json_object(path)
        except StorageError as exc:
            LOGGER.error("outbox record %s is unreadable (%s); leaving it", path, exc)
            return None
        if record is None or not isinstance(record.get("id"), str) or not isinstance(record.get("message_id"), str):
            return None
        if state == "pending" and "incident" not in record:  # stored by a version without it: the header has it
            record["incident"] = self._incident_from_message(record["id"])
        try:
            return QueuedMessage.from_dict(record, state)
        except (TypeError, ValueError) as exc:
            LOGGER.error("outbox record %s is malformed (%s); leaving it", path, exc)
            return None

    def _incident_from_message(self, oid: str) -> str | None:
        try:
            with open(self._file("pending", oid + ".eml"), "rb") as handle:
                value = BytesHeaderParser().parse(handle)[INCIDENT_HEADER]
        except OSError:
            return None
        return None if value is None else str(value)

    def _records(self, state: str) -> list[QueuedMessage]:
        try:
            names = sorted(n for n in os.listdir(self._file(state)) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {self._file(state)}: {exc.strerror or exc}") from exc
        records = [self.read_sidecar(state, name[:-5]) for name in names]
        return [r for r in records if r is not None]

    def pending(self) -> list[QueuedMessage]:
        """Messages waiting for delivery in enqueue order (``seq``, then creation time)."""
        return sorted(self._records("pending"), key=lambda r: (r.seq, r.created_at, r.id))

    def sent(self) -> list[QueuedMessage]:
        return self._records("sent")

    def failed(self) -> list[QueuedMessage]:
        return self._records("failed")

    def read_message(self, item: QueuedMessage) -> bytes | None:
        """The pending message's bytes; None (its record dropped) when its ``.eml`` is gone."""
        path = self._file("pending", item.id + ".eml")
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            LOGGER.error("outbox message %s has no .eml file; dropping its record", item.id)
            with contextlib.suppress(OSError):
                os.unlink(self._file("pending", item.id + ".json"))
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def write_pending(self, record: QueuedMessage, raw: bytes) -> None:
        """Store a message in ``pending/``: the message first, so a sidecar always has its message."""
        write_bytes_atomically(self._file("pending", record.id + ".eml"), raw)
        write_json_atomically(self._file("pending", record.id + ".json"), record.to_dict())

    def update_pending(self, oid: str, **changes: object) -> QueuedMessage | None:
        """Rewrite a pending record with ``changes``; None when it is no longer pending."""
        record = self.read_sidecar("pending", oid)
        if record is None:
            return None
        record = record.replace(**changes)
        write_json_atomically(self._file("pending", oid + ".json"), record.to_dict())
        return record

    def finish(self, item: QueuedMessage, state: str, **changes: object) -> QueuedMessage:
        """Move a pending message to ``sent`` or ``failed``; return its new record.

        The record is written first (it decides; a StorageError then leaves the message
        pending), then the pending files go; a failure there is logged and :meth:`repair` finishes.
        """
        record = (self.read_sidecar("pending", item.id) or item).replace(state=state, **changes)
        write_json_atomically(self._file(state, item.id + ".json"), record.to_dict())
        try:
            os.unlink(self._file("pending", item.id + ".json"))
            self._settle_message(self._file("pending", item.id + ".eml"), state, record)
        except OSError as exc:
            LOGGER.warning("could not finish moving outbox message %s: %s", item.id, exc)
        return record

    def _settle_message(self, path: str, state: str, record: QueuedMessage | None) -> None:
        """Move the pending ``.eml`` at ``path`` to ``state``, or drop it when the transport kept a copy."""
        if record is not None and record.copy:
            os.unlink(path)
        else:
            os.replace(path, self._file(state, os.path.basename(path)))

    def requeue(self, message: QueuedMessage, now: float) -> QueuedMessage:
        """Move a failed message back to pending, due at ``now`` with its attempts reset; raise StorageError.

        The pending copy is written before the failed record goes (it decides): a crash in
        between leaves the message failed (:meth:`repair` moves the copy back), never in both places.
        """
        oid = message.id
        try:
            with open(self._file("failed", oid + ".eml"), "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise StorageError(f"cannot read the failed message {oid}: {exc.strerror or exc}") from exc
        reset = {"state": "pending", "attempts": 0, "last_error": None, "failed_at": None}
        requeued = message.replace(**reset, next_attempt_at=now, requeued_at=now, previous_error=message.last_error)
        self.write_pending(requeued, raw)
        try:
            os.unlink(self._file("failed", oid + ".json"))
        except OSError as exc:
            raise StorageError(f"cannot re-queue {oid}: {exc.strerror or exc}") from exc
        with contextlib.suppress(OSError):
            os.unlink(self._file("failed", oid + ".eml"))
        LOGGER.info("failed message %r (%s) re-queued for delivery", message.subject, message.message_id)
        return requeued

    def repair(self, now: float) -> None:
        """Finish moves a crash interrupted; drop files of an enqueue that never completed after a day."""
        try:
            names = os.listdir(self._file("pending"))
        except FileNotFoundError:
            return
        for name in names:
            oid, _, ext = name.rpartition(".")
            path = self._file("pending", name)
            moved = next((s for s in ("sent", "failed") if os.path.exists(self._file(s, oid + ".json"))), None)
            with contextlib.suppress(OSError):
                if moved and ext == "eml":
                    self._settle_message(path, moved, self.read_sidecar(moved, oid))
                elif moved:
                    os.unlink(path)
                elif (ext == "eml" and not os.path.exists(self._file("pending", oid + ".json"))) or ".tmp-" in name:
                    if now - os.stat(path).st_mtime > ORPHAN_MAX_AGE_SECONDS:
                        os.unlink(path)

    def prune(self) -> None:
        """Keep the newest ``keep`` messages in ``sent/`` and in ``failed/`` (by record time)."""
        for state in ("sent", "failed"):
            try:
                names = [n for n in os.listdir(self._file(state)) if n.endswith(".json")]
            except OSError:
                continue
            if len(names) <= self.keep:
                continue
            by_age = sorted(names, key=lambda name: (_mtime(self._file(state, name)), name))
            for name in by_age[: len(names) - self.keep]:
                for ext in (".json", ".eml"):
                    with contextlib.suppress(OSError):
                        os.unlink(self._file(state, name[:-5] + ext))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
