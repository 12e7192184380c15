"""The same models on DuckDB and, transpiled by sqlglot, on PostgreSQL give the same rows.

The staged tables DuckDB built are copied into a throwaway PostgreSQL database; the marts are
refreshed there by `PostgresEngine` (every statement of every model transpiled) and compared row by
row with DuckDB's, first from scratch, then after an incremental step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlglot
from psycopg import sql
from sqlglot import exp

from runhub_pipeline.assets.marts import (
    MART_KEYS,
    MART_MODELS,
    PLATFORM_METRICS,
    DuckDBEngine,
    PostgresEngine,
    SqlEngine,
    refresh_marts,
    refresh_platform_metrics,
)
from runhub_pipeline.models import render_model, statements_of
from runhub_pipeline.resources.warehouse import Warehouse
from tests.factories import business_event, ingest_and_stage, insert_rows, utc
from tests.test_marts_golden import (
    EXPECTED,
    START,
    WRITE_TIME,
    WRITE_TIME_COLUMNS,
    T,
    load_golden_scenario,
    rounded,
)

pytestmark = pytest.mark.postgres

# What the marts read; mart_progress is each engine's own.
INPUT_TABLES = (
    "stg_business_events",
    "stg_analytics_events",
    "stg_projects",
    "raw_workflow_runs",
    "raw_inhouse_emails",
    "ingest_ledger",
    "stg_changes",
)


@pytest.fixture
def postgres_warehouse(
    postgres_database_factory: Callable[[], str],
) -> Iterator[psycopg.Connection[Any]]:
    connection = psycopg.connect(postgres_database_factory(), options="-c timezone=UTC")
    with connection.transaction():
        for statement in statements_of(render_model("ddl/warehouse")):
            tree = sqlglot.parse_one(statement, read="duckdb")
            if isinstance(tree, exp.Create) and tree.find(exp.Table).name in (
                *INPUT_TABLES,
                "mart_progress",
            ):
                connection.execute(tree.sql("postgres"))
    yield connection
    connection.close()


def copy_inputs(warehouse: Warehouse, target: psycopg.Connection[Any]) -> None:
    """Replace the PostgreSQL copies of the input tables with the DuckDB snapshot's rows."""
    with warehouse.reader() as source, target.transaction():
        for table in INPUT_TABLES:
            cursor = source.execute(exp.select("*").from_(table).sql("duckdb"))
            columns = [column[0] for column in cursor.description]
            target.execute(sql.SQL("delete from {}").format(sql.Identifier(table)))
            copy = sql.SQL("copy {} ({}) from stdin").format(
                sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            with target.cursor().copy(copy) as writer:
                for row in cursor.fetchall():
                    writer.write_row(row)


def contents(engine: SqlEngine, table: str) -> list[dict[str, Any]]:
    query = exp.select("*").from_(table).order_by(*MART_KEYS[table]).sql("duckdb")
    if isinstance(engine, PostgresEngine):
        cursor = engine.raw.execute(sqlglot.transpile(query, read="duckdb", write="postgres")[0])
        columns = [column.name for column in cursor.description]
    else:
        cursor = engine.raw.execute(query)
        columns = [column[0] for column in cursor.description]
    return rounded(
        [
            {c: v for c, v in zip(columns, row, strict=True) if c not in WRITE_TIME_COLUMNS}
            for row in cursor.fetchall()
        ]
    )


def assert_same_marts(warehouse: Warehouse, postgres: PostgresEngine) -> None:
    with warehouse.reader() as connection:
        duck = DuckDBEngine(connection)
        for table in (*MART_MODELS, PLATFORM_METRICS):
            on_duckdb = contents(duck, table)
            assert on_duckdb, table
            assert contents(postgres, table) == on_duckdb, table


def test_same_rows_on_duckdb_and_postgres(
    sqlite_app_db: Any, tmp_path: Path, postgres_warehouse: psycopg.Connection[Any]
) -> None:
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    ingest_and_stage(sqlite_app_db, warehouse, START, T)
    postgres = PostgresEngine(postgres_warehouse)
    # Copied before DuckDB's refresh, which prunes the stg_changes it consumed.
    copy_inputs(warehouse, postgres_warehouse)

    with warehouse.writer() as connection:
        refresh_marts(DuckDBEngine(connection), WRITE_TIME)
        refresh_platform_metrics(DuckDBEngine(connection), WRITE_TIME, WRITE_TIME)
    refresh_marts(postgres, WRITE_TIME)
    refresh_platform_metrics(postgres, WRITE_TIME, WRITE_TIME)
    assert_same_marts(warehouse, postgres)
    for table, expected in EXPECTED.items():
        assert contents(postgres, table) == rounded(expected), table

    # An incremental step on both: a late payment recovers checkout 207, T moves past 114's mark.
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
    later = WRITE_TIME + timedelta(hours=1)
    ingest_and_stage(sqlite_app_db, warehouse, T, T + timedelta(minutes=30))
    copy_inputs(warehouse, postgres_warehouse)
    with warehouse.writer() as connection:
        on_duckdb = refresh_marts(DuckDBEngine(connection), later)
        refresh_platform_metrics(DuckDBEngine(connection), later, later)
    on_postgres = refresh_marts(postgres, later)
    refresh_platform_metrics(postgres, later, later)
    assert on_postgres.recomputed == on_duckdb.recomputed
    assert on_postgres.recomputed["business_kpi_daily"] == 2
    assert_same_marts(warehouse, postgres)
