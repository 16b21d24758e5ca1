"""Many jobs: the jobs file named by ``BATCH_JOBS_FILE`` (TOML), each ``[jobs.NAME]`` table one job.

Without ``BATCH_JOBS_FILE`` there is exactly one job, named by ``BATCH_NAME`` and built by
:meth:`utils.config.TrackerConfig.from_env`, as before. With it, every job starts from those same environment
settings and overrides them with its table's keys:

- ``deadline = "HH:MM"`` (local), ``timezone`` (IANA), ``days`` (weekday names, e.g. ``["sat"]``; every day when
  absent), ``start_by = "HH:MM"`` (local; a ``late_start`` incident when no batch started by then),
  ``expected_stages`` (list of stage names), ``recipients`` (list of addresses; empty: the monitor's
  ``ALERT_EMAIL_TO``), ``tracker_file`` (default ``jobs/NAME.json`` beside ``BATCH_TRACKER_FILE``).

Each job keeps its state in its own tracker file (and the files beside it), so jobs never share a lock. The whole
file is validated at once: a bad file raises :class:`utils.config.ConfigError` (exit 2) with one line naming the
file, the job and the key. Job names are ``A-Z a-z 0-9 _ -`` (no dot: a job's files are named after it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from utils.config import (
    ALL_DAYS,
    NAME_RULE,
    PROJECT_ROOT,
    ConfigError,
    TrackerConfig,
    _addresses,
    _raw,
    _shown,
)
from utils.errors import UsageError
from utils.model import is_valid_name
from utils.state_store import StorageError, read_json_object, sibling_file, write_json_atomically
from utils.values import Value, frozen

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
JOB_KEYS = ("deadline", "timezone", "days", "start_by", "expected_stages", "recipients", "tracker_file")
JOB_NAME_RULE = "use 1-64 of A-Z a-z 0-9 _ - (no dot), starting with a letter or digit"
JOBS_DIRECTORY = "jobs"  # beside BATCH_TRACKER_FILE: jobs/NAME.json
MAX_JOBS_FILE_BYTES = 1_000_000


@frozen()
class Job(Value):
    """One watched job. ``tracker``: its settings (``batch_name`` is the job's name; deadline, zone, ``days``,
    ``start_by``, expected stages, its own ``tracker_file``); ``recipients``: () means the monitor's
    ``ALERT_EMAIL_TO``."""

    name: str
    tracker: TrackerConfig
    recipients: tuple[str, ...] = ()

    @property
    def days(self) -> frozenset[int]:
        """Weekdays the job runs (0 = Monday .. 6 = Sunday); all seven by default."""
        return self.tracker.days

    @property
    def start_by(self) -> tuple[int, int] | None:
        """Local ``(hour, minute)`` by which a batch must have started, or None."""
        return self.tracker.start_by


def jobs_file(env: Mapping[str, str] | None = None) -> str | None:
    """The absolute path ``BATCH_JOBS_FILE`` names (relative: from the project root), or None when unset."""
    env = os.environ if env is None else env
    raw = _raw(env, "BATCH_JOBS_FILE")
    if not raw:
        return None
    if "\0" in raw:
        raise ConfigError("BATCH_JOBS_FILE contains a NUL character (allowed: a file path)")
    return os.path.abspath(os.path.join(PROJECT_ROOT, os.path.expanduser(raw)))


def load_jobs(
    env: Mapping[str, str] | None = None, *, check_zones: bool = True, parses: list | None = None
) -> tuple[Job, ...]:
    """Every job, in the file's order: from ``BATCH_JOBS_FILE`` when set, else exactly one job from the
    environment (``BATCH_NAME``). Validates everything, time zones too unless ``check_zones`` is False (they
    cost pytz's import); :class:`ConfigError` otherwise. A file parsed afresh (not read from the parse kept
    beside the tracker file) is appended to ``parses``, for :func:`keep_parses` once the caller succeeded."""
    env = os.environ if env is None else env
    base = TrackerConfig.from_env(env)
    path = jobs_file(env)
    if path is None:
        if check_zones:
            base.deadline()  # validates BATCH_COMPLETION_TIMEZONE
        return (Job(name=base.batch_name, tracker=base),)
    return _parse_file(path, env, base, check_zones, parses)


def select_job(
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    *,
    check_zone: bool = True,
    parses: list | None = None,
) -> Job:
    """The job a hook works on: ``name`` (``--job NAME``), else ``BATCH_NAME``; :class:`ConfigError` (exit 2)
    naming the unknown job and the known ones. The whole file is validated; of the time zones, only the selected
    job's, and only with ``check_zone`` (a write hook other than ``start`` never needs pytz)."""
    env = os.environ if env is None else env
    jobs = load_jobs(env, check_zones=False, parses=parses)
    wanted = name if name is not None else (_raw(env, "BATCH_NAME") or "nightly")
    found = next((job for job in jobs if job.name == wanted), None)
    if found is None:
        known = ", ".join(job.name for job in jobs)
        source = "--job" if name is not None else "BATCH_NAME"
        where = f"in {jobs_file(env)}" if jobs_file(env) else "(no BATCH_JOBS_FILE: the one job is BATCH_NAME)"
        raise ConfigError(f"{source}={_shown(wanted)} names no job {where} (jobs: {known})")
    path = jobs_file(env)
    if check_zone and path is not None:
        _zone(f"BATCH_JOBS_FILE={path}: [jobs.{found.name}]", found.tracker.timezone)
    elif check_zone:
        found.tracker.deadline()  # validates BATCH_COMPLETION_TIMEZONE
    return found


def _parse_file(
    path: str, env: Mapping[str, str], base: TrackerConfig, check_zones: bool, parses: list | None
) -> tuple[Job, ...]:
    where = f"BATCH_JOBS_FILE={path}"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JOBS_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_JOBS_FILE_BYTES:
        raise ConfigError(f"{where} is too large (allowed: up to {MAX_JOBS_FILE_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    cache_path = sibling_file(base.tracker_file, "jobs-file")
    document = _cached_document(cache_path, text)
    parsed = document is None
    if parsed:
        import tomllib  # only when the file changed: its import costs a hook about 20 ms

        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"jobs"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (allowed: [jobs.NAME] tables)")
    tables = document.get("jobs")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{where} defines no job (allowed: one or more [jobs.NAME] tables)")
    jobs = tuple(_job(f"{where}: [jobs.{name}]", name, table, base, check_zones) for name, table in tables.items())
    owners: dict[str, str] = {}
    for job in jobs:
        other = owners.setdefault(job.tracker.tracker_file, job.name)
        if other != job.name:
            raise ConfigError(
                f"{where}: [jobs.{job.name}] tracker_file: {job.tracker.tracker_file} is also job {other}'s "
                "(allowed: one state file per job)"
            )
    if parsed and parses is not None:
        parses.append((cache_path, text, document))
    return jobs


def _cached_document(cache_path: str, text: str) -> dict | None:
    """The parsed jobs file kept beside the tracker file (``<tracker>.jobs-file.json``) when it was parsed from
    exactly ``text``, else None. Keyed by the text itself, so an edit is never missed whatever the clocks say."""
    try:
        cached = read_json_object(cache_path)
    except StorageError:
        return None
    if cached is None or cached.get("text") != text or not isinstance(cached.get("document"), dict):
        return None
    return cached["document"]


def keep_parses(parses: list) -> None:
    """Keep the jobs-file parses :func:`load_jobs` collected for the next hooks (``<tracker>.jobs-file.json``),
    where the state directory exists and is writable. Called after a hook's write succeeded: a refused command
    changes nothing on disk."""
    for cache_path, text, document in parses:
        if not os.path.isdir(os.path.dirname(cache_path)):
            continue
        try:
            write_json_atomically(cache_path, {"text": text, "document": document})
        except (StorageError, TypeError):
            pass  # read-only, or a value JSON cannot hold (a TOML date): parsed again next time


def is_valid_job_name(name: object) -> bool:
    """Job names: a valid batch name without dots, starting with a letter or digit (they name files)."""
    return is_valid_name(name) and "." not in name and name[0].isalnum()


def _job(where: str, name: str, table: object, base: TrackerConfig, check_zones: bool) -> Job:
    if not is_valid_job_name(name):
        raise ConfigError(f"{where}: job name {_shown(name)} is not allowed ({JOB_NAME_RULE})")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table (allowed: [jobs.{name}] with keys {', '.join(JOB_KEYS)})")
    unknown = sorted(set(table) - set(JOB_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(JOB_KEYS)})")
    hour, minute = base.deadline_hour, base.deadline_minute
    if "deadline" in table:
        hour, minute = _clock_time(where, "deadline", table["deadline"])
    start_by = _clock_time(where, "start_by", table["start_by"]) if "start_by" in table else None
    timezone = _zone(where, table["timezone"], check_zones) if "timezone" in table else base.timezone
    days = _days(where, table["days"]) if "days" in table else ALL_DAYS
    stages = base.expected_stages
    if "expected_stages" in table:
        stages = tuple(_names(where, "expected_stages", table["expected_stages"], is_valid_name, NAME_RULE))
        if len(set(stages)) != len(stages):
            raise ConfigError(f"{where}: expected_stages names a stage twice (allowed: each stage once)")
    recipients: tuple[str, ...] = ()
    if "recipients" in table:
        raw = ", ".join(_names(where, "recipients", table["recipients"], lambda _: True, "addresses"))
        label = f"{where} recipients"
        recipients = tuple(_addresses({label: raw}, label, "") if raw else ())
    tracker_file = _tracker_file(where, name, table.get("tracker_file"), base)
    tracker = base.replace(
        tracker_file=tracker_file,
        deadline_hour=hour,
        deadline_minute=minute,
        timezone=timezone,
        expected_stages=stages,
        batch_name=name,
        days=days,
        start_by=start_by,
    )
    if "timezone" not in table and check_zones:
        _zone(where, timezone)  # the inherited BATCH_COMPLETION_TIMEZONE
    return Job(name=name, tracker=tracker, recipients=recipients)


def _clock_time(where: str, key: str, value: object) -> tuple[int, int]:
    text = value if isinstance(value, str) else ""
    hours, sep, minutes = text.partition(":")
    valid = (
        sep and len(hours) == 2 and len(minutes) == 2 and (hours + minutes).isascii() and (hours + minutes).isdigit()
    )
    if not valid or not (0 <= int(hours) <= 23 and 0 <= int(minutes) <= 59):
        raise ConfigError(f'{where} {key} = {_shown(str(value))} is not a local time (allowed: "HH:MM", 00:00-23:59)')
    return int(hours), int(minutes)


def _zone(where: str, value: object, check: bool = True) -> str:
    if isinstance(value, str) and value.strip() == value and value and not check:
        return value
    import pytz

    if isinstance(value, str) and value.strip() == value and value:
        try:
            pytz.timezone(value)
            return value
        except pytz.UnknownTimeZoneError:
            pass
    raise ConfigError(
        f"{where} timezone = {_shown(str(value))} is not an IANA time zone (e.g. America/New_York, Australia/Sydney)"
    )


def _days(where: str, value: object) -> frozenset[int]:
    allowed = f'a list of weekday names from {", ".join(WEEKDAYS)}, e.g. ["sat"]'
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} days = {_shown(str(value))} is not allowed (allowed: {allowed})")
    days = set()
    for item in value:
        word = item.strip().lower() if isinstance(item, str) else ""
        if word in WEEKDAYS:
            days.add(WEEKDAYS.index(word))
        elif word in _FULL_WEEKDAYS:
            days.add(_FULL_WEEKDAYS.index(word))
        else:
            raise ConfigError(f"{where} days: {_shown(str(item))} is not a weekday (allowed: {allowed})")
    return frozenset(days)


def _names(where: str, key: str, value: object, valid, rule: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f'{where} {key} = {_shown(str(value))} is not a list of strings (e.g. ["a", "b"])')
    for item in value:
        if not valid(item):
            raise ConfigError(f"{where} {key}: {_shown(item)} is not allowed ({rule})")
    return value


def _tracker_file(where: str, name: str, value: object, base: TrackerConfig) -> str:
    if value is None:
        return os.path.join(os.path.dirname(base.tracker_file), JOBS_DIRECTORY, f"{name}.json")
    if not isinstance(value, str) or not value.strip() or "\0" in value or value.endswith(os.sep):
        raise ConfigError(f"{where} tracker_file = {_shown(str(value))} is not a file path (e.g. data/{name}.json)")
    path = os.path.abspath(os.path.join(PROJECT_ROOT, os.path.expanduser(value)))
    if os.path.isdir(path):
        raise ConfigError(f"{where} tracker_file = {_shown(value)} names a directory (allowed: a file path)")
    return path


# --------------------------------------------------------------------------- nights deliberately not run

EXCUSED_KEY = "excused"  # top-level key of the tracker document: {"skips": [...], "pauses": [...]}
MAX_SKIPS = 400
MAX_PAUSES = 100
MAX_EXCUSE_DAYS = 400  # a skip date or a pause end further away than this is a typo


@frozen()
class Skip(Value):
    """A night not run: the deadline on local date ``date`` (``YYYY-MM-DD``, the job's zone) is no deadline."""

    date: str
    reason: str = ""
    recorded_at: float = 0.0

    def to_dict(self) -> dict:
        return {"date": self.date, "reason": self.reason, "recorded_at": self.recorded_at}


@frozen()
class Pause(Value):
    """The job paused from ``start`` until ``until`` (UTC epochs): no deadline in ``[start, until)``."""

    start: float
    until: float
    reason: str = ""
    recorded_at: float = 0.0

    def to_dict(self) -> dict:
        return {"from": self.start, "until": self.until, "reason": self.reason, "recorded_at": self.recorded_at}


@frozen()
class Excuses(Value):
    """The skipped dates and pauses a job's tracker document holds (oldest first)."""

    skips: tuple[Skip, ...] = ()
    pauses: tuple[Pause, ...] = ()

    @classmethod
    def from_document(cls, document: Mapping | None) -> Excuses:
        """The excuses in a tracker document; a malformed (hand-edited) entry is left out, never fatal."""
        import datetime as _dt

        from utils.numbers import finite_number

        raw = (document or {}).get(EXCUSED_KEY)
        if not isinstance(raw, Mapping):
            return cls()
        skips, pauses = [], []
        for entry in raw.get("skips") if isinstance(raw.get("skips"), list) else ():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("date"), str):
                continue
            try:
                _dt.date.fromisoformat(entry["date"])
            except ValueError:
                continue
            reason = entry.get("reason") if isinstance(entry.get("reason"), str) else ""
            skips.append(Skip(entry["date"], reason, finite_number(entry.get("recorded_at")) or 0.0))
        for entry in raw.get("pauses") if isinstance(raw.get("pauses"), list) else ():
            if not isinstance(entry, Mapping):
                continue
            start, until = finite_number(entry.get("from")), finite_number(entry.get("until"))
            if start is None or until is None or until <= start:
                continue
            reason = entry.get("reason") if isinstance(entry.get("reason"), str) else ""
            pauses.append(Pause(start, until, reason, finite_number(entry.get("recorded_at")) or 0.0))
        return cls(tuple(skips), tuple(pauses))

    def to_dict(self) -> dict:
        return {"skips": [s.to_dict() for s in self.skips], "pauses": [p.to_dict() for p in self.pauses]}

    def with_skip(self, skip: Skip) -> Excuses:
        """These excuses with ``skip`` (replacing one for the same date), the newest :data:`MAX_SKIPS` dates kept."""
        kept = sorted([s for s in self.skips if s.date != skip.date] + [skip], key=lambda s: s.date)
        return self.replace(skips=tuple(kept[-MAX_SKIPS:]))

    def with_pause(self, pause: Pause) -> Excuses:
        """These excuses with ``pause``, the :data:`MAX_PAUSES` latest-ending kept."""
        kept = sorted([*self.pauses, pause], key=lambda p: (p.until, p.start))
        return self.replace(pauses=tuple(kept[-MAX_PAUSES:]))

    def apply(self, deadline):
        """``deadline`` (a :class:`utils.deadline.DailyDeadline`) without the excused nights."""
        import datetime as _dt

        if not self.skips and not self.pauses:
            return deadline
        skipped = {_dt.date.fromisoformat(s.date): s.reason for s in self.skips}
        return deadline.excusing(skipped, [(p.start, p.until, p.reason) for p in self.pauses])


def parse_skip_date(text: object, now: float, tracker: TrackerConfig) -> str:
    """``YYYY-MM-DD`` within :data:`MAX_EXCUSE_DAYS` of ``now``'s UTC date, on a day the job of ``tracker`` runs,
    as given; UsageError (exit 2) otherwise."""
    import datetime as _dt

    raw = str(text)
    try:
        if len(raw) != 10 or not raw.isascii():
            raise ValueError(raw)
        day = _dt.date.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"--date {_shown(raw)} is not a date (allowed: YYYY-MM-DD, e.g. 2026-12-25)") from None
    today = _dt.datetime.fromtimestamp(now, _dt.UTC).date()
    if abs((day - today).days) > MAX_EXCUSE_DAYS:
        raise UsageError(f"--date {raw} is more than {MAX_EXCUSE_DAYS} days from today {today} (a typo?)")
    if day.weekday() not in tracker.days:
        from utils.deadline import WEEKDAY_NAMES

        runs = ", ".join(WEEKDAY_NAMES[d] for d in sorted(tracker.days))
        raise UsageError(
            f"--date {raw} is a {WEEKDAY_NAMES[day.weekday()]}; job {tracker.batch_name} runs on {runs} only"
        )
    return raw


def parse_pause_until(text: object, now: float) -> float:
    """An ISO-8601 instant with an offset (``2026-12-27T05:00:00-05:00``, ``...Z``) after ``now`` and within
    :data:`MAX_EXCUSE_DAYS`, as a UTC epoch; ConfigError otherwise."""
    import datetime as _dt

    raw = str(text)
    allowed = "an ISO-8601 time with an offset, e.g. 2026-12-27T05:00:00-05:00 or 2026-12-27T10:00:00Z"
    try:
        if not raw.isascii() or len(raw) > 40:
            raise ValueError(raw)
        instant = _dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(f"--until {_shown(raw)} is not allowed (allowed: {allowed})") from None
    if instant.tzinfo is None:
        raise UsageError(f"--until {_shown(raw)} has no UTC offset ({allowed})")
    until = instant.timestamp()
    if until <= now:
        raise UsageError(f"--until {raw} is not in the future (allowed: a later time)")
    if until - now > MAX_EXCUSE_DAYS * 86_400:
        raise UsageError(f"--until {raw} is more than {MAX_EXCUSE_DAYS} days away (a typo?)")
    return until
