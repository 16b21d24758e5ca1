"""The persistent outbox: every notification is held on disk until it is delivered.

:class:`Outbox` queues messages in an :class:`~utils.outbox_store.OutboxStore` (the layout is there), idempotently per
Message-ID. A message is recorded as sent only after the transport accepted it: a crash in between repeats that one
e-mail, never loses it; a disk that refuses the record (full, read-only) repeats nothing, as the outbox remembers what
the server accepted. Transient failures are retried with exponential backoff (5 s doubling to 10 min) for as long as it
takes; permanent ones (SMTP 5xx, HTTP 4xx) go to ``failed/``. Messages leave in enqueue order, and one never overtakes
an earlier pending message of its incident (``X-Batch-Incident``) on its channel: e-mail, or one of the HTTP channels
(Alertmanager, webhook) whose JSON is queued beside the e-mail of the same notification, each channel its own queue.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr

from utils.deadline import format_duration
from utils.mail_compose import MAIL_POLICY, outbox_id
from utils.outbox_store import INCIDENT_HEADER, STATES, OutboxStore, QueuedMessage
from utils.state_store import StorageError
from utils.transports import KEEP_DELIVERED, DeliveryError, PermanentDeliveryError

LOGGER = logging.getLogger(__name__)

EMAIL = "email"  # the channel of e-mails; the others are named by utils.monitor.make_channels

BACKOFF_INITIAL_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 600.0


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """What one delivery pass did. ``next_attempt_at`` is when a pending message is next due (or None)."""

    delivered: tuple[QueuedMessage, ...] = ()
    receipts: tuple[str, ...] = ()
    deferred: tuple[QueuedMessage, ...] = ()  # failed transiently this pass, retried later
    failed: tuple[QueuedMessage, ...] = ()  # refused permanently, moved to failed/
    not_due: int = 0
    next_attempt_at: float | None = None

    @property
    def attempt_failures(self) -> int:
        return len(self.deferred) + len(self.failed)


class Outbox(OutboxStore):
    """The persistent outbox under ``directory``: enqueue, and delivery passes (one at a time,
    under :meth:`delivery_lock`, across threads and processes)."""

    def __init__(
        self,
        directory: str,
        *,
        clock: Callable[[], float] = time.time,
        keep: int = KEEP_DELIVERED,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ):
        super().__init__(directory, keep=keep)
        self.clock = clock
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # id -> sent-record fields of messages the transport accepted but the disk would not yet record
        # as sent (full, read-only): later passes record them instead of sending them again.
        self._accepted: dict[str, dict] = {}

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt: 5, 10, 20, ... up to 600."""
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, attempts - 1))

    def enqueue(
        self, message: EmailMessage, *, kind: str, notification_type: str, channel: str = EMAIL, payload: bytes = b""
    ) -> QueuedMessage:
        """Store ``message`` durably before any delivery attempt; return its record.

        For another ``channel`` than e-mail, ``payload`` (its JSON) is stored instead, under the message's
        Message-ID, subject and incident. A message with the same Message-ID and channel already pending,
        sent or failed is not stored again (its existing record is returned).
        """
        self._ensure_dirs()
        message_id = str(message["Message-ID"])
        oid = outbox_id(message_id if channel == EMAIL else f"{channel} {message_id}")
        for state in STATES:
            existing = self.read_sidecar(state, oid)
            if existing is not None:
                return existing
        now = self.clock()
        incident = message[INCIDENT_HEADER]
        with self._lock(".enqueue.lock"):
            # Pending is listed before failed (re-queued messages keep their seq): a message moving
            # between the two meanwhile is written to failed/ before it leaves pending/.
            seq = 1 + max((r.seq for r in self._records("pending") + self._records("failed")), default=0)
            record = QueuedMessage(
                id=oid,
                message_id=message_id,
                subject=str(message["Subject"]),
                kind=kind,
                type=notification_type,
                incident=None if incident is None else str(incident),
                # The envelope takes bare addresses; the headers keep the display names ("Ops <ops@x>").
                recipients=tuple(addr for _, addr in getaddresses([str(message["To"])]) if addr)
                if channel == EMAIL
                else (),
                sender=parseaddr(str(message["From"]))[1],
                created_at=now,
                next_attempt_at=now,
                seq=seq,
                channel=channel,
            )
            self.write_pending(record, message.as_bytes(policy=MAIL_POLICY) if channel == EMAIL else payload)
        return record

    def next_attempt_at(self) -> float | None:
        """When the earliest pending message can go, or None when nothing is pending.

        A message held behind an earlier one of its incident cannot go before that one.
        """
        latest: dict[tuple[str, str], float] = {}
        due: list[float] = []
        for item in self.pending():
            at = item.next_attempt_at
            if item.incident is not None:
                key = (item.channel, item.incident)
                at = latest[key] = max(at, latest.get(key, at))
            due.append(at)
        return min(due, default=None)

    def summary(self) -> dict:
        """Counts for the monitor's state file, status page and gauges: ``pending`` and ``failed``
        messages, and ``oldest_pending_at``, the ``created_at`` (UTC epoch) of the oldest pending one or None."""
        pending = self.pending()
        return {
            "pending": len(pending),
            "oldest_pending_at": min((m.created_at for m in pending), default=None),
            "failed": len(self.failed()),
        }

    def deliver_due(self, transport, *, now: float | None = None, retry_waiting: bool = False) -> DeliveryReport:
        """Try every pending message that is due, oldest first; return what happened.

        ``transport``: the e-mail transport, or a mapping channel -> transport; a message whose
        channel has none (its URL was unset since) is refused for good (``outbox retry`` once set again).
        Each channel is its own queue: after a transient failure the rest of this pass's
        due messages of that channel are deferred to the same retry time without an attempt:
        they would meet the same outage (an Alertmanager down holds up no e-mail).
        A message whose incident has an earlier message of its channel still pending after
        its turn (not due, deferred, or held itself) is held back: it never overtakes that one.
        With ``retry_waiting``, messages still backing off are due too: a process that
        just started may have a fixed configuration, and on-call should not wait out
        a back-off of up to ten minutes earned by the previous one.
        """
        done: dict[str, list] = {"delivered": [], "receipts": [], "deferred": [], "failed": []}
        not_due = 0
        transports = transport if isinstance(transport, Mapping) else {EMAIL: transport}
        with self.delivery_lock():
            moment = self.clock() if now is None else now
            self.repair(moment)
            outage_until: dict[str, float] = {}  # channel -> retry time of the outage this pass met
            held: set[tuple[str, str]] = set()  # (channel, incident) with an earlier message still pending
            for item in self.pending():
                if item.id in self._accepted:  # already with the server: record it, never send it twice
                    self._record_sent(item, done)
                    LOGGER.info("alert %r (%s) recorded as delivered at last", item.subject, item.message_id)
                    continue
                key = (item.channel, item.incident)
                blocked = key in held or (item.next_attempt_at > moment and not retry_waiting)
                if blocked or item.channel in outage_until:
                    if not blocked:  # due, but this pass met an outage: same retry time, no attempt
                        self.update_pending(item.id, next_attempt_at=outage_until[item.channel])
                    not_due += 1
                else:
                    retry_at = self._attempt(transports.get(item.channel), item, moment, done)
                    if retry_at is None:
                        continue  # delivered, refused for good, or gone: it holds nothing back
                    outage_until[item.channel] = retry_at
                if item.incident is not None:
                    held.add(key)
            self.prune()
        return DeliveryReport(
            **{key: tuple(values) for key, values in done.items()},
            not_due=not_due,
            next_attempt_at=self.next_attempt_at(),
        )

    def _attempt(self, transport, item: QueuedMessage, moment: float, done: dict[str, list]) -> float | None:
        """Send ``item`` once and file the outcome in ``done``; return its retry time after a transient failure."""
        raw = self.read_message(item)
        if raw is None:
            return None
        meta = {"id": item.id, "kind": item.kind, "type": item.type, "channel": item.channel}
        meta["message_id"] = item.message_id
        try:
            if transport is None:
                raise PermanentDeliveryError(f"channel {item.channel} is not configured (any more)", loud=True)
            receipt = transport.send(raw, sender=item.sender, recipients=list(item.recipients), meta=meta)
        except PermanentDeliveryError as exc:
            record = self.finish(item, "failed", attempts=item.attempts + 1, last_error=str(exc), failed_at=moment)
            done["failed"].append(record)
            failed_dir = self._file("failed")
            LOGGER.error(
                "alert %r (%s) refused permanently, moved to %s: %s", item.subject, item.message_id, failed_dir, exc
            )
            return None
        except DeliveryError as exc:
            attempts = item.attempts + 1
            retry_at = moment + self.backoff(attempts)
            record = self.update_pending(item.id, attempts=attempts, next_attempt_at=retry_at, last_error=str(exc))
            log = LOGGER.error if exc.loud else LOGGER.warning
            delay = format_duration(retry_at - moment)
            log("could not deliver alert %r (attempt %d, retry in %s): %s", item.subject, attempts, delay, exc)
            if record is not None:
                done["deferred"].append(record)
            return retry_at
        copy = receipt if getattr(transport, "keeps_copy", False) else None  # then sent/ holds the record only
        self._accepted[item.id] = {"delivered_at": moment, "receipt": receipt, "copy": copy}
        try:
            self._record_sent(item, done)
        except StorageError as exc:
            LOGGER.error(
                "alert %r (%s) was delivered via %s but cannot be recorded as sent (%s); "
                "this process will not send it again",
                item.subject,
                item.message_id,
                receipt,
                exc,
            )
            raise
        recipients = f" to {', '.join(item.recipients)}" if item.recipients else ""  # a webhook has none
        LOGGER.info("alert delivered via %s: %r%s (Message-ID %s)", receipt, item.subject, recipients, item.message_id)
        return None

    def _record_sent(self, item: QueuedMessage, done: dict[str, list]) -> None:
        """Record ``item``, accepted by the server, as sent; it stays in ``_accepted`` while the disk refuses."""
        accepted = self._accepted[item.id]
        done["delivered"].append(self.finish(item, "sent", **accepted))
        done["receipts"].append(accepted["receipt"])
        del self._accepted[item.id]
