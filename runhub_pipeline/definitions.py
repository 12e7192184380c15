"""The one place the Dagster Definitions are assembled.

Settings are read here, when Dagster (or the CLI) builds the Definitions, never at import time.
"""

from __future__ import annotations

import dagster as dg

from runhub_pipeline.assets.marts import build_mart_assets
from runhub_pipeline.assets.serving import build_serving_assets
from runhub_pipeline.assets.staging import build_staging_assets
from runhub_pipeline.checks.definitions import build_checks
from runhub_pipeline.ingest_sensor import build_ingest_sensor
from runhub_pipeline.partitions import fifteen_minute_partitions
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import transport_from_settings
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.schedules import build_freshness_schedule, build_send_schedules
from runhub_pipeline.sends.jobs import EMAIL_RESOURCE, build_send_jobs
from runhub_pipeline.sensors import build_send_sensors
from runhub_pipeline.settings import Settings

WINDOW_JOB = "window_job"


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions = fifteen_minute_partitions(settings.partitions_start)
    assets = [
        *build_staging_assets(partitions),
        *build_mart_assets(partitions),
        *build_serving_assets(partitions),
    ]
    window_job = dg.define_asset_job(
        WINDOW_JOB,
        selection=dg.AssetSelection.all(),
        partitions_def=partitions,
        description="Ingest a range of 15-minute windows and rebuild everything downstream.",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=build_checks(settings, assets),
        jobs=[window_job, *build_send_jobs(settings)],
        sensors=[build_ingest_sensor(settings, WINDOW_JOB), *build_send_sensors()],
        schedules=[*build_send_schedules(), build_freshness_schedule()],
        resources={
            "app_db": AppDatabase(url=settings.app_db_url),
            "warehouse": Warehouse(
                path=str(settings.warehouse_path), memory_limit=settings.warehouse_memory_limit
            ),
            EMAIL_RESOURCE: transport_from_settings(settings.smtp_url, settings.outbox_dir),
        },
        # One process per run: the steps share the DuckDB writer in turn anyway, and a step
        # process per asset would cost seconds of imports on every 15-minute tick.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())
