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
from collections.abc import Iterator

import pytz

_MAX_GAP_MINUTES = 24 * 60
MAX_MISSED_DEADLINE_AGE = 24 * 3600  # a start later than this after a missed deadline is a new night


class DailyDeadline:
    """The daily local ``hour:minute`` deadline in ``timezone``."""

    def __init__(self, hour: int, minute: int, timezone: str):
        if not 0 <= hour <= 23:
            raise ValueError(f"hour {hour!r} is not in 0-23")
        if not 0 <= minute <= 59:
            raise ValueError(f"minute {minute!r} is not in 0-59")
        self.hour = hour
        self.minute = minute
        self.zone = pytz.timezone(timezone)

    def __repr__(self) -> str:
        return f"DailyDeadline({self.hour:02d}:{self.minute:02d} {self.zone.zone})"

    def on_local_date(self, day: _dt.date) -> float:
        """The UTC epoch instant of this deadline on local date ``day``."""
        wall = _dt.datetime(day.year, day.month, day.day, self.hour, self.minute)
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

    def first_after(self, instant: float) -> float:
        """The first deadline strictly after ``instant`` (a batch's deadline)."""
        return next(due for due in self._around(instant, range(-1, 3)) if due > instant)

    def last_at_or_before(self, instant: float) -> float:
        """The most recent deadline at or before ``instant``."""
        return next(due for due in self._around(instant, range(1, -3, -1)) if due <= instant)

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
