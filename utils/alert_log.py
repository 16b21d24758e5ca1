"""The monitor's state file, the notification log (``sibling_file(tracker_file, "monitor")``).

Written only by the monitor, read by the metrics collector and the status page. JSON keys (schema 1):
``schema_version``, ``watch_since``, ``last_check_at``, ``open_incidents`` {identity: record},
``pending_notifications`` (planned, not yet in the outbox), ``recent_alerts`` (the last 50 queued),
``counters``, ``outbox`` (its summary at the last check), ``reported`` (identities ever opened).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from utils.deadline import format_duration, format_utc
from utils.mail_compose import ALERT, REMINDER, outbox_id
from utils.model import Incident
from utils.numbers import finite_number
from utils.state_store import CorruptStateError, JsonStateStore, StorageError

LOGGER = logging.getLogger("utils.monitor")  # operators grep the monitor's log for "clock problem"

SCHEMA_VERSION = 1
MAX_RECENT_ALERTS = 50
MAX_REPORTED = 200
CLOCK_TOLERANCE_SECONDS = 5.0  # a stored instant this far ahead of now means a clock problem, not a race
COUNTER_KEYS = ("recoveries_sent", "reminders_sent", "delivery_failures", "permanent_failures")


def _number_or(value: object, default: float) -> float:
    number = finite_number(value)
    return default if number is None else number


def _incident_field(name: str) -> property:
    return property(lambda record: getattr(record.incident, name), doc=f"The incident's ``{name}``.")


@dataclasses.dataclass(frozen=True, slots=True)
class IncidentRecord:
    """An incident the log holds open: the detected incident and what was sent about it. ``continues``: the
    identity of the "missing" record a late start answered (the late chain keeps its alert); ``moved_to`` /
    ``moved_at``: where a hook moved the corrupt tracker file (only the monitor knows; the recovery says it)."""

    incident: Incident
    opened_at: float
    alerted_at: float | None = None
    last_notified_at: float | None = None
    reminders_sent: int = 0
    continues: str | None = None
    moved_to: str | None = None
    moved_at: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    _KEYS = ("kind", "key", "summary", "since", "batch_id", "opened_at", "alerted_at", "last_notified_at")
    _KEYS += ("reminders_sent", "continues", "moved_to", "moved_at")
    identity = _incident_field("identity")
    kind = _incident_field("kind")
    key = _incident_field("key")
    summary = _incident_field("summary")
    since = _incident_field("since")
    batch_id = _incident_field("batch_id")

    @property
    def last_notice_at(self) -> float | None:
        """When on-call last heard of it (the alert or the latest reminder); None before the alert."""
        return self.last_notified_at or self.alerted_at

    def replace(self, **changes: Any) -> IncidentRecord:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, record: object, where: str = "record") -> IncidentRecord:
        opened_at = finite_number(record.get("opened_at")) if isinstance(record, Mapping) else None
        if opened_at is None or "kind" not in record or "key" not in record:
            raise CorruptStateError(f"monitor state {where} is malformed")
        incident = Incident(
            kind=str(record["kind"]),
            key=str(record["key"]),
            summary=str(record.get("summary") or ""),
            since=_number_or(record.get("since"), opened_at),
            batch_id=record.get("batch_id"),
        )
        return cls(
            incident=incident,
            opened_at=opened_at,
            reminders_sent=int(_number_or(record.get("reminders_sent"), 0)),
            continues=record.get("continues"),
            moved_to=record.get("moved_to"),
            **{key: finite_number(record.get(key)) for key in ("alerted_at", "last_notified_at", "moved_at")},
            extra={k: v for k, v in record.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict:
        """The JSON record (also what :func:`utils.mail_compose.compose_message` reads)."""
        always = ("opened_at", "alerted_at", "last_notified_at", "reminders_sent")
        optional = {key: getattr(self, key) for key in ("continues", "moved_to", "moved_at")}
        return {
            **self.extra,
            **self.incident.to_dict(),
            **{key: getattr(self, key) for key in always},
            **{key: value for key, value in optional.items() if value is not None},
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """One notification (alert, recovery, reminder) about one incident. Planned (with ``record``, the incident
    as planned: a recovery outlives its record), then queued (``subject`` set). ``at``: when planned, then queued."""

    type: str
    kind: str
    key: str
    message_id: str
    at: float
    number: int = 0
    resolution: str | None = None
    subject: str | None = None
    record: IncidentRecord | None = None

    @property
    def identity(self) -> str:
        return f"{self.kind}:{self.key}"

    @property
    def outbox_id(self) -> str:
        return outbox_id(self.message_id)

    @classmethod
    def planned(cls, notification_type: str, record: IncidentRecord, message_id: str, now: float, **more) -> Notice:
        return cls(notification_type, record.kind, record.key, message_id, now, record=record, **more)

    @classmethod
    def from_dict(cls, entry: object) -> Notice:
        """A notice as written by this release, or a pending intent / recent alert of an older one."""
        if not isinstance(entry, Mapping) or not isinstance(entry.get("message_id"), str):
            raise CorruptStateError("monitor state has a malformed notification")
        record = entry.get("incident")
        record = None if record is None else IncidentRecord.from_dict(record, "notification")
        kind, key = entry.get("kind"), entry.get("key")
        if kind is None and record is not None:
            kind, key = record.kind, record.key
        return cls(
            type=str(entry.get("type", "alert")),
            kind=str(kind),
            key=str(key),
            message_id=entry["message_id"],
            at=_number_or(entry.get("at", entry.get("planned_at")), 0.0),
            number=int(_number_or(entry.get("number"), 0)),
            resolution=entry.get("resolution"),
            subject=entry.get("subject"),
            record=record,
        )

    def to_dict(self) -> dict:
        entry = {name: getattr(self, name) for name in ("at", "type", "kind", "key", "identity", "message_id")}
        if self.subject is not None:
            entry["subject"] = self.subject
        if self.record is not None:
            entry.update(incident=self.record.to_dict(), number=self.number, resolution=self.resolution)
        return entry


def fresh_counters() -> dict:
    return {"alerts_sent": {}, **dict.fromkeys(COUNTER_KEYS, 0)}


def fresh_outbox() -> dict:
    return {"pending": 0, "oldest_pending_at": None, "failed": 0}


@dataclasses.dataclass(slots=True)
class AlertLog:
    """The state file in memory, mutated by one check under the lock."""

    watch_since: float
    last_check_at: float | None = None
    open_incidents: dict[str, IncidentRecord] = dataclasses.field(default_factory=dict)
    pending: list[Notice] = dataclasses.field(default_factory=list)
    recent: list[Notice] = dataclasses.field(default_factory=list)
    counters: dict = dataclasses.field(default_factory=fresh_counters)
    outbox: dict = dataclasses.field(default_factory=fresh_outbox)
    reported: list[str] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)

    _KEYS = ("schema_version", "watch_since", "last_check_at", "open_incidents", "recent_alerts", "counters")
    _KEYS += ("pending_notifications", "outbox", "reported")

    @classmethod
    def from_dict(cls, document: Mapping) -> AlertLog:
        """The log in ``document``; CorruptStateError when it is not ours, StorageError when it is newer."""
        version = document.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptStateError("monitor state has no schema_version")
        if version > SCHEMA_VERSION:
            raise StorageError(f"monitor state has schema_version {version}; this release understands {SCHEMA_VERSION}")
        if finite_number(document.get("watch_since")) is None:
            raise CorruptStateError("monitor state has no valid watch_since")
        records, recent = document.get("open_incidents", {}), document.get("recent_alerts", [])
        if not isinstance(records, dict) or not isinstance(recent, list):
            raise CorruptStateError("monitor state has malformed open_incidents or recent_alerts")
        pending, counters = document.get("pending_notifications", []), document.get("counters") or {}
        if not isinstance(pending, list) or not isinstance(counters.get("alerts_sent", {}), dict):
            raise CorruptStateError("monitor state has malformed pending_notifications or counters")
        if not isinstance(document.get("reported", []), list):
            raise CorruptStateError("monitor state has a malformed reported list")
        return cls(
            watch_since=float(document["watch_since"]),
            last_check_at=finite_number(document.get("last_check_at")),
            open_incidents={
                ident: IncidentRecord.from_dict(record, f"record {ident!r}") for ident, record in records.items()
            },
            pending=[Notice.from_dict(entry) for entry in pending],
            recent=[notice for notice in map(_recent_notice, recent) if notice is not None],
            counters={**fresh_counters(), **counters},
            outbox=dict(document.get("outbox") or fresh_outbox()),
            reported=list(document.get("reported", [])),
            extra={k: v for k, v in document.items() if k not in cls._KEYS},
        )

    def to_dict(self) -> dict:
        return {
            **self.extra,
            "schema_version": SCHEMA_VERSION,
            "watch_since": self.watch_since,
            "last_check_at": self.last_check_at,
            "open_incidents": {ident: record.to_dict() for ident, record in self.open_incidents.items()},
            "recent_alerts": [notice.to_dict() for notice in self.recent],
            "counters": self.counters,
            "pending_notifications": [notice.to_dict() for notice in self.pending],
            "outbox": self.outbox,
            "reported": self.reported,
        }

    def remember(self, ident: str) -> None:
        """Note that ``ident`` was opened once: a one-shot report of it is never repeated."""
        if ident not in self.reported:
            self.reported.append(ident)
            del self.reported[:-MAX_REPORTED]

    def ever_reported(self) -> set[str]:
        return set(self.reported) | set(self.open_incidents) | {notice.identity for notice in self.recent}

    def record_queued(self, notice: Notice, subject: str, now: float) -> Notice:
        """``notice`` reached the outbox: update its incident's record and the counters, remember it."""
        current = self.open_incidents.get(notice.identity)
        if current is not None and notice.type in (ALERT, REMINDER):
            changes = {"alerted_at": now} if notice.type == ALERT else {"reminders_sent": notice.number}
            self.open_incidents[notice.identity] = current.replace(last_notified_at=now, **changes)
        if notice.type == ALERT:
            by_kind = self.counters["alerts_sent"]
            by_kind[notice.kind] = int(by_kind.get(notice.kind, 0)) + 1
        else:
            counter = "reminders_sent" if notice.type == REMINDER else "recoveries_sent"
            self.counters[counter] = int(self.counters.get(counter, 0)) + 1
        queued = dataclasses.replace(notice, at=now, subject=subject, record=None)
        self.pending.remove(notice)
        self.recent.append(queued)
        del self.recent[:-MAX_RECENT_ALERTS]
        return queued

    def count_delivery(self, deferred: int, failed: int) -> None:
        self.counters["delivery_failures"] += deferred
        self.counters["permanent_failures"] += failed

    def clamp_future_instants(self, now: float, where: str) -> None:
        """Bring stored instants in the future back to ``now``, logging each as a clock problem: left
        alone, a future ``watch_since`` or incident time silences alerts for as long as the clock was wrong."""

        def clamped(value: float | None, what: str) -> float | None:
            if value is None or value <= now + CLOCK_TOLERANCE_SECONDS:
                return value
            LOGGER.warning(
                "clock problem: %s in %s is %s, %s in the future of now (%s); using now",
                what,
                where,
                format_utc(value),
                format_duration(value - now),
                format_utc(now),
            )
            return now

        self.watch_since = clamped(self.watch_since, "watch_since")
        self.last_check_at = clamped(self.last_check_at, "last_check_at")
        for ident, record in self.open_incidents.items():
            keys = ("opened_at", "alerted_at", "last_notified_at")
            changes = {key: clamped(getattr(record, key), f"{key} of incident {ident}") for key in keys}
            self.open_incidents[ident] = record.replace(**changes)


def _recent_notice(entry: object) -> Notice | None:
    """A remembered notice; None for an entry this release cannot read (it is only history)."""
    try:
        return Notice.from_dict(entry)
    except (CorruptStateError, TypeError, ValueError):
        return None


class AlertLogStore(JsonStateStore):
    """Loads and saves the :class:`AlertLog` at ``path`` with the state store's lock-and-replace protocol."""

    def open_incidents(self) -> list[IncidentRecord]:
        """The open incidents as last saved, read without the lock (StorageError when unreadable)."""
        document = self.read()
        return [] if document is None else list(AlertLog.from_dict(document).open_incidents.values())

    def load(self, now: float) -> AlertLog:
        """The log (caller holds the lock): a fresh one on first start, a corrupt one moved aside;
        instants stored in the future are brought back to ``now``."""
        try:
            document = self.read()
            if document is not None:
                log = AlertLog.from_dict(document)
                log.clamp_future_instants(now, self.path)
                return log
        except CorruptStateError as exc:
            moved_to = self.move_aside(now)
            LOGGER.error(
                "monitor state %s is corrupt (%s); moved aside to %s; starting a fresh alert state",
                self.path,
                exc,
                moved_to,
            )
        else:
            LOGGER.info("no monitor state yet at %s: watching from now on", self.path)
        return AlertLog(watch_since=now)

    def save(self, log: AlertLog) -> None:
        self.write(log.to_dict())

    @contextlib.contextmanager
    def updating(self, now: float) -> Iterator[AlertLog]:
        """Load under the lock, let the caller change the log, save it (also when the caller raised)."""
        with self.locked():
            log = self.load(now)
            try:
                yield log
            finally:
                self.save(log)

    def record_delivery(self, now: float, deferred: int, failed: int, outbox_summary: object) -> AlertLog:
        """Count a delivery pass's failed attempts (``deferred`` to retry, ``failed`` given up) and note the
        outbox as of now, under the lock; return the log as saved."""
        with self.updating(now) as log:
            log.count_delivery(deferred, failed)
            log.outbox = outbox_summary
        return log

    def read_view(self) -> dict:
        """The log for the status page (UTC ISO-8601 times), read without the lock; never raises (``state_error``)."""
        try:
            document, error = self.read() or {}, None
        except StorageError as exc:
            document, error = {}, str(exc)
        records, alerts = document.get("open_incidents"), document.get("recent_alerts")

        def when(value: object) -> str | None:
            return format_utc(value) if finite_number(value) is not None else None

        return {
            "open_incidents": [
                {
                    "identity": ident,
                    **{k: record.get(k) for k in ("kind", "key", "summary", "batch_id")},
                    **{k: when(record.get(k)) for k in ("since", "opened_at", "alerted_at")},
                }
                for ident, record in (records.items() if isinstance(records, dict) else ())
                if isinstance(record, dict)
            ],
            "recent_alerts": [
                dict(a, at=when(a.get("at")))
                for a in (alerts if isinstance(alerts, list) else ())
                if isinstance(a, dict)
            ],
            **{k: when(document.get(k)) for k in ("last_check_at", "watch_since")},
            **{k: document.get(k) or {} for k in ("counters", "outbox")},
            "state_error": error,
        }
