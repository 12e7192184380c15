"""Incremental marts: any sequence of window runs equals a from-scratch backfill (CONTRACT §2).

Each change recomputes only the (project, day) pairs it touches: late events, payments that change
an earlier checkout, the 30-minute mark passing, rows that stop qualifying, a time zone change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from runhub_pipeline.assets.marts import DuckDBEngine, MartsRefresh, refresh_marts
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.simulate import SimulationSpec, simulate
from tests.factories import analytics_event, business_event, ingest_and_stage, insert_rows, utc
from tests.test_marts_golden import (
    START,
    WRITE_TIME,
    T,
    all_mart_contents,
    load_golden_scenario,
    run_windows,
)

QUARTER = timedelta(minutes=15)
LATER_WRITE = WRITE_TIME + timedelta(hours=1)


def _refresh(warehouse: Warehouse, write_time: datetime = LATER_WRITE) -> MartsRefresh:
    with warehouse.writer() as connection:
        return refresh_marts(DuckDBEngine(connection), write_time)


def _from_scratch(app_db: AppDatabase, path: Path, end: datetime) -> Warehouse:
    warehouse = Warehouse(path=str(path))
    ingest_and_stage(app_db, warehouse, START, end)
    _refresh(warehouse)
    return warehouse


def _golden_incremental(app_db: AppDatabase, tmp_path: Path) -> Warehouse:
    load_golden_scenario(app_db)
    warehouse = Warehouse(path=str(tmp_path / "incremental.duckdb"))
    run_windows(app_db, warehouse, START, T, timedelta(days=1))
    return warehouse


def _kpi_updated_at(warehouse: Warehouse) -> dict[tuple[str, str], datetime]:
    with warehouse.reader() as connection:
        rows = connection.execute(
            "select project_id, day, updated_at from business_kpi_daily"
        ).fetchall()
    return {(p, d.isoformat()): u for p, d, u in rows}


def test_any_window_sequence_equals_from_scratch(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    end = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
    spec = SimulationSpec(projects=3, days=2, seed=11, end=end, events_per_day=1500)
    simulate(sqlite_app_db, spec)
    start = end - timedelta(days=2)

    scratch = Warehouse(path=str(tmp_path / "scratch.duckdb"))
    ingest_and_stage(sqlite_app_db, scratch, start, end)
    _refresh(scratch)

    windows = Warehouse(path=str(tmp_path / "windows.duckdb"))
    middle = start + timedelta(hours=30)
    run_windows(sqlite_app_db, windows, start, middle, timedelta(hours=10))
    run_windows(sqlite_app_db, windows, middle, middle + timedelta(hours=4), QUARTER)
    run_windows(sqlite_app_db, windows, middle + timedelta(hours=4), end, timedelta(hours=7))
    # Old windows re-run after later ones, one of them twice.
    for old in (start + timedelta(hours=3), middle + QUARTER, start + timedelta(hours=3)):
        ingest_and_stage(sqlite_app_db, windows, old, old + QUARTER)
        refresh = _refresh(windows)
        assert refresh.watermark == end

    expected = all_mart_contents(scratch)
    assert sum(len(rows) for rows in expected.values()) > 100
    assert all_mart_contents(windows) == expected
    # Consumed changes are pruned, all of them: staging numbers on from mart_progress.
    with windows.reader() as connection:
        assert connection.execute("select count(*) from stg_changes").fetchall() == [(0,)]


def test_rerun_changes_nothing(sqlite_app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    before = _kpi_updated_at(warehouse)
    contents = all_mart_contents(warehouse)
    refresh = _refresh(warehouse)
    assert refresh.recomputed == {
        "fct_checkouts": 0,
        "business_kpi_daily": 0,
        "revenue_by_currency_daily": 0,
        "alert_counts_15min": 0,
    }
    assert all_mart_contents(warehouse) == contents
    assert _kpi_updated_at(warehouse) == before


def test_thirty_minute_mark_passing_abandons_a_pending_checkout(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    before = _kpi_updated_at(warehouse)
    # Two empty windows: T moves to 00:30, past checkout 114's 30-minute mark (00:20).
    ingest_and_stage(sqlite_app_db, warehouse, T, T + 2 * QUARTER)
    refresh = _refresh(warehouse)
    assert refresh.recomputed["fct_checkouts"] == 1
    assert refresh.recomputed["business_kpi_daily"] == 1
    with warehouse.reader() as connection:
        status = connection.execute(
            "select status from fct_checkouts where checkout_event_id = 114"
        ).fetchone()
    assert status == ("abandoned",)
    after = _kpi_updated_at(warehouse)
    assert {key for key in after if after[key] != before.get(key)} == {("berlin", "2026-04-01")}
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T + 2 * QUARTER)
    assert all_mart_contents(warehouse) == all_mart_contents(scratch)


def test_late_event_recomputes_only_its_day(sqlite_app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    before = _kpi_updated_at(warehouse)
    # A lead of berlin's 2026-03-28 (local) arrives four days late, in the window after T.
    late = business_event(
        120, "berlin", "lead_created", utc("2026-03-28 12:00"), T + timedelta(minutes=5)
    )
    insert_rows(sqlite_app_db, "business_events", [late])
    ingest_and_stage(sqlite_app_db, warehouse, T, T + QUARTER)
    refresh = _refresh(warehouse)
    assert refresh.recomputed["business_kpi_daily"] == 1
    after = _kpi_updated_at(warehouse)
    assert {key for key in after if after[key] != before.get(key)} == {("berlin", "2026-03-28")}
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T + QUARTER)
    assert all_mart_contents(warehouse) == all_mart_contents(scratch)


def test_late_page_views_recompute_each_local_day_they_fall_on(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    """Analytics changes are kept per (project, local day): two page views of one UTC day fall on
    two of ktm's local days (+05:45), and both days are recomputed."""
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    before = _kpi_updated_at(warehouse)
    views = [
        analytics_event(
            event_id, "ktm", "page_view", f"late{event_id}", utc(occurred_at), T + QUARTER / 3
        )
        for event_id, occurred_at in ((9001, "2026-03-30 10:00"), (9002, "2026-03-30 20:00"))
    ]
    insert_rows(sqlite_app_db, "inhouse_analytics_events", views)
    ingest_and_stage(sqlite_app_db, warehouse, T, T + QUARTER)
    _refresh(warehouse)
    after = _kpi_updated_at(warehouse)
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {("ktm", "2026-03-30"), ("ktm", "2026-03-31")}
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T + QUARTER)
    assert all_mart_contents(warehouse) == all_mart_contents(scratch)


def _ktm_revenue_on_march_30(warehouse: Warehouse) -> int:
    with warehouse.reader() as connection:
        row = connection.execute(
            "select revenue_cents from business_kpi_daily"
            " where project_id = 'ktm' and day = '2026-03-30'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_source_row_corrected_in_place_is_a_change_when_its_window_is_staged_again(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    """Same event_id, other values: staging compares whole rows, not only which ids are there."""
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    before = _kpi_updated_at(warehouse)
    revenue_before = _ktm_revenue_on_march_30(warehouse)
    # ktm's payment 203 (2026-03-29 18:20Z, local 2026-03-30 00:05) corrected from 3000 to 3500.
    with sqlite_app_db.begin() as connection:
        connection.execute(sa.text("update business_events set amount_cents = 3500 where id = 203"))
    ingest_and_stage(sqlite_app_db, warehouse, START, T)
    _refresh(warehouse)
    after = _kpi_updated_at(warehouse)
    assert {key for key in after if after[key] != before.get(key)} == {("ktm", "2026-03-30")}
    assert _ktm_revenue_on_march_30(warehouse) == revenue_before + 500
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T)
    assert all_mart_contents(warehouse) == all_mart_contents(scratch)


def test_late_payment_recovers_an_earlier_checkout(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    # ktm's abandoned checkout 207 (05:00) paid at 05:40, reported after T: now recovered.
    payment = business_event(
        220,
        "ktm",
        "payment_succeeded",
        utc("2026-03-31 05:40"),
        T + timedelta(minutes=2),
        session_id="k5",
        amount_cents=900,
        currency="USD",
    )
    insert_rows(sqlite_app_db, "business_events", [payment])
    ingest_and_stage(sqlite_app_db, warehouse, T, T + QUARTER)
    _refresh(warehouse)
    with warehouse.reader() as connection:
        row = connection.execute(
            "select status, credited_revenue_cents from fct_checkouts where checkout_event_id = 207"
        ).fetchone()
        kpis = connection.execute(
            "select recovered_checkouts, recovered_revenue_cents, revenue_cents"
            " from business_kpi_daily where project_id = 'ktm' and day = '2026-03-31'"
        ).fetchone()
    assert row == ("recovered", 900)
    assert kpis == (1, 900, 900)
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T + QUARTER)
    assert all_mart_contents(warehouse) == all_mart_contents(scratch)


def test_row_that_stops_qualifying_is_deleted_and_logged(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    # badtz's only event of 2026-03-31 loses its project (quarantined); its window is re-read.
    with sqlite_app_db.begin() as connection:
        connection.execute(sa.text("update business_events set project_id = null where id = 303"))
    window = utc("2026-03-31 12:00")
    ingest_and_stage(sqlite_app_db, warehouse, window, window + QUARTER)
    _refresh(warehouse)
    with warehouse.reader() as connection:
        remaining = connection.execute(
            "select count(*) from business_kpi_daily where project_id = 'badtz'"
            " and day = '2026-03-31'"
        ).fetchone()
        logged = connection.execute(
            "select project_id, day::varchar, deleted_at from business_kpi_daily_deletions"
        ).fetchall()
    assert remaining == (0,)
    assert logged == [("badtz", "2026-03-31", LATER_WRITE)]
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T)
    assert all_mart_contents(warehouse) == all_mart_contents(scratch)


def test_time_zone_change_recomputes_the_project(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = _golden_incremental(sqlite_app_db, tmp_path)
    with sqlite_app_db.begin() as connection:
        connection.execute(
            sa.text(
                "update projects set timezone = 'America/New_York', currency = 'USD'"
                " where project_id = 'berlin'"
            )
        )
    ingest_and_stage(sqlite_app_db, warehouse, T, T + QUARTER)
    _refresh(warehouse)
    scratch = _from_scratch(sqlite_app_db, tmp_path / "scratch.duckdb", T + QUARTER)
    contents = all_mart_contents(warehouse)
    assert contents == all_mart_contents(scratch)
    berlin_days = [
        row["day"].isoformat()
        for row in contents["business_kpi_daily"]
        if row["project_id"] == "berlin"
    ]
    # 2026-03-29 22:10 UTC is still 2026-03-29 in New York; 23:50 on 03-31 still 03-31.
    assert berlin_days == ["2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31"]
