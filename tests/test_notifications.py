"""Notification planning (utils/notifications.py) and the notification log (utils/alert_log.py), in memory.

Pure functions over model objects: no files, no SMTP, no clock but the instants passed in.
"""

from __future__ import annotations

import json
import logging

import pytest
from helpers import ny_epoch

from utils import notifications
from utils.alert_log import AlertLog, AlertLogStore, IncidentRecord, Notice
from utils.deadline import DailyDeadline
from utils.model import Batch, Incident, Snapshot
from utils.state_store import CorruptStateError

DEADLINE = DailyDeadline(5, 0, "America/New_York")


def running(batch_id: str, started: str, **more) -> Batch:
    return Batch.from_dict({"id": batch_id, "state": "running", "started_at": ny_epoch(started), "stages": {}, **more})


def plan(log: AlertLog, snapshot: Snapshot, now: float, **options) -> notifications.Plan:
    detected = notifications.detect(snapshot, now, DEADLINE, log, early_warning=False)
    return notifications.plan(log, detected, snapshot, now, DEADLINE, domain="example.com", **options)


def test_it_plans_one_alert_per_incident_and_dedupes_it_against_the_log():
    log = AlertLog(watch_since=ny_epoch("2026-11-23 00:30"))
    snapshot = Snapshot(current=running("b1", "2026-11-23 01:00"))
    first = plan(log, snapshot, ny_epoch("2026-11-23 05:01"))
    assert first.opened == ("late:b1",)
    assert [(n.type, n.identity) for n in log.pending] == [("alert", "late:b1")]
    assert plan(log, snapshot, ny_epoch("2026-11-23 05:10")).opened == ()
    assert len(log.pending) == 1  # still the one planned alert: nothing new, no reminder unless asked


def test_it_plans_a_reminder_once_per_period_only_when_asked():
    log = AlertLog(watch_since=ny_epoch("2026-11-23 00:30"))
    snapshot = Snapshot(current=running("b1", "2026-11-23 01:00"))
    plan(log, snapshot, ny_epoch("2026-11-23 05:01"), repeat_seconds=3600)
    (alert,) = log.pending
    log.record_queued(alert, "[LATE] b1", ny_epoch("2026-11-23 05:01"))
    plan(log, snapshot, ny_epoch("2026-11-23 06:00"), repeat_seconds=3600)
    assert log.pending == []
    plan(log, snapshot, ny_epoch("2026-11-23 06:01"), repeat_seconds=3600)
    plan(log, snapshot, ny_epoch("2026-11-23 06:02"), repeat_seconds=3600)
    assert [(n.type, n.number) for n in log.pending] == [("reminder", 1)]
    assert notifications.next_reminder_at(log, 3600) == ny_epoch("2026-11-23 06:01")


def test_it_continues_a_missing_night_as_late_by_the_precedence_table():
    yesterday = Batch.from_dict(
        {
            "id": "y",
            "state": "completed",
            "started_at": ny_epoch("2026-11-22 01:00"),
            "ended_at": ny_epoch("2026-11-22 03:00"),
            "stages": {},
        }
    )
    log = AlertLog(watch_since=ny_epoch("2026-11-22 04:00"))
    missing = plan(log, Snapshot(current=yesterday, history=(yesterday,)), ny_epoch("2026-11-23 05:10"))
    (ident,) = missing.opened
    assert ident.startswith("missing:")
    (alert,) = log.pending
    log.record_queued(alert, "[MISSING]", ny_epoch("2026-11-23 05:10"))
    tonight = running("t", "2026-11-23 06:00", deadline_at=ny_epoch("2026-11-23 05:00"))  # the late-start rule
    result = plan(log, Snapshot(current=tonight, history=(yesterday,)), ny_epoch("2026-11-23 06:05"))
    assert result == notifications.Plan(opened=("late:t",), retired=(ident,))
    assert log.pending == []  # no second alert, no "missing" recovery
    record = log.open_incidents["late:t"]
    assert record.continues == ident and record.alerted_at == ny_epoch("2026-11-23 05:10")


def test_it_retires_an_open_warning_that_a_detected_incident_supersedes():
    log = AlertLog(watch_since=ny_epoch("2026-11-23 00:30"))
    at_risk = Incident("at_risk", "b1", "projected late", ny_epoch("2026-11-23 05:00"), "b1")
    log.open_incidents[at_risk.identity] = IncidentRecord(at_risk, opened_at=ny_epoch("2026-11-23 03:00"))
    result = plan(log, Snapshot(current=running("b1", "2026-11-23 01:00")), ny_epoch("2026-11-23 05:01"))
    assert result.opened == ("late:b1",) and result.retired == ("at_risk:b1",) and result.cleared == ()
    assert [n.type for n in log.pending] == ["alert"]


def test_it_keeps_every_record_open_while_the_tracker_is_unreadable():
    log = AlertLog(watch_since=ny_epoch("2026-11-23 00:30"))
    plan(log, Snapshot(current=running("b1", "2026-11-23 01:00")), ny_epoch("2026-11-23 05:01"))
    result = plan(log, Snapshot(error="not JSON"), ny_epoch("2026-11-23 05:02"))
    assert result.opened == ("tracker_unreadable:tracker",) and result.cleared == ()
    assert set(log.open_incidents) == {"late:b1", "tracker_unreadable:tracker"}


# --------------------------------------------------------------------------- the log's file format


def test_it_writes_back_the_state_file_it_reads_keys_it_does_not_know_included():
    log = AlertLog(watch_since=ny_epoch("2026-11-23 00:30"))
    plan(log, Snapshot(current=running("b1", "2026-11-23 01:00")), ny_epoch("2026-11-23 05:01"))
    document = json.loads(json.dumps(log.to_dict()))
    document["from_a_newer_release"] = {"kept": True}
    document["open_incidents"]["late:b1"]["note"] = "kept too"
    again = AlertLog.from_dict(document)
    assert again.to_dict() == document
    assert again.pending == log.pending and again.open_incidents == log.open_incidents


def test_it_reads_a_pending_intent_written_by_the_previous_release():
    record = {"kind": "late", "key": "b1", "summary": "s", "since": 1.0, "batch_id": "b1", "opened_at": 2.0}
    intent = {
        "type": "alert",
        "identity": "late:b1",
        "incident": {**record, "alerted_at": None, "last_notified_at": None, "reminders_sent": 0},
        "message_id": "<m@example.com>",
        "number": 0,
        "resolution": None,
        "planned_at": 2.0,
    }
    notice = Notice.from_dict(intent)
    assert (notice.identity, notice.at, notice.record.opened_at) == ("late:b1", 2.0, 2.0)
    assert notice.outbox_id == Notice.from_dict(notice.to_dict()).outbox_id


def test_it_refuses_a_record_without_its_identity_as_corrupt():
    with pytest.raises(CorruptStateError, match="malformed"):
        AlertLog.from_dict({"schema_version": 1, "watch_since": 1.0, "open_incidents": {"x": {"kind": "late"}}})


def test_it_clamps_instants_stored_in_the_future_when_loading(tmp_path, caplog):
    store = AlertLogStore(str(tmp_path / "monitor.json"))
    now = ny_epoch("2026-11-23 04:00")
    with store.locked():
        store.save(AlertLog(watch_since=now + 3 * 86400))
        with caplog.at_level(logging.WARNING, logger="utils.monitor"):
            log = store.load(now)
    assert log.watch_since == now
    assert any("clock problem: watch_since" in r.getMessage() for r in caplog.records)
