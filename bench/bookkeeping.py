"""What Dagster's own bookkeeping costs per window of a single-run range backfill.

A range run records one materialization per window and partitioned asset key. This materializes a
multi-asset of `--keys` partitioned keys (the pipeline's 15-minute partitions, no work in the step)
over `--windows` windows on three instances and prints the cost per record, median of `--repeat`:

- the embedded instance (SQLite storage, what `runhub` creates under DAGSTER_HOME);
- dagster-postgres as `deploy/dagster.yaml` configures it, one INSERT per event;
- the same with `DAGSTER_EVENT_BATCH_SIZE=1000` (what `runhub` sets), batched INSERTs.

    .venv/bin/python -m bench.bookkeeping --keys 9 --windows 192
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg

from runhub_pipeline.orchestration import EVENT_BATCH_SETTING, PLANNED_EVENTS_SETTING, QUIET_LOGS
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, fifteen_minute_partitions

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[1]


def _assets(keys: int, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.multi_asset(
        specs=[dg.AssetSpec(f"table_{i}", partitions_def=partitions) for i in range(keys)],
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def tables() -> Iterator[dg.MaterializeResult]:
        for i in range(keys):
            yield dg.MaterializeResult(asset_key=f"table_{i}", metadata={"rows": i})

    return tables


def _time_range_run(home: Path, keys: int, windows: int) -> float:
    partitions = fifteen_minute_partitions(datetime(2026, 1, 1, tzinfo=UTC))
    window_keys = partitions.get_partition_keys()[:windows]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
        result = dg.materialize(
            [_assets(keys, partitions)],
            instance=instance,
            tags={RANGE_START_TAG: window_keys[0], RANGE_END_TAG: window_keys[-1]},
            run_config=QUIET_LOGS,
        )
        elapsed = time.perf_counter() - started
    assert result.success
    return elapsed


def _postgres_home(home: Path, database: str) -> None:
    os.environ.update(
        {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": database,
        }
    )
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")


def measure(instance_kind: str, keys: int, windows: int) -> float:
    """Seconds for one range run on a fresh instance of the given kind."""
    os.environ[EVENT_BATCH_SETTING] = "1000" if instance_kind == "postgres-batched" else "0"
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        if instance_kind == "sqlite":
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            return _time_range_run(home, keys, windows)
        database = f"bench_dagster_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'create database "{database}"')
        try:
            _postgres_home(home, database)
            return _time_range_run(home, keys, windows)
        finally:
            with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'drop database "{database}" with (force)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=9)
    parser.add_argument("--windows", type=int, default=192)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ[PLANNED_EVENTS_SETTING] = "true"
    records = args.keys * args.windows
    print(f"{args.keys} keys x {args.windows} windows = {records} materialization records")
    print(f"{'instance':<20} {'run s':>8} {'ms/record':>10}")
    for kind in ("sqlite", "postgres", "postgres-batched"):
        seconds = statistics.median(
            measure(kind, args.keys, args.windows) for _ in range(args.repeat)
        )
        print(f"{kind:<20} {seconds:>8.2f} {1000 * seconds / records:>10.2f}")


if __name__ == "__main__":
    main()
