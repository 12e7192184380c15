"""The app database: SQLite (embedded default) or PostgreSQL (production).

One SQLAlchemy engine per URL and process gives both dialects the same bound-parameter API
(`:name` placeholders) and UTC sessions. Bulk reads go through Arrow: ADBC's COPY-based reader on
PostgreSQL, batched cursors on SQLite, so a window is never one giant list of tuples in memory.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import dagster as dg
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from runhub_pipeline.settings import SettingsError

Dialect = Literal["sqlite", "postgresql"]
ARROW_BATCH_ROWS = 100_000


class AppDbError(RuntimeError):
    """The app database is missing, unreachable or refused an operation; one line for the user."""


@functools.cache  # asked on every placeholder and read; the URL of a process rarely changes
def dialect_of(url: str) -> Dialect:
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme == "sqlite":
        try:
            database = sa.make_url(url).database
        except sa.exc.ArgumentError:
            raise SettingsError(f"RUNHUB_APP_DB_URL is not a valid URL: {url!r}") from None
        # An in-memory database dies with its connection: `runhub init` would report success
        # and keep nothing, and every later command and Dagster step would see an empty one.
        if database in (None, "", ":memory:"):
            raise SettingsError(
                f"RUNHUB_APP_DB_URL must name a SQLite file (sqlite:///path/to/app.db), got {url!r}"
            )
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise SettingsError(
        f"RUNHUB_APP_DB_URL must start with sqlite:/// or postgresql://, got {scheme or url!r}"
    )


def _sqlalchemy_url(url: str) -> str:
    if dialect_of(url) == "postgresql":
        rest = url.split("://", 1)[1]
        return f"postgresql+psycopg://{rest}"
    return url


@functools.cache
def app_engine(url: str) -> Engine:
    """The process-wide engine for `url`; every session runs in UTC."""
    if dialect_of(url) == "postgresql":
        engine = sa.create_engine(
            _sqlalchemy_url(url),
            connect_args={"options": "-c timezone=UTC", "connect_timeout": 10},
            pool_pre_ping=True,
        )
        return engine
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    # pysqlite's implicit transactions do not start before a read; take the write lock at BEGIN
    # so two writers queue on busy_timeout instead of failing on a stale snapshot.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("pragma journal_mode=wal")
        dbapi_connection.execute("pragma busy_timeout=60000")
        dbapi_connection.execute("pragma synchronous=normal")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("begin immediate")

    return engine


class AppDatabase(dg.ConfigurableResource):
    """The Run Hub app database, source of raw events and target of the served KPIs."""

    url: str

    @property
    def dialect(self) -> Dialect:
        return dialect_of(self.url)

    @property
    def engine(self) -> Engine:
        return app_engine(self.url)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except sa.exc.OperationalError as error:
            raise AppDbError(describe_db_error(self.url, error)) from error

    def fetch_all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[sa.Row[Any]]:
        with self.begin() as connection:
            return list(connection.execute(sa.text(sql), dict(params or {})))

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        with self.begin() as connection:
            connection.execute(sa.text(sql), dict(params or {}))

    @contextmanager
    def source_reader(self) -> Iterator[SourceReader]:
        """One read-only source connection for several bulk reads.

        An ingest reads five tables; one connection instead of five saves a PostgreSQL
        connection set-up (~40 ms with ADBC) per table on every 15-minute tick.
        """
        reader = SourceReader(self.url, self.dialect)
        try:
            yield reader
        finally:
            reader.close()

    def placeholder(self, position: int) -> str:
        """The positional placeholder for `SourceReader.batches`, 1-based."""
        return f"${position}" if self.dialect == "postgresql" else "?"


def _libpq_url(url: str) -> str:
    """The URL as libpq spells it: no SQLAlchemy `+driver` suffix, `postgresql://` scheme."""
    return "postgresql://" + url.split("://", 1)[1]


_POSITIONAL = re.compile(r"\$(\d+)")


def _bind_client_side(sql: str, params: Sequence[Any]) -> str:
    """`sql` with its `$n` placeholders replaced by values quoted by psycopg.

    ADBC streams a result in bounded batches only through COPY, and COPY takes no server-side
    parameters: a query with bound parameters came back as one batch of the whole result (every
    event of a 30-day backfill in memory at once). psycopg does the same client-side binding for
    its own `COPY` with parameters; the values are still never formatted into SQL by hand.
    """
    from psycopg import sql as pg_sql

    return _POSITIONAL.sub(
        lambda match: pg_sql.Literal(params[int(match.group(1)) - 1]).as_string(None), sql
    )


class SourceReader:
    """Bulk reads over one connection: ADBC (COPY-based, Arrow out) on PostgreSQL, a read-only
    cursor on SQLite; opened on first use, closed by `AppDatabase.source_reader`. On PostgreSQL
    all reads run in one REPEATABLE READ transaction, so they see one snapshot."""

    def __init__(self, url: str, dialect: Dialect) -> None:
        self._url = url
        self._dialect = dialect
        self._connection: Any = None

    def batches(self, sql: str, params: Sequence[Any] = ()) -> Iterator[pa.RecordBatch]:
        """Stream a query's rows as Arrow record batches of bounded size, all of one schema.

        `sql` uses positional placeholders: `$1, $2` on PostgreSQL, `?` on SQLite (see
        `AppDatabase.placeholder`).
        """
        if self._dialect == "postgresql":
            yield from self._postgres_batches(sql, params)
        else:
            yield from self._sqlite_batches(sql, params)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _postgres_batches(self, sql: str, params: Sequence[Any]) -> Iterator[pa.RecordBatch]:
        with self._postgres_connection().cursor() as cursor:
            cursor.execute(_bind_client_side(sql, params))
            yield from cursor.fetch_record_batch()

    def _postgres_connection(self) -> Any:
        """The reader's ADBC connection, opened on first use."""
        import adbc_driver_postgresql.dbapi as adbc

        if self._connection is None:
            try:
                self._connection = adbc.connect(_libpq_url(self._url))
            except adbc.Error as error:
                first_line = str(error).splitlines()[0]
                raise AppDbError(f"cannot connect to the app database: {first_line}") from error
            with self._connection.cursor() as cursor:
                cursor.execute("set time zone 'UTC'")
                # Every read of this reader sees one snapshot: the events, the small app tables
                # and the horizon their incremental reads start from (assets/ingest.py).
                cursor.execute(
                    "set session characteristics as transaction isolation level repeatable read"
                )
            self._connection.commit()
        return self._connection

    def _sqlite_batches(self, sql: str, params: Sequence[Any]) -> Iterator[pa.RecordBatch]:
        path = sa.make_url(self._url).database or ":memory:"
        try:
            if self._connection is None:
                # DuckDB pulls a registered stream from its own threads, one batch at a time.
                self._connection = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=60, check_same_thread=False
                )
            cursor = self._connection.execute(sql, tuple(params))
            names = [column[0] for column in cursor.description]
            schema: pa.Schema | None = None
            while rows := cursor.fetchmany(ARROW_BATCH_ROWS):
                columns = list(zip(*rows, strict=True))
                if schema is None:
                    # Every batch of a query gets the first one's types, so the batches form one
                    # stream; a column that is all NULL there is text (the source reads text).
                    inferred = [pa.array(col) for col in columns]
                    schema = pa.schema(
                        (name, pa.string() if array.type == pa.null() else array.type)
                        for name, array in zip(names, inferred, strict=True)
                    )
                arrays = [
                    pa.array(col, type=schema.field(n).type)
                    for col, n in zip(columns, names, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except sqlite3.OperationalError as error:
            raise AppDbError(f"cannot read the app database at {path}: {error}") from error


def describe_db(url: str) -> str:
    """`app database <file or host:port>`, for messages: never the password."""
    parts = urlsplit(url)
    where = parts.path if dialect_of(url) == "sqlite" else f"{parts.hostname}:{parts.port or 5432}"
    return f"app database {where}"


def describe_db_error(url: str, error: BaseException) -> str:
    """A one-line description of a connection failure that never prints a password."""
    first_line = str(getattr(error, "orig", error)).strip().splitlines()[0:1]
    return f"{describe_db(url)}: {first_line[0] if first_line else type(error).__name__}"
