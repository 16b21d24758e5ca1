"""The completion monitor (utils/monitor.py, utils/service.py and bin/batch_completion_monitor.py).

Most tests drive ``Monitor.step()`` with a FakeClock against a real SMTP server on
127.0.0.1; a few run the entry point as a real subprocess on the real clock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest
from conftest import PROJECT_ROOT, VENV_PYTHON, free_port, run_tracker_cli, wait_until
from helpers import ny_epoch

from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.config import MonitorConfig, Secret
from utils.mail_compose import parse_message
from utils.monitor import Monitor, StepResult
from utils.sdnotify import SystemdNotifier
from utils.service import Service
from utils.state_store import sibling_file

MONITOR = str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py")
BATCH = "20261123T060000Z-ab12"


def utc(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC).timestamp()


class World:
    """A tracker, a fake clock, a real SMTP sink, and monitors built on the same files."""

    def __init__(self, tmp_path, tracker_file, clock, sink):
        self.tmp_path = tmp_path
        self.clock = clock
        self.sink = sink
        self.tracker_config = TrackerConfig(
            tracker_file=str(tracker_file), expected_stages=("scrape", "enrich", "score")
        )
        self.tracker = BatchTracker(self.tracker_config, clock=clock)
        self.state_file = sibling_file(str(tracker_file), "monitor")

    def config(self, **changes) -> MonitorConfig:
        values = {
            "tracker": self.tracker_config,
            "outbox_dir": str(self.tmp_path / "outbox"),
            "email_to": ("ops@example.com", "oncall@example.org"),
            "email_from": "leadfactory@example.com",
            "smtp_server": "127.0.0.1",
            "smtp_port": self.sink.port,
            "smtp_security": "plain",
            "smtp_timeout_seconds": 5.0,
            "metrics_port": 0,
        }
        values.update(changes)
        return MonitorConfig(**values)

    def monitor(self, **changes) -> Monitor:
        return Monitor(self.config(**changes), clock=self.clock)

    def at(self, when: float) -> None:
        self.clock.set(when)

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.sink.received()]

    def state(self) -> dict:
        return json.loads(open(self.state_file).read())


@pytest.fixture
def world(tmp_path, tracker_file, clock, smtp_server) -> World:
    return World(tmp_path, tracker_file, clock, smtp_server)


def start_batch(world: World, when: str, batch_id: str = BATCH) -> None:
    world.at(ny_epoch(when))
    world.tracker.start(batch_id=batch_id)


# --------------------------------------------------------------------------- late, failed, missing


def test_it_alerts_a_late_batch_once_and_then_its_recovery(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    assert monitor.step().notifications == ()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 02:00"))
    world.tracker.stage("scrape", 100)
    world.at(ny_epoch("2026-11-23 04:59:59"))
    assert monitor.step().ok
    world.at(ny_epoch("2026-11-23 05:00"))
    result = monitor.step()
    assert result.opened == (f"late:{BATCH}",) and not result.ok
    assert [n.type for n in result.notifications] == ["alert"]
    assert len(result.delivery.delivered) == 1
    assert world.subjects() == [f"[LATE] nightly batch {BATCH} missed its 05:00 EST deadline (Mon 2026-11-23)"]
    for minutes in (5, 10, 30):
        world.at(ny_epoch("2026-11-23 05:00") + minutes * 60)
        assert monitor.step().notifications == ()
    world.at(ny_epoch("2026-11-23 05:47"))
    world.tracker.end()
    result = monitor.step()
    assert result.cleared == (f"late:{BATCH}",) and result.ok
    assert (
        world.subjects()[1] == f"[RECOVERED] nightly LATE: batch {BATCH} completed 47 min late, at 2026-11-23 05:47 EST"
    )
    world.at(ny_epoch("2026-11-23 09:00"))
    monitor.step()
    assert len(world.sink.received()) == 2
    rcpts, message = world.sink.messages[0]
    assert rcpts == ["ops@example.com", "oncall@example.org"]
    body = message.get_content()
    assert BATCH in body and "Looks stuck:   enrich" in body and "bin/batch_tracker status" in body


def test_it_alerts_a_failed_batch_at_once_with_its_reason_and_recovers_after_resume(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    monitor.step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 02:10"))
    world.tracker.fail("enrich", "exit code 3")
    result = monitor.step()
    assert result.opened == (f"failed:{BATCH}",)
    assert world.subjects() == [f"[FAILED] nightly batch {BATCH} failed at stage enrich (2026-11-23 02:10 EST)"]
    assert "Failure:       stage enrich: exit code 3" in world.sink.received()[0].get_content()
    assert result.status_line() == f"PROBLEM: failed: batch {BATCH} failed at stage enrich: exit code 3"
    world.at(ny_epoch("2026-11-23 02:30"))
    world.tracker.resume()
    assert monitor.step().notifications == ()  # resumed is not yet recovered
    world.at(ny_epoch("2026-11-23 04:00"))
    world.tracker.end()
    result = monitor.step()
    assert result.cleared == (f"failed:{BATCH}",)
    assert world.subjects()[1].startswith(f"[RECOVERED] nightly FAILED: batch {BATCH} completed after resume at")
    assert len(world.sink.received()) == 2


def test_it_clears_a_failed_batch_when_a_new_batch_completes(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00", "b1")
    world.tracker.fail("score", "killed")
    monitor.step()
    start_batch(world, "2026-11-23 04:00", "b2")
    world.at(ny_epoch("2026-11-23 04:30"))
    world.tracker.end()
    result = monitor.step()
    assert result.cleared == ("failed:b1",)
    assert world.subjects()[-1] == "[RECOVERED] nightly FAILED: a new batch b2 completed at 2026-11-23 04:30 EST"


def test_it_alerts_a_missing_batch_on_a_fresh_install_and_recovers_when_one_starts(world, tracker_file):
    assert not tracker_file.exists()
    world.at(ny_epoch("2026-11-22 12:00"))
    monitor = world.monitor()
    assert monitor.step().ok
    assert world.state()["watch_since"] == ny_epoch("2026-11-22 12:00")
    world.at(ny_epoch("2026-11-23 04:59:59"))
    assert monitor.step().ok
    world.at(ny_epoch("2026-11-23 05:00"))
    result = monitor.step()
    key = f"{ny_epoch('2026-11-23 05:00'):.0f}"
    assert result.opened == (f"missing:{key}",)
    assert world.subjects() == ["[MISSING] no nightly batch started before the 05:00 EST deadline (Mon 2026-11-23)"]
    start_batch(world, "2026-11-23 06:10", "late-start")
    result = monitor.step()
    assert result.cleared == (f"missing:{key}",)
    assert world.subjects()[1] == (
        "[RECOVERED] nightly MISSING: batch late-start started at 2026-11-23 06:10 EST, "
        "1 h 10 min after the 2026-11-23 05:00 EST deadline"
    )


def test_it_does_not_call_deadlines_before_it_watched_missing(world):
    world.at(ny_epoch("2026-11-23 10:00"))  # installed after this morning's deadline, no batch ever
    result = world.monitor().step()
    assert result.ok and result.notifications == ()
    assert result.status_line().startswith("OK: no batch recorded yet; watching since 2026-11-23 10:00 EST")


def test_it_alerts_an_unreadable_tracker_without_clearing_other_incidents(world, tracker_file):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    monitor.step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:01"))
    monitor.step()
    good = tracker_file.read_bytes()
    tracker_file.write_text("{not json")
    world.at(ny_epoch("2026-11-23 05:02"))
    result = monitor.step()
    assert result.opened == ("tracker_unreadable:tracker",) and result.cleared == ()
    assert {r.kind for r in result.open_incidents} == {"late", "tracker_unreadable"}
    tracker_file.write_bytes(good)
    world.at(ny_epoch("2026-11-23 05:03"))
    result = monitor.step()
    assert result.cleared == ("tracker_unreadable:tracker",)
    assert [r.kind for r in result.open_incidents] == ["late"]
    subjects = world.subjects()
    assert len(subjects) == 3
    assert subjects[1].startswith("[TRACKER UNREADABLE] nightly batch tracker file cannot be read")
    assert subjects[2] == "[RECOVERED] nightly TRACKER UNREADABLE: the tracker file is readable again"


# --------------------------------------------------------------------------- exactly once


def test_it_delivers_exactly_once_through_an_smtp_outage(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00")
    world.sink.reject_with = "451 4.3.0 mail system busy"
    world.at(ny_epoch("2026-11-23 05:00"))
    result = monitor.step()
    assert len(result.delivery.deferred) == 1 and world.sink.received() == []
    assert world.state()["counters"]["delivery_failures"] == 1
    assert world.state()["outbox"]["pending"] == 1
    for _ in range(20):  # hours of outage; the alert stays queued and no new one is made
        world.clock.advance(600)
        assert monitor.step().notifications == ()
    assert world.sink.received() == []
    world.sink.reject_with = None
    world.clock.advance(600)
    result = monitor.step()
    assert len(result.delivery.delivered) == 1
    world.clock.advance(3600)
    monitor.step()
    assert len(world.sink.received()) == 1
    assert world.state()["counters"]["delivery_failures"] == 21
    assert world.state()["outbox"]["pending"] == 0


def test_it_delivers_once_when_the_smtp_server_was_down_and_comes_back(tmp_path, tracker_file, clock):
    from conftest import SmtpSink

    first = SmtpSink().start()
    world = World(tmp_path, tracker_file, clock, first)
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00")
    first.stop()  # the server goes away: connection refused
    world.at(ny_epoch("2026-11-23 02:00"))
    world.tracker.fail("enrich", "exit code 3")
    result = monitor.step()
    assert len(result.delivery.deferred) == 1 and "Connection refused" in result.delivery.deferred[0].last_error
    revived = SmtpSink(port=first.port).start()
    try:
        world.clock.advance(4)
        assert monitor.step().delivery.delivered == ()  # still backing off
        world.clock.advance(1)
        assert len(monitor.step().delivery.delivered) == 1
        world.clock.advance(600)
        monitor.step()
        assert len(revived.received()) == 1 and first.received() == []
    finally:
        revived.stop()


def test_it_retries_a_backing_off_alert_at_once_after_a_restart(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00")
    world.sink.reject_with = "451 4.3.0 mail system busy"
    world.at(ny_epoch("2026-11-23 02:00"))
    world.tracker.fail("enrich", "exit code 3")

    def waiting() -> dict:
        return json.loads(next((world.tmp_path / "outbox" / "pending").glob("*.json")).read_text())

    monitor.step()
    for _ in range(7):  # the back-off grows while the same process keeps failing
        world.at(waiting()["next_attempt_at"])
        monitor.step()
    assert waiting()["attempts"] == 8 and waiting()["next_attempt_at"] >= world.clock() + 300
    assert monitor.step().delivery.deferred == ()  # this process waits out its back-off
    world.sink.reject_with = None  # on-call fixes the mail server, then restarts the monitor
    assert world.monitor().step().delivery.delivered != ()
    assert len(world.sink.received()) == 1
    world.clock.advance(3600)
    world.monitor().step()
    assert len(world.sink.received()) == 1


def test_it_neither_repeats_nor_forgets_an_alert_after_a_restart(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    world.monitor().step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:00"))
    world.monitor().step()
    assert len(world.sink.received()) == 1
    for minutes in (1, 2, 3):
        world.at(ny_epoch("2026-11-23 05:00") + minutes * 60)
        assert world.monitor().step().notifications == ()  # a new Monitor object each time: a restart
    world.at(ny_epoch("2026-11-23 05:30"))
    world.tracker.end()
    assert [n.type for n in world.monitor().step().notifications] == ["recovery"]
    world.at(ny_epoch("2026-11-23 05:31"))
    world.monitor().step()
    assert len(world.sink.received()) == 2


@pytest.mark.parametrize("crash", ["before_outbox", "after_outbox"])
def test_it_sends_an_alert_interrupted_by_a_crash_exactly_once(world, crash):
    world.at(ny_epoch("2026-11-23 00:30"))
    world.monitor().step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:00"))
    crashing = world.monitor()
    real_enqueue = crashing.outbox.enqueue

    def enqueue_then_die(message, **kwargs):
        if crash == "after_outbox":
            real_enqueue(message, **kwargs)
        raise KeyboardInterrupt("simulated crash")

    crashing.outbox.enqueue = enqueue_then_die
    with pytest.raises(KeyboardInterrupt):
        crashing.step()
    assert len(world.state()["pending_notifications"]) == 1  # the intent survived the crash
    world.at(ny_epoch("2026-11-23 05:00:30"))
    result = world.monitor().step()
    assert len(result.delivery.delivered) == 1
    world.at(ny_epoch("2026-11-23 05:10"))
    assert world.monitor().step().notifications == ()
    assert len(world.sink.received()) == 1
    assert world.state()["pending_notifications"] == []
    assert world.state()["counters"]["alerts_sent"] == {"late": 1}


def test_it_sends_reminders_only_when_asked(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor(alert_repeat_seconds=3600, check_interval_seconds=7200)
    monitor.step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:00"))
    monitor.step()
    assert monitor.next_wake_at(ny_epoch("2026-11-23 05:30")) == ny_epoch("2026-11-23 06:00")
    world.at(ny_epoch("2026-11-23 05:59:59"))
    assert monitor.step().notifications == ()
    world.at(ny_epoch("2026-11-23 06:00"))
    assert [n.type for n in monitor.step().notifications] == ["reminder"]
    world.at(ny_epoch("2026-11-23 06:30"))
    assert monitor.step().notifications == ()
    world.at(ny_epoch("2026-11-23 07:00"))
    monitor.step()
    subjects = world.subjects()
    assert subjects[1].startswith("[REMINDER 1] [LATE]") and subjects[1].endswith("open for 1 h 00 min")
    assert subjects[2].startswith("[REMINDER 2] [LATE]")
    assert len({m["Message-ID"] for m in world.sink.received()}) == 3
    # Reminders are off by default.
    assert world.monitor().config.alert_repeat_seconds == 0


# --------------------------------------------------------------------------- timing


def test_it_wakes_at_the_next_deadline_whatever_the_interval(world):
    monitor = world.monitor(check_interval_seconds=3600)
    assert monitor.next_wake_at(ny_epoch("2026-11-23 04:59:30")) == ny_epoch("2026-11-23 05:00")
    assert monitor.next_wake_at(ny_epoch("2026-11-23 02:00")) == ny_epoch("2026-11-23 03:00")


@pytest.mark.parametrize(
    ("zone", "hhmm", "started", "due_utc", "label"),
    [
        ("America/New_York", (5, 0), "2026-03-07 22:00", "2026-03-08 09:00", "05:00 EDT"),
        ("America/New_York", (5, 0), "2026-10-31 22:00", "2026-11-01 10:00", "05:00 EST"),
        ("America/New_York", (2, 30), "2026-03-07 22:00", "2026-03-08 07:00", "03:00 EDT"),  # 02:30 does not exist
        ("America/New_York", (1, 30), "2026-10-31 22:00", "2026-11-01 05:30", "01:30 EDT"),  # first 01:30
        ("Europe/Berlin", (5, 0), "2026-03-28 22:00", "2026-03-29 03:00", "05:00 CEST"),
    ],
)
def test_it_fires_at_the_right_utc_instant_on_dst_days(world, zone, hhmm, started, due_utc, label):
    config = world.tracker_config.replace(timezone=zone, deadline_hour=hhmm[0], deadline_minute=hhmm[1])
    world.tracker = BatchTracker(config, clock=world.clock)
    world.at(ny_epoch(started, zone) - 60)
    monitor = world.monitor(tracker=config)
    monitor.step()
    world.at(ny_epoch(started, zone))
    world.tracker.start(batch_id="dst")
    due = utc(due_utc)
    world.at(due - 1)
    assert monitor.step().ok
    assert monitor.next_wake_at(due - 1) == due
    world.at(due)
    result = monitor.step()
    assert result.opened == ("late:dst",)
    assert f"missed its {label} deadline" in world.subjects()[0]


# --------------------------------------------------------------------------- delivery variants


def test_it_writes_eml_files_into_the_outbox_without_an_smtp_server(world, caplog):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor(smtp_server=None)
    monitor.step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:00"))
    with caplog.at_level(logging.INFO):
        result = monitor.step()
    path = result.delivery.receipts[0]
    assert os.path.dirname(path) == str(world.tmp_path / "outbox") and path.endswith(".eml")
    assert os.path.basename(path).startswith("20261123T100000Z-late-alert-")
    assert parse_message(open(path, "rb").read())["Subject"].startswith("[LATE] nightly batch")
    assert path in caplog.text
    assert world.sink.received() == []


def test_it_counts_and_logs_a_permanent_refusal(world, caplog):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00")
    world.sink.reject_with = "550 5.1.1 mailbox unavailable"
    world.at(ny_epoch("2026-11-23 05:00"))
    with caplog.at_level(logging.ERROR):
        result = monitor.step()
    assert len(result.delivery.failed) == 1
    assert world.state()["counters"]["permanent_failures"] == 1
    assert "refused permanently" in caplog.text
    assert list((world.tmp_path / "outbox" / "failed").glob("*.eml"))


def test_it_cannot_be_made_to_add_headers_by_a_failure_reason(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00")
    world.tracker.fail("enrich", "boom\r\nBcc: evil@example.com\r\nSubject: fake")
    monitor.step()
    rcpts, message = world.sink.messages[0]
    assert rcpts == ["ops@example.com", "oncall@example.org"]
    assert message["Bcc"] is None
    assert message.get_all("Subject") == [
        f"[FAILED] nightly batch {BATCH} failed at stage enrich (2026-11-23 01:00 EST)"
    ]
    assert "evil@example.com" in message.get_content()  # shown to people, never used as an address


def test_it_never_logs_the_smtp_password(world, caplog):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor(smtp_username="monitor", smtp_password=Secret("pa55-never-shown"))
    start_batch(world, "2026-11-23 01:00")
    world.tracker.fail("enrich", "x")
    with caplog.at_level(logging.DEBUG):
        result = monitor.step()  # the sink offers no AUTH: the login fails
    assert len(result.delivery.deferred) == 1
    stored = "".join(p.read_text(errors="replace") for p in world.tmp_path.rglob("*") if p.is_file())
    assert "pa55-never-shown" not in caplog.text + stored + repr(monitor.config) + repr(monitor.transport)


def test_it_records_the_alert_state_other_modules_read(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    monitor.step()  # the first check records when watching began
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:00"))
    monitor.step()
    state = world.state()
    assert state["schema_version"] == 1
    assert state["watch_since"] == ny_epoch("2026-11-23 00:30")
    assert state["last_check_at"] == ny_epoch("2026-11-23 05:00")
    record = state["open_incidents"][f"late:{BATCH}"]
    assert {"kind", "key", "summary", "since", "batch_id", "opened_at", "alerted_at"} <= set(record)
    assert record["alerted_at"] == ny_epoch("2026-11-23 05:00") and record["batch_id"] == BATCH
    alert = state["recent_alerts"][-1]
    assert {"at", "kind", "key", "type", "subject", "message_id"} <= set(alert) and alert["type"] == "alert"
    counters = state["counters"]
    assert counters["alerts_sent"] == {"late": 1} and counters["recoveries_sent"] == 0
    assert counters["delivery_failures"] == 0 and counters["permanent_failures"] == 0
    assert alert["message_id"] == world.sink.received()[0]["Message-ID"]


def test_it_moves_a_corrupt_alert_state_aside(world, caplog):
    os.makedirs(os.path.dirname(world.state_file), exist_ok=True)
    with open(world.state_file, "w") as handle:
        handle.write("[1, 2")
    world.at(ny_epoch("2026-11-23 00:30"))
    with caplog.at_level(logging.ERROR):
        assert world.monitor().step().ok
    assert "moved aside" in caplog.text
    assert world.state()["watch_since"] == ny_epoch("2026-11-23 00:30")
    assert [p for p in os.listdir(os.path.dirname(world.state_file)) if ".monitor.json.corrupt-" in p]


def test_it_summarises_one_step_in_a_status_line(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 04:30"))
    world.tracker.end()
    result = monitor.step()
    assert isinstance(result, StepResult) and result.exit_code == 0
    assert result.status_line().startswith(f"OK: batch {BATCH} completed on time")


# --------------------------------------------------------------------------- the loop, in process


def test_it_runs_a_loop_that_reacts_to_the_tracker_and_stops_promptly(world, tracker_file):
    real = BatchTracker(world.tracker_config)
    real.start()
    port = free_port()
    monitor = Monitor(world.config(check_interval_seconds=300, metrics_port=port), clock=time.time)
    service = Service(monitor)
    thread = threading.Thread(target=service.run)
    thread.start()
    try:
        wait_until(lambda: monitor.health()[0], timeout=5, message="a first check")
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        real.fail("enrich", "exit code 3")
        recorded = time.monotonic()
        world.sink.wait_for(1, timeout=2.0)
        assert time.monotonic() - recorded < 2.0
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5).read())
        assert status["state"] == "failed"
        assert [i["kind"] for i in status["monitor"]["open_incidents"]] == ["failed"]
        assert status["monitor"]["recent_alerts"][-1]["type"] == "alert"
    finally:
        asked = time.monotonic()
        service.request_stop()
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - asked < 1.0
    assert monitor.health() == (True, "ok")


def test_it_reports_unhealthy_before_the_first_check(world):
    assert world.monitor().health() == (False, "no check has completed yet")


# --------------------------------------------------------------------------- the entry point, as a subprocess


@pytest.fixture
def monitor_env(base_env, tmp_path, smtp_server) -> dict:
    env = dict(base_env)
    env.update(
        {
            "BATCH_OUTBOX_DIR": str(tmp_path / "outbox"),
            "SMTP_SERVER": "127.0.0.1",
            "SMTP_PORT": str(smtp_server.port),
            "SMTP_SECURITY": "plain",
            "METRICS_PORT": "0",
            "BATCH_EXPECTED_STAGES": "scrape,enrich,score",
        }
    )
    return env


def tracker_cli(env, *args) -> subprocess.CompletedProcess:
    return run_tracker_cli(env, *args, cwd=PROJECT_ROOT, check=True)


def run_once(env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VENV_PYTHON, MONITOR, "--once"], env=env, cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_COMPLETION_CHECK_INTERVAL_SECONDS", "soon"),
        ("SMTP_SECURITY", "tls"),
        ("ALERT_EMAIL_TO", "nobody"),
        ("BATCH_COMPLETION_TIMEZONE", "Atlantis/Capital"),
    ],
)
def test_it_exits_2_naming_the_bad_variable(monitor_env, tmp_path, variable, value):
    env = dict(monitor_env, **{variable: value})
    for args in (["--once"], []):
        result = subprocess.run(
            [VENV_PYTHON, MONITOR, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and variable in lines[0] and "configuration error" in lines[0]
    assert not (tmp_path / "outbox").exists() and not (tmp_path / "data").exists()


def test_it_exits_0_with_once_when_all_is_well(monitor_env, tmp_path, smtp_server):
    tracker_cli(monitor_env, "start")
    result = run_once(monitor_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: batch ") and "running" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert smtp_server.received() == []


def test_it_exits_1_with_once_and_delivers_the_alert_when_a_batch_failed(monitor_env, tmp_path, smtp_server):
    tracker_cli(monitor_env, "start")
    tracker_cli(monitor_env, "fail", "--stage", "enrich", "--reason", "exit code 3")
    result = run_once(monitor_env, tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("PROBLEM: failed: batch ") and "exit code 3" in result.stdout
    assert len(smtp_server.received()) == 1
    again = run_once(monitor_env, tmp_path)
    assert again.returncode == 1 and len(smtp_server.received()) == 1  # alerted once, not once per run


def test_it_prints_every_variable_in_help(tmp_path):
    result = subprocess.run([VENV_PYTHON, MONITOR, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for name in ("ALERT_EMAIL_TO", "SMTP_PASSWORD_FILE", "BATCH_OUTBOX_DIR", "METRICS_PORT", "LOG_LEVEL", "--once"):
        assert name in result.stdout
    assert "[300]" in result.stdout and "[9469]" in result.stdout


@pytest.fixture
def notify_socket():
    """A datagram socket standing in for systemd's NOTIFY_SOCKET (abstract namespace)."""
    name = f"batch-monitor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    yield "@" + name, sock
    sock.close()


def test_it_alerts_within_two_seconds_of_a_failure_and_stops_within_one_second_of_sigterm(
    monitor_env, tmp_path, smtp_server, notify_socket
):
    address, sock = notify_socket
    tracker_cli(monitor_env, "start")
    env = dict(
        monitor_env,
        BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="300",
        NOTIFY_SOCKET=address,
        WATCHDOG_USEC="2000000",
    )
    process = subprocess.Popen(
        [VENV_PYTHON, MONITOR], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        tracker_cli(monitor_env, "fail", "--stage", "enrich", "--reason", "exit code 3")
        recorded = time.monotonic()
        smtp_server.wait_for(1, timeout=2.0)
        assert time.monotonic() - recorded < 2.0
        assert smtp_server.received()[0]["Subject"].startswith("[FAILED] nightly batch ")
        watchdog_pings = 0
        while watchdog_pings < 2:  # pinged at least every WATCHDOG_USEC/2 while idle
            watchdog_pings += sock.recv(4096) == b"WATCHDOG=1"
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=5)
        assert time.monotonic() - asked < 1.0
    finally:
        if process.poll() is None:
            process.kill()
        _stdout, stderr = process.communicate(timeout=5)
    assert returncode == 0, stderr
    rest = []
    sock.settimeout(0.5)
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    assert "STOPPING=1" in rest
    assert "stopping on SIGTERM" in stderr
    assert len(smtp_server.received()) == 1


def test_it_runs_from_any_directory_and_sdnotify_is_a_noop_without_a_socket(monitor_env, tmp_path):
    assert SystemdNotifier({}).ready() is False
    result = run_once(monitor_env, "/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: no batch recorded yet")


def test_it_runs_as_an_executable_under_the_projects_venv_whatever_python3_is(monitor_env, tmp_path):
    assert os.access(MONITOR, os.X_OK)
    # The installed script names the venv's interpreter: python3 on PATH (here not the venv's) does not matter.
    script = os.path.join(os.path.dirname(VENV_PYTHON), "batch-completion-monitor")
    env = dict(monitor_env, PATH="/usr/bin:/bin")
    result = subprocess.run([script, "--once"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: no batch recorded yet")
    # bin/batch_completion_monitor.py runs as an executable under the venv's python3 (first on PATH).
    result = subprocess.run(
        [MONITOR, "--once"], env=monitor_env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: no batch recorded yet")


def test_it_logs_with_syslog_priorities_under_journald(monitor_env, tmp_path):
    tracker_cli(monitor_env, "start")
    tracker_cli(monitor_env, "fail", "--reason", "exit code 3")
    env = dict(monitor_env, JOURNAL_STREAM="8:12345", LOG_LEVEL="WARNING")
    result = run_once(env, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith(("<4>", "<3>")) for line in lines), result.stderr
    assert any(line.startswith("<4>utils.monitor: alert queued for failed:") for line in lines)


def test_it_warns_early_when_a_batch_is_projected_late_and_lets_the_late_alert_take_over(world):
    for night in ("2026-11-20", "2026-11-21", "2026-11-22"):
        start_batch(world, f"{night} 01:00", f"normal-{night}")
        for stage, done in (("scrape", "01:30"), ("enrich", "02:30"), ("score", "03:00")):
            world.at(ny_epoch(f"{night} {done}"))
            world.tracker.stage(stage, 100)
        world.tracker.end()
    world.at(ny_epoch("2026-11-22 12:00"))
    monitor = world.monitor()
    assert monitor.step().ok
    start_batch(world, "2026-11-23 01:00", "slow")
    world.at(ny_epoch("2026-11-23 03:00"))
    world.tracker.stage("scrape", 50)  # half of scrape in 2 h, where a whole one usually takes 30 min
    result = monitor.step()
    assert "at_risk:slow" in result.opened
    assert (
        world.subjects()[0]
        == "[AT RISK] nightly batch slow is projected to miss its 05:00 EST deadline (Mon 2026-11-23)"
    )
    assert "projected to finish at" in world.sink.received()[0].get_content()
    world.at(ny_epoch("2026-11-23 05:00"))
    result = monitor.step()
    assert "late:slow" in result.opened and "at_risk:slow" in result.retired
    assert not any("RECOVERED" in subject for subject in world.subjects())


# --------------------------------------------------------------------------- field trial (issue 10)


def test_it_keeps_a_late_incident_open_when_the_clock_steps_back(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    monitor.step()
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-23 05:10"))
    assert monitor.step().opened == (f"late:{BATCH}",)
    world.at(ny_epoch("2026-11-23 04:10"))  # NTP steps the clock an hour back: the batch is still late
    result = monitor.step()
    assert result.cleared == () and result.notifications == ()
    assert [r.kind for r in result.open_incidents] == ["late"] and result.exit_code == 1
    world.at(ny_epoch("2026-11-23 05:20"))
    assert monitor.step().notifications == ()  # no second LATE either
    world.at(ny_epoch("2026-11-23 05:47"))
    world.tracker.end()
    result = monitor.step()
    assert result.cleared == (f"late:{BATCH}",)
    assert world.subjects() == [
        f"[LATE] nightly batch {BATCH} missed its 05:00 EST deadline (Mon 2026-11-23)",
        f"[RECOVERED] nightly LATE: batch {BATCH} completed 47 min late, at 2026-11-23 05:47 EST",
    ]


def test_it_clears_a_late_incident_when_a_newer_batch_completes(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    monitor = world.monitor()
    start_batch(world, "2026-11-23 01:00", "stuck")
    world.at(ny_epoch("2026-11-23 05:10"))
    monitor.step()
    start_batch(world, "2026-11-23 06:00", "rerun")  # abandons the stuck one
    world.at(ny_epoch("2026-11-23 06:05"))
    assert monitor.step().cleared == ()  # the night's work is still not done
    world.at(ny_epoch("2026-11-23 07:00"))
    world.tracker.end()
    assert monitor.step().cleared == ("late:stuck",)
    assert world.subjects()[-1] == (
        "[RECOVERED] nightly LATE: batch stuck ended abandoned; a new batch rerun completed at 2026-11-23 07:00 EST"
    )


def test_it_clamps_future_instants_of_its_state_to_now_as_a_clock_problem(world, caplog):
    world.at(ny_epoch("2026-11-26 12:00"))  # the first run had its clock three days ahead
    world.monitor().step()
    assert world.state()["watch_since"] == ny_epoch("2026-11-26 12:00")
    world.at(ny_epoch("2026-11-23 04:00"))  # the clock is right again; no batch tonight
    with caplog.at_level(logging.WARNING, logger="utils.monitor"):
        assert world.monitor().step().ok
    warnings = [r.getMessage() for r in caplog.records if "clock problem" in r.getMessage()]
    assert any("watch_since" in w and "2026-11-26T17:00:00+00:00" in w for w in warnings), warnings
    assert world.state()["watch_since"] == ny_epoch("2026-11-23 04:00")
    world.at(ny_epoch("2026-11-23 05:01"))
    result = world.monitor().step()
    assert result.opened == (f"missing:{ny_epoch('2026-11-23 05:00'):.0f}",)


def test_it_clamps_future_incident_times_so_reminders_fall_due_again(world, caplog):
    world.at(ny_epoch("2026-11-23 00:30"))
    start_batch(world, "2026-11-23 01:00")
    world.at(ny_epoch("2026-11-26 05:10"))  # clock days ahead: the late alert is stamped in the future
    world.monitor(alert_repeat_seconds=3600).step()
    world.at(ny_epoch("2026-11-23 05:10"))
    with caplog.at_level(logging.WARNING, logger="utils.monitor"):
        world.monitor(alert_repeat_seconds=3600).step()
    record = world.state()["open_incidents"][f"late:{BATCH}"]
    assert record["opened_at"] == record["alerted_at"] == ny_epoch("2026-11-23 05:10")
    assert sum("clock problem" in r.getMessage() for r in caplog.records) >= 3
    world.at(ny_epoch("2026-11-23 06:11"))
    result = world.monitor(alert_repeat_seconds=3600).step()
    assert [n.type for n in result.notifications] == ["reminder"]


def test_it_turns_a_missing_night_into_one_late_chain_when_the_batch_starts_late(world):
    start_batch(world, "2026-11-22 01:00", "yesterday")
    world.at(ny_epoch("2026-11-22 03:00"))
    world.tracker.end()
    monitor = world.monitor()
    monitor.step()
    world.at(ny_epoch("2026-11-23 05:10"))
    missing = f"missing:{ny_epoch('2026-11-23 05:00'):.0f}"
    assert monitor.step().opened == (missing,)
    start_batch(world, "2026-11-23 06:00", "tonight")  # the missed night's batch, an hour late
    world.at(ny_epoch("2026-11-23 06:05"))
    result = monitor.step()
    assert result.notifications == () and result.cleared == ()
    assert result.retired == (missing,) and result.opened == ("late:tonight",)
    assert result.status_line().startswith("PROBLEM: late: batch tonight missed its deadline 2026-11-23 05:00 EST")
    for hour in ("08:00", "12:00"):
        world.at(ny_epoch(f"2026-11-23 {hour}"))
        assert monitor.step().notifications == ()
    world.at(ny_epoch("2026-11-23 16:00"))
    world.tracker.end()
    result = monitor.step()
    assert result.cleared == ("late:tonight",) and result.ok
    assert world.subjects() == [
        "[MISSING] no nightly batch started before the 05:00 EST deadline (Mon 2026-11-23)",
        "[RECOVERED] nightly LATE: batch tonight completed 11 h 00 min late, at 2026-11-23 16:00 EST",
    ]
    assert world.state()["open_incidents"] == {}
    world.at(ny_epoch("2026-11-24 04:00"))
    assert monitor.step().notifications == ()


def test_it_reports_once_a_batch_that_started_and_completed_late_between_two_checks(world):
    start_batch(world, "2026-11-22 01:00", "yesterday")
    world.at(ny_epoch("2026-11-22 03:00"))
    world.tracker.end()
    world.at(ny_epoch("2026-11-23 04:55"))
    world.monitor().step()  # a --once run every 10 minutes
    start_batch(world, "2026-11-23 05:01", "quick")
    world.at(ny_epoch("2026-11-23 05:04"))
    world.tracker.end()
    world.at(ny_epoch("2026-11-23 05:05"))
    result = world.monitor().step()
    assert result.opened == ("late:quick",) and result.exit_code == 1
    assert result.status_line() == (
        "PROBLEM: late: batch quick completed 4 min late, at 2026-11-23 05:04 EST, "
        "after its deadline 2026-11-23 05:00 EST"
    )
    world.at(ny_epoch("2026-11-23 05:15"))
    result = world.monitor().step()
    assert result.cleared == ("late:quick",) and result.exit_code == 0
    assert "completed on time" not in result.status_line()
    world.at(ny_epoch("2026-11-23 05:25"))
    assert world.monitor().step().notifications == ()
    assert world.subjects() == [
        "[LATE] nightly batch quick missed its 05:00 EST deadline (Mon 2026-11-23)",
        "[RECOVERED] nightly LATE: batch quick completed 4 min late, at 2026-11-23 05:04 EST",
    ]


def test_it_judges_a_batch_by_the_deadline_stored_at_its_start_whatever_the_settings_say(world):
    world.at(ny_epoch("2026-11-23 00:30"))
    world.monitor().step()
    start_batch(world, "2026-11-23 01:00")  # 05:00 New York, stored with the batch
    world.at(ny_epoch("2026-11-23 05:30"))
    assert world.monitor().step().opened == (f"late:{BATCH}",)
    changed = world.tracker_config.replace(deadline_hour=3, timezone="UTC")  # a new setting, mid-batch
    world.at(ny_epoch("2026-11-23 06:00"))
    result = world.monitor(tracker=changed).step()
    assert result.cleared == () and result.notifications == ()
    world.at(utc("2026-11-24 03:30"))  # the new setting's first deadline: no second LATE
    assert world.monitor(tracker=changed).step().notifications == ()
    world.tracker.end()
    result = world.monitor(tracker=changed).step()
    assert result.cleared == (f"late:{BATCH}",)
    assert (
        world.subjects()[-1]
        == f"[RECOVERED] nightly LATE: batch {BATCH} completed 17 h 30 min late, at 2026-11-24 03:30 UTC"
    )
    assert len(world.subjects()) == 2


def test_it_names_where_the_corrupt_tracker_went_when_its_unreadable_alert_recovers(world, tracker_file):
    world.at(ny_epoch("2026-11-23 00:30"))
    start_batch(world, "2026-11-23 01:00")
    monitor = world.monitor()
    tracker_file.write_text("{not json")
    world.at(ny_epoch("2026-11-23 02:00"))
    assert monitor.step().opened == ("tracker_unreadable:tracker",)
    world.at(ny_epoch("2026-11-23 02:05"))
    with pytest.raises(Exception, match="no batch"):
        world.tracker.stage("scrape", 50)  # the hook moves the corrupt file aside, starts fresh
    [moved] = list(tracker_file.parent.glob("batch_tracker.json.corrupt-*"))
    world.at(ny_epoch("2026-11-23 02:06"))
    result = monitor.step()
    assert result.cleared == ("tracker_unreadable:tracker",) and result.opened == ()
    assert world.subjects()[-1].startswith(
        "[RECOVERED] nightly TRACKER UNREADABLE: the tracker file is readable again; the corrupt one was moved aside"
    )
    assert f"moved aside to {moved} at 2026-11-23 02:05 EST" in world.sink.received()[-1].get_content()
    world.at(ny_epoch("2026-11-23 02:16"))
    assert monitor.step().notifications == () and len(world.subjects()) == 2


# --------------------------------------------------------------------------- field trial: real processes, faked clocks


def test_it_runs_processes_on_the_faked_clock(at_clock, monitor_env):
    env = at_clock(monitor_env, "2026-11-23 10:00")
    code = "import time; print(int(time.time()))"
    result = subprocess.run([VENV_PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert abs(int(result.stdout) - utc("2026-11-23 10:00")) < 60


@pytest.mark.parametrize("hook", [("start",), ("stage", "scrape", "50")])
def test_it_alerts_once_with_once_when_a_hook_moved_a_corrupt_tracker_aside(
    monitor_env, tmp_path, tracker_file, smtp_server, hook
):
    tracker_cli(monitor_env, "start")
    tracker_cli(monitor_env, "stage", "scrape", "100")
    tracker_file.write_text('{"schema_version": 1, "current": {"id": "torn wri')
    # The hook repairs the file; 'stage' is then refused (no batch any more) but the repair is recorded.
    run_tracker_cli(monitor_env, *hook, cwd=PROJECT_ROOT)
    [moved] = tracker_file.parent.glob("batch_tracker.json.corrupt-*")
    result = run_once(monitor_env, tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("PROBLEM: tracker_unreadable: the tracker file was corrupt")
    assert f"moved it aside to {moved}" in result.stdout
    [alert] = smtp_server.received()
    assert alert["Subject"].startswith("[TRACKER UNREADABLE] ")
    assert str(moved) in alert.get_content() and "the progress recorded before then is gone" in alert.get_content()
    again = run_once(monitor_env, tmp_path)
    assert again.returncode == 0, again.stdout
    recovery = smtp_server.received()[1]
    assert recovery["Subject"].startswith("[RECOVERED] nightly TRACKER UNREADABLE: ")
    assert run_once(monitor_env, tmp_path).returncode == 0
    assert len(smtp_server.received()) == 2


def test_it_reports_missed_deadlines_again_after_a_run_with_its_clock_days_ahead(
    monitor_env, tmp_path, smtp_server, at_clock
):
    ahead = run_once(at_clock(monitor_env, "2026-11-26 17:00"), tmp_path)
    assert ahead.returncode == 0, ahead.stderr
    fixed = run_once(at_clock(monitor_env, "2026-11-23 09:00"), tmp_path)  # 04:00 EST, the clock is right again
    assert fixed.returncode == 0, fixed.stderr
    assert "clock problem: watch_since" in fixed.stderr and "2026-11-26T17:00" in fixed.stderr
    missed = run_once(at_clock(monitor_env, "2026-11-23 10:10"), tmp_path)  # 05:10 EST, no batch tonight
    assert missed.returncode == 1, missed.stderr
    assert missed.stdout.startswith("PROBLEM: missing: no batch started before the deadline 2026-11-23 05:00 EST")
    assert [m["Subject"] for m in smtp_server.received()] == [
        "[MISSING] no nightly batch started before the 05:00 EST deadline (Mon 2026-11-23)"
    ]


@pytest.mark.slow
def test_it_mails_no_recovery_when_the_clock_steps_back_under_a_late_batch(
    monitor_env, tmp_path, smtp_server, at_clock
):
    tracker_cli(at_clock(monitor_env, "2026-11-23 06:00"), "start", "--id", "nightly-1")  # 01:00 EST
    assert run_once(at_clock(monitor_env, "2026-11-23 10:10"), tmp_path).returncode == 1  # LATE
    stepped_back = run_once(at_clock(monitor_env, "2026-11-23 09:10"), tmp_path)
    assert stepped_back.returncode == 1 and stepped_back.stdout.startswith("PROBLEM: late: "), stepped_back.stdout
    assert run_once(at_clock(monitor_env, "2026-11-23 10:20"), tmp_path).returncode == 1
    tracker_cli(at_clock(monitor_env, "2026-11-23 10:47"), "end")
    assert run_once(at_clock(monitor_env, "2026-11-23 10:50"), tmp_path).returncode == 0
    assert [m["Subject"] for m in smtp_server.received()] == [
        "[LATE] nightly batch nightly-1 missed its 05:00 EST deadline (Mon 2026-11-23)",
        "[RECOVERED] nightly LATE: batch nightly-1 completed 47 min late, at 2026-11-23 05:47 EST",
    ]


@pytest.mark.slow
def test_it_keeps_judging_a_batch_by_the_deadline_stored_at_its_start(monitor_env, tmp_path, smtp_server, at_clock):
    tracker_cli(at_clock(monitor_env, "2026-11-23 06:00"), "start", "--id", "nightly-1")  # 05:00 New York
    assert run_once(at_clock(monitor_env, "2026-11-23 10:30"), tmp_path).returncode == 1  # LATE
    changed = dict(
        monitor_env, BATCH_COMPLETION_DEADLINE_HOUR="3", BATCH_COMPLETION_TIMEZONE="UTC"
    )  # the settings change mid-batch: they apply from the next batch
    check = run_tracker_cli(at_clock(changed, "2026-11-23 10:40"), "check", cwd=PROJECT_ROOT)
    assert check.returncode == 1, check.stdout
    assert "batch nightly-1 missed its deadline 2026-11-23 10:00 UTC by 40 min" in check.stdout
    once = run_once(at_clock(changed, "2026-11-23 10:45"), tmp_path)
    assert once.returncode == 1 and once.stdout.startswith("PROBLEM: late: batch nightly-1"), once.stdout
    assert run_once(at_clock(changed, "2026-11-24 03:30"), tmp_path).returncode == 1  # no second LATE
    tracker_cli(at_clock(changed, "2026-11-24 04:00"), "end")
    assert run_once(at_clock(changed, "2026-11-24 04:05"), tmp_path).returncode == 0
    assert [m["Subject"] for m in smtp_server.received()] == [
        "[LATE] nightly batch nightly-1 missed its 05:00 EST deadline (Mon 2026-11-23)",
        "[RECOVERED] nightly LATE: batch nightly-1 completed 18 h 00 min late, at 2026-11-24 04:00 UTC",
    ]
    verdicts = []
    for env in (monitor_env, changed):  # a finished batch reads the same whatever the reader's settings
        status = json.loads(tracker_cli(at_clock(env, "2026-11-24 05:00"), "status", "--json").stdout)
        history = json.loads(tracker_cli(at_clock(env, "2026-11-24 05:00"), "history", "--json").stdout)
        verdicts.append((status["on_time"], status["deadline"]["epoch"], history[0]["on_time"]))
    assert verdicts == [(False, utc("2026-11-23 10:00"), False)] * 2


@pytest.mark.slow
def test_it_tells_someone_when_a_late_start_completes_between_two_once_runs(
    monitor_env, tmp_path, smtp_server, at_clock
):
    tracker_cli(at_clock(monitor_env, "2026-11-22 06:00"), "start", "--id", "yesterday")
    tracker_cli(at_clock(monitor_env, "2026-11-22 08:00"), "end")
    assert run_once(at_clock(monitor_env, "2026-11-23 09:55"), tmp_path).returncode == 0  # 04:55 EST
    tracker_cli(at_clock(monitor_env, "2026-11-23 10:01"), "start", "--id", "tonight")  # 05:01 EST: late
    tracker_cli(at_clock(monitor_env, "2026-11-23 10:04"), "end")
    check = run_tracker_cli(at_clock(monitor_env, "2026-11-23 10:05"), "check", cwd=PROJECT_ROOT)
    assert check.returncode == 1 and "batch tonight completed 4 min late" in check.stdout, check.stdout
    once = run_once(at_clock(monitor_env, "2026-11-23 10:05"), tmp_path)
    assert once.returncode == 1, once.stderr
    assert once.stdout.startswith("PROBLEM: late: batch tonight completed 4 min late"), once.stdout
    assert run_once(at_clock(monitor_env, "2026-11-23 10:15"), tmp_path).returncode == 0
    assert run_once(at_clock(monitor_env, "2026-11-23 10:25"), tmp_path).returncode == 0
    assert [m["Subject"] for m in smtp_server.received()] == [
        "[LATE] nightly batch tonight missed its 05:00 EST deadline (Mon 2026-11-23)",
        "[RECOVERED] nightly LATE: batch tonight completed 4 min late, at 2026-11-23 05:04 EST",
    ]
