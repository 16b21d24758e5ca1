"""The webhook channel (ALERT_WEBHOOK_URL): one JSON POST per notification through the persistent outbox, with
timeouts, retries, permanent 4xx failures, scrubbed replies and per-channel queues; ALERT_EMAIL=off."""

from __future__ import annotations

import io
import json

import pytest
from http_sink import HttpSink

from utils.batch_tracker import BatchTracker
from utils.config import ConfigError, MonitorConfig, TrackerConfig
from utils.mail_compose import KIND_LABELS
from utils.monitor import Monitor
from utils.outbox import Outbox
from utils.outbox_admin import listing_rows
from utils.service import build_parser, outbox_command
from utils.transports import PermanentDeliveryError, TransientDeliveryError
from utils.webhook import WebhookTransport, webhook_payload

BATCH = "20261123T060000Z-ab12"


@pytest.fixture
def sink():
    server = HttpSink().start()
    yield server
    server.stop()


class World:
    def __init__(self, tmp_path, tracker_file, clock):
        self.tmp_path = tmp_path
        self.clock = clock
        self.tracker_config = TrackerConfig(tracker_file=str(tracker_file), batch_name="nightly")
        self.tracker = BatchTracker(self.tracker_config, clock=clock)

    def config(self, **changes) -> MonitorConfig:
        values = {
            "tracker": self.tracker_config,
            "outbox_dir": str(self.tmp_path / "outbox"),
            "email_to": ("ops@example.com",),
            "email_from": "leadfactory@example.com",
            "metrics_port": 0,
            "status_page_url": "https://status.example.com/",
        }
        values.update(changes)
        return MonitorConfig(**values)

    def monitor(self, url: str, *, timeout: float = 5.0, **changes) -> Monitor:
        monitor = Monitor(self.config(webhook_url=url, **changes), clock=self.clock, early_warning=False)
        monitor.channels["webhook"] = WebhookTransport(url, timeout=timeout)  # a short timeout for the hang test
        return monitor

    def fail_batch(self) -> None:
        self.tracker.start(batch_id=BATCH)
        self.clock.advance(60)
        self.tracker.fail("enrich", "API quota exceeded <&>")


@pytest.fixture
def world(tmp_path, tracker_file, clock):
    return World(tmp_path, tracker_file, clock)


def webhook_records(outbox: Outbox, state: str = "pending"):
    records = {"pending": outbox.pending, "sent": outbox.sent, "failed": outbox.failed}[state]()
    return [r for r in records if r.channel == "webhook"]


def test_it_posts_one_json_per_notification_alert_and_recovery(world, sink):
    monitor = world.monitor(sink.url + "/hooks/T000/B000/secret")
    world.fail_batch()
    result = monitor.step()
    assert result.opened == (f"failed:{BATCH}",)
    assert [r for r in result.delivery.receipts if r.startswith("webhook")]
    (method, path, headers, body), *_ = sink.requests()
    assert (method, path) == ("POST", "/hooks/T000/B000/secret")
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["kind"] == "failed" and payload["status"] == "alert" and payload["notification"] == "alert"
    assert payload["job"] == "nightly" and payload["batch_id"] == BATCH and payload["incident"] == f"failed:{BATCH}"
    assert payload["subject"].startswith("[FAILED] nightly batch") and "API quota exceeded" in payload["summary"]
    # Slack-compatible: a bold subject, the summary with &, <, > escaped, a link to the status page.
    assert payload["text"].startswith("*[FAILED] nightly batch")
    assert "&lt;&amp;&gt;" in payload["text"] and "<https://status.example.com/|Status page>" in payload["text"]
    assert "Next steps:" in payload["details"] and payload["status_page"] == "https://status.example.com/"
    assert headers["Idempotency-Key"] == payload["message_id"]
    world.clock.advance(600)
    world.tracker.resume()
    world.tracker.end()
    result = monitor.step()
    assert result.cleared == (f"failed:{BATCH}",)
    bodies = sink.json_bodies()
    assert [b["status"] for b in bodies] == ["alert", "recovery"]
    assert bodies[1]["subject"].startswith("[RECOVERED]") and "completed after resume" in bodies[1]["summary"]
    assert bodies[1]["message_id"] != bodies[0]["message_id"]


def test_it_queues_each_notification_once_per_channel_across_a_crash(world, sink, monkeypatch):
    """A check that dies after queueing, before marking the notice queued, leaves it planned: the next
    check queues it again, and the outbox keeps one message per channel, so the webhook gets one POST."""
    monitor = world.monitor(sink.url)
    world.fail_batch()
    real_save, saves = monitor.log_store.save, []

    def save_then_die(log):
        saves.append(log)
        if len(saves) == 2:  # phase 2: the notice is in the outbox but not yet marked queued
            raise OSError("killed")
        real_save(log)

    monkeypatch.setattr(monitor.log_store, "save", save_then_die)
    with pytest.raises(OSError):
        monitor.check()
    monkeypatch.undo()
    assert monitor.log_store.load(world.clock()).pending  # still planned on disk
    assert sorted(r.channel for r in monitor.outbox.pending()) == ["email", "webhook"]
    result = monitor.step()
    assert len(result.notifications) == 1 and not monitor.log_store.load(world.clock()).pending
    assert sorted(r.channel for r in monitor.outbox.sent()) == ["email", "webhook"]
    assert len(sink.requests()) == 1


def test_it_retries_a_webhook_that_fails_or_hangs_and_delivers_once_it_recovers(world, sink):
    monitor = world.monitor(sink.url, timeout=0.5)
    world.fail_batch()
    sink.mode = 503
    monitor.step()
    (record,) = webhook_records(monitor.outbox)
    assert record.attempts == 1 and "503" in record.last_error
    # Meanwhile the e-mail went out: one channel's outage holds up no other channel.
    assert [r.channel for r in monitor.outbox.sent()] == ["email"]
    sink.mode = "hang"
    world.clock.advance(3600)
    monitor.deliver()
    (record,) = webhook_records(monitor.outbox)
    assert record.attempts == 2 and "timed out" in record.last_error
    sink.mode = "drop"
    world.clock.advance(3600)
    monitor.deliver()
    assert webhook_records(monitor.outbox)[0].attempts == 3
    sink.mode = "ok"
    world.clock.advance(3600)
    report = monitor.deliver()
    assert len(report.delivered) == 1 and webhook_records(monitor.outbox) == []
    assert len(webhook_records(monitor.outbox, "sent")) == 1
    world.clock.advance(3600)
    monitor.deliver()
    assert len(sink.requests()) == 4  # 503, hang, drop, delivered: nothing after the delivery


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_it_retries_408_429_and_5xx(status, sink):
    sink.mode = status
    with pytest.raises(TransientDeliveryError, match=str(status)):
        WebhookTransport(sink.url).send(b"{}", sender="", recipients=[], meta={"id": "x"})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301])
def test_it_refuses_for_good_on_other_4xx_and_redirects(status, sink):
    sink.mode = status
    with pytest.raises(PermanentDeliveryError, match=str(status)):
        WebhookTransport(sink.url).send(b"{}", sender="", recipients=[], meta={"id": "x"})


def test_it_moves_a_refused_webhook_message_to_failed_and_lists_it(world, sink):
    secret = "T0001/B0002/XXXXsecretXXXX"
    monitor = world.monitor(f"{sink.url}/services/{secret}")
    sink.mode = 404
    sink.reply_body = f"no such hook /services/{secret}\n\x1b[31m token XXXXsecretXXXX".encode() + b"x" * 5000
    world.fail_batch()
    result = monitor.step()
    assert len(result.delivery.failed) == 1
    (failed,) = webhook_records(monitor.outbox, "failed")
    assert "404" in failed.last_error and "XXXXsecretXXXX" not in failed.last_error
    assert len(failed.last_error) < 400 and "\x1b" not in failed.last_error and "\n" not in failed.last_error
    rows = listing_rows(monitor.outbox, world.clock())
    assert [(r["state"], r["channel"]) for r in rows] == [("failed", "webhook")]
    out = io.StringIO()
    args = build_parser().parse_args(["outbox", "list"])
    outbox_command(args, monitor.config, out)
    assert "(via webhook)" in out.getvalue() and "404" in out.getvalue()


def test_it_sends_no_email_when_email_is_off(world, sink, tmp_path):
    config = MonitorConfig.from_env(
        {
            "BATCH_TRACKER_FILE": world.tracker_config.tracker_file,
            "BATCH_OUTBOX_DIR": str(tmp_path / "outbox"),
            "ALERT_WEBHOOK_URL": sink.url,
            "ALERT_EMAIL": "off",
            "METRICS_PORT": "0",
        }
    )
    monitor = Monitor(config, clock=world.clock, early_warning=False)
    world.fail_batch()
    monitor.step()
    assert list(monitor.channels) == ["webhook"]
    assert [r.channel for r in monitor.outbox.sent()] == ["webhook"]
    stored = [path.read_bytes() for path in (tmp_path / "outbox").rglob("*.eml")]
    assert stored and all(json.loads(data)["job"] == "nightly" for data in stored)  # JSON only: no e-mail
    assert "webhook http://127.0.0.1" in monitor.status()["monitor"]["delivery"]
    assert (
        "smtp" not in monitor.status()["monitor"]["delivery"] and ".eml" not in monitor.status()["monitor"]["delivery"]
    )


def test_it_refuses_a_message_whose_channel_is_no_longer_configured(world, sink):
    monitor = world.monitor(sink.url)
    world.fail_batch()
    monitor.check()
    without_webhook = Monitor(world.config(), clock=world.clock, early_warning=False)
    report = without_webhook.deliver()
    assert [r.channel for r in report.failed] == ["webhook"]
    assert "not configured" in report.failed[0].last_error
    assert sink.requests() == []


def test_it_composes_every_field_for_every_kind():
    for kind in KIND_LABELS:
        payload = webhook_payload(
            "reminder",
            {"kind": kind, "key": "k", "summary": "s", "since": 0.0, "batch_id": None},
            job="weekly",
            subject="subj",
            details="body",
            message_id="<m@x>",
            at=0.0,
        )
        assert payload["status"] == "alert" and payload["notification"] == "reminder"
        assert payload["job"] == "weekly" and payload["at"] == "1970-01-01T00:00:00+00:00"
        assert set(payload) >= {"kind", "status", "job", "batch_id", "summary", "subject", "text"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALERT_WEBHOOK_URL", "ftp://hooks.example.com/x"),
        ("ALERT_WEBHOOK_URL", "https:///no-host"),
        ("ALERT_WEBHOOK_URL", "http://hooks.example.com:99999/"),
        ("ALERT_WEBHOOK_URL", "http://user:pw@hooks.example.com/"),
        ("ALERT_WEBHOOK_URL", "http://a.example.com/, http://b.example.com/"),
        ("ALERT_EMAIL", "maybe"),
    ],
)
def test_it_refuses_a_bad_webhook_setting_with_one_line(name, value):
    with pytest.raises(ConfigError) as caught:
        MonitorConfig.from_env({name: value})
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_it_refuses_email_off_without_another_channel_or_with_smtp():
    with pytest.raises(ConfigError, match="neither ALERTMANAGER_URL nor ALERT_WEBHOOK_URL"):
        MonitorConfig.from_env({"ALERT_EMAIL": "off"})
    with pytest.raises(ConfigError, match="SMTP_SERVER is set"):
        MonitorConfig.from_env({"ALERT_EMAIL": "off", "ALERT_WEBHOOK_URL": "http://h/", "SMTP_SERVER": "mail"})
