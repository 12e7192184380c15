"""`runhub demo`: the main job on embedded defaults, end to end, with a printed summary."""

from __future__ import annotations

from datetime import timedelta

from runhub_pipeline.definitions import build_definitions
from runhub_pipeline.orchestration import dagster_instance, execute_window_range
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.app_schema import migrate
from runhub_pipeline.resources.email import transport_from_settings
from runhub_pipeline.resources.warehouse import Warehouse, utc_now
from runhub_pipeline.settings import WINDOW, Settings, floor_to_window
from runhub_pipeline.simulate import SimulationSpec, simulate


def run_demo(settings: Settings, projects: int, days: int, seed: int) -> int:
    from runhub_pipeline.checks.status import blocking_checks_gate
    from runhub_pipeline.checks.summary import build_data_docs, check_summary
    from runhub_pipeline.overview import format_overview
    from runhub_pipeline.sensors import run_send_sensors_once

    app_db = AppDatabase(url=settings.app_db_url)
    migrate(app_db)
    print(f"1/5 app database ready: {settings.app_db_url}", flush=True)

    end = floor_to_window(utc_now())
    result = simulate(
        app_db,
        SimulationSpec(projects=projects, days=days, seed=seed, end=end),
        progress=lambda message: print(f"    {message}", flush=True),
    )
    print(
        f"2/5 simulated {result.projects} projects, {result.business_events:,} business and"
        f" {result.analytics_events:,} analytics events",
        flush=True,
    )

    # Every simulated row was received in [end - days, end).
    start = max(settings.partitions_start, end - timedelta(days=days))
    print(f"3/5 backfill {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC ...", flush=True)
    outcome = execute_window_range(settings, start, end - WINDOW)
    print(
        f"    run {outcome.run_id} "
        + ("succeeded" if outcome.success else f"FAILED ({outcome.failure})"),
        flush=True,
    )

    warehouse = Warehouse(path=str(settings.warehouse_path))
    definitions = build_definitions(settings)
    transport = transport_from_settings(settings.smtp_url, settings.outbox_dir)
    with dagster_instance(settings) as instance:
        gate = blocking_checks_gate(instance, definitions)
        sent = run_send_sensors_once(app_db, warehouse, transport, settings, utc_now(), gate)
        summary = check_summary(instance, definitions)
    print(f"4/5 send sensors ran once: {sum(sent.values())} e-mails to {transport.describe()}")
    if not gate.ok:
        print(f"    sends held back: {gate.reason()}")
    for (action, locale), count in sorted(sent.items()):
        print(f"    {action:<18} {locale:<3} {count:>5}")

    print("5/5 summary")
    print(staging_summary(warehouse))
    print()
    with warehouse.reader() as connection:
        print(format_overview(connection))
    print()
    print(summary.render())
    print(f"Data Docs: {build_data_docs(settings.home)}")
    print()
    print(where_things_are(settings))
    return 0 if outcome.success else 1


def staging_summary(warehouse: Warehouse) -> str:
    with warehouse.reader() as connection:
        ledger = connection.execute(
            "select source_table, sum(source_rows), sum(staged), sum(duplicates),"
            " sum(quarantined) from ingest_ledger group by source_table order by source_table"
        ).fetchall()
        reasons = connection.execute(
            "select reason, count(*) from quarantined_events group by reason order by reason"
        ).fetchall()
    lines = ["  source table               source rows     staged  duplicates  quarantined"]
    for table, source, staged, duplicates, quarantined in ledger:
        lines.append(
            f"  {table:<24} {source:>13,} {staged:>10,} {duplicates:>11,} {quarantined:>12,}"
        )
    lines.append("  quarantined by reason: " + ", ".join(f"{r} {n:,}" for r, n in reasons))
    return "\n".join(lines)


def where_things_are(settings: Settings) -> str:
    return "\n".join(
        [
            "Outputs:",
            f"  app database      {settings.app_db_url}",
            f"  warehouse         {settings.warehouse_path}  (read-only snapshot for analysts)",
            f"  e-mail outbox     {settings.outbox_dir}",
            "Open the Dagster UI on the same instance:",
            f"  DAGSTER_HOME={settings.dagster_home} RUNHUB_HOME={settings.home}"
            " .venv/bin/dagster dev",
            "Query the warehouse (safe while runs write):",
            '  .venv/bin/python -c "import duckdb; c = duckdb.connect('
            f"'{settings.warehouse_path}', read_only=True);"
            " print(c.sql('from business_kpi_daily limit 5'))\"",
        ]
    )
