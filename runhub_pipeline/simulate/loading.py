"""Bulk loading inside the caller's transaction, and removing what an earlier run wrote."""

from __future__ import annotations

from typing import Any

import polars as pl
import sqlalchemy as sa
from psycopg import sql as pg_sql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from runhub_pipeline.resources.app_db import Dialect
from runhub_pipeline.simulate.spec import ID_BLOCK, project_id

COPY_ROWS = 200_000
_EVENT_TABLES = ("business_events", "inhouse_analytics_events", "inhouse_emails")
_PROJECT_TABLES = ("workflow_runs", "workflow_sends", "inhouse_email_suppressions", "projects")


def delete_previous(connection: Connection, projects: int) -> None:
    """Remove what an earlier run with up to `projects` projects wrote (see the module doc)."""
    ids = [project_id(number) for number in range(1, projects + 1)]
    first_id, last_id = ID_BLOCK, (projects + 1) * ID_BLOCK - 1
    for name in _EVENT_TABLES:
        table = sa.table(name, sa.column("id"), sa.column("project_id"))
        in_range = table.c.id.between(first_id, last_id)
        connection.execute(sa.delete(table).where(sa.or_(table.c.project_id.in_(ids), in_range)))
    for name in _PROJECT_TABLES:
        table = sa.table(name, sa.column("project_id"))
        connection.execute(sa.delete(table).where(table.c.project_id.in_(ids)))


def bump_identities(connection: Connection) -> None:
    """Move PostgreSQL's identity sequences past the explicit ids, so app inserts still work."""
    for name in _EVENT_TABLES:
        table = sa.table(name, sa.column("id"))
        highest = connection.execute(sa.select(sa.func.max(table.c.id))).scalar()
        if highest is not None:
            connection.execute(
                sa.text("select setval(pg_get_serial_sequence(:name, 'id'), :value)"),
                {"name": name, "value": highest},
            )


class Loader:
    """Bulk insert inside the caller's transaction: executemany on SQLite, CSV COPY on
    PostgreSQL (text times and JSON are parsed by the server into the typed columns)."""

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def load(self, name: str, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        raw: Any = self.connection.connection.driver_connection
        if self.dialect == "sqlite":
            table = sa.table(name, *(sa.column(column) for column in frame.columns))
            insert = str(sa.insert(table).compile(dialect=sqlite_dialect.dialect()))
            raw.executemany(insert, frame.iter_rows())
            return
        copy = pg_sql.SQL("copy {} ({}) from stdin (format csv)").format(
            pg_sql.Identifier(name), pg_sql.SQL(", ").join(map(pg_sql.Identifier, frame.columns))
        )
        with raw.cursor() as cursor, cursor.copy(copy) as stream:
            for chunk in frame.iter_slices(COPY_ROWS):
                stream.write(chunk.write_csv(include_header=False))
