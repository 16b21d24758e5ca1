"""Steps for tests/features/jobs.feature: one Monitor per job of a jobs file, an injected clock, a real SMTP server."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import FakeClock
from pytest_bdd import given, parsers, scenarios, then, when
from test_jobs import THREE_JOBS, Jobs

from utils.batch_tracker import get_batch_status

scenarios("jobs.feature")


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.fixture
def world(base_env, tmp_path, smtp_server) -> dict:
    return {"env": base_env, "tmp_path": tmp_path, "sink": smtp_server, "started": {}}


@given(parsers.parse("the jobs nightly, weekly-rescore and eu-export, watched since {when_text}"))
def three_jobs(world, when_text):
    jobs_file = world["tmp_path"] / "jobs.toml"
    jobs_file.write_text(THREE_JOBS)
    env = dict(world["env"], BATCH_JOBS_FILE=str(jobs_file))
    world["jobs"] = Jobs(env, world["tmp_path"], FakeClock(utc(when_text)), world["sink"])
    world["jobs"].at(utc(when_text))


@given(parsers.parse('job {name} skips {date} because "{reason}"'))
def job_skips(world, name, date, reason):
    world["jobs"].trackers[name].skip(date, reason)


@given(parsers.parse('job {name} is paused until {until} because "{reason}"'))
def job_paused(world, name, until, reason):
    world["jobs"].trackers[name].pause(until, reason)


@when(
    parsers.re(
        r"the monitors check every (?P<step>\d+ minutes|hour) from (?P<start>[\d-]+ [\d:]+) to (?P<end>[\d-]+ [\d:]+)"
    )
)
def monitors_check(world, step, start, end):
    world["jobs"].check_every(start, end, minutes=60 if step == "hour" else int(step.split()[0]))


@when(parsers.parse("job {name} starts at {when_text}"))
def job_starts(world, name, when_text):
    jobs = world["jobs"]
    jobs.clock.set(utc(when_text))
    number = world["started"][name] = world["started"].get(name, 0) + 1
    jobs.trackers[name].start(batch_id=f"{name}-{number}")


@then(parsers.parse('the e-mails to "{recipient}" are'))
def mails_to(world, recipient, datatable):
    subjects = [subject for subject, to in world["jobs"].mails() if to == recipient]
    assert subjects == [row[0] for row in datatable[1:]]


@then(parsers.parse("job {name} was alerted missing {count:d} times, once a night"))
def missing_count(world, name, count):
    subjects = [s for s, _ in world["jobs"].mails() if s.startswith(f"[MISSING] no {name} batch")]
    days = [s.rsplit("(", 1)[1] for s in subjects]
    assert len(subjects) == count and len(set(days)) == count, subjects


@then("the e-mails sent are")
def mails_sent(world, datatable):
    assert world["jobs"].mails() == [(row[1], row[0]) for row in datatable[1:]]


@then("no e-mail has been sent")
def no_mail(world):
    assert world["jobs"].mails() == []


def _status(world, name: str) -> dict:
    jobs = world["jobs"]
    return get_batch_status(clock=jobs.clock, config=jobs.jobs[name].tracker)


@then(parsers.parse('the status of job {name} lists {date} as skipped because "{reason}"'))
def status_lists_skip(world, name, date, reason):
    nights = _status(world, name)["excused"]["nights"]
    assert [(n["kind"], n["reason"]) for n in nights if n["date"] == date] == [("skipped", reason)]


@then(parsers.parse('the status of job {name} shows a pause because "{reason}"'))
def status_shows_pause(world, name, reason):
    pauses = _status(world, name)["excused"]["pauses"]
    assert [(p["reason"], p["active"]) for p in pauses] == [(reason, True)]
