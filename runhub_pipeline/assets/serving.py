"""Serving: publish business_kpi_daily to the app database, then record the platform metrics.

A publish carries every warehouse row whose `updated_at` is newer than the last publish's
`published_through` (the newest change it carried), and deletes the rows logged in
`business_kpi_daily_deletions` since then that do not exist any more, all in one app-database
transaction together with its `runhub_publish_log` row. So a re-run publishes the same rows again
(upserts: same app rows), and a window whose blocking checks failed (Dagster skips this asset)
leaves its changes for the next successful publish.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import duckdb
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlglot import exp

from runhub_pipeline.assets.marts import (
    BEGINNING,
    MART_MODELS,
    PLATFORM_METRICS,
    PLATFORM_TARGETS,
    STAGING_INPUTS,
    DuckDBEngine,
    mart_deps,
    mart_spec,
    materialization_metadata,
    refresh_platform_metrics,
)
from runhub_pipeline.lineage import model_table_schema
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import (
    WAREHOUSE_POOL,
    WRITES_WAREHOUSE_TAG,
    Warehouse,
    utc_now,
)

SERVED_KPI_ASSET = "app_business_kpi_daily"
KPI_TABLE = "business_kpi_daily"
KPI_KEY = ("project_id", "day")
_POSTGRES_PUBLISH_LOCK = 4242002

_DELETED_KEYS = """
select distinct d.project_id, d.day
from business_kpi_daily_deletions as d
where d.deleted_at > $cut
    and not exists (
        select 1 from business_kpi_daily as k where k.project_id = d.project_id and k.day = d.day
    )
order by d.project_id, d.day
"""
_NEWEST_CHANGE = """
select greatest(
    (select max(k.updated_at) from business_kpi_daily as k),
    (select max(d.deleted_at) from business_kpi_daily_deletions as d)
)
"""

# The app has received every deletion logged up to its last publish: the publish and fresh_share
# read only the ones logged after it, so the older ones would only pile up.
_FORGET_PUBLISHED_DELETIONS = """
delete from business_kpi_daily_deletions where deleted_at <= $published_through
"""


@dataclass(frozen=True)
class PublishResult:
    rows_upserted: int
    rows_deleted: int
    published_through: datetime


def kpi_columns() -> list[str]:
    """The served columns: the warehouse table's, read from its model."""
    return [column.name for column in model_table_schema(KPI_TABLE).columns]


def _app_time(dialect: str, moment: datetime) -> object:
    """A time as the app database stores it: fixed-width UTC text on SQLite (CONTRACT §3)."""
    if dialect == "sqlite":
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.astimezone(UTC)


def _app_day(dialect: str, day: date) -> object:
    return day.isoformat() if dialect == "sqlite" else day


def _parse_app_time(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _tables(dialect: str, columns: Sequence[str]) -> tuple[sa.Table, sa.Table]:
    """SQLAlchemy descriptions of the serving tables (created by migration 002)."""
    metadata = sa.MetaData()
    time_type: sa.types.TypeEngine[Any] = (
        sa.String() if dialect == "sqlite" else sa.DateTime(timezone=True)
    )
    day_type: sa.types.TypeEngine[Any] = sa.String() if dialect == "sqlite" else sa.Date()
    kinds: dict[str, sa.types.TypeEngine[Any]] = {
        "project_id": sa.String(),
        "day": day_type,
        "conversion_rate": sa.Float(),
        "currency": sa.String(),
        "updated_at": time_type,
    }
    kpi = sa.Table(
        KPI_TABLE,
        metadata,
        *(
            sa.Column(name, kinds.get(name, sa.BigInteger()), primary_key=name in KPI_KEY)
            for name in columns
        ),
    )
    log = sa.Table(
        "runhub_publish_log",
        metadata,
        sa.Column("published_through", time_type),
        sa.Column("published_at", time_type),
        sa.Column("rows_upserted", sa.BigInteger()),
        sa.Column("rows_deleted", sa.BigInteger()),
    )
    return kpi, log


def last_published_through(app_db: AppDatabase) -> datetime | None:
    """The newest warehouse change the app database has received, None before the first publish."""
    _, log = _tables(app_db.dialect, kpi_columns())
    with app_db.begin() as connection:
        value = connection.execute(sa.select(sa.func.max(log.c.published_through))).scalar()
    return _parse_app_time(value)


def publish_business_kpi_daily(
    app_db: AppDatabase, warehouse: duckdb.DuckDBPyConnection, published_at: datetime
) -> PublishResult:
    """Upsert the changed rows and delete the vanished ones in the app, in one transaction."""
    dialect = app_db.dialect
    columns = kpi_columns()
    kpi, log = _tables(dialect, columns)
    with app_db.begin() as connection:
        if dialect == "postgresql":
            # Two publishes must not interleave between reading the cut and writing the log.
            connection.execute(
                sa.text("select pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_PUBLISH_LOCK}
            )
        cut = _parse_app_time(
            connection.execute(sa.select(sa.func.max(log.c.published_through))).scalar()
        )
        since = cut or BEGINNING
        changed = warehouse.execute(_changed_rows_sql(columns), {"cut": since}).fetchall()
        deleted = warehouse.execute(_DELETED_KEYS, {"cut": since}).fetchall()
        newest_row = warehouse.execute(_NEWEST_CHANGE).fetchone()
        newest = newest_row[0] if newest_row else None
        through = max(moment for moment in (since, newest) if moment is not None)

        if deleted:
            connection.execute(
                sa.delete(kpi).where(
                    kpi.c.project_id == sa.bindparam("key_project_id"),
                    kpi.c.day == sa.bindparam("key_day"),
                ),
                [
                    {"key_project_id": project_id, "key_day": _app_day(dialect, day)}
                    for project_id, day in deleted
                ],
            )
        if changed:
            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(kpi)
            upsert = insert.on_conflict_do_update(
                index_elements=list(KPI_KEY),
                set_={name: insert.excluded[name] for name in columns if name not in KPI_KEY},
            )
            connection.execute(upsert, [_app_row(dialect, columns, row) for row in changed])
        connection.execute(
            sa.insert(log).values(
                published_through=_app_time(dialect, through),
                published_at=_app_time(dialect, published_at),
                rows_upserted=len(changed),
                rows_deleted=len(deleted),
            )
        )
    return PublishResult(len(changed), len(deleted), through)


def forget_published_deletions(
    warehouse: duckdb.DuckDBPyConnection, published_through: datetime
) -> None:
    """Drop the logged KPI deletions the app has received (writer connection)."""
    warehouse.execute(_FORGET_PUBLISHED_DELETIONS, {"published_through": published_through})


def _changed_rows_sql(columns: Sequence[str]) -> str:
    """The warehouse rows written after the cut `$cut`, in key order."""
    query = (
        exp.select(*(exp.column(name, table="k") for name in columns))
        .from_(exp.to_table(KPI_TABLE).as_("k"))
        .where(exp.column("updated_at", table="k") > exp.Parameter(this=exp.var("cut")))
        .order_by(*(exp.column(name, table="k") for name in KPI_KEY))
    )
    return query.sql("duckdb")


def _app_row(dialect: str, columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    values = dict(zip(columns, row, strict=True))
    values["day"] = _app_day(dialect, values["day"])
    values["updated_at"] = _app_time(dialect, values["updated_at"])
    return values


def _served_spec(partitions: dg.PartitionsDefinition) -> dg.AssetSpec:
    schema = model_table_schema(KPI_TABLE)
    lineage = dg.TableColumnLineage(
        deps_by_column={
            column.name: [
                dg.TableColumnDep(asset_key=dg.AssetKey(KPI_TABLE), column_name=column.name)
            ]
            for column in schema.columns
        }
    )
    return dg.AssetSpec(
        SERVED_KPI_ASSET,
        description="business_kpi_daily published to the app database (grain (project_id, day),"
        " day = project-local date of occurred_at): every row changed since the last publish"
        " upserted, vanished rows deleted, one transaction per window.",
        group_name="serving",
        deps=[KPI_TABLE],
        partitions_def=partitions,
        metadata={
            "dagster/column_schema": schema,
            "dagster/column_lineage": lineage,
            "dagster/table_name": KPI_TABLE,
        },
    )


def _target_met(value: float | None, target: float, direction: str) -> bool | None:
    if value is None:
        return None
    return {">=": value >= target, ">": value > target, "<": value < target}[direction]


def _platform_metadata(
    connection: duckdb.DuckDBPyConnection, watermark: datetime
) -> dict[str, Any]:
    cursor = connection.execute(
        "select * from platform_success_metrics where as_of = $as_of", {"as_of": watermark}
    )
    names = [column[0] for column in cursor.description]
    row = cursor.fetchone()
    values = dict(zip(names, row, strict=True)) if row else {}
    metadata: dict[str, Any] = {}
    for metric, (target, direction) in PLATFORM_TARGETS.items():
        value = values.get(metric)
        met = _target_met(value, target, direction)
        shown = "NULL" if value is None else f"{value:.4f}"
        metadata[metric] = dg.MetadataValue.text(
            f"{shown} (target {direction} {target:.2f}: "
            f"{'n/a' if met is None else 'met' if met else 'missed'})"
        )
    return metadata


def build_serving_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """Publish to the app database, then append the platform metrics of T.

    Partitioned like the marts: each window run (one window or a range) publishes everything
    changed since the last publish and records one platform_success_metrics row for its T.
    """

    @dg.multi_asset(
        name="publish_business_kpi_daily",
        specs=[_served_spec(partitions)],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
    )
    def publish(
        context: dg.AssetExecutionContext, app_db: AppDatabase, warehouse: Warehouse
    ) -> Iterator[dg.MaterializeResult]:
        with warehouse.run_reader(context) as connection:
            result = publish_business_kpi_daily(app_db, connection, utc_now())
        context.log.info("published %s", result)
        yield dg.MaterializeResult(
            asset_key=SERVED_KPI_ASSET,
            metadata={
                "rows_upserted": result.rows_upserted,
                "rows_deleted": result.rows_deleted,
                "published_through": dg.MetadataValue.text(result.published_through.isoformat()),
            },
        )

    platform_deps = [
        SERVED_KPI_ASSET,
        *mart_deps(PLATFORM_METRICS, [*STAGING_INPUTS, *MART_MODELS]),
    ]

    @dg.multi_asset(
        name="record_platform_success_metrics",
        specs=[mart_spec(PLATFORM_METRICS, platform_deps, partitions)],
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        op_tags={WRITES_WAREHOUSE_TAG: "true"},
    )
    def platform(
        context: dg.AssetExecutionContext, app_db: AppDatabase, warehouse: Warehouse
    ) -> Iterator[dg.MaterializeResult]:
        published_through = last_published_through(app_db)
        with warehouse.step_writer(context) as connection:
            watermark = refresh_platform_metrics(
                DuckDBEngine(connection), published_through, utc_now()
            )
            if published_through is not None:
                forget_published_deletions(connection, published_through)
            metadata = (
                {
                    **materialization_metadata(connection, PLATFORM_METRICS),
                    **_platform_metadata(connection, watermark),
                }
                if watermark is not None
                else {}
            )
        context.log.info("platform_success_metrics as of %s", watermark)
        yield dg.MaterializeResult(
            asset_key=PLATFORM_METRICS,
            metadata={**metadata, "watermark": dg.MetadataValue.text(str(watermark))},
        )

    return [publish, platform]
