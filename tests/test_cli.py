"""`runhub` as a user runs it: a real subprocess, real databases, one-line errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from runhub_pipeline.cli import ensure_home
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.app_schema import migrate, migration_files
from runhub_pipeline.settings import Settings

RUNHUB = str(Path(sys.executable).parent / "runhub")


def runhub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNHUB, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runhub: error: "), lines[0]
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_init_is_idempotent_and_versioned(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("postgres_database_factory")()
    env = {"RUNHUB_HOME": str(tmp_path / "home"), "RUNHUB_APP_DB_URL": url}
    first = runhub("init", env=env)
    assert first.returncode == 0, first.stderr
    second = runhub("init", env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout
    app_db = AppDatabase(url=url)
    versions = [row[0] for row in app_db.fetch_all("select version from runhub_schema_migrations")]
    assert sorted(versions) == [version for version, _, _ in migration_files()]
    tables = set(sa.inspect(app_db.engine).get_table_names())
    assert {
        "projects",
        "business_events",
        "inhouse_analytics_events",
        "workflow_runs",
        "workflow_sends",
        "inhouse_email_suppressions",
        "inhouse_emails",
        "business_kpi_daily",
    } <= tables


def test_init_never_alters_an_existing_app_table(sqlite_app_db: AppDatabase) -> None:
    """In production the app owns its tables: an extra column the app added survives init."""
    with sqlite_app_db.begin() as connection:
        connection.execute(sa.text("alter table projects add column plan text"))
        connection.execute(sa.text("delete from runhub_schema_migrations"))
    migrate(sqlite_app_db)
    columns = {c["name"] for c in sa.inspect(sqlite_app_db.engine).get_columns("projects")}
    assert "plan" in columns


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    result = runhub(
        "init",
        env={
            "RUNHUB_HOME": str(tmp_path),
            "RUNHUB_APP_DB_URL": "postgresql://postgres:secret@127.0.0.1:1/nowhere",
        },
    )
    assert_one_line_error(result, "127.0.0.1:1")
    assert "secret" not in result.stderr


def test_wrong_url_scheme_is_one_line(tmp_path: Path) -> None:
    result = runhub("init", env={"RUNHUB_HOME": str(tmp_path), "RUNHUB_APP_DB_URL": "mysql://x/y"})
    assert_one_line_error(result, "RUNHUB_APP_DB_URL")
    assert result.returncode == 2


def test_missing_sqlite_database_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runhub(
        "backfill",
        "--start",
        "2026-03-01T00:00Z",
        "--end",
        "2026-03-01T01:00Z",
        env={"RUNHUB_HOME": str(home)},
    )
    assert_one_line_error(result, "runhub init")
    assert not (home / "app.db").exists()
    assert not (home / "warehouse.duckdb").exists()


def test_unwritable_home_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = runhub("init", env={"RUNHUB_HOME": str(blocker / "home")})
    assert_one_line_error(result, "not writable")


def test_commands_starting_at_once_share_one_home(tmp_path: Path) -> None:
    """Regression: two commands probing RUNHUB_HOME at once must not delete each other's probe."""
    settings = Settings.from_env({"RUNHUB_HOME": str(tmp_path / "home")})

    def probe_repeatedly() -> None:
        for _ in range(300):
            ensure_home(settings)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for outcome in [pool.submit(probe_repeatedly) for _ in range(4)]:
            outcome.result()
    assert list(settings.home.iterdir()) == []


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    env = {"RUNHUB_HOME": str(tmp_path)}
    assert runhub("init", env=env).returncode == 0
    off_grid = runhub(
        "backfill", "--start", "2026-03-01T00:07Z", "--end", "2026-03-01T01:00Z", env=env
    )
    assert_one_line_error(off_grid, "15-minute boundary")
    backwards = runhub(
        "backfill", "--start", "2026-03-02T00:00Z", "--end", "2026-03-01T00:00Z", env=env
    )
    assert_one_line_error(backwards, "after --start")
    not_closed = runhub(
        "backfill", "--start", "2026-03-01T00:00Z", "--end", "2099-01-01T00:00Z", env=env
    )
    assert_one_line_error(not_closed, "after the end of the last closed window")
    bad_time = runhub("backfill", "--start", "yesterday", "--end", "2026-03-01T00:00Z", env=env)
    assert bad_time.returncode == 2 and "ISO-8601" in bad_time.stderr
    bad_setting = runhub("init", env={**env, "RUNHUB_INGEST_LAG": "soon"})
    assert_one_line_error(bad_setting, "RUNHUB_INGEST_LAG")
    # The boundary is a UTC one: 05:50+05:45 is 00:05Z, 06:00+05:45 is 00:15Z.
    off_grid_start = {**env, "RUNHUB_PARTITIONS_START": "2026-01-01T05:50+05:45"}
    assert_one_line_error(runhub("init", env=off_grid_start), "15-minute boundary")
    assert (
        runhub("init", env={**env, "RUNHUB_PARTITIONS_START": "2026-01-01T06:00+05:45"}).returncode
        == 0
    )


def test_backfill_reports_a_failed_run_in_one_line(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    """A run that fails (here: an app table vanished) ends non-zero with one line naming the
    failing step and the cause, not Dagster's wrapper error or its stack trace."""
    env = {"RUNHUB_HOME": str(tmp_path / "home"), "RUNHUB_APP_DB_URL": sqlite_app_db.url}
    with sqlite_app_db.begin() as connection:
        connection.execute(sa.text("drop table inhouse_analytics_events"))
    result = runhub(
        "backfill", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T00:15Z", env=env
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("runhub: backfill run ")
    assert line.endswith(
        "failed: step ingest_and_stage: cannot read the app database at"
        f" {sa.make_url(sqlite_app_db.url).database}: no such table: inhouse_analytics_events"
    )


def test_accepting_an_unknown_or_unfailed_check_is_one_line(tmp_path: Path) -> None:
    env = {"RUNHUB_HOME": str(tmp_path)}
    unknown = runhub("accept-check", "ingest_ledger:nope", "--reason", "x", env=env)
    assert_one_line_error(unknown, "no check named 'ingest_ledger:nope'")
    never_failed = runhub(
        "accept-check", "quarantined_events:quarantine_share", "--reason", "x", env=env
    )
    assert_one_line_error(never_failed, "has no failed evaluation to accept")


def test_accept_check_with_an_unwritable_home_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = runhub(
        "accept-check",
        "quarantined_events:quarantine_share",
        "--reason",
        "x",
        env={"RUNHUB_HOME": str(blocker)},
    )
    assert_one_line_error(result, "not writable: it is a file, not a directory")


def test_unwritable_dagster_home_is_one_line_and_creates_nothing(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    home = tmp_path / "home"
    env = {
        "RUNHUB_HOME": str(home),
        "RUNHUB_APP_DB_URL": sqlite_app_db.url,
        "DAGSTER_HOME": str(blocker / "dagster"),
    }
    result = runhub(
        "backfill", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T00:15Z", env=env
    )
    assert_one_line_error(result, "DAGSTER_HOME")
    assert list(home.iterdir()) == []


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("storage: [unclosed", "(line 1, column 19)"),
        ("no_such_setting: 1", 'unexpected config entry "no_such_setting"'),
        (
            "storage:\n  postgres:\n    postgres_db:\n      hostname: {env: RUNHUB_TEST_UNSET}\n"
            "      username: postgres\n      password: ''\n      db_name: x\n",
            'the environment variable "RUNHUB_TEST_UNSET" which is not set',
        ),
    ],
    ids=["yaml-syntax", "unknown-key", "unset-env"],
)
def test_a_broken_dagster_yaml_is_one_line(
    config: str, fragment: str, sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    """A DAGSTER_HOME whose dagster.yaml cannot be loaded is named in one line, not a traceback."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(config)
    env = {
        "RUNHUB_HOME": str(tmp_path / "home"),
        "RUNHUB_APP_DB_URL": sqlite_app_db.url,
        "DAGSTER_HOME": str(dagster_home),
    }
    result = runhub(
        "backfill", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T00:15Z", env=env
    )
    assert_one_line_error(result, fragment)
    assert str(dagster_home / "dagster.yaml") in result.stderr


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_uninitialised_app_database_is_one_line_and_creates_nothing(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An app database that exists but never saw `runhub init` fails before any run is created."""
    home = tmp_path / "home"
    home.mkdir()
    if dialect == "sqlite":
        (home / "app.db").touch()
        env = {"RUNHUB_HOME": str(home)}
    else:
        env = {
            "RUNHUB_HOME": str(home),
            "RUNHUB_APP_DB_URL": request.getfixturevalue("postgres_database_factory")(),
        }
    before = sorted(home.iterdir())
    backfill = runhub(
        "backfill", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T00:15Z", env=env
    )
    assert_one_line_error(backfill, "no Run Hub schema")
    assert "run `runhub init`" in backfill.stderr
    simulate = runhub("simulate", "--projects", "1", "--days", "1", "--seed", "1", env=env)
    assert_one_line_error(simulate, "no Run Hub schema")
    # No warehouse files, no Dagster instance (so no run), nothing else.
    assert sorted(home.iterdir()) == before


def test_app_database_behind_the_shipped_migrations_is_one_line(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    """After an upgrade, a run must not start on a schema that lacks the new migration."""
    _, latest, _ = migration_files()[-1]
    with sqlite_app_db.begin() as connection:
        connection.execute(
            sa.text("delete from runhub_schema_migrations where name = :name"), {"name": latest}
        )
    home = tmp_path / "home"
    env = {"RUNHUB_HOME": str(home), "RUNHUB_APP_DB_URL": sqlite_app_db.url}
    result = runhub(
        "backfill", "--start", "2026-03-01T00:00Z", "--end", "2026-03-01T00:15Z", env=env
    )
    assert_one_line_error(result, latest)
    assert "run `runhub init`" in result.stderr
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_url_is_rejected(url: str, tmp_path: Path) -> None:
    """An in-memory app database would vanish when `runhub init` exits."""
    result = runhub("init", env={"RUNHUB_HOME": str(tmp_path), "RUNHUB_APP_DB_URL": url})
    assert_one_line_error(result, "RUNHUB_APP_DB_URL")
    assert result.returncode == 2


@pytest.mark.parametrize("package", ["dagster", "great_expectations", "pandas"])
def test_the_installed_dependencies_carry_their_bytecode(package: str) -> None:
    """`make venv` compiles site-packages (`uv pip sync --compile-bytecode`): where
    PYTHONDONTWRITEBYTECODE is set, as on the CI machine, nothing else would, and every run's
    process would compile these packages from source on import again."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    assert Path(importlib.util.cache_from_source(spec.origin)).exists(), spec.origin
