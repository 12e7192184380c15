"""Times as integer microseconds since the epoch, and a project's time zone as arrays."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from runhub_pipeline.simulate.spec import Int64s

US = 1_000_000
MINUTE = 60 * US
HOUR = 60 * MINUTE
DAY = 24 * HOUR
QUARTER = 15 * MINUTE
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def iso(value: int | None) -> str | None:
    """Fixed-width UTC text, the form every time of the small tables is written in."""
    return None if value is None else from_us(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=64)
def _zone_offsets(zone: str, first_us: int, n_bins: int) -> Int64s:
    """UTC offset in seconds of `zone` for each 15-minute bin from `first_us`.

    Every real offset is a multiple of 15 minutes, so transitions fall on bin starts; the zone is
    asked once a day, and per bin only on the days whose offset changes.
    """
    tz = ZoneInfo(zone)

    def offset(us: int) -> int:
        delta = from_us(us).astimezone(tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    offsets = np.empty(n_bins, dtype=np.int64)
    for day_start in range(0, n_bins, 96):
        day_end = min(day_start + 96, n_bins)
        first, last = offset(first_us + day_start * QUARTER), offset(first_us + day_end * QUARTER)
        if first == last:
            offsets[day_start:day_end] = first
        else:
            offsets[day_start:day_end] = [
                offset(first_us + i * QUARTER) for i in range(day_start, day_end)
            ]
    offsets.flags.writeable = False
    return offsets


@dataclass(frozen=True)
class Clock:
    """A project's zone over the simulated range as arrays: bin starts and their offsets."""

    first_us: int
    offsets: Int64s

    @property
    def bins(self) -> Int64s:
        return self.first_us + np.arange(len(self.offsets), dtype=np.int64) * QUARTER

    def offset_of(self, times: Int64s) -> Int64s:
        index = np.clip((times - self.first_us) // QUARTER, 0, len(self.offsets) - 1)
        return self.offsets[index]


def project_clock(zone: str, start_us: int, end_us: int) -> Clock:
    # Two spare days after `end`: late payments and clock-skewed events may occur after it.
    n_bins = (end_us - start_us + 2 * DAY) // QUARTER
    return Clock(start_us, _zone_offsets(zone, start_us, n_bins))
