"""Daily deadlines in a local time zone, correct across DST transitions.

A deadline is a local wall-clock time ``HH:MM`` in an IANA zone. On a given local
date it maps to exactly one UTC instant:

- a wall time skipped by a DST jump (spring forward) means the first instant after
  the gap, i.e. the transition itself;
- an ambiguous wall time (clocks fall back) means its EARLIER occurrence, in every
  zone. Both candidates are computed and the smaller instant wins: a zone's DST flag
  says nothing about which comes first (Europe/Dublin and Africa/Casablanca call their
  winter time the daylight-saving one, so "the DST side" is the later occurrence there).

All inputs and outputs are UTC epoch seconds; local time exists only inside this
module, built with pytz ``localize``/``normalize`` (never ``tzinfo=``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator, Mapping

import pytz

_MAX_GAP_MINUTES = 24 * 60
_MAX_WALK_DAYS = 16  # a week and a bit either way, plus one day per skipped date and four per pause
ALL_WEEKDAYS = frozenset(range(7))  # Monday = 0, as datetime.date.weekday()
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_MISSED_DEADLINE_AGE = 24 * 3600  # a start later than this after a missed deadline is a new night


class DailyDeadline:
    """The local ``hour:minute`` deadline in ``timezone`` on the scheduled ``days`` (weekdays, 0 = Monday; every
    day by default), optionally with a ``start_by`` ``(hour, minute)`` by which a batch must have started.

    A schedule's deadlines are the instants of :meth:`on_local_date` on its scheduled local dates, less the
    excused ones (:meth:`excusing`: skipped local dates and paused windows): every query below
    (:meth:`first_after`, :meth:`last_at_or_before`, :meth:`previous`, :meth:`between`, :meth:`for_new_batch`)
    sees only those, so an unscheduled, skipped or paused night is never a deadline, hence never missing.
    """

    def __init__(
        self,
        hour: int,
        minute: int,
        timezone: str,
        *,
        days: Iterable[int] | None = None,
        start_by: tuple[int, int] | None = None,
    ):
        if not 0 <= hour <= 23:
            raise ValueError(f"hour {hour!r} is not in 0-23")
        if not 0 <= minute <= 59:
            raise ValueError(f"minute {minute!r} is not in 0-59")
        scheduled = ALL_WEEKDAYS if days is None else frozenset(days)
        if not scheduled or not scheduled <= ALL_WEEKDAYS:
            raise ValueError(f"days {sorted(scheduled)!r} is not a non-empty set of weekdays 0-6")
        if start_by is not None and not (0 <= start_by[0] <= 23 and 0 <= start_by[1] <= 59):
            raise ValueError(f"start_by {start_by!r} is not an (hour 0-23, minute 0-59) pair")
        self.hour = hour
        self.minute = minute
        self.zone = pytz.timezone(timezone)
        self.days = scheduled
        self.start_by = None if start_by is None else (int(start_by[0]), int(start_by[1]))
        self.skipped_dates: frozenset[_dt.date] = frozenset()
        self.paused: tuple[tuple[float, float], ...] = ()
        self.reasons: dict = {}  # a skipped date or a paused window -> why (for the status views)

    def __repr__(self) -> str:
        days = "" if self.days == ALL_WEEKDAYS else " " + ",".join(WEEKDAY_NAMES[d] for d in sorted(self.days))
        return f"DailyDeadline({self.hour:02d}:{self.minute:02d} {self.zone.zone}{days})"

    @property
    def every_day(self) -> bool:
        """True when every local day has its deadline (no weekday left out, nothing excused)."""
        return self.days == ALL_WEEKDAYS and not self.skipped_dates and not self.paused

    def excusing(
        self, skipped: Mapping[_dt.date, str] | Iterable[_dt.date] = (), paused: Iterable[tuple] = ()
    ) -> DailyDeadline:
        """A copy of this schedule without the deadlines on the ``skipped`` local dates and those inside a
        ``paused`` window ``(from, until[, reason])``, ``from <= deadline < until`` (UTC epochs): nights
        deliberately not run. ``skipped`` may map each date to its reason."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        reasons = dict(skipped) if isinstance(skipped, Mapping) else dict.fromkeys(skipped, "")
        windows = {(float(w[0]), float(w[1])): (w[2] if len(w) > 2 else "") for w in paused if w[1] > w[0]}
        copy.skipped_dates = frozenset(reasons)
        copy.paused = tuple(sorted(windows))
        copy.reasons = {**reasons, **windows}
        return copy

    def is_excused(self, due: float) -> bool:
        """True when the deadline instant ``due`` falls on a skipped date or inside a pause (a batch that
        stored it when it started is not late for it)."""
        if not self.skipped_dates and not self.paused:
            return False
        return self.to_local(due).date() in self.skipped_dates or self.pause_at(due) is not None

    def pause_at(self, instant: float) -> tuple[float, float] | None:
        """The paused window ``(from, until)`` holding ``instant``, or None."""
        return next((window for window in self.paused if window[0] <= instant < window[1]), None)

    def start_by_for(self, due: float) -> float | None:
        """The instant by which a batch must have started for the deadline ``due``: the latest local
        ``start_by`` time at or before it (that morning, or the evening before when ``start_by`` is later in
        the day than the deadline); None without ``start_by``. DST as for deadlines."""
        if self.start_by is None:
            return None
        day = self.to_local(due).date()
        if self.start_by > (self.hour, self.minute):
            day -= _dt.timedelta(days=1)
        return min(self._wall_instant(day, *self.start_by), due)

    def on_local_date(self, day: _dt.date) -> float:
        """The UTC epoch instant of this deadline's wall time on local date ``day`` (scheduled or not)."""
        return self._wall_instant(day, self.hour, self.minute)

    def _wall_instant(self, day: _dt.date, hour: int, minute: int) -> float:
        wall = _dt.datetime(day.year, day.month, day.day, hour, minute)
        try:
            local = self.zone.localize(wall, is_dst=None)
        except pytz.AmbiguousTimeError:
            return self._earlier_occurrence(wall)
        except pytz.NonExistentTimeError:
            return self._first_instant_after_gap(wall)
        return local.timestamp()

    def _earlier_occurrence(self, wall: _dt.datetime) -> float:
        # Never trust is_dst to mean "first": compute both readings and take the earlier instant.
        return min(self.zone.localize(wall, is_dst=flag).timestamp() for flag in (True, False))

    def _first_instant_after_gap(self, wall: _dt.datetime) -> float:
        # Transitions fall on whole minutes, so the first wall minute that exists
        # after the skipped one is the transition instant itself.
        step = _dt.timedelta(minutes=1)
        candidate = wall
        for _ in range(_MAX_GAP_MINUTES):
            candidate += step
            try:
                return self.zone.localize(candidate, is_dst=None).timestamp()
            except pytz.NonExistentTimeError:
                continue
            except pytz.AmbiguousTimeError:
                return self._earlier_occurrence(candidate)
        raise ValueError(f"no valid local time after {wall} in {self.zone.zone}")

    def to_local(self, instant: float) -> _dt.datetime:
        """``instant`` as an aware datetime in the deadline's zone."""
        utc = pytz.utc.localize(_dt.datetime.utcfromtimestamp(instant))
        return self.zone.normalize(utc.astimezone(self.zone))

    def _around(self, instant: float, days: range) -> Iterator[float]:
        """The deadlines on the local dates ``days`` away from ``instant``'s, in that order (lazily)."""
        today = self.to_local(instant).date()
        return (self.on_local_date(today + _dt.timedelta(days=offset)) for offset in days)

    def _walk(self, instant: float, step: int) -> Iterator[float]:
        """The schedule's deadlines from the local date before (``step`` 1) or after (-1) ``instant``'s, in
        that direction, jumping over pauses; raises ValueError after a bounded search."""
        one = _dt.timedelta(days=step)
        day = self.to_local(instant).date() - one
        for _ in range(_MAX_WALK_DAYS + len(self.skipped_dates) + 4 * len(self.paused)):
            if day.weekday() in self.days and day not in self.skipped_dates:
                due = self.on_local_date(day)
                window = self.pause_at(due)
                if window is None:
                    yield due
                else:  # to the pause's far edge: the next deadline that can count is on its local date
                    edge = self.to_local(window[1] if step > 0 else window[0]).date() - one
                    day = max(day, edge) if step > 0 else min(day, edge)
            day += one
        raise ValueError(f"no deadline of {self!r} near {format_utc(instant)}")

    def first_after(self, instant: float) -> float:
        """The first deadline strictly after ``instant`` (a batch's deadline)."""
        days = self._around(instant, range(-1, 3)) if self.every_day else self._walk(instant, 1)
        return next(due for due in days if due > instant)

    def last_at_or_before(self, instant: float) -> float:
        """The most recent deadline at or before ``instant``."""
        days = self._around(instant, range(1, -3, -1)) if self.every_day else self._walk(instant, -1)
        return next(due for due in days if due <= instant)

    def for_new_batch(self, start: float, previous_start: float | None) -> float:
        """The deadline a batch starting at ``start`` is judged by, fixed once, when it starts.

        Normally the first deadline strictly after ``start``. But when the latest deadline D
        before ``start`` had no batch started in its window (the previous batch, started at
        ``previous_start``, started at or before the deadline before D), this batch answers
        that missed night: its deadline is D, so it is late from its start. Only when D is
        less than :data:`MAX_MISSED_DEADLINE_AGE` ago and some batch was recorded before
        (a first run after installing is not late).
        """
        recent = self.last_at_or_before(start)
        missed = (
            previous_start is not None
            and recent < start
            and start - recent < MAX_MISSED_DEADLINE_AGE
            and previous_start <= self.previous(recent)
        )
        return recent if missed else self.first_after(start)

    def previous(self, deadline: float) -> float:
        """The deadline before the deadline instant ``deadline``."""
        return self.last_at_or_before(deadline - 1)

    def between(self, after: float, until: float, limit: int = 31) -> list[float]:
        """The newest ``limit`` deadlines in the window ``(after, until]``, oldest first."""
        found: list[float] = []
        current = self.last_at_or_before(until)
        while current > after and len(found) < limit:
            found.append(current)
            current = self.previous(current)
        found.reverse()
        return found


def format_utc(instant: float | None) -> str | None:
    """ISO-8601 in UTC with an explicit offset, or None."""
    if instant is None:
        return None
    return _dt.datetime.fromtimestamp(instant, _dt.UTC).isoformat(timespec="seconds")


def format_duration(seconds: float) -> str:
    """A short human duration: ``45 s``, ``47 min``, ``2 h 03 min``, ``1 d 4 h``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def format_local(instant: float | None, deadline: DailyDeadline) -> str | None:
    """``instant`` in the deadline's zone (``2026-03-08 05:00 EDT``), or None."""
    if instant is None:
        return None
    return deadline.to_local(instant).strftime("%Y-%m-%d %H:%M %Z")
