"""Calendar periods in the budget's time zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.budgets.periods import TOTAL_END, TOTAL_START, period_bounds


def test_a_day_in_new_york_starts_at_local_midnight() -> None:
    start, end = period_bounds("day", "America/New_York", datetime(2026, 7, 1, 3, tzinfo=UTC))
    # 03:00 UTC on 1 July is still 30 June in New York (UTC-4).
    assert start == datetime(2026, 6, 30, 4, tzinfo=UTC)
    assert end == datetime(2026, 7, 1, 4, tzinfo=UTC)


def test_the_day_clocks_spring_forward_is_23_hours() -> None:
    start, end = period_bounds("day", "Europe/Berlin", datetime(2026, 3, 29, 12, tzinfo=UTC))
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert end - start == timedelta(hours=23)


def test_the_day_clocks_fall_back_is_25_hours() -> None:
    start, end = period_bounds("day", "Europe/Berlin", datetime(2026, 10, 25, 12, tzinfo=UTC))
    assert end - start == timedelta(hours=25)


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    at = datetime(2026, 11, 22, 12, tzinfo=UTC)  # a Sunday
    week_start, week_end = period_bounds("week", "UTC", at)
    assert week_start == datetime(2026, 11, 16, tzinfo=UTC)
    assert week_end == datetime(2026, 11, 23, tzinfo=UTC)
    month_start, month_end = period_bounds("month", "Asia/Tokyo", at)
    assert month_start == datetime(2026, 10, 31, 15, tzinfo=UTC)
    assert month_end == datetime(2026, 11, 30, 15, tzinfo=UTC)


def test_december_rolls_into_january() -> None:
    start, end = period_bounds("month", "UTC", datetime(2026, 12, 31, 23, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_total_never_rolls_over() -> None:
    assert period_bounds("total", "UTC", datetime.now(UTC)) == (TOTAL_START, TOTAL_END)


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        period_bounds("day", "Mars/Olympus", datetime.now(UTC))
