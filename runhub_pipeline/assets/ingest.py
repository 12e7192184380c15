"""Reading the app database into the warehouse's raw tables, window by window.

Event rows are chosen by `received_at` in `[window_start, window_end)` and streamed as Arrow
batches; every column but `id` and `received_at` arrives as text, because the pipeline never
trusts it. Everything a call reads replaces what the same windows held before, in one DuckDB
transaction.

The app's small tables (projects, workflow runs, digest e-mails) have no change column in
CONTRACT §3, and re-reading them whole was 94 % of the rows a 15-minute tick read (BENCHMARKS.md).
On PostgreSQL a tick reads only the rows written since the previous ingest, found by the row's
`xmin` (the transaction that wrote it), as xmin-based replication tools do:

- The reader works in one REPEATABLE READ snapshot. Its `pg_snapshot_xmin` (the oldest
  transaction still running) is stored as the table's horizon with the rows, in the same DuckDB
  transaction. Every transaction older than the horizon had ended when the snapshot was taken,
  so the next ingest reads the rows whose `xmin` is at or past it: nothing committed later can
  be older.
- `age(xmin) <= age(horizon)` compares transaction ids modulo 2^32 the way PostgreSQL does; a
  horizon more than 2^31 transactions back, or ahead of the server (another cluster), means a
  whole read.
- Deletes leave no row to find: when the copy's row count then differs from the source's count
  in the same snapshot, the table is read whole.

SQLite (the embedded default, small by design) has no such column and is read whole each time.
"""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import duckdb
import jinja2
import pyarrow as pa

from runhub_pipeline.models import render_model, run_model, statements_of
from runhub_pipeline.resources.app_db import AppDatabase, SourceReader


@dataclass(frozen=True)
class EventSource:
    """An app event table, read by 15-minute `received_at` windows and staged by its own model."""

    raw_table: str
    # Read after id and received_at, every one as text: normalizing is staging's job.
    columns: tuple[str, ...]
    staging_model: str
    # The grain of its stg_changes rows: business changes keep their instant (fct_checkouts
    # matches payments to checkouts by time); analytics changes are read only by local day
    # (business_kpi_daily), and one row per event made a 30-day backfill write 6.7 million.
    changes_per_local_day: bool


# Constants, never input: table and column names are spliced into SQL.
EVENT_SOURCES: dict[str, EventSource] = {
    "business_events": EventSource(
        "raw_business_events",
        (
            "project_id",
            "event_type",
            "occurred_at",
            "idempotency_key",
            "actor_email",
            "session_id",
            "amount_cents",
            "currency",
            "payload",
        ),
        staging_model="stg_business_events",
        changes_per_local_day=False,
    ),
    "inhouse_analytics_events": EventSource(
        "raw_analytics_events",
        ("project_id", "event_name", "session_id", "anonymous_id", "path", "occurred_at"),
        staging_model="stg_analytics_events",
        changes_per_local_day=True,
    ),
}


@dataclass(frozen=True)
class AppTableSource:
    """A small app table kept in the warehouse as a copy of the whole table, keyed by `key`."""

    raw_table: str
    key: str
    columns: tuple[str, ...]


SNAPSHOT_SOURCES: dict[str, AppTableSource] = {
    "projects": AppTableSource(
        "raw_projects",
        "project_id",
        (
            "project_id",
            "name",
            "timezone",
            "currency",
            "locale",
            "owner_email",
            "digest_enabled",
            "digest_hour",
            "digest_next_at",
            "auto_recover_abandoned",
            "stripe_connected",
            "tracking_installed",
            "forms_count",
            "created_at",
        ),
    ),
    "workflow_runs": AppTableSource(
        "raw_workflow_runs",
        "id",
        (
            "id",
            "project_id",
            "action_id",
            "status",
            "idempotency_key",
            "params",
            "attempts",
            "lease_owner",
            "lease_expires_at",
            "created_at",
            "started_at",
            "completed_at",
            "result",
            "error",
        ),
    ),
    "inhouse_emails": AppTableSource(
        "raw_inhouse_emails",
        "id",
        (
            "id",
            "project_id",
            "template_name",
            "locale",
            "to_email",
            "subject",
            "status",
            "idempotency_key",
            "created_at",
            "sent_at",
            "error",
        ),
    ),
}

_SOURCE_SELECT = jinja2.Template(
    """select
{%- if rows == "window" %}
    id,
    {{ received_at }} as received_at,
{%- endif %}
{%- for column in columns %}
    {{ text(column) }} as {{ column }}{{ "," if not loop.last }}
{%- endfor %}
from {{ table }}
{%- if rows == "window" %}
where received_at >= {{ p1 }} and received_at < {{ p2 }}
{%- elif rows == "changed" %}
where age(xmin) <= age(({{ p1 }} % 4294967296)::text::xid)
{%- endif %}""",
    undefined=jinja2.StrictUndefined,
)

SourceRows = Literal["window", "all", "changed"]


def source_select(
    app_db: AppDatabase, table: str, columns: tuple[str, ...], rows: SourceRows
) -> str:
    """The source query for one table, every column as text.

    `window`: event rows with received_at in `[$1, $2)`, with id and received_at first; `all`:
    the whole table; `changed` (PostgreSQL): rows written by transactions at or past the horizon
    `$1` (module docstring).
    """
    if rows == "changed" and app_db.dialect != "postgresql":
        raise ValueError("only PostgreSQL rows carry the writing transaction (xmin)")
    if app_db.dialect == "postgresql":

        def as_text(column: str) -> str:
            return f"{column}::text"

        received_at = "received_at"
    else:

        def as_text(column: str) -> str:
            return f"cast({column} as text)"

        received_at = "cast(received_at as text)"
    return _SOURCE_SELECT.render(
        table=table,
        columns=columns,
        text=as_text,
        rows=rows,
        received_at=received_at,
        p1=app_db.placeholder(1),
        p2=app_db.placeholder(2),
    )


def window_bound(app_db: AppDatabase, moment: datetime) -> object:
    """A window bound as the source compares it: fixed-width UTC text on SQLite."""
    if app_db.dialect == "sqlite":
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.astimezone(UTC)


def _insert_source_rows(
    connection: duckdb.DuckDBPyConnection,
    batches: Iterator[pa.RecordBatch],
    model: str,
    raw_table: str,
    columns: tuple[str, ...],
    **shape: str,
) -> int:
    """Run `model` (it selects from `_source_batch`) over all `batches` as one stream.

    One statement over a stream, not one per batch: DuckDB then writes the rows of the open
    transaction to disk as it goes. Appending batch by batch kept every uncommitted row in memory,
    growing with the data. Returns the rows inserted.
    """
    first = next(batches, None)
    if first is None:
        return 0
    rows = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in itertools.chain([first], batches):
            rows += batch.num_rows
            yield batch

    stream = pa.RecordBatchReader.from_batches(first.schema, counted())
    connection.register("_source_batch", stream)
    try:
        run_model(connection, model, None, raw_table=raw_table, columns=columns, **shape)
    finally:
        connection.unregister("_source_batch")
    return rows


@dataclass(frozen=True)
class IngestResult:
    source_rows: dict[str, int]
    windows: int
    # Rows read per small app table: all of it, or only what changed since the last ingest.
    app_table_rows: dict[str, int]


def ensure_warehouse_schema(connection: duckdb.DuckDBPyConnection) -> None:
    for statement in statements_of(render_model("ddl/warehouse")):
        connection.execute(statement)


def ingest_windows(
    app_db: AppDatabase,
    connection: duckdb.DuckDBPyConnection,
    window_start: datetime,
    window_end: datetime,
) -> IngestResult:
    """Replace the raw rows of `[window_start, window_end)` and bring the app-table copies up to
    date.

    Runs inside the caller's transaction (`staging.ingest_and_stage`, which stages what this
    read), so a crash leaves the previous rows of every window whole.
    """
    ensure_warehouse_schema(connection)
    bounds = {"window_start": window_start, "window_end": window_end}
    window = [window_bound(app_db, window_start), window_bound(app_db, window_end)]
    counts: dict[str, int] = {}
    with app_db.source_reader() as reader:
        for table, source in EVENT_SOURCES.items():
            run_model(connection, "raw_events_delete", bounds, raw_table=source.raw_table)
            sql = source_select(app_db, table, source.columns, "window")
            counts[table] = _insert_source_rows(
                connection,
                reader.batches(sql, window),
                "raw_events",
                source.raw_table,
                source.columns,
            )
        app_table_rows = refresh_app_tables(app_db, reader, connection)
    windows = int((window_end - window_start).total_seconds() // 900)
    return IngestResult(source_rows=counts, windows=windows, app_table_rows=app_table_rows)


# How far back a stored horizon may lie for `age()` to order transaction ids correctly: PostgreSQL
# compares them modulo 2^32, so only ids within 2^31 of each other; half of that leaves room for
# the transactions that start while a tick runs.
_HORIZON_REACH = 2**30


def refresh_app_tables(
    app_db: AppDatabase, reader: SourceReader, connection: duckdb.DuckDBPyConnection
) -> dict[str, int]:
    """Bring the copies of the small app tables up to date; the rows read per table."""
    if app_db.dialect != "postgresql":
        return {
            table: _read_app_table(app_db, reader, connection, table) for table in SNAPSHOT_SOURCES
        }
    horizon, source_counts = _snapshot_state(reader)
    stored = dict(
        connection.execute("select source_table, xmin_horizon from source_read_horizons").fetchall()
    )
    rows_read: dict[str, int] = {}
    for table, source in SNAPSHOT_SOURCES.items():
        since = stored.get(table)
        if since is not None and 0 <= horizon - since < _HORIZON_REACH:
            rows_read[table] = _read_app_table(app_db, reader, connection, table, since)
            copied = connection.execute(f"select count(*) from {source.raw_table}").fetchone()
            if copied is None or copied[0] != source_counts[table]:  # a delete leaves no row
                rows_read[table] += _read_app_table(app_db, reader, connection, table)
        else:
            rows_read[table] = _read_app_table(app_db, reader, connection, table)
        connection.execute(
            "insert or replace into source_read_horizons values ($table, $horizon)",
            {"table": table, "horizon": horizon},
        )
    return rows_read


def _snapshot_state(reader: SourceReader) -> tuple[int, dict[str, int]]:
    """The reader snapshot's horizon and each small app table's row count in it."""
    counts = ", ".join(f"(select count(*) from {table}) as {table}" for table in SNAPSHOT_SOURCES)
    sql = f"select pg_snapshot_xmin(pg_current_snapshot())::text::bigint as horizon, {counts}"
    (row,) = pa.Table.from_batches(list(reader.batches(sql))).to_pylist()
    return int(row["horizon"]), {table: int(row[table]) for table in SNAPSHOT_SOURCES}


def _read_app_table(
    app_db: AppDatabase,
    reader: SourceReader,
    connection: duckdb.DuckDBPyConnection,
    table: str,
    changed_since: int | None = None,
) -> int:
    """Copy an app table's rows into its raw table: every row (replacing the copy) or, with a
    horizon, the rows changed since it (replacing those keys). Returns the rows read."""
    source = SNAPSHOT_SOURCES[table]
    if changed_since is None:
        run_model(connection, "raw_snapshot_delete", raw_table=source.raw_table)
        batches = reader.batches(source_select(app_db, table, source.columns, "all"))
    else:
        sql = source_select(app_db, table, source.columns, "changed")
        batches = reader.batches(sql, [changed_since])
    return _insert_source_rows(
        connection, batches, "raw_snapshot", source.raw_table, source.columns, key=source.key
    )


RAW_ASSET_KEYS = (
    *(source.raw_table for source in EVENT_SOURCES.values()),
    *(source.raw_table for source in SNAPSHOT_SOURCES.values()),
)

RAW_DESCRIPTIONS = {
    "raw_business_events": "Source business_events rows as read, grain id, bucketed by received_at"
    " into 15-minute ingest windows; every column but id and received_at as text.",
    "raw_analytics_events": "Source inhouse_analytics_events rows as read, grain id, bucketed by"
    " received_at into 15-minute ingest windows; every column but id and received_at as text.",
    "raw_projects": "Copy of the app's projects table, grain project_id, brought up to date each"
    " run (PostgreSQL: only the rows changed since the last run are read).",
    "raw_workflow_runs": "Copy of the app's workflow_runs table, grain id, brought up to date each"
    " run (PostgreSQL: only the rows changed since the last run are read).",
    "raw_inhouse_emails": "Copy of the app's inhouse_emails table, grain id, brought up to date"
    " each run (PostgreSQL: only the rows changed since the last run are read).",
}
RAW_SOURCES = {
    **{source.raw_table: table for table, source in EVENT_SOURCES.items()},
    **{source.raw_table: table for table, source in SNAPSHOT_SOURCES.items()},
}


# The app tables the pipeline reads, shown in the asset graph as external sources.
APP_SOURCE_DESCRIPTIONS = {
    "business_events": "App table of business events (PostgreSQL or SQLite), read by received_at.",
    "inhouse_analytics_events": "App table of in-house analytics events, read by received_at.",
    "projects": "App table of projects: time zone, currency, locale, digest settings.",
    "workflow_runs": "App table of workflow runs (queued by the app or by the send sensors).",
    "inhouse_emails": "App table of e-mails sent by the platform (daily digests and others).",
}


def app_source_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["app", table])


def app_source_specs() -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(app_source_key(table), description=description, group_name="app_database")
        for table, description in APP_SOURCE_DESCRIPTIONS.items()
    ]


def source_window_counts(
    app_db: AppDatabase, since: datetime, until: datetime
) -> dict[tuple[str, datetime], int]:
    """Source rows per (source table, window start) with received_at in [since, until)."""
    sql = render_model("source/window_counts", tables=list(EVENT_SOURCES), dialect=app_db.dialect)
    rows = app_db.fetch_all(
        sql, {"since": window_bound(app_db, since), "until": window_bound(app_db, until)}
    )
    counts: dict[tuple[str, datetime], int] = {}
    for table, key, count in (tuple(row) for row in rows):
        counts[(table, datetime.fromisoformat(key).replace(tzinfo=UTC))] = int(count)
    return counts


def ledger_window_counts(
    connection: duckdb.DuckDBPyConnection, since: datetime, until: datetime
) -> dict[tuple[str, datetime], int]:
    """What the ledger recorded per (source table, window start) in [since, until)."""
    rows = connection.execute(
        "select source_table, window_start, source_rows from ingest_ledger"
        " where window_start >= $since and window_start < $until",
        {"since": since, "until": until},
    ).fetchall()
    return {(table, start.astimezone(UTC)): int(count) for table, start, count in rows}


def late_windows(
    source_counts: dict[tuple[str, datetime], int],
    ledger_counts: dict[tuple[str, datetime], int],
) -> list[datetime]:
    """Ingested windows whose source now holds a different number of rows (late commits)."""
    ingested = {start for _, start in ledger_counts}
    keys = set(source_counts) | set(ledger_counts)
    return sorted(
        {
            start
            for key in keys
            if (start := key[1]) in ingested
            and source_counts.get(key, 0) != ledger_counts.get(key, 0)
        }
    )
