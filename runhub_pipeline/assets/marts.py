"""Marts: the analyst tables of CONTRACT §5, built from staging incrementally as of the T.

Each table has one model, `sql/<table>.sql`. The models run in one transaction, in the order of
`MART_MODELS`: the incremental ones consume `stg_changes` since their `mart_progress` and the
passing of T since the previous run; the small "as of T" tables are rebuilt. The same models run on
DuckDB (the warehouse) and, transpiled by sqlglot, on PostgreSQL (`PostgresEngine`).
`platform_success_metrics` is built after the publish to the app database (see `serving.py`).
"""

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import dagster as dg
import duckdb
from sqlglot import exp

from runhub_pipeline.lineage import model_column_lineage, model_inputs, model_table_schema
from runhub_pipeline.models import render_model, run_model, statements_of, transpile
from runhub_pipeline.resources.warehouse import (
    WAREHOUSE_POOL,
    WRITES_WAREHOUSE_TAG,
    Warehouse,
    utc_now,
)
from runhub_pipeline.watermark import current_watermark

INCREMENTAL_MARTS = (
    "fct_checkouts",
    "business_kpi_daily",
    "revenue_by_currency_daily",
    "alert_counts_15min",
)
AS_OF_MARTS = ("workflow_run_metrics", "digest_metrics", "run_overview")
# Run order: business_kpi_daily and alert_counts_15min read what fct_checkouts changed;
# run_overview reads the other marts.
MART_MODELS = INCREMENTAL_MARTS + AS_OF_MARTS
PLATFORM_METRICS = "platform_success_metrics"

# Per incremental table: the temporary table listing what a window recomputed, and the name of
# that count in the materialization metadata.
RECOMPUTED_SCOPE = {
    "fct_checkouts": ("_checkout_scope", "recomputed_checkouts"),
    "business_kpi_daily": ("_kpi_pairs", "recomputed_pairs"),
    "revenue_by_currency_daily": ("_revenue_pairs", "recomputed_pairs"),
    "alert_counts_15min": ("_alert_buckets", "recomputed_buckets"),
}

# Key columns, for previews and comparisons.
MART_KEYS: dict[str, tuple[str, ...]] = {
    "fct_checkouts": ("checkout_event_id",),
    "business_kpi_daily": ("project_id", "day"),
    "revenue_by_currency_daily": ("project_id", "day", "currency"),
    "alert_counts_15min": ("project_id", "bucket_start"),
    "digest_metrics": ("project_id", "locale", "status"),
    "workflow_run_metrics": ("project_id",),
    "run_overview": ("project_id",),
    "platform_success_metrics": ("as_of",),
}

# The plan's targets, beside each platform metric: (target, direction).
PLATFORM_TARGETS: dict[str, tuple[float, str]] = {
    "digest_delivery_rate_30d": (0.95, ">="),
    "workflow_completion_rate_7d": (0.80, ">"),
    "empty_state_rate": (0.20, "<"),
    "fresh_share": (0.95, ">="),
}

# A time before every event: the "previous watermark" of a mart that never ran.
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)

_DESCRIPTIONS = {
    "fct_checkouts": "One row per staged checkout_started (grain checkout_event_id, time column"
    " started_at, UTC): earliest matching payment, status as of T (converted / recovered /"
    " pending / abandoned), credited recovered revenue and recovering run.",
    "business_kpi_daily": "Daily KPIs per project: grain (project_id, day), day = local date of"
    " occurred_at in the project's time zone (DST-correct). Money in the project currency only;"
    " served to the app database.",
    "revenue_by_currency_daily": "Orders, revenue and refunds per currency: grain (project_id,"
    " day, currency), day = local date of occurred_at; currencies never added together.",
    "alert_counts_15min": "Alert counts per project and 15-minute UTC bucket of occurred_at"
    " (started_at for checkouts): grain (project_id, bucket_start), non-zero rows only.",
    "digest_metrics": "Daily-digest e-mails created in [T - 30 d, T) and delivery rate: grain"
    " (project_id, locale, status), time column created_at; rebuilt as of T.",
    "workflow_run_metrics": "Workflow runs per status created in [T - 7 d, T) and stuck runs:"
    " grain project_id, time column created_at; rebuilt as of T.",
    "run_overview": "What the Run Hub overview shows per project as of T: grain project_id,"
    " rolling windows on occurred_at / started_at / created_at ending at T (as_of).",
    "platform_success_metrics": "Plan success metrics pooled over all projects with their"
    " targets: one row per watermark T (grain as_of), appended after each publish.",
}

_PG_TRY_TIMESTAMPTZ = """
create or replace function runhub_try_timestamptz(value text) returns timestamptz
language plpgsql stable as $$
begin
    return value::timestamptz;
exception when others then
    return null;
end;
$$
"""
_DUCKDB_TRY_TIMESTAMPTZ = (
    "create or replace temp macro runhub_try_timestamptz(value) as try_cast(value as timestamptz)"
)
_PG_PARAMETER = re.compile(r"%\(([a-z_][a-z0-9_]*)\)s")


class SqlEngine(Protocol):
    """Where the models run: the DuckDB warehouse or a PostgreSQL database."""

    dialect: str

    def run(self, name: str, params: Mapping[str, Any]) -> None: ...

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one query written in DuckDB's dialect (transpiled where needed)."""
        ...

    def execute(self, sql: str, params: Mapping[str, Any]) -> None:
        """Run one statement written in DuckDB's dialect (transpiled where needed)."""
        ...

    def transaction(self) -> Any: ...

    @property
    def raw(self) -> Any: ...


class DuckDBEngine:
    dialect = "duckdb"

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self._connection = connection
        connection.execute(_DUCKDB_TRY_TIMESTAMPTZ)

    @property
    def raw(self) -> duckdb.DuckDBPyConnection:
        return self._connection

    def run(self, name: str, params: Mapping[str, Any]) -> None:
        run_model(self._connection, name, params)

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._connection.execute(sql, dict(params) if params else None).fetchall()

    def execute(self, sql: str, params: Mapping[str, Any]) -> None:
        self._connection.execute(sql, dict(params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._connection.execute("begin")
        try:
            yield
            self._connection.execute("commit")
        except BaseException:
            self._connection.execute("rollback")
            raise


class PostgresEngine:
    """Runs the DuckDB-dialect models on PostgreSQL through sqlglot, binding `$name` values."""

    dialect = "postgres"

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        with connection.transaction():
            connection.execute(_PG_TRY_TIMESTAMPTZ)

    @property
    def raw(self) -> Any:
        return self._connection

    def _execute(self, statement: str, params: Mapping[str, Any]) -> Any:
        used = {name: params[name] for name in _PG_PARAMETER.findall(statement)}
        return self._connection.execute(statement, used or None)

    def run(self, name: str, params: Mapping[str, Any]) -> None:
        for statement in statements_of(render_model(name)):
            for translated in transpile(statement, "postgres"):
                self._execute(translated, params)

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        (translated,) = transpile(sql, "postgres")
        return list(self._execute(translated, params or {}).fetchall())

    def execute(self, sql: str, params: Mapping[str, Any]) -> None:
        (translated,) = transpile(sql, "postgres")
        self._execute(translated, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._connection.transaction():
            yield


@dataclass(frozen=True)
class MartsRefresh:
    """What one refresh computed: T, the previous T, the stg_changes range and the scopes."""

    watermark: datetime | None
    previous_watermark: datetime | None
    from_seq: int
    to_seq: int
    recomputed: dict[str, int] = field(default_factory=dict)


_PROGRESS = "select mart, change_seq, watermark from mart_progress"
_LAST_CHANGE = "select coalesce(max(change_seq), 0) from stg_changes"
# Every incremental mart has consumed the changes up to $to_seq in this transaction; staging
# numbers the next change past mart_progress too (`staging.next_change_seq`), so none is reused.
_PRUNE_CONSUMED = "delete from stg_changes where change_seq <= $to_seq"


def _progress(engine: SqlEngine) -> tuple[int, datetime | None]:
    """Where the incremental marts stand: consumed change_seq and the T they last computed."""
    rows = [row for row in engine.fetchall(_PROGRESS) if row[0] in INCREMENTAL_MARTS]
    if {row[0] for row in rows} != set(INCREMENTAL_MARTS):
        return 0, None
    from_seq = min(int(row[1]) for row in rows)
    watermarks = [row[2] for row in rows]
    previous = None if any(w is None for w in watermarks) else min(watermarks)
    return from_seq, previous


def refresh_marts(engine: SqlEngine, updated_at: datetime) -> MartsRefresh:
    """Bring every mart of `MART_MODELS` up to the current T, in one transaction."""
    with engine.transaction():
        watermark = current_watermark(engine.raw)
        if watermark is None:
            return MartsRefresh(None, None, 0, 0)
        from_seq, previous = _progress(engine)
        to_seq = int(engine.fetchall(_LAST_CHANGE)[0][0])
        params = {
            "from_seq": from_seq,
            "to_seq": to_seq,
            "watermark": watermark,
            "previous_watermark": previous or BEGINNING,
            "updated_at": updated_at,
        }
        recomputed: dict[str, int] = {}
        for name in MART_MODELS:
            engine.run(name, params)
            if name in RECOMPUTED_SCOPE:
                recomputed[name] = _count(engine, RECOMPUTED_SCOPE[name][0])
        engine.execute(_PRUNE_CONSUMED, {"to_seq": to_seq})
    return MartsRefresh(watermark, previous, from_seq, to_seq, recomputed)


def refresh_platform_metrics(
    engine: SqlEngine, published_through: datetime | None, updated_at: datetime
) -> datetime | None:
    """Append (or replace) the platform_success_metrics row of the current T; returns T."""
    with engine.transaction():
        watermark = current_watermark(engine.raw)
        if watermark is None:
            return None
        params = {
            "watermark": watermark,
            "published_through": published_through or BEGINNING,
            "updated_at": updated_at,
            "digest_delivery_target": PLATFORM_TARGETS["digest_delivery_rate_30d"][0],
            "workflow_completion_target": PLATFORM_TARGETS["workflow_completion_rate_7d"][0],
            "empty_state_target": PLATFORM_TARGETS["empty_state_rate"][0],
            "fresh_share_target": PLATFORM_TARGETS["fresh_share"][0],
        }
        engine.run(PLATFORM_METRICS, params)
    return watermark


def _count(engine: SqlEngine, table: str) -> int:
    sql = exp.select(exp.Count(this=exp.Star())).from_(table).sql("duckdb")
    return int(engine.fetchall(sql)[0][0])


def table_rows(
    connection: duckdb.DuckDBPyConnection, table: str, limit: int | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A table's column names and rows in key order (all of them, or the first `limit`)."""
    query = exp.select("*").from_(table).order_by(*MART_KEYS[table])
    if limit is not None:
        query = query.limit(limit)
    cursor = connection.execute(query.sql("duckdb"))
    return [column[0] for column in cursor.description], cursor.fetchall()


def markdown_preview(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A small markdown table for the Dagster UI."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = ("" if value is None else str(value).replace("|", "\\|") for value in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def materialization_metadata(
    connection: duckdb.DuckDBPyConnection, table: str, preview_rows: int = 5
) -> dict[str, Any]:
    """row_count and a preview of the first rows, for a table just written."""
    columns, rows = table_rows(connection, table, preview_rows)
    counted = connection.execute(exp.select(exp.Count(this=exp.Star())).from_(table).sql("duckdb"))
    total = int(counted.fetchone()[0])  # type: ignore[index]
    return {
        "dagster/row_count": dg.MetadataValue.int(total),
        "preview": dg.MetadataValue.md(markdown_preview(columns, rows)),
    }


STAGING_INPUTS = (
    "stg_business_events",
    "stg_analytics_events",
    "stg_projects",
    "ingest_ledger",
    "raw_workflow_runs",
    "raw_inhouse_emails",
)


def mart_spec(
    table: str,
    deps: Sequence[str],
    partitions: dg.PartitionsDefinition,
    group_name: str = "marts",
) -> dg.AssetSpec:
    """The AssetSpec of a mart: description, schema and column lineage parsed from its SQL."""
    return dg.AssetSpec(
        table,
        description=_DESCRIPTIONS[table],
        group_name=group_name,
        deps=list(deps),
        partitions_def=partitions,
        metadata={
            "dagster/column_schema": model_table_schema(table),
            "dagster/column_lineage": model_column_lineage(table, deps),
            "model": f"sql/{table}.sql",
        },
    )


def mart_deps(table: str, candidates: Sequence[str]) -> list[str]:
    """Upstream asset keys of a mart: the `candidates` its model reads, parsed from its SQL."""
    return sorted(set(candidates) & (model_inputs(table) - {table}))


def build_mart_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The marts layer: one step that refreshes every mart of `MART_MODELS` as of T.

    On the 15-minute partitions with a single-run backfill policy: a run over one window or a
    range refreshes the marts once, incrementally, from what those windows staged, and Dagster
    marks every window of the range materialized. The SQL does not filter by the partition: the
    marts consume `stg_changes`, so a window's run also carries changes that earlier runs left.
    """

    @dg.multi_asset(
        name="build_marts",
        specs=[
            mart_spec(table, mart_deps(table, [*STAGING_INPUTS, *MART_MODELS]), partitions)
            for table in MART_MODELS
        ],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        op_tags={WRITES_WAREHOUSE_TAG: "true"},
    )
    def build_marts(
        context: dg.AssetExecutionContext, warehouse: Warehouse
    ) -> Iterator[dg.MaterializeResult]:
        with warehouse.step_writer(context) as connection:
            refresh = refresh_marts(DuckDBEngine(connection), utc_now())
            metadata = {
                table: materialization_metadata(connection, table)
                for table in MART_MODELS
                if refresh.watermark is not None
            }
        context.log.info(
            "marts as of T=%s (previous %s), stg_changes (%s, %s], recomputed %s",
            refresh.watermark,
            refresh.previous_watermark,
            refresh.from_seq,
            refresh.to_seq,
            refresh.recomputed,
        )
        for table in MART_MODELS:
            extra: dict[str, Any] = {
                "watermark": dg.MetadataValue.text(str(refresh.watermark)),
            }
            if table in RECOMPUTED_SCOPE:
                extra[RECOMPUTED_SCOPE[table][1]] = refresh.recomputed.get(table, 0)
            yield dg.MaterializeResult(
                asset_key=table, metadata={**metadata.get(table, {}), **extra}
            )

    return [build_marts]
