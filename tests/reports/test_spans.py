"""A window as a signed sum of subject rollup buckets: exactly its hours, and few buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.reports import spans
from app.reports.spans import Block, blocks

ORIGIN = datetime(1970, 1, 1, tzinfo=UTC)
SOME_HOUR = datetime(2026, 11, 23, 0, tzinfo=UTC)


def _coverage(found: list[Block]) -> dict[datetime, int]:
    """How many times each hour is counted, for the hours some bucket starts or ends at: the
    signed count between two such boundaries is constant."""
    change: dict[datetime, int] = {}
    for block in found:
        end = block.start + timedelta(hours=block.hours)
        change[block.start] = change.get(block.start, 0) + block.sign
        change[end] = change.get(end, 0) - block.sign
    counted, running = {}, 0
    for at in sorted(change):
        running += change[at]
        counted[at] = running
    return counted


@settings(max_examples=400, deadline=None)
@given(
    start_hours=st.integers(min_value=-24 * 800, max_value=24 * 800),
    length_hours=st.integers(min_value=1, max_value=24 * 400),
)
def test_the_buckets_count_every_hour_of_the_window_once_and_none_outside(
    start_hours: int, length_hours: int
) -> None:
    start = SOME_HOUR + timedelta(hours=start_hours)
    end = start + timedelta(hours=length_hours)
    found = blocks(start, end)
    for block in found:
        assert block.hours in spans.LEVELS
        assert (block.start - ORIGIN) % timedelta(hours=block.hours) == timedelta(0)
        assert block.sign in (1, -1, 2, -2)
    counted = _coverage(found)
    for at, count in counted.items():
        # From this boundary to the next one, every hour is counted `count` times.
        assert count == (1 if start <= at < end else 0), (at, count)
    assert min(counted) <= start and end in counted


def test_seven_days_at_any_hour_read_a_few_buckets() -> None:
    for hour in range(24 * 16):
        end = SOME_HOUR + timedelta(hours=hour)
        found = blocks(end - timedelta(days=7), end)
        hourly = [b for b in found if b.hours == spans.HOURLY]
        # Up to 8 hours at an end: 7 hours before a day are cheaper than 5 and 12 hours.
        assert len(hourly) <= 16, end
        assert len(found) - len(hourly) <= 8, end


def test_a_window_on_the_buckets_is_read_whole() -> None:
    start = ORIGIN + timedelta(hours=768 * 240)
    assert blocks(start, start + timedelta(hours=768)) == [Block(768, start, 1)]
    assert blocks(start, start + timedelta(hours=12)) == [Block(12, start, 1)]
    assert blocks(start, start + timedelta(hours=1)) == [Block(1, start, 1)]


def test_only_windows_of_whole_hours_that_end_after_they_start() -> None:
    with pytest.raises(ValueError, match="whole hour"):
        blocks(SOME_HOUR + timedelta(minutes=30), SOME_HOUR + timedelta(hours=2))
    with pytest.raises(ValueError, match="ends after"):
        blocks(SOME_HOUR, SOME_HOUR)


def test_sums_are_used_only_where_every_bucket_they_may_read_is_a_date() -> None:
    longest = timedelta(hours=spans.LEVELS[-1])
    assert spans.within(ORIGIN + longest, SOME_HOUR)
    assert not spans.within(ORIGIN + longest - timedelta(hours=1), SOME_HOUR)
    last = datetime(9999, 12, 31, tzinfo=UTC)
    assert spans.within(SOME_HOUR, last - longest)
    assert not spans.within(SOME_HOUR, last - longest + timedelta(hours=1))
