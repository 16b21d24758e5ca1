"""Many jobs (issue 14, tracker side): the jobs file, --job, skip and pause, days and start-by, per job.

In-process tests inject the clock; the CLI tests run ``python -m utils.batch_tracker`` as a real process, and
the field trial runs it under libfaketime. Three jobs throughout: a daily New York job with a start-by time, a
weekly Saturday job in Sydney (southern hemisphere) and a daily Berlin job.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path

import pytest
import pytz
from conftest import PROJECT_ROOT, VENV_PYTHON, FakeClock, run_tracker_cli
from helpers import ny_epoch

from utils.batch_tracker import BatchTracker, check_batch_completion, get_batch_status
from utils.config import ALL_DAYS, ConfigError, MonitorConfig, TrackerConfig
from utils.errors import UsageError
from utils.incidents import LATE_START, MISSING, open_incidents
from utils.jobs import Excuses, Job, load_jobs, select_job
from utils.monitor import Monitor

THREE_JOBS = """\
# every job starts from the environment's settings (BATCH_COMPLETION_*, BATCH_EXPECTED_STAGES)
[jobs.nightly]
deadline = "05:00"
timezone = "America/New_York"
start_by = "01:30"
expected_stages = ["scrape", "enrich", "score"]

[jobs.weekly-rescore]
deadline = "12:00"
timezone = "Australia/Sydney"
days = ["sat"]
recipients = ["Data Team <data@example.com>"]

[jobs.eu-export]
deadline = "06:00"
timezone = "Europe/Berlin"
recipients = ["eu@example.com", "ops@example.com"]
"""


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


@pytest.fixture
def jobs_file(tmp_path) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(THREE_JOBS)
    return path


@pytest.fixture
def jobs_env(base_env, jobs_file) -> dict:
    return dict(base_env, BATCH_JOBS_FILE=str(jobs_file))


def job_named(env: dict, name: str) -> Job:
    return select_job(env, name)


def state_files(tmp_path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.suffix != ".toml"}


# --------------------------------------------------------------------------- the jobs file


def test_it_has_one_job_named_by_batch_name_without_a_jobs_file(base_env):
    [job] = load_jobs(dict(base_env, BATCH_NAME="lead-batch"))
    assert job.name == "lead-batch"
    assert job.tracker == TrackerConfig.from_env(dict(base_env, BATCH_NAME="lead-batch"))
    assert job.days == ALL_DAYS and job.start_by is None and job.recipients == ()


def test_it_reads_every_job_with_its_schedule_and_recipients(jobs_env, tracker_file):
    nightly, weekly, eu = load_jobs(dict(jobs_env, BATCH_COMPLETION_DEADLINE_MINUTE="15"))
    assert [job.name for job in (nightly, weekly, eu)] == ["nightly", "weekly-rescore", "eu-export"]
    assert (nightly.tracker.deadline_hour, nightly.tracker.deadline_minute, nightly.start_by) == (5, 0, (1, 30))
    assert nightly.tracker.expected_stages == ("scrape", "enrich", "score")
    assert weekly.days == frozenset({5}) and weekly.tracker.timezone == "Australia/Sydney"
    assert weekly.recipients == ("Data Team <data@example.com>",)
    assert eu.recipients == ("eu@example.com", "ops@example.com") and eu.days == ALL_DAYS
    # What a job does not set comes from the environment, as for the one job of before.
    assert weekly.tracker.history_limit == 90 and weekly.tracker.expected_stages == ()
    assert weekly.tracker.batch_name == "weekly-rescore"
    assert (eu.tracker.deadline_hour, eu.tracker.deadline_minute) == (6, 0)
    # Each job's state is its own file: no two jobs share a lock.
    files = {job.tracker.tracker_file for job in (nightly, weekly, eu)}
    assert files == {
        str(tracker_file.parent / "jobs" / f"{name}.json") for name in ("nightly", "weekly-rescore", "eu-export")
    }


def test_it_takes_a_jobs_deadline_from_the_environment_when_the_file_names_none(base_env, tmp_path):
    path = tmp_path / "jobs.toml"
    path.write_text('[jobs.a]\n[jobs.b]\ntracker_file = "%s"\n' % (tmp_path / "b.json"))
    env = dict(base_env, BATCH_JOBS_FILE=str(path), BATCH_COMPLETION_DEADLINE_HOUR="7")
    a, b = load_jobs(env)
    assert (a.tracker.deadline_hour, a.tracker.timezone) == (7, "America/New_York")
    assert b.tracker.tracker_file == str(tmp_path / "b.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[jobs.a\n", "is not valid TOML"),
        ("[other]\n", "unknown top-level key 'other'"),
        ("title = 'x'\n", "unknown top-level key 'title'"),
        ("[jobs]\n", "defines no job"),
        ('[jobs."bad.name"]\n', "[jobs.bad.name]: job name 'bad.name' is not allowed"),
        ("[jobs.a]\ndeadlin = '05:00'\n", "[jobs.a]: unknown key 'deadlin'"),
        ("[jobs.a]\ndeadline = '5:00'\n", "[jobs.a] deadline = '5:00' is not a local time"),
        ("[jobs.a]\ndeadline = '24:00'\n", "[jobs.a] deadline = '24:00' is not a local time"),
        ("[jobs.a]\nstart_by = 130\n", "[jobs.a] start_by = '130' is not a local time"),
        ("[jobs.a]\ntimezone = 'Mars/Olympus'\n", "[jobs.a] timezone = 'Mars/Olympus' is not an IANA time zone"),
        ("[jobs.a]\ndays = ['sat', 'caturday']\n", "[jobs.a] days: 'caturday' is not a weekday"),
        ("[jobs.a]\ndays = []\n", "[jobs.a] days = '[]' is not allowed"),
        ("[jobs.a]\ndays = 'sat'\n", "[jobs.a] days = 'sat' is not allowed"),
        ("[jobs.a]\nexpected_stages = ['ok', 'not ok']\n", "[jobs.a] expected_stages: 'not ok' is not allowed"),
        ("[jobs.a]\nexpected_stages = ['x', 'x']\n", "[jobs.a]: expected_stages names a stage twice"),
        ("[jobs.a]\nrecipients = ['nobody']\n", "[jobs.a] recipients"),
        ("[jobs.a]\nrecipients = 'a@example.com'\n", "[jobs.a] recipients = 'a@example.com' is not a list"),
        ("[jobs.a]\ntracker_file = 'x.json'\n[jobs.b]\ntracker_file = 'x.json'\n", "is also job a's"),
        ("[jobs.a]\ntracker_file = ''\n", "[jobs.a] tracker_file = '' is not a file path"),
        ("jobs = 3\n", "defines no job"),
        ("[jobs]\na = 3\n", "[jobs.a] is not a table"),
    ],
)
def test_it_refuses_a_bad_jobs_file_in_one_line_naming_the_file_the_job_and_the_key(base_env, tmp_path, text, message):
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_jobs(dict(base_env, BATCH_JOBS_FILE=str(path)))
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"BATCH_JOBS_FILE={path}")
    assert "\n" not in str(caught.value)


def test_it_refuses_a_jobs_file_it_cannot_read(base_env, tmp_path):
    with pytest.raises(ConfigError, match=r"BATCH_JOBS_FILE=.*absent\.toml cannot be read: No such file"):
        load_jobs(dict(base_env, BATCH_JOBS_FILE=str(tmp_path / "absent.toml")))


def test_it_selects_the_job_by_option_then_batch_name_and_names_the_known_ones_otherwise(jobs_env):
    assert select_job(jobs_env).name == "nightly"  # BATCH_NAME's default
    assert select_job(dict(jobs_env, BATCH_NAME="eu-export")).name == "eu-export"
    assert select_job(dict(jobs_env, BATCH_NAME="eu-export"), "weekly-rescore").name == "weekly-rescore"
    with pytest.raises(ConfigError) as caught:
        select_job(jobs_env, "weekly")
    assert "--job='weekly' names no job in" in str(caught.value)
    assert "(jobs: nightly, weekly-rescore, eu-export)" in str(caught.value)
    with pytest.raises(ConfigError, match="BATCH_NAME='monthly' names no job"):
        select_job(dict(jobs_env, BATCH_NAME="monthly"))


# --------------------------------------------------------------------------- the hooks, as real processes


def cli(env, *args, check=True) -> subprocess.CompletedProcess:
    return run_tracker_cli(env, *args, cwd=PROJECT_ROOT, check=check)


def hook_imports_tomllib(env: dict, *args: str) -> bool:
    """Run one hook in a fresh interpreter; whether it had to import tomllib (parse the jobs file)."""
    code = "import io, sys; from utils.tracker_cli import main; main(sys.argv[1:], out=io.StringIO()); "
    code += "print('tomllib' in sys.modules)"
    result = subprocess.run(
        [VENV_PYTHON, "-c", code, *args], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.strip() == "True"


def test_it_parses_the_jobs_file_once_and_again_only_when_its_text_changes(jobs_env, jobs_file, tracker_file):
    assert hook_imports_tomllib(jobs_env, "status")  # a reader parses the file and keeps nothing
    cli(jobs_env, "start")  # a write that succeeded keeps the parse beside the tracker file
    assert not hook_imports_tomllib(jobs_env, "stage", "scrape", "50")  # tomllib costs a hook ~20 ms
    cached = json.loads(tracker_file.with_name("batch_tracker.jobs-file.json").read_text())
    assert cached["text"] == jobs_file.read_text()

    jobs_file.write_text(THREE_JOBS + '\n[jobs.adhoc]\ndeadline = "09:00"\ntimezone = "UTC"\n')
    adhoc = dict(jobs_env, BATCH_NAME="adhoc")
    assert hook_imports_tomllib(adhoc, "start")  # an edit is seen at once, whatever the file's clock says
    assert not hook_imports_tomllib(adhoc, "end")
    assert json.loads(cli(adhoc, "status", "--json").stdout)["state"] == "completed"


def test_it_records_each_job_in_its_own_file_picked_by_batch_name_or_job(jobs_env, tracker_file):
    nightly_id = cli(jobs_env, "start").stdout.strip()
    weekly_id = cli(dict(jobs_env, BATCH_NAME="weekly-rescore"), "start").stdout.strip()
    cli(jobs_env, "--job", "weekly-rescore", "stage", "rescore", "40")
    cli(jobs_env, "stage", "scrape", "100", "--job=nightly")
    jobs_dir = tracker_file.parent / "jobs"
    nightly = json.loads((jobs_dir / "nightly.json").read_text())["current"]
    weekly = json.loads((jobs_dir / "weekly-rescore.json").read_text())["current"]
    assert (nightly["id"], list(nightly["stages"]), nightly["expected_stages"]) == (
        nightly_id,
        ["scrape"],
        ["scrape", "enrich", "score"],
    )
    assert (weekly["id"], list(weekly["stages"]), weekly["deadline_timezone"]) == (
        weekly_id,
        ["rescore"],
        "Australia/Sydney",
    )
    assert weekly["deadline_time"] == "12:00"
    # The weekly job's deadline is a Saturday noon in Sydney.
    sydney = pytz.timezone("Australia/Sydney")
    due = sydney.normalize(pytz.utc.localize(dt.datetime.utcfromtimestamp(weekly["deadline_at"])).astimezone(sydney))
    assert (due.weekday(), due.hour, due.minute) == (5, 12, 0)
    assert not tracker_file.exists()  # BATCH_TRACKER_FILE only names the folder the jobs' files go in


@pytest.mark.parametrize("selector", [("--job", "weekly"), ("BATCH_NAME", "weekly")])
def test_it_exits_2_and_writes_nothing_for_an_unknown_job(jobs_env, tmp_path, selector):
    cli(jobs_env, "start")
    before = state_files(tmp_path)
    env, args = (
        (jobs_env, ["--job", "weekly"]) if selector[0] == "--job" else ({**jobs_env, "BATCH_NAME": "weekly"}, [])
    )
    result = cli(env, *args, "start", check=False)
    assert result.returncode == 2, result.stderr
    assert "names no job" in result.stderr and "(jobs: nightly, weekly-rescore, eu-export)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert state_files(tmp_path) == before


def test_it_exits_2_and_writes_nothing_when_the_jobs_file_is_bad(jobs_env, jobs_file, tmp_path):
    cli(jobs_env, "start")
    before = state_files(tmp_path)
    jobs_file.write_text(THREE_JOBS.replace('days = ["sat"]', 'days = ["saturday", "funday"]'))
    for args in (["stage", "scrape", "50"], ["end"], ["status"], ["skip", "--date", "2026-12-25"]):
        result = cli(jobs_env, *args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip() == (
            f"batch_tracker: error: BATCH_JOBS_FILE={jobs_file}: [jobs.weekly-rescore] days: 'funday' is not a "
            'weekday (allowed: a list of weekday names from mon, tue, wed, thu, fri, sat, sun, e.g. ["sat"])'
        )
    assert state_files(tmp_path) == before


def test_it_refuses_job_without_a_jobs_file_unless_it_names_the_one_job(base_env, tracker_file):
    assert cli(base_env, "--job", "nightly", "start").returncode == 0
    result = cli(base_env, "--job", "weekly", "end", check=False)
    assert result.returncode == 2 and "--job='weekly' names no job (no BATCH_JOBS_FILE" in result.stderr
    assert json.loads(tracker_file.read_text())["current"]["state"] == "running"


def test_it_skips_and_pauses_a_job_and_shows_both_in_status_and_history(jobs_env, tmp_path):
    eu = dict(jobs_env, BATCH_NAME="eu-export")
    cli(eu, "start")
    cli(eu, "end")
    today = dt.datetime.now(dt.UTC).date()
    skipped = (today + dt.timedelta(days=3)).isoformat()
    assert cli(eu, "skip", "--date", skipped, "--reason", "public holiday").stdout == f"eu-export: {skipped} skipped\n"
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=9)).replace(microsecond=0)
    printed = cli(eu, "pause", "--until", until.isoformat(), "--reason", "migration").stdout
    assert printed == f"eu-export: paused until {until.isoformat()}\n"
    status = json.loads(cli(eu, "status", "--json").stdout)
    nights = status["excused"]["nights"]
    assert {"kind": "skipped", "date": skipped, "reason": "public holiday"}.items() <= nights[
        [n["date"] for n in nights].index(skipped)
    ].items()
    assert [p["reason"] for p in status["excused"]["pauses"]] == ["migration"]
    assert status["excused"]["pauses"][0]["active"] is True
    text = cli(eu, "status").stdout
    assert "public holiday (no alert)" in text and "migration (no alert)" in text and "paused " in text
    # The other jobs are not touched by it.
    assert json.loads(cli(jobs_env, "status", "--json").stdout)["excused"] == {"nights": [], "pauses": []}


def test_it_lists_a_skipped_night_in_the_history_between_the_batches(jobs_env):
    berlin = "Europe/Berlin"
    clock = FakeClock(ny_epoch("2026-10-20 01:00", berlin))
    tracker = BatchTracker(job_named(jobs_env, "eu-export").tracker, clock=clock)
    tracker.start()
    clock.set(ny_epoch("2026-10-20 02:00", berlin))
    tracker.end()
    clock.set(ny_epoch("2026-10-20 12:00", berlin))
    tracker.skip("2026-10-21", "Feiertag")
    clock.set(ny_epoch("2026-10-22 01:00", berlin))
    tracker.start()
    clock.set(ny_epoch("2026-10-22 07:00", berlin))
    ok, reason = check_batch_completion(clock=clock, config=tracker.config)
    assert ok is False and "missed its deadline 2026-10-22 06:00 CEST" in reason  # skips do not excuse other nights
    from utils import status_report

    rows = status_report.history_with_excused(tracker.snapshot().batches_newest_first(), tracker.schedule(), clock())
    assert [(row["state"], row.get("reason")) for row in rows] == [
        ("running", None),
        ("skipped", "Feiertag"),
        ("completed", None),
    ]
    # ... and the history command prints it as a row.
    from utils import tracker_views

    table = tracker_views.render_history(rows, zone=berlin)
    assert "skipped    2026-10-21 06:00 CEST" in table and "Feiertag" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["skip"], "'skip' needs --date YYYY-MM-DD"),
        (["skip", "--date", "25.12.2026"], "--date '25.12.2026' is not a date (allowed: YYYY-MM-DD"),
        (["skip", "--date", "2026-02-30"], "--date '2026-02-30' is not a date"),
        (["skip", "--date", "2062-12-25"], "--date 2062-12-25 is more than 400 days from today"),
        (["pause"], "'pause' needs --until ISO-8601"),
        (["pause", "--until", "next week"], "--until 'next week' is not allowed (allowed: an ISO-8601 time"),
        (["pause", "--until", "2099-01-01T00:00:00"], "--until '2099-01-01T00:00:00' has no UTC offset"),
        (["pause", "--until", "2020-01-01T00:00:00+00:00"], "--until 2020-01-01T00:00:00+00:00 is not in the future"),
        (["skip", "--date", "x", "--when", "y"], "unknown option '--when'"),
    ],
)
def test_it_refuses_a_bad_skip_or_pause_with_exit_2_and_writes_nothing(jobs_env, tmp_path, args, message):
    cli(jobs_env, "start")
    before = state_files(tmp_path)
    result = cli(jobs_env, *args, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert state_files(tmp_path) == before


def test_it_refuses_to_skip_a_day_the_job_does_not_run(jobs_env, tmp_path):
    today = dt.datetime.now(dt.UTC).date()
    tuesday = today + dt.timedelta(days=(1 - today.weekday()) % 7 or 7)
    before = state_files(tmp_path)
    result = cli(jobs_env, "--job", "weekly-rescore", "skip", "--date", tuesday.isoformat(), check=False)
    assert result.returncode == 2
    assert f"--date {tuesday} is a tue; job weekly-rescore runs on sat only" in result.stderr
    assert state_files(tmp_path) == before


def test_it_keeps_a_skip_once_per_date_with_the_latest_reason(jobs_env):
    clock = FakeClock(utc("2026-12-01 12:00"))
    tracker = BatchTracker(job_named(jobs_env, "nightly").tracker, clock=clock)
    tracker.skip("2026-12-25", "holiday")
    tracker.skip("2026-12-25", "Christmas")
    tracker.skip("2026-12-24")
    assert [(s.date, s.reason) for s in tracker.excuses().skips] == [("2026-12-24", ""), ("2026-12-25", "Christmas")]
    with pytest.raises(UsageError, match="is a fri; job weekly-rescore runs on sat only"):
        BatchTracker(job_named(jobs_env, "weekly-rescore").tracker, clock=clock).skip("2026-12-25")  # a Friday
    with pytest.raises(UsageError):
        tracker.pause("2026-12-01T11:00:00Z")  # already past


def test_it_ignores_a_hand_edited_excuse_it_cannot_read():
    document = {"excused": {"skips": [{"date": "2026-13-01"}, {"date": "2026-12-24", "reason": 3}, "x"], "pauses": 7}}
    excuses = Excuses.from_document(document)
    assert [(s.date, s.reason) for s in excuses.skips] == [("2026-12-24", "")] and excuses.pauses == ()


# --------------------------------------------------------------------------- incidents per job (in-process)


class Jobs:
    """The three jobs, a monitor for each (as one monitor process runs them) and one real SMTP sink."""

    def __init__(self, env: dict, tmp_path, clock: FakeClock, sink):
        self.clock, self.sink = clock, sink
        self.jobs = {job.name: job for job in load_jobs(env)}
        self.trackers = {name: BatchTracker(job.tracker, clock=clock) for name, job in self.jobs.items()}
        self.monitors: dict[str, Monitor] = {}
        base = MonitorConfig(
            tracker=next(iter(self.jobs.values())).tracker,
            outbox_dir=str(tmp_path / "outbox"),
            email_to=("oncall@example.com",),
            email_from="leadfactory@example.com",
            smtp_server="127.0.0.1",
            smtp_port=sink.port,
            smtp_security="plain",
            smtp_timeout_seconds=5.0,
            metrics_port=0,
        )
        for name, job in self.jobs.items():
            config = base.replace(tracker=job.tracker, email_to=job.recipients or base.email_to)
            self.monitors[name] = Monitor(config, clock=clock, early_warning=False)

    def check_every(self, start: str, end: str, minutes: int = 30) -> None:
        """Check all jobs every ``minutes`` from ``start`` to ``end`` (UTC ``YYYY-MM-DD HH:MM``)."""
        instant = utc(start)
        while instant <= utc(end):
            self.at(instant)
            instant += minutes * 60

    def at(self, instant: float) -> None:
        self.clock.set(instant)
        for monitor in self.monitors.values():
            monitor.step()

    def mails(self) -> list[tuple[str, str]]:
        return [(str(m["Subject"]), str(m["To"])) for m in self.sink.received()]


@pytest.fixture
def three_jobs(jobs_env, tmp_path, smtp_server) -> Jobs:
    return Jobs(jobs_env, tmp_path, FakeClock(utc("2026-10-30 12:00")), smtp_server)


def test_it_alerts_the_right_job_once_across_the_fall_back_weekend(three_jobs):
    world = three_jobs
    nightly, eu = world.trackers["nightly"], world.trackers["eu-export"]
    world.clock.set(utc("2026-10-30 00:00"))  # Friday 01:00 CET: Berlin's batch runs on time
    eu.start()
    world.clock.set(utc("2026-10-30 00:30"))
    eu.end()
    world.at(utc("2026-10-30 12:00"))  # every monitor starts watching on Friday
    eu.skip("2026-10-31", "maintenance")  # Saturday 06:00 CET: not run, on purpose
    # Saturday: New York runs on time; Sydney's weekly job never starts (its noon is Saturday 01:00 UTC).
    world.check_every("2026-10-30 12:30", "2026-10-31 04:30")
    world.clock.set(utc("2026-10-31 05:00"))  # 01:00 EDT
    nightly.start()
    world.check_every("2026-10-31 05:00", "2026-10-31 07:00")
    world.clock.set(utc("2026-10-31 07:00"))
    nightly.end()
    # Sunday is the day New York falls back: its 01:30 start-by comes twice; the earlier (05:30 UTC) counts.
    world.check_every("2026-10-31 07:30", "2026-11-01 05:00")
    # Sydney's missing Saturday, then Berlin's Sunday (its skipped Saturday alerted nothing).
    assert len(world.mails()) == 2
    world.check_every("2026-11-01 05:30", "2026-11-01 06:00")
    world.clock.set(utc("2026-11-01 06:10"))  # 01:10 EST, 40 min after the start-by time
    nightly.start()
    eu.start()  # Berlin, 07:10 CET: it answers the missed 06:00 deadline, late from its start
    world.check_every("2026-11-01 06:10", "2026-11-01 08:00")
    world.clock.set(utc("2026-11-01 08:00"))
    nightly.end()
    eu.end()
    world.check_every("2026-11-01 08:00", "2026-11-02 03:00")  # Monday: no weekly run due, none alerted
    assert world.mails() == [
        (
            "[MISSING] no weekly-rescore batch started before the 12:00 AEDT deadline (Sat 2026-10-31)",
            "Data Team <data@example.com>",
        ),
        (
            "[MISSING] no eu-export batch started before the 06:00 CET deadline (Sun 2026-11-01)",
            "eu@example.com, ops@example.com",
        ),
        (
            "[LATE START] no nightly batch started by 01:30 EDT for the 05:00 EST deadline (Sun 2026-11-01)",
            "oncall@example.com",
        ),
        (
            f"[RECOVERED] nightly LATE START: batch {nightly.snapshot().current.id} started at 2026-11-01 01:10 EST, "
            "40 min after the start-by time 2026-11-01 01:30 EDT",
            "oncall@example.com",
        ),
        (
            f"[RECOVERED] eu-export LATE: batch {eu.snapshot().current.id} completed 3 h 00 min late, "
            "at 2026-11-01 09:00 CET",
            "eu@example.com, ops@example.com",
        ),
    ]


def test_it_finds_no_missing_night_on_days_a_weekly_job_does_not_run(jobs_env):
    job = job_named(jobs_env, "weekly-rescore")
    tracker = BatchTracker(job.tracker, clock=FakeClock(ny_epoch("2026-10-03 09:00", "Australia/Sydney")))
    tracker.start()
    tracker.clock = lambda: ny_epoch("2026-10-03 11:00", "Australia/Sydney")
    tracker.end()
    snapshot, schedule = tracker.snapshot(), tracker.schedule()
    # Every day up to the next Saturday (across Sydney's spring forward on Sunday 4 October): nothing is due.
    for day in range(4, 10):
        now = ny_epoch(f"2026-10-{day:02d} 23:00", "Australia/Sydney")
        assert (
            open_incidents(snapshot, now, schedule, watch_since=ny_epoch("2026-10-01 00:00", "Australia/Sydney")) == []
        )
    late_saturday = ny_epoch("2026-10-10 12:00", "Australia/Sydney")
    [missing] = open_incidents(snapshot, late_saturday, schedule)
    assert (missing.kind, missing.key) == (MISSING, f"{late_saturday:.0f}")  # noon AEDT now, +11
    assert dt.datetime.fromtimestamp(late_saturday, dt.UTC).hour == 1


def test_it_opens_no_missing_late_or_late_start_for_a_skipped_or_paused_night(jobs_env):
    job = job_named(jobs_env, "nightly")
    clock = FakeClock(ny_epoch("2026-12-22 01:00"))
    tracker = BatchTracker(job.tracker, clock=clock)
    tracker.start()
    clock.set(ny_epoch("2026-12-22 03:00"))
    tracker.end()
    tracker.skip("2026-12-23", "holiday")
    for moment in ("2026-12-23 01:31", "2026-12-23 05:00", "2026-12-23 12:00"):
        clock.set(ny_epoch(moment))
        assert open_incidents(tracker.snapshot(), clock(), tracker.schedule()) == [], moment
    # Without the skip the same night was missing: the skip is what silenced it.
    [missing] = open_incidents(tracker.snapshot(), clock(), job.tracker.deadline())
    assert missing.kind == MISSING and missing.key == f"{ny_epoch('2026-12-23 05:00'):.0f}"
    # A pause from now over the next three nights: neither late start, nor missing, nor late.
    tracker.pause("2026-12-27T00:00:00-05:00", "freeze")
    clock.set(ny_epoch("2026-12-25 04:00"))
    tracker.start()  # someone runs it anyway, inside the pause: it answers the first deadline after it
    assert tracker.snapshot().current.deadline_at == ny_epoch("2026-12-27 05:00")
    clock.set(ny_epoch("2026-12-26 09:00"))  # still running, past two paused deadlines
    assert open_incidents(tracker.snapshot(), clock(), tracker.schedule()) == []
    ok, reason = check_batch_completion(clock=clock, config=job.tracker)
    assert ok, reason
    # The first night after the pause counts again.
    clock.set(ny_epoch("2026-12-27 05:01"))
    [late] = open_incidents(tracker.snapshot(), clock(), tracker.schedule())
    assert late.kind == "late"


def test_it_is_not_late_for_a_deadline_excused_after_the_batch_stored_it(jobs_env):
    job = job_named(jobs_env, "nightly")
    clock = FakeClock(ny_epoch("2026-12-23 01:00"))
    tracker = BatchTracker(job.tracker, clock=clock)
    tracker.start()
    assert tracker.snapshot().current.deadline_at == ny_epoch("2026-12-23 05:00")
    clock.set(ny_epoch("2026-12-23 05:30"))
    assert [i.kind for i in open_incidents(tracker.snapshot(), clock(), tracker.schedule())] == ["late"]
    tracker.skip("2026-12-23", "called off")
    assert open_incidents(tracker.snapshot(), clock(), tracker.schedule()) == []


def test_it_opens_a_late_start_at_the_start_by_time_and_gives_way_to_missing_at_the_deadline(jobs_env):
    job = job_named(jobs_env, "nightly")
    clock = FakeClock(ny_epoch("2026-12-01 01:00"))
    tracker = BatchTracker(job.tracker, clock=clock)
    tracker.start()
    clock.set(ny_epoch("2026-12-01 03:00"))
    tracker.end()
    schedule, snapshot = tracker.schedule(), tracker.snapshot()
    assert open_incidents(snapshot, ny_epoch("2026-12-02 01:29"), schedule) == []
    [late_start] = open_incidents(snapshot, ny_epoch("2026-12-02 01:30"), schedule)
    assert (late_start.kind, late_start.key, late_start.since) == (
        LATE_START,
        f"{ny_epoch('2026-12-02 05:00'):.0f}",
        ny_epoch("2026-12-02 01:30"),
    )
    assert late_start.summary == (
        "no batch started by 2026-12-02 01:30 EST, the start-by time for the deadline 2026-12-02 05:00 EST; "
        "last batch started 2026-12-01 01:00 EST"
    )
    [missing] = open_incidents(snapshot, ny_epoch("2026-12-02 05:00"), schedule)
    assert missing.kind == MISSING
    status = get_batch_status(now=ny_epoch("2026-12-02 02:00"), clock=clock, config=job.tracker)
    assert [i["kind"] for i in status["open_incidents"]] == [LATE_START]


# --------------------------------------------------------------------------- field trial: real processes, faked clock


def test_it_judges_each_job_by_its_own_schedule_in_real_processes_on_a_faked_clock(jobs_env, at_clock):
    def check(job: str, when: str) -> subprocess.CompletedProcess:
        return cli(at_clock(dict(jobs_env, BATCH_NAME=job), when), "check", check=False)

    # Sydney's weekly job, started Saturday 3 October 09:00 AEST (the day before spring forward), done by 11:00.
    cli(at_clock(jobs_env, "2026-10-02 23:00"), "--job", "weekly-rescore", "start")
    cli(at_clock(jobs_env, "2026-10-03 01:00"), "--job", "weekly-rescore", "end")
    # Wednesday, a day the weekly job does not run: nothing due, the next deadline is Saturday noon AEDT.
    quiet = check("weekly-rescore", "2026-10-07 03:00")
    assert quiet.returncode == 0, quiet.stdout
    assert "completed on time" in quiet.stdout and "before its deadline 2026-10-03 12:00 AEST" in quiet.stdout
    missed = check("weekly-rescore", "2026-10-10 01:05")  # Saturday 12:05 AEDT, no batch
    assert missed.returncode == 1
    assert "no batch started before the deadline 2026-10-10 12:00 AEDT" in missed.stdout
    # New York's nightly job, same clock: no batch yet on a fresh file, 01:30 EDT passed on the fall-back day.
    late_start = check("nightly", "2026-11-01 05:35")
    assert late_start.returncode == 1
    assert "no batch started by 2026-11-01 01:30 EDT, the start-by time for the deadline 2026-11-01 05:00 EST" in (
        late_start.stdout
    )
    # The Berlin job ran Saturday and skips Sunday: no missing at Sunday's deadline, whatever the hour.
    eu_at = {
        when: at_clock(dict(jobs_env, BATCH_NAME="eu-export"), when)
        for when in ("2026-10-31 00:00", "2026-10-31 01:00")
    }
    cli(eu_at["2026-10-31 00:00"], "start")
    cli(eu_at["2026-10-31 01:00"], "end")
    cli(eu_at["2026-10-31 01:00"], "skip", "--date", "2026-11-01", "--reason", "Allerheiligen")
    skipped = check("eu-export", "2026-11-01 12:00")
    assert skipped.returncode == 0, skipped.stdout
    history = cli(at_clock(dict(jobs_env, BATCH_NAME="eu-export"), "2026-11-01 12:00"), "history").stdout
    assert "skipped    2026-11-01 06:00 CET" in history and "Allerheiligen" in history
    assert check("eu-export", "2026-11-02 05:05").returncode == 1  # Monday 06:05 CET counts again


def test_it_keeps_the_cli_as_before_without_a_jobs_file(base_env, tracker_file):
    assert "BATCH_JOBS_FILE" not in base_env
    batch_id = cli(base_env, "start").stdout.strip()
    assert json.loads(tracker_file.read_text())["current"]["id"] == batch_id
    assert "excused" not in json.loads(tracker_file.read_text())
    assert not (tracker_file.parent / "jobs").exists()
    result = subprocess.run(
        [VENV_PYTHON, "-m", "utils.batch_tracker", "--help"], env=base_env, capture_output=True, text=True, check=False
    )
    assert "skip --date YYYY-MM-DD" in result.stdout and "--job NAME" in result.stdout


# --------------------------------------------------------------------------- the user guide's example, for real

GUIDE = PROJECT_ROOT / "docs" / "batch-completion-monitoring.md"


def guide_section_blocks(language: str) -> list[str]:
    text = GUIDE.read_text()
    section = text[text.index("\n## Many jobs\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def test_it_runs_the_user_guides_jobs_file_and_commands(base_env, tmp_path, at_clock):
    [example] = guide_section_blocks("toml")
    verbatim = tmp_path / "verbatim.toml"
    verbatim.write_text(example)
    nightly, weekly, eu = load_jobs(dict(base_env, BATCH_JOBS_FILE=str(verbatim)))
    assert (nightly.start_by, weekly.days, eu.days) == ((1, 30), frozenset({5}), frozenset(range(5)))
    assert nightly.tracker.tracker_file == str(PROJECT_ROOT / "data" / "batch_tracker.json")
    # Run the guide's commands against a copy whose nightly job keeps its state in tmp_path.
    jobs_file = tmp_path / "jobs.toml"
    jobs_file.write_text(example.replace('"data/batch_tracker.json"', f'"{tmp_path / "nightly.json"}"'))
    env = at_clock(dict(base_env, BATCH_JOBS_FILE=str(jobs_file)), "2026-12-01 12:00")
    commands = [
        line for block in guide_section_blocks("bash") for line in block.splitlines() if "batch_tracker" in line
    ]
    assert len(commands) == 5
    for command in commands:
        result = subprocess.run(
            ["bash", "-c", command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, (command, result.stderr)
    weekly_state = json.loads((tmp_path / "data" / "jobs" / "weekly-rescore.json").read_text())
    assert weekly_state["current"]["stages"]["rescore"]["percentage"] == 40
    eu_state = json.loads((tmp_path / "data" / "jobs" / "eu-export.json").read_text())
    assert eu_state["excused"]["skips"][0]["reason"] == "Heiligabend"
    assert json.loads((tmp_path / "nightly.json").read_text())["excused"]["pauses"][0]["reason"] == "year-end freeze"


def test_it_refuses_a_job_with_an_unknown_zone_when_it_starts_with_exit_2(jobs_env, jobs_file, tmp_path):
    jobs_file.write_text(THREE_JOBS.replace("Australia/Sydney", "Australia/Atlantis"))
    result = cli(jobs_env, "--job", "weekly-rescore", "start", check=False)
    assert result.returncode == 2
    assert result.stderr == (
        f"batch_tracker: error: BATCH_JOBS_FILE={jobs_file}: [jobs.weekly-rescore] timezone = 'Australia/Atlantis' "
        "is not an IANA time zone (e.g. America/New_York, Australia/Sydney)\n"
    )
    assert state_files(tmp_path) == {}
    with pytest.raises(ConfigError, match=r"\[jobs.weekly-rescore\] timezone = 'Australia/Atlantis'"):
        load_jobs(jobs_env)  # the monitor checks every job's zone at start-up


def test_it_alerts_the_right_job_once_from_one_monitor_process_on_a_faked_clock(
    jobs_env, tmp_path, smtp_server, at_clock
):
    env = dict(
        jobs_env,
        BATCH_OUTBOX_DIR=str(tmp_path / "outbox"),
        SMTP_SERVER="127.0.0.1",
        SMTP_PORT=str(smtp_server.port),
        SMTP_SECURITY="plain",
        METRICS_PORT="0",
        ALERT_EMAIL_TO="oncall@example.com",
    )

    def once(when: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [VENV_PYTHON, str(PROJECT_ROOT / "bin" / "batch_completion_monitor.py"), "--once"],
            env=at_clock(env, when),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def subjects() -> list[tuple[str, str]]:
        return [(str(m["Subject"]), str(m["To"])) for m in smtp_server.received()]

    cli(at_clock(env, "2026-10-30 00:00"), "--job", "eu-export", "start")  # Friday 01:00 CET
    cli(at_clock(env, "2026-10-30 00:30"), "--job", "eu-export", "end")
    cli(at_clock(env, "2026-10-30 12:00"), "--job", "eu-export", "skip", "--date", "2026-10-31", "--reason", "maint")
    cli(at_clock(env, "2026-10-30 12:00"), "--job", "nightly", "start")  # Friday 08:00 EDT, for Saturday 05:00
    cli(at_clock(env, "2026-10-30 13:00"), "--job", "nightly", "end")
    assert once("2026-10-30 13:05").returncode == 0  # the monitor starts watching
    assert once("2026-10-31 01:05").returncode == 1  # Saturday 12:05 AEDT: Sydney's weekly batch is missing
    assert subjects() == [
        (
            "[MISSING] no weekly-rescore batch started before the 12:00 AEDT deadline (Sat 2026-10-31)",
            "Data Team <data@example.com>",
        )
    ]
    once("2026-10-31 05:10")  # Berlin's skipped Saturday 06:00 CET: no alert
    once("2026-10-31 09:10")  # New York's Saturday was covered by Friday's run
    assert len(subjects()) == 1
    once("2026-11-01 05:10")  # Sunday 06:00 CET passed with no batch: Berlin's missing night
    once("2026-11-01 05:35")  # 01:35 EDT, past the first 01:30 of the fall-back night: New York's late start
    once("2026-11-01 05:40")
    assert subjects()[1:] == [
        (
            "[MISSING] no eu-export batch started before the 06:00 CET deadline (Sun 2026-11-01)",
            "eu@example.com, ops@example.com",
        ),
        (
            "[LATE START] no nightly batch started by 01:30 EDT for the 05:00 EST deadline (Sun 2026-11-01)",
            "oncall@example.com",
        ),
    ]
    cli(at_clock(env, "2026-11-01 05:45"), "--job", "nightly", "start", "--id", "nightly-sunday")
    assert once("2026-11-01 05:50").returncode == 1  # Berlin is still missing
    once("2026-11-01 06:20")
    assert subjects()[3:] == [
        (
            "[RECOVERED] nightly LATE START: batch nightly-sunday started at 2026-11-01 01:45 EDT, "
            "15 min after the start-by time 2026-11-01 01:30 EDT",
            "oncall@example.com",
        )
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--job"], "option --job needs a value"),
        (["--job", "a", "--job=b", "status"], "option --job is given twice"),
        (["--job", "nightly"], "usage:"),
    ],
)
def test_it_refuses_a_malformed_job_option_with_exit_2(jobs_env, tmp_path, args, message):
    result = cli(jobs_env, *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr + result.stdout
    assert state_files(tmp_path) == {}
