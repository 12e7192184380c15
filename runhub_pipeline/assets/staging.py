"""Staging: normalization, quarantine with reasons and global dedupe (CONTRACT §4).

The rules live in `sql/stg_*.sql`; this module runs them for a range of windows in one
transaction and reports where every row went.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime

import duckdb

from runhub_pipeline.assets.ingest import ensure_warehouse_schema
from runhub_pipeline.models import run_model


def valid_timezones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


@dataclass(frozen=True)
class StagingResult:
    staged: dict[str, int]
    duplicates: int
    quarantined: dict[str, int]
    changed_events: int


def stage_windows(
    connection: duckdb.DuckDBPyConnection,
    window_start: datetime,
    window_end: datetime,
    staged_at: datetime,
) -> StagingResult:
    """Normalize, quarantine and dedupe the raw rows of the windows into the staging tables."""
    ensure_warehouse_schema(connection)
    connection.execute("begin")
    try:
        row = connection.execute("select coalesce(max(change_seq), 0) + 1 from stg_changes")
        change_seq = int(row.fetchone()[0])  # type: ignore[index]
        params = {
            "window_start": window_start,
            "window_end": window_end,
            "staged_at": staged_at,
            "change_seq": change_seq,
            "valid_timezones": valid_timezones(),
        }
        run_model(connection, "stg_projects", params)
        run_model(connection, "stg_business_events", params)
        run_model(connection, "stg_analytics_events", params)
        result = _staging_summary(connection, window_start, window_end, change_seq)
        connection.execute("commit")
    except BaseException:
        connection.execute("rollback")
        raise
    return result


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
        changed_events=int(changed[0]) if changed else 0,
    )
