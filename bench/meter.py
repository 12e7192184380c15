"""Client-side accounting of what the pipeline asks the app database, inside this process.

Two paths reach the app database: SQLAlchemy statements on the process-wide engine
(`AppDatabase.engine`: counts, snapshots of checks, serving writes) and ADBC Arrow reads
(`SourceReader.batches`: event windows and the app-table snapshots). The meter listens to
the engine's cursor events and wraps `SourceReader.batches` on the class for the duration of a
block; it times only the database side (a generator's `next`, a cursor's execute), not what the
caller does with the rows, and the ADBC connection set-up separately. Statements with a result
are reads; the others are writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from runhub_pipeline.resources.app_db import AppDatabase, SourceReader


@dataclass
class SourceUse:
    # Time inside reads, connection set-up excluded (it is `connect_seconds`): the rollup the
    # tick is compared with is timed on an open connection too.
    read_seconds: float = 0.0
    connect_seconds: float = 0.0
    read_rows: int = 0
    read_statements: int = 0
    write_seconds: float = 0.0
    write_statements: int = 0
    rows_by_query: dict[str, int] = field(default_factory=dict)
    seconds_by_query: dict[str, float] = field(default_factory=dict)

    def add_read(self, label: str, seconds: float, rows: int) -> None:
        self.read_seconds += seconds
        self.read_rows += rows
        self.read_statements += 1
        self.rows_by_query[label] = self.rows_by_query.get(label, 0) + rows
        self.seconds_by_query[label] = self.seconds_by_query.get(label, 0.0) + seconds


def _label(sql: str) -> str:
    """The first table a statement reads (`from <table>`), for the breakdown of rows read."""
    words = [word.strip("()") for word in sql.replace("\n", " ").split()]
    for index, word in enumerate(words[:-1]):
        if word.lower() == "from" and words[index + 1] and words[index + 1].lower() != "select":
            return words[index + 1]
    return " ".join(words[:2]).lower() or "?"


@contextmanager
def metered(app_db: AppDatabase) -> Iterator[SourceUse]:
    use = SourceUse()
    engine = app_db.engine
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seconds = time.perf_counter() - started.pop(id(cursor), time.perf_counter())
        if cursor.description is not None:
            use.add_read(_label(statement), seconds, max(int(cursor.rowcount or 0), 0))
        else:
            use.write_seconds += seconds
            use.write_statements += 1

    original = SourceReader.batches
    original_connection = SourceReader._postgres_connection
    connecting = 0.0  # set-up time spent inside the current `next(batches)`

    def postgres_connection(self: SourceReader) -> Any:
        nonlocal connecting
        tick = time.perf_counter()
        try:
            return original_connection(self)
        finally:
            connecting += time.perf_counter() - tick

    def batches(
        self: SourceReader, sql: str, params: Sequence[Any] = (), *args: Any, **kwargs: Any
    ) -> Iterator[pa.RecordBatch]:
        nonlocal connecting
        batches = original(self, sql, params, *args, **kwargs)
        seconds, rows = 0.0, 0
        try:
            while True:
                tick, connecting = time.perf_counter(), 0.0
                try:
                    batch = next(batches)
                except StopIteration:
                    seconds += time.perf_counter() - tick - connecting
                    break
                finally:
                    use.connect_seconds += connecting
                seconds += time.perf_counter() - tick - connecting
                rows += batch.num_rows
                yield batch
        finally:
            use.add_read(_label(sql), seconds, rows)

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    SourceReader.batches = batches  # type: ignore[method-assign]
    SourceReader._postgres_connection = postgres_connection  # type: ignore[method-assign]
    try:
        yield use
    finally:
        SourceReader.batches = original  # type: ignore[method-assign]
        SourceReader._postgres_connection = original_connection  # type: ignore[method-assign]
        sa.event.remove(engine, "after_cursor_execute", after)
        sa.event.remove(engine, "before_cursor_execute", before)


TABLE_READS = """
select coalesce(sum(seq_tup_read), 0) + coalesce(sum(idx_tup_fetch), 0)
from pg_stat_user_tables
where relname = any(%s)
"""
APP_TABLES = (
    "business_events",
    "inhouse_analytics_events",
    "projects",
    "workflow_runs",
    "workflow_sends",
    "inhouse_emails",
    "inhouse_email_suppressions",
)


def server_tuples_read(url: str) -> int:
    """Tuples PostgreSQL has read from the app tables so far (pg_stat_user_tables: sequential
    tuples read plus index fetches). Backends report at disconnect or within a second."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(TABLE_READS, (list(APP_TABLES),)).fetchone()
    return int(row[0]) if row else 0
