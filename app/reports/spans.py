"""A window of whole hours as a short signed sum of subject rollup buckets.

Reports by subject over a whole window (no periods) may read spend per subject from buckets of
1 hour (``rollup_subject_hourly``), 24 hours (``rollup_subject_daily``) and the spans of
``rollup_subject_span`` (``rollups.SPAN_HOURS``), each bucket starting at a multiple of its span
from 1970-01-01 00:00 UTC. Every span is a multiple of the one before it, so any window of whole
hours is such a sum, and a bucket reaching past the window is read with the hours outside it
taken off (signed). ``blocks`` picks the sum that reads the fewest rows, as estimated by
``_ROWS``.

The sum telescopes: walking the window's start and end outwards (or inwards) from span to span,
each step over buckets of the shorter span, and then from the start's last position to the end's
over buckets of the longest span used. Each step reaches the next span's nearest boundary on one
side or the other, so there are two positions per span for each end: a shortest path over at
most 2 x 8 positions per end.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.reports.rollups import SPAN_HOURS

HOURLY = 1
DAILY = 24
LEVELS = (HOURLY, SPAN_HOURS[0], DAILY, *SPAN_HOURS[1:])
_ORIGIN = datetime(1970, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, tzinfo=UTC)
# Rows a bucket of each span holds per ten an hour holds, for reports by subject: at 10M events
# over 5,000 subjects an hour held ~1,280 rows, 12 hours ~3,850, a day ~4,500 and longer spans
# ~4,750-4,850 (docs/reports.md). Only the choice between sums depends on them, never a result.
_ROWS = {HOURLY: 10, SPAN_HOURS[0]: 30, DAILY: 35, **{hours: 37 for hours in SPAN_HOURS[1:]}}
# Each span a multiple of the one before, all from one origin: what makes every window a sum of
# them (a walk from span to span lands on boundaries of both).
if not all(longer % shorter == 0 for shorter, longer in itertools.pairwise(LEVELS)):
    raise RuntimeError(f"each span must be a multiple of the one before: {LEVELS}")


@dataclass(frozen=True, order=True)
class Block:
    """One rollup bucket in a sum: ``hours`` long from ``start``, added (sign 1) or taken off
    (sign -1)."""

    hours: int
    start: datetime
    sign: int


# A walk between two positions (hours since the origin) over buckets of one span.
_Step = tuple[int, int, int]  # (span hours, from, to)
_Path = tuple[int, int, tuple[_Step, ...]]  # (rows, buckets, steps)


def within(start: datetime, end: datetime) -> bool:
    """Whether every bucket a sum for the window may read is a date: it starts at least the
    longest span after the origin and ends that long before the year 10000."""
    longest = timedelta(hours=LEVELS[-1])
    return start - _ORIGIN >= longest and _LAST - end >= longest


def blocks(start: datetime, end: datetime) -> list[Block]:
    """Buckets whose signed sum is exactly the hours [start, end), reading the fewest rows."""
    low, high = _hours(start), _hours(end)
    if high <= low:
        raise ValueError("a window ends after it starts")
    # Each end's reachable positions at the current span, with the cheapest walk to each.
    starts: dict[int, _Path] = {low: (0, 0, ())}
    ends: dict[int, _Path] = {high: (0, 0, ())}
    best: _Path | None = None
    for index, hours in enumerate(LEVELS):
        if index:
            finer = LEVELS[index - 1]
            starts = _advance(starts, finer, hours, outward=False)
            ends = _advance(ends, finer, hours, outward=True)
        for first, (rows_a, count_a, steps_a) in starts.items():
            for last, (rows_b, count_b, steps_b) in ends.items():
                count = abs(last - first) // hours
                path = (
                    rows_a + rows_b + count * _ROWS[hours],
                    count_a + count_b + count,
                    (*steps_a, (hours, first, last), *steps_b),
                )
                if best is None or path[:2] < best[:2]:
                    best = path
    assert best is not None
    return _signed(best[2])


def _hours(moment: datetime) -> int:
    seconds = (moment - _ORIGIN) // timedelta(seconds=1)
    if seconds % 3600:
        raise ValueError(f"{moment.isoformat()} is not on a whole hour")
    return seconds // 3600


def _advance(
    positions: dict[int, _Path], finer: int, hours: int, *, outward: bool
) -> dict[int, _Path]:
    """From each position (on a boundary of ``finer``), to the nearest boundaries of ``hours``
    on either side, over buckets of ``finer``. A step is written as the window's sum sees it:
    from the start onwards, or from a boundary up to the end (``outward``)."""
    reached: dict[int, _Path] = {}
    for at, (rows, count, steps) in positions.items():
        below = at - at % hours
        for to in {below, below + hours if at % hours else below}:
            moved = abs(to - at) // finer
            step = (finer, to, at) if outward else (finer, at, to)
            path = (rows + moved * _ROWS[finer], count + moved, (*steps, step))
            if to not in reached or path[:2] < reached[to][:2]:
                reached[to] = path
    return reached


def _signed(steps: tuple[_Step, ...]) -> list[Block]:
    """The buckets of the steps, each with its net sign (a bucket added and taken off is not
    read at all), in order."""
    signs: dict[tuple[int, int], int] = {}
    for hours, first, last in steps:
        sign = 1 if first < last else -1
        for at in range(min(first, last), max(first, last), hours):
            signs[(hours, at)] = signs.get((hours, at), 0) + sign
    return sorted(
        Block(hours, _ORIGIN + timedelta(hours=at), sign)
        for (hours, at), sign in signs.items()
        if sign
    )
