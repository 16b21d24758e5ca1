"""Helpers shared by the test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import datetime as dt

import pytz

NEW_YORK = "America/New_York"


def local_epoch(zone: str, year: int, month: int, day: int, hour=0, minute=0, second=0, *, is_dst=None) -> float:
    """UTC epoch of a wall time in ``zone`` (pytz ``localize``; ``is_dst=None`` refuses a skipped or
    repeated wall time, True/False picks a side)."""
    wall = dt.datetime(year, month, day, hour, minute, second)
    return pytz.timezone(zone).localize(wall, is_dst=is_dst).timestamp()


def ny_epoch(text: str, zone: str = NEW_YORK, *, is_dst=None) -> float:
    """UTC epoch of ``YYYY-MM-DD HH:MM[:SS]`` New York wall time (or ``zone``'s), e.g. ``ny_epoch("2026-06-01 05:00")``."""
    wall = dt.datetime.fromisoformat(text)
    return local_epoch(zone, wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, is_dst=is_dst)
