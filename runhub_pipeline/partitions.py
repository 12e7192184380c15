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


def window_run_selection(first_key: str, last_key: str) -> tuple[str | None, dict[str, str]]:
    """How a run of the windows `first_key` .. `last_key` names them: (partition key, tags).

    One window is a single-partition run, more are a range run (the range tags). The difference
    matters to Dagster's cost, not to the assets, which read `partition_time_window` either way: in
    a range run, every check op looks up its targets' latest materialization through their data
    versions, and to do so lists every window from RUNHUB_PARTITIONS_START to now for each
    partitioned table it checks (about 0.3 s per table at 31,900 windows, 10 tables a run), a cost
    that grows with the deployment's age (README, Partitions). In a single-partition run it asks
    for the materialization of that window only.
    """
    if first_key == last_key:
        return first_key, {}
    return None, {RANGE_START_TAG: first_key, RANGE_END_TAG: last_key}
