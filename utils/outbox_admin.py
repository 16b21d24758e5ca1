"""The outbox's sidecar record, and what operators do with it: list and re-queue.

Every message in the outbox has a JSON sidecar next to its ``.eml`` (see
:mod:`utils.outbox` for the layout). :class:`QueuedMessage` is that sidecar read into one
value (keys this release does not know are kept in ``extra`` and written back);
:func:`listing_rows` and :func:`retry` back ``batch_completion_monitor outbox list|retry``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from utils.deadline import format_duration
from utils.mail_compose import ALERT
from utils.state_store import StorageError, write_bytes_atomically, write_json_atomically

if TYPE_CHECKING:
    from utils.outbox import Outbox

LOGGER = logging.getLogger("utils.outbox")

MIN_ID_PREFIX = 6


class UnknownMessageError(ValueError):
    """An id given to :func:`retry` names no failed message (or more than one)."""


@dataclasses.dataclass(frozen=True)
class QueuedMessage:
    """A message in the outbox: its sidecar record and where it lives (``state``: the directory).

    ``copy``: where the transport keeps its own copy of a delivered message (the ``.eml``
    files of :class:`~utils.transports.FileTransport`); ``sent/`` then holds the record only.
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
    state: str = "pending"  # pending | sent | failed (not stored: the directory says it)
    incident: str | None = None  # X-Batch-Incident: messages of one incident leave in order
    seq: int = 0  # enqueue order (0: stored by a version without it, so older than any numbered one)
    delivered_at: float | None = None
    receipt: str | None = None
    copy: str | None = None
    failed_at: float | None = None
    previous_error: str | None = None
    requeued_at: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    _REQUIRED = ("id", "message_id", "subject", "kind", "type", "recipients", "sender", "created_at", "attempts")
    _OPTIONAL = ("delivered_at", "receipt", "copy", "failed_at", "previous_error", "requeued_at")

    @classmethod
    def from_dict(cls, record: Mapping, state: str) -> QueuedMessage:
        known = (*cls._REQUIRED, "next_attempt_at", "last_error", "incident", "seq", *cls._OPTIONAL)
        return cls(
            id=record["id"],
            message_id=record["message_id"],
            subject=record.get("subject", ""),
            kind=record.get("kind", ""),
            type=record.get("type", ALERT),
            recipients=tuple(record.get("recipients", ())),
            sender=record.get("sender", ""),
            created_at=float(record.get("created_at", 0.0)),
            attempts=int(record.get("attempts", 0)),
            next_attempt_at=float(record.get("next_attempt_at", 0.0)),
            last_error=record.get("last_error"),
            state=state,
            incident=record.get("incident"),
            seq=int(record.get("seq", 0)),
            **{key: record.get(key) for key in cls._OPTIONAL},
            extra={k: v for k, v in record.items() if k not in known},
        )

    def to_dict(self) -> dict:
        record = {
            **self.extra,
            **{key: getattr(self, key) for key in self._REQUIRED},
            "recipients": list(self.recipients),
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "incident": self.incident,
            "seq": self.seq,
        }
        record.update({key: getattr(self, key) for key in self._OPTIONAL if getattr(self, key) is not None})
        return record

    def replace(self, **changes: Any) -> QueuedMessage:
        return dataclasses.replace(self, **changes)


def listing_rows(outbox: Outbox, now: float) -> list[dict]:
    """Pending (in delivery order) then failed messages, as rows for ``outbox list``."""
    rows = []
    for message in [*outbox.pending(), *sorted(outbox.failed(), key=lambda m: (m.created_at, m.id))]:
        rows.append(
            {
                "state": message.state,
                "id": message.id,
                "type": message.type,
                "incident": message.incident,
                "subject": message.subject,
                "attempts": message.attempts,
                "last_error": message.last_error,
                "created_at": message.created_at,
                "age": format_duration(now - message.created_at),
                "next_attempt_at": message.next_attempt_at if message.state == "pending" else None,
            }
        )
    return rows


def retry(outbox: Outbox, ids: list[str] | None = None) -> list[QueuedMessage]:
    """Move failed messages back to pending (all of them when ``ids`` is None); return them.

    Each id is a failed message's id or a unique prefix of at least ``MIN_ID_PREFIX``
    characters. Every id is checked first: an unknown or ambiguous one raises
    :class:`UnknownMessageError` and nothing moves. A re-queued message has its attempts
    reset and is due now; it keeps its ``seq``, so it still goes before later pending
    messages of its incident. Runs under the delivery lock (never during a pass).
    """
    if not os.path.isdir(outbox.failed_dir):  # nothing ever failed: check the ids, create nothing
        for wanted in ids or ():
            _resolve(wanted, {})
        return []
    with outbox.delivery_lock():
        failed = {m.id: m for m in outbox.failed()}
        if ids is None:
            chosen = sorted(failed)
        else:
            chosen = []
            for wanted in ids:
                oid = _resolve(wanted, failed)
                if oid not in chosen:
                    chosen.append(oid)
        now = outbox.clock()
        return [_requeue(outbox, failed[oid], now) for oid in chosen]


def _resolve(wanted: str, failed: Mapping[str, QueuedMessage]) -> str:
    if wanted in failed:
        return wanted
    matches = [oid for oid in failed if len(wanted) >= MIN_ID_PREFIX and oid.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownMessageError(f"id {wanted!r} matches {len(matches)} failed messages; give more characters")
    raise UnknownMessageError(
        f"no failed message with id {wanted!r} ({len(failed)} failed; give an id shown by 'outbox list' "
        f"or a unique prefix of {MIN_ID_PREFIX}+ characters)"
    )


def _requeue(outbox: Outbox, message: QueuedMessage, now: float) -> QueuedMessage:
    """failed/ -> pending/: the message and its sidecar first, then the failed record (it decides).

    A crash before the failed record is gone leaves the message failed (the outbox's repair
    moves the copy back), never in both places.
    """
    oid = message.id
    try:
        with open(os.path.join(outbox.failed_dir, oid + ".eml"), "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise StorageError(f"cannot read the failed message {oid}: {exc.strerror or exc}") from exc
    requeued = message.replace(
        state="pending",
        attempts=0,
        next_attempt_at=now,
        previous_error=message.last_error,
        last_error=None,
        requeued_at=now,
        failed_at=None,
    )
    write_bytes_atomically(os.path.join(outbox.pending_dir, oid + ".eml"), raw)
    write_json_atomically(os.path.join(outbox.pending_dir, oid + ".json"), requeued.to_dict())
    try:
        os.unlink(os.path.join(outbox.failed_dir, oid + ".json"))
    except OSError as exc:
        raise StorageError(f"cannot re-queue {oid}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(outbox.failed_dir, oid + ".eml"))
    LOGGER.info("failed message %r (%s) re-queued for delivery", message.subject, message.message_id)
    return requeued
