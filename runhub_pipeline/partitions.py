"""The 15-minute ingest windows, declared once.

A window is `[start, start + 15 min)` in UTC, keyed `YYYY-MM-DD-HH:MM` (Dagster's minute format).
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

PARTITION_KEY_FORMAT = "%Y-%m-%d-%H:%M"
# Run tags that make one run cover a range of windows (single-run backfill policy).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def fifteen_minute_partitions(start: datetime) -> dg.TimeWindowPartitionsDefinition:
    return dg.TimeWindowPartitionsDefinition(
        start=start.astimezone(UTC),
        cron_schedule="*/15 * * * *",
        fmt=PARTITION_KEY_FORMAT,
        timezone="UTC",
    )


def partition_key(window_start: datetime) -> str:
    return window_start.astimezone(UTC).strftime(PARTITION_KEY_FORMAT)


def window_start_of(key: str) -> datetime:
    return datetime.strptime(key, PARTITION_KEY_FORMAT).replace(tzinfo=UTC)
