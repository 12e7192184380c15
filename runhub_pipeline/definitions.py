"""The one place the Dagster Definitions are assembled.

Settings are read here, when Dagster (or the CLI) builds the Definitions, never at import time.
"""

from __future__ import annotations

import dagster as dg

from runhub_pipeline.assets.ingest import build_ingest_assets
from runhub_pipeline.assets.staging import build_staging_assets
from runhub_pipeline.ingest_sensor import build_ingest_sensor
from runhub_pipeline.partitions import fifteen_minute_partitions
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.settings import Settings

WINDOW_JOB = "window_job"


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions = fifteen_minute_partitions(settings.partitions_start)
    assets = [*build_ingest_assets(partitions), *build_staging_assets(partitions)]
    window_job = dg.define_asset_job(
        WINDOW_JOB,
        selection=dg.AssetSelection.all(),
        partitions_def=partitions,
        description="Ingest a range of 15-minute windows and rebuild everything downstream.",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[window_job],
        sensors=[build_ingest_sensor(settings, WINDOW_JOB)],
        resources={
            "app_db": AppDatabase(url=settings.app_db_url),
            "warehouse": Warehouse(path=str(settings.warehouse_path)),
        },
        # One process per run: the steps share the DuckDB writer in turn anyway, and a step
        # process per asset would cost seconds of imports on every 15-minute tick.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_env())
