"""Source reconciliation recounts the app database (SQLite and PostgreSQL) against the ledger."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from runhub_pipeline.checks.core import CheckEnv, CheckOptions, CheckScope
from runhub_pipeline.checks.reconcile import count_source_rows, source_reconciliation, spans_of
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from tests.factories import (
    FIXED_NOW,
    analytics_event,
    business_event,
    ingest_and_stage,
    insert_rows,
    project,
    utc,
    warehouse_at,
)

W0 = utc("2026-03-04 10:00")
W1 = utc("2026-03-04 10:15")
END = utc("2026-03-04 10:30")
SCOPE = CheckScope(W0, END, run_started_at=FIXED_NOW, now=END)


def _fill(app_db: AppDatabase) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    at = utc("2026-03-04 10:01")
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(1, "p1", "lead_created", at, at),
            business_event(2, "p1", "lead_created", at, at, idempotency_key="key-1"),
            business_event(3, "ghost", "lead_created", at, utc("2026-03-04 10:14:59.999999")),
            business_event(4, "p1", "lead_created", at, W1),
            # Outside the run's windows: neither counted nor compared.
            business_event(5, "p1", "lead_created", at, END),
        ],
    )
    insert_rows(
        app_db,
        "inhouse_analytics_events",
        [analytics_event(11, "p1", "page_view", "s1", at, at)],
    )


def _check(warehouse: Warehouse, app_db: AppDatabase, tmp_path: Path) -> tuple[bool, dict]:
    options = CheckOptions(tmp_path, timedelta(minutes=2), timedelta(hours=48))
    with warehouse.reader() as connection:
        outcome = source_reconciliation(CheckEnv(connection, SCOPE, options, app_db))
    return outcome.passed, dict(outcome.metadata)


def test_recount_by_window_on_both_dialects(app_db: AppDatabase) -> None:
    _fill(app_db)
    counts = count_source_rows(app_db, "business_events", [W0, W1])
    assert counts == {W0: 3, W1: 1}


def test_the_recount_reads_only_the_windows_asked_for(app_db: AppDatabase) -> None:
    """Windows apart are counted on their own: the rows between them are not read."""
    _fill(app_db)
    assert count_source_rows(app_db, "business_events", [W1, END]) == {W1: 1, END: 1}
    assert count_source_rows(app_db, "business_events", [W0, END]) == {W0: 3, END: 1}
    assert spans_of([END, W0, W1, W0]) == [(W0, END + timedelta(minutes=15))]
    assert spans_of([W0, END]) == [(W0, W1), (END, END + timedelta(minutes=15))]


def test_ledger_matches_the_app_database(app_db: AppDatabase, tmp_path: Path) -> None:
    _fill(app_db)
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(app_db, warehouse, W0, END)
    passed, metadata = _check(warehouse, app_db, tmp_path)
    assert passed, metadata
    assert metadata["ledger_rows_compared"] == 4
    assert metadata["source_rows_recounted"] == 5


def test_a_row_committed_after_its_window_was_read_fails(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    _fill(app_db)
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(app_db, warehouse, W0, END)
    late = utc("2026-03-04 10:05")
    insert_rows(app_db, "business_events", [business_event(6, "p1", "lead_created", late, late)])
    passed, metadata = _check(warehouse, app_db, tmp_path)
    assert not passed
    assert metadata["unexpected_rows"] == 1
    assert "| business_events | 2026-03-04T10:00:00+00:00 | 4 | 3 |" in metadata["sample"]


def test_a_ledger_that_lost_rows_fails(sqlite_app_db: AppDatabase, tmp_path: Path) -> None:
    _fill(sqlite_app_db)
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(sqlite_app_db, warehouse, W0, END)
    with warehouse.writer() as connection:
        connection.execute(
            "update ingest_ledger set source_rows = source_rows - 1, staged = staged - 1"
            " where source_table = 'inhouse_analytics_events' and window_start = $w",
            {"w": W0},
        )
    assert not _check(warehouse, sqlite_app_db, tmp_path)[0]


def test_source_rows_of_a_window_without_ledger_row_fail(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    _fill(sqlite_app_db)
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(sqlite_app_db, warehouse, W0, END)
    with warehouse.writer() as connection:
        connection.execute("delete from ingest_ledger where window_start = $w", {"w": W1})
    passed, metadata = _check(warehouse, sqlite_app_db, tmp_path)
    assert not passed
    assert "| business_events | 2026-03-04T10:15:00+00:00 | 1 | NULL |" in metadata["sample"]


@pytest.mark.parametrize("table", ["business_events", "inhouse_analytics_events"])
def test_recount_of_an_empty_range(sqlite_app_db: AppDatabase, table: str) -> None:
    assert count_source_rows(sqlite_app_db, table, [W0, W1]) == {}
    assert count_source_rows(sqlite_app_db, table, []) == {}
