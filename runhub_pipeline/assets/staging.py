"""Staging: normalization, quarantine with reasons and global dedupe (CONTRACT §4).

The rules live in `sql/stg_*.sql`; this module runs them for a range of windows in one
transaction and reports where every row went.
"""

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import duckdb

from runhub_pipeline.assets.ingest import (
    EVENT_SOURCES,
    RAW_ASSET_KEYS,
    RAW_DESCRIPTIONS,
    RAW_SOURCES,
    IngestResult,
    app_source_key,
    app_source_specs,
    ensure_warehouse_schema,
    ingest_windows,
)
from runhub_pipeline.models import run_model
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import (
    WAREHOUSE_POOL,
    WRITES_WAREHOUSE_TAG,
    Warehouse,
    transaction,
    utc_now,
)


def valid_timezones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


@dataclass(frozen=True)
class StagingResult:
    staged: dict[str, int]
    duplicates: int
    quarantined: dict[str, int]
    # Rows this run added to stg_changes: a (project, instant) per changed business event, a
    # (project, local day) per day with changed analytics events.
    changes: int


def stage_windows(
    connection: duckdb.DuckDBPyConnection,
    window_start: datetime,
    window_end: datetime,
    staged_at: datetime,
) -> StagingResult:
    """Normalize, quarantine and dedupe the raw rows of the windows into the staging tables.

    Runs inside the caller's transaction (see `ingest_and_stage`).
    """
    ensure_warehouse_schema(connection)
    change_seq = next_change_seq(connection)
    params = {
        "window_start": window_start,
        "window_end": window_end,
        "staged_at": staged_at,
        "change_seq": change_seq,
        "valid_timezones": valid_timezones(),
    }
    for table, source in EVENT_SOURCES.items():
        run_model(
            connection,
            "ingest_ledger",
            {**params, "source_table": table},
            raw_table=source.raw_table,
        )
    run_model(connection, "stg_projects", params)
    for table, source in EVENT_SOURCES.items():
        run_model(connection, source.staging_model, params)
        run_model(
            connection,
            "stg_event_changes",
            {**params, "source_table": table},
            per_local_day=source.changes_per_local_day,
        )
    return _staging_summary(connection, window_start, window_end, change_seq)


def next_change_seq(connection: duckdb.DuckDBPyConnection) -> int:
    """The number of this staging run's changes: past every change staged or consumed, because the
    marts prune what they consumed and a reused number would be skipped as already consumed."""
    row = connection.execute(
        "select greatest("
        " (select coalesce(max(change_seq), 0) from stg_changes),"
        " (select coalesce(max(change_seq), 0) from mart_progress)) + 1"
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def ingest_and_stage(
    app_db: AppDatabase,
    connection: duckdb.DuckDBPyConnection,
    window_start: datetime,
    window_end: datetime,
    staged_at: datetime,
) -> tuple[IngestResult, StagingResult]:
    """Read the windows from the app database and stage them, in one transaction: a crash at
    any point leaves every window as it was, never read-but-not-staged."""
    with transaction(connection):
        ingested = ingest_windows(app_db, connection, window_start, window_end)
        staged = stage_windows(connection, window_start, window_end, staged_at)
    return ingested, staged


def _staging_summary(
    connection: duckdb.DuckDBPyConnection, window_start: datetime, window_end: datetime, seq: int
) -> StagingResult:
    rows = connection.execute(
        "select source_table, sum(staged), sum(duplicates), sum(quarantined) from ingest_ledger"
        " where window_start >= $s and window_start < $e group by source_table",
        {"s": window_start, "e": window_end},
    ).fetchall()
    changed = connection.execute(
        "select count(*) from stg_changes where change_seq = $seq", {"seq": seq}
    ).fetchone()
    return StagingResult(
        staged={r[0]: int(r[1]) for r in rows},
        duplicates=sum(int(r[2]) for r in rows),
        quarantined={r[0]: int(r[3]) for r in rows},
        changes=int(changed[0]) if changed else 0,
    )


# Of this step's tables only the staged event tables are partitioned by window; the raw copies,
# quarantine, ledger and projects are state tables. Dagster records one materialization per window
# and partitioned key, ~11 ms each on the embedded SQLite instance (README, "Partitions").
PARTITIONED_KEYS = ("stg_business_events", "stg_analytics_events")
STAGING_ASSET_KEYS = (
    *RAW_ASSET_KEYS,
    "stg_projects",
    "stg_business_events",
    "stg_analytics_events",
    "quarantined_events",
    "ingest_ledger",
)

_STAGING_DESCRIPTIONS = {
    **RAW_DESCRIPTIONS,
    "stg_projects": "Projects with validated time zone (invalid → UTC, flagged), normalized locale"
    " and owner e-mail; grain project_id.",
    "stg_business_events": "Normalized business events that passed quarantine, the earliest"
    " (received_at, id) copy of each (project_id, idempotency_key); grain event_id, time column"
    " occurred_at.",
    "stg_analytics_events": "Normalized in-house analytics events that passed quarantine; grain"
    " event_id, time column occurred_at.",
    "quarantined_events": "Source rows that failed a staging rule, with the first failing rule as"
    " reason and the raw values as JSON; grain (source_table, source_id).",
    "ingest_ledger": "Per source table and 15-minute window: source rows read, staged, duplicates"
    " and quarantined; source_rows = staged + duplicates + quarantined.",
}

_UPSTREAM = {
    **{raw: [app_source_key(table)] for raw, table in RAW_SOURCES.items()},
    "stg_projects": [dg.AssetKey("raw_projects")],
    "stg_business_events": [dg.AssetKey("raw_business_events"), dg.AssetKey("stg_projects")],
    "stg_analytics_events": [dg.AssetKey("raw_analytics_events"), dg.AssetKey("stg_projects")],
    "quarantined_events": [dg.AssetKey("raw_business_events"), dg.AssetKey("raw_analytics_events")],
    "ingest_ledger": [dg.AssetKey("raw_business_events"), dg.AssetKey("raw_analytics_events")],
}


def build_staging_assets(
    partitions: dg.PartitionsDefinition,
) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """Ingest and staging: one step that reads a window range and stages it atomically."""

    @dg.multi_asset(
        name="ingest_and_stage",
        specs=[
            dg.AssetSpec(
                key,
                description=_STAGING_DESCRIPTIONS[key],
                group_name="ingest" if key in RAW_ASSET_KEYS else "staging",
                deps=_UPSTREAM[key],
                partitions_def=partitions if key in PARTITIONED_KEYS else None,
            )
            for key in STAGING_ASSET_KEYS
        ],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        op_tags={WRITES_WAREHOUSE_TAG: "true"},
    )
    def ingest_and_stage_asset(
        context: dg.AssetExecutionContext, app_db: AppDatabase, warehouse: Warehouse
    ) -> Iterator[dg.MaterializeResult]:
        window = context.partition_time_window
        with warehouse.step_writer(context) as connection:
            ingested, staged = ingest_and_stage(
                app_db, connection, window.start, window.end, utc_now()
            )
        summary: dict[str, Any] = {
            "windows": ingested.windows,
            "source_business_events": ingested.source_rows["business_events"],
            "source_analytics_events": ingested.source_rows["inhouse_analytics_events"],
            "staged_business_events": staged.staged.get("business_events", 0),
            "staged_analytics_events": staged.staged.get("inhouse_analytics_events", 0),
            "duplicates": staged.duplicates,
            "quarantined": sum(staged.quarantined.values()),
            "changes_for_marts": staged.changes,
            **{f"app_{table}_rows_read": rows for table, rows in ingested.app_table_rows.items()},
        }
        for key in STAGING_ASSET_KEYS:
            yield dg.MaterializeResult(asset_key=key, metadata=summary)

    return [*app_source_specs(), ingest_and_stage_asset]
