"""What operators do with the outbox: ``batch_completion_monitor outbox list|retry``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from utils.deadline import format_duration
from utils.outbox import Outbox
from utils.outbox_store import QueuedMessage

MIN_ID_PREFIX = 6


class UnknownMessageError(ValueError):
    """An id given to :func:`retry` names no failed message (or more than one)."""


def listing_rows(outbox: Outbox, now: float) -> list[dict]:
    """Pending (in delivery order) then failed messages, as rows for ``outbox list``."""
    return [
        {
            "state": message.state,
            "id": message.id,
            "type": message.type,
            "channel": message.channel,
            "incident": message.incident,
            "subject": message.subject,
            "attempts": message.attempts,
            "last_error": message.last_error,
            "created_at": message.created_at,
            "age": format_duration(now - message.created_at),
            "next_attempt_at": message.next_attempt_at if message.state == "pending" else None,
        }
        for message in [*outbox.pending(), *sorted(outbox.failed(), key=lambda m: (m.created_at, m.id))]
    ]


def retry(outbox: Outbox, ids: list[str] | None = None) -> list[QueuedMessage]:
    """Move failed messages back to pending (all of them when ``ids`` is None); return them.

    Each id is a failed message's id or a unique prefix of at least ``MIN_ID_PREFIX``
    characters. Every id is checked first: an unknown or ambiguous one raises
    :class:`UnknownMessageError` and nothing moves. A re-queued message has its attempts
    reset and is due now; it keeps its ``seq``, so it still goes before later pending
    messages of its incident. Runs under the delivery lock (never during a pass).
    """
    if not os.path.isdir(os.path.join(outbox.directory, "failed")):  # nothing ever failed: create nothing
        for wanted in ids or ():
            _resolve(wanted, {})
        return []
    with outbox.delivery_lock():
        failed = {m.id: m for m in outbox.failed()}
        chosen = sorted(failed) if ids is None else list(dict.fromkeys(_resolve(wanted, failed) for wanted in ids))
        now = outbox.clock()
        return [outbox.requeue(failed[oid], now) for oid in chosen]


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
