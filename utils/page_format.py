"""Values of the status dict as safe HTML fragments, shared by the status page and its chart.

Every helper accepts any value (the dict may come from an older or hand-edited file) and degrades to
a dash, never an error; every string leaves HTML-escaped with control characters as visible stand-ins.
"""

from __future__ import annotations

import datetime as dt
import html

import pytz

from utils.deadline import format_duration, format_utc
from utils.numbers import finite_number
from utils.text_safety import control_pictures

DASH = "\u2013"


def escape(value: object) -> str:
    """Escape anything for HTML text or attribute context; None shows as a dash."""
    return DASH if value is None else html.escape(control_pictures(value), quote=True)


def is_number(value: object) -> bool:
    return finite_number(value) is not None


def as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def as_dicts(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def instant(value: object) -> float | None:
    """An epoch number or an ISO-8601 string with an offset as epoch seconds; None otherwise."""
    if is_number(value) and 0 <= value < 1e11:
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed.timestamp() if parsed.tzinfo is not None else None
    return None


def percent(value: object) -> str:
    return f"{value:.1f}%" if is_number(value) else escape(value)


def duration(seconds: object) -> str:
    """Seconds as ``2 h 03 min`` (escaped); anything but a finite number is a dash."""
    return escape(format_duration(seconds)) if is_number(seconds) else escape(None)


def relative(seconds_left: object) -> str:
    """Seconds until an instant as ``in 2 h 03 min`` or ``47 min ago``; a dash when unknown."""
    if not is_number(seconds_left):
        return escape(None)
    return f"in {duration(seconds_left)}" if seconds_left >= 0 else f"{duration(seconds_left)} ago"


class PageTimes:
    """Formats instants for people in the deadline's zone; ``now`` is the page's one instant."""

    def __init__(self, status: dict):
        deadline, upcoming = as_dict(status.get("deadline")), as_dict(status.get("next_deadline"))
        zone_name = deadline.get("timezone") or upcoming.get("timezone")
        try:
            self.zone = pytz.timezone(str(zone_name)) if zone_name else pytz.utc
        except (pytz.UnknownTimeZoneError, ValueError):
            self.zone = pytz.utc
        self.now = instant(status.get("now"))

    def local(self, epoch: float) -> dt.datetime:
        utc = pytz.utc.localize(dt.datetime(1970, 1, 1) + dt.timedelta(seconds=epoch))
        return self.zone.normalize(utc.astimezone(self.zone))

    def text(self, epoch: float) -> str:
        """``05:00 EST, Tue 1 Dec`` (with the year when it is not the page's year)."""
        local = self.local(epoch)
        text = f"{local:%H:%M} {local.tzname()}, {local:%a} {local.day} {local:%b}"
        if self.now is not None and self.local(self.now).year != local.year:
            text += f" {local.year}"
        return text

    def at(self, value: object) -> str:
        """HTML for an instant: local text, the UTC ISO instant on hover; anything else escaped."""
        epoch = instant(value)
        if epoch is None:
            return escape(value)
        utc = format_utc(epoch)
        return f'<time datetime="{utc}" title="{utc}">{escape(self.text(epoch))}</time>'

    def ago(self, value: object) -> str:
        """``<time> (12 min ago)`` against the page's instant."""
        epoch = instant(value)
        if epoch is None or self.now is None:
            return self.at(value)
        if abs(epoch - self.now) < 1:
            return f"{self.at(value)} (just now)"
        return f"{self.at(value)} ({relative(epoch - self.now)})"
