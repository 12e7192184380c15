"""The sensor that keeps ingestion current: new windows as they close, late commits as they land.

Each tick (1) requests one run over every window that closed at least RUNHUB_INGEST_LAG ago and
is not yet ingested, and (2) compares per-window source counts over RUNHUB_LATE_LOOKBACK with the
ledger (one grouped COUNT query) and requests a re-read of exactly the windows that changed.
"""

from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from runhub_pipeline.assets.ingest import late_windows, ledger_window_counts, source_window_counts
from runhub_pipeline.partitions import partition_key, window_run_selection
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse, WarehouseNotBuiltError, utc_now
from runhub_pipeline.settings import WINDOW, Settings, floor_to_window
from runhub_pipeline.watermark import current_watermark

INGEST_SENSOR = "ingest_sensor"


@dataclass(frozen=True)
class IngestPlan:
    due_first: datetime | None
    due_last: datetime | None
    late: list[datetime]
    late_source_rows: dict[datetime, int]


def plan_ingest(
    app_db: AppDatabase, warehouse: Warehouse, settings: Settings, now: datetime
) -> IngestPlan:
    """What to (re)ingest at wall-clock time `now`."""
    last_due = floor_to_window(now - settings.ingest_lag) - WINDOW
    try:
        with warehouse.reader() as connection:
            watermark = current_watermark(connection)
            since = watermark - settings.late_lookback if watermark else None
            ledger = (
                ledger_window_counts(connection, since, watermark) if watermark and since else {}
            )
    except WarehouseNotBuiltError:
        watermark, since, ledger = None, None, {}
    first_due = watermark or settings.partitions_start
    due = (first_due, last_due) if first_due <= last_due else (None, None)
    late: list[datetime] = []
    totals: dict[datetime, int] = {}
    if watermark is not None and since is not None:
        counts = source_window_counts(app_db, since, watermark)
        late = late_windows(counts, ledger)
        for (_, start), rows in counts.items():
            totals[start] = totals.get(start, 0) + rows
    return IngestPlan(due[0], due[1], late, {start: totals.get(start, 0) for start in late})


def build_ingest_sensor(settings: Settings, job_name: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=INGEST_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Ingests each 15-minute window once it has closed (plus the ingest lag) and"
        " re-reads a window whose source count changed (a late commit).",
    )
    def ingest_sensor(
        context: dg.SensorEvaluationContext, app_db: AppDatabase, warehouse: Warehouse
    ) -> dg.SensorResult | dg.SkipReason:
        now = utc_now()
        plan = plan_ingest(app_db, warehouse, settings, now)
        requests = []
        if plan.due_first is not None and plan.due_last is not None:
            first, last = partition_key(plan.due_first), partition_key(plan.due_last)
            key, tags = window_run_selection(first, last)
            requests.append(
                dg.RunRequest(run_key=f"ingest:{first}:{last}", partition_key=key, tags=tags)
            )
        for window in plan.late:
            key = partition_key(window)
            # Dagster launches a run_key once. Window and source count make repeats harmless;
            # the hour makes a re-read whose run failed come back (at most hourly) instead of
            # never, while the window still differs from the source.
            count = plan.late_source_rows[window]
            requests.append(
                dg.RunRequest(run_key=f"late:{key}:{count}:{now:%Y-%m-%dT%H}", partition_key=key)
            )
        if not requests:
            return dg.SkipReason("no window has closed since the last ingest and no late commits")
        return dg.SensorResult(run_requests=requests)

    return ingest_sensor
