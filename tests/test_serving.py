"""Publishing business_kpi_daily to the app database (SQLite and PostgreSQL).

Every row changed since the last publish is upserted and every vanished row deleted, in one
transaction; a re-run gives the same app rows; a window whose blocking check fails publishes
nothing and the next successful one publishes the accumulated changes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from runhub_pipeline.assets.marts import build_mart_assets
from runhub_pipeline.assets.serving import (
    SERVED_KPI_ASSET,
    build_serving_assets,
    forget_published_deletions,
    kpi_columns,
    last_published_through,
    publish_business_kpi_daily,
)
from runhub_pipeline.assets.staging import build_staging_assets
from runhub_pipeline.partitions import fifteen_minute_partitions, partition_key
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from tests.factories import business_event, ingest_and_stage, insert_rows, utc
from tests.test_marts_golden import (
    EXPECTED_BUSINESS_KPI_DAILY,
    START,
    WRITE_TIME,
    T,
    build_marts,
    load_golden_scenario,
    rounded,
)

PUBLISHED_AT = datetime(2026, 4, 1, 0, 10, tzinfo=UTC)


def _as_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def app_rows(app_db: AppDatabase) -> list[dict[str, Any]]:
    """The served rows, typed like the warehouse's (SQLite stores days and times as text)."""
    columns = kpi_columns()
    query = sa.text(
        "select " + ", ".join(columns) + " from business_kpi_daily order by project_id, day"
    )
    rows = []
    for row in app_db.fetch_all(query.text):
        values = dict(zip(columns, row, strict=True))
        values["day"] = date.fromisoformat(str(values["day"]))
        values["updated_at"] = _as_time(values["updated_at"])
        rows.append(values)
    return rows


def warehouse_rows(warehouse: Warehouse) -> list[dict[str, Any]]:
    columns = kpi_columns()
    with warehouse.reader() as connection:
        cursor = connection.execute(
            "select " + ", ".join(columns) + " from business_kpi_daily order by project_id, day"
        )
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def publish(app_db: AppDatabase, warehouse: Warehouse, at: datetime = PUBLISHED_AT) -> Any:
    with warehouse.reader() as connection:
        return publish_business_kpi_daily(app_db, connection, at)


def _golden_warehouse(app_db: AppDatabase, tmp_path: Path) -> Warehouse:
    load_golden_scenario(app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    ingest_and_stage(app_db, warehouse, START, T)
    build_marts(warehouse)
    return warehouse


def test_publish_serves_the_warehouse_rows(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = _golden_warehouse(app_db, tmp_path)
    assert last_published_through(app_db) is None
    result = publish(app_db, warehouse)
    assert (result.rows_upserted, result.rows_deleted) == (len(EXPECTED_BUSINESS_KPI_DAILY), 0)
    assert result.published_through == WRITE_TIME
    served = app_rows(app_db)
    assert rounded(served) == rounded(warehouse_rows(warehouse))
    assert {row["updated_at"] for row in served} == {WRITE_TIME}
    assert last_published_through(app_db) == WRITE_TIME

    # A re-run publishes nothing new and leaves the same rows.
    again = publish(app_db, warehouse, PUBLISHED_AT + timedelta(minutes=15))
    assert (again.rows_upserted, again.rows_deleted) == (0, 0)
    assert app_rows(app_db) == served


def test_publish_carries_updates_and_deletions(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = _golden_warehouse(app_db, tmp_path)
    publish(app_db, warehouse)

    # Window 1, publish held back: badtz's only event of 03-31 loses its project (quarantined).
    with app_db.begin() as connection:
        connection.execute(sa.text("update business_events set project_id = null where id = 303"))
    window = utc("2026-03-31 12:00")
    ingest_and_stage(app_db, warehouse, window, window + timedelta(minutes=15))
    build_marts(warehouse, WRITE_TIME + timedelta(minutes=15))
    # Window 2: a late lead for berlin 03-28.
    late = business_event(120, "berlin", "lead_created", utc("2026-03-28 12:00"), T)
    insert_rows(app_db, "business_events", [late])
    ingest_and_stage(app_db, warehouse, T, T + timedelta(minutes=15))
    build_marts(warehouse, WRITE_TIME + timedelta(minutes=30))

    result = publish(app_db, warehouse)
    assert (result.rows_upserted, result.rows_deleted) == (1, 1)
    assert result.published_through == WRITE_TIME + timedelta(minutes=30)
    served = app_rows(app_db)
    assert rounded(served) == rounded(warehouse_rows(warehouse))
    keys = {(row["project_id"], row["day"].isoformat()) for row in served}
    assert ("badtz", "2026-03-31") not in keys
    berlin_28 = next(
        r for r in served if r["project_id"] == "berlin" and r["day"] == date(2026, 3, 28)
    )
    assert (berlin_28["leads"], berlin_28["updated_at"]) == (2, WRITE_TIME + timedelta(minutes=30))

    # The log holds one row per publish, each in its own transaction with its rows.
    log = app_db.fetch_all("select rows_upserted, rows_deleted from runhub_publish_log")
    assert sorted(tuple(r) for r in log) == [(1, 1), (10, 0)]

    # The deletions the app has received are forgotten, and only those; the platform step does it.
    def logged_deletions() -> list[tuple[Any, ...]]:
        with warehouse.reader() as connection:
            query = "select project_id, day from business_kpi_daily_deletions"
            return connection.execute(query).fetchall()

    with warehouse.writer() as connection:
        forget_published_deletions(connection, WRITE_TIME)
    assert logged_deletions() == [("badtz", date(2026, 3, 31))]
    platform = build_serving_assets(fifteen_minute_partitions(START))[1]
    materialized = dg.materialize(
        [platform],
        partition_key=partition_key(T),
        resources={"app_db": app_db, "warehouse": warehouse},
    )
    assert materialized.success
    assert logged_deletions() == []
    again = publish(app_db, warehouse, PUBLISHED_AT + timedelta(minutes=15))
    assert (again.rows_upserted, again.rows_deleted) == (0, 0)
    assert app_rows(app_db) == served


def _failing_check(blocking_failure: bool) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset="business_kpi_daily", blocking=True, name="test_gate")
    def test_gate() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=not blocking_failure)

    return test_gate


def _window_job(
    app_db: AppDatabase, warehouse: Warehouse, blocking_failure: bool
) -> dg.JobDefinition:
    partitions = fifteen_minute_partitions(START)
    defs = dg.Definitions(
        assets=[
            *build_staging_assets(partitions),
            *build_mart_assets(partitions),
            *build_serving_assets(partitions),
        ],
        asset_checks=[_failing_check(blocking_failure)],
        jobs=[
            dg.define_asset_job(
                "window_job", selection=dg.AssetSelection.all(), partitions_def=partitions
            )
        ],
        resources={"app_db": app_db, "warehouse": warehouse},
        executor=dg.in_process_executor,
    )
    return defs.resolve_job_def("window_job")


@pytest.mark.slow
def test_blocked_window_publishes_nothing_until_the_next_success(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    last = T - timedelta(minutes=15)
    ingest_and_stage(sqlite_app_db, warehouse, START, last)

    with dg.instance_for_test() as instance:
        blocked = _window_job(sqlite_app_db, warehouse, blocking_failure=True).execute_in_process(
            instance=instance, partition_key=partition_key(last), raise_on_error=False
        )
        materialized = {
            event.asset_key.to_user_string() for event in blocked.get_asset_materialization_events()
        }
        assert "business_kpi_daily" in materialized
        assert SERVED_KPI_ASSET not in materialized
        assert "platform_success_metrics" not in materialized
        assert app_rows(sqlite_app_db) == []

        passed = _window_job(sqlite_app_db, warehouse, blocking_failure=False).execute_in_process(
            instance=instance, partition_key=partition_key(last)
        )
        assert passed.success
        materialized = {
            event.asset_key.to_user_string() for event in passed.get_asset_materialization_events()
        }
        assert {SERVED_KPI_ASSET, "platform_success_metrics"} <= materialized
    served = app_rows(sqlite_app_db)
    assert rounded(served) == rounded(warehouse_rows(warehouse))
    assert len(served) == len(EXPECTED_BUSINESS_KPI_DAILY)
    with warehouse.reader() as connection:
        fresh = connection.execute(
            "select fresh_share from platform_success_metrics where as_of = $t", {"t": T}
        ).fetchone()
    assert fresh == (1.0,)
