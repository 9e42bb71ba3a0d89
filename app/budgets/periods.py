"""Calendar-aligned budget periods in the budget's IANA time zone.

A period is [start, end) between two local midnights (day), Mondays (week) or firsts of the
month, converted to UTC; a DST change makes a day 23 or 25 hours long, never shifts it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("day", "week", "month", "total")
TOTAL_START = datetime(1970, 1, 1, tzinfo=UTC)
TOTAL_END = datetime(9999, 12, 31, tzinfo=UTC)


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {name!r}") from error


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # fold=0 maps a midnight skipped by DST to the instant of the transition itself.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def period_bounds(period: str, timezone: str, at: datetime) -> tuple[datetime, datetime]:
    """The [start, end) in UTC of the ``period`` that contains the instant ``at``."""
    if period == "total":
        return TOTAL_START, TOTAL_END
    tz = zone(timezone)
    local_day = at.astimezone(tz).date()
    if period == "day":
        first, following = local_day, local_day + timedelta(days=1)
    elif period == "week":
        first = local_day - timedelta(days=local_day.weekday())
        following = first + timedelta(days=7)
    elif period == "month":
        first = local_day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _local_midnight(first, tz), _local_midnight(following, tz)
