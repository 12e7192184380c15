"""Exactly-once ingestion (issue 2, item 6), through real Dagster runs on SQLite and PostgreSQL.

- re-materializing any window, or the whole range, in any order leaves every table identical to a
  from-scratch backfill (CONTRACT §2 invariant);
- a late commit into an ingested window is found by the per-window source counts and re-reading
  only that window picks it up;
- per window, source rows = staged + duplicates + quarantined.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from runhub_pipeline.ingest_sensor import plan_ingest
from runhub_pipeline.orchestration import execute_window_range
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.settings import WINDOW, Settings
from tests.factories import analytics_event, business_event, insert_rows, project, utc

START = utc("2026-03-07 22:00")
WINDOWS = 8
END = START + WINDOWS * WINDOW

# Bookkeeping that records history by design, or how far a reader got, not state (see README,
# "Exactly once").
HISTORY_TABLES = {
    "stg_changes",
    "mart_progress",
    "platform_success_metrics",
    "source_read_horizons",
}
# last_rollup_at is MAX(updated_at) of the served rows (CONTRACT §5): a time of write too.
TIME_OF_WRITE_COLUMNS = {"updated_at", "ingested_at", "staged_at", "last_rollup_at"}


def settings_for(app_db: AppDatabase, home: Path) -> Settings:
    return Settings.from_env(
        {
            "RUNHUB_HOME": str(home),
            "RUNHUB_APP_DB_URL": app_db.url,
            "RUNHUB_PARTITIONS_START": "2026-03-01T00:00Z",
        }
    )


def seed(app_db: AppDatabase) -> None:
    """Two projects, events spread over the windows with cross-window duplicates, quarantined
    rows, a late arrival two windows after it happened, and a session over local midnight."""
    insert_rows(
        app_db,
        "projects",
        [project("p1", timezone="Europe/Berlin"), project("p2", timezone="Asia/Kathmandu")],
    )
    business, analytics = [], []
    for i in range(WINDOWS * 3):
        received = START + timedelta(minutes=5 * i + 1)
        occurred = received - timedelta(minutes=3)
        pid = "p1" if i % 3 else "p2"
        business.append(
            business_event(
                1000 + i,
                pid,
                ["checkout_started", "payment_succeeded", "lead_created"][i % 3],
                occurred,
                received,
                idempotency_key=f"k{i // 2}",  # pairs of rows share a key: duplicates
                session_id=f"s{i % 4}",
                actor_email=f"Buyer{i % 5}@Example.com",
                amount_cents=1000 + i if i % 3 == 1 else None,
                currency="usd" if i % 3 == 1 else None,
            )
        )
        analytics.append(
            analytics_event(5000 + i, pid, "page_view", f"s{i % 4}", occurred, received)
        )
    business.append(business_event(1999, "ghost", "lead_created", START, START))
    business.append(
        business_event(1998, "p1", "lead_created", START, START + 3 * WINDOW + timedelta(minutes=1))
    )
    insert_rows(app_db, "business_events", business)
    insert_rows(app_db, "inhouse_analytics_events", analytics)


def snapshot(warehouse: Warehouse) -> dict[str, list[tuple[object, ...]]]:
    """Every state table of the warehouse as sorted rows, without time-of-write columns."""
    tables: dict[str, list[tuple[object, ...]]] = {}
    with warehouse.reader() as con:
        names = [
            row[0]
            for row in con.execute(
                "select table_name from information_schema.tables order by table_name"
            ).fetchall()
        ]
        for name in names:
            if name in HISTORY_TABLES:
                continue
            columns = [
                row[0]
                for row in con.execute(
                    "select column_name from information_schema.columns"
                    " where table_name = $t order by ordinal_position",
                    {"t": name},
                ).fetchall()
                if row[0] not in TIME_OF_WRITE_COLUMNS
            ]
            query = "select " + ", ".join(f'"{c}"' for c in columns) + f' from "{name}"'
            tables[name] = sorted(con.execute(query).fetchall(), key=repr)
    return tables


def run(settings: Settings, first: datetime, last: datetime) -> None:
    outcome = execute_window_range(settings, first, last)
    assert outcome.success, outcome.failure


@pytest.mark.slow
def test_any_order_of_rematerializations_equals_a_backfill(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    seed(app_db)
    scratch = settings_for(app_db, tmp_path / "scratch")
    run(scratch, START, END - WINDOW)
    expected = snapshot(Warehouse(path=str(scratch.warehouse_path)))
    assert expected["stg_business_events"], "the scenario must stage something"

    shuffled = settings_for(app_db, tmp_path / "shuffled")
    for offset in (7, 2, 5, 0, 1, 6, 3, 4, 2):
        window = START + offset * WINDOW
        run(shuffled, window, window)
    assert snapshot(Warehouse(path=str(shuffled.warehouse_path))) == expected

    run(shuffled, START, END - WINDOW)  # the whole range again
    run(shuffled, START + WINDOW, START + WINDOW)  # an old window after later ones
    assert snapshot(Warehouse(path=str(shuffled.warehouse_path))) == expected


@pytest.mark.slow
def test_late_commit_is_found_and_only_its_window_is_reread(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    seed(app_db)
    settings = settings_for(app_db, tmp_path / "home")
    warehouse = Warehouse(path=str(settings.warehouse_path))
    run(settings, START, END - WINDOW)
    now = END + timedelta(minutes=5)
    assert plan_ingest(app_db, warehouse, settings, now).late == []

    late_window = START + 2 * WINDOW
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(
                3000, "p1", "lead_created", late_window, late_window + timedelta(minutes=14)
            )
        ],
    )
    plan = plan_ingest(app_db, warehouse, settings, now)
    assert plan.late == [late_window]
    assert plan.due_first is None  # nothing new closed: only the late window is planned

    run(settings, late_window, late_window)
    with warehouse.reader() as con:
        assert con.execute(
            "select count(*) from stg_business_events where event_id = 3000"
        ).fetchone() == (1,)
    assert plan_ingest(app_db, warehouse, settings, now).late == []


@pytest.mark.slow
def test_every_window_reconciles(app_db: AppDatabase, tmp_path: Path) -> None:
    seed(app_db)
    settings = settings_for(app_db, tmp_path / "home")
    run(settings, START, END - WINDOW)
    with Warehouse(path=str(settings.warehouse_path)).reader() as con:
        ledger = con.execute(
            "select source_table, window_start, source_rows, staged, duplicates, quarantined"
            " from ingest_ledger order by source_table, window_start"
        ).fetchall()
        duplicates = con.execute("select sum(duplicates) from ingest_ledger").fetchone()
    assert len(ledger) == 2 * WINDOWS
    assert all(
        source == staged + dup + quarantined for _, _, source, staged, dup, quarantined in ledger
    )
    assert sum(row[2] for row in ledger) == 2 * WINDOWS * 3 + 2
    assert duplicates is not None and duplicates[0] > 0


def test_due_windows_wait_for_the_ingest_lag(app_db: AppDatabase, tmp_path: Path) -> None:
    settings = settings_for(app_db, tmp_path / "home")
    warehouse = Warehouse(path=str(settings.warehouse_path))
    first = settings.partitions_start
    # The first window ends at +15 min; with a 2-minute lag it is due from +17 min on.
    assert plan_ingest(app_db, warehouse, settings, first + timedelta(minutes=16)).due_last is None
    plan = plan_ingest(app_db, warehouse, settings, first + timedelta(minutes=17))
    assert (plan.due_first, plan.due_last) == (first, first)
