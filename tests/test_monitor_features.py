"""Steps for tests/features/monitor.feature: Monitor.step() with an injected clock and a real SMTP server."""

from __future__ import annotations

import pytest
from helpers import ny_epoch
from pytest_bdd import given, parsers, scenarios, then, when

from utils.batch_tracker import BatchTracker, TrackerConfig
from utils.config import MonitorConfig
from utils.monitor import Monitor

scenarios("monitor.feature")


class MonitorWorld:
    """What the steps share: the tracker, the clock, the SMTP sink and the current Monitor object."""

    def __init__(self, tmp_path, tracker_file, clock, sink):
        self.clock = clock
        self.sink = sink
        self.tracker_config = TrackerConfig(
            tracker_file=str(tracker_file), expected_stages=("scrape", "enrich", "score")
        )
        self.tracker = BatchTracker(self.tracker_config, clock=clock)
        self.tracker_file = tracker_file
        self.outbox_dir = tmp_path / "outbox"
        self.recipients: tuple[str, ...] = ()
        self.monitor: Monitor | None = None
        self.batches = 0

    def local(self, text: str) -> float:
        """``YYYY-MM-DD HH:MM`` in the deadline's zone as a UTC epoch."""
        return ny_epoch(text, self.tracker_config.timezone)

    def new_monitor(self) -> Monitor:
        config = MonitorConfig(
            tracker=self.tracker_config,
            outbox_dir=str(self.outbox_dir),
            email_to=self.recipients,
            email_from="leadfactory@example.com",
            smtp_server="127.0.0.1",
            smtp_port=self.sink.port,
            smtp_security="plain",
            smtp_timeout_seconds=5.0,
            metrics_port=0,
        )
        self.monitor = Monitor(config, clock=self.clock)
        return self.monitor


@pytest.fixture
def world(tmp_path, tracker_file, clock, smtp_server) -> MonitorWorld:
    return MonitorWorld(tmp_path, tracker_file, clock, smtp_server)


# --------------------------------------------------------------------------- given


@given(parsers.parse("a monitor that started watching at {when_text} with alerts to {address}"))
def started_monitor(world, when_text, address):
    world.recipients = (address,)
    world.clock.set(world.local(when_text))
    world.new_monitor().step()


@given("no tracker file exists")
def no_tracker_file(world):
    assert not world.tracker_file.exists()


@given(parsers.parse("a batch started at {when_text}"))
@when(parsers.parse("a batch starts at {when_text}"))
def batch_starts(world, when_text):
    world.clock.set(world.local(when_text))
    world.batches += 1
    world.tracker.start(batch_id=f"nightly-{world.batches}")


@given(parsers.parse('the SMTP server answers "{reply}"'))
def smtp_answers(world, reply):
    world.sink.reject_with = reply


# --------------------------------------------------------------------------- when


@when(parsers.parse("the monitor checks at {when_text}"))
def monitor_checks(world, when_text):
    world.clock.set(world.local(when_text))
    world.monitor.step()


@when(parsers.parse("the batch ends at {when_text}"))
def batch_ends(world, when_text):
    world.clock.set(world.local(when_text))
    world.tracker.end()


@when(parsers.parse('the batch fails at {when_text} at stage {stage} with reason "{reason}"'))
def batch_fails(world, when_text, stage, reason):
    world.clock.set(world.local(when_text))
    world.tracker.fail(stage, reason)


@when("the SMTP server accepts mail again")
def smtp_accepts(world):
    world.sink.reject_with = None


@when("the monitor is restarted")
def monitor_restarted(world):
    world.new_monitor()


# --------------------------------------------------------------------------- then


@then("no e-mail has been sent")
def no_mail(world):
    assert world.sink.received() == []


@then(parsers.re(r"exactly (?P<count>\d+) e-mails? (has|have) been sent"))
def mail_count(world, count):
    assert len(world.sink.received()) == int(count), [m["Subject"] for m in world.sink.received()]


@then(parsers.parse('e-mail {number:d} has the subject "{subject}"'))
def mail_subject(world, number, subject):
    assert world.sink.received()[number - 1]["Subject"] == subject


@then(parsers.parse('e-mail {number:d} says "{text}"'))
def mail_says(world, number, text):
    assert text in world.sink.received()[number - 1].get_content()


@then(parsers.re(r"(?P<count>\d+) alerts? (is|are) waiting in the outbox"))
def outbox_pending(world, count):
    assert len(world.monitor.outbox.pending()) == int(count)
