"""(d) Sensor ticks with many projects, and the data set (e) sends from.

A bench-made app database (not `runhub simulate`, which stops at 9,999 projects): N projects,
every one with automatic recovery on and two checkouts abandoned in the last 24 hours, the
worst case for `abandoned_checkout_sensor` (a run to queue for every project); project b00001
also has the leads a 1,000-recipient promo mails. The real pipeline backfills it into a
warehouse, then each sensor of the Definitions is evaluated with `dg.build_sensor_context`
against that instance, warehouse snapshot and app database, as the daemon would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
import psycopg

from bench.workload import BenchHome

SEND_PROJECT = "b00001"

_PROJECTS = """
insert into projects (project_id, name, timezone, currency, locale, owner_email, digest_enabled,
    digest_hour, auto_recover_abandoned, stripe_connected, tracking_installed, forms_count,
    created_at)
select 'b' || lpad(g::text, 5, '0'), 'Bench shop ' || g, 'UTC', 'USD', 'en',
    'owner' || g || '@example.com', false, 8, true, true, true, 0,
    %(end)s::timestamptz - interval '90 days'
from generate_series(1, %(projects)s) as g
"""

# Two checkouts per project started between 23 h and 1 h before the end: abandoned once the
# watermark passes their 30-minute mark, inside the sensor's 24-hour recovery window.
_CHECKOUTS = """
insert into business_events (project_id, event_type, occurred_at, received_at, idempotency_key,
    actor_email, session_id, amount_cents, currency, payload)
select 'b' || lpad(g::text, 5, '0'), 'checkout_started', t, t + interval '2 seconds',
    'chk-' || g || '-' || k, 'buyer' || k || '.' || g || '@example.com', 'ses-' || g || '-' || k,
    1999, 'USD', '{"cart_id": "bench"}'::jsonb
from generate_series(1, %(projects)s) as g, generate_series(1, 2) as k,
    lateral (
        select %(end)s::timestamptz - interval '1 hour'
            - ((g * 7919 + k * 104729) %% 79200) * interval '1 second' as t
    ) as x
"""

_LEADS = """
insert into business_events (project_id, event_type, occurred_at, received_at, idempotency_key,
    actor_email, payload)
select %(project)s, 'lead_created', t, t + interval '2 seconds', 'lead-' || i,
    'lead' || i || '@example.com', '{"source": "form", "form_id": "contact"}'::jsonb
from generate_series(1, %(recipients)s) as i,
    lateral (select %(end)s::timestamptz - interval '20 hours' + i * interval '1 second' as t) as x
"""


def load_sensor_data(url: str, projects: int, recipients: int, end: datetime) -> int:
    """Fill the (migrated, empty) app database; returns the number of events written."""
    with psycopg.connect(url) as connection:
        connection.execute(_PROJECTS, {"projects": projects, "end": end})
        connection.execute(_CHECKOUTS, {"projects": projects, "end": end})
        connection.execute(_LEADS, {"project": SEND_PROJECT, "recipients": recipients, "end": end})
    return projects * 2 + recipients


@dataclass(frozen=True)
class SensorTick:
    sensor: str
    seconds: float
    outcome: str


SENSORS = ("abandoned_checkout_sensor", "workflow_runs_sensor", "ingest_sensor")


def _describe(result: object) -> str:
    if isinstance(result, dg.SkipReason):
        return f"skip: {result.skip_message}"
    if isinstance(result, dg.SensorResult):
        return f"{len(result.run_requests or [])} run requests"
    return type(result).__name__


def measure_sensor_ticks(home: BenchHome) -> list[SensorTick]:
    """One round: the abandoned-checkout sensor's first tick (queues a run per project), the
    same sensor again (nothing new: cooldown), the workflow-runs sensor (every queued run is a
    candidate, 100 launched a tick), and the ingest sensor. Auto-queued runs of an earlier round
    are deleted first, so every round starts alike."""
    from runhub_pipeline.definitions import build_definitions
    from runhub_pipeline.orchestration import dagster_instance
    from runhub_pipeline.resources.app_db import AppDatabase
    from runhub_pipeline.resources.warehouse import Warehouse
    from runhub_pipeline.settings import Settings

    with psycopg.connect(home.app_db_url) as connection:
        connection.execute("delete from workflow_runs where idempotency_key like 'auto:%%'")
    ticks: list[SensorTick] = []
    with home.activated():
        settings = Settings.from_env(home.environ())
        definitions = build_definitions(settings)
        resources = {
            "app_db": AppDatabase(url=settings.app_db_url),
            "warehouse": Warehouse(path=str(settings.warehouse_path)),
        }
        with dagster_instance(settings) as instance:
            for name, label in [
                ("abandoned_checkout_sensor", "abandoned_checkout_sensor (first tick)"),
                ("abandoned_checkout_sensor", "abandoned_checkout_sensor (repeat tick)"),
                ("workflow_runs_sensor", "workflow_runs_sensor"),
                ("ingest_sensor", "ingest_sensor"),
            ]:
                sensor = definitions.resolve_sensor_def(name)
                with dg.build_sensor_context(
                    instance=instance, definitions=definitions, resources=resources
                ) as context:
                    started = time.perf_counter()
                    result = sensor(context)
                    elapsed = time.perf_counter() - started
                ticks.append(SensorTick(label, elapsed, _describe(result)))
    return ticks


def sensor_backfill_range(end: datetime) -> tuple[datetime, datetime]:
    return end - timedelta(days=1), end
