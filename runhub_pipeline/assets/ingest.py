"""Reading the app database into the warehouse's raw tables, window by window.

Event rows are chosen by `received_at` in `[window_start, window_end)` and streamed as Arrow
batches; every column but `id` and `received_at` arrives as text, because the pipeline never
trusts it. The app's small tables (projects, workflow runs, digest e-mails) are copied whole on
every ingest. Everything a call reads replaces what the same windows held before, in one DuckDB
transaction.
"""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import duckdb
import jinja2
import pyarrow as pa

from runhub_pipeline.models import render_model, run_model, statements_of
from runhub_pipeline.resources.app_db import AppDatabase

# Per source table: (warehouse raw table, columns after id/received_at). Constants, never input.
EVENT_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "business_events": (
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
    ),
    "inhouse_analytics_events": (
        "raw_analytics_events",
        ("project_id", "event_name", "session_id", "anonymous_id", "path", "occurred_at"),
    ),
}

SNAPSHOT_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "projects": (
        "raw_projects",
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
    "workflow_runs": (
        "raw_workflow_runs",
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
    "inhouse_emails": (
        "raw_inhouse_emails",
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
{%- if with_event_keys %}
    id,
    {{ received_at }} as received_at,
{%- endif %}
{%- for column in columns %}
    {{ text(column) }} as {{ column }}{{ "," if not loop.last }}
{%- endfor %}
from {{ table }}
{%- if with_event_keys %}
where received_at >= {{ p1 }} and received_at < {{ p2 }}
{%- endif %}""",
    undefined=jinja2.StrictUndefined,
)


def source_select(app_db: AppDatabase, table: str, columns: tuple[str, ...], windowed: bool) -> str:
    """The source query for one table: text columns, windowed on received_at for events."""
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
        with_event_keys=windowed,
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
        run_model(connection, model, raw_table=raw_table, columns=columns)
    finally:
        connection.unregister("_source_batch")
    return rows


@dataclass(frozen=True)
class IngestResult:
    source_rows: dict[str, int]
    windows: int


def ensure_warehouse_schema(connection: duckdb.DuckDBPyConnection) -> None:
    for statement in statements_of(render_model("ddl/warehouse")):
        connection.execute(statement)


def ingest_windows(
    app_db: AppDatabase,
    connection: duckdb.DuckDBPyConnection,
    window_start: datetime,
    window_end: datetime,
) -> IngestResult:
    """Replace the raw rows of `[window_start, window_end)` and the app-table snapshots.

    Runs inside the caller's transaction (`staging.ingest_and_stage`, which stages what this
    read), so a crash leaves the previous rows of every window whole.
    """
    ensure_warehouse_schema(connection)
    bounds = {"window_start": window_start, "window_end": window_end}
    window = [window_bound(app_db, window_start), window_bound(app_db, window_end)]
    counts: dict[str, int] = {}
    with app_db.source_reader() as reader:
        for table, (raw_table, columns) in EVENT_SOURCES.items():
            run_model(connection, "raw_events_delete", bounds, raw_table=raw_table)
            sql = source_select(app_db, table, columns, windowed=True)
            counts[table] = _insert_source_rows(
                connection, reader.batches(sql, window), "raw_events", raw_table, columns
            )
        for table, (raw_table, columns) in SNAPSHOT_SOURCES.items():
            run_model(connection, "raw_snapshot_delete", raw_table=raw_table)
            sql = source_select(app_db, table, columns, windowed=False)
            _insert_source_rows(connection, reader.batches(sql), "raw_snapshot", raw_table, columns)
    windows = int((window_end - window_start).total_seconds() // 900)
    return IngestResult(source_rows=counts, windows=windows)


RAW_ASSET_KEYS = (
    *(raw_table for raw_table, _ in EVENT_SOURCES.values()),
    *(raw_table for raw_table, _ in SNAPSHOT_SOURCES.values()),
)

RAW_DESCRIPTIONS = {
    "raw_business_events": "Source business_events rows as read, grain id, bucketed by received_at"
    " into 15-minute ingest windows; every column but id and received_at as text.",
    "raw_analytics_events": "Source inhouse_analytics_events rows as read, grain id, bucketed by"
    " received_at into 15-minute ingest windows; every column but id and received_at as text.",
    "raw_projects": "Snapshot of the app's projects table, grain project_id, re-read each run.",
    "raw_workflow_runs": "Snapshot of the app's workflow_runs table, grain id, re-read each run.",
    "raw_inhouse_emails": "Snapshot of the app's inhouse_emails table, grain id, re-read each run.",
}
RAW_SOURCES = {
    **{raw_table: table for table, (raw_table, _) in EVENT_SOURCES.items()},
    **{raw_table: table for table, (raw_table, _) in SNAPSHOT_SOURCES.items()},
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
