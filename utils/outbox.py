"""The persistent outbox: every notification is held on disk until it is delivered.

Outbox (:class:`Outbox`): a directory that holds every notification until it is
delivered, across restarts and outages::

    <outbox>/pending/<id>.eml   the message, written atomically before any attempt
    <outbox>/pending/<id>.json  sidecar: recipients, incident, seq, attempts, next_attempt_at, last_error
    <outbox>/sent/              delivered messages (the newest ``keep`` are kept)
    <outbox>/failed/            messages refused permanently (5xx)
    <outbox>/<UTC>-<kind>-<type>-<id8>.eml   alerts "delivered" by :class:`FileTransport`

Each message is on disk once: it leaves ``pending/`` for ``sent/`` or ``failed/`` by a
rename, and when the transport keeps its own copy (``FileTransport.keeps_copy``: the
``.eml`` files above) ``sent/`` holds only the record, which names that copy.
The sidecar reads into one value, :class:`utils.outbox_admin.QueuedMessage`.

``<id>`` is a hash of the Message-ID, so enqueueing the same message twice is a
no-op. A delivered message moves to ``sent/`` only after the transport accepted it:
a crash in between repeats that one e-mail (same Message-ID) and never loses it. A disk
that refuses to record the move (full, read-only) does not repeat it: the outbox remembers
in memory what the server accepted and records it once the disk takes writes again.

Delivery (:meth:`Outbox.deliver_due`): transient failures (connection refused,
timeouts, SMTP 4xx, disconnects) are retried with exponential backoff (5 s doubling to
10 min) for as long as it takes; permanent ones (SMTP 5xx) are logged at ERROR and the
message moves to ``failed/``. Authentication and TLS problems are logged at ERROR but
retried: fixing the configuration and restarting must still deliver the alert.
Passwords never appear in logs or exception messages.

Order (:meth:`Outbox.pending`): messages leave in enqueue order (``seq``, stored in each
sidecar, so the order survives a restart). Per incident (header ``X-Batch-Incident``) a
message waits while an earlier message of the same incident is still pending (backing
off, or held itself): a recovery or reminder never overtakes its alert. A message refused
for good (``failed/``) no longer holds the later ones back.

Operators list pending and failed messages and put failed ones back in the queue with
``bin/batch_completion_monitor.py outbox list|retry`` (:mod:`utils.outbox_admin`).

Every directory the outbox creates is 0750 whatever the umask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr

from utils.deadline import format_duration
from utils.mail_compose import MAIL_POLICY, outbox_id
from utils.outbox_admin import QueuedMessage
from utils.state_store import StorageError, read_json_object, write_bytes_atomically, write_json_atomically
from utils.transports import KEEP_DELIVERED, DeliveryError, PermanentDeliveryError, ensure_private_dir

LOGGER = logging.getLogger(__name__)

BACKOFF_INITIAL_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 600.0
ORPHAN_MAX_AGE_SECONDS = 86_400
INCIDENT_HEADER = "X-Batch-Incident"


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


class Outbox:
    """The persistent outbox under ``directory``; see the module docstring for the layout.

    Enqueueing is idempotent per Message-ID and numbers messages in enqueue order (under an
    ``flock`` on ``<directory>/.enqueue.lock``). One delivery pass (or operator re-queue) at a
    time runs (an ``flock`` on ``<directory>/.deliver.lock``), across threads and processes.
    """

    def __init__(
        self,
        directory: str,
        *,
        clock: Callable[[], float] = time.time,
        keep: int = KEEP_DELIVERED,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ):
        self.directory = os.path.abspath(directory)
        self.clock = clock
        self.keep = keep
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.pending_dir = os.path.join(self.directory, "pending")
        self.sent_dir = os.path.join(self.directory, "sent")
        self.failed_dir = os.path.join(self.directory, "failed")
        # id -> sent-record fields of messages the transport accepted but the disk would not record
        # as sent (full, read-only): later passes record them instead of sending them again.
        self._accepted: dict[str, dict] = {}

    def _ensure_dirs(self) -> None:
        try:
            for path in (self.directory, self.pending_dir, self.sent_dir, self.failed_dir):
                ensure_private_dir(path)
        except OSError as exc:
            raise StorageError(f"cannot create the outbox {self.directory}: {exc.strerror or exc}") from exc

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt: 5, 10, 20, ... up to 600."""
        return min(self.backoff_max, self.backoff_initial * 2 ** max(0, attempts - 1))

    # ----- enqueue

    def enqueue(self, message: EmailMessage, *, kind: str, notification_type: str) -> QueuedMessage:
        """Store ``message`` durably before any delivery attempt; return its record.

        A message with the same Message-ID already pending, sent or failed is not
        stored again (its existing record is returned).
        """
        self._ensure_dirs()
        message_id = str(message["Message-ID"])
        oid = outbox_id(message_id)
        for state, directory in (("pending", self.pending_dir), ("sent", self.sent_dir), ("failed", self.failed_dir)):
            existing = self._read_sidecar(os.path.join(directory, oid + ".json"), state)
            if existing is not None:
                return existing
        now = self.clock()
        # The envelope takes bare addresses; the headers keep the display names ("Ops <ops@x>").
        recipients = [addr for _, addr in getaddresses([str(message["To"])]) if addr]
        incident = message[INCIDENT_HEADER]
        with self._file_lock(".enqueue.lock"):
            record = QueuedMessage(
                id=oid,
                message_id=message_id,
                subject=str(message["Subject"]),
                kind=kind,
                type=notification_type,
                incident=None if incident is None else str(incident),
                recipients=tuple(recipients),
                sender=parseaddr(str(message["From"]))[1],
                created_at=now,
                next_attempt_at=now,
                seq=self._next_seq(),
            )
            # The message first, then the sidecar: a sidecar always has its message.
            write_bytes_atomically(os.path.join(self.pending_dir, oid + ".eml"), message.as_bytes(policy=MAIL_POLICY))
            write_json_atomically(os.path.join(self.pending_dir, oid + ".json"), record.to_dict())
        return record

    def _next_seq(self) -> int:
        """One more than any pending or failed message's ``seq`` (failed ones may be re-queued).

        Pending is listed before failed: a message moving between the two meanwhile is
        written to failed/ before it leaves pending/, so it is seen in one of them.
        """
        records = self._records(self.pending_dir) + self._records(self.failed_dir)
        return 1 + max((r.seq for r in records), default=0)

    # ----- reads

    def _read_sidecar(self, path: str, state: str) -> QueuedMessage | None:
        """The sidecar at ``path``; None when there is none or it is not one (logged, left alone)."""
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

    def _records(self, directory: str, state: str = "pending") -> list[QueuedMessage]:
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {exc.strerror or exc}") from exc
        records = [self._read_sidecar(os.path.join(directory, name), state) for name in names]
        return [r for r in records if r is not None]

    def pending(self) -> list[QueuedMessage]:
        """Messages waiting for delivery in enqueue order (``seq``, then creation time)."""
        return sorted(self._records(self.pending_dir), key=lambda r: (r.seq, r.created_at, r.id))

    def _incident_from_message(self, oid: str) -> str | None:
        try:
            with open(os.path.join(self.pending_dir, oid + ".eml"), "rb") as handle:
                headers = BytesHeaderParser().parse(handle)
        except OSError:
            return None
        value = headers[INCIDENT_HEADER]
        return None if value is None else str(value)

    def sent(self) -> list[QueuedMessage]:
        return self._records(self.sent_dir, "sent")

    def failed(self) -> list[QueuedMessage]:
        return self._records(self.failed_dir, "failed")

    def next_attempt_at(self) -> float | None:
        """When the earliest pending message can go, or None when nothing is pending.

        A message held behind an earlier one of its incident cannot go before that one.
        """
        due = self._effective_due(self.pending())
        return min(due) if due else None

    @staticmethod
    def _effective_due(pending: list[QueuedMessage]) -> list[float]:
        latest: dict[str, float] = {}
        due: list[float] = []
        for item in pending:
            at = item.next_attempt_at
            if item.incident is not None:
                at = max(at, latest.get(item.incident, at))
                latest[item.incident] = at
            due.append(at)
        return due

    def summary(self) -> dict:
        """Counts for the monitor's state file, status page and gauges.

        ``pending``: messages queued (not yet delivered); ``failed``: messages refused for
        good (in ``failed/``, until an operator re-queues them); ``oldest_pending_at``: the
        ``created_at`` (UTC epoch) of the oldest queued message, None when none is queued.
        """
        pending = self.pending()
        return {
            "pending": len(pending),
            "oldest_pending_at": min((m.created_at for m in pending), default=None),
            "failed": len(self._records(self.failed_dir, "failed")),
        }

    # ----- delivery

    def delivery_lock(self) -> contextlib.AbstractContextManager[None]:
        """One delivery pass or operator re-queue at a time, across threads and processes."""
        return self._file_lock(".deliver.lock")

    @contextlib.contextmanager
    def _file_lock(self, name: str) -> Iterator[None]:
        self._ensure_dirs()
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def deliver_due(self, transport, *, now: float | None = None, retry_waiting: bool = False) -> DeliveryReport:
        """Try every pending message that is due, oldest first; return what happened.

        After a transient failure the rest of this pass's due messages are deferred
        to the same retry time without an attempt: they would meet the same outage.
        A message whose incident has an earlier message still pending after its turn
        (not due, deferred, or held itself) is held back: it never overtakes that one.
        With ``retry_waiting``, messages still backing off are due too: a process that
        just started may have a fixed configuration, and on-call should not wait out
        a back-off of up to ten minutes earned by the previous one.
        """
        delivered: list[QueuedMessage] = []
        receipts: list[str] = []
        deferred: list[QueuedMessage] = []
        failed: list[QueuedMessage] = []
        not_due = 0
        with self.delivery_lock():
            moment = self.clock() if now is None else now
            self._repair(moment)
            outage_until: float | None = None
            held: set[str] = set()  # incidents with an earlier message still pending: later ones wait
            for item in self.pending():
                accepted = self._accepted.get(item.id)
                if accepted is not None:  # already with the server: record it, never send it twice
                    record = self._finish(item, self.sent_dir, **accepted)  # StorageError while the disk refuses
                    del self._accepted[item.id]
                    LOGGER.info("alert %r (%s) recorded as delivered at last", item.subject, item.message_id)
                    delivered.append(record)
                    receipts.append(str(accepted["receipt"]))
                    continue
                if item.incident is not None and item.incident in held:
                    not_due += 1
                    continue
                if item.next_attempt_at > moment and not retry_waiting:
                    self._hold(held, item)
                    not_due += 1
                    continue
                if outage_until is not None:
                    self._update_pending(item.id, next_attempt_at=outage_until)
                    self._hold(held, item)
                    not_due += 1
                    continue
                raw = self._read_message(item)
                if raw is None:
                    continue
                try:
                    receipt = transport.send(
                        raw,
                        sender=item.sender,
                        recipients=list(item.recipients),
                        meta={"id": item.id, "kind": item.kind, "type": item.type},
                    )
                except PermanentDeliveryError as exc:
                    record = self._finish(
                        item, self.failed_dir, attempts=item.attempts + 1, last_error=str(exc), failed_at=moment
                    )
                    LOGGER.error(
                        "alert %r (%s) refused permanently, moved to %s: %s",
                        item.subject,
                        item.message_id,
                        self.failed_dir,
                        exc,
                    )
                    failed.append(record)
                except DeliveryError as exc:
                    attempts = item.attempts + 1
                    retry_at = moment + self.backoff(attempts)
                    record = self._update_pending(
                        item.id, attempts=attempts, next_attempt_at=retry_at, last_error=str(exc)
                    )
                    outage_until = retry_at
                    self._hold(held, item)
                    log = LOGGER.error if exc.loud else LOGGER.warning
                    log(
                        "could not deliver alert %r (attempt %d, retry in %s): %s",
                        item.subject,
                        attempts,
                        format_duration(retry_at - moment),
                        exc,
                    )
                    if record is not None:
                        deferred.append(record)
                else:
                    # A transport that keeps its own copy (.eml files): sent/ holds the record only.
                    accepted = {"delivered_at": moment, "receipt": receipt}
                    if getattr(transport, "keeps_copy", False):
                        accepted["copy"] = receipt
                    try:
                        record = self._finish(item, self.sent_dir, **accepted)
                    except StorageError as exc:
                        self._accepted[item.id] = accepted
                        LOGGER.error(
                            "alert %r (%s) was delivered via %s but cannot be recorded as sent (%s); "
                            "this process will not send it again",
                            item.subject,
                            item.message_id,
                            receipt,
                            exc,
                        )
                        raise
                    LOGGER.info(
                        "alert delivered via %s: %r to %s (Message-ID %s)",
                        receipt,
                        item.subject,
                        ", ".join(item.recipients),
                        item.message_id,
                    )
                    delivered.append(record)
                    receipts.append(receipt)
            self._prune(self.sent_dir)
            self._prune(self.failed_dir)
        return DeliveryReport(
            delivered=tuple(delivered),
            receipts=tuple(receipts),
            deferred=tuple(deferred),
            failed=tuple(failed),
            not_due=not_due,
            next_attempt_at=self.next_attempt_at(),
        )

    @staticmethod
    def _hold(held: set[str], item: QueuedMessage) -> None:
        if item.incident is not None:
            held.add(item.incident)

    def _read_message(self, item: QueuedMessage) -> bytes | None:
        path = os.path.join(self.pending_dir, item.id + ".eml")
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            LOGGER.error("outbox message %s has no .eml file; dropping its record", item.id)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.pending_dir, item.id + ".json"))
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _update_pending(self, oid: str, **changes: object) -> QueuedMessage | None:
        path = os.path.join(self.pending_dir, oid + ".json")
        record = self._read_sidecar(path, "pending")
        if record is None:
            return None
        record = record.replace(**changes)
        write_json_atomically(path, record.to_dict())
        return record

    def _finish(self, item: QueuedMessage, target_dir: str, **changes: object) -> QueuedMessage:
        """Move a pending message to ``sent/`` or ``failed/``: the record first (it decides), then the .eml
        (dropped instead when the record names the transport's own ``copy``: one copy on disk)."""
        source_json = os.path.join(self.pending_dir, item.id + ".json")
        state = "sent" if target_dir == self.sent_dir else "failed"
        record = (self._read_sidecar(source_json, "pending") or item).replace(state=state, **changes)
        write_json_atomically(os.path.join(target_dir, item.id + ".json"), record.to_dict())
        try:
            os.unlink(source_json)
            self._settle_message(os.path.join(self.pending_dir, item.id + ".eml"), target_dir, record)
        except OSError as exc:
            # The record in target_dir already says what happened; _repair finishes the move.
            LOGGER.warning("could not finish moving outbox message %s: %s", item.id, exc)
        return record

    def _repair(self, now: float) -> None:
        """Finish moves a crash interrupted; drop message files whose enqueue never completed."""
        try:
            names = os.listdir(self.pending_dir)
        except FileNotFoundError:
            return
        for name in names:
            oid, _, ext = name.rpartition(".")
            path = os.path.join(self.pending_dir, name)
            for target, state in ((self.sent_dir, "sent"), (self.failed_dir, "failed")):
                if os.path.exists(os.path.join(target, oid + ".json")):
                    with contextlib.suppress(OSError):
                        if ext == "eml":
                            record = self._read_sidecar(os.path.join(target, oid + ".json"), state)
                            self._settle_message(path, target, record)
                        else:
                            os.unlink(path)
                    break
            else:
                if ext == "eml" and not os.path.exists(os.path.join(self.pending_dir, oid + ".json")):
                    with contextlib.suppress(OSError):
                        if now - os.stat(path).st_mtime > ORPHAN_MAX_AGE_SECONDS:
                            os.unlink(path)
                elif ".tmp-" in name:
                    with contextlib.suppress(OSError):
                        if now - os.stat(path).st_mtime > ORPHAN_MAX_AGE_SECONDS:
                            os.unlink(path)

    @staticmethod
    def _settle_message(path: str, target_dir: str, record: QueuedMessage | None) -> None:
        """Move the ``.eml`` at ``path`` next to its record, or drop it when the transport kept a copy."""
        if record is not None and record.copy:
            os.unlink(path)
        else:
            os.replace(path, os.path.join(target_dir, os.path.basename(path)))

    def _prune(self, directory: str) -> None:
        """Keep the newest ``keep`` messages in ``directory`` (by record time)."""
        try:
            names = [n for n in os.listdir(directory) if n.endswith(".json")]
        except OSError:
            return
        if len(names) <= self.keep:
            return

        def age_key(name: str) -> tuple[float, str]:
            try:
                return (os.stat(os.path.join(directory, name)).st_mtime, name)
            except OSError:
                return (0.0, name)

        for name in sorted(names, key=age_key)[: len(names) - self.keep]:
            for ext in (".json", ".eml"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name[:-5] + ext))
