"""Which PostgreSQL driver reads a window into Arrow fastest? (issue 2: driver chosen by speed)

Loads N synthetic business events into a throwaway database and reads them the way ingestion
does (every column but id and received_at as text), three times each, printing the median:

- `adbc`: ADBC PostgreSQL driver, `fetch_record_batch()` (binary COPY inside, Arrow out);
- `psycopg-copy-csv`: psycopg 3 `COPY (SELECT …) TO STDOUT (FORMAT csv)` parsed by pyarrow.csv;
- `psycopg-rows`: psycopg 3 cursor rows turned into Arrow in Python (the naive path);
- `copy-devnull`: psycopg 3 COPY to nowhere: the extraction limit, no parsing at all.

    .venv/bin/python -m bench.driver_read --rows 1000000
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import uuid
from collections.abc import Callable

import adbc_driver_postgresql.dbapi as adbc
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql as pg_sql

from runhub_pipeline.assets.ingest import EVENT_SOURCES, source_select
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.app_schema import migrate

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

FILL = """
insert into business_events (id, project_id, event_type, occurred_at, received_at,
    idempotency_key, actor_email, session_id, amount_cents, currency, payload)
select g, 'p' || (g % 500), 'checkout_started', timestamptz '2026-01-01' + g * interval '1 second',
    timestamptz '2026-01-01' + g * interval '1 second', 'k' || g, 'buyer' || (g % 9999) || '@x.com',
    's' || (g % 50000), g % 10000, 'USD', '{"sku": "A-1"}'::jsonb
from generate_series(1, %s) as g
"""


def source_query(table: str) -> str:
    """What ingestion reads from an event table, unwindowed: id, received_at, the rest as text."""
    app_db = AppDatabase(url="postgresql://unused/x")
    return source_select(app_db, table, EVENT_SOURCES[table].columns, "all").replace(
        "select\n", "select id, received_at,\n", 1
    )


def _query() -> str:
    return source_query("business_events")


def read_adbc(url: str, sql: str) -> int:
    with adbc.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return sum(batch.num_rows for batch in cursor.fetch_record_batch())


def read_copy_csv(url: str, sql: str) -> int:
    buffer = io.BytesIO()
    with (
        psycopg.connect(url) as connection,
        connection.cursor() as cursor,
        cursor.copy(pg_sql.SQL("copy ({}) to stdout (format csv)").format(pg_sql.SQL(sql))) as copy,
    ):
        for chunk in copy:
            buffer.write(chunk)
    buffer.seek(0)
    table = pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(autogenerate_column_names=True),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
    )
    return table.num_rows


def read_rows(url: str, sql: str) -> int:
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        total = 0
        while rows := cursor.fetchmany(100_000):
            pa.RecordBatch.from_arrays(
                [pa.array(column) for column in zip(*rows, strict=True)],
                names=[d.name for d in cursor.description or []],
            )
            total += len(rows)
        return total


def copy_devnull(url: str, sql: str) -> int:
    size = 0
    statement = pg_sql.SQL("copy ({}) to stdout").format(pg_sql.SQL(sql))
    with (
        psycopg.connect(url) as connection,
        connection.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        for chunk in copy:
            size += len(chunk)
    return size


def median_seconds(read: Callable[[str, str], int], url: str, sql: str, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        read(url, sql)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name = f"runhub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(pg_sql.SQL("create database {}").format(pg_sql.Identifier(name)))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(AppDatabase(url=url))
        with psycopg.connect(url) as connection:
            connection.execute(FILL, (args.rows,))
        sql = _query()
        print(f"{args.rows:,} rows, median of {args.repeats} reads")
        for label, read in [
            ("copy-devnull (limit)", copy_devnull),
            ("adbc", read_adbc),
            ("psycopg-copy-csv", read_copy_csv),
            ("psycopg-rows", read_rows),
        ]:
            seconds = median_seconds(read, url, sql, args.repeats)
            print(f"  {label:<22} {seconds:7.2f} s  {args.rows / seconds:12,.0f} rows/s")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                pg_sql.SQL("drop database if exists {} with (force)").format(
                    pg_sql.Identifier(name)
                )
            )


if __name__ == "__main__":
    main()
