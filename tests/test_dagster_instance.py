"""The Dagster instances: the embedded default (SQLite under DAGSTER_HOME) and the production
`dagster.yaml` (dagster-postgres), both driven through Dagster's own CLI and API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from runhub_pipeline.definitions import WINDOW_JOB, build_definitions
from runhub_pipeline.instance import RunhubDagsterInstance
from runhub_pipeline.orchestration import dagster_instance, execute_window_range
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG
from runhub_pipeline.settings import Settings
from tests.factories import business_event, insert_rows, project, utc

PARTITION_TAG = "dagster/partition"  # the run tag of a single-partition run

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def test_definitions_load_through_dagsters_own_loader(tmp_path: Path) -> None:
    """`dagster dev` loads `[tool.dagster]`'s module; the same loader must accept it."""
    result = subprocess.run(
        [DAGSTER, "definitions", "validate"],
        cwd=REPO,
        env={**os.environ, "RUNHUB_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_backfill_is_recorded_in_the_embedded_instance(
    sqlite_app_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows(sqlite_app_db, "projects", [project("p1")])
    at = utc("2026-03-01 10:01")
    insert_rows(sqlite_app_db, "business_events", [business_event(1, "p1", "lead_created", at, at)])
    settings = Settings.from_env(
        {"RUNHUB_HOME": str(tmp_path), "RUNHUB_APP_DB_URL": sqlite_app_db.url}
    )
    # How many windows each listing of the partitions definition held: listing every window since
    # RUNHUB_PARTITIONS_START is what made each run's cost grow with the deployment's age.
    listed: list[int] = []
    list_windows = dg.TimeWindowPartitionsDefinition.get_partition_keys

    def counted(self: dg.TimeWindowPartitionsDefinition, *args: Any, **kwargs: Any) -> Any:
        keys = list_windows(self, *args, **kwargs)
        listed.append(len(keys))
        return keys

    monkeypatch.setattr(dg.TimeWindowPartitionsDefinition, "get_partition_keys", counted)
    outcome = execute_window_range(settings, utc("2026-03-01 10:00"), utc("2026-03-01 10:00"))
    assert outcome.success, outcome.failure
    # One window is a single-partition run (README, Partitions): no listing of all windows.
    assert max(listed, default=0) <= 1, listed
    with dagster_instance(settings) as instance:
        assert isinstance(instance, RunhubDagsterInstance)
        run = instance.get_run_by_id(outcome.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags.get(PARTITION_TAG) == "2026-03-01-10:00"
        assert not {RANGE_START_TAG, RANGE_END_TAG} & set(run.tags)
        materialization = instance.get_latest_materialization_event(
            dg.AssetKey("stg_business_events")
        )
        assert materialization is not None
    assert (tmp_path / "dagster" / "dagster.yaml").exists()


@pytest.mark.slow
def test_processes_starting_on_a_fresh_home_at_once_all_get_the_instance(tmp_path: Path) -> None:
    """Two `runhub backfill`s started together on a new home raced to create the embedded storage:
    all but one failed on "UNIQUE constraint failed: alembic_version.version_num"."""
    opens_the_instance = (
        "import sys\n"
        "from runhub_pipeline.orchestration import dagster_instance\n"
        "from runhub_pipeline.settings import Settings\n"
        "with dagster_instance(Settings.from_env({'RUNHUB_HOME': sys.argv[1]})):\n"
        "    pass\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", opens_the_instance, str(tmp_path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, "\n".join(errors)


@pytest.fixture
def production_home(
    postgres_database_factory: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    """A DAGSTER_HOME holding `deploy/dagster.yaml`, its variables pointing at a fresh database."""
    url = postgres_database_factory()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": url.rsplit("/", 1)[1],
    }.items():
        monkeypatch.setenv(name, value)
    return home, url


@pytest.mark.postgres
def test_production_dagster_yaml_uses_postgres_storage(production_home: tuple[Path, str]) -> None:
    _, url = production_home
    result = subprocess.run(
        [DAGSTER, "instance", "concurrency", "set", "warehouse", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    info = subprocess.run(
        [DAGSTER, "instance", "info"], capture_output=True, text=True, timeout=300
    )
    assert info.returncode == 0, info.stderr
    assert "PostgresRunStorage" in info.stdout
    with psycopg.connect(url) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "select table_name from information_schema.tables where table_schema = 'public'"
            )
        }
        limit = connection.execute(
            'select "limit" from concurrency_limits where concurrency_key = %s', ("warehouse",)
        ).fetchone()
    assert {"runs", "event_logs"} <= tables
    assert limit == (1,)


def window_job_check_keys(settings: Settings) -> list[dg.AssetCheckKey]:
    """The window job's checks; none is partitioned, which `RunhubDagsterInstance` relies on."""
    graph = build_definitions(settings).resolve_job_def(WINDOW_JOB).asset_layer.asset_graph
    keys = sorted(graph.asset_check_keys)
    assert [key for key in keys if graph.get(key).partitions_def is not None] == []
    return keys


def sessions_established(url: str) -> int:
    """Connections ever made to the database at `url` (PostgreSQL counts them as they close)."""
    with psycopg.connect(url, autocommit=True) as connection:
        time.sleep(0.5)  # let closing backends report
        row = connection.execute(
            "select sessions from pg_stat_database where datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres
@pytest.mark.slow
def test_a_window_range_runs_on_the_production_instance(
    production_home: tuple[Path, str], sqlite_app_db, tmp_path: Path
) -> None:
    """Runs really write their events to dagster-postgres: one materialization per window."""
    home, url = production_home
    insert_rows(sqlite_app_db, "projects", [project("p1")])
    at = utc("2026-03-01 10:01")
    insert_rows(sqlite_app_db, "business_events", [business_event(1, "p1", "lead_created", at, at)])
    settings = Settings.from_env(
        {
            "RUNHUB_HOME": str(tmp_path / "runhub"),
            "RUNHUB_APP_DB_URL": sqlite_app_db.url,
            "DAGSTER_HOME": str(home),
        }
    )
    sessions_before = sessions_established(url)
    outcome = execute_window_range(settings, utc("2026-03-01 10:00"), utc("2026-03-01 10:45"))
    sessions_during = sessions_established(url) - sessions_before
    assert outcome.success, outcome.failure
    # Without the pool (plain DagsterInstance) this run made 853 connections, ~3 per event; with
    # it 72, most of them the storages' table checks while the instance is created.
    assert sessions_during < 150, sessions_during
    with dagster_instance(settings) as instance:
        assert isinstance(instance, RunhubDagsterInstance)
        # Each check is one execution of the run, not one per window (56 checks x 2,880 windows
        # of a 30-day backfill were 39 s of writes before its first step), evaluated (the
        # freshness check of these old windows fails; it is WARN only).
        check_keys = window_job_check_keys(settings)
        assert len(check_keys) > 10
        for check_key in check_keys:
            executions = [
                execution
                for execution in instance.event_log_storage.get_asset_check_execution_history(
                    check_key, limit=10
                )
                if execution.run_id == outcome.run_id
            ]
            (execution,) = executions
            assert execution.status.value in {"SUCCEEDED", "FAILED"}, check_key
            assert execution.partition is None
        run = instance.get_run_by_id(outcome.run_id)
        assert run is not None and PARTITION_TAG not in run.tags
        assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == (
            "2026-03-01-10:00",
            "2026-03-01-10:45",
        )
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        for table in ("stg_business_events", "business_kpi_daily", "app_business_kpi_daily"):
            assert instance.get_materialized_partitions(dg.AssetKey(table)) == {
                "2026-03-01-10:00",
                "2026-03-01-10:15",
                "2026-03-01-10:30",
                "2026-03-01-10:45",
            }, table
