"""Upgrading an app database that an older release created, one shipped migration at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.app_schema import (
    LEDGER_DDL,
    migrate,
    migration_files,
    render_migration,
)
from tests.factories import business_event, insert_rows, project, utc


def _empty_app_db(dialect: str, file: Path, request: pytest.FixtureRequest) -> AppDatabase:
    if dialect == "sqlite":
        return AppDatabase(url=f"sqlite:///{file}")
    create: Callable[[], str] = request.getfixturevalue("postgres_database_factory")
    return AppDatabase(url=create())


def _install_release(app_db: AppDatabase, versions: int) -> None:
    """The schema as a release that shipped only the first `versions` migrations left it."""
    with app_db.begin() as connection:
        connection.execute(sa.text(LEDGER_DDL))
        for version, name, template in migration_files()[:versions]:
            for statement in render_migration(template, app_db.dialect):
                connection.exec_driver_sql(statement)
            connection.execute(
                sa.text("insert into runhub_schema_migrations values (:v, :n, :at)"),
                {"v": version, "n": name, "at": datetime.now(UTC).isoformat()},
            )


def _schema(app_db: AppDatabase) -> dict[str, Any]:
    """Every table's columns (name, type, nullable, default) and indexes."""
    inspector = sa.inspect(app_db.engine)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "indexes": sorted(
                (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
        }
        for table in sorted(inspector.get_table_names())
    }


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("shipped", range(1, len(migration_files())))
def test_an_older_release_s_database_upgrades_to_a_fresh_install(
    dialect: str, shipped: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`runhub init` on a database an older release made applies exactly the missing migrations,
    keeps the data, and leaves the same schema a fresh install has."""
    upgraded = _empty_app_db(dialect, tmp_path / "upgraded.db", request)
    _install_release(upgraded, shipped)
    insert_rows(upgraded, "projects", [project("p1")])
    at = utc("2026-03-04 10:01")
    insert_rows(upgraded, "business_events", [business_event(1, "p1", "lead_created", at, at)])

    missing = [name for _, name, _ in migration_files()[shipped:]]
    assert migrate(upgraded) == missing
    assert migrate(upgraded) == []

    fresh = _empty_app_db(dialect, tmp_path / "fresh.db", request)
    migrate(fresh)
    assert _schema(upgraded) == _schema(fresh)
    assert [tuple(r) for r in upgraded.fetch_all("select id from business_events")] == [(1,)]
    assert [tuple(r) for r in upgraded.fetch_all("select project_id from projects")] == [("p1",)]
    for app_db in (upgraded, fresh):
        app_db.engine.dispose()
