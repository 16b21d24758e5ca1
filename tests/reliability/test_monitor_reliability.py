"""Fault injection against the monitor: SMTP outages with kill -9, bad disks, hostile mail content.

Real parts throughout: an aiosmtpd server on 127.0.0.1 (or a port where nothing
listens, for an outage), the monitor as a real subprocess scraped over HTTP, the
tracker's hook CLI, tmpfs mounts remounted read-only or filled to the last byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, VENV_PYTHON, FakeClock, SmtpSink, free_port, run_tracker_cli, wait_until
from disk_faults import fill, remount, small_tmpfs
from helpers import NEW_YORK, ny_epoch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import incidents
from utils.batch_tracker import (
    MAX_REASON_LENGTH,
    BatchTracker,
    TrackerConfig,
    clean_text,
)
from utils.config import MonitorConfig
from utils.deadline import DailyDeadline
from utils.mail_compose import (
    ALERT,
    KIND_LABELS,
    MAIL_POLICY,
    RECOVERY,
    REMINDER,
    MailContext,
    body_safe,
    compose_message,
    header_safe,
    message_id_for,
    resolution,
)
from utils.model import NAME_CHARACTERS, Batch, Snapshot
from utils.monitor import Monitor
from utils.state_store import StorageError, sibling_file

MONITOR = str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py")
SENDER_DOMAIN = "example.com"


def monitor_config(tracker_config: TrackerConfig, outbox: Path, smtp_port: int | None, **changes) -> MonitorConfig:
    values = {
        "tracker": tracker_config,
        "outbox_dir": str(outbox),
        "email_to": ("ops@example.com",),
        "email_from": f"leadfactory@{SENDER_DOMAIN}",
        "smtp_server": None if smtp_port is None else "127.0.0.1",
        "smtp_port": smtp_port or 25,
        "smtp_security": "plain",
        "smtp_timeout_seconds": 5.0,
        "metrics_port": 0,
    }
    values.update(changes)
    return MonitorConfig(**values)


# --------------------------------------------------------------------------- subprocess helpers


def far_deadline() -> dict:
    """Settings that put the real clock's next deadline about 12 hours away: no late alert mid-test."""
    hour = (dt.datetime.now(dt.UTC).hour + 12) % 24
    return {"BATCH_COMPLETION_TIMEZONE": "UTC", "BATCH_COMPLETION_DEADLINE_HOUR": str(hour)}


def tracker_cli(env, *args, check=True) -> subprocess.CompletedProcess:
    return run_tracker_cli(env, *args, cwd=PROJECT_ROOT, check=check)


@contextlib.contextmanager
def running_monitor(env, log_path: Path):
    """The monitor entry point as a real subprocess, its log in ``log_path``; SIGKILLed on exit."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [VENV_PYTHON, MONITOR], env=env, cwd=log_path.parent, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()  # SIGKILL also ends a SIGSTOPped process
        process.wait(timeout=10)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def healthz(port: int) -> tuple[int, str] | None:
    """(status, body) of /healthz, or None while nothing answers yet."""
    try:
        return http_get(port, "/healthz")
    except (urllib.error.URLError, ConnectionError):
        return None


def status_json(port: int) -> dict:
    code, body = http_get(port, "/status.json")
    assert code == 200, body
    return json.loads(body)


def read_state(path: str) -> dict:
    with open(path, "rb") as handle:
        return json.loads(handle.read())


def wait_for_a_check_after(state_file: str, instant: float) -> None:
    """Wait until the monitor (checking every second) records a check that began a second after ``instant``."""
    wait_until(
        lambda: (read_state(state_file)["last_check_at"] or 0) > instant + 1.0,
        message=f"a check after {instant}",
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_threads_stopped(pid: int) -> bool:
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            with open(f"/proc/{pid}/task/{task}/stat") as handle:
                states.append(handle.read().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def freeze_away_from(process: subprocess.Popen, directory: Path) -> None:
    """SIGSTOP ``process`` at a moment it holds no file under ``directory`` open.

    A frozen monitor cannot react to the tracker, so a failure recorded now reaches it
    only after the disk trouble is inflicted; holding no file there lets a remount
    read-only succeed (a file open for writing makes it fail with EBUSY).
    """

    def attempt() -> bool:
        os.kill(process.pid, signal.SIGSTOP)
        wait_until(lambda: all_threads_stopped(process.pid), timeout=5, message="the monitor to stop")
        fd_dir = f"/proc/{process.pid}/fd"
        targets = []
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(os.path.join(fd_dir, fd)))
        if not any(target.startswith(str(directory) + os.sep) for target in targets):
            return True
        os.kill(process.pid, signal.SIGCONT)
        return False

    wait_until(attempt, timeout=10, interval=0.01, message="a moment the monitor holds no file on the disk")


# --------------------------------------------------------------------------- SMTP outage


def test_it_delivers_exactly_once_when_restarted_again_and_again_during_an_smtp_outage(tmp_path, clock):
    """Server down when the incident opens, up an hour later (injected clock); a new Monitor per restart."""
    port = free_port()  # nothing listens here: connection refused
    tracker_config = TrackerConfig(tracker_file=str(tmp_path / "data" / "batch_tracker.json"))
    config = monitor_config(tracker_config, tmp_path / "outbox", port)
    tracker = BatchTracker(tracker_config, clock=clock)
    clock.set(ny_epoch("2026-11-23 00:30"))
    Monitor(config, clock=clock).step()
    clock.set(ny_epoch("2026-11-23 01:00"))
    batch = tracker.start(["scrape", "enrich"], batch_id="outage-1")
    clock.set(ny_epoch("2026-11-23 02:00"))
    tracker.fail("enrich", "exit code 3")

    first = Monitor(config, clock=clock).step()
    ident = f"failed:{batch}"
    assert first.opened == (ident,)
    assert len(first.delivery.deferred) == 1
    assert "Connection refused" in first.delivery.deferred[0].last_error
    stable_id = message_id_for(ident, ny_epoch("2026-11-23 02:00"), ALERT, 0, SENDER_DOMAIN)
    assert first.notifications[0].message_id == stable_id

    for restart in range(6):  # an hour of outage, a restart every ten minutes
        clock.advance(600)  # the longest backoff: every restart finds the alert due
        monitor = Monitor(config, clock=clock)
        if restart % 2:  # killed right after its check, before any delivery attempt
            assert monitor.step(deliver=False).notifications == ()
            continue
        result = monitor.step()
        assert result.notifications == () and result.delivery.delivered == ()
        assert len(result.delivery.deferred) == 1
    state = read_state(config.monitor_state_file)
    assert state["outbox"]["pending"] == 1 and state["counters"]["delivery_failures"] == 4
    assert state["counters"]["alerts_sent"] == {"failed": 1}  # queued once, never composed again

    sink = SmtpSink(port=port).start()
    try:
        clock.advance(600)
        result = Monitor(config, clock=clock).step()
        assert len(result.delivery.delivered) == 1
        for _ in range(5):  # more restarts before the deadline (then a late alert would be due): nothing new
            clock.advance(600)
            result = Monitor(config, clock=clock).step()
            assert result.notifications == () and result.delivery.delivered == ()
        received = sink.received()
    finally:
        sink.stop()
    assert len(received) == 1
    assert received[0]["Message-ID"] == stable_id
    assert received[0]["Subject"].startswith(f"[FAILED] nightly batch {batch} failed at stage enrich")
    assert read_state(config.monitor_state_file)["outbox"]["pending"] == 0


@pytest.fixture
def outage_env(base_env, tmp_path) -> dict:
    return dict(
        base_env,
        BATCH_OUTBOX_DIR=str(tmp_path / "outbox"),
        SMTP_SERVER="127.0.0.1",
        SMTP_PORT=str(free_port()),  # nothing listens there yet
        SMTP_SECURITY="plain",
        SMTP_TIMEOUT_SECONDS="5",
        BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="1",  # last_check_at moves every second
        ALERT_EMAIL_TO="ops@example.com",
        ALERT_EMAIL_FROM=f"leadfactory@{SENDER_DOMAIN}",
        **far_deadline(),
    )


@pytest.mark.slow
def test_it_delivers_exactly_once_after_kill_9_during_an_smtp_outage(outage_env, tmp_path, tracker_file):
    state_file = sibling_file(str(tracker_file), "monitor")
    tracker_cli(outage_env, "start", "--stages", "scrape,enrich")
    tracker_cli(outage_env, "stage", "scrape", "100")
    first_port = free_port()
    with running_monitor(dict(outage_env, METRICS_PORT=str(first_port)), tmp_path / "monitor-1.log") as first:
        wait_until(lambda: healthz(first_port) == (200, "ok\n"), message="the first monitor to be healthy")
        tracker_cli(outage_env, "fail", "--stage", "enrich", "--reason", "exit code 3")

        def alert_pending_after_a_failed_attempt():
            monitor = status_json(first_port)["monitor"]
            return monitor["outbox"].get("pending") == 1 and monitor["counters"]["delivery_failures"] >= 1

        wait_until(alert_pending_after_a_failed_attempt, message="the alert to wait in the outbox after a failure")
        first.kill()  # kill -9: no chance to clean up
        first.wait(timeout=10)
    (sidecar,) = (tmp_path / "outbox" / "pending").glob("*.json")
    pending = json.loads(sidecar.read_text())
    assert "Connection refused" in pending["last_error"]
    queued = BytesParser(policy=policy.default).parsebytes(sidecar.with_suffix(".eml").read_bytes())
    state = read_state(state_file)
    (record,) = state["open_incidents"].values()
    stable_id = message_id_for(f"failed:{record['key']}", record["opened_at"], ALERT, 0, SENDER_DOMAIN)
    assert queued["Message-ID"] == pending["message_id"] == stable_id

    sink = SmtpSink(port=int(outage_env["SMTP_PORT"])).start()
    second_port = free_port()
    try:
        with running_monitor(dict(outage_env, METRICS_PORT=str(second_port)), tmp_path / "monitor-2.log") as second:
            (mail,) = sink.wait_for(1, timeout=20)
            assert mail["Message-ID"] == stable_id
            assert mail["Subject"] == pending["subject"]
            # A tracker change and later checks bring nothing new.
            tracker_cli(outage_env, "resume")
            wait_for_a_check_after(state_file, time.time())
            assert len(sink.received()) == 1
            # The incident the restarted monitor inherited still clears exactly once.
            tracker_cli(outage_env, "end")
            recovery = sink.wait_for(2, timeout=10)[1]
            wait_for_a_check_after(state_file, time.time())
            status = status_json(second_port)["monitor"]
            assert second.poll() is None
        received = sink.received()
    finally:
        sink.stop()
    assert len(received) == 2
    assert recovery["Message-ID"] == message_id_for(
        f"failed:{record['key']}", record["opened_at"], RECOVERY, 0, SENDER_DOMAIN
    )
    assert recovery["Subject"].startswith("[RECOVERED] nightly FAILED: batch ")
    assert [a["type"] for a in status["recent_alerts"]] == ["alert", "recovery"]
    assert status["counters"]["alerts_sent"] == {"failed": 1} and status["counters"]["recoveries_sent"] == 1
    assert status["outbox"]["pending"] == 0
    assert len(list((tmp_path / "outbox" / "sent").glob("*.eml"))) == 2


# --------------------------------------------------------------------------- disk trouble


TROUBLE = {  # how the disk breaks: what /healthz, the logs and the CLIs must say
    "read-only": "read-only file system",
    "full": "no space left on device",
}


def inflict(trouble: str, disk: Path):
    """Break ``disk`` the named way; return the function that heals it."""
    if trouble == "read-only":
        remount(disk, "ro")
        return lambda: remount(disk, "rw")
    filler = fill(disk)
    return filler.unlink


@pytest.mark.slow
@pytest.mark.parametrize("trouble", sorted(TROUBLE))
def test_it_keeps_running_reports_unhealthy_and_alerts_once_the_disk_heals(trouble, base_env, tmp_path, smtp_server):
    problem = TROUBLE[trouble]
    with small_tmpfs(tmp_path / "disk") as disk:
        tracker_file = disk / "batch_tracker.json"
        state_file = sibling_file(str(tracker_file), "monitor")
        metrics_port = free_port()
        env = dict(
            base_env,
            BATCH_TRACKER_FILE=str(tracker_file),
            BATCH_OUTBOX_DIR=str(disk / "outbox"),
            SMTP_SERVER="127.0.0.1",
            SMTP_PORT=str(smtp_server.port),
            SMTP_SECURITY="plain",
            METRICS_PORT=str(metrics_port),
            BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="1",
            **far_deadline(),
        )
        tracker_cli(env, "start", "--stages", "scrape,enrich")
        with running_monitor(env, tmp_path / "monitor.log") as process:
            wait_until(lambda: healthz(metrics_port) == (200, "ok\n"), message="a healthy monitor")
            freeze_away_from(process, disk)
            tracker_cli(env, "fail", "--stage", "enrich", "--reason", "disk test")  # before the disk breaks
            tracker_before = tracker_file.read_bytes()
            state_before = Path(state_file).read_bytes()
            heal = inflict(trouble, disk)
            refused = tracker_cli(env, "resume", check=False)  # a valid write the disk must refuse
            assert refused.returncode == 3 and problem in refused.stderr.lower(), refused.stderr
            os.kill(process.pid, signal.SIGCONT)
            started, cpu_before = time.monotonic(), cpu_seconds(process.pid)

            _code, reason = wait_until(
                lambda: (answer := healthz(metrics_port)) and answer[0] == 503 and answer,
                message="/healthz to report the storage problem",
            )
            assert problem in reason.lower() and str(disk) in reason

            def failed_checks() -> int:
                return (tmp_path / "monitor.log").read_text().count("check failed:")

            wait_until(lambda: failed_checks() >= 2, message="the monitor to keep checking")
            elapsed, cpu = time.monotonic() - started, cpu_seconds(process.pid) - cpu_before
            assert cpu < 0.5 * elapsed, f"{cpu:.2f} s of CPU in {elapsed:.2f} s: a busy loop"
            assert failed_checks() <= elapsed + 2  # one attempt per check interval, not a tight retry loop
            metrics_code, metrics = http_get(metrics_port, "/metrics")
            assert metrics_code == 200
            assert 'anthrasite_batch_tracker_readable{batch="nightly"} 1.0' in metrics.splitlines()
            status = status_json(metrics_port)
            assert status["state"] == "failed" and status["monitor"]["healthy"] is False
            assert process.poll() is None
            assert smtp_server.received() == []
            assert tracker_file.read_bytes() == tracker_before
            assert Path(state_file).read_bytes() == state_before
            assert not [n for n in os.listdir(disk) if ".tmp-" in n]

            heal()
            wait_until(lambda: healthz(metrics_port) == (200, "ok\n"), message="the monitor to recover")
            (mail,) = smtp_server.wait_for(1)
            assert mail["Subject"].startswith("[FAILED] nightly batch ") and "at stage enrich" in mail["Subject"]
            assert "disk test" in mail.get_content()
            wait_for_a_check_after(state_file, time.time())
            assert len(smtp_server.received()) == 1
            assert read_state(state_file)["counters"]["alerts_sent"] == {"failed": 1}
            assert process.poll() is None


@pytest.mark.parametrize("trouble", sorted(TROUBLE))
def test_it_exits_3_with_one_line_from_once_on_a_broken_data_directory(trouble, base_env, tmp_path, smtp_server):
    with small_tmpfs(tmp_path / "disk") as disk:
        env = dict(
            base_env,
            BATCH_TRACKER_FILE=str(disk / "batch_tracker.json"),
            BATCH_OUTBOX_DIR=str(disk / "outbox"),
            SMTP_SERVER="127.0.0.1",
            SMTP_PORT=str(smtp_server.port),
            SMTP_SECURITY="plain",
            METRICS_PORT="0",
            **far_deadline(),
        )
        tracker_cli(env, "start")
        tracker_cli(env, "fail", "--reason", "exit code 3")
        once = [VENV_PYTHON, MONITOR, "--once"]
        healthy = subprocess.run(once, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 1 and len(smtp_server.received()) == 1, healthy.stderr
        before = {name: (disk / name).read_bytes() for name in os.listdir(disk) if (disk / name).is_file()}
        inflict(trouble, disk)
        result = subprocess.run(once, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 3, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("batch_completion_monitor: storage error: ") and TROUBLE[trouble] in lines[0].lower()
        assert result.stdout == ""
        after = {name: (disk / name).read_bytes() for name in before}
        assert after == before
        assert len(smtp_server.received()) == 1


def test_it_never_resends_an_accepted_alert_while_the_disk_is_full(tmp_path, clock):
    """The server took the message but the outbox cannot record it: later passes must not send it again."""
    sink = SmtpSink().start()
    try:
        with small_tmpfs(tmp_path / "disk") as disk:
            tracker_config = TrackerConfig(tracker_file=str(disk / "batch_tracker.json"))
            config = monitor_config(tracker_config, disk / "outbox", sink.port)
            tracker = BatchTracker(tracker_config, clock=clock)
            clock.set(ny_epoch("2026-11-23 01:00"))
            tracker.start(["scrape"])
            tracker.fail("scrape", "exit code 3")
            monitor = Monitor(config, clock=clock)  # one process: the delivery worker's view
            sink.reject_with = "451 4.3.0 try again later"
            assert len(monitor.step().delivery.deferred) == 1
            filler = fill(disk)
            sink.reject_with = None
            for _ in range(4):  # the delivery worker's passes while the disk stays full
                clock.advance(600)
                with pytest.raises(StorageError, match="no space left on device"):
                    monitor.deliver()
            assert len(sink.received()) == 1
            filler.unlink()
            clock.advance(600)
            recorded = monitor.deliver()  # recorded as sent at last, not sent again
            assert [m.message_id for m in recorded.delivered] == [sink.received()[0]["Message-ID"]]
            result = monitor.step()
            assert result.notifications == () and result.delivery.delivered == ()
            assert read_state(config.monitor_state_file)["outbox"]["pending"] == 0
            assert len(list((disk / "outbox" / "sent").glob("*.eml"))) == 1
            assert len(sink.received()) == 1
    finally:
        sink.stop()


# --------------------------------------------------------------------------- hostile mail content


EXPECTED_HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "X-Batch-Incident",
    "X-Batch-Notification",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
]
HOSTILE_DEADLINE = DailyDeadline(5, 0, NEW_YORK)
names = st.text(alphabet=sorted(NAME_CHARACTERS), min_size=1, max_size=64)
reasons = st.one_of(
    st.text(max_size=300),
    st.text(max_size=MAX_REASON_LENGTH + 500).filter(lambda text: len(text) > 200),
    st.lists(
        st.sampled_from(
            ["\r", "\n", "\r\n", "\x00", "Bcc: evil@example.com", "Subject: fake", "\u2028", "é", " ", ":"]
        ),
        max_size=12,
    ).map("".join),
)


def header_names(raw: bytes) -> list[str]:
    """The header names of a serialized message, in order; asserts the block is well formed."""
    head, separator, _body = raw.partition(b"\r\n\r\n")
    assert separator, "no blank line ends the header block"
    assert b"\x00" not in head
    lines = head.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), "a bare CR or LF in the headers"
    found = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            assert found, "the header block starts with a continuation line"
            continue
        name, colon, _value = line.partition(b":")
        assert colon and name and b" " not in name, f"not a header line: {line!r}"
        found.append(name.decode("ascii"))
    return found


def check_message(raw: bytes, notification_type: str) -> object:
    found = header_names(raw)
    # Recoveries and reminders thread under their alert.
    threading = [] if notification_type == ALERT else ["In-Reply-To", "References"]
    assert sorted(found) == sorted(EXPECTED_HEADERS + threading), found
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert not message.defects
    assert message["Bcc"] is None and message["Cc"] is None
    subject = str(message["Subject"])
    assert message.get_all("Subject") == [subject]
    assert "\r" not in subject and "\n" not in subject and len(subject) <= 200
    assert message["X-Batch-Notification"] == notification_type
    assert [str(a) for a in message["To"].addresses] == ["ops@example.com"]
    return message


def hostile_night(batch_id: str, stage: str, reason: str) -> tuple[Batch, Batch]:
    """The tracker's records of a batch that failed at ``stage`` with ``reason`` at 01:01 New York time
    (the reason as the tracker stores it: its one rule where text enters, ``clean_text``), and of the
    same batch resumed at 01:02 and completed at 01:03."""
    started = ny_epoch("2026-11-23 01:00")
    failure = {"stage": stage, "reason": clean_text(reason), "at": started + 60}
    running = {
        "id": batch_id,
        "state": "running",
        "started_at": started,
        "updated_at": started + 60,
        "expected_stages": [stage],
        "stages": {stage: {"percentage": 40.0, "first_seen_at": started, "updated_at": started}},
        "deadline_at": HOSTILE_DEADLINE.first_after(started),
    }
    failed = {**running, "state": "failed", "ended_at": started + 60, "failure": failure, "failures": [failure]}
    completed = {
        **running,
        "state": "completed",
        "updated_at": started + 180,
        "ended_at": started + 180,
        "duration_seconds": 180.0,
        "failures": [failure],
        "resumed_at": [started + 120],
    }
    return Batch.from_dict(failed), Batch.from_dict(completed)


def alert_and_recovery(ctx: MailContext, failed: Batch, completed: Batch) -> tuple[bytes, bytes]:
    """The alert for ``failed`` (detected by utils.incidents) and the recovery once ``completed``,
    composed as the monitor composes them and serialized as the outbox stores them."""
    opened_at = failed.ended_at + 60
    broken = Snapshot(current=failed)
    [incident] = incidents.open_incidents(broken, opened_at, HOSTILE_DEADLINE, watch_since=failed.started_at)
    assert incident.identity == f"failed:{failed.id}"
    record = {**incident.to_dict(), "opened_at": opened_at}  # the monitor's log record of it
    alert = compose_message(
        ctx,
        notification_type=ALERT,
        incident=record,
        snapshot=broken,
        now=opened_at,
        message_id=message_id_for(incident.identity, opened_at, ALERT, 0, SENDER_DOMAIN),
    )
    cleared_at = completed.ended_at + 60
    healed = Snapshot(current=completed)
    assert incidents.open_incidents(healed, cleared_at, HOSTILE_DEADLINE, watch_since=failed.started_at) == []
    recovery = compose_message(
        ctx,
        notification_type=RECOVERY,
        incident=record,
        snapshot=healed,
        now=cleared_at,
        message_id=message_id_for(incident.identity, opened_at, RECOVERY, 0, SENDER_DOMAIN),
        resolution_text=resolution(record, healed, HOSTILE_DEADLINE, cleared_at),
    )
    return alert.as_bytes(policy=MAIL_POLICY), recovery.as_bytes(policy=MAIL_POLICY)


def check_alert_and_recovery(alert_raw: bytes, recovery_raw: bytes, batch_name: str, batch_id: str, reason: str):
    shown = body_safe(clean_text(reason))  # the tracker's one rule where text enters, then the body's
    for raw, kind in ((alert_raw, ALERT), (recovery_raw, RECOVERY)):
        message = check_message(raw, kind)
        body = message.get_content().replace("\r\n", "\n")  # the SMTP policy's line ends
        assert shown in body
        assert all(ch.isprintable() or ch == "\n" for ch in body), "a control character reached the body"
    alert_message = check_message(alert_raw, ALERT)
    assert alert_message["Subject"].startswith(f"[FAILED] {batch_name} batch {batch_id}"[:190])


@settings(max_examples=60, deadline=None)
@given(batch_name=names, batch_id=names, stage=names, reason=reasons)
def test_it_never_lets_tracker_text_inject_a_mail_header(batch_name, batch_id, stage, reason):
    """Alert and recovery for hostile tracker text, composed from the batch records in memory."""
    ctx = MailContext(
        batch_name=batch_name,
        deadline=HOSTILE_DEADLINE,
        sender=f"leadfactory@{SENDER_DOMAIN}",
        recipients=("ops@example.com",),
        tracker_file="/srv/data/batch_tracker.json",
        hostname="worker-1",
    )
    alert_raw, recovery_raw = alert_and_recovery(ctx, *hostile_night(batch_id, stage, reason))
    check_alert_and_recovery(alert_raw, recovery_raw, batch_name, batch_id, reason)


def test_it_queues_only_safe_messages_for_hostile_tracker_text_through_the_monitor(tmp_path):
    """The monitor's own check, real tracker files and outbox: alert and recovery as the outbox stores them."""
    batch_name, batch_id, stage = "nightly.leads-2", "20261123T060000Z-ab12", "enrich_v2"
    reason = "exit 3\r\nBcc: evil@example.com\nSubject: fake\x00\u2028" + "é" * 300
    tracker_config = TrackerConfig(tracker_file=str(tmp_path / "batch_tracker.json"), batch_name=batch_name)
    config = monitor_config(tracker_config, tmp_path / "outbox", None)
    clock = FakeClock(ny_epoch("2026-11-23 01:00"))
    tracker = BatchTracker(tracker_config, clock=clock)
    tracker.start([stage], batch_id=batch_id)
    tracker.stage(stage, 40)
    clock.advance(60)
    tracker.fail(stage, reason)
    monitor = Monitor(config, clock=clock)
    alert = monitor.check().notifications
    clock.advance(60)
    tracker.resume()
    tracker.end()
    recovery = monitor.check().notifications
    assert [n.type for n in alert] == [ALERT] and [n.type for n in recovery] == [RECOVERY]

    pending = tmp_path / "outbox" / "pending"
    alert_raw = (pending / f"{alert[0].outbox_id}.eml").read_bytes()
    recovery_raw = (pending / f"{recovery[0].outbox_id}.eml").read_bytes()
    check_alert_and_recovery(alert_raw, recovery_raw, batch_name, batch_id, reason)


@settings(max_examples=80, deadline=None)
@given(
    batch_name=names,
    kind=st.sampled_from(["failed", "late", "something_new"]),
    key=reasons,
    summary=reasons,
    resolution_text=reasons,
    notification_type=st.sampled_from([ALERT, RECOVERY, REMINDER]),
)
def test_it_keeps_any_text_composed_into_a_header_on_one_line(
    batch_name, kind, key, summary, resolution_text, notification_type
):
    """compose_message itself, with hostile text wherever a record's text can reach a header."""
    deadline = DailyDeadline(5, 0, "America/New_York")
    ctx = MailContext(
        batch_name=batch_name,
        deadline=deadline,
        sender=f"leadfactory@{SENDER_DOMAIN}",
        recipients=("ops@example.com",),
        tracker_file="/srv/data/batch_tracker.json",
        hostname="host\r\nBcc: evil@example.com",
    )
    now = ny_epoch("2026-11-23 06:00")
    incident = {"kind": kind, "key": key, "summary": summary, "since": now - 60, "batch_id": None, "opened_at": now}
    message = compose_message(
        ctx,
        notification_type=notification_type,
        incident=incident,
        snapshot=Snapshot(),
        now=now,
        message_id=message_id_for(f"{kind}:{key}", now, notification_type, 1, SENDER_DOMAIN),
        resolution_text=resolution_text or None,
        reminder_number=1,
    )
    parsed = check_message(message.as_bytes(), notification_type)
    assert str(parsed["Subject"]) == str(message["Subject"])
    assert parsed["X-Batch-Incident"] == header_safe(f"{kind}:{key}")
    if notification_type == RECOVERY and resolution_text:
        assert parsed["Subject"] == header_safe(
            f"[RECOVERED] {batch_name} {KIND_LABELS.get(kind, '')}: {resolution_text}"
        )
    body = parsed.get_content().replace("\r\n", "\n")
    assert all(ch.isprintable() or ch == "\n" for ch in body), "a control character reached the body"
    if notification_type != ALERT:
        assert body_safe(summary) in body


# --------------------------------------------------------------------------- the systemd watchdog


@pytest.mark.slow
def test_it_pings_the_watchdog_only_while_its_checks_complete(base_env, tmp_path, tracker_file):
    """A monitor whose every check fails must go quiet, so systemd's WatchdogSec restarts it."""
    name = f"batch-monitor-watchdog-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    received: list[str] = []

    def drain() -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                received.append(sock.recv(4096).decode())
        return received

    state_file = Path(sibling_file(str(tracker_file), "monitor"))
    env = dict(
        base_env,
        BATCH_OUTBOX_DIR=str(tmp_path / "outbox"),
        METRICS_PORT="0",
        BATCH_COMPLETION_CHECK_INTERVAL_SECONDS="1",
        NOTIFY_SOCKET="@" + name,
        WATCHDOG_USEC="400000",  # ping every 0.2 s while healthy
        **far_deadline(),
    )
    tracker_cli(env, "start")
    log = tmp_path / "monitor.log"
    try:
        with running_monitor(env, log):
            wait_until(lambda: "WATCHDOG=1" in drain(), message="a first watchdog ping")
            state_file.unlink()
            state_file.mkdir()  # the state can no longer be read: every check fails from now on
            wait_until(lambda: log.read_text().count("check failed:") >= 1, message="a failed check")
            received.clear()
            drain()
            received.clear()  # a ping sent before the failure was noticed may still be queued
            wait_until(lambda: log.read_text().count("check failed:") >= 3, message="more failed checks")
            assert "WATCHDOG=1" not in drain(), received
            state_file.rmdir()  # healed: the pings come back
            wait_until(lambda: "WATCHDOG=1" in drain(), message="watchdog pings after the checks recover")
    finally:
        sock.close()
