"""The small app tables (projects, workflow runs, e-mails): the warehouse copy always equals the
source, and on PostgreSQL a tick reads only the rows written since the previous ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from tests.factories import ingest_and_stage, insert_rows, project, utc, warehouse_at

W0 = utc("2026-03-01 10:00")
W1 = utc("2026-03-01 10:15")


def workflow_run(run_id: str, status: str = "succeeded") -> dict[str, Any]:
    return {
        "id": run_id,
        "project_id": "p1",
        "action_id": "send_promo",
        "status": status,
        "idempotency_key": f"key-{run_id}",
        "attempts": 1,
        "created_at": utc("2026-03-01 09:00"),
    }


def copied_runs(warehouse: Warehouse) -> dict[str, str]:
    with warehouse.reader() as connection:
        return dict(connection.execute("select id, status from raw_workflow_runs").fetchall())


def source_runs(app_db: AppDatabase) -> dict[str, str]:
    return {row[0]: row[1] for row in app_db.fetch_all("select id, status from workflow_runs")}


def ingested_copy(app_db: AppDatabase, tmp_path: Path, runs: list[dict[str, Any]]) -> Warehouse:
    """A warehouse that has ingested project p1 and `runs` once."""
    warehouse = warehouse_at(tmp_path)
    insert_rows(app_db, "projects", [project("p1")])
    insert_rows(app_db, "workflow_runs", runs)
    ingest_and_stage(app_db, warehouse, W0, W1)
    return warehouse


def test_the_copy_follows_inserts_updates_and_deletes(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = warehouse_at(tmp_path)
    insert_rows(app_db, "projects", [project("p1")])
    insert_rows(app_db, "workflow_runs", [workflow_run(f"r{i}") for i in range(20)])
    ingest_and_stage(app_db, warehouse, W0, W1)
    assert copied_runs(warehouse) == source_runs(app_db)

    app_db.execute("update workflow_runs set status = 'failed' where id = 'r3'")
    insert_rows(app_db, "workflow_runs", [workflow_run("r20", status="queued")])
    app_db.execute("delete from workflow_runs where id = 'r7'")
    ingest_and_stage(app_db, warehouse, W0, W1)

    copy = copied_runs(warehouse)
    assert copy == source_runs(app_db)
    assert (copy["r3"], copy["r20"], "r7" in copy) == ("failed", "queued", False)


@pytest.mark.postgres
def test_a_tick_reads_only_the_rows_changed_since_the_last_ingest(
    postgres_app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = warehouse_at(tmp_path)
    insert_rows(postgres_app_db, "projects", [project("p1"), project("p2")])
    insert_rows(postgres_app_db, "workflow_runs", [workflow_run(f"r{i}") for i in range(50)])
    first = ingest_and_stage(postgres_app_db, warehouse, W0, W1)
    assert first.app_table_rows == {"projects": 2, "workflow_runs": 50, "inhouse_emails": 0}

    unchanged = ingest_and_stage(postgres_app_db, warehouse, W0, W1)
    assert unchanged.app_table_rows == {"projects": 0, "workflow_runs": 0, "inhouse_emails": 0}

    postgres_app_db.execute("update workflow_runs set status = 'failed' where id = 'r3'")
    insert_rows(postgres_app_db, "workflow_runs", [workflow_run("r50", status="queued")])
    changed = ingest_and_stage(postgres_app_db, warehouse, W0, W1)
    assert changed.app_table_rows == {"projects": 0, "workflow_runs": 2, "inhouse_emails": 0}
    assert copied_runs(warehouse) == source_runs(postgres_app_db)


@pytest.mark.postgres
def test_a_delete_is_noticed_by_the_row_count_and_the_table_is_read_whole(
    postgres_app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = ingested_copy(postgres_app_db, tmp_path, [workflow_run(f"r{i}") for i in range(10)])

    postgres_app_db.execute("delete from workflow_runs where id in ('r1', 'r2')")
    after_delete = ingest_and_stage(postgres_app_db, warehouse, W0, W1)

    assert after_delete.app_table_rows["workflow_runs"] == 8
    assert copied_runs(warehouse) == source_runs(postgres_app_db)


@pytest.mark.postgres
def test_a_transaction_older_than_a_read_that_commits_after_it_is_not_missed(
    postgres_app_db: AppDatabase, tmp_path: Path
) -> None:
    """The case a "highest xmin seen" cursor loses: an older transaction commits an update late
    (a missed update, unlike a missed insert, leaves the row count unchanged)."""
    warehouse = ingested_copy(postgres_app_db, tmp_path, [workflow_run("r0", status="running")])

    with psycopg.connect(postgres_app_db.url) as older:
        older.execute("select pg_current_xact_id()")  # takes its transaction id now
        insert_rows(postgres_app_db, "workflow_runs", [workflow_run("r1")])
        during = ingest_and_stage(postgres_app_db, warehouse, W0, W1)
        older.execute("update workflow_runs set status = 'failed' where id = 'r0'")
    ingest_and_stage(postgres_app_db, warehouse, W0, W1)

    assert during.app_table_rows["workflow_runs"] == 1
    assert copied_runs(warehouse) == {"r0": "failed", "r1": "succeeded"}


@pytest.mark.postgres
def test_a_horizon_the_server_has_not_reached_means_a_whole_read(
    postgres_app_db: AppDatabase, tmp_path: Path
) -> None:
    """A warehouse carried to another (restored) server must not trust its old horizon."""
    warehouse = ingested_copy(postgres_app_db, tmp_path, [workflow_run(f"r{i}") for i in range(5)])
    with warehouse.writer() as connection:
        connection.execute(
            "update source_read_horizons set xmin_horizon = $ahead", {"ahead": 10**10}
        )

    reread = ingest_and_stage(postgres_app_db, warehouse, W0, W1)

    assert reread.app_table_rows == {"projects": 1, "workflow_runs": 5, "inhouse_emails": 0}
