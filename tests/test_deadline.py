"""utils.deadline: the first local HH:MM strictly after a start, on every day of the year, in any zone."""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import zoneinfo

import pytest
import pytz
from helpers import NEW_YORK, local_epoch

from utils.deadline import MAX_MISSED_DEADLINE_AGE, DailyDeadline, format_duration, format_utc


def utc(year, month, day, hour=0, minute=0, second=0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, second)))


@pytest.fixture
def five_am_new_york() -> DailyDeadline:
    return DailyDeadline(5, 0, NEW_YORK)


# --------------------------------------------------------------------------- strictly after the start


def test_it_gives_a_batch_started_before_the_deadline_that_same_days_deadline(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 6, 1, 4, 59, 59)
    assert five_am_new_york.first_after(start) == local_epoch(NEW_YORK, 2026, 6, 1, 5, 0)


def test_it_gives_a_batch_started_exactly_at_the_deadline_the_next_days_deadline(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 6, 1, 5, 0, 0)
    assert five_am_new_york.first_after(start) == local_epoch(NEW_YORK, 2026, 6, 2, 5, 0)


def test_it_gives_a_batch_started_just_after_the_deadline_the_next_days_deadline(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 6, 1, 5, 0, 1)
    assert five_am_new_york.first_after(start) == local_epoch(NEW_YORK, 2026, 6, 2, 5, 0)


def test_it_gives_a_batch_started_after_midnight_the_same_local_days_deadline(five_am_new_york):
    # 00:30 EDT is already the next UTC day's 04:30; the deadline is 05:00 that same local day.
    start = local_epoch(NEW_YORK, 2026, 6, 2, 0, 30)
    assert five_am_new_york.first_after(start) == utc(2026, 6, 2, 9, 0)


def test_it_gives_a_batch_started_in_the_evening_the_next_mornings_deadline(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 6, 1, 23, 0)
    assert five_am_new_york.first_after(start) == utc(2026, 6, 2, 9, 0)


# --------------------------------------------------------------------------- DST in America/New_York


def test_it_puts_05_00_on_the_spring_forward_day_at_05_00_edt(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 3, 8, 0, 30)  # still EST
    assert five_am_new_york.first_after(start) == utc(2026, 3, 8, 9, 0)
    assert five_am_new_york.to_local(utc(2026, 3, 8, 9, 0)).strftime("%H:%M %Z") == "05:00 EDT"


def test_it_gives_a_batch_started_the_evening_before_spring_forward_a_23_hour_night(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 3, 7, 22, 0)  # EST
    due = five_am_new_york.first_after(start)
    assert due == utc(2026, 3, 8, 9, 0)
    assert due - start == 6 * 3600  # 22:00 EST -> 05:00 EDT is six real hours, not seven


def test_it_puts_05_00_on_the_fall_back_day_at_05_00_est(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 11, 1, 0, 30)  # still EDT
    assert five_am_new_york.first_after(start) == utc(2026, 11, 1, 10, 0)
    assert five_am_new_york.to_local(utc(2026, 11, 1, 10, 0)).strftime("%H:%M %Z") == "05:00 EST"


def test_it_gives_a_batch_started_the_evening_before_fall_back_a_25_hour_night(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 10, 31, 22, 0)  # EDT
    assert five_am_new_york.first_after(start) - start == 8 * 3600  # 22:00 EDT -> 05:00 EST


def test_it_moves_a_deadline_inside_the_spring_gap_to_the_first_instant_after_it():
    deadline = DailyDeadline(2, 30, NEW_YORK)  # 02:30 does not exist on 2026-03-08
    assert deadline.on_local_date(dt.date(2026, 3, 8)) == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    start = local_epoch(NEW_YORK, 2026, 3, 8, 1, 0)
    due = deadline.first_after(start)
    assert due == utc(2026, 3, 8, 7, 0)
    assert deadline.to_local(due).strftime("%H:%M %Z") == "03:00 EDT"
    # The days around the gap keep their normal 02:30.
    assert deadline.on_local_date(dt.date(2026, 3, 7)) == utc(2026, 3, 7, 7, 30)
    assert deadline.on_local_date(dt.date(2026, 3, 9)) == utc(2026, 3, 9, 6, 30)


def test_it_takes_the_first_occurrence_of_a_deadline_in_the_ambiguous_hour():
    deadline = DailyDeadline(1, 30, NEW_YORK)  # 01:30 happens twice on 2026-11-01
    assert deadline.on_local_date(dt.date(2026, 11, 1)) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    start = local_epoch(NEW_YORK, 2026, 11, 1, 0, 15)
    due = deadline.first_after(start)
    assert due == utc(2026, 11, 1, 5, 30)
    assert deadline.to_local(due).strftime("%H:%M %Z") == "01:30 EDT"


def test_it_does_not_count_the_second_occurrence_of_an_ambiguous_time_as_a_deadline():
    deadline = DailyDeadline(1, 30, NEW_YORK)
    between_occurrences = utc(2026, 11, 1, 5, 45)  # 01:45 EDT, before 01:30 EST comes round
    assert deadline.first_after(between_occurrences) == utc(2026, 11, 2, 6, 30)  # next day 01:30 EST


# --------------------------------------------------------------------------- other zones


@pytest.mark.parametrize(
    ("zone", "hour", "minute", "day", "expected"),
    [
        # Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
        ("Europe/Berlin", 5, 0, dt.date(2026, 3, 29), utc(2026, 3, 29, 3, 0)),
        ("Europe/Berlin", 5, 0, dt.date(2026, 10, 25), utc(2026, 10, 25, 4, 0)),
        ("Europe/Berlin", 2, 30, dt.date(2026, 3, 29), utc(2026, 3, 29, 1, 0)),  # gap -> 03:00 CEST
        ("Europe/Berlin", 2, 30, dt.date(2026, 10, 25), utc(2026, 10, 25, 0, 30)),  # first, CEST
        # Australia/Lord_Howe: +10:30 standard, +11 summer, a 30-minute shift.
        # 2026-04-05 02:00 +11 -> 01:30 +10:30; 2026-10-04 02:00 +10:30 -> 02:30 +11.
        ("Australia/Lord_Howe", 5, 0, dt.date(2026, 4, 5), utc(2026, 4, 4, 18, 30)),
        ("Australia/Lord_Howe", 5, 0, dt.date(2026, 10, 4), utc(2026, 10, 3, 18, 0)),
        ("Australia/Lord_Howe", 2, 15, dt.date(2026, 10, 4), utc(2026, 10, 3, 15, 30)),  # gap -> 02:30 +11
        ("Australia/Lord_Howe", 1, 45, dt.date(2026, 4, 5), utc(2026, 4, 4, 14, 45)),  # first, +11
        ("UTC", 5, 0, dt.date(2026, 3, 8), utc(2026, 3, 8, 5, 0)),
        ("UTC", 23, 59, dt.date(2026, 12, 31), utc(2026, 12, 31, 23, 59)),
    ],
)
def test_it_maps_a_local_deadline_to_the_right_instant_in_other_zones(zone, hour, minute, day, expected):
    assert DailyDeadline(hour, minute, zone).on_local_date(day) == expected


def test_it_gives_a_utc_batch_started_at_05_00_exactly_the_next_days_deadline():
    deadline = DailyDeadline(5, 0, "UTC")
    assert deadline.first_after(utc(2026, 7, 1, 5, 0)) == utc(2026, 7, 2, 5, 0)
    assert deadline.first_after(utc(2026, 7, 1, 4, 59, 59)) == utc(2026, 7, 1, 5, 0)


# --------------------------------------------------------------------------- zones whose DST flag is "backwards"


def test_it_takes_the_earlier_occurrence_in_dublin_where_winter_time_is_the_dst_one():
    # tz data gives Europe/Dublin IST (+1) as standard and GMT as "DST" (negative save):
    # is_dst=True picks 01:30 GMT, the *second* 01:30 of 2026-10-25. The first is 01:30 IST.
    deadline = DailyDeadline(1, 30, "Europe/Dublin")
    assert deadline.on_local_date(dt.date(2026, 10, 25)) == utc(2026, 10, 25, 0, 30)
    start = utc(2026, 10, 24, 23, 0)  # 00:00 IST
    assert deadline.first_after(start) == utc(2026, 10, 25, 0, 30)
    assert deadline.to_local(utc(2026, 10, 25, 0, 30)).strftime("%H:%M %Z") == "01:30 IST"


def test_it_takes_the_earlier_occurrence_in_casablanca_when_ramadan_time_ends():
    # Africa/Casablanca: +01 most of the year, +00 (flagged DST) in Ramadan; on 2026-03-22
    # 02:00 +00 becomes 03:00 +01 and on 2026-02-15 03:00 +01 falls back to 02:00 +00.
    deadline = DailyDeadline(2, 30, "Africa/Casablanca")
    assert deadline.on_local_date(dt.date(2026, 2, 15)) == utc(2026, 2, 15, 1, 30)  # 02:30 +01, the first
    assert deadline.on_local_date(dt.date(2026, 3, 22)) == utc(2026, 3, 22, 2, 0)  # gap: 03:00 +01


def _stdlib_zone(zone_name: str) -> zoneinfo.ZoneInfo:
    """The stdlib's reading of the same tz data file pytz ships (system tz data can be a different
    release: Casablanca's future Ramadan dates, for one, change between releases)."""
    with pytz.open_resource(zone_name) as data:
        return zoneinfo.ZoneInfo.from_file(data, key=zone_name)


def _transition_days(zone_name: str, years: range) -> list[dt.date]:
    """Local dates on which ``zone_name``'s UTC offset changes (found with zoneinfo, not pytz)."""
    zone = _stdlib_zone(zone_name)
    days = []
    day = dt.date(years.start, 1, 1)
    while day.year < years.stop:
        start = dt.datetime(day.year, day.month, day.day, tzinfo=zone)
        end = start + dt.timedelta(days=1)
        if start.utcoffset() != end.utcoffset():
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def _oracle(zone_name: str, day: dt.date, hour: int, minute: int) -> float:
    """The deadline rule computed with stdlib zoneinfo: a wall time that exists once is that
    instant; one that exists twice (fold 0 and 1 both round-trip) is the earlier; one in a
    gap moves to the first wall minute after it that exists."""
    zone = _stdlib_zone(zone_name)
    wall = dt.datetime(day.year, day.month, day.day, hour, minute)
    for _ in range(24 * 60):
        readings = [wall.replace(tzinfo=zone, fold=fold) for fold in (0, 1)]
        real = [
            r.timestamp()
            for r in readings
            if dt.datetime.fromtimestamp(r.timestamp(), zone).replace(tzinfo=None, fold=0) == wall
        ]
        if real:
            return min(real)
        wall += dt.timedelta(minutes=1)
    raise AssertionError("no wall time after the gap")


@pytest.mark.parametrize(
    "zone", [NEW_YORK, "Europe/Dublin", "Africa/Casablanca", "Europe/Berlin", "Australia/Lord_Howe"]
)
def test_it_agrees_with_zoneinfo_on_every_wall_time_of_every_transition_day(zone):
    days = _transition_days(zone, range(2024, 2028))
    assert days, zone
    checked = 0
    for day in days:
        for hour, minute in itertools.product(range(24), (0, 15, 30, 45)):
            expected = _oracle(zone, day, hour, minute)
            got = DailyDeadline(hour, minute, zone).on_local_date(day)
            assert got == expected, (zone, day, f"{hour:02d}:{minute:02d}", format_utc(got), format_utc(expected))
            checked += 1
    assert checked == len(days) * 96


# --------------------------------------------------------------------------- the deadline of a new batch


def test_it_gives_a_new_batch_the_next_deadline_when_the_last_one_had_its_batch(five_am_new_york):
    previous_start = local_epoch(NEW_YORK, 2026, 6, 1, 1, 0)  # covered 06-01 05:00
    start = local_epoch(NEW_YORK, 2026, 6, 2, 1, 0)
    assert five_am_new_york.for_new_batch(start, previous_start) == local_epoch(NEW_YORK, 2026, 6, 2, 5, 0)
    rerun = local_epoch(NEW_YORK, 2026, 6, 1, 9, 0)  # a re-run after a covered deadline: the next night's
    assert five_am_new_york.for_new_batch(rerun, previous_start) == local_epoch(NEW_YORK, 2026, 6, 2, 5, 0)


def test_it_gives_a_batch_starting_after_a_missed_deadline_that_deadline(five_am_new_york):
    previous_start = local_epoch(NEW_YORK, 2026, 6, 1, 1, 0)
    missed = local_epoch(NEW_YORK, 2026, 6, 2, 5, 0)
    for start in (missed + 1, local_epoch(NEW_YORK, 2026, 6, 2, 16, 0), local_epoch(NEW_YORK, 2026, 6, 3, 4, 59)):
        assert five_am_new_york.for_new_batch(start, previous_start) == missed
    # Exactly at the deadline the start is inside that deadline's window: not late, next night's.
    assert five_am_new_york.for_new_batch(missed, previous_start) == local_epoch(NEW_YORK, 2026, 6, 3, 5, 0)


def test_it_bounds_how_far_back_a_missed_deadline_reaches():
    deadline = DailyDeadline(5, 0, NEW_YORK)
    previous_start = local_epoch(NEW_YORK, 2026, 6, 1, 1, 0)
    # Several nights missed: the batch belongs to the most recent one only, never older.
    start = local_epoch(NEW_YORK, 2026, 6, 5, 8, 0)
    assert deadline.for_new_batch(start, previous_start) == local_epoch(NEW_YORK, 2026, 6, 5, 5, 0)
    assert MAX_MISSED_DEADLINE_AGE == 24 * 3600


def test_it_gives_the_first_batch_ever_the_next_deadline(five_am_new_york):
    start = local_epoch(NEW_YORK, 2026, 6, 2, 12, 0)
    assert five_am_new_york.for_new_batch(start, None) == local_epoch(NEW_YORK, 2026, 6, 3, 5, 0)


# --------------------------------------------------------------------------- every day of 2026


@pytest.mark.parametrize(
    ("zone", "hour", "minute"),
    [
        (NEW_YORK, 5, 0),
        (NEW_YORK, 2, 30),
        (NEW_YORK, 1, 30),
        ("Australia/Lord_Howe", 2, 15),
        ("Europe/Dublin", 1, 30),
        ("Africa/Casablanca", 2, 30),
        ("UTC", 0, 0),
    ],
)
def test_it_puts_every_2026_deadline_strictly_after_the_start_and_within_48h(zone, hour, minute):
    deadline = DailyDeadline(hour, minute, zone)
    first_day = utc(2026, 1, 1)
    for day in range(365):
        midnight = first_day + day * 86400
        today = deadline.on_local_date(dt.date(2026, 1, 1) + dt.timedelta(days=day))
        starts = (midnight, midnight + 13 * 3600, today - 1, today)  # today: exactly at a deadline
        for start in starts:
            due = deadline.first_after(start)
            assert start < due <= start + 48 * 3600, (zone, format_utc(start), format_utc(due))
            # ... and it is the *first* one: no deadline lies between the start and it.
            assert deadline.previous(due) <= start, (zone, format_utc(start), format_utc(due))


def test_it_keeps_the_configured_wall_time_on_every_2026_day_in_new_york(five_am_new_york):
    for day in range(365):
        date = dt.date(2026, 1, 1) + dt.timedelta(days=day)
        local_due = five_am_new_york.to_local(five_am_new_york.on_local_date(date))
        assert (local_due.date(), local_due.hour, local_due.minute) == (date, 5, 0)


# --------------------------------------------------------------------------- navigation and formatting


def test_it_finds_the_latest_deadline_at_or_before_an_instant(five_am_new_york):
    due = utc(2026, 6, 2, 9, 0)
    assert five_am_new_york.last_at_or_before(due) == due
    assert five_am_new_york.last_at_or_before(due - 1) == utc(2026, 6, 1, 9, 0)
    assert five_am_new_york.previous(due) == utc(2026, 6, 1, 9, 0)


def test_it_lists_the_deadlines_in_a_window_oldest_first_and_bounded(five_am_new_york):
    after = utc(2026, 6, 1, 9, 0)  # excluded: the window is (after, until]
    until = utc(2026, 6, 4, 9, 0)  # included
    assert five_am_new_york.between(after, until) == [utc(2026, 6, d, 9, 0) for d in (2, 3, 4)]
    assert five_am_new_york.between(after, until, limit=2) == [utc(2026, 6, d, 9, 0) for d in (3, 4)]
    assert five_am_new_york.between(until, until) == []


def test_it_lists_the_short_and_long_nights_across_both_transitions(five_am_new_york):
    spring = five_am_new_york.between(utc(2026, 3, 7), utc(2026, 3, 9, 12))
    assert [b - a for a, b in itertools.pairwise(spring)] == [23 * 3600, 24 * 3600]
    fall = five_am_new_york.between(utc(2026, 10, 31), utc(2026, 11, 2, 12))
    assert [b - a for a, b in itertools.pairwise(fall)] == [25 * 3600, 24 * 3600]


def test_it_formats_utc_with_an_explicit_offset():
    assert format_utc(utc(2026, 3, 8, 7, 0)) == "2026-03-08T07:00:00+00:00"
    assert format_utc(None) is None


@pytest.mark.parametrize(("hour", "minute"), [(24, 0), (-1, 0), (5, 60), (5, -1)])
def test_it_refuses_an_hour_or_minute_out_of_range(hour, minute):
    with pytest.raises(ValueError, match=r"hour|minute"):
        DailyDeadline(hour, minute, NEW_YORK)


def test_it_refuses_an_unknown_zone():
    with pytest.raises(pytz.UnknownTimeZoneError):
        DailyDeadline(5, 0, "Mars/Olympus")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h 00 min"),
        (-5400, "1 h 30 min"),
        (47 * 3600 + 59 * 60, "47 h 59 min"),
        (48 * 3600, "2 d 0 h"),
        (100 * 3600, "4 d 4 h"),
    ],
)
def test_it_formats_durations_for_people(seconds, text):
    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- schedules: days, start-by, excused nights

SYDNEY = "Australia/Sydney"
SATURDAY = 5


@pytest.mark.parametrize(("zone", "days"), [(SYDNEY, {SATURDAY}), (NEW_YORK, {0, 2, 4}), ("Europe/Berlin", {6})])
def test_it_puts_deadlines_only_on_scheduled_days_all_year_across_dst(zone, days):
    schedule = DailyDeadline(12, 0, zone, days=days)
    every_day = DailyDeadline(12, 0, zone)
    after, until = every_day.on_local_date(dt.date(2025, 12, 31)), every_day.on_local_date(dt.date(2026, 12, 31))
    found = schedule.between(after, until, limit=400)
    year = (dt.date(2026, 1, 1) + dt.timedelta(days=n) for n in range(365))
    expected = [every_day.on_local_date(day) for day in year if day.weekday() in days]
    assert found == expected
    for due in found:  # each one at 12:00 local, whatever the offset that day
        local = schedule.to_local(due)
        assert (local.weekday() in days, local.hour, local.minute) == (True, 12, 0)
    for start in (utc(2026, 1, 1) + n * 7 * 3600 for n in range(1200)):
        due = schedule.first_after(start)
        assert start < due <= start + 8 * 86400 and schedule.previous(due) <= start
        assert schedule.last_at_or_before(start) <= start < schedule.first_after(schedule.last_at_or_before(start))


def test_it_keeps_a_weekly_sydney_deadline_at_noon_across_both_transitions():
    weekly = DailyDeadline(12, 0, SYDNEY, days={SATURDAY})
    # Spring forward on Sunday 4 October 2026 (+10 -> +11), fall back on Sunday 5 April 2026 (+11 -> +10).
    assert weekly.first_after(utc(2026, 10, 3, 3)) == utc(2026, 10, 10, 1)  # Sat 10 Oct 12:00 AEDT
    assert weekly.previous(utc(2026, 10, 10, 1)) == utc(2026, 10, 3, 2)  # Sat 3 Oct 12:00 AEST
    assert weekly.between(utc(2026, 3, 30), utc(2026, 4, 12)) == [utc(2026, 4, 4, 1), utc(2026, 4, 11, 2)]


def test_it_answers_a_missed_weekly_deadline_only_within_a_day_of_it():
    weekly = DailyDeadline(12, 0, SYDNEY, days={SATURDAY})
    last_week = utc(2026, 10, 2, 23)  # Sat 3 Oct 09:00 AEST
    # Saturday 10 Oct 12:00 AEDT was missed: a start that afternoon answers it (late from its start) ...
    assert weekly.for_new_batch(utc(2026, 10, 10, 4), last_week) == utc(2026, 10, 10, 1)
    # ... a start on Wednesday is a new week's run, judged by the next Saturday.
    assert weekly.for_new_batch(utc(2026, 10, 14, 4), last_week) == utc(2026, 10, 17, 1)


@pytest.mark.parametrize(
    ("start_by", "day", "expected_local"),
    [
        ((1, 30), dt.date(2026, 6, 2), (2026, 6, 2, 1, 30)),  # that morning
        ((22, 0), dt.date(2026, 6, 2), (2026, 6, 1, 22, 0)),  # the evening before
        ((2, 30), dt.date(2026, 3, 8), (2026, 3, 8, 3, 0)),  # skipped by spring forward: the gap's end
        ((22, 0), dt.date(2026, 3, 8), (2026, 3, 7, 22, 0)),  # the evening before a 23-hour night
        ((5, 0), dt.date(2026, 6, 2), (2026, 6, 2, 5, 0)),  # at the deadline itself
    ],
)
def test_it_puts_the_start_by_time_on_the_deadlines_morning_or_the_evening_before(start_by, day, expected_local):
    schedule = DailyDeadline(5, 0, NEW_YORK, start_by=start_by)
    assert schedule.start_by_for(schedule.on_local_date(day)) == local_epoch(NEW_YORK, *expected_local)


def test_it_takes_the_earlier_01_30_as_the_start_by_time_on_the_fall_back_day():
    schedule = DailyDeadline(5, 0, NEW_YORK, start_by=(1, 30))
    due = schedule.on_local_date(dt.date(2026, 11, 1))
    assert due == utc(2026, 11, 1, 10)  # 05:00 EST
    assert schedule.start_by_for(due) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT, the first of the two
    assert DailyDeadline(5, 0, NEW_YORK).start_by_for(due) is None


def test_it_leaves_skipped_dates_and_paused_nights_out_of_the_schedule(five_am_new_york):
    excused = five_am_new_york.excusing(
        {dt.date(2026, 12, 24): "holiday"}, [(utc(2026, 12, 27), utc(2027, 1, 2, 10), "freeze")]
    )
    # Dec 24 skipped; Dec 27 05:00 .. Jan 2 05:00 EST (10:00 UTC, the pause's end: not included) paused.
    assert [excused.to_local(d).day for d in excused.between(utc(2026, 12, 22), utc(2027, 1, 4))] == [
        22,
        23,
        25,
        26,
        2,
        3,
    ]
    assert excused.first_after(utc(2026, 12, 23, 12)) == utc(2026, 12, 25, 10)
    assert excused.last_at_or_before(utc(2027, 1, 1, 12)) == utc(2026, 12, 26, 10)
    assert excused.first_after(utc(2026, 12, 26, 12)) == utc(2027, 1, 2, 10)
    assert excused.is_excused(utc(2026, 12, 24, 10)) and excused.is_excused(utc(2026, 12, 30, 10))
    assert not excused.is_excused(utc(2026, 12, 25, 10)) and not five_am_new_york.is_excused(utc(2026, 12, 24, 10))
    assert excused.reasons[dt.date(2026, 12, 24)] == "holiday"
    # The schedule it came from is unchanged, and excusing nothing gives it back.
    assert five_am_new_york.first_after(utc(2026, 12, 23, 12)) == utc(2026, 12, 24, 10)
    assert excused.excusing().between(utc(2026, 12, 22), utc(2026, 12, 26)) == five_am_new_york.between(
        utc(2026, 12, 22), utc(2026, 12, 26)
    )


def test_it_jumps_over_a_long_pause_in_both_directions():
    weekly = DailyDeadline(12, 0, SYDNEY, days={SATURDAY}).excusing((), [(utc(2026, 1, 1), utc(2026, 9, 1))])
    assert weekly.first_after(utc(2026, 2, 1)) == utc(2026, 9, 5, 2)  # the first Saturday after it
    assert weekly.last_at_or_before(utc(2026, 8, 1)) == utc(2025, 12, 27, 1)  # the last Saturday before it


@pytest.mark.parametrize("days", [set(), {7}, {-1, 2}])
def test_it_refuses_a_schedule_without_valid_days(days):
    with pytest.raises(ValueError, match="days"):
        DailyDeadline(5, 0, NEW_YORK, days=days)
